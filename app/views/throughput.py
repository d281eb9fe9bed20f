"""The Throughput tab: live obs/s and latency percentiles, engine time against render time.

Engine time per observation plotted against the number streamed stays flat when the update
is O(1) in the history length: that line is the claim made visible.
"""

from __future__ import annotations

import math

import panel as pn
import param
from bokeh.models import ColumnDataSource
from bokeh.plotting import figure

from ..viewmodels.stream import StreamModel

ROLLOVER = 5_000
STAT_COLUMNS = ("n_obs", "obs_per_s", "engine_ms_p50", "render_ms_p50")


def _finite(x) -> float:
    return float(x) if x is not None and math.isfinite(x) else float("nan")


class ThroughputView(pn.viewable.Viewer):
    model = param.ClassSelector(class_=StreamModel)

    def __init__(self, **params):
        super().__init__(**params)
        m = self.model
        fmt = "{value:,.1f}"
        self._numbers = {
            "obs_per_s": pn.indicators.Number(name="observations / s", format=fmt, font_size="28pt"),
            "engine_ms_p50": pn.indicators.Number(name="engine ms / obs (p50)", format="{value:.3f}",
                                                  font_size="28pt"),
            "latency_ms_p50": pn.indicators.Number(name="latency p50 (ms)", format=fmt, font_size="28pt"),
            "latency_ms_p99": pn.indicators.Number(name="latency p99 (ms)", format=fmt, font_size="28pt"),
            "render_ms_p50": pn.indicators.Number(name="render ms / obs (p50)", format="{value:.3f}",
                                                  font_size="28pt"),
        }
        self._detail = pn.pane.Markdown("*Start a stream (Stream tab) to see its throughput.*",
                                        sizing_mode="stretch_width", css_classes=["throughput-detail"])
        self.source = ColumnDataSource({c: [] for c in STAT_COLUMNS})
        rate = figure(title="Observations per second", height=220, sizing_mode="stretch_width",
                      x_axis_label="observations streamed", tools="pan,wheel_zoom,reset")
        rate.line("n_obs", "obs_per_s", source=self.source, color="#2a7ab0", line_width=2)
        cost = figure(title="Time per observation (ms): engine vs render", height=220, sizing_mode="stretch_width",
                      x_axis_label="observations streamed", tools="pan,wheel_zoom,reset")
        cost.line("n_obs", "engine_ms_p50", source=self.source, color="#2a7ab0", line_width=2, legend_label="engine")
        cost.line("n_obs", "render_ms_p50", source=self.source, color="#e07b39", line_width=2, legend_label="render")
        cost.legend.location = "top_right"
        self.rate_plot, self.cost_plot = rate, cost
        m.param.watch(self._on_stats, ["stats"])
        m.param.watch(self._on_reset, ["run_id"])
        self._layout = pn.Column(
            pn.Row(*self._numbers.values(), sizing_mode="stretch_width"), self._detail,
            pn.pane.Bokeh(rate, sizing_mode="stretch_width"), pn.pane.Bokeh(cost, sizing_mode="stretch_width"),
            pn.pane.Markdown("Engine time per observation stays flat as the stream grows: each update costs "
                             "the same whatever the history length (O(1)). Render time is the server side of "
                             "the page update, per observation.", sizing_mode="stretch_width"),
            sizing_mode="stretch_width")

    def _on_reset(self, *_):
        self.source.data = {c: [] for c in STAT_COLUMNS}

    def _on_stats(self, event):
        s = event.new
        if not s:
            return
        for key, number in self._numbers.items():
            value = _finite(s.get(key))
            number.value = 0.0 if math.isnan(value) else value
        self._detail.object = (
            f"{s['n_obs']} observations in {s['elapsed_s']:.1f} s with S = {s['n_draws']} draws; the engine "
            f"alone could sustain {s['engine_obs_per_s']:,.0f} obs/s. Engine p99 {s['engine_ms_p99']:.3f} ms/obs, "
            f"render p99 {_finite(s['render_ms_p99']):.3f} ms/obs, queue {s['queue_depth']}.")
        self.source.stream({c: [_finite(s[c])] for c in STAT_COLUMNS}, rollover=ROLLOVER)

    def __panel__(self):
        return self._layout
