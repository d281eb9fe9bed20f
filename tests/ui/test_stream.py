"""The Stream and Throughput tabs in a real browser: the plotted data grows, the session's runner stops."""

from __future__ import annotations

import re

import pytest

from test_app import _assert_clean, _open, _session_id, _tab, _wait_log

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

# rows held by the browser-side data source of the live plot (the one with a 'filtered' column)
PLOTTED_ROWS = """() => {
  const counts = [];
  for (const doc of window.Bokeh.documents)
    for (const m of doc._all_models.values())
      if (m.data instanceof Map ? m.data.has("filtered") : m.data != null && m.data.filtered !== undefined)
        counts.push((m.data instanceof Map ? m.data.get("t") : m.data.t).length);
  return counts.length ? Math.max(...counts) : 0;
}"""


STATUS = re.compile(r"(\d+) / \d+ observations streamed")


def _streamed(page) -> int:
    text = page.get_by_text(STATUS).first.inner_text()
    return int(STATUS.search(text).group(1))


def test_stream_grows_throughput_shows_and_closing_stops_the_runner(app_url, browser, panel_server):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(120_000)
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    page.console_errors = errors
    _open(page, app_url)
    _tab(page, "Fit")
    page.get_by_role("button", name="Quick fit (maximum likelihood)").click()
    page.get_by_text("sigma2.level").first.wait_for(state="visible", timeout=240_000)
    _tab(page, "Stream")
    page.get_by_role("button", name="Play", exact=True).click()
    page.wait_for_function(f"({PLOTTED_ROWS})() >= 3", timeout=240_000)
    first = page.evaluate(PLOTTED_ROWS)
    page.wait_for_function(f"({PLOTTED_ROWS})() > {first}")
    page.get_by_text("finished").first.wait_for(state="visible")
    assert page.evaluate(PLOTTED_ROWS) == _streamed(page) == 50
    _tab(page, "Throughput")
    page.get_by_text("observations / s").first.wait_for(state="visible")
    page.locator(".throughput-detail", has_text="S = 1 draws").first.wait_for(state="visible")
    _assert_clean(page, panel_server)
    sid = _session_id(page)
    context.close()
    _wait_log(panel_server, rf"session {re.escape(sid)} stream stopped \(runner still running: False, "
              r"refit still running: False\)")
