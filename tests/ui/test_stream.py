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

# every figure on the page: its title, x-range, legends inside / beside the plot area, and the
# x values its data sources hold (a Live or Forecast panel's)
FIGURES = """() => {
  const figures = [];
  const column = (ds, name) => { const d = ds.data; const c = d instanceof Map ? d.get(name) : d[name];
                                 return c ? Array.from(c) : []; };
  for (const doc of window.Bokeh.documents)
    for (const m of doc._all_models.values()) {
      if (m.renderers === undefined || m.center === undefined || m.right === undefined) continue;
      const legend = r => r.constructor.__name__ === "Legend";
      const sources = [...new Set(m.renderers.map(r => r.data_source).filter(ds => ds))];
      const xs = sources.flatMap(ds => column(ds, "x"));
      const ys = sources.flatMap(ds => column(ds, "engine_ms_per_obs"));
      figures.push({title: m.title ? m.title.text : "", x_start: m.x_range.start, x_end: m.x_range.end,
                    legend_inside: m.center.filter(legend).length, legend_right: m.right.filter(legend).length,
                    x_min: xs.length ? Math.min(...xs) : null, n_timing: ys.length});
    }
  return figures;
}"""
NUMBER = r"([\d,]+(?:\.\d+)?)"


def _streamed(page) -> int:
    text = page.get_by_text(STATUS).first.inner_text()
    return int(STATUS.search(text).group(1))


def _fit_and_play(page, app_url, slowest: bool = False) -> None:
    """Quick-fit Nile, then play its stream (at 1 observation/s when `slowest`) until three
    observations are plotted."""
    _open(page, app_url)
    _tab(page, "Fit")
    page.get_by_role("button", name="Quick fit (maximum likelihood)").click()
    page.get_by_text("sigma2.level").first.wait_for(state="visible", timeout=240_000)
    _tab(page, "Stream")
    if slowest:   # the speed slider's handle to its lowest value, with the keyboard
        speed = page.locator(".bk-input-group", has=page.locator(".bk-slider-title", has_text="Speed (obs/s)"))
        speed.locator(".noUi-handle").first.press("Home")
        page.get_by_text(re.compile(r"Speed \(obs/s\): 1(\.0+)?$")).first.wait_for(state="visible")
    page.get_by_role("button", name="Play", exact=True).click()
    page.wait_for_function(f"({PLOTTED_ROWS})() >= 3", timeout=240_000)


def test_stream_grows_throughput_shows_and_closing_stops_the_runner(app_url, browser, panel_server):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(120_000)
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    page.console_errors = errors
    _fit_and_play(page, app_url)
    first = page.evaluate(PLOTTED_ROWS)
    page.wait_for_function(f"({PLOTTED_ROWS})() > {first}")
    page.get_by_text("finished").first.wait_for(state="visible")
    assert page.evaluate(PLOTTED_ROWS) == _streamed(page) == 50
    figures = page.evaluate(FIGURES)
    live = next(f for f in figures if f["title"].startswith("Live"))
    forecast = next(f for f in figures if f["title"] == "")
    # the legends sit beside the plots, covering no observation
    assert live["legend_inside"] == 0 and live["legend_right"] == 1, live
    assert forecast["legend_inside"] == 0 and forecast["legend_right"] == 1, forecast
    # the forecast panel starts where its data do (history shown): no empty stretch on the left
    span = forecast["x_end"] - forecast["x_start"]
    assert forecast["x_min"] is not None and forecast["x_min"] - forecast["x_start"] <= 0.02 * span, forecast
    page.get_by_text("quick fit on the first 50 observations").first.wait_for(state="visible")
    _tab(page, "Throughput")
    page.get_by_text("observations / s").first.wait_for(state="visible")
    page.locator(".throughput-detail", has_text="S = 1 draws").first.wait_for(state="visible")
    text = page.get_by_text(re.compile(r"observations in \d+ batches")).first.inner_text()   # in a shadow root
    # the sustainable rate is 1000 / the mean engine time per observation, as the page says
    rate = re.search(rf"1000\s*/\s*{NUMBER}\s*=\s*{NUMBER}\s*obs/s", text)
    assert rate, text
    mean_ms, sustain = (float(v.replace(",", "")) for v in rate.groups())
    assert abs(sustain - 1000 / mean_ms) <= 0.5 + 1e-3 * sustain, text
    n_obs, n_batches = (int(v) for v in re.search(r"(\d+) observations in (\d+) batches", text).groups())
    assert n_obs == 50
    # one plotted point per engine batch, not a handful of samples
    timing = next(f for f in page.evaluate(FIGURES) if f["title"].startswith("Engine time per observation"))
    assert timing["n_timing"] == n_batches >= 1, (timing, text)
    trend = page.get_by_text(re.compile(r"^Engine time per observation(, median| over the stream)")).first.inner_text()
    if n_batches < 16:
        assert "at least 16" in trend and "flat" not in trend, trend
    else:   # "flat" only where the page measured it
        ratio = float(re.search(r"ratio ([\d.]+)", trend).group(1))
        assert ("stays flat" in trend) == (ratio <= 1.5), trend
    page.get_by_text("What each number measures").first.wait_for(state="visible")
    _assert_clean(page, panel_server)
    sid = _session_id(page)
    context.close()
    _wait_log(panel_server, rf"session {re.escape(sid)} stream stopped \(runner still running: False, "
              r"refit still running: False\)")


def test_pause_holds_the_count_it_shows(page, app_url, panel_server):
    """After Pause the status reads "paused" only once the batch the engine had taken is shown;
    from then on the count and the plotted rows stay where they are until Play."""
    _fit_and_play(page, app_url, slowest=True)
    page.get_by_role("button", name="Pause", exact=True).click()
    page.locator(".stream-status", has_text="paused").first.wait_for(state="visible")
    at_pause = _streamed(page)
    assert 3 <= at_pause < 50
    page.wait_for_timeout(3000)   # three observations' time at 1 obs/s
    status = page.get_by_text(STATUS).first.inner_text()
    assert status.startswith("paused") and _streamed(page) == at_pause, (at_pause, status)
    assert page.evaluate(PLOTTED_ROWS) == at_pause
    page.get_by_role("button", name="Play", exact=True).click()
    page.wait_for_function(f"({PLOTTED_ROWS})() > {at_pause}")
    _assert_clean(page, panel_server)
