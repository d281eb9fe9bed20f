# %% [markdown]
# # 4. Many series: one compiled filter for a batch, then Ray
#
# A fleet of sensors, a wide table of economic indicators, a store's products: the same
# structural model fitted to each of thousands of series. Two ideas make it fast:
#
# * **Batching (vmap).** The Kalman recursions of different series are independent, so one
#   compiled loop over time can carry a whole batch: each array gains a trailing `series` axis
#   (`transition (state, state, series)`, `mean (state, series)`, …) and every step is a few
#   batched matrix products instead of thousands of tiny ones. `engine.loglik_many` filters a
#   (series, time) batch in one pass; `engine.fit_many` fits every series this way, in batches of
#   one fixed shape so that a single compiled program serves the whole job.
# * **Distribution (Ray).** Batches are independent units of work: `fit_many(...,
#   backend="ray")` sends them to Ray tasks, on a local Ray (bound to 127.0.0.1) or a cluster.
#   Each series' result depends only on its own data, never on its batch or on where it ran, so
#   the two backends give the same table.
#
# `fit_many` maximises each series' posterior (MAP) or likelihood (MLE) by Fisher scoring:
# with $v_t$ the innovations and $F_t$ their variances, the expected information
# $I_{ij} = \sum_t \partial_i v_t\, \partial_j v_t / F_t + \tfrac12\, \partial_i F_t\, \partial_j F_t / F_t^2$
# comes from one forward-mode pass with a tangent per parameter, so an iteration costs about
# $k + 1$ filter passes for the whole batch.

# %%
import os
import time

import holoviews as hv
import numpy as np
import pandas as pd

import engine

hv.extension("bokeh", inline=True)
FAST = os.environ.get("STREAMSSM_FAST") == "1"   # small settings for the test suite

# %% [markdown]
# ## A fleet with known truth
#
# `engine.make_fleet(n, T)` draws $n$ hourly sensors: a level with a small slope and a slowly
# wandering random walk, a daily pattern of two harmonics, noise, and events: about 30% have a
# **regime change** (a level shift of 5-15 noise s.d.), 30% a gap, 10% start late, and rare
# **outliers** of 6-12 noise s.d. The truth table says which sensor has what.

# %%
n_series, n_time = (200, 240) if FAST else (2000, 500)
fleet = engine.make_fleet(n_series, n_time, seed=0)
spec, truth = fleet.spec, fleet.truth
names = engine.param_names(spec)
wide = pd.DataFrame(fleet.Y.T, columns=truth["series"])     # time × one column per sensor
print(f"{n_series} sensors × {n_time} steps; spec {spec}")
print(f"regime changes: {(truth.regime_time >= 0).sum()}, with outliers: {(truth.n_outliers > 0).sum()}, "
      f"gaps: {(truth.gap_start >= 0).sum()}, late starts: {(truth.start > 0).sum()}")
truth.head()

# %%
t = np.arange(n_time)
shifted, outliers, gaps = truth.regime_time >= 0, truth.n_outliers > 0, truth.gap_start >= 0
examples = [int(np.flatnonzero(shifted & ~outliers)[0]), int(np.flatnonzero(outliers & ~shifted & ~gaps)[0]),
            int(np.flatnonzero(gaps & ~shifted & ~outliers)[0])]
panels = []
for i in examples:
    row = truth.iloc[i]
    p = (hv.Scatter((t, fleet.Y[i]), "t", "y", label="observed").opts(color="black", size=2)
         * hv.Curve((t, fleet.signal[i]), "t", "y", label="true signal").opts(color="orange")
         * hv.Scatter((t[fleet.outlier[i]], fleet.Y[i, fleet.outlier[i]]), "t", "y", label="outlier")
         .opts(color="red", size=7, marker="x"))
    if row.regime_time >= 0:
        p = p * hv.VLine(float(row.regime_time)).opts(color="red", line_dash="dashed")
    panels.append(p.opts(width=800, height=180, title=f"{row.series}: shift {row.regime_shift:+.1f} at "
                         f"{row.regime_time}, {row.n_outliers} outlier(s), {row.n_missing} missing",
                         legend_position="top_left", show_legend=i == examples[0]))
hv.Layout(panels).cols(1)

# %% [markdown]
# ## One pass for the whole fleet: `loglik_many`
#
# With one parameter vector per series, `engine.loglik_many(spec, params (series, k), Y (series,
# time))` runs the batched filter; we check it against the single-series filter
# (`engine.loglik`, which matches statsmodels) and time it against a Python loop over series
# (both compiled, both timed after their first call, on this machine).

# %%
true_params = np.column_stack([truth.noise_sd ** 2, truth.level_sd ** 2, np.full(n_series, 1e-6),
                               np.full(n_series, 1e-4)])    # near the generating values (names order)
batched = np.asarray(engine.loglik_many(spec, true_params, fleet.Y))
n_loop = 10 if FAST else 50
looped = np.array([float(engine.loglik(spec, true_params[i], fleet.Y[i])) for i in range(n_loop)])
assert np.allclose(batched[:n_loop], looped, rtol=1e-9, atol=1e-9)

t0 = time.perf_counter()
np.asarray(engine.loglik_many(spec, true_params, fleet.Y))
t_batch = time.perf_counter() - t0
t0 = time.perf_counter()
for i in range(n_loop):
    float(engine.loglik(spec, true_params[i], fleet.Y[i]))
t_loop = (time.perf_counter() - t0) / n_loop
print(f"batched: {n_series / t_batch:,.0f} series/s; loop of single-series calls: {1 / t_loop:,.0f} series/s "
      f"({t_loop * n_series / t_batch:.0f}x; measured on this machine)")

# %% [markdown]
# ## Fitting every sensor: `fit_many`, local backend
#
# `method="map"` maximises each series' posterior with the default priors scaled to that series
# (as `engine.fit_map` does for one series). The table has one row per series: a status
# (`ok`, `not_converged` or `failed`, with a message), the log-likelihood at the estimate, the
# parameters, and the count of one-step **anomalies** (standardised innovations beyond ±3).

# %%
batch_size = 100 if FAST else 256
t0 = time.perf_counter()
local = engine.fit_many(spec, wide, method="map", backend="local", batch_size=batch_size)
t_local = time.perf_counter() - t0
table = local.table
print(f"{n_series} MAP fits in {t_local:.1f} s on this machine (including compilation): "
      f"{n_series / t_local:,.0f} series/s")
print(table.status.value_counts().to_string())
table.head()

# %% [markdown]
# Two checks against the single-series engine: the table's log-likelihood is the filter's at
# the fitted parameters (`loglik_many` again, for all series at once), and for a sensor or three the
# batched fit lands on the same posterior mode as `engine.fit_map` on that sensor alone
# (a different optimiser: L-BFGS).

# %%
fitted = table[names].to_numpy()
ll = np.asarray(engine.loglik_many(spec, fitted, fleet.Y))
assert np.allclose(ll, table.loglik, rtol=1e-9, atol=1e-6)
# (skipped at the test settings: tests/engine/fleet/test_jobs.py makes the same check)
for i in [] if FAST else examples:
    one = engine.fit_map(spec, fleet.Y[i])
    print(f"{truth.series[i]}: log-likelihood at the mode, fit_many {table.loglik[i]:.6f}, fit_map {one.loglik:.6f}")
    assert abs(table.loglik[i] - one.loglik) < 1e-3 * abs(one.loglik)

# %% [markdown]
# ## Which sensors are anomalous?
#
# A regime change is a level shift that the model can only explain by a large level variance,
# so the fitted signal-to-noise ratio $q = \sigma^2_\text{level} / \sigma^2_\text{irregular}$ flags it
# (sensors wander by $0.01$–$0.1$ noise s.d. per step, $q \le 0.01$, when nothing happens).
# Isolated outliers barely move $q$; they show as one-step anomalies instead. The count of
# $|z_t| > 3$ mixes them with chance exceedances ($P(|z|>3) \approx 0.27\%$ per step), so it ranks
# sensors rather than sorting them cleanly.

# %%
tab = table.merge(truth, on="series")
tab["q"] = tab["sigma2.level"] / tab["sigma2.irregular"]
tab["regime_change"] = tab.regime_time >= 0
threshold = 0.04
tab["flagged"] = tab.q > threshold
confusion = pd.crosstab(tab.regime_change, tab.flagged, rownames=["true regime change"], colnames=[f"q > {threshold}"])
print(confusion.to_string())
recall = (tab.flagged & tab.regime_change).sum() / tab.regime_change.sum()
precision = (tab.flagged & tab.regime_change).sum() / max(tab.flagged.sum(), 1)
print(f"\nregime changes found: recall {recall:.2f}, precision {precision:.2f}")
print("\none-step anomalies by true outlier count (rows), counts of sensors:")
print(pd.crosstab(tab.n_outliers, tab.n_anomalies.astype(int)).to_string())
assert recall > 0.8 and precision > 0.8

rng = np.random.default_rng(0)
jitter = rng.uniform(-0.25, 0.25, len(tab))
(hv.Scatter((np.abs(tab.regime_shift / tab.noise_sd) + jitter, tab.q), "true shift (noise s.d.)", "q")
 .opts(color="steelblue", size=4, logy=True, width=450, height=300, title="Fitted q against the true shift")
 * hv.HLine(threshold).opts(color="red", line_dash="dashed")
 + hv.Scatter((tab.n_outliers + jitter, tab.n_anomalies + rng.uniform(-0.25, 0.25, len(tab))),
              "true outliers", "one-step anomalies")
 .opts(color="darkorange", size=4, width=350, height=300, title="Anomalies against true outliers"))

# %% [markdown]
# ## The same job on Ray
#
# `backend="ray"` starts a local Ray bound to 127.0.0.1 (dashboard off), puts the shared inputs
# in its object store once, submits one task per batch and gathers them as they finish (a task
# whose worker dies is retried). On this 2-core machine Ray adds process start-up and a
# compilation per worker, so it pays off only for larger jobs or a real cluster (`address=`).
# What matters here: the table is the same. (Skipped at the test settings: starting Ray and
# compiling in each of its workers is most of this notebook's time there, and
# tests/engine/test_cluster.py checks the same equality on a real two-node Ray.)

# %%
if not FAST:
    from engine import cluster   # the Ray layer: stop the local Ray that fit_many starts

    os.environ.pop("RAY_ADDRESS", None)      # a local Ray, never a stray cluster
    t0 = time.perf_counter()
    try:
        remote = engine.fit_many(spec, wide, method="map", backend="ray", batch_size=batch_size)
    finally:
        cluster.shutdown()
    t_ray = time.perf_counter() - t0
    print(f"Ray: {n_series} fits in {t_ray:.1f} s (including Ray start-up and per-worker compilation; this machine)")
    cols = ["loglik", *names, "n_anomalies"]
    assert (remote.table.series == table.series).all() and (remote.table.status == table.status).all()
    diff = np.max(np.abs(remote.table[cols].to_numpy() - table[cols].to_numpy()) / (1 + np.abs(table[cols].to_numpy())))
    print(f"largest relative difference between the Ray and local tables: {diff:.1e}")
    assert diff < 1e-9
