"""StreamRunner: replay order and completeness, pause/step/resume/stop, back-pressure, errors,
pacing at a rate, and a demo stream end to end."""

from __future__ import annotations

import itertools
import threading
import time

import jax
import numpy as np
import pytest

import engine
from engine.rejuvenation import RejuvenationConfig

SPEC = {"level": {"kind": "local_linear_trend"}, "seasonal": [{"period": 4}]}
BASE = np.array([1.0, 0.1, 0.01, 0.05])
DRAWS = BASE * np.exp(0.3 * np.random.default_rng(0).standard_normal((3, 4)))
MANUAL = RejuvenationConfig(automatic=False)   # moves only when asked
HANG_GUARD = 120  # seconds: only so that a broken runner fails instead of hanging the suite


def _series(n=48):
    y = np.array(engine.simulate(jax.random.PRNGKey(1), SPEC, BASE, n))
    y[[3, 20]] = np.nan
    return y


def _filter():
    return engine.OnlineFilter(SPEC, DRAWS, rejuvenation=MANUAL)


class Collector:
    """A subscriber that keeps every batch and error, and signals when n observations arrived."""

    def __init__(self, n=None):
        self.batches, self.errors = [], []
        self.n = n
        self.reached = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, msg):
        with self.lock:
            if isinstance(msg, engine.StreamError):
                self.errors.append(msg)
                return
            self.batches.append(msg)
            if self.n is not None and self.count >= self.n:
                self.reached.set()

    @property
    def count(self):
        return sum(len(b.t) for b in self.batches)


def test_replay_publishes_every_observation_in_order_and_equals_the_filter():
    y = _series()
    filt = _filter()
    runner = engine.StreamRunner(filt, y, batch_size=8, queue_size=16)
    got = Collector()
    runner.subscribe(got)
    runner.start()
    assert runner.finished.wait(HANG_GUARD)
    runner.join()
    t = np.concatenate([b.t for b in got.batches])
    np.testing.assert_array_equal(t, np.arange(len(y)))
    np.testing.assert_array_equal(np.concatenate([b.y for b in got.batches]), y)
    steps = [s for b in got.batches for s in b.steps()]
    assert [s[0] for s in steps] == list(range(len(y)))
    ref = _filter()
    info = ref.update_many(y)
    np.testing.assert_allclose([s[2].mean for s in steps], np.asarray(info.mean), rtol=1e-12)
    for a, b in zip(jax.tree_util.tree_leaves(filt.state), jax.tree_util.tree_leaves(ref.state)):
        np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-12, atol=1e-12)
    stats = runner.stats()
    assert stats.n_obs == len(y) and stats.throughput > 0 and stats.engine_throughput > 0
    assert 0 < stats.engine_ms["p50"] <= stats.engine_ms["max"]
    assert stats.total_ms["p50"] <= stats.total_ms["p99"] <= stats.total_ms["max"]
    assert not runner.errors and not runner.running


def test_pause_step_resume():
    y = _series()
    runner = engine.StreamRunner(_filter(), y, batch_size=8)
    got = Collector(n=3)
    runner.subscribe(got)
    runner.start(paused=True)
    runner.step(3)
    assert got.reached.wait(HANG_GUARD)
    time.sleep(0.3)
    assert got.count == 3            # paused: nothing beyond the three steps
    got.n, got.reached = 5, threading.Event()
    runner.step(2)
    assert got.reached.wait(HANG_GUARD)
    time.sleep(0.3)
    assert got.count == 5
    runner.resume()
    assert runner.finished.wait(HANG_GUARD)
    runner.join()
    assert got.count == len(y)
    np.testing.assert_array_equal(np.concatenate([b.t for b in got.batches]), np.arange(len(y)))
    with pytest.raises(RuntimeError, match="paused"):
        runner.step()


def test_stop_an_endless_generator_at_a_rate():
    def endless():
        for i in itertools.count():
            yield np.sin(i / 5.0)

    runner = engine.StreamRunner(_filter(), endless(), rate=500.0, batch_size=8)
    got = Collector(n=20)
    runner.subscribe(got)
    runner.start()
    assert got.reached.wait(HANG_GUARD)
    runner.stop()
    assert not runner.running
    n = got.count
    time.sleep(0.2)
    assert got.count == n and not runner.finished.is_set() and not runner.errors


def test_stop_keeps_what_was_taken_from_a_live_source_but_not_filtered():
    """Every value the source gave is either filtered or returned by `unprocessed`, in order."""
    pulled = []

    def live():
        for i in itertools.count():
            pulled.append(float(i))
            yield float(i)

    runner = engine.StreamRunner(_filter(), live(), batch_size=4, queue_size=16)
    got = Collector(n=12)
    runner.subscribe(lambda msg: time.sleep(0.05))   # a slow page: the queue fills up
    runner.subscribe(got)
    runner.start()
    assert got.reached.wait(HANG_GUARD)
    runner.stop()
    seen = [float(v) for b in got.batches for v in b.y]
    left = runner.unprocessed()
    assert left and all(x is None for _, x in left)
    assert seen + [y for y, _ in left] == pulled
    assert runner.unprocessed() == []


def test_back_pressure_bounds_what_is_in_flight():
    pulled = [0]
    in_flight = []

    def source():
        for i in range(60):
            pulled[0] += 1
            yield float(np.cos(i))

    runner = engine.StreamRunner(_filter(), source(), batch_size=2, queue_size=4)

    def slow(msg):
        if isinstance(msg, engine.StreamBatch):
            # observations pulled from the source but not yet published
            in_flight.append(pulled[0] - (msg.t[-1] + 1))
            time.sleep(0.01)

    runner.subscribe(slow)
    runner.start()
    assert runner.finished.wait(HANG_GUARD)
    runner.join()
    # the queue, plus one item the producer holds while it waits for room
    assert len(in_flight) >= 30 and max(in_flight) <= 4 + 1


def test_source_error_is_published_kept_and_reraised():
    def broken():
        yield from [1.0, 2.0, 3.0]
        raise OSError("sensor connection lost")

    runner = engine.StreamRunner(_filter(), broken(), batch_size=8)
    got = Collector()
    runner.subscribe(got)
    runner.start()
    runner.join(HANG_GUARD)
    assert not runner.running and runner.failed
    assert [e.where for e in got.errors] == ["source"]
    assert isinstance(runner.errors[0].error, OSError) and "sensor" in runner.errors[0].traceback
    with pytest.raises(RuntimeError, match="sensor connection lost"):
        runner.raise_if_failed()


def test_engine_error_stops_the_stream_and_is_reported():
    y = _series()
    y[30] = np.inf
    runner = engine.StreamRunner(_filter(), y, batch_size=4, queue_size=4)
    got = Collector()
    runner.subscribe(got)
    runner.start()
    runner.join(HANG_GUARD)
    assert not runner.running and runner.failed and not runner.finished.is_set()
    assert [e.where for e in got.errors] == ["engine"]
    assert "infinite" in str(got.errors[0].error)
    assert 0 < got.count <= 30


def test_a_malformed_source_item_fails_the_run_loudly():
    """Regressors with some observations and not with others: the run stops with an engine error
    (the engine thread does not die silently)."""
    spec = {"level": {"kind": "local_level"}, "regression": {"columns": ["x"]}}
    filt = engine.OnlineFilter(spec, np.array([[1.0, 0.5, 2.0]]), rejuvenation=MANUAL)
    items = [(1.0, [0.5]), (2.0, [0.1]), 3.0, (4.0, [0.2])]
    runner = engine.StreamRunner(filt, iter(items), batch_size=8)
    got = Collector()
    runner.subscribe(got)
    runner.start(paused=True)
    runner.step(4)
    runner.join(HANG_GUARD)
    assert not runner.running and runner.failed
    assert [e.where for e in got.errors] == ["engine"] and "regressors" in str(got.errors[0].error)


def test_a_failing_subscriber_does_not_stop_the_stream():
    y = _series()
    runner = engine.StreamRunner(_filter(), y, batch_size=8)

    def bad(msg):
        if isinstance(msg, engine.StreamBatch):
            raise KeyError("plot went away")

    got = Collector()
    runner.subscribe(bad)
    runner.subscribe(got)
    unsubscribe = runner.subscribe(lambda msg: None)
    unsubscribe()
    runner.start()
    assert runner.finished.wait(HANG_GUARD)
    runner.join()
    assert got.count == len(y)
    assert got.errors and all(e.where == "subscriber" for e in got.errors)
    assert len(runner.errors) == len(got.batches)
    assert not runner.failed


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="rate"):
        engine.StreamRunner(_filter(), [1.0], rate=0)
    with pytest.raises(ValueError, match="batch_size"):
        engine.StreamRunner(_filter(), [1.0], batch_size=0)


def test_a_paced_stream_keeps_to_its_rate():
    """At a set rate the producer releases observation i no earlier than i/rate after the first.
    A first run at full speed compiles the filter's steps, so the paced run's time is its pacing."""
    rate, y = 20.0, _series(30)
    for pace in (None, rate):
        runner = engine.StreamRunner(_filter(), y, rate=pace, batch_size=8)
        got = Collector()
        runner.subscribe(got)
        runner.start()
        runner.join(HANG_GUARD)
        assert got.count == len(y) and not runner.errors
    assert runner.stats().elapsed_s >= (len(y) - 1) / rate


def test_a_demo_stream_through_the_runner_flags_exactly_its_outliers():
    """The 'outliers' demo at its true parameters: the anomaly flags the runner publishes fall on
    the steps where the demo injected an outlier, and nowhere else."""
    demo = engine.demo_stream(0, "outliers", n_time=600)
    n_hist = 100
    filt = engine.OnlineFilter.from_posterior(demo.spec, demo.params, demo.y[:n_hist], rejuvenation=MANUAL)
    runner = engine.StreamRunner(filt, demo.y[n_hist:], batch_size=32)
    got = Collector()
    runner.subscribe(got)
    runner.start()
    runner.join(HANG_GUARD)
    assert got.count == len(demo.y) - n_hist and not runner.errors
    flagged = [n_hist + t for b in got.batches for t, _, info in b.steps() if info.anomaly]
    injected = sorted(e.start for e in demo.events if e.kind == "outlier" and e.start >= n_hist)
    assert len(injected) >= 4 and flagged == injected


def test_pause_is_exact_once_idle():
    """After pause() and wait_idle(), nothing more reaches the subscribers: a paced stream whose
    engine thread waits for the next observation takes none that arrives after the pause."""
    y = _series()
    runner = engine.StreamRunner(_filter(), y, rate=10.0, batch_size=4)
    got = Collector(n=2)
    runner.subscribe(got)
    runner.start()
    assert got.reached.wait(HANG_GUARD)
    time.sleep(0.05)                 # half a period: the engine thread waits for the next observation
    runner.pause()
    assert runner.wait_idle(HANG_GUARD)
    at_pause = got.count
    time.sleep(0.5)                  # 5 more observations' time at the stream's rate
    assert got.count == at_pause < len(y)
    runner.step(2)
    got.n, got.reached = at_pause + 2, threading.Event()
    assert got.reached.wait(HANG_GUARD) and runner.wait_idle(HANG_GUARD)
    time.sleep(0.2)
    assert got.count == at_pause + 2
    runner.rate = None
    runner.resume()
    assert runner.finished.wait(HANG_GUARD)
    runner.join()
    np.testing.assert_array_equal(np.concatenate([b.t for b in got.batches]), np.arange(len(y)))
