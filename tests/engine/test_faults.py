"""The engine's fault table: bad input to the public API and the command line, each row with its
exact outcome (the error's type and the words that name the problem, or the right result).

The rows are cheap: Nile's local level (and a small AR/cycle model) at fixed parameters, a few
short series; every fit refused here is refused before any compilation. Processes that exit
mid-move are in test_background.py; the app's rows in tests/app/test_faults.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import engine
from engine.__main__ import main as cli
from engine.persist import SNAPSHOT

LEVEL = {"irregular": True, "level": {"kind": "local_level"}}
GOOD = {"sigma2.irregular": 15099.0, "sigma2.level": 1469.1}
AR = {"irregular": True, "level": {"kind": "local_level"}, "autoregressive": {"order": 1}}
AR_GOOD = {"sigma2.irregular": 15000.0, "sigma2.level": 1400.0, "sigma2.ar": 100.0, "ar.L1": 0.5}
CYCLE = {"irregular": True, "level": {"kind": "local_level"}, "cycle": {"period_bounds": [6, 30]}}
CYCLE_GOOD = {"sigma2.irregular": 1.0, "sigma2.level": 0.1, "sigma2.cycle": 0.5, "frequency.cycle": 0.5,
              "damping.cycle": 0.9}
REG = {"irregular": True, "level": {"kind": "local_level"}, "regression": {"columns": ["x"]}}


def nile() -> np.ndarray:
    return engine.load_dataset("nile")["flow"].to_numpy(dtype=float)


def short(n=40, seed=3) -> np.ndarray:
    return np.cumsum(np.random.default_rng(seed).normal(size=n)) + 10.0


def _with(params: dict, **changes) -> dict:
    return {**params, **{k.replace("__", "."): v for k, v in changes.items()}}


def _update(value):
    online = engine.OnlineFilter(LEVEL, GOOD, rejuvenation=engine.RejuvenationConfig(automatic=False))
    online.update(value)


# (id, the call, the error's type, words the message must contain)
RAISES = [
    ("loglik-nan-variance", lambda: engine.loglik(LEVEL, _with(GOOD, sigma2__irregular=np.nan), nile()),
     ValueError, ["sigma2.irregular = nan", "[0, ∞)"]),
    ("loglik-negative-variance", lambda: engine.loglik(LEVEL, _with(GOOD, sigma2__level=-5.0), nile()),
     ValueError, ["sigma2.level = -5.0", "[0, ∞)"]),
    ("loglik-every-variance-zero", lambda: engine.loglik(LEVEL, _with(GOOD, sigma2__irregular=0.0,
                                                                        sigma2__level=0.0), nile()),
     ValueError, ["every variance", "sigma2.irregular, sigma2.level", "is 0"]),
    ("loglik-infinite-variance", lambda: engine.loglik(LEVEL, _with(GOOD, sigma2__level=np.inf), nile()),
     ValueError, ["sigma2.level = inf"]),
    ("loglik-nonstationary-ar", lambda: engine.loglik(AR, _with(AR_GOOD, ar__L1=1.15), nile()),
     ValueError, ["ar.L1 = 1.15", "not stationary", "−1 < ar.L1 < 1"]),
    ("loglik-unit-root-ar", lambda: engine.loglik(AR, _with(AR_GOOD, ar__L1=-1.0), nile()),
     ValueError, ["ar.L1 = -1", "not stationary"]),
    ("augmented-negative-variance", lambda: engine.loglik(LEVEL, _with(GOOD, sigma2__level=-1.0), nile(),
                                                          filter="augmented"),
     ValueError, ["sigma2.level = -1.0"]),
    ("smooth-negative-variance", lambda: engine.smooth(LEVEL, _with(GOOD, sigma2__irregular=-1.0), nile()),
     ValueError, ["sigma2.irregular = -1.0", "[0, ∞)"]),
    ("filter-series-damping-above-one", lambda: engine.filter_series(CYCLE, _with(CYCLE_GOOD, damping__cycle=1.2),
                                                                     short()),
     ValueError, ["damping.cycle = 1.2", "(0, 1)"]),
    ("forecast-frequency-outside-bounds", lambda: engine.forecast(CYCLE, _with(CYCLE_GOOD, frequency__cycle=2.0),
                                                                  short(), steps=3),
     ValueError, ["frequency.cycle = 2.0", "period bounds [6, 30]"]),
    ("loglik-many-one-bad-series", lambda: engine.loglik_many(LEVEL, np.array([[1.0, 0.1], [-1.0, 0.1]]),
                                                              np.stack([short(), short(seed=4)])),
     ValueError, ["(series 1)", "sigma2.irregular = -1.0"]),
    ("loglik-unknown-parameter", lambda: engine.loglik(LEVEL, _with(GOOD, sigma2__trend=1.0), nile()),
     ValueError, ["unknown parameter", "sigma2.trend"]),
    ("loglik-missing-parameter", lambda: engine.loglik(LEVEL, {"sigma2.level": 1.0}, nile()),
     ValueError, ["missing parameter", "sigma2.irregular"]),
    ("loglik-infinite-observation", lambda: engine.loglik(LEVEL, GOOD, np.r_[nile()[:10], np.inf]),
     ValueError, ["index 10"]),
    ("loglik-two-dimensional-y", lambda: engine.loglik(LEVEL, GOOD, np.ones((10, 2))),
     ValueError, ["one series of shape (time,)", "(10, 2)"]),
    ("exog-longer-than-y", lambda: engine.loglik(REG, {**GOOD, "beta.x": 1.0}, short(10), np.ones((12, 1))),
     ValueError, ["exog has 12 rows but the series has 10", "exog_future"]),
    ("exog-shorter-than-y", lambda: engine.loglik(REG, {**GOOD, "beta.x": 1.0}, short(10), np.ones((8, 1))),
     ValueError, ["exog has 8 rows but the series has 10"]),
    ("forecast-zero-steps", lambda: engine.forecast(LEVEL, GOOD, nile(), steps=0),
     ValueError, ["steps must be at least 1"]),
    ("fit-mle-scaled-1e300", lambda: engine.fit_mle(LEVEL, nile() * 1e297),
     ValueError, ["spans 9.14e+299", "rescale y", "multiply it by about 1e-300"]),
    ("fit-mle-scaled-1e-300", lambda: engine.fit_mle(LEVEL, nile() * 1e-303),
     ValueError, ["spans 9.14e-301", "multiply it by about 1e+300"]),
    ("fit-mle-constant-series", lambda: engine.fit_mle(LEVEL, np.full(50, 5.0)),
     ValueError, ["constant", "every observed value is 5"]),
    ("fit-map-constant-series", lambda: engine.fit_map(LEVEL, np.r_[np.full(30, 2.0), np.nan]),
     ValueError, ["constant"]),
    ("fit-mle-too-short", lambda: engine.fit_mle(LEVEL, np.array([1.0, np.nan, np.nan])),
     ValueError, ["1 observed value", "nothing is left to fit"]),
    ("fit-mle-all-missing", lambda: engine.fit_mle(LEVEL, np.full(20, np.nan)),
     ValueError, ["0 observed value"]),
    ("fit-nuts-zero-chains", lambda: engine.fit_nuts(LEVEL, nile(), chains=0), ValueError, ["chains", "≥ 1", "0"]),
    ("fit-nuts-zero-draws", lambda: engine.fit_nuts(LEVEL, nile(), draws=0), ValueError, ["draws", "≥ 1"]),
    ("fit-nuts-negative-warmup", lambda: engine.fit_nuts(LEVEL, nile(), warmup=-5), ValueError, ["warmup", "-5"]),
    ("fit-nuts-float-chains", lambda: engine.fit_nuts(LEVEL, nile(), chains=2.5), ValueError, ["chains", "2.5"]),
    ("fit-nuts-target-accept", lambda: engine.fit_nuts(LEVEL, nile(), target_accept=1.0),
     ValueError, ["target_accept", "(0, 1)"]),
    ("update-a-list", lambda: _update([1100, 900]), ValueError, ["one observation", "[1100, 900]", "update_many"]),
    ("update-a-string", lambda: _update("1100"), TypeError, ["must be numbers", "'1100'"]),
    ("update-a-bool", lambda: _update(True), TypeError, ["must be numbers", "True"]),
    ("bank-with-a-nan-draw", lambda: engine.OnlineFilter(LEVEL, {"sigma2.irregular": np.array([1.0, np.nan]),
                                                                 "sigma2.level": np.array([0.1, 0.1])}),
     ValueError, ["(draw 1)", "sigma2.irregular = nan"]),
    ("bank-with-a-negative-draw", lambda: engine.OnlineFilter.from_posterior(
        LEVEL, {"sigma2.irregular": np.array([1.0, 2.0, 3.0]), "sigma2.level": np.array([0.1, -0.1, 0.1])}),
     ValueError, ["(draw 1)", "sigma2.level = -0.1"]),
    ("fleet-filter-bad-params", lambda: engine.fit_many(LEVEL, np.stack([short(), short(seed=5)]), method="filter",
                                                        params={"sigma2.irregular": -2.0, "sigma2.level": 1.0}),
     ValueError, ["sigma2.irregular = -2.0"]),
    ("spec-unknown-field", lambda: engine.loglik({**LEVEL, "seasonl": [{"period": 4}]}, GOOD, nile()),
     ValueError, ["seasonl", "unknown"]),
    ("spec-reversed-cycle-bounds", lambda: engine.param_names({"cycle": {"period_bounds": [30, 6]}}),
     ValueError, ["cycle.period_bounds"]),
    ("spec-unknown-trend", lambda: engine.param_names({"level": {"kind": "wiggly"}}),
     ValueError, ["wiggly", "local_level"]),
    ("table-non-numeric", lambda: engine.read_table(b"date,v\n2020-01-01,1\n2020-01-02,abc\n"),
     engine.DataError, ["'v'", "line 3", "abc"]),
    ("table-empty-file", lambda: engine.read_table(b""), engine.DataError, ["empty"]),
    ("table-over-the-limit", lambda: engine.read_table(b"t,y\n" + b"1,2\n" * 300, max_bytes=1000),
     engine.DataError, ["limit"]),
]


@pytest.mark.parametrize("call, error, words", [row[1:] for row in RAISES], ids=[row[0] for row in RAISES])
def test_bad_input_is_refused_by_name(call, error, words):
    with pytest.raises(error) as exc:
        call()
    assert type(exc.value) is error
    for w in words:
        assert w in str(exc.value), (w, str(exc.value))


def test_the_checks_read_concrete_values_only_so_traced_paths_still_work():
    """An optimiser's or sampler's own evaluations (jit, grad, vmap) are not checked (their
    transforms keep them in the domain): value and gradient at valid parameters as unjitted."""
    spec, y = LEVEL, nile()
    names = engine.param_names(spec)
    theta = jnp.array([GOOD[n] for n in names])
    value = float(engine.loglik(spec, GOOD, y))
    assert value == pytest.approx(-633.4645636, abs=1e-6)   # statsmodels' UnobservedComponents("llevel")
    f = jax.jit(lambda p: engine.loglik(spec, p, y))
    assert float(f(theta)) == pytest.approx(value, rel=1e-12)
    grad = jax.grad(lambda p: engine.loglik(spec, p, y))(theta)
    assert np.all(np.isfinite(np.asarray(grad)))
    many = jax.vmap(lambda p: engine.loglik(spec, p, y))(jnp.stack([theta, 2 * theta]))
    assert float(many[0]) == pytest.approx(value, rel=1e-12)


def test_single_zero_variances_and_missing_observations_are_valid():
    """A deterministic level (sigma2.level = 0) is a model, as in statsmodels; None and NaN are
    missing observations (predict only)."""
    assert np.isfinite(float(engine.loglik(LEVEL, _with(GOOD, sigma2__level=0.0), nile())))
    online = engine.OnlineFilter(LEVEL, GOOD, rejuvenation=engine.RejuvenationConfig(automatic=False))
    online.update(None)
    online.update(np.nan)
    online.update(np.float32(1100.0))
    assert online.t == 3 and np.isnan(online.history()[0][:2]).all()


def test_a_stale_snapshot_temp_file_of_a_killed_process_is_removed_on_the_next_save_and_load(tmp_path):
    dead = _dead_pid()
    (tmp_path / f".{SNAPSHOT}.tmp-{dead}").write_bytes(b"half a snapshot")
    durable = engine.DurableFilter.create(tmp_path, LEVEL, GOOD, short(10))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["observations.jsonl", SNAPSHOT]
    durable.update(11.0)
    (tmp_path / f".{SNAPSHOT}.tmp-{dead}").write_bytes(b"half a snapshot")
    resumed = engine.DurableFilter.open(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["observations.jsonl", SNAPSHOT]
    assert resumed.filter.t == 11


def _dead_pid() -> int:
    """The id of a process that has ended."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_snapshot_folder_that_cannot_be_written_is_named(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(NotADirectoryError):
        engine.DurableFilter.create(blocker / "stream", LEVEL, GOOD, short(10))
    if os.geteuid() == 0:   # root writes into read-only folders; the row above covers the message path
        return
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(PermissionError) as exc:
            engine.DurableFilter.create(folder, LEVEL, GOOD, short(10))
        assert "must be writable" in str(exc.value) and "read-only" in str(exc.value)
    finally:
        folder.chmod(0o700)


# -- the command line: `python -m engine batch` (in-process: main() returns the exit status) --

@pytest.fixture
def wide(tmp_path) -> Path:
    path = tmp_path / "wide.csv"
    path.write_text("date,a,b\n2020-01,1,2\n2020-02,3,1\n2020-03,2,5\n2020-04,4,3\n")
    return path


def _cli_rows(tmp_path: Path, wide: Path) -> list:
    spec = '{"irregular": true, "level": {"kind": "local_level"}}'
    out = str(tmp_path / "out.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("date,a\n2020-01,1\n2020-02,x\n")
    return [
        (["--data", str(tmp_path / "nope.csv"), "--spec", spec, "--out", out], ["--data: no such file", "nope.csv"]),
        (["--data", str(wide), "--spec", "{not json", "--out", out], ["--spec: not a readable JSON"]),
        (["--data", str(wide), "--spec", '{"level": {"kind": "nope"}}', "--out", out], ["nope"]),
        (["--data", str(wide), "--spec", spec, "--out", str(tmp_path / "out.txt")], ["--out must end in"]),
        (["--data", str(wide), "--spec", spec, "--method", "filter", "--out", out], ["--method filter needs --params"]),
        (["--data", str(wide), "--spec", spec, "--method", "filter", "--params",
          '{"sigma2.irregular": -1, "sigma2.level": 1}', "--out", out], ["sigma2.irregular = -1.0", "[0, ∞)"]),
        (["--data", str(bad), "--spec", spec, "--out", out], ["'a'", "line 3"]),
        (["--data", str(wide), "--spec", spec, "--batch-size", "0", "--out", out], ["batch_size", "≥ 1"]),
    ]


def test_the_command_line_refuses_bad_input_in_one_line_with_status_2(tmp_path, wide, capsys):
    for args, words in _cli_rows(tmp_path, wide):
        assert cli(["batch", "--quiet", *args]) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and len(err.splitlines()) == 1, (args, err)
        for w in words:
            assert w in err, (args, w, err)
    assert not (tmp_path / "out.csv").exists()
