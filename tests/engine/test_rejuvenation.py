"""Rejuvenator: when a move is due, the back-off after failures, the result handed over once,
and closing; the moves target the known conjugate posterior (no online bank involved)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from engine.rejuvenation import RETRY_AFTER, Closed, MoveInput, RejuvenationConfig, Rejuvenator

from .helpers import IID, conjugate_log_posterior, exact_posterior


class Stream:
    """What a Rejuvenator sees of a stream: its position and the events it emits."""

    def __init__(self):
        self.n, self.events = 0, []

    def rejuvenator(self, **config) -> Rejuvenator:
        return Rejuvenator(RejuvenationConfig(**config), self.events.append, lambda: self.n)


def _input(y, n_draws=200, seed=0):
    rng = np.random.default_rng(seed)
    params = exact_posterior(y[:5]).rvs(n_draws, random_state=rng)[:, None]
    return MoveInput(IID, y, None, params, np.zeros(n_draws), float(n_draws))


def _kept(start, params, closing):
    """A rebuild that keeps the moved draws as they are."""
    return np.asarray(params)


def test_due_follows_the_ess_threshold_drift_and_the_automatic_switch():
    stream = Stream()
    r = stream.rejuvenator(ess_threshold=0.5)
    assert r.due(49.0, 100, False) == "low_ess" and r.due(51.0, 100, True) is None
    assert stream.rejuvenator(ess_threshold=0.5, refit_on_drift=True).due(51.0, 100, np.array(True)) == "drift"
    assert stream.rejuvenator(automatic=False).due(1.0, 100, True) is None


def test_a_move_targets_the_posterior_and_is_handed_over_once():
    y = np.random.default_rng(1).normal(0.0, 1.5, 80)
    stream = Stream()
    stream.n = len(y)
    r = stream.rejuvenator(log_posterior=conjugate_log_posterior, move_steps=10, seed=2)
    key = r.key
    assert r.start("requested", lambda: _input(y), _kept, background=False)
    assert not np.array_equal(r.key, key)   # each move takes its own key
    (params, event) = r.take()
    assert r.take() is None
    assert event["kind"] == "rejuvenation_start" and event["t_start"] == len(y) and 0 < event["acceptance"] <= 1
    assert [e["kind"] for e in stream.events] == ["rejuvenation_start"]
    target = exact_posterior(y)
    assert np.mean(params) == pytest.approx(target.mean(), abs=0.2 * target.std())


def test_failed_moves_hold_automatic_ones_back_doubling_each_time():
    def broken(spec, y, exog=None, priors=None):
        raise RuntimeError("no posterior today")

    y = np.ones(10)
    stream = Stream()
    r = stream.rejuvenator(log_posterior=broken)
    for failures in (1, 2, 3):
        assert r.due(0.0, 100, False) == "low_ess"
        assert r.start("low_ess", lambda: _input(y), _kept, background=False)
        assert r.take() is None
        failed = stream.events[-1]
        assert failed["kind"] == "rejuvenation_failed" and "no posterior today" in failed["error"]
        assert failed["failures"] == failures and failed["retry_at"] == stream.n + RETRY_AFTER * 2 ** (failures - 1)
        stream.n = failed["retry_at"] - 1
        assert r.due(0.0, 100, False) is None     # still backing off
        stream.n += 1


def test_close_drops_a_finished_move_and_stops_one_in_flight():
    y = np.random.default_rng(3).normal(0.0, 1.5, 40)
    stream = Stream()
    r = stream.rejuvenator(log_posterior=conjugate_log_posterior, move_steps=2)
    assert r.start("requested", lambda: _input(y), _kept, background=False)
    assert r.close(timeout=60) and r.take() is None
    assert not r.start("again", lambda: _input(y), _kept)

    entered, release = threading.Event(), threading.Event()

    def waits_then_checks(start, params, closing):
        entered.set()
        release.wait(60)
        if closing.is_set():
            raise Closed
        return params

    r = stream.rejuvenator(log_posterior=conjugate_log_posterior, move_steps=2)
    assert r.start("requested", lambda: _input(y), waits_then_checks)
    assert entered.wait(60) and r.running
    assert not r.close(timeout=0)   # closing while the rebuild runs
    release.set()
    assert r.wait(60) and r.take() is None
    assert [e["kind"] for e in stream.events] == ["rejuvenation_start", "rejuvenation_start"]
