"""Rejuvenation of a weighted bank of posterior draws: resample, then move with MCMC.

When sequential importance weights collapse, the bank is resampled (systematic) and each
draw is moved by a few random-walk Metropolis steps that leave the full-data posterior
p(θ | y_{1:t}) invariant (the resample-move step of IBIS, Chopin 2002). The proposal is
N(z, (2.38²/d) Σ̂) in the unconstrained space, Σ̂ the weighted covariance of the bank, so it
adapts to the posterior's scale and correlations; all S chains move at once (vmap).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


class MoveInfo(NamedTuple):
    acceptance: jnp.ndarray     # () mean Metropolis acceptance rate over draws and steps
    unique_draws: jnp.ndarray   # () distinct draws right after resampling


def systematic_resample(key, log_weight: jnp.ndarray) -> jnp.ndarray:
    """Indices (draw,) of a systematic resample: one uniform, S evenly spaced points on the CDF."""
    n = log_weight.shape[0]
    w = jnp.exp(log_weight - jax.scipy.special.logsumexp(log_weight))
    cdf = jnp.cumsum(w)
    points = (jax.random.uniform(key) + jnp.arange(n)) / n
    return jnp.clip(jnp.searchsorted(cdf, points * cdf[-1]), 0, n - 1)


def rwm_init(logp: Callable, z: jnp.ndarray):
    """State of S random-walk Metropolis chains: positions (draw, d) and their log densities."""
    return z, jax.vmap(logp)(z)


def rwm_step(key, logp: Callable, state, chol: jnp.ndarray):
    """One Metropolis step of every chain with proposal z + chol ε; returns (state, accepted (draw,))."""
    z, lp = state
    k_prop, k_acc = jax.random.split(key)
    prop = z + jax.random.normal(k_prop, z.shape) @ chol.T
    lp_prop = jax.vmap(logp)(prop)
    log_u = jnp.log(jax.random.uniform(k_acc, lp.shape))
    accept = jnp.isfinite(lp_prop) & (log_u < lp_prop - lp)
    return (jnp.where(accept[:, None], prop, z), jnp.where(accept, lp_prop, lp)), accept


def resample_move(key, logp: Callable, to_unconstrained: Callable, to_constrained: Callable,
                  params: jnp.ndarray, log_weight: jnp.ndarray, n_steps: int = 10):
    """Resample the weighted draws params (draw, param) and move them `n_steps` times.

    logp(z): full-data log posterior of one unconstrained vector (Jacobian included);
    to_unconstrained / to_constrained map one vector. Returns (new params (draw, param), MoveInfo).
    """
    k_res, k_move = jax.random.split(key)
    idx = systematic_resample(k_res, log_weight)
    z = jax.vmap(to_unconstrained)(jnp.asarray(params)[idx])
    n, d = z.shape
    w = jnp.exp(log_weight - jax.scipy.special.logsumexp(log_weight))
    z_all = jax.vmap(to_unconstrained)(jnp.asarray(params))
    mean = w @ z_all
    cov = (z_all - mean).T @ ((z_all - mean) * w[:, None])
    # a floor keeps the proposal alive when the weights sit on a single draw
    cov = cov + jnp.eye(d) * (1e-6 + 1e-3 * jnp.trace(cov) / max(d, 1))
    chol = jnp.linalg.cholesky(cov) * (2.38 / jnp.sqrt(max(d, 1)))
    state = rwm_init(logp, z)

    def body(carry, k):
        state, n_acc = carry
        state, acc = rwm_step(k, logp, state, chol)
        return (state, n_acc + jnp.sum(acc)), None

    (state, n_acc), _ = jax.lax.scan(body, (state, 0), jax.random.split(k_move, n_steps))
    unique = jnp.sum(jnp.zeros(n, bool).at[idx].set(True))
    new_params = jax.vmap(to_constrained)(state[0])
    return new_params, MoveInfo(n_acc / (n * max(n_steps, 1)), unique)
