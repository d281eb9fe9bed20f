"""The Gaussian model at the mode: the mode and the Laplace log-likelihood against a dense computation
for a Poisson local level, and the gradients of the approximate log-likelihood against central
differences for every family."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from scipy import special

from engine import nongaussian as ng

RNG = np.random.default_rng(11)
T = 50
LEVEL = np.cumsum(RNG.normal(0, 0.15, T)) + 1.5
COUNTS = RNG.poisson(np.exp(LEVEL)).astype(float)
COUNTS[[9, 30]] = np.nan
HEAVY = LEVEL + 0.3 * RNG.standard_t(5, T)


def _dense_laplace(y, s2):
    """Laplace's approximation of the diffuse log-likelihood of a Poisson local level, on the dense
    (time × time) posterior of the level: the mode by Newton's method, then
    log p(y | θ̂) + log p(θ̂) + (T/2) log 2π − ½ log det A, A = −∇² log p(θ, y) at θ̂, with the flat
    (2π)^{-1/2} density of the diffuse first level."""
    n = len(y)
    obs = np.isfinite(y)
    y0 = np.where(obs, y, 0.0)
    D = np.diff(np.eye(n), axis=0)               # (n-1, n) first differences
    prior_precision = D.T @ D / s2
    theta = np.log(np.where(obs, y0, np.nanmean(y)) + 0.5)
    for _ in range(100):
        mu = np.where(obs, np.exp(theta), 0.0)
        grad = (y0 - mu) * obs - prior_precision @ theta
        A = np.diag(mu) + prior_precision
        step = np.linalg.solve(A, grad)
        theta = theta + step
        if np.max(np.abs(step)) < 1e-12:
            break
    mu = np.exp(theta)
    log_lik = np.sum(np.where(obs, y0 * theta - mu - special.gammaln(y0 + 1), 0.0))
    d = D @ theta
    log_prior = -0.5 * np.log(2 * np.pi) + np.sum(-0.5 * np.log(2 * np.pi * s2) - 0.5 * d * d / s2)
    A = np.diag(np.where(obs, mu, 0.0)) + prior_precision
    return theta, log_lik + log_prior + 0.5 * n * np.log(2 * np.pi) - 0.5 * np.linalg.slogdet(A)[1]


def test_poisson_mode_and_laplace_loglik_match_a_dense_computation():
    spec = {"level": "local_level", "observation": "poisson"}
    for s2 in (0.01, 0.05):
        theta, laplace = _dense_laplace(COUNTS, s2)
        a = ng.approximate(spec, {"sigma2.level": s2}, COUNTS)
        assert bool(a.converged) and int(a.iterations) < 20
        np.testing.assert_allclose(np.asarray(a.mode), theta, atol=1e-7)
        assert abs(float(a.loglik) - laplace) < 1e-7


@pytest.mark.parametrize("spec, params, y", [
    ({"level": "local_level", "seasonal": [{"period": 4}], "observation": "poisson"},
     {"sigma2.level": 0.02, "sigma2.seasonal": 0.01}, COUNTS),
    ({"level": "local_level", "observation": "negative_binomial"},
     {"sigma2.level": 0.02, "alpha.observation": 0.3}, COUNTS),
    ({"level": "local_level", "observation": "student_t"},
     {"sigma2.irregular": 0.09, "sigma2.level": 0.02, "nu.observation": 4.0}, HEAVY),
], ids=["poisson_seasonal", "negative_binomial", "student_t"])
def test_gradient_of_the_approximate_loglik_matches_central_differences(spec, params, y):
    """Every parameter's derivative, on the log scale (implicit differentiation at the mode)."""
    names = list(params)
    u0 = np.log(np.array([params[n] for n in names]))

    def f(u):
        return ng.approximate(spec, dict(zip(names, jax.numpy.exp(u))), y).loglik

    grad = np.asarray(jax.jit(jax.grad(f))(u0))
    h = 1e-5
    for i in range(len(names)):
        e = np.zeros(len(names)); e[i] = h
        fd = (float(f(u0 + e)) - float(f(u0 - e))) / (2 * h)
        assert abs(grad[i] - fd) < 1e-5 * (1 + abs(fd)), (names[i], grad[i], fd)
