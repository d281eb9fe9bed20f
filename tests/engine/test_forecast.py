"""Forecasts against statsmodels' get_forecast, and the simulator."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import engine

from .helpers import air, assert_rel_close, default_params, seatbelts, sm_model, with_gaps

AIR_SPEC = {"level": {"kind": "local_linear_trend"}, "seasonal": [{"period": 12}]}
AIR_PARAMS = np.array([3e-4, 7e-4, 1e-6, 5e-3])


@pytest.mark.parametrize("gaps", [False, True], ids=["full", "gaps"])
def test_forecast_equals_statsmodels_airpassengers(gaps):
    y = with_gaps(air()) if gaps else air()
    steps = 24
    ours = engine.forecast(AIR_SPEC, AIR_PARAMS, y, steps)
    ref = sm_model(AIR_SPEC, y).smooth(AIR_PARAMS).get_forecast(steps)
    assert_rel_close(ours.mean, ref.predicted_mean, 1e-8, "mean")
    assert_rel_close(ours.var, ref.var_pred_mean, 1e-8, "var")
    ci = ref.conf_int(alpha=0.05)
    assert_rel_close(ours.lower, ci[:, 0], 1e-8, "lower")
    assert_rel_close(ours.upper, ci[:, 1], 1e-8, "upper")
    # another level
    ours80 = engine.forecast(AIR_SPEC, AIR_PARAMS, y, steps, level=0.8)
    ci80 = ref.conf_int(alpha=0.2)
    assert_rel_close(ours80.lower, ci80[:, 0], 1e-8, "lower 80%")
    assert_rel_close(ours80.upper, ci80[:, 1], 1e-8, "upper 80%")
    # the variance grows with the horizon, the intervals are symmetric around the mean
    assert np.all(np.diff(np.asarray(ours.var)) > 0)
    np.testing.assert_allclose(np.asarray(ours.mean) - ours.lower, ours.upper - np.asarray(ours.mean), rtol=1e-12)


@pytest.mark.parametrize("mode", ["parameters", "state"])
def test_forecast_with_future_exog_equals_statsmodels(mode):
    y, exog = seatbelts()
    n, steps = 180, 12
    spec = {"level": {"kind": "local_level"}, "seasonal": [{"period": 12}],
            "regression": {"columns": ["petrol_price", "law"], "coefficients": mode}}
    names = engine.param_names(spec)
    p = default_params(names, variance=1e-3, beta={"beta.petrol_price": -2.0, "beta.law": -0.2})
    ours = engine.forecast(spec, p, y[:n], steps, exog=exog.iloc[:n], exog_future=exog.iloc[n:])
    ref = sm_model(spec, y[:n], exog.iloc[:n]).smooth(p).get_forecast(steps, exog=exog.iloc[n:])
    assert_rel_close(ours.mean, ref.predicted_mean, 1e-8, "mean")
    assert_rel_close(ours.var, ref.var_pred_mean, 1e-8, "var")
    # exog_future as an array in the spec's column order gives the same
    again = engine.forecast(spec, p, y[:n], steps, exog=exog.iloc[:n],
                            exog_future=exog.iloc[n:][["petrol_price", "law"]].to_numpy())
    np.testing.assert_allclose(again.mean, ours.mean, rtol=1e-13)


def test_forecast_of_an_ar_model_with_regressors_fewer_steps_than_its_order():
    """The horizon is not a series length: an AR(2) with regression forecasts one step."""
    y, exog = seatbelts()
    n = 150
    spec = {"level": {"kind": "local_level"}, "autoregressive": {"order": 2},
            "regression": {"columns": ["petrol_price"]}}
    p = default_params(engine.param_names(spec), variance=1e-3, beta={"beta.petrol_price": -2.0})
    cols = exog[["petrol_price"]]
    ours = engine.forecast(spec, p, y[:n], 1, exog=cols.iloc[:n], exog_future=cols.iloc[n:n + 1])
    ref = sm_model(spec, y[:n], cols.iloc[:n]).smooth(p).get_forecast(1, exog=cols.iloc[n:n + 1])
    assert_rel_close(ours.mean, ref.predicted_mean, 1e-8, "mean")
    assert_rel_close(ours.var, ref.var_pred_mean, 1e-8, "var")


def test_forecast_regression_needs_future_exog():
    y, exog = seatbelts()
    spec = {"level": {"kind": "local_level"}, "regression": {"columns": ["petrol_price", "law"]}}
    with pytest.raises(ValueError, match="exog_future"):
        engine.forecast(spec, [1e-3, 1e-3, -2.0, -0.2], y, 6, exog=exog)
    with pytest.raises(ValueError):  # too few future rows
        engine.forecast(spec, [1e-3, 1e-3, -2.0, -0.2], y[:180], 12, exog=exog.iloc[:180],
                        exog_future=exog.iloc[180:185])


def test_forecast_refuses_a_series_still_diffuse_at_its_end():
    with pytest.raises(ValueError, match="short"):
        engine.forecast(AIR_SPEC, AIR_PARAMS, air()[:6], 3)


# -- simulation -------------------------------------------------------------------------------
def test_simulate_shapes_and_reproducibility():
    spec = AIR_SPEC
    key = jax.random.PRNGKey(7)
    one = engine.simulate(key, spec, AIR_PARAMS, 144)
    assert one.shape == (144,) and np.all(np.isfinite(one))
    many = engine.simulate(key, spec, AIR_PARAMS, 144, n_series=5)
    assert many.shape == (5, 144) and np.all(np.isfinite(many))
    np.testing.assert_array_equal(engine.simulate(key, spec, AIR_PARAMS, 144), one)
    np.testing.assert_array_equal(engine.simulate(key, spec, AIR_PARAMS, 144, n_series=5), many)
    other = engine.simulate(jax.random.PRNGKey(8), spec, AIR_PARAMS, 144)
    assert not np.allclose(other, one)
    assert len({tuple(np.round(np.asarray(r), 12)) for r in many}) == 5  # series differ
    # dict parameters are the same as the vector
    names = engine.param_names(spec)
    np.testing.assert_array_equal(engine.simulate(key, spec, dict(zip(names, AIR_PARAMS)), 144), one)


def test_simulate_with_regression():
    y, exog = seatbelts()
    spec = {"level": {"kind": "local_level"}, "regression": {"columns": ["petrol_price", "law"]}}
    p = {"sigma2.irregular": 0.0, "sigma2.level": 0.0, "beta.petrol_price": 0.0, "beta.law": -5.0}
    sims = np.asarray(engine.simulate(jax.random.PRNGKey(1), spec, p, len(y), exog=exog, n_series=3))
    assert sims.shape == (3, len(y))
    # no noise: each series is a constant (its initial level) plus β·law
    law = exog["law"].to_numpy(dtype=float)
    resid = sims - (-5.0 * law)
    np.testing.assert_allclose(resid, resid[:, :1] * np.ones_like(resid), atol=1e-12)
    with pytest.raises(ValueError):
        engine.simulate(jax.random.PRNGKey(1), spec, p, len(y))


def test_simulated_moments_of_a_stationary_model():
    """Irregular + AR(1): every y_t has variance σ²_ε + σ²_ar / (1 − φ²) and lag-1
    autocovariance φ σ²_ar / (1 − φ²) (the AR state starts from its stationary law)."""
    spec = {"irregular": True, "autoregressive": {"order": 1}}
    s_irr, s_ar, phi = 0.5, 1.0, 0.8
    Y = np.asarray(engine.simulate(jax.random.PRNGKey(3), spec, [s_irr, s_ar, phi], 50, n_series=4000))
    var_ar = s_ar / (1 - phi ** 2)
    var_t = Y.var(axis=0)
    assert var_t[0] == pytest.approx(s_irr + var_ar, rel=0.08)  # stationary from the start
    assert var_t.mean() == pytest.approx(s_irr + var_ar, rel=0.03)
    cov1 = np.mean(Y[:, 1:] * Y[:, :-1]) - np.mean(Y) ** 2
    assert cov1 == pytest.approx(phi * var_ar, rel=0.05)
    assert abs(Y.mean()) < 0.05


@pytest.mark.slow
def test_one_step_interval_coverage():
    """95% one-step intervals with the true parameters cover ~95% of simulated outcomes."""
    spec = {"level": {"kind": "local_level"}}
    p = {"sigma2.irregular": 1.0, "sigma2.level": 0.3}
    n_series, n_time = 400, 80
    Y = np.asarray(engine.simulate(jax.random.PRNGKey(11), spec, p, n_time + 1, n_series=n_series))
    fc = jax.vmap(lambda yy: engine.forecast(spec, p, yy, 1))(jnp.asarray(Y[:, :n_time]))
    lower, upper = np.asarray(fc.lower)[:, 0], np.asarray(fc.upper)[:, 0]
    # vmapped forecasts equal the one-by-one ones
    single = engine.forecast(spec, p, Y[0, :n_time], 1)
    assert float(single.lower[0]) == pytest.approx(lower[0], rel=1e-12)
    hit = (lower <= Y[:, n_time]) & (Y[:, n_time] <= upper)
    assert 0.9 <= hit.mean() <= 0.99, hit.mean()
    # standardised one-step errors are ~N(0, 1)
    z = (Y[:, n_time] - np.asarray(fc.mean)[:, 0]) / np.sqrt(np.asarray(fc.var)[:, 0])
    assert abs(z.mean()) < 0.2 and 0.85 < z.std() < 1.15
