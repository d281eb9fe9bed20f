"""The most probable state path of a discrete HMM (Viterbi), in log space.

    δ_0 = log π + ℓ_0,   δ_t(j) = max_i [δ_{t-1}(i) + log A_{t-1}[i, j]] + ℓ_t(j),

keeping the maximising i of each step and reading the path backwards from argmax δ_{T-1}. Ties go
to the lowest state index. See `engine.hmm.forward` for the conventions.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax import lax

from .forward import transitions

__all__ = ["ViterbiPath", "viterbi"]


class ViterbiPath(NamedTuple):
    path: jnp.ndarray        # (time,) int: argmax over z of p(z | y)
    log_joint: jnp.ndarray   # () log p(z*, y): the path's joint log-probability with the data


def viterbi(log_init: jnp.ndarray, log_trans: jnp.ndarray, log_lik: jnp.ndarray) -> ViterbiPath:
    """The maximum a posteriori state path of one series and its joint log-probability."""
    log_lik = jnp.asarray(log_lik, dtype=jnp.float64)
    A = transitions(log_trans, log_lik.shape[0])

    def forward(delta, x):
        A_t, ll_t = x
        scores = delta[:, None] + A_t                   # (from, to)
        return jnp.max(scores, axis=0) + ll_t, jnp.argmax(scores, axis=0)

    delta0 = jnp.asarray(log_init, dtype=jnp.float64) + log_lik[0]
    delta, back = lax.scan(forward, delta0, (A, log_lik[1:]))   # back[t][j]: best z_t given z_{t+1} = j
    last = jnp.argmax(delta)

    def backward(z_next, back_t):
        z = back_t[z_next]
        return z, z

    _, head = lax.scan(backward, last, back, reverse=True)
    return ViterbiPath(jnp.concatenate([head, last[None]]), jnp.max(delta))
