"""The importance-sampling likelihood of a multi-state count model (local level + dummy seasonal of
period 4, Poisson) against the `particles` package's bootstrap particle filter with many particles,
on the same model with the same proper initial distribution (the particle filter cannot start
diffuse), within Monte Carlo error."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine.nongaussian.approx import model_system
from engine.nongaussian.importance import importance_from_system
from engine.spec import as_spec

particles = pytest.importorskip("particles")
from particles import distributions as dists  # noqa: E402
from particles import state_space_models as ssm  # noqa: E402

SPEC = as_spec({"level": "local_level", "seasonal": [{"period": 4}], "observation": "poisson"})
Q_LEVEL, Q_SEASONAL = 0.01, 0.004
M0 = np.array([np.log(10.0), 0.3, -0.2, 0.1])      # initial state mean, and its variances
V0 = np.array([0.25, 0.04, 0.04, 0.04])
TRANSITION = np.array([[1.0, 0, 0, 0], [0, -1, -1, -1], [0, 1, 0, 0], [0, 0, 1, 0]])


class _Transition(dists.ProbDist):
    """α_{t+1} = T α_t + η_t with noise on the level and the first seasonal state only."""

    dim = 4

    def __init__(self, xp):
        self.xp = xp

    def rvs(self, size=None):
        x = self.xp @ TRANSITION.T
        x[:, 0] += np.sqrt(Q_LEVEL) * np.random.randn(x.shape[0])
        x[:, 1] += np.sqrt(Q_SEASONAL) * np.random.randn(x.shape[0])
        return x


class _PoissonLevelSeasonal(ssm.StateSpaceModel):
    def PX0(self):
        return dists.MvNormal(loc=M0, cov=np.diag(V0))

    def PX(self, t, xp):
        return _Transition(xp)

    def PY(self, t, xp, x):
        return dists.Poisson(rate=np.exp(x[:, 0] + x[:, 1]))


def _data(n_time=40, seed=3):
    rng = np.random.default_rng(seed)
    alpha = M0 + np.sqrt(V0) * rng.normal(size=4)
    y = []
    for _ in range(n_time):
        y.append(rng.poisson(np.exp(alpha[0] + alpha[1])))
        alpha = TRANSITION @ alpha
        alpha[0] += np.sqrt(Q_LEVEL) * rng.normal()
        alpha[1] += np.sqrt(Q_SEASONAL) * rng.normal()
    return np.array(y, dtype=float)


def test_poisson_level_seasonal_matches_the_particles_bootstrap_filter():
    y = _data()
    pvec = jnp.array([Q_LEVEL, Q_SEASONAL])
    system = model_system(SPEC, pvec, None)._replace(
        init_mean=jnp.asarray(M0), init_cov=jnp.diag(jnp.asarray(V0)), init_diffuse=jnp.zeros((4, 4)))
    estimate = jax.jit(importance_from_system, static_argnames=("spec", "n_draws"))
    ours = estimate(jax.random.PRNGKey(7), SPEC, system, pvec, jnp.asarray(y), jnp.zeros(len(y)), n_draws=4000)
    np.random.seed(5)
    runs = []
    for _ in range(4):
        pf = particles.SMC(fk=ssm.Bootstrap(ssm=_PoissonLevelSeasonal(), data=list(y)), N=50000,
                           collect=None)
        pf.run()
        runs.append(pf.logLt)
    pf_mean, pf_se = np.mean(runs), np.std(runs, ddof=1) / np.sqrt(len(runs))
    assert bool(ours.converged)
    tolerance = 4 * np.hypot(float(ours.se), pf_se) + 0.01
    assert abs(float(ours.loglik) - pf_mean) < tolerance, (float(ours.loglik), float(ours.se), runs)
    print(f"importance {float(ours.loglik):.4f} ± {float(ours.se):.4f}, particles {pf_mean:.4f} ± {pf_se:.4f}")
