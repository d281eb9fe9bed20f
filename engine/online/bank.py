"""The bank kernel: pure `init` / `step` / `step_many` / `catch_up` / `forecast` over a `Belief`.

After a fit, each of S posterior draws θ_s keeps its own exact (diffuse-initialised) Kalman
belief. A new observation costs one batched Kalman step for the whole bank, independent of the
history length, and re-weights the draws by their one-step predictive density (sequential
importance sampling of the static parameters, as in IBIS):

    log w_s ← log w_s + log p(y_t | y_{1:t-1}, θ_s) − log Σ_r w_r p(y_t | y_{1:t-1}, θ_r)

`step` handles every case (diffuse start, missing values, converged covariances) with one
trace; `standard_step` and `steady_step` are the same arithmetic without the branches, for a
bank with no diffuse draw left or with every covariance converged. `select_step` is the one
place that picks among them (the `OnlineFilter` uses it too). The caller jits, with
`OnlineConfig` static.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .. import kalman
from ..components import component_selectors
from ..model import batch_systems
from ..regimes import refuse_regimes
from ..spec import ModelSpec, as_spec, require_gaussian
from ..system import System, layout
from .covariance import _dense, _is_packed, _standard_update, _use_packed
from .mixture import PROBS, mixture_moments, mixture_quantiles
from .report import OnlineInfo, _per_draw, _report
from .state import Bank, Belief, OnlineConfig


class OnlineForecast(NamedTuple):
    """h-step predictive of y from the current belief, mixed over the draws."""

    mean: jnp.ndarray        # (steps,)
    var: jnp.ndarray         # (steps,)
    quantiles: jnp.ndarray   # (steps, len(PROBS))
    draw_mean: jnp.ndarray   # (steps, draw)
    draw_var: jnp.ndarray    # (steps, draw)
    weight: jnp.ndarray      # (draw,)



def make_bank(spec, params) -> Bank:
    """Systems for S parameter draws (draw, param): built once per bank, batch-last."""
    spec = as_spec(spec)
    refuse_regimes(spec, "the online bank")
    require_gaussian(spec, "the online bank")
    params = jnp.asarray(params, dtype=jnp.float64)
    exog = jnp.zeros((1, spec.k_exog)) if spec.regression is not None else None
    return Bank(params, kalman.batch_last(batch_systems(spec, params, exog)))


def _design(spec: ModelSpec, bank: Bank, exog_t):
    """(z (state, draw), d (draw,)) at one time step; with regression they depend on x_t."""
    n_draws = bank.params.shape[0]
    if spec.regression is None:
        return bank.system.design, jnp.zeros(n_draws)
    x = jnp.reshape(jnp.asarray(exog_t, dtype=jnp.float64), (1, spec.k_exog))
    sys_t = batch_systems(spec, bank.params, x)   # only Z_t and d_t are used (the rest is dead code)
    z = sys_t.design[:, 0] if sys_t.design.ndim == 3 else sys_t.design
    intercept = sys_t.obs_intercept   # (draw,) when the coefficients are states, (draw, 1) when parameters
    d = (jnp.broadcast_to(jnp.reshape(intercept, (intercept.shape[0], -1))[:, 0], (n_draws,)) if intercept.ndim
         else jnp.zeros(n_draws))
    return z.T, d


def init(config: OnlineConfig, bank: Bank, log_weight=None) -> Belief:
    """Belief before any observation: each draw's exact diffuse prior; equal weights by default."""
    n_draws = bank.params.shape[0]
    if log_weight is None:
        log_weight = jnp.full(n_draws, -jnp.log(n_draws))
    log_weight = jnp.asarray(log_weight, dtype=jnp.float64)
    log_weight = log_weight - jax.scipy.special.logsumexp(log_weight)
    fs = kalman.init(layout(config.spec), bank.system, config.sqrt)
    return Belief(fs, log_weight, jnp.zeros(2), jnp.zeros((), jnp.int64))



def _kalman_step(config: OnlineConfig, lay, system: System, st: kalman.FilterState, y, d, z):
    """The bank's Kalman step: (next filter state, loglik, F∞ (draw,), still diffuse (component + state, draw)).

    Picks the cheapest exact update for the whole bank, as `kalman.step` does: mean only when every
    draw is steady and y_t observed; the fused standard update when no draw is diffuse (dense P);
    otherwise the filter's own exact-diffuse step, which also reports F∞ = z P∞ z and, per
    component and per state, whether its block of the next P∞ is still non-zero.
    """
    n_draws = y.shape[0]
    no_diffuse = (jnp.zeros(n_draws), jnp.zeros((len(component_selectors(config.spec)) + lay.n_states, n_draws), bool))

    def diffuse():
        fs, loglik = kalman.step(lay, system, st, y, d, z, sqrt=config.sqrt)
        Pinf = jnp.where(jnp.sum(st.diffuse_cov ** 2, axis=(0, 1)) > kalman.TOL_DIFFUSE, st.diffuse_cov, 0.0)
        Fi = jnp.sum(z * kalman.mat_vec(Pinf, z), axis=0)
        still = [jnp.sum(_block(fs.diffuse_cov, jnp.asarray(sel.states)) ** 2, axis=(0, 1)) > kalman.TOL_DIFFUSE
                 if sel.states else jnp.zeros(n_draws, bool) for sel in component_selectors(config.spec)]
        states = [fs.diffuse_cov[i, i] ** 2 > kalman.TOL_DIFFUSE for i in range(lay.n_states)]
        return fs, loglik, Fi, jnp.stack(still + states) if still + states else no_diffuse[1]

    def standard():
        if config.sqrt:
            return kalman.step(lay, system, st, y, d, z, sqrt=True) + no_diffuse
        fs, loglik, _ = _standard_update(config, lay, system, st, y, d, z)
        return (_dense(lay, fs), loglik) + no_diffuse

    def steady():
        return kalman.steady_step(lay, system, st, y, d, z, config.sqrt, False) + no_diffuse

    branch = {kalman.Phase.DIFFUSE: diffuse, kalman.Phase.STANDARD: standard, kalman.Phase.STEADY: steady}
    return lax.switch(kalman.phase_of(st, y), [branch[p] for p in kalman.Phase])


def _block(P, ix):
    return P[ix[:, None], ix[None, :]]


def step(config: OnlineConfig, bank: Bank, belief: Belief, y, exog=None) -> tuple[Belief, OnlineInfo]:
    """Observe y_t (NaN: predict only) for every draw; re-weight; report the predictive and filtered belief.

    The bank's Kalman step (`_kalman_step`) advances every draw and keeps K_t and F*_t in its
    state; the report needs only O(state·draw) more.
    """
    spec = config.spec
    lay = layout(spec)
    y = jnp.asarray(y, dtype=jnp.float64)
    z, d = _design(spec, bank, exog)
    st = _dense(lay, belief.filter)
    fs, loglik, Fi, still = _kalman_step(config, lay, bank.system, st, jnp.broadcast_to(y, d.shape), d, z)
    ds = _per_draw(config, lay, z, d, st, fs.gain, fs.innov_var, Fi, y, loglik, still)
    return _report(config, belief, fs, y, ds)


def standard_step(config: OnlineConfig, bank: Bank, belief: Belief, y, exog=None) -> tuple[Belief, OnlineInfo]:
    """`step` for a bank with no diffuse draw (every `filter.diffuse` False): the fused standard
    covariance update, without the branch (whose operands XLA would copy). P dense or packed
    (`_packed`); a large bank's P comes out packed (see `_standard_update`)."""
    if config.sqrt:
        return step(config, bank, belief, y, exog)
    spec = config.spec
    lay = layout(spec)
    y = jnp.asarray(y, dtype=jnp.float64)
    z, d = _design(spec, bank, exog)
    st = belief.filter
    fs, loglik, _ = _standard_update(config, lay, bank.system, st, jnp.broadcast_to(y, d.shape), d, z)
    ds = _per_draw(config, lay, z, d, st, fs.gain, fs.innov_var, jnp.zeros_like(d), y, loglik)
    return _report(config, belief, fs, y, ds)


def steady_step(config: OnlineConfig, bank: Bank, belief: Belief, y, exog=None) -> tuple[Belief, OnlineInfo]:
    """`step` for a bank whose covariances have all converged (every `filter.steady`) and an observed y_t.

    P, K and F are then fixed, so only the means move: a ← T(a + K v), O(state·draw). This is
    the arithmetic of the filter's own steady update, without carrying the covariances through
    it (the caller should donate the belief so that they are not copied either).
    """
    spec = config.spec
    lay = layout(spec)
    y = jnp.asarray(y, dtype=jnp.float64)
    z, d = _design(spec, bank, exog)
    st = belief.filter
    K, F = st.gain, st.innov_var
    v = y - kalman.z_dot(lay, st.mean, z) - d
    loglik = -0.5 * (kalman.LOG_2PI + jnp.log(F) + v * v / F)
    ds = _per_draw(config, lay, z, d, st, K, F, jnp.zeros_like(F), y, loglik)
    fs = st._replace(mean=jnp.stack(kalman.rows_apply(lay, bank.system.transition, list(ds.filt_mean))),
                     prev_observed=jnp.ones_like(st.steady))
    return _report(config, belief, fs, y, ds)


class StepFlags(NamedTuple):
    """What decides the cheapest exact step for an update (host booleans)."""

    steady: bool     # every draw's covariance has converged (all `filter.steady`; `OnlineInfo.steady`)
    settled: bool    # no draw has a diffuse part left (no `filter.diffuse`; `OnlineInfo.settled`)
    observed: bool   # no observation of the update is missing


def step_flags(belief: Belief, ys) -> StepFlags:
    """The flags of an update of `belief` by ys (one or a micro-batch), read from the belief (which
    waits for it). A stream can keep them from its earlier infos instead, as `OnlineFilter` does:
    steadiness only grows while every y is observed and a diffuse part only shrinks, so flags
    that lag by an update are still safe."""
    steady = bool(np.all(np.asarray(belief.filter.steady)))
    settled = not bool(np.any(np.asarray(belief.filter.diffuse)))
    return StepFlags(steady, settled, not bool(np.any(np.isnan(np.asarray(ys, dtype=float)))))


def phase_of_flags(flags: StepFlags) -> kalman.Phase:
    """The `kalman.Phase` of an update with these flags: the host-side reading of `kalman.phase_of`
    (DIFFUSE while a draw is diffuse; STEADY once every draw has converged and nothing is missing)."""
    if not flags.settled:
        return kalman.Phase.DIFFUSE
    return kalman.Phase.STEADY if flags.steady and flags.observed else kalman.Phase.STANDARD


def select_step(flags: StepFlags) -> Callable:
    """The cheapest step that is exact for an update with these flags, by its phase: `steady_step`
    (mean only), `standard_step` (no draw diffuse) or `step` (exact always). For a micro-batch,
    pass it to `step_many` as `one_step`."""
    return {kalman.Phase.DIFFUSE: step, kalman.Phase.STANDARD: standard_step,
            kalman.Phase.STEADY: steady_step}[phase_of_flags(flags)]


def step_many(config: OnlineConfig, bank: Bank, belief: Belief, ys, exog=None, n=None, one_step=None):
    """`step` over the first n observations of a micro-batch ys (time,) in one compiled loop.

    n (traced, default all) lets padded batches of one length share a trace; the info is
    stacked over the padded length (rows past n are zeros). one_step: `step` (default),
    `standard_step` (no draw diffuse: a large bank's loop carries P packed and returns it so)
    or `steady_step` (every y observed and the bank steady).
    """
    step_fn = step if one_step is None else one_step
    # the loop's carry keeps one form of P: dense for `step`; for a large bank's `standard_step`
    # packed rows (half the memory to move), stacked again at the end; as it comes for
    # `steady_step` (P unused)
    if step_fn is step:
        belief = belief._replace(filter=_dense(layout(config.spec), belief.filter))
    elif (step_fn is standard_step and not isinstance(belief.filter.cov, tuple)
          and (_use_packed(config, belief.log_weight.shape[0]) or _is_packed(belief.filter))):
        st = belief.filter
        rows = tuple(st.cov) if _is_packed(st) else kalman.pack(st.cov)
        belief, buf = step_many(config, bank, belief._replace(filter=st._replace(cov=rows)), ys, exog, n, one_step)
        return belief._replace(filter=belief.filter._replace(cov=jnp.stack(belief.filter.cov))), buf
    size = ys.shape[0]
    n = size if n is None else n
    info_shape = jax.eval_shape(lambda b, y, x: step_fn(config, bank, b, y, x)[1], belief, ys[0],
                                None if exog is None else exog[0])
    buf = jax.tree_util.tree_map(lambda s: jnp.zeros((size,) + s.shape, s.dtype), info_shape)

    def body(i, carry):
        b, buf = carry
        b, info = step_fn(config, bank, b, ys[i], None if exog is None else exog[i])
        return b, jax.tree_util.tree_map(lambda B, v: B.at[i].set(v), buf, info)

    return lax.fori_loop(0, n, body, (belief, buf))


def catch_up(config: OnlineConfig, bank: Bank, belief: Belief, ys, exog=None) -> Belief:
    """Consume a stretch of history ys (time,) in one batched filter pass (`kalman.run`, no reports).

    The log weights gain each draw's summed log-likelihood; the CUSUM is left as it is.
    exog: (time, k) for the same stretch. With config.catch_up_filter "parallel" (or "auto" on a
    GPU/TPU for long stretches, see `parallel.use_parallel`) the pass is the associative-scan
    filter (`parallel.run`, same results); it needs the dense covariance (sqrt=False).
    """
    from .. import parallel

    spec = config.spec
    lay = layout(spec)
    n_draws = bank.params.shape[0]
    ys = jnp.asarray(ys, dtype=jnp.float64)
    x = None if exog is None else jnp.asarray(exog, dtype=jnp.float64)
    Y = jnp.broadcast_to(ys[:, None], (ys.shape[0], n_draws))
    method = config.catch_up_filter
    if method not in ("standard", "parallel", "auto") or (method == "parallel" and config.sqrt):
        raise ValueError(f"catch_up_filter={method!r}: use 'standard', 'parallel' (not with sqrt=True) or 'auto'")
    scan = method == "parallel" or (method == "auto" and not config.sqrt
                                     and parallel.use_parallel(ys.shape[0], lay.n_states, n_draws))
    run = parallel.run if scan else partial(kalman.run, sqrt=config.sqrt)
    fs, ll = run(lay, batch_systems(spec, bank.params, x), Y, state=belief.filter)
    lw = belief.log_weight + jnp.sum(ll, axis=0)
    return belief._replace(filter=fs, log_weight=lw - jax.scipy.special.logsumexp(lw), t=belief.t + ys.shape[0])


class Prediction(NamedTuple):
    """The predictive of y_t from the predicted belief (a_t, P_t), per draw, before y_t is seen."""

    mean: jnp.ndarray          # (draw,) μ = z·a + d
    var: jnp.ndarray           # (draw,) F = z P z + H (finite part)
    design: jnp.ndarray        # (state, draw) z_t
    cov_design: jnp.ndarray    # (state, draw) P_t z_t = Cov(α_t, z·α_t)
    diffuse: jnp.ndarray       # (draw,) bool: z P∞ z > 0, the predictive is improper


def predict_step(config: OnlineConfig, bank: Bank, fs: kalman.FilterState, exog_t=None):
    """One step of every draw with y_t unobserved: (the filter state at t+1, the `Prediction` of y_t).

    The predict-only step of `forecast`, and of anything that runs the bank forward without
    conditioning on what it sees (a counterfactual: `engine.impact`). fs: dense P."""
    lay = layout(config.spec)
    z, d = _design(config.spec, bank, exog_t)
    nan = jnp.full(d.shape, jnp.nan, dtype=jnp.float64)   # strongly typed: the next state has the types of this one
    fs, si = kalman.step(lay, bank.system, fs, nan, d, z, sqrt=config.sqrt, keep=True)
    Pz = kalman.mat_vec(si.pred_cov, z)
    var = jnp.sum(z * Pz, axis=0) + bank.system.obs_var
    diffuse = jnp.einsum("ib,ijb,jb->b", z, si.pred_diffuse, z) > kalman.TOL_DIFFUSE
    return fs, Prediction(jnp.sum(z * si.pred_mean, axis=0) + d, var, z, Pz, diffuse)


def forecast(config: OnlineConfig, bank: Bank, belief: Belief, steps: int, exog_future=None) -> OnlineForecast:
    """h = 1..steps predictive of y from the belief: a run of predict-only steps, O(steps)."""
    lay = layout(config.spec)
    xs = jnp.zeros((steps, 0)) if exog_future is None else jnp.asarray(exog_future, dtype=jnp.float64)

    def body(fs, x_t):
        fs, pred = predict_step(config, bank, fs, None if exog_future is None else x_t)
        return fs, (pred.mean, jnp.where(pred.diffuse, jnp.inf, pred.var))

    _, (mu, var) = lax.scan(body, _dense(lay, belief.filter), xs)
    w = jnp.exp(belief.log_weight)
    finite = jnp.isfinite(var)
    var_f = jnp.where(finite, var, 1.0)
    mean, m2, _, _ = mixture_moments(w, mu, var_f)
    q = mixture_quantiles(w, mu, var_f, PROBS, config.quantile_iters)
    bad = ~jnp.all(finite, axis=-1)
    return OnlineForecast(mean, jnp.where(bad, jnp.inf, m2), jnp.where(bad[:, None], jnp.nan, q), mu, var, w)


# the stream's belief is donated: its (state, state, draw) buffers are updated in place, and on
_step_jit = jax.jit(step, static_argnums=0, donate_argnums=2)
_step_many_jit = jax.jit(step_many, static_argnums=0, donate_argnums=2)
_standard_step_jit = jax.jit(standard_step, static_argnums=0, donate_argnums=2)
_standard_step_many_jit = jax.jit(partial(step_many, one_step=standard_step), static_argnums=0, donate_argnums=2)
_steady_step_jit = jax.jit(steady_step, static_argnums=0, donate_argnums=2)
_steady_step_many_jit = jax.jit(partial(step_many, one_step=steady_step), static_argnums=0, donate_argnums=2)
_catch_up_jit = jax.jit(catch_up, static_argnums=0)
_forecast_jit = jax.jit(forecast, static_argnums=(0, 3))
_make_bank_jit = jax.jit(make_bank, static_argnums=0)
_init_jit = jax.jit(init, static_argnums=0)
# the compiled form of each step `select_step` picks, single and micro-batch (the stream's)
_compiled_step = {step: _step_jit, standard_step: _standard_step_jit, steady_step: _steady_step_jit}
_compiled_step_many = {step: _step_many_jit, standard_step: _standard_step_many_jit,
                       steady_step: _steady_step_many_jit}
