"""`OnlineFilter`: streaming equals the batch filter per draw, exact importance weights and
evidence, forecasts, regressors, and bad steps that leave history and belief in step.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import scipy.stats

import engine
from engine import online
from engine.online.filter import OnlineFilter

from ..helpers import air, assert_rel_close, seatbelts, sm_loglik
from .cases import SPEC, BASE, MANUAL, make_draws, make_series, stream_updates


def test_streaming_equals_batch_filter_per_draw():
    """Filtered/predicted means and covariances and summed loglik per draw, diffuse start and NaN gaps."""
    y = make_series()
    draws = make_draws(3)
    filt = engine.OnlineFilter(SPEC, draws, rejuvenation=MANUAL)
    infos, beliefs = stream_updates(filt, y)
    for s in range(len(draws)):
        ref = engine.filter_series(SPEC, draws[s], y)
        filt_mean = np.array([i.filtered_mean[:, s] for i in infos])
        pred_mean = np.array([b.filter.mean[:, s] for b in beliefs])      # a_{t+1}
        pred_cov = np.array([b.filter.cov[:, :, s] for b in beliefs])     # P_{t+1}
        pred_diffuse = np.array([b.filter.diffuse_cov[:, :, s] for b in beliefs])
        assert_rel_close(filt_mean, ref.filtered_mean, 1e-9, "filtered mean")
        assert_rel_close(pred_mean[:-1], ref.predicted_mean[1:], 1e-9, "predicted mean")
        assert_rel_close(pred_cov[:-1], ref.predicted_cov[1:], 1e-9, "predicted cov")
        assert_rel_close(pred_diffuse[:-1], ref.predicted_diffuse[1:], 1e-9, "diffuse cov")
        assert_rel_close(pred_cov[-1], ref.final_cov, 1e-9, "final cov")
        ll = sum(float(i.loglik[s]) for i in infos)
        assert ll == pytest.approx(float(engine.loglik(SPEC, draws[s], y)), rel=1e-9, abs=1e-9)
        assert ll == pytest.approx(sm_loglik(SPEC, draws[s], y), rel=1e-6)
    assert [bool(i.diffuse) for i in infos[:3]] == [True, True, True]   # the exact diffuse start runs online
    assert not bool(infos[-1].diffuse)


def test_filtered_covariance_of_one_draw_equals_batch():
    y = make_series(gaps=(0, 9, 20))
    filt = engine.OnlineFilter(SPEC, BASE, rejuvenation=MANUAL)
    infos, _ = stream_updates(filt, y)
    ref = engine.filter_series(SPEC, BASE, y)
    names = engine.component_names(SPEC)
    assert names == ["level", "trend", "seasonal_4"]
    var = np.array([i.component_var for i in infos])
    ok = np.all(np.isfinite(var), axis=1)
    assert ok.sum() > 30
    assert_rel_close(var[ok, 0], ref.filtered_cov[ok, 0, 0], 1e-9, "level")
    assert_rel_close(var[ok, 1], ref.filtered_cov[ok, 1, 1], 1e-9, "trend")
    assert_rel_close(var[ok, 2], ref.filtered_cov[ok, 2, 2], 1e-9, "seasonal")
    mean = np.array([i.component_mean for i in infos])
    assert_rel_close(mean[:, 0], ref.filtered_mean[:, 0], 1e-9, "level mean")
    # every state's filtered variance and band, once that state is identified
    state_var = np.array([i.state_var for i in infos])
    known = np.isfinite(state_var)
    assert known[ok].all() and not known[0].any()
    diag = np.diagonal(np.asarray(ref.filtered_cov), axis1=1, axis2=2)
    assert_rel_close(state_var[known], diag[known], 1e-9, "state variances")
    bands = np.array([i.state_quantiles for i in infos])
    gauss = ref.filtered_mean[:, :, None] + np.sqrt(diag)[:, :, None] * scipy.stats.norm.ppf(online.PROBS)
    assert_rel_close(bands[known], gauss[known], 1e-9, "state bands")
    assert np.isnan(bands[~known]).all()
    # one draw: the predictive is N(Z a + d, F) and the standardised innovation is v/√F
    obs = ~np.isnan(y) & (np.asarray(ref.kind) == 1)
    z = np.array([i.innovation for i in infos])
    assert_rel_close(z[obs], (ref.innovation / np.sqrt(ref.innov_var))[obs], 1e-9, "innovation")
    q = np.array([i.quantiles for i in infos])[obs]
    mu, sd = np.array([i.mean for i in infos])[obs], np.sqrt(np.array([i.var for i in infos])[obs])
    assert_rel_close(q, mu[:, None] + sd[:, None] * scipy.stats.norm.ppf(online.PROBS), 1e-9, "bands")


def test_summed_loglik_equals_statsmodels_on_airpassengers():
    y = air().copy()
    y[[3, 50, 51]] = np.nan
    params = np.array([3e-4, 7e-4, 1e-6, 5e-3])
    spec = {"level": {"kind": "local_linear_trend"}, "seasonal": [{"period": 12}]}
    filt = engine.OnlineFilter(spec, params, rejuvenation=MANUAL)
    info = filt.update_many(y)
    assert float(np.sum(info.loglik)) == pytest.approx(sm_loglik(spec, params, y), rel=1e-6)
    assert float(np.sum(info.log_pred)) == pytest.approx(sm_loglik(spec, params, y), rel=1e-6)


def test_update_many_and_catch_up_equal_single_updates():
    y = make_series()
    draws = make_draws(3)
    one = engine.OnlineFilter(SPEC, draws, rejuvenation=MANUAL)
    infos, _ = stream_updates(one, y)
    many = engine.OnlineFilter(SPEC, draws, rejuvenation=MANUAL)
    batched = [many.update_many(y[:5]), many.update_many(y[5:6]), many.update_many(y[6:])]
    hist = engine.OnlineFilter(SPEC, draws, y_history=y[:30], rejuvenation=MANUAL)
    hist.update_many(y[30:])
    for other in (many, hist):
        for a, b in zip(jax.tree_util.tree_leaves(other.state), jax.tree_util.tree_leaves(one.state)):
            np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-10, atol=1e-10)
    ll_many = np.concatenate([np.asarray(b.loglik) for b in batched])
    np.testing.assert_allclose(ll_many, np.array([i.loglik for i in infos]), rtol=1e-10, atol=1e-12)
    assert np.asarray(batched[0].t).tolist() == [0, 1, 2, 3, 4]


def test_weights_are_exact_importance_weights():
    y = make_series(seed=3)
    draws = make_draws(3, spread=0.8)
    filt = engine.OnlineFilter(SPEC, draws, y_history=y[:10], rejuvenation=MANUAL)
    for v in y[10:]:
        info = filt.update(v)
    ll = np.array([float(engine.loglik(SPEC, d, y)) for d in draws])
    exact = np.exp(ll - scipy.special.logsumexp(ll))
    np.testing.assert_allclose(filt.weights, exact, rtol=1e-9)
    assert float(info.ess) == pytest.approx(1 / np.sum(exact ** 2), rel=1e-9)


def test_log_predictive_increments_sum_to_log_evidence():
    y = make_series(seed=4, gaps=(0, 7))
    draws = make_draws(3, spread=0.6)
    filt = engine.OnlineFilter(SPEC, draws, rejuvenation=MANUAL)
    info = filt.update_many(y)
    ll = np.array([float(engine.loglik(SPEC, d, y)) for d in draws])
    evidence = scipy.special.logsumexp(ll) - np.log(len(draws))
    assert float(np.sum(info.log_pred)) == pytest.approx(evidence, rel=1e-10)


def test_forecast_of_one_draw_equals_engine_forecast():
    y = air().copy()
    y[[10, 11, 140]] = np.nan
    spec = {"level": {"kind": "local_linear_trend"}, "seasonal": [{"period": 12}]}
    params = np.array([3e-4, 7e-4, 1e-6, 5e-3])
    filt = engine.OnlineFilter.from_posterior(spec, dict(zip(engine.param_names(spec), params)), y[:120],
                                              rejuvenation=MANUAL)
    filt.update_many(y[120:])
    ours = filt.forecast(24)
    ref = engine.forecast(spec, params, y, 24)
    assert_rel_close(ours.mean, ref.mean, 1e-9, "mean")
    assert_rel_close(ours.var, ref.var, 1e-9, "var")
    assert_rel_close(ours.quantiles[:, [0, 6]], np.stack([ref.lower, ref.upper], 1), 1e-9, "95% band")


def test_forecast_of_a_bank_is_the_weighted_mixture():
    y = make_series()
    draws = make_draws(3)
    filt = engine.OnlineFilter(SPEC, draws, y_history=y, rejuvenation=MANUAL)
    fc = filt.forecast(6)
    w = filt.weights
    for s in range(3):
        ref = engine.forecast(SPEC, draws[s], y, 6)
        assert_rel_close(fc.draw_mean[:, s], ref.mean, 1e-9, "draw mean")
        assert_rel_close(fc.draw_var[:, s], ref.var, 1e-9, "draw var")
    mean = np.asarray(fc.draw_mean) @ w
    var = (np.asarray(fc.draw_var) + np.asarray(fc.draw_mean) ** 2) @ w - mean ** 2
    assert_rel_close(fc.mean, mean, 1e-12, "mixture mean")
    assert_rel_close(fc.var, var, 1e-10, "mixture var")


REGRESSION_DRAWS = {"parameters": [[0.004, 0.0005, -0.3, -0.2], [0.005, 0.0004, -0.25, -0.22]],
                    "state": [[0.004, 0.0005], [0.005, 0.0004]],
                    "time_varying": [[0.004, 0.0005, 1e-4, 1e-5], [0.005, 0.0004, 2e-4, 1e-6]]}


@pytest.mark.parametrize("coefficients", sorted(REGRESSION_DRAWS))
def test_regression_exog_online_equals_batch(coefficients):
    """Two draws (the bank's observation intercept is per draw) with the coefficients as
    parameters, as states, or as random walks."""
    y, X = seatbelts()
    spec = {"level": {"kind": "local_level"},
            "regression": {"columns": ["petrol_price", "law"], "coefficients": coefficients}}
    params = np.array(REGRESSION_DRAWS[coefficients])
    x = X.to_numpy(float)
    filt = engine.OnlineFilter(spec, params, y_history=y[:150], exog_history=x[:150], rejuvenation=MANUAL)
    info = filt.update_many(y[150:], x[150:])
    for s in range(2):
        ref = engine.filter_series(spec, params[s], y, X)
        assert_rel_close(np.asarray(info.filtered_mean)[:, :, s], ref.filtered_mean[150:], 1e-9, "filtered mean")
    assert "regression" in engine.component_names(spec)
    with pytest.raises(ValueError, match="exog"):
        filt.update(1.0)
    fc = filt.forecast(3, x[-3:])
    ref = engine.forecast(spec, params[0], y, 3, X, x[-3:])
    assert_rel_close(fc.draw_mean[:, 0], ref.mean, 1e-9, "regression forecast")


def test_an_observation_no_draw_can_weigh_keeps_the_weights():
    """y so large that v² overflows gives every draw a log-likelihood of −inf: the step says so
    (log_pred = −inf, an anomaly) and keeps the weights instead of turning them into NaN."""
    y = make_series(gaps=())
    filt = engine.OnlineFilter(SPEC, make_draws(3), y_history=y[:40], rejuvenation=MANUAL)
    before = filt.weights.copy()
    info = filt.update(1e200)
    assert float(info.log_pred) == -np.inf and bool(info.anomaly)
    np.testing.assert_array_equal(filt.weights, before)
    assert float(info.ess) == pytest.approx(1.0 / np.sum(before ** 2))
    assert np.all(np.isfinite(np.asarray(info.state_mean)))


def test_a_failed_step_leaves_history_and_belief_in_step(monkeypatch):
    """An update whose compiled step raises consumes nothing: the history and the belief still
    agree, and the next updates equal a run that never saw the failure."""
    y = make_series(gaps=())
    filt = engine.OnlineFilter(SPEC, make_draws(3), y_history=y[:20], rejuvenation=MANUAL)
    real = OnlineFilter._step_for

    def failing(self, *args, **kwargs):
        monkeypatch.setattr(OnlineFilter, "_step_for", real)   # fails once
        def step(*_):
            raise RuntimeError("out of memory while compiling")
        return step

    monkeypatch.setattr(OnlineFilter, "_step_for", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        filt.update(y[20])
    assert filt.t == int(filt.state.t) == 20
    filt.update_many(y[20:30])
    ref = engine.OnlineFilter(SPEC, make_draws(3), y_history=y[:30], rejuvenation=MANUAL)
    assert filt.t == int(filt.state.t) == 30
    np.testing.assert_array_equal(filt.history()[0], y[:30])
    assert_rel_close(np.asarray(filt.state.filter.mean), np.asarray(ref.state.filter.mean), 1e-9, "mean")
