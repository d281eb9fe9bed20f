"""Save and restore a session from the page: after a quick fit the forecast shows; the downloaded
session file restores the model and the fit in a new browser session; a malformed file is explained."""

from __future__ import annotations

import pytest

from test_app import _assert_clean, _open, _tab

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

UPLOAD = ".session-upload input[type=file]"


def test_forecast_shows_and_the_session_file_restores_in_a_new_session(app_url, browser, panel_server, tmp_path):
    saved = tmp_path / "my-session.zip"
    contexts = [browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
                for _ in range(2)]
    try:
        a, b = (c.new_page() for c in contexts)
        for p in (a, b):
            p.set_default_timeout(60_000)
            p.console_errors = []
            p.on("console", lambda msg, p=p: p.console_errors.append(msg.text) if msg.type == "error" else None)
            p.on("pageerror", lambda exc, p=p: p.console_errors.append(str(exc)))
        # session a: a local linear trend, its quick fit, then its forecast
        _open(a, app_url)
        _tab(a, "Model")
        a.locator("select").first.select_option("local_linear_trend")
        a.get_by_text('"local_linear_trend"').first.wait_for(state="visible")
        _tab(a, "Fit")
        a.get_by_role("button", name="Quick fit (maximum likelihood)").click()
        a.get_by_text("sigma2.trend").first.wait_for(state="visible", timeout=240_000)
        a.locator(".fit-forecast", has_text="steps ahead from the quick fit estimate").first.wait_for(
            state="visible", timeout=240_000)
        a.locator(".fit-forecast canvas").first.wait_for(state="attached")
        with a.expect_download() as download:
            a.get_by_role("button", name="Save session (.zip)").click()
        download.value.save_as(saved)
        # session b starts with the default model; the file brings back a's model and fit
        _open(b, app_url)
        b.locator(UPLOAD).set_input_files(str(saved))
        b.locator(".session-status", has_text="Restored my-session.zip").first.wait_for(
            state="visible", timeout=240_000)
        _tab(b, "Model")
        b.get_by_text('"local_linear_trend"').first.wait_for(state="visible")
        _tab(b, "Fit")
        b.get_by_text("sigma2.trend").first.wait_for(state="visible")
        b.locator(".fit-forecast", has_text="steps ahead from the quick fit estimate").first.wait_for(
            state="visible", timeout=240_000)
        for p in (a, b):
            _assert_clean(p, panel_server)
    finally:
        for c in contexts:
            c.close()


def test_malformed_session_file_is_explained(app_url, page, panel_server, tmp_path):
    bad = tmp_path / "notes.zip"
    bad.write_bytes(b"these are not the files you are looking for")
    _open(page, app_url)
    page.locator(UPLOAD).set_input_files(str(bad))
    alert = page.get_by_text("Could not load notes.zip")
    alert.first.wait_for(state="visible")
    text = alert.first.inner_text()
    assert "not a .zip archive" in text and "Nothing was changed" in text
    page.get_by_text("Annual flow of the river Nile").first.wait_for(state="visible")   # the data is still there
    _assert_clean(page, panel_server)
