"""The forward filter of a discrete-state hidden Markov model, in log space.

    z_0 ~ π,   z_{t+1} | z_t ~ A_t[z_t, ·],   y_t | z_t ~ p(y_t | z_t)   (ℓ_t(k) = log p(y_t | z_t = k))

With the predicted probabilities p_t(k) = p(z_t = k | y_{0:t-1}) the forward recursion is

    c_t = log Σ_k p_t(k) e^{ℓ_t(k)},   f_t(k) = p_t(k) e^{ℓ_t(k) − c_t},   p_{t+1}(j) = Σ_i f_t(i) A_t[i, j],

and log p(y_{0:T-1}) = Σ_t c_t. Every quantity is a log-probability combined by `logsumexp`, so
no step under- or overflows however unlikely the data, and impossible states (−∞) stay exact.
A missing observation is a row ℓ_t = 0 (it says nothing about the state).

Conventions of the package: `log_init` (state,), `log_trans` (state, state) or time-varying
(time − 1, state, state) with `log_trans[t]` the transition from z_t to z_{t+1}, `log_lik`
(time, state). Every function takes one series; `jax.vmap` it over series or posterior draws.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax import lax
from jax.scipy.special import logsumexp

__all__ = ["HMMState", "HMMStepInfo", "HMMFilter", "init", "step", "forward_filter", "transitions",
           "predict_from"]


class HMMState(NamedTuple):
    """The `init`/`step` carry: the predicted log-probabilities of the next state."""

    log_predicted: jnp.ndarray   # (state,) log p(z_t | y_{0:t-1})


class HMMStepInfo(NamedTuple):
    """What one observation reveals."""

    loglik: jnp.ndarray          # () c_t = log p(y_t | y_{0:t-1})
    log_filtered: jnp.ndarray    # (state,) log p(z_t | y_{0:t})
    log_predicted: jnp.ndarray   # (state,) log p(z_t | y_{0:t-1})


class HMMFilter(NamedTuple):
    """A whole series filtered."""

    loglik: jnp.ndarray          # () log p(y_{0:T-1})
    log_filtered: jnp.ndarray    # (time, state) log p(z_t | y_{0:t})
    log_predicted: jnp.ndarray   # (time, state) log p(z_t | y_{0:t-1})
    step_loglik: jnp.ndarray     # (time,) log p(y_t | y_{0:t-1})


def transitions(log_trans: jnp.ndarray, n_time: int) -> jnp.ndarray:
    """The time-varying form (time − 1, state, state) of `log_trans`, given fixed or time-varying.

    A time-varying array must have one matrix per transition, time − 1 of them."""
    log_trans = jnp.asarray(log_trans)
    if log_trans.ndim == 2:
        return jnp.broadcast_to(log_trans, (max(n_time - 1, 0),) + log_trans.shape)
    if log_trans.ndim != 3 or log_trans.shape[0] != n_time - 1:
        raise ValueError(f"log_trans: expected (state, state) or (time - 1, state, state) = "
                         f"({n_time - 1}, K, K), got shape {log_trans.shape}")
    return log_trans


def predict_from(log_filtered: jnp.ndarray, log_trans: jnp.ndarray) -> jnp.ndarray:
    """log p(z_{t+1} = j) = log Σ_i f(i) A[i, j] for log f (state,) and log A (state, state)."""
    return logsumexp(log_filtered[:, None] + log_trans, axis=0)


def init(log_init: jnp.ndarray) -> HMMState:
    """The belief before the first observation: the initial distribution π."""
    return HMMState(jnp.asarray(log_init, dtype=jnp.float64))


def step(state: HMMState, log_lik_t: jnp.ndarray, log_trans_t: jnp.ndarray) -> tuple[HMMState, HMMStepInfo]:
    """Condition on y_t (`log_lik_t` (state,)), then predict z_{t+1} with `log_trans_t` (state, state).

    O(K²) per step whatever the history: this is the online form of `forward_filter`."""
    joint = state.log_predicted + log_lik_t
    c = logsumexp(joint)
    log_filtered = joint - c
    return HMMState(predict_from(log_filtered, log_trans_t)), HMMStepInfo(c, log_filtered, state.log_predicted)


def forward_filter(log_init: jnp.ndarray, log_trans: jnp.ndarray, log_lik: jnp.ndarray) -> HMMFilter:
    """Filtered and predicted log-probabilities and the log-likelihood of one series (a scan of `step`).

    log_init (state,), log_trans (state, state) or (time − 1, state, state), log_lik (time, state)."""
    log_lik = jnp.asarray(log_lik, dtype=jnp.float64)
    n_time = log_lik.shape[0]
    A = transitions(log_trans, n_time)
    # the last step's prediction is not needed: pad with any matrix to scan one body
    A = jnp.concatenate([A, jnp.zeros((1,) + A.shape[1:], A.dtype)], axis=0)
    _, info = lax.scan(lambda s, x: step(s, *x), init(log_init), (log_lik, A))
    return HMMFilter(jnp.sum(info.loglik), info.log_filtered, info.log_predicted, info.loglik)
