"""The Data tab: choose a dataset or upload a CSV, pick columns, see the series."""

from __future__ import annotations

import panel as pn
import param

from engine.data import MAX_TABLE_BYTES

from ..plots import series_plot
from ..viewmodels import DataModel


def error_alert(model: param.Parameterized, name: str = "error") -> pn.pane.Alert:
    """A red alert that shows `model.<name>` and hides when it is empty."""
    alert = pn.pane.Alert(getattr(model, name), alert_type="danger", visible=bool(getattr(model, name)),
                          sizing_mode="stretch_width")

    def update(event):
        alert.object, alert.visible = event.new, bool(event.new)
    model.param.watch(update, name)
    return alert


class DataView(pn.viewable.Viewer):
    model = param.ClassSelector(class_=DataModel)

    def __init__(self, **params):
        super().__init__(**params)
        m = self.model
        self._upload = pn.widgets.FileInput(accept=".csv,text/csv", multiple=False, name="Upload a CSV")
        self._upload.param.watch(self._on_upload, "value")
        self._layout = pn.Column(
            pn.Row(pn.widgets.Select.from_param(m.param.dataset, name="Dataset"),
                   pn.Column(pn.pane.Markdown(f"**…or upload a CSV** (at most {MAX_TABLE_BYTES // 2**20} MB)",
                                              margin=(0, 5)), self._upload)),
            error_alert(m),
            pn.pane.Markdown(m.param.description, sizing_mode="stretch_width"),
            pn.pane.Markdown(m.param.notice),
            pn.Row(pn.widgets.Select.from_param(m.param.time_column, name="Time column"),
                   pn.widgets.Select.from_param(m.param.target, name="Target"),
                   pn.widgets.MultiChoice.from_param(m.param.exog, name="Regressors (exog)", width=320)),
            pn.Row(pn.widgets.Checkbox.from_param(m.param.log_transform, name="Model log(target)"),
                   pn.widgets.Checkbox.from_param(m.param.sort_rows, name="Sort rows by time")),
            pn.pane.HoloViews(self._plot, sizing_mode="stretch_width"),
            sizing_mode="stretch_width",
        )

    def _on_upload(self, event):
        if event.new is not None:
            self.model.load_upload(event.new, self._upload.filename or "upload.csv")

    @param.depends("model.frame", "model.target", "model.log_transform")
    def _plot(self):
        m = self.model
        if m.frame is None or m.target is None:
            return None
        return series_plot(m.index, m.y, m.target_label)

    def __panel__(self):
        return self._layout
