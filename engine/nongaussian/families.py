"""Observation families: the density of y_t given the signal θ_t, and the linear Gaussian model
that matches it at a point (the pseudo-observations of Durbin & Koopman 2012, §10.6).

The signal θ_t = Z_t α_t + d_t is the structural model's (level + seasonals + … + x_t β). For
Student-t, y_t = θ_t + ε_t with ε_t ~ t_ν(0, σ²) (σ² = `sigma2.irregular`, ν = `nu.observation`);
for counts, y_t has mean μ_t = E_t exp(θ_t) (E_t the exposure, `observation.offset`): Poisson,
or negative binomial NB2 with variance μ + α μ² (α = `alpha.observation`).

The approximating model at θ̃ replaces log p(y_t | θ_t) by a Gaussian log-density in θ_t,
ỹ_t = θ_t + ε̃_t with ε̃_t ~ N(0, H̃_t), whose value of ∂/∂θ (and, for the counts, of ∂²/∂θ²)
agrees with it at θ̃:

* counts (log-concave): H̃ = −1/p̈, ỹ = θ̃ + H̃ ṗ — one smoothing pass of (ỹ, H̃) is one Newton
  step towards the mode of p(θ | y), and the Gaussian model at the mode is the Laplace
  approximation;
* Student-t (not log-concave, p̈ > 0 in the tails): H̃ = (ν σ² + (y − θ̃)²)/(ν + 1), ỹ = y —
  the first derivatives agree, H̃ stays positive, and the iteration is EM for the t as a scale
  mixture of normals (DK 2012, §10.8). Its fixed point is a mode, reached at a linear rate.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax.scipy.special import betaln, gammaln

from ..spec import ModelSpec, param_names

__all__ = ["ObservationParams", "observation_params", "log_density", "pseudo_observations", "mean_variance",
           "start_signal", "check_observations"]


class ObservationParams(NamedTuple):
    """The family's parameters (those a family does not use are 1)."""

    scale2: jnp.ndarray   # Student-t σ², Gaussian variance (`sigma2.irregular`; 0 without an irregular)
    nu: jnp.ndarray       # Student-t degrees of freedom (`nu.observation`)
    alpha: jnp.ndarray    # NB2 dispersion (`alpha.observation`)


def observation_params(spec: ModelSpec, pvec: jnp.ndarray) -> ObservationParams:
    """The family's parameters from a vector in `param_names` order (traceable)."""
    names = param_names(spec)
    get = lambda n: pvec[names.index(n)] if n in names else jnp.ones(())
    family = spec.observation.family
    scale2 = (get("sigma2.irregular") if spec.irregular else jnp.zeros(())) if family in ("student_t", "gaussian") \
        else jnp.ones(())
    return ObservationParams(scale2, get("nu.observation"), get("alpha.observation"))


def _observed(y):
    observed = ~jnp.isnan(y)
    return observed, jnp.where(observed, y, 0.0)


def log_density(family: str, y, theta, offset, p: ObservationParams) -> jnp.ndarray:
    """log p(y_t | θ_t) (time,) or broadcast (…, time); 0 where y_t is missing.

    offset: log E_t (counts), added to θ_t for the log mean."""
    observed, y0 = _observed(y)
    if family == "gaussian":
        e = y0 - theta
        ll = -0.5 * (jnp.log(2 * jnp.pi * p.scale2) + e * e / p.scale2)
    elif family == "student_t":
        nu, s2 = p.nu, p.scale2
        e = y0 - theta
        # log Γ((ν+1)/2) − log Γ(ν/2) = log Γ(½) − log B(½, ν/2): betaln keeps it exact for large ν
        ll = (gammaln(0.5) - betaln(0.5, nu / 2) - 0.5 * jnp.log(nu * jnp.pi * s2)
              - 0.5 * (nu + 1) * jnp.log1p(e * e / (nu * s2)))
    elif family == "poisson":
        eta = theta + offset
        ll = y0 * eta - jnp.exp(eta) - gammaln(y0 + 1)
    elif family == "negative_binomial":
        a = p.alpha
        eta = theta + offset
        log_am = jnp.log(a) + eta                         # log(α μ)
        log1p_am = jnp.logaddexp(0.0, log_am)            # log(1 + α μ)
        ll = (gammaln(y0 + 1 / a) - gammaln(1 / a) - gammaln(y0 + 1)
              + y0 * (log_am - log1p_am) - log1p_am / a)
    else:
        raise ValueError(f"no non-Gaussian density for family {family!r}")
    return jnp.where(observed, ll, 0.0)


def pseudo_observations(family: str, y, theta, offset, p: ObservationParams) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(ỹ, H̃), each (time,): the Gaussian observation model matching log p(y | θ) at θ (see the
    module's docstring). Missing y_t gives ỹ_t = NaN, H̃_t = 1."""
    observed, y0 = _observed(y)
    if family == "gaussian":
        H = jnp.broadcast_to(p.scale2, jnp.shape(theta))
        y_tilde = y0 + 0.0 * theta
    elif family == "student_t":
        e = y0 - theta
        H = (p.nu * p.scale2 + e * e) / (p.nu + 1)
        y_tilde = y0 + 0.0 * theta
    else:
        mu = jnp.exp(theta + offset)
        if family == "poisson":
            H = 1.0 / mu                                 # −1/p̈, p̈ = −μ
            score = y0 - mu                              # ṗ
        else:
            am = p.alpha * mu
            H = (1 + am) ** 2 / (mu * (1 + p.alpha * y0))     # p̈ = −μ(1 + α y)/(1 + α μ)²
            score = (y0 - mu) / (1 + am)
        y_tilde = theta + H * score
    return jnp.where(observed, y_tilde, jnp.nan), jnp.where(observed, H, 1.0)


def mean_variance(family: str, theta, offset, p: ObservationParams):
    """(E[y | θ], Var[y | θ], dE[y | θ]/dθ) elementwise: the moments the EKF and UKF match.
    The Student-t's variance ν σ²/(ν − 2) is infinite for ν ≤ 2 (then NaN: those filters do not apply)."""
    if family in ("gaussian", "student_t"):
        var = p.scale2 if family == "gaussian" else jnp.where(p.nu > 2, p.nu * p.scale2 / (p.nu - 2), jnp.nan)
        return theta, jnp.broadcast_to(var, jnp.shape(theta)), jnp.ones_like(theta)
    mu = jnp.exp(theta + offset)
    return mu, mu if family == "poisson" else mu + p.alpha * mu * mu, mu


def start_signal(family: str, y, offset) -> jnp.ndarray:
    """A first guess of the signal: y (Student-t), log((y + ½)/E) (counts); the mean where y is missing."""
    observed, y0 = _observed(y)
    guess = y0 if family == "student_t" else jnp.log(y0 + 0.5) - offset
    fill = jnp.sum(jnp.where(observed, guess, 0.0)) / jnp.maximum(jnp.sum(observed), 1)
    return jnp.where(observed, guess, fill)


def check_observations(spec: ModelSpec, y, exposure=None) -> np.ndarray:
    """log E_t (time,) for a series that the spec's family can describe, else a ValueError naming the
    first bad value and the fix: counts are whole numbers ≥ 0 (NaN for missing); an exposure is
    given exactly when the spec names `observation.offset`, positive and finite at every step."""
    obs = spec.observation
    y = np.asarray(y, dtype=float)
    finite = np.isfinite(y)
    if not finite.any():
        raise ValueError(f"y has no observed value; a {obs.family} model needs data")
    if obs.is_count:
        bad = np.flatnonzero(finite & ((y < 0) | (y != np.round(y))))
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"y has {y[i]:g} at index {i}: a {obs.family} observation is a count, a whole number "
                             f"≥ 0 (NaN for missing). Use family 'gaussian' or 'student_t' for measurements, "
                             f"or model log(y) as gaussian")
    if obs.offset is None:
        if exposure is not None:
            raise ValueError("an exposure was given but the spec names no 'observation.offset' column; "
                             "set observation.offset to the exposure column's name, or pass no exposure")
        return np.zeros(y.shape[0])
    if exposure is None:
        raise ValueError(f"spec field 'observation.offset': the model takes exposures from column "
                         f"{obs.offset!r} but none were given. Pass exposure= with that column")
    e = np.asarray(getattr(exposure, "values", exposure), dtype=float)
    if e.ndim != 1 or e.shape[0] < y.shape[0]:
        raise ValueError(f"exposure {obs.offset!r} must be one value per time step ({y.shape[0]}), "
                         f"got shape {e.shape}")
    e = e[: y.shape[0]]
    bad = np.flatnonzero(~(np.isfinite(e) & (e > 0)))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"exposure {obs.offset!r} has {e[i]:g} at index {i}: exposures must be positive and "
                         "finite at every step (the mean count is exposure × exp(signal))")
    return np.log(e)
