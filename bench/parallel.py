"""Parallel-in-time (associative-scan) filter vs our sequential filter, on this device and on the CPU.

Model: local linear trend + 12-period dummy seasonal (13 states), exact diffuse, simulated data.
Printed, all measured in this run:

1. the device (`jax.default_backend()`, device kind);
2. log-likelihood time for T = 1e3 … 1e6, sequential (`filter="standard"`) vs parallel
   (`filter="parallel"`), compile time separately, and the crossover length; on an
   accelerator also the sequential filter on this machine's CPU, and the ratios at T = 1e5
   (targets: ≥ 100× the sequential scan on the same GPU, ≥ 10× the best CPU filter);
3. batched throughput for `--series` series × T = `--batch-time` (series·steps per second):
   our best sequential batch (`loglik_many`, shared parameters: one covariance pass and an O(m)
   mean pass per series), the full batched sequential filter (per-series parameters) and the
   parallel one, with XLA's flop count of each and its fraction of the device's peak (a
   measured float64 matmul rate, and the nominal peak where the device is known);
4. float32 vs float64: the relative error of the log-likelihood and of the filtered means of
   both filters run entirely in float32, for long series and extreme data scales.

    python bench/parallel.py            # full sizes (meant for a GPU)
    python bench/parallel.py --quick    # a CPU smoke run (T ≤ 1e4)
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

os.environ.setdefault("STREAMSSM_JAX_CACHE", "0")   # compile times are cold ones (no on-disk cache)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import engine  # noqa: E402
from engine import kalman, parallel  # noqa: E402
from engine.model import batch_systems, filter_batch  # noqa: E402
from engine.system import layout  # noqa: E402

SPEC = engine.ModelSpec.from_dict({"level": {"kind": "local_linear_trend"},
                                   "seasonal": [{"period": 12, "form": "dummy"}]})
PARAMS = np.array([1.0, 0.1, 0.001, 0.05])  # sigma2.irregular, .level, .trend, .seasonal
# nominal float64 / float32 peaks (FLOP/s, without tensor cores) of devices we know
NOMINAL_PEAK = {"H100": (34e12, 67e12), "H200": (34e12, 67e12), "A100": (9.7e12, 19.5e12)}


def device_line() -> str:
    d = jax.devices()[0]
    return f"backend={jax.default_backend()} device_kind={d.device_kind} devices={jax.device_count()}"


def series(n_time: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    y = np.array(engine.simulate(jax.random.PRNGKey(seed), SPEC, PARAMS, n_time))
    return y * scale


def timed(fn, *args, repeat: int = 3):
    """(compile seconds, median run seconds) of jax.jit(fn) on args."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(*args))
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        runs.append(time.perf_counter() - t0)
    return compile_s, float(np.median(runs)), compiled


def loglik_fn(method: str):
    par = method == "parallel"
    return lambda p, y: jnp.sum(filter_batch(SPEC, p[None], y[:, None], None, False, False, par)[1])


def single_series(lengths, repeat: int):
    print("\n## one series, log-likelihood (seconds; compile separately)")
    cpu = jax.devices("cpu")[0]
    on_accel = jax.default_backend() != "cpu"
    head = f"{'T':>9} {'seq compile':>12} {'seq run':>10} {'par compile':>12} {'par run':>10} {'seq/par':>8}"
    print(head + (f" {'CPU seq run':>12} {'CPUseq/par':>10}" if on_accel else ""))
    p = jnp.asarray(PARAMS)
    rows = {}
    for n in lengths:
        y = jnp.asarray(series(n))
        sc, sr, f_seq = timed(loglik_fn("standard"), p, y, repeat=repeat)
        pc, pr, f_par = timed(loglik_fn("parallel"), p, y, repeat=repeat)
        rel = abs(float(f_par(p, y)) / float(f_seq(p, y)) - 1)
        line = f"{n:>9} {sc:>12.2f} {sr:>10.4f} {pc:>12.2f} {pr:>10.4f} {sr / pr:>8.2f}"
        cpu_run = None
        if on_accel:
            with jax.default_device(cpu):
                y_c, p_c = jax.device_put(y, cpu), jax.device_put(p, cpu)
                _, cpu_run, _ = timed(loglik_fn("standard"), p_c, y_c, repeat=repeat)
            line += f" {cpu_run:>12.4f} {cpu_run / pr:>10.2f}"
        print(line + f"   |rel diff| {rel:.1e}", flush=True)
        rows[n] = (sr, pr, cpu_run)
    faster = [n for n, (s, q, _) in rows.items() if q < s]
    print(f"crossover: parallel faster from T = {min(faster)} on (of {sorted(rows)})" if faster
          else "crossover: parallel slower at every length tried")
    if 100_000 in rows:
        s, q, c = rows[100_000]
        print(f"T = 1e5: parallel is {s / q:.1f}× the sequential scan on this device (target ≥ 100×)"
              + (f", {c / q:.1f}× the sequential filter on this CPU (target ≥ 10×)" if c else ""))


def flops_per_call(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan"))) if cost else float("nan")


def matmul_peak(dtype=jnp.float64, n: int = 2048) -> float:
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    jax.block_until_ready(f(a))
    t0 = time.perf_counter()
    for _ in range(3):
        jax.block_until_ready(f(a))
    return 3 * 2 * n ** 3 / (time.perf_counter() - t0)


def batched(n_series: int, n_time: int, repeat: int):
    print(f"\n## batched: {n_series} series × T = {n_time} (series·steps/s; flops per series·step by XLA)")
    rng = np.random.default_rng(1)
    Y = np.stack([series(n_time, seed=int(s)) for s in rng.integers(0, 2 ** 31, size=min(n_series, 64))])
    Y = jnp.asarray(np.resize(Y, (n_series, n_time)))
    P = jnp.asarray(PARAMS * np.exp(0.1 * rng.standard_normal((n_series, PARAMS.size))))
    peak = matmul_peak()
    kind = jax.devices()[0].device_kind
    nominal = next((v[0] for k, v in NOMINAL_PEAK.items() if k in kind), None)
    print(f"float64 matmul rate {peak / 1e9:.0f} GFLOP/s" + (f"; nominal float64 peak {nominal / 1e12:.0f} TFLOP/s"
                                                             if nominal else ""))
    per_step = step_flops(P[:64])
    cases = [("sequential, shared params (best)", "mean", lambda Y: engine.loglik_many(SPEC, PARAMS, Y, filter="standard")),
             ("sequential, per-series params", "standard", lambda Y: engine.loglik_many(SPEC, P, Y, filter="standard")),
             ("parallel, per-series params", "parallel", lambda Y: engine.loglik_many(SPEC, P, Y, filter="parallel"))]
    for name, kind_, fn in cases:
        comp, run, _ = timed(fn, Y, repeat=repeat)
        rate = n_series * n_time / run
        flop_rate = per_step[kind_] * rate
        print(f"{name:<34} compile {comp:6.2f}s run {run:8.4f}s  {rate:10.3e} series·steps/s  "
              f"{per_step[kind_]:8.0f} flop/series·step  {100 * flop_rate / peak:6.2f}% of the matmul rate"
              + (f", {100 * flop_rate / nominal:.3f}% of nominal" if nominal else ""), flush=True)


def step_flops(P) -> dict:
    """XLA's flop count per series·step of each method's loop-free core (loops are counted once by
    XLA, so the cores are costed without them): one batched standard step, one mean-only step,
    and one associative-scan element (the scan of 1024 elements / 1024)."""
    lay = layout(SPEC)
    system = kalman.batch_last(batch_systems(SPEC, P, None))
    state = kalman.init(lay, system)
    batch = P.shape[0]
    y, d = jnp.zeros(batch), jnp.zeros(batch)
    z = system.design
    std = jax.jit(lambda st: kalman.full_step(lay, system, st, y, d, z, kalman.Phase.STANDARD, False, False))
    mean = jax.jit(lambda st: kalman.steady_step(lay, system, st, y, d, z, False, False))
    one = jax.tree_util.tree_map(lambda a: a[0], batch_systems(SPEC, P[:1], None))
    Z = jnp.broadcast_to(one.design, (1024, lay.n_states))
    elems = parallel.filter_elements(one.transition, one.state_var, one.obs_var, Z, jnp.zeros(1024), jnp.zeros(1024))
    scan = jax.jit(lambda e: jax.lax.associative_scan(parallel.combine_filter, e))
    return {"standard": flops_per_call(std.lower(state).compile()) / batch,
            "mean": flops_per_call(mean.lower(state).compile()) / batch,
            "parallel": flops_per_call(scan.lower(elems).compile()) / 1024}


def float32_errors(lengths, scales):
    print("\n## float32 vs float64 (both filters entirely in float32; relative errors)")
    print(f"{'T':>8} {'scale':>8} {'seq loglik':>11} {'par loglik':>11} {'seq means':>10} {'par means':>10}")
    for n in lengths:
        base = series(n, seed=3)
        for scale in scales:
            y64 = base * scale
            p64 = PARAMS * scale ** 2
            ref = {}
            for method in ("standard", "parallel"):
                res = engine.filter_series(SPEC, p64, y64, filter=method)
                ref[method] = (float(jnp.sum(res.loglik_terms)), np.asarray(res.filtered_mean))
            out = []
            with warnings.catch_warnings(), jax.enable_x64(False):
                warnings.simplefilter("ignore")
                for method in ("standard", "parallel"):
                    res = engine.filter_series(SPEC, p64.astype(np.float32), y64.astype(np.float32), filter=method)
                    ll32, m32 = float(jnp.sum(res.loglik_terms)), np.asarray(res.filtered_mean, dtype=np.float64)
                    ll, m = ref[method]
                    out.append((abs(ll32 / ll - 1), np.max(np.abs(m32 - m)) / np.max(np.abs(m))))
            print(f"{n:>8} {scale:>8.0e} {out[0][0]:>11.1e} {out[1][0]:>11.1e} {out[0][1]:>10.1e} {out[1][1]:>10.1e}",
                  flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CPU smoke sizes (T ≤ 1e4)")
    ap.add_argument("--lengths", type=int, nargs="*")
    ap.add_argument("--series", type=int)
    ap.add_argument("--batch-time", type=int)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    quick = args.quick
    lengths = args.lengths or ([1_000, 10_000] if quick else [1_000, 10_000, 100_000, 1_000_000])
    n_series = args.series or (256 if quick else 100_000)
    batch_time = args.batch_time or (200 if quick else 1_000)
    print(device_line())
    print(f"model: {engine.param_names(SPEC)} ({layout(SPEC).n_states} states); sequential prefix "
          f"{parallel.prefix_length(layout(SPEC), 10 ** 9)} steps; auto crossover {parallel.CROSSOVER_STEPS}")
    single_series(lengths, args.repeat)
    batched(n_series, batch_time, args.repeat)
    float32_errors([1_000, 10_000] if quick else [10_000, 100_000], [1e-3, 1.0, 1e3, 1e6])


if __name__ == "__main__":
    main()
