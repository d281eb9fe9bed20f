"""The filter's carry and per-step info, its phases, its tolerances and its start.

Tolerances follow statsmodels (`tolerance_diffuse = 1e-10`) so the diffuse phase ends at the
same step; the steady state is declared when ‖ΔP‖² ≤ TOL_STEADY ‖P‖² (Frobenius norms).
"""

from __future__ import annotations

import enum
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ..system import Layout, System, diffuse_states
from .ops import factor_psd

TOL_DIFFUSE = 1e-10
TOL_STEADY = 1e-22  # squared relative change of P between steps
LOG_2PI = jnp.log(2 * jnp.pi)


class Phase(enum.IntEnum):
    """Which update a step, or a chunk of steps, applies to the whole batch (`phase_of` decides).

    The value is the branch index of every `lax.switch` over phases: a switch's branches are
    listed as `[branch[p] for p in Phase]`.
    """

    DIFFUSE = 0    # some member's P∞ ≠ 0: Koopman's exact-diffuse update (exact in every case)
    STANDARD = 1   # no member diffuse: the covariance update of P (or of its Cholesky factor)
    STEADY = 2     # every member's P converged and every y observed: only the mean moves


class StepKind(enum.IntEnum):
    """The observation update one step made for one member (`StepInfo.kind`).

    Not the phase: a steady step makes a standard update at a fixed P, and in any phase a
    member whose y_t is missing (or whose F is 0) makes none.
    """

    NONE = 0       # y_t missing (or F = 0): prediction only
    STANDARD = 1   # a_{t|t} = a_t + K v with K = P* z / F*
    DIFFUSE = 2    # Koopman's diffuse update, K = P∞ z / F∞ (F∞ > TOL_DIFFUSE)


class Augmented(NamedTuple):
    """The augmented filter's carry during the diffuse phase (batch last).

    Conditional on δ = 0: mean and covariance (the covariance in the form of the filter's P:
    dense, or its Cholesky factor in sqrt mode); the diffuse columns A_t; the Gram matrix of the
    rows [x_t, v_t]/√F_t; the log-likelihood of the phase not yet reported; and whether every
    observed step so far had F_t > 0.
    """

    mean: jnp.ndarray     # (state, batch) a_t given δ = 0
    cov: jnp.ndarray      # (state, state, batch) P_t given δ (or its Cholesky factor)
    cols: jnp.ndarray     # (state, diffuse, batch) A_t
    gram: jnp.ndarray     # (diffuse + 1, diffuse + 1, batch) [S s; sᵀ q]
    pending: jnp.ndarray  # (batch,) Σ −½(log 2π + log F_t) minus the Koopman terms reported so far
    valid: jnp.ndarray    # (batch,) bool: no observed step with F_t = 0


def augmented_init(lay: Layout, init_mean, cov, init_diffuse) -> Augmented:
    """The augmented carry before the first observation: P∞₁'s diffuse columns (identity ones),
    batch-last system arrays; cov in the filter's form (dense or its factor)."""
    states = jnp.asarray(diffuse_states(lay), dtype=int)
    batch = init_mean.shape[-1]
    n_d = states.shape[0]
    cols = init_diffuse[:, states] if n_d else jnp.zeros((lay.n_states, 0, batch))
    return Augmented(init_mean, cov, cols, jnp.zeros((n_d + 1, n_d + 1, batch)), jnp.zeros(batch),
                     jnp.ones(batch, bool))


class FilterState(NamedTuple):
    """Predicted belief at time t for each batch member (the `init`/`step` carry).

    Batch-last layout: the batch is the minor (fastest) axis, so every update is a
    fused elementwise loop over the batch.
    """

    mean: jnp.ndarray          # (state, batch) a_t
    cov: jnp.ndarray           # (state, state, batch) P*_t, or its Cholesky factor in sqrt mode
    diffuse_cov: jnp.ndarray   # (state, state, batch) P∞_t
    diffuse: jnp.ndarray       # (batch,) bool: ‖P∞‖² > tolerance
    steady: jnp.ndarray        # (batch,) bool: P has converged (time-invariant models only)
    gain: jnp.ndarray          # (state, batch) K = P Zᵀ/F at convergence
    innov_var: jnp.ndarray     # (batch,) F at convergence
    prev_observed: jnp.ndarray  # (batch,) bool
    augmented: Augmented       # the exact diffuse phase's augmented filter (`kalman.augmented`)


class StepInfo(NamedTuple):
    """What one observation step reveals (per batch member, batch last)."""

    loglik: jnp.ndarray         # (batch,) log p(y_t | y_{1:t-1}), 0 when missing
    innovation: jnp.ndarray     # (batch,) v_t (0 when missing)
    innov_var: jnp.ndarray      # (batch,) F*_t
    diffuse_var: jnp.ndarray    # (batch,) F∞_t
    kind: jnp.ndarray           # (batch,) int `StepKind`: 0 skipped/missing, 1 standard, 2 diffuse
    pred_mean: jnp.ndarray      # (state, batch) a_t
    pred_cov: jnp.ndarray       # (state, state, batch) P*_t (dense)
    pred_diffuse: jnp.ndarray   # (state, state, batch) P∞_t
    filt_mean: jnp.ndarray      # (state, batch) a_{t|t}
    filt_cov: jnp.ndarray       # (state, state, batch) P*_{t|t}
    gain: jnp.ndarray           # (state, batch) K_t, a_{t|t} = a_t + K_t v_t


def batch_last(system: System) -> System:
    """Move the leading batch axis of a batched system to the end (time stays leading in Z, d)."""
    T, Z, d, H, q, a0, P0, Pinf0 = system
    Z = jnp.moveaxis(Z, 0, -1)                     # (state, B) or (time, state, B)
    d = jnp.moveaxis(d, 0, -1) if d.ndim == 2 else d
    return System(jnp.moveaxis(T, 0, -1), Z, d, H, q.T, a0.T, jnp.moveaxis(P0, 0, -1),
                  jnp.moveaxis(Pinf0, 0, -1))


def init(lay: Layout, system: System, sqrt: bool = False) -> FilterState:
    """Belief before the first observation; `system` is batch-last (see `batch_last`)."""
    batch = system.obs_var.shape[-1]
    cov = system.init_cov
    if sqrt:
        cov = jnp.moveaxis(factor_psd(jnp.moveaxis(cov, -1, 0)), 0, -1)
    m = lay.n_states
    diffuse = jnp.sum(system.init_diffuse ** 2, axis=(0, 1)) > TOL_DIFFUSE
    state = FilterState(system.init_mean, cov, system.init_diffuse, diffuse, jnp.zeros(batch, bool),
                        jnp.zeros((m, batch)), jnp.ones(batch), jnp.zeros(batch, bool),
                        augmented_init(lay, system.init_mean, cov, system.init_diffuse))
    # strong types (a system built from Python constants is weakly typed), so that a jitted step
    # returns the types it was given and a loop of steps compiles once whichever branch ran
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=x.dtype), state)


def phase_of(state: FilterState, y: jnp.ndarray) -> jnp.ndarray:
    """The `Phase` of the next step(s) for the whole batch, as a traced int (a switch index).

    y: the observations those steps take, batch last: one step's (batch,) or a chunk's
    (time, batch). DIFFUSE while any member's P∞ is non-zero; STEADY when every member's P has
    converged and no y is missing (a steady member is never diffuse); STANDARD otherwise.
    """
    all_steady = jnp.all(state.steady) & ~jnp.any(jnp.isnan(y))
    return jnp.where(jnp.any(state.diffuse), Phase.DIFFUSE, jnp.where(all_steady, Phase.STEADY, Phase.STANDARD))


def converged(P_next: jnp.ndarray, P: jnp.ndarray) -> jnp.ndarray:
    """The steady-state test ‖P_next − P‖²_F ≤ TOL_STEADY ‖P_next‖²_F over the two leading
    (state) axes: (batch,) for batch-last covariances, () for one (state, state)."""
    change = jnp.sum((P_next - P) ** 2, axis=(0, 1))
    return change <= TOL_STEADY * jnp.sum(P_next ** 2, axis=(0, 1))
