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


def race(fns: dict, repeat: int = 20, warmup: int = 2) -> dict:
    """Wall time of each fn() in seconds: the calls are interleaved round by round and the
    minimum is kept, so that load from other processes hits every peer alike."""
    for _ in range(warmup):
        for fn in fns.values():
            jax.block_until_ready(fn())
    times = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[k].append(time.perf_counter() - t0)
    return {k: float(np.min(v)) for k, v in times.items()}


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
    ours = jax.jit(lambda p, yy: engine.loglik(SPEC, p, yy))
    t0 = time.perf_counter(); jax.block_until_ready(ours(PARAMS, y)); compile_single = time.perf_counter() - t0
    rel = abs(float(ours(PARAMS, y)) - mod.loglike(PARAMS)) / abs(mod.loglike(PARAMS))
    dyn = dynamax_loglik_fn()
    vg = jax.jit(jax.value_and_grad(lambda p, yy: engine.loglik(SPEC, p, yy)))
    yj = jnp.asarray(y)
    _, grad = vg(PARAMS, y)
    grad_rel = float(np.max(np.abs(np.asarray(grad) - mod.score(PARAMS)) / np.abs(mod.score(PARAMS))))
    t = race({"sm": lambda: mod.loglike(PARAMS), "ours": lambda: ours(PARAMS, y), "dyn": lambda: dyn(yj),
              "vg": lambda: vg(PARAMS, y), "sm_score": lambda: mod.score(PARAMS)}, repeat=50)
    t_sm, t_ours, t_dyn, t_vg = t["sm"], t["ours"], t["dyn"], t["vg"]
    rows.append(("one series, loglik", f"{t_ours * 1e3:.3f} ms", f"statsmodels {t_sm * 1e3:.3f} ms",
                 f"{t_sm / t_ours:.2f}x"))
    rows.append(("one series, loglik", f"{t_ours * 1e3:.3f} ms", f"dynamax {t_dyn * 1e3:.3f} ms",
                 f"{t_dyn / t_ours:.2f}x"))

    rows.append(("value+gradient / value", f"{t_vg * 1e3:.3f} ms", f"value {t_ours * 1e3:.3f} ms",
                 f"{t_vg / t_ours:.2f}x cost"))
    rows.append(("value+gradient (exact)", f"{t_vg * 1e3:.3f} ms",
                 f"statsmodels score {t['sm_score'] * 1e3:.3f} ms", f"{t['sm_score'] / t_vg:.2f}x"))

    many = jax.jit(lambda p, YY: engine.loglik_many(SPEC, p, YY))
    Yj = jnp.asarray(Y)
    rng = np.random.default_rng(0)
    P = PARAMS * np.exp(0.3 * rng.standard_normal((args.series, PARAMS.size)))
    t = race({"shared": lambda: many(PARAMS, Yj), "own": lambda: many(P, Yj)}, repeat=3, warmup=1)
    t_many, t_many_p = t["shared"], t["own"]
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
          f"gradient vs statsmodels' numerical score: max relative difference {grad_rel:.1e}; "
          f"first-call compile {compile_single:.2f} s")
    print(f"| {'work':<40} | {'ours':>20} | {'peer':>32} | {'ratio':>12} |")
    print(f"|{'-' * 42}|{'-' * 22}|{'-' * 34}|{'-' * 14}|")
    for r in rows:
        print(f"| {r[0]:<40} | {r[1]:>20} | {r[2]:>32} | {r[3]:>12} |")


if __name__ == "__main__":
    main()
