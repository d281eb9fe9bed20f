"""Save the session's work to one file and restore it: a download button, an upload box, a message."""

from __future__ import annotations

import panel as pn
import param

from ..viewmodels.session_file import MAX_FILE_BYTES, SessionFileModel
from .data_view import UploadBox

FILENAME = "streamssm-session.zip"


class SessionView(pn.viewable.Viewer):
    model = param.ClassSelector(class_=SessionFileModel)

    def __init__(self, **params):
        super().__init__(**params)
        m = self.model
        save = pn.widgets.FileDownload(callback=m.save, filename=FILENAME, label="Save session (.zip)",
                                       color="primary", width=220, css_classes=["session-save"])
        upload = UploadBox(accept=".zip", max_bytes=MAX_FILE_BYTES, width=260, css_classes=["session-upload"])
        upload.param.watch(lambda e: e.new and m.load(e.new, upload.filename or FILENAME), "value")
        self._status = pn.pane.Alert("", visible=False, sizing_mode="stretch_width", css_classes=["session-status"])
        m.param.watch(self._on_status, ["status", "message"])
        # the label sits above its file box, the pair beside the save button, as the Data tab's upload
        restore = pn.Column(pn.pane.Markdown("**Restore a saved session**", margin=(0, 5)), upload,
                            margin=(0, 0, 0, 20), css_classes=["session-restore"])
        self._layout = pn.Row(save, restore, self._status, sizing_mode="stretch_width")

    def _on_status(self, *_):
        m = self.model
        kind = {"error": "danger", "loading": "info", "done": "success"}.get(m.status, "light")
        self._status.param.update(object=m.message, alert_type=kind, visible=bool(m.message))

    def __panel__(self):
        return self._layout
