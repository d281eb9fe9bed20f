"""Batch-last linear algebra of the filter: products with the design, the transition by rows,
and the square-root (Cholesky) form's triangularisation.

Every array keeps the batch as its last (fastest) axis: a state vector is (state, batch), a
covariance (state, state, batch), so each operation is a fused elementwise loop over the batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..system import Layout


@jax.custom_jvp
def tria(A: jnp.ndarray) -> jnp.ndarray:
    """Lower-triangular L with L Lᵀ = A Aᵀ (via QR of Aᵀ); A is (..., m, n)."""
    r = jnp.linalg.qr(jnp.swapaxes(A, -1, -2), mode="r")
    return jnp.swapaxes(r, -1, -2)


@tria.defjvp
def _tria_jvp(primals, tangents):
    """Tangent of a square root of A Aᵀ that exists even when A is rank deficient.

    With Aᵀ = Q R (Q orthonormal columns) we have A = L Qᵀ, so dL = dA Q satisfies
    dL Lᵀ + L dLᵀ = dA Aᵀ + A dAᵀ = d(A Aᵀ) exactly, for any rank. It differs from the
    tangent of the triangular factor itself by an infinitesimal rotation L W (W skew), which
    that factor's QR derivative needs R⁻¹ to resolve (NaN when a state has zero variance, as
    diffuse or deterministic states do). The filter uses L only through L Lᵀ, so its
    derivatives are exact; second derivatives through the sqrt filter are not supported.
    """
    (A,), (dA,) = primals, tangents
    q, r = jnp.linalg.qr(jnp.swapaxes(A, -1, -2), mode="reduced")
    return jnp.swapaxes(r, -1, -2), dA @ q


def tria_batch_last(A: jnp.ndarray) -> jnp.ndarray:
    """`tria` for batch-last A (m, n, batch) → (m, m, batch)."""
    return jnp.moveaxis(tria(jnp.moveaxis(A, -1, 0)), 0, -1)


def safe_sqrt(x: jnp.ndarray) -> jnp.ndarray:
    """√x with a zero (not infinite) derivative at x = 0: the variances of deterministic
    states are structural zeros, and √ of them must not turn a zero tangent into 0·∞ = NaN."""
    pos = x > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0)


def factor_psd(P: jnp.ndarray) -> jnp.ndarray:
    """Lower factor L L ᵀ = P of a PSD matrix whose singular part is zero rows/columns.

    The stationary initial covariance is block diagonal: AR blocks are positive definite,
    the diffuse and deterministic states are exact zeros. Those rows get a unit pivot in
    the Cholesky factorisation and are zeroed afterwards, so the factor is exact and its
    derivative is the (defined) Cholesky derivative of the positive definite part.
    """
    zero = jnp.diagonal(P, axis1=-2, axis2=-1) <= 0
    eye = jnp.eye(P.shape[-1], dtype=bool)
    L = jnp.linalg.cholesky(jnp.where(eye & zero[..., None, :], 1.0, P))
    return jnp.where(zero[..., :, None], 0.0, L)


def mat_vec(P: jnp.ndarray, z: jnp.ndarray) -> jnp.ndarray:
    """P z for batch-last P (state, state, batch), z (state, batch)."""
    return jnp.sum(P * z[None], axis=1)


def outer(x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    """x yᵀ for batch-last x, y (state, batch) → (state, state, batch)."""
    return x[:, None] * y[None, :]


def symmetrize(P: jnp.ndarray) -> jnp.ndarray:
    """(P + Pᵀ)/2 over the two state axes of a batch-last P."""
    return 0.5 * (P + jnp.swapaxes(P, 0, 1))


def dense_cov(P: jnp.ndarray, sqrt: bool) -> jnp.ndarray:
    """The covariance L Lᵀ from its Cholesky factor in sqrt mode, else P itself (batch last)."""
    return jnp.einsum("ikb,jkb->ijb", P, P) if sqrt else P


def z_dot(lay: Layout, x: jnp.ndarray, z: jnp.ndarray) -> jnp.ndarray:
    """zᵀ x for batch-last x (state, batch), z (state, batch) → (batch,).

    Structural designs are 0/1 patterns known from the layout (`observed_states`): summing
    those entries is a few fused adds instead of a reduction over every state.
    """
    if lay.observed_states and not lay.time_varying_design:
        return sum(x[i] * z[i] for i in lay.observed_states[1:]) + x[lay.observed_states[0]] * z[lay.observed_states[0]]
    return jnp.sum(z * x, axis=0)


def mat_z(lay: Layout, P: jnp.ndarray, z: jnp.ndarray) -> jnp.ndarray:
    """P z for batch-last P (state, state, batch), from the observed columns only when known."""
    if lay.observed_states and not lay.time_varying_design:
        return sum(P[:, i] * z[i] for i in lay.observed_states[1:]) + P[:, lay.observed_states[0]] * z[lay.observed_states[0]]
    return mat_vec(P, z)


def rows_apply(lay: Layout, T: jnp.ndarray, rows: list) -> list:
    """T X by blocks, X given as its list of state rows (each (..., draw)); returns the rows of T X.

    The product of `system.transition_apply`, written as sums of rows: XLA then fuses a whole
    covariance update into a few elementwise loops over the batch, where a reduction over the
    state axis is a kernel of its own (about ten times slower at 13 states, 1000 draws, CPU).
    """
    out = []
    for _, start, k, kind, _ in lay.blocks:
        x = rows[start:start + k]
        if kind == "dummy":   # [-Σ x, x_1, ..., x_{k-1}]
            out += [-sum(x[1:], x[0])] + x[:-1]
            continue
        for i in range(k):
            t = T[start + i, start:start + k]
            out.append(sum((t[j] * x[j] for j in range(1, k)), t[0] * x[0]))
    return out


def design_states(lay: Layout) -> tuple[int, ...]:
    """The states z can be non-zero on: the observed ones when the design is structural, else all."""
    return lay.observed_states if lay.observed_states and not lay.time_varying_design else tuple(range(lay.n_states))


def rows_z_dot(lay: Layout, rows: list, z: jnp.ndarray) -> jnp.ndarray:
    """zᵀ x for x given as its list of state rows (each (batch,))."""
    cols = design_states(lay)
    return sum((rows[j] * z[j] for j in cols[1:]), rows[cols[0]] * z[cols[0]])
