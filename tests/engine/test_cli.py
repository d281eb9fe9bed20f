"""`python -m engine batch`: a round trip on a small wide CSV, help text, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import engine

SPEC = {"irregular": True, "level": {"kind": "local_level"}}


def _run(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=env)


@pytest.fixture(scope="module")
def wide_csv(tmp_path_factory):
    """Four series on a monthly grid, one starting late (a ragged start is empty cells)."""
    rng = np.random.default_rng(11)
    Y = np.cumsum(rng.normal(size=(4, 40)), axis=1) + rng.normal(size=(4, 40))
    Y[2, :7] = np.nan
    frame = pd.DataFrame(Y.T, columns=["north", "south", "east", "west"])
    frame.insert(0, "date", pd.date_range("2020-01", periods=40, freq="MS").strftime("%Y-%m"))
    path = tmp_path_factory.mktemp("cli") / "wide.csv"
    frame.to_csv(path, index=False, na_rep="")
    return path, Y


def test_batch_round_trip_equals_fit_many(wide_csv, tmp_path):
    path, Y = wide_csv
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(SPEC))
    out = tmp_path / "results.parquet"
    cache = tmp_path / "jax-cache"   # a cache of this run's own, so no other process reads it meanwhile
    proc = _run("batch", "--data", str(path), "--spec", str(spec_file), "--method", "mle", "--out", str(out),
                cwd=tmp_path, env=dict(os.environ, STREAMSSM_JAX_CACHE=str(cache)))
    assert proc.returncode == 0, proc.stderr
    assert cache.is_dir()   # the command switched the on-disk compile cache on for its process
    assert "4/4" in proc.stderr or "4 ok" in proc.stderr
    table = pd.read_parquet(out)
    ref = engine.fit_many(SPEC, Y, method="mle").table
    assert table["series"].tolist() == ["north", "south", "east", "west"]
    assert table["status"].tolist() == ref["status"].tolist()
    assert table["n_obs"].tolist() == [40, 40, 33, 40]
    np.testing.assert_allclose(table["loglik"], ref["loglik"], rtol=1e-9)


def test_help_explains_every_option(tmp_path):
    proc = _run("batch", "--help", cwd=tmp_path)
    assert proc.returncode == 0
    for option in ("--data", "--spec", "--method", "--params", "--backend", "--ray-address", "--batch-size",
                   "--seed", "--out", "--quiet"):
        assert option in proc.stdout
    assert "batch" in _run("--help", cwd=tmp_path).stdout


def test_bad_input_is_one_line_and_non_zero(wide_csv, tmp_path):
    path, _ = wide_csv
    proc = _run("batch", "--data", str(path), "--spec", '{"level": {"kind": "nope"}}', "--out",
                str(tmp_path / "r.csv"), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "nope" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
