"""Smoke test: the served app renders its title without browser errors."""

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]


def test_app_loads(app_url, page, panel_server, tmp_path):
    page.goto(app_url, wait_until="domcontentloaded")
    title = page.get_by_text("StreamSSM", exact=True).first
    title.wait_for(state="visible")
    # The intro is rendered by Panel from the server-side document, so seeing
    # it means the websocket session is live.
    page.get_by_text("Bayesian structural time series on live data").wait_for(state="visible")

    shot = tmp_path / "smoke.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 0

    # CDN stylesheet links are a known defect, checked in test_app.test_page_needs_no_outside_resources
    errors = [e for e in page.console_errors if "https://cdn.holoviz.org/" not in e]
    assert errors == [], "\n".join(errors)

    server_log = panel_server.log()
    assert "Traceback" not in server_log and "Error running application" not in server_log, server_log
