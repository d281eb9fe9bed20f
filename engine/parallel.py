"""Parallel-in-time Kalman filter and RTS smoother by associative scans (Särkkä & García-Fernández 2021).

The sequential filter has depth O(T); here the filtering and smoothing recursions are
written as associative operators over per-step elements, so `lax.associative_scan` runs
them in depth O(log T) (a GPU pays; on a CPU the sequential filter stays faster).

* Filtering element of step k (given the filtered state at k−1, y_k observed):
  p(α_k | α_{k−1}, y_k) = N(A α_{k−1} + b, C) and p(y_k | α_{k−1}) ∝ exp(ηᵀα − ½ αᵀJα),
  with S = zᵀQz + H, K = Qz/S: A = (I − K zᵀ)T, b = K(y − d), C = Q − S K Kᵀ,
  η = Tᵀz (y − d)/S, J = Tᵀz zᵀT/S. A missing y_k gives the pure prediction element
  (A = T, b = 0, C = Q, η = 0, J = 0). The first element holds the prior (A = 0).
* Smoothing element of step k: E = P_{k|k} Tᵀ P_{k+1}⁻¹, g = a_{k|k} − E T a_{k|k},
  L = P_{k|k} − E T P_{k|k} (the last: E = 0, g = a_{n|n}, L = P_{n|n}), scanned in reverse.

Exact diffuse phase. The elements need a proper Gaussian prior, so the first
`prefix_length` steps (twice the number of diffuse states plus PREFIX_SLACK, at most T)
run through the sequential exact-diffuse filter (`kalman.run`); each diffuse update
removes one rank of P∞, so this covers the diffuse phase with up to d + PREFIX_SLACK
missing or uninformative observations inside it. The scan starts from the prefix's
predicted state, which is then proper. If it is not (a longer diffuse phase, e.g. a
regressor that is zero for a long stretch), or an observed step has S = 0 (no noise on
what is observed, which the elements cannot represent), the rest runs sequentially
instead (`lax.cond`): the result is always the exact-diffuse one. The per-step
log-likelihood terms come from the predictive moments of the scanned filtered states,
vectorised over time with the sequential filter's own update (same zeros at missing steps).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from . import kalman
from .system import Layout, System, diffuse_states

__all__ = [
    "CROSSOVER_STEPS", "AUTO_MAX_BYTES", "ACCELERATORS", "FilterElement", "SmoothElement", "prefix_length",
    "use_parallel", "filter_elements", "combine_filter", "run", "smooth_elements", "combine_smooth", "smooth",
]


PREFIX_SLACK = 8          # extra sequential steps beyond 2·(diffuse states) before the scan
CROSSOVER_STEPS = 2048    # "auto" uses the scan from this length on, on an accelerator
AUTO_MAX_BYTES = 2 ** 31  # ... and only while the scan's elements fit this budget
ACCELERATORS = ("gpu", "cuda", "rocm", "tpu")


class FilterElement(NamedTuple):
    """Associative filtering element(s); leading axes are time (and batch)."""

    A: jnp.ndarray    # (..., state, state)
    b: jnp.ndarray    # (..., state)
    C: jnp.ndarray    # (..., state, state)
    eta: jnp.ndarray  # (..., state)
    J: jnp.ndarray    # (..., state, state)


class SmoothElement(NamedTuple):
    """Associative smoothing element(s): α̂_k = E α̂_{k+1} + g, V_k = E V_{k+1} Eᵀ + L."""

    E: jnp.ndarray    # (..., state, state)
    g: jnp.ndarray    # (..., state)
    L: jnp.ndarray    # (..., state, state)


def _mT(x):
    return jnp.swapaxes(x, -1, -2)


def _sym(P):
    return 0.5 * (P + _mT(P))


def _mv(M, x):
    return jnp.einsum("...ij,...j->...i", M, x)


# -- when to use it --------------------------------------------------------------------------
def prefix_length(lay: Layout, n_time: int) -> int:
    """Steps filtered sequentially before the scan (static): 2d + PREFIX_SLACK, 0 without diffuse states."""
    d = len(diffuse_states(lay))
    return min(n_time, 2 * d + PREFIX_SLACK) if d else 0


def use_parallel(n_time: int, n_states: int = 1, batch: int = 1, backend: str | None = None) -> bool:
    """The "auto" choice: the scan on a GPU/TPU for T ≥ CROSSOVER_STEPS (if its elements fit
    AUTO_MAX_BYTES), else the sequential filter (faster on a CPU at every length)."""
    backend = jax.default_backend() if backend is None else backend
    elem_bytes = 8 * batch * n_time * (3 * n_states * n_states + 2 * n_states)
    return backend in ACCELERATORS and n_time >= CROSSOVER_STEPS and elem_bytes <= AUTO_MAX_BYTES


# -- filtering ---------------------------------------------------------------------------------
def filter_elements(transition, state_var, obs_var, Z, d, y) -> FilterElement:
    """Generic elements of steps with data y (time,), designs Z (time, state), intercepts d (time,)."""
    Qz = state_var * Z                                   # Q z (Q diagonal)
    S = jnp.sum(Z * Qz, axis=-1) + obs_var
    ok = ~jnp.isnan(y) & (S > 0)
    S_safe = jnp.where(ok, S, 1.0)
    w = jnp.where(ok, 1.0 / S_safe, 0.0)
    v = jnp.where(ok, y - d, 0.0)
    K = Qz * w[:, None]
    zT = Z @ transition                                   # rows zᵀT, i.e. Tᵀz
    A = transition - K[:, :, None] * zT[:, None, :]
    b = K * v[:, None]
    C = jnp.diag(state_var) - w[:, None, None] * Qz[:, :, None] * Qz[:, None, :]
    eta = zT * (v * w)[:, None]
    J = w[:, None, None] * zT[:, :, None] * zT[:, None, :]
    return FilterElement(A, b, C, eta, J)


def combine_filter(early: FilterElement, late: FilterElement) -> FilterElement:
    """The associative operator of the filtering elements (leading axes broadcast).

    With M = I + C₁J₂ and one solve M⁻¹[A₁ | C₁ | b₁ + C₁η₂] = [Z_A | Z_C | z_b] (the push-through
    identity (I + J₂C₁)⁻¹ = I − J₂M⁻¹C₁ turns the paper's second inverse into the same solve):
    A = A₂Z_A, b = A₂z_b + b₂, C = A₂Z_C A₂ᵀ + C₂, η = A₁ᵀ(η₂ − J₂z_b) + η₁, J = A₁ᵀJ₂Z_A + J₁.
    """
    A1, b1, C1, eta1, J1 = early
    A2, b2, C2, eta2, J2 = late
    m = A1.shape[-1]
    M = jnp.eye(m, dtype=A1.dtype) + C1 @ J2
    rhs = jnp.concatenate([A1, C1, (b1 + _mv(C1, eta2))[..., None]], axis=-1)
    Z = jnp.linalg.solve(M, rhs)
    Z_A, Z_C, z_b = Z[..., :m], Z[..., m:2 * m], Z[..., 2 * m]
    A = A2 @ Z_A
    b = _mv(A2, z_b) + b2
    C = _sym(A2 @ Z_C @ _mT(A2) + C2)
    eta = _mv(_mT(A1), eta2 - _mv(J2, z_b)) + eta1
    J = _sym(_mT(A1) @ J2 @ Z_A + J1)
    return FilterElement(A, b, C, eta, J)


def _reduce(combine, elems, identity):
    """Combine all elements (time leading) into one by a balanced tree: depth O(log T)."""
    while elems[0].shape[0] > 1:
        if elems[0].shape[0] % 2:
            elems = jax.tree_util.tree_map(lambda e, i: jnp.concatenate([e, i[None]]), elems, identity)
        elems = combine(jax.tree_util.tree_map(lambda e: e[0::2], elems),
                        jax.tree_util.tree_map(lambda e: e[1::2], elems))
    return jax.tree_util.tree_map(lambda e: e[0], elems)


def _identity_filter(m: int, dtype) -> FilterElement:
    z, zz = jnp.zeros(m, dtype), jnp.zeros((m, m), dtype)
    return FilterElement(jnp.eye(m, dtype=dtype), z, zz, z, zz)


class _Tail(NamedTuple):
    """The scanned stretch of one member (time leading) and the state after it."""

    info: kalman.StepInfo     # per step, batch axis dropped
    next_mean: jnp.ndarray    # (state,) a_{n+1}
    next_cov: jnp.ndarray     # (state, state) P_{n+1}


def _one_step_terms(lay: Layout, system: System, a, P, y, Z, d):
    """The sequential filter's own observation update, vectorised over time (time as its batch)."""
    n, m = a.shape
    lay = lay._replace(time_varying_design=True)   # z given per step, no layout shortcut
    out = kalman.observe(lay, a.T, jnp.moveaxis(P, 0, -1), None, y, Z.T, d, system.obs_var,
                         ~jnp.isnan(y), kalman.Phase.STANDARD, False)
    a_f, P_f, _, llf, v, Fs, _, kind, K = out
    return a_f.T, jnp.moveaxis(P_f, -1, 0), llf, v, Fs, kind, K.T


def _filter_tail(lay: Layout, system: System, y, Z, d, a0, P0, Pinf) -> _Tail:
    """Scan-filter one member's proper stretch y (time,) from its predicted belief (a0, P0)."""
    T, q = system.transition, system.state_var
    m = T.shape[-1]
    a_f0, P_f0, *_ = _one_step_terms(lay, system, a0[None], P0[None], y[:1], Z[:1], d[:1])
    zero = jnp.zeros((1, m, m), a0.dtype)
    first = FilterElement(zero, a_f0, P_f0, jnp.zeros((1, m), a0.dtype), zero)
    rest = filter_elements(T, q, system.obs_var, Z[1:], d[1:], y[1:])
    elems = jax.tree_util.tree_map(lambda f, r: jnp.concatenate([f, r]), first, rest)
    scanned = lax.associative_scan(combine_filter, elems)
    filt_mean, filt_cov = scanned.b, scanned.C
    Q = jnp.diag(q)
    next_mean = filt_mean @ T.T                                  # a_{k+1} = T a_{k|k}
    next_cov = _sym(T @ filt_cov @ T.T + Q)
    pred_mean = jnp.concatenate([a0[None], next_mean[:-1]])
    pred_cov = jnp.concatenate([P0[None], next_cov[:-1]])
    _, _, llf, v, Fs, kind, K = _one_step_terms(lay, system, pred_mean, pred_cov, y, Z, d)
    n = y.shape[0]
    info = kalman.StepInfo(llf, v, Fs, jnp.zeros_like(Fs), kind, pred_mean, pred_cov,
                           jnp.broadcast_to(Pinf, (n, m, m)), filt_mean, filt_cov, K)
    return _Tail(info, next_mean[-1], next_cov[-1])


def _time_slice(system: System, start: int, stop: int | None) -> System:
    """Steps start:stop of a batch-leading system (only time-varying designs/intercepts change)."""
    design = system.design[:, start:stop] if system.design.ndim == 3 else system.design
    d = system.obs_intercept[:, start:stop] if system.obs_intercept.ndim == 2 else system.obs_intercept
    return system._replace(design=design, obs_intercept=d)


def _per_step(system_one: System, n_time: int):
    """(Z (time, state), d (time,)) of one member."""
    Z = jnp.broadcast_to(system_one.design, (n_time, system_one.transition.shape[-1]))
    return Z, jnp.broadcast_to(system_one.obs_intercept, (n_time,))


def _scannable(system: System, y, mid: kalman.FilterState):
    """True when every member's belief is proper and every observed step has S = zᵀQz + H > 0."""
    def degenerate(sys1, y1):
        Z, _ = _per_step(sys1, y1.shape[0])
        S = jnp.sum(Z * Z * sys1.state_var, axis=-1) + sys1.obs_var
        return jnp.any(~jnp.isnan(y1) & ~(S > 0))
    bad = jax.vmap(degenerate, in_axes=(0, 1))(system, y)
    return ~jnp.any(mid.diffuse) & ~jnp.any(bad)


def _final_state(lay: Layout, prev_observed, tail: _Tail, observed):
    """What the sequential filter leaves in its state after the stretch: a_{n+1}, P_{n+1}, the
    steady flag (its own criterion), the last gain and F, whether the last y was observed."""
    info = tail.info
    last_obs = observed[-1]
    prev_obs = observed[-2] if observed.shape[0] > 1 else prev_observed
    P_last, P_next = info.pred_cov[-1], tail.next_cov
    if lay.time_varying_design:
        steady = jnp.zeros_like(last_obs)
    else:
        steady = ((info.kind[-1] == kalman.StepKind.STANDARD) & prev_obs & last_obs
                  & kalman.converged(P_next, P_last))
    return tail.next_mean, P_next, steady, info.gain[-1], info.innov_var[-1], last_obs


def run(lay: Layout, system: System, y: jnp.ndarray, *, keep: bool = False,
        state: kalman.FilterState | None = None):
    """`kalman.run` by associative scan after the exact-diffuse prefix: same arguments, same results.

    system: batch LEADING; y: (time, batch); state: batch-last belief to start from (default: the
    diffuse prior). Returns (final batch-last FilterState, loglik (time, batch) or StepInfo).
    """
    n_time, batch = y.shape
    L = prefix_length(lay, n_time)
    if L >= n_time:
        return kalman.run(lay, system, y, keep=keep, state=state)
    if L:
        mid, head = kalman.run(lay, _time_slice(system, 0, L), y[:L], keep=keep, state=state)
    else:
        mid = kalman.init(lay, kalman.batch_last(system)) if state is None else state
        head = None
    tail_system, y_tail = _time_slice(system, L, None), y[L:]

    def sequential():
        return kalman.run(lay, tail_system, y_tail, keep=keep, state=mid)

    def scanned():
        def one(sys1, y1, a0, P0, Pinf, prev_observed):
            tail = _filter_tail(lay, sys1, y1, *_per_step(sys1, y1.shape[0]), a0, P0, Pinf)
            return tail, _final_state(lay, prev_observed, tail, ~jnp.isnan(y1))
        tails, (nxt, P_next, steady, gain, F, last_obs) = jax.vmap(one, in_axes=(0, 1, -1, -1, -1, 0), out_axes=-1)(
            tail_system, y_tail, mid.mean, mid.cov, mid.diffuse_cov, mid.prev_observed)
        final = mid._replace(mean=nxt, cov=P_next, steady=steady, gain=gain, innov_var=F,
                             prev_observed=last_obs)
        return final, (tails.info if keep else tails.info.loglik)

    shapes = jax.eval_shape(sequential)
    final, tail_out = lax.cond(_scannable(tail_system, y_tail, mid),
                               lambda: jax.tree_util.tree_map(lambda x, s: x.astype(s.dtype), scanned(), shapes),
                               sequential)
    if head is None:
        return final, tail_out
    return final, jax.tree_util.tree_map(lambda h, t: jnp.concatenate([h, t]), head, tail_out)


# -- smoothing ---------------------------------------------------------------------------------
def smooth_elements(transition, state_var, filt_mean, filt_cov) -> SmoothElement:
    """RTS elements from the filtered moments (time leading); the last step's is (0, a_{n|n}, P_{n|n}).

    States with zero predicted variance (exactly known, e.g. an unused or noise-free state) get
    a unit pivot in P_{k+1}: their column of E is zero, as their smoothed value is their prediction.
    """
    T = transition
    m = T.shape[-1]
    TC = T @ filt_cov                                               # T P_{k|k}
    P_next = _sym(TC @ T.T + jnp.diag(state_var))
    known = jnp.diagonal(P_next, axis1=-2, axis2=-1) <= 0
    eye = jnp.eye(m, dtype=bool)
    P_safe = jnp.where(eye & known[..., None, :], 1.0, P_next)
    E = jnp.where(known[..., None, :], 0.0, _mT(jnp.linalg.solve(P_safe, TC)))   # P_{k|k} Tᵀ P_{k+1}⁻¹
    g = filt_mean - _mv(E @ T, filt_mean)
    L = _sym(filt_cov - E @ TC)
    last = lambda x, v: x.at[-1].set(v)
    return SmoothElement(last(E, jnp.zeros((m, m), E.dtype)), last(g, filt_mean[-1]), last(L, filt_cov[-1]))


def combine_smooth(late: SmoothElement, early: SmoothElement) -> SmoothElement:
    """The associative operator of the smoothing elements, for `associative_scan(..., reverse=True)`."""
    E = early.E @ late.E
    g = _mv(early.E, late.g) + early.g
    L = _sym(early.E @ late.L @ _mT(early.E) + early.L)
    return SmoothElement(E, g, L)


def _after(lay: Layout, system: System, y, Z, d, filt_mean, filt_cov):
    """(r, N) of the observations after the first step of a stretch, for the sequential smoother.

    Their likelihood given α is exp(ηᵀα − ½αᵀJα) (all later filtering elements combined), so
    E[α | all] = a + P r and Var = P − P N P at the filtered (a, P) with r = (I + JP)⁻¹(η − J a),
    N = (I + JP)⁻¹J: exactly the smoother's r, N at the end of that step.
    """
    m = filt_mean.shape[-1]
    if y.shape[0] == 0:
        return jnp.zeros(m, filt_mean.dtype), jnp.zeros((m, m), filt_mean.dtype)
    elems = filter_elements(system.transition, system.state_var, system.obs_var, Z, d, y)
    total = _reduce(combine_filter, elems, _identity_filter(m, filt_mean.dtype))
    G = jnp.eye(m, dtype=filt_mean.dtype) + total.J @ filt_cov
    sol = jnp.linalg.solve(G, jnp.concatenate([(total.eta - total.J @ filt_mean)[:, None], total.J], axis=1))
    return sol[:, 0], _sym(sol[:, 1:])


def smooth(lay: Layout, system: System, y: jnp.ndarray) -> kalman.SmoothResult:
    """Exact-diffuse fixed-interval smoother of one series (`kalman.smooth_one`'s results).

    system: one member (no batch axis); y: (time,). The steps after the sequential prefix are
    filtered and RTS-smoothed by associative scans; the prefix (where the diffuse phase lies)
    is smoothed by the sequential exact-diffuse smoother, started from the (r, N) that the later
    observations give (`_after`), so no O(T) sequential pass is left.
    """
    n = y.shape[0]
    sys_b = jax.tree_util.tree_map(lambda a: a[None], system)
    Z, d = _per_step(system, n)
    Y = y[:, None]
    first = lambda tree: jax.tree_util.tree_map(lambda a: a[..., 0], tree)
    L = prefix_length(lay, n)
    if L >= n:
        return kalman.smooth_one(lay, system, first(kalman.run(lay, sys_b, Y, keep=True)[1]), Z)
    if L:
        mid, head = kalman.run(lay, _time_slice(sys_b, 0, L), Y[:L], keep=True)
        head = first(head)
    else:
        mid, head = kalman.init(lay, kalman.batch_last(sys_b)), None
    a0, P0, Pinf = first(mid.mean), first(mid.cov), first(mid.diffuse_cov)

    def scanned():
        tail = _filter_tail(lay, system, y[L:], Z[L:], d[L:], a0, P0, Pinf)
        elems = smooth_elements(system.transition, system.state_var, tail.info.filt_mean, tail.info.filt_cov)
        sm = lax.associative_scan(combine_smooth, elems, reverse=True)
        if head is None:
            return kalman.SmoothResult(sm.g, sm.L)
        after = _after(lay, system, y[L + 1:], Z[L + 1:], d[L + 1:], tail.info.filt_mean[0], tail.info.filt_cov[0])
        info = jax.tree_util.tree_map(lambda h, t: jnp.concatenate([h, t[:1]]), head, tail.info)
        res = kalman.smooth_one(lay, system, info, Z[:L + 1], after=after)
        return kalman.SmoothResult(jnp.concatenate([res.mean[:L], sm.g]), jnp.concatenate([res.cov[:L], sm.L]))

    def sequential():
        info = first(kalman.run(lay, _time_slice(sys_b, L, None), Y[L:], keep=True, state=mid)[1])
        if head is not None:
            info = jax.tree_util.tree_map(lambda h, t: jnp.concatenate([h, t]), head, info)
        return kalman.smooth_one(lay, system, info, Z)

    return lax.cond(_scannable(_time_slice(sys_b, L, None), Y[L:], mid), scanned, sequential)
