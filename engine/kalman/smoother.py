"""Exact-diffuse fixed-interval smoother of one member from the filter's kept steps: the smoothed
states, the smoothed disturbances and the smoother's r/N recursions, from one backward pass."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax import lax

from ..system import Layout, System
from .state import StepInfo, StepKind


class SmoothResult(NamedTuple):
    mean: jnp.ndarray   # (time, state) E[α_t | y_{1:n}]
    cov: jnp.ndarray    # (time, state, state) Var[α_t | y_{1:n}]


class SmootherOutput(NamedTuple):
    """Everything one backward pass gives (time leading; t counts steps from 0).

    r, N follow statsmodels' `scaled_smoothed_estimator(_cov)`: r[t] is Durbin & Koopman's r_t,
    the scaled sum of the innovations after step t, taken at the predicted state of step t+1
    (α̂_{t+1} = a_{t+1} + P*_{t+1} r[t] + P∞_{t+1} r_diffuse[t]); r[n-1] = 0. In the exact diffuse
    phase r and N are r⁽⁰⁾ and N⁽⁰⁾, and r_diffuse, N_diffuse1, N_diffuse2 are r⁽¹⁾, N⁽¹⁾, N⁽²⁾
    (0 after it; statsmodels' diffuse arrays carry one more leading column, r⁽¹⁾ before step 0).
    The disturbances are those of y_t = Z α_t + d + ε_t, α_{t+1} = T α_t + η_t, η_t ~ N(0, diag(q)):
    ε̂_t = 0 and Var(ε_t | y) = H where y_t is missing; η̂_t is the full state vector's.
    """

    mean: jnp.ndarray                         # (time, state) α̂_t
    cov: jnp.ndarray                          # (time, state, state) V_t
    r: jnp.ndarray                            # (time, state) r_t (r⁽⁰⁾_t while diffuse)
    N: jnp.ndarray                            # (time, state, state) N_t (N⁽⁰⁾_t while diffuse)
    r_diffuse: jnp.ndarray                    # (time, state) r⁽¹⁾_t
    N_diffuse1: jnp.ndarray                   # (time, state, state) N⁽¹⁾_t (not symmetric in general)
    N_diffuse2: jnp.ndarray                   # (time, state, state) N⁽²⁾_t
    measurement_disturbance: jnp.ndarray      # (time,) ε̂_t = E[ε_t | y]
    measurement_disturbance_var: jnp.ndarray  # (time,) Var(ε_t | y)
    state_disturbance: jnp.ndarray            # (time, state) η̂_t = E[η_t | y]
    state_disturbance_cov: jnp.ndarray        # (time, state, state) Var(η_t | y)


def smooth_full(lay: Layout, system: System, info: StepInfo, z_all: jnp.ndarray, after=None) -> SmootherOutput:
    """Exact-diffuse state and disturbance smoother for one member (Durbin & Koopman 2012, §4.5,
    §5.3 and §6.4, univariate), one backward pass; results as statsmodels' univariate smoother.

    info: the filter's per-step outputs for this member (time leading); z_all: (time, state);
    after: (r, N) at the end of the last step (after its update, before the transition) from
    observations that follow it (default none); r, N and η̂ of the last step then still take no
    later observations into account. Within step t, from r̃, Ñ at its end (the next step's r, N
    times Tᵀ), with M = P* z, K = M/F*, L = I − K zᵀ:

      standard:  r⁽⁰⁾ ← z v/F* + Lᵀ r̃⁽⁰⁾,  N⁽⁰⁾ ← z zᵀ/F* + Lᵀ Ñ⁽⁰⁾ L,  N⁽¹⁾ ← Ñ⁽¹⁾ L,
      diffuse:   K⁽⁰⁾ = P∞ z/F∞, K⁽¹⁾ = (M − K⁽⁰⁾ F*)/F∞, L⁽⁰⁾ = I − K⁽⁰⁾zᵀ, L⁽¹⁾ = −K⁽¹⁾zᵀ and
                 Koopman's recursions for r⁽⁰⁾, r⁽¹⁾, N⁽⁰⁾, N⁽¹⁾, N⁽²⁾;

    then α̂ = a + P* r⁽⁰⁾ + P∞ r⁽¹⁾,  V = P* − P* N⁽⁰⁾ P* − P* N⁽¹⁾ᵀ P∞ − P∞ N⁽¹⁾ P* − P∞ N⁽²⁾ P∞,
    ε̂ = H (v/F* − Kᵀ r̃⁽⁰⁾), Var(ε | y) = H − H² (1/F* + Kᵀ Ñ⁽⁰⁾ K)   (standard step),
    ε̂ = −H K⁽⁰⁾ᵀ r̃⁽⁰⁾,      Var(ε | y) = H − H² K⁽⁰⁾ᵀ Ñ⁽⁰⁾ K⁽⁰⁾     (diffuse step),
    η̂_t = Q r_t, Var(η_t | y) = Q − Q N_t Q with Q = diag(q), r_t, N_t the next step's r⁽⁰⁾, N⁽⁰⁾.
    A missing y_t (no update) passes r and N through: ε̂ = 0, Var(ε | y) = H.
    """
    T = system.transition
    H = system.obs_var
    q = system.state_var
    m = lay.n_states
    eye = jnp.eye(m)

    def back(carry, xs):
        # r_t, N_t at the next step's predicted state; r̃, Ñ = Tᵀ r_t, Tᵀ N_t T at the end of step t
        (r0, r1, N0, N1, N2), (rt0, rt1, Nt0, Nt1, Nt2) = carry
        a, P, Pinf, v, Fs, Fi, kind, z = xs
        Ms, Mi = P @ z, Pinf @ z
        is_d, is_s = kind == StepKind.DIFFUSE, kind == StepKind.STANDARD
        Fi_s = jnp.where(is_d, Fi, 1.0)
        Fs_s = jnp.where(is_s | is_d, Fs, 1.0)
        # diffuse step
        K0 = Mi / Fi_s
        K1 = Ms / Fi_s - K0 * Fs / Fi_s
        L0 = eye - jnp.outer(K0, z)
        L1 = -jnp.outer(K1, z)
        zz = jnp.outer(z, z)
        d_r0 = L0.T @ rt0
        d_r1 = z * v / Fi_s + L0.T @ rt1 + L1.T @ rt0
        d_N0 = L0.T @ Nt0 @ L0
        d_N1 = zz / Fi_s + L0.T @ Nt1 @ L0 + L1.T @ Nt0 @ L0
        d_N2 = (-zz * Fs / Fi_s ** 2 + L0.T @ Nt2 @ L0 + L0.T @ Nt1 @ L1 + L1.T @ Nt1.T @ L0
                + L1.T @ Nt0 @ L1)
        # standard step (P∞ unchanged)
        Ks = Ms / Fs_s
        Ls = eye - jnp.outer(Ks, z)
        s_r0 = z * v / Fs_s + Ls.T @ rt0
        s_N0 = zz / Fs_s + Ls.T @ Nt0 @ Ls
        s_N1 = Nt1 @ Ls
        pick = lambda dd, ss, other: jnp.where(is_d, dd, jnp.where(is_s, ss, other))
        r0n = pick(d_r0, s_r0, rt0)
        r1n = pick(d_r1, rt1, rt1)
        N0n = pick(d_N0, s_N0, Nt0)
        N1n = pick(d_N1, s_N1, Nt1)
        N2n = pick(d_N2, Nt2, Nt2)
        mean = a + P @ r0n + Pinf @ r1n
        PN1P = Pinf @ N1n @ P
        cov = P - P @ N0n @ P - PN1P - PN1P.T - Pinf @ N2n @ Pinf
        cov = 0.5 * (cov + cov.T)
        # disturbances: ε from the end of this step, η from the next step's start
        K = jnp.where(is_d, K0, Ks)
        u = jnp.where(is_d, 0.0, v / Fs_s) - K @ rt0
        D = jnp.where(is_d, 0.0, 1.0 / Fs_s) + K @ Nt0 @ K
        updated = is_d | is_s
        eps = jnp.where(updated, H * u, 0.0)
        eps_var = jnp.where(updated, H - H * H * D, H)
        eta = q * r0
        eta_cov = jnp.diag(q) - q[:, None] * N0 * q[None, :]
        out = (mean, cov, r0, N0, r1, N1, N2, eps, eps_var, eta, eta_cov)
        start = (r0n, r1n, N0n, N1n, N2n)
        end = (T.T @ r0n, T.T @ r1n, T.T @ N0n @ T, T.T @ N1n @ T, T.T @ N2n @ T)
        return (start, end), out

    zeros_m, zeros_mm = jnp.zeros(m), jnp.zeros((m, m))
    r_end, N_end = (zeros_m, zeros_mm) if after is None else after
    init = ((zeros_m, zeros_m, zeros_mm, zeros_mm, zeros_mm), (r_end, zeros_m, N_end, zeros_mm, zeros_mm))
    xs = (info.pred_mean, info.pred_cov, info.pred_diffuse, info.innovation, info.innov_var,
          info.diffuse_var, info.kind, z_all)
    _, out = lax.scan(back, init, xs, reverse=True)
    mean, cov, r, N, r1, N1, N2, eps, eps_var, eta, eta_cov = out
    return SmootherOutput(mean, cov, r, N, r1, N1, N2, eps, eps_var, eta, eta_cov)


def smooth_one(lay: Layout, system: System, info: StepInfo, z_all: jnp.ndarray, after=None) -> SmoothResult:
    """The smoothed states of `smooth_full` alone: α̂_t and V_t (time leading)."""
    out = smooth_full(lay, system, info, z_all, after)
    return SmoothResult(out.mean, out.cov)
