"""StreamModel: stream the rest of a series (or a demo stream) through the online engine, live.

After a fit, an `engine.OnlineFilter` over the fit's posterior (S = 1 for the quick fit, the
NUTS draws when a Bayesian fit exists) catches up on the first part of the series in one
batched pass. The posterior sees only that first part: a fit that saw the observations about
to stream is made again on the history alone, so the one-step bands are honest forecasts. A
demo stream has no fit: its bank is a Laplace approximation fitted on its own history
(`engine.demo.demo_posterior`); an `engine.StreamRunner` then feeds it the rest on its own threads at the
chosen rate. The runner's subscriber (on the engine thread) only queues the new rows and
asks `dispatch` (the session document's `add_next_tick_callback`) to run `_drain` once;
`_drain` publishes everything queued since as one `new_rows` frame, so the page receives
at most one update per server tick however fast the engine runs.

Each row carries its position `t` and its x-axis value `x` (milliseconds since the epoch when
the dataset has dates, else `t`). The belief of a run can be saved (`belief_snapshot`, the
engine's persistence format) and a saved one restored (`restore`): the next Play then
continues from it instead of starting again from the fit.
"""

from __future__ import annotations

import collections
import logging
import tempfile
import threading
import time
import zipfile
from functools import partial
from pathlib import Path
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any, Callable

import jax
import numpy as np
import pandas as pd
import param

import engine
from engine.demo import MIN_HISTORY, demo_posterior
from engine.online import BAND_LEVELS, fit_priors
from engine.persist import SNAPSHOT, read_snapshot, write_snapshot
from engine.rejuvenation import RejuvenationConfig
from engine.spec import ModelSpec

from ..workers import SessionWorker, run_now
from .data_model import DataModel
from .fit_bayes import time_axis
from .fit_model import FitModel

log = logging.getLogger("streamssm.app")

DATASET = "rest of the dataset"
DEMO_LENGTH = 2000        # observations in a demo stream
DEMO_DRAWS = 200          # draws of a demo's posterior bank
STATUSES = ["idle", "starting", "playing", "pausing", "paused", "finished", "stopped", "error"]
FORECAST_EVERY_S = 0.25   # the forecast panel is refreshed at most this often
FRAME_S = 0.1             # the page is updated at most this often while the stream runs
MAX_HORIZON = 500         # forecast steps the x-axis is extended by (the `horizon` bound)
COLUMNS = ("t", "x", "y", "predicted", "lo95", "hi95", "lo50", "hi50", "filtered", "anomaly_y", "ess", "drift")
FORECAST_COLUMNS = ("t", "x", "mean", "lo95", "hi95", "lo50", "hi50")
TIMING_COLUMNS = ("n_obs", "batch_size", "engine_ms_per_obs", "latency_ms")
TIMING_WINDOW = 10_000    # batches (and observations' latencies) the throughput statistics cover
FLAT_RATIO = 1.5          # engine time "stays flat" when its last quarter is at most this times its first
MIN_TREND_BATCHES = 16    # batches needed before the page says whether engine time stays flat


def engine_time_trend(engine_ms_per_obs: np.ndarray) -> dict:
    """Does engine time per observation grow as the stream goes on? Compares the median of the
    first quarter of the batches (time,) with the median of the last quarter: `flat` is True when
    last / first <= FLAT_RATIO, False when above, None with fewer than MIN_TREND_BATCHES batches."""
    x = np.asarray(engine_ms_per_obs, dtype=float)
    if len(x) < MIN_TREND_BATCHES:
        return {"n_batches": len(x), "first_ms": float("nan"), "last_ms": float("nan"), "ratio": float("nan"),
                "flat": None}
    q = len(x) // 4
    first, last = float(np.median(x[:q])), float(np.median(x[-q:]))
    ratio = last / first if first > 0 else float("inf")
    return {"n_batches": len(x), "first_ms": first, "last_ms": last, "ratio": ratio, "flat": bool(ratio <= FLAT_RATIO)}


def fit_posterior(fit: FitModel, bayes=None) -> tuple[ModelSpec, Any, str] | None:
    """(spec, posterior, label) of the session's latest fit: the NUTS draws (`bayes.posterior`, an
    InferenceData) when there are any, else the quick fit's estimate (one draw)."""
    idata = getattr(bayes, "posterior", None) if bayes is not None else None
    if idata is not None:
        n = int(idata.posterior.sizes["chain"] * idata.posterior.sizes["draw"])
        return engine.spec_of(idata), idata, f"NUTS posterior (S = {n} draws)"
    r = fit.result
    if r is None:
        return None
    return r.spec, dict(r.params), "quick fit estimate (S = 1 draw)"


def fitted_series(fit: FitModel, posterior) -> np.ndarray | None:
    """The series (time,) the posterior was fitted to: a NUTS posterior's observed data, else the
    quick fit's; None when it is not known (a posterior or fit restored without its data)."""
    if hasattr(posterior, "posterior"):   # an InferenceData: its own observed data, or unknown
        observed = getattr(posterior, "observed_data", None)
        if observed is None or "y" not in observed:
            return None
        return np.asarray(observed["y"].values, dtype=float).reshape(-1)
    result = fit.result
    return None if result is None or result.y is None else np.asarray(result.y, dtype=float)


@dataclass(frozen=True)
class StreamPlan:
    """Everything a run needs: the model and posterior, the history to catch up on, what to stream."""

    spec: ModelSpec
    posterior: Any
    label: str
    y_history: np.ndarray            # (history,)
    exog_history: np.ndarray | None  # (history, k)
    source: np.ndarray               # (time,) or (time, 1 + k): what the runner replays
    t0: int                          # position of the first streamed observation in the whole series
    x: np.ndarray | None = None      # (time + MAX_HORIZON,) x-axis value of every position (None: t)
    dated: bool = False              # x holds dates (ms since the epoch)
    fit_history: Callable[[], tuple[Any, str]] | None = None
    # when set, the posterior is made in the worker before the run: it returns (posterior, label)
    # fitted on y_history only, so that no streamed observation was seen by the fit

    def x_of(self, t) -> np.ndarray:
        """x-axis values of positions t (clipped to the known axis)."""
        t = np.asarray(t)
        if self.x is None:
            return t.astype(float)
        return self.x[np.clip(t, 0, len(self.x) - 1)]


def x_axis(index: pd.Index | None, n: int) -> tuple[np.ndarray | None, bool]:
    """(x value of each of n positions and MAX_HORIZON more, whether they are dates) from the data's index."""
    axis = time_axis(index, n, MAX_HORIZON)
    if isinstance(axis, pd.DatetimeIndex):
        return axis.values.astype("datetime64[ms]").astype(float), True
    return None, False


def check_history(filt: engine.OnlineFilter, y: np.ndarray) -> None:
    """ValueError unless the filter's history is the first observations of series y (time,)."""
    t = filt.t
    hist_y, _ = filt.history()
    if t > len(y) or not np.array_equal(hist_y, np.asarray(y, dtype=float)[:t], equal_nan=True):
        raise ValueError(f"the saved belief was built on other data: its {t} observations are not the first "
                         f"{t} of the series ({len(y)} observations)")


def resume_plan(filt: engine.OnlineFilter, y: np.ndarray, x: np.ndarray | None, x_axis_values=None,
                dated: bool = False) -> StreamPlan:
    """The plan that continues a restored belief on series y (time,) and regressors x (time, k): the
    belief's history must be y's first observations, and the rest streams."""
    check_history(filt, y)
    t = filt.t
    if t >= len(y):
        raise ValueError(f"the restored belief has seen all {len(y)} observations: nothing left to stream")
    source = y[t:] if x is None else np.column_stack([y[t:], x[t:]])
    label = f"restored belief (S = {filt.n_draws} draws, from t = {t})"
    return StreamPlan(filt.spec, filt.params, label, y[:t], None if x is None else x[:t], source, t,
                      x_axis_values, dated)


def _bucket_sizes(batch_size: int) -> list[int]:
    """Micro-batch shapes the engine compiles: powers of two from 8 up to batch_size."""
    sizes = [8]
    while sizes[-1] < batch_size:
        sizes.append(sizes[-1] * 2)
    return sizes


def twin_source(filt: engine.OnlineFilter) -> tuple:
    """What `warm_up` builds its twins from: (draws, a copy of the belief, y history, exog history).
    Take it while the filter is not updating (its belief's buffers are donated to each update)."""
    y, x = filt.history()
    return (filt.params, jax.tree_util.tree_map(lambda a: a.copy(), filt.state), np.array(y),
            None if x is None else np.array(x))


def warm_up(plan: StreamPlan, source: tuple, sizes: list[int], lengths: list[int] = ()) -> None:
    """Compile `OnlineFilter.update_many` for micro-batches of the given padded sizes, on throw-away
    twins of a filter (`twin_source`: same bank, a copy of the belief), both on the first-steps path
    and on the steady-state path (taken from the third update on), so the stream itself never
    waits. The twins never touch the streaming filter, so this may run while it streams.

    `lengths`: batch lengths to run once more each. A batch shorter than its padded size has its
    info cut back to its length, and each new length costs a compile of its own (about 1 s on a
    busy machine), which would otherwise land on the stream as a spike of engine time and a
    backlog of latency."""
    params, belief0, y_history, exog_history = source

    def twin():
        belief = jax.tree_util.tree_map(lambda a: a.copy(), belief0)
        return engine.OnlineFilter(plan.spec, params, y_history=y_history, exog_history=exog_history,
                                   belief=belief, rejuvenation=RejuvenationConfig(automatic=False))

    finite = y_history[np.isfinite(y_history)]
    y_fill = float(finite[-1]) if len(finite) else 0.0
    exog = (lambda n: np.zeros((n, plan.spec.k_exog))) if plan.spec.regression is not None else (lambda n: None)
    steady = twin()
    for size in [sizes[0], sizes[0]] + sizes:   # two updates first: the steady flag lags by one
        jax.block_until_ready(steady.update_many(np.full(size, y_fill), exog(size)))
    if sizes[0] == 8:   # a single observation (a paced stream) is a padded batch cut back to length 1
        jax.block_until_ready(steady.update_many(np.full(1, y_fill), exog(1)))
    short = [n for n in lengths if n < sizes[0]]   # what a paced stream that falls a little behind takes
    for n in short:
        jax.block_until_ready(steady.update_many(np.full(n, y_fill), exog(n)))
    for size in sizes[1:]:
        jax.block_until_ready(twin().update_many(np.full(size, y_fill), exog(size)))
    for n in lengths:
        if n >= sizes[0]:
            jax.block_until_ready(steady.update_many(np.full(n, y_fill), exog(n)))


def _cut_lengths(batch_size: int) -> list[int]:
    """Batch lengths up to batch_size that are cut back from a padded size (1 is warmed with the filter)."""
    sizes = set(_bucket_sizes(batch_size))
    return [n for n in range(2, batch_size + 1) if n not in sizes]


def fitted_plan(plan: StreamPlan) -> StreamPlan:
    """The plan with its posterior made: `plan.fit_history` run (in the worker) when it has one."""
    if plan.fit_history is None:
        return plan
    posterior, label = plan.fit_history()
    return replace(plan, posterior=posterior, label=label, fit_history=None)


def build_filter(plan: StreamPlan, filt: engine.OnlineFilter | None = None) -> tuple[engine.OnlineFilter, StreamPlan]:
    """The online filter for a plan (or a restored one), caught up on its history, compiled for
    single-step batches; and the plan with its posterior (fitted on the history when it says so)."""
    plan = fitted_plan(plan)
    if filt is None:
        filt = engine.OnlineFilter.from_posterior(plan.spec, plan.posterior, plan.y_history, plan.exog_history)
    warm_up(plan, twin_source(filt), _bucket_sizes(1))
    return filt, plan


def history_quick_fit(spec: ModelSpec, y_history: np.ndarray, exog_history: np.ndarray | None) -> tuple[dict, str]:
    """The quick fit's estimate (maximum likelihood) on the history alone, and its label."""
    res = engine.fit_mle(spec, y_history, exog_history)
    flag = "" if res.converged else f"; the optimiser did not converge: {res.message}"
    return dict(res.params), f"quick fit on the first {len(y_history)} observations (S = 1 draw{flag})"


def history_nuts_fit(spec: ModelSpec, y_history: np.ndarray, exog_history: np.ndarray | None, idata, *,
                     warmup: int, seed: int, cancel=None) -> tuple[Any, str]:
    """NUTS on the history alone, with the session's posterior's priors, chains and draws per chain."""
    chains, draws = int(idata.posterior.sizes["chain"]), int(idata.posterior.sizes["draw"])
    posterior = engine.fit_nuts(spec, y_history, exog_history, chains=chains, warmup=warmup, draws=draws,
                                seed=seed, priors=fit_priors(idata), cancel=cancel)
    return posterior, f"NUTS posterior of the first {len(y_history)} observations (S = {chains * draws} draws)"


def demo_history_fit(demo: engine.DemoStream, n_history: int) -> tuple[dict, str]:
    """The demo's posterior bank given its history (`engine.demo.demo_posterior`), and its label."""
    post = demo_posterior(demo, n_history, DEMO_DRAWS)
    n = len(next(iter(post.draws.values())))
    flag = "" if post.converged else f"; the mode search stopped early: {post.message}"
    return post.draws, (f"Laplace approximation to the posterior of the first {n_history} observations "
                        f"(S = {n} draws; a demo has no NUTS fit, its true parameters are not used{flag})")


def snapshot_bytes(filt: engine.OnlineFilter) -> bytes:
    """The filter's belief, draws and history in the engine's snapshot format (`engine.persist`)."""
    with tempfile.TemporaryDirectory() as tmp:
        write_snapshot(tmp, filt)
        return (Path(tmp) / SNAPSHOT).read_bytes()


def filter_from_snapshot(content: bytes) -> engine.OnlineFilter:
    """The filter saved by `snapshot_bytes`; ValueError when the bytes are not such a snapshot."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / SNAPSHOT).write_bytes(content)
        try:
            filt, _ = read_snapshot(tmp)
        except (OSError, KeyError, EOFError, TypeError, zipfile.BadZipFile) as exc:
            raise ValueError(f"not an online belief snapshot ({exc})") from None
    return filt


class _Locked:
    """The filter as the runner sees it: each update holds the lock, so a snapshot taken under the
    same lock never sees half an update (nor an array the update has donated)."""

    def __init__(self, filt: engine.OnlineFilter, lock: threading.Lock):
        self._filt, self._lock = filt, lock

    def update_many(self, ys, exog=None):
        with self._lock:
            return self._filt.update_many(ys, exog)


def batch_rows(batch: engine.StreamBatch, t0: int, signal: np.ndarray,
               x_of: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Plot columns of one micro-batch: position and x-axis value, observation, one-step predictive
    mean and 50/95% bands, the filtered signal (sum of the additive components' filtered means),
    anomalies, ESS."""
    info = batch.info
    q = np.asarray(info.quantiles)
    lo95, hi95 = BAND_LEVELS[0.95]
    lo50, hi50 = BAND_LEVELS[0.5]
    y = np.asarray(batch.y, dtype=float)
    anomaly = np.asarray(info.anomaly, dtype=bool)
    t = np.asarray(batch.t) + t0
    return {"t": t, "x": t.astype(float) if x_of is None else x_of(t), "y": y,
            "predicted": np.asarray(info.mean, dtype=float),
            "lo95": q[:, lo95], "hi95": q[:, hi95], "lo50": q[:, lo50], "hi50": q[:, hi50],
            "filtered": np.asarray(info.component_mean, dtype=float) @ signal,
            "anomaly_y": np.where(anomaly, y, np.nan), "ess": np.asarray(info.ess, dtype=float),
            "drift": np.asarray(info.drift, dtype=bool)}


def forecast_frame(fc: engine.OnlineForecast, t_next: int,
                   x_of: Callable[[np.ndarray], np.ndarray] | None = None) -> pd.DataFrame:
    """The h-step forecast as plot columns, starting at position t_next."""
    q = np.asarray(fc.quantiles)
    lo95, hi95 = BAND_LEVELS[0.95]
    lo50, hi50 = BAND_LEVELS[0.5]
    t = t_next + np.arange(len(q))
    return pd.DataFrame({"t": t, "x": t.astype(float) if x_of is None else x_of(t), "mean": np.asarray(fc.mean),
                         "lo95": q[:, lo95],
                         "hi95": q[:, hi95], "lo50": q[:, lo50], "hi50": q[:, hi50]})


class StreamModel(param.Parameterized):
    """Play / pause / step / stop a live stream of the session's data through its fitted model."""

    source = param.Selector(default=DATASET, objects=[DATASET], doc="What to stream")
    history_fraction = param.Number(default=0.5, bounds=(0.0, 0.95), step=0.05,
                                    doc="Share of the dataset the filter starts from (the rest streams)")
    rate = param.Number(default=20.0, bounds=(0.5, 5000.0), doc="Observations per second")
    max_speed = param.Boolean(default=False, doc="As fast as the engine goes")
    horizon = param.Integer(default=20, bounds=(1, 500), doc="Forecast steps")
    batch_size = param.Integer(default=64, bounds=(1, 4096), doc="Most observations per engine call")
    demo_length = param.Integer(default=DEMO_LENGTH, bounds=(4 * 24, 100_000), doc="Observations in a demo stream")

    status = param.Selector(default="idle", objects=STATUSES, constant=True)
    message = param.String(default="", constant=True)
    posterior_label = param.String(default="", constant=True)
    dated = param.Boolean(default=False, constant=True, doc="The run's x-axis holds dates (ms since the epoch)")
    n_received = param.Integer(default=0, constant=True)
    n_total = param.Integer(default=0, constant=True)
    run_id = param.Integer(default=0, constant=True, doc="Incremented when a new run starts (views reset)")
    new_rows = param.DataFrame(default=None, allow_None=True, constant=True,
                               doc="The rows received since the last update (views append only these)")
    new_timings = param.DataFrame(default=None, allow_None=True, constant=True,
                                  doc="One row per engine batch shown since the last update (TIMING_COLUMNS)")
    forecast = param.DataFrame(default=None, allow_None=True, constant=True)
    history = param.DataFrame(default=None, allow_None=True, constant=True,
                              doc="The observations the run's filter started from (t, x, y): the history before "
                                  "the stream")
    stats = param.Dict(default={}, constant=True, doc="Throughput and latency (see `_stats`)")
    events = param.List(default=[], constant=True, doc="Rejuvenation and drift events, newest last")
    drift_alarm = param.Boolean(default=False, constant=True, doc="A drift was flagged since the last refit")

    def __init__(self, data: DataModel, fit: FitModel, worker: SessionWorker,
                 dispatch: Callable[[Callable[[], Any]], None] = run_now, bayes=None, **params):
        super().__init__(**params)
        self.data, self.fit, self.bayes, self.worker, self._dispatch = data, fit, bayes, worker, dispatch
        self.param.source.objects = [DATASET] + list(engine.list_demo_streams()["name"])
        self.filter: engine.OnlineFilter | None = None
        self.runner: engine.StreamRunner | None = None
        self._plan: StreamPlan | None = None
        self._signal = np.zeros(0)
        self._lock = threading.Lock()
        self._queued: list[dict] = []
        self._queued_events: list[dict] = []
        self._queued_forecast: pd.DataFrame | None = None
        self._scheduled = False
        self._chunks: list[pd.DataFrame] = []
        self._last_forecast = self._last_drain = 0.0
        self._queued_timing: list[tuple[int, float, np.ndarray]] = []   # (batch size, engine s, arrival times)
        self._reset_timing()
        self._closed = False
        self._pending_step = 0
        self._filter_lock = threading.Lock()
        self._resume: engine.OnlineFilter | None = None   # a restored belief the next run continues
        self._cancel_start = threading.Event()   # stops a fit on the history that a run is waiting for
        self._refit_thread: threading.Thread | None = None

    # -- what to stream --------------------------------------------------------------
    def plan(self) -> StreamPlan:
        """The model, posterior and data of the next run; raises ValueError naming what is missing.

        The stream starts after the first `history_fraction` of the series (a fit on only the
        first part of the data starts where its data end). The posterior never saw a streamed
        observation: a fit that did is made again on the history alone, in the worker
        (`StreamPlan.fit_history`), so the bands are true one-step-ahead forecasts."""
        if self.source != DATASET:
            return self._demo_plan()
        if not self.data.ready:
            raise ValueError("Load a dataset first (Data tab).")
        y = self.data.y
        xs, dated = x_axis(self.data.index, len(y))
        if self._resume is not None:
            return resume_plan(self._resume, y, self._exog(self._resume.spec), xs, dated)
        fitted = fit_posterior(self.fit, self.bayes)
        if fitted is None:
            raise ValueError("Fit a model first (Fit tab): the stream runs the fitted model's posterior.")
        spec, posterior, label = fitted
        y_fit = fitted_series(self.fit, posterior)
        if y_fit is not None and not (len(y_fit) <= len(y) and np.array_equal(y_fit, y[:len(y_fit)], equal_nan=True)):
            raise ValueError(f"The {label.split(' (')[0]} was fitted to other data ({len(y_fit)} observations that "
                             f"are not the start of the loaded series): fit the model again (Fit tab).")
        if y_fit is not None and len(y_fit) < len(y):
            n_hist = len(y_fit)   # the fit saw only the first part: stream the rest
        else:
            n_hist = int(round(self.history_fraction * len(y)))
        if n_hist >= len(y):
            raise ValueError(f"nothing left to stream: the filter starts from {n_hist} of {len(y)} observations")
        x = self._exog(spec)
        x_hist = None if x is None else x[:n_hist]
        fit_history = None
        if y_fit is None:
            label += " — its data are unknown: if it saw the streamed observations, the bands look better than they are"
        elif len(y_fit) > n_hist:   # the fit saw the observations about to stream
            if n_hist < 2:
                raise ValueError(f"the stream would start after {n_hist} observations, too few to fit the model "
                                 "on: move 'Start after' to the right")
            if isinstance(posterior, dict):
                fit_history = partial(history_quick_fit, spec, y[:n_hist], x_hist)
            else:
                fit_history = partial(history_nuts_fit, spec, y[:n_hist], x_hist, posterior,
                                      warmup=int(getattr(self.bayes, "warmup", 500)),
                                      seed=int(getattr(self.bayes, "seed", 0)), cancel=self._cancel_start)
            label = f"{label.split(' (')[0]} refitted on the first {n_hist} observations"
        source = y[n_hist:] if x is None else np.column_stack([y[n_hist:], x[n_hist:]])
        return StreamPlan(spec, posterior, label, y[:n_hist], x_hist, source, n_hist, xs, dated, fit_history)

    def _demo_plan(self) -> StreamPlan:
        """A demo stream, started after `history_fraction` of it, through a bank of draws fitted on
        the part before (`demo_history_fit`)."""
        demo = engine.demo_stream(0, self.source, n_time=self.demo_length)
        if self._resume is not None:
            return resume_plan(self._resume, demo.y, None)
        n_hist = int(round(self.history_fraction * len(demo.y)))
        if n_hist < MIN_HISTORY:
            raise ValueError(f"a demo stream's posterior is fitted on the observations before the stream: move "
                             f"'Start after' to at least {MIN_HISTORY / len(demo.y):.2f} ({MIN_HISTORY} of "
                             f"{len(demo.y)} observations)")
        spec = ModelSpec.from_dict(demo.spec)
        return StreamPlan(spec, None, f"fitting the demo's model on its first {n_hist} observations",
                          demo.y[:n_hist], None, demo.y[n_hist:], n_hist,
                          fit_history=partial(demo_history_fit, demo, n_hist))

    def _exog(self, spec: ModelSpec) -> np.ndarray | None:
        if spec.regression is None:
            return None
        missing = [c for c in spec.exog_columns if c not in self.data.frame.columns]
        if missing:
            raise ValueError(f"the model regresses on {missing}, which the loaded data does not have")
        return self.data.frame[list(spec.exog_columns)].to_numpy(dtype=float)

    # -- save and restore ------------------------------------------------------------
    def settings(self) -> dict:
        """The stream's settings as plain values (what a saved session keeps)."""
        return {k: getattr(self, k) for k in ("source", "history_fraction", "rate", "max_speed", "horizon",
                                                "batch_size")}

    def belief_snapshot(self) -> bytes | None:
        """The online belief of the current run (or of a restored one not resumed yet) in the engine's
        snapshot format; None when no stream has run. Safe while the stream plays."""
        filt = self.filter if self.filter is not None else self._resume
        if filt is None:
            return None
        with self._filter_lock:
            return snapshot_bytes(filt)

    def restore(self, settings: dict, filt: engine.OnlineFilter | None, message: str = "") -> None:
        """Take saved settings and, when given, a restored belief that the next Play continues from."""
        self.stop()
        self._drop_run()
        self._plan = None
        self._resume = filt
        known = {k: v for k, v in settings.items() if k in self.settings()}
        if known.get("source") not in self.param.source.objects:
            known.pop("source", None)
        self.param.update(**known)
        self._set(status="idle", n_received=0, n_total=0, new_rows=None, forecast=None, events=[], stats={},
                  drift_alarm=False, posterior_label="" if filt is None else f"restored belief (S = "
                  f"{filt.n_draws} draws, t = {filt.t})", message=message)

    # -- controls --------------------------------------------------------------------
    def play(self) -> Future | None:
        """Start a new run (building the filter in the worker) or resume a paused one."""
        if self.runner is not None and self.status in ("pausing", "paused"):
            self.runner.resume()
            self._set(status="playing", message="")
            return None
        if self.status in ("starting", "playing"):
            return None
        return self._start(paused=False)

    def pause(self) -> None:
        """Let no further observation through. The runner stops taking observations at once, but a
        batch it had taken still goes through the filter: the status is "pausing" until that batch
        is shown, then "paused" with the exact count (which then stays until Play or Step)."""
        runner = self.runner
        if runner is None or self.status != "playing":
            return
        runner.pause()
        self._set(status="pausing")

        def wait():   # a thread of its own: the batch in flight may be compiling
            runner.wait_idle()
            if not self._closed:
                self._dispatch(partial(self._paused, runner))

        threading.Thread(target=wait, name="stream-pausing", daemon=True).start()

    def _paused(self, runner: engine.StreamRunner) -> None:
        """The runner took its last batch before the pause through: show it, then say "paused"."""
        if runner is not self.runner or self.status != "pausing" or not runner.paused:
            return   # resumed, stopped or replaced meanwhile
        self._drain()
        if self.status == "pausing":   # not finished or failed by that last batch
            self._set(status="paused")

    def step(self, n: int = 1) -> Future | None:
        """Let n more observations through (starting a paused run first if there is none)."""
        if self.status == "starting":
            self._pending_step += n
            return None
        if self.runner is None or self.status in ("finished", "stopped", "error", "idle"):
            self._pending_step = n
            return self._start(paused=True)
        if self.status == "playing":
            self.pause()
        self.runner.step(n)
        return None

    def stop(self) -> None:
        """Stop the run and its threads (the next play starts again from the beginning)."""
        runner = self.runner
        if runner is not None:
            runner.stop()
        if self.status == "starting":   # the run being built is not started
            self._cancel_start.set()
            self._plan = None
        if self.status not in ("idle", "error", "finished"):
            self._set(status="stopped", message="Stopped.")

    def shutdown(self) -> bool:
        """The session closed: stop the runner and the filter's background refit, and drop further
        results. True when their threads ended."""
        self._closed = True
        self._cancel_start.set()
        runner, filt = self.runner, self.filter
        if runner is not None:
            runner.stop(timeout=10.0)
        moves_done = filt.close(timeout=10.0) if filt is not None else True
        if self._refit_thread is not None:   # its move has given up: it ends at once
            self._refit_thread.join(timeout=10.0)
            moves_done = moves_done and not self._refit_thread.is_alive()
        alive = runner is not None and runner.running
        log.info("session %s stream stopped (runner still running: %s, refit still running: %s)",
                 self.worker.session_id, alive, not moves_done)
        return not alive and moves_done

    def refit(self) -> Future | None:
        """Rejuvenate the posterior bank on all data seen so far, in the background (the stream
        keeps using the old bank until the new one is ready).

        While the stream plays, the new bank is swapped in at its next update; when it has
        ended (or is paused or stopped) no update comes, so a background thread swaps it in as soon as the
        move is done and refreshes the forecast. Either way the events say when it is done, or
        why it could not run."""
        filt = self.filter
        if filt is None:
            return None
        self._set(drift_alarm=False, message="Refitting the posterior bank in the background…")
        done: Future = Future()
        plan = self._plan

        def run():   # a thread of its own: the worker may be busy compiling for the stream
            try:
                swapped = self._refit_job(filt, plan)
            except Exception as exc:   # noqa: BLE001 - reported on the page
                done.set_exception(exc)
                if not self._closed:
                    self._dispatch(partial(self._refit_failed, exc))
                return
            if not self._closed:
                self._dispatch(partial(self._refit_done, swapped))
            done.set_result(swapped)

        # the process's exit hook closes the filter (its move gives up) and waits for this thread
        self._refit_thread = engine.background.start_thread(run, name="stream-refit",
                                                            stop=lambda: filt.close(timeout=0))
        return done

    def _refit_job(self, filt: engine.OnlineFilter, plan: StreamPlan) -> bool:
        """Start a move (unless one runs), wait for it, swap its bank in; True when a new bank is
        in use."""
        with self._filter_lock:   # between two updates: an update donates the belief
            version = filt.bank_version
            started = filt.rejuvenate(reason="drift alarm (requested)")
        if not started and not filt.rejuvenating:
            return False          # unavailable (an event says why) or the run was dropped
        filt.wait_for_rejuvenation()
        with self._filter_lock:
            filt.apply_pending()  # a stream still running may have swapped it in already
            swapped = filt.bank_version > version
            forecast = self._forecast(filt, plan, filt.t - plan.t0) if swapped and filt is self.filter else None
        if forecast is not None:
            with self._lock:
                self._queued_forecast = forecast
            self._schedule()
        return swapped

    def _refit_done(self, swapped: bool) -> None:
        if swapped:
            self._set(message=f"Refit done: the new posterior bank is in use (t = {self.filter.t if self.filter else '?'}"
                              "); the forecast is redrawn from it.")
        elif self.message.startswith("Refitting"):
            self._set(message="The refit did not run: the events below say why.")

    def _refit_failed(self, exc: BaseException) -> None:
        self._set(message=f"The refit failed: {exc}")

    @param.depends("rate", "max_speed", watch=True)
    def _on_speed(self):
        if self.runner is not None:
            self.runner.rate = None if self.max_speed else float(self.rate)

    # -- run lifecycle ---------------------------------------------------------------
    def _set(self, **values):
        with param.edit_constant(self):
            self.param.update(**values)

    def _start(self, paused: bool) -> Future | None:
        self._cancel_start.set()   # a previous start still fitting gives up
        self._cancel_start = threading.Event()
        try:
            plan = self.plan()
        except ValueError as exc:
            self._set(status="error", message=str(exc))
            return None
        self._drop_run()
        self._plan = plan
        fitting = (f"fitting on the first {plan.t0} observations first, so that the fit sees none of the streamed "
                   "ones; " if plan.fit_history is not None else "")
        self._set(status="starting", posterior_label=plan.label,
                  message=f"Starting the filter from {plan.t0} observations ({fitting}{plan.label}); the first run "
                          "of a model also compiles it…")
        return self.worker.submit(build_filter, plan, self._resume,
                                  on_done=lambda built: self._begin(*built, planned=plan, paused=paused),
                                  on_error=self._failed)

    def _drop_run(self) -> None:
        """Forget the current run: stop its runner, and close its filter (a refit in flight gives
        up in the background)."""
        if self.runner is not None:
            self.runner.stop()
        if self.filter is not None:
            self.filter.close(timeout=0)
        self.runner = self.filter = None

    def _begin(self, filt: engine.OnlineFilter, plan: StreamPlan, planned: StreamPlan, paused: bool) -> None:
        """Start streaming `plan` (the `planned` one with its posterior made) through `filt`."""
        if self._closed or planned is not self._plan:
            return
        self._plan = plan
        names = engine.component_names(plan.spec)
        self._signal = np.array([0.0 if n == "trend" else 1.0 for n in names])
        filt.on_event = self._on_engine_event
        self.filter = filt
        self._resume = None   # a restored belief is continued once; the next new run starts from the fit
        with self._lock:
            self._queued, self._queued_events, self._queued_forecast = [], [], None
            self._scheduled = False
        self._chunks = []
        self._reset_timing()
        t_hist = np.arange(len(plan.y_history))
        history = pd.DataFrame({"t": t_hist, "x": plan.x_of(t_hist).astype(float), "y": plan.y_history})
        self._set(run_id=self.run_id + 1, n_received=0, n_total=len(plan.source), new_rows=None, history=history,
                  forecast=None, events=[], drift_alarm=False, stats={}, dated=plan.dated, posterior_label=plan.label,
                  status="paused" if paused else "playing", message="")
        self.runner = engine.StreamRunner(_Locked(filt, self._filter_lock), plan.source, rate=None if self.max_speed else float(self.rate),
                                          batch_size=self.batch_size)
        self.runner.subscribe(self._on_batch)
        sizes, lengths = _bucket_sizes(self.batch_size), _cut_lengths(self.batch_size)
        source = twin_source(filt) if lengths else None   # before the stream moves the filter on
        self.runner.start(paused=paused)
        if lengths:   # the other micro-batch sizes and lengths are compiled in the worker meanwhile
            self.worker.submit(warm_up, plan, source, sizes[1:] or sizes, lengths, on_done=lambda _: None,
                               on_error=lambda exc: log.info("stream warm-up failed: %s", exc))
        if self._pending_step:
            n, self._pending_step = self._pending_step, 0
            self.runner.step(n)

    def _reset_timing(self) -> None:
        with self._lock:
            self._queued_timing = []
        self._render_ms: collections.deque = collections.deque(maxlen=TIMING_WINDOW)
        self._latency_ms: collections.deque = collections.deque(maxlen=TIMING_WINDOW)
        self._batches: collections.deque = collections.deque(maxlen=TIMING_WINDOW)
        self._engine_s, self._n_timed = 0.0, 0

    def _failed(self, exc: BaseException) -> None:
        self._set(status="error", message=f"The stream could not start: {exc}")

    # -- engine thread ---------------------------------------------------------------
    def _on_engine_event(self, event: dict) -> None:
        with self._lock:
            self._queued_events.append(dict(event))
        self._schedule()

    def _on_batch(self, message) -> None:
        """Subscriber (engine thread): queue the batch's rows; refresh the forecast now and then."""
        if self._closed:
            return
        if isinstance(message, engine.StreamError):
            with self._lock:
                self._queued_events.append({"kind": "error", "where": message.where, "error": repr(message.error)})
            self._schedule()
            return
        plan = self._plan
        rows = batch_rows(message, plan.t0, self._signal, plan.x_of)
        filt = self.filter
        now = time.perf_counter()
        last = int(message.t[-1]) + 1 >= len(plan.source)
        with self._lock:
            self._queued.append(rows)
            self._queued_timing.append((len(message.t), float(message.engine_s), now - np.asarray(message.latency_s)))
        if now - self._last_forecast > FORECAST_EVERY_S or last:
            self._last_forecast = now
            forecast = self._forecast(filt, plan, int(message.t[-1]) + 1)
            if forecast is not None:
                with self._lock:
                    self._queued_forecast = forecast
        # a running stream updates the page once a frame (later batches pick up what is queued);
        # the last batch and a paused (stepped) stream are shown at once
        if last or self.runner is None or self.runner.paused or now - self._last_drain >= FRAME_S:
            self._schedule()

    def _forecast(self, filt: engine.OnlineFilter, plan: StreamPlan, k: int) -> pd.DataFrame:
        """The forecast from after the k-th streamed observation. A regression model is forecast
        as far as the data's regressors go (its later rows); with none left, nor is y (empty
        frame). A failure is an event, not the end of the stream."""
        steps, exog_future = self.horizon, None
        if plan.spec.regression is not None:
            exog_future = np.asarray(plan.source)[k:k + steps, 1:]
            steps = len(exog_future)
        t_next = plan.t0 + k
        try:
            if steps == 0:
                return pd.DataFrame({c: np.zeros(0) for c in FORECAST_COLUMNS})
            return forecast_frame(jax.device_get(filt.forecast(steps, exog_future)), t_next, plan.x_of)
        except Exception as exc:   # noqa: BLE001 - the stream goes on without this forecast
            log.warning("forecast failed: %r", exc)
            with self._lock:
                self._queued_events.append({"kind": "forecast_failed", "error": repr(exc)})
            self._schedule()
            return None

    def _schedule(self) -> None:
        with self._lock:
            if self._scheduled or self._closed:
                return
            self._scheduled = True
        self._dispatch(self._drain)

    # -- UI thread -------------------------------------------------------------------
    def _drain(self) -> None:
        """Publish everything queued since the last tick as one update (runs on the page's loop)."""
        t0 = self._last_drain = time.perf_counter()
        with self._lock:
            queued, self._queued = self._queued, []
            events, self._queued_events = self._queued_events, []
            forecast, self._queued_forecast = self._queued_forecast, None
            self._scheduled = False
        if self._closed:
            return
        values: dict[str, Any] = {}
        n_new = 0
        if queued:
            frame = pd.DataFrame({c: np.concatenate([r[c] for r in queued]) for c in COLUMNS})
            self._chunks.append(frame)
            n_new = len(frame)
            values.update(new_rows=frame, n_received=self.n_received + n_new)
            drifts = frame["t"][frame["drift"]].tolist()
            events = events + [{"kind": "drift", "t": int(t)} for t in drifts]
            if drifts:
                values["drift_alarm"] = True
        if forecast is not None:
            values["forecast"] = forecast
        if events:
            values["events"] = self.events + events
            errors = [e for e in events if e["kind"] == "error"]   # the runner has stopped
            setbacks = [e for e in events if e["kind"] in ("rejuvenation_failed", "forecast_failed")]
            if errors:
                values.update(status="error", message=f"The stream failed: {errors[0].get('error')}")
            elif setbacks:   # the stream goes on with the bank it has
                what = "refit" if setbacks[-1]["kind"] == "rejuvenation_failed" else "forecast"
                going = "goes on with" if self.status in ("playing", "pausing", "paused") else "keeps"
                values["message"] = (f"The background {what} failed ({setbacks[-1].get('error')}); the stream "
                                     f"{going} the current draws.")
        runner = self.runner
        finished = {}   # set with the statistics that include the last batch
        if (runner is not None and self.n_received + n_new >= self.n_total
                and values.get("status", self.status) not in ("error", "finished")):
            finished = {"status": "finished", "message": f"Streamed all {self.n_total} observations."}
        self._set(**values)
        if runner is None:
            return
        sent = time.perf_counter()   # the Stream tab's update is on its way to the browser
        if n_new:
            self._render_ms.append((sent - t0) * 1e3 / n_new)
        with self._lock:
            timings, self._queued_timing = self._queued_timing, []
        rows = []
        for size, engine_s, arrivals in timings:
            latency_ms = (sent - arrivals) * 1e3
            self._latency_ms.extend(latency_ms.tolist())
            self._engine_s += engine_s
            self._n_timed += size
            rows.append({"n_obs": self._n_timed, "batch_size": size, "engine_ms_per_obs": engine_s * 1e3 / size,
                         "latency_ms": float(np.mean(latency_ms))})
        self._batches.extend(rows)
        self._set(stats=self._stats(runner),
                  new_timings=pd.DataFrame(rows, columns=list(TIMING_COLUMNS)) if rows else None, **finished)

    def _stats(self, runner: engine.StreamRunner) -> dict:
        """What the Throughput tab shows, each measured as its name says (see `THROUGHPUT_DEFINITIONS`).

        Engine time is the filter's time for a batch (`update_many` until its results are on the
        host), divided by the batch's size; its mean over the run gives the rate the engine alone
        could sustain, 1000 / mean ms per observation. Latency runs from an observation's arrival
        in the stream's queue to the moment the page update that carries it is sent (server side:
        the browser's drawing is not included). Render is the server's time for the Stream tab's
        update, per observation."""
        elapsed = runner.stats().elapsed_s
        n = self._n_timed
        engine_ms = self._engine_s * 1e3 / n if n else float("nan")
        per_batch = np.array([b["engine_ms_per_obs"] for b in self._batches]) if self._batches else np.array([np.nan])
        latency = np.asarray(self._latency_ms) if self._latency_ms else np.array([np.nan])
        render = np.asarray(self._render_ms) if self._render_ms else np.array([np.nan])
        return {"n_obs": n, "n_batches": len(self._batches), "elapsed_s": elapsed,
                "obs_per_s": n / elapsed if elapsed > 0 else float("nan"),
                "engine_ms_mean": engine_ms, "engine_obs_per_s": 1e3 / engine_ms if n else float("nan"),
                "engine_ms_p50": float(np.median(per_batch)), "engine_ms_p99": float(np.percentile(per_batch, 99)),
                "latency_ms_p50": float(np.median(latency)), "latency_ms_p99": float(np.percentile(latency, 99)),
                "render_ms_p50": float(np.median(render)), "render_ms_p99": float(np.percentile(render, 99)),
                "queue_depth": runner.stats().queue_depth,
                "n_draws": self.filter.n_draws if self.filter is not None else 0,
                "trend": engine_time_trend(per_batch if self._batches else np.zeros(0))}

    # -- results ---------------------------------------------------------------------
    def x_of(self, t) -> np.ndarray:
        """x-axis values of positions t in the current run (t itself before any run)."""
        return self._plan.x_of(t) if self._plan is not None else np.asarray(t, dtype=float)

    @property
    def rows(self) -> pd.DataFrame:
        """Every row received in this run so far."""
        if not self._chunks:
            return pd.DataFrame({c: [] for c in COLUMNS})
        if len(self._chunks) > 1:
            self._chunks = [pd.concat(self._chunks, ignore_index=True)]
        return self._chunks[0]
