"""Uploads over and near the size limits in a real browser: a clear message, and the page stays alive.

Bokeh closes the websocket, without a word, on a message over its 20 MB limit; a file was sent as
one base64 message, so a 15 MB CSV (or a 16 MB session file) used to end the session.
"""

from __future__ import annotations

import pytest

from engine.data import MAX_TABLE_BYTES, format_size

from test_app import _assert_clean, _open, _tab

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

CSV_INPUT = "input[type=file][accept*=csv]"
SESSION_INPUT = ".session-upload input[type=file]"


def _csv_of_size(path, n_bytes: int):
    """A valid CSV of at least n_bytes: an integer time and one value per row."""
    row = b"%08d,1.2345678901234567\n"
    n_rows = n_bytes // len(row % 0) + 1
    path.write_bytes(b"t,value\n" + b"".join(row % i for i in range(n_rows)))
    return path


def _upload_small_csv(page, tmp_path, name="ok.csv"):
    """The session still works: a small upload is parsed and shown."""
    ok = tmp_path / name
    ok.write_bytes(b"date,a\n2020-01-01,1\n2020-02-01,2\n2020-03-01,3\n")
    page.locator(CSV_INPUT).set_input_files(str(ok))
    page.get_by_text(f"Uploaded file {name}").first.wait_for(state="visible")


def test_csv_over_the_limit_is_refused_in_the_browser_with_a_message(app_url, page, panel_server, tmp_path):
    _open(page, app_url)
    limit = format_size(MAX_TABLE_BYTES)
    page.get_by_text(f"(at most {limit})").first.wait_for(state="visible")  # the page states the same limit
    big = _csv_of_size(tmp_path / "big16.csv", 16_500_000)
    page.locator(CSV_INPUT).set_input_files(str(big))
    note = page.get_by_text("over the 10 MB limit")
    note.first.wait_for(state="visible")
    assert "big16.csv" in note.first.inner_text() and f"over the {limit} limit" in note.first.inner_text()
    page.get_by_text("Annual flow of the river Nile").first.wait_for(state="visible")  # nothing was lost
    _upload_small_csv(page, tmp_path)
    _assert_clean(page, panel_server)


def test_csv_just_under_the_limit_arrives_in_chunks_and_is_parsed(app_url, page, panel_server, tmp_path):
    _open(page, app_url)
    near = _csv_of_size(tmp_path / "near.csv", MAX_TABLE_BYTES - 200_000)
    assert MAX_TABLE_BYTES - 300_000 < near.stat().st_size <= MAX_TABLE_BYTES
    page.locator(CSV_INPUT).set_input_files(str(near))
    page.get_by_text("Uploaded file near.csv").first.wait_for(state="visible", timeout=120_000)
    _assert_clean(page, panel_server)


def test_fleet_upload_over_the_limit_is_refused(app_url, page, panel_server, tmp_path):
    _open(page, app_url)
    _tab(page, "Fleet")
    page.get_by_text("Fleet: many series at once").first.wait_for(state="visible")
    big = _csv_of_size(tmp_path / "wide16.csv", 16_500_000)
    page.locator(CSV_INPUT).set_input_files(str(big))
    page.get_by_text("wide16.csv is").first.wait_for(state="visible")
    assert "over the 10 MB limit" in page.get_by_text("wide16.csv is").first.inner_text()
    _tab(page, "Data")
    page.get_by_text("Annual flow of the river Nile").first.wait_for(state="visible")
    _upload_small_csv(page, tmp_path)
    _assert_clean(page, panel_server)


def test_large_session_file_reaches_the_server_and_is_answered(app_url, page, panel_server, tmp_path):
    """A 24 MB file (32 MB as base64) within the session limit arrives, and gets the session check's message."""
    _open(page, app_url)
    fake = tmp_path / "big-session.zip"
    fake.write_bytes(b"not a zip archive\n" * (24 * 2**20 // 18))
    page.locator(SESSION_INPUT).set_input_files(str(fake))
    alert = page.get_by_text("Could not load big-session.zip")
    alert.first.wait_for(state="visible", timeout=120_000)
    assert "not a .zip archive" in alert.first.inner_text()
    _upload_small_csv(page, tmp_path)
    _assert_clean(page, panel_server)
