"""The app's fault table: bad files, huge files, a page that lies about the upload limit, series
a fit cannot take, and a session that ends mid-job. Each row asserts what the user sees (the
message names the problem) and that nothing loaded before is lost."""

from __future__ import annotations

import logging
from base64 import b64encode

import numpy as np
import pytest
from bokeh.document import Document

import engine
from app.admission import Admission, admit_document
from app.viewmodels import DataModel, FitModel, SpecModel
from app.views.data_view import UploadBox
from app.workers import SessionWorker
from engine.data import MAX_TABLE_BYTES


def _csv(values) -> bytes:
    return ("t,y\n" + "".join(f"{i},{float(v)!r}\n" for i, v in enumerate(values))).encode()


BAD_FILES = [
    ("empty", b"", ["empty"]),
    ("header-only", b"date,value\n", ["header", "no data rows"]),
    ("not-a-number", b"date,value\n2020-01-01,1\n2020-01-02,abc\n", ["'value'", "line 3", "abc"]),
    ("infinite-value", b"t,y\n1,1\n2,inf\n3,2\n", ["'y'", "line 3"]),
    ("duplicate-times", b"year,flow\n1871,1\n1871,2\n", ["1871", "line 3"]),
    ("only-a-time-column", b"date\n2020-01-01\n2020-01-02\n", ["only the time column"]),
    ("binary", bytes(range(256)) * 4, ["upload.csv"]),
    ("over-the-limit", b"t,y\n" + b"1,2\n" * (MAX_TABLE_BYTES // 4 + 1), ["limit"]),
]


@pytest.mark.parametrize("raw, words", [r[1:] for r in BAD_FILES], ids=[r[0] for r in BAD_FILES])
def test_a_bad_file_is_explained_and_the_loaded_data_stays(raw, words):
    data = DataModel(dataset="nile")
    before = data.y.copy()
    assert not data.load_upload(raw, "upload.csv")
    assert "upload.csv" in data.error
    for w in words:
        assert w in data.error, (w, data.error)
    assert data.source == "nile" and data.ready
    np.testing.assert_array_equal(data.y, before)


def _chunks(box: UploadBox, name: str, content: bytes, declared: int, chunk: int) -> None:
    parts = [content[i:i + chunk] for i in range(0, len(content), chunk)]
    for i, part in enumerate(parts):
        box._handle_msg({"kind": "chunk", "name": name, "size": declared, "index": i, "total": len(parts),
                         "data": b64encode(part).decode()})


@pytest.mark.parametrize("declared", [5000, 900], ids=["declared-honestly", "declared-under-the-limit"])
def test_the_server_holds_the_upload_limit_whatever_the_page_says(declared):
    """The page can raise the box's `max_bytes` (it is synced) and understate a file's size: the
    server's own limit still drops the file, without keeping it."""
    box = UploadBox(max_bytes=1000)
    seen = []
    box.param.watch(lambda e: seen.append(e.new), "value")
    box.max_bytes = 10**9   # as the page would set it
    _chunks(box, "big.csv", b"x" * 5000, declared, chunk=400)
    assert seen == [] and box._parts == []
    assert "over the 1000 bytes limit" in box.message and "big.csv" in box.message
    _chunks(box, "small.csv", b"y" * 500, 500, chunk=400)   # a file within the limit still arrives
    assert seen == [b"y" * 500] and box.message == ""


SERIES = [
    ("constant", [5.0] * 40, ["constant", "every observed value is 5"]),
    ("scaled-1e300", list(np.linspace(1, 3, 40) * 1e300), ["rescale y"]),
    ("scaled-1e-300", list(np.linspace(1, 3, 40) * 1e-300), ["rescale y", "multiply"]),
    ("one-observation", [3.0] + [float("nan")] * 5, ["2 parameters", "1 observed values"]),
]


@pytest.mark.parametrize("values, words", [r[1:] for r in SERIES], ids=[r[0] for r in SERIES])
def test_a_series_a_fit_cannot_take_gets_a_message_not_a_result(worker, values, words):
    data = DataModel(dataset="nile")
    assert data.load_upload(_csv(values), "odd.csv"), data.error
    spec = SpecModel(data)
    fit = FitModel(data, spec, worker)
    future = fit.run_quick_fit()
    if future is not None:
        with pytest.raises(ValueError):
            future.result()
    assert fit.status == "error" and fit.result is None
    for w in words:
        assert w in fit.message, (w, fit.message)


def test_a_cancelled_nuts_fit_and_a_fleet_job_cut_by_a_closed_session_are_logged_as_cancelled(caplog):
    """The worker logs a job that raised `FitCancelled` (a NUTS fit, a fleet job) as cancelled,
    saying when the session's end cancelled it, never as failed."""
    worker = SessionWorker("faults-cancel")
    caplog.set_level(logging.INFO, logger="streamssm.app")

    def cancelled_fit():
        raise engine.FitCancelled("NUTS fit cancelled after 40 of 400 iterations")

    errors = []
    with pytest.raises(engine.FitCancelled):
        worker.submit(cancelled_fit, on_done=lambda r: None, on_error=errors.append).result()
    assert len(errors) == 1
    worker.shutdown()   # the session ends; a job still running then is cancelled by it
    with pytest.raises(engine.FleetCancelled):
        worker._run(_raise(engine.FleetCancelled("cancelled after 4 of 12 series", None)), (), None, None)
    lines = [r.getMessage() for r in caplog.records if r.name == "streamssm.app"]
    assert "session faults-cancel: job cancelled: NUTS fit cancelled after 40 of 400 iterations" in lines
    assert ("session faults-cancel: job cancelled (the session closed): cancelled after 4 of 12 series"
            in lines)
    assert not any("failed" in line for line in lines)


def _raise(exc):
    def job():
        raise exc
    return job


def test_sessions_over_the_servers_cap_get_a_message_and_a_closed_one_makes_room():
    sessions = Admission(cap=2)
    assert sessions.admit("a") and sessions.admit("b")
    assert sessions.admit("a")   # the same session again (a reload of its page) is not a new one
    assert not sessions.admit("c") and sessions.live == 2
    assert "(2)" in sessions.message() and "try again" in sessions.message()
    sessions.release("a")
    assert sessions.admit("c") and sessions.live == 2
    assert Admission(cap=0).admit("any")   # 0: no cap
    assert admit_document(Document(), sessions)   # outside a server session: always admitted
