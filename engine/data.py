"""Bundled example datasets: catalogue listing and loading (pure pandas)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

DATASETS_DIR = Path(__file__).resolve().parent.parent / "datasets"
CATALOGUE_FILE = DATASETS_DIR / "catalogue.json"


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
    """Load dataset ``name`` as a DataFrame indexed by a DatetimeIndex with the catalogue frequency.

    Yearly time columns (integer years) map to 1 January of the year; the time
    column itself is kept as a column. Missing values stay as NaN.
    """
    entry = catalogue_entry(name)
    time_col = entry["time_column"]
    freq = entry["frequency"]
    df = pd.read_csv(DATASETS_DIR / entry["file"])
    if pd.api.types.is_integer_dtype(df[time_col]):
        stamps = pd.to_datetime(df[time_col].astype(str), format="%Y")
    else:
        stamps = pd.to_datetime(df[time_col], format="%Y-%m-%d")
    # Passing freq validates that the stamps are regular at that frequency.
    df.index = pd.DatetimeIndex(stamps, freq=freq, name="time")
    return df
