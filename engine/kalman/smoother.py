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
    §5.3 and §6.4, univariate): one backward pass for r and N, then the states and the
    disturbances from them; results as statsmodels' univariate smoother.

    info: the filter's per-step outputs for this member (time leading); z_all: (time, state);
    after: (r, N) at the end of the last step (after its update, before the transition) from
    observations that follow it (default none); r, N and the disturbances of the last step then
    still take no later observations into account. Within step t, from r̃ = Tᵀ r_t, Ñ = Tᵀ N_t T
    at its end, with M = P* z, K = M/F*, L = I − K zᵀ:

      standard:  r⁽⁰⁾ ← z v/F* + Lᵀ r̃⁽⁰⁾,  N⁽⁰⁾ ← z zᵀ/F* + Lᵀ Ñ⁽⁰⁾ L,  N⁽¹⁾ ← Ñ⁽¹⁾ L,
      diffuse:   K⁽⁰⁾ = P∞ z/F∞, K⁽¹⁾ = (M − K⁽⁰⁾ F*)/F∞, L⁽⁰⁾ = I − K⁽⁰⁾zᵀ, L⁽¹⁾ = −K⁽¹⁾zᵀ and
                 Koopman's recursions for r⁽⁰⁾, r⁽¹⁾, N⁽⁰⁾, N⁽¹⁾, N⁽²⁾;

    a missing y_t (no update) passes r and N through. Then, with r_{t-1} the values at the start
    of step t, α̂_t = a_t + P*_t r⁽⁰⁾_{t-1} + P∞_t r⁽¹⁾_{t-1} and
    V_t = P* − P* N⁽⁰⁾ P* − P* N⁽¹⁾ᵀ P∞ − P∞ N⁽¹⁾ P* − P∞ N⁽²⁾ P∞; the disturbances are `disturbances`.
    """
    T = system.transition
    m = lay.n_states
    eye = jnp.eye(m)
    n_time = z_all.shape[0]
    zeros_m, zeros_mm = jnp.zeros(m), jnp.zeros((m, m))
    r_end, N_end = (zeros_m, zeros_mm) if after is None else after

    def back(carry, xs):
        r0, r1, N0, N1, N2 = carry   # r_t, N_t: at the next step's predicted state
        a, P, Pinf, v, Fs, Fi, kind, z, t = xs
        last = t == n_time - 1       # r̃, Ñ at the end of step t: Tᵀ r_t, Tᵀ N_t T (or `after`)
        rt0 = jnp.where(last, r_end, T.T @ r0)
        Nt0 = jnp.where(last, N_end, T.T @ N0 @ T)
        rt1, Nt1, Nt2 = T.T @ r1, T.T @ N1 @ T, T.T @ N2 @ T
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
        return (r0n, r1n, N0n, N1n, N2n), (mean, cov, carry)

    xs = (info.pred_mean, info.pred_cov, info.pred_diffuse, info.innovation, info.innov_var,
          info.diffuse_var, info.kind, z_all, jnp.arange(n_time))
    init = (zeros_m, zeros_m, zeros_mm, zeros_mm, zeros_mm)
    _, (mean, cov, (r, r1, N, N1, N2)) = lax.scan(back, init, xs, reverse=True)
    eps, eps_var, eta, eta_cov = disturbances(system, info, r, N)
    return SmootherOutput(mean, cov, r, N, r1, N1, N2, eps, eps_var, eta, eta_cov)


def disturbances(system: System, info: StepInfo, r: jnp.ndarray, N: jnp.ndarray):
    """The smoothed disturbances and their variances from the smoother's r (time, state) and N
    (time, state, state) (`smooth_full`; r⁽⁰⁾, N⁽⁰⁾ while diffuse) and the filter's gains K_t:
    (ε̂ (time,), Var(ε | y) (time,), η̂ (time, state), Var(η | y) (time, state, state)).

    With r̃ = Tᵀ r_t, Ñ = Tᵀ N_t T at the end of step t (Durbin & Koopman 2012, §4.5.3 and §5.3;
    statsmodels' univariate forms):
      standard step:  ε̂ = H (v/F* − Kᵀ r̃),  Var(ε | y) = H − H² (1/F* + Kᵀ Ñ K),
      diffuse step:   ε̂ = −H K⁽⁰⁾ᵀ r̃,       Var(ε | y) = H − H² K⁽⁰⁾ᵀ Ñ K⁽⁰⁾,
      y_t missing:    ε̂ = 0,                Var(ε | y) = H;
      η̂_t = Q r_t,   Var(η_t | y) = Q − Q N_t Q,   Q = diag(q).
    """
    T, H, q = system.transition, system.obs_var, system.state_var
    K = info.gain
    kind = info.kind
    standard, updated = kind == StepKind.STANDARD, kind != StepKind.NONE
    r_end = r @ T                                     # rows Tᵀ r_t
    N_end = jnp.einsum("ji,tjk,kl->til", T, N, T)     # Tᵀ N_t T
    F_inv = jnp.where(standard, 1.0 / jnp.where(standard, info.innov_var, 1.0), 0.0)
    u = info.innovation * F_inv - jnp.einsum("ti,ti->t", K, r_end)
    D = F_inv + jnp.einsum("ti,tij,tj->t", K, N_end, K)
    eps = jnp.where(updated, H * u, 0.0)
    eps_var = jnp.where(updated, H - H * H * D, H)
    eta = q * r
    eta_cov = jnp.diag(q) - q[:, None] * N * q[None, :]
    return eps, eps_var, eta, eta_cov


def smooth_one(lay: Layout, system: System, info: StepInfo, z_all: jnp.ndarray, after=None) -> SmoothResult:
    """The smoothed states of `smooth_full` alone: α̂_t and V_t (time leading)."""
    out = smooth_full(lay, system, info, z_all, after)
    return SmoothResult(out.mean, out.cov)
