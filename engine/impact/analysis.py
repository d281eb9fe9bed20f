"""`causal_impact` (batch) and `OnlineImpact` (one post-period observation at a time).

Both are the same computation: fit the model on the pre-period (or take given draws), bring
each draw's Kalman belief to the intervention (`online.catch_up`), then run the counterfactual
kernel (`counterfactual.step`) over the post-period. The batch form feeds the whole post-period
to an `OnlineImpact` in one scan, so streaming it one observation at a time gives the same
result for the same draws.
"""

from __future__ import annotations

import datetime as _dt
import warnings
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.special
from jax.scipy.special import ndtr

from ..online import Bank, OnlineConfig, as_config, mixture_quantiles as _live_quantiles
from ..online.bank import _catch_up_jit, _init_jit, _make_bank_jit
from ..online.draws import posterior_draws
from ..posterior import _one_step_moments_jit, mixture_quantiles
from ..spec import as_spec
from ..system import check_exog, check_finite
from . import counterfactual as cfk
from .effects import ImpactResult, PrePeriodFit, build_result

METHODS = ("nuts", "map")


# -- the intervention ------------------------------------------------------------------------
def _is_time(v) -> bool:
    return isinstance(v, (str, _dt.date, np.datetime64, pd.Timestamp))


def _position(index: pd.Index, at, what: str, side: str) -> int:
    """The position in `index` of a point `at` (an integer position or a time)."""
    if isinstance(at, (int, np.integer)) and not isinstance(at, bool):
        return int(at)
    if _is_time(at):
        if not isinstance(index, pd.DatetimeIndex):
            raise ValueError(f"intervention: {what} {at!r} is a time, but the series has no time index; pass y as "
                             "a pandas Series indexed by time, or give the intervention as an integer position")
        stamp = pd.Timestamp(at)
        if index.tz is not None and stamp.tz is None:
            stamp = stamp.tz_localize(index.tz)
        return int(index.searchsorted(stamp, side=side))
    raise ValueError(f"intervention: {what} {at!r} is neither an integer position nor a time")


def split_at_intervention(index: pd.Index, intervention) -> tuple[int, int]:
    """(n_pre, n_end): the pre-period is [0, n_pre), the post-period [n_pre, n_end).

    intervention: the position of the first post-period observation; a time (the first
    observation at or after it); a `pandas.Period` (the post-period is that period); or a pair
    (start, end) of positions or times, both inclusive (observations after `end` are left out).
    """
    n = len(index)
    if isinstance(intervention, pd.Period):
        intervention = (intervention.start_time, intervention.end_time)
    if isinstance(intervention, (tuple, list)):
        if len(intervention) != 2:
            raise ValueError(f"intervention: a period is a pair (start, end), got {len(intervention)} values")
        start, end = intervention
        n_pre = _position(index, start, "start", "left")
        n_end = (_position(index, end, "end", "right") if _is_time(end) else _position(index, end, "end", "left") + 1)
    else:
        n_pre, n_end = _position(index, intervention, "the time", "left"), n
    if not 1 <= n_pre < n:
        raise ValueError(f"intervention: the post-period must start inside the series (position 1 to {n - 1}); "
                         f"{intervention!r} gives position {n_pre}")
    if not n_pre < n_end <= n:
        raise ValueError(f"intervention: the post-period's end must come after its start and within the series; "
                         f"{intervention!r} gives positions {n_pre} to {n_end - 1}")
    return n_pre, n_end


def _series(y, exog, spec) -> tuple[pd.Index, np.ndarray, np.ndarray | None]:
    """(index, y (time,), exog (time, k) or None), checked."""
    index = y.index if isinstance(y, pd.Series) else pd.RangeIndex(len(np.asarray(y)))
    values = np.asarray(getattr(y, "values", y), dtype=float)
    if values.ndim != 1:
        raise ValueError(f"y must be one series of shape (time,), got shape {values.shape}")
    check_finite(values, "y")
    x = check_exog(spec, exog, len(values))
    if x is not None:
        x = np.asarray(x, dtype=float)
        if len(x) != len(values):
            raise ValueError(f"exog has {len(x)} rows but y has {len(values)}; give one row per observation")
    return index, values, x


# -- live summaries ------------------------------------------------------------------------------
class ImpactStep(NamedTuple):
    """The comparison after one post-period observation (device arrays). Bands are central
    intervals at `level`, from the mixture's quantiles by Cornish–Fisher and Newton steps (the
    bank's live quantiles); `OnlineImpact.result` gives the exact ones."""

    t: jnp.ndarray                  # () post-period step (0-based)
    predicted: jnp.ndarray          # (3,) counterfactual ŷ_t: mean, lower, upper
    effect: jnp.ndarray             # (3,) y_t − ŷ_t (NaN if y_t missing)
    cumulative: jnp.ndarray         # (3,) cumulative effect so far
    average: jnp.ndarray            # (3,) average effect so far
    p_no_effect: jnp.ndarray        # () one-sided tail probability of the observed sum so far


def _live(level: float, log_weight, s: cfk.CounterfactualStep, t) -> ImpactStep:
    w = jnp.exp(log_weight)
    probs = ((1 - level) / 2, (1 + level) / 2)

    def band(mu, var):
        q = _live_quantiles(w, mu, var, probs, iters=3)
        return jnp.stack([jnp.sum(w * mu), q[0], q[1]])

    pred = band(s.draw_mean, s.draw_var)
    cum = band(s.cum_mean, s.cum_var)
    swap = jnp.array([0, 2, 1])   # x − (mean, lower, upper) = (x − mean, x − upper, x − lower)
    effect = s.y - pred[swap]
    cumulative = s.observed_sum - cum[swap]
    below = jnp.sum(w * ndtr((s.observed_sum - s.cum_mean) / jnp.sqrt(jnp.maximum(s.cum_var, 1e-300))))
    n = jnp.maximum(s.n_observed, 1)
    return ImpactStep(t, pred, effect, cumulative, cumulative / n, jnp.minimum(below, 1 - below))


_live_jit = jax.jit(_live, static_argnums=0)


@partial(jax.jit, static_argnums=(0, 1))
def _update_jit(config: OnlineConfig, level: float, bank: Bank, state: cfk.Counterfactual, y, x):
    """One post-period observation: the counterfactual step and its live summary in one program."""
    state, s = cfk.step(config, bank, state, y, x)
    return state, s, _live(level, state.log_weight, s, state.t - 1)


# -- the analysis --------------------------------------------------------------------------------
class OnlineImpact:
    """The counterfactual comparison updated one post-period observation at a time, with no refit.

    Start it at the intervention from posterior draws and the pre-period (or from a running
    `OnlineFilter`'s bank: `from_filter`); then each `update(y_t, x_t)` advances every draw's
    counterfactual by one predict step and adds the observation to the comparison. The cost
    per observation is one predict-only step per draw (O(state²) with the structured
    transition) plus O(state) for the cumulative moments, whatever the pre-period's length and
    however many post-period steps came before (see `counterfactual`): O(1) per observation,
    as the bank's own update. `result()` summarises what has been seen, exactly as
    `causal_impact` does for the same draws and data.
    """

    def __init__(self, config, posterior, y_pre, exog_pre=None, *, log_weight=None, level: float = 0.95,
                 index=None, method: str = "given", _bank: Bank | None = None, _belief=None):
        self.config = config = as_config(config)
        spec = config.spec
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {level}")
        self.level, self.method = float(level), method
        self._pre_index, y_pre, x_pre = _series(y_pre, exog_pre, spec)
        self._index = index
        if _bank is None:
            theta = posterior_draws(spec, posterior)
            self.bank = _make_bank_jit(spec, jnp.asarray(theta))
            belief = _init_jit(config, self.bank, None if log_weight is None else jnp.asarray(log_weight))
            start_weight = belief.log_weight
            belief = _catch_up_jit(config, self.bank, belief, jnp.asarray(y_pre),
                                   None if x_pre is None else jnp.asarray(x_pre))
            belief = belief._replace(log_weight=start_weight)   # the draws already condition on y_pre
        else:
            self.bank, belief = _bank, _belief
        self._state = cfk._init_jit(config, belief)
        self._y_pre, self._x_pre = y_pre, x_pre
        self._steps: list[cfk.CounterfactualStep] = []
        self._y_post: list[np.ndarray] = []

    @classmethod
    def from_filter(cls, online, level: float = 0.95, index=None) -> "OnlineImpact":
        """Start at the intervention from a running `OnlineFilter`: its draws, their weights and its
        belief now (nothing is re-filtered); its history is the pre-period."""
        y_pre, x_pre = online.history()
        return cls(online.config, None, y_pre, x_pre, level=level, index=index, method="stream",
                   _bank=online.bank, _belief=online.state)

    @property
    def spec(self):
        return self.config.spec

    @property
    def t(self) -> int:
        """Post-period observations consumed."""
        return sum(len(y) for y in self._y_post)

    @property
    def weights(self) -> np.ndarray:
        return np.exp(np.asarray(self._state.log_weight))

    def _exog(self, exog, n: int):
        if self.spec.regression is None:
            if exog is not None:
                raise ValueError("exog was given but the spec has no regression")
            return None
        x = check_exog(self.spec, None if exog is None else np.reshape(np.asarray(exog, dtype=float), (n, -1)), n)
        return np.asarray(x, dtype=float)[:n]

    def update(self, y, exog=None) -> ImpactStep:
        """Add one post-period observation y_t (NaN if missing) with its regressors x_t."""
        y = float(y)
        if np.isinf(y):
            raise ValueError("y is infinite; use NaN for a missing value")
        x = self._exog(exog, 1)
        state, s, live = _update_jit(self.config, self.level, self.bank, self._state, np.float64(y),
                                     None if x is None else x[0])
        if not self._steps:   # once, so that a stream need not wait for the device each step (`result` checks all)
            cfk.check_proper(s)
        self._state = state
        self._steps.append(s)   # one step's arrays (no time axis): stacked by `result`
        self._y_post.append(np.array([y]))
        return live

    def update_many(self, ys, exog=None) -> ImpactStep:
        """Add a stretch of post-period observations in one scan; returns the live summary after the last."""
        ys = np.asarray(getattr(ys, "values", ys), dtype=float).reshape(-1)
        check_finite(ys, "ys")
        if len(ys) == 0:
            raise ValueError("update_many needs at least one observation")
        x = self._exog(exog, len(ys))
        state, s = cfk._run_jit(self.config, self.bank, self._state, jnp.asarray(ys),
                                None if x is None else jnp.asarray(x))
        cfk.check_proper(s)
        self._state = state
        self._steps.append(s)
        self._y_post.append(ys)
        last = jax.tree_util.tree_map(lambda a: a[-1], s)
        return _live_jit(self.level, self._state.log_weight, last, self._state.t - 1)

    def result(self) -> ImpactResult:
        """The analysis of everything seen so far: exact bands, averages, sums, p and the report."""
        if not self._steps:
            raise ValueError("no post-period observation yet: call update first")
        # a step from `update` has no time axis, a stretch from `update_many` has one
        pieces = [jax.tree_util.tree_map(lambda a: np.asarray(a)[None] if single else np.asarray(a), s)
                  for s, single in ((s, np.ndim(s.y) == 0) for s in self._steps)]
        steps = jax.tree_util.tree_map(lambda *a: np.concatenate(a), *pieces)
        y_post = np.concatenate(self._y_post)
        y = np.concatenate([self._y_pre, y_post])
        index = self._index
        if index is None:
            index = (self._pre_index.append(pd.RangeIndex(len(self._pre_index), len(y)))
                     if isinstance(self._pre_index, pd.RangeIndex) else pd.RangeIndex(len(y)))
        index = pd.Index(index)[: len(y)]
        w = self.weights
        theta = np.asarray(self.bank.params)
        pre = pre_period_fit(self.spec, theta, w, self._y_pre, self._x_pre, self.level)
        return build_result(index, y, len(self._y_pre), pre, steps, w, theta, self.level, self.method)


def pre_period_fit(spec, theta: np.ndarray, weights: np.ndarray, y_pre: np.ndarray, x_pre, level: float
                   ) -> PrePeriodFit:
    """One-step-ahead predictive of the pre-period over the draws: mean, central band and PIT."""
    mean_d, var_d = (np.asarray(a) for a in _one_step_moments_jit(as_spec(spec), jnp.asarray(theta),
                                                                 jnp.asarray(y_pre),
                                                                 None if x_pre is None else jnp.asarray(x_pre)))
    w = np.asarray(weights) / np.sum(weights)
    n = len(y_pre)
    mean, lower, upper, pit = (np.full(n, np.nan) for _ in range(4))
    ok = ~np.isnan(mean_d).any(axis=0)
    if ok.any():
        mean[ok] = w @ mean_d[:, ok]
        lower[ok], upper[ok] = mixture_quantiles(mean_d[:, ok], var_d[:, ok], [(1 - level) / 2, (1 + level) / 2],
                                                 weights=w)
        seen = ok & np.isfinite(y_pre)
        pit[seen] = w @ scipy.special.ndtr((y_pre[seen] - mean_d[:, seen]) / np.sqrt(var_d[:, seen]))
    return PrePeriodFit(mean, lower, upper, pit)


def fit_pre_period(spec, y_pre, x_pre, method: str, *, draws: int, chains: int, warmup: int, seed: int,
                   priors=None):
    """Posterior draws (draw, param) of the model on the pre-period: NUTS, or MAP with its Laplace draws."""
    from ..bayes import fit_map, fit_nuts

    if method == "nuts":
        idata = fit_nuts(spec, y_pre, x_pre, chains=chains, warmup=warmup, draws=draws, seed=seed, priors=priors)
        return posterior_draws(spec, idata), idata
    if method == "map":
        mode = fit_map(spec, y_pre, x_pre, priors=priors)
        if not mode.converged:   # often a line search that cannot improve at the optimum: flagged, not fatal
            warnings.warn(f"the MAP fit of the pre-period stopped without the optimiser's convergence test "
                          f"({mode.message.strip() or 'no message'}); its Laplace draws may be off. Check the fit, "
                          "or use method='nuts'", RuntimeWarning, stacklevel=3)
        return posterior_draws(spec, mode.laplace_draws(draws, seed)), mode
    raise ValueError(f"method={method!r} is not known; use one of {METHODS}")


def causal_impact(spec, y, exog=None, *, intervention, method: str = "nuts", posterior=None, draws: int = 1000,
                  chains: int = 4, warmup: int = 1000, priors=None, level: float = 0.95, seed: int = 0,
                  config: OnlineConfig | None = None, check_regressors: bool = True) -> ImpactResult:
    """The effect of an intervention on y: fit on the pre-period, predict the post-period without it.

    y: (time,), a pandas Series for time-based interventions; exog: the control series
    (time, k) or a DataFrame with the spec's regression columns, their post-period values
    included (they are given, not predicted). intervention: see `split_at_intervention` (a
    position, a time, a pandas Period or a (start, end) pair).

    method "nuts" (`fit_nuts`: `chains` × `draws` after `warmup`) or "map" (`fit_map` and
    `draws` draws of its Laplace approximation, for speed); `posterior` (an InferenceData, a dict
    of draws, an array (draw, param) or one parameter set) skips the fit. The counterfactual over
    the post-period mixes parameter uncertainty (the draws) with state and observation
    uncertainty (each draw's exact Gaussian predictive, joint over the post-period: see
    `engine.impact.counterfactual`). Returns an `ImpactResult`: `.average`, `.cumulative`,
    `.relative` (each mean/lower/upper/sd), `.p_no_effect`, `.summary()`, `.table()`, `.plot()`.

    check_regressors: analyse each control series at the same intervention (`checks.regressor_check`,
    one MAP fit each) and warn (`RegressorBreakWarning`) when one looks affected; the check is kept
    in `.regressors` and the report mentions it.
    """
    spec = as_spec(spec)
    config = as_config(spec if config is None else config)
    index, values, x = _series(y, exog, spec)
    n_pre, n_end = split_at_intervention(index, intervention)
    y_pre, x_pre = values[:n_pre], None if x is None else x[:n_pre]
    if posterior is None:
        theta, fit = fit_pre_period(spec, y_pre, x_pre, method, draws=draws, chains=chains, warmup=warmup, seed=seed,
                                    priors=priors)
        if method == "map" and not fit.converged:
            method = "map, not converged"
    else:
        theta, method = posterior_draws(spec, posterior), "given"
    monitor = OnlineImpact(config, theta, y_pre, x_pre, level=level, index=index[:n_end], method=method)
    monitor.update_many(values[n_pre:n_end], None if x is None else x[n_pre:n_end])
    result = monitor.result()
    if check_regressors and x is not None:
        from .checks import regressor_check

        frame = pd.DataFrame(x[:n_end], index=index[:n_end], columns=list(spec.exog_columns))
        result = result._replace(regressors=regressor_check(frame, intervention=(n_pre, n_end - 1), level=level,
                                                            seed=seed))
    return result
