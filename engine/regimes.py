"""Switching structural models: regimes that inflate one disturbance, filtered by a collapsing mixture.

A spec's `regimes` (e.g. `{"outlier": true, "level_shift": true}`) gives each step a discrete regime
s_t ∈ {normal, outlier, level_shift, ...}, drawn independently at every step with the prior
probabilities `prob.<kind>` (normal: 1 − Σ prob). Regime s_t adds the variance `scale.<kind>` to
one disturbance of step t:

    outlier         y_t = Z α_t + d_t + ε_t,  Var ε_t = H + scale.outlier
    level_shift     α_t = T α_{t-1} + η_{t-1}, the level's Var η_{t-1} += scale.level_shift
    slope_shift     the slope's Var η_{t-1} += scale.slope_shift
    seasonal_break  every seasonal disturbance's Var η_{t-1} += scale.seasonal_break

(a state disturbance into α_t, so that a shift at t is seen in y_t itself; on the first step it
inflates the initial covariance). Given the regime path the model is linear Gaussian, but the
exact filter is a mixture of K^t Gaussians. The collapsing filters keep K:

* GPB2 (Kim 1994; second-order generalised pseudo-Bayes): K components, one per regime of the
  previous step; each step updates all K × K (previous, current) pairs and merges, by moment
  matching, the pairs that share the current regime. K² Kalman updates per step.
* GPB3: K² components, one per regime pair of the last two steps, K³ updates per step; the
  mixture is merged over the regime three steps back (GPBn keeps the last n − 1 regimes).
* IMM (Blom & Bar-Shalom 1988): first merges the K components into one prior per current regime,
  weighted by p(s_{t-1} = i | s_t = j, y_{0:t-1}); then K updates. With independent regimes every
  such prior is the same mixture, so IMM here is the first-order GPB1: one Gaussian carried.

Both return the approximate log-likelihood Σ_t log p(y_t | y_{0:t-1}) and the filtered regime
probabilities p(s_t | y_{0:t}); `tests/engine/test_regimes.py` measures them against exact
enumeration of every regime path, and GPB2, the more accurate by that measure, is the default.
With every `prob.*` zero both are the plain Kalman filter. The Kalman updates are
`engine.kalman.observe` and `engine.kalman.predict` (exact diffuse included) on a batch whose
members are the mixture's components.
"""

from __future__ import annotations

from functools import partial
from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.special import logsumexp

from .kalman import TOL_DIFFUSE, FilterState, Phase, batch_last, init as kalman_init, observe, predict, z_dot
from .spec import ModelSpec, as_spec
from .system import Layout, System, build_system, layout, params_from_vector

__all__ = ["METHODS", "RegimeModel", "SwitchingState", "SwitchingStepInfo", "SwitchingFilter", "regime_names",
           "inflation_pattern", "regime_model", "n_components", "init", "step", "bank_step", "filter_series", "loglik", "loglik_terms_batch", "refuse_regimes"]

METHODS = ("gpb2", "gpb3", "imm")
_GPB_ORDER = {"gpb2": 2, "gpb3": 3}


class RegimeModel(NamedTuple):
    """The numbers of the regimes for one parameter set (K regimes, normal first)."""

    log_prior: jnp.ndarray     # (regime,) log p(s_t = k), the same at every step
    obs_extra: jnp.ndarray     # (regime,) variance added to H
    state_extra: jnp.ndarray   # (state, regime) variance added to the diagonal of P_t (η_{t-1})


class SwitchingState(NamedTuple):
    """The `init`/`step` carry: K predicted Gaussian components (one per regime of the previous
    step; batch-last, the component being the batch) and their log weights."""

    kalman: FilterState        # batch = regime of the previous step
    log_weights: jnp.ndarray   # (regime,) log p(s_{t-1} = k | y_{0:t-1})


class SwitchingStepInfo(NamedTuple):
    """What one observation reveals."""

    loglik: jnp.ndarray        # () log p(y_t | y_{0:t-1}) (approximate; 0 when y_t is missing)
    regime_probs: jnp.ndarray  # (regime,) p(s_t | y_{0:t})
    pred_mean: jnp.ndarray     # () E[y_t | y_{0:t-1}] under the mixture
    pred_var: jnp.ndarray      # () Var[y_t | y_{0:t-1}] under the mixture (F* in the diffuse steps)
    filt_mean: jnp.ndarray     # (state,) E[α_t | y_{0:t}]
    filt_cov: jnp.ndarray      # (state, state) Var[α_t | y_{0:t}] (P*)


class SwitchingFilter(NamedTuple):
    loglik: jnp.ndarray        # ()
    info: SwitchingStepInfo    # each field stacked over time (leading axis)


def refuse_regimes(spec: ModelSpec, what: str) -> None:
    """A ValueError naming the `regimes` field where `what` (a filter or job of the plain Gaussian
    model) is asked to run a switching model, which it would silently treat as the plain one."""
    if spec.regimes:
        raise ValueError(f"spec field 'regimes': {what} cannot run a switching model yet; "
                         "engine.regimes.filter_series (batch) and engine.regimes.bank_step (online, O(1) per "
                         "observation) do. Remove the regimes to use it")


def regime_names(spec: ModelSpec | Mapping) -> tuple[str, ...]:
    """The regimes in filter order: 'normal', then the spec's kinds."""
    return ("normal",) + as_spec(spec).regimes


def inflation_pattern(spec: ModelSpec | Mapping, lay: Layout | None = None) -> np.ndarray:
    """(state, regime) 0/1: which states' disturbances each regime inflates (none for normal and
    outlier). Read from the layout: the level is the first state of the 'level' block and the slope
    its second; a dummy seasonal's disturbance enters its first state, a trigonometric one's every state."""
    spec = as_spec(spec)
    lay = layout(spec) if lay is None else lay
    names = regime_names(spec)
    out = np.zeros((lay.n_states, len(names)))
    for name, start, k, kind, _ in lay.blocks:
        if name == "level":
            if "level_shift" in names:
                out[start, names.index("level_shift")] = 1.0
            if "slope_shift" in names:
                out[start + 1, names.index("slope_shift")] = 1.0
        elif name.startswith(("seasonal_", "freq_seasonal_")) and "seasonal_break" in names:
            out[start:start + (1 if kind == "dummy" else k), names.index("seasonal_break")] = 1.0
    return out


def regime_model(spec: ModelSpec | Mapping, params: Mapping[str, jnp.ndarray]) -> RegimeModel:
    """The regimes' prior log-probabilities and variance inflations for parameter values `params`.

    The normal regime has probability 1 − Σ prob.*; where that is not positive the probabilities
    are no distribution: every regime's log-probability is −∞, and so is the likelihood (a sampler
    rejects the point)."""
    spec = as_spec(spec)
    kinds = spec.regimes
    probs = jnp.stack([jnp.asarray(params[f"prob.{k}"], jnp.float64) for k in kinds]) if kinds else jnp.zeros(0)
    scales = jnp.stack([jnp.asarray(params[f"scale.{k}"], jnp.float64) for k in kinds]) if kinds else jnp.zeros(0)
    rest = 1.0 - jnp.sum(probs)
    log_normal = jnp.where(rest > 0, jnp.log(jnp.where(rest > 0, rest, 1.0)), -jnp.inf)
    log_prior = jnp.concatenate([log_normal[None], jnp.log(probs)])
    log_prior = jnp.where(rest > 0, log_prior, -jnp.inf)
    extra = jnp.concatenate([jnp.zeros(1), scales])
    is_outlier = np.array([k == "outlier" for k in regime_names(spec)])
    return RegimeModel(log_prior, jnp.where(is_outlier, extra, 0.0),
                       jnp.asarray(inflation_pattern(spec)) * extra[None, :])


def n_components(n_regimes: int, method: str) -> int:
    """How many Gaussians a method carries: K^(n−1) for GPBn, K for IMM."""
    _check_method(method)
    return n_regimes ** (_GPB_ORDER[method] - 1) if method in _GPB_ORDER else n_regimes


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def init(lay: Layout, system: System, n_regimes: int, method: str = "gpb2") -> SwitchingState:
    """Identical components (`n_components` of them), each the plain filter's initial belief;
    `system` unbatched."""
    n = n_components(n_regimes, method)
    tiled = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n,) + jnp.shape(x)), system)
    st = kalman_init(lay, batch_last(tiled))
    return SwitchingState(st, jnp.full(n, -jnp.log(n)))


def _conditional(log_joint: jnp.ndarray, fallback: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Normalise log p(i, j) (C, K) over i for each j: (log p(i | j), log p(j)). A j of probability
    zero takes the weights `fallback` (C,) instead, so that its component stays finite."""
    log_marg = logsumexp(log_joint, axis=0)
    impossible = log_marg == -jnp.inf
    cond = jnp.where(impossible[None], fallback[:, None], log_joint - jnp.where(impossible, 0.0, log_marg)[None])
    return cond, log_marg


def _merge(log_cond: jnp.ndarray, a: jnp.ndarray, P: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Moment-matched merge over i of the components (i, j): a (state, C, K), P (state, state, C, K),
    weights exp(log_cond) (C, K) summing to 1 over i. Returns (state, K) and (state, state, K):
    ā_j = Σ_i w_ij a_ij,  P̄_j = Σ_i w_ij (P_ij + (a_ij − ā_j)(a_ij − ā_j)ᵀ)."""
    w = jnp.exp(log_cond)
    mean = jnp.sum(w[None] * a, axis=1)
    dev = a - mean[:, None]
    cov = jnp.sum(w[None, None] * (P + dev[:, None] * dev[None, :]), axis=2)
    return mean, 0.5 * (cov + jnp.swapaxes(cov, 0, 1))


def _update(lay: Layout, system: System, phase: Phase, a, P, Pinf, diffuse, y, d, z, H, state_extra):
    """Kalman observation update of a batch of components (state, B) under the variances H (B,) and
    the added state variances state_extra (state, B). Returns a_f, P_f, P∞_f, loglik term, F*, ŷ."""
    n = a.shape[-1]
    P = P + jnp.eye(a.shape[0])[:, :, None] * state_extra[None]
    Pinf = jnp.where(diffuse, Pinf, 0.0)   # as `full_step`: no roundoff regrowth after the diffuse phase
    yb, db, zb = jnp.broadcast_to(y, (n,)), jnp.broadcast_to(d, (n,)), jnp.broadcast_to(z[:, None], a.shape)
    a_f, P_f, Pinf_f, llf, _, Fs, _, _, _ = observe(lay, a, P, Pinf, yb, zb, db, H, ~jnp.isnan(yb), phase, False)
    return a_f, P_f, Pinf_f, llf, Fs, z_dot(lay, a, zb) + db


def _step_in_phase(lay: Layout, system: System, model: RegimeModel, method: str, phase: Phase,
                   state: SwitchingState, y, d, z):
    st, log_w = state.kalman, state.log_weights
    K = model.log_prior.shape[0]
    C = log_w.shape[0]                                         # components carried
    m = lay.n_states
    H = system.obs_var + model.obs_extra                       # (K,)
    # independent regimes: log p(component i, s_t = j | y_{0:t-1}) = log w_i + log p(s_t = j)
    log_pair_prior = log_w[:, None] + model.log_prior[None, :]   # (C, K)
    if method in _GPB_ORDER:
        # component i = the last n − 1 regimes (oldest first, base K); pair b = i K + j. The new
        # component (i without its oldest regime, j) merges the K pairs that differ in the oldest.
        rep = lambda x: jnp.repeat(x, K, axis=-1)
        a_f, P_f, Pinf_f, llf, F, y_hat = _update(
            lay, system, phase, rep(st.mean), rep(st.cov), rep(st.diffuse_cov), rep(st.diffuse), y, d, z,
            jnp.tile(H, C), jnp.tile(model.state_extra, (1, C)))
        log_joint = log_pair_prior + llf.reshape(C, K)
        oldest = (K, C)                                        # (oldest regime, new component)
        log_cond, log_post = _conditional(log_joint.reshape(oldest), jnp.full(K, -jnp.log(K)))
        mean, cov = _merge(log_cond, a_f.reshape(m, *oldest), P_f.reshape(m, m, *oldest))
        Pinf_n = jnp.sum(jnp.exp(log_cond)[None, None] * Pinf_f.reshape(m, m, *oldest), axis=2)
        pred_w = jnp.exp(log_pair_prior - logsumexp(log_pair_prior)).reshape(-1)
    elif method == "imm":
        log_mix, log_pred = _conditional(log_pair_prior, log_w)
        a0, P0 = _merge(log_mix, st.mean[:, :, None].repeat(K, 2), st.cov[:, :, :, None].repeat(K, 3))
        Pinf0 = jnp.sum(jnp.exp(log_mix)[None, None] * st.diffuse_cov[:, :, :, None], axis=2)
        diffuse0 = jnp.sum(Pinf0 ** 2, axis=(0, 1)) > TOL_DIFFUSE
        mean, cov, Pinf_n, llf, F, y_hat = _update(lay, system, phase, a0, P0, Pinf0, diffuse0, y, d, z, H,
                                                   model.state_extra)
        log_joint = log_post = log_pred + llf
        pred_w = jnp.exp(log_pred - logsumexp(log_pred))
    else:
        _check_method(method)
    loglik = logsumexp(log_joint)
    # an impossible observation (only where the regime probabilities are no distribution) keeps the weights
    log_post = jnp.where(jnp.isfinite(loglik), log_post - loglik, log_w)
    # the collapsed filtered belief and the mixture's predictive moments of y_t (for the info)
    filt_mean, filt_cov = _merge(log_post[:, None], mean[:, :, None], cov[:, :, :, None])
    regime_probs = jnp.exp(logsumexp(log_post.reshape(C // K if method in _GPB_ORDER else 1, K), axis=0))
    pred_mean = jnp.sum(pred_w * y_hat)
    pred_var = jnp.sum(pred_w * (F + (y_hat - pred_mean) ** 2))
    # predict every component with the base disturbances (a regime's inflation is added when it is observed)
    a_n, P_n, Pinf_n = predict(lay, system.transition, system.state_var[:, None], mean, cov, Pinf_n, phase, False)
    diffuse_n = jnp.sum(Pinf_n ** 2, axis=(0, 1)) > TOL_DIFFUSE if phase is Phase.DIFFUSE else \
        jnp.zeros(C, bool)
    new = SwitchingState(st._replace(mean=a_n, cov=P_n, diffuse_cov=Pinf_n, diffuse=diffuse_n), log_post)
    return new, SwitchingStepInfo(loglik, regime_probs, pred_mean, pred_var, filt_mean[:, 0], filt_cov[:, :, 0])


def step(lay: Layout, system: System, model: RegimeModel, state: SwitchingState, y, d, z,
         method: str = "gpb2") -> tuple[SwitchingState, SwitchingStepInfo]:
    """One observation y_t (scalar, NaN if missing) with intercept d_t and design z_t (state,):
    condition every component on y_t under every regime, merge, predict. `system` unbatched.
    The exact-diffuse update runs while any component is still diffuse (one `lax.cond`)."""
    _check_method(method)
    run = partial(_step_in_phase, lay, system, model, method)
    return lax.cond(jnp.any(state.kalman.diffuse), partial(run, Phase.DIFFUSE), partial(run, Phase.STANDARD),
                    state, y, d, z)


def bank_step(lay: Layout, systems: System, models: RegimeModel, state: SwitchingState, y, d=0.0,
              method: str = "gpb2") -> tuple[SwitchingState, SwitchingStepInfo]:
    """`step` for a bank of parameter draws: `systems`, `models` and `state` carry a leading draw axis
    (the systems' designs are fixed: no regression in the state); y, d are the scalar observation
    and intercept. One phase decision for the whole bank, as the online bank makes it, so that
    after the diffuse steps only the standard update runs (a per-draw `lax.cond` under `vmap` runs
    both branches). O(1) per observation and draw."""
    _check_method(method)

    def run(phase):
        one = lambda s, m, st: _step_in_phase(lay, s, m, method, phase, st, y, d, s.design)
        return jax.vmap(one)(systems, models, state)

    return lax.cond(jnp.any(state.kalman.diffuse), lambda: run(Phase.DIFFUSE), lambda: run(Phase.STANDARD))


def filter_series(spec: ModelSpec | Mapping, params: Mapping[str, jnp.ndarray], y: jnp.ndarray,
                  exog: jnp.ndarray | None = None, method: str = "gpb2") -> SwitchingFilter:
    """Filter one series (time,) through the switching model of `spec` (which must have regimes) at
    `params`: the approximate log-likelihood and every step's `SwitchingStepInfo`. Traceable in
    `params` (jit, grad and vmap over parameter draws)."""
    spec = as_spec(spec)
    if not spec.regimes:
        raise ValueError("spec field 'regimes': the spec has no regimes; add e.g. {'outlier': true}, or use "
                         "engine.filter_series for the plain model")
    _check_method(method)
    y = jnp.asarray(y, jnp.float64)
    n_time = y.shape[0]
    lay = layout(spec)
    system = build_system(spec, params, exog, n_time)
    model = regime_model(spec, params)
    d = jnp.broadcast_to(system.obs_intercept, (n_time,))
    z = system.design if system.design.ndim == 2 else jnp.broadcast_to(system.design, (n_time, lay.n_states))
    state = init(lay, system, model.log_prior.shape[0], method)

    def body(s, x):
        return step(lay, system, model, s, *x, method=method)

    _, info = lax.scan(body, state, (y, d, z))
    return SwitchingFilter(jnp.sum(info.loglik), info)


def loglik(spec: ModelSpec | Mapping, params: Mapping[str, jnp.ndarray], y: jnp.ndarray,
           exog: jnp.ndarray | None = None, method: str = "gpb2") -> jnp.ndarray:
    """The approximate log-likelihood of the switching model (see `filter_series`)."""
    return filter_series(spec, params, y, exog, method).loglik


def loglik_terms_batch(spec: ModelSpec, pvec: jnp.ndarray, Y: jnp.ndarray, exog: jnp.ndarray | None = None,
                       method: str = "gpb2") -> jnp.ndarray:
    """Per-step log-likelihood terms (time, batch) of Y (time, batch) under parameter vectors
    pvec (batch, k) in `param_names` order: the switching model's counterpart of the batched Kalman
    filter's output, which the fits (`engine.bayes`, `engine.model`) call for a spec with regimes.
    exog: (time, k) shared, or None."""
    def one(pv, y):
        return filter_series(spec, params_from_vector(spec, pv), y, exog, method).info.loglik

    return jax.vmap(one, in_axes=(0, 1), out_axes=1)(pvec, Y)
