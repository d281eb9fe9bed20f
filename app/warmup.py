"""Compile the shipped datasets' quick fits once, in the background, when the server starts.

The first quick fit of a model is mostly compiling (the likelihood with its gradient, the
diffuse-start check, the smoother, then the forecast the Fit tab shows). The compiled programs
depend only on the model and the series' length, so fitting each shipped dataset's suggested
model once, exactly as the Fit tab would (the same data through `DataModel`, the same spec
through `SpecModel`), leaves them in this process's caches for every later session and in the
on-disk compilation cache for the next server start. The work runs in one low-priority daemon
thread that stops between datasets when asked (and when the process ends); a visitor's fit never waits for it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from typing import Sequence

from engine import background

log = logging.getLogger("streamssm.app")

_WARMING = threading.Event()   # set while a server's warm-up runs (one per process)


def warming() -> bool:
    """Whether this process's warm-up (`start_warmup`) is still compiling: a visitor's first fit
    meanwhile shares the two cores with it, and the Fit tab says so."""
    return _WARMING.is_set()


def warm_quick_fits(datasets: Sequence[str] | None = None, *, forecast: bool = True,
                    stop: threading.Event | None = None) -> dict[str, float | str]:
    """Quick-fit each dataset's suggested model (default: every shipped dataset, in catalogue order)
    as the Fit tab would, then, when `forecast`, its plug-in forecast at the tab's default horizon.

    Returns dataset → seconds taken, or the error's text for a dataset that could not be warmed
    (logged, never raised: warming is an optimisation). Checks `stop` before each dataset.
    """
    from engine import list_datasets

    from .viewmodels.data_model import DataModel
    from .viewmodels.fit_bayes import ForecastModel, forecast_bands
    from .viewmodels.fit_model import quick_fit
    from .viewmodels.spec_model import SpecModel

    names = list(list_datasets()["name"]) if datasets is None else list(datasets)
    done: dict[str, float | str] = {}
    for name in names:
        if stop is not None and stop.is_set():
            break
        start = time.perf_counter()
        try:
            data = DataModel(dataset=name)
            spec = SpecModel(data).spec
            if not data.ready or spec is None:
                raise ValueError(data.error or f"the suggested model of {name} is not valid")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # the fit's cautions are for the visitor who fits it
                fit = quick_fit(spec, data.y, data.exog_frame,
                                forecast_steps=ForecastModel.param.steps.default if forecast else None)
                if forecast and spec.regression is None:
                    forecast_bands(spec, dict(fit.params), data.y, ForecastModel.param.steps.default,
                                   data.index, "warm-up")
        except Exception as exc:   # noqa: BLE001 (a dataset that cannot be warmed is fitted cold later)
            done[name] = f"{type(exc).__name__}: {exc}"
            log.warning("warm-up of %s's quick fit failed: %s", name, done[name])
            continue
        done[name] = time.perf_counter() - start
        log.info("warm-up: %s's quick fit compiled in %.1f s", name, done[name])
    return done


def start_warmup(datasets: Sequence[str] | None = None, *, niceness: int = 10,
                 forecast: bool = True) -> tuple[threading.Thread, threading.Event]:
    """Run `warm_quick_fits` in a daemon thread at lower CPU priority (`niceness`, where the OS
    allows it per thread); returns (the thread, an event that stops it before its next dataset).
    Meant for the server's start hook; a server shutting down sets the event."""
    stop = threading.Event()

    def run():
        try:   # on Linux a thread has its own nice value; elsewhere the warm-up runs at normal priority
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
        except (AttributeError, OSError):
            pass
        try:
            warm_quick_fits(datasets, forecast=forecast, stop=stop)
        finally:
            _WARMING.clear()

    # the engine's exit hook sets `stop` and waits for the dataset in hand, so that a server
    # stopped mid-compile does not tear the interpreter down under XLA
    _WARMING.set()
    thread = background.start_thread(run, name="streamssm-warmup", stop=stop.set)
    return thread, stop
