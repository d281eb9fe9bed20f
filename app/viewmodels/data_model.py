"""DataModel: which table is loaded, which columns are the time, the target and the regressors."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import param

from engine.data import MAX_TABLE_BYTES, DATASETS_DIR, DataError, catalogue_entry, list_datasets, read_table

log = logging.getLogger("streamssm.app")

NO_TIME = "(row number)"
UPLOAD = "(uploaded file)"


def series_titles(dataset: str) -> dict[str, str]:
    """Column id → title from a shipped dataset's titles file (the catalogue's `series_titles`; empty
    when it has none), e.g. the BLS series ids of us_employment → their industries."""
    name = catalogue_entry(dataset).get("series_titles")
    if not name:
        return {}
    titles = pd.read_csv(DATASETS_DIR / name, dtype=str)
    return dict(zip(titles["series"], titles["title"]))


def _read(raw: bytes, source: str, **options) -> pd.DataFrame:
    """`read_table` within the upload limit, any failure a DataError: a bug in the parser is logged,
    and the page says so instead of losing the session's data."""
    try:
        return read_table(raw, max_bytes=MAX_TABLE_BYTES, **options)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001
        log.exception("read_table failed on %s", source)
        raise DataError(f"the file could not be parsed ({type(exc).__name__}: {exc})") from exc


class DataModel(param.Parameterized):
    """The series a session works on: a shipped dataset or an uploaded CSV, parsed by `read_table`.

    Two kinds of problem are told apart: a load that failed (a bad upload) is shown in `error` but
    leaves the data loaded before it in use; a column choice that does not work on the loaded data
    (`choice_error`: a time column that does not parse, a log of values <= 0) is shown too and
    keeps `ready` False until it is changed.
    """

    dataset = param.Selector(default=None, objects=[], doc="Shipped dataset from the catalogue, or the upload")
    source = param.String(default="", constant=True, doc="What is loaded: a dataset name or the upload's file name")
    description = param.String(default="")
    frame = param.DataFrame(default=None, allow_None=True, constant=True)
    time_column = param.Selector(default=NO_TIME, objects=[NO_TIME])
    target = param.Selector(default=None, objects=[])
    exog = param.ListSelector(default=[], objects=[])
    log_transform = param.Boolean(default=False, doc="Model log(target) (multiplicative effects)")
    sort_rows = param.Boolean(default=False, doc="Sort the rows by time when the file is out of order")
    error = param.String(default="", doc="Why the last load or choice failed (shown in the page)")
    choice_error = param.String(default="", constant=True,
                                doc="Why the current column choice cannot be used; nothing is fitted until it is fixed")
    notice = param.String(default="")
    suggested_spec = param.Dict(default=None, allow_None=True)
    column_titles = param.Dict(default={}, constant=True,
                               doc="Column → title, for columns whose name is a code (a shipped dataset's ids)")

    def __init__(self, **params):
        super().__init__(**params)
        names = list(list_datasets()["name"])
        self.param.dataset.objects = names + [UPLOAD]
        self._raw: bytes | None = None
        self._freq: str | None = None
        self._parsed_with: tuple[str, bool] | None = None  # (time column, sorted) of the bytes' current parse
        self._reparse_error = ""                            # why the chosen time column / sorting did not parse
        self._loaded: str | None = None                     # the `dataset` value of what is loaded
        self._reload_upload = None                          # loads the last upload again (choosing UPLOAD)
        if self.dataset is None and names:
            self.dataset = names[0]
        elif self.dataset is not None:
            self._on_dataset()

    # -- loading ---------------------------------------------------------------------
    @param.depends("dataset", watch=True)
    def _on_dataset(self):
        """Load the dataset chosen in the selector (the upload: the last one again); if that cannot
        be done, the selector goes back to what is loaded."""
        if self.dataset is None or self.dataset == self._loaded:
            return
        if self.dataset == UPLOAD:
            if self._reload_upload is None:
                self._show_errors("Nothing has been uploaded yet: choose a CSV file with the upload box.")
            else:
                self._reload_upload()
            if self._loaded != UPLOAD:
                self.dataset = self._loaded  # the selector keeps showing what is loaded
            return
        entry = catalogue_entry(self.dataset)
        raw = (DATASETS_DIR / entry["file"]).read_bytes()
        if not self._load(raw, source=self.dataset, time_column=entry["time_column"], freq=entry["frequency"],
                          target=entry["target"], exog=list(entry["exog"]),
                          log=entry.get("transform") == "log", description=entry.get("description", ""),
                          suggested=entry.get("suggested_spec"), titles=series_titles(self.dataset)):
            self.dataset = self._loaded
            return
        self._loaded = self.dataset

    def load_upload(self, raw: bytes, filename: str = "upload.csv") -> bool:
        """Parse an uploaded CSV (size-checked by `read_table`); on failure say why and keep the current data."""
        if raw is None:
            return False
        ok = self._load(raw, source=filename, time_column=None, freq=None, target=None, exog=[],
                        log=False, description=f"Uploaded file {filename}", suggested=None, titles={})
        if ok:
            self._uploaded(lambda: self.load_upload(raw, filename))
        return ok

    def load_frame(self, frame: pd.DataFrame, source: str, *, target: str, log: bool = False,
                   description: str = "", suggested: dict | None = None) -> None:
        """Load an already parsed table (e.g. one series of a fleet); there are no bytes to re-read."""
        self._raw, self._freq, self._parsed_with = None, frame.attrs.get("freq"), None
        self._set_frame(frame, source, target, [], log, {})
        self.description = description
        self.suggested_spec = None  # so that the same suggested spec is loaded into the Model tab again
        self.suggested_spec = suggested
        self._uploaded(lambda: self.load_frame(frame, source, target=target, log=log, description=description,
                                               suggested=suggested))

    def _uploaded(self, reload) -> None:
        """Show UPLOAD in the dataset selector (without loading anything) and remember how to load it again."""
        self._reload_upload = reload
        self._loaded = UPLOAD
        self.dataset = UPLOAD

    def _load(self, raw, *, source, time_column, freq, target, exog, log, description, suggested, titles) -> bool:
        """Parse and show a table; a failure is shown and leaves the loaded data as it was."""
        try:
            frame = _read(raw, source, time_column=time_column, freq=freq, sort=self.sort_rows)
        except DataError as exc:
            kept = " The data loaded before stays in use." if self.frame is not None else ""
            self._show_errors(f"Could not read {source}: {exc}.{kept}")
            return False
        self._raw, self._freq = raw, freq
        self._parsed_with = (frame.attrs.get("time_column") or NO_TIME, bool(self.sort_rows))
        self._set_frame(frame, source, target, exog, log, titles)
        self.description = description
        self.suggested_spec = suggested
        return True

    def _set_frame(self, frame: pd.DataFrame, source: str, target=None, exog=(), log=None, titles=None):
        time_col = frame.attrs.get("time_column")
        values = [c for c in frame.columns if c != time_col]
        self._reparse_error = ""
        with param.parameterized.batch_call_watchers(self):
            self.param.time_column.objects = [NO_TIME] + list(frame.columns)
            self.param.target.objects = values
            self.param.exog.objects = values
            with param.edit_constant(self):
                self.frame = frame
                self.source = source
                if titles is not None:
                    self.column_titles = {c: t for c, t in titles.items() if c in values}
            self.time_column = time_col or NO_TIME
            self.target = target if target in values else values[0]
            self.exog = [c for c in exog if c in values and c != self.target]
            if log is not None:
                self.log_transform = log
            self._show_errors()
            filled = frame.attrs.get("filled_steps", 0)
            self.notice = (f"{filled} missing time step(s) were added as missing values." if filled else "")

    @param.depends("time_column", "sort_rows", watch=True)
    def _reparse(self):
        """Choosing another time column (or sorting, or not) re-reads the same bytes; choosing the
        parse already loaded again takes back an error the other choice gave."""
        if self._raw is None or self.frame is None:
            return
        if (self.time_column, bool(self.sort_rows)) == self._parsed_with:
            self._reparse_error = ""
            self._show_errors()
            return
        try:
            chosen = None if self.time_column == NO_TIME else self.time_column
            frame = _read(self._raw, self.source, time_column=chosen, freq=self._freq if chosen else None,
                          sort=self.sort_rows)
        except DataError as exc:
            self._reparse_error = str(exc)
            self._show_errors()
            return
        self._parsed_with = (self.time_column, bool(self.sort_rows))
        self._set_frame(frame, self.source, self.target, list(self.exog), None)

    @param.depends("target", "log_transform", watch=True)
    def _check_choice(self):
        if self.target in self.exog:
            self.exog = [c for c in self.exog if c != self.target]
        self._show_errors()

    def _show_errors(self, failed_load: str = "") -> None:
        """Set `choice_error` from the current choice, and `error` to a failed load's message (if any)
        followed by it."""
        problem = self._reparse_error
        if not problem and self.frame is not None and self.log_transform and self.target is not None:
            y = self.frame[self.target].to_numpy()
            if np.any(y[np.isfinite(y)] <= 0):
                problem = (f"column '{self.target}' has values <= 0, so its log is undefined; "
                           "switch the log transform off")
        with param.edit_constant(self):
            self.choice_error = problem
        self.error = "\n\n".join(m for m in (failed_load, problem) if m)

    # -- what the models read --------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Whether the loaded data and the current choice can be fitted (a failed upload does not matter)."""
        return self.frame is not None and self.target is not None and not self.choice_error

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

    def column_label(self, column: str) -> str:
        """How a column is offered in the page: 'title (id)' when the column's name is a code with a
        title, else the name itself."""
        title = self.column_titles.get(column)
        return f"{title} ({column})" if title else str(column)

    def table_bytes(self) -> bytes | None:
        """The loaded table as CSV bytes that `load_upload` reads back to the same table: the bytes
        that were parsed, or an already parsed table written out (None when nothing is loaded)."""
        if self._raw is not None:
            return self._raw
        return None if self.frame is None else self.frame.to_csv(index=False).encode()

    @property
    def target_label(self) -> str:
        return f"log({self.target})" if self.log_transform else str(self.target)

    @property
    def exog_frame(self) -> pd.DataFrame | None:
        return self.frame[list(self.exog)] if self.exog else None
