"""Persistence: atomic snapshots, the observation log, and exact resume after `kill -9`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import engine
from engine import persist

from engine.rejuvenation import RejuvenationConfig

from .helpers import IID, conjugate_log_posterior, exact_posterior

SPEC = {"level": {"kind": "local_linear_trend"}, "seasonal": [{"period": 4}]}
BASE = np.array([1.0, 0.1, 0.01, 0.05])
MANUAL = RejuvenationConfig(automatic=False)   # moves only when asked


def _draws(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return BASE * np.exp(0.3 * rng.standard_normal((n, len(BASE))))


def _series(n=60, seed=1):
    y = np.array(engine.simulate(jax.random.PRNGKey(seed), SPEC, BASE, n))
    y[[2, 15, 40, 41]] = np.nan
    return y


def _assert_same_belief(a, b, rtol=1e-12):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x, float), np.asarray(y, float), rtol=rtol, atol=1e-12)


CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    import engine
    from engine.rejuvenation import RejuvenationConfig
    folder = sys.argv[1]
    y = np.load(folder + "/y.npy")
    draws = np.load(folder + "/draws.npy")
    spec = {"level": {"kind": "local_linear_trend"}, "seasonal": [{"period": 4}]}
    filt = engine.DurableFilter.create(folder + "/state", spec, draws, y_history=y[:10], snapshot_every=7,
                                       rejuvenation=RejuvenationConfig(automatic=False))
    for i in range(10, len(y)):
        filt.update(y[i])
        print(i, flush=True)
        if i >= 25:
            time.sleep(0.02)   # leave the parent time to kill us mid-stream
    print("done", flush=True)
    time.sleep(600)
""")


def test_resume_after_sigkill_is_exact(tmp_path):
    y, draws = _series(), _draws()
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "draws.npy", draws)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in child.stdout:
            if line.strip() == "done" or int(line) >= 25:
                break
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL, child.stderr.read()

    resumed = engine.DurableFilter.open(tmp_path / "state", automatic=False)
    t = resumed.filter.t
    assert 26 <= t <= len(y)
    np.testing.assert_array_equal(resumed.filter.history()[0], y[:t])
    if t < len(y):
        resumed.update_many(y[t:])
    resumed.close()

    uninterrupted = engine.OnlineFilter(SPEC, draws, y_history=y[:10], rejuvenation=MANUAL)
    uninterrupted.update_many(y[10:])
    assert resumed.filter.t == uninterrupted.t == len(y)
    _assert_same_belief(resumed.filter.state, uninterrupted.state)
    np.testing.assert_allclose(resumed.filter.weights, uninterrupted.weights, rtol=1e-12)


@pytest.mark.parametrize("n_draws", [3, 64])   # 64: a bank that holds its covariance packed
def test_snapshot_roundtrip_and_log_replay(tmp_path, n_draws):
    y, draws = _series(), _draws(n_draws)
    durable = engine.DurableFilter.create(tmp_path, engine.OnlineConfig(SPEC, quantile_iters=1), draws,
                                          y_history=y[:20], snapshot_every=10, fsync=False, rejuvenation=MANUAL)
    for v in y[20:33]:
        durable.update(v)
    state = jax.device_get(durable.filter.state)
    # 13 observations: one snapshot at 30, three in the log
    lines = (tmp_path / persist.LOG).read_text().splitlines()
    assert [json.loads(line)["t"] for line in lines] == [30, 31, 32]
    durable.close()
    again = engine.DurableFilter.open(tmp_path, automatic=False)
    assert again.filter.config.quantile_iters == 1     # settings travel with the snapshot
    assert again.filter.t == 33
    _assert_same_belief(again.filter.state, state)
    np.testing.assert_array_equal(again.filter.params, draws)
    # opening wrote a fresh snapshot and emptied the log
    assert (tmp_path / persist.LOG).read_text() == ""
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]
    again.close()
    with pytest.raises(FileExistsError, match="DurableFilter.open"):
        engine.DurableFilter.create(tmp_path, SPEC, draws)


def test_a_snapshot_keeps_the_filters_own_settings(tmp_path):
    """Settings given to the filter itself (not through DurableFilter.create) travel too: a
    square-root bank comes back square-root and forecasts the same."""
    y = _series()
    filt = engine.OnlineFilter(engine.OnlineConfig(SPEC, sqrt=True, anomaly_z=2.5), _draws(), y_history=y[:30],
                               rejuvenation=RejuvenationConfig(automatic=False, ess_threshold=0.3))
    persist.write_snapshot(tmp_path, filt)
    again, _ = persist.read_snapshot(tmp_path)
    assert persist.filter_settings(again) == persist.filter_settings(filt) and again.config.sqrt
    assert again.config == filt.config and again.rejuvenator.config == filt.rejuvenator.config
    np.testing.assert_allclose(np.asarray(again.forecast(3).var), np.asarray(filt.forecast(3).var), rtol=1e-12)
    for f in (filt, again):
        f.update_many(y[30:40])
    _assert_same_belief(again.state, filt.state)


def test_an_update_that_fails_is_not_replayed(tmp_path, monkeypatch):
    """The log is written ahead of each update; an update that raises takes its record back out,
    so a resume sees the stream as the caller did."""
    y = _series()
    durable = engine.DurableFilter.create(tmp_path, SPEC, _draws(), y_history=y[:20], fsync=False,
                                          rejuvenation=MANUAL)
    real = engine.OnlineFilter.update_many

    def failing(self, *args, **kwargs):
        raise RuntimeError("the device went away")

    durable.update(y[20])
    monkeypatch.setattr(engine.OnlineFilter, "update_many", failing)
    with pytest.raises(RuntimeError, match="went away"):
        durable.update(99.0)
    monkeypatch.setattr(engine.OnlineFilter, "update_many", real)
    durable.update_many(y[21:25])
    state = jax.device_get(durable.filter.state)
    durable.close()
    lines = (tmp_path / persist.LOG).read_text().splitlines()
    assert [json.loads(line)["t"] for line in lines] == [20, 21, 22, 23, 24]
    again = engine.DurableFilter.open(tmp_path, automatic=False)
    assert again.filter.t == 25
    np.testing.assert_array_equal(again.filter.history()[0], y[:25])
    _assert_same_belief(again.filter.state, state)
    again.close()


def test_log_reader_drops_a_torn_record_and_refuses_gaps(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"t": 5, "y": 1.5}\n{"t": 6, "y": null}\n{"t": 7, "y": 2.')
    ys, xs = persist.ObservationLog.read(path, since=5)
    np.testing.assert_array_equal(ys, [1.5, np.nan])
    assert xs is None
    ys, _ = persist.ObservationLog.read(path, since=6)
    np.testing.assert_array_equal(ys, [np.nan])
    path.write_text('{"t": 5, "y": 1.5}\n{"t": 7, "y": 2.0}\n')
    with pytest.raises(ValueError, match="expected 6"):
        persist.ObservationLog.read(path, since=5)
    # floats round-trip exactly through the log
    log = persist.ObservationLog(tmp_path / "exact.jsonl", fsync=False)
    vals = np.array([0.1 + 0.2, np.pi * 1e-300, -1e300, np.nan])
    log.append(0, vals, np.arange(8.0).reshape(4, 2) / 3)
    log.close()
    ys, xs = persist.ObservationLog.read(tmp_path / "exact.jsonl", since=0)
    np.testing.assert_array_equal(ys, vals)
    np.testing.assert_array_equal(xs, np.arange(8.0).reshape(4, 2) / 3)


def test_atomic_write_replaces_whole_files(tmp_path):
    target = tmp_path / "f.bin"
    persist.atomic_write(target, b"old")
    persist.atomic_write(target, b"new contents")
    assert target.read_bytes() == b"new contents"
    assert os.listdir(tmp_path) == ["f.bin"]
    with pytest.raises(FileNotFoundError, match="no snapshot"):
        persist.read_snapshot(tmp_path / "nowhere")


def test_a_resumed_filter_keeps_the_fits_priors_and_its_random_stream(tmp_path):
    """Priors given at creation come back on resume (so the default move targets the same
    posterior), and so does the random stream: the resumed filter's next move draws exactly
    what the uninterrupted filter's does."""
    priors = {"sigma2.irregular": {"dist": "inverse_gamma", "concentration": 3.0, "rate": 2.0}}
    rng = np.random.default_rng(8)
    y = rng.normal(0.0, 1.5, 60)
    start = exact_posterior(y[:20]).rvs(50, random_state=rng)[:, None]
    rejuvenation = RejuvenationConfig(automatic=False, log_posterior=conjugate_log_posterior, move_steps=3, seed=4,
                                      priors=priors)
    live = engine.DurableFilter.create(tmp_path / "s", IID, start, y_history=y[:20], rejuvenation=rejuvenation)
    live.update_many(y[20:35])
    assert live.filter.rejuvenate(background=False)     # uses up part of the random stream
    live.update_many(y[35:50])                           # swaps the new bank in and snapshots it
    resumed = engine.DurableFilter.open(tmp_path / "s", log_posterior=conjugate_log_posterior)
    assert resumed.filter.rejuvenator.config.priors == priors and resumed.filter.t == live.filter.t == 50
    np.testing.assert_array_equal(resumed.filter.params, live.filter.params)
    for f in (live, resumed):
        assert f.filter.rejuvenate(background=False)
        f.update_many(y[50:])
    np.testing.assert_array_equal(resumed.filter.params, live.filter.params)
    _assert_same_belief(resumed.filter.state, live.filter.state)
    (tmp_path / "plain").mkdir()
    persist.write_snapshot(tmp_path / "plain", live.filter)    # a bare snapshot (the app's) keeps them too
    again, _ = persist.read_snapshot(tmp_path / "plain", automatic=False)
    assert again.rejuvenator.config.priors == priors
    live.close()
    resumed.close()


def test_stored_settings_become_the_filters_configs():
    """Settings as snapshots keep them (earlier ones named the automatic switch 'rejuvenate' and
    could keep constructor-only settings) give the two configs; overrides win; unknown names are
    refused by name."""
    config, rejuvenation = persist.filter_configs(SPEC, {"sqrt": True, "anomaly_z": 2.5, "rejuvenate": False,
                                                         "weigh_history": False, "move_steps": 4}, seed=7)
    assert config == engine.OnlineConfig(engine.ModelSpec.from_dict(SPEC), sqrt=True, anomaly_z=2.5)
    assert rejuvenation == RejuvenationConfig(automatic=False, move_steps=4, seed=7)
    with pytest.raises(ValueError, match="'sqrt_form'"):
        persist.filter_configs(SPEC, {}, sqrt_form=True)
