"""Batched Fisher scoring with Levenberg–Marquardt damping: a pure init/step pair per batch.

MLE and MAP fits minimise, per member, f(z) = −(log-likelihood + log prior)/time over the
unconstrained parameters z (`coordinates`). The gradient and the expected information of the
Gaussian likelihood,

    I_ij = Σ_t ∂_i v_t ∂_j v_t / F_t + ½ ∂_i F_t ∂_j F_t / F_t²     (Harvey 1989, §3.4.5),

come from one forward-mode pass with one tangent per parameter (v_t the innovation, F_t its
variance), so an iteration costs about k + 1 filter passes and stores no filter history.
Near a MAP the expected information misses part of the curvature and scoring converges only
linearly; a structured secant correction (`_secant_update`) is added to the model whenever it
predicted the last step's decrease better (NL2SOL's switch), which cuts the iterations.
Log variances are stepped in σ² itself (σ² ← σ²(1 + Δz)), where scoring is exact for white
noise; a linear step in log σ² shrinks a variance by at most a factor e per iteration. A
member stops once its Newton decrement ½ gᵀH⁻¹g (the model's f − min f) is below
DECREMENT_TOL·|f|, after one last step: f is then exact to about that, its parameters to
about the square root where the likelihood is flat.

`scoring_init` picks each member's best start and scores it; `scoring_step` is one damped
step of every running member over a `ScoringState`; `optimise` loops them (jitted).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .coordinates import log_prior, log_variance_masks, to_params
from .filtering import batch_innovations

MAX_ITER = 200           # scoring iterations per series (each one filter pass with k tangents)
GTOL = 1e-9              # converged: max |∂f/∂z| of the per-observation objective below this
FTOL = 1e-12             # ... or an undamped accepted step lowered it by less than this (relative)
GTOL_STUCK = 1e-5        # no step lowers f any more (roundoff): converged if max |∂f/∂z| is below this
DECREMENT_TOL = 1e-10    # ... or if the model's full step would lower f by at most this (relative)
MAX_STEP = 5.0           # largest change of any unconstrained coordinate in one step


class Score(NamedTuple):
    """The minimised objective f = −(log-likelihood + log prior)/time, per member, with derivatives."""

    value: jnp.ndarray   # (series,)
    grad: jnp.ndarray    # (series, k)
    info: jnp.ndarray    # (series, k, k) expected information (+ the prior's exact Hessian), per time step


def objective_value(spec, co, Z, A, Y, X):
    """f (series,) at Z (series, k), without derivatives."""
    P = jax.vmap(partial(to_params, spec, co))(Z, A)
    llf = batch_innovations(spec, P, Y, X)[0]
    lp = jax.vmap(partial(log_prior, spec, co))(Z, A)
    return -(jnp.sum(llf, axis=0) + lp) / Y.shape[1]


def score(spec, co, Z, A, Y, X) -> Score:
    """f, ∂f/∂z and the scoring matrix from one forward pass with one tangent per coordinate."""
    n_time = Y.shape[1]
    k = Z.shape[1]

    def outputs(Z):
        P = jax.vmap(partial(to_params, spec, co))(Z, A)
        return batch_innovations(spec, P, Y, X)[:4]

    def along(j):
        return jax.jvp(outputs, (Z,), (jnp.zeros_like(Z).at[:, j].set(1.0),))

    (llf, _, F, kind), (dllf, dv, dF, _) = jax.vmap(along)(jnp.arange(k))
    llf, F, kind = llf[0], F[0], kind[0]                           # (time, series)
    standard = kind == 1.0
    Fs = jnp.where(standard, F, 1.0)
    wv = jnp.where(standard, 1.0 / Fs, 0.0)
    wF = jnp.where(standard, 0.5 / Fs ** 2, 0.0)
    # sums over time as plain reductions (not dot products, whose blocking depends on the batch
    # size): each member's numbers are the same whatever batch it is in
    info = jnp.sum(dv[:, None] * dv[None, :] * wv + dF[:, None] * dF[None, :] * wF, axis=2)
    info = jnp.moveaxis(info, -1, 0)                                 # (series, k, k)
    ll_grad = jnp.sum(dllf, axis=1).T                                # (series, k) ∂ℓ/∂z
    lp_one = partial(log_prior, spec, co)
    lp, lp_grad = jax.vmap(jax.value_and_grad(lp_one))(Z, A)
    lp_hess = jax.vmap(jax.hessian(lp_one))(Z, A)
    value = -(jnp.sum(llf, axis=0) + lp) / n_time
    grad = -(ll_grad + lp_grad) / n_time
    return Score(value, grad, (info - _transform_curvature(spec, co, Z, A, ll_grad) - lp_hess) / n_time)


def _transform_curvature(spec, co, Z, A, ll_grad):
    """Σ_i ∂ℓ/∂θ_i ∇²_z θ_i (series, k, k): the part of ∇²_z ℓ that the information (a curvature
    in θ) misses. It vanishes at an interior MLE but not at a MAP, where the likelihood's slope
    balances the prior's; there it is most of the curvature of a weakly identified variance.

    Log variances are left out: `scoring_step` steps them in σ² itself, where the information is
    the likelihood's own curvature model."""
    to_params_one = partial(to_params, spec, co)
    curved = jnp.asarray(~log_variance_masks(spec, co)[1])

    def one(z, a, g):
        J = jax.jacfwd(to_params_one)(z, a)                               # (k, k) ∂θ/∂z
        slope = jnp.where(curved, jnp.linalg.lstsq(J.T, g)[0], 0.0)   # ∂ℓ/∂θ
        C = jax.hessian(lambda z: jnp.dot(lax.stop_gradient(slope), to_params_one(z, a)))(z)
        w, V = jnp.linalg.eigh(0.5 * (C + C.T))
        return (V * jnp.minimum(w, 0.0)) @ V.T     # keep the model convex: only −C's positive part
    return jax.vmap(one)(Z, A, ll_grad)


class ScoringState(NamedTuple):
    """What the next scoring step needs, per member (series leading, so rows can be gathered)."""

    z: jnp.ndarray               # (series, k) the current point
    score: Score                 # f, its gradient and the scoring matrix at z
    secant: jnp.ndarray          # (series, k, k) structured secant correction of the scoring matrix
    use_secant: jnp.ndarray      # (series,) bool: the next step's model adds `secant`
    damping: jnp.ndarray         # (series,) Levenberg–Marquardt λ (relative to the mean diagonal)
    damping_growth: jnp.ndarray  # (series,) ν: λ's factor after the next rejected step (Nielsen)
    done: jnp.ndarray            # (series,) bool: stopped (converged or stuck), frozen from now on
    converged: jnp.ndarray       # (series,) bool
    n_iterations: jnp.ndarray    # (series,) int32 steps this member took
    iteration: jnp.ndarray       # (series,) int32 steps of the loop (the same in every row)


class Optimum(NamedTuple):
    z: jnp.ndarray           # (series, k)
    value: jnp.ndarray       # (series,) f at z
    grad: jnp.ndarray        # (series, k)
    converged: jnp.ndarray   # (series,) bool
    iterations: jnp.ndarray  # (series,) int


def scoring_init(spec, co, Z0, A, Y, X) -> ScoringState:
    """Per member, the best start of Z0 (start, series, k) by f, and its score."""
    values = lax.map(lambda z: objective_value(spec, co, z, A, Y, X), Z0)        # (start, series)
    values = jnp.where(jnp.isfinite(values), values, jnp.inf)
    best = jnp.argmin(values, axis=0)
    z = jnp.take_along_axis(Z0, best[None, :, None], axis=0)[0]
    s0 = score(spec, co, z, A, Y, X)
    n, k = z.shape
    return ScoringState(z, s0, jnp.zeros((n, k, k)), jnp.zeros(n, bool), jnp.full(n, 1e-3), jnp.full(n, 2.0),
                        jnp.zeros(n, bool), jnp.zeros(n, bool), jnp.zeros(n, jnp.int32), jnp.zeros(n, jnp.int32))


def scoring_step(spec, co, state: ScoringState, A, Y, X) -> ScoringState:
    """One damped scoring step of every running member; a stopped member's state is kept.

    Each member's path depends on its own data only (every sum is per member)."""
    z, sc, lam, done = state.z, state.score, state.damping, state.done
    k = z.shape[1]
    eye = jnp.eye(k)
    log_variance = jnp.asarray(log_variance_masks(spec, co)[0])
    H = sc.info + jnp.where(state.use_secant[:, None, None], state.secant, 0.0)
    scale = jnp.maximum(jnp.trace(sc.info, axis1=1, axis2=2) / k, 1e-12)
    # the Newton decrement ½ gᵀH⁻¹g, the model's estimate of f − min f: once it is at the
    # roundoff level of f, no step can be told from noise (and rejected steps would only
    # raise the damping until `stuck`)
    newton = jnp.linalg.solve(H, sc.grad[..., None])[..., 0]
    decrement = 0.5 * jnp.sum(sc.grad * newton, axis=1)
    grad_small = jnp.max(jnp.abs(sc.grad), axis=1) <= GTOL_STUCK
    flat = (decrement >= 0) & (decrement <= DECREMENT_TOL * jnp.maximum(1.0, jnp.abs(sc.value))) & grad_small
    step = -jnp.linalg.solve(H + (lam * scale)[:, None, None] * eye, sc.grad[..., None])[..., 0]
    # along a log variance, take the step in the variance itself: σ² ← σ²(1 + Δz) (floored),
    # i.e. Δz → log(1 + Δz). Scoring in σ² is exact for white noise (σ² ← mean square) where
    # its linearisation in log σ² shrinks a variance by at most a factor e per iteration
    step = jnp.where(log_variance, jnp.log(jnp.maximum(1.0 + step, jnp.exp(-MAX_STEP))), step)
    biggest = jnp.max(jnp.abs(step), axis=1)
    step = step * jnp.minimum(1.0, MAX_STEP / jnp.where(biggest > 0, biggest, 1.0))[:, None]
    step = jnp.where(jnp.isfinite(step), step, 0.0)
    quad = lambda M: jnp.sum(step[:, :, None] * M * step[:, None, :], axis=(1, 2))
    linear = jnp.sum(sc.grad * step, axis=1)
    predicted = -(linear + 0.5 * quad(H))
    # for the next step, the model (scoring alone, or with the secant correction) whose
    # prediction of this step's decrease was the closer one (as NL2SOL switches models)
    predicted_scoring = -(linear + 0.5 * quad(sc.info))
    predicted_secant = -(linear + 0.5 * quad(sc.info + state.secant))
    trial = score(spec, co, z + step, A, Y, X)
    ok = jnp.isfinite(trial.value) & jnp.all(jnp.isfinite(trial.grad), axis=1) \
        & jnp.all(jnp.isfinite(trial.info), axis=(1, 2))
    drop = sc.value - trial.value
    rho = drop / jnp.where(predicted > 0, predicted, 1.0)
    # a flat member stops after this step, kept if it lowered f at all (a last Newton step)
    accept = ~done & ok & (drop > 0) & ((rho > 1e-4) | flat)
    small_g = jnp.max(jnp.abs(jnp.where(accept[:, None], trial.grad, sc.grad)), axis=1) <= GTOL
    small_f = accept & (drop <= FTOL * jnp.maximum(1.0, jnp.abs(sc.value))) & (lam <= 1e-3)
    stuck = ~accept & (lam > 1e10)
    conv = ~done & (flat | small_g | small_f | stuck & grad_small)
    pick = lambda new, old: jnp.where(accept.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
    # Nielsen's update of the damping from the ratio of actual to predicted decrease
    lam_new = jnp.where(accept, lam * jnp.maximum(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3), lam * state.damping_growth)
    lam_new = jnp.maximum(lam_new, 1e-12)
    nu_new = jnp.where(accept, 2.0, state.damping_growth * 2.0)
    secant = jnp.where(accept[:, None, None], _secant_update(state.secant, step, trial.grad - sc.grad, trial.info),
                       state.secant)
    use_secant = jnp.abs(drop - predicted_secant) < jnp.abs(drop - predicted_scoring)
    use_secant = jnp.where(ok & ~done, use_secant, state.use_secant)
    return ScoringState(z=pick(z + step, z), score=jax.tree_util.tree_map(pick, trial, sc), secant=secant,
                        use_secant=use_secant, damping=jnp.where(done, lam, lam_new),
                        damping_growth=jnp.where(done, state.damping_growth, nu_new),
                        done=done | conv | ~done & stuck, converged=state.converged | conv,
                        n_iterations=state.n_iterations + (~done).astype(jnp.int32), iteration=state.iteration + 1)


@partial(jax.jit, static_argnames=("spec", "co", "maxiter"))
def optimise(spec, co, Z0, A, Y, X, maxiter: int) -> Optimum:
    """Per member: pick the best start in Z0 (start, series, k), then damped Fisher scoring.

    Each member's path depends on its own data only; a member stops when converged (its
    state is then frozen), the loop when all have stopped or after `maxiter` iterations.
    Once at most a quarter of the members are still going, they move to a batch a quarter
    the size (`_shrinking_loop`), so the slowest few do not keep the whole batch iterating.
    """
    state = scoring_init(spec, co, Z0, A, Y, X)

    def running_over(limit):
        return lambda s: (s.iteration[0] < maxiter) & (jnp.sum(~s.done) > limit)

    out = _shrinking_loop(partial(scoring_step, spec, co), running_over, state, A, Y, X, state.z.shape[0])
    return Optimum(out.z, out.score.value, out.score.grad, out.converged, out.n_iterations)


def _shrinking_loop(step, running_over, state: ScoringState, A, Y, X, n: int) -> ScoringState:
    """Run `step(state, A, Y, X)` while more than n//4 members run, then the running ones in a
    batch of n//4 (recursively, down to 8): rows are gathered and scattered back, and each
    member's numbers are unchanged (its arithmetic is its own)."""
    small = n // 4
    if small < 8:
        return lax.while_loop(running_over(0), lambda s: step(s, A, Y, X), state)
    state = lax.while_loop(running_over(small), lambda s: step(s, A, Y, X), state)
    rows = jnp.argsort(state.done, stable=True)[:small]          # the running ones first
    sub = jax.tree_util.tree_map(lambda x: x[rows], state)
    X_sub = X[rows] if X is not None and X.ndim == 3 else X
    sub = _shrinking_loop(step, running_over, sub, A[rows], Y[rows], X_sub, small)
    return jax.tree_util.tree_map(lambda full, part: full.at[rows].set(part), state, sub)


def _secant_update(S, s, y, info_new):
    """Structured secant update (Dennis, Gay & Welsch 1981) of the correction S (series, k, k).

    The Hessian model is the scoring matrix plus S; the expected information misses the terms
    of the observed one that vanish only in expectation (at a MAP, or a misspecified model),
    which leaves scoring linearly convergent. After a step s with gradient change y, the
    symmetric (Powell) rank-two change makes the model exact along s: (info_new + S') s = y.
    """
    r = y - jnp.sum((info_new + S) * s[:, None, :], axis=2)   # per member, no dot (batch-size blocking)
    ss = jnp.sum(s * s, axis=1)
    safe = jnp.where(ss > 0, ss, 1.0)
    rs = jnp.sum(r * s, axis=1)
    new = S + (r[:, :, None] * s[:, None, :] + s[:, :, None] * r[:, None, :]) / safe[:, None, None] \
        - (rs / safe ** 2)[:, None, None] * s[:, :, None] * s[:, None, :]
    keep = (ss > 0) & jnp.all(jnp.isfinite(new), axis=(1, 2))
    return jnp.where(keep[:, None, None], new, S)
