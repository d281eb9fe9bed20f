"""DataModel: which table is loaded, which columns are the time, the target and the regressors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import param

from engine.data import MAX_TABLE_BYTES, DATASETS_DIR, DataError, catalogue_entry, list_datasets, read_table

NO_TIME = "(row number)"
UPLOAD = "(uploaded file)"


class DataModel(param.Parameterized):
    """The series a session works on: a shipped dataset or an uploaded CSV, parsed by `read_table`."""

    dataset = param.Selector(default=None, objects=[], doc="Shipped dataset from the catalogue")
    source = param.String(default="", constant=True, doc="What is loaded: a dataset name or the upload's file name")
    description = param.String(default="")
    frame = param.DataFrame(default=None, allow_None=True, constant=True)
    time_column = param.Selector(default=NO_TIME, objects=[NO_TIME])
    target = param.Selector(default=None, objects=[])
    exog = param.ListSelector(default=[], objects=[])
    log_transform = param.Boolean(default=False, doc="Model log(target) (multiplicative effects)")
    sort_rows = param.Boolean(default=False, doc="Sort the rows by time when the file is out of order")
    error = param.String(default="", doc="Why the last load or choice failed (shown in the page)")
    notice = param.String(default="")
    suggested_spec = param.Dict(default=None, allow_None=True)

    def __init__(self, **params):
        super().__init__(**params)
        names = list(list_datasets()["name"])
        self.param.dataset.objects = names + [UPLOAD]
        self._raw: bytes | None = None
        self._freq: str | None = None
        if self.dataset is None and names:
            self.dataset = names[0]
        elif self.dataset is not None:
            self._on_dataset()

    # -- loading ---------------------------------------------------------------------
    @param.depends("dataset", watch=True)
    def _on_dataset(self):
        if self.dataset in (None, UPLOAD):
            return
        entry = catalogue_entry(self.dataset)
        raw = (DATASETS_DIR / entry["file"]).read_bytes()
        self._load(raw, source=self.dataset, time_column=entry["time_column"], freq=entry["frequency"],
                   target=entry["target"], exog=list(entry["exog"]),
                   log=entry.get("transform") == "log", description=entry.get("description", ""),
                   suggested=entry.get("suggested_spec"))

    def load_upload(self, raw: bytes, filename: str = "upload.csv") -> bool:
        """Parse an uploaded CSV (size-checked by `read_table`); on failure keep the current data."""
        if raw is None:
            return False
        ok = self._load(raw, source=filename, time_column=None, freq=None, target=None, exog=[],
                        log=False, description=f"Uploaded file {filename}", suggested=None)
        if ok:
            with param.parameterized.discard_events(self):
                self.dataset = UPLOAD
        return ok

    def load_frame(self, frame: pd.DataFrame, source: str, *, target: str, log: bool = False,
                   description: str = "", suggested: dict | None = None) -> None:
        """Load an already parsed table (e.g. one series of a fleet); there are no bytes to re-read."""
        self._raw, self._freq = None, frame.attrs.get("freq")
        self._set_frame(frame, source, target, [], log)
        self.description = description
        self.suggested_spec = None  # so that the same suggested spec is loaded into the Model tab again
        self.suggested_spec = suggested
        with param.parameterized.discard_events(self):
            self.dataset = UPLOAD

    def _load(self, raw, *, source, time_column, freq, target, exog, log, description, suggested) -> bool:
        try:
            frame = read_table(raw, max_bytes=MAX_TABLE_BYTES, time_column=time_column, freq=freq,
                               sort=self.sort_rows)
        except DataError as exc:
            self.error = f"Could not read {source}: {exc}"
            return False
        self._raw, self._freq = raw, freq
        self._set_frame(frame, source, target, exog, log)
        self.description = description
        self.suggested_spec = suggested
        return True

    def _set_frame(self, frame: pd.DataFrame, source: str, target=None, exog=(), log=None):
        time_col = frame.attrs.get("time_column")
        values = [c for c in frame.columns if c != time_col]
        with param.parameterized.batch_call_watchers(self):
            self.param.time_column.objects = [NO_TIME] + list(frame.columns)
            self.param.target.objects = values
            self.param.exog.objects = values
            with param.edit_constant(self):
                self.frame = frame
                self.source = source
            self.time_column = time_col or NO_TIME
            self.target = target if target in values else values[0]
            self.exog = [c for c in exog if c in values and c != self.target]
            if log is not None:
                self.log_transform = log
            self.error = ""
            filled = frame.attrs.get("filled_steps", 0)
            self.notice = (f"{filled} missing time step(s) were added as missing values." if filled else "")

    @param.depends("time_column", "sort_rows", watch=True)
    def _reparse(self):
        """Choosing another time column (or asking to sort) re-reads the same bytes."""
        if self._raw is None or self.frame is None:
            return
        if self.time_column == (self.frame.attrs.get("time_column") or NO_TIME) and not self.sort_rows:
            return
        try:
            chosen = None if self.time_column == NO_TIME else self.time_column
            frame = read_table(self._raw, time_column=chosen, freq=self._freq if chosen else None,
                               sort=self.sort_rows)
        except DataError as exc:
            self.error = str(exc)
            return
        self._set_frame(frame, self.source, self.target, list(self.exog), None)

    @param.depends("target", "log_transform", watch=True)
    def _check_choice(self):
        if self.target in self.exog:
            self.exog = [c for c in self.exog if c != self.target]
        if self.frame is not None and self.log_transform and self.target is not None:
            y = self.frame[self.target].to_numpy()
            if np.any(y[np.isfinite(y)] <= 0):
                self.error = (f"column '{self.target}' has values <= 0, so its log is undefined; "
                              "switch the log transform off")
                return
        self.error = ""

    # -- what the models read --------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.frame is not None and self.target is not None and not self.error

    @property
    def index(self) -> pd.Index:
        return self.frame.index

    @property
    def y(self) -> np.ndarray:
        """The target as float64 (time,), log-transformed when asked; NaN marks missing values."""
        y = self.frame[self.target].to_numpy(dtype=float)
        if self.log_transform:
            with np.errstate(invalid="ignore", divide="ignore"):
                y = np.log(y)
        return y

    @property
    def target_label(self) -> str:
        return f"log({self.target})" if self.log_transform else str(self.target)

    @property
    def exog_frame(self) -> pd.DataFrame | None:
        return self.frame[list(self.exog)] if self.exog else None
