"""Spec-level functions: log-likelihood, filtering, smoothing, forecasting, simulation.

Each takes a spec (ModelSpec or dict), parameters (dict name → value, or a vector in
`param_names` order), and a series `y` of shape (time,) with NaN for missing values.
All are usable under `jax.jit` and `jax.vmap`; `loglik_many` is the batched form that
shares one time loop across series (much faster than vmapping `loglik`).
"""

from __future__ import annotations

from functools import partial
from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import augmented as _augmented
from . import kalman
from . import parallel as _parallel
from . import regimes as _regimes
from .components import ComponentSelector, component_selectors
from .domains import check_params
from .spec import ModelSpec, as_spec, param_names, require_gaussian
from .system import (System, build_system, check_exog, check_finite, diffuse_states, fixed_diffuse_system, layout,
                     params_from_vector, params_to_vector)

__all__ = [
    "FILTERS", "as_param_vector", "as_series", "batch_systems", "filter_batch", "augmented_needed", "terms_with",
    "prepare_inputs",
    "prepare_fit", "FIT_SCALE", "check_fit_scale", "loglik_terms", "loglik", "loglik_many", "FilterResult", "filter_series",
    "DiffuseConditioningWarning", "diffuse_conditioning", "SmoothedComponents", "smooth", "smooth_prepared",
    "standardised",
    "Forecast", "extend_for_forecast", "forecast", "simulate",
]


FILTERS = ("standard", "sqrt", "parallel", "auto")
CHUNK = 64  # series per batched-filter chunk (fits the covariances in cache on CPU)
MEAN_PASS_RTOL = 1e-9   # the shared mean pass stands where it gives the first series' exact total to this


def _check_filter(filter: str, n_time: int = 0, n_states: int = 1, batch: int = 1) -> tuple[bool, bool]:
    """(sqrt, parallel) for a filter name; "auto" is the scan on an accelerator for long series
    (`parallel.use_parallel`), else the standard sequential filter."""
    if filter == "augmented":
        raise ValueError("filter='augmented' gives the total log-likelihood only (engine.loglik), "
                         "not per-step terms or filtered moments")
    if filter not in FILTERS:
        raise ValueError(f"filter={filter!r} is not known; use one of {FILTERS}")
    if filter == "auto":
        return False, _parallel.use_parallel(n_time, n_states, batch)
    return filter == "sqrt", filter == "parallel"


def as_param_vector(spec: ModelSpec, params) -> jnp.ndarray:
    """Accept a dict name → value or an array in `param_names` order (last axis)."""
    if isinstance(params, Mapping):
        unknown = set(params) - set(param_names(spec))
        if unknown:
            raise ValueError(f"unknown parameter(s) {sorted(unknown)}; the spec has {param_names(spec)}")
        return params_to_vector(spec, params)
    vec = jnp.asarray(params, dtype=jnp.float64)
    if vec.shape[-1:] != (len(param_names(spec)),):
        raise ValueError(f"expected {len(param_names(spec))} parameters {param_names(spec)}, got shape {vec.shape}")
    return vec


def as_series(y, name: str = "y") -> jnp.ndarray:
    """A float64 series; infinities are refused, NaN means missing."""
    if isinstance(y, jax.core.Tracer):
        return y
    arr = np.asarray(getattr(y, "values", y), dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one series of shape (time,), got shape {arr.shape}")
    check_finite(arr, name)
    return jnp.asarray(arr)


def batch_systems(spec: ModelSpec, pvec: jnp.ndarray, exog) -> System:
    """Systems with a leading batch axis from parameter vectors (batch, k) and exog (time, k) shared
    or (batch, time, k) per member: `build_system` vmapped, the input of every batched filter."""
    def one(pv, x):
        return build_system(spec, params_from_vector(spec, pv), x)
    return jax.vmap(one, in_axes=(0, None if exog is None or exog.ndim == 2 else 0))(pvec, exog)


@partial(jax.jit, static_argnames=("spec", "sqrt", "keep", "parallel", "augmented"))
def filter_batch(spec: ModelSpec, pvec, Y, exog, sqrt: bool, keep: bool, parallel: bool = False,
                 augmented: bool = True):
    """Filter Y (time, batch) with parameters pvec (batch, k); `parallel`: by associative scan;
    augmented: as `kalman.run`'s (False only where `augmented_needed` says so for Y's pattern).

    A spec with regimes gives the collapsed switching filter's log-likelihood terms
    (`engine.regimes`); its per-step moments are `engine.regimes.filter_series`."""
    if spec.regimes:
        if keep:
            _regimes.refuse_regimes(spec, "filter_series and forecast (the Kalman filter's per-step moments)")
        return None, _regimes.loglik_terms_batch(spec, pvec, Y, exog)
    lay = layout(spec)
    if parallel:
        return _parallel.run(lay, batch_systems(spec, pvec, exog), Y, keep=keep)
    return kalman.run(lay, batch_systems(spec, pvec, exog), Y, sqrt=sqrt, keep=keep, augmented=augmented)


def augmented_needed(spec: ModelSpec, y) -> bool:
    """Whether the filter must carry the augmented filter through the diffuse phase of y (time,):
    False only where Koopman's recursion alone is exact for the spec's fixed diffuse states and
    y's observed steps (`kalman.koopman_exact`, NumPy, no compilation); True for traced y, for
    diffuse states whose transition depends on the parameters (a cycle) or regressors in the
    state, and wherever the start is ill-conditioned."""
    fixed = fixed_diffuse_system(spec)
    if fixed is None or isinstance(y, jax.core.Tracer):
        return True
    return not kalman.koopman_exact(*kalman.koopman_pivots(*fixed, ~np.isnan(np.asarray(y, dtype=float))))


def prepare_inputs(spec, params, y, exog, check: bool = False) -> tuple[ModelSpec, jnp.ndarray, jnp.ndarray,
                                                                        jnp.ndarray | None]:
    """Checked inputs of a spec-level call: (spec, parameter vector (k,), y (time,), exog (time, k) or None).

    The spec is parsed, y refused if infinite or too long for the spec, exog checked against the
    spec (one row per observation) and the parameters put in `param_names` order; `check`: the
    parameters are refused outside their domain (`engine.domains`; concrete values only)."""
    spec = as_spec(spec)
    require_gaussian(spec, "this function (the Kalman filter)")
    y = as_series(y)
    spec.check_data(y.shape[0])
    x = check_exog(spec, exog, y.shape[0])
    if x is not None and not isinstance(x, jax.core.Tracer) and x.shape[0] > y.shape[0]:
        raise ValueError(f"exog has {x.shape[0]} rows but the series has {y.shape[0]}: give one row of regressors "
                         "per observation (regressors for a forecast go in exog_future)")
    x = None if x is None else jnp.asarray(x)
    pvec = as_param_vector(spec, params)
    if check:
        check_params(spec, pvec)
    return spec, pvec, y, x


def prepare_fit(spec, y, exog=None) -> tuple[ModelSpec, jnp.ndarray, jnp.ndarray | None]:
    """`prepare_inputs` for a fit: (spec, y, x), refusing a series that leaves nothing to fit. The exact
    diffuse likelihood spends the first observations on the d diffuse initial states, so with
    d or fewer observed values (all NaN, say) it does not depend on the parameters."""
    spec, _, y, x = prepare_inputs(spec, np.zeros(len(param_names(spec))), y, exog)
    observed = np.asarray(y)[np.isfinite(np.asarray(y))]
    n_observed = len(observed)
    n_diffuse = len(diffuse_states(layout(spec)))
    if n_observed <= n_diffuse:
        raise ValueError(f"the series has {n_observed} observed value(s) and the model's {n_diffuse} diffuse "
                         f"initial state(s) take the first {n_diffuse}: nothing is left to fit. Load more data "
                         "(or fill the gaps), or use a model with fewer components.")
    check_fit_scale(observed)
    return spec, y, x


# the spread of a series a fit takes: variances (spread²) and the filter's products of them stay
# far inside float64's 1e±308 (a Nile scaled by 1e-150 "converges" to variances at the 1e-300 floor)
FIT_SCALE = (1e-100, 1e100)


def check_fit_scale(observed: np.ndarray) -> None:
    """Refuse a series a fit cannot take: constant (its variances are 0 and the likelihood grows
    without bound), or of a spread outside `FIT_SCALE`, with the fix."""
    spread = float(np.max(observed) - np.min(observed))
    if spread == 0.0:
        raise ValueError(f"the series is constant (every observed value is {observed[0]:g}): every variance would "
                         "be 0 and the likelihood has no maximum. Check the target column; a constant needs no model.")
    lo, hi = FIT_SCALE
    if not np.isfinite(spread) or not lo <= spread <= hi:
        raise ValueError(f"the series spans {spread:.3g} (max − min), outside the {lo:g} to {hi:g} a fit in float64 "
                         f"can take (variances of its square would under- or overflow); rescale y "
                         + (f"(multiply it by about {1 / spread:.0e}) " if 0 < spread < np.inf else "")
                         + "and fit again")


def _filter_for(filter: str, spec: ModelSpec, n_time: int, batch: int = 1) -> tuple[bool, bool]:
    """(sqrt, parallel) for a spec and series length (the layout is needed only by "auto")."""
    return _check_filter(filter, n_time, layout(spec).n_states if filter == "auto" else 1, batch)


def loglik_terms(spec, params, y, exog=None, filter: str = "auto") -> jnp.ndarray:
    """Pointwise log p(y_t | y_{1:t-1}) (time,), exact diffuse; 0 at missing and diffuse-skipped steps.

    filter: "standard", "sqrt" (Cholesky), "parallel" (associative scan, `engine.parallel`) or
    "auto" (parallel on a GPU/TPU for long series, else standard)."""
    spec, pvec, y, x = prepare_inputs(spec, params, y, exog, check=True)
    return terms_with(spec, pvec, y, x, filter, augmented_needed(spec, y))


def terms_with(spec: ModelSpec, pvec, y, x, filter: str, augmented: bool) -> jnp.ndarray:
    """`loglik_terms` of prepared inputs (`prepare_inputs`) with the augmented filter's decision
    given (`augmented_needed`, taken where y is still concrete: a jitted caller's y is traced)."""
    sqrt, par = _filter_for(filter, spec, y.shape[0])
    _, ll = filter_batch(spec, pvec[None], y[:, None], x, sqrt, False, par, augmented)
    return ll[:, 0]


def loglik(spec, params, y, exog=None, filter: str = "auto", *, method: str = "importance", draws: int = 200,
           seed: int = 0, exposure=None) -> jnp.ndarray:
    """Exact (diffuse) log-likelihood of one series; equals statsmodels UnobservedComponents.loglike.

    filter: as `loglik_terms`, or "augmented": de Jong's augmented filter over the whole series
    (`engine.augmented`), the same function with no diffuse phase at all. Every filter is exact where
    the diffuse start is ill-conditioned (`diffuse_conditioning`), where Koopman's recursion alone
    (statsmodels') is not: the augmented filter runs beside it through the diffuse phase.

    A non-Gaussian observation family (`observation.family`) takes `engine.nongaussian.loglik`:
    method "importance" (the default: importance sampling over `draws` signal paths, exact up to
    Monte Carlo error, the same for the same `seed`) or "laplace" (the Gaussian approximation at
    the mode); exposure: the values of the spec's `observation.offset` column. The Gaussian family
    ignores method, draws and seed.
    """
    if not as_spec(spec).observation.is_gaussian:
        from . import nongaussian   # builds on this module
        return nongaussian.loglik(spec, params, y, exog, exposure, method=method, draws=draws, seed=seed)
    if exposure is not None:
        raise ValueError("exposure applies to count families (observation.offset); this model is gaussian")
    if filter == "augmented":
        spec, pvec, y, x = prepare_inputs(spec, params, y, exog, check=True)
        return _augmented_loglik(spec, pvec, y, x)
    return jnp.sum(loglik_terms(spec, params, y, exog, filter))


@partial(jax.jit, static_argnames=("spec",))
def _augmented_loglik(spec: ModelSpec, pvec, y, exog):
    system = jax.tree_util.tree_map(lambda a: a[0], batch_systems(spec, pvec[None], exog))
    return _augmented.loglik(layout(spec), system, y)


def loglik_many(spec, params, Y, exog=None, filter: str = "auto") -> jnp.ndarray:
    """Log-likelihoods of many series at once: Y (series, time); params (series, k), (k,) or a dict.

    exog: (time, k) shared or (series, time, k). One time loop serves the whole batch
    (filter="parallel": one associative scan per chunk of series).
    """
    spec = as_spec(spec)
    require_gaussian(spec, "loglik_many")
    sqrt, par = _filter_for(filter, spec, jnp.shape(Y)[-1], min(CHUNK, jnp.shape(Y)[0]))
    Y = jnp.asarray(Y, dtype=jnp.float64)
    if Y.ndim != 2:
        raise ValueError(f"Y must be (series, time), got shape {Y.shape}")
    pvec = as_param_vector(spec, params)
    check_params(spec, pvec, rows="series")
    x = None if exog is None else jnp.asarray(exog, dtype=jnp.float64)
    if spec.regression is not None and x is None:
        check_exog(spec, None, Y.shape[1])
    shared = pvec.ndim == 1 and (x is None or x.ndim == 2) and not (sqrt or par or spec.regimes)
    return _loglik_many(spec, pvec, Y.T, x, sqrt, shared, par)


@partial(jax.jit, static_argnames=("spec", "sqrt", "shared", "par"))
def _loglik_many(spec, pvec, Y, x, sqrt, shared, par=False):
    """(series,) log-likelihoods of Y (time, series).

    With one parameter vector (and shared exog) and the same missing pattern in every
    series, the covariance recursion runs once and each series only needs the O(m)
    mean recursion (`kalman.mean_pass`); otherwise the full batched filter runs.
    """
    n_series = Y.shape[1]

    def full():
        # chunks of CHUNK series keep each member's covariances in cache
        p = jnp.broadcast_to(pvec, (n_series, pvec.shape[-1]))
        if n_series <= CHUNK:
            return jnp.sum(filter_batch(spec, p, Y, x, sqrt, False, par)[1], axis=0)
        n_chunks = -(-n_series // CHUNK)
        pad = n_chunks * CHUNK - n_series
        p_c = jnp.pad(p, ((0, pad), (0, 0)), mode="edge").reshape(n_chunks, CHUNK, -1)
        Y_c = jnp.pad(Y, ((0, 0), (0, pad)), mode="edge").T.reshape(n_chunks, CHUNK, -1)
        if x is not None and x.ndim == 3:
            x_c = jnp.pad(x, ((0, pad), (0, 0), (0, 0)), mode="edge").reshape((n_chunks, CHUNK) + x.shape[1:])
            chunk = lambda args: jnp.sum(filter_batch(spec, args[0], args[1].T, args[2], sqrt, False, par)[1], axis=0)
            out = jax.lax.map(chunk, (p_c, Y_c, x_c))
        else:
            chunk = lambda args: jnp.sum(filter_batch(spec, args[0], args[1].T, x, sqrt, False, par)[1], axis=0)
            out = jax.lax.map(chunk, (p_c, Y_c))
        return out.reshape(-1)[:n_series]

    if not shared:
        return full()
    lay = layout(spec)

    def one_pass():
        _, info = kalman.run(lay, batch_systems(spec, pvec[None], x), Y[:, :1], keep=True)
        gains = jax.tree_util.tree_map(lambda a: a[..., 0], info)
        system = build_system(spec, params_from_vector(spec, pvec), x)
        if lay.time_varying_design:
            return full()
        ll = jnp.sum(kalman.mean_pass(lay, system.transition, system.design, system.obs_intercept, gains, Y), axis=0)
        # the mean pass repeats Koopman's diffuse steps; where the exact diffuse phase corrected them
        # (an ill-conditioned start: the first series' pass misses its kept run's total) filter in full
        exact = jnp.sum(info.loglik[:, 0])
        return jax.lax.cond(jnp.abs(ll[0] - exact) <= MEAN_PASS_RTOL * jnp.abs(exact), lambda: ll, full)

    mask = jnp.isnan(Y)
    return jax.lax.cond(jnp.all(mask == mask[:, :1]), one_pass, full)


class FilterResult(NamedTuple):
    """Per-step filter output for one series (time leading)."""

    predicted_mean: jnp.ndarray     # (time, state) a_t = E[α_t | y_{1:t-1}] (diffuse part excluded)
    predicted_cov: jnp.ndarray      # (time, state, state) P*_t
    predicted_diffuse: jnp.ndarray  # (time, state, state) P∞_t
    filtered_mean: jnp.ndarray      # (time, state)
    filtered_cov: jnp.ndarray       # (time, state, state)
    innovation: jnp.ndarray         # (time,) v_t
    innov_var: jnp.ndarray          # (time,) F_t
    loglik_terms: jnp.ndarray       # (time,)
    kind: jnp.ndarray               # (time,) 0 missing, 1 standard, 2 diffuse
    final_mean: jnp.ndarray         # (state,) a_{n+1}
    final_cov: jnp.ndarray          # (state, state) P_{n+1}
    final_diffuse: jnp.ndarray      # (state, state) P∞_{n+1}
    diffuse_var: jnp.ndarray        # (time,) F∞_t = Z P∞_t Zᵀ (0 after the diffuse phase)
    gain: jnp.ndarray               # (time, state) K_t: a_{t|t} = a_t + K_t v_t (P∞ z/F∞ in a diffuse step, 0 where
    #                                 y_t is missing); statsmodels' `kalman_gain` is T K_t after its diffuse phase


def filter_series(spec, params, y, exog=None, filter: str = "auto") -> FilterResult:
    """Run the exact-diffuse Kalman filter and keep every step's moments (filter: as `loglik_terms`)."""
    spec, pvec, y, x = prepare_inputs(spec, params, y, exog, check=True)
    sqrt, par = _filter_for(filter, spec, y.shape[0])
    final, info = filter_batch(spec, pvec[None], y[:, None], x, sqrt, True, par)
    first = lambda a: a[..., 0]
    cov = first(final.cov) @ first(final.cov).T if sqrt else first(final.cov)
    return FilterResult(first(info.pred_mean), first(info.pred_cov), first(info.pred_diffuse),
                        first(info.filt_mean), first(info.filt_cov), first(info.innovation),
                        first(info.innov_var), first(info.loglik), first(info.kind),
                        first(final.mean), cov, first(final.diffuse_cov), first(info.diffuse_var), first(info.gain))


# F∞_t / max F∞ in this band is neither round-off nor a clear pivot. Measured: round-off residues
# of unreachable directions stay below 2e-13, the smallest genuine pivots of well-conditioned
# starts are above 2e-7, and the daily births with 2-3 yearly harmonics have 1e-11 to 2e-8.
AMBIGUOUS_DIFFUSE = (1e-12, 1e-8)


class DiffuseConditioningWarning(UserWarning):
    """The exact-diffuse phase is numerically ill-conditioned for this model and data."""


def diffuse_conditioning(spec, params, y, exog=None) -> str | None:
    """A message when the exact-diffuse start is ill-conditioned here, else None (information:
    every filter's diffuse phase is exact, see `kalman.augmented`).

    Koopman's recursion divides by F∞_t, the squared pivots of the diffuse states' design
    over the first observations. When those directions are nearly collinear (e.g. the low
    harmonics of a yearly seasonal over the first days of a daily series) the pivots fall
    geometrically and some lie between round-off and the rank threshold: a step is then
    mis-classified, or divided by a near-zero F∞², and the log-likelihood (statsmodels'
    too) is off by units or more. Such a pivot is the signal checked here. The pivots come from
    `kalman.koopman_pivots` in NumPy (no compiled program): they depend on the diffuse states' T
    and Z and on which y_t are observed, not on the variances.
    """
    spec, pvec, y, x = prepare_inputs(spec, params, y, exog)
    idx = np.asarray(diffuse_states(layout(spec)), dtype=int)
    system = build_system(spec, params_from_vector(spec, pvec), x, y.shape[0])   # eager: no program compiled
    T = np.asarray(system.transition)[np.ix_(idx, idx)]
    z = np.asarray(system.design)[..., idx]
    f_inf = np.abs(kalman.koopman_pivots(T, z, ~np.isnan(np.asarray(y)))[0])
    top = float(f_inf.max(initial=0.0))
    if top == 0.0:
        return None
    lo, hi = AMBIGUOUS_DIFFUSE
    ambiguous = np.flatnonzero((f_inf > lo * top) & (f_inf < hi * top))
    if ambiguous.size == 0:
        return None
    return (f"the exact-diffuse start is ill-conditioned for this model and data: at step(s) "
            f"{', '.join(map(str, ambiguous[:5]))} the diffuse variance F∞ is {f_inf[ambiguous].min():.1e} × its "
            f"largest value, between round-off and full rank, so Koopman's exact-diffuse recursion alone "
            f"(statsmodels') may be off by units in the log-likelihood. The engine's totals and the states "
            f"after the diffuse phase stay exact (the augmented filter beside the recursion); the first "
            f"steps' filtered and smoothed moments are the recursion's. Usually the diffuse states are "
            f"nearly collinear over the first observations, e.g. several harmonics of a long seasonal "
            f"period; fewer harmonics, or a shorter period, avoid it.")


class SmoothedComponents(NamedTuple):
    """Smoothed states and the contribution of each component to y_t, with variances; the smoothed
    disturbances, their auxiliary residuals and the smoother's r/N recursions.

    The disturbances are those of y_t = Z_t α_t + d_t + ε_t and α_{t+1} = T α_t + η_t (η_t for the
    whole state vector, 0 on deterministic states), as statsmodels' `smoothed_measurement_disturbance`,
    `smoothed_state_disturbance` and their `_cov`; r, N and the diffuse r⁽¹⁾, N⁽¹⁾, N⁽²⁾ follow
    `kalman.SmootherOutput` (statsmodels' `scaled_smoothed_estimator` timing). The auxiliary
    residuals (Durbin & Koopman 2012, §2.12) are the disturbances over the standard deviation of
    their smoothed estimate, ε̂_t / √(H − Var(ε_t | y)) and η̂_t,i / √(q_i − Var(η_t,i | y)) (KFAS'
    `rstandard(type = "pearson" / "state")`): standard normal where the model holds, so values beyond
    ±1.96 mark outliers (measurement) and level shifts or slope changes (state). They are NaN where
    undefined: y_t missing, a deterministic state, or the last step (η̂ = 0 without later data).
    With the parallel smoother (`filter="parallel"`, or "auto" on an accelerator) every field but
    the states and components is None: the associative scan has no r/N recursion; use
    `filter="standard"` for them.
    """

    state_mean: jnp.ndarray        # (time, state)
    state_cov: jnp.ndarray         # (time, state, state)
    components: dict               # name → (mean (time,), var (time,))
    measurement_disturbance: jnp.ndarray | None = None      # (time,) ε̂_t = E[ε_t | y] (0 where y_t is missing)
    measurement_disturbance_var: jnp.ndarray | None = None  # (time,) Var(ε_t | y) (H where y_t is missing)
    state_disturbance: jnp.ndarray | None = None            # (time, state) η̂_t = E[η_t | y]
    state_disturbance_cov: jnp.ndarray | None = None        # (time, state, state) Var(η_t | y)
    auxiliary_measurement: jnp.ndarray | None = None        # (time,) standardised ε̂_t
    auxiliary_state: jnp.ndarray | None = None              # (time, state) standardised η̂_t
    r: jnp.ndarray | None = None                            # (time, state) r_t (r⁽⁰⁾ while diffuse)
    N: jnp.ndarray | None = None                            # (time, state, state) N_t (N⁽⁰⁾ while diffuse)
    r_diffuse: jnp.ndarray | None = None                    # (time, state) r⁽¹⁾_t
    N_diffuse1: jnp.ndarray | None = None                   # (time, state, state) N⁽¹⁾_t
    N_diffuse2: jnp.ndarray | None = None                   # (time, state, state) N⁽²⁾_t


def standardised(estimate: jnp.ndarray, variance: jnp.ndarray, prior_variance: jnp.ndarray) -> jnp.ndarray:
    """An auxiliary residual: a smoothed disturbance over the standard deviation of its estimate,
    x̂ / √(σ² − Var(x | y)) with σ² its variance before the data (Var(x̂) = σ² − Var(x | y));
    NaN where that is not positive beyond round-off (nothing observed about x, or σ² = 0)."""
    spread = prior_variance - variance
    defined = spread > 1e-12 * prior_variance
    return jnp.where(defined, estimate / jnp.sqrt(jnp.where(defined, spread, 1.0)), jnp.nan)


def _component_rows(selector: ComponentSelector, Z_t: jnp.ndarray) -> jnp.ndarray:
    """(time, state) rows w_t such that w_t · α_t is the component at t (see `ComponentSelector`)."""
    n_time, m = Z_t.shape
    states = jnp.asarray(selector.states)
    if selector.weighted:
        return Z_t * jnp.zeros(m).at[states].set(1.0)
    return jnp.zeros((n_time, m)).at[:, states].set(1.0)


def smooth(spec, params, y, exog=None, filter: str = "auto") -> SmoothedComponents:
    """Fixed-interval (RTS-type, exact diffuse) smoother: states and components given all of y.

    filter: "parallel" smooths by associative scans (`engine.parallel.smooth`), "auto" does so on
    a GPU/TPU for long series; otherwise the sequential smoother."""
    spec, pvec, y, x = prepare_inputs(spec, params, y, exog, check=True)
    return smooth_prepared(spec, pvec, y, x, _filter_for(filter, spec, y.shape[0])[1])


@partial(jax.jit, static_argnames=("spec", "parallel"))
def smooth_prepared(spec: ModelSpec, pvec: jnp.ndarray, y: jnp.ndarray, x: jnp.ndarray | None,
                    parallel: bool = False) -> SmoothedComponents:
    """`smooth` on inputs already checked by `prepare_inputs`: a parameter vector (k,), y (time,),
    exog (time, k) or None. Jitted and traceable in pvec, so it maps over posterior draws."""
    _regimes.refuse_regimes(spec, "the smoother")
    lay = layout(spec)
    system = build_system(spec, params_from_vector(spec, pvec), x)
    Z_t = jnp.broadcast_to(system.design, (y.shape[0], lay.n_states))
    extra = {}
    if parallel:
        res = _parallel.smooth(lay, system, y)
    else:
        _, info = kalman.run(lay, batch_systems(spec, pvec[None], x), y[:, None], keep=True)
        res = kalman.smooth_full(lay, system, jax.tree_util.tree_map(lambda a: a[..., 0], info), Z_t)
        eps, eps_var, eta = res.measurement_disturbance, res.measurement_disturbance_var, res.state_disturbance
        eta_var = jnp.diagonal(res.state_disturbance_cov, axis1=1, axis2=2)
        extra = dict(
            measurement_disturbance=eps, measurement_disturbance_var=eps_var, state_disturbance=eta,
            state_disturbance_cov=res.state_disturbance_cov,
            auxiliary_measurement=standardised(eps, eps_var, system.obs_var),
            auxiliary_state=standardised(eta, eta_var, jnp.broadcast_to(system.state_var, eta.shape)),
            r=res.r, N=res.N, r_diffuse=res.r_diffuse, N_diffuse1=res.N_diffuse1, N_diffuse2=res.N_diffuse2)
    comps = {}
    for selector in component_selectors(spec):
        if not selector.states:   # regression on fixed coefficients: x_t β, known given the parameters
            comps[selector.name] = (jnp.broadcast_to(system.obs_intercept, y.shape), jnp.zeros_like(y))
            continue
        Zc = _component_rows(selector, Z_t)
        mean = jnp.einsum("ti,ti->t", Zc, res.mean)
        var = jnp.einsum("ti,tij,tj->t", Zc, res.cov, Zc)
        comps[selector.name] = (mean, var)
    return SmoothedComponents(res.mean, res.cov, comps, **extra)


class Forecast(NamedTuple):
    mean: jnp.ndarray    # (steps,) E[y_{n+h} | y_{1:n}]
    var: jnp.ndarray     # (steps,) predictive variance (incl. the irregular)
    lower: jnp.ndarray   # (steps,)
    upper: jnp.ndarray   # (steps,)


def extend_for_forecast(spec: ModelSpec, y, x, steps: int, exog_future):
    """y and exog extended by `steps` future steps: the future is a run of missing
    observations, which the filter predicts through; regressors must be given for it."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    x_ext = None
    if spec.regression is not None:
        if exog_future is None:
            raise ValueError(f"forecasting a regression model needs exog_future with columns "
                             f"{list(spec.exog_columns)} for the {steps} future steps")
        xf = jnp.asarray(check_exog(spec, exog_future, steps))[:steps]
        x_ext = jnp.concatenate([x, xf], axis=0)
    return jnp.concatenate([y, jnp.full(steps, jnp.nan)]), x_ext


def forecast(spec, params, y, steps: int, exog=None, exog_future=None, level: float = 0.95) -> Forecast:
    """Plug-in h-step forecasts with Gaussian intervals (parameters taken as known)."""
    spec, pvec, y, x = prepare_inputs(spec, params, y, exog, check=True)
    y_ext, x_ext = extend_for_forecast(spec, y, x, steps, exog_future)
    res = filter_series(spec, pvec, y_ext, x_ext)
    system = build_system(spec, params_from_vector(spec, pvec), x_ext)
    n = y.shape[0]
    Z = jnp.broadcast_to(system.design, (n + steps, res.predicted_mean.shape[-1]))[n:]
    d = jnp.broadcast_to(system.obs_intercept, (n + steps,))[n:]
    mean = jnp.einsum("ti,ti->t", Z, res.predicted_mean[n:]) + d
    var = jnp.einsum("ti,tij,tj->t", Z, res.predicted_cov[n:], Z) + system.obs_var
    if np.any(np.asarray(jax.device_get(jnp.einsum("ti,tij,tj->t", Z, res.predicted_diffuse[n:], Z))) > 1e-8) \
            if not isinstance(var, jax.core.Tracer) else False:
        raise ValueError("the series is too short to identify every component (still diffuse at its end); "
                         "forecasts would have infinite variance")
    z = jax.scipy.stats.norm.ppf(0.5 + level / 2)
    sd = jnp.sqrt(var)
    return Forecast(mean, var, mean - z * sd, mean + z * sd)


def simulate(key, spec, params, n_time: int, exog=None, n_series: int | None = None,
             init_scale: float = 1.0) -> jnp.ndarray:
    """Draw series from the model. Diffuse initial states are drawn N(0, init_scale²).

    Returns (time,) or (n_series, time).
    """
    spec = as_spec(spec)
    pvec = as_param_vector(spec, params)
    x = None if exog is None else jnp.asarray(check_exog(spec, exog, n_time))[:n_time]
    if spec.regression is not None and x is None:
        check_exog(spec, None, n_time)
    keys = jax.random.split(key, n_series or 1)
    ys = jax.vmap(lambda k: _simulate_one(spec, pvec, x, n_time, k, init_scale))(keys)
    return ys if n_series else ys[0]


@partial(jax.jit, static_argnames=("spec", "n_time"))
def _simulate_one(spec, pvec, x, n_time, key, init_scale):
    system = build_system(spec, params_from_vector(spec, pvec), x)
    m = system.transition.shape[0]
    k0, k1, k2, k3 = jax.random.split(key, 4)
    P0 = system.init_cov + init_scale ** 2 * system.init_diffuse
    w, V = jnp.linalg.eigh(P0)
    alpha0 = V @ (jnp.sqrt(jnp.clip(w, 0.0)) * jax.random.normal(k0, (m,)))
    eta = jax.random.normal(k1, (n_time, m)) * jnp.sqrt(system.state_var)
    eps = jax.random.normal(k2, (n_time,)) * jnp.sqrt(system.obs_var)
    Z = jnp.broadcast_to(system.design, (n_time, m))
    d = jnp.broadcast_to(system.obs_intercept, (n_time,))

    def body(alpha, xs):
        e, z = xs
        return system.transition @ alpha + e, z @ alpha

    _, signal = jax.lax.scan(body, alpha0, (eta, Z))
    return signal + d + eps

