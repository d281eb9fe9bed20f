"""The exact diffuse phase by de Jong's augmented filter, carried beside Koopman's recursion.

Koopman's exact-diffuse update (`full_step` in `Phase.DIFFUSE`) divides by the pivots F∞_t of
the diffuse states' design over the first observations. Where those directions are nearly
collinear (the low harmonics of a yearly seasonal over the first days of a daily series) the
pivots fall to round-off: steps are mis-classified and P* is divided by F∞² ≈ 1e-24, so the
log-likelihood and the state after the phase are off by units or more.

The augmented filter (de Jong 1991; Durbin & Koopman 2012, §5.7) writes the diffuse part of the
initial state as unknown coefficients, α₁ = a₁ + A₁ δ + η with P∞ = A₁ A₁ᵀ and η ~ N(0, P*₁). One
ordinary filter runs from (a₁, P*₁) and carries the columns A_t (state, diffuse); each observation
gives v_t, x_t = z A_t and F_t and adds the row [x_t, v_t]/√F_t to the Gram matrix [S s; sᵀ q].
Once S is well conditioned (every diffuse direction identified), δ | y_{1:t} ~ N(S⁻¹s, S⁻¹) and
the belief collapses to a proper one,

    a = a_t + A_t S⁻¹ s,    P = P_t + A_t S⁻¹ A_tᵀ,

and the exact diffuse log-likelihood of the observations so far is

    −½ [ n log 2π + Σ log F_t + q − sᵀ S⁻¹ s + log |S| ],

without a threshold on any pivot and with no division by one. Nothing here decides a step's
kind: the per-step outputs of the phase stay Koopman's (statsmodels' too, where they are exact),
and at the collapse the step's log-likelihood term takes the difference between the exact value
and the sum of Koopman's terms over the phase (round-off where the start is well conditioned),
and the state becomes the collapsed one. So every consumer that sums the terms, or continues
from the state, is exact.

A member whose phase met an observed step with F_t = 0 (no irregular and no state noise yet:
y_t is then an exact linear constraint on δ, which least squares cannot weigh) or whose S never
becomes well conditioned (a direction no observation reaches) keeps Koopman's recursion.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..system import Layout, transition_apply
from .ops import tria_batch_last
from .state import LOG_2PI, TOL_DIFFUSE, Augmented, Phase

# An equilibrated S (unit diagonal) is collapsed once its smallest Cholesky pivot is above this:
# every diffuse direction is then identified to about this relative precision. Until then the
# phase goes on (the augmented filter stays exact). Measured on daily births (400 days, level,
# weekly seasonal, 2-6 yearly harmonics): collapsing at 1e-6 leaves the log-likelihood within
# 2e-11 (relative) of the dense reference; at 1e-8 and 1e-10, earlier, the large P = A S⁻¹ Aᵀ
# costs up to 1e-7 in the standard steps after it. Well-conditioned starts pass it at once.
COLLAPSE_PIVOT = 1e-6
UNREACHED = 1e-12   # eigenvalues of S below this fraction of the largest: a direction no observation reaches


# Koopman's recursion alone is exact to round-off where every F∞_t of its diffuse phase is clearly
# a pivot or clearly none: above WELL_RESOLVED of the largest (the P* update divides by F∞², so
# the round-off it amplifies stays below 1e-10 relative) or below ROUND_OFF of it, each also
# 100× away from the absolute threshold TOL_DIFFUSE that classifies the step.
WELL_RESOLVED, ROUND_OFF = 1e-3, 1e-12


def koopman_pivots(T: np.ndarray, z: np.ndarray, observed: np.ndarray) -> tuple[np.ndarray, bool]:
    """F∞_t at the observed steps of Koopman's diffuse phase, and whether the phase ends within
    the series (NumPy: a property of the diffuse states' T and z and of which y_t are observed, not
    of the variances). T (d, d); z (d,), or (time, d) for a time-varying design; observed (time,)."""
    P = np.eye(T.shape[0])
    pivots = []
    for t, obs in enumerate(observed):
        if np.sum(P * P) <= TOL_DIFFUSE:
            return np.asarray(pivots), True
        if obs:
            z_t = z[t] if z.ndim == 2 else z
            Pz = P @ z_t
            f = float(z_t @ Pz)
            pivots.append(f)
            if f > TOL_DIFFUSE:
                P = P - np.outer(Pz, Pz) / f
        P = T @ P @ T.T
    return np.asarray(pivots), bool(np.sum(P * P) <= TOL_DIFFUSE)


def koopman_exact(pivots: np.ndarray, ended: bool) -> bool:
    """Whether Koopman's recursion alone is exact to round-off for these pivots (`koopman_pivots`):
    then the augmented filter would only confirm its terms and may be left out."""
    if not ended:
        return False
    if pivots.size == 0:
        return True
    f = np.abs(pivots)
    top = f.max()
    resolved = (f >= WELL_RESOLVED * top) & (f >= 100 * TOL_DIFFUSE)
    none = (f <= ROUND_OFF * top) & (f <= TOL_DIFFUSE / 100)
    return bool(np.all(resolved | none))


def augmented_step(lay: Layout, T, q, H, aug: Augmented, y, d, z, reported, sqrt: bool) -> Augmented:
    """Observe y_t and predict t+1 in the augmented filter; `reported` (batch,) is the Koopman
    term this step reported, taken off the pending log-likelihood. y, d (batch,), z (state, batch).

    The mean and covariance use the standard step (`observe`, `predict`); the columns follow the
    mean's recursion without the data, A ← T (A − K x), x = zᵀ A."""
    from .steps import observe, predict   # steps imports this module

    observed = ~jnp.isnan(y)
    a_f, P_f, _, _, v, F, _, _, K = observe(lay, aug.mean, aug.cov, None, y, z, d, H, observed, Phase.STANDARD,
                                            sqrt)
    updated = observed & (F > 0)
    x = jnp.einsum("ikb,ib->kb", aug.cols, z)
    F_safe = jnp.where(updated, F, 1.0)
    row = jnp.where(updated, jnp.concatenate([x, v[None]]) / jnp.sqrt(F_safe), 0.0)
    term = jnp.where(updated, -0.5 * (LOG_2PI + jnp.log(F_safe)), 0.0)
    cols = transition_apply(lay, T, aug.cols - K[:, None] * x[None])
    a_n, P_n, _ = predict(lay, T, q, a_f, P_f, None, Phase.STANDARD, sqrt)
    return Augmented(a_n, P_n, cols, aug.gram + row[:, None] * row[None], aug.pending + term - reported,
                     aug.valid & (updated | ~observed))


def augmented_scan(lay: Layout, T, q, H, aug: Augmented, y, d, z, reported, sqrt: bool) -> Augmented:
    """`augmented_step` over y, d, reported (time, batch); z (state, batch) fixed, or
    (time, state, batch) when the design varies."""
    varying = z.ndim == 3

    def body(c, xs):
        y_t, d_t, reported_t, z_t = xs if varying else (*xs, z)
        return augmented_step(lay, T, q, H, c, y_t, d_t, z_t, reported_t, sqrt), None
    return lax.scan(body, aug, (y, d, reported, z) if varying else (y, d, reported))[0]


def collapse(aug: Augmented, active, sqrt: bool):
    """Collapse where the diffuse directions are identified: (collapsed (batch,) bool, mean,
    cov (dense, or its factor in sqrt mode), log-likelihood correction (batch,), 0 elsewhere).

    active (batch,): members still in their diffuse phase. S is equilibrated to unit diagonal
    (D^{-1/2} S D^{-1/2}) and factorised, S_eq = L Lᵀ; a member collapses when its smallest
    pivot L_ii² exceeds COLLAPSE_PIVOT. The decision is read off the primal values; the values
    and derivatives are those of the Cholesky factorisation.
    """
    n_d = aug.cols.shape[1]
    gram = aug.gram
    S, s, qq = gram[:n_d, :n_d], gram[:n_d, n_d], gram[n_d, n_d]
    diag = jnp.diagonal(S, axis1=0, axis2=1).T                      # (diffuse, batch)
    reached = jnp.all(diag > 0, axis=0)
    scale = 1.0 / jnp.sqrt(jnp.where(diag > 0, diag, 1.0))
    S_eq = jnp.moveaxis(S * scale[:, None] * scale[None], -1, 0)     # (batch, d, d)
    eye = jnp.eye(n_d)
    # decide on the primal values, then factorise only where collapsing (a failed factorisation
    # elsewhere would put NaN into the derivatives through the `where`)
    trial = jnp.linalg.cholesky(jnp.where(reached[:, None, None], lax.stop_gradient(S_eq), eye))
    pivots = jnp.diagonal(trial, axis1=1, axis2=2) ** 2
    ok = jnp.all(jnp.isfinite(pivots), axis=1) & (jnp.min(jnp.where(jnp.isfinite(pivots), pivots, 0.0), axis=1)
                                                   > COLLAPSE_PIVOT)
    collapsed = active & aug.valid & reached & ok
    L = jnp.linalg.cholesky(jnp.where(collapsed[:, None, None], S_eq, eye))
    tri = lambda rhs: jax.scipy.linalg.solve_triangular(L, rhs, lower=True)
    u = tri(jnp.moveaxis(scale * s, -1, 0)[..., None])[..., 0]                      # L⁻¹ D^{-1/2} s (batch, d)
    X = tri(jnp.moveaxis(scale[None] * aug.cols, -1, 0).swapaxes(1, 2))           # L⁻¹ D^{-1/2} Aᵀ (batch, d, m)
    delta = jax.scipy.linalg.solve_triangular(L.swapaxes(1, 2), u[..., None], lower=False)[..., 0]
    mean = aug.mean + jnp.einsum("ikb,bk->ib", aug.cols * scale[None], delta)
    X_last = jnp.moveaxis(X, 0, -1)                                                 # (d, m, batch)
    if sqrt:
        cov = tria_batch_last(jnp.concatenate([aug.cov, jnp.swapaxes(X_last, 0, 1)], axis=1))
    else:
        cov = aug.cov + jnp.einsum("kib,kjb->ijb", X_last, X_last)
    quad = jnp.sum(u * u, axis=1)
    log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=1, axis2=2)), axis=1) - 2.0 * jnp.sum(
        jnp.log(jnp.where(collapsed[None], scale, 1.0)), axis=0)
    correction = jnp.where(collapsed, aug.pending - 0.5 * (qq - quad + log_det), 0.0)
    return collapsed, mean, cov, correction


def collapse_state(state, active, sqrt: bool):
    """`collapse` applied to a `FilterState`: (new state, log-likelihood correction (batch,)).

    Collapsed members take the augmented filter's proper belief, lose their P∞ and leave the
    diffuse phase; members whose augmented filter cannot collapse (`Augmented.valid` false)
    keep Koopman's phase flag, the others stay diffuse until they collapse."""
    aug = state.augmented
    if aug.cols.shape[1] == 0:
        return state, jnp.zeros_like(state.diffuse, dtype=aug.pending.dtype)
    collapsed, mean, cov, correction = collapse(aug, active, sqrt)
    pick = lambda new, old: jnp.where(collapsed.reshape((1,) * (old.ndim - 1) + (-1,)), new, old)
    diffuse = jnp.where(aug.valid, active & ~collapsed, state.diffuse)
    new = state._replace(mean=pick(mean, state.mean), cov=pick(cov, state.cov),
                         diffuse_cov=pick(jnp.zeros_like(state.diffuse_cov), state.diffuse_cov), diffuse=diffuse)
    return new, correction


def reached_solve(S: jnp.ndarray, s: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(sᵀ S⁻¹ s, log |S|) of one (diffuse, diffuse) S on the directions observations reach.

    The reached subspace is read off the eigenvectors of S with its derivative stopped (it is
    structural: which directions the design ever sees), so the derivatives are those of a
    Cholesky factorisation of S restricted to it.
    """
    if S.shape[0] == 0:
        return jnp.zeros(()), jnp.zeros(())
    w, U = jnp.linalg.eigh(lax.stop_gradient(S))
    keep = w > UNREACHED * jnp.max(w)
    S_r = U.T @ S @ U
    both = keep[:, None] & keep[None, :]
    S_r = jnp.where(both, 0.5 * (S_r + S_r.T), jnp.eye(S.shape[0]))
    s_r = jnp.where(keep, U.T @ s, 0.0)
    L = jnp.linalg.cholesky(S_r)
    u = jax.scipy.linalg.solve_triangular(L, s_r, lower=True)
    return u @ u, 2.0 * jnp.sum(jnp.log(jnp.diagonal(L)))

