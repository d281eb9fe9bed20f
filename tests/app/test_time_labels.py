"""Time labels follow the data's frequency: the year of yearly data, the month of monthly data,
the date of daily data, a clock below a day; an index that is not of times gives numbers."""

import numpy as np
import pandas as pd
import pytest

from app.plots import beyond_band, time_format, time_label


@pytest.mark.parametrize("index, at, expected", [
    (pd.date_range("1871-01-01", periods=100, freq="YS"), 42, "1913"),
    (pd.date_range("1871-12-31", periods=100, freq="YE"), 42, "1913"),          # year-end dates: still the year
    (pd.date_range("1959-01-01", periods=12, freq="QS"), 5, "1960-Q2"),
    (pd.date_range("1949-01-01", periods=144, freq="MS"), 134, "1960-03"),
    (pd.date_range("1949-01-31", periods=144, freq="ME"), 134, "1960-03"),      # month-end dates: still the month
    (pd.date_range("2020-05-01", periods=30, freq="D"), 3, "2020-05-04"),
    (pd.date_range("2020-05-01", periods=30, freq="W-MON"), 1, "2020-05-11"),
    (pd.date_range("2020-05-01", periods=48, freq="h"), 27, "2020-05-02 03:00"),
    (pd.date_range("2020-05-01", periods=90, freq="10s"), 7, "2020-05-01 00:01:10"),
])
def test_label_by_frequency(index, at, expected):
    assert time_label(index[at], index) == expected


def test_the_median_gap_decides_so_a_gap_in_the_data_does_not():
    index = pd.date_range("1949-01-01", periods=48, freq="MS").delete([10, 11, 12, 30])   # missing months
    assert time_format(index) == "%Y-%m" and time_label(index[20], index) == "1950-12"


def test_steps_that_are_not_times_are_numbers():
    assert time_format(range(5)) is None and time_label(3, range(5)) == "3"


def test_without_an_index_a_midnight_reads_as_a_date():
    assert time_label(pd.Timestamp("1913-01-01")) == "1913-01-01"
    assert time_label(pd.Timestamp("1913-01-01 06:30")) == "1913-01-01 06:30:00"


def test_beyond_band_names_points_by_the_frequency_of_its_index():
    values = np.zeros(24)
    values[[3, 14]] = [3.0, -2.5]
    monthly = pd.date_range("1960-01-01", periods=24, freq="MS")
    assert beyond_band(monthly, values) == [(3, "1960-04", 3.0), (14, "1961-03", -2.5)]
    yearly = pd.date_range("1900-01-01", periods=24, freq="YS")
    assert [t for _, t, _ in beyond_band(yearly, values)] == ["1903", "1914"]
