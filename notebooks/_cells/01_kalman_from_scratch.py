# %% [markdown]
# # 1. The Kalman filter from scratch: the local level model on the Nile
#
# The annual flow of the Nile at Aswan (1871-1970) is the classic first example of a state
# space model (Durbin & Koopman, *Time Series Analysis by State Space Methods*, ch. 2). The
# **local level model** says the flow is a level that wanders as a random walk, seen through noise:
#
# $$y_t = \mu_t + \varepsilon_t,\quad \varepsilon_t \sim N(0, \sigma^2_\varepsilon), \qquad
#   \mu_{t+1} = \mu_t + \eta_t,\quad \eta_t \sim N(0, \sigma^2_\eta).$$
#
# We write the filter by hand in NumPy — predict, update, the gain, the diffuse start — and then
# check that the engine gives the same numbers to the last digit.

# %%
import os

import holoviews as hv
import numpy as np

import engine

hv.extension("bokeh", inline=True)   # inline JS: the plots need no network
FAST = os.environ.get("STREAMSSM_FAST") == "1"   # small settings for the test suite

nile = engine.load_dataset("nile")
y = nile["flow"].to_numpy(dtype=float)
years = nile.index.year.to_numpy()
print(engine.catalogue_entry("nile")["source"])
hv.Scatter((years, y), "year", "flow").opts(width=700, height=250, color="black", size=4,
                                              title="Nile flow at Aswan (10^8 m^3)")

# %% [markdown]
# ## Predict and update
#
# Write $a_t$ and $P_t$ for the mean and variance of $\mu_t$ given $y_1, \dots, y_{t-1}$ (the
# *prediction*). When $y_t$ arrives:
#
# * the **innovation** (one-step forecast error) is $v_t = y_t - a_t$, with variance $F_t = P_t + \sigma^2_\varepsilon$;
# * the **gain** $K_t = P_t / F_t$ says how much of the surprise to believe;
# * the **update** gives $a_{t|t} = a_t + K_t v_t$ and $P_{t|t} = P_t (1 - K_t)$;
# * the **prediction** for the next step adds the level's own noise: $a_{t+1} = a_{t|t}$, $P_{t+1} = P_{t|t} + \sigma^2_\eta$;
# * each step adds $-\tfrac12(\log 2\pi + \log F_t + v_t^2/F_t)$ to the log-likelihood.
#
# A missing $y_t$ means no update: the prediction carries straight on ($K_t = 0$).
#
# ### The diffuse start
# Before the first observation we know nothing about the level: $P_1 = \kappa \to \infty$.
# The *exact diffuse* filter splits $P_t = \kappa P_{\infty,t} + P_{*,t}$ and lets $\kappa \to \infty$
# analytically. For the local level this only touches the first observation: with
# $P_{\infty,1} = 1$, $F_{\infty,1} = 1$, the gain is exactly 1 (the level becomes $y_1$), the
# filtered variance is $\sigma^2_\varepsilon$, and the step contributes
# $-\tfrac12(\log 2\pi + \log F_{\infty,1})$ to the likelihood (the term in $\kappa$ is dropped).

# %%
def local_level_filter(y, s2_eps, s2_eta):
    """Exact-diffuse Kalman filter of the local level model, one step at a time.

    Returns a dict of arrays (time,): predicted mean a_t and variance P_t, filtered mean and
    variance, innovation v_t and its variance F_t, gain K_t and log-likelihood terms.
    """
    n = len(y)
    out = {k: np.zeros(n) for k in ("a", "P", "a_filt", "P_filt", "v", "F", "K", "loglik")}
    a, P, P_inf = 0.0, 0.0, 1.0          # a_1, P*_1, P∞_1: the level starts diffuse
    for t in range(n):
        out["a"][t], out["P"][t] = a, P
        v = y[t] - a
        if np.isnan(y[t]):                 # missing: predict only
            a_f, P_f, P_inf_f, K, F, ll = a, P, P_inf, 0.0, P + s2_eps, 0.0
        elif P_inf > 0:                    # diffuse step: F∞ = P∞ > 0
            F_inf, F_star = P_inf, P + s2_eps
            K = P_inf / F_inf
            a_f = a + K * v
            P_f = P + K * K * F_star - 2 * K * P    # P* + K∞² F* − 2 K∞ P* (scalar form)
            P_inf_f = P_inf - P_inf * K
            F, ll = F_star, -0.5 * (np.log(2 * np.pi) + np.log(F_inf))
        else:                              # ordinary step
            F = P + s2_eps
            K = P / F
            a_f, P_f, P_inf_f = a + K * v, P * (1 - K), 0.0
            ll = -0.5 * (np.log(2 * np.pi) + np.log(F) + v * v / F)
        out["a_filt"][t], out["P_filt"][t] = a_f, P_f
        out["v"][t], out["F"][t], out["K"][t], out["loglik"][t] = v, F, K, ll
        a, P, P_inf = a_f, P_f + s2_eta, P_inf_f        # predict the next step
    return out


# the maximum likelihood estimates of Durbin & Koopman (2012), section 2.10.3
params = {"sigma2.irregular": 15099.0, "sigma2.level": 1469.1}
hand = local_level_filter(y, params["sigma2.irregular"], params["sigma2.level"])
print(f"log-likelihood by hand: {hand['loglik'].sum():.10f}")

# %%
sd = np.sqrt(hand["P_filt"])
band = hv.Area((years, hand["a_filt"] - 1.645 * sd, hand["a_filt"] + 1.645 * sd),
               "year", ["lower", "upper"], label="90% band").opts(alpha=0.3, color="steelblue")
level = hv.Curve((years, hand["a_filt"]), "year", "flow", label="filtered level").opts(color="steelblue")
obs = hv.Scatter((years, y), "year", "flow", label="flow").opts(color="black", size=3)
gain = hv.Curve((years, hand["K"]), "year", "K", label="gain K_t").opts(color="darkred")
var = hv.Curve((years, hand["P"]), "year", "P", label="predicted variance P_t").opts(color="darkorange")
((band * level * obs).opts(width=700, height=280, title="Filtered level", legend_position="bottom_left")
 + gain.opts(width=340, height=220, title="The gain settles quickly")
 + var.opts(width=340, height=220, title="...because P_t does")).cols(1 if FAST else 2)

# %% [markdown]
# The gain converges to a constant $K$ within a few steps: far from the start, the filter is
# just exponential smoothing, $a_{t+1} = (1-K)\,a_t + K\,y_t$, with $K$ fixed by the ratio
# $q = \sigma^2_\eta/\sigma^2_\varepsilon$. (The steady state solves $P = P(1-P/(P+\sigma^2_\varepsilon)) + \sigma^2_\eta$.)

# %%
q = params["sigma2.level"] / params["sigma2.irregular"]
P_bar = params["sigma2.irregular"] * (q + np.sqrt(q * q + 4 * q)) / 2
print(f"steady-state gain {P_bar / (P_bar + params['sigma2.irregular']):.6f}; gain at the end {hand['K'][-1]:.6f}")

# %% [markdown]
# ## Why the exact diffuse start
#
# A common shortcut starts at $P_1 = \kappa$ with a big $\kappa$. The filtered path is almost
# the same, but the log-likelihood carries a $-\tfrac12 \log \kappa$-like term that depends on an
# arbitrary number — so likelihoods of models with different numbers of diffuse states cannot be
# compared. The exact diffuse filter has no such term.

# %%
def big_kappa_filter(y, s2_eps, s2_eta, kappa):
    a, P, ll, means = 0.0, kappa, 0.0, []
    for obs in y:
        F = P + s2_eps
        K = P / F
        ll += -0.5 * (np.log(2 * np.pi) + np.log(F) + (obs - a) ** 2 / F)
        a, P = a + K * (obs - a), P * (1 - K) + s2_eta
        means.append(a)
    return np.array(means), ll


for kappa in (1e6, 1e8, 1e10):
    means, ll = big_kappa_filter(y, params["sigma2.irregular"], params["sigma2.level"], kappa)
    print(f"kappa={kappa:8.0e}: loglik {ll:12.4f}, + 0.5 log(kappa) = {ll + 0.5 * np.log(kappa):10.4f}, "
          f"max |filtered mean - exact| = {np.max(np.abs(means - hand['a_filt'])):.2e}")
print(f"exact diffuse:  loglik {hand['loglik'].sum():12.4f}")

# %% [markdown]
# ## The same with the engine
#
# The engine builds the same model from a spec (a plain dict) and runs the exact-diffuse filter in
# JAX. `engine.filter_series` keeps every step; `engine.loglik` is the log-likelihood.
# One difference in the arithmetic: once $P_t$ has converged (to about 11 significant digits)
# the engine stops updating it and runs the cheaper steady-state update, so the variances agree
# with ours to about $10^{-11}$ relative and everything else to the last digit or two.

# %%
spec = {"irregular": True, "level": {"kind": "local_level"}}
res = engine.filter_series(spec, params, y)
ll = float(engine.loglik(spec, params, y))

pairs = {
    "predicted mean a_t": (hand["a"], res.predicted_mean[:, 0]),
    "predicted variance P_t": (hand["P"], res.predicted_cov[:, 0, 0]),
    "filtered mean": (hand["a_filt"], res.filtered_mean[:, 0]),
    "filtered variance": (hand["P_filt"], res.filtered_cov[:, 0, 0]),
    "innovation v_t": (hand["v"], res.innovation),
    "innovation variance F_t": (hand["F"], res.innov_var),
    "log-likelihood terms": (hand["loglik"], res.loglik_terms),
}
for name, (mine, theirs) in pairs.items():
    theirs = np.asarray(theirs)
    rel = np.max(np.abs(mine - theirs) / np.maximum(np.abs(theirs), 1e-300))
    print(f"{name:<26} max relative difference {rel:.1e}")
    np.testing.assert_allclose(mine, theirs, rtol=1e-10, atol=1e-9)
print(f"\nloglik by hand {float(hand['loglik'].sum())!r}\nloglik engine  {ll!r}")
assert abs(hand["loglik"].sum() - ll) < 1e-12 * abs(ll)

# %% [markdown]
# ## Missing data
#
# Durbin & Koopman remove the observations 21-40 and 61-80. The hand-written filter and the
# engine both predict through the gaps; the variance grows by $\sigma^2_\eta$ each missing year.

# %%
y_gaps = y.copy()
y_gaps[20:40] = np.nan
y_gaps[60:80] = np.nan
hand_gaps = local_level_filter(y_gaps, params["sigma2.irregular"], params["sigma2.level"])
res_gaps = engine.filter_series(spec, params, y_gaps)
np.testing.assert_allclose(hand_gaps["a"], res_gaps.predicted_mean[:, 0], rtol=1e-10)
np.testing.assert_allclose(hand_gaps["P"], res_gaps.predicted_cov[:, 0, 0], rtol=1e-10)
print(f"loglik with gaps: hand {float(hand_gaps['loglik'].sum())!r}, engine {float(engine.loglik(spec, params, y_gaps))!r}")

sd = np.sqrt(hand_gaps["P"])
(hv.Area((years, hand_gaps["a"] - 1.645 * sd, hand_gaps["a"] + 1.645 * sd), "year", ["lower", "upper"])
   .opts(alpha=0.3, color="steelblue")
 * hv.Curve((years, hand_gaps["a"]), "year", "flow").opts(color="steelblue")
 * hv.Scatter((years, y_gaps), "year", "flow").opts(color="black", size=3)
 ).opts(width=700, height=280, title="One-step predictions through the gaps (90% band)")

# %% [markdown]
# ## Smoothing
#
# The filter uses the past only. The smoother (`engine.smooth`) uses the whole series: each
# year's level given all 100 observations.

# %%
sm = engine.smooth(spec, params, y)
mean, var = (np.asarray(v) for v in sm.components["level"])
sd = np.sqrt(var)
(hv.Area((years, mean - 1.645 * sd, mean + 1.645 * sd), "year", ["lower", "upper"], label="90% band")
   .opts(alpha=0.3, color="seagreen")
 * hv.Curve((years, mean), "year", "flow", label="smoothed level").opts(color="seagreen")
 * hv.Curve((years, hand["a_filt"]), "year", "flow", label="filtered level").opts(color="steelblue", line_dash="dashed")
 * hv.Scatter((years, y), "year", "flow").opts(color="black", size=3)
 ).opts(width=700, height=300, legend_position="bottom_left", title="Smoothed vs filtered level")
