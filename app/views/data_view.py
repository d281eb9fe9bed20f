"""The Data tab: choose a dataset or upload a CSV, pick columns, see the series; and the upload box
that every upload of the app uses."""

from __future__ import annotations

import binascii
from base64 import b64decode

import panel as pn
import param
from panel.custom import JSComponent

from engine.data import MAX_TABLE_BYTES, format_size

from ..plots import series_plot
from ..viewmodels import DataModel

CHUNK_BYTES = 2 * 2**20  # one websocket message per 2 MB of file (2.7 MB as base64), far below Bokeh's 20 MB


class UploadBox(JSComponent):
    """A file box whose browser side checks the file's size before reading it, then sends it in chunks.

    A file over `max_bytes` never leaves the browser; the box says why instead. Panel's FileInput sends
    a file as one base64 message, and one over Bokeh's websocket limit (20 MB) closes the session
    without a word. `value` and `filename` are set as FileInput sets them, once the last chunk is in.
    """

    accept = param.String(default="", doc="File types offered in the browser's dialog, e.g. '.csv,text/csv'")
    max_bytes = param.Integer(default=MAX_TABLE_BYTES, bounds=(0, None), doc="The largest file accepted")
    chunk_bytes = param.Integer(default=CHUNK_BYTES, bounds=(1, None), doc="Bytes of the file per message")
    message = param.String(default="", doc="Why the last file was refused (shown under the box)")
    filename = param.String(default=None, allow_None=True, doc="The last file's name")
    value = param.Bytes(default=None, allow_None=True, doc="The last file's content")

    _rename = {"filename": None, "value": None}  # server-side only: the file arrives by messages

    _esm = """
    function base64(blob) {
      return new Promise((resolve, reject) => {
        const reader = new FileReader()
        reader.onload = () => resolve(reader.result.slice(reader.result.indexOf(",") + 1))
        reader.onerror = () => reject(reader.error)
        reader.readAsDataURL(blob)
      })
    }

    export function render({ model, el }) {
      const input = document.createElement("input")
      input.type = "file"
      input.accept = model.accept
      const progress = document.createElement("div")
      progress.className = "upload-progress"
      const note = document.createElement("div")
      note.className = "upload-message"
      const show = () => { note.textContent = model.message; note.hidden = !model.message }
      model.on("message", show)
      show()
      let latest = 0  // a file chosen while another is being sent stops the older one
      input.addEventListener("change", async () => {
        const file = input.files[0]
        input.value = ""  // choosing the same file again is a new upload
        if (!file) return
        const upload = ++latest
        progress.textContent = ""
        if (file.size > model.max_bytes) {
          model.send_msg({ kind: "refused", name: file.name, size: file.size })
          return
        }
        const step = model.chunk_bytes
        const total = Math.max(1, Math.ceil(file.size / step))
        for (let i = 0; i < total; i++) {
          if (total > 1) progress.textContent = `Sending ${file.name}: ${Math.round(100 * i / total)}%`
          const data = await base64(file.slice(i * step, (i + 1) * step))
          if (upload !== latest) return
          model.send_msg({ kind: "chunk", name: file.name, size: file.size, index: i, total: total, data: data })
        }
        progress.textContent = `${file.name}: sent`  // the box itself shows no file once cleared
      })
      el.append(input, progress, note)
    }
    """

    _stylesheets = ["""
    :host { display: flex; flex-direction: column; }
    input { font: inherit; max-width: 100%; }
    .upload-progress { color: #555; font-size: 0.9em; }
    .upload-progress:empty { display: none; }
    .upload-message { color: #842029; background: #f8d7da; border: 1px solid #f5c2c7; border-radius: 4px;
                      padding: 4px 8px; margin-top: 4px; }
    """]

    def __init__(self, **params):
        super().__init__(**params)
        self._parts: list[bytes] = []
        # The limit the server enforces, fixed when the box is made: `max_bytes` is synced with the
        # page, which can change it, so it only tells the browser what to refuse before sending.
        self._limit = int(self.max_bytes)
        self._refused: str | None = None   # the upload refused last: its remaining chunks are dropped

    def _handle_msg(self, msg) -> None:
        """One message from the browser: a refusal, or one chunk of a file (the last sets `value`).
        The server's own limit holds whatever the page says: a file declared, or found, larger
        is dropped with the chunks received so far."""
        try:
            name, size = str(msg["name"]), int(msg["size"])
            if msg["kind"] == "refused" or size > self._limit:
                self._refuse(name, size)
                return
            index, total = int(msg["index"]), int(msg["total"])
            if index == 0:
                self._parts, self.message, self._refused = [], "", None
            elif self._refused == name:
                return
            if index != len(self._parts) or index >= total:
                raise ValueError(f"part {index + 1} of {total} arrived out of order")
            self._parts.append(b64decode(msg["data"], validate=True))
            received = sum(map(len, self._parts))
            if received > self._limit:
                self._refuse(name, received)
                return
            if received > size:
                raise ValueError("more bytes arrived than the file has")
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            self._parts = []
            self.message = f"The upload failed ({exc}); please choose the file again."
            return
        if len(self._parts) < total:
            return
        raw, self._parts = b"".join(self._parts), []
        with param.parameterized.discard_events(self):
            self.value = None  # the same file again is a new value
        self.param.update(filename=name, value=raw)


    def _refuse(self, name: str, size: int) -> None:
        self._parts, self._refused = [], name
        self.message = (f"{name} is {format_size(size)}, over the "
                        f"{format_size(self._limit)} limit, so it was not uploaded: choose a smaller file.")


def error_alert(model: param.Parameterized, name: str = "error") -> pn.pane.Alert:
    """A red alert that shows `model.<name>` and hides when it is empty."""
    alert = pn.pane.Alert(getattr(model, name), alert_type="danger", visible=bool(getattr(model, name)),
                          sizing_mode="stretch_width")

    def update(event):
        alert.object, alert.visible = event.new, bool(event.new)
    model.param.watch(update, name)
    return alert


def choice_widget(widget_type, model: param.Parameterized, parameter: str, option_label=None, **params):
    """A Select-like widget bound two ways to the selector parameter `model.<parameter>`, whose options and
    value always change together.

    `widget_type.from_param` follows the parameter's objects and its value in two separate watchers:
    when a model replaces both at once (a new table's columns and the column chosen in it), the widget
    first sees options without its old value, falls back to the first option and writes that back to
    the model, ending with the model and the page showing different columns. Here each change sets
    options and value from the model's current state in one update. `option_label(option)` is what the page
    shows for an option (the value stays the option itself); `params` go to the widget.
    """
    widget = widget_type(**params)

    def show(*_):
        objects = list(model.param[parameter].objects)
        options = {option_label(o): o for o in objects} if option_label is not None else objects
        widget.param.update(options=options, value=getattr(model, parameter))

    def choose(event):
        if event.new != getattr(model, parameter):
            setattr(model, parameter, event.new)

    model.param.watch(show, parameter)
    model.param.watch(show, parameter, what="objects")
    widget.param.watch(choose, "value")
    show()
    return widget


class DataView(pn.viewable.Viewer):
    model = param.ClassSelector(class_=DataModel)

    def __init__(self, **params):
        super().__init__(**params)
        m = self.model
        self._upload = UploadBox(accept=".csv,text/csv", max_bytes=MAX_TABLE_BYTES, name="Upload a CSV")
        self._upload.param.watch(self._on_upload, "value")
        self._layout = pn.Column(
            pn.Row(pn.widgets.Select.from_param(m.param.dataset, label="Dataset"),
                   pn.Column(pn.pane.Markdown(f"**…or upload a CSV** (at most {format_size(MAX_TABLE_BYTES)})",
                                              margin=(0, 5)), self._upload)),
            error_alert(m),
            pn.pane.Markdown(m.param.description, sizing_mode="stretch_width"),
            pn.pane.Markdown(m.param.notice),
            pn.Row(choice_widget(pn.widgets.Select, m, "time_column", label="Time column"),
                   choice_widget(pn.widgets.Select, m, "target", m.column_label, label="Target",
                                 css_classes=["data-target"]),
                   choice_widget(pn.widgets.MultiChoice, m, "exog", m.column_label, label="Regressors (exog)",
                                 width=320)),
            pn.Row(pn.widgets.Checkbox.from_param(m.param.log_transform, label="Model log(target)"),
                   pn.widgets.Checkbox.from_param(m.param.sort_rows, label="Sort rows by time")),
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
