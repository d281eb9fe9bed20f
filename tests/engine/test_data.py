"""Tests for the bundled datasets and engine.data."""

import numpy as np
import pandas as pd
import pytest

from engine.data import DATASETS_DIR, catalogue_entry, list_datasets, load_dataset

NAMES = list(list_datasets()["name"])


def test_catalogue_lists_expected_datasets():
    cat = list_datasets()
    assert {"nile", "airpassengers", "seatbelts", "co2", "sunspots"} <= set(cat["name"])
    assert cat["name"].is_unique
    for col in ("name", "title", "description", "file", "frequency", "time_column",
                "target", "exog", "suggested_spec", "source", "licence"):
        assert col in cat.columns


@pytest.mark.parametrize("name", NAMES)
def test_entry_loads_with_declared_columns_and_frequency(name):
    entry = catalogue_entry(name)
    path = DATASETS_DIR / entry["file"]
    assert path.is_file() and path.stat().st_size < 200_000
    df = load_dataset(name)
    assert isinstance(df.index, pd.DatetimeIndex)
    assert df.index.is_monotonic_increasing and df.index.is_unique
    assert df.index.freq == pd.tseries.frequencies.to_offset(entry["frequency"])
    expected = pd.date_range(df.index[0], periods=len(df), freq=entry["frequency"])
    assert df.index.equals(expected)
    for col in [entry["time_column"], entry["target"], *entry["exog"]]:
        assert col in df.columns
    assert pd.api.types.is_numeric_dtype(df[entry["target"]])
    for col in entry["exog"]:
        assert pd.api.types.is_numeric_dtype(df[col])
        assert df[col].notna().all()
    assert df[entry["target"]].notna().sum() > 50
    assert isinstance(entry["suggested_spec"], dict)
    reg = entry["suggested_spec"].get("regression")
    if reg:
        assert set(reg["columns"]) <= set(df.columns)


def test_nile():
    df = load_dataset("nile")
    assert len(df) == 100
    assert df["flow"].iloc[0] == 1120 and df["flow"].iloc[-1] == 740
    assert df.index[0] == pd.Timestamp("1871-01-01")
    assert df.index[-1] == pd.Timestamp("1970-01-01")


def test_airpassengers():
    df = load_dataset("airpassengers")
    assert len(df) == 144
    assert df["passengers"].iloc[0] == 112 and df["passengers"].iloc[-1] == 432
    assert df["passengers"].sum() == 40363
    assert df.index[0] == pd.Timestamp("1949-01-01")
    assert df.index[-1] == pd.Timestamp("1960-12-01")
    assert catalogue_entry("airpassengers").get("transform") == "log"


def test_seatbelts():
    df = load_dataset("seatbelts")
    assert len(df) == 192
    assert df.index[0] == pd.Timestamp("1969-01-01")
    assert df.index[-1] == pd.Timestamp("1984-12-01")
    for col in ("drivers_killed", "drivers", "front", "rear", "kms",
                "petrol_price", "van_killed", "law"):
        assert col in df.columns
    assert df["drivers"].iloc[0] == 1687
    # Seat belt law in force from February 1983.
    assert df["law"].idxmax() == pd.Timestamp("1983-02-01")
    assert set(df["law"].unique()) == {0, 1}


def test_co2_has_nan_gaps():
    df = load_dataset("co2")
    assert df["co2"].isna().any()
    assert df["co2"].isna().sum() < 20
    assert df.index[0] == pd.Timestamp("1958-03-01")
    assert pd.isna(df.loc["1964-03-01", "co2"])
    assert np.nanmin(df["co2"]) > 300 and np.nanmax(df["co2"]) < 400


def test_sunspots():
    df = load_dataset("sunspots")
    assert df.index[0] == pd.Timestamp("1700-01-01")
    assert df["sunspots"].iloc[0] == 5.0
    assert (df["sunspots"] >= 0).all()


def test_unknown_name_raises_value_error_listing_names():
    with pytest.raises(ValueError) as exc:
        load_dataset("no_such_dataset")
    for name in NAMES:
        assert name in str(exc.value)
    with pytest.raises(ValueError):
        catalogue_entry("no_such_dataset")


def test_catalogue_entry_is_a_copy():
    entry = catalogue_entry("nile")
    entry["exog"].append("x")
    assert catalogue_entry("nile")["exog"] == []
