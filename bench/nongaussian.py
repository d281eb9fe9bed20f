"""Exact log-likelihood of a count model: our importance sampling over paths and our particle filters
(bootstrap and guided) against the `particles` package's bootstrap filter, same model, same data,
same number of particles/paths, all in this run.

Model: Poisson with a local linear trend + 12-period dummy seasonal on the log scale (13 states),
T = 1000, a proper initial state (a particle filter cannot start diffuse), data simulated from it.
For each method: the time of one estimate and the spread of the estimates over seeds; from both,
the time to reach a standard error of 0.05 nats (time × (sd / 0.05)², the error falling as
1/√N; an estimate already within it counts its own time). Ratios against `particles` are printed at the end.

    python bench/nongaussian.py [--time 1000] [--particles 1000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import engine  # noqa: F401  (float64)
from engine.nongaussian import sequential as S
from engine.nongaussian.approx import model_system
from engine.nongaussian.importance import importance_from_system
from engine.spec import as_spec

SPEC = as_spec({"level": {"kind": "local_linear_trend"}, "seasonal": [{"period": 12, "form": "dummy"}],
                "observation": "poisson"})
Q = np.array([0.002, 1e-7, 0.0005])    # sigma2.level, .trend, .seasonal
TARGET_SE = 0.05


def model():
    pvec = jnp.asarray(Q)
    system = model_system(SPEC, pvec, None)
    m = system.transition.shape[0]
    init_mean = np.zeros(m)
    init_mean[0] = 3.0                              # counts about e³ = 20
    init_var = np.full(m, 0.01)
    init_var[0], init_var[1] = 0.1, 1e-7
    system = system._replace(init_mean=jnp.asarray(init_mean), init_cov=jnp.diag(jnp.asarray(init_var)),
                             init_diffuse=jnp.zeros((m, m)))
    return pvec, system, init_mean, init_var


def simulate(system, n_time, seed=0):
    rng = np.random.default_rng(seed)
    T, q, z = (np.asarray(a) for a in (system.transition, system.state_var, system.design))
    alpha = np.asarray(system.init_mean) + np.sqrt(np.diag(np.asarray(system.init_cov))) * rng.normal(size=len(q))
    y = []
    for _ in range(n_time):
        y.append(rng.poisson(np.exp(z @ alpha)))
        alpha = T @ alpha + np.sqrt(q) * rng.normal(size=len(q))
    return np.array(y, dtype=float)


def particles_model(system):
    from particles import distributions as dists
    from particles import state_space_models as ssm
    T, q, z = (np.asarray(a) for a in (system.transition, system.state_var, system.design))
    m0, P0 = np.asarray(system.init_mean), np.asarray(system.init_cov)
    noisy = np.flatnonzero(q > 0)

    class Transition(dists.ProbDist):
        dim = len(q)

        def __init__(self, xp):
            self.xp = xp

        def rvs(self, size=None):
            x = self.xp @ T.T
            x[:, noisy] += np.sqrt(q[noisy]) * np.random.randn(x.shape[0], len(noisy))
            return x

    class Model(ssm.StateSpaceModel):
        def PX0(self):
            return dists.MvNormal(loc=m0, cov=P0)

        def PX(self, t, xp):
            return Transition(xp)

        def PY(self, t, xp, x):
            return dists.Poisson(rate=np.exp(x @ z))

    return Model()


def timed(fn, repeats):
    """(seconds of one call, the estimates over `repeats` seeds): the first call (compilation) untimed."""
    fn(0)
    values, times = [], []
    for s in range(1, repeats + 1):
        t0 = time.perf_counter()
        values.append(float(jax.block_until_ready(fn(s))))
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), np.array(values)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--time", type=int, default=1000)
    ap.add_argument("--particles", type=int, default=1000, help="particles, and importance paths")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    import particles

    pvec, system, init_mean, init_var = model()
    y = simulate(system, args.time)
    yj, zeros = jnp.asarray(y), jnp.zeros(len(y))
    n = args.particles
    estimate = jax.jit(importance_from_system, static_argnames=("spec", "n_draws"))
    se_is = {}

    def ours_is(seed):
        r = estimate(jax.random.PRNGKey(seed), SPEC, system, pvec, yj, zeros, n_draws=n)
        se_is[seed] = float(r.se)
        return r.loglik

    def ours_pf(method):
        return lambda seed: S.run(SPEC, {"sigma2.level": Q[0], "sigma2.trend": Q[1], "sigma2.seasonal": Q[2]}, y,
                                  method=method, n_particles=n, seed=seed, init_mean=init_mean,
                                  init_cov=init_var)[0]

    ssm_model = particles_model(system)

    def theirs(seed):
        np.random.seed(seed)
        pf = particles.SMC(fk=particles.state_space_models.Bootstrap(ssm=ssm_model, data=list(y)), N=n,
                           collect=None)
        pf.run()
        return pf.logLt

    rows = {}
    small = max(2, n // 50)

    def ours_is_small(seed):
        return estimate(jax.random.PRNGKey(seed), SPEC, system, pvec, yj, zeros, n_draws=small).loglik

    for name, fn in (("importance sampling (ours)", ours_is), (f"importance sampling, {small} paths", ours_is_small),
                     ("guided particle filter (ours)", ours_pf("guided")),
                     ("bootstrap particle filter (ours)", ours_pf("bootstrap")), ("particles bootstrap", theirs)):
        seconds, values = timed(fn, args.repeats)
        sd = float(np.std(values, ddof=1))
        # an estimate already within the target costs its own time (no extrapolation below it)
        rows[name] = (seconds, values, sd, seconds * max((sd / TARGET_SE) ** 2, 1.0))
        print(f"{name:34s} {seconds * 1e3:9.1f} ms  mean {values.mean():10.3f}  sd over seeds {sd:7.3f}  "
              f"time to se {TARGET_SE}: {rows[name][3]:9.3f} s", flush=True)
    print(f"(importance sampling's own se estimate: {np.mean(list(se_is.values())):.4f}; counts "
          f"{int(y.min())} to {int(y.max())}, mean {y.mean():.1f})")
    peer = rows["particles bootstrap"]
    print(f"\nT = {args.time}, {n} particles/paths, 13 states, load average {open('/proc/loadavg').read().split()[0]}")
    for name, row in rows.items():
        if name == "particles bootstrap":
            continue
        print(f"{name:34s} per estimate: {peer[0] / row[0]:7.1f}× faster   to se {TARGET_SE}: {peer[3] / row[3]:9.1f}×")
    own = rows["guided particle filter (ours)"]
    imp = rows["importance sampling (ours)"]
    print(f"importance sampling vs our guided particle filter, to se {TARGET_SE}: {own[3] / imp[3]:.1f}×")


if __name__ == "__main__":
    main()
