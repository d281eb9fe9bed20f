"""FleetModel: many series fitted at once by `engine.fit_many`, run in the session's worker,
with progress, cancel, a per-series result table and a drill-down into one series."""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import pandas as pd
import param

import engine
from engine import cluster
from engine.fleet import ANOMALY_Z
from engine.spec import ModelSpec

from ..workers import SessionWorker
from .data_model import UPLOAD, DataModel, series_titles
from .job import CancelFlag, Job
from .spec_model import SpecModel

log = logging.getLogger("streamssm.app")

SYNTHETIC = "synthetic fleet"
NO_UPLOAD = "Upload a wide CSV: a time column and one numeric column per series."
SPEC_SUGGESTED = "suggested for the data"
SPEC_MODEL_TAB = "the Model tab's spec"
METHODS = ("mle", "map", "filter", "nuts")
BACKENDS = ("local", "ray")
_ADDRESS = re.compile(r"^(auto|(ray://)?[A-Za-z0-9.\-]+:\d{1,5})$")
RAY_STARTING = {False: "Starting Ray (a local Ray on this server; the first job waits for it to start)…",
                True: "Connecting to the Ray cluster at {address}…"}


# What "the same table" means across backends and batch sizes. The optimiser stops a series once
# its objective is within about 1e-10 (relative) of the optimum, so its parameters are known to
# about the square root of that where the likelihood is flat, and a batch of another size rounds
# differently: a variance at the boundary may end at 2e-12 in one run and 3e-13 in another, both
# zero at this precision. (Ray and local runs differ only by their default batch size.)
SAME_LOGLIK_RTOL = 1e-8   # log-likelihoods agree to this, relative
SAME_PARAM_RTOL = 1e-5    # variances agree to this × the series' variance; other parameters to this
SAME_TABLES = (f"Tables agree whatever the backend and the batch size to {SAME_LOGLIK_RTOL:g} (relative) in the "
               f"log-likelihood and to {SAME_PARAM_RTOL:g} × the series' variance in each variance: a variance "
               "below that is zero at the fit's precision.")


def table_differences(a: pd.DataFrame, b: pd.DataFrame, spec: ModelSpec, Y: np.ndarray) -> list[str]:
    """Where two result tables of the same series (rows in the order of Y, (series, time)) are
    not the same in the sense of SAME_TABLES; empty when they are."""
    problems = []
    if list(a["series"]) != list(b["series"]) or list(a["status"]) != list(b["status"]):
        return ["the series or their statuses differ"]
    scale = np.array([np.nanvar(y) if np.isfinite(y).sum() > 1 else 1.0 for y in np.asarray(Y, float)])
    ok = (a["status"] != "failed").to_numpy()
    la, lb = a["loglik"].to_numpy(float)[ok], b["loglik"].to_numpy(float)[ok]
    if not np.allclose(la, lb, rtol=SAME_LOGLIK_RTOL, atol=0):
        problems.append("loglik")
    for name in engine.param_names(spec):
        atol = SAME_PARAM_RTOL * (scale[ok] if name.startswith("sigma2.") else 1.0)
        if np.any(np.abs(a[name].to_numpy(float)[ok] - b[name].to_numpy(float)[ok]) > atol):
            problems.append(name)
    return problems


def wide_datasets() -> list[str]:
    """Shipped datasets laid out wide (one column per series): the catalogue says so."""
    cat = engine.list_datasets()
    wide = cat["layout"] == "wide" if "layout" in cat else pd.Series(False, index=cat.index)
    return list(cat.loc[wide.fillna(False).astype(bool), "name"])


@dataclass(frozen=True)
class FleetData:
    """The series of a fleet job: names, the (series, time) values, and where they came from."""

    label: str                   # what is loaded, for messages
    names: list[str]             # (series,)
    Y: np.ndarray                # (series, time) float64, log-transformed when `log`; NaN = missing
    index: pd.Index              # (time,)
    frame: pd.DataFrame | None   # the raw table (time column + one column per series), for "open in Fit"
    log: bool
    suggested: dict | None       # the data's suggested spec
    titles: dict[str, str]


@dataclass(frozen=True)
class FleetRun:
    """A finished fleet job: the engine's result table and what it cost."""

    data: FleetData
    spec: ModelSpec
    method: str
    table: pd.DataFrame          # one row per series (engine.fit_many's table, plus `title` when known)
    seconds: float
    cancelled: bool = False      # the job was cancelled: `table` holds the batches that had finished

    @property
    def series_per_s(self) -> float:
        return len(self.table) / self.seconds if self.seconds > 0 else math.inf


@dataclass(frozen=True)
class DrillDown:
    """One series at its fitted parameters: observations, filtered mean, one-step band, anomalies."""

    name: str
    index: pd.Index              # (time,)
    y: np.ndarray                # (time,)
    filtered_mean: np.ndarray    # (time,) E[y_t | y_{1:t}] signal (observation noise excluded)
    predicted_mean: np.ndarray   # (time,) E[y_t | y_{1:t-1}]
    predicted_sd: np.ndarray     # (time,) its predictive sd (NaN where missing or diffuse)
    anomaly: np.ndarray          # (time,) bool: |standardised one-step innovation| > ANOMALY_Z (as fit_many)
    row: dict                    # the series' row of the result table


def drill_down(spec: ModelSpec, params: dict[str, float], name: str, index: pd.Index, y: np.ndarray,
               row: dict) -> DrillDown:
    """The filter of one series at its fitted parameters (what the table row summarises)."""
    filt = engine.filter_series(spec, params, y)
    system = engine.build_system(spec, params, n_time=len(y))
    design = np.asarray(system.design)
    state = np.asarray(filt.filtered_mean)
    signal = state @ design if design.ndim == 1 else np.einsum("ts,ts->t", state, design)
    signal = signal + np.broadcast_to(np.asarray(system.obs_intercept), signal.shape)
    check = engine.predictive_residuals(spec, params, y)
    anomaly = np.isfinite(check.residual) & (np.abs(check.residual) > ANOMALY_Z)
    return DrillDown(name, index, y, signal, np.asarray(check.mean), np.asarray(check.sd), anomaly, row)


def synthetic_fleet(n_series: int, n_time: int, seed: int) -> FleetData:
    """`engine.make_fleet` as fleet data (sensor names, row-number time)."""
    fleet = engine.make_fleet(n_series, n_time, seed)
    names = list(fleet.truth["series"])
    index = pd.RangeIndex(n_time, name="time")
    frame = pd.DataFrame(fleet.Y.T, index=index, columns=names)
    frame.attrs.update(time_column=None, freq=None, filled_steps=0)
    return FleetData(f"synthetic fleet ({n_series} × {n_time}, seed {seed})", names, np.asarray(fleet.Y, float),
                     index, frame, False, fleet.spec, {})


def table_fleet(table: DataModel, n_series: int, log: bool, titles: dict[str, str]) -> FleetData:
    """Every value column of a loaded wide table (the first `n_series`) as fleet data."""
    frame = table.frame
    time_col = frame.attrs.get("time_column")
    names = [c for c in frame.columns if c != time_col][:n_series]
    Y = frame[names].to_numpy(dtype=float).T
    if log:
        bad = [n for n, row in zip(names, Y) if np.any(row[np.isfinite(row)] <= 0)]
        if bad:
            raise ValueError(f"series {bad[:5]}{' and more' if len(bad) > 5 else ''} have values <= 0, so "
                             "their log is undefined; switch the log transform off")
        Y = np.log(Y)
    keep = [time_col] if time_col else []
    return FleetData(table.source, names, Y, frame.index, frame[keep + names], log, table.suggested_spec, titles)


class FleetModel(Job):
    """A fleet job: which series, which spec and method, where to run; the result table and drill-down.

    The data is a synthetic fleet (`engine.make_fleet`), a shipped wide dataset, or an uploaded
    wide CSV; tables are loaded by a `DataModel` of its own (the same parser and limits as the
    Data tab). The spec is the data's suggested spec or the Model tab's current one.
    """

    source = param.Selector(default=SYNTHETIC, objects=[SYNTHETIC], doc="Where the series come from")
    n_series = param.Integer(default=24, bounds=(1, None), doc="Series: the fleet's size, or the first N columns")
    n_time = param.Integer(default=120, bounds=(2, None), doc="Time steps of a synthetic fleet")
    seed = param.Integer(default=0, bounds=(0, None))
    log_transform = param.Boolean(default=False, doc="Fit log(series) (a table's catalogue default)")
    spec_choice = param.Selector(default=SPEC_SUGGESTED, objects=[SPEC_SUGGESTED, SPEC_MODEL_TAB])
    method = param.Selector(default="mle", objects=list(METHODS))
    nuts_chains = param.Integer(default=2, bounds=(1, 8))
    nuts_warmup = param.Integer(default=100, bounds=(10, 5000))
    nuts_draws = param.Integer(default=100, bounds=(10, 5000))
    backend = param.Selector(default="local", objects=list(BACKENDS))
    address = param.String(default="", doc="Ray cluster address host:port (empty: a local Ray on 127.0.0.1)")
    batch_size = param.Integer(default=0, bounds=(0, None), doc="Series per batch (0: the engine chooses)")

    data_error = param.String(default="", constant=True, doc="Why the chosen data cannot be used")
    progress = param.Integer(default=0, bounds=(0, 100), constant=True, doc="Series done, percent")
    done_series = param.Integer(default=0, constant=True)
    total_series = param.Integer(default=0, constant=True)
    result = param.ClassSelector(class_=FleetRun, default=None, allow_None=True, constant=True)
    selected = param.String(default="", doc="The series shown in the drill-down")
    detail = param.ClassSelector(class_=DrillDown, default=None, allow_None=True, constant=True)
    detail_message = param.String(default="", constant=True)

    def __init__(self, data: DataModel, spec: SpecModel, worker: SessionWorker, **params):
        super().__init__(worker, **params)
        self.data, self.spec_model = data, spec
        self.source_table = DataModel()  # the fleet's own table, shipped or uploaded, parsed as in the Data tab
        self.param.source.objects = [SYNTHETIC, *wide_datasets(), UPLOAD]
        self._started = 0.0
        self._where = "here"
        self._on_source()

    # -- data ----------------------------------------------------------------------------
    @param.depends("source", watch=True)
    def _on_source(self):
        if self.source == SYNTHETIC:
            self.n_series = self.param.n_series.default
            self._set(data_error="")
            return
        self.source_table.dataset = self.source  # UPLOAD: the last upload again, if there was one
        if self.source == UPLOAD and not self._has_upload():
            self._set(data_error=NO_UPLOAD)
            return
        self._table_loaded()

    def _has_upload(self) -> bool:
        return self.source_table.dataset == UPLOAD and self.source_table.frame is not None

    def _data_problem(self) -> str:
        """Why the chosen series cannot be fitted, or ''; a failed upload that kept the table is no reason."""
        if self.source == SYNTHETIC:
            return ""
        if self.source == UPLOAD and not self._has_upload():
            return NO_UPLOAD
        if self.source_table.frame is None:
            return "No table is loaded."
        return self.source_table.choice_error

    def load_upload(self, raw: bytes, filename: str = "upload.csv") -> bool:
        """Parse an uploaded wide CSV with the Data tab's parser; on failure say why and keep the rest."""
        if not self.source_table.load_upload(raw, filename):
            self._set(data_error=self.source_table.error)
            return False
        self.source = UPLOAD
        self._table_loaded()
        return True

    def _table_loaded(self):
        t = self.source_table
        if t.frame is None:
            self._set(data_error=t.error or "No table loaded.")
            return
        time_col = t.frame.attrs.get("time_column")
        n = sum(c != time_col for c in t.frame.columns)
        with param.parameterized.batch_call_watchers(self):
            self.n_series = n
            self.log_transform = bool(t.log_transform)
            self._set(data_error=t.error)

    def fleet_data(self) -> FleetData:
        """The chosen series (a synthetic fleet is drawn here: call it in the worker)."""
        if self.source == SYNTHETIC:
            return synthetic_fleet(self.n_series, self.n_time, self.seed)
        problem = self._data_problem()
        if problem:
            raise ValueError(problem)
        titles = series_titles(self.source) if self.source not in (SYNTHETIC, UPLOAD) else {}
        return table_fleet(self.source_table, self.n_series, self.log_transform, titles)

    def _spec(self, suggested: dict | None) -> ModelSpec:
        if self.spec_choice == SPEC_MODEL_TAB:
            if self.spec_model.spec is None:
                problem = "; ".join(self.spec_model.errors.values()) or "the model is not valid"
                raise ValueError(f"the Model tab's spec is not valid: {problem}")
            spec = self.spec_model.spec
        elif suggested is None:
            raise ValueError("this data has no suggested spec; choose the Model tab's spec")
        else:
            spec = ModelSpec.from_dict(suggested)
        if spec.exog_columns:
            raise ValueError("fleet fits take no regressors; remove the regression from the spec")
        return spec

    # -- running -------------------------------------------------------------------------
    def _check_address(self) -> str | None:
        address = self.address.strip()
        if self.backend == "ray" and address and not _ADDRESS.match(address):
            raise ValueError(f"'{address}' is not a Ray address; write host:port (e.g. 127.0.0.1:6379) "
                             "or ray://host:port, or leave it empty for a local Ray")
        return address or None

    def _method_options(self, spec: ModelSpec | None) -> dict:
        if self.method == "nuts":
            return {"nuts": dict(chains=self.nuts_chains, warmup=self.nuts_warmup, draws=self.nuts_draws)}
        if self.method == "filter":
            return {"params": self._last_params(spec)}
        return {}

    def _last_params(self, spec: ModelSpec | None) -> pd.DataFrame:
        """method="filter" re-filters at the parameters of the latest fit of the same spec."""
        r = self.result
        if r is None or r.table.empty or (spec is not None and r.spec != spec):
            raise ValueError("filtering needs fitted parameters: first fit this spec (mle, map or nuts), "
                             "then filter at its estimates")
        return r.table[["series", *engine.param_names(r.spec)]]

    def run(self) -> Future | None:
        """Start the fleet job in the worker; progress arrives through the session's event loop."""
        if self.busy:
            return None
        problem = self._data_problem()
        if problem:
            self._set(status="error", message=problem)
            return None
        try:
            address = self._check_address()
            tab_spec = self._spec(None) if self.spec_choice == SPEC_MODEL_TAB else None
            options = dict(method=self.method, backend=self.backend, address=address,
                           batch_size=self.batch_size or None, seed=self.seed,
                           **self._method_options(tab_spec or (self.result.spec if self.result else None)))
        except ValueError as exc:
            self._set(status="error", message=str(exc))
            return None
        self._where = where = "here" if self.backend == "local" else (
            f"on the Ray cluster at {address}" if address else "on a local Ray")
        self._started = time.perf_counter()

        def progress(done, total):
            self.post(lambda: self._progress(done, total))

        def job(cancel: CancelFlag):
            data = self.fleet_data()
            spec = tab_spec if tab_spec is not None else self._spec(data.suggested)
            wide = pd.DataFrame(data.Y.T, index=data.index, columns=data.names)
            with contextlib.ExitStack() as ray:
                if self.backend == "ray":   # the first job on a local Ray waits for it to start
                    self.post(lambda: self._set(message=RAY_STARTING[bool(address)].format(address=address)))
                    ray.enter_context(cluster.connected(address))
                self.post(lambda: self._progress(0, len(data.names)))
                start = time.perf_counter()
                try:
                    res, cancelled = engine.fit_many(spec, wide, progress=progress, cancel=cancel, **options), False
                except engine.FleetCancelled as exc:
                    res, cancelled = exc.partial, True
                    log.info("session %s: fleet job cancelled%s: %s", self.worker.session_id,
                             " (the session closed)" if self.worker.closed else "", exc)
            table = res.table.copy() if res is not None else pd.DataFrame(columns=["series", "status"])
            if data.titles:
                table.insert(1, "title", [data.titles.get(s, "") for s in table["series"]])
            return FleetRun(data, spec, options["method"], table, time.perf_counter() - start, cancelled)

        return self.submit(job, on_done=self._done, progress=0, done_series=0, total_series=0, detail=None,
                           detail_message="",
                           message=f"Preparing the series; they will be fitted ({self.method}) {where}…")

    def _progress(self, done: int, total: int) -> None:
        if self.busy and total:
            self._set(progress=int(round(100 * min(done, total) / total)), done_series=done, total_series=total,
                      message=f"Fitted {done} of {total} series ({time.perf_counter() - self._started:.1f} s).")

    def _done(self, run: FleetRun) -> None:
        t = run.table
        if run.cancelled and t.empty:
            self.finish("cancelled", "Cancelled before any batch finished. The previous result (if any) is kept.")
            return
        failed = int((t["status"] == "failed").sum())
        loose = int((t["status"] == "not_converged").sum())
        text = (f"Fitted {len(t)} series in {run.seconds:.1f} s ({run.series_per_s:.1f} series/s): "
                f"{failed} failed, {loose} not converged.")
        self.finish("cancelled" if run.cancelled else "done", ("Cancelled: " if run.cancelled else "") + text,
                    result=run, progress=100)

    def failure_message(self, exc: BaseException) -> str:
        where = "" if self._where == "here" else f" {self._where}"
        return f"The fleet job failed{where}: {exc}"

    # -- drill-down ----------------------------------------------------------------------
    def summary(self) -> dict[str, float]:
        """Headline numbers of the latest run."""
        r = self.result
        if r is None:
            return {}
        t = r.table
        return {"series": len(t), "series/s": r.series_per_s, "failed": int((t["status"] == "failed").sum()),
                "not converged": int((t["status"] == "not_converged").sum()),
                "anomalies": int(t["n_anomalies"].fillna(0).sum()) if "n_anomalies" in t else 0}

    def _row(self, name: str) -> tuple[int, dict]:
        names = list(self.result.table["series"])
        if name not in names:
            raise ValueError(f"no series named {name!r} in the results")
        i = names.index(name)
        return i, self.result.table.iloc[i].to_dict()

    def select(self, name: str) -> Future | None:
        """Show one series: its filter at the fitted parameters, computed in the worker."""
        self.selected = name
        if self.result is None:
            return None
        run = self.result
        try:
            i, row = self._row(name)
        except ValueError as exc:
            self._set(detail=None, detail_message=str(exc))
            return None
        if row["status"] == "failed":
            why = f" ({row['message']})" if row.get("message") else ""
            self._set(detail=None, detail_message=f"{name}: the fit failed{why}; there is nothing to draw.")
            return None
        params = {p: float(row[p]) for p in engine.param_names(run.spec)}
        self._set(detail_message=f"Filtering {name} at its fitted parameters…")
        return self.worker.submit(drill_down, run.spec, params, name, run.data.index, run.data.Y[i], row,
                                  on_done=self._detail_done, on_error=self._detail_failed)

    def _detail_done(self, detail: DrillDown) -> None:
        if detail.name == self.selected:
            n = int(detail.anomaly.sum())
            self._set(detail=detail, detail_message=f"{detail.name}: {n} anomal{'y' if n == 1 else 'ies'} "
                                                    f"(|one-step innovation| > {ANOMALY_Z:g} sd).")

    def _detail_failed(self, exc: BaseException) -> None:
        self._set(detail=None, detail_message=f"Could not draw {self.selected}: {exc}")

    def open_in_data(self, name: str | None = None) -> bool:
        """Load one series into the Data tab's model (as a single series) so Fit and Stream work on it."""
        name = name or self.selected
        if self.result is None or not name:
            return False
        run = self.result
        try:
            self._row(name)
        except ValueError as exc:
            self._set(detail_message=str(exc))
            return False
        d = run.data
        time_col = d.frame.attrs.get("time_column")
        frame = d.frame[[c for c in (time_col, name) if c]].copy()
        frame.attrs.update(d.frame.attrs)
        title = d.titles.get(name)
        self.data.load_frame(frame, source=f"{d.label}: {name}", target=name, log=d.log,
                             description=f"Series {name}{f' ({title})' if title else ''} from {d.label}.",
                             suggested=run.spec.to_dict())
        self._set(detail_message=f"{name} is loaded in the Data tab; the Fit and Stream tabs now work on it.")
        return True
