"""Online update benchmark: per-observation latency of the posterior bank vs re-filtering the history.

Model: local linear trend + 12-period dummy seasonal (13 states); S posterior draws (the
parameters jittered around a base value); history length T. For each (S, T):

* online      — `OnlineFilter.update(y)` for one new observation (full info: mixture bands,
                components, PIT, ESS), blocked on the result, median over many observations;
* micro-batch — `update_many` of 64 observations, per observation;
* naive bank  — the in-run reference for the update: `jax.vmap` over the draws of a plain dense
                Kalman step (a ← T(a + K v), P ← T(P − K Kᵀ F)Tᵀ + Q with m×m matmuls), no report;
                the machine may be loaded, so compare the update to it as a ratio;
* re-filter   — what a user does without an online engine: re-run the filter over the whole
                history for every new point. Ours: one batched pass over the S draws
                (`loglik_many`-style, one call); statsmodels: `UnobservedComponents.loglike`
                per draw (one draw timed, times S).

Every peer runs in this same process; ratios are printed at the end.

    python bench/online.py [--draws 1 100 1000] [--history 100 100000] [--updates 200]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import engine
from engine.model import _run, _systems

SPEC = engine.ModelSpec.from_dict({"level": {"kind": "local_linear_trend"},
                                   "seasonal": [{"period": 12, "form": "dummy"}]})
PARAMS = np.array([1.0, 0.1, 0.001, 0.05])  # sigma2.irregular, .level, .trend, .seasonal


def draws(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return PARAMS * np.exp(0.1 * rng.standard_normal((n, len(PARAMS)))) if n > 1 else PARAMS[None]


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def online_latency(S: int, T: int, y: np.ndarray, n_updates: int):
    """(catch-up seconds, per-update seconds (median, p90), micro-batch seconds per observation)."""
    t0 = time.perf_counter()
    filt = engine.OnlineFilter(SPEC, draws(S), y_history=y[:T], rejuvenate=False)
    jax.block_until_ready(filt.state)
    catch_up = time.perf_counter() - t0
    stream = y[T:]
    for v in stream[:5]:                      # compile and warm up
        jax.block_until_ready(filt.update(v))
    times = []
    for v in stream[5:5 + n_updates]:
        t0 = time.perf_counter()
        jax.block_until_ready(filt.update(v))
        times.append(time.perf_counter() - t0)
    rest = stream[5 + n_updates:]
    chunks = [rest[i:i + 64] for i in range(0, len(rest) - 63, 64)]
    jax.block_until_ready(filt.update_many(chunks[0]))    # compile
    batch_times = []
    for chunk in chunks[1:]:
        t0 = time.perf_counter()
        jax.block_until_ready(filt.update_many(chunk))
        batch_times.append(time.perf_counter() - t0)
    batch = float(np.median(batch_times))
    steady = float(np.mean(np.asarray(filt.state.filter.steady)))
    return catch_up, float(np.median(times)), float(np.percentile(times, 90)), batch / 64, steady


def naive_bank_latency(S: int, T: int, y: np.ndarray, n_updates: int) -> float:
    """Per-observation seconds of a dense vmapped Kalman bank (no structure, no report), median."""
    system = _systems(SPEC, jnp.asarray(draws(S)), None)   # batch-leading
    z = system.design[0]

    def one(a, P, T, Q, H, y_t):
        F = z @ P @ z + H
        K = P @ z / F
        v = y_t - z @ a
        return T @ (a + K * v), T @ (P - jnp.outer(K, K) * F) @ T.T + Q, -0.5 * (jnp.log(2 * jnp.pi * F) + v * v / F)

    step = jax.jit(lambda a, P, y_t: jax.vmap(one, (0, 0, 0, 0, 0, None))(
        a, P, system.transition, jax.vmap(jnp.diag)(system.state_var), system.obs_var, y_t), donate_argnums=(0, 1))
    m = system.transition.shape[-1]
    a, P = jnp.zeros((S, m)), jnp.broadcast_to(1e3 * jnp.eye(m), (S, m, m))
    times = []
    for i, v in enumerate(y[T:T + 5 + n_updates]):
        t0 = time.perf_counter()
        a, P, ll = step(a, P, float(v))
        jax.block_until_ready(ll)
        if i >= 5:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def refilter_ours(S: int, T: int, y: np.ndarray) -> float:
    """One batched exact filter pass over the history for all S draws (the per-point cost)."""
    Y = jnp.broadcast_to(jnp.asarray(y[:T])[:, None], (T, S))
    p = jnp.asarray(draws(S))
    fn = lambda: _run(SPEC, p, Y, None, False, False)[1]
    jax.block_until_ready(fn())
    return median_time(fn, repeat=3 if T * S <= 1e7 else 1)


def refilter_statsmodels(T: int, y: np.ndarray) -> float:
    """statsmodels UnobservedComponents.loglike over the history, one draw."""
    import statsmodels.api as sm
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod = sm.tsa.UnobservedComponents(y[:T], level="local linear trend", seasonal=12, use_exact_diffuse=True)
    mod.loglike(PARAMS)
    return median_time(lambda: mod.loglike(PARAMS), repeat=3 if T <= 1e4 else 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--draws", type=int, nargs="+", default=[1, 100, 1000])
    ap.add_argument("--history", type=int, nargs="+", default=[100, 100_000])
    ap.add_argument("--updates", type=int, default=200)
    args = ap.parse_args()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)", flush=True)
    n_stream = 5 + args.updates + 64 * 6
    y_all = np.asarray(engine.simulate(jax.random.PRNGKey(0), SPEC, PARAMS, max(args.history) + n_stream))
    sm_cost = {T: refilter_statsmodels(T, y_all) for T in args.history}
    rows = []
    for S in args.draws:
        for T in args.history:
            y = np.concatenate([y_all[:T], y_all[max(args.history):]])
            catch, med, p90, per_obs_batch, steady = online_latency(S, T, y, args.updates)
            naive = naive_bank_latency(S, T, y, args.updates)
            ours = refilter_ours(S, T, y)
            rows.append((S, T, catch, med, p90, per_obs_batch, steady, naive, ours, sm_cost[T] * S))
            print(f"S={S:5d} T={T:7d}: update {med * 1e3:.3f} ms (p90 {p90 * 1e3:.3f}), micro-batch "
                  f"{per_obs_batch * 1e3:.3f} ms/obs, steady {steady:.0%}; naive dense bank {naive * 1e3:.3f} ms; "
                  f"re-filter ours {ours * 1e3:.1f} ms, statsmodels {sm_cost[T] * S * 1e3:.1f} ms", flush=True)
    print()
    print(f"{'S':>5} {'T':>7} | {'catch-up s':>10} | {'update ms':>9} {'p90':>7} {'batch ms/obs':>12} {'steady':>6} | "
          f"{'naive ms':>8} {'/naive':>6} | {'refilter ours ms':>16} {'statsmodels ms':>14} | {'× ours':>9} {'× sm':>10}")
    for S, T, catch, med, p90, b, steady, naive, ours, sm in rows:
        print(f"{S:>5} {T:>7} | {catch:>10.2f} | {med * 1e3:>9.3f} {p90 * 1e3:>7.3f} {b * 1e3:>12.3f} {steady:>6.0%} | "
              f"{naive * 1e3:>8.3f} {med / naive:>6.2f} | {ours * 1e3:>16.1f} {sm * 1e3:>14.1f} | "
              f"{ours / med:>9.0f} {sm / med:>10.0f}")
    print("\nstatsmodels: one draw timed, × S. '× ours' / '× sm': re-filter cost per point / online update latency.")
    print("naive: dense vmapped Kalman bank, no report (the update's in-run reference; '/naive' = update / naive).")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for S in args.draws:
        by_t = {T: med for s, T, _, med, *_ in rows if s == S}
        if len(by_t) > 1:
            lo, hi = min(by_t), max(by_t)
            print(f"S={S}: update latency at T={hi} / at T={lo} = {by_t[hi] / by_t[lo]:.2f} (flat in t ≈ 1)")


if __name__ == "__main__":
    main()
