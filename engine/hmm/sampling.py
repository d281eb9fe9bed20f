"""Posterior state paths of a discrete HMM by forward filtering, backward sampling.

    z_{T-1} ~ f_{T-1},   z_t | z_{t+1}, y ~ f_t(i) A_t[i, z_{t+1}] (normalised),

which draws exactly from p(z_{0:T-1} | y_{0:T-1}) (the Markov chain reversed given the data).
One forward pass serves every draw. See `engine.hmm.forward` for the conventions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from .forward import forward_filter, transitions

__all__ = ["backward_sample", "sample_paths"]


def backward_sample(key: jax.Array, log_filtered: jnp.ndarray, log_trans: jnp.ndarray) -> jnp.ndarray:
    """One path (time,) int from the filtered log-probabilities (time, state) and the time-varying
    log transitions (time − 1, state, state)."""
    n_time = log_filtered.shape[0]
    keys = jax.random.split(key, n_time)
    last = jax.random.categorical(keys[-1], log_filtered[-1])

    def body(z_next, x):
        k, log_f, A_t = x
        z = jax.random.categorical(k, log_f + A_t[:, z_next])
        return z, z

    _, head = lax.scan(body, last, (keys[:-1], log_filtered[:-1], log_trans), reverse=True)
    return jnp.concatenate([head, last[None]])


def sample_paths(key: jax.Array, log_init: jnp.ndarray, log_trans: jnp.ndarray, log_lik: jnp.ndarray,
                 n_paths: int) -> jnp.ndarray:
    """`n_paths` independent draws (path, time) of the state path given one series' data."""
    log_lik = jnp.asarray(log_lik, dtype=jnp.float64)
    A = transitions(log_trans, log_lik.shape[0])
    log_filtered = forward_filter(log_init, A, log_lik).log_filtered
    return jax.vmap(backward_sample, in_axes=(0, None, None))(jax.random.split(key, n_paths), log_filtered, A)
