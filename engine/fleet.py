"""Many series at once: `fit_many` fits one structural model to every series of a fleet.

Series are cut into batches of one fixed shape (the last batch padded with copies of its
last series, which are dropped), so one compiled program serves every batch of a job. Inside
a batch the filter runs natively batched (series last) and every member's arithmetic is its
own: the exact-diffuse update (`kalman._full_step`) for a prefix that holds the diffuse phase,
then the standard one (the diffuse one if a member is still diffuse), so a series' result does
not depend on which series share its batch, on the batch size, or on the backend that ran it.
For the fit, a late start is filtered as a ragged end where that leaves the likelihood exact
(`_start_moves_to_end`), so late starters do not keep the batch in the diffuse update.

MLE and MAP fits use Fisher scoring with Levenberg–Marquardt damping on the unconstrained
parameters z. The gradient and the expected information of the Gaussian likelihood,

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
MLE works on `transforms.constrain` coordinates scaled to each series (as `fit_mle`); MAP on
NumPyro's unconstrained coordinates of each series' priors, adding the log prior and the log
Jacobian (the potential `fit_map` minimises), whose exact Hessian is cheap.

The backends only move batches: `run_batch` is the whole unit of work, a pure function of
its inputs (a seed per series), so a retried batch gives the same rows.
"""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax import lax
from numpyro.distributions import biject_to

from . import kalman, parallel
from .bayes import FitCancelled, _params_to_site_values, _site_values_to_params, _usable_cores
from .mle import start_points
from .model import _systems, as_param_vector
from .priors import FAMILIES, POSITIVE_FAMILIES, make_distribution, resolve_priors, sample_sites
from .spec import ModelSpec, as_spec, param_names
from .system import layout
from .transforms import constrain, scales

METHODS = ("mle", "map", "nuts", "filter")
BACKENDS = ("local", "ray")
BATCH_COV_ENTRIES = 4096  # default batch: about this many covariance entries (series × states²), see `default_batch_size`
ANOMALY_Z = 3.0          # |standardised one-step innovation| above this counts as an anomaly
MAX_ITER = 200           # scoring iterations per series (each one filter pass with k tangents)
GTOL = 1e-9              # converged: max |∂f/∂z| of the per-observation objective below this
FTOL = 1e-12             # ... or an undamped accepted step lowered it by less than this (relative)
GTOL_STUCK = 1e-5        # no step lowers f any more (roundoff): converged if max |∂f/∂z| is below this
DECREMENT_TOL = 1e-10    # ... or if the model's full step would lower f by at most this (relative)
MAX_STEP = 5.0           # largest change of any unconstrained coordinate in one step
NUTS_DEFAULTS = {"chains": 2, "warmup": 300, "draws": 300}


class FleetCancelled(FitCancelled):
    """`fit_many` was cancelled; `partial` holds the rows of the batches that had finished."""

    def __init__(self, message: str, partial: "FleetResult | None" = None):
        super().__init__(message)
        self.partial = partial


@dataclass
class FleetResult:
    """The per-series table and, with keep=True, each series' posterior and online belief.

    table: one row per series (see `fit_many`). posteriors: series → dict of parameters
    (mle/map/filter) or `arviz.InferenceData` (nuts). beliefs: series → `engine.Belief`
    after the last observation at the fitted parameters (mle/map/filter; not nuts), ready for
    `engine.OnlineFilter(spec, params, y_history=y, belief=belief)`.
    """

    table: pd.DataFrame
    posteriors: dict = field(default_factory=dict)
    beliefs: dict = field(default_factory=dict)


# -------------------------------------------------------------------------- input handling

class Panel(NamedTuple):
    """Series-leading data: ids, values (series, time) with NaN for missing, optional exog."""

    ids: list
    Y: np.ndarray                 # (series, time)
    exog: np.ndarray | None       # (time, k) shared or (series, time, k)
    time: pd.Index | None


def as_panel(Y, exog=None, spec: ModelSpec | None = None) -> Panel:
    """Normalise the fleet: an array (series, time), a wide DataFrame (time index × one column
    per series) or a long one (columns series, time, value). Ragged ends become NaN."""
    time_index = None
    if isinstance(Y, pd.DataFrame):
        cols = {str(c).lower(): c for c in Y.columns}
        if {"series", "time", "value"} <= set(cols):
            wide = Y.pivot_table(index=cols["time"], columns=cols["series"], values=cols["value"],
                                 aggfunc="first", dropna=False).sort_index()
            if Y.duplicated([cols["series"], cols["time"]]).any():
                first = Y[Y.duplicated([cols["series"], cols["time"]])].iloc[0]
                raise ValueError(f"the long table has two values for series {first[cols['series']]!r} at time "
                                 f"{first[cols['time']]!r}")
            Y = wide
        try:
            values = Y.to_numpy(dtype=float).T
        except (TypeError, ValueError) as err:
            raise ValueError(f"every column of the fleet table must be numeric: {err}") from None
        ids, time_index = [str(c) for c in Y.columns], Y.index
    else:
        try:
            values = np.asarray(Y, dtype=float)
        except (TypeError, ValueError) as err:
            raise ValueError(f"Y must be numeric (series, time): {err}") from None
        if values.ndim == 1:
            values = values[None]
        if values.ndim != 2:
            raise ValueError(f"Y must be (series, time), got shape {values.shape}")
        ids = [str(i) for i in range(values.shape[0])]
    if values.shape[0] == 0 or values.shape[1] < 2:
        raise ValueError(f"the fleet needs at least one series of at least 2 time steps, got shape {values.shape}")
    if np.isinf(values).any():
        s, t = np.argwhere(np.isinf(values))[0]
        raise ValueError(f"series {ids[s]!r} has an infinite value at time step {t}; use NaN for missing values")
    if len(set(ids)) != len(ids):
        raise ValueError("series names must be unique")
    x = None
    if exog is not None:
        if isinstance(exog, pd.DataFrame):
            if spec is not None and spec.regression is not None:
                missing = [c for c in spec.exog_columns if c not in exog.columns]
                if missing:
                    raise ValueError(f"exog has no column(s) {missing}; the spec regresses on {list(spec.exog_columns)}")
                exog = exog[list(spec.exog_columns)]
            exog = exog.to_numpy(dtype=float)
        x = np.asarray(exog, dtype=float)
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim == 2 and x.shape[0] < values.shape[1] or x.ndim == 3 and x.shape[:2] != values.shape:
            raise ValueError(f"exog must be (time, k) shared or (series, time, k) with time ≥ {values.shape[1]}, "
                             f"got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("exog must be finite everywhere (regressors cannot be missing)")
        x = x[: values.shape[1]] if x.ndim == 2 else x
    if spec is not None and spec.regression is not None:
        if x is None:
            raise ValueError(f"the spec regresses on {list(spec.exog_columns)} but no exog was given")
        if x.shape[-1] != spec.k_exog:
            raise ValueError(f"exog has {x.shape[-1]} columns; the spec regresses on {list(spec.exog_columns)}")
    return Panel(ids, values, x, time_index)


def default_batch_size(spec: ModelSpec, n_series: int, workers: int = 1) -> int:
    """Series per batch when the caller gives none: BATCH_COV_ENTRIES // states², a multiple of
    8 in [16, 256], and no more than an even share of the series per worker.

    A batch's filter keeps, per series, a states² covariance and one tangent of it per
    parameter; past a few thousand covariance entries per batch each series costs more
    (measured MAP fits, 2-core CPU: 6 states, 96–112 series 190–220 series/s against 115–125
    at 256; 13 states, 16–64 series about 65/s against 48 at 96 and 27 at 256; 1 state, 256
    series 3,400–4,500/s against 1,800 at 32). Results do not depend on the batch size."""
    n_states = max(layout(spec).n_states, 1)
    size = int(np.clip(BATCH_COV_ENTRIES // n_states ** 2, 16, 256)) // 8 * 8
    return max(1, min(size, -(-n_series // max(workers, 1))))


def batch_bounds(n_series: int, batch_size: int) -> list[tuple[int, int]]:
    """[start, stop) of each batch."""
    return [(lo, min(lo + batch_size, n_series)) for lo in range(0, n_series, batch_size)]


def series_seed(seed: int, index: int) -> int:
    """A seed for one series that depends only on the job's seed and the series' position."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


# ------------------------------------------------------------------------- batched filter

def _innovations(spec: ModelSpec, P, Y, X):
    """Filter a batch, each member on its own: P (series, k), Y (series, time).

    The exact-diffuse update runs for the first `parallel.prefix_length` steps, which hold
    every member's diffuse phase unless a member has too few observations there; the rest
    takes the standard update, or the diffuse one again if some member is still diffuse (one
    `lax.cond` on the primal state, a branch that each member's numbers do not depend on).
    Returns log-likelihood terms, innovations v_t, their variances F_t and kinds (0 skipped,
    1 standard, 2 diffuse), each (time, series), and the final batch-last `kalman.FilterState`.
    """
    lay = layout(spec)
    n_series, n_time = Y.shape
    system = kalman.batch_last(_systems(spec, P, X))
    d = system.obs_intercept
    d = jnp.broadcast_to(d if d.ndim == 2 else d[None], (n_time, n_series))
    varying = lay.time_varying_design

    def scan(use_diffuse: bool, state, xs):
        def body(state, xs):
            y_t, d_t, z_t = xs if varying else (*xs, system.design)
            if not use_diffuse:   # no member diffuse: the fused update (no steady test, not used here)
                new, llf, v = kalman._fused_standard_step(lay, system, state, y_t, d_t, z_t, test_steady=False)
                kind = jnp.where(new.prev_observed & (new.innov_var > 0), 1.0, 0.0)
                return new, (llf, v, new.innov_var, kind)
            new, info = kalman._full_step(lay, system, state, y_t, d_t, z_t, use_diffuse, False, True)
            return new, (info.loglik, info.innovation, info.innov_var, info.kind.astype(jnp.float64))
        return lax.scan(body, state, xs)

    xs = (Y.T, d, system.design) if varying else (Y.T, d)
    state = kalman.init(lay, system)
    n_prefix = parallel.prefix_length(lay, n_time)
    if n_prefix == 0:            # no diffuse states
        final, out = scan(False, state, xs)
    elif n_prefix == n_time:
        final, out = scan(True, state, xs)
    else:
        mid, head = scan(True, state, jax.tree_util.tree_map(lambda x: x[:n_prefix], xs))
        tail_xs = jax.tree_util.tree_map(lambda x: x[n_prefix:], xs)
        settled = mid._replace(diffuse_cov=jnp.zeros_like(mid.diffuse_cov))   # what the diffuse update keeps
        final, tail = lax.cond(jnp.any(mid.diffuse), lambda: scan(True, mid, tail_xs),
                               lambda: scan(False, settled, tail_xs))
        out = jax.tree_util.tree_map(lambda h, t: jnp.concatenate([h, t]), head, tail)
    return (*out, final)


def _start_moves_to_end(spec: ModelSpec) -> bool:
    """Whether a late start may be filtered as a ragged end instead (see `_late_starts_to_end`).

    The system is time-invariant (no regression) and every diffuse block's transition has
    |det| = 1 (trend, seasonals, an undamped cycle), so its diffuse prior, carried over the
    missing start, is again diffuse with the same normalisation (the noise gathered meanwhile
    is absorbed), and stationary blocks (AR) are at their stationary law at any time. A damped
    cycle's diffuse prior shrinks by ρ² a step: its exact-diffuse likelihood changes."""
    return spec.regression is None and (spec.cycle is None or not spec.cycle.damped)


def _late_starts_to_end(Y: np.ndarray) -> np.ndarray:
    """Each row's leading missing values moved to its end: (series, time) → (series, time).

    For a spec where `_start_moves_to_end` holds the exact-diffuse likelihood is unchanged,
    and a fleet's late starters then end their diffuse phase as early as the others, so the
    batched filter can leave the diffuse update after its prefix."""
    n_time = Y.shape[1]
    observed = ~np.isnan(Y)
    first = np.where(observed.any(axis=1), observed.argmax(axis=1), 0)
    return np.take_along_axis(Y, (np.arange(n_time)[None] + first[:, None]) % n_time, axis=1)


# -------------------------------------------------------------- coordinates and objectives

class Coordinates(NamedTuple):
    """How z (the optimiser's unconstrained vector) maps to parameters, per method (static)."""

    method: str                                   # 'mle' or 'map'
    sites: tuple[tuple[str, str, int], ...] = ()  # map: (site, family, n_args), z order (sorted)


def _coordinates(spec: ModelSpec, method: str, priors) -> Coordinates:
    if method != "map":
        return Coordinates("mle")
    fams = {n: p.family for n, p in resolve_priors(spec, None, None, priors).items()}
    return Coordinates("map", tuple((s, fams[s], len(FAMILIES[fams[s]][1])) for s in sorted(sample_sites(spec))))


def _log_variances(spec: ModelSpec, co: Coordinates) -> tuple[np.ndarray, np.ndarray]:
    """Which coordinates are log variances (σ² = c·exp(z)): (k,) bools in z order and in
    `param_names` order (the two differ for map, whose z follows the sorted sample sites)."""
    names = param_names(spec)
    if co.method == "mle":
        mask = np.array([n.startswith("sigma2.") for n in names], dtype=bool)
        return mask, mask
    positive = {s: s.startswith("sigma2.") and f in POSITIVE_FAMILIES for s, f, _ in co.sites}
    return (np.array([positive[s] for s, _, _ in co.sites], dtype=bool),
            np.array([positive.get(n, False) for n in names], dtype=bool))


def _member_args(spec: ModelSpec, co: Coordinates, y: np.ndarray, x, priors) -> np.ndarray:
    """Per-series numbers of the coordinates: the data scales (mle) or the priors' arguments (map)."""
    if co.method == "mle":
        sc = scales(spec, y, x)
        return np.array([sc[n] for n in param_names(spec)], dtype=float)
    resolved = resolve_priors(spec, y, x, priors)
    return np.concatenate([np.asarray(resolved[s].args, dtype=float) for s, _, _ in co.sites]) \
        if co.sites else np.zeros(0)


def _site_args(co: Coordinates, a):
    out, i = {}, 0
    for site, family, n in co.sites:
        out[site] = (family, tuple(a[i + j] for j in range(n)))
        i += n
    return out


def _to_params(spec: ModelSpec, co: Coordinates, z, a):
    """One member: z (k,) and its numbers a → parameters (k,) in `param_names` order."""
    if co.method == "mle":
        return constrain(spec, z, dict(zip(param_names(spec), a)))
    values = {}
    for i, (site, (family, args)) in enumerate(_site_args(co, a).items()):
        values[site] = biject_to(make_distribution(family, args).support)(z[i])
    return _site_values_to_params(spec, values)


def _log_prior(spec: ModelSpec, co: Coordinates, z, a):
    """One member: log p(θ(z)) + log |dθ/dz| (map), the non-likelihood part of −`fit_map`'s potential; 0 for mle."""
    if co.method == "mle":
        return jnp.zeros(())
    total = 0.0
    for i, (site, (family, args)) in enumerate(_site_args(co, a).items()):
        d = make_distribution(family, args)
        tr = biject_to(d.support)
        value = tr(z[i])
        total = total + d.log_prob(value) + tr.log_abs_det_jacobian(z[i], value)
    return total


def _from_params(spec: ModelSpec, co: Coordinates, theta, a):
    """One member (map): parameters (k,) → z (k,), the inverse of `_to_params`."""
    values = _params_to_site_values(spec, theta)
    return jnp.stack([biject_to(make_distribution(fam, args).support).inv(values[site])
                      for site, (fam, args) in _site_args(co, a).items()])


class Score(NamedTuple):
    """The minimised objective f = −(log-likelihood + log prior)/time, per member, with derivatives."""

    value: jnp.ndarray   # (series,)
    grad: jnp.ndarray    # (series, k)
    info: jnp.ndarray    # (series, k, k) expected information (+ the prior's exact Hessian), per time step


def _objective_value(spec, co, Z, A, Y, X):
    """f (series,) at Z (series, k), without derivatives."""
    P = jax.vmap(partial(_to_params, spec, co))(Z, A)
    llf = _innovations(spec, P, Y, X)[0]
    lp = jax.vmap(partial(_log_prior, spec, co))(Z, A)
    return -(jnp.sum(llf, axis=0) + lp) / Y.shape[1]


def _score(spec, co, Z, A, Y, X) -> Score:
    """f, ∂f/∂z and the scoring matrix from one forward pass with one tangent per coordinate."""
    n_time = Y.shape[1]
    k = Z.shape[1]

    def outputs(Z):
        P = jax.vmap(partial(_to_params, spec, co))(Z, A)
        return _innovations(spec, P, Y, X)[:4]

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
    lp_one = partial(_log_prior, spec, co)
    lp, lp_grad = jax.vmap(jax.value_and_grad(lp_one))(Z, A)
    lp_hess = jax.vmap(jax.hessian(lp_one))(Z, A)
    value = -(jnp.sum(llf, axis=0) + lp) / n_time
    grad = -(ll_grad + lp_grad) / n_time
    return Score(value, grad, (info - _transform_curvature(spec, co, Z, A, ll_grad) - lp_hess) / n_time)


def _transform_curvature(spec, co, Z, A, ll_grad):
    """Σ_i ∂ℓ/∂θ_i ∇²_z θ_i (series, k, k): the part of ∇²_z ℓ that the information (a curvature
    in θ) misses. It vanishes at an interior MLE but not at a MAP, where the likelihood's slope
    balances the prior's; there it is most of the curvature of a weakly identified variance.

    Log variances are left out: `_optimise` steps them in σ² itself, where the information is
    the likelihood's own curvature model."""
    to_params = partial(_to_params, spec, co)
    curved = jnp.asarray(~_log_variances(spec, co)[1])

    def one(z, a, g):
        J = jax.jacfwd(to_params)(z, a)                               # (k, k) ∂θ/∂z
        slope = jnp.where(curved, jnp.linalg.lstsq(J.T, g)[0], 0.0)   # ∂ℓ/∂θ
        C = jax.hessian(lambda z: jnp.dot(lax.stop_gradient(slope), to_params(z, a)))(z)
        w, V = jnp.linalg.eigh(0.5 * (C + C.T))
        return (V * jnp.minimum(w, 0.0)) @ V.T     # keep the model convex: only −C's positive part
    return jax.vmap(one)(Z, A, ll_grad)


class Optimum(NamedTuple):
    z: jnp.ndarray           # (series, k)
    value: jnp.ndarray       # (series,) f at z
    grad: jnp.ndarray        # (series, k)
    converged: jnp.ndarray   # (series,) bool
    iterations: jnp.ndarray  # (series,) int


@partial(jax.jit, static_argnames=("spec", "co", "maxiter"))
def _optimise(spec, co, Z0, A, Y, X, maxiter: int) -> Optimum:
    """Per member: pick the best start in Z0 (start, series, k), then damped Fisher scoring.

    Each member's path depends on its own data only; a member stops when converged (its
    state is then frozen), the loop when all have stopped or after `maxiter` iterations.
    Once at most a quarter of the members are still going, they move to a batch a quarter
    the size (`_shrinking_loop`), so the slowest few do not keep the whole batch iterating.
    """
    values = lax.map(lambda z: _objective_value(spec, co, z, A, Y, X), Z0)        # (start, series)
    values = jnp.where(jnp.isfinite(values), values, jnp.inf)
    best = jnp.argmin(values, axis=0)
    z = jnp.take_along_axis(Z0, best[None, :, None], axis=0)[0]
    s0 = _score(spec, co, z, A, Y, X)
    n, k = z.shape
    eye = jnp.eye(k)
    log_variance = jnp.asarray(_log_variances(spec, co)[0])

    def running_over(limit):
        return lambda c: (c["it"][0] < maxiter) & (jnp.sum(~c["done"]) > limit)

    def body(A, Y, X, c):
        z, sc, lam, done = c["z"], c["score"], c["lam"], c["done"]
        H = sc.info + jnp.where(c["augmented"][:, None, None], c["secant"], 0.0)
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
        predicted_secant = -(linear + 0.5 * quad(sc.info + c["secant"]))
        trial = _score(spec, co, z + step, A, Y, X)
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
        lam_new = jnp.where(accept, lam * jnp.maximum(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3), lam * c["nu"])
        lam_new = jnp.maximum(lam_new, 1e-12)
        nu_new = jnp.where(accept, 2.0, c["nu"] * 2.0)
        secant = jnp.where(accept[:, None, None], _secant_update(c["secant"], step, trial.grad - sc.grad, trial.info),
                           c["secant"])
        augmented = jnp.abs(drop - predicted_secant) < jnp.abs(drop - predicted_scoring)
        augmented = jnp.where(ok & ~done, augmented, c["augmented"])
        return {"secant": secant, "augmented": augmented, "z": pick(z + step, z), "score": jax.tree_util.tree_map(pick, trial, sc),
                "lam": jnp.where(done, lam, lam_new), "nu": jnp.where(done, c["nu"], nu_new),
                "done": done | conv | ~done & stuck, "conv": c["conv"] | conv, 
                "n_iter": c["n_iter"] + (~done).astype(jnp.int32), "it": c["it"] + 1}

    init = {"z": z, "score": s0, "secant": jnp.zeros((n, k, k)), "augmented": jnp.zeros(n, bool), "lam": jnp.full(n, 1e-3), "nu": jnp.full(n, 2.0), "done": jnp.zeros(n, bool), "conv": jnp.zeros(n, bool),
            "n_iter": jnp.zeros(n, jnp.int32), "it": jnp.zeros(n, jnp.int32)}
    out = _shrinking_loop(running_over, body, init, A, Y, X, n)
    return Optimum(out["z"], out["score"].value, out["score"].grad, out["conv"], out["n_iter"])


def _shrinking_loop(running_over, body, carry, A, Y, X, n: int):
    """Run `body(A, Y, X, carry)` while more than n//4 members run, then the running ones in a
    batch of n//4 (recursively, down to 8): rows are gathered and scattered back, and each
    member's numbers are unchanged (its arithmetic is its own)."""
    small = n // 4
    if small < 8:
        return lax.while_loop(running_over(0), partial(body, A, Y, X), carry)
    carry = lax.while_loop(running_over(small), partial(body, A, Y, X), carry)
    rows = jnp.argsort(carry["done"], stable=True)[:small]          # the running ones first
    sub = jax.tree_util.tree_map(lambda x: x[rows], carry)
    X_sub = X[rows] if X is not None and X.ndim == 3 else X
    sub = _shrinking_loop(running_over, body, sub, A[rows], Y[rows], X_sub, small)
    return jax.tree_util.tree_map(lambda full, part: full.at[rows].set(part), carry, sub)


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


@partial(jax.jit, static_argnames=("spec", "co"))
def _params_of(spec, co, Z, A):
    return jax.vmap(partial(_to_params, spec, co))(Z, A)


@partial(jax.jit, static_argnames=("spec", "co"))
def _start_design(spec, co, U, A_mle, A):
    """The `fit_mle` start design U (start, k) in each member's coordinates: (start, series, k).

    For map, as `fit_map` does: each start is mapped to parameters at the member's data scale
    and back to the member's prior coordinates."""
    def one(u, a_mle, a):
        theta = constrain(spec, u, dict(zip(param_names(spec), a_mle)))
        return _from_params(spec, co, theta, a) if co.method == "map" else u
    return jax.vmap(lambda u: jax.vmap(lambda am, a: one(u, am, a))(A_mle, A))(U)


@partial(jax.jit, static_argnames=("spec",))
def _evaluate(spec, P, Y, X):
    """Log-likelihood, anomaly count and final filter state at parameters P (series, k)."""
    llf, v, F, kind, final = _innovations(spec, P, Y, X)
    standard = kind == 1.0
    z = jnp.where(standard, v / jnp.sqrt(jnp.where(standard, F, 1.0)), 0.0)
    return jnp.sum(llf, axis=0), jnp.sum(jnp.abs(z) > ANOMALY_Z, axis=0), final


# ------------------------------------------------------------------------------ one batch

class FleetJob(NamedTuple):
    """What every batch of a job shares (the Ray backend puts it in the object store once)."""

    spec: dict
    method: str
    batch_size: int                 # every batch is padded to this many series (one compile)
    seed: int = 0
    keep: bool = False
    exog: np.ndarray | None = None  # (time, k) regressors shared by every series
    priors: dict | None = None      # map/nuts: priors for every series ("auto" scales per series)
    params: dict | None = None      # filter: one parameter set for every series
    maxiter: int = MAX_ITER
    nuts: dict | None = None        # nuts: chains, warmup, draws, target_accept, ...


class Batch(NamedTuple):
    """Consecutive series [start, start + len(ids)) of the fleet."""

    start: int
    ids: list
    Y: np.ndarray                   # (series, time)
    exog: np.ndarray | None = None  # (series, time, k) per-series regressors
    params: np.ndarray | None = None  # (series, k) filter: per-series parameters


class BatchOutput(NamedTuple):
    rows: pd.DataFrame
    posteriors: dict
    beliefs: dict


def _columns(spec: ModelSpec, method: str) -> list[str]:
    cols = ["series", "status", "message", "n_obs", "loglik", *param_names(spec), "n_anomalies"]
    if method in ("mle", "map"):
        cols.append("n_iterations")
    if method == "nuts":
        cols += ["r_hat_max", "ess_bulk_min", "divergences", "trustworthy"]
    return cols


def failed_output(job: FleetJob, batch: Batch, message: str) -> BatchOutput:
    """Every series of the batch marked failed with `message` (the rest of the job goes on)."""
    spec = as_spec(job.spec)
    rows = pd.DataFrame({c: [np.nan] * len(batch.ids) for c in _columns(spec, job.method)})
    rows["series"] = list(batch.ids)
    rows["status"] = "failed"
    rows["message"] = message
    rows["n_obs"] = np.isfinite(batch.Y).sum(axis=1)
    return BatchOutput(rows, {}, {})


def run_batch(job: FleetJob, batch: Batch) -> BatchOutput:
    """Fit (or filter) one batch; an error fails only this batch's series, with its message."""
    try:
        return _run_batch(job, batch)
    except Exception as err:   # noqa: BLE001 - reported in the table, the job goes on
        return failed_output(job, batch, f"{type(err).__name__}: {err}")


class _Fitted(NamedTuple):
    """What a method gives for the padded batch, before the common evaluation."""

    params: np.ndarray        # (batch, k)
    converged: np.ndarray     # (batch,) bool
    extra: dict               # column → (series,) values
    messages: dict            # series position → message
    failed: np.ndarray        # (series,) bool: the method could not fit this series
    posteriors: dict          # series id → InferenceData (nuts)


def _run_batch(job: FleetJob, batch: Batch) -> BatchOutput:
    spec = as_spec(job.spec)
    names = param_names(spec)
    n, n_time = batch.Y.shape
    n_obs = np.isfinite(batch.Y).sum(axis=1)
    n_diffuse = sum(k for *_, k, _, diffuse in layout(spec).blocks if diffuse)
    problems = [None if m > n_diffuse else
                ("no observations (every value is missing)" if m == 0 else
                 f"only {m} observation(s): the model has {n_diffuse} diffuse state(s) and needs more")
                for m in n_obs]
    good = np.array([p is None for p in problems])
    rows = failed_output(job, batch, "").rows
    rows["message"] = [p or "" for p in problems]
    if not good.any():
        return BatchOutput(rows, {}, {})
    # every batch has job.batch_size members: unusable series and the padding copy a usable one
    fill = np.where(good, np.arange(n), int(np.flatnonzero(good)[0]))
    fill = np.concatenate([fill, np.full(max(job.batch_size - n, 0), fill[-1])])[: max(job.batch_size, n)]
    Y = jnp.asarray(batch.Y[fill])
    X = jnp.asarray(batch.exog[fill]) if batch.exog is not None else \
        (None if job.exog is None else jnp.asarray(job.exog))
    if job.method == "filter":
        P = batch.params[fill] if batch.params is not None else \
            np.broadcast_to(np.asarray(as_param_vector(spec, job.params)), (len(fill), len(names)))
        fitted = _Fitted(np.asarray(P, dtype=float), np.ones(len(fill), bool), {}, {}, np.zeros(n, bool), {})
    elif job.method in ("mle", "map"):
        fitted = _optimise_batch(job, spec, Y, X, n)
    elif job.method == "nuts":
        fitted = _nuts_batch(job, spec, batch, good, fill, X)
    else:
        raise ValueError(f"method={job.method!r} is not one of {METHODS}")

    ll, n_anom, final = jax.device_get(_evaluate(spec, jnp.asarray(fitted.params), Y, X))
    P = fitted.params
    rows["loglik"] = ll[:n]
    rows["n_anomalies"] = n_anom[:n]
    for j, name in enumerate(names):
        rows[name] = P[:n, j]
    for col, values in fitted.extra.items():
        rows[col] = values
    for i, message in fitted.messages.items():
        rows.loc[i, "message"] = message
    finite = np.isfinite(ll[:n])
    rows.loc[good & ~finite & ~fitted.failed, "message"] = "the log-likelihood is not finite at these parameters"
    usable = good & finite & ~fitted.failed
    rows["status"] = np.where(usable, np.where(fitted.converged[:n], "ok", "not_converged"), "failed")
    rows.loc[~usable, [*names, "loglik", "n_anomalies"]] = np.nan
    posteriors, beliefs = dict(fitted.posteriors), {}
    if job.keep and job.method != "nuts":
        for i in np.flatnonzero(usable):
            posteriors[batch.ids[i]] = dict(zip(names, map(float, P[i])))
            beliefs[batch.ids[i]] = _belief(final, i, n_time)
    return BatchOutput(rows, posteriors, beliefs)


def _optimise_batch(job: FleetJob, spec: ModelSpec, Y, X, n: int) -> _Fitted:
    """MLE/MAP: the `fit_mle` start design in each member's coordinates, best start, scoring."""
    co = _coordinates(spec, job.method, job.priors)
    Yn, Xn = np.asarray(Y), None if X is None else np.asarray(X)
    x_of = lambda i: None if Xn is None else (Xn[i] if Xn.ndim == 3 else Xn)
    A_mle = np.stack([_member_args(spec, Coordinates("mle"), Yn[i], x_of(i), None) for i in range(len(Yn))])
    A = A_mle if co.method == "mle" else \
        np.stack([_member_args(spec, co, Yn[i], x_of(i), job.priors) for i in range(len(Yn))])
    A_mle, A = jnp.asarray(A_mle), jnp.asarray(A)
    Z0 = _start_design(spec, co, jnp.asarray(start_points(spec)), A_mle, A)
    # the fit only needs the likelihood (the table's numbers and beliefs come from the series as given)
    Y_fit = jnp.asarray(_late_starts_to_end(Yn)) if _start_moves_to_end(spec) else Y
    opt = jax.device_get(_optimise(spec, co, Z0, A, Y_fit, X, int(job.maxiter)))
    P = np.asarray(_params_of(spec, co, jnp.asarray(opt.z), A))
    iterations = np.asarray(opt.iterations)
    grad = np.max(np.abs(np.asarray(opt.grad)), axis=1)
    messages = {i: f"no convergence in {int(iterations[i])} iterations (max |gradient| {grad[i]:.2e} per observation)"
                for i in range(n) if not opt.converged[i]}
    return _Fitted(P, np.asarray(opt.converged), {"n_iterations": iterations[:n]}, messages, np.zeros(n, bool), {})


def _belief(final: kalman.FilterState, i: int, n_time: int):
    """Member i's filter state after the last step, as a one-draw `engine.Belief`."""
    from .online import Belief

    fs = jax.tree_util.tree_map(lambda a: np.asarray(a)[..., i:i + 1], final)
    return Belief(fs, np.zeros(1), np.zeros(2), np.asarray(n_time, dtype=np.int64))


def _nuts_batch(job: FleetJob, spec: ModelSpec, batch: Batch, good, fill, X) -> _Fitted:
    """NUTS per series (its chains on threads), seeded per series; parameters are posterior means."""
    from .bayes import fit_nuts
    from .diagnostics import diagnose

    settings = {**NUTS_DEFAULTS, **(job.nuts or {})}
    names = param_names(spec)
    n = len(batch.ids)
    means = np.full((n, len(names)), np.nan)
    converged = np.zeros(len(fill), bool)
    extra = {"r_hat_max": np.full(n, np.nan), "ess_bulk_min": np.full(n, np.nan),
             "divergences": np.full(n, np.nan), "trustworthy": np.zeros(n, bool)}
    messages, posteriors = {}, {}
    for i in np.flatnonzero(good):
        x = None if X is None else np.asarray(X[i] if X.ndim == 3 else X)
        try:
            idata = fit_nuts(spec, batch.Y[i], x, seed=series_seed(job.seed, batch.start + i),
                             priors=job.priors, **settings)
            diag = diagnose(idata)
        except Exception as err:   # noqa: BLE001 - this series fails, the others go on
            messages[i] = f"{type(err).__name__}: {err}"
            continue
        means[i] = [float(idata.posterior[name].mean()) for name in names]
        extra["r_hat_max"][i] = float(diag.table["r_hat"].max())
        extra["ess_bulk_min"][i] = float(diag.table["ess_bulk"].min())
        extra["divergences"][i] = diag.divergences
        extra["trustworthy"][i] = diag.trustworthy
        converged[i] = diag.trustworthy
        if not diag.trustworthy:
            messages[i] = "; ".join(diag.reasons)
        if job.keep:
            posteriors[batch.ids[i]] = idata
    fitted = ~np.isnan(means).any(axis=1)
    stand_in = means[fitted][0] if fitted.any() else np.ones(len(names))   # evaluated, then dropped
    P = np.where(fitted[:, None], means, stand_in)[fill]
    failed = good & ~fitted
    return _Fitted(P, converged, extra, messages, failed, posteriors)


# ------------------------------------------------------------------------------- the job

def _filter_params(spec: ModelSpec, params, ids: list) -> tuple[dict | None, np.ndarray | None]:
    """method="filter": one dict for every series, or a per-series table (index or 'series' column)."""
    names = param_names(spec)
    if params is None:
        raise ValueError(f"method='filter' needs params: a dict of {names} or a table with one row per series")
    if isinstance(params, pd.DataFrame):
        table = params.set_index("series") if "series" in params.columns else params
        table.index = table.index.map(str)
        missing_cols = [c for c in names if c not in table.columns]
        if missing_cols:
            raise ValueError(f"the params table has no column(s) {missing_cols}")
        missing = [i for i in ids if i not in table.index]
        if missing:
            raise ValueError(f"the params table has no row for series {missing[:5]}{' …' if len(missing) > 5 else ''}")
        return None, table.loc[ids, names].to_numpy(dtype=float)
    as_param_vector(spec, params)   # validates names
    return {n: float(params[n]) for n in names}, None


def fit_many(spec, Y, exog=None, *, method: str = "mle", backend: str = "local", address: str | None = None,
             batch_size: int | None = None, progress: Callable[[int, int], None] | None = None, cancel=None,
             keep: bool = False, params=None, priors: Mapping | None = None, seed: int = 0,
             maxiter: int = MAX_ITER, nuts: Mapping | None = None, max_retries: int = 3) -> FleetResult:
    """Fit one structural model to every series of a fleet, in batches.

    Y: (series, time) with NaN for missing values and ragged ends, a wide DataFrame (time
    index × one column per series) or a long one (columns series, time, value). exog:
    (time, k) shared or (series, time, k). method: "mle", "map" (default priors scaled to
    each series, or `priors`), "nuts" (`nuts`: chains/warmup/draws, small by default) or
    "filter" (log-likelihood and anomalies at `params`: a dict for every series or a table
    with one row per series). backend: "local" (this process) or "ray" (a local Ray on
    127.0.0.1, or the cluster at `address`; "auto" for the one RAY_ADDRESS names). Batches of
    `batch_size` series (default `default_batch_size`) run vectorised; results do not depend on
    the backend or the batch size. progress(done_series, total_series) is called as batches
    finish; `cancel` (anything with is_set()) stops the job with `FleetCancelled` (its
    `partial` holds the finished batches).

    Returns a `FleetResult`; its table has one row per series: series, status ("ok",
    "not_converged" or "failed"), message, n_obs, loglik, one column per parameter,
    n_anomalies (|standardised one-step innovation| > 3 at the fitted parameters), and
    n_iterations (mle/map) or r_hat_max, ess_bulk_min, divergences, trustworthy (nuts).
    keep=True also returns each series' posterior and online belief.
    """
    spec = as_spec(spec)
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not known; use one of {METHODS}")
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not known; use one of {BACKENDS}")
    if method in ("mle", "map", "nuts") and not param_names(spec):
        raise ValueError("this model has no parameters to fit; use method='filter'")
    if priors is not None:
        resolve_priors(spec, None, None, priors)   # refuse bad priors before any work
    panel = as_panel(Y, exog, spec)
    n_series = len(panel.ids)
    if batch_size is None:
        batch_size = default_batch_size(spec, n_series, _usable_cores() if backend == "local" else 1)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number ≥ 1, got {batch_size!r}")
    shared_params, series_params = _filter_params(spec, params, panel.ids) if method == "filter" else (None, None)
    shared_x = panel.exog if panel.exog is not None and panel.exog.ndim == 2 else None
    job = FleetJob(spec.to_dict(), method, int(min(batch_size, n_series)), int(seed), bool(keep), shared_x,
                   None if priors is None else dict(priors), shared_params, int(maxiter),
                   None if nuts is None else dict(nuts))
    batches = [Batch(lo, panel.ids[lo:hi], panel.Y[lo:hi],
                     None if panel.exog is None or panel.exog.ndim == 2 else panel.exog[lo:hi],
                     None if series_params is None else series_params[lo:hi])
               for lo, hi in batch_bounds(n_series, job.batch_size)]
    done = [0]

    def finished(batch: Batch):
        done[0] += len(batch.ids)
        if progress is not None:
            progress(done[0], n_series)

    outputs: dict[int, BatchOutput] = {}
    if backend == "local":
        outputs = _run_local(job, batches, finished, cancel)
        if len(outputs) < len(batches):
            raise FleetCancelled(f"cancelled after {done[0]} of {n_series} series",
                                 _assemble(job, batches, outputs, partial=True))
    else:
        from . import cluster

        try:
            results = cluster.run_batches(run_batch, batches, job, address=address, max_retries=max_retries,
                                          progress=lambda i: finished(batches[i]), cancel=cancel)
        except cluster.Cancelled as err:
            done_outputs = {i: _output_or_failure(job, batches[i], r) for i, r in err.finished.items()}
            raise FleetCancelled(f"cancelled after {done[0]} of {n_series} series",
                                 _assemble(job, batches, done_outputs, partial=True)) from None
        outputs = {i: _output_or_failure(job, b, r) for i, (b, r) in enumerate(zip(batches, results))}
    return _assemble(job, batches, outputs)


def _run_local(job: FleetJob, batches: list[Batch], finished: Callable[[Batch], None], cancel) -> dict[int, BatchOutput]:
    """Run the batches in this process, as many at once as there are usable cores.

    XLA runs one batch's small kernels on about one core and releases the interpreter lock
    meanwhile, so batches on threads use the others (as Ray's worker processes would, without
    the copies). `finished` is called here, in the caller's thread. Once `cancel` is set no
    batch starts; those running finish. Returns the outputs by batch index (fewer if cancelled).
    """
    outputs: dict[int, BatchOutput] = {}
    todo = list(enumerate(batches))
    workers = max(1, min(len(batches), _usable_cores()))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fit_many") as pool:
        running: dict = {}
        while todo or running:
            while todo and len(running) < workers and not (cancel is not None and cancel.is_set()):
                i, batch = todo.pop(0)
                running[pool.submit(run_batch, job, batch)] = i
            if not running:
                break
            ready, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in ready:
                i = running.pop(future)
                outputs[i] = future.result()
                finished(batches[i])
    return outputs


def _output_or_failure(job: FleetJob, batch: Batch, result) -> BatchOutput:
    """A batch's output, or failed rows naming why the backend could not run it."""
    if isinstance(result, BatchOutput):
        return result
    message = str(result).strip().splitlines()
    return failed_output(job, batch, f"{type(result).__name__}: {message[-1] if message else ''}"[:500])


def _assemble(job: FleetJob, batches: list[Batch], outputs: dict[int, BatchOutput], partial: bool = False) -> FleetResult:
    """One table in series order (finished batches only when `partial`)."""
    spec = as_spec(job.spec)
    parts = [outputs[i] for i in range(len(batches)) if i in outputs]
    if not parts:
        return FleetResult(pd.DataFrame(columns=_columns(spec, job.method)))
    table = pd.concat([p.rows for p in parts], ignore_index=True)
    table["n_obs"] = table["n_obs"].astype(int)
    if "trustworthy" in table:
        table["trustworthy"] = table["trustworthy"].astype(bool)
    posteriors, beliefs = {}, {}
    for p in parts:
        posteriors.update(p.posteriors)
        beliefs.update(p.beliefs)
    return FleetResult(table, posteriors, beliefs)
