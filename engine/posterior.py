"""Posterior products over draws: components, forecasts and one-step predictive checks.

Each mixes parameter uncertainty (the draws θ_d) with state uncertainty (the Kalman moments
given θ_d): for a quantity with Gaussian moments (μ_d, σ²_d) under draw d, the posterior is
the mixture (1/S) Σ_d N(μ_d, σ²_d). Bands are HDIs/quantiles of one sample per draw from it
(several when draws are few). Everything is vectorised over draws with `vmap`/batched filters.
"""

from __future__ import annotations

from functools import partial
from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import kalman
from .model import _prepare, _smooth, _systems
from .spec import ModelSpec, as_spec, param_names
from .system import build_system, check_exog, layout, params_from_vector

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


def _mixture_samples(key, mean, var, per_draw: int):
    """(per_draw·S, …) samples of the mixture of N(mean_d, var_d) over the leading draw axis."""
    eps = jax.random.normal(key, (per_draw,) + mean.shape)
    return (mean[None] + jnp.sqrt(jnp.clip(var, 0.0))[None] * eps).reshape((-1,) + mean.shape[1:])


class Band(NamedTuple):
    """A posterior summary over time (or horizon) of one quantity."""

    mean: np.ndarray      # (time,)
    lower: np.ndarray     # (time,)
    upper: np.ndarray     # (time,)


def _hdi(samples: np.ndarray, prob: float) -> tuple[np.ndarray, np.ndarray]:
    import arviz as az
    h = az.hdi(samples[None], hdi_prob=prob)  # (time, 2)
    return h[..., 0], h[..., 1]


def _n_per_draw(n_draws: int, target: int = 2000) -> int:
    return max(1, -(-target // max(n_draws, 1)))


@partial(jax.jit, static_argnames=("spec",))
def _components_over_draws(spec, theta, y, x):
    def one(pv):
        comps = _smooth(spec, pv, y, x).components
        return {k: v for k, v in comps.items()}
    return lax.map(one, theta)


def posterior_components(spec, posterior, y, exog=None, *, hdi_prob: float = 0.94,
                         max_draws: int = 500, seed: int = 0) -> dict[str, Band]:
    """Smoothed components (level, trend, seasonal_…, cycle, …) with posterior means and HDIs."""
    spec, _, y, x = _prepare(spec, np.zeros(len(param_names(as_spec(spec)))), y, exog)
    theta = jnp.asarray(posterior_matrix(spec, posterior, max_draws, seed))
    comps = jax.device_get(_components_over_draws(spec, theta, y, x))
    key = jax.random.PRNGKey(seed)
    out = {}
    for name, (mean, var) in comps.items():
        key, sub = jax.random.split(key)
        samples = np.asarray(_mixture_samples(sub, jnp.asarray(mean), jnp.asarray(var),
                                              _n_per_draw(theta.shape[0])))
        lo, hi = _hdi(samples, hdi_prob)
        out[name] = Band(np.asarray(mean).mean(axis=0), lo, hi)
    return out


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
        systems = _systems(spec, t, x)
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
    spec, _, y, x = _prepare(spec, np.zeros(len(param_names(as_spec(spec)))), y, exog)
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    x_ext = None
    if spec.regression is not None:
        if exog_future is None:
            raise ValueError(f"forecasting a regression model needs exog_future with columns "
                             f"{list(spec.exog_columns)} for the {steps} future steps")
        xf = jnp.asarray(check_exog(spec, exog_future, steps))[:steps]
        x_ext = jnp.concatenate([x, xf], axis=0)
    theta = jnp.asarray(posterior_matrix(spec, posterior, max_draws, seed))
    y_ext = jnp.concatenate([y, jnp.full(steps, jnp.nan)])
    mean, var = _one_step_moments_jit(spec, theta, y_ext, x_ext)
    mean, var = np.asarray(mean[:, -steps:]), np.asarray(var[:, -steps:])
    if np.isnan(mean).any():
        raise ValueError("the series is too short to identify every component (still diffuse at its end); "
                         "forecasts would have infinite variance")
    samples = np.asarray(_mixture_samples(jax.random.PRNGKey(seed), jnp.asarray(mean), jnp.asarray(var),
                                          _n_per_draw(theta.shape[0], 4000)))
    probs = sorted({round(0.5 + s * lv / 2, 6) for lv in levels for s in (-1, 1)} | {0.5})
    q = np.quantile(samples, probs, axis=0)
    return PosteriorForecast(mean.mean(axis=0), dict(zip(probs, q)), mean, var)


class PredictiveCheck(NamedTuple):
    """One-step-ahead predictive checks over the posterior (NaN where y is missing or diffuse)."""

    mean: np.ndarray           # (time,) E[y_t | y_{1:t-1}]
    sd: np.ndarray             # (time,) predictive standard deviation (mixture)
    residual: np.ndarray       # (time,) standardised: (y_t − mean)/sd
    pit: np.ndarray            # (time,) P(Y_t ≤ y_t | y_{1:t-1}); uniform when the model is right


def predictive_residuals(spec, posterior, y, exog=None, *, max_draws: int = 1000, seed: int = 0) -> PredictiveCheck:
    """One-step predictive mean, sd, standardised residual and PIT, averaged over the posterior."""
    spec, _, y, x = _prepare(spec, np.zeros(len(param_names(as_spec(spec)))), y, exog)
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
