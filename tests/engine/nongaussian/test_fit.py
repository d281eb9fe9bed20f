"""Bayesian fits of a count model against quadrature over the one hyperparameter: the posterior of
sigma2.level of a Poisson local level, with the exact likelihood from a grid filter (`grid`), under
the same prior. NUTS on the Laplace likelihood + the importance correction must match the exact
posterior within Monte Carlo error; the MAP on the importance-sampled likelihood (common random
numbers) must match the grid's mode on the same coordinates."""

from __future__ import annotations

import arviz as az
import jax
import numpy as np
import pytest
from scipy import interpolate, stats

import engine
from engine import nongaussian as ng

from . import grid as G

RNG = np.random.default_rng(7)
T = 40
COUNTS = RNG.poisson(np.exp(np.cumsum(RNG.normal(0, 0.2, T)) + 1.2)).astype(float)   # 0 to 10
COUNTS[12] = np.nan
SPEC = {"level": "local_level", "observation": "poisson"}
PRIOR_SCALE = 0.3
PRIORS = {"sigma2.level": {"dist": "half_normal", "scale": PRIOR_SCALE}}
U = np.linspace(-8.0, 0.5, 40)           # u = log sigma2.level: the quadrature's nodes
LEVELS = np.linspace(-8.0, 5.0, 651)


@pytest.fixture(scope="module")
def exact_log_posterior():
    """log p(u | y) + const on U (u = log σ², the Jacobian included), from the grid filter."""
    ll = np.array([G.local_level_filter(G.poisson, COUNTS, np.exp(u), LEVELS)[0].sum() for u in U])
    return ll, ll + stats.halfnorm.logpdf(np.exp(U), scale=PRIOR_SCALE) + U


def _quadrature(log_post, quantiles):
    fine = np.linspace(U[0], U[-1], 4000)
    lp = interpolate.CubicSpline(U, log_post)(fine)
    w = np.exp(lp - lp.max())
    w /= np.trapezoid(w, fine)
    s2 = np.exp(fine)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (w[1:] + w[:-1]) * np.diff(fine))])
    mean = np.trapezoid(w * s2, fine)
    return mean, np.sqrt(np.trapezoid(w * (s2 - mean) ** 2, fine)), np.interp(quantiles, cdf, s2)


def test_nuts_with_the_importance_correction_matches_quadrature(exact_log_posterior):
    ll_grid, log_post = exact_log_posterior
    q = np.array([0.1, 0.5, 0.9])
    mean, sd, quantiles = _quadrature(log_post, q)
    idata = engine.fit_nuts(SPEC, COUNTS, chains=2, warmup=300, draws=600, priors=PRIORS, seed=1)
    assert idata.attrs["trustworthy"] == 1 and idata.attrs["correction_pareto_k"] < 0.7
    # each draw's importance estimate of the likelihood against the grid filter's
    u = np.log(np.asarray(idata.posterior["sigma2.level"]).ravel())
    inside = (u > U[0]) & (u < U[-1])
    grid_at = interpolate.CubicSpline(U, ll_grid)(u[inside])
    est = np.asarray(idata.sample_stats["loglik"]).ravel()[inside]
    se = np.asarray(idata.sample_stats["loglik_se"]).ravel()[inside]
    # (each estimate's se, from 50 antithetic pairs, is itself noisy: most draws within 4 se,
    # and no bias on average)
    assert np.mean(np.abs(est - grid_at) < 4 * se + 0.01) > 0.95
    assert abs(np.mean(est - grid_at)) < 4 * np.sqrt(np.mean(se ** 2) / len(se)) + 0.01
    # the corrected posterior: within 4 Monte Carlo standard errors (the chains' ESS, shrunk by the
    # weights' ESS fraction)
    w = ng.posterior_weights(idata)
    n_eff = float(az.ess(idata, var_names=["sigma2.level"])["sigma2.level"]) * idata.attrs["correction_ess"] / w.size
    summary = ng.corrected_summary(idata, q)["sigma2.level"]
    tol = 4 * sd / np.sqrt(n_eff)
    assert abs(summary["mean"] - mean) < tol, (summary, mean, tol)
    assert abs(summary["sd"] - sd) < tol, (summary, sd, tol)
    np.testing.assert_allclose(summary["quantiles"], quantiles, atol=1.5 * tol)


def test_map_on_the_importance_likelihood_matches_the_grid_mode(exact_log_posterior):
    _, log_post = exact_log_posterior
    spline = interpolate.CubicSpline(U, log_post)
    fine = np.linspace(U[0], U[-1], 20001)
    u_grid = fine[np.argmax(spline(fine))]
    fit = engine.fit_map(SPEC, COUNTS, priors=PRIORS, draws=2000, seed=3)
    assert fit.converged and fit.loglik_se < 0.01
    u_fit = float(fit.z[0])
    # the curvature tells how far a log-posterior error of ε moves the mode: about √(2ε/|ℓ''|)
    curvature = -float(spline(u_grid, 2))
    assert abs(u_fit - u_grid) < np.sqrt(2 * 0.01 / curvature), (u_fit, u_grid)
    assert abs(np.exp(u_fit) - fit.params["sigma2.level"]) < 1e-12
    assert fit.z_cov[0, 0] == pytest.approx(1 / curvature, rel=0.1)
    laplace = engine.fit_map(SPEC, COUNTS, priors=PRIORS, exact=False)
    assert laplace.loglik_se == 0.0 and abs(float(laplace.z[0]) - u_grid) < 0.2


def test_the_importance_loglik_with_common_random_numbers_has_the_exact_gradient():
    """Fixed key: the estimate is a smooth function of ψ, differentiated through the mode."""
    from engine.nongaussian.importance import importance_loglik
    spec, y, x, offset = ng.prepare_data(SPEC, COUNTS)
    key = jax.random.PRNGKey(0)
    f = jax.jit(lambda u: importance_loglik(key, spec, jax.numpy.exp(u)[None], y, x, offset, 200).loglik)
    u0, h = np.log(0.1), 1e-5
    fd = (float(f(u0 + h)) - float(f(u0 - h))) / (2 * h)
    assert float(jax.grad(f)(u0)) == pytest.approx(fd, rel=1e-5, abs=1e-7)
