"""Moments and quantiles of mixtures of Gaussians against the mixture's CDF and numerical
integration.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import engine
from engine import online

from .cases import SPEC, MANUAL, make_draws, make_series


def test_mixture_quantiles_solve_the_mixture_cdf():
    w = jnp.array([0.5, 0.3, 0.2])
    mu = jnp.array([0.0, 1.0, 3.0])
    var = jnp.array([1.0, 0.25, 0.5])
    q = np.asarray(online.mixture_quantiles(w, mu, var, online.PROBS, iters=12))
    cdf = np.sum(np.asarray(w) * scipy.stats.norm.cdf((q[:, None] - np.asarray(mu)) / np.sqrt(np.asarray(var))), axis=1)
    np.testing.assert_allclose(cdf, online.PROBS, atol=1e-12)
    # moments of the mixture against numerical integration
    mean, m2, m3, m4 = online.mixture_moments(w, mu, var)
    grid = np.linspace(-15, 20, 200001)
    dens = np.sum(np.asarray(w) * scipy.stats.norm.pdf(grid[:, None], np.asarray(mu), np.sqrt(np.asarray(var))), axis=1)
    dx = grid[1] - grid[0]
    m = np.sum(grid * dens) * dx
    for k, val in ((2, m2), (3, m3), (4, m4)):
        assert float(val) == pytest.approx(np.sum((grid - m) ** k * dens) * dx, rel=1e-7)
    assert float(mean) == pytest.approx(m, rel=1e-9)


def test_bank_bands_match_the_mixture_quantiles():
    """The step's predictive bands (Newton with the fast normal CDF) agree with `mixture_quantiles`
    (exact CDF, same Newton step) for a spread-out bank."""
    y = make_series(seed=6, gaps=())
    draws = make_draws(50, spread=0.8)
    filt = engine.OnlineFilter(SPEC, draws, y_history=y[:30], rejuvenation=MANUAL)
    w = filt.weights
    info = jax.device_get(filt.update(y[30]))
    ref = np.asarray(online.mixture_quantiles(jnp.asarray(w), jnp.asarray(info.draw_mean),
                                              jnp.asarray(info.draw_var), online.PROBS, iters=1))
    np.testing.assert_allclose(info.quantiles, ref, atol=1e-5 * np.sqrt(float(info.var)))
    cdf = np.sum(w * scipy.stats.norm.cdf((info.quantiles[:, None] - info.draw_mean) / np.sqrt(info.draw_var)), axis=1)
    np.testing.assert_allclose(cdf, online.PROBS, atol=2e-3)
