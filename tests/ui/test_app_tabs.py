"""What the Data, Model, Fit and Learn tabs show, read from the page: colours of the code panes,
the column a dropdown names against the column plotted, plot axes and tick labels (from the Bokeh
models the browser draws), parameter names in messages, the Learn tab's table, the layout of the
session box, and a server log without warnings."""

from __future__ import annotations

import math
import re

import pytest

from tests.ui.conftest import run_short_nuts
from tests.ui.test_app import _assert_clean, _open, _tab

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

# Every code pane's text and token colours against the background they are drawn on (the first
# non-transparent one up the tree), as WCAG contrast ratios.
CODE_CONTRAST_JS = """() => {
  const rgb = (c) => (c.match(/[\\d.]+/g) || []).map(Number);
  const lum = (c) => { const [r, g, b] = rgb(c).slice(0, 3).map(v => v / 255)
      .map(v => v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4));
    return 0.2126 * r + 0.7152 * g + 0.0722 * b };
  const background = (el) => { for (let e = el; e; e = e.parentElement || (e.getRootNode && e.getRootNode().host)) {
      const bg = getComputedStyle(e).backgroundColor; const a = rgb(bg)[3];
      if (bg !== 'transparent' && (a === undefined || a > 0)) return bg } return 'rgb(255, 255, 255)' };
  const ratio = (fg, bg) => { const [l1, l2] = [lum(fg), lum(bg)].sort((a, b) => b - a); return (l1 + 0.05) / (l2 + 0.05) };
  const out = [];
  const walk = (root) => { for (const pane of root.querySelectorAll('.codehilite')) {
      if (!pane.offsetParent) continue;   // only what is shown
      const code = pane.querySelector('code') || pane;
      const bg = background(code);
      const items = [code, ...code.querySelectorAll('span')].filter(e => e.textContent.trim());
      out.push({text: code.textContent, bg,
                worst: Math.min(...items.map(e => ratio(getComputedStyle(e).color, bg))),
                colours: new Set(items.map(e => getComputedStyle(e).color)).size}) }
    for (const el of root.querySelectorAll('*')) if (el.shadowRoot) walk(el.shadowRoot) };
  walk(document); return out }"""

# The Bokeh models of the page (what its canvases draw): titles, axis labels, categorical factors.
BOKEH_JS = """() => {
  const out = {titles: [], axis_labels: [], factors: []};
  for (const doc of Bokeh.documents) for (const m of doc._all_models.values()) {
    const type = m.type || m.constructor.name;
    if (type === 'Title' && m.text) out.titles.push(m.text);
    if (type.endsWith('Axis') && typeof m.axis_label === 'string' && m.axis_label) out.axis_labels.push(m.axis_label);
    if (type === 'FactorRange') out.factors.push([...m.factors]);
  }
  return out }"""


def _bokeh(page) -> dict:
    return page.evaluate(BOKEH_JS)


def _readable_code(page, min_panes: int = 1) -> list[dict]:
    panes = page.evaluate(CODE_CONTRAST_JS)
    assert len(panes) >= min_panes, panes
    for p in panes:
        assert p["worst"] >= 4.5, p   # WCAG AA for normal text
        assert p["colours"] >= 3, p   # highlighted, not one colour
    return panes


def _no_warnings_in_log(panel_server):
    log = panel_server.log()
    for warning in ("All-NaN slice", "RuntimeWarning", "DeprecationWarning"):
        assert warning not in log, log[-4000:]


def test_code_panes_stay_readable_after_edits(app_url, page, panel_server):
    """The Spec (JSON), statsmodels and pymc-extras panes used to turn near-black on their dark
    background after any edit of the model."""
    _open(page, app_url)
    _tab(page, "Model")
    page.get_by_text('"local_level"').first.wait_for(state="visible")
    _readable_code(page)
    page.get_by_role("button", name="Add seasonal").click()
    page.get_by_text('"seasonal"').first.wait_for(state="visible")
    _readable_code(page)
    box = page.get_by_label("AR order")
    box.fill("2")
    box.press("Enter")
    page.get_by_text('"autoregressive"').first.wait_for(state="visible")
    _readable_code(page)
    for tab, words in (("statsmodels", "UnobservedComponents("), ("pymc-extras", "import pymc")):
        page.locator(".bk-tab", has_text=tab).click()
        page.get_by_text(words).first.wait_for(state="visible")
        assert [p for p in _readable_code(page) if words in p["text"]]
    _assert_clean(page, panel_server)


def test_the_target_dropdown_names_the_plotted_column(app_url, page, panel_server):
    """Seatbelts' catalogue target is `drivers`: the dropdown used to read "drivers" while the plot
    and the generated code used `drivers_killed` (the first column)."""
    _open(page, app_url)
    page.locator("select").first.select_option("seatbelts")
    page.get_by_text("Monthly car drivers killed or seriously injured").first.wait_for(state="visible")
    target = page.locator(".data-target select")
    shown = target.evaluate("s => s.options[s.selectedIndex].text")
    assert shown == "drivers"
    plotted = _bokeh(page)
    assert "drivers" in plotted["titles"] and "drivers_killed" not in plotted["titles"], plotted
    assert "drivers" in plotted["axis_labels"], plotted
    _tab(page, "Model")
    page.locator(".bk-tab", has_text="statsmodels").click()
    page.get_by_text("the 'drivers' series").first.wait_for(state="visible")
    _tab(page, "Data")
    # a coded column shows its title, and the value stays the column
    page.locator("select").first.select_option("us_employment")
    page.get_by_text("Total Private (CEU0500000001)").first.wait_for(state="attached")
    option = target.evaluate("s => [s.options[s.selectedIndex].text, s.value]")
    assert option[0] == "Total Private (CEU0500000001)"
    assert "CEU0500000001" in _bokeh(page)["titles"] or "log(CEU0500000001)" in _bokeh(page)["titles"]
    _assert_clean(page, panel_server)


def test_learn_tab_tells_the_diffuse_and_standard_phases_apart(app_url, page, panel_server):
    """Nile's local level: step 0 is diffuse (its table shows F∞ and F* and the −½(log 2π + log F∞)
    term); step 1 is standard, with F_t ≥ H and the Gaussian term of its innovation."""
    _open(page, app_url)
    _tab(page, "Learn")
    summary = page.locator(".learn-summary")
    summary.first.wait_for(state="visible", timeout=120_000)

    def table() -> dict[str, float]:
        cells = summary.first.locator("tr").evaluate_all(
            "rows => rows.map(r => [...r.querySelectorAll('td')].map(c => c.textContent.trim()))")
        return {name: float(value) for name, value in (c for c in cells if len(c) == 2)}

    page.get_by_text("step kind: diffuse").first.wait_for(state="visible")
    rows = table()
    assert rows["diffuse predictive variance F∞_t = Z P∞_t Zᵀ"] > 0
    assert rows["finite predictive variance F*_t = Z P*_t Zᵀ + H"] >= rows["measurement variance H"]
    term = rows["log-likelihood term −½(log 2π + log F∞_t)"]
    assert term == pytest.approx(-0.5 * (math.log(2 * math.pi) + math.log(rows["diffuse predictive variance "
                                                                              "F∞_t = Z P∞_t Zᵀ"])), rel=1e-5)
    assert "adds no likelihood term" not in page.inner_text("body")
    page.get_by_role("button", name="Step forward ▶").click()
    page.get_by_text("step kind: standard").first.wait_for(state="visible")
    rows = table()
    F, H, v = rows["predictive variance F_t = Z P_t Zᵀ + H"], rows["measurement variance H"], rows["innovation v_t"]
    assert F >= H and not [k for k in rows if "F∞" in k]
    assert rows["log-likelihood term −½(log 2π + log F_t + v_t²/F_t)"] == pytest.approx(
        -0.5 * (math.log(2 * math.pi) + math.log(F) + v * v / F), rel=1e-5)
    _assert_clean(page, panel_server)
    _no_warnings_in_log(panel_server)


def test_session_box_label_sits_above_its_file_box(app_url, page, panel_server):
    _open(page, app_url)
    label = page.get_by_text("Restore a saved session").first.bounding_box()
    box = page.locator(".session-restore input[type=file]").first.bounding_box()
    save = page.get_by_text("Save session (.zip)").first.bounding_box()
    assert label["y"] + label["height"] <= box["y"] + 1          # above the box
    assert abs(label["x"] - box["x"]) <= 12                       # and aligned with it
    assert label["x"] >= save["x"] + save["width"]                # beside the save button
    _assert_clean(page, panel_server)


def test_nuts_results_name_parameters_and_components(app_url, page, panel_server):
    """A short NUTS fit of an AR model: parameter names in its warnings are code, never links; the
    forest plot's y ticks are the parameter names at the page's width; each component panel's y axis is
    the component's name, and every band is named the same way."""
    _open(page, app_url)
    _tab(page, "Model")
    box = page.get_by_label("AR order")
    box.fill("1")
    box.press("Enter")
    page.get_by_text('"autoregressive"').first.wait_for(state="visible")
    _tab(page, "Fit")
    run_short_nuts(page, chains=2, warmup=30, draws=30)
    alert = page.locator(".fit-untrustworthy").first
    names = ["sigma2.irregular", "sigma2.level", "sigma2.ar", "ar.L1"]
    links = alert.locator("a").all_inner_texts()
    assert not [t for t in links if any(n in t for n in names)], links
    code = alert.locator("code").all_inner_texts()
    text = alert.inner_text()
    for n in names:
        if re.search(rf"(?<![\w.]){re.escape(n)}(?![\w])", text):
            assert n in code, (n, text, code)
    page.locator(".bk-tab", has_text="Forest").click()
    forest = page.locator(".posterior-forest").first
    forest.wait_for(state="visible")
    assert forest.bounding_box()["width"] > 800
    page.wait_for_function(f"({BOKEH_JS})().factors.length > 0")
    models = _bokeh(page)
    assert sorted(names) in [sorted(f) for f in models["factors"]], models["factors"]
    panels = [t for t in models["titles"] if "posterior mean and" in t]
    assert [t for t in panels if t.startswith("level:")] and [t for t in panels if t.startswith("autoregressive:")]
    assert all("95% interval" in t for t in panels), models["titles"]
    assert not [t for t in models["titles"] if "HDI" in t or "94%" in t]
    assert "lower" not in models["axis_labels"] and "level" in models["axis_labels"], models["axis_labels"]
    assert "autoregressive" in models["axis_labels"], models["axis_labels"]
    _assert_clean(page, panel_server)
