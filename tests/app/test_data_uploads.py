"""Uploads and column choices without a server: a failed upload keeps the loaded data usable, bad time
values get a message, a bad time column can be taken back, the dataset selector follows the upload,
and the upload box reassembles a file sent in chunks and refuses one over its limit."""

from __future__ import annotations

from base64 import b64encode

import numpy as np
import pandas as pd
import panel as pn
import pytest

import engine
from app.viewmodels import DataModel, FitModel, SpecModel
from app.viewmodels.data_model import UPLOAD
from app.viewmodels.fleet_model import FleetModel
from app.views.data_view import DataView, UploadBox
from engine.data import DATASETS_DIR, MAX_TABLE_BYTES, DataError, format_size, read_table

NON_NUMERIC = b"date,value\n2020-01-01,1\n2020-02-01,abc\n2020-03-01,3\n"
MIXED_ZONES = b"date,value\n2020-01-01T00:00:00+01:00,1\n2020-01-02T00:00:00,2\n2020-01-03T00:00:00Z,3\n"
HUGE_TIMES = b"t,value\n99999999999999999999,1\n99999999999999999999,2\n"
OUT_OF_ORDER = b"year,flow\n1872,2\n1871,1\n1873,3\n"
GOOD = b"date,a,b\n2020-01-01,1,2\n2020-02-01,3,4\n2020-03-01,5,6\n"


def _nile_flow() -> np.ndarray:
    return engine.load_dataset("nile")["flow"].to_numpy(dtype=float)


def test_failed_upload_is_shown_but_the_loaded_data_still_fits(worker):
    data = DataModel(dataset="nile")
    spec = SpecModel(data)
    fit = FitModel(data, spec, worker)
    assert not data.load_upload(NON_NUMERIC, "nonnum.csv")
    assert "nonnum.csv" in data.error and "'value'" in data.error and "line 3" in data.error
    assert data.source == "nile" and data.ready and data.choice_error == ""
    np.testing.assert_array_equal(data.y, _nile_flow())
    future = fit.run_quick_fit()
    assert future is not None, fit.message
    future.result()
    assert fit.status == "done", fit.message
    ref = engine.fit_mle(spec.spec, _nile_flow())
    assert fit.result.loglik == pytest.approx(ref.loglik, rel=1e-9)


@pytest.mark.parametrize("raw, words", [
    (MIXED_ZONES, ["'date'", "line 3", "UTC offset"]),
    (HUGE_TIMES, ["'t'", "lines 2 and 3", "out of range"]),
], ids=["mixed-zones", "huge-integers"])
def test_bad_time_values_get_a_message_in_the_data_and_fleet_tabs(worker, raw, words):
    data = DataModel(dataset="nile")
    assert not data.load_upload(raw, "odd.csv")
    for w in ["odd.csv", *words]:
        assert w in data.error, (w, data.error)
    assert data.ready and data.source == "nile"
    fleet = FleetModel(DataModel(dataset="nile"), SpecModel(data), worker)
    assert not fleet.load_upload(raw, "odd.csv")
    for w in ["odd.csv", *words]:
        assert w in fleet.data_error, (w, fleet.data_error)


def test_failed_fleet_upload_keeps_the_shipped_table_usable(worker):
    data = DataModel(dataset="nile")
    fleet = FleetModel(data, SpecModel(data), worker)
    fleet.source = "us_employment"
    fleet.n_series = 2
    before = fleet.fleet_data()
    assert not fleet.load_upload(NON_NUMERIC, "nonnum.csv")
    assert "nonnum.csv" in fleet.data_error and fleet.source == "us_employment"
    after = fleet.fleet_data()  # what a run fits: the table loaded before
    assert after.names == before.names
    np.testing.assert_array_equal(after.Y, before.Y)


def test_a_bad_time_column_can_be_taken_back():
    data = DataModel(dataset="nile")
    data.time_column = "flow"  # the flows repeat: not a time axis
    assert "repeats a time" in data.error and not data.ready
    data.time_column = "year"
    assert data.error == "" and data.choice_error == "" and data.ready
    np.testing.assert_array_equal(data.y, _nile_flow())
    assert list(data.index) == list(engine.load_dataset("nile").index)


def test_unticking_sort_reads_the_file_as_it_is():
    data = DataModel(dataset="nile")
    data.sort_rows = True
    assert data.load_upload(OUT_OF_ORDER, "u.csv")
    np.testing.assert_array_equal(data.y, [1.0, 2.0, 3.0])
    data.sort_rows = False
    assert "not in increasing order" in data.error and not data.ready
    data.sort_rows = True
    assert data.error == "" and data.ready
    np.testing.assert_array_equal(data.y, [1.0, 2.0, 3.0])


def _dataset_select(view: DataView) -> pn.widgets.Select:
    return next(w for w in view.__panel__().select(pn.widgets.Select) if w.name == "Dataset")


def test_dataset_selector_follows_uploads_and_choices():
    data = DataModel(dataset="nile")
    select = _dataset_select(DataView(model=data))
    assert data.load_upload(GOOD, "ok.csv")
    assert select.value == UPLOAD and data.dataset == UPLOAD
    select.value = "nile"  # the user picks the Nile again
    assert data.source == "nile"
    np.testing.assert_array_equal(data.y, _nile_flow())
    select.value = UPLOAD  # and the upload again
    assert data.source == "ok.csv" and data.target == "a"
    np.testing.assert_array_equal(data.y, read_table(GOOD)["a"].to_numpy())


def test_choosing_upload_with_nothing_uploaded_says_so_and_keeps_the_data():
    data = DataModel(dataset="nile")
    select = _dataset_select(DataView(model=data))
    select.value = UPLOAD
    assert "Nothing has been uploaded" in data.error
    assert select.value == "nile" and data.dataset == "nile" and data.source == "nile" and data.ready


def _send(box: UploadBox, name: str, content: bytes, chunk: int) -> None:
    """What the browser sends for a file within the limit: base64 chunks in order."""
    parts = [content[i:i + chunk] for i in range(0, len(content), chunk)] or [b""]
    for i, part in enumerate(parts):
        box._handle_msg({"kind": "chunk", "name": name, "size": len(content), "index": i, "total": len(parts),
                         "data": b64encode(part).decode()})


def test_upload_box_reassembles_chunks_and_refuses_files_over_its_limit():
    box = UploadBox(max_bytes=1000)
    seen = []
    box.param.watch(lambda e: seen.append((box.filename, e.new)), "value")
    content = bytes(range(256)) * 3
    _send(box, "a.bin", content, chunk=100)
    assert seen == [("a.bin", content)] and box.message == ""
    _send(box, "a.bin", content, chunk=300)  # the same file again is a new upload
    assert len(seen) == 2 and seen[1] == ("a.bin", content)
    box._handle_msg({"kind": "refused", "name": "big.csv", "size": 16_500_000})
    assert box.message == ("big.csv is 15.7 MB, over the 1000 bytes limit, so it was not uploaded: "
                           "choose a smaller file.") and len(seen) == 2
    _send(box, "big.csv", b"x" * 2000, chunk=500)  # a client that skips the browser's check
    assert "over the 1000 bytes limit" in box.message and len(seen) == 2
    # one that sends more than it announced, or parts out of order, gets a message, not a value
    box._handle_msg({"kind": "chunk", "name": "liar.csv", "size": 10, "index": 0, "total": 2,
                     "data": b64encode(b"x" * 600).decode()})
    assert "more bytes" in box.message and len(seen) == 2
    box._handle_msg({"kind": "chunk", "name": "b.csv", "size": 10, "index": 1, "total": 2, "data": "eHh4"})
    assert "out of order" in box.message and len(seen) == 2


def test_the_page_and_the_parser_state_the_same_limit():
    label = format_size(MAX_TABLE_BYTES)
    assert label == "10 MB"
    with pytest.raises(DataError) as exc:
        read_table(b"t,y\n" + b"1,2\n" * (MAX_TABLE_BYTES // 4 + 1))
    assert f"larger than the {label} limit" in str(exc.value)
    texts = [p.object for p in DataView(model=DataModel(dataset="nile")).__panel__().select(pn.pane.Markdown)]
    assert any(f"at most {label}" in str(t) for t in texts)


def _shown(view: DataView, label: str):
    return next(w for w in view._layout.select(pn.widgets.Widget) if w.name == label)


@pytest.mark.parametrize("dataset", ["seatbelts", "airpassengers", "us_employment", "nile"])
def test_the_column_widgets_show_the_columns_the_model_uses(dataset):
    """Switching tables replaces the columns offered and the column chosen at once: the dropdown used
    to fall back to the first column and write it back to the model, so seatbelts' Target read
    "drivers" while the plot and the code used `drivers_killed`. Each widget now shows the catalogue's
    choice, which is what the model (and so the plot and the code) uses."""
    data = DataModel(dataset="nile")
    spec = SpecModel(data)
    view = DataView(model=data)
    data.dataset = dataset
    entry = engine.catalogue_entry(dataset)
    assert data.target == entry["target"] and data.time_column == entry["time_column"]
    assert list(data.exog) == list(entry["exog"])
    assert _shown(view, "Target").value == data.target and _shown(view, "Time column").value == data.time_column
    assert _shown(view, "Regressors (exog)").value == list(data.exog)
    assert f"'{data.target_label}' series" in spec.statsmodels_text
    others = [c for c in data.param.target.objects if c != data.target and c not in data.exog]
    if others:
        data.target = others[0]                       # a choice in the model shows on the page
        assert _shown(view, "Target").value == data.target
        _shown(view, "Target").value = entry["target"]   # and one on the page goes to the model
        assert data.target == entry["target"]


def test_coded_columns_are_offered_with_their_titles():
    """us_employment's columns are BLS series ids: the dropdown shows "title (id)" from the
    catalogue's titles file, and its value stays the column id."""
    data = DataModel(dataset="us_employment")
    view = DataView(model=data)
    titles = pd.read_csv(DATASETS_DIR / engine.catalogue_entry("us_employment")["series_titles"], dtype=str)
    options = _shown(view, "Target").options
    assert len(options) == len(titles)
    for series, title in zip(titles["series"], titles["title"]):
        assert options[f"{title} ({series})"] == series
    assert _shown(view, "Target").value == data.target == "CEU0500000001"
    nile = DataModel(dataset="nile")
    assert dict(_shown(DataView(model=nile), "Target").options) == {"flow": "flow"}   # plain names stay as they are
