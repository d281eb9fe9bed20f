# %% [markdown]
# # 3. Online Bayesian updating: a bank of Kalman filters over posterior draws
#
# A NUTS fit gives $S$ draws $\theta_1, \dots, \theta_S$ from $p(\theta \mid y_{1:n})$. When
# $y_{n+1}, y_{n+2}, \dots$ stream in, refitting after every observation would cost a full
# NUTS run each time. Instead we keep, for every draw, the **exact Kalman belief** about the
# states, $p(\alpha_{t} \mid y_{1:t-1}, \theta_s) = N(a_{t,s}, P_{t,s})$, and a **weight** $w_s$:
#
# * a new $y_t$ costs one Kalman step per draw, the same whatever the length of the history: $O(1)$ in $t$;
# * each draw is re-weighted by how well it predicted $y_t$ (sequential importance sampling of
#   the static parameters, the IBIS algorithm of Chopin 2002):
#
# $$w_{s} \leftarrow \frac{w_{s}\; p(y_t \mid y_{1:t-1}, \theta_s)}{\sum_r w_{r}\; p(y_t \mid y_{1:t-1}, \theta_r)},
#   \qquad p(y_t \mid y_{1:t-1}, \theta_s) = N(y_t;\ \mu_{t,s},\ F_{t,s}),$$
#
#   so after $t$ observations $w_s \propto \prod_{u=n+1}^{t} p(y_u \mid y_{1:u-1}, \theta_s)$ and the
#   weighted draws are a sample of $p(\theta \mid y_{1:t})$;
# * the predictive of $y_t$ is the mixture $\sum_s w_s N(\mu_{t,s}, F_{t,s})$: it carries parameter
#   and state uncertainty, with exact quantiles for the bands.
#
# Importance weights degenerate: a few draws end up with all the weight. The **effective sample
# size** $\mathrm{ESS} = 1 / \sum_s w_s^2$ measures it (from $S$ for equal weights down to 1). When it
# falls below $S/2$, the bank is **rejuvenated**: resampled by weight, then each draw is moved by
# a few Metropolis steps that leave the full-data posterior $p(\theta \mid y_{1:t})$ invariant, and
# each moved draw's filter is rebuilt on the history. Finally a **drift monitor** watches the
# calibration of the predictions: a two-sided CUSUM of the standardised innovations raises an
# alarm when they drift away from $N(0, 1)$ for long enough.

# %%
import json
import os
import time

import holoviews as hv
import jax
import numpy as np
import pandas as pd

import engine
from engine.rejuvenation import RejuvenationConfig

hv.extension("bokeh", inline=True)
FAST = os.environ.get("STREAMSSM_FAST") == "1"   # small settings for the test suite

# %% [markdown]
# ## A stream with known events
#
# `engine.demo_stream` draws a synthetic hourly sensor from a structural model (a local level
# plus a daily pattern with two harmonics, plus noise) and lays known events on top: here three
# level shifts of 6-10 noise standard deviations. We fit on the first quarter of the stream,
# before the first shift, and stream the rest.

# %%
n_time = 800 if FAST else 2000
stream = engine.demo_stream(7, "level_shifts", n_time=n_time)
spec, y = stream.spec, stream.y
n_fit = n_time // 4
shifts = [e.start for e in stream.events if e.kind == "level_shift"]
print(engine.list_demo_streams().set_index("name").loc["level_shifts", "description"])
print("events:", [(e.kind, e.start, round(e.size, 2)) for e in stream.events])
print("spec:", json.dumps(spec))
print("true parameters:", stream.params)

t_all = np.arange(n_time)


def vlines(times, color, dash="dashed", alpha=0.6):
    """Vertical markers at the given times, as one overlay."""
    return hv.Overlay([hv.VLine(float(t)).opts(color=color, line_dash=dash, alpha=alpha, line_width=1)
                       for t in times])


(hv.Scatter((t_all, y), "t", "y", label="observed").opts(color="black", size=2)
 * hv.Curve((t_all, stream.signal), "t", "y", label="true signal").opts(color="orange", alpha=0.8)
 * vlines(shifts, "red") * vlines([n_fit], "grey", "solid")
 ).opts(width=800, height=260, title="Demo stream: fit before the grey line, stream after; shifts in red",
        legend_position="bottom_left")

# %% [markdown]
# ## The posterior on the first part
#
# A short NUTS fit on $y_{1:n}$ (small at the test settings: its diagnosis says so).

# %%
chains, warmup, draws = (2, 100, 100) if FAST else (4, 500, 250)
t0 = time.perf_counter()
idata = engine.fit_nuts(spec, y[:n_fit], chains=chains, warmup=warmup, draws=draws, seed=0)
fit_seconds = time.perf_counter() - t0
print(engine.diagnose(idata).verdict)
theta = engine.posterior_draws(spec, idata)     # (draw, param), the bank's order
names = engine.param_names(spec)
S = len(theta)
print(f"{S} draws; posterior means:", dict(zip(names, np.round(theta.mean(axis=0), 4))))

# %% [markdown]
# ## The bank: one exact Kalman filter per draw
#
# `engine.OnlineFilter.from_posterior` builds the systems of all $S$ draws (batch-last arrays)
# and runs each draw's exact diffuse filter over the history, so each draw carries
# $a_{n+1,s}, P_{n+1,s}$. The draws are already a sample of $p(\theta \mid y_{1:n})$, so they enter
# with equal weights: `from_posterior` does not weight them by their likelihood of the history
# (that is right for draws from the *prior*, `engine.OnlineFilter(spec, draws, y_history=...)`;
# for posterior draws it would count the history twice). Several filters below start from the
# same point, so we make that belief once with the pure core, `online_init` then
# `online_catch_up` (whose weights we set back to equal), and hand each filter a copy.
#
# `update_many` consumes a micro-batch in one compiled loop and returns the per-step
# `OnlineInfo`: the mixture predictive (mean, quantiles), PIT and standardised innovation, the
# anomaly flag, the CUSUM and drift flag, the ESS and each draw's log predictive density.

# %%
config = engine.OnlineConfig(engine.ModelSpec.from_dict(spec))
bank = engine.make_bank(spec, theta)
belief = engine.online_catch_up(config, bank, engine.online_init(config, bank), y[:n_fit])
# host copies: each filter below starts from them (a stream donates its device buffers as it goes)
belief = jax.device_get(belief._replace(log_weight=np.full(S, -np.log(S))))   # posterior draws: equal weights
priors = json.loads(idata.attrs["priors"])                   # rejuvenation targets the fit's own posterior


def new_filter(**rejuvenation):
    """The bank after the fit, caught up on y[:n_fit], equal weights; rejuvenation: `RejuvenationConfig` fields."""
    return engine.OnlineFilter.from_posterior(spec, idata, y[:n_fit], belief=belief,
                                              rejuvenation=RejuvenationConfig(priors=priors, **rejuvenation))


def stream_through(filt, ys, batch=24, wait=False):
    """Feed ys in micro-batches; return the per-step infos as host arrays (time leading).

    wait: let a background rejuvenation finish before the next batch, so the run is reproducible."""
    rows = []
    for start in range(0, len(ys), batch):
        info = filt.update_many(ys[start:start + batch])
        rows.append(jax.device_get(info))
        if wait:
            filt.wait_for_rejuvenation()
    return jax.tree_util.tree_map(lambda *a: np.concatenate(a), *rows)


sis = new_filter(automatic=False)      # pure sequential importance sampling: no rejuvenation
print(f"t = {sis.t}, S = {sis.n_draws}, ESS = {sis.ess:.1f}")
info = stream_through(sis, y[n_fit:])
print(f"after the stream: t = {sis.t}, ESS = {sis.ess:.2f}")

# %% [markdown]
# ### Two checks
#
# **Online = batch.** For any one draw, the online filtered state after the last observation is
# the batch filter's (`engine.filter_series` over the whole series with that draw's
# parameters), to rounding.
#
# **The weights are the importance weights.** After the stream, $\log w_s$ is the sum of draw
# $s$'s one-step log predictive densities over the streamed part, normalised. The reference comes
# from an independent batch computation: `engine.pointwise_loglik` filters the whole series for
# every draw.

# %%
for s in (0, S // 2, S - 1):
    batch = engine.filter_series(spec, theta[s], y)
    online = info.filtered_mean[-1][:, s]
    err = np.max(np.abs(online - np.asarray(batch.filtered_mean[-1])))
    assert err < 1e-9 * max(1.0, np.max(np.abs(online))), err
print("online filtered state = batch filter state: max abs difference",
      f"{np.max(np.abs(info.filtered_mean[-1][:, 0] - np.asarray(engine.filter_series(spec, theta[0], y).filtered_mean[-1]))):.1e}")

terms = engine.pointwise_loglik(spec, theta, y)            # (draw, time)
log_w = terms[:, n_fit:].sum(axis=1)
w_ref = np.exp(log_w - log_w.max())
w_ref /= w_ref.sum()
assert np.allclose(sis.weights, w_ref, rtol=1e-8, atol=1e-300)
assert np.allclose(info.loglik.T, terms[:, n_fit:], atol=1e-9)
print("weights = normalised exp(summed log predictive densities): max rel. difference",
      f"{np.max(np.abs(sis.weights - w_ref) / np.maximum(w_ref, 1e-300)):.1e}")

# %% [markdown]
# ## What the stream looks like
#
# The one-step predictive band (95%, from the mixture's exact quantiles) follows the signal; at
# each level shift the observation falls far outside it: flagged as an **anomaly**
# ($|\Phi^{-1}(\mathrm{PIT})| > 3.5$). The drift monitor accumulates the standardised innovations
# $z_t = \Phi^{-1}(\mathrm{PIT}_t)$ in two CUSUMs, $C^+_t = \max(0, C^+_{t-1} + z_t - k)$ and
# $C^-_t = \max(0, C^-_{t-1} - z_t - k)$ with $k = 0.5$, and raises a **drift alarm** when either
# passes $h = 5$ (then both restart). A jump crosses it at once; a slow drift would take longer.
# The filter then adapts within a few steps (faster for draws with a larger level variance).

# %%
ts = n_fit + np.arange(len(info.mean))
lo95, hi95 = info.quantiles[:, 0], info.quantiles[:, 6]
anomalies, alarms = ts[info.anomaly], ts[info.drift]
print("anomalies at t =", anomalies.tolist())
print("drift alarms at t =", alarms.tolist())
print("true shifts at t =", shifts)
for t_shift in shifts:   # every shift raises an alarm within a few steps
    assert np.any((alarms >= t_shift) & (alarms <= t_shift + 5)), t_shift

stream_plot = (hv.Area((ts, lo95, hi95), "t", ["lower", "upper"], label="95% one-step predictive")
               .opts(color="steelblue", alpha=0.3)
               * hv.Curve((ts, info.mean), "t", "y", label="predictive mean").opts(color="steelblue")
               * hv.Scatter((ts, y[n_fit:]), "t", "y", label="observed").opts(color="black", size=2)
               * hv.Scatter((anomalies, y[anomalies]), "t", "y", label="anomaly")
               .opts(color="red", size=8, marker="x")
               * vlines(alarms, "darkorange", "solid", 0.8) * vlines(shifts, "red"))
cusum_plot = (hv.Curve((ts, info.cusum[:, 0]), "t", "CUSUM", label="upper").opts(color="darkorange")
              * hv.Curve((ts, info.cusum[:, 1]), "t", "CUSUM", label="lower").opts(color="teal")
              * hv.HLine(sis.config.cusum_h).opts(color="grey", line_dash="dotted"))
(stream_plot.opts(width=800, height=300, title="Streaming: predictive bands, anomalies (x), drift alarms (orange)",
                  legend_position="bottom_left")
 + cusum_plot.opts(width=800, height=180, title="CUSUM of the standardised innovations (restarts after an alarm)",
                   legend_position="top_left")).cols(1)

# %% [markdown]
# ## The weights learn the parameters
#
# Each level shift is evidence for a larger level variance: draws with a larger
# $\sigma^2_\text{level}$ predicted the jump (and the recovery) better, and take the weight. The ESS
# collapses step by step, and the weighted posterior mean of $\sigma^2_\text{level}$ climbs. The
# per-step weights are the normalised cumulative sums of `info.loglik`.

# %%
level_ix = names.index("sigma2.level")
log_w_t = np.cumsum(info.loglik, axis=0)                       # (time, draw), equal start
w_t = np.exp(log_w_t - log_w_t.max(axis=1, keepdims=True))
w_t /= w_t.sum(axis=1, keepdims=True)
assert np.allclose(1 / np.sum(w_t ** 2, axis=1), info.ess, rtol=1e-8)
order = np.argsort(theta[:, level_ix])
picks = {"smallest": order[0], "median": order[S // 2], "90th pct": order[int(0.9 * S)], "largest": order[-1]}
weights_plot = hv.Overlay([hv.Curve((ts, np.maximum(w_t[:, s], 1e-300)), "t", "weight",
                                    label=f"{k} σ²_level = {theta[s, level_ix]:.3g}") for k, s in picks.items()])
post_level = w_t @ theta[:, level_ix]
(weights_plot.opts(width=800, height=220, title="Weights of four draws (equal at the start: 1/S)",
                   legend_position="top_left", logy=True, ylim=(1e-12, 1.5))
 + (hv.Curve((ts, info.ess), "t", "ESS", label="ESS").opts(color="purple") * vlines(shifts, "red")
    ).opts(width=800, height=200, title=f"Effective sample size (of S = {S})")
 + (hv.Curve((ts, post_level), "t", "σ²_level").opts(color="darkgreen")
    * hv.HLine(stream.params["sigma2.level"]).opts(color="grey", line_dash="dotted") * vlines(shifts, "red")
    ).opts(width=800, height=200, title="Weighted posterior mean of σ²_level (dotted: the value between events)")
 ).cols(1)

# %% [markdown]
# ## Rejuvenation: resample and move
#
# With the ESS near 1, the bank is one draw: the predictive bands no longer carry parameter
# uncertainty. `OnlineFilter` rejuvenates when the ESS falls below `ess_threshold`·S (0.5 by
# default), or on demand with `rejuvenate(reason=..., background=True)`:
#
# 1. resample $S$ draws by weight (systematic resampling);
# 2. move each with `move_steps` random-walk Metropolis steps on the unconstrained coordinates,
#    proposals scaled by the bank's weighted covariance, targeting $p(\theta \mid y_{1:t})$ (the
#    full history's exact likelihood plus the fit's priors): this repairs the duplicates;
# 3. rebuild each moved draw's filter on the history, with equal weights.
#
# It runs in a background thread: the stream keeps using the old bank and the new one is swapped
# in at the next update, caught up on what arrived meanwhile. Each step is recorded in `events`
# (`rejuvenation_start` with the ESS that triggered it, then `rejuvenation_done` with the
# acceptance rate, the distinct draws after resampling, the ESS after the swap and the duration).
# Here we wait for each move before the next micro-batch so that the run is reproducible. (At the
# test settings we stop 16 steps after the first shift, at t = 256: a move pads the history to
# the next power of two and compiles the posterior once per such length, which takes most of its
# time, so every move there shares one program.)

# %%
n_end = shifts[0] + 16 if FAST else n_time
ibis = new_filter(automatic=True, ess_threshold=0.5, move_steps=5 if FAST else 10, seed=1)
t0 = time.perf_counter()
info_r = stream_through(ibis, y[n_fit:n_end], wait=True)
ibis.apply_pending()
rejuv_seconds = time.perf_counter() - t0
done = [e for e in ibis.events if e["kind"] == "rejuvenation_done"]
cols = ["reason", "t_start", "t_swap", "ess_before", "ess_after", "unique_draws", "acceptance", "duration_s"]
print(pd.DataFrame(done)[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}") if done else "no rejuvenation")
assert done and all(e["ess_after"] > 0.5 * S for e in done)   # each move restores a healthy bank
last = len(info_r.ess) - 1
print(f"\nat t = {n_end}: posterior mean of σ²_level, importance sampling only {w_t[last] @ theta[:, level_ix]:.4g} "
      f"(ESS {info.ess[last]:.1f}), rejuvenated {ibis.weights @ ibis.params[:, level_ix]:.4g} (ESS {ibis.ess:.0f})")

(hv.Curve((ts, info.ess), "t", "ESS", label="importance sampling only").opts(color="purple", alpha=0.6)
 * hv.Curve((ts[:len(info_r.ess)], info_r.ess), "t", "ESS", label="with rejuvenation").opts(color="seagreen")
 * hv.HLine(0.5 * S).opts(color="grey", line_dash="dotted")
 * vlines([e["t_swap"] for e in done], "seagreen", "dotdash")
 ).opts(width=800, height=250, title="ESS with and without rejuvenation (dashes: new bank swapped in)",
        legend_position="bottom_left")

# %% [markdown]
# ## Forecasts follow the stream
#
# `forecast(h)` runs $h$ predict-only steps for every draw from its current belief and mixes
# them with the current weights: $O(h)$, no re-filtering.

# %%
h = 48
fc = ibis.forecast(h)
recent = (t_all >= n_end - 150) & (t_all < n_end)
t_fc = n_end + np.arange(h)
(hv.Scatter((t_all[recent], y[recent]), "t", "y", label="observed").opts(color="black", size=2)
 * hv.Area((t_fc, np.asarray(fc.quantiles[:, 0]), np.asarray(fc.quantiles[:, 6])), "t", ["lower", "upper"],
           label="95% forecast").opts(color="seagreen", alpha=0.3)
 * hv.Curve((t_fc, np.asarray(fc.mean)), "t", "y", label="forecast mean").opts(color="seagreen")
 ).opts(width=800, height=250, title=f"{h} steps ahead from the rejuvenated bank", legend_position="bottom_left")

# %% [markdown]
# ## What it costs per observation
#
# Three ways to take in one more observation, timed here with small sizes:
#
# * `update(y)`: one step of the whole bank, $O(S)$ and independent of $t$;
# * `update_many(ys)`: a micro-batch in one compiled loop (less overhead per observation);
# * re-filtering the whole history for every draw (`engine.loglik_many` over the $S$ draws): $O(S\,t)$;
# * refitting with NUTS: the fit above, on the first part only.
#
# The numbers are measured in this run on this machine, which may be shared with other work:
# read the ratios, not the absolute times.

# %%
def best_of(fn, repeat=5):
    """Smallest wall time of `repeat` calls (after one warm-up call), in seconds."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return min(times)


bench = new_filter(automatic=False)
feed = iter(np.tile(y[n_fit:], 20))
n_single, n_batch = 20, 64
one = best_of(lambda: [bench.update(next(feed)) for _ in range(n_single)][-1].mean) / n_single
many = best_of(lambda: bench.update_many([next(feed) for _ in range(n_batch)]).mean) / n_batch
Y_hist = np.broadcast_to(y, (S, n_time))
refilter = best_of(lambda: engine.loglik_many(spec, theta, Y_hist), repeat=3)
cost = pd.DataFrame({
    "way": ["update(y), one observation", f"update_many, batch of {n_batch}, per observation",
            f"re-filter the history (t = {n_time}) for all draws", f"refit: the NUTS fit above, {n_fit} points (wall time)"],
    "seconds": [one, many, refilter, fit_seconds]})
cost["relative to update"] = cost["seconds"] / one
print(f"S = {S} draws, {len(names)} parameters, {engine.layout(spec).n_states} states; measured on this machine")
print(cost.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
