# %% [markdown]
# # 2. Structural time series models: components, fits, decomposition, forecasts
#
# A structural model writes a series as a sum of interpretable parts, each a small state space
# model of its own, and the Kalman filter estimates them all at once:
#
# $$y_t = \underbrace{\mu_t}_{\text{level/trend}} + \underbrace{\gamma_t}_{\text{seasonal}}
#   + \underbrace{c_t}_{\text{cycle}} + \underbrace{x_t^\top\beta}_{\text{regression}}
#   + \underbrace{\varepsilon_t}_{\text{irregular}}.$$
#
# | component | spec | what it captures | parameters |
# |---|---|---|---|
# | irregular | `"irregular": True` | measurement noise, everything unexplained | `sigma2.irregular` |
# | local level | `{"kind": "local_level"}` | a level that wanders as a random walk | `sigma2.level` |
# | local linear trend | `{"kind": "local_linear_trend"}` | level and slope both wander | `sigma2.level`, `sigma2.trend` |
# | smooth trend | `{"kind": "smooth_trend"}` | a fixed level equation, wandering slope: a smooth curve | `sigma2.trend` |
# | dummy seasonal | `{"period": 12, "form": "dummy"}` | a pattern repeating every `period` steps, summing to ~0 over a period | `sigma2.seasonal` |
# | trigonometric seasonal | `{"period": 365.25, "form": "trig", "harmonics": 3}` | a smooth periodic pattern (any real period) from a few harmonics | `sigma2.freq_seasonal_...` |
# | cycle | `{"period_bounds": [8, 14], "damped": True}` | a quasi-periodic swing of uncertain period (business or solar cycles) | `sigma2.cycle`, `frequency.cycle`, `damping.cycle` |
# | autoregressive | `{"order": p}` | short-lived, correlated deviations | `sigma2.ar`, `ar.L1...` |
# | regression | `{"columns": [...]}` | the effect of known inputs, interventions | `beta.<column>` |
#
# A variance of zero makes a component fixed: a deterministic trend or a fixed seasonal pattern.
# Parameter names follow statsmodels' `UnobservedComponents`, so results compare by name.
#
# We fit one model two ways: by maximum likelihood (a point estimate, fast) and by Bayesian
# inference (a posterior over the parameters, from NUTS), and compare what each says about the
# components and the forecasts.

# %%
import os
import warnings

import arviz as az
import holoviews as hv
import jax
import numpy as np
import pandas as pd

import engine

hv.extension("bokeh", inline=True)
FAST = os.environ.get("STREAMSSM_FAST") == "1"   # small settings for the test suite


def band(x, mean, var, color, label, z=1.645):
    """A mean curve with a 90% band, as one overlay."""
    sd = np.sqrt(np.asarray(var))
    mean = np.asarray(mean)
    return (hv.Area((x, mean - z * sd, mean + z * sd), "time", ["lower", "upper"]).opts(alpha=0.25, color=color)
            * hv.Curve((x, mean), "time", "value", label=label).opts(color=color))

# %% [markdown]
# ## What each component looks like
#
# `engine.simulate` draws series from a spec; each panel is one component on its own.

# %%
gallery = [
    ("local level", {"irregular": False, "level": {"kind": "random_walk"}}, {"sigma2.level": 1.0}),
    ("smooth (integrated) trend", {"irregular": False, "level": {"kind": "random_trend"}}, {"sigma2.trend": 0.01}),
    ("dummy seasonal, period 12", {"irregular": False, "seasonal": [{"period": 12}]}, {"sigma2.seasonal": 0.01}),
    ("damped cycle, period ~ 40", {"irregular": False, "cycle": {"period_bounds": [20, 60]}},
     {"sigma2.cycle": 0.1, "frequency.cycle": 2 * np.pi / 40, "damping.cycle": 0.97}),
    ("AR(1), phi = 0.8", {"irregular": False, "autoregressive": {"order": 1}}, {"sigma2.ar": 1.0, "ar.L1": 0.8}),
]
if FAST:
    gallery = gallery[:1]
panels = []
for i, (title, spec_i, params_i) in enumerate(gallery):
    draws = np.asarray(engine.simulate(jax.random.key(i), spec_i, params_i, 120, n_series=3, init_scale=3.0))
    panels.append(hv.Overlay([hv.Curve(d, "t", "value") for d in draws]).opts(title=title, width=300, height=200))
hv.Layout(panels).cols(3)

# %% [markdown]
# ## Seat belts: level, seasonal and regression
#
# Monthly drivers killed or seriously injured in Great Britain, 1969-1984 (Harvey & Durbin 1986).
# Seat belts became compulsory in February 1983. We model the log counts with a local level, a
# monthly seasonal, and a regression on the log petrol price and the law indicator; the law's
# coefficient is the intervention effect.

# %%
seatbelts = engine.load_dataset("seatbelts")
y = np.log(seatbelts["drivers"].to_numpy(dtype=float))
X = pd.DataFrame({"log_petrol_price": np.log(seatbelts["petrol_price"]), "law": seatbelts["law"]},
                 index=seatbelts.index)
months = seatbelts.index
spec = {"irregular": True, "level": {"kind": "local_level"},
        "seasonal": [{"period": 12, "form": "dummy", "stochastic": True}],
        "regression": {"columns": ["log_petrol_price", "law"]}}
print(engine.param_names(spec))

fit = engine.fit_mle(spec, y, X.to_numpy())
print(fit.summary())
beta = fit.params["beta.law"]
print(f"\nthe law's effect: {100 * (np.exp(beta) - 1):.1f}% drivers KSI "
      f"(95% CI {100 * (np.exp(beta - 1.96 * fit.se['beta.law']) - 1):.1f}% to "
      f"{100 * (np.exp(beta + 1.96 * fit.se['beta.law']) - 1):.1f}%)")

# %% [markdown]
# ## Decomposition
#
# `engine.smooth` returns each component's contribution to $y_t$ given the whole series, with
# its variance: the smoothed level, the seasonal pattern, and the regression effect.

# %%
sm = engine.smooth(spec, fit.params, y, X.to_numpy())
print("components:", list(sm.components))
level_mean, level_var = sm.components["level"]
reg_mean, _ = sm.components["regression"]
seas_mean, seas_var = sm.components["seasonal_12"]
fitted = (band(months, level_mean, level_var, "steelblue", "level")
          * hv.Curve((months, np.asarray(level_mean) + np.asarray(reg_mean)), "time", "value",
                     label="level + regression").opts(color="darkred")
          * hv.Scatter((months, y), "time", "value", label="log drivers KSI").opts(color="black", size=2))
(fitted.opts(width=750, height=280, title="Level and regression (log scale)", legend_position="bottom_left")
 + band(months, seas_mean, seas_var, "seagreen", "seasonal").opts(width=750, height=200, title="Seasonal")
 ).cols(1)

# %% [markdown]
# ## The same fit in statsmodels
#
# statsmodels' `UnobservedComponents` fits the same model. Two details matter for an exact
# comparison: `use_exact_diffuse=True` (the default is an approximate diffuse start with the
# first observations left out of the likelihood) and `mle_regression=True` (β as parameters).

# %%
try:
    import statsmodels.api as sm_api
except ImportError:   # statsmodels comes with the test extras, not the base install
    sm_api = None
    print("statsmodels is not installed: pip install statsmodels to run this comparison")

if sm_api is not None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        uc = sm_api.tsa.UnobservedComponents(y, exog=X, level="local level", seasonal=12,
                                             mle_regression=True, use_exact_diffuse=True)
        sm_fit = uc.fit(disp=False)
    ours = fit.param_vector
    table = pd.DataFrame({"engine": ours, "statsmodels": sm_fit.params}, index=engine.param_names(spec))
    print(table.to_string(float_format=lambda v: f"{v:.6g}"))
    print(f"\nlog-likelihood at the engine's optimum: engine {fit.loglik:.8f}, statsmodels {uc.loglike(ours):.8f}")
    print(f"maximised log-likelihood:               engine {fit.loglik:.6f}, statsmodels {sm_fit.llf:.6f}")
    assert abs(uc.loglike(ours) - fit.loglik) < 1e-6 * abs(fit.loglik)

# %% [markdown]
# ## Forecasting
#
# `engine.forecast` predicts $h$ steps ahead with Gaussian intervals, treating the parameters as
# known (the Bayesian fit adds their uncertainty). A regression model needs the future inputs:
# here the law stays in force and the petrol price stays at its last value.

# %%
steps = 24
future = np.tile(X.to_numpy()[-1], (steps, 1))
fc = engine.forecast(spec, fit.params, y, steps, X.to_numpy(), future)
future_months = pd.date_range(months[-1], periods=steps + 1, freq="MS")[1:]
if sm_api is not None:
    sm_fc = uc.filter(fit.param_vector).get_forecast(steps, exog=future)
    print("max |engine - statsmodels| forecast mean:", float(np.max(np.abs(np.asarray(fc.mean) - sm_fc.predicted_mean))))
    print("max |engine - statsmodels| forecast var: ", float(np.max(np.abs(np.asarray(fc.var) - sm_fc.var_pred_mean))))
recent = months >= "1979-01-01"
(hv.Scatter((months[recent], y[recent]), "time", "value", label="observed").opts(color="black", size=3)
 * band(future_months, fc.mean, fc.var, "darkorange", "forecast (90%)")
 ).opts(width=750, height=280, title="Two years ahead (log drivers KSI)", legend_position="bottom_left")

# %% [markdown]
# ## The Bayesian fit: priors, MAP and NUTS
#
# The MLE treats the parameters $\theta$ (variances, regression coefficients) as known once
# estimated. The Bayesian fit gives them a distribution instead:
#
# $$p(\theta \mid y_{1:n}) \propto p(y_{1:n} \mid \theta)\, p(\theta), \qquad
#   \log p(y_{1:n} \mid \theta) = \sum_t \log N(y_t;\ \hat y_{t|t-1}(\theta),\ F_t(\theta)),$$
#
# where the likelihood is the same exact diffuse Kalman filter as before: the states are
# integrated out exactly, so the sampler only explores the few hyperparameters. The default
# priors are weakly informative and scaled to the data: a half-normal on each variance with
# scale $2\operatorname{var}(\Delta y)$ and a wide normal on each regression coefficient.
#
# `engine.fit_map` finds the posterior mode on unconstrained coordinates (log variances), the
# point where its Laplace (Gaussian) approximation lives. It is not the MLE: the prior and the
# log-Jacobian of the transformation pull it slightly, so its log-likelihood can only be lower.

# %%
Xv = X.to_numpy()
priors = engine.default_priors(spec, y, Xv)
print(pd.DataFrame(priors).T.to_string())

if not FAST:   # (skipped at the test settings: compiling its Hessian is a quarter of this notebook's time there)
    map_fit = engine.fit_map(spec, y, Xv)
    print(pd.DataFrame({"MLE": fit.params, "MAP": map_fit.params}).to_string(float_format=lambda v: f"{v:.5g}"))
    print(f"\nlog-likelihood: at the MLE {fit.loglik:.4f}, at the MAP {map_fit.loglik:.4f}")
    assert map_fit.converged and map_fit.loglik <= fit.loglik + 1e-6   # the MLE maximises the likelihood

# %% [markdown]
# `engine.fit_nuts` runs NumPyro's NUTS on that posterior, all chains vectorised through one
# batched filter, and returns an `arviz.InferenceData` (posterior draws, sampler statistics, the
# pointwise log-likelihood). `engine.diagnose` gives the verdict: a fit is trustworthy only with
# R-hat ≤ 1.01 and bulk/tail ESS ≥ 400 for every parameter and no divergent transitions. At the
# small test settings the verdict is (correctly) "not trustworthy": too few draws.

# %%
chains, warmup, draws = (2, 120, 100) if FAST else (4, 1000, 1000)
idata = engine.fit_nuts(spec, y, Xv, chains=chains, warmup=warmup, draws=draws, seed=1)
diag = engine.diagnose(idata)
print(diag.verdict)
print(f"sampling took {idata.attrs['sampling_time']:.1f} s for {chains} chains x {warmup + draws} iterations")
diag.table[["mean", "sd", "hdi_3%", "hdi_97%", "r_hat", "ess_bulk", "ess_tail"]]

# %%
# the stored pointwise log-likelihood of a draw sums to the filter's log-likelihood at that draw
theta = engine.posterior_matrix(spec, idata)
pointwise = idata.log_likelihood["y"].values.reshape(len(theta), -1)
for d in (0, len(theta) - 1):
    assert abs(pointwise[d].sum() - float(engine.loglik(spec, theta[d], y, Xv))) < 1e-8 * abs(pointwise[d].sum())

# %% [markdown]
# Rank plots (Vehtari et al. 2021) show, for each chain, the histogram of its draws' ranks among
# all draws: well-mixed chains give flat, overlapping histograms. The forest plot shows each
# regression coefficient's 94% HDI per chain; the posterior of the law's coefficient is drawn
# against the MLE and its 95% confidence interval.

# %%
variances = [n for n in engine.param_names(spec) if n.startswith("sigma2")]
az.plot_rank(idata, var_names=variances, figsize=(10, 2.5));

# %%
az.plot_forest(idata, var_names=["beta.log_petrol_price", "beta.law"], combined=False, hdi_prob=0.94,
               figsize=(7, 2.5))
ax = az.plot_posterior(idata, var_names=["beta.law"], hdi_prob=0.94, figsize=(6, 3))
ax.axvline(fit.params["beta.law"], color="black", linestyle="--", label="MLE")
ax.axvspan(fit.params["beta.law"] - 1.96 * fit.se["beta.law"], fit.params["beta.law"] + 1.96 * fit.se["beta.law"],
           color="grey", alpha=0.2, label="MLE 95% CI")
ax.legend(loc="upper left");

# %%
law = idata.posterior["beta.law"].values.reshape(-1)
effect = 100 * (np.exp(law) - 1)
lo, hi = az.hdi(effect, hdi_prob=0.95)
print(f"the law's effect, posterior: {effect.mean():.1f}% (95% HDI {lo:.1f}% to {hi:.1f}%)")
# with weak priors the posterior of a regression coefficient sits on the MLE
assert abs(law.mean() - fit.params["beta.law"]) < 0.5 * law.std()

# %% [markdown]
# ## Posterior decomposition
#
# For each posterior draw $\theta_d$ the smoother gives each component a Gaussian
# $N(\mu_{t,d}, \sigma^2_{t,d})$; the posterior of the component is the mixture
# $\frac1S\sum_d N(\mu_{t,d}, \sigma^2_{t,d})$, which carries both the state uncertainty and the
# parameter uncertainty. `engine.posterior_components` returns its mean and highest-density
# interval, computed from the mixture's exact density (not from sampled paths), against the
# plug-in band at the MLE (dashed), which treats the parameters as known.
#
# The level's posterior band is many times wider, and for a real reason: the regression has no
# intercept of its own, and the log petrol price stays within a narrow range, so a larger
# petrol-price effect $\beta x_t$ is matched by a lower level. The plug-in band fixes $\beta$ at
# its estimate and hides this trade-off; the posterior shows it. The seasonal pattern, which
# nothing else can mimic, widens only by the uncertainty in its variance.

# %%
hdi = 0.9
post = engine.posterior_components(spec, idata, y, Xv, hdi_prob=hdi, max_draws=100 if FAST else 500)
z90 = 1.645
panels = []
for name, color in (("level", "steelblue"), ("seasonal_12", "seagreen")):
    b = post[name]
    plug_mean, plug_var = (np.asarray(a) for a in sm.components[name])
    plug_sd = np.sqrt(plug_var)
    panels.append((hv.Area((months, b.lower, b.upper), "time", ["lower", "upper"], label="posterior 90% HDI")
                   .opts(alpha=0.3, color=color)
                   * hv.Curve((months, b.mean), "time", "value", label="posterior mean").opts(color=color)
                   * hv.Curve((months, plug_mean - z90 * plug_sd), "time", "value", label="MLE plug-in 90%")
                   .opts(color="black", line_dash="dashed", line_width=1)
                   * hv.Curve((months, plug_mean + z90 * plug_sd), "time", "value")
                   .opts(color="black", line_dash="dashed", line_width=1))
                  .opts(width=750, height=240, title=name, legend_position="bottom_left"))
    width_ratio = np.mean(b.upper - b.lower) / np.mean(2 * z90 * plug_sd)
    print(f"{name}: mean band width, posterior / plug-in = {width_ratio:.2f}")
    # the two agree on where the component is: the plug-in mean lies inside the posterior band
    assert np.mean((plug_mean >= b.lower) & (plug_mean <= b.upper)) > 0.95
hv.Layout(panels).cols(1)

# %% [markdown]
# ## Forecasting with parameter uncertainty
#
# `engine.posterior_forecast` runs the plug-in forecast for every draw and mixes them:
# the predictive variance is $\mathbb E_\theta[\operatorname{var}(y_{n+h}\mid\theta)] +
# \operatorname{var}_\theta(\mathbb E[y_{n+h}\mid\theta])$, the expected plug-in variance plus the
# spread of the plug-in means. The plug-in forecast at the MLE ignores the second term and uses
# one value of the variances, so its band is narrower. With a single "draw" (the MLE itself)
# the posterior forecast is exactly the plug-in one: a check of the machinery.

# %%
pfc = engine.posterior_forecast(spec, idata, y, steps, Xv, future, levels=(0.9,), max_draws=200 if FAST else 1000)
p_lo, p_hi = pfc.band(0.9)
fc90 = engine.forecast(spec, fit.params, y, steps, Xv, future, level=0.9)
one = engine.posterior_forecast(spec, fit.params, y, steps, Xv, future, levels=(0.9,))
assert np.allclose(one.band(0.9)[0], fc90.lower, atol=1e-8) and np.allclose(one.band(0.9)[1], fc90.upper, atol=1e-8)
ratio = (p_hi - p_lo) / np.asarray(fc90.upper - fc90.lower)
print("90% band width, posterior / plug-in at the MLE, by horizon:", np.round(ratio[[0, 5, 11, 23]], 2))
(hv.Scatter((months[recent], y[recent]), "time", "value", label="observed").opts(color="black", size=3)
 * hv.Area((future_months, p_lo, p_hi), "time", ["lower", "upper"], label="posterior 90%")
 .opts(alpha=0.3, color="purple")
 * hv.Curve((future_months, pfc.mean), "time", "value", label="posterior mean").opts(color="purple")
 * hv.Curve((future_months, fc90.lower), "time", "value", label="plug-in at the MLE, 90%")
 .opts(color="darkorange", line_dash="dashed")
 * hv.Curve((future_months, fc90.upper), "time", "value").opts(color="darkorange", line_dash="dashed")
 ).opts(width=750, height=280, title="Two years ahead: posterior vs plug-in", legend_position="bottom_left")

# %% [markdown]
# ## Choosing between models
#
# Likelihoods from the exact diffuse filter can be compared across models, with AIC counting
# both the parameters and the diffuse states. On the log airline passengers, a local linear
# trend with a seasonal against simpler trends (skipped at the test settings):

# %%
if not FAST:
    air = np.log(engine.load_dataset("airpassengers")["passengers"].to_numpy(dtype=float))
    rows = []
    for kind in ("local_level", "local_linear_trend", "smooth_trend", "random_walk_with_drift"):
        s = {"irregular": True, "level": {"kind": kind}, "seasonal": [{"period": 12}]}
        f = engine.fit_mle(s, air)
        rows.append({"trend": kind, "loglik": f.loglik, "aic": f.aic, "bic": f.bic})
    print(pd.DataFrame(rows).sort_values("aic").to_string(index=False))
