"""The Stream tab: controls, a live plot that grows by the new rows only, ESS, events, forecast.

The plot is a Bokeh figure over a ColumnDataSource: each `new_rows` update from the view-model
is appended with `ColumnDataSource.stream` (with rollover), so the browser receives only the
new points. The forecast panel shares that source and follows the stream with its own bands.
The x-axis shows the dataset's dates when it has them (each row carries its date as `x`), else
the observation number.
"""

from __future__ import annotations

import panel as pn
import param
from bokeh.models import BasicTicker, BasicTickFormatter, ColumnDataSource, DatetimeTicker, DatetimeTickFormatter, \
    Range1d
from bokeh.plotting import figure

from ..viewmodels.stream import COLUMNS, StreamModel

ROLLOVER = 2_000         # points kept in the browser's plot (the view-model keeps every row)
FORECAST_WINDOW = 120    # observations shown before the forecast
BLUE, ORANGE, RED = "#2a7ab0", "#e07b39", "#c0392b"
X_LABEL = {True: "time", False: "t (observation)"}
EVENT_TEXT = {
    "rejuvenation_start": "rejuvenation started ({reason}) at t = {t_start}, ESS {ess_before:.1f}",
    "rejuvenation_done": "new posterior bank swapped in at t = {t_swap} ({unique_draws} distinct draws, "
                         "acceptance {acceptance:.2f}, {duration_s:.1f} s)",
    "rejuvenation_failed": "rejuvenation failed ({failures} in a row): {error}; the next automatic one waits "
                           "until t = {retry_at}",
    "rejuvenation_unavailable": "rejuvenation unavailable: {reason}",
    "forecast_failed": "the forecast failed: {error}",
    "drift": "drift alarm at t = {t}",
    "error": "stream error in the {where}: {error}",
}


def describe_event(event: dict) -> str:
    template = EVENT_TEXT.get(event.get("kind"), "{kind}")
    try:
        return template.format(**event)
    except (KeyError, ValueError):
        return str(event.get("kind"))


def _empty() -> dict:
    return {c: [] for c in COLUMNS}


def _legend_outside(p) -> None:
    """Put the figure's legend to the right of the plot area, where it covers no data."""
    legend = p.legend[0]
    p.center.remove(legend)
    legend.location = "top_left"
    p.add_layout(legend, "right")


def _figure(title: str, height: int, **kw):
    return figure(title=title, height=height, sizing_mode="stretch_width", tools="pan,wheel_zoom,box_zoom,reset",
                  x_axis_label=X_LABEL[False], **kw)


class StreamView(pn.viewable.Viewer):
    model = param.ClassSelector(class_=StreamModel)

    def __init__(self, **params):
        super().__init__(**params)
        m = self.model
        self._play = pn.widgets.Button(label="Play", color="primary", width=90)
        self._pause = pn.widgets.Button(label="Pause", width=90)
        self._step = pn.widgets.Button(label="Step", width=80)
        self._stop = pn.widgets.Button(label="Stop", width=90)
        self._refit = pn.widgets.Button(label="Refit in the background", color="warning", visible=False)
        self._play.on_click(lambda _: m.play())
        self._pause.on_click(lambda _: m.pause())
        self._step.on_click(lambda _: m.step())
        self._stop.on_click(lambda _: m.stop())
        self._refit.on_click(lambda _: m.refit())
        controls = pn.Row(
            pn.widgets.Select.from_param(m.param.source, label="Stream", width=220),
            pn.widgets.FloatSlider.from_param(m.param.history_fraction, label="Start after (share of the data)",
                                              width=220),
            pn.widgets.FloatSlider.from_param(m.param.rate, label="Speed (obs/s)", start=1, end=1000, width=220),
            pn.widgets.Checkbox.from_param(m.param.max_speed, label="as fast as possible"),
            sizing_mode="stretch_width")
        self._status = pn.pane.Markdown("", sizing_mode="stretch_width", css_classes=["stream-status"])
        self._alert = pn.pane.Alert("", visible=False, sizing_mode="stretch_width")
        self._events = pn.pane.Markdown("*No events yet.*", sizing_mode="stretch_width")

        self.source = ColumnDataSource(_empty())
        self.forecast_source = ColumnDataSource({"t": [], "x": [], "mean": [], "lo95": [], "hi95": [], "lo50": [],
                                                 "hi50": []})
        self.history_source = ColumnDataSource({"t": [], "x": [], "y": []})
        self.plot = self._main_plot()
        self.ess_plot = _figure("Effective sample size of the posterior bank", 160)
        self.ess_plot.line("x", "ess", source=self.source, color=BLUE)
        self.forecast_plot = self._forecast_plot()

        m.param.watch(self._on_rows, ["new_rows"])
        m.param.watch(self._on_reset, ["run_id"])
        m.param.watch(self._on_forecast, ["forecast"])
        m.param.watch(self._on_status, ["status", "message", "n_received", "drift_alarm", "posterior_label"])
        m.param.watch(self._on_events, ["events"])
        self._on_status()
        self._layout = pn.Column(
            controls, pn.Row(self._play, self._pause, self._step, self._stop, self._refit),
            self._alert, self._status,
            pn.pane.Bokeh(self.plot, sizing_mode="stretch_width"),
            "### Forecast from the current belief",
            pn.pane.Bokeh(self.forecast_plot, sizing_mode="stretch_width"),
            pn.pane.Bokeh(self.ess_plot, sizing_mode="stretch_width"),
            "### Events", self._events,
            sizing_mode="stretch_width")

    def _main_plot(self):
        p = _figure("Live: observations, filtered mean, one-step predictive bands", 340)
        p.varea("x", "lo95", "hi95", source=self.source, color=BLUE, alpha=0.15, legend_label="95% predictive")
        p.varea("x", "lo50", "hi50", source=self.source, color=BLUE, alpha=0.3, legend_label="50% predictive")
        p.line("x", "predicted", source=self.source, color=BLUE, line_dash="dashed", legend_label="one-step prediction")
        p.line("x", "filtered", source=self.source, color=ORANGE, line_width=2, legend_label="filtered mean")
        p.scatter("x", "y", source=self.source, color="black", size=3, legend_label="observed")
        p.scatter("x", "anomaly_y", source=self.source, color=RED, size=11, marker="x", line_width=2,
                  legend_label="anomaly")
        _legend_outside(p)
        p.legend.click_policy = "hide"
        return p

    def _forecast_plot(self):
        """The recent history (the filter's starting history, then the streamed observations and
        their filtered mean) and the forecast after the last one."""
        p = _figure("", 240, x_range=Range1d(0, 1))
        p.varea("x", "lo95", "hi95", source=self.forecast_source, color=ORANGE, alpha=0.15, legend_label="95%")
        p.varea("x", "lo50", "hi50", source=self.forecast_source, color=ORANGE, alpha=0.3, legend_label="50%")
        p.line("x", "mean", source=self.forecast_source, color=ORANGE, line_width=2, legend_label="forecast mean")
        p.scatter("x", "y", source=self.history_source, color="gray", size=3, legend_label="history")
        p.scatter("x", "y", source=self.source, color="black", size=3, legend_label="streamed")
        p.line("x", "filtered", source=self.source, color=BLUE, legend_label="filtered mean")
        _legend_outside(p)
        return p

    # -- updates from the view-model (on the page's event loop) ------------------------
    def _on_reset(self, *_):
        self.source.data = _empty()
        self.forecast_source.data = {k: [] for k in self.forecast_source.data}
        history = self.model.history
        self.history_source.data = ({"t": [], "x": [], "y": []} if history is None else
                                    {c: history[c].to_numpy() for c in ("t", "x", "y")})
        dated = self.model.dated
        for plot in (self.plot, self.forecast_plot, self.ess_plot):
            axis = plot.xaxis[0]
            axis.update(axis_label=X_LABEL[dated], ticker=DatetimeTicker() if dated else BasicTicker(),
                        formatter=DatetimeTickFormatter() if dated else BasicTickFormatter())

    def _on_rows(self, event):
        rows = event.new
        if rows is None or not len(rows):
            return
        self.source.stream({c: rows[c].to_numpy() for c in COLUMNS}, rollover=ROLLOVER)

    def _on_forecast(self, event):
        fc = event.new
        if fc is None:
            return
        self.forecast_source.data = {c: fc[c].to_numpy() for c in fc.columns}
        if fc.empty:   # a regression model past the last known regressors
            return
        t_next, t_end = int(fc["t"].iloc[0]), int(fc["t"].iloc[-1])
        # the last FORECAST_WINDOW observations (history included), never before the first one
        start, last, end = self.model.x_of([max(0, t_next - FORECAST_WINDOW), t_end - 1, t_end])
        self.forecast_plot.x_range.update(start=start, end=end + (end - last))

    def _on_status(self, *_):
        m = self.model
        busy = m.status in ("starting", "playing")
        self._play.disabled = m.status in ("starting", "playing")
        self._pause.disabled = m.status != "playing"
        self._stop.disabled = not busy and m.status not in ("pausing", "paused")
        self._refit.visible = m.drift_alarm
        # while a run goes on, a message is a setback it survived (a failed refit or forecast)
        kind = {"error": "danger", "starting": "info", "finished": "success", "playing": "warning",
                "pausing": "warning", "paused": "warning"}.get(m.status, "light")
        self._alert.param.update(object=m.message, alert_type=kind, visible=bool(m.message))
        label = f" — {m.posterior_label}" if m.posterior_label else ""
        alarm = " — **drift alarm**: the model no longer fits the recent data" if m.drift_alarm else ""
        self._status.object = f"**{m.status}**: {m.n_received} / {m.n_total} observations streamed{label}{alarm}"

    def _on_events(self, event):
        lines = [f"- {describe_event(e)}" for e in event.new[-10:]]
        self._events.object = "\n".join(lines) if lines else "*No events yet.*"

    def __panel__(self):
        return self._layout


def stream_tabs(model: StreamModel) -> list[tuple[str, pn.viewable.Viewer]]:
    """The Stream and Throughput tabs over one StreamModel (built and wired to the session by the
    dashboard)."""
    from .throughput import ThroughputView

    return [("Stream", StreamView(model=model)), ("Throughput", ThroughputView(model=model))]
