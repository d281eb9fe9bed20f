"""An independent, well-conditioned reference for the exact diffuse log-likelihood.

de Jong's augmented Kalman filter (de Jong 1991; Durbin & Koopman 2012, §5.7): the diffuse
part of the initial state, α₁ = a + A δ + η₀ with P∞ = A Aᵀ and η₀ ~ N(0, P*), is carried as
unknown coefficients δ. One ordinary Kalman filter runs from (a, P*) and carries the extra
columns A_t (state, d); every observation gives a scalar innovation v_t, its regressor row
x_t = Z A_t and F_t. The exact diffuse log-likelihood (the limit of log L + (d/2) log κ for
P₁ = P* + κ P∞, which is what Koopman's exact-diffuse filter and statsmodels'
`use_exact_diffuse=True` compute) is then

    log L_d = -½ [ n log 2π + Σ log F_t + min_δ Σ (v_t − x_t δ)²/F_t + log |Σ x_tᵀ x_t / F_t| ],

n the number of observed values. The least-squares part and the determinant are read off
one QR factorisation of the stacked rows [x_t, v_t] / √F_t, so nothing is decided by a
threshold: there are no diffuse "steps" and no rank tests, and near-collinear diffuse
directions (e.g. the low-frequency harmonics of a yearly seasonal over the first days of a
daily series) cost accuracy only through the conditioning of that least-squares problem.

Plain numpy float64; the system matrices are taken from a statsmodels model (they do not
depend on either filter).
"""

from __future__ import annotations

import numpy as np


def _tv(x, t):
    """Matrix of a possibly time-varying statsmodels system array at time t."""
    x = np.asarray(x, dtype=float)
    return x[..., t] if x.shape[-1] > 1 else x[..., 0]


def augmented_diffuse_loglik(design, obs_intercept, obs_cov, transition, state_intercept, selection,
                             state_cov, init_mean, init_diffuse, init_stationary, y,
                             return_parts: bool = False, rank_rtol: float = 1e-12):
    """Exact diffuse log-likelihood of a univariate series (NaN = missing) by the augmented filter.

    Arrays in statsmodels' layout: design (1, m[, n]), obs_intercept (1[, n]), obs_cov (1, 1[, n]),
    transition (m, m[, n]), state_intercept (m[, n]), selection (m, r[, n]), state_cov (r, r[, n]);
    init_diffuse = P∞ (factored as A Aᵀ), init_stationary = P*.
    """
    y = np.asarray(y, dtype=float)
    n = y.shape[0]
    w, V = np.linalg.eigh(np.asarray(init_diffuse, dtype=float))
    keep = w > 1e-12 * max(1.0, float(np.max(np.abs(w))) if w.size else 1.0)
    A = V[:, keep] * np.sqrt(w[keep])                     # P∞ = A Aᵀ
    a = np.asarray(init_mean, dtype=float).copy()
    P = np.asarray(init_stationary, dtype=float).copy()
    d = A.shape[1]
    rows, logF, n_obs = [], 0.0, 0
    for t in range(n):
        Z = _tv(design, t)[0]
        if np.isfinite(y[t]):
            M = P @ Z
            F = float(Z @ M) + float(_tv(obs_cov, t)[0, 0])
            v = y[t] - float(Z @ a) - float(_tv(obs_intercept, t)[0])
            x = Z @ A
            if F <= 0:
                raise ValueError(f"F_t = {F} at t = {t}: the reference needs F_t > 0")
            K = M / F
            a = a + K * v
            A = A - np.outer(K, x)
            P = P - np.outer(K, M)
            P = 0.5 * (P + P.T)
            rows.append(np.concatenate([x, [v]]) / np.sqrt(F))
            logF += np.log(F)
            n_obs += 1
        T = _tv(transition, t)
        R = _tv(selection, t)
        a = T @ a + _tv(state_intercept, t)
        A = T @ A
        P = T @ P @ T.T + R @ _tv(state_cov, t) @ R.T
        P = 0.5 * (P + P.T)
    W = np.array(rows).reshape(-1, d + 1)
    Rf = np.linalg.qr(W, mode="r")                    # S = R₁₁ᵀ R₁₁ with R₁₁ = Rf[:d, :d]
    U, sv, _ = np.linalg.svd(Rf[:d, :d])
    # directions of δ that no observation reaches (sv = 0 in exact arithmetic, e.g. two
    # components sharing a frequency) stay diffuse in Koopman's filter and add nothing:
    # the pseudo-determinant and the least-squares residual outside them
    ident = sv > rank_rtol * (sv[0] if sv.size else 1.0)
    logdet_S = 2.0 * float(np.sum(np.log(sv[ident])))
    r = U.T @ Rf[:d, d]
    ssr = float(Rf[d, d] ** 2 if Rf.shape[0] > d else 0.0) + float(np.sum(r[~ident] ** 2))
    ll = -0.5 * (n_obs * np.log(2 * np.pi) + logF + ssr + logdet_S)
    if return_parts:
        return ll, {"logF": logF, "ssr": ssr, "logdet_S": logdet_S, "d": d, "rank": int(ident.sum()),
                    "sv": sv}
    return ll


def statsmodels_diffuse_loglik(mod, params, return_parts: bool = False, rank_rtol: float = 1e-12):
    """`augmented_diffuse_loglik` of a statsmodels state space model at params (its own matrices
    and initialisation; only the system is read, not its filter)."""
    mod.update(np.asarray(params, dtype=float))
    ssm = mod.ssm
    const, diffuse, stationary = ssm.initialization(model=ssm)
    # the underscored arrays always carry the time axis (the indexed ones drop it when constant)
    return augmented_diffuse_loglik(ssm._design, ssm._obs_intercept, ssm._obs_cov, ssm._transition,
                                    ssm._state_intercept, ssm._selection, ssm._state_cov, const,
                                    diffuse, stationary, np.asarray(ssm.endog, dtype=float)[0],
                                    return_parts=return_parts, rank_rtol=rank_rtol)
