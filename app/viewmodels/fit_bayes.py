"""BayesFitModel: MAP (with its Laplace approximation) and NUTS fits run in the session's worker,
with live progress, cancel, diagnostics, posterior bands, one-step checks, save and reload.
ForecastModel: the posterior forecast of the session's latest fit, also computed in the worker."""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import param

import engine
from engine.spec import ModelSpec

from ..plots import BAND_PROB
from ..workers import SessionWorker
from .data_model import DataModel
from .job import CancelFlag, Job
from .priors_model import PriorsModel

LAPLACE_DRAWS = 500


@dataclass(frozen=True)
class BayesResult:
    """What a finished Bayesian fit shows."""

    method: str                                  # "map" or "nuts"
    spec: ModelSpec
    draws: Any                                   # InferenceData (NUTS) or dict name → (draw,) (Laplace)
    summary: pd.DataFrame                        # per parameter: estimate(s) and spread
    diagnosis: engine.Diagnosis | None           # NUTS only
    components: dict[str, engine.Band]
    check: engine.PredictiveCheck
    seconds: float | None = None
    y: np.ndarray | None = None                  # (time,) the series it was fitted to
    exog: np.ndarray | None = None               # (time, k) its regressors, if any

    @property
    def idata(self):
        return self.draws if self.method == "nuts" else None

    @property
    def mode(self) -> dict[str, float] | None:
        """The MAP estimate (None for NUTS)."""
        if self.method != "map":
            return None
        return dict(zip(self.summary["parameter"], map(float, self.summary["mode"])))

    @property
    def label(self) -> str:
        n = len(engine.posterior_matrix(self.spec, self.draws))
        return f"NUTS posterior (S = {n} draws)" if self.method == "nuts" else f"MAP, Laplace draws (S = {n})"


def code_names(text: str, names) -> str:
    """`text` for a Markdown pane with each parameter name in `names` set as code: a name such as
    `sigma2.ar` otherwise reads as a web address and becomes a link."""
    names = sorted({str(n) for n in names}, key=len, reverse=True)
    if not names:
        return text
    pattern = re.compile(r"(?<![\w.`])(" + "|".join(map(re.escape, names)) + r")(?![\w`])")
    return pattern.sub(lambda m: f"`{m.group(1)}`", text)


def _products(spec, draws, y, exog):
    return (engine.posterior_components(spec, draws, y, exog, hdi_prob=BAND_PROB, equal_tailed=True),
            engine.predictive_residuals(spec, draws, y, exog, max_draws=500))


def _as_array(spec: ModelSpec, exog) -> np.ndarray | None:
    """The spec's regressors as a (time, k) array (None without a regression)."""
    if spec.regression is None or exog is None:
        return None
    if hasattr(exog, "columns"):
        exog = exog[list(spec.exog_columns)]
    return np.asarray(exog, dtype=float)


def fitted_data(idata) -> tuple[np.ndarray, np.ndarray | None]:
    """(y, exog) a NUTS posterior was fitted to, from its observed and constant data."""
    y = np.asarray(idata.observed_data["y"])
    exog = np.asarray(idata.constant_data["exog"]) if "constant_data" in idata.groups() else None
    return y, exog


def map_fit(spec: ModelSpec, y, exog) -> BayesResult:
    """Posterior mode by `engine.fit_map`; bands and checks from draws of its Laplace approximation."""
    res = engine.fit_map(spec, y, exog)
    return from_laplace(res.spec, res.params, res.laplace_draws(LAPLACE_DRAWS), y, exog)


def from_laplace(spec: ModelSpec, mode: dict[str, float], draws: dict[str, np.ndarray], y, exog) -> BayesResult:
    """Everything the page shows about a MAP fit, from its mode and Laplace draws (fresh or reloaded)."""
    comps, check = _products(spec, draws, y, exog)
    summary = pd.DataFrame({"parameter": list(mode), "mode": list(mode.values()),
                            "Laplace sd": [float(np.std(draws[n])) for n in mode]})
    return BayesResult("map", spec, draws, summary, None, comps, check, y=np.asarray(y, dtype=float),
                       exog=_as_array(spec, exog))


def nuts_fit(spec: ModelSpec, y, exog, *, chains, warmup, draws, seed, progress, cancel) -> BayesResult:
    """NUTS by `engine.fit_nuts`, then diagnostics, posterior bands and one-step checks."""
    idata = engine.fit_nuts(spec, y, exog, chains=chains, warmup=warmup, draws=draws, seed=seed,
                            progress=progress, cancel=cancel)
    return from_posterior(spec, idata, y, exog)


def from_posterior(spec: ModelSpec, idata, y, exog) -> BayesResult:
    """Everything the page shows about a posterior sample (a fresh fit or a reloaded file)."""
    diagnosis = engine.diagnose(idata)
    comps, check = _products(spec, idata, y, exog)
    summary = diagnosis.table.reset_index(names="parameter")
    return BayesResult("nuts", spec, idata, summary, diagnosis, comps, check,
                       idata.attrs.get("sampling_time") if hasattr(idata, "attrs") else None,
                       y=np.asarray(y, dtype=float), exog=_as_array(spec, exog))


class BayesFitModel(Job):
    """Runs the MAP or NUTS fit of the current data and spec (with priors) as a `Job` (its phase
    is "compiling" while the sampler compiles, then "sampling"); keeps the latest result.

    `posterior` (the NUTS InferenceData, fitted or reloaded) is what the streaming engine starts
    from: watch it to build an online belief. `extra_parts` lets other areas (the online belief)
    add named files to the saved session: name → (save() → bytes, load(bytes)).
    """

    chains = param.Integer(default=4, bounds=(1, 16))
    warmup = param.Integer(default=500, bounds=(10, 20000))
    draws = param.Integer(default=500, bounds=(10, 20000))
    seed = param.Integer(default=0, bounds=(0, None))

    progress = param.Integer(default=0, bounds=(0, 100), constant=True, doc="NUTS progress, percent")
    result = param.ClassSelector(class_=BayesResult, default=None, allow_None=True, constant=True)
    posterior = param.Parameter(default=None, constant=True, doc="The latest NUTS posterior (InferenceData)")

    def __init__(self, data: DataModel, priors: PriorsModel, worker: SessionWorker, **params):
        super().__init__(worker, **params)
        self.data, self.priors = data, priors
        self._compiled: set = set()
        self.extra_parts: dict[str, tuple] = {}

    def _ready_spec(self) -> ModelSpec | None:
        if not self.data.ready:
            self.refuse(self.data.error or "Load a dataset first.")
            return None
        spec = self.priors.spec
        if spec is None:
            problem = "; ".join(self.priors.spec_model.errors.values()) or "the model is not valid"
            self.refuse(f"Fix the model first: {problem}")
            return None
        if self.priors.errors:
            self.refuse("Fix the priors first: " + "; ".join(self.priors.errors.values()))
            return None
        return spec

    def run_map(self) -> Future | None:
        """Start a MAP fit in the worker (None when busy or the inputs are not valid)."""
        if self.busy or (spec := self._ready_spec()) is None:
            return None
        y, exog = self.data.y, self.data.exog_frame
        return self.submit(lambda cancel: map_fit(spec, y, exog), on_done=self._done, progress=0,
                           message="Finding the posterior mode (MAP) and its Laplace approximation…")

    def run_nuts(self) -> Future | None:
        """Start a NUTS fit in the worker; progress arrives through the session's event loop."""
        if self.busy or (spec := self._ready_spec()) is None:
            return None
        key = (spec, len(self.data.y), self.warmup, self.draws, self.chains)
        first = key not in self._compiled
        chains, warmup, draws, seed = self.chains, self.warmup, self.draws, self.seed
        y, exog = self.data.y, self.data.exog_frame

        def work(cancel: CancelFlag) -> BayesResult:
            def progress(chain, iteration, total):
                if chain == chains - 1:
                    i = min(iteration, total)
                    self.report(phase="sampling", progress=int(round(100 * i / total)),
                                message=f"Sampling: iteration {i} of {total} (warm-up {warmup}).")
            return nuts_fit(spec, y, exog, chains=chains, warmup=warmup, draws=draws, seed=seed,
                            progress=progress, cancel=cancel)

        self._compiled.add(key)
        return self.submit(work, on_done=self._done, progress=0, phase="compiling" if first else "sampling",
                           message="Compiling the sampler for this model (the first NUTS fit of a model takes a "
                                   "while)…" if first else "Sampling…")

    def _done(self, result: BayesResult) -> None:
        extra = {"posterior": result.idata} if result.method == "nuts" else {}
        if result.method == "nuts":
            d = result.diagnosis
            msg = f"NUTS finished: {code_names(d.verdict, result.summary['parameter'])}."
        else:
            msg = "MAP fit finished (bands from its Laplace approximation)."
        self.finish("done", msg, result=result, progress=100 if result.method == "nuts" else self.progress, **extra)

    def restore(self, result: BayesResult | None, posterior, message: str) -> None:
        """Show a fit rebuilt elsewhere (a reloaded session): its result and NUTS posterior (either may be None)."""
        self._set(result=result, posterior=posterior, status="done" if result is not None else "idle", phase="",
                  progress=100 if result is not None and result.method == "nuts" else 0, message=message)

    def failure_message(self, exc: BaseException) -> str:
        return f"The fit failed: {exc}"

    # -- save and reload -----------------------------------------------------------------
    def spec_file(self) -> io.BytesIO:
        """The model spec with its priors, as JSON."""
        spec = self.priors.spec
        if spec is None:
            raise ValueError("the model is not valid; there is no spec to save")
        return io.BytesIO(json.dumps(spec.to_dict(), indent=2).encode())

    def posterior_file(self) -> io.BytesIO:
        """The NUTS posterior (with the spec and priors in its attributes) as netCDF."""
        if self.posterior is None:
            raise ValueError("no NUTS posterior yet; run a NUTS fit first")
        with tempfile.TemporaryDirectory() as tmp:
            path = engine.to_netcdf(self.posterior, os.path.join(tmp, "posterior.nc"))
            with open(path, "rb") as f:
                return io.BytesIO(f.read())

    def load_file(self, content: bytes, filename: str) -> Future | None:
        """Reload a saved spec (.json) or posterior (.nc); the spec goes to the Model tab's widgets."""
        name = filename.lower()
        try:
            if name.endswith(".json"):
                spec = ModelSpec.from_json(content.decode("utf-8"))
                self._load_spec(spec)
                self._set(status="idle", message=f"Loaded the model from {filename}.")
                return None
            if name.endswith(".nc"):
                with tempfile.TemporaryDirectory() as tmp:
                    path = os.path.join(tmp, "posterior.nc")
                    with open(path, "wb") as f:
                        f.write(content)
                    idata = engine.from_netcdf(path)
                    idata.load()
                spec = engine.spec_of(idata)
                self._load_spec(spec)
                y, exog = fitted_data(idata)
                return self.submit(lambda cancel: from_posterior(spec, idata, y, exog), on_done=self._done,
                                   message=f"Loaded the posterior from {filename}; computing its diagnostics and "
                                           "bands…")
            for part, (_save, load) in self.extra_parts.items():
                if name.startswith(part):
                    load(content)
                    return None
            raise ValueError("expected a model spec (.json) or a posterior (.nc)")
        except (ValueError, UnicodeDecodeError, OSError, RecursionError) as exc:   # RecursionError: deep JSON
            self.refuse(f"Could not load {filename}: {exc}")
            return None

    def _load_spec(self, spec: ModelSpec) -> None:
        self.priors.spec_model.load(spec)
        self.priors.load({k: dict(v) for k, v in spec.priors})


# -- posterior forecast ---------------------------------------------------------------------
FORECAST_HISTORY = 60   # observations shown before the forecast (at least three horizons)


def time_axis(index: pd.Index | None, n: int, steps: int = 0) -> pd.Index:
    """Times of n observations and `steps` more: the data's dates continued at their frequency when
    `index` holds exactly n dates with a known or inferable frequency, else positions 0, 1, …"""
    if isinstance(index, pd.DatetimeIndex) and len(index) == n and n >= 1:
        freq = index.freq
        if freq is None and n >= 3:
            try:
                freq = pd.infer_freq(index)
            except (TypeError, ValueError):
                freq = None
        if freq is not None:
            return index.append(pd.date_range(index[-1], periods=steps + 1, freq=freq)[1:])
    return pd.RangeIndex(n + steps)


@dataclass(frozen=True)
class ForecastBands:
    """A posterior forecast ready to draw: the last observations, then the h-step mean and 50/95% bands."""

    label: str                   # which fit's draws
    history: pd.DataFrame        # time, y: the last observations
    future: pd.DataFrame         # time, mean, lo50, hi50, lo95, hi95: one row per step ahead


def forecast_bands(spec: ModelSpec, posterior, y, steps: int, index: pd.Index | None = None, label: str = "",
                   history: int = FORECAST_HISTORY) -> ForecastBands:
    """`engine.posterior_forecast` over a fit's draws (parameter and state uncertainty mixed) as 50/95%
    bands after the last observations, on the data's time axis."""
    if spec.regression is not None:
        raise ValueError("a model with regressors needs their future values to forecast; "
                         "they are not known here, so there is no forecast")
    y = np.asarray(y, dtype=float)
    fc = engine.posterior_forecast(spec, posterior, y, int(steps), levels=(0.5, 0.95))
    times = time_axis(index, len(y), int(steps))
    n, start = len(y), max(0, len(y) - max(history, 3 * int(steps)))
    (lo50, hi50), (lo95, hi95) = fc.band(0.5), fc.band(0.95)
    future = pd.DataFrame({"time": times[n:], "mean": fc.mean, "lo50": lo50, "hi50": hi50, "lo95": lo95,
                           "hi95": hi95})
    return ForecastBands(label, pd.DataFrame({"time": times[start:n], "y": y[start:]}), future)


class ForecastModel(Job):
    """The posterior forecast of the session's latest fit: the NUTS draws, the MAP fit's Laplace draws,
    or the quick fit's estimate (one draw: the plug-in forecast). A `Job`, recomputed in the session's
    worker when a fit finishes or the horizon changes; at most one computation runs, the latest
    request wins."""

    steps = param.Integer(default=24, bounds=(1, 500), doc="Steps ahead")
    result = param.ClassSelector(class_=ForecastBands, default=None, allow_None=True, constant=True)

    def __init__(self, data: DataModel, worker: SessionWorker, bayes: BayesFitModel | None = None, fit=None,
                 **params):
        super().__init__(worker, **params)
        self.data = data
        self._source: tuple | None = None      # (spec, posterior, y, label) of the latest fit
        self._wanted = 0                       # id of the latest request; older results are dropped
        self._computing = 0                    # id of the request being computed
        self._in_worker = False                # a computation is queued or running (a fit's end may idle the status)
        if bayes is not None:
            bayes.param.watch(self._on_bayes, ["result"])
        if fit is not None:
            fit.param.watch(self._on_quick_fit, ["result"])
            fit.forecast_steps = self.steps   # the quick fit compiles this forecast's program meanwhile
            self.param.watch(lambda e: setattr(fit, "forecast_steps", e.new), ["steps"])

    def _on_bayes(self, event):
        r = event.new
        self.follow(None if r is None else (r.spec, r.draws, r.y, r.label))

    def _on_quick_fit(self, event):
        r = event.new
        y = getattr(r, "y", None)
        self.follow(None if r is None or y is None else
                    (r.spec, dict(r.params), y, "quick fit estimate (plug-in, S = 1 draw)"))

    def follow(self, source: tuple | None) -> Future | None:
        """Forecast from (spec, posterior, y, label) from now on (None: no fit, no forecast)."""
        self._source = source
        if source is None:
            self._wanted += 1
            self._set(result=None, status="idle", phase="", message="")
            return None
        return self.refresh()

    @param.depends("steps", watch=True)
    def refresh(self) -> Future | None:
        """Forecast the latest fit in the worker; while one runs, the next starts when it ends."""
        self._wanted += 1
        if self._source is None or self._in_worker:
            return None
        return self._submit()

    def _submit(self) -> Future | None:
        spec, posterior, y, label = self._source
        if spec.regression is not None:
            self._set(result=None)
            self.refuse("A model with regressors needs their future values to forecast; they are not known here.")
            return None
        index = self.data.index if self.data.frame is not None else None
        self._computing, steps = self._wanted, self.steps
        self._in_worker = True
        return self.submit(lambda cancel: forecast_bands(spec, posterior, y, steps, index, label),
                           message=f"Forecasting {steps} steps from the {label}…", on_done=self._done)

    def _superseded(self) -> bool:
        """A newer request came while this one ran: run that one instead (True), or nothing when
        there is no fit any more."""
        self._in_worker = False
        if self._computing == self._wanted:
            return False
        self._set(status="idle", phase="")
        if self._source is not None:
            self._submit()
        return True

    def _done(self, result: ForecastBands) -> None:
        if not self._superseded():
            self.finish("done", f"{len(result.future)} steps ahead from the {result.label}: forecast mean with "
                                "50% and 95% bands.", result=result)

    def _failed(self, exc: BaseException) -> None:
        if not self._superseded():
            super()._failed(exc)

    def failure_message(self, exc: BaseException) -> str:
        return f"The forecast failed: {exc}"
