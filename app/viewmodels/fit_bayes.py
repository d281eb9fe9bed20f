"""BayesFitModel: MAP (with its Laplace approximation) and NUTS fits run in the session's worker,
with live progress, cancel, diagnostics, posterior bands, one-step checks, save and reload."""

from __future__ import annotations

import io
import json
import os
import tempfile
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import param

import engine
from engine.spec import ModelSpec

from ..workers import SessionWorker
from .data_model import DataModel
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

    @property
    def idata(self):
        return self.draws if self.method == "nuts" else None


def _products(spec, draws, y, exog):
    return (engine.posterior_components(spec, draws, y, exog),
            engine.predictive_residuals(spec, draws, y, exog, max_draws=500))


def map_fit(spec: ModelSpec, y, exog) -> BayesResult:
    """Posterior mode by `engine.fit_map`; bands and checks from draws of its Laplace approximation."""
    res = engine.fit_map(spec, y, exog)
    draws = res.laplace_draws(LAPLACE_DRAWS)
    comps, check = _products(res.spec, draws, y, exog)
    summary = pd.DataFrame({"parameter": list(res.params), "mode": list(res.params.values()),
                            "Laplace sd": [float(np.std(draws[n])) for n in res.params]})
    return BayesResult("map", res.spec, draws, summary, None, comps, check)


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
                       idata.attrs.get("sampling_time") if hasattr(idata, "attrs") else None)


class BayesFitModel(param.Parameterized):
    """Runs the MAP or NUTS fit of the current data and spec (with priors); keeps the latest result.

    `posterior` (the NUTS InferenceData, fitted or reloaded) is what the streaming engine starts
    from: watch it to build an online belief. `extra_parts` lets other areas (the online belief)
    add named files to the saved session: name → (save() → bytes, load(bytes)).
    """

    chains = param.Integer(default=4, bounds=(1, 16))
    warmup = param.Integer(default=500, bounds=(10, 20000))
    draws = param.Integer(default=500, bounds=(10, 20000))
    seed = param.Integer(default=0, bounds=(0, None))

    status = param.Selector(default="idle", objects=["idle", "compiling", "running", "done", "cancelled", "error"],
                            constant=True)
    message = param.String(default="", constant=True)
    progress = param.Integer(default=0, bounds=(0, 100), constant=True, doc="NUTS progress, percent")
    result = param.ClassSelector(class_=BayesResult, default=None, allow_None=True, constant=True)
    posterior = param.Parameter(default=None, constant=True, doc="The latest NUTS posterior (InferenceData)")

    def __init__(self, data: DataModel, priors: PriorsModel, worker: SessionWorker, **params):
        super().__init__(**params)
        self.data, self.priors, self.worker = data, priors, worker
        self._cancel: threading.Event | None = None
        self._compiled: set = set()
        self.extra_parts: dict[str, tuple] = {}

    def _set(self, **values):
        with param.edit_constant(self):
            self.param.update(**values)

    @property
    def busy(self) -> bool:
        return self.status in ("compiling", "running")

    def _ready_spec(self) -> ModelSpec | None:
        if not self.data.ready:
            self._set(status="error", message=self.data.error or "Load a dataset first.")
            return None
        spec = self.priors.spec
        if spec is None:
            problem = "; ".join(self.priors.spec_model.errors.values()) or "the model is not valid"
            self._set(status="error", message=f"Fix the model first: {problem}")
            return None
        if self.priors.errors:
            self._set(status="error", message="Fix the priors first: " + "; ".join(self.priors.errors.values()))
            return None
        return spec

    def run_map(self) -> Future | None:
        """Start a MAP fit in the worker (None when busy or the inputs are not valid)."""
        if self.busy or (spec := self._ready_spec()) is None:
            return None
        self._set(status="running", progress=0, message="Finding the posterior mode (MAP) and its Laplace "
                                                         "approximation…")
        return self.worker.submit(map_fit, spec, self.data.y, self.data.exog_frame,
                                  on_done=self._done, on_error=self._failed)

    def run_nuts(self) -> Future | None:
        """Start a NUTS fit in the worker; progress arrives through the session's event loop."""
        if self.busy or (spec := self._ready_spec()) is None:
            return None
        self._cancel = cancel = threading.Event()
        key = (spec, len(self.data.y), self.warmup, self.draws, self.chains)
        first = key not in self._compiled
        self._set(status="compiling" if first else "running", progress=0,
                  message="Compiling the sampler for this model (the first NUTS fit of a model takes a while)…"
                  if first else "Sampling…")
        total_chains = self.chains

        def progress(chain, iteration, total):
            if self.worker.closed:  # the session ended: stop sampling instead of running on unseen
                cancel.set()
            elif chain == total_chains - 1:
                self.worker.post(lambda: self._progress(iteration, total))

        self._compiled.add(key)
        return self.worker.submit(
            lambda: nuts_fit(spec, self.data.y, self.data.exog_frame, chains=self.chains, warmup=self.warmup,
                             draws=self.draws, seed=self.seed, progress=progress, cancel=cancel),
            on_done=self._done, on_error=self._failed)

    def cancel(self) -> None:
        """Ask a running NUTS fit to stop (it stops at its next progress step)."""
        if self._cancel is not None:
            self._cancel.set()

    def _progress(self, iteration: int, total: int) -> None:
        if self.busy:
            self._set(status="running", progress=int(round(100 * min(iteration, total) / total)),
                      message=f"Sampling: iteration {min(iteration, total)} of {total} (warm-up {self.warmup}).")

    def _done(self, result: BayesResult) -> None:
        extra = {"posterior": result.idata} if result.method == "nuts" else {}
        if result.method == "nuts":
            d = result.diagnosis
            msg = f"NUTS finished: {d.verdict}."
        else:
            msg = "MAP fit finished (bands from its Laplace approximation)."
        self._set(result=result, status="done", progress=100 if result.method == "nuts" else self.progress,
                  message=msg, **extra)

    def _failed(self, exc: BaseException) -> None:
        if isinstance(exc, engine.FitCancelled):
            self._set(status="cancelled", message=f"{exc}. The previous result (if any) is kept.")
        else:
            self._set(status="error", message=f"The fit failed: {exc}")

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
                self._set(status="running", message=f"Loaded the posterior from {filename}; computing its "
                                                     "diagnostics and bands…")
                y = np.asarray(idata.observed_data["y"])  # the data it was fitted to
                exog = np.asarray(idata.constant_data["exog"]) if "constant_data" in idata.groups() else None
                return self.worker.submit(from_posterior, spec, idata, y, exog,
                                          on_done=self._done, on_error=self._failed)
            for part, (_save, load) in self.extra_parts.items():
                if name.startswith(part):
                    load(content)
                    return None
            raise ValueError("expected a model spec (.json) or a posterior (.nc)")
        except (ValueError, UnicodeDecodeError, OSError) as exc:
            self._set(status="error", message=f"Could not load {filename}: {exc}")
            return None

    def _load_spec(self, spec: ModelSpec) -> None:
        self.priors.spec_model.load(spec)
        self.priors.load({k: dict(v) for k, v in spec.priors})
