"""FitModel: the quick (maximum likelihood) fit, run in the session's worker."""

from __future__ import annotations

import logging
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import pandas as pd
import param

import engine
from engine.spec import ModelSpec

from ..workers import SessionWorker
from .data_model import DataModel
from .spec_model import SpecModel

BAND_Z = 1.959963984540054  # 95% normal band
log = logging.getLogger("streamssm.app")


@dataclass(frozen=True)
class QuickFit:
    """What a finished quick fit shows: estimates, fit statistics and smoothed components."""

    spec: ModelSpec
    params: dict[str, float]
    se: dict[str, float]
    loglik: float
    aic: float
    bic: float
    converged: bool
    message: str
    n_obs: int
    components: dict[str, tuple[np.ndarray, np.ndarray]]  # name → (smoothed mean, sd), each (time,)
    y: np.ndarray | None = None                           # (time,) the series it was fitted to
    warnings: tuple[str, ...] = ()                        # what makes the fit less exact than it looks

    def fields(self) -> dict:
        """The estimates and statistics as plain JSON values (`from_fields` rebuilds the rest)."""
        return {"params": self.params, "se": self.se, "loglik": self.loglik, "aic": self.aic, "bic": self.bic,
                "converged": self.converged, "message": self.message, "n_obs": self.n_obs,
                "warnings": list(self.warnings)}

    def table(self) -> pd.DataFrame:
        return pd.DataFrame({"parameter": list(self.params), "estimate": list(self.params.values()),
                             "std. error": [self.se[n] for n in self.params]})


def quick_fit(spec: ModelSpec, y: np.ndarray, exog: pd.DataFrame | None) -> QuickFit:
    """Maximum likelihood (`engine.fit_mle`), then the smoothed components at the estimate."""
    res = engine.fit_mle(spec, y, exog)
    return from_fields(res.spec, {"params": dict(res.params), "se": dict(res.se), "loglik": res.loglik,
                                  "aic": res.aic, "bic": res.bic, "converged": res.converged,
                                  "message": res.message, "n_obs": res.n_obs, "warnings": list(res.warnings)},
                       y, exog)


def from_fields(spec: ModelSpec, fields: dict, y: np.ndarray, exog: pd.DataFrame | None) -> QuickFit:
    """A QuickFit from its estimates and statistics (a fresh fit or a reloaded one): the smoothed
    components at the estimate are computed here."""
    params = {k: float(v) for k, v in fields["params"].items()}
    sm = engine.smooth(spec, params, y, exog)
    comps = {name: (np.asarray(mean), np.sqrt(np.clip(np.asarray(var), 0.0, None)))
             for name, (mean, var) in sm.components.items()}
    return QuickFit(spec, params, {k: float(v) for k, v in fields["se"].items()}, float(fields["loglik"]),
                    float(fields["aic"]), float(fields["bic"]), bool(fields["converged"]), str(fields["message"]),
                    int(fields["n_obs"]), comps, np.asarray(y, dtype=float),
                    tuple(str(w) for w in fields.get("warnings", ())))


class FitModel(param.Parameterized):
    """Runs `quick_fit` for the current data and spec; keeps the latest result."""

    status = param.Selector(default="idle", objects=["idle", "running", "done", "error"], constant=True)
    message = param.String(default="", constant=True)
    result = param.ClassSelector(class_=QuickFit, default=None, allow_None=True, constant=True)
    stale = param.Boolean(default=False, constant=True, doc="The data or spec changed since the fit")

    def __init__(self, data: DataModel, spec: SpecModel, worker: SessionWorker, **params):
        super().__init__(**params)
        self.data, self.spec_model, self.worker = data, spec, worker
        self._fitted_on = None
        data.param.watch(self._mark_stale, ["frame", "target", "exog", "log_transform"])
        spec.param.watch(self._mark_stale, ["spec"])

    def _inputs(self):
        return (self.spec_model.spec, self.data.source, self.data.target, tuple(self.data.exog),
                self.data.log_transform, self.data.time_column)

    def _mark_stale(self, *_):
        with param.edit_constant(self):
            self.stale = self.result is not None and self._inputs() != self._fitted_on

    def _set(self, **values):
        with param.edit_constant(self):
            self.param.update(**values)

    def run_quick_fit(self) -> Future | None:
        """Start the fit in the worker; returns its future (None when the inputs are not valid)."""
        if self.status == "running":
            return None
        spec = self.spec_model.spec
        if not self.data.ready:
            self._set(status="error", message=self.data.error or "Load a dataset first.")
            return None
        if spec is None:
            problem = "; ".join(self.spec_model.errors.values()) or "the model is not valid"
            self._set(status="error", message=f"Fix the model first: {problem}")
            return None
        inputs = self._inputs()
        self._set(status="running", message="Fitting by maximum likelihood (the first fit of a model "
                                            "also compiles it)…")
        return self.worker.submit(quick_fit, spec, self.data.y, self.data.exog_frame,
                                  on_done=lambda r: self._done(r, inputs), on_error=self._failed)

    def _done(self, result: QuickFit, inputs) -> None:
        """Publish a finished fit. The status is set last and whatever happens: a watcher of the result
        (another tab drawing it) that fails is logged and named in the message, and the Fit tab
        never stays 'running'."""
        self._fitted_on = inputs
        note = "" if result.converged else f" The optimiser did not report convergence ({result.message})."
        note += "".join(f" Caution: {w}" for w in result.warnings)
        try:
            self._set(result=result, stale=inputs != self._inputs())
        except Exception as exc:   # noqa: BLE001 (any failure of a view of the fit; the fit itself stands)
            log.exception("showing the quick fit failed")
            note += f" Part of the page could not show it ({type(exc).__name__}: {exc})."
        finally:
            self._set(status="done", message=f"Fitted {result.n_obs} observations.{note}")

    def restore(self, result: QuickFit | None, message: str) -> None:
        """Show a fit rebuilt elsewhere (a reloaded session) as a fit of the current data and spec."""
        self._fitted_on = self._inputs()
        self._set(result=result, status="done" if result is not None else "idle", stale=False,
                  message=message if result is not None else "")

    def _failed(self, exc: BaseException) -> None:
        self._set(status="error", message=f"The fit failed: {exc}")
