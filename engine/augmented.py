"""The exact diffuse log-likelihood by de Jong's augmented Kalman filter: no diffuse steps, no threshold.

Koopman's exact-diffuse recursion (the default filter, and statsmodels') divides by the pivots
F∞_t of the diffuse states' design over the first observations. When those directions are
nearly collinear there (the low harmonics of a yearly seasonal over the first days of a daily
series) the pivots fall to round-off, and the recursion loses the log-likelihood by units.

Here the diffuse part of the initial state, α₁ = a₁ + A δ + η with P∞ = A Aᵀ and η ~ N(0, P*₁),
is carried as unknown coefficients δ (de Jong 1991; Durbin & Koopman 2012, §5.7). One ordinary
filter runs from (a₁, P*₁) and carries the columns A_t (state, diffuse); each observation gives
v_t, x_t = Z A_t and F_t, and

    log L = -½ [ n log 2π + Σ log F_t + Σ v_t²/F_t − sᵀ S⁻¹ s + log |S| ],
    S = Σ x_tᵀ x_t / F_t,   s = Σ x_tᵀ v_t / F_t   (n observed values),

the same function as Koopman's exact diffuse likelihood, evaluated by one well-conditioned least
squares at the end. Directions no observation reaches (S singular) are left out, as Koopman's
filter never takes a diffuse step for them. It costs (diffuse states) extra columns per step, and
gives the total only, so the engine uses it where `model.diffuse_conditioning` flags the start.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from .kalman import LOG_2PI
from .system import Layout, System, diffuse_states

UNREACHED = 1e-12   # eigenvalues of S below this fraction of the largest: a direction no observation reaches


def loglik(lay: Layout, system: System, y: jnp.ndarray) -> jnp.ndarray:
    """Exact diffuse log-likelihood of y (time,) under one (unbatched) system; NaN = missing."""
    states = diffuse_states(lay)
    n_d = len(states)
    m = lay.n_states
    T, H = system.transition, system.obs_var
    Q = jnp.diag(system.state_var)
    n_time = y.shape[0]
    Z = jnp.broadcast_to(system.design, (n_time, m))
    d = jnp.broadcast_to(system.obs_intercept, (n_time,))
    A0 = system.init_diffuse[:, jnp.array(states, dtype=int)] if n_d else jnp.zeros((m, 0))

    def body(carry, xs):
        a, A, P, gram, log_f, n_obs = carry
        y_t, z, d_t = xs
        observed = ~jnp.isnan(y_t)
        M = P @ z
        F = z @ M + H
        F_safe = jnp.where(observed, F, 1.0)
        v = jnp.where(observed, y_t - z @ a - d_t, 0.0)
        x = z @ A
        K = jnp.where(observed, M / F_safe, 0.0)
        r = jnp.where(observed, jnp.concatenate([x, v[None]]) / jnp.sqrt(F_safe), 0.0)
        a_f, A_f = a + K * v, A - jnp.outer(K, x)
        P_f = P - jnp.where(observed, jnp.outer(M, M) / F_safe, 0.0)
        P_n = T @ P_f @ T.T + Q
        carry = (T @ a_f, T @ A_f, 0.5 * (P_n + P_n.T), gram + jnp.outer(r, r),
                 log_f + jnp.where(observed, jnp.log(F_safe), 0.0), n_obs + observed)
        return carry, None

    init = (system.init_mean, A0, system.init_cov, jnp.zeros((n_d + 1, n_d + 1)), 0.0, 0)
    (_, _, _, gram, log_f, n_obs), _ = lax.scan(body, init, (y, Z, d))
    S, s, qq = gram[:n_d, :n_d], gram[:n_d, n_d], gram[n_d, n_d]
    quad, log_det = _reached_solve(S, s)
    return -0.5 * (n_obs * LOG_2PI + log_f + qq - quad + log_det)


def _reached_solve(S: jnp.ndarray, s: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(sᵀ S⁻¹ s, log |S|) on the directions observations reach.

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
