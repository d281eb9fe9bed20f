"""The app in a real browser: data, model, quick fit, teaching mode, bad uploads, sessions."""

from __future__ import annotations

import re
import time

import pytest

from tests.ui.conftest import run_short_nuts

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

BAD_CSV = b"year,flow\n1871,1120\n1872,lots\n1873,1000\n"


def _open(page, app_url):
    page.goto(app_url, wait_until="domcontentloaded")
    page.get_by_text("Annual flow of the river Nile").first.wait_for(state="visible", timeout=120_000)


def _tab(page, name):
    page.locator(".bk-tab", has_text=name).click()


def _session_id(page) -> str:
    return page.locator(".session-id code").first.inner_text().strip()


def _assert_clean(page, panel_server):
    """No traceback in the page or the server log and no console errors."""
    body = page.inner_text("body")
    assert "Traceback" not in body
    assert page.console_errors == [], "\n".join(page.console_errors)
    log = panel_server.log()
    assert "Traceback" not in log and "Error running application" not in log, log[-4000:]


def _wait_log(panel_server, pattern: str, timeout: float = 60.0) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(pattern, panel_server.log())
        if m:
            return m
        time.sleep(0.25)
    raise AssertionError(f"no log line matching {pattern!r}:\n{panel_server.log()[-3000:]}")


def test_nile_local_level_fit_and_learn(app_url, page, panel_server):
    _open(page, app_url)
    _tab(page, "Model")
    page.get_by_text('"local_level"').first.wait_for(state="visible")  # the spec as JSON
    page.get_by_text("UnobservedComponents").first.wait_for(state="attached")
    _tab(page, "Fit")
    page.get_by_role("button", name="Quick fit (maximum likelihood)").click()
    page.get_by_text("sigma2.level").first.wait_for(state="visible", timeout=240_000)
    page.get_by_text("Decomposition").first.wait_for(state="visible")
    # the decomposition plot (Bokeh draws on a canvas; dynamic tabs render only the open tab)
    page.locator("canvas").first.wait_for(state="attached")
    _tab(page, "Learn")
    page.get_by_text("step kind").first.wait_for(state="visible", timeout=120_000)
    page.get_by_text("(1871)").first.wait_for(state="visible")
    page.get_by_role("button", name="Step forward ▶").click()
    page.get_by_text("(1872)").first.wait_for(state="visible")
    page.get_by_text("Kalman gain").first.wait_for(state="visible")
    _assert_clean(page, panel_server)


def test_malformed_upload_is_explained(app_url, page, panel_server, tmp_path):
    _open(page, app_url)
    bad = tmp_path / "bad.csv"
    bad.write_bytes(BAD_CSV)
    page.locator("input[type=file][accept*=csv]").set_input_files(str(bad))
    alert = page.get_by_text("non-numeric values")
    alert.first.wait_for(state="visible")
    text = alert.first.inner_text()
    assert "'flow'" in text and "line 3" in text and "bad.csv" in text
    # the app stays usable: the Nile data is still there
    page.get_by_text("Annual flow of the river Nile").first.wait_for(state="visible")
    _assert_clean(page, panel_server)


def test_sessions_are_separate_and_closing_stops_the_worker(app_url, browser, panel_server):
    contexts = [browser.new_context(viewport={"width": 1280, "height": 800}) for _ in range(2)]
    try:
        a, b = (c.new_page() for c in contexts)
        for p in (a, b):
            p.set_default_timeout(60_000)
            _open(p, app_url)
        _tab(a, "Model")
        a.locator("select").first.select_option("local_linear_trend")
        a.get_by_text('"local_linear_trend"').first.wait_for(state="visible")
        _tab(b, "Model")
        b.get_by_text('"local_level"').first.wait_for(state="visible")
        assert b.get_by_text('"local_linear_trend"').count() == 0
        # session a's worker has a thread (the teaching filter runs in it); once the Learn tab shows
        # the filter for the new model its job is done, and closing a stops the thread
        _tab(a, "Learn")
        a.get_by_text("step kind").first.wait_for(state="visible", timeout=120_000)
        a.get_by_text("trend").first.wait_for(state="visible", timeout=120_000)
        sid = _session_id(a)
        contexts[0].close()
        m = _wait_log(panel_server, rf"session {re.escape(sid)} closed: (\d+) worker thread")
        assert m.group(1) == "0"
        # session b is unaffected
        b.get_by_text('"local_level"').first.wait_for(state="visible")
    finally:
        for c in contexts[1:]:
            c.close()


def test_page_needs_no_outside_resources(app_url, page, panel_server):
    """Every request the page makes goes to this server. The fixture's short unused-session
    lifetime makes Bokeh rebuild the session when the websocket connects (as a slow page load
    does), the path on which Panel used to link its stylesheets from the CDN."""
    origin = app_url.rsplit("/", 1)[0]
    outside = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((origin, "data:", "blob:")) else None)
    _open(page, app_url)
    _tab(page, "Fit")
    page.get_by_role("button", name="Quick fit (maximum likelihood)").click()
    page.get_by_text("sigma2.level").first.wait_for(state="visible", timeout=240_000)
    assert outside == []
    _assert_clean(page, panel_server)


def test_short_nuts_fit_shows_progress_and_warning(app_url, page, panel_server):
    _open(page, app_url)
    _tab(page, "Fit")
    run_short_nuts(page, chains=2, warmup=50, draws=50)
    assert page.locator(".nuts-progress progress").first.get_attribute("value") == "100"
    page.get_by_text("This fit is not trustworthy").first.wait_for(state="visible")
    page.get_by_text("Diagnostics").first.wait_for(state="visible")
    _assert_clean(page, panel_server)
