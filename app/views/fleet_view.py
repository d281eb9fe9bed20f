"""The Fleet tab: many series at once — data, spec, method and backend; progress; a sortable,
filterable table of per-series results; drill-down into one series and "open in Fit / Stream"."""

from __future__ import annotations

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param
from bokeh.models.widgets.tables import HTMLTemplateFormatter, NumberFormatter, ScientificFormatter

import engine
from engine.data import MAX_TABLE_BYTES, format_size

from ..plots import _OPTS, BAND_Z
from ..viewmodels.fleet_model import SAME_TABLES, DrillDown, FleetModel
from .data_view import UploadBox, error_alert

BADGE = HTMLTemplateFormatter(template=(
    '<span class="fleet-badge" style="padding:1px 8px;border-radius:8px;color:white;background:'
    '<%= value == "ok" ? "#2e7d32" : (value == "failed" ? "#c62828" : "#ef6c00") %>">'
    '<%= value == "not_converged" ? "not converged" : value %></span>'))
ANOMALY_STYLE = HTMLTemplateFormatter(template=(
    '<span style="<%= value > 0 ? "color:#c62828;font-weight:bold" : "color:#888" %>"><%= value %></span>'))
FIRST = ["series", "title", "status", "n_anomalies", "n_obs", "loglik"]


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The result table with the columns a reader looks at first leading."""
    lead = [c for c in FIRST if c in table]
    rest = [c for c in table.columns if c not in lead and c != "message"]
    return table[lead + rest + (["message"] if "message" in table else [])].reset_index(drop=True)


def drill_plot(d: DrillDown) -> hv.Overlay:
    """Observations, the filtered mean, the one-step 95% band and the anomalies of one series."""
    x = np.asarray(d.index)
    band = hv.Area((x, d.predicted_mean - BAND_Z * d.predicted_sd, d.predicted_mean + BAND_Z * d.predicted_sd),
                   "time", vdims=["y", "upper"], label="one-step 95% band").opts(
        color="#2a7ab0", alpha=0.2, line_alpha=0)
    obs = hv.Scatter((x, d.y), "time", "y", label="observed").opts(color="black", size=3)
    mean = hv.Curve((x, d.filtered_mean), "time", "y", label="filtered mean").opts(color="#e07b39", line_width=2)
    bad = hv.Scatter((x[d.anomaly], d.y[d.anomaly]), "time", "y", label="anomaly").opts(
        color="#c62828", size=9, marker="x", line_width=2)
    return (band * obs * mean * bad).opts(**_OPTS, legend_position="right", title=f"{d.name}: filtered fit")


class FleetView(pn.viewable.Viewer):
    model = param.ClassSelector(class_=FleetModel)

    def __init__(self, **params):
        super().__init__(**params)
        m, w = self.model, pn.widgets
        upload = UploadBox(accept=".csv,text/csv", max_bytes=MAX_TABLE_BYTES)
        upload.param.watch(lambda e: e.new is not None and m.load_upload(e.new, upload.filename or "upload.csv"),
                           "value")
        self._nuts = pn.Row(w.IntInput.from_param(m.param.nuts_chains, label="NUTS chains", width=100),
                            w.IntInput.from_param(m.param.nuts_warmup, label="warm-up", width=100),
                            w.IntInput.from_param(m.param.nuts_draws, label="draws", width=100))
        self._address = w.TextInput.from_param(m.param.address, label="Ray address (empty: a local Ray)",
                                               placeholder="host:port", width=260)
        self._synthetic = pn.Row(w.IntInput.from_param(m.param.n_time, label="Time steps", width=110),
                                 w.IntInput.from_param(m.param.seed, label="Seed", width=90))
        self._run = w.Button(label="Run fleet", color="primary")
        self._cancel = w.Button(label="Cancel", color="warning", disabled=True)
        self._run.on_click(lambda _: m.run())
        self._cancel.on_click(lambda _: m.cancel())
        self._bar = pn.indicators.Progress(value=0, max=100, width=400, css_classes=["fleet-progress"])
        self._status = pn.pane.Alert("", visible=False, sizing_mode="stretch_width", css_classes=["fleet-status"])
        self._summary = pn.pane.Markdown("", css_classes=["fleet-summary"])
        self._precision = pn.pane.Markdown(SAME_TABLES, visible=False, styles={"color": "#666"},
                                           css_classes=["fleet-precision"])
        self._table = w.Tabulator(pd.DataFrame(), show_index=False, disabled=True, selectable=1,
                                  pagination="remote", page_size=12, header_filters=True,
                                  formatters={"status": BADGE, "n_anomalies": ANOMALY_STYLE,
                                              "loglik": NumberFormatter(format="0,0.000")},
                                  sizing_mode="stretch_width", visible=False, css_classes=["fleet-table"])
        self._table.param.watch(self._on_selection, "selection")
        self._open = w.Button(label="Open in Fit / Stream", color="success", disabled=True)
        self._open.on_click(lambda _: m.open_in_data())
        self._detail_note = pn.pane.Markdown("", css_classes=["fleet-detail-note"])
        self._plot = pn.pane.HoloViews(None, sizing_mode="stretch_width", visible=False,
                                       css_classes=["fleet-drill"])
        m.param.watch(self._on_status, ["status", "message", "progress"])
        m.param.watch(self._on_result, "result")
        m.param.watch(self._on_detail, ["detail", "detail_message", "selected"])
        m.param.watch(self._on_choices, ["source", "method", "backend"])
        self._layout = pn.Column(
            "## Fleet: many series at once",
            pn.Row(w.Select.from_param(m.param.source, label="Series", width=220),
                   pn.Column(pn.pane.Markdown(f"**…or upload a wide CSV** (one column per series, at most "
                                              f"{format_size(MAX_TABLE_BYTES)})", margin=(0, 5)), upload)),
            error_alert(m, "data_error"),
            pn.Row(w.IntInput.from_param(m.param.n_series, label="Series (first N)", width=130), self._synthetic,
                   w.Checkbox.from_param(m.param.log_transform, label="Fit log(series)", align="end")),
            pn.Row(w.Select.from_param(m.param.spec_choice, label="Spec", width=220),
                   w.Select.from_param(m.param.method, label="Method", width=110),
                   w.Select.from_param(m.param.backend, label="Backend", width=110), self._address,
                   w.IntInput.from_param(m.param.batch_size, label="Batch size (0: auto)", width=140)),
            self._nuts,
            pn.Row(self._run, self._cancel), self._bar, self._status, self._summary, self._table, self._precision,
            pn.Row(self._open, self._detail_note), self._plot,
            sizing_mode="stretch_width")
        self._on_choices()
        self._on_status()
        self._on_result()
        self._on_detail()

    def _on_choices(self, *_):
        m = self.model
        self._nuts.visible = m.method == "nuts"
        self._address.visible = m.backend == "ray"
        self._synthetic.visible = m.source == m.param.source.default

    def _on_status(self, *_):
        m = self.model
        self._run.disabled = m.busy
        self._cancel.disabled = not m.busy
        self._bar.value = m.progress
        kind = {"error": "danger", "cancelled": "warning", "done": "success"}.get(m.status, "info")
        self._status.param.update(object=m.message, alert_type=kind, visible=bool(m.message))

    def _on_result(self, *_):
        r = self.model.result
        if r is None:
            return
        s = self.model.summary()
        self._summary.object = (f"**{s['series']}** series &nbsp; **{s['series/s']:.1f}** series/s &nbsp; "
                                f"**{s['failed']}** failed &nbsp; **{s['not converged']}** not converged &nbsp; "
                                f"**{s['anomalies']}** anomalies &nbsp; ({r.method}, {r.seconds:.1f} s)")
        scientific = {p: ScientificFormatter(precision=4) for p in engine.param_names(r.spec)}  # variances span decades
        self._table.param.update(value=display_table(r.table), selection=[], visible=True,
                                 formatters={**self._table.formatters, **scientific})
        self._precision.visible = True

    def _on_selection(self, event):
        if event.new:
            name = self._table.value["series"].iloc[event.new[0]]
            if name != self.model.selected or self.model.detail is None:
                self.model.select(str(name))

    def _on_detail(self, *_):
        m = self.model
        self._detail_note.object = m.detail_message
        self._open.disabled = not (m.result is not None and m.selected)
        if m.detail is not None:
            self._plot.param.update(object=drill_plot(m.detail), visible=True)
        else:
            self._plot.visible = False

    def __panel__(self):
        return self._layout
