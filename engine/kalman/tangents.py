"""Hand-written tangent rules of the filter's scans (`jax.custom_jvp`; their transposes are
the reverse mode).

Plain autodiff of a filter step differentiates every operation of the symmetrised update and of
the masks and branches around it, and reverse mode stores all of their residuals at every step.
The rules here run the filter once, pack what the tangent reads into one array per step, and
run the tangent as a second, linear scan over those arrays (`_tangent_scan`), so reverse mode
stores a few vectors per step and transposes only that scan. (`ops.tria` carries the sqrt
form's own rule, next to the function it differentiates.)
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from ..system import Layout, System, transition_apply, transition_sandwich
from .ops import mat_z, outer, symmetrize, z_dot
from .state import FilterState, Phase, StepKind
from .steps import diffuse_scan, full_step, observe, predict, standard_scan


@partial(jax.custom_jvp, nondiff_argnums=(0,))
def standard_scan_custom_jvp(lay: Layout, a, P, T, z, H, q, y, d):
    """`standard_scan` (dense covariance) with a hand-written tangent, whose transpose is its
    reverse mode.

    The tangent below uses P_f = P − M Mᵀ/F (the same function, M = P z, F = zᵀ M + H,
    K = M/F; w = 1/F on standard steps, 0 on skipped ones):
        dM = dP z,  dF = zᵀ dM + dH,  dv = −zᵀ da − dd,  dK = (dM − K dF) w,
        da_f = da + dK v + K dv,  dP_f = dP − K (dM − ½ dF K)ᵀ − (dM − ½ dF K) Kᵀ,
        dℓ = −½ dF (w − v² w²) − v w dv,
        da' = T da_f + dT a_f,  dP' = T dP_f Tᵀ + (dT P_f Tᵀ + its transpose) + diag(dq).
    A first scan runs the filter and packs what the tangent reads into one array per step
    (K, v, w; a_f and P_f only when T has a tangent); a second, linear scan runs the tangent, so
    reverse mode stores those vectors and transposes only the second scan. Inputs without a
    tangent (`symbolic_zeros`) add no terms.
    """
    return standard_scan(lay, a, P, T, z, H, q, y, d)


def _transition_tangent(lay: Layout, T, dT, X):
    """dT X as `transition_apply` sees it: zero in blocks whose action does not read T (dummy)."""
    return jax.jvp(lambda T_: transition_apply(lay, T_, X), (T,), (dT,))[1]


def _residual_rows(K, v, kind, Fs, llf, a_f, P_f, with_transition: bool):
    """What the tangent scan reads of one step, packed into one (rows, batch) array: K, v,
    w = 1/F on standard steps (0 otherwise), the step's update flag, its log-likelihood term
    (the primal output), and a_f, P_f when T has a tangent."""
    m = K.shape[0]
    s = kind == StepKind.STANDARD
    w = jnp.where(s, 1.0 / jnp.where(s, Fs, 1.0), 0.0)
    rows = [K, v[None], w[None], (kind > StepKind.NONE).astype(K.dtype)[None], llf[None]]
    if with_transition:
        rows += [a_f, P_f.reshape(m * m, -1)]
    return jnp.concatenate(rows, axis=0)


def _tangent_scan(lay: Layout, T, z, dT, dH, dq, da, dP, dK, dF, packed, dd):
    """The linear scan of the filter's tangent (see `standard_scan_custom_jvp`) over the rows
    packed by `_residual_rows`: (da, dP, dK, dF) after the last step and dℓ (time, batch).

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
        dM = mat_z(lay, dP, z)
        dF = z_dot(lay, dM, z)
        if dH is not None:
            dF = dF + dH
        dv = -z_dot(lay, da, z)
        if dd_t is not None:
            dv = dv - dd_t
        dv = jnp.where(on > 0, dv, 0.0)
        dK = (dM - K * dF) * w
        da_f = da + dK * v + K * dv
        G = dM - 0.5 * dF * K
        dP_f = dP - outer(K, G) - outer(G, K)
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

    return lax.scan(tangent, (da, symmetrize(dP), dK, dF), (K_all, v_all, w_all, on_all, dd, extra))


def _tangent_or_zero(t, like):
    return jnp.zeros_like(like) if t is None else t


def _standard_scan_rule(lay: Layout, primals, tangents):
    a, P, T, z, H, q, y, d = primals
    da, dP, dT, dz, dH, dq, dy, dd = (None if type(t) is SymbolicZero else t for t in tangents)
    if dz is not None or dy is not None:   # not met by the models (fixed design, data as given)
        return _plain_jvp(partial(standard_scan, lay), primals, tangents)

    def body(c, x):
        a, P, _, _ = c
        y_t, d_t = x
        a_f, P_f, _, llf, v, Fs, _, kind, K = observe(lay, a, P, None, y_t, z, d_t, H, ~jnp.isnan(y_t),
                                                     Phase.STANDARD, False)
        a_n, P_n, _ = predict(lay, T, q, a_f, P_f, None, Phase.STANDARD, False)
        return (a_n, P_n, K, Fs), _residual_rows(K, v, kind, Fs, llf, a_f, P_f, dT is not None)

    (a_n, P_n, K_n, F_n), packed = lax.scan(body, (a, P, jnp.zeros_like(a), jnp.ones_like(H)), (y, d))
    (da_n, dP_n, dK_n, dF_n), dll = _tangent_scan(lay, T, z, dT, dH, dq, _tangent_or_zero(da, a),
                                                  _tangent_or_zero(dP, P), jnp.zeros_like(a), jnp.zeros_like(H),
                                                  packed, dd)
    return (a_n, P_n, K_n, F_n, packed[:, a.shape[0] + 3]), (da_n, dP_n, dK_n, dF_n, dll)


standard_scan_custom_jvp.defjvp(_standard_scan_rule, symbolic_zeros=True)


@partial(jax.custom_jvp, nondiff_argnums=(0,))
def diffuse_scan_custom_jvp(lay: Layout, state: FilterState, T, z, H, q, y, d):
    """`diffuse_scan` with the standard steps' hand-written tangent (`_tangent_scan`) where P∞
    has none (T has no tangent), which is every model's case but those with a cycle or AR
    block; plain autodiff otherwise. The diffuse head of every likelihood runs here, and plain
    autodiff of its masks and branches cost about three standard tangents per step."""
    return diffuse_scan(lay, state, T, z, H, q, y, d)


def _diffuse_scan_rule(lay: Layout, primals, tangents):
    state, T, z, H, q, y, d = primals
    dstate, dT, dz, dH, dq, dy, dd = tangents
    symbolic = lambda t: type(t) is SymbolicZero
    dT, dH, dq, dd = (None if symbolic(t) else t for t in (dT, dH, dq, dd))
    if dT is not None or not (symbolic(dz) and symbolic(dy) and symbolic(dstate.diffuse_cov)):
        return _diffuse_scan_autodiff(lay, primals, tangents)
    system = System(T, z, d, H, q, None, None, None)

    def body(c, x):
        new, info = full_step(lay, system, c, *x, z, Phase.DIFFUSE, False, True)
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
    # the augmented filter's carry passes through Koopman's steps unchanged (`run_chunked` runs it beside them)
    d_aug = jax.tree.map(lambda p, t: (jnp.zeros(p.shape, jax.dtypes.float0) if p.dtype == bool
                                       else jnp.zeros_like(p)) if symbolic(t) else t, state.augmented, dstate.augmented)
    dfinal = FilterState(da_n, dP_n, no_tangent, flag(final.diffuse), flag(final.steady), dK_n, dF_n,
                         flag(final.prev_observed), d_aug)
    return (final, packed[:, m + 3]), (dfinal, dll)


diffuse_scan_custom_jvp.defjvp(_diffuse_scan_rule, symbolic_zeros=True)


def _diffuse_scan_autodiff(lay: Layout, primals, tangents):
    """Plain autodiff of `diffuse_scan`, where P∞ may have a tangent (cycle and AR models)."""
    return _plain_jvp(partial(diffuse_scan, lay), primals, tangents)


def _plain_jvp(fn, primals, tangents):
    """`jax.jvp` of fn, the custom rules' fallback: symbolic-zero tangents made concrete
    (float0 for boolean primals)."""
    dense = jax.tree.map(lambda p, t: (jnp.zeros(p.shape, jax.dtypes.float0) if p.dtype == bool
                                       else jnp.zeros_like(p)) if type(t) is SymbolicZero else t, primals, tangents)
    return jax.jvp(fn, primals, dense)
