"""Rejuvenation of the bank: the move on a model with a known posterior, its scheduling in the
background (swap, back-off, drift, close) and its default target.
"""

from __future__ import annotations

import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import engine
from engine.rejuvenation import RETRY_AFTER, RejuvenationConfig

from ..helpers import IID, assert_rel_close, conjugate_log_posterior, exact_posterior
from .cases import MANUAL


# -- rejuvenation on a model with a known posterior ------------------------------------------
def test_rejuvenation_leaves_a_valid_sample_of_the_known_posterior():
    rng = np.random.default_rng(7)
    y = rng.normal(0.0, np.sqrt(2.5), 220)
    y[[5, 100]] = np.nan
    n0, S = 20, 1000
    start = exact_posterior(y[:n0]).rvs(S, random_state=rng)[:, None]
    filt = engine.OnlineFilter(IID, start, y_history=y[:n0], rejuvenation=RejuvenationConfig(
        automatic=False, log_posterior=conjugate_log_posterior, move_steps=20, seed=3))
    filt.update_many(y[n0:])
    ess_before = filt.ess
    target = exact_posterior(y)
    assert filt.rejuvenate(background=False)
    filt.apply_pending()
    done = [e for e in filt.events if e["kind"] == "rejuvenation_done"]
    assert len(done) == 1 and done[0]["ess_before"] == pytest.approx(ess_before)
    assert done[0]["ess_after"] == pytest.approx(S)
    draws = filt.params[:, 0]
    assert len(np.unique(draws)) > 0.5 * S   # moved, not just resampled
    # moments and quantiles of the bank against the exact posterior (Monte Carlo error ~1/√S)
    assert np.mean(draws) == pytest.approx(target.mean(), abs=0.1 * target.std())
    assert np.std(draws) == pytest.approx(target.std(), rel=0.15)
    for p in (0.1, 0.5, 0.9):
        assert np.mean(draws <= target.ppf(p)) == pytest.approx(p, abs=0.05)
    # the swapped-in bank is exactly the filter of those draws over the whole history
    ref = engine.OnlineFilter(IID, filt.params, y_history=y, rejuvenation=MANUAL)
    np.testing.assert_allclose(np.asarray(filt.state.filter.mean), np.asarray(ref.state.filter.mean), atol=1e-12)
    assert filt.t == len(y)


def test_background_rejuvenation_swaps_in_a_caught_up_bank():
    """Low ESS triggers a move in the background; the stream keeps going; the new bank is caught
    up exactly on the observations that arrived meanwhile, weighted from the move's start."""
    rng = np.random.default_rng(11)
    y = rng.normal(0.0, 3.0, 400)
    S = 200
    start = exact_posterior(y[:1] * 0.1).rvs(S, random_state=rng)[:, None]  # a poor bank: ESS collapses
    filt = engine.OnlineFilter(IID, start, rejuvenation=RejuvenationConfig(
        automatic=True, ess_threshold=0.5, log_posterior=conjugate_log_posterior, move_steps=5, seed=1))
    i = 0
    while not filt.rejuvenating:
        filt.update(y[i])
        i += 1
    for _ in range(5):   # the stream goes on with the old bank while the move runs
        filt.update(y[i])
        i += 1
    filt.wait_for_rejuvenation()
    filt.update(y[i])    # the finished bank is caught up and swapped in here
    kinds = [e["kind"] for e in filt.events]
    assert kinds[:2] == ["rejuvenation_start", "rejuvenation_done"], filt.events
    start_ev, done = filt.events[0], filt.events[1]
    assert start_ev["ess_before"] < 0.5 * S
    assert done["duration_s"] > 0 and done["t_swap"] >= done["t_start"] + 5 and 0 < done["acceptance"] <= 1
    t0, t1 = done["t_start"], i + 1
    config = filt.config
    bank = engine.make_bank(IID, filt.params)
    belief = engine.online_catch_up(config, bank, engine.online_init(config, bank), y[:t0])
    belief = engine.online_catch_up(config, bank, belief._replace(log_weight=jnp.full(S, -np.log(S))), y[t0:t1])
    ref = engine.OnlineFilter(IID, filt.params, y_history=y[:t1], belief=belief, rejuvenation=MANUAL)
    np.testing.assert_allclose(filt.weights, ref.weights, rtol=1e-9)
    np.testing.assert_allclose(np.asarray(filt.state.filter.cov), np.asarray(ref.state.filter.cov), rtol=1e-9)


def test_default_rejuvenation_uses_the_fitted_models_log_posterior():
    """Without an explicit log posterior, the move targets engine.bayes.log_posterior."""
    import engine.bayes as bayes
    y = np.asarray(engine.simulate(jax.random.PRNGKey(0), {"level": "local_level"}, [1.0, 0.2], 60))
    names = engine.param_names({"level": "local_level"})
    rng = np.random.default_rng(0)
    draws = {n: np.exp(rng.normal(np.log(v), 0.3, 40)) for n, v in zip(names, (1.0, 0.2))}
    filt = engine.OnlineFilter.from_posterior({"level": "local_level"}, draws, y[:40],
                                              rejuvenation=RejuvenationConfig(automatic=False, move_steps=2))
    filt.update_many(y[40:])
    assert filt.rejuvenate(background=False)
    filt.apply_pending()
    assert [e["kind"] for e in filt.events] == ["rejuvenation_start", "rejuvenation_done"], filt.events
    logp, to_unc, _ = bayes.log_posterior(filt.spec, jnp.asarray(y))
    assert np.all(np.isfinite(np.asarray(jax.vmap(logp)(jax.vmap(to_unc)(jnp.asarray(filt.params))))))


def test_rejuvenation_move_pads_the_history_and_equals_the_unpadded_move():
    """move_on_posterior pads y with missing values to a power of two: the same moved draws as
    resample_move on the plain log posterior, and one compiled program for a bucket of lengths."""
    from engine import bayes
    from engine.rejuvenation import resample_move

    spec = {"level": "local_level"}
    y = np.asarray(engine.simulate(jax.random.PRNGKey(4), spec, [1.0, 0.2], 90))
    rng = np.random.default_rng(0)
    params = np.exp(rng.normal(np.log([1.0, 0.2]), 0.3, (20, 2)))
    log_weight = rng.normal(size=20)
    key = jax.random.PRNGKey(7)
    ours, info = bayes.move_on_posterior(key, spec, y[:70], None, None, params, log_weight, n_steps=3)
    logp, to_u, to_c = engine.log_posterior(spec, jnp.asarray(y[:70]))
    ref, ref_info = resample_move(key, logp, to_u, to_c, jnp.asarray(params), jnp.asarray(log_weight), 3)
    assert_rel_close(ours, ref, 1e-9, "moved draws")
    assert float(info.acceptance) == pytest.approx(float(ref_info.acceptance))
    compiled = bayes._move_jit._cache_size()
    bayes.move_on_posterior(key, spec, y[:90], None, None, params, log_weight, n_steps=3)   # same bucket (128)
    assert bayes._move_jit._cache_size() == compiled


def test_drift_triggers_a_background_refit_when_asked():
    rng = np.random.default_rng(5)
    y = rng.normal(0.0, np.sqrt(2.5), 120)
    y[80:] += 15.0
    start = exact_posterior(y[:40]).rvs(200, random_state=rng)[:, None]
    events = {}
    for refit in (False, True):
        filt = engine.OnlineFilter(IID, start, y_history=y[:40], weigh_history=False, rejuvenation=RejuvenationConfig(
            ess_threshold=0.0, refit_on_drift=refit, log_posterior=conjugate_log_posterior, move_steps=2))
        for v in y[40:90]:
            info = filt.update(v)
            filt.wait_for_rejuvenation()
        events[refit] = [e for e in filt.events if e["kind"] == "rejuvenation_start"]
    assert events[False] == []
    assert [e["reason"] for e in events[True]][:1] == ["drift"] and events[True][0]["t_start"] >= 81


def test_failed_moves_back_off_instead_of_restarting_at_every_update():
    def broken(spec, y, exog=None, priors=None):
        raise RuntimeError("no posterior today")

    rng = np.random.default_rng(2)
    y = rng.normal(0.0, 3.0, 200)
    start = exact_posterior(y[:1] * 0.1).rvs(100, random_state=rng)[:, None]   # ESS collapses at once
    filt = engine.OnlineFilter(IID, start, rejuvenation=RejuvenationConfig(ess_threshold=0.99, log_posterior=broken))
    for v in y:
        filt.update(v)
        filt.wait_for_rejuvenation()
    starts = [e["t_start"] for e in filt.events if e["kind"] == "rejuvenation_start"]
    failed = [e for e in filt.events if e["kind"] == "rejuvenation_failed"]
    assert len(failed) == len(starts) and "no posterior today" in failed[0]["error"]
    assert 3 <= len(starts) <= 5, starts          # 16, 32, 64, 128 observations apart, not 200 tries
    gaps = np.diff(starts)
    assert np.all(gaps >= [RETRY_AFTER * 2 ** k for k in range(len(gaps))])
    assert [e["failures"] for e in failed] == list(range(1, len(failed) + 1))
    assert all(e["retry_at"] <= s for e, s in zip(failed, starts[1:]))
    assert filt.t == len(y)                        # the stream itself never stopped


def test_close_ends_a_move_in_flight_and_keeps_the_bank():
    """A move still running when the filter is closed gives up (before its catch-up), nothing is
    swapped in afterwards, no new move starts, and updates go on with the same bank."""
    started = threading.Event()

    def slow(spec, y, exog=None, priors=None):
        started.set()
        time.sleep(0.5)
        return conjugate_log_posterior(spec, y, exog, priors)

    rng = np.random.default_rng(4)
    y = rng.normal(0.0, 2.0, 300)
    start = exact_posterior(y[:200]).rvs(50, random_state=rng)[:, None]
    filt = engine.OnlineFilter(IID, start, y_history=y[:200], weigh_history=False,
                               rejuvenation=RejuvenationConfig(log_posterior=slow, move_steps=2, ess_threshold=0.0))
    params = filt.params.copy()
    assert filt.rejuvenate("test")
    started.wait()
    assert filt.close(timeout=60)
    assert not filt.rejuvenating and not filt.rejuvenate("again")
    for v in y[200:]:
        filt.update(v)
    np.testing.assert_array_equal(filt.params, params)
    assert [e["kind"] for e in filt.events] == ["rejuvenation_start"]
    assert filt.t == len(y)
