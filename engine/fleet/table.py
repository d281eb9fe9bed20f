"""A fleet's input as one table: series names, values (series, time), regressors, time index.

`as_series_table` reads the shapes a fleet comes in (an array, a wide or a long DataFrame) and
checks them once, so batches and backends only ever see float arrays of one layout. The batch
plan (`default_batch_size`, `batch_bounds`) and the per-series seeds depend only on the table's
shape and the job's seed, never on the backend.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from ..spec import ModelSpec
from ..system import check_finite, layout

BATCH_COV_ENTRIES = 4096  # default batch: about this many covariance entries (series × states²), see `default_batch_size`


class SeriesTable(NamedTuple):
    """A fleet, series leading: ids, values (series, time) with NaN for missing, optional exog."""

    ids: list
    Y: np.ndarray                 # (series, time)
    exog: np.ndarray | None       # (time, k) shared or (series, time, k)
    time: pd.Index | None


def as_series_table(Y, exog=None, spec: ModelSpec | None = None) -> SeriesTable:
    """Normalise the fleet: an array (series, time), a wide DataFrame (time index × one column
    per series) or a long one (columns series, time, value). Ragged ends become NaN."""
    time_index = None
    if isinstance(Y, pd.DataFrame):
        cols = {str(c).lower(): c for c in Y.columns}
        if {"series", "time", "value"} <= set(cols):
            wide = Y.pivot_table(index=cols["time"], columns=cols["series"], values=cols["value"],
                                 aggfunc="first", dropna=False).sort_index()
            if Y.duplicated([cols["series"], cols["time"]]).any():
                first = Y[Y.duplicated([cols["series"], cols["time"]])].iloc[0]
                raise ValueError(f"the long table has two values for series {first[cols['series']]!r} at time "
                                 f"{first[cols['time']]!r}")
            Y = wide
        try:
            values = Y.to_numpy(dtype=float).T
        except (TypeError, ValueError) as err:
            raise ValueError(f"every column of the fleet table must be numeric: {err}") from None
        ids, time_index = [str(c) for c in Y.columns], Y.index
    else:
        try:
            values = np.asarray(Y, dtype=float)
        except (TypeError, ValueError) as err:
            raise ValueError(f"Y must be numeric (series, time): {err}") from None
        if values.ndim == 1:
            values = values[None]
        if values.ndim != 2:
            raise ValueError(f"Y must be (series, time), got shape {values.shape}")
        ids = [str(i) for i in range(values.shape[0])]
    if values.shape[0] == 0 or values.shape[1] < 2:
        raise ValueError(f"the fleet needs at least one series of at least 2 time steps, got shape {values.shape}")
    check_finite(values, "Y", dims=("series", "time step"), labels={"series": ids})
    if len(set(ids)) != len(ids):
        raise ValueError("series names must be unique")
    x = None
    if exog is not None:
        if isinstance(exog, pd.DataFrame):
            if spec is not None and spec.regression is not None:
                missing = [c for c in spec.exog_columns if c not in exog.columns]
                if missing:
                    raise ValueError(f"exog has no column(s) {missing}; the spec regresses on {list(spec.exog_columns)}")
                exog = exog[list(spec.exog_columns)]
            exog = exog.to_numpy(dtype=float)
        x = np.asarray(exog, dtype=float)
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim not in (2, 3) or x.ndim == 2 and x.shape[0] < values.shape[1] \
                or x.ndim == 3 and x.shape[:2] != values.shape:
            raise ValueError(f"exog must be (time, k) shared or (series, time, k) with time ≥ {values.shape[1]}, "
                             f"got shape {x.shape}")
        labels = {"series": ids, "column": spec.exog_columns if spec is not None and spec.regression is not None else None}
        check_finite(x, "exog", regressors=True, dims=("series", "time step", "column")[3 - x.ndim:], labels=labels)
        x = x[: values.shape[1]] if x.ndim == 2 else x
    if spec is not None and spec.regression is not None:
        if x is None:
            raise ValueError(f"the spec regresses on {list(spec.exog_columns)} but no exog was given")
        if x.shape[-1] != spec.k_exog:
            raise ValueError(f"exog has {x.shape[-1]} columns; the spec regresses on {list(spec.exog_columns)}")
    return SeriesTable(ids, values, x, time_index)


def default_batch_size(spec: ModelSpec, n_series: int, workers: int = 1) -> int:
    """Series per batch when the caller gives none: BATCH_COV_ENTRIES // states², a multiple of
    8 in [16, 256], and no more than an even share of the series per worker.

    A batch's filter keeps, per series, a states² covariance and one tangent of it per
    parameter; past a few thousand covariance entries per batch each series costs more
    (measured MAP fits, 2-core CPU: 6 states, 96–112 series 190–220 series/s against 115–125
    at 256; 13 states, 16–64 series about 65/s against 48 at 96 and 27 at 256; 1 state, 256
    series 3,400–4,500/s against 1,800 at 32). Results do not depend on the batch size."""
    n_states = max(layout(spec).n_states, 1)
    size = int(np.clip(BATCH_COV_ENTRIES // n_states ** 2, 16, 256)) // 8 * 8
    return max(1, min(size, -(-n_series // max(workers, 1))))


def batch_bounds(n_series: int, batch_size: int) -> list[tuple[int, int]]:
    """[start, stop) of each batch."""
    return [(lo, min(lo + batch_size, n_series)) for lo in range(0, n_series, batch_size)]


def series_seed(seed: int, index: int) -> int:
    """A seed for one series that depends only on the job's seed and the series' position."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])

