"""Log-likelihood benchmark: StreamSSM vs statsmodels UnobservedComponents and dynamax.

Model: local linear trend + 12-period dummy seasonal (13 states), T = 1000, data simulated
from the model. Every peer runs in this same process; ratios are printed at the end.

    python bench/loglik.py [--series 1000] [--time 1000] [--sm-series 50]
"""

from __future__ import annotations

import argparse
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import engine

SPEC = {"level": {"kind": "local_linear_trend"}, "seasonal": [{"period": 12, "form": "dummy"}]}
PARAMS = np.array([1.0, 0.1, 0.001, 0.05])  # sigma2.irregular, .level, .trend, .seasonal


def timeit(fn, repeat: int = 20, warmup: int = 2) -> float:
    """Median wall time of fn() in seconds (after warm-up, results blocked on)."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def dynamax_loglik_fn():
    """dynamax's lgssm_filter on the same system (approximate diffuse start, P0 = 1e7·I)."""
    from dynamax.linear_gaussian_ssm import inference as dx
    system = engine.build_system(SPEC, dict(zip(engine.param_names(SPEC), PARAMS)))
    m = system.transition.shape[0]
    params = dx.ParamsLGSSM(
        initial=dx.ParamsLGSSMInitial(mean=jnp.zeros(m), cov=1e7 * jnp.eye(m)),
        dynamics=dx.ParamsLGSSMDynamics(weights=system.transition, bias=jnp.zeros(m),
                                        input_weights=jnp.zeros((m, 0)), cov=jnp.diag(system.state_var)),
        emissions=dx.ParamsLGSSMEmissions(weights=system.design[None, :], bias=jnp.zeros(1),
                                          input_weights=jnp.zeros((1, 0)), cov=system.obs_var[None, None]))
    return jax.jit(lambda y: dx.lgssm_filter(params, y[:, None]).marginal_loglik)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--series", type=int, default=1000)
    ap.add_argument("--time", type=int, default=1000)
    ap.add_argument("--sm-series", type=int, default=50, help="series statsmodels filters in its loop")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    import statsmodels.api as sm

    Y = np.asarray(engine.simulate(jax.random.PRNGKey(0), SPEC, PARAMS, args.time, n_series=args.series))
    y = Y[0]
    rows = []

    mod = sm.tsa.UnobservedComponents(y, level="lltrend", seasonal=12, use_exact_diffuse=True)
    t_sm = timeit(lambda: mod.loglike(PARAMS), repeat=50)
    ours = jax.jit(lambda p, yy: engine.loglik(SPEC, p, yy))
    t0 = time.perf_counter(); jax.block_until_ready(ours(PARAMS, y)); compile_single = time.perf_counter() - t0
    t_ours = timeit(lambda: ours(PARAMS, y), repeat=50)
    rel = abs(float(ours(PARAMS, y)) - mod.loglike(PARAMS)) / abs(mod.loglike(PARAMS))
    dyn = dynamax_loglik_fn()
    t_dyn = timeit(lambda: dyn(jnp.asarray(y)), repeat=50)
    rows.append(("one series, loglik", f"{t_ours * 1e3:.3f} ms", f"statsmodels {t_sm * 1e3:.3f} ms",
                 f"{t_sm / t_ours:.2f}x"))
    rows.append(("one series, loglik", f"{t_ours * 1e3:.3f} ms", f"dynamax {t_dyn * 1e3:.3f} ms",
                 f"{t_dyn / t_ours:.2f}x"))

    vg = jax.jit(jax.value_and_grad(lambda p, yy: engine.loglik(SPEC, p, yy)))
    t_vg = timeit(lambda: vg(PARAMS, y), repeat=50)
    rows.append(("value+gradient / value", f"{t_vg * 1e3:.3f} ms", f"value {t_ours * 1e3:.3f} ms",
                 f"{t_vg / t_ours:.2f}x cost"))

    many = jax.jit(lambda p, YY: engine.loglik_many(SPEC, p, YY))
    Yj = jnp.asarray(Y)
    t_many = timeit(lambda: many(PARAMS, Yj), repeat=3, warmup=1)
    rng = np.random.default_rng(0)
    P = PARAMS * np.exp(0.3 * rng.standard_normal((args.series, PARAMS.size)))
    t_many_p = timeit(lambda: many(P, Yj), repeat=3, warmup=1)
    t0 = time.perf_counter()
    for i in range(args.sm_series):
        sm.tsa.UnobservedComponents(Y[i], level="lltrend", seasonal=12, use_exact_diffuse=True).loglike(PARAMS)
    sm_rate = args.sm_series / (time.perf_counter() - t0)
    rows.append((f"{args.series} series batched, shared params", f"{args.series / t_many:,.0f} series/s",
                 f"statsmodels loop {sm_rate:,.0f} series/s", f"{args.series / t_many / sm_rate:.1f}x"))
    rows.append((f"{args.series} series batched, own params", f"{args.series / t_many_p:,.0f} series/s",
                 f"statsmodels loop {sm_rate:,.0f} series/s", f"{args.series / t_many_p / sm_rate:.1f}x"))

    print(f"\nloglik benchmark: T={args.time}, m=13 (local linear trend + 12 dummy seasonal), "
          f"{jax.devices()[0].platform.upper()}, float64; |ours - statsmodels| / |statsmodels| = {rel:.1e}; "
          f"first-call compile {compile_single:.2f} s")
    print(f"| {'work':<40} | {'ours':>20} | {'peer':>32} | {'ratio':>12} |")
    print(f"|{'-' * 42}|{'-' * 22}|{'-' * 34}|{'-' * 14}|")
    for r in rows:
        print(f"| {r[0]:<40} | {r[1]:>20} | {r[2]:>32} | {r[3]:>12} |")


if __name__ == "__main__":
    main()
