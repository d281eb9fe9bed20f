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


# -- the safe CSV parser ---------------------------------------------------------------

from engine.data import DataError, read_table  # noqa: E402


def _csv(text: str) -> bytes:
    return text.encode("utf-8")


def test_dataset_roundtrips_through_read_table_as_bytes_and_file_object():
    import io
    raw = (DATASETS_DIR / "nile.csv").read_bytes()
    direct = pd.read_csv(io.BytesIO(raw))
    for source in (raw, io.BytesIO(raw)):
        df = read_table(source)
        assert df.attrs["time_column"] == "year" and df.attrs["freq"] == "YS"
        assert df.index.freq == pd.tseries.frequencies.to_offset("YS")
        np.testing.assert_array_equal(df["flow"].to_numpy(), direct["flow"].to_numpy().astype(float))
        np.testing.assert_array_equal(df["year"].to_numpy(), direct["year"].to_numpy())
        assert df["flow"].dtype == np.float64


def test_monthly_dates_with_gaps_become_nan_rows_and_empty_cells_nan():
    df = read_table(_csv("month,y,x\n2020-01-01,1,5\n2020-02-01,,6\n2020-04-01,4,NA\n"))
    assert df.attrs["freq"] == "MS" and df.attrs["filled_steps"] == 1
    assert list(df.index) == list(pd.date_range("2020-01-01", periods=4, freq="MS"))
    np.testing.assert_array_equal(df["y"].to_numpy(), [1.0, np.nan, np.nan, 4.0])
    np.testing.assert_array_equal(df["x"].to_numpy(), [5.0, 6.0, np.nan, np.nan])


def test_integer_index_and_no_time_column():
    df = read_table(_csv("t,y\n1,3\n2,4\n4,5\n"))
    assert list(df.index) == [1, 2, 3, 4] and np.isnan(df["y"].iloc[2])
    df = read_table(_csv("a,b\n1,2\n3,4\n"))
    assert df.attrs["time_column"] is None and list(df.index) == [0, 1]
    df = read_table(_csv("when,y\n1,3\n2,4\n"), time_column="when")
    assert list(df.index) == [1, 2]


@pytest.mark.parametrize("text, words", [
    ("", ["empty"]),
    ("\n\n  \n", ["empty"]),
    ("year,flow\n", ["header", "no data rows"]),
    ("year,flow\n1871,1120\n1872,abc\n1873,1000\n1874,n/a?\n", ["'flow'", "lines 3 and 5", "'abc'"]),
    ("year,flow\n1871,1120\n1872,1160,9\n", ["line 3", "expected 2 values"]),
    ("year,flow\n1871,1120\n1871,1160\n", ["repeats", "line 3", "'year'"]),
    ("year,flow\n1872,1120\n1871,1160\n1873,1\n", ["not in increasing order", "line 3", "'year'"]),
    ("date,y\n2020-01-01,1\nyesterday,2\n", ["'date'", "line 3", "not dates"]),
    ("date,y\n2020-01-01,1\n,2\n", ["'date'", "line 3", "empty"]),
    ("year,flow\n1871,inf\n", ["'flow'", "infinite", "line 2"]),
    ("year,flow,flow\n1871,1,2\n", ["more than once", "flow"]),
    ("year,\n1871,1\n", ["empty column name"]),
    ("year\n1871\n", ["only the time column"]),
    ("date,y\n2020-01-01,1\n2020-01-03,2\n2020-02-17,3\n", ["regular"]),
])
def test_bad_tables_name_the_problem(text, words):
    with pytest.raises(DataError) as exc:
        read_table(_csv(text))
    assert isinstance(exc.value, ValueError)
    for w in words:
        assert w in str(exc.value), (w, str(exc.value))


def test_bad_encoding_and_binary_are_refused():
    with pytest.raises(DataError, match="UTF-8.*line 2"):
        read_table(b"year,flow\n1871,\xff\xfe\n")
    with pytest.raises(DataError, match="binary"):
        read_table(b"year,flow\n\x00\x01,2\n")


def test_size_is_checked_before_parsing():
    import io

    class CountingReader(io.BytesIO):
        asked: list[int] = []

        def read(self, n=-1):
            self.asked.append(n)
            return super().read(n)

    big = CountingReader(b"y\n" + b"1\n" * 1000)
    with pytest.raises(DataError, match="larger than"):
        read_table(big, max_bytes=100)
    assert big.asked == [101]  # never reads more than the limit + 1 byte
    with pytest.raises(DataError, match="larger than"):
        read_table(b"y\n" + b"1\n" * 1000, max_bytes=100)


def test_paths_and_urls_are_refused():
    with pytest.raises(DataError, match="not a path or URL"):
        read_table(str(DATASETS_DIR / "nile.csv"))
    with pytest.raises(DataError, match="not a path or URL"):
        read_table("https://example.org/data.csv")


def test_sorting_only_when_asked():
    text = _csv("year,flow\n1872,2\n1871,1\n1873,3\n")
    with pytest.raises(DataError, match="ask for the rows to be sorted"):
        read_table(text)
    df = read_table(text, sort=True)
    np.testing.assert_array_equal(df["flow"].to_numpy(), [1.0, 2.0, 3.0])
    assert list(df["year"]) == [1871, 1872, 1873]
    with pytest.raises(DataError, match="repeats"):
        read_table(_csv("year,flow\n1872,2\n1871,1\n1872,3\n"), sort=True)


def test_catalogue_frequency_is_enforced():
    with pytest.raises(DataError, match="frequency 'MS'"):
        read_table(_csv("month,y\n2020-01-01,1\n2020-01-15,2\n"), freq="MS")


@pytest.mark.parametrize("text, words", [
    # a time without a UTC offset among times with one names no instant
    ("date,y\n2020-01-01T00:00:00+01:00,1\n2020-01-02T00:00:00,2\n2020-01-03T00:00:00Z,3\n",
     ["'date'", "UTC offset", "line 3", "'2020-01-02T00:00:00'"]),
    # integers beyond int64 (and beyond the range whose steps fit in int64)
    ("t,y\n99999999999999999999,1\n99999999999999999999,2\n", ["'t'", "out of range", "lines 2 and 3"]),
    ("t,y\n-9000000000000000000,1\n9000000000000000000,2\n", ["'t'", "out of range", "lines 2 and 3"]),
    ("t,y\n1,1\n" + "9" * 5000 + ",2\n", ["'t'", "out of range", "line 3"]),  # int() refuses 4300+ digits
    ("year,y\n99999,1\n100000,2\n", ["'year'", "out of range", "years must lie between -9999 and 9999"]),
    ("t,y\n\u00b2,1\n\u00b3,2\n", ["'t'", "not dates", "lines 2 and 3"]),  # '²'.isdigit(), but not an integer
    # two times 8000 years apart would need a grid of 2.5e11 seconds: refused before it is built
    ("date,y\n0001-01-01,1\n8001-01-01T00:00:01,2\n", ["regular calendar grid"]),
    ("t,y\n0,1\n1,2\n4000000000000000000,3\n", ["too sparse"]),
], ids=["naive-among-offsets", "beyond-int64", "steps-beyond-int64", "5000-digits", "year-99999", "superscript",
        "grid-of-seconds-over-8000-years", "sparse-integers"])
def test_odd_time_values_are_data_errors(text, words):
    """Every malformed time column gives a DataError naming the problem, never another exception."""
    with pytest.raises(DataError) as exc:
        read_table(_csv(text))
    for w in words:
        assert w in str(exc.value), (w, str(exc.value))


def test_utc_offsets_that_differ_are_converted_to_utc():
    """Local times across a DST change ('+01:00', then '+02:00') and 'Z' are one hourly series in UTC."""
    stamps = ["2024-03-31T00:00:00+01:00", "2024-03-31T01:00:00+01:00", "2024-03-31T03:00:00+02:00",
              "2024-03-31T02:00:00Z"]
    df = read_table(_csv("date,y\n" + "".join(f"{s},{i}\n" for i, s in enumerate(stamps))))
    expected = pd.to_datetime(pd.Series(stamps), format="ISO8601", utc=True).dt.tz_localize(None)
    assert list(df.index) == list(expected) and df.attrs["freq"] == "h"
    np.testing.assert_array_equal(df["y"].to_numpy(), [0.0, 1.0, 2.0, 3.0])


def test_years_outside_1000_2999_in_a_year_column():
    """A column called 'year' holds years whatever their size (within ±9999): 1 January of each."""
    df = read_table(_csv("year,y\n1,1\n2,2\n3,3\n"))
    assert [t.year for t in df.index] == [1, 2, 3] and list(df["year"]) == [1, 2, 3]
    assert df.attrs["freq"] == "YS"


def test_size_limit_is_stated_as_the_page_states_it():
    from engine.data import MAX_TABLE_BYTES, format_size

    assert [format_size(n) for n in (MAX_TABLE_BYTES, 64 * 2**20, 16_500_000, 1536, 100)] == [
        "10 MB", "64 MB", "15.7 MB", "1.5 KB", "100 bytes"]
    with pytest.raises(DataError, match="larger than the 10 MB limit"):
        read_table(b"y\n" + b"1\n" * (MAX_TABLE_BYTES // 2 + 1))
