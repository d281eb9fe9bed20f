"""FitModel: the quick (maximum likelihood) fit, run in the session's worker."""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import param

import engine
from engine.mle import start_params
from engine.spec import ModelSpec

from ..workers import SessionWorker
from .data_model import DataModel
from .job import Job
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
    se_notes: dict[str, str] = field(default_factory=dict)  # why a standard error is not defined, by parameter
    auxiliary: dict[str, np.ndarray] = field(default_factory=dict)  # name → auxiliary residuals (time,)

    def fields(self) -> dict:
        """The estimates and statistics as plain JSON values (`from_fields` rebuilds the rest)."""
        return {"params": self.params, "se": self.se, "loglik": self.loglik, "aic": self.aic, "bic": self.bic,
                "converged": self.converged, "message": self.message, "n_obs": self.n_obs,
                "warnings": list(self.warnings), "se_notes": dict(self.se_notes)}

    def table(self) -> pd.DataFrame:
        """One row per parameter; a "note" column says why a standard error is not defined, if any is not."""
        table = pd.DataFrame({"parameter": list(self.params), "estimate": list(self.params.values()),
                              "std. error": [self.se[n] for n in self.params]})
        if self.se_notes:
            table["note"] = [self.se_notes.get(n, "") for n in self.params]
        return table

    def verdict(self) -> str:
        """What the fit's status line says about the fit itself: convergence, undefined standard
        errors and cautions (never empty of a reason when the fit did not converge)."""
        note = "" if self.converged else (f" The fit did not converge: {self.message or 'no reason reported'}. "
                                          "The estimates may not be the maximum likelihood.")
        if self.se_notes:
            n = len(self.se_notes)
            note += (f" {n} of {len(self.params)} standard errors are not defined (the table's note says why).")
        return note + "".join(f" Caution: {w}" for w in self.warnings)


def quick_fit(spec: ModelSpec, y: np.ndarray, exog: pd.DataFrame | None,
              progress: Callable[[str], None] | None = None, forecast_steps: int | None = None) -> QuickFit:
    """Maximum likelihood (`engine.fit_mle`), then the smoothed components at the estimate.

    The smoother's program depends only on the model and the series' shape: it compiles on a
    second thread at a valid start while the fit runs (the first fit of a model is mostly
    compiling), and so does, with `forecast_steps`, the program of the plug-in forecast that the
    Fit tab shows next (`engine.posterior_forecast` over one draw; models with regressors have
    none). progress: as `engine.fit_mle`'s, called from the calling thread.
    """
    say = progress or (lambda text: None)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamssm-smoother") as pool:
        start = start_params(spec, y, exog)
        compiling = [pool.submit(engine.smooth, spec, start, y, exog)]
        if forecast_steps and spec.regression is None:
            compiling.append(pool.submit(engine.posterior_forecast, spec, start, y, int(forecast_steps)))
        res = engine.fit_mle(spec, y, exog, progress=say)
        say("smoothing the components")
        for job in compiling:
            job.exception()   # a failure shows in the smoothing below or in the forecast, at the estimate
    return from_fields(res.spec, {"params": dict(res.params), "se": dict(res.se), "loglik": res.loglik,
                                  "aic": res.aic, "bic": res.bic, "converged": res.converged,
                                  "message": res.message, "n_obs": res.n_obs, "warnings": list(res.warnings),
                                  "se_notes": dict(res.se_notes)},
                       y, exog)


def auxiliary_residuals(spec: ModelSpec, smoothed: engine.SmoothedComponents) -> dict[str, np.ndarray]:
    """The residual checks of a fit: the auxiliary residuals of the irregular (outliers) and of the
    level and slope (`trend`) disturbances (breaks), those the model has as stochastic."""
    out = {"irregular": np.asarray(smoothed.auxiliary_measurement)}
    state = np.asarray(smoothed.auxiliary_state)
    for selector in engine.component_selectors(spec):
        if selector.name in ("level", "trend"):
            out[selector.name] = state[:, selector.states[0]]
    return {name: values for name, values in out.items() if np.isfinite(values).any()}


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
                    tuple(str(w) for w in fields.get("warnings", ())),
                    {str(k): str(v) for k, v in fields.get("se_notes", {}).items()}, auxiliary_residuals(spec, sm))


class FitModel(Job):
    """Runs `quick_fit` for the current data and spec (a `Job`: status, phase, message); keeps the
    latest result."""

    result = param.ClassSelector(class_=QuickFit, default=None, allow_None=True, constant=True)
    stale = param.Boolean(default=False, constant=True, doc="The data or spec changed since the fit")
    forecast_steps = param.Integer(default=None, allow_None=True, bounds=(1, None),
                                   doc="Steps of the forecast shown after a fit (its program compiles while the "
                                       "fit runs); set by the forecast view-model")

    def __init__(self, data: DataModel, spec: SpecModel, worker: SessionWorker, **params):
        super().__init__(worker, **params)
        self.data, self.spec_model = data, spec
        self._fitted_on = None
        data.param.watch(self._mark_stale, ["frame", "target", "exog", "log_transform"])
        spec.param.watch(self._mark_stale, ["spec"])

    def _inputs(self):
        return (self.spec_model.spec, self.data.source, self.data.target, tuple(self.data.exog),
                self.data.log_transform, self.data.time_column)

    def _mark_stale(self, *_):
        self._set(stale=self.result is not None and self._inputs() != self._fitted_on)

    def run_quick_fit(self) -> Future | None:
        """Start the fit in the worker; returns its future (None when the inputs are not valid or a
        fit is running)."""
        if self.busy:
            return None
        spec = self.spec_model.spec
        if not self.data.ready:
            self.refuse(self.data.error or "Load a dataset first.")
            return None
        if spec is None:
            problem = "; ".join(self.spec_model.errors.values()) or "the model is not valid"
            self.refuse(f"Fix the model first: {problem}")
            return None
        inputs, y, exog, steps = self._inputs(), self.data.y, self.data.exog_frame, self.forecast_steps
        progress = lambda phase: self.report(phase=phase, message=self._running_message(phase))
        return self.submit(lambda cancel: quick_fit(spec, y, exog, progress, steps),
                           message=self._running_message("starting"), phase="starting",
                           on_done=lambda r: self._done(r, inputs))

    @staticmethod
    def _running_message(phase: str) -> str:
        from ..warmup import warming

        note = (" (the server is still compiling the shipped datasets' models since its start: until it has, a "
                "first fit takes longer)") if warming() else ""
        return f"Fitting by maximum likelihood: {phase}…{note}"

    def _done(self, result: QuickFit, inputs) -> None:
        """Publish a finished fit. The status is set last and whatever happens: a watcher of the result
        (another tab drawing it) that fails is logged and named in the message, and the Fit tab
        never stays 'running'."""
        self._fitted_on = inputs
        note = result.verdict()
        try:
            self._set(result=result, stale=inputs != self._inputs())
        except Exception as exc:   # noqa: BLE001 (any failure of a view of the fit; the fit itself stands)
            log.exception("showing the quick fit failed")
            note += f" Part of the page could not show it ({type(exc).__name__}: {exc})."
        finally:
            self.finish("done", f"Fitted {result.n_obs} observations.{note}")

    def restore(self, result: QuickFit | None, message: str) -> None:
        """Show a fit rebuilt elsewhere (a reloaded session) as a fit of the current data and spec."""
        self._fitted_on = self._inputs()
        self._set(result=result, status="done" if result is not None else "idle", stale=False, phase="",
                  message=message if result is not None else "")

    @property
    def converged(self) -> bool | None:
        """The shown fit's verdict: None without a fit."""
        return None if self.result is None else self.result.converged

    def failure_message(self, exc: BaseException) -> str:
        return f"The fit failed: {exc}"
