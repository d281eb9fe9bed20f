"""Exact-diffuse univariate Kalman filter and smoother over a batch of systems.

Everything here works on a leading `batch` axis (series of a fleet, or posterior
draws of the online bank); a single series is a batch of one. The batch lets one
`lax.switch` per time step pick the cheapest correct update for all members:

* diffuse  — some P∞ ≠ 0: Koopman's exact diffuse update (as statsmodels does it);
* standard — the usual update of P (dense, or its Cholesky factor in `sqrt` mode);
* steady   — every member's P has converged and y_t is observed: P stays at its
  fixed point and only the mean moves, a ← T(a + K v), which is O(m) per step.

Tolerances follow statsmodels (`tolerance_diffuse = 1e-10`) so the diffuse phase
ends at the same step; the steady state is declared when ‖ΔP‖ ≤ 1e-11 ‖P‖.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .system import Layout, System, transition_apply, transition_sandwich

TOL_DIFFUSE = 1e-10
TOL_STEADY = 1e-22  # squared relative change of P between steps
LOG_2PI = jnp.log(2 * jnp.pi)


class FilterState(NamedTuple):
    """Predicted belief at time t for each batch member (the `init`/`step` carry)."""

    mean: jnp.ndarray          # (batch, state) a_t
    cov: jnp.ndarray           # (batch, state, state) P*_t, or its Cholesky factor in sqrt mode
    diffuse_cov: jnp.ndarray   # (batch, state, state) P∞_t
    diffuse: jnp.ndarray       # (batch,) bool: ‖P∞‖² > tolerance
    steady: jnp.ndarray        # (batch,) bool: P has converged (time-invariant models only)
    gain: jnp.ndarray          # (batch, state) K = P Zᵀ/F at convergence
    innov_var: jnp.ndarray     # (batch,) F at convergence
    prev_observed: jnp.ndarray  # (batch,) bool


class StepInfo(NamedTuple):
    """What one observation step reveals (per batch member)."""

    loglik: jnp.ndarray         # (batch,) log p(y_t | y_{1:t-1}), 0 when missing
    innovation: jnp.ndarray     # (batch,) v_t (0 when missing)
    innov_var: jnp.ndarray      # (batch,) F*_t
    diffuse_var: jnp.ndarray    # (batch,) F∞_t
    kind: jnp.ndarray           # (batch,) int: 0 skipped/missing, 1 standard, 2 diffuse
    pred_mean: jnp.ndarray      # (batch, state) a_t
    pred_cov: jnp.ndarray       # (batch, state, state) P*_t (dense)
    pred_diffuse: jnp.ndarray   # (batch, state, state) P∞_t
    filt_mean: jnp.ndarray      # (batch, state) a_{t|t}
    filt_cov: jnp.ndarray       # (batch, state, state) P*_{t|t}


def tria(A: jnp.ndarray) -> jnp.ndarray:
    """Lower-triangular L with L Lᵀ = A Aᵀ (via QR of Aᵀ)."""
    r = jnp.linalg.qr(A.T, mode="r")
    return r.T


def init(lay: Layout, system: System, batch: int, sqrt: bool = False) -> FilterState:
    """Belief before the first observation, broadcast to `batch` members if needed."""
    def one(sys1):
        cov = sys1.init_cov
        if sqrt:
            # the stationary part can be singular (zeros for diffuse states): factor with a QR
            w, V = jnp.linalg.eigh(cov)
            cov = tria(V * jnp.sqrt(jnp.clip(w, 0.0)))
        return cov
    T_b = system.transition
    if T_b.ndim == 2:
        system = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (batch,) + x.shape), system)
    cov = jax.vmap(one)(system)
    m = lay.n_states
    diffuse = jnp.sum(system.init_diffuse ** 2, axis=(-2, -1)) > TOL_DIFFUSE
    return FilterState(system.init_mean, cov, system.init_diffuse, diffuse,
                       jnp.zeros(batch, bool), jnp.zeros((batch, m)), jnp.ones(batch), jnp.zeros(batch, bool))


def _observe_one(a, P, Pinf, y, z, d, H, observed, use_diffuse: bool, sqrt: bool):
    """Univariate update of one member (Durbin & Koopman 2012, §5.2 / §6.4, univariate form)."""
    y0 = jnp.where(observed, y, 0.0)       # keep NaN out of the arithmetic (and of gradients)
    v = y0 - z @ a - d
    if sqrt:
        w = P.T @ z
        Ms, Fs = P @ w, w @ w + H
    else:
        Ms = P @ z
        Fs = z @ Ms + H
    if use_diffuse:
        Mi = Pinf @ z
        Fi = z @ Mi
        is_d = observed & (Fi > TOL_DIFFUSE)
    else:
        Mi, Fi, is_d = jnp.zeros_like(z), jnp.zeros(()), jnp.zeros((), bool)
    is_s = observed & ~is_d & (Fs > TOL_DIFFUSE)
    Fi_safe = jnp.where(is_d, Fi, 1.0)
    Fs_safe = jnp.where(is_s | is_d, Fs, 1.0)
    K = jnp.where(is_d, Mi / Fi_safe, jnp.where(is_s, Ms / Fs_safe, 0.0))
    v = jnp.where(is_d | is_s, v, 0.0)
    a_f = a + K * v
    if sqrt:
        A = jnp.concatenate([P - jnp.outer(K, z @ P), (K * jnp.sqrt(H))[:, None]], axis=1)
        P_f = tria(A)
    else:
        P_f = P - jnp.outer(K, Ms) - jnp.outer(Ms, K) + Fs * jnp.outer(K, K)
        P_f = 0.5 * (P_f + P_f.T)
    if use_diffuse:
        Pinf_f = Pinf - jnp.where(is_d, jnp.outer(Mi, Mi) / Fi_safe, 0.0)
        Pinf_f = 0.5 * (Pinf_f + Pinf_f.T)
    else:
        Pinf_f = Pinf
    llf = jnp.where(is_d, -0.5 * (LOG_2PI + jnp.log(Fi_safe)),
                    jnp.where(is_s, -0.5 * (LOG_2PI + jnp.log(Fs_safe) + v * v / Fs_safe), 0.0))
    kind = jnp.where(is_d, 2, jnp.where(is_s, 1, 0))
    return a_f, P_f, Pinf_f, llf, v, Fs, Fi, kind, K


def _predict_one(lay, T, q, a_f, P_f, Pinf_f, use_diffuse: bool, sqrt: bool):
    a = transition_apply(lay, T, a_f)
    if sqrt:
        P = tria(jnp.concatenate([transition_apply(lay, T, P_f), jnp.diag(jnp.sqrt(q))], axis=1))
    else:
        P = transition_sandwich(lay, T, P_f) + jnp.diag(q)
    Pinf = transition_sandwich(lay, T, Pinf_f) if use_diffuse else Pinf_f
    return a, P, Pinf


def _dense(P, sqrt):
    return P @ jnp.swapaxes(P, -1, -2) if sqrt else P


def step(lay: Layout, system: System, state: FilterState, y, d, z, *, sqrt: bool = False,
         keep: bool = False):
    """One time step for the whole batch: observe y_t, then predict t+1.

    y, d: (batch,); z: (batch, state). Returns (new state, StepInfo or loglik (batch,)).
    """
    observed = ~jnp.isnan(y)
    T, q, H = system.transition, system.state_var, system.obs_var
    vmapped = jax.vmap

    def full(use_diffuse):
        def one(a, P, Pinf, y_, z_, d_, H_, obs_, T_, q_, prev_obs):
            a_f, P_f, Pinf_f, llf, v, Fs, Fi, kind, K = _observe_one(a, P, Pinf, y_, z_, d_, H_, obs_,
                                                                    use_diffuse, sqrt)
            a_n, P_n, Pinf_n = _predict_one(lay, T_, q_, a_f, P_f, Pinf_f, use_diffuse, sqrt)
            diffuse_n = (jnp.sum(Pinf_n ** 2) > TOL_DIFFUSE) if use_diffuse else jnp.zeros((), bool)
            if sqrt or lay.time_varying_design:
                steady_n = jnp.zeros((), bool)
            else:
                change = jnp.sum((P_n - P) ** 2)
                steady_n = (~diffuse_n & (kind == 1) & prev_obs & obs_
                            & (change <= TOL_STEADY * jnp.sum(P_n ** 2)))
            info = StepInfo(llf, v, Fs, Fi, kind, a, _dense(P, sqrt), Pinf, a_f, _dense(P_f, sqrt))
            return (a_n, P_n, Pinf_n, diffuse_n, steady_n, K, Fs), info

        (a_n, P_n, Pinf_n, diffuse_n, steady_n, K, Fs), info = vmapped(one)(
            state.mean, state.cov, state.diffuse_cov, y, z, d, H, observed, T, q, state.prev_observed)
        new = FilterState(a_n, P_n, Pinf_n, diffuse_n, steady_n, K, Fs, observed)
        return new, info

    def steady():
        def one(a, K, F, y_, z_, d_, T_):
            v = y_ - z_ @ a - d_
            a_f = a + K * v
            llf = -0.5 * (LOG_2PI + jnp.log(F) + v * v / F)
            return transition_apply(lay, T_, a_f), a_f, llf, v
        a_n, a_f, llf, v = vmapped(one)(state.mean, state.gain, state.innov_var, jnp.where(observed, y, 0.0),
                                        z, d, T)
        new = state._replace(mean=a_n, prev_observed=observed)
        P = _dense(state.cov, sqrt)
        P_f = P - jnp.einsum("bi,bj->bij", state.gain, state.gain) * state.innov_var[:, None, None]
        info = StepInfo(llf, v, state.innov_var, jnp.zeros_like(llf), jnp.ones_like(llf, dtype=int),
                        state.mean, P, state.diffuse_cov, a_f, P_f)
        return new, info

    def out(res):
        new, info = res
        return new, (info if keep else info.loglik)

    branches = [lambda: out(steady()), lambda: out(full(False)), lambda: out(full(True))]
    all_steady = jnp.all(state.steady & observed)
    index = jnp.where(all_steady, 0, jnp.where(jnp.any(state.diffuse), 2, 1))
    return lax.switch(index, branches)


def run(lay: Layout, system: System, y: jnp.ndarray, *, sqrt: bool = False, keep: bool = False,
        state: FilterState | None = None):
    """Filter a batch over time.

    system: leaves with a leading batch axis; y: (time, batch). Returns (final state,
    per-step outputs stacked over time: StepInfo if keep else loglik (time, batch)).
    """
    n_time, batch = y.shape
    if state is None:
        state = init(lay, system, batch, sqrt)
    d = system.obs_intercept
    d = jnp.broadcast_to(d.T if d.ndim == 2 else d, (n_time, batch)) if d.ndim else jnp.zeros((n_time, batch))
    Z = system.design
    time_varying = lay.time_varying_design

    def body(carry, xs):
        if time_varying:
            y_t, d_t, z_t = xs
        else:
            (y_t, d_t), z_t = xs, Z
        return step(lay, system, carry, y_t, d_t, z_t, sqrt=sqrt, keep=keep)

    xs = (y, d, jnp.swapaxes(Z, 0, 1)) if time_varying else (y, d)
    return lax.scan(body, state, xs)


class SmoothResult(NamedTuple):
    mean: jnp.ndarray   # (time, state) E[α_t | y_{1:n}]
    cov: jnp.ndarray    # (time, state, state) Var[α_t | y_{1:n}]


def smooth_one(lay: Layout, system: System, info: StepInfo, z_all: jnp.ndarray) -> SmoothResult:
    """Exact-diffuse fixed-interval smoother for one member (Durbin & Koopman 2012, §5.3, univariate).

    info: the filter's per-step outputs for this member (time leading); z_all: (time, state).
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
        is_d, is_s = kind == 2, kind == 1
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
    xs = (info.pred_mean, info.pred_cov, info.pred_diffuse, info.innovation, info.innov_var,
          info.diffuse_var, info.kind, z_all)
    _, (mean, cov) = lax.scan(back, (zeros_m, zeros_m, zeros_mm, zeros_mm, zeros_mm), xs, reverse=True)
    return SmoothResult(mean, cov)
