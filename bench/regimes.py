"""Switching (regime) filters against the plain Kalman filter, and the HMM filters against each other.

Printed, all measured in this run on this machine:

1. the switching log-likelihood (`engine.regimes.loglik`, GPB2 / GPB3 / IMM) against the plain
   exact filter (`engine.loglik`) of the same structural model, T = `--time`, jitted, compile
   time separately, and the ratio to the plain filter;
2. one online step of a bank of S = `--draws` parameter draws (`engine.regimes.bank_step`),
   per method, in µs per observation (the design target for streaming: ≤ 3× the plain update);
3. the HMM forward filter, sequential (`engine.hmm.forward_filter`) and parallel-in-time
   (`engine.hmm.parallel_filter`), for K = 3 states and T = `--time`.

    python bench/regimes.py            # T = 1000, S = 1000
    python bench/regimes.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("STREAMSSM_JAX_CACHE", "0")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import engine  # noqa: E402
from engine import hmm, regimes  # noqa: E402

BASE = {"level": {"kind": "local_linear_trend"}, "seasonal": [{"period": 12, "form": "dummy"}]}
SPEC = engine.ModelSpec.from_dict(dict(BASE, regimes={"outlier": True, "level_shift": True}))
PARAMS = {"sigma2.irregular": 1.0, "sigma2.level": 0.1, "sigma2.trend": 0.001, "sigma2.seasonal": 0.05,
          "prob.outlier": 0.01, "scale.outlier": 30.0, "prob.level_shift": 0.01, "scale.level_shift": 30.0}


def timed(fn, *args, repeat: int = 5) -> tuple[float, float]:
    """(first call incl. compile, best of `repeat` later calls) in seconds."""
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t
    best = np.inf
    for _ in range(repeat):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return first, best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--time", type=int, default=1000)
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    n_time, n_draws = (100, 50) if a.quick else (a.time, a.draws)
    d = jax.devices()[0]
    print(f"backend={jax.default_backend()} device_kind={d.device_kind}")
    rng = np.random.default_rng(0)
    y = np.cumsum(rng.normal(scale=0.3, size=n_time)) + rng.normal(size=n_time)
    y[n_time // 3] += 8.0
    y[n_time // 2:] += 6.0

    plain = {k: v for k, v in PARAMS.items() if k in engine.param_names(BASE)}
    c, t_plain = timed(jax.jit(lambda p: engine.loglik(BASE, p, y)), plain)
    print(f"\n1. log-likelihood, T={n_time}, m={engine.layout(SPEC).n_states}, K=3 regimes")
    print(f"   plain exact filter   {t_plain * 1e3:9.2f} ms   (compile {c:.1f} s)")
    for method in regimes.METHODS:
        c, t = timed(jax.jit(lambda p, m=method: regimes.loglik(SPEC, p, y, method=m)), PARAMS)
        print(f"   {method:5s}                {t * 1e3:9.2f} ms   (compile {c:.1f} s)   {t / t_plain:6.1f}× plain")

    print(f"\n2. one online step, S={n_draws} draws (`regimes.bank_step`)")
    lay = engine.layout(SPEC)
    system = engine.build_system(SPEC, PARAMS)
    model = regimes.regime_model(SPEC, PARAMS)
    tile = lambda tree: jax.tree_util.tree_map(lambda x: np.broadcast_to(x, (n_draws,) + np.shape(x)), tree)
    systems, models = tile(system), tile(model)
    for method in regimes.METHODS:
        state = jax.vmap(lambda s, m=method: regimes.init(lay, s, 3, m))(systems)
        step = jax.jit(lambda s, mo, st, y_t, m=method: regimes.bank_step(lay, s, mo, st, y_t, 0.0, m))
        for y_t in y[:40]:   # past the diffuse steps
            state, _ = step(systems, models, state, y_t)
        c, t = timed(step, systems, models, state, y[40])
        print(f"   {method:5s}  {t * 1e6:10.1f} µs per observation")

    print(f"\n3. HMM forward filter, K=3, T={n_time}")
    log_init = np.log(np.full(3, 1 / 3))
    log_trans = np.log(rng.dirichlet(np.ones(3), size=3))
    log_lik = rng.normal(size=(n_time, 3))
    for name, fn in (("sequential", hmm.forward_filter), ("parallel", hmm.parallel_filter)):
        c, t = timed(jax.jit(fn), log_init, log_trans, log_lik)
        print(f"   {name:10s} {t * 1e3:9.3f} ms   (compile {c:.1f} s)")


if __name__ == "__main__":
    main()
