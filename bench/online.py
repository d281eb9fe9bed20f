"""Online update benchmark: per-observation latency of the posterior bank vs re-filtering the history.

Model: local linear trend + 12-period dummy seasonal (13 states); S posterior draws (the
parameters jittered around a base value); history length T. For each (S, T):

* online      — `OnlineFilter.update(y)` for one new observation (full info: mixture bands,
                components, PIT, ESS), blocked on the result, median over many observations;
* micro-batch — `update_many` of 64 observations, per observation;
* naive bank  — the in-run reference for the update: `jax.vmap` over the draws of a plain dense
                Kalman step (a ← T(a + K v), P ← T(P − K Kᵀ F)Tᵀ + Q with m×m matmuls), no report;
                the machine may be loaded, so compare the update to it as a ratio: the two are timed
                in alternating blocks of 20 observations and the ratio is the median over blocks;
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
from engine.model import batch_systems, filter_batch
from engine.rejuvenation import RejuvenationConfig

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


def naive_bank(S: int):
    """One step of a dense vmapped Kalman bank (no structure, no report): a function of y_t that
    advances its own state and blocks on the result."""
    system = batch_systems(SPEC, jnp.asarray(draws(S)), None)   # batch-leading
    z = system.design[0]

    def one(a, P, T, Q, H, y_t):
        F = z @ P @ z + H
        K = P @ z / F
        v = y_t - z @ a
        return T @ (a + K * v), T @ (P - jnp.outer(K, K) * F) @ T.T + Q, -0.5 * (jnp.log(2 * jnp.pi * F) + v * v / F)

    step = jax.jit(lambda a, P, y_t: jax.vmap(one, (0, 0, 0, 0, 0, None))(
        a, P, system.transition, jax.vmap(jnp.diag)(system.state_var), system.obs_var, y_t), donate_argnums=(0, 1))
    m = system.transition.shape[-1]
    state = [jnp.zeros((S, m)), jnp.broadcast_to(1e3 * jnp.eye(m), (S, m, m))]

    def advance(y_t: float):
        a, P, ll = step(*state, float(y_t))
        jax.block_until_ready(ll)
        state[:] = [a, P]
    return advance


def call_floor(filt: engine.OnlineFilter, repeat: int = 300) -> float:
    """Median seconds of a compiled call shaped like one `update()` (the same bank and donated
    belief in, the belief and an info of zeros out) that does no arithmetic: what the XLA CPU
    runtime costs such a call (argument handling, output buffers, handing work to its threads)."""
    config, bank = filt.config, filt.bank
    info = jax.eval_shape(lambda b: engine.online.standard_step(config, bank, b, 0.0)[1], filt._belief)
    zeros = jax.jit(lambda bank, belief: (belief._replace(t=belief.t + 1),
                                          jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), info)),
                    donate_argnums=1)
    belief = jax.tree_util.tree_map(jnp.copy, filt._belief)
    times = []
    for _ in range(repeat + 5):
        t0 = time.perf_counter()
        belief, out = zeros(bank, belief)
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t0)
    return float(np.median(times[5:]))


def online_latency(S: int, T: int, y: np.ndarray, n_updates: int, block: int = 20):
    """Single updates and the naive bank, timed in alternating blocks of `block` observations so
    that both see the same machine load; then micro-batches.

    Returns (catch-up s, update median s, update p90 s, naive median s, median over blocks of
    update/naive, micro-batch s per observation, fraction of steady draws at the end, the
    runtime's floor for a call of the update's shape (`call_floor`) in s).
    """
    t0 = time.perf_counter()
    filt = engine.OnlineFilter(SPEC, draws(S), y_history=y[:T], rejuvenation=RejuvenationConfig(automatic=False))
    jax.block_until_ready(filt.state)
    catch_up = time.perf_counter() - t0
    naive = naive_bank(S)
    stream = y[T:]
    for v in stream[:5]:                      # compile and warm up
        jax.block_until_ready(filt.update(v))
        naive(v)
    times, naive_times, ratios = [], [], []
    for start in range(5, 5 + n_updates, block):
        chunk = stream[start:min(start + block, 5 + n_updates)]
        ours, ref = [], []
        for v in chunk:
            t0 = time.perf_counter()
            jax.block_until_ready(filt.update(v))
            ours.append(time.perf_counter() - t0)
        for v in chunk:
            t0 = time.perf_counter()
            naive(v)
            ref.append(time.perf_counter() - t0)
        times += ours
        naive_times += ref
        ratios.append(np.median(ours) / np.median(ref))
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
    return (catch_up, float(np.median(times)), float(np.percentile(times, 90)), float(np.median(naive_times)),
            float(np.median(ratios)), batch / 64, steady, call_floor(filt))


def refilter_ours(S: int, T: int, y: np.ndarray) -> float:
    """One batched exact filter pass over the history for all S draws (the per-point cost)."""
    Y = jnp.broadcast_to(jnp.asarray(y[:T])[:, None], (T, S))
    p = jnp.asarray(draws(S))
    fn = lambda: filter_batch(SPEC, p, Y, None, False, False)[1]
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
            catch, med, p90, naive, paired, per_obs_batch, steady, floor = online_latency(S, T, y, args.updates)
            ours = refilter_ours(S, T, y)
            rows.append((S, T, catch, med, p90, per_obs_batch, steady, naive, paired, floor, ours, sm_cost[T] * S))
            print(f"S={S:5d} T={T:7d}: update {med * 1e3:.3f} ms (p90 {p90 * 1e3:.3f}), micro-batch "
                  f"{per_obs_batch * 1e3:.3f} ms/obs, steady {steady:.0%}; call floor {floor * 1e3:.3f} ms; "
                  f"naive dense bank {naive * 1e3:.3f} ms; "
                  f"re-filter ours {ours * 1e3:.1f} ms, statsmodels {sm_cost[T] * S * 1e3:.1f} ms", flush=True)
    print()
    print(f"{'S':>5} {'T':>7} | {'catch-up s':>10} | {'update ms':>9} {'p90':>7} {'batch ms/obs':>12} {'steady':>6} | "
          f"{'floor ms':>8} {'naive ms':>8} {'/naive':>6} | {'refilter ours ms':>16} {'statsmodels ms':>14} | {'× ours':>9} {'× sm':>10}")
    for S, T, catch, med, p90, b, steady, naive, paired, floor, ours, sm in rows:
        print(f"{S:>5} {T:>7} | {catch:>10.2f} | {med * 1e3:>9.3f} {p90 * 1e3:>7.3f} {b * 1e3:>12.3f} {steady:>6.0%} | "
              f"{floor * 1e3:>8.3f} {naive * 1e3:>8.3f} {paired:>6.2f} | {ours * 1e3:>16.1f} {sm * 1e3:>14.1f} | "
              f"{ours / med:>9.0f} {sm / med:>10.0f}")
    print("\nstatsmodels: one draw timed, × S. '× ours' / '× sm': re-filter cost per point / online update latency.")
    print("naive: dense vmapped Kalman bank, no report (the update's in-run reference, timed in blocks of 20 "
          "observations alternating with the update's; '/naive' = median over blocks of update / naive).")
    print("floor: a compiled call shaped like one update (bank and belief in, belief and an info of zeros out) "
          "with no arithmetic: the runtime's own cost per call.")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for S in args.draws:
        by_t = {T: med for s, T, _, med, *_ in rows if s == S}
        if len(by_t) > 1:
            lo, hi = min(by_t), max(by_t)
            print(f"S={S}: update latency at T={hi} / at T={lo} = {by_t[hi] / by_t[lo]:.2f} (flat in t ≈ 1)")


if __name__ == "__main__":
    main()
