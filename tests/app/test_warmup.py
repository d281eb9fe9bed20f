"""The server-start warm-up: it compiles what the Fit tab's quick fit of a shipped dataset needs."""

from __future__ import annotations

import threading

from app.viewmodels import DataModel, FitModel, SpecModel
from app.warmup import start_warmup, warm_quick_fits
from engine import mle


def test_a_warmed_dataset_fits_without_compiling_again(worker):
    """After the warm-up of Nile, the Fit tab's quick fit of Nile's suggested model reuses every
    compiled program of the fit (none is added to the likelihood program's cache)."""
    done = warm_quick_fits(["nile"], forecast=False)
    assert isinstance(done["nile"], float), done
    compiled = mle._evaluate._cache_size()
    data = DataModel(dataset="nile")
    fit = FitModel(data, SpecModel(data), worker)
    fit.run_quick_fit().result()
    assert fit.status == "done" and fit.converged, fit.message
    assert mle._evaluate._cache_size() == compiled


def test_a_dataset_that_cannot_be_warmed_is_reported_not_raised():
    done = warm_quick_fits(["no_such_dataset"])
    assert list(done) == ["no_such_dataset"] and isinstance(done["no_such_dataset"], str)


def test_a_stopped_warmup_fits_nothing_more():
    stop = threading.Event()
    stop.set()
    assert warm_quick_fits(["nile", "airpassengers"], stop=stop) == {}
    thread, stop = start_warmup([], forecast=False)
    thread.join(timeout=60)
    assert not thread.is_alive() and thread.daemon
