"""Backward passes of a discrete HMM in log space: smoothed marginals and pairwise marginals.

The backward messages β_t(i) ∝ p(y_{t+1:T-1} | z_t = i) obey

    β_{T-1} = 1,   β_t(i) = Σ_j A_t[i, j] e^{ℓ_{t+1}(j)} β_{t+1}(j),

each renormalised (only ratios matter), and then

    p(z_t | y) ∝ f_t β_t,    p(z_t = i, z_{t+1} = j | y) ∝ f_t(i) A_t[i, j] e^{ℓ_{t+1}(j)} β_{t+1}(j).

The pairwise marginals cost O(T K²) memory and are returned only when asked for. See
`engine.hmm.forward` for the conventions.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax import lax
from jax.scipy.special import logsumexp

from .forward import forward_filter, transitions

__all__ = ["HMMSmoother", "backward_messages", "smooth"]


class HMMSmoother(NamedTuple):
    loglik: jnp.ndarray              # () log p(y_{0:T-1})
    log_filtered: jnp.ndarray        # (time, state) log p(z_t | y_{0:t})
    log_smoothed: jnp.ndarray        # (time, state) log p(z_t | y_{0:T-1})
    log_pairwise: jnp.ndarray | None  # (time − 1, state, state) log p(z_t, z_{t+1} | y), or None


def backward_messages(log_trans: jnp.ndarray, log_lik: jnp.ndarray) -> jnp.ndarray:
    """log β_t (time, state), each normalised to log Σ_i β_t(i) = 0; log_trans time-varying
    (time − 1, state, state)."""
    def body(log_beta_next, x):
        A_t, ll_next = x
        log_beta = logsumexp(A_t + (ll_next + log_beta_next)[None, :], axis=1)
        log_beta = log_beta - logsumexp(log_beta)
        return log_beta, log_beta

    last = jnp.zeros(log_lik.shape[1])
    _, log_beta = lax.scan(body, last, (log_trans, log_lik[1:]), reverse=True)
    return jnp.concatenate([log_beta, last[None]], axis=0)


def smooth(log_init: jnp.ndarray, log_trans: jnp.ndarray, log_lik: jnp.ndarray,
           pairwise: bool = False) -> HMMSmoother:
    """Smoothed log marginals p(z_t | y_{0:T-1}) (and pairwise ones if `pairwise`) of one series."""
    log_lik = jnp.asarray(log_lik, dtype=jnp.float64)
    A = transitions(log_trans, log_lik.shape[0])
    fwd = forward_filter(log_init, A, log_lik)
    log_beta = backward_messages(A, log_lik)
    joint = fwd.log_filtered + log_beta
    log_smoothed = joint - logsumexp(joint, axis=1, keepdims=True)
    log_pair = None
    if pairwise:
        xi = fwd.log_filtered[:-1, :, None] + A + (log_lik[1:] + log_beta[1:])[:, None, :]
        log_pair = xi - logsumexp(xi, axis=(1, 2), keepdims=True)
    return HMMSmoother(fwd.loglik, fwd.log_filtered, log_smoothed, log_pair)
