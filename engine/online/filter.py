"""`OnlineFilter`: the stateful wrapper over the bank kernel that a stream uses.

It keeps the history, picks the compiled fast path for each update, runs the background
rejuvenation (see `engine.rejuvenation`) and swaps the new bank in.
"""

from __future__ import annotations

import threading
import time
from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..model import as_param_vector
from ..spec import as_spec
from ..system import check_exog, layout
from .bank import (OnlineForecast, _catch_up_jit, _forecast_jit, _init_jit, _make_bank_jit, _standard_step_jit,
                   _standard_step_many_jit, _steady_step_jit, _steady_step_many_jit, _step_jit, _step_many_jit)
from .covariance import _dense_jit, _is_packed, _packed_jit, _use_packed
from .draws import fit_priors, posterior_draws
from .history import _advance, _catch_up_pieces, _Closed, _History, _padded
from .report import OnlineInfo
from .state import Belief, OnlineConfig

# observations before an automatic move is tried again after one failed (doubling with each failure)
RETRY_AFTER = 16


class OnlineFilter:
    """A posterior bank of Kalman filters updated one observation at a time.

    `update` / `update_many` never re-filter the history. When the effective sample size falls
    below `ess_threshold`·S (or the CUSUM signals drift, with `refit_on_drift`), a background
    thread resamples and moves the draws with MCMC on the full-data posterior; the stream keeps
    using the old bank meanwhile and the new one is swapped in at the next update, after
    catching up on what arrived during the move. Each event goes to `events` and `on_event`.
    After a failed move, automatic ones wait `RETRY_AFTER` observations (doubling with each
    failure in a row) instead of starting again at every update.

    `params` are draws from the prior (or any weighted set): catching up on `y_history`
    weights each by its likelihood, as sequential importance sampling does. Posterior draws
    given that history go through `from_posterior` (or `weigh_history=False`), which keeps
    their weights.

    One thread at a time: `update` donates the belief's buffers, so reads (`state`, `ess`,
    `forecast`, `rejuvenate`) from another thread must hold the same lock as the updates (as the
    app's stream does). `close` ends the background work.
    """

    def __init__(self, spec, params, *, y_history=None, exog_history=None, log_weight=None,
                 belief: Belief | None = None, sqrt: bool = False, quantile_iters: int = 1,
                 component_quantile_iters: int = 0, anomaly_z: float = 3.5, cusum_k: float = 0.5,
                 cusum_h: float = 5.0,
                 ess_threshold: float = 0.5, rejuvenate: bool = True, refit_on_drift: bool = False,
                 log_posterior: Callable | None = None, priors=None, move_steps: int = 10,
                 seed: int = 0, on_event: Callable[[dict], None] | None = None, weigh_history: bool = True):
        spec = as_spec(spec)
        self.spec = spec
        self.config = OnlineConfig(spec, bool(sqrt), int(quantile_iters), float(anomaly_z),
                                   float(cusum_k), float(cusum_h), int(component_quantile_iters))
        params = np.atleast_2d(np.asarray(as_param_vector(spec, params), dtype=float))
        self.bank = _make_bank_jit(spec, jnp.asarray(params))
        y_hist = np.zeros(0) if y_history is None else np.asarray(getattr(y_history, "values", y_history), float)
        if y_hist.ndim != 1:
            raise ValueError(f"y_history must be one series of shape (time,), got shape {y_hist.shape}")
        if np.isinf(y_hist).any():
            raise ValueError(f"y_history has an infinite value at index {int(np.flatnonzero(np.isinf(y_hist))[0])}; "
                             "use NaN for missing values")
        x_hist = None
        if spec.regression is not None and len(y_hist):
            x_hist = np.asarray(check_exog(spec, exog_history, len(y_hist)), dtype=float)[: len(y_hist)]
        self._history = _History(spec.k_exog, y_hist, x_hist)
        if belief is None:
            belief = _init_jit(self.config, self.bank, None if log_weight is None else jnp.asarray(log_weight))
            if len(y_hist):
                start_weight = belief.log_weight
                belief = _catch_up_jit(self.config, self.bank, belief, jnp.asarray(y_hist),
                                       None if x_hist is None else jnp.asarray(x_hist))
                if not weigh_history:   # the draws already condition on the history
                    belief = belief._replace(log_weight=start_weight)
        elif int(belief.t) != len(y_hist):
            raise ValueError(f"the belief has consumed {int(belief.t)} observations but the history has {len(y_hist)}")
        self._belief = belief
        self.ess_threshold = float(ess_threshold)
        self.rejuvenate_enabled = bool(rejuvenate)
        self.refit_on_drift = bool(refit_on_drift)
        self.move_steps = int(move_steps)
        self.priors = priors
        self._log_posterior = log_posterior
        self._key = jax.random.PRNGKey(seed)
        self.on_event = on_event
        self.events: list[dict] = []
        self.bank_version = 0
        self._lock = threading.Lock()
        self._move: threading.Thread | None = None
        self._pending = None
        self._last_info: OnlineInfo | None = None
        self._steady = False   # every draw's covariance has converged: the O(state·draw) path applies
        self._settled = not bool(np.any(np.asarray(belief.filter.diffuse)))  # no draw diffuse: no branch needed
        self._unavailable_reported = False
        self._failures = 0        # failed moves in a row; automatic moves back off after each
        self._retry_at = 0        # no automatic move before this many observations
        self._closing = threading.Event()   # `close`: a move in flight gives up at its next piece

    @classmethod
    def from_posterior(cls, spec, posterior, y_history=None, exog_history=None, **kwargs) -> "OnlineFilter":
        """Bank from an InferenceData / dict of draws / single parameter set, caught up on the history.

        The draws come from p(θ | y_history), so catching up does not re-weight them (that would
        count the history twice); pass `weigh_history=True` for draws from the prior instead.
        An InferenceData from `fit_nuts` also gives its priors (`fit_priors`), which the default
        rejuvenation move then targets: the defaults scale with the data, so without them the
        move's prior would drift as the history grows.
        """
        kwargs.setdefault("weigh_history", False)
        if kwargs.get("priors") is None:
            kwargs["priors"] = fit_priors(posterior)
        return cls(spec, posterior_draws(spec, posterior), y_history=y_history, exog_history=exog_history,
                   **kwargs)

    # -- read-only views -----------------------------------------------------------------
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

    def settings(self) -> dict:
        """The constructor's settings (beyond spec, draws and history) that rebuild this filter's
        behaviour: what a snapshot keeps (`engine.persist`)."""
        c = self.config
        return {"sqrt": c.sqrt, "quantile_iters": c.quantile_iters,
                "component_quantile_iters": c.component_quantile_iters, "anomaly_z": c.anomaly_z, "cusum_k": c.cusum_k, "cusum_h": c.cusum_h,
                "ess_threshold": self.ess_threshold, "rejuvenate": self.rejuvenate_enabled,
                "refit_on_drift": self.refit_on_drift, "move_steps": self.move_steps}

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
        if not np.all(np.isfinite(x)):
            raise ValueError("exog must be finite (NaN/inf found)")
        return x

    def check_input(self, ys, exog=None) -> tuple[np.ndarray, np.ndarray | None]:
        """Validated (ys (time,), exog (time, k) or None) for an update; raises naming what is wrong."""
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
        if np.isinf(ys).any():
            raise ValueError(f"observation {int(np.flatnonzero(np.isinf(ys))[0])} of the batch is infinite; "
                             "use NaN for a missing value")
        return ys, self._exog_rows(exog, len(ys))

    def update(self, y, exog=None) -> OnlineInfo:
        """Consume one observation (NaN: predict only). Returns its `OnlineInfo` (device arrays)."""
        ys, x = self.check_input([y], None if exog is None else [exog])
        y = float(ys[0])
        self._before_update()
        fn = self._step_for(not np.isnan(y), _steady_step_jit, _standard_step_jit, _step_jit)
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
        self._before_update()
        y_pad, x_pad, n_valid = _padded(ys, x)
        observed = not np.isnan(ys).any()
        fn = self._step_for(observed, _steady_step_many_jit, _standard_step_many_jit, _step_many_jit)
        self._belief, info = fn(self.config, self.bank, self._belief, y_pad, x_pad, n_valid)
        self._history.extend(ys, x)
        if len(y_pad) > n:
            info = jax.tree_util.tree_map(lambda a: a[:n], info)
        self._after_update(info, n - 1, observed)
        return info

    def _step_for(self, observed: bool, steady, standard, general):
        """The compiled step for the next update: `steady` once every draw has converged and
        the update has no missing value, `standard` once no draw is diffuse, else `general`.
        A large bank's P is packed before its first standard step, the form those keep."""
        if self._steady and observed:
            return steady
        if not self._settled:
            return general
        if _use_packed(self.config, self.n_draws) and not _is_packed(self._belief.filter):
            self._belief = self._belief._replace(filter=_packed_jit(self._belief.filter))
        return standard

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

    def _before_update(self):
        """Swap in a finished rejuvenated bank (caught up on what arrived during the move)."""
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return
        if isinstance(pending, BaseException):   # reported by the move, which also set the back-off
            return
        self._failures = 0
        bank, belief, event = pending
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
        ESS; trigger a background move on low ESS or drift."""
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
        if not self.rejuvenate_enabled or self.rejuvenating or self._history.n < self._retry_at:
            return
        low = float(ess) < self.ess_threshold * self.n_draws
        drift = self.refit_on_drift and bool(np.any(np.asarray(pinfo.drift)))
        if low or drift:
            self.rejuvenate(reason="low_ess" if low else "drift")

    @property
    def rejuvenating(self) -> bool:
        return self._move is not None and self._move.is_alive()

    def _log_posterior_factory(self):
        if self._log_posterior is not None:
            return self._log_posterior
        from .. import bayes  # the full-data posterior of the fit
        return getattr(bayes, "log_posterior", None)

    def rejuvenate(self, reason: str = "requested", background: bool = True) -> bool:
        """Resample and move the draws on the full-data posterior; returns False if not possible now
        (a move is running, or the filter is closed)."""
        if self.rejuvenating or self._closing.is_set():
            return False
        try:
            factory = self._log_posterior_factory()
        except ImportError:
            factory = None
        if factory is None:
            if not self._unavailable_reported:
                self._unavailable_reported = True
                self._emit({"kind": "rejuvenation_unavailable", "t": self.t,
                            "reason": "no full-data log posterior (engine.bayes.log_posterior) available"})
            return False
        from ..rejuvenation import resample_move
        t0 = self.t
        y, x = self._history.view()
        params = np.array(self.bank.params)        # host copies: the stream donates its buffers
        log_weight = np.array(self._belief.log_weight)
        self._key, key = jax.random.split(self._key)
        ess_before = self.ess
        event = {"kind": "rejuvenation_start", "reason": reason, "t_start": t0, "ess_before": ess_before}
        self._emit(dict(event))
        event["_t0"] = time.perf_counter()

        def work():
            try:
                if self._log_posterior is None:   # the fit's posterior: compiled once per history bucket
                    from ..bayes import move_on_posterior
                    new_params, move_info = move_on_posterior(key, self.spec, y, x, self.priors, params,
                                                              log_weight, self.move_steps)
                else:
                    logp, to_unc, to_con = factory(self.spec, jnp.asarray(y),
                                                   None if x is None else jnp.asarray(x), self.priors)
                    move = jax.jit(partial(resample_move, logp=logp, to_unconstrained=to_unc,
                                           to_constrained=to_con, n_steps=self.move_steps))
                    new_params, move_info = move(key, params=params, log_weight=log_weight)
                bank = _make_bank_jit(self.spec, new_params)
                belief = _init_jit(self.config, bank, None)
                if t0:
                    belief = _catch_up_pieces(self.config, bank, belief, y, x, self._closing)
                    belief = belief._replace(log_weight=jnp.full(bank.params.shape[0], -jnp.log(bank.params.shape[0])))
                # keep up with the stream while it runs, so the swap itself has little left to do
                while True:
                    if self._closing.is_set():
                        raise _Closed
                    n_now = self._history.n
                    if n_now - int(belief.t) <= 16:
                        break
                    belief = _advance(self.config, bank, belief, *self._history.view(int(belief.t), n_now))
                jax.block_until_ready(belief)
                done = dict(event, acceptance=float(move_info.acceptance),
                            unique_draws=int(move_info.unique_draws))
                with self._lock:
                    if self._closing.is_set():
                        return
                    self._pending = (bank, belief, done)
            except _Closed:   # nobody is left to use the new bank
                return
            except BaseException as exc:  # surfaced as an event, never silent
                with self._lock:   # back off before the stream's next look at the ESS
                    self._pending = exc
                    self._failures += 1
                    self._retry_at = self._history.n + RETRY_AFTER * 2 ** (self._failures - 1)
                    failures, retry_at = self._failures, self._retry_at
                self._emit({"kind": "rejuvenation_failed", "t_start": t0, "error": repr(exc), "failures": failures,
                            "retry_at": retry_at})

        self._move = threading.Thread(target=work, name="rejuvenation", daemon=True)
        self._move.start()
        if not background:
            self._move.join()
        return True

    def close(self, timeout: float | None = 10.0) -> bool:
        """Stop background work: no new moves, and the filter keeps its bank (a finished move is
        not swapped in; one in flight gives up at its next catch-up piece, after its MCMC step).
        Updates still work. True when no move thread is left after `timeout` seconds."""
        self._closing.set()
        with self._lock:
            self._pending = None
        return self.wait_for_rejuvenation(timeout)

    def wait_for_rejuvenation(self, timeout: float | None = None) -> bool:
        """Block until a running move has finished (its bank is swapped in at the next update)."""
        if self._move is not None:
            self._move.join(timeout)
        return not self.rejuvenating

    def apply_pending(self):
        """Swap in a finished move now (otherwise it happens at the next update)."""
        self._before_update()
