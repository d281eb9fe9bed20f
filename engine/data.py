"""Bundled example datasets and the one safe CSV parser (pure pandas).

`read_table` serves both uploads and the shipped data: it takes bytes or a binary
file object (never a URL or a path chosen by a user), checks the size before
parsing, gives every column an explicit dtype and refuses bad input with a
`DataError` that names the column and the lines at fault.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

__all__ = [
    "DATASETS_DIR", "CATALOGUE_FILE", "MAX_TABLE_BYTES", "MISSING_TOKENS", "DataError", "format_size",
    "detect_time_column", "read_table", "list_datasets", "catalogue_entry", "load_dataset",
]


DATASETS_DIR = Path(__file__).resolve().parent.parent / "datasets"
CATALOGUE_FILE = DATASETS_DIR / "catalogue.json"

MAX_TABLE_BYTES = 10 * 1024 * 1024
MAX_YEAR = 9999                # integer years, either side of year 0
MAX_INTEGER_TIME = 2**62       # integer times: any two differ by less than 2**63, so steps fit in int64
MISSING_TOKENS = frozenset({"", "na", "nan", "n/a", "null", "none", "-", "."})
TIME_NAMES = ("time", "date", "datetime", "timestamp", "ds", "year", "month", "quarter", "week",
              "day", "period", "t", "index")
# Calendar grids tried coarsest first when the caller gives no frequency: the first
# grid that contains every timestamp is the series' frequency.
CANDIDATE_FREQS = ("YS", "YE", "QS", "QE", "MS", "ME", "W", "D", "h", "min", "s")
# The longest step of the calendar grids whose steps vary in length (see `_grid_too_large`).
_LONGEST_STEP = {"YS": pd.Timedelta(days=366), "YE": pd.Timedelta(days=366), "QS": pd.Timedelta(days=92),
                 "QE": pd.Timedelta(days=92), "MS": pd.Timedelta(days=31), "ME": pd.Timedelta(days=31),
                 "W": pd.Timedelta(days=7), "D": pd.Timedelta(days=1)}
_MAX_LISTED = 5
_INTEGER = re.compile(r"[+-]?\d+")  # \d: the decimal digits int() takes


class DataError(ValueError):
    """A table could not be read; the message names the column and lines at fault."""


def _lines(rows: list[int]) -> str:
    """'line 4' / 'lines 4, 9 and 12' / 'lines 4, 9, 12, 15, 20 and 7 more' (file line numbers)."""
    shown = [str(r) for r in rows[:_MAX_LISTED]]
    more = len(rows) - len(shown)
    if len(rows) == 1:
        return f"line {shown[0]}"
    if more:
        return f"lines {', '.join(shown)} and {more} more"
    return f"lines {', '.join(shown[:-1])} and {shown[-1]}"


def format_size(n_bytes: int) -> str:
    """A size as people read it ('10 MB', '15.7 MB', '512 KB'; 1 MB = 2**20 bytes), the same in every message."""
    for unit, size in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n_bytes >= size:
            return f"{round(n_bytes / size, 1):g} {unit}"
    return f"{n_bytes} bytes"


def _read_bytes(source: bytes | bytearray | memoryview | BinaryIO, max_bytes: int | None) -> bytes:
    """The raw bytes, refusing anything larger than `max_bytes` before it is parsed."""
    if isinstance(source, (str, Path)):
        raise DataError("read_table takes the file's bytes or an open binary file, not a path or URL")
    if isinstance(source, (bytes, bytearray, memoryview)):
        raw = bytes(source)
    elif hasattr(source, "read"):
        raw = source.read() if max_bytes is None else source.read(max_bytes + 1)
        if isinstance(raw, str):
            raise DataError("the file was opened in text mode; open it in binary mode ('rb')")
    else:
        raise DataError(f"cannot read a table from a {type(source).__name__}; give bytes or a binary file")
    if max_bytes is not None and len(raw) > max_bytes:
        raise DataError(f"the file is larger than the {format_size(max_bytes)} limit; "
                        "upload a smaller file (fewer rows or columns)")
    return raw


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"the file is not valid UTF-8 text (byte {exc.start}, line {line}); "
                        "save it as UTF-8 CSV") from None


def _split_rows(text: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and data rows (with their file line numbers); blank lines are skipped."""
    if "\x00" in text:
        raise DataError("the file contains NUL bytes: it is binary, not a CSV text file")
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[tuple[int, list[str]]] = []
    try:
        for cells in reader:
            if cells and any(c.strip() for c in cells):
                rows.append((reader.line_num, [c.strip() for c in cells]))
    except csv.Error as exc:
        raise DataError(f"the file is not valid CSV at line {reader.line_num}: {exc}") from None
    if not rows:
        raise DataError("the file is empty: expected a header line and at least one data row")
    (_, header), data = rows[0], rows[1:]
    blank = [i + 1 for i, h in enumerate(header) if not h]
    if blank:
        raise DataError(f"the header (line {rows[0][0]}) has an empty column name in position(s) {blank}; "
                        "name every column")
    seen: set[str] = set()
    dupes = sorted({h for h in header if h in seen or seen.add(h)})
    if dupes:
        raise DataError(f"the header names column(s) {dupes} more than once; column names must be unique")
    if not data:
        raise DataError(f"the file has a header ({', '.join(header)}) but no data rows")
    ragged = [line for line, cells in data if len(cells) != len(header)]
    if ragged:
        first = next(cells for line, cells in data if len(cells) != len(header))
        raise DataError(f"{_lines(ragged)}: expected {len(header)} values as in the header, "
                        f"found {len(first)} on {_lines(ragged[:1])}; every row needs one value per column")
    return header, data


def _numeric(name: str, values: list[str], lines: list[int]) -> np.ndarray:
    """A float64 column; missing tokens become NaN, anything else non-numeric is an error."""
    out = np.full(len(values), np.nan)
    bad: list[int] = []
    infinite: list[int] = []
    for i, v in enumerate(values):
        if v.lower() in MISSING_TOKENS:
            continue
        try:
            if "_" in v:  # float() accepts '1_000'; a CSV cell should not
                raise ValueError(v)
            x = float(v)
        except ValueError:
            bad.append(i)
            continue
        if not math.isfinite(x):
            infinite.append(i)
        out[i] = x
    if bad:
        example = values[bad[0]]
        raise DataError(f"column '{name}' must be numeric but has non-numeric values on "
                        f"{_lines([lines[i] for i in bad])} (e.g. {example!r}); "
                        "leave a cell empty for a missing value")
    if infinite:
        raise DataError(f"column '{name}' has infinite values on {_lines([lines[i] for i in infinite])}; "
                        "leave a cell empty for a missing value")
    return out


def detect_time_column(header: list[str]) -> str | None:
    """The column that names the time axis: a conventional name (time, date, year, …), if any."""
    lowered = {h.lower(): h for h in header}
    for name in TIME_NAMES:
        if name in lowered:
            return lowered[name]
    return None


def _is_integer(value: str) -> bool:
    """An optionally signed run of decimal digits (str.isdigit would also take '²', which int() refuses)."""
    return _INTEGER.fullmatch(value) is not None


def _integer(value: str) -> int | float:
    """int(value), or ±inf past 19 digits: beyond every limit here (and int() refuses over 4300 digits)."""
    if len(value.lstrip("+-").lstrip("0")) <= 19:
        return int(value)
    return -math.inf if value.startswith("-") else math.inf


def _utc_offsets(name: str, values: list[str], lines: list[int]) -> pd.Series:
    """ISO dates where some carry a UTC offset: all converted to UTC, but only if none lacks one.

    Offsets may differ between rows (local time across a DST change, or 'Z' next to '+01:00');
    a time without an offset among times with one has no defined instant, so it is refused.
    """
    parsed = pd.to_datetime(pd.Series(values), format="ISO8601", errors="coerce", utc=True)
    aware: list[bool | None] = []
    for v in values:
        try:
            aware.append(pd.Timestamp(v).tzinfo is not None)
        except (ValueError, OverflowError):
            aware.append(None)  # not a date at all: the caller reports it as such
    naive = [i for i, a in enumerate(aware) if a is False]
    if naive and True in aware:
        first = aware.index(True)
        raise DataError(f"time column '{name}' mixes times with a UTC offset (e.g. line {lines[first]}: "
                        f"{values[first]!r}) and times without one on {_lines([lines[i] for i in naive])} "
                        f"(e.g. {values[naive[0]]!r}); give every time an offset (or Z), or none")
    return parsed


def _parse_time(name: str, values: list[str], lines: list[int]) -> pd.Index:
    """Integer years (1000-2999, or a column called 'year') → 1 January; other integers → an
    integer index; anything else must be an ISO-like date."""
    missing = [lines[i] for i, v in enumerate(values) if v.lower() in MISSING_TOKENS]
    if missing:
        raise DataError(f"time column '{name}' is empty on {_lines(missing)}; every row needs a time")
    if all(_is_integer(v) for v in values):
        numbers = [_integer(v) for v in values]
        is_year = name.lower() == "year" or (min(numbers) >= 1000 and max(numbers) <= 2999)
        limit = MAX_YEAR if is_year else MAX_INTEGER_TIME
        out = [i for i, n in enumerate(numbers) if abs(n) > limit]
        if out:
            rule = (f"years must lie between -{MAX_YEAR} and {MAX_YEAR}" if is_year else
                    f"integer times must lie between -{MAX_INTEGER_TIME:.3g} and {MAX_INTEGER_TIME:.3g}")
            raise DataError(f"time column '{name}' has values out of range on {_lines([lines[i] for i in out])} "
                            f"(e.g. {values[out[0]]!r}); {rule}")
        stamps = np.array(numbers, dtype="int64")
        if is_year:  # numpy counts datetime64[Y] from 1970
            return pd.DatetimeIndex((stamps - 1970).astype("datetime64[Y]").astype("datetime64[us]"), name="time")
        return pd.Index(stamps, dtype="int64", name="time")
    try:
        parsed = pd.to_datetime(pd.Series(values), format="ISO8601", errors="coerce")
    except ValueError:  # pandas refuses different UTC offsets, or offsets mixed with none, without utc=True
        parsed = None
    if parsed is None or parsed.dtype == object:
        parsed = _utc_offsets(name, values, lines)
    bad = [lines[i] for i in np.flatnonzero(parsed.isna().to_numpy())]
    if bad:
        example = values[next(i for i, ok in enumerate(parsed.notna()) if not ok)]
        raise DataError(f"time column '{name}' has values that are not dates on {_lines(bad)} "
                        f"(e.g. {example!r}); use dates like 2024-01-31, or integer years or indices")
    if parsed.dt.tz is not None:
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    return pd.DatetimeIndex(parsed, name="time")


def _check_order(name: str, index: pd.Index, lines: list[int]) -> None:
    values = index.to_numpy()
    dup = pd.Index(values).duplicated(keep="first")
    if dup.any():
        rows = [lines[i] for i in np.flatnonzero(dup)]
        raise DataError(f"time column '{name}' repeats a time on {_lines(rows)} "
                        f"(first: {index[int(np.flatnonzero(dup)[0])]}); each time may appear once")
    back = np.flatnonzero(values[1:] < values[:-1]) + 1
    if back.size:
        rows = [lines[i] for i in back]
        raise DataError(f"time column '{name}' is not in increasing order: it goes back in time on "
                        f"{_lines(rows)}; sort the file by time, or ask for the rows to be sorted")


def _grid_too_large(index: pd.DatetimeIndex, freq: str) -> bool:
    """Whether the grid of `freq` from the first to the last time surely has over 4 steps per time.

    Checked before the grid is built: two times 8000 years apart on a grid of seconds would not fit
    in memory. A step's longest length gives the fewest steps the grid can have.
    """
    longest = _LONGEST_STEP.get(freq)
    if longest is None:
        offset = pd.tseries.frequencies.to_offset(freq)
        if not isinstance(offset, pd.offsets.Tick):
            return False
        longest = pd.Timedelta(offset.nanos, "ns")
    return (index[-1] - index[0]).total_seconds() / longest.total_seconds() + 1 > 4 * len(index)


def _regular_grid(index: pd.Index, freq: str | None) -> tuple[pd.Index, str | None]:
    """The regular grid that the times lie on (missing time steps included), and its frequency."""
    if isinstance(index, pd.DatetimeIndex):
        if len(index) == 1:
            return pd.DatetimeIndex(index, freq=freq, name="time"), freq
        candidates = (freq,) if freq else CANDIDATE_FREQS
        for f in candidates:
            if _grid_too_large(index, f):
                continue
            grid = pd.date_range(index[0], index[-1], freq=f, name="time")
            if len(grid) and grid[0] == index[0] and index.isin(grid).all() and len(grid) <= 4 * len(index):
                return grid, f
        if freq and _grid_too_large(index, freq):
            raise DataError(f"the times are too sparse for the frequency '{freq}' (most steps missing)")
        if freq:
            off = [t for t in index if t not in set(pd.date_range(index[0], index[-1], freq=freq))]
            raise DataError(f"the times do not follow the frequency '{freq}' (e.g. {off[0] if off else index[-1]})")
        raise DataError("the times are not on a regular calendar grid (yearly, quarterly, monthly, weekly, "
                        "daily, hourly, …); a state space model needs equally spaced time steps")
    values = [int(v) for v in index]  # Python integers: no overflow in the steps
    step = math.gcd(*(b - a for a, b in zip(values, values[1:]))) if len(values) > 1 else 1
    if (values[-1] - values[0]) // step + 1 > 4 * len(values):
        raise DataError("the integer times are too sparse to form a regular series (most steps missing)")
    grid = pd.Index(np.arange(values[0], values[-1] + 1, step), dtype="int64", name="time")
    return grid, None if step == 1 else str(step)


def read_table(source: bytes | BinaryIO, *, max_bytes: int | None = MAX_TABLE_BYTES,
               time_column: str | None = None, freq: str | None = None, sort: bool = False) -> pd.DataFrame:
    """Parse a CSV safely into a float64 DataFrame indexed by time.

    The time column is `time_column`, else one with a conventional name (time, date,
    year, …); without one the rows are numbered 0, 1, … The index is a DatetimeIndex
    (on a regular grid of `freq`, or the coarsest calendar grid that fits) or an integer
    index; time steps absent from the file become rows of NaN, as do empty cells. The time
    column is kept as a column. Duplicate or decreasing times are errors unless
    `sort=True` (which sorts; duplicates are still refused). Every other column must be
    numeric. `df.attrs` records the time column, the frequency and how many time steps
    were filled in.
    """
    header, data = _split_rows(_decode(_read_bytes(source, max_bytes)))
    lines = [line for line, _ in data]
    columns = {h: [cells[j] for _, cells in data] for j, h in enumerate(header)}
    if time_column is not None and time_column not in columns:
        raise DataError(f"time column '{time_column}' is not in the file; its columns are {header}")
    time_col = time_column if time_column is not None else detect_time_column(header)
    value_cols = [h for h in header if h != time_col]
    if not value_cols:
        raise DataError(f"the file has only the time column '{time_col}'; add at least one numeric column")
    frame = pd.DataFrame({h: _numeric(h, columns[h], lines) for h in value_cols}, columns=value_cols)

    if time_col is None:
        frame.index = pd.RangeIndex(len(frame), name="time")
        frame.attrs.update(time_column=None, freq=None, filled_steps=0)
        return frame
    index = _parse_time(time_col, columns[time_col], lines)
    if sort:
        order = np.argsort(index.to_numpy(), kind="stable")
        index, frame, lines = index[order], frame.iloc[order], [lines[i] for i in order]
    _check_order(time_col, index, lines)
    frame.index = index
    grid, grid_freq = _regular_grid(index, freq)
    filled = len(grid) - len(index)
    frame = frame.reindex(grid)
    if isinstance(grid, pd.DatetimeIndex) and all(_is_integer(v) for v in columns[time_col]):
        frame.insert(0, time_col, grid.year.astype("int64"))   # integer years stay integer years
    elif isinstance(grid, pd.DatetimeIndex):
        frame.insert(0, time_col, grid.to_series().to_numpy())
    else:
        frame.insert(0, time_col, grid.to_numpy())
    frame.attrs.update(time_column=time_col, freq=grid_freq, filled_steps=int(filled))
    return frame


@lru_cache(maxsize=1)
def _catalogue() -> tuple[dict[str, Any], ...]:
    with open(CATALOGUE_FILE, encoding="utf-8") as f:
        entries = json.load(f)
    return tuple(entries)


def _names() -> list[str]:
    return [e["name"] for e in _catalogue()]


def list_datasets() -> pd.DataFrame:
    """Return the catalogue as a DataFrame, one row per dataset (``name`` first)."""
    rows = [dict(e) for e in _catalogue()]
    return pd.DataFrame(rows).reset_index(drop=True)


def catalogue_entry(name: str) -> dict[str, Any]:
    """Return a copy of the catalogue entry for ``name``; unknown name raises ``ValueError``."""
    for entry in _catalogue():
        if entry["name"] == name:
            return json.loads(json.dumps(entry))  # deep copy
    raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(_names())}")


def load_dataset(name: str) -> pd.DataFrame:
    """Load dataset ``name`` through `read_table`, indexed by a DatetimeIndex at the catalogue frequency.

    Yearly time columns (integer years) map to 1 January of the year; the time
    column itself is kept as a column. Missing values stay as NaN.
    """
    entry = catalogue_entry(name)
    raw = (DATASETS_DIR / entry["file"]).read_bytes()
    return read_table(raw, max_bytes=None, time_column=entry["time_column"], freq=entry["frequency"])
