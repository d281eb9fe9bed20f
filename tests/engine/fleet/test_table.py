"""The input table (long and wide, bad values) and the batch plan."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import engine
from engine.fleet import as_series_table, default_batch_size
from engine.fleet.table import BATCH_COV_ENTRIES
from engine.system import layout


AIR = {"level": {"kind": "local_linear_trend"}, "seasonal": [{"period": 12}]}   # 13 states


def test_default_batch_size_follows_the_covariance_size():
    """The largest multiple of 8 with at most BATCH_COV_ENTRIES covariance entries (series ×
    states²), in [16, 256], and no more than an even share of the series per worker."""
    sizes = {}
    for spec in ({"level": {"kind": "local_level"}}, engine.make_fleet(1, 30).spec, AIR):
        spec = engine.ModelSpec.from_dict(spec)
        m = layout(spec).n_states
        size = default_batch_size(spec, 10_000, 2)
        assert size % 8 == 0 and 16 <= size <= 256
        if size < 256:
            assert size * m * m <= BATCH_COV_ENTRIES < (size + 8) * m * m
        sizes[m] = size
    assert sizes[1] == 256 and sizes[13] < sizes[6] < 256
    assert default_batch_size(engine.ModelSpec.from_dict(AIR), 30, 2) == 15     # spread over the workers
    assert default_batch_size(engine.ModelSpec.from_dict(AIR), 1, 2) == 1


def test_inputs_long_and_wide_tables():
    Y = np.arange(30.0).reshape(3, 10) ** 1.1
    Y[1, 7:] = np.nan
    wide = pd.DataFrame(Y.T, columns=["a", "b", "c"])
    long = wide.reset_index().melt(id_vars="index", var_name="series", value_name="value").rename(
        columns={"index": "time"}).dropna()
    for data in (wide, long):
        table = as_series_table(data)
        assert table.ids == ["a", "b", "c"]
        np.testing.assert_array_equal(table.Y, Y)
    with pytest.raises(ValueError, match="infinite value at series '0', time step 1"):
        as_series_table(np.array([[1.0, np.inf, 2.0]]))
    exog = np.ones((10, 1))
    exog[4, 0] = np.nan
    with pytest.raises(ValueError, match="exog has a NaN/inf at time step 4, column 0"):
        as_series_table(Y, exog)
    with pytest.raises(ValueError, match=r"exog must be \(time, k\) shared or \(series, time, k\)"):
        as_series_table(Y, np.ones((3, 10, 1, 1)))
