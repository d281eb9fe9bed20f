"""Exact-diffuse fixed-interval smoother of one member from the filter's kept steps."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax import lax

from ..system import Layout, System
from .state import StepInfo, StepKind


class SmoothResult(NamedTuple):
    mean: jnp.ndarray   # (time, state) E[α_t | y_{1:n}]
    cov: jnp.ndarray    # (time, state, state) Var[α_t | y_{1:n}]


def smooth_one(lay: Layout, system: System, info: StepInfo, z_all: jnp.ndarray, after=None) -> SmoothResult:
    """Exact-diffuse fixed-interval smoother for one member (Durbin & Koopman 2012, §5.3, univariate).

    info: the filter's per-step outputs for this member (time leading); z_all: (time, state);
    after: (r, N) at the end of the last step from observations that follow it (default none).
    Backward recursion for r⁽⁰⁾, r⁽¹⁾, N⁽⁰⁾, N⁽¹⁾, N⁽²⁾ within each step, then
    α̂_t = a_t + P*_t r⁽⁰⁾ + P∞_t r⁽¹⁾,
    V_t = P* − P* N⁽⁰⁾ P* − P* N⁽¹⁾ P∞ − (P∞ N⁽¹⁾ P*)ᵀ − P∞ N⁽²⁾ P∞  (as statsmodels).
    """
    T = system.transition
    m = lay.n_states
    eye = jnp.eye(m)

    def back(carry, xs):
        r0, r1, N0, N1, N2 = carry   # at the end of step t (after the update, before the transition)
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
        d_r0 = L0.T @ r0
        d_r1 = z * v / Fi_s + L0.T @ r1 + L1.T @ r0
        d_N0 = L0.T @ N0 @ L0
        d_N1 = zz / Fi_s + L0.T @ N1 @ L0 + L1.T @ N0 @ L0
        d_N2 = -zz * Fs / Fi_s ** 2 + L0.T @ N2 @ L0 + L0.T @ N1 @ L1 + L1.T @ N1.T @ L0 + L1.T @ N0 @ L1
        # standard step (P∞ unchanged)
        Ks = Ms / Fs_s
        Ls = eye - jnp.outer(Ks, z)
        s_r0 = z * v / Fs_s + Ls.T @ r0
        s_N0 = zz / Fs_s + Ls.T @ N0 @ Ls
        s_N1 = N1 @ Ls
        pick = lambda dd, ss, other: jnp.where(is_d, dd, jnp.where(is_s, ss, other))
        r0n = pick(d_r0, s_r0, r0)
        r1n = pick(d_r1, r1, r1)
        N0n = pick(d_N0, s_N0, N0)
        N1n = pick(d_N1, s_N1, N1)
        N2n = pick(d_N2, N2, N2)
        mean = a + P @ r0n + Pinf @ r1n
        PN1P = Pinf @ N1n @ P
        cov = P - P @ N0n @ P - PN1P - PN1P.T - Pinf @ N2n @ Pinf
        cov = 0.5 * (cov + cov.T)
        # move to the end of step t-1: r_{t-1} = Tᵀ r, N_{t-1} = Tᵀ N T
        nxt = (T.T @ r0n, T.T @ r1n, T.T @ N0n @ T, T.T @ N1n @ T, T.T @ N2n @ T)
        return nxt, (mean, cov)

    zeros_m, zeros_mm = jnp.zeros(m), jnp.zeros((m, m))
    r_end, N_end = (zeros_m, zeros_mm) if after is None else after
    xs = (info.pred_mean, info.pred_cov, info.pred_diffuse, info.innovation, info.innov_var,
          info.diffuse_var, info.kind, z_all)
    _, (mean, cov) = lax.scan(back, (r_end, zeros_m, N_end, zeros_mm, zeros_mm), xs, reverse=True)
    return SmoothResult(mean, cov)
