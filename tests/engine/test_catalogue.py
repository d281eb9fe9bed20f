"""Catalogue checks beyond tests/engine/test_data.py: provenance, specs, wide multi-series files, new datasets."""

import json

import numpy as np
import pandas as pd
import pytest

import engine
from engine.data import DATASETS_DIR, catalogue_entry, list_datasets, load_dataset

NAMES = list(list_datasets()["name"])
README = (DATASETS_DIR / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", NAMES)
def test_entry_has_provenance_and_a_valid_spec(name):
    entry = catalogue_entry(name)
    for field in ("title", "description", "source", "licence"):
        assert isinstance(entry[field], str) and len(entry[field]) > 10, field
    assert f"`{entry['file']}`" in README, f"datasets/README.md does not describe {entry['file']}"
    spec = engine.ModelSpec.from_dict(entry["suggested_spec"])
    assert engine.param_names(spec)
    assert set(spec.exog_columns) <= set(entry["exog"])
    assert entry.get("transform") in (None, "log")
    if entry.get("transform") == "log":
        target = load_dataset(name)[entry["target"]]
        assert (target.dropna() > 0).all()


def test_every_csv_is_catalogued():
    referenced = set()
    for name in NAMES:
        entry = catalogue_entry(name)
        referenced |= {entry["file"], entry.get("series_titles")}
    assert {p.name for p in DATASETS_DIR.glob("*.csv")} <= referenced
    raw = json.loads((DATASETS_DIR / "catalogue.json").read_text(encoding="utf-8"))
    assert [e["name"] for e in raw] == NAMES


WIDE = [n for n in NAMES if catalogue_entry(n).get("layout") == "wide"]


def test_there_is_a_wide_multi_series_dataset():
    assert WIDE


@pytest.mark.parametrize("name", WIDE)
def test_wide_dataset_is_dozens_of_numeric_series_with_titles(name):
    entry = catalogue_entry(name)
    df = load_dataset(name)
    series = [c for c in df.columns if c != entry["time_column"]]
    assert len(series) >= 24
    assert entry["target"] in series
    for col in series:
        assert pd.api.types.is_float_dtype(df[col]) or pd.api.types.is_integer_dtype(df[col]), col
        assert df[col].notna().sum() >= 24, col
    titles = pd.read_csv(DATASETS_DIR / entry["series_titles"], dtype=str)
    assert list(titles.columns) == ["series", "title"]
    assert sorted(titles["series"]) == sorted(series)
    assert titles["title"].str.len().min() > 0


def test_daily_births_have_weekly_and_yearly_patterns():
    df = load_dataset("births")
    assert df.index.freqstr == "D" and len(df) == 3652 and df["births"].notna().all()
    by_weekday = df["births"].groupby(df.index.day_of_week).mean()
    assert by_weekday[[5, 6]].max() < 0.8 * by_weekday[[0, 1, 2, 3, 4]].min()   # weekends
    by_month = df["births"].groupby(df.index.month).mean()
    assert by_month.idxmax() in (7, 8, 9) and by_month.max() > 1.05 * by_month.min()


def test_hourly_temperature_is_a_long_regular_series_with_a_daily_cycle():
    df = load_dataset("jfk_temperature")
    assert df.index.freqstr == "h" and len(df) > 8000
    temp = df["temp"]
    assert 0 < temp.isna().sum() < 50
    assert -30 < temp.min() and temp.max() < 45
    by_hour = temp.groupby(df.index.hour).mean()
    assert by_hour.max() - by_hour.min() > 3.0    # a clear daily cycle (UTC)
    summer, winter = temp[df.index.month == 7].mean(), temp[df.index.month == 1].mean()
    assert summer - winter > 15.0


def test_us_employment_matches_the_total():
    df = load_dataset("us_employment")
    assert df.index[0] == pd.Timestamp("2005-01-01") and df.index.freqstr == "MS"
    # BLS aggregates: Total Private = Goods-Producing + Private Service-Providing
    total = df["CEU0500000001"]
    parts = df["CEU0600000001"] + df["CEU0800000001"]
    np.testing.assert_allclose(total, parts, rtol=2e-4)
