"""The filter's steps: one observe-then-predict step per phase, the batch's dispatching `step`,
and a plain `lax.scan` of each phase's step (autodiff tangents; `tangents` has the fast ones).

Univariate updates (Durbin & Koopman 2012, §5.2 and §6.4), batch last. With M = P z,
F = zᵀ M + H, K = M / F and v = y − zᵀ a − d:

    a_{t|t} = a + K v,    P_{t|t} = P − M Mᵀ / F,    a' = T a_{t|t},    P' = T P_{t|t} Tᵀ + Q,

and while P∞ ≠ 0 Koopman's exact-diffuse update replaces the gain by K = P∞ z / F∞ wherever
F∞ = zᵀ P∞ z > TOL_DIFFUSE.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from ..system import Layout, System, transition_apply, transition_sandwich
from .augmented import augmented_step, collapse_state
from .ops import (dense_cov, mat_vec, mat_z, outer, rows_apply, safe_sqrt, symmetrize, tria_batch_last,
                  z_dot)
from .state import (LOG_2PI, TOL_DIFFUSE, TOL_STEADY, FilterState, Phase, StepInfo, StepKind, converged,
                    phase_of)


def _covariance_phase(phase: Phase) -> bool:
    """True for the diffuse phase, False for the standard one; refuses anything else (the steady
    phase has no covariance update, and a bare bool is not a phase)."""
    if not isinstance(phase, Phase) or phase is Phase.STEADY:
        raise ValueError(f"phase must be Phase.DIFFUSE or Phase.STANDARD (the covariance update), got {phase!r}; "
                         "the steady phase is `steady_step`")
    return phase is Phase.DIFFUSE


def observe(lay: Layout, a, P, Pinf, y, z, d, H, observed, phase: Phase, sqrt: bool):
    """The observation update of one step for the diffuse or standard phase, batch-last.

    a (state, batch), P (state, state, batch) dense or its Cholesky factor (`sqrt`), Pinf the
    same shape (unused, may be None, in the standard phase), y, d, H, observed (batch,),
    z (state, batch). Returns a_{t|t}, P_{t|t}, P∞_{t|t}, the log-likelihood term, v, F*, F∞,
    the `StepKind` and the gain K.
    """
    use_diffuse = _covariance_phase(phase)
    if use_diffuse:
        # the diffuse tests (F∞ > tol) decide at roundoff level in models whose components
        # overlap (e.g. a dummy seasonal with a trig one of a dividing period): sum over every
        # state in order, as statsmodels does, so that the decisions agree with it
        lay = lay._replace(observed_states=())
    y0 = jnp.where(observed, y, 0.0)       # keep NaN out of the arithmetic (and of gradients)
    v = y0 - z_dot(lay, a, z) - d
    if sqrt:
        w = jnp.sum(P * z[:, None], axis=0)          # Lᵀ z  (m, B)
        Ms, Fs = mat_vec(P, w), jnp.sum(w * w, axis=0) + H
    else:
        Ms = mat_z(lay, P, z)
        Fs = z_dot(lay, Ms, z) + H
    if use_diffuse:
        Mi = mat_vec(Pinf, z)
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
        A = jnp.concatenate([P - outer(K, w), (K * safe_sqrt(H))[:, None]], axis=1)
        P_f = tria_batch_last(A)
    else:
        P_f = symmetrize(P - outer(K, Ms) - outer(Ms, K) + Fs * outer(K, K))
    Pinf_f = symmetrize(Pinf - jnp.where(is_d, outer(Mi, Mi) / Fi_safe, 0.0)) if use_diffuse else Pinf
    llf = jnp.where(is_d, -0.5 * (LOG_2PI + jnp.log(Fi_safe)),
                    jnp.where(is_s, -0.5 * (LOG_2PI + jnp.log(Fs_safe) + v * v / Fs_safe), 0.0))
    kind = jnp.where(is_d, StepKind.DIFFUSE, jnp.where(is_s, StepKind.STANDARD, StepKind.NONE))
    return a_f, P_f, Pinf_f, llf, v, Fs, Fi, kind, K


def predict(lay: Layout, T, q, a_f, P_f, Pinf_f, phase: Phase, sqrt: bool):
    """a' = T a_{t|t}, P' = T P_{t|t} Tᵀ + diag(q) (by `tria` of [T L, √q] in sqrt mode) and, in the
    diffuse phase, P∞' = T P∞_{t|t} Tᵀ (passed through otherwise)."""
    use_diffuse = _covariance_phase(phase)
    a = transition_apply(lay, T, a_f)
    if sqrt:
        m = q.shape[0]
        Q_half = jnp.eye(m)[:, :, None] * safe_sqrt(q)[None]
        P = tria_batch_last(jnp.concatenate([transition_apply(lay, T, P_f), Q_half], axis=1))
    else:
        P = transition_sandwich(lay, T, P_f) + jnp.eye(q.shape[0])[:, :, None] * q[None]
    Pinf = transition_sandwich(lay, T, Pinf_f) if use_diffuse else Pinf_f
    return a, P, Pinf


def full_step(lay: Layout, system: System, state: FilterState, y, d, z, phase: Phase, sqrt: bool,
              keep: bool):
    """Observe and predict with the covariance update of the diffuse or standard `phase`; see `step`.

    The diffuse phase's update is exact for every member (it reduces to the standard one where
    P∞ = 0); the standard one assumes no member is diffuse. Returns (next state, StepInfo if
    keep else loglik (batch,)).
    """
    use_diffuse = _covariance_phase(phase)
    observed = ~jnp.isnan(y)
    a, P, Pinf = state.mean, state.cov, state.diffuse_cov
    if use_diffuse:   # once a member's P∞ has vanished, its roundoff must not grow into new diffuse steps
        Pinf = jnp.where(jnp.sum(Pinf ** 2, axis=(0, 1)) > TOL_DIFFUSE, Pinf, 0.0)
    a_f, P_f, Pinf_f, llf, v, Fs, Fi, kind, K = observe(lay, a, P, Pinf, y, z, d, system.obs_var, observed,
                                                       phase, sqrt)
    a_n, P_n, Pinf_n = predict(lay, system.transition, system.state_var, a_f, P_f, Pinf_f, phase, sqrt)
    if use_diffuse:
        diffuse_n = jnp.sum(Pinf_n ** 2, axis=(0, 1)) > TOL_DIFFUSE
    else:
        diffuse_n = jnp.zeros_like(observed)
    if sqrt or lay.time_varying_design:
        steady_n = jnp.zeros_like(observed)
    else:
        steady_n = (~diffuse_n & (kind == StepKind.STANDARD) & state.prev_observed & observed
                    & converged(P_n, P))
    new = FilterState(a_n, P_n, Pinf_n, diffuse_n, steady_n, K, Fs, observed, state.augmented)
    info = StepInfo(llf, v, Fs, Fi, kind, a, dense_cov(P, sqrt), Pinf, a_f, dense_cov(P_f, sqrt), K) if keep else llf
    return new, info


def diffuse_step(lay: Layout, system: System, state: FilterState, y, d, z, sqrt: bool, keep: bool):
    """One step of the exact diffuse phase: Koopman's update (`full_step` in `Phase.DIFFUSE`) for
    the step's outputs, the augmented filter beside it, and the collapse to a proper belief once
    the diffuse directions are identified (`kalman.augmented`), whose log-likelihood correction
    joins that step's term. Same returns as `full_step`; the state's `diffuse` flag is the phase's
    (true until the collapse)."""
    new, info = full_step(lay, system, state, y, d, z, Phase.DIFFUSE, sqrt, keep)
    if state.augmented is None:   # Koopman's recursion is exact here (`run`'s `augmented`)
        return new, info
    llf = info.loglik if keep else info
    aug = augmented_step(lay, system.transition, system.state_var, system.obs_var, state.augmented, y, d, z, llf,
                         sqrt)
    new, correction = collapse_state(new._replace(augmented=aug), state.diffuse, sqrt)
    new = new._replace(steady=new.steady & ~state.diffuse)
    llf = llf + correction
    return new, (info._replace(loglik=llf) if keep else llf)


def _steady_update(lay: Layout, T, z, K, F, a, y, d):
    """The steady-state step a' = T(a + K v) with its a_f, v and log-likelihood term (y observed)."""
    v = jnp.where(jnp.isnan(y), 0.0, y) - z_dot(lay, a, z) - d
    a_f = a + K * v
    return transition_apply(lay, T, a_f), a_f, v, -0.5 * (LOG_2PI + jnp.log(F) + v * v / F)


def steady_step(lay: Layout, system: System, state: FilterState, y, d, z, sqrt: bool, keep: bool):
    """Observe and predict at the converged covariance: only the mean moves, a ← T(a + K v), O(m).

    For a batch whose members are all steady and all observe y_t (`Phase.STEADY`). Returns
    (next state, StepInfo if keep else loglik (batch,)).
    """
    observed = ~jnp.isnan(y)
    K, F = state.gain, state.innov_var
    a_n, a_f, v, llf = _steady_update(lay, system.transition, z, K, F, state.mean, y, d)
    new = state._replace(mean=a_n, prev_observed=observed)
    if not keep:
        return new, llf
    P = dense_cov(state.cov, sqrt)
    info = StepInfo(llf, v, F, jnp.zeros_like(llf), jnp.ones_like(llf, dtype=int), state.mean, P,
                    state.diffuse_cov, a_f, P - F * outer(K, K), K)
    return new, info


def scalar_observe(y, F, z_a, d):
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


def standard_step_fused(lay: Layout, system: System, st: FilterState, y, d, z, test_steady: bool = True):
    """`step` for a batch with no diffuse member and a dense P, in fusable form: (next state,
    loglik, innovation v), each (batch,) but the state.

    Same arithmetic as `full_step` in the standard phase (observe, then predict
    T P_{t|t} Tᵀ + Q, and the same steady test unless `test_steady` is False), up to roundoff,
    in a few large elementwise fusions instead of one small kernel per matrix operation:
    about half the time of `full_step` at 6 states and 256 series. The fleet's filter uses it:
    under its forward tangents this dense form is about twice as fast as `standard_step_packed`
    (fit_many 85–114 against 47–63 series/s), which is the faster one for values alone.
    """
    T = system.transition
    M = mat_z(lay, st.cov, z)                        # P z (state, batch)
    F = z_dot(lay, M, z) + system.obs_var
    observed, updated, inv_F, v, loglik = scalar_observe(y, F, z_dot(lay, st.mean, z), d)
    K = M * inv_F
    a_next = jnp.stack(rows_apply(lay, T, list(st.mean + K * v)))
    # P_{t+1} = T P_{t|t} Tᵀ + diag(q) by rows (see `rows_apply`)
    P_f = st.cov - (M[:, None] * M[None]) * inv_F            # P − M Mᵀ/F, exactly symmetric
    TP = jnp.stack(rows_apply(lay, T, list(P_f)))
    P_next = (jnp.stack(rows_apply(lay, T, list(jnp.swapaxes(TP, 0, 1))))
              + jnp.eye(lay.n_states)[:, :, None] * system.state_var[None])
    steady = jnp.zeros_like(observed)
    if test_steady and not lay.time_varying_design:   # `converged`, as dot products: one kernel each
        diff, P_flat = jnp.reshape(P_next - st.cov, (-1, y.shape[0])), jnp.reshape(P_next, (-1, y.shape[0]))
        change, size = jnp.einsum("ks,ks->s", diff, diff), jnp.einsum("ks,ks->s", P_flat, P_flat)
        steady = updated & st.prev_observed & (change <= TOL_STEADY * size)
    return (FilterState(a_next, P_next, st.diffuse_cov, jnp.zeros_like(observed), steady, K, F, observed, st.augmented),
            loglik, v)


def step(lay: Layout, system: System, state: FilterState, y, d, z, *, sqrt: bool = False,
         keep: bool = False):
    """One time step for the whole batch: observe y_t, then predict t+1, in the batch's phase.

    system: batch-last; y, d: (batch,); z: (state, batch). One `lax.switch` on `phase_of`
    picks `diffuse_step`, `full_step` (standard) or `steady_step`. Returns (new state, StepInfo if
    keep else loglik (batch,)).
    """
    args = (lay, system, state, y, d, z)
    branch = {Phase.DIFFUSE: lambda: diffuse_step(*args, sqrt, keep),
              Phase.STANDARD: lambda: full_step(*args, Phase.STANDARD, sqrt, keep),
              Phase.STEADY: lambda: steady_step(*args, sqrt, keep)}
    return lax.switch(phase_of(state, y), [branch[p] for p in Phase])


def settled_step(lay: Layout, system: System, state: FilterState, y, d, z, *, sqrt: bool = False,
                 keep: bool = False):
    """`step` for a batch with no diffuse member: `full_step` in the standard phase or
    `steady_step`, by one `lax.cond`. It reads no augmented filter (the state's may be None)."""
    args = (lay, system, state, y, d, z)
    return lax.cond(phase_of(state, y) == Phase.STEADY, lambda: steady_step(*args, sqrt, keep),
                    lambda: full_step(*args, Phase.STANDARD, sqrt, keep))


# -- one phase over many steps: plain scans (autodiff tangents) ----------------------------------
def diffuse_scan(lay: Layout, state: FilterState, T, z, H, q, y, d, sqrt: bool = False):
    """Exact-diffuse steps (`full_step` in `Phase.DIFFUSE`, valid in every case) over y, d
    (time, batch): the state after them and the log-likelihood terms (time, batch)."""
    system = System(T, z, d, H, q, None, None, None)

    def body(c, x):   # Koopman's steps only: `run_chunked` adds the augmented filter and the collapse
        return full_step(lay, system, c, *x, z, Phase.DIFFUSE, sqrt, False)
    return lax.scan(body, state, (y, d))


def standard_scan(lay: Layout, a, P, T, z, H, q, y, d, sqrt: bool = False):
    """Standard (non-diffuse) steps over y, d (time, batch) from (a, P): the state after them,
    the last step's K and F, and the log-likelihood terms (time, batch). Carries only what the
    covariance update needs (no P∞, no flags)."""
    def body(c, x):
        a, P, _, _ = c
        y_t, d_t = x
        a_f, P_f, _, llf, _, Fs, _, _, K = observe(lay, a, P, None, y_t, z, d_t, H, ~jnp.isnan(y_t),
                                                  Phase.STANDARD, sqrt)
        a_n, P_n, _ = predict(lay, T, q, a_f, P_f, None, Phase.STANDARD, sqrt)
        return (a_n, P_n, K, Fs), llf
    (a, P, K, F), ll = lax.scan(body, (a, P, jnp.zeros_like(a), jnp.ones_like(H)), (y, d))
    return a, P, K, F, ll


def steady_scan(lay: Layout, a, K, F, T, z, y, d):
    """Steady steps over y, d (time, batch) at a converged (K, F): the final mean and the
    log-likelihood terms. Only the mean is carried, so reverse mode carries nothing m×m."""
    def body(a, x):
        a_n, _, _, llf = _steady_update(lay, T, z, K, F, a, *x)
        return a_n, llf
    return lax.scan(body, a, (y, d))
