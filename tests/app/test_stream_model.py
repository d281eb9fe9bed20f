"""StreamModel without a server: the streamed filter equals the batch filter; controls; shutdown."""

from __future__ import annotations

import threading
import time

import numpy as np
import pandas as pd
import pytest

import engine
from engine.rejuvenation import RejuvenationConfig
from app.viewmodels import DataModel, FitModel, SpecModel
from app.viewmodels.stream import DEMO_DRAWS, MIN_TREND_BATCHES, StreamModel, engine_time_trend
from app.workers import SessionWorker

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def session():
    worker = SessionWorker("stream-test")
    data = DataModel(dataset="nile")
    fit = FitModel(data, SpecModel(data), worker)
    fit.run_quick_fit().result()
    model = StreamModel(data, fit, worker, batch_size=8)
    yield data, fit, model
    model.shutdown()
    worker.shutdown()


def _stream_threads():
    return [t for t in threading.enumerate() if t.name.startswith("stream-") and t.is_alive()]


def _wait_for(condition):
    while not condition():
        time.sleep(0.02)


def test_streamed_nile_equals_the_batch_filter(session):
    data, fit, model = session
    model.max_speed = True
    model.play().result()
    model.runner.finished.wait()
    _wait_for(lambda: model.status == "finished")
    rows = model.rows
    n_hist = int(round(model.history_fraction * len(data.y)))
    assert model.n_received == len(rows) == len(data.y) - n_hist == model.n_total
    # the quick fit saw all of Nile: the stream runs the estimate of the first n_hist observations
    history_fit = engine.fit_mle(fit.result.spec, data.y[:n_hist])
    assert model.filter.params[0] == pytest.approx(list(history_fit.params.values()), rel=1e-9)
    assert not np.allclose(list(history_fit.params.values()), list(fit.result.params.values()), rtol=1e-3)
    assert f"first {n_hist} observations" in model.posterior_label
    ref = engine.filter_series(fit.result.spec, history_fit.params, data.y)
    np.testing.assert_array_equal(rows["t"], np.arange(n_hist, len(data.y)))
    np.testing.assert_array_equal(rows["y"], data.y[n_hist:])
    # local level: the signal is the level state; filtered a_{t|t} and one-step prediction a_t
    np.testing.assert_allclose(rows["filtered"], np.asarray(ref.filtered_mean)[n_hist:, 0], rtol=1e-9)
    np.testing.assert_allclose(rows["predicted"], np.asarray(ref.predicted_mean)[n_hist:, 0], rtol=1e-9)
    sd = np.sqrt(np.asarray(ref.innov_var)[n_hist:])
    np.testing.assert_allclose(rows["hi95"] - rows["predicted"], 1.959963984540054 * sd, rtol=1e-6)
    assert (rows["ess"] == 1.0).all()
    # the forecast follows the stream: it starts right after the last observation
    assert model.forecast["t"].iloc[0] == len(data.y) and len(model.forecast) == model.horizon
    assert model.stats["n_obs"] == model.n_total and model.stats["n_draws"] == 1
    model.runner.join()
    assert not model.runner.running


def test_throughput_numbers_measure_what_they_say(session):
    """The Throughput tab's numbers agree with the runner's own accounting: the mean engine time
    per observation is its engine time over its observations, the sustainable rate is 1000 / that
    mean, one timing row per batch, and each latency (arrival → page update) is at least the
    runner's (arrival → engine done)."""
    _, _, model = session
    timings = []
    model.param.watch(lambda e: timings.append(e.new) if e.new is not None else None, ["new_timings"])
    model.rate = 200.0
    model.play().result()
    _wait_for(lambda: model.status == "finished")
    s, runner = model.stats, model.runner.stats()
    assert s["n_obs"] == runner.n_obs == model.n_total and s["n_batches"] == runner.n_batches
    np.testing.assert_allclose(s["engine_obs_per_s"], runner.engine_throughput, rtol=1e-9)
    np.testing.assert_allclose(s["engine_obs_per_s"] * s["engine_ms_mean"], 1000.0, rtol=1e-12)
    frame = pd.concat(timings, ignore_index=True)
    assert len(frame) == runner.n_batches and frame["batch_size"].sum() == runner.n_obs
    np.testing.assert_array_equal(frame["n_obs"], np.cumsum(frame["batch_size"]))
    np.testing.assert_allclose(np.sum(frame["engine_ms_per_obs"] * frame["batch_size"]) / runner.n_obs,
                               s["engine_ms_mean"], rtol=1e-9)
    assert s["latency_ms_p50"] >= runner.total_ms["p50"] and s["latency_ms_p99"] >= runner.total_ms["p99"]
    assert s["trend"]["n_batches"] == runner.n_batches


def test_engine_time_trend_compares_the_first_and_last_quarters():
    rng = np.random.default_rng(0)
    flat = 0.1 * np.exp(0.1 * rng.standard_normal(400))
    assert engine_time_trend(flat)["flat"] is True
    growing = flat * np.linspace(1.0, 3.0, 400)   # O(t): the last quarter costs about 2.5x the first
    trend = engine_time_trend(growing)
    assert trend["flat"] is False and trend["ratio"] > 2.0
    np.testing.assert_allclose(trend["first_ms"], np.median(growing[:100]))
    np.testing.assert_allclose(trend["last_ms"], np.median(growing[-100:]))
    assert engine_time_trend(flat[:MIN_TREND_BATCHES - 1])["flat"] is None


def test_refit_after_the_stream_ended_completes_and_says_so(session):
    """A refit requested once the stream has ended (no update will come to swap the new bank in)
    runs to its end: the new bank is swapped in, the events and the message say so, and the
    forecast is redrawn from it."""
    _, _, model = session
    model.max_speed = True
    model.play().result()
    _wait_for(lambda: model.status == "finished")
    before = model.forecast
    assert model.refit().result(timeout=600) is True
    _wait_for(lambda: model.message.startswith("Refit done"))
    kinds = [e["kind"] for e in model.events]
    assert kinds[-2:] == ["rejuvenation_start", "rejuvenation_done"], kinds
    assert model.filter.bank_version == 1 and model.status == "finished"
    _wait_for(lambda: model.forecast is not before)
    fc = model.filter.forecast(model.horizon)
    np.testing.assert_allclose(model.forecast["mean"], np.asarray(fc.mean), rtol=1e-12)


def test_a_demo_stream_honours_start_after_and_streams_a_posterior_bank(session):
    """A demo stream starts after the 'Start after' share of it, through a bank of draws fitted on
    the part before (not its true parameters): the weights move, so the ESS is not flat."""
    from engine.demo import demo_posterior

    _, _, model = session
    n_time = 480
    model.param.update(source="level_shifts", history_fraction=0.75, demo_length=n_time, max_speed=True)
    model.play().result()
    _wait_for(lambda: model.status in ("finished", "error"))
    assert model.status == "finished", model.message
    n_hist = int(round(0.75 * n_time))
    rows = model.rows
    np.testing.assert_array_equal(rows["t"], np.arange(n_hist, n_time))
    demo = engine.demo_stream(0, "level_shifts", n_time=n_time)
    np.testing.assert_array_equal(rows["y"], demo.y[n_hist:])
    assert model.filter.n_draws == DEMO_DRAWS and f"first {n_hist} observations" in model.posterior_label
    assert "Laplace" in model.posterior_label and f"S = {DEMO_DRAWS}" in model.posterior_label
    model.filter.wait_for_rejuvenation()   # a move traces the model too (NumPyro's handlers are not per thread)
    bank = demo_posterior(demo, n_hist, DEMO_DRAWS).draws
    first = engine.OnlineFilter.from_posterior(model.filter.spec, bank, demo.y[:n_hist])
    np.testing.assert_allclose(model.history["y"], demo.y[:n_hist])
    np.testing.assert_allclose(rows["ess"].iloc[0], first.update(demo.y[n_hist]).ess, rtol=1e-9)
    assert rows["ess"].max() - rows["ess"].min() > 1.0   # the draws are re-weighted as the data arrive


def test_a_demo_stream_needs_a_history_to_fit_on(session):
    _, _, model = session
    model.source = "outliers"
    model.history_fraction = 0.0
    assert model.play() is None
    assert model.status == "error" and "Start after" in model.message


def test_regression_model_streams_and_forecasts_with_the_datas_regressors():
    """A model with a regression streams to the end; its forecast after a step is the engine's
    plug-in forecast (at the estimate of the history before the stream) with the dataset's next
    regressors; past the last regressor it is empty."""
    worker = SessionWorker("stream-regression")
    data = DataModel(dataset="seatbelts")
    spec = SpecModel(data)
    spec.regression_columns = ["petrol_price"]
    fit = FitModel(data, spec, worker)
    fit.run_quick_fit().result()
    model = StreamModel(data, fit, worker, batch_size=8)
    try:
        model.step().result()
        _wait_for(lambda: model.n_received == 1 and model.forecast is not None)
        t = int(model.rows["t"].iloc[-1]) + 1
        X = data.exog_frame[["petrol_price"]].to_numpy(float)
        n_hist = int(round(model.history_fraction * len(data.y)))   # the stream's fit saw only these
        params = engine.fit_mle(fit.result.spec, data.y[:n_hist], X[:n_hist]).params
        ref = engine.forecast(fit.result.spec, params, data.y[:t], model.horizon, X[:t],
                              X[t:t + model.horizon])
        fc = model.forecast
        assert fc["t"].iloc[0] == t and len(fc) == model.horizon
        np.testing.assert_allclose(fc["mean"], np.asarray(ref.mean), rtol=1e-9)
        np.testing.assert_allclose(fc["hi95"], np.asarray(ref.upper), rtol=1e-6)
        model.max_speed = True
        model.play()
        _wait_for(lambda: model.status in ("finished", "error"))
        assert model.status == "finished", model.message
        assert model.n_received == model.n_total == len(data.y) - int(round(model.history_fraction * len(data.y)))
        _wait_for(lambda: model.forecast is not None and model.forecast.empty)
    finally:
        model.shutdown()
        worker.shutdown()


def test_a_failed_refit_is_reported_and_the_stream_goes_on(session):
    """A refit that fails is an event and a warning; the run keeps playing, pauses and finishes."""
    _, _, model = session

    def broken(spec, y, exog=None, priors=None):
        raise FloatingPointError("move diverged")

    model.rate = 40.0
    model.play().result()
    _wait_for(lambda: model.n_received >= 2)
    rejuvenator = model.filter.rejuvenator
    rejuvenator.config = rejuvenator.config._replace(log_posterior=broken)   # the next move fails
    model.refit()
    _wait_for(lambda: any(e["kind"] == "rejuvenation_failed" for e in model.events))
    assert model.status == "playing" and "refit failed" in model.message, (model.status, model.message)
    received = model.n_received
    _wait_for(lambda: model.n_received > received)
    model.pause()
    _wait_for(lambda: model.status == "paused")
    assert model.runner.paused
    model.max_speed = True
    model.play()
    _wait_for(lambda: model.status == "finished")
    assert model.n_received == model.n_total
    assert model.shutdown()


def test_a_fit_of_other_data_is_not_streamed(session):
    """After switching dataset, Play refuses the old fit (it names why) until the model is fitted
    again; then the new data streams."""
    data, fit, model = session
    data.dataset = "airpassengers"
    assert model.play() is None
    assert model.status == "error" and "fitted to other data" in model.message, model.message
    fit.run_quick_fit().result()
    model.max_speed = True
    model.play().result()
    _wait_for(lambda: model.status == "finished")
    assert model.n_total == len(data.y) - int(round(model.history_fraction * len(data.y)))


def test_step_pause_play_stop_and_shutdown(session):
    _, _, model = session
    model.rate = 5.0
    model.step().result()                     # no run yet: starts one paused, lets one through
    _wait_for(lambda: model.n_received == 1)
    assert model.status == "paused"
    model.step(2)
    _wait_for(lambda: model.n_received == 3)
    time.sleep(0.5)
    assert model.n_received == 3              # paused: nothing more comes through
    model.play()
    assert model.status == "playing"
    _wait_for(lambda: model.n_received >= 5)
    model.pause()
    model.stop()
    assert model.status == "stopped" and not model.runner.running
    assert list(model.rows["t"]) == list(range(50, 50 + model.n_received))
    model.play().result()                     # a new run starts from the beginning
    _wait_for(lambda: model.n_received >= 1)
    assert model.rows["t"].iloc[0] == 50
    assert model.shutdown()                   # the session closes: the runner's threads end
    assert _stream_threads() == []


def test_pause_shows_exactly_what_the_filter_took(session):
    """Pause says "pausing" until the batch the engine had taken is shown, then "paused": the
    count shown is the filter's own (history + shown = its t) and stays put until Play."""
    _, _, model = session
    model.rate = 10.0
    model.play().result()
    _wait_for(lambda: model.n_received >= 2)
    time.sleep(0.05)   # half a period: the engine waits for the next observation
    model.pause()
    assert model.status in ("pausing", "paused")
    _wait_for(lambda: model.status == "paused")
    shown = model.n_received
    assert model.filter.t == model._plan.t0 + shown == model._plan.t0 + model.runner.stats().n_obs
    time.sleep(0.5)    # five observations' time at the stream's rate
    assert model.status == "paused" and model.n_received == shown and model.filter.t == model._plan.t0 + shown
    model.play()
    _wait_for(lambda: model.n_received > shown)
    assert model.shutdown()


def test_stream_needs_a_fit():
    worker = SessionWorker("stream-nofit")
    data = DataModel(dataset="nile")
    model = StreamModel(data, FitModel(data, SpecModel(data), worker), worker)
    assert model.play() is None
    assert model.status == "error" and "Fit a model first" in model.message
    worker.shutdown()


def test_bayesian_posterior_streams_the_weighted_mixture(session):
    """With NUTS-style draws (an InferenceData on the Bayesian fit view-model), the filtered mean is
    Σ_s w_s a_{t|t,s} with the exact importance weights of the streamed observations,
    w_s ∝ p(y_{n+1:t} | y_{1:n}, θ_s): the draws already condition on the n-step history."""
    import arviz as az
    import param

    from app.viewmodels.fit_bayes import BayesFitModel
    from app.viewmodels.priors_model import PriorsModel

    data, fit, _ = session
    spec, mle = fit.result.spec, fit.result.params
    scale = np.array([0.9, 1.0, 1.1])
    draws = {name: (value * scale)[None, :] for name, value in mle.items()}   # (chain, draw)
    idata = az.from_dict(posterior=draws, attrs={"spec": spec.to_json()})
    bayes = BayesFitModel(data, PriorsModel(data, SpecModel(data)), fit.worker)
    with param.edit_constant(bayes):
        bayes.posterior = idata
    model = StreamModel(data, fit, fit.worker, bayes=bayes, batch_size=8, max_speed=True)
    model.play().result()
    model.runner.finished.wait()
    _wait_for(lambda: model.status == "finished")
    assert "S = 3" in model.posterior_label
    refs = [engine.filter_series(spec, {n: v * s for n, v in mle.items()}, data.y) for s in scale]
    loglik = np.cumsum([np.asarray(r.loglik_terms)[50:] for r in refs], axis=1)       # (draw, streamed time)
    w = np.exp(loglik - loglik.max(axis=0))
    w /= w.sum(axis=0)
    mixture = np.sum(w * np.stack([np.asarray(r.filtered_mean)[50:, 0] for r in refs]), axis=0)
    np.testing.assert_allclose(model.rows["filtered"], mixture, rtol=1e-8)
    ess = 1.0 / np.sum(w ** 2, axis=0)
    assert ess.min() > 0.5 * 3   # above the rejuvenation threshold: the bank is never replaced here
    np.testing.assert_allclose(model.rows["ess"], ess, rtol=1e-8)
    model.shutdown()


def test_warm_up_twins_a_snapshot_while_the_filter_streams():
    """The micro-batch warm-up runs while the stream moves the filter on: its twins come from a
    snapshot taken before, so they neither see a history shorter than the belief nor read the
    belief's buffers that the stream's updates donate. The streaming filter is left as it was."""
    import jax

    from app.viewmodels.stream import StreamPlan, twin_source, warm_up

    spec = engine.ModelSpec.from_dict({"level": {"kind": "local_level"}})
    y = np.asarray(engine.simulate(jax.random.PRNGKey(0), spec, [1.0, 0.1], 80))
    manual = RejuvenationConfig(automatic=False)
    filt = engine.OnlineFilter(spec, np.array([[1.0, 0.1], [1.2, 0.2]]), y_history=y[:40], rejuvenation=manual)
    plan = StreamPlan(spec, filt.params, "test", y[:40], None, y[40:], 40)
    source = twin_source(filt)
    filt.update_many(y[40:60])                 # the stream moves on (and donates its belief)
    reference = engine.OnlineFilter(spec, filt.params, y_history=y[:60], rejuvenation=manual)
    warm_up(plan, source, [8, 16])
    assert filt.t == 60
    np.testing.assert_allclose(filt.update(y[60]).loglik, reference.update(y[60]).loglik, rtol=1e-9)
