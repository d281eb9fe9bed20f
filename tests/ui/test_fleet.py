"""The Fleet tab in a real browser: a small local job on the synthetic fleet, progress, the table
sorted, a row's drill-down, and that series opened in the Fit tab; a job on the local Ray whose
page is closed leaves the server (and its Ray) up for everyone else."""

from __future__ import annotations

import re
import time

import pytest

from test_app import _assert_clean, _open, _tab

pytestmark = [pytest.mark.browser, pytest.mark.timeout(900)]


def _column(page, field: str) -> list[str]:
    return [c.inner_text() for c in page.locator(f'.fleet-table .tabulator-row [tabulator-field="{field}"]').all()]


def _wait_for(predicate, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the page did not get there"
        time.sleep(0.25)


def test_fleet_run_table_drill_down_and_open_in_fit(app_url, page, panel_server):
    _open(page, app_url)
    _tab(page, "Fleet")
    page.get_by_role("button", name="Run fleet").click()  # 24 synthetic sensors × 120 steps, MLE, locally
    page.get_by_text("series/s").first.wait_for(state="visible", timeout=600_000)
    assert page.locator(".fleet-progress progress").first.get_attribute("value") == "100"
    # the rows arrive in a later document update than the status line, and render after it
    _wait_for(lambda: len(_column(page, "series")) > 0 and page.locator(".fleet-badge").count() > 0)

    page.locator('.fleet-table .tabulator-col[tabulator-field="loglik"] .tabulator-col-title').click()
    number = lambda s: float(s.replace(",", ""))
    _wait_for(lambda: (v := [number(s) for s in _column(page, "loglik")]) == sorted(v) and len(v) > 1)

    first = _column(page, "series")[0]
    page.locator('.fleet-table .tabulator-row [tabulator-field="series"]').first.click()
    page.locator(".fleet-detail-note", has_text=f"{first}: ").first.wait_for(state="visible", timeout=300_000)
    page.locator(".fleet-drill canvas").first.wait_for(state="attached")  # the series, its fit and anomalies

    page.get_by_role("button", name="Open in Fit / Stream").click()
    page.locator(".fleet-detail-note", has_text="is loaded in the Data tab").first.wait_for(state="visible")
    _tab(page, "Fit")
    page.get_by_role("button", name="Quick fit (maximum likelihood)").click()
    page.get_by_text("Fitted 120 observations").first.wait_for(state="visible", timeout=300_000)
    page.get_by_text("sigma2.trend").first.wait_for(state="visible")
    _assert_clean(page, panel_server)


RAY_LOST_MARGIN_S = 20   # past the server's grace period for a lost Ray (panel_server.ray_reconnect_s)


def _choose(page, label: str, option: str) -> None:
    page.locator(".bk-input-group", has_text=label).locator("select").select_option(option)


def _type(page, label: str, value: str) -> None:
    box = page.locator(".bk-input-group", has_text=label).locator("input")
    box.fill(value)
    box.press("Enter")


@pytest.mark.ray
def test_closing_a_page_that_ran_a_local_ray_job_leaves_the_server_up(app_url, browser, page, panel_server):
    """The local Ray belongs to the server, not to the session that first needed it: after that
    session's page is closed and Ray's own grace period for a lost cluster has passed, a new
    session loads and runs a job. (The test server's grace period is shortened from Ray's 60 s.)"""
    _open(page, app_url)
    _tab(page, "Fleet")
    _choose(page, "Backend", "ray")
    _type(page, "Series (first N)", "4")
    page.get_by_role("button", name="Run fleet").click()
    page.get_by_text("Starting Ray").first.wait_for(state="visible", timeout=120_000)  # not "Fitted 0 of 4"
    ended = page.get_by_text(re.compile("series/s|The fleet job failed")).first
    ended.wait_for(state="visible", timeout=600_000)
    assert "The fleet job failed" not in ended.inner_text(), ended.inner_text()
    assert page.locator(".fleet-progress progress").first.get_attribute("value") == "100"
    errors = list(page.console_errors)
    page.context.close()

    time.sleep(panel_server.ray_reconnect_s + RAY_LOST_MARGIN_S)
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        fresh = context.new_page()
        fresh.set_default_timeout(30_000)
        _open(fresh, app_url)
        _tab(fresh, "Fleet")
        _type(fresh, "Series (first N)", "2")
        fresh.get_by_role("button", name="Run fleet").click()   # locally, in the new session
        fresh.get_by_text("series/s").first.wait_for(state="visible", timeout=600_000)
        assert "Traceback" not in fresh.inner_text("body")
    finally:
        context.close()
    log = panel_server.log()
    assert "Failed to connect to GCS" not in log and "Traceback" not in log, log[-4000:]
    assert "os.fork() was called" not in log, log[-4000:]   # the server does not fork to start its Ray
    assert errors == [], "\n".join(errors)
