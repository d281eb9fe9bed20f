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

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from .system import Layout, System, diffuse_states, transition_apply, transition_sandwich

TOL_DIFFUSE = 1e-10
TOL_STEADY = 1e-22  # squared relative change of P between steps
CHUNK_STEPS = 32    # time steps per branch decision in `run` (see `_run_chunked`)
LOG_2PI = jnp.log(2 * jnp.pi)


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


class StepInfo(NamedTuple):
    """What one observation step reveals (per batch member, batch last)."""

    loglik: jnp.ndarray         # (batch,) log p(y_t | y_{1:t-1}), 0 when missing
    innovation: jnp.ndarray     # (batch,) v_t (0 when missing)
    innov_var: jnp.ndarray      # (batch,) F*_t
    diffuse_var: jnp.ndarray    # (batch,) F∞_t
    kind: jnp.ndarray           # (batch,) int: 0 skipped/missing, 1 standard, 2 diffuse
    pred_mean: jnp.ndarray      # (state, batch) a_t
    pred_cov: jnp.ndarray       # (state, state, batch) P*_t (dense)
    pred_diffuse: jnp.ndarray   # (state, state, batch) P∞_t
    filt_mean: jnp.ndarray      # (state, batch) a_{t|t}
    filt_cov: jnp.ndarray       # (state, state, batch) P*_{t|t}
    gain: jnp.ndarray           # (state, batch) K_t, a_{t|t} = a_t + K_t v_t


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


def _safe_sqrt(x: jnp.ndarray) -> jnp.ndarray:
    """√x with a zero (not infinite) derivative at x = 0: the variances of deterministic
    states are structural zeros, and √ of them must not turn a zero tangent into 0·∞ = NaN."""
    pos = x > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0)


def _factor_psd(P: jnp.ndarray) -> jnp.ndarray:
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


def _tria_b(A: jnp.ndarray) -> jnp.ndarray:
    """tria for batch-last A (m, n, batch) → (m, m, batch)."""
    return jnp.moveaxis(tria(jnp.moveaxis(A, -1, 0)), 0, -1)


def _mv(P, z):
    """P z for batch-last P (m, m, B), z (m, B)."""
    return jnp.sum(P * z[None], axis=1)


def _outer(x, y):
    return x[:, None] * y[None, :]


def _sym(P):
    return 0.5 * (P + jnp.swapaxes(P, 0, 1))


def _dense(P, sqrt):
    return jnp.einsum("ikb,jkb->ijb", P, P) if sqrt else P


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
        cov = jnp.moveaxis(_factor_psd(jnp.moveaxis(cov, -1, 0)), 0, -1)
    m = lay.n_states
    diffuse = jnp.sum(system.init_diffuse ** 2, axis=(0, 1)) > TOL_DIFFUSE
    return FilterState(system.init_mean, cov, system.init_diffuse, diffuse, jnp.zeros(batch, bool),
                       jnp.zeros((m, batch)), jnp.ones(batch), jnp.zeros(batch, bool))


def _z_dot(lay: Layout, x, z):
    """zᵀ x for batch-last x (state, batch), z (state, batch).

    Structural designs are 0/1 patterns known from the layout (`observed_states`): summing
    those entries is a few fused adds instead of a reduction over every state.
    """
    if lay.observed_states and not lay.time_varying_design:
        return sum(x[i] * z[i] for i in lay.observed_states[1:]) + x[lay.observed_states[0]] * z[lay.observed_states[0]]
    return jnp.sum(z * x, axis=0)


def _mat_z(lay: Layout, P, z):
    """P z for batch-last P (state, state, batch), from the observed columns only when known."""
    if lay.observed_states and not lay.time_varying_design:
        return sum(P[:, i] * z[i] for i in lay.observed_states[1:]) + P[:, lay.observed_states[0]] * z[lay.observed_states[0]]
    return _mv(P, z)


def _observe(lay, a, P, Pinf, y, z, d, H, observed, use_diffuse: bool, sqrt: bool):
    """Univariate update (Durbin & Koopman 2012, §5.2 and §6.4), batch-last."""
    if use_diffuse:
        # the diffuse tests (F∞ > tol) decide at roundoff level in models whose components
        # overlap (e.g. a dummy seasonal with a trig one of a dividing period): sum over every
        # state in order, as statsmodels does, so that the decisions agree with it
        lay = lay._replace(observed_states=())
    y0 = jnp.where(observed, y, 0.0)       # keep NaN out of the arithmetic (and of gradients)
    v = y0 - _z_dot(lay, a, z) - d
    if sqrt:
        w = jnp.sum(P * z[:, None], axis=0)          # Lᵀ z  (m, B)
        Ms, Fs = _mv(P, w), jnp.sum(w * w, axis=0) + H
    else:
        Ms = _mat_z(lay, P, z)
        Fs = _z_dot(lay, Ms, z) + H
    if use_diffuse:
        Mi = _mv(Pinf, z)
        Fi = jnp.sum(z * Mi, axis=0)
        is_d = observed & (Fi > TOL_DIFFUSE)
    else:
        Mi, Fi, is_d = jnp.zeros_like(z), jnp.zeros_like(Fs), jnp.zeros_like(observed)
    is_s = observed & ~is_d & (Fs > 0.0)
    Fi_safe = jnp.where(is_d, Fi, 1.0)
    Fs_safe = jnp.where(is_s | is_d, Fs, 1.0)
    K = jnp.where(is_d, Mi / Fi_safe, jnp.where(is_s, Ms / Fs_safe, 0.0))
    v = jnp.where(is_d | is_s, v, 0.0)
    a_f = a + K * v
    if sqrt:
        A = jnp.concatenate([P - _outer(K, w), (K * _safe_sqrt(H))[:, None]], axis=1)
        P_f = _tria_b(A)
    else:
        P_f = _sym(P - _outer(K, Ms) - _outer(Ms, K) + Fs * _outer(K, K))
    Pinf_f = _sym(Pinf - jnp.where(is_d, _outer(Mi, Mi) / Fi_safe, 0.0)) if use_diffuse else Pinf
    llf = jnp.where(is_d, -0.5 * (LOG_2PI + jnp.log(Fi_safe)),
                    jnp.where(is_s, -0.5 * (LOG_2PI + jnp.log(Fs_safe) + v * v / Fs_safe), 0.0))
    kind = jnp.where(is_d, 2, jnp.where(is_s, 1, 0))
    return a_f, P_f, Pinf_f, llf, v, Fs, Fi, kind, K


def _predict(lay, T, q, a_f, P_f, Pinf_f, use_diffuse: bool, sqrt: bool):
    a = transition_apply(lay, T, a_f)
    if sqrt:
        m = q.shape[0]
        Q_half = jnp.eye(m)[:, :, None] * _safe_sqrt(q)[None]
        P = _tria_b(jnp.concatenate([transition_apply(lay, T, P_f), Q_half], axis=1))
    else:
        P = transition_sandwich(lay, T, P_f) + jnp.eye(q.shape[0])[:, :, None] * q[None]
    Pinf = transition_sandwich(lay, T, Pinf_f) if use_diffuse else Pinf_f
    return a, P, Pinf


def _standard_steps(lay: Layout, a, P, T, z, H, q, y, d, sqrt: bool = False):
    """Standard (non-diffuse) steps over y, d (time, batch) from (a, P): the state after them,
    the last step's K and F, and the log-likelihood terms (time, batch)."""
    def body(c, x):
        a, P, _, _ = c
        y_t, d_t = x
        a_f, P_f, _, llf, _, Fs, _, _, K = _observe(lay, a, P, None, y_t, z, d_t, H, ~jnp.isnan(y_t), False, sqrt)
        a_n, P_n, _ = _predict(lay, T, q, a_f, P_f, None, False, sqrt)
        return (a_n, P_n, K, Fs), llf
    (a, P, K, F), ll = lax.scan(body, (a, P, jnp.zeros_like(a), jnp.ones_like(H)), (y, d))
    return a, P, K, F, ll


@partial(jax.custom_jvp, nondiff_argnums=(0,))
def _standard_scan(lay: Layout, a, P, T, z, H, q, y, d):
    """`_standard_steps` (dense covariance) with a hand-written tangent, whose transpose is its
    reverse mode.

    Plain autodiff of the update differentiates every operation of the symmetrised Joseph-type
    form and of the masks around it. The tangent below uses P_f = P − M Mᵀ/F (the same function,
    M = P z, F = zᵀ M + H, K = M/F; w = 1/F on standard steps, 0 on skipped ones):
        dM = dP z,  dF = zᵀ dM + dH,  dv = −zᵀ da − dd,  dK = (dM − K dF) w,
        da_f = da + dK v + K dv,  dP_f = dP − K (dM − ½ dF K)ᵀ − (dM − ½ dF K) Kᵀ,
        dℓ = −½ dF (w − v² w²) − v w dv,
        da' = T da_f + dT a_f,  dP' = T dP_f Tᵀ + (dT P_f Tᵀ + its transpose) + diag(dq).
    A first scan runs the filter and packs what the tangent reads into one array per step
    (K, v, w; a_f and P_f only when T has a tangent); a second, linear scan runs the tangent, so
    reverse mode stores those vectors and transposes only the second scan. Inputs without a
    tangent (`symbolic_zeros`) add no terms.
    """
    return _standard_steps(lay, a, P, T, z, H, q, y, d)


def _transition_tangent(lay: Layout, T, dT, X):
    """dT X as `transition_apply` sees it: zero in blocks whose action does not read T (dummy)."""
    return jax.jvp(lambda T_: transition_apply(lay, T_, X), (T,), (dT,))[1]


def _residual_rows(K, v, kind, Fs, llf, a_f, P_f, with_transition: bool):
    """What the tangent scan reads of one step, packed into one (rows, batch) array: K, v,
    w = 1/F on standard steps (0 otherwise), the step's update flag, its log-likelihood term
    (the primal output), and a_f, P_f when T has a tangent."""
    m = K.shape[0]
    s = kind == 1
    w = jnp.where(s, 1.0 / jnp.where(s, Fs, 1.0), 0.0)
    rows = [K, v[None], w[None], (kind > 0).astype(K.dtype)[None], llf[None]]
    if with_transition:
        rows += [a_f, P_f.reshape(m * m, -1)]
    return jnp.concatenate(rows, axis=0)


def _tangent_scan(lay: Layout, T, z, dT, dH, dq, da, dP, dK, dF, packed, dd):
    """The linear scan of the filter's tangent (see `_standard_scan`) over the rows packed by
    `_residual_rows`: (da, dP, dK, dF) after the last step and dℓ (time, batch).

    The same recursion serves diffuse steps when P∞ has no tangent (T without one): their gain
    K = M∞/F∞ and log-likelihood term −½(log 2π + log F∞) are then constant, which is w = 0 with
    the update flag set, and P_f = P − K Mᵀ − M Kᵀ + F K Kᵀ has the standard step's tangent.
    """
    m = da.shape[0]
    K_all, v_all, w_all, on_all = packed[:, :m], packed[:, m], packed[:, m + 1], packed[:, m + 2]
    extra = (packed[:, m + 4:2 * m + 4], packed[:, 2 * m + 4:].reshape((-1, m, m) + da.shape[1:])) if dT is not None else None

    def tangent(c, x):
        da, dP, _, _ = c
        K, v, w, on, dd_t, ex = x
        dM = _mat_z(lay, dP, z)
        dF = _z_dot(lay, dM, z)
        if dH is not None:
            dF = dF + dH
        dv = -_z_dot(lay, da, z)
        if dd_t is not None:
            dv = dv - dd_t
        dv = jnp.where(on > 0, dv, 0.0)
        dK = (dM - K * dF) * w
        da_f = da + dK * v + K * dv
        G = dM - 0.5 * dF * K
        dP_f = dP - _outer(K, G) - _outer(G, K)
        dll = -0.5 * dF * (w - (v * w) ** 2) - v * w * dv
        da_n = transition_apply(lay, T, da_f)
        dP_n = transition_sandwich(lay, T, dP_f)
        if dq is not None:
            dP_n = dP_n + jnp.eye(m)[:, :, None] * dq[None]
        if dT is not None:
            a_f, P_f = ex
            da_n = da_n + _transition_tangent(lay, T, dT, a_f)
            X = _transition_tangent(lay, T, dT, jnp.swapaxes(transition_apply(lay, T, P_f), 0, 1))
            dP_n = dP_n + X + jnp.swapaxes(X, 0, 1)
        return (da_n, dP_n, dK, dF), dll

    return lax.scan(tangent, (da, _sym(dP), dK, dF), (K_all, v_all, w_all, on_all, dd, extra))


def _tangent_or_zero(t, like):
    return jnp.zeros_like(like) if t is None else t


def _standard_scan_jvp(lay: Layout, primals, tangents):
    a, P, T, z, H, q, y, d = primals
    da, dP, dT, dz, dH, dq, dy, dd = (None if type(t) is SymbolicZero else t for t in tangents)
    if dz is not None or dy is not None:   # not met by the models (fixed design, data as given)
        return _plain_jvp(partial(_standard_steps, lay), primals, tangents)

    def body(c, x):
        a, P, _, _ = c
        y_t, d_t = x
        a_f, P_f, _, llf, v, Fs, _, kind, K = _observe(lay, a, P, None, y_t, z, d_t, H, ~jnp.isnan(y_t), False, False)
        a_n, P_n, _ = _predict(lay, T, q, a_f, P_f, None, False, False)
        return (a_n, P_n, K, Fs), _residual_rows(K, v, kind, Fs, llf, a_f, P_f, dT is not None)

    (a_n, P_n, K_n, F_n), packed = lax.scan(body, (a, P, jnp.zeros_like(a), jnp.ones_like(H)), (y, d))
    (da_n, dP_n, dK_n, dF_n), dll = _tangent_scan(lay, T, z, dT, dH, dq, _tangent_or_zero(da, a),
                                                  _tangent_or_zero(dP, P), jnp.zeros_like(a), jnp.zeros_like(H),
                                                  packed, dd)
    return (a_n, P_n, K_n, F_n, packed[:, a.shape[0] + 3]), (da_n, dP_n, dK_n, dF_n, dll)


def _general_steps(lay: Layout, state: FilterState, T, z, H, q, y, d, sqrt: bool = False):
    """Exact-diffuse steps (`_full_step`, valid in every case) over y, d (time, batch): the
    state after them and the log-likelihood terms (time, batch)."""
    system = System(T, z, d, H, q, None, None, None)

    def body(c, x):
        return _full_step(lay, system, c, *x, z, True, sqrt, False)
    return lax.scan(body, state, (y, d))


@partial(jax.custom_jvp, nondiff_argnums=(0,))
def _general_scan(lay: Layout, state: FilterState, T, z, H, q, y, d):
    """`_general_steps` with the standard steps' hand-written tangent (`_tangent_scan`) where P∞
    has none (T has no tangent), which is every model's case but those with a cycle or AR
    block; plain autodiff otherwise. The diffuse head of every likelihood runs here, and plain
    autodiff of its masks and branches cost about three standard tangents per step."""
    return _general_steps(lay, state, T, z, H, q, y, d)


def _general_scan_jvp(lay: Layout, primals, tangents):
    state, T, z, H, q, y, d = primals
    dstate, dT, dz, dH, dq, dy, dd = tangents
    symbolic = lambda t: type(t) is SymbolicZero
    dT, dH, dq, dd = (None if symbolic(t) else t for t in (dT, dH, dq, dd))
    if dT is not None or not (symbolic(dz) and symbolic(dy) and symbolic(dstate.diffuse_cov)):
        return _general_steps_autodiff(lay, primals, tangents)
    system = System(T, z, d, H, q, None, None, None)

    def body(c, x):
        new, info = _full_step(lay, system, c, *x, z, True, False, True)
        return new, _residual_rows(info.gain, info.innovation, info.kind, info.innov_var, info.loglik, None, None, False)

    final, packed = lax.scan(body, state, (y, d))
    m = state.mean.shape[0]
    tangent_of = lambda name: (jnp.zeros_like(getattr(state, name)) if symbolic(getattr(dstate, name))
                               else getattr(dstate, name))
    (da_n, dP_n, dK_n, dF_n), dll = _tangent_scan(lay, T, z, None, dH, dq, tangent_of("mean"), tangent_of("cov"),
                                                  tangent_of("gain"), tangent_of("innov_var"), packed, dd)
    flag = lambda x: jnp.zeros(x.shape, jax.dtypes.float0)
    # P∞'s tangent stays a symbolic zero, so that a later diffuse chunk takes this path too
    no_tangent = SymbolicZero(jax.typeof(final.diffuse_cov).to_tangent_aval())
    dfinal = FilterState(da_n, dP_n, no_tangent, flag(final.diffuse), flag(final.steady), dK_n, dF_n,
                         flag(final.prev_observed))
    return (final, packed[:, m + 3]), (dfinal, dll)


_general_scan.defjvp(_general_scan_jvp, symbolic_zeros=True)


def _general_steps_autodiff(lay: Layout, primals, tangents):
    """Plain autodiff of `_general_steps`, where P∞ may have a tangent (cycle and AR models)."""
    return _plain_jvp(partial(_general_steps, lay), primals, tangents)


def _plain_jvp(fn, primals, tangents):
    """`jax.jvp` of fn, the custom rules' fallback: symbolic-zero tangents made concrete
    (float0 for boolean primals)."""
    dense = jax.tree.map(lambda p, t: (jnp.zeros(p.shape, jax.dtypes.float0) if p.dtype == bool
                                       else jnp.zeros_like(p)) if type(t) is SymbolicZero else t, primals, tangents)
    return jax.jvp(fn, primals, dense)


_standard_scan.defjvp(_standard_scan_jvp, symbolic_zeros=True)


def _full_step(lay: Layout, system: System, state: FilterState, y, d, z, use_diffuse: bool, sqrt: bool,
               keep: bool):
    """Observe and predict with the covariance update (diffuse or standard); see `step`."""
    observed = ~jnp.isnan(y)
    a, P, Pinf = state.mean, state.cov, state.diffuse_cov
    if use_diffuse:   # once a member's diffuse phase has ended, its P∞ roundoff must not grow into new diffuse steps
        Pinf = jnp.where(state.diffuse, Pinf, 0.0)
    a_f, P_f, Pinf_f, llf, v, Fs, Fi, kind, K = _observe(lay, a, P, Pinf, y, z, d, system.obs_var, observed,
                                                        use_diffuse, sqrt)
    a_n, P_n, Pinf_n = _predict(lay, system.transition, system.state_var, a_f, P_f, Pinf_f, use_diffuse, sqrt)
    if use_diffuse:
        diffuse_n = jnp.sum(Pinf_n ** 2, axis=(0, 1)) > TOL_DIFFUSE
    else:
        diffuse_n = jnp.zeros_like(observed)
    if sqrt or lay.time_varying_design:
        steady_n = jnp.zeros_like(observed)
    else:
        change = jnp.sum((P_n - P) ** 2, axis=(0, 1))
        steady_n = (~diffuse_n & (kind == 1) & state.prev_observed & observed
                    & (change <= TOL_STEADY * jnp.sum(P_n ** 2, axis=(0, 1))))
    new = FilterState(a_n, P_n, Pinf_n, diffuse_n, steady_n, K, Fs, observed)
    info = StepInfo(llf, v, Fs, Fi, kind, a, _dense(P, sqrt), Pinf, a_f, _dense(P_f, sqrt), K) if keep else llf
    return new, info


def _steady_update(lay: Layout, T, z, K, F, a, y, d):
    """The steady-state step a' = T(a + K v) with its a_f, v and log-likelihood term (y observed)."""
    v = jnp.where(jnp.isnan(y), 0.0, y) - _z_dot(lay, a, z) - d
    a_f = a + K * v
    return transition_apply(lay, T, a_f), a_f, v, -0.5 * (LOG_2PI + jnp.log(F) + v * v / F)


def _steady_steps(lay: Layout, a, K, F, T, z, y, d):
    """Steady steps over y, d (time, batch) at a converged (K, F): the final mean and the
    log-likelihood terms. Only the mean is carried, so reverse mode carries nothing m×m."""
    def body(a, x):
        a_n, _, _, llf = _steady_update(lay, T, z, K, F, a, *x)
        return a_n, llf
    return lax.scan(body, a, (y, d))


def _steady_step(lay: Layout, system: System, state: FilterState, y, d, z, sqrt: bool, keep: bool):
    """Observe and predict at the converged covariance: only the mean moves, a ← T(a + K v)."""
    observed = ~jnp.isnan(y)
    K, F = state.gain, state.innov_var
    a_n, a_f, v, llf = _steady_update(lay, system.transition, z, K, F, state.mean, y, d)
    new = state._replace(mean=a_n, prev_observed=observed)
    if not keep:
        return new, llf
    P = _dense(state.cov, sqrt)
    info = StepInfo(llf, v, F, jnp.zeros_like(llf), jnp.ones_like(llf, dtype=int), state.mean, P,
                    state.diffuse_cov, a_f, P - F * _outer(K, K), K)
    return new, info


def _rows_apply(lay, T, rows: list) -> list:
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


def packed_pairs(n_states: int) -> list[tuple[int, int]]:
    """The (i, j), i ≤ j, entries of a symmetric state×state matrix that its packed form keeps, in order."""
    return [(i, j) for i in range(n_states) for j in range(i, n_states)]


def pack(P) -> tuple:
    """Upper triangle of a batch-last symmetric P (state, state, batch) as a tuple of (batch,) rows."""
    return tuple(P[i, j] for i, j in packed_pairs(P.shape[0]))


def unpack(P_packed: tuple, n_states: int) -> jnp.ndarray:
    """Inverse of `pack`: the dense symmetric (state, state, batch)."""
    entry = _packed_entry(P_packed, n_states)
    return jnp.stack([jnp.stack([entry(i, j) for j in range(n_states)]) for i in range(n_states)])


def _packed_entry(P_packed: tuple, n_states: int):
    """P_ij of a packed P (a function of i, j; either order)."""
    index = {ij: k for k, ij in enumerate(packed_pairs(n_states))}
    return lambda i, j: P_packed[index[(i, j) if i <= j else (j, i)]]


def _design_states(lay: Layout) -> tuple[int, ...]:
    """The states z can be non-zero on: the observed ones when the design is structural, else all."""
    return lay.observed_states if lay.observed_states and not lay.time_varying_design else tuple(range(lay.n_states))


def _rows_z_dot(lay: Layout, rows, z):
    """zᵀ x for x given as its list of state rows (each (batch,))."""
    cols = _design_states(lay)
    return sum((rows[j] * z[j] for j in cols[1:]), rows[cols[0]] * z[cols[0]])


def _packed_mat_z(lay: Layout, P_packed: tuple, z) -> list:
    """Rows of P z for a packed P."""
    entry = _packed_entry(P_packed, lay.n_states)
    return [_rows_z_dot(lay, [entry(i, j) for j in range(lay.n_states)], z) for i in range(lay.n_states)]


def _scalar_observe(y, F, z_a, d):
    """The scalar part of a standard observe step, each (batch,): observed, updated (observed
    with F > 0), 1/F (0 where not updated), the innovation v = y − zᵀa − d and its
    log-likelihood term −½(log 2π + log F + v²/F) (0 where not updated)."""
    observed = ~jnp.isnan(y)
    updated = observed & (F > 0)
    F_safe = jnp.where(updated, F, 1.0)
    inv_F = jnp.where(updated, 1.0 / F_safe, 0.0)
    v = jnp.where(updated, jnp.where(observed, y, 0.0) - z_a - d, 0.0)
    loglik = jnp.where(updated, -0.5 * (LOG_2PI + jnp.log(F_safe) + v * v * inv_F), 0.0)
    return observed, updated, inv_F, v, loglik


def _packed_standard_step(lay: Layout, system: System, st: FilterState, y, d, z, test_steady: bool = True):
    """`step` for a batch with no diffuse member, P packed (`pack`), in fusable form: (next state with
    P packed, loglik, innovation v), each (batch,) but the state.

    Same arithmetic as the standard branch of `_full_step` (observe, then predict
    P_{t+1} = T (P − M Mᵀ/F) Tᵀ + diag(q) with M = P z, and the same steady test
    ‖ΔP‖_F² ≤ tol ‖P‖_F² unless `test_steady` is False), up to roundoff, written entry by entry
    on the m(m+1)/2 distinct entries of P: XLA fuses the whole update into a few elementwise
    loops over the batch, and a loop that carries P packed moves half the memory of a dense one
    (the online bank at 13 states and 1000 draws: 0.15 against 0.31 ms per step).
    """
    m = lay.n_states
    pairs = packed_pairs(m)
    T = system.transition
    M = _packed_mat_z(lay, st.cov, z)                 # rows of P z
    F = _rows_z_dot(lay, M, z) + system.obs_var
    observed, updated, inv_F, v, loglik = _scalar_observe(y, F, _rows_z_dot(lay, st.mean, z), d)
    K = [M_i * inv_F for M_i in M]
    a_next = jnp.stack(_rows_apply(lay, T, [st.mean[i] + K[i] * v for i in range(m)]))
    entry = _packed_entry(st.cov, m)
    P_f = _packed_entry(tuple(entry(i, j) - M[i] * K[j] for i, j in pairs), m)   # P − M Mᵀ/F
    TP = [_rows_apply(lay, T, [P_f(k, j) for k in range(m)]) for j in range(m)]   # TP[j][i] = (T P_f)_ij
    P_next = []
    for i in range(m):   # row i of T P_f Tᵀ; XLA drops the entries below the diagonal
        row = _rows_apply(lay, T, [TP[k][i] for k in range(m)])
        P_next += [row[j] + system.state_var[i] if j == i else row[j] for j in range(i, m)]
    steady = jnp.zeros_like(observed)
    if test_steady and not lay.time_varying_design:
        weight = [1.0 if i == j else 2.0 for i, j in pairs]    # off-diagonal entries count twice
        change = sum(w * (new - old) ** 2 for w, new, old in zip(weight, P_next, st.cov))
        size = sum(w * new ** 2 for w, new in zip(weight, P_next))
        steady = updated & st.prev_observed & (change <= TOL_STEADY * size)
    return (FilterState(a_next, tuple(P_next), st.diffuse_cov, jnp.zeros_like(observed), steady, jnp.stack(K), F,
                        observed), loglik, v)


def _fused_standard_step(lay: Layout, system: System, st: FilterState, y, d, z, test_steady: bool = True):
    """`step` for a batch with no diffuse member and a dense P, in fusable form: (next state,
    loglik, innovation v), each (batch,) but the state.

    Same arithmetic as the standard branch of `_full_step` (observe, then predict
    T P_{t|t} Tᵀ + Q, and the same steady test unless `test_steady` is False), up to roundoff,
    in a few large elementwise fusions instead of one small kernel per matrix operation:
    about half the time of `_full_step` at 6 states and 256 series. The fleet's filter uses it:
    under its forward tangents this dense form is about twice as fast as `_packed_standard_step`
    (fit_many 85–114 against 47–63 series/s), which is the faster one for values alone.
    """
    T = system.transition
    M = _mat_z(lay, st.cov, z)                       # P z (state, batch)
    F = _z_dot(lay, M, z) + system.obs_var
    observed, updated, inv_F, v, loglik = _scalar_observe(y, F, _z_dot(lay, st.mean, z), d)
    K = M * inv_F
    a_next = jnp.stack(_rows_apply(lay, T, list(st.mean + K * v)))
    # P_{t+1} = T P_{t|t} Tᵀ + diag(q) by rows (see `_rows_apply`)
    P_f = st.cov - (M[:, None] * M[None]) * inv_F            # P − M Mᵀ/F, exactly symmetric
    TP = jnp.stack(_rows_apply(lay, T, list(P_f)))
    P_next = (jnp.stack(_rows_apply(lay, T, list(jnp.swapaxes(TP, 0, 1))))
              + jnp.eye(lay.n_states)[:, :, None] * system.state_var[None])
    steady = jnp.zeros_like(observed)
    if test_steady and not lay.time_varying_design:   # the filter's test ‖ΔP‖² ≤ tol ‖P‖² (as dot products: one kernel each)
        diff, P_flat = jnp.reshape(P_next - st.cov, (-1, y.shape[0])), jnp.reshape(P_next, (-1, y.shape[0]))
        change, size = jnp.einsum("ks,ks->s", diff, diff), jnp.einsum("ks,ks->s", P_flat, P_flat)
        steady = updated & st.prev_observed & (change <= TOL_STEADY * size)
    return FilterState(a_next, P_next, st.diffuse_cov, jnp.zeros_like(observed), steady, K, F, observed), loglik, v


def step(lay: Layout, system: System, state: FilterState, y, d, z, *, sqrt: bool = False,
         keep: bool = False):
    """One time step for the whole batch: observe y_t, then predict t+1.

    system: batch-last; y, d: (batch,); z: (state, batch). Returns (new state, StepInfo if
    keep else loglik (batch,)).
    """
    args = (lay, system, state, y, d, z)
    branches = [lambda: _steady_step(*args, sqrt, keep), lambda: _full_step(*args, False, sqrt, keep),
                lambda: _full_step(*args, True, sqrt, keep)]
    all_steady = jnp.all(state.steady & ~jnp.isnan(y))
    index = jnp.where(all_steady, 0, jnp.where(jnp.any(state.diffuse), 2, 1))
    return lax.switch(index, branches)


def run(lay: Layout, system: System, y: jnp.ndarray, *, sqrt: bool = False, keep: bool = False,
        state: FilterState | None = None):
    """Filter a batch over time.

    system: batched with the batch axis LEADING (as `jax.vmap(build_system)` gives it);
    y: (time, batch). Returns (final batch-last state, per-step outputs stacked over time:
    StepInfo (batch last) if keep else loglik (time, batch)).
    """
    n_time, batch = y.shape
    system = batch_last(system)
    if state is None:
        state = init(lay, system, sqrt)
    d = system.obs_intercept
    d = jnp.broadcast_to(d if d.ndim == 2 else d[None], (n_time, batch))
    time_varying = lay.time_varying_design
    if batch == 1 and not (keep or time_varying):   # batches keep the per-step steady switch
        return _run_chunked(lay, system, state, y, d, sqrt)

    def body(carry, xs):
        if time_varying:
            y_t, d_t, z_t = xs
        else:
            (y_t, d_t), z_t = xs, system.design
        return step(lay, system, carry, y_t, d_t, z_t, sqrt=sqrt, keep=keep)

    xs = (y, d, system.design) if time_varying else (y, d)
    return lax.scan(body, state, xs)


def _run_chunked(lay: Layout, system: System, state: FilterState, y, d, sqrt: bool):
    """Log-likelihood terms: a head of general steps, then equal chunks of at most CHUNK_STEPS
    steps, one branch per chunk instead of per step.

    A per-step `lax.switch` costs about as much as a whole standard update for m ≈ 13 on a CPU,
    and in reverse mode it stores every branch's residuals at every step. The head runs the
    exact-diffuse update (valid in every case) over the first steps: as many as there are
    diffuse states, where the diffuse phase ends when those observations are present, plus
    fewer than one step per chunk so that the rest splits into equal chunks. Each chunk is
    then one of: general (while any member is still diffuse, after gaps early on), steady
    (every member converged and no missing value in the chunk: the O(m) mean update), or
    standard (the plain covariance update, no branching). Each kind is exact for the steps it
    is given; general and standard chunks carry hand-written tangents (`_general_scan`,
    `_standard_scan`), and general steps are rematerialised in reverse mode so that they store
    only their inputs. Same results as stepping with `step`, up to when the steady state starts.
    """
    n_time, batch = y.shape
    rest = max(n_time - len(diffuse_states(lay)), 0)
    n_chunks = max(-(-rest // CHUNK_STEPS), 1)
    size = rest // n_chunks
    head = n_time - n_chunks * size      # the diffuse states' steps and fewer than n_chunks more
    z = system.design

    @jax.checkpoint
    def general(st, xs):   # exact in every case
        args = (lay, st, system.transition, z, system.obs_var, system.state_var, *xs)
        return _general_steps(*args, sqrt=True) if sqrt else _general_scan(*args)

    def standard(st, xs):
        # carry only what the covariance update needs; the rest of the state is set at the end
        args = (st.mean, st.cov, system.transition, z, system.obs_var, system.state_var, xs[0], xs[1])
        a, P, K, F, ll = _standard_steps(lay, *args, sqrt=True) if sqrt else _standard_scan(lay, *args)
        observed = ~jnp.isnan(xs[0])
        steady = jnp.zeros_like(st.steady)
        if not sqrt:  # converged over the whole chunk (stricter than one step's change), all observed
            change = jnp.sum((P - st.cov) ** 2, axis=(0, 1))
            steady = (jnp.all(observed, axis=0) & (F > 0)
                      & (change <= TOL_STEADY * jnp.sum(P ** 2, axis=(0, 1))))
        return st._replace(mean=a, cov=P, gain=K, innov_var=F, steady=steady, prev_observed=observed[-1]), ll

    def steady(st, xs):
        a, ll = _steady_steps(lay, st.mean, st.gain, st.innov_var, system.transition, z, xs[0], xs[1])
        return st._replace(mean=a, prev_observed=~jnp.isnan(xs[0][-1])), ll

    def chunk(st, xs):
        all_steady = jnp.all(st.steady) & ~jnp.any(jnp.isnan(xs[0]))
        index = jnp.where(jnp.any(st.diffuse), 0, jnp.where(all_steady, 1, 2))
        return lax.switch(index, [general, steady, standard], st, xs)

    st, ll_head = general(state, (y[:head], d[:head]))
    if size == 0:
        return st, ll_head
    y_c, d_c = y[head:].reshape(n_chunks, size, batch), d[head:].reshape(n_chunks, size, batch)
    final, ll = lax.scan(chunk, st, (y_c, d_c))
    return final, jnp.concatenate([ll_head, ll.reshape(n_chunks * size, batch)])


def mean_pass(lay: Layout, transition: jnp.ndarray, design: jnp.ndarray, obs_intercept: jnp.ndarray,
              gains: StepInfo, Y: jnp.ndarray) -> jnp.ndarray:
    """Log-likelihood terms of many series that share one system and one missing-data pattern.

    The covariances, gains K_t and variances F_t do not depend on the data, only on the
    parameters and on which y_t are missing; `gains` holds them for one member (from
    `run(..., keep=True)`, batch axis dropped). Each series then needs only
    a ← T(a + K_t v_t), v_t = y_t − Z a − d_t: O(m) per series and step.
    transition (m, m); design (m,); obs_intercept (time,) or (); Y (time, series).
    Returns (time, series).
    """
    n_time, n_series = Y.shape
    d = jnp.broadcast_to(obs_intercept, (n_time,))

    def body(a, xs):
        y_t, d_t, K, F, Fi, kind = xs
        v = jnp.where(jnp.isnan(y_t), 0.0, y_t) - design @ a - d_t
        v = jnp.where(kind > 0, v, 0.0)
        a_f = a + K[:, None] * v[None]
        F_safe = jnp.where(kind == 1, F, 1.0)
        llf = jnp.where(kind == 2, -0.5 * (LOG_2PI + jnp.log(jnp.where(kind == 2, Fi, 1.0))),
                        jnp.where(kind == 1, -0.5 * (LOG_2PI + jnp.log(F_safe) + v * v / F_safe), 0.0))
        return transition_apply(lay, transition, a_f), llf

    a0 = jnp.zeros((lay.n_states, n_series))
    xs = (Y, d, gains.gain, gains.innov_var, gains.diffuse_var, gains.kind)
    return lax.scan(body, a0, xs)[1]


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
    r_end, N_end = (zeros_m, zeros_mm) if after is None else after
    xs = (info.pred_mean, info.pred_cov, info.pred_diffuse, info.innovation, info.innov_var,
          info.diffuse_var, info.kind, z_all)
    _, (mean, cov) = lax.scan(back, (r_end, zeros_m, N_end, zeros_mm, zeros_mm), xs, reverse=True)
    return SmoothResult(mean, cov)
