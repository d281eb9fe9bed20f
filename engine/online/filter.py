"""`OnlineFilter`: the stateful wrapper over the bank kernel that a stream uses.

It keeps the history, takes the compiled fast path `select_step` picks for each update (from
the previous update's flags, so that it never waits for the device), and hands rejuvenation to
a `Rejuvenator` (`engine.rejuvenation`), swapping each moved bank in at the next update.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..domains import check_params
from ..model import as_param_vector
from ..rejuvenation import Closed, MoveInput, RejuvenationConfig, Rejuvenator
from ..system import check_exog, check_finite, layout
from .bank import (OnlineForecast, StepFlags, _catch_up_jit, _compiled_step, _compiled_step_many, _forecast_jit,
                   _init_jit, _make_bank_jit, select_step, standard_step)
from .covariance import _dense_jit, _is_packed, _packed_jit, _use_packed
from .draws import fit_priors, posterior_draws
from .history import _advance, _catch_up_pieces, _History, _padded
from .report import OnlineInfo
from .state import Bank, Belief, as_config

# a moved bank keeps up with the stream on its own thread until at most this many observations
# are left for the swap
SWAP_BACKLOG = 16


def _refuse_non_numbers(values) -> None:
    """TypeError unless every observation is a real number or None (missing, as NaN): numpy would
    read '1100' or True as a number."""
    kind = np.asarray(values).dtype.kind
    if kind in "fiu":
        return
    if kind == "O" and all(v is None or isinstance(v, (int, float, np.integer, np.floating))
                           and not isinstance(v, (bool, np.bool_)) for v in np.asarray(values, dtype=object).reshape(-1)):
        return
    raise TypeError(f"observations must be numbers (NaN for missing), got {_shown(values)}")


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_one(y) -> None:
    """Refuse anything but one observation (a number, NaN or None for missing) for `update`."""
    _refuse_non_numbers(y)
    if np.size(y) != 1:
        raise ValueError(f"update takes one observation (a number, NaN for missing), got {_shown(y)} of shape "
                         f"{np.shape(y)}; pass several with update_many")

@partial(jax.jit, static_argnums=1)
def _first_steps(info: OnlineInfo, n: int) -> OnlineInfo:
    """The first n steps of a padded micro-batch's info (time-leading arrays), in one program per
    (bucket, n): slicing each field eagerly compiled one small program per field for every new
    batch length."""
    return jax.tree_util.tree_map(lambda a: a[:n], info)


class OnlineFilter:
    """A posterior bank of Kalman filters updated one observation at a time.

    `update` / `update_many` never re-filter the history. config: the step's `OnlineConfig`, or
    a model spec for the default settings. When the effective sample size falls below
    `ess_threshold`·S (or the CUSUM signals drift, with `refit_on_drift`; see
    `RejuvenationConfig`), a background thread resamples and moves the draws with MCMC on the
    full-data posterior; the stream keeps using the old bank meanwhile and the new one is
    swapped in at the next update, after catching up on what arrived during the move. Each
    event goes to `events` and `on_event`.

    `params` are draws from the prior (or any weighted set): catching up on `y_history`
    weights each by its likelihood, as sequential importance sampling does. Posterior draws
    given that history go through `from_posterior` (or `weigh_history=False`), which keeps
    their weights. `belief` (with its `y_history`) resumes a belief kept from earlier.

    One thread at a time: `update` donates the belief's buffers, so reads (`state`, `ess`,
    `forecast`, `rejuvenate`) from another thread must hold the same lock as the updates (as the
    app's stream does). `close` ends the background work.
    """

    def __init__(self, config, params, *, rejuvenation: RejuvenationConfig | None = None, y_history=None,
                 exog_history=None, log_weight=None, belief: Belief | None = None, weigh_history: bool = True,
                 on_event: Callable[[dict], None] | None = None):
        self.config = config = as_config(config)
        spec = config.spec
        params = np.atleast_2d(np.asarray(as_param_vector(spec, params), dtype=float))
        check_params(spec, params, name="the bank's draws", rows="draw")
        self.bank: Bank = _make_bank_jit(spec, jnp.asarray(params))
        y_hist = np.zeros(0) if y_history is None else np.asarray(getattr(y_history, "values", y_history), float)
        if y_hist.ndim != 1:
            raise ValueError(f"y_history must be one series of shape (time,), got shape {y_hist.shape}")
        check_finite(y_hist, "y_history")
        x_hist = None
        if spec.regression is not None and len(y_hist):
            x_hist = np.asarray(check_exog(spec, exog_history, len(y_hist)), dtype=float)[: len(y_hist)]
        self._history = _History(spec.k_exog, y_hist, x_hist)
        if belief is None:
            belief = _init_jit(config, self.bank, None if log_weight is None else jnp.asarray(log_weight))
            if len(y_hist):
                start_weight = belief.log_weight
                belief = _catch_up_jit(config, self.bank, belief, jnp.asarray(y_hist),
                                       None if x_hist is None else jnp.asarray(x_hist))
                if not weigh_history:   # the draws already condition on the history
                    belief = belief._replace(log_weight=start_weight)
        elif int(belief.t) != len(y_hist):
            raise ValueError(f"the belief has consumed {int(belief.t)} observations but the history has {len(y_hist)}")
        self._belief = belief
        self.rejuvenator = Rejuvenator(RejuvenationConfig() if rejuvenation is None else rejuvenation, self._emit,
                                       lambda: self._history.n)
        self.on_event = on_event
        self.events: list[dict] = []
        self.bank_version = 0
        self._last_info: tuple[OnlineInfo, int | None] | None = None   # the last update's info, read at the next
        # the flags `select_step` reads, from the infos of earlier updates (no wait for the device)
        self._steady = False   # every draw's covariance has converged: the O(state·draw) path applies
        self._settled = not bool(np.any(np.asarray(belief.filter.diffuse)))  # no draw diffuse: no branch needed

    @classmethod
    def from_posterior(cls, config, posterior, y_history=None, exog_history=None, *,
                       rejuvenation: RejuvenationConfig | None = None, weigh_history: bool = False,
                       **kwargs) -> "OnlineFilter":
        """Bank from an InferenceData / dict of draws / single parameter set, caught up on the history.

        The draws come from p(θ | y_history), so catching up does not re-weight them (that would
        count the history twice); pass `weigh_history=True` for draws from the prior instead.
        An InferenceData from `fit_nuts` also gives its priors (`fit_priors`), which the default
        rejuvenation move then targets unless `rejuvenation.priors` says otherwise: the defaults
        scale with the data, so without them the move's prior would drift as the history grows.
        kwargs: the constructor's (`belief`, `log_weight`, `on_event`).
        """
        config = as_config(config)
        rejuvenation = RejuvenationConfig() if rejuvenation is None else rejuvenation
        if rejuvenation.priors is None:
            rejuvenation = rejuvenation._replace(priors=fit_priors(posterior))
        return cls(config, posterior_draws(config.spec, posterior), rejuvenation=rejuvenation, y_history=y_history,
                   exog_history=exog_history, weigh_history=weigh_history, **kwargs)

    # -- read-only views -----------------------------------------------------------------
    @property
    def spec(self):
        return self.config.spec

    @property
    def state(self) -> Belief:
        """The current belief, P dense. Its arrays may be reused by the next update (copy what you keep).

        A large bank holds P packed between updates (see `_standard_update`); this unpacks it."""
        b = self._belief
        return b._replace(filter=_dense_jit(layout(self.spec), b.filter)) if _is_packed(b.filter) else b

    @property
    def params(self) -> np.ndarray:
        return np.asarray(self.bank.params)

    @property
    def weights(self) -> np.ndarray:
        return np.exp(np.asarray(self._belief.log_weight))

    @property
    def ess(self) -> float:
        w = self.weights
        return float(1.0 / np.sum(w * w))

    @property
    def t(self) -> int:
        return self._history.n

    @property
    def n_draws(self) -> int:
        return int(self.bank.params.shape[0])

    def history(self):
        """(y (time,), exog (time, k) or None): everything consumed so far."""
        return self._history.view()

    # -- updates -------------------------------------------------------------------------
    def _exog_rows(self, exog, n: int):
        if self.spec.regression is None:
            if exog is not None:
                raise ValueError("exog was given but the spec has no regression")
            return None
        if exog is None:
            raise ValueError(f"the model regresses on {list(self.spec.exog_columns)}: pass exog for each observation")
        x = np.asarray(exog, dtype=float).reshape(n, self.spec.k_exog)
        check_finite(x, "exog", regressors=True, dims=("observation", "column"),
                     labels={"column": list(self.spec.exog_columns)})
        return x

    def check_input(self, ys, exog=None) -> tuple[np.ndarray, np.ndarray | None]:
        """Validated (ys (time,), exog (time, k) or None) for an update; raises naming what is wrong."""
        _refuse_non_numbers(ys)
        try:
            arr = np.asarray(ys, dtype=float)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"observations must be numbers (NaN for missing): {exc}") from None
        if arr.size != max(arr.shape, default=1):   # (time, 1 + k) would be read as (1 + k)·time values
            raise ValueError(f"observations must be one series of shape (time,), got shape {arr.shape}; "
                             "pass regressors as exog")
        ys = arr.reshape(-1)
        if len(ys) == 0:
            raise ValueError("an update needs at least one observation")
        check_finite(ys, "the batch", dims=("observation",))
        return ys, self._exog_rows(exog, len(ys))

    def update(self, y, exog=None) -> OnlineInfo:
        """Consume one observation (NaN: predict only). Returns its `OnlineInfo` (device arrays)."""
        check_one(y)
        ys, x = self.check_input([y], None if exog is None else [exog])
        y = float(ys[0])
        self._swap_in_moved_bank()
        fn = self._step_for(not np.isnan(y), many=False)
        # host values go in as NumPy: an eager jnp.asarray would be a computation of its own
        # that the step waits for (about 0.07 ms of a 0.25 ms update at S = 1)
        self._belief, info = fn(self.config, self.bank, self._belief, np.float64(y),
                                None if x is None else np.asarray(x[0], dtype=np.float64))
        self._history.extend(np.array([y]), x)   # only once the step has succeeded: history and belief agree
        self._after_update(info, None, observed=not np.isnan(y))
        return info

    def update_many(self, ys, exog=None) -> OnlineInfo:
        """Consume a micro-batch in one call (one `lax.scan`); the info is stacked over time."""
        ys, x = self.check_input(ys, exog)
        n = len(ys)
        self._swap_in_moved_bank()
        y_pad, x_pad, n_valid = _padded(ys, x)
        observed = not np.isnan(ys).any()
        fn = self._step_for(observed, many=True)
        self._belief, info = fn(self.config, self.bank, self._belief, y_pad, x_pad, n_valid)
        self._history.extend(ys, x)
        if len(y_pad) > n:
            info = _first_steps(info, n)
        self._after_update(info, n - 1, observed)
        return info

    def _step_for(self, observed: bool, many: bool = False):
        """The compiled step (`many`: micro-batch loop) of the one `select_step` picks for the next
        update, from the lagged flags. A large bank's P is packed before its first standard step,
        the form those keep."""
        one_step = select_step(StepFlags(self._steady, self._settled, observed))
        if (one_step is standard_step and _use_packed(self.config, self.n_draws)
                and not _is_packed(self._belief.filter)):
            self._belief = self._belief._replace(filter=_packed_jit(self._belief.filter))
        return (_compiled_step_many if many else _compiled_step)[one_step]

    def forecast(self, steps: int, exog_future=None) -> OnlineForecast:
        """Predictive of y for the next `steps` observations, mixed over the draws (O(steps))."""
        steps = int(steps)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        xf = None
        if self.spec.regression is not None:
            if exog_future is None:
                raise ValueError(f"forecasting a regression model needs exog_future with columns "
                                 f"{list(self.spec.exog_columns)} for the {steps} future steps")
            xf = jnp.asarray(check_exog(self.spec, exog_future, steps))[:steps]
        return _forecast_jit(self.config, self.bank, self._belief, steps, xf)

    # -- rejuvenation --------------------------------------------------------------------
    def _emit(self, event: dict):
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)

    def _swap_in_moved_bank(self):
        """Swap in a finished rejuvenated bank (caught up on what arrived during the move)."""
        moved = self.rejuvenator.take()
        if moved is None:
            return
        (bank, belief), event = moved
        n_now = self._history.n
        t_bank = int(belief.t)
        if t_bank < n_now:
            belief = _advance(self.config, bank, belief, *self._history.view(t_bank, n_now))
        belief = belief._replace(cusum=self._belief.cusum)
        self.bank, self._belief = bank, belief
        self._steady, self._last_info = False, None
        self._settled = not bool(np.any(np.asarray(belief.filter.diffuse)))
        self.bank_version += 1
        event = dict(event, kind="rejuvenation_done", t_swap=n_now, caught_up=n_now - event["t_start"],
                     ess_after=self.ess, duration_s=time.perf_counter() - event.pop("_t0"))
        self._emit(event)

    def _after_update(self, info: OnlineInfo, last, observed: bool):
        """Read the previous step's info (finished by now: no stall) for the steady flag and the
        ESS; start a background move when the rejuvenator says one is due."""
        prev, self._last_info = self._last_info, (info, last)
        if not observed:          # a predict-only step moves P off its fixed point
            self._steady = False
        if prev is None:
            return
        pinfo, plast = prev
        row = () if plast is None else plast
        # steadiness only grows while every y is observed, and a diffuse part only shrinks, so
        # the lagged flags are safe
        # np.asarray per array: jax.device_get of a tuple costs ~40 µs even once they are on the host
        steady, settled, ess = (np.asarray(a)[row] for a in (pinfo.steady, pinfo.settled, pinfo.ess))
        self._steady = observed and bool(steady)
        self._settled = self._settled or bool(settled)
        reason = self.rejuvenator.due(float(ess), self.n_draws, pinfo.drift)
        if reason is not None:
            self.rejuvenate(reason=reason)

    @property
    def rejuvenating(self) -> bool:
        return self.rejuvenator.running

    def rejuvenate(self, reason: str = "requested", background: bool = True) -> bool:
        """Resample and move the draws on the full-data posterior; returns False if not possible now
        (a move is running, or the filter is closed)."""
        return self.rejuvenator.start(reason, self._move_input, self._rebuild, background)

    def _move_input(self) -> MoveInput:
        y, x = self._history.view()
        # host copies: the stream donates its buffers
        return MoveInput(self.spec, y, x, np.array(self.bank.params), np.array(self._belief.log_weight), self.ess)

    def _rebuild(self, start: MoveInput, params, closing) -> tuple[Bank, Belief]:
        """The bank of the moved draws `params`, caught up on the move's history with equal
        weights, then kept up with the stream so that the swap itself has little left to do.
        Runs on the move's thread; raises `Closed` once `closing` is set."""
        bank = _make_bank_jit(self.spec, params)
        belief = _init_jit(self.config, bank, None)
        if len(start.y):
            belief = _catch_up_pieces(self.config, bank, belief, start.y, start.exog, closing)
            belief = belief._replace(log_weight=jnp.full(bank.params.shape[0], -jnp.log(bank.params.shape[0])))
        while True:
            if closing.is_set():
                raise Closed
            n_now = self._history.n
            if n_now - int(belief.t) <= SWAP_BACKLOG:
                break
            belief = _advance(self.config, bank, belief, *self._history.view(int(belief.t), n_now))
        jax.block_until_ready(belief)
        return bank, belief

    def close(self, timeout: float | None = 10.0) -> bool:
        """Stop background work: no new moves, and the filter keeps its bank (a finished move is
        not swapped in; one in flight gives up at its next catch-up piece, after its MCMC step).
        Updates still work. True when no move thread is left after `timeout` seconds."""
        return self.rejuvenator.close(timeout)

    def wait_for_rejuvenation(self, timeout: float | None = None) -> bool:
        """Block until a running move has finished (its bank is swapped in at the next update)."""
        return self.rejuvenator.wait(timeout)

    def apply_pending(self):
        """Swap in a finished move now (otherwise it happens at the next update)."""
        self._swap_in_moved_bank()
