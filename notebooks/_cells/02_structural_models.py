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

# %%
import os
import warnings

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
