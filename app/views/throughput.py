"""The Throughput tab: what the stream costs, each number defined on the page.

The numbers come from `StreamModel._stats`; the two charts plot one point per engine batch
(`StreamModel.new_timings`): engine time per observation and end-to-end latency against the
observations streamed. Whether engine time "stays flat" (the O(1) update) is not asserted: the
page compares the first and last quarters of the batches (`engine_time_trend`) and says what
it finds.
"""

from __future__ import annotations

import math

import panel as pn
import param
from bokeh.models import ColumnDataSource
from bokeh.plotting import figure

from ..viewmodels.stream import FLAT_RATIO, MIN_TREND_BATCHES, TIMING_COLUMNS, StreamModel

ROLLOVER = 5_000   # batches kept in the browser's charts
BLUE, ORANGE = "#2a7ab0", "#e07b39"
DEFINITIONS = """
**What each number measures**

- **observations / s**: observations shown on the page, divided by the wall-clock time since Play
  (pauses included): the rate the stream ran at, set by the Speed slider unless the engine is slower.
- **engine ms / obs (mean)**: the filter's time for each batch of observations (`update_many`, until
  its results are on the host), summed over the run and divided by the observations streamed.
  **engine could sustain** is 1000 / that mean: the observations per second the filter alone
  would keep up with. p50 / p99 below are over the batches, each batch's time divided by its size.
- **latency p50 / p99 (ms)**: per observation, from its arrival in the stream's queue to the moment
  the page update that carries it is sent to the browser (the browser's drawing is not included).
  It grows when observations wait in the queue (the engine or the page falls behind, or pauses).
- **render ms / obs**: the server's time to update the Stream tab with a frame, divided by the
  observations in that frame.
"""


def _finite(x) -> float:
    return float(x) if x is not None and math.isfinite(x) else float("nan")


def _fmt(x, spec: str) -> str:
    x = _finite(x)
    return "–" if math.isnan(x) else format(x, spec)


def trend_text(trend: dict) -> str:
    """What the page may say about engine time as the stream grows, from `engine_time_trend`."""
    if not trend or trend.get("flat") is None:
        n = trend.get("n_batches", 0) if trend else 0
        return (f"Engine time per observation over the stream: {n} batches so far; at least "
                f"{MIN_TREND_BATCHES} are needed to compare the first and last quarters.")
    verdict = (f"it stays flat (within {FLAT_RATIO:g}×): each update costs the same whatever the history length"
               if trend["flat"] else
               f"it grew by more than {FLAT_RATIO:g}× (other work on the machine, a recompile or a larger bank "
               "can do this)")
    return (f"Engine time per observation, median of the first quarter of the {trend['n_batches']} batches: "
            f"{trend['first_ms']:.3f} ms; of the last quarter: {trend['last_ms']:.3f} ms (ratio "
            f"{trend['ratio']:.2f}): {verdict}.")


class ThroughputView(pn.viewable.Viewer):
    model = param.ClassSelector(class_=StreamModel)

    def __init__(self, **params):
        super().__init__(**params)
        m = self.model
        big = {"font_size": "24pt", "title_size": "11pt"}
        self._numbers = {
            "obs_per_s": pn.indicators.Number(label="observations / s", format="{value:,.1f}", **big),
            "engine_ms_mean": pn.indicators.Number(label="engine ms / obs (mean)", format="{value:.3f}", **big),
            "engine_obs_per_s": pn.indicators.Number(label="engine could sustain (obs / s)", format="{value:,.0f}",
                                                     **big),
            "latency_ms_p50": pn.indicators.Number(label="latency p50 (ms)", format="{value:,.1f}", **big),
            "latency_ms_p99": pn.indicators.Number(label="latency p99 (ms)", format="{value:,.1f}", **big),
            "render_ms_p50": pn.indicators.Number(label="render ms / obs (p50)", format="{value:.3f}", **big),
        }
        self._detail = pn.pane.Markdown("*Start a stream (Stream tab) to see its throughput.*",
                                        sizing_mode="stretch_width", css_classes=["throughput-detail"])
        self._trend = pn.pane.Markdown("", sizing_mode="stretch_width", css_classes=["throughput-trend"])
        self.source = ColumnDataSource({c: [] for c in TIMING_COLUMNS})
        engine = figure(title="Engine time per observation, each batch (ms)", height=220,
                        sizing_mode="stretch_width", x_axis_label="observations streamed (at the batch's end)",
                        y_axis_label="ms / obs", tools="pan,wheel_zoom,box_zoom,reset")
        engine.line("n_obs", "engine_ms_per_obs", source=self.source, color=BLUE, alpha=0.5)
        engine.scatter("n_obs", "engine_ms_per_obs", source=self.source, color=BLUE, size=3)
        latency = figure(title="End-to-end latency, mean over each batch's observations (ms)", height=220,
                         sizing_mode="stretch_width", x_axis_label="observations streamed (at the batch's end)",
                         y_axis_label="ms", tools="pan,wheel_zoom,box_zoom,reset", x_range=engine.x_range)
        latency.line("n_obs", "latency_ms", source=self.source, color=ORANGE, alpha=0.5)
        latency.scatter("n_obs", "latency_ms", source=self.source, color=ORANGE, size=3)
        self.engine_plot, self.latency_plot = engine, latency
        m.param.watch(self._on_stats, ["stats"])
        m.param.watch(self._on_timings, ["new_timings"])
        m.param.watch(self._on_reset, ["run_id"])
        self._layout = pn.Column(
            pn.FlexBox(*self._numbers.values(), sizing_mode="stretch_width"), self._detail,
            pn.pane.Bokeh(engine, sizing_mode="stretch_width"), self._trend,
            pn.pane.Bokeh(latency, sizing_mode="stretch_width"),
            pn.pane.Markdown(DEFINITIONS, sizing_mode="stretch_width", css_classes=["throughput-definitions"]),
            sizing_mode="stretch_width")

    def _on_reset(self, *_):
        self.source.data = {c: [] for c in TIMING_COLUMNS}
        self._trend.object = ""

    def _on_timings(self, event):
        rows = event.new
        if rows is None or not len(rows):
            return
        self.source.stream({c: rows[c].to_numpy() for c in TIMING_COLUMNS}, rollover=ROLLOVER)

    def _on_stats(self, event):
        s = event.new
        if not s:
            return
        for key, number in self._numbers.items():
            value = _finite(s.get(key))
            number.value = 0.0 if math.isnan(value) else value
        self._detail.object = (
            f"{s['n_obs']} observations in {s['n_batches']} batches over {s['elapsed_s']:.1f} s with "
            f"S = {s['n_draws']} draws. Engine: {_fmt(s['engine_ms_mean'], '.3f')} ms per observation on average, "
            f"so the engine alone could sustain 1000 / {_fmt(s['engine_ms_mean'], '.3f')} = "
            f"{_fmt(s['engine_obs_per_s'], ',.0f')} obs/s; per batch p50 {_fmt(s['engine_ms_p50'], '.3f')} ms/obs, "
            f"p99 {_fmt(s['engine_ms_p99'], '.3f')} ms/obs. Render p99 {_fmt(s['render_ms_p99'], '.3f')} ms/obs; "
            f"{s['queue_depth']} observations waiting in the queue.")
        self._trend.object = trend_text(s.get("trend"))

    def __panel__(self):
        return self._layout
