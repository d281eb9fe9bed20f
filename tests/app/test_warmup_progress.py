"""A fit started while the server's warm-up still compiles says so in its progress message."""

from __future__ import annotations

import threading

from app import warmup
from app.viewmodels import FitModel


def test_a_fit_during_the_warmup_says_the_server_is_still_compiling(monkeypatch):
    release = threading.Event()
    monkeypatch.setattr(warmup, "warm_quick_fits", lambda *args, **kwargs: release.wait(60))  # a warm-up in hand
    assert not warmup.warming() and "still compiling" not in FitModel._running_message("starting")
    thread, stop = warmup.start_warmup(["nile"], forecast=False)
    try:
        during = FitModel._running_message("starting")
        assert warmup.warming() and thread.is_alive()
    finally:
        release.set()
        thread.join(timeout=60)
    assert during.startswith("Fitting by maximum likelihood: starting…") and "still compiling" in during
    assert not thread.is_alive() and not warmup.warming()
    assert "still compiling" not in FitModel._running_message("starting")
