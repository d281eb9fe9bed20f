"""A grid filter for one-state models: the exact (diffuse) log-likelihood of a local level with any
observation density, by numerical integration over the level at every step. Independent of the
engine: numpy and scipy only."""

from __future__ import annotations

import numpy as np
from scipy import stats


def local_level_loglik(log_density, y, sigma2_level: float, grid: np.ndarray) -> float:
    """log p(y) for α_{t+1} = α_t + N(0, σ²_level), y_t ~ p(y_t | α_t), with a diffuse α_1.

    The diffuse log-likelihood is lim_κ [log p_κ(y) + ½ log κ] under α_1 ~ N(0, κ) (the
    convention of the exact-diffuse Kalman filter), which is a flat prior density (2π)^{-1/2} on
    α_1. log_density(y_t, grid) gives log p(y_t | α) on the grid; y_1 must be observed."""
    dx = grid[1] - grid[0]
    kernel = stats.norm.pdf(grid[:, None] - grid[None, :], scale=np.sqrt(sigma2_level)) * dx
    density = np.full(grid.shape, (2 * np.pi) ** -0.5)
    total = 0.0
    for t, y_t in enumerate(y):
        if np.isfinite(y_t):
            joint = density * np.exp(log_density(y_t, grid))
            c = joint.sum() * dx
            total += np.log(c)
            density = joint / c
        elif t == 0:
            raise ValueError("the grid filter needs y_1 observed")
        density = kernel @ density
    return float(total)


def poisson(y_t, grid):
    return stats.poisson.logpmf(y_t, np.exp(grid))


def student_t(nu: float, scale2: float):
    return lambda y_t, grid: stats.t.logpdf(y_t, nu, loc=grid, scale=np.sqrt(scale2))


def negative_binomial(alpha: float):
    # NB2 with mean μ, variance μ + α μ²: scipy's nbinom(n = 1/α, p = 1/(1 + α μ))
    return lambda y_t, grid: stats.nbinom.logpmf(y_t, 1 / alpha, 1 / (1 + alpha * np.exp(grid)))


def local_level_filter(log_density, y, sigma2_level: float, grid: np.ndarray, init=None):
    """(log p(y_t | y_{1:t-1}) (time,), filtered means (time,)) of the same local level, with
    α_1 ~ N(m, v) for init = (m, v), or diffuse as `local_level_loglik` for init=None. The transition
    kernel is integrated over each grid cell, so a kernel narrower than the spacing stays exact
    (the identity in the limit) instead of losing mass."""
    dx = grid[1] - grid[0]
    diff = grid[:, None] - grid[None, :]
    sd = np.sqrt(sigma2_level)
    kernel = stats.norm.cdf(diff + dx / 2, scale=sd) - stats.norm.cdf(diff - dx / 2, scale=sd)
    density = np.full(grid.shape, (2 * np.pi) ** -0.5) if init is None else stats.norm.pdf(grid, init[0],
                                                                                          np.sqrt(init[1]))
    terms, means = [], []
    for t, y_t in enumerate(y):
        if np.isfinite(y_t):
            joint = density * np.exp(log_density(y_t, grid))
            c = joint.sum() * dx
            terms.append(np.log(c))
            density = joint / c
        elif t == 0 and init is None:
            raise ValueError("the diffuse grid filter needs y_1 observed")
        else:
            terms.append(0.0)
        means.append(np.sum(density * grid) * dx)
        density = kernel @ density
    return np.array(terms), np.array(means)
