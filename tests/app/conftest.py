"""Fixtures shared by the view-model tests."""

from __future__ import annotations

import pytest

from app.workers import SessionWorker


@pytest.fixture
def worker(request):
    """A session's worker, named after the test module, shut down after the test."""
    w = SessionWorker(request.module.__name__.rsplit(".", 1)[-1])
    yield w
    w.shutdown()
