"""Posterior products over draws: components, forecasts and one-step predictive checks.

Each mixes parameter uncertainty (the draws θ_d) with state uncertainty (the Kalman moments
given θ_d): for a quantity with Gaussian moments (μ_d, σ²_d) under draw d, the posterior is
the mixture (1/S) Σ_d N(μ_d, σ²_d). Bands are its exact quantiles (bisection on the mixture
CDF) or HDIs (from its density on a fine grid), not Monte Carlo estimates. Everything is vectorised over draws with `vmap`/batched filters.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import kalman
from .model import batch_systems, extend_for_forecast, prepare_inputs, smooth_prepared
from .spec import as_spec, param_names
from .system import layout

CHUNK = 64


def posterior_matrix(spec, posterior, max_draws: int | None = None, seed: int = 0) -> np.ndarray:
    """Draws as a (draw, param) matrix in `param_names` order.

    `posterior`: an InferenceData (its `posterior` group, chains flattened), a dict name →
    draws, or a dict name → scalar (one draw). With `max_draws`, a random subset (seeded).
    """
    spec = as_spec(spec)
    names = param_names(spec)
    group = getattr(posterior, "posterior", None)
    if group is not None:
        missing = [n for n in names if n not in group]
        if missing:
            raise ValueError(f"the posterior has no draws of {missing}; was it fitted with this spec?")
        cols = [np.asarray(group[n]).reshape(-1) for n in names]
    else:
        missing = [n for n in names if n not in posterior]
        if missing:
            raise ValueError(f"the posterior has no draws of {missing}; the spec needs {names}")
        cols = [np.atleast_1d(np.asarray(posterior[n], dtype=float)).reshape(-1) for n in names]
        sizes = {c.size for c in cols}
        if len(sizes) > 1:
            raise ValueError(f"every parameter needs the same number of draws, got sizes {sorted(sizes)}")
    theta = np.stack(cols, axis=-1) if cols else np.zeros((1, 0))
    if max_draws is not None and theta.shape[0] > max_draws:
        idx = np.sort(np.random.default_rng(seed).choice(theta.shape[0], max_draws, replace=False))
        theta = theta[idx]
    return theta


class Band(NamedTuple):
    """A posterior summary over time (or horizon) of one quantity."""

    mean: np.ndarray      # (time,)
    lower: np.ndarray     # (time,)
    upper: np.ndarray     # (time,)


@partial(jax.jit, static_argnames=("spec",))
def _components_over_draws(spec, theta, y, x):
    def one(pv):
        comps = smooth_prepared(spec, pv, y, x).components
        return {k: v for k, v in comps.items()}
    return lax.map(one, theta)


def posterior_components(spec, posterior, y, exog=None, *, hdi_prob: float = 0.94,
                         max_draws: int = 500, seed: int = 0, equal_tailed: bool = False) -> dict[str, Band]:
    """Smoothed components (level, trend, seasonal_…, cycle, …) with posterior means and HDIs
    (with `equal_tailed`, the central interval of probability `hdi_prob` instead: the mixture's
    (1 ∓ hdi_prob)/2 quantiles, as `posterior_forecast` bands are)."""
    spec, _, y, x = prepare_inputs(spec, np.zeros(len(param_names(as_spec(spec)))), y, exog)
    theta = jnp.asarray(posterior_matrix(spec, posterior, max_draws, seed))
    comps = jax.device_get(_components_over_draws(spec, theta, y, x))
    out = {}
    for name, (mean, var) in comps.items():
        if equal_tailed:
            lo, hi = mixture_quantiles(np.asarray(mean), np.asarray(var), [(1 - hdi_prob) / 2, (1 + hdi_prob) / 2])
        else:
            lo, hi = mixture_hdi(np.asarray(mean), np.asarray(var), hdi_prob)
        out[name] = Band(np.asarray(mean).mean(axis=0), lo, hi)
    return out


def mixture_hdi(mean: np.ndarray, var: np.ndarray, prob: float, grid: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Highest-density interval of (1/S) Σ_d N(mean_d, var_d) per column, from its exact density on a grid.

    The region {x : f(x) ≥ c} holding `prob` of the mass is found per column; its outer ends are
    returned (the interval hull when the mixture is multimodal). Accurate to span/grid.
    """
    sd = np.sqrt(np.clip(var, 0.0, None))
    lo0 = (mean - 6 * sd).min(axis=0)
    hi0 = (mean + 6 * sd).max(axis=0)
    degenerate = hi0 - lo0 <= 0
    hi0 = np.where(degenerate, lo0 + 1.0, hi0)
    u = (np.arange(grid) + 0.5) / grid
    xs = lo0[None] + (hi0 - lo0)[None] * u[:, None]                      # (grid, n)
    dens = np.zeros_like(xs)
    for d in range(mean.shape[0]):
        s = np.where(sd[d] > 0, sd[d], 1.0)
        dens += np.exp(-0.5 * ((xs - mean[d]) / s) ** 2) / s
    dens /= mean.shape[0] * np.sqrt(2 * np.pi)
    dx = (hi0 - lo0) / grid
    order = np.argsort(-dens, axis=0)
    mass = np.cumsum(np.take_along_axis(dens, order, axis=0), axis=0) * dx
    k = np.minimum((mass < prob * mass[-1]).sum(axis=0), grid - 1)
    level = np.take_along_axis(np.take_along_axis(dens, order, axis=0), k[None], axis=0)[0]
    inside = dens >= level[None]
    lo = np.where(inside, xs, np.inf).min(axis=0) - dx / 2
    hi = np.where(inside, xs, -np.inf).max(axis=0) + dx / 2
    point = mean.mean(axis=0)
    return np.where(degenerate, point, lo), np.where(degenerate, point, hi)


class PosteriorForecast(NamedTuple):
    """h-step predictive distribution mixing parameter and state uncertainty."""

    mean: np.ndarray                    # (steps,)
    quantiles: dict[float, np.ndarray]  # probability → (steps,)
    draws_mean: np.ndarray              # (draw, steps) plug-in means per draw
    draws_var: np.ndarray               # (draw, steps) plug-in variances per draw

    def band(self, level: float) -> tuple[np.ndarray, np.ndarray]:
        return self.quantiles[round(0.5 - level / 2, 6)], self.quantiles[round(0.5 + level / 2, 6)]


def _one_step_moments(spec, theta, y, x):
    """Per draw (draw, time): one-step predictive mean/var of y_t, NaN where diffuse."""
    lay = layout(spec)
    n = theta.shape[0]
    n_chunks = -(-n // CHUNK)
    pad = n_chunks * CHUNK - n
    th = jnp.pad(theta, ((0, pad), (0, 0)), mode="edge").reshape(n_chunks, CHUNK, -1)

    def chunk(t):
        systems = batch_systems(spec, t, x)
        _, info = kalman.run(lay, systems, jnp.broadcast_to(y[:, None], (y.shape[0], CHUNK)), keep=True)
        Z = jnp.broadcast_to(systems.design if systems.design.ndim == 3 else systems.design[:, None],
                             (CHUNK, y.shape[0], lay.n_states))          # (draw, time, state)
        d = jnp.broadcast_to(systems.obs_intercept.reshape(CHUNK, -1), (CHUNK, y.shape[0]))
        mean = jnp.einsum("dti,tid->dt", Z, info.pred_mean) + d
        var = jnp.einsum("dti,tijd,dtj->dt", Z, info.pred_cov, Z) + systems.obs_var[:, None]
        dvar = jnp.einsum("dti,tijd,dtj->dt", Z, info.pred_diffuse, Z)
        return jnp.where(dvar > 1e-8, jnp.nan, mean), jnp.where(dvar > 1e-8, jnp.nan, var)

    mean, var = lax.map(chunk, th)
    return mean.reshape(-1, y.shape[0])[:n], var.reshape(-1, y.shape[0])[:n]


_one_step_moments_jit = jax.jit(_one_step_moments, static_argnames=("spec",))


def posterior_forecast(spec, posterior, y, steps: int, exog=None, exog_future=None, *,
                       levels=(0.5, 0.8, 0.95), max_draws: int = 1000, seed: int = 0) -> PosteriorForecast:
    """h-step forecasts over the posterior: for each draw the plug-in Gaussian, then the mixture."""
    spec, _, y, x = prepare_inputs(spec, np.zeros(len(param_names(as_spec(spec)))), y, exog)
    y_ext, x_ext = extend_for_forecast(spec, y, x, steps, exog_future)
    theta = jnp.asarray(posterior_matrix(spec, posterior, max_draws, seed))
    mean, var = _one_step_moments_jit(spec, theta, y_ext, x_ext)
    mean, var = np.asarray(mean[:, -steps:]), np.asarray(var[:, -steps:])
    if np.isnan(mean).any():
        raise ValueError("the series is too short to identify every component (still diffuse at its end); "
                         "forecasts would have infinite variance")
    probs = sorted({round(0.5 + s * lv / 2, 6) for lv in levels for s in (-1, 1)} | {0.5})
    q = mixture_quantiles(mean, var, probs)
    return PosteriorForecast(mean.mean(axis=0), dict(zip(probs, q)), mean, var)


def mixture_quantiles(mean: np.ndarray, var: np.ndarray, probs, tol: float = 1e-10,
                      weights: np.ndarray | None = None) -> np.ndarray:
    """Quantiles of Σ_d w_d N(mean_d, var_d) for each column: (prob, n) from (draw, n), by bisection.

    weights (draw,) sum to 1 (default 1/S each). The mixture quantile lies between the smallest
    and largest component quantile, which brackets the root of the (monotone) mixture CDF.
    """
    from scipy.special import ndtr, ndtri

    sd = np.sqrt(np.clip(var, 1e-300, None))
    w = np.full((mean.shape[0], 1), 1.0 / mean.shape[0]) if weights is None else np.asarray(weights)[:, None]
    out = []
    for p in probs:
        z = ndtri(p)
        lo, hi = (mean + z * sd).min(axis=0), (mean + z * sd).max(axis=0)
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            below = (w * ndtr((mid[None] - mean) / sd)).sum(axis=0) < p
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
            if np.all(hi - lo <= tol * np.maximum(1.0, np.abs(mid))):
                break
        out.append(0.5 * (lo + hi))
    return np.stack(out)


class PredictiveCheck(NamedTuple):
    """One-step-ahead predictive checks over the posterior (NaN where y is missing or diffuse)."""

    mean: np.ndarray           # (time,) E[y_t | y_{1:t-1}]
    sd: np.ndarray             # (time,) predictive standard deviation (mixture)
    residual: np.ndarray       # (time,) standardised: (y_t − mean)/sd
    pit: np.ndarray            # (time,) P(Y_t ≤ y_t | y_{1:t-1}); uniform when the model is right


def predictive_residuals(spec, posterior, y, exog=None, *, max_draws: int = 1000, seed: int = 0) -> PredictiveCheck:
    """One-step predictive mean, sd, standardised residual and PIT, averaged over the posterior."""
    spec, _, y, x = prepare_inputs(spec, np.zeros(len(param_names(as_spec(spec)))), y, exog)
    theta = jnp.asarray(posterior_matrix(spec, posterior, max_draws, seed))
    mean_d, var_d = (np.asarray(a) for a in _one_step_moments_jit(spec, theta, y, x))
    y_np = np.asarray(y)
    mean = mean_d.mean(axis=0)
    var = (var_d + mean_d ** 2).mean(axis=0) - mean ** 2
    sd = np.sqrt(np.clip(var, 0, None))
    from scipy.stats import norm
    pit = norm.cdf((y_np[None] - mean_d) / np.sqrt(var_d)).mean(axis=0)
    bad = ~np.isfinite(y_np) | np.isnan(mean)
    nan = lambda a: np.where(bad, np.nan, a)
    return PredictiveCheck(nan(mean), nan(sd), nan((y_np - mean) / np.where(sd > 0, sd, np.nan)), nan(pit))
