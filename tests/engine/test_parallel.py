"""The associative-scan filter and smoother (`engine.parallel`) against the sequential exact-diffuse ones.

The reference is the sequential filter (`filter="standard"`), itself checked against statsmodels
in tests/engine/kalman. Log-likelihoods agree to 1e-8 relative (~1e-12 is typical), moments to 1e-8
relative to their largest magnitude, gradients to 1e-6. Series are short: the scan compiles
slowly on a CPU (a few seconds per shape), and its depth, not its length, is what is tested.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import engine
from engine import parallel
from engine.system import layout

from .helpers import air, assert_rel_close, default_params, nile, seatbelts

RTOL_LL = 1e-8
RTOL_MOMENTS = 1e-8

CASES = {   # every component appears; models are combined to keep the number of compilations small
    "local_level": ({"irregular": True, "level": {"kind": "local_level"}}, "nile"),
    "trend_trig_cycle": ({"level": {"kind": "local_linear_trend"},
                          "seasonal": [{"period": 12, "form": "trig", "harmonics": 2}],
                          "cycle": {"period_bounds": [10, 40], "damped": True, "stochastic": True}}, "air"),
    "dummy_ar2": ({"level": {"kind": "local_level"}, "seasonal": [{"period": 4, "form": "dummy"}],
                   "autoregressive": {"order": 2}}, "air"),
    "regression_parameters": ({"level": {"kind": "local_level"},
                               "regression": {"columns": ["petrol_price"], "coefficients": "parameters"}},
                              "seatbelts"),
    "regression_state": ({"level": {"kind": "local_level"},
                          "regression": {"columns": ["petrol_price"], "coefficients": "state"}}, "seatbelts"),
    "regression_time_varying": ({"level": {"kind": "local_level"},
                                 "regression": {"columns": ["petrol_price"], "coefficients": "time_varying"}},
                                "seatbelts"),
}
# a NaN at the start, two inside every model's diffuse phase, a run later on
GAPS = (0, 2, 3, 20, 21, 22, 47)
N_TIME = 48


def _data(name: str, gaps: bool):
    if name == "nile":
        y, exog = nile(), None
    elif name == "air":
        y, exog = air(), None
    else:
        y, exog = seatbelts(("petrol_price",))
        x = exog["petrol_price"].to_numpy(dtype=float)
        exog = ((x - x.mean()) / x.std())[:N_TIME, None]
    y = np.array(y[:N_TIME], dtype=float)
    if gaps:
        y[list(GAPS)] = np.nan
    return y, exog


def _params(spec):
    return default_params(engine.param_names(spec), beta={"beta.petrol_price": -0.1})


def _assert_filters_agree(spec, p, y, exog=None):
    seq = engine.filter_series(spec, p, y, exog, filter="standard")
    par = engine.filter_series(spec, p, y, exog, filter="parallel")
    assert float(jnp.sum(par.loglik_terms)) == pytest.approx(float(jnp.sum(seq.loglik_terms)), rel=RTOL_LL, abs=0)
    np.testing.assert_array_equal(np.asarray(par.kind), np.asarray(seq.kind))
    for field in seq._fields:
        if field != "kind":
            assert_rel_close(getattr(par, field), getattr(seq, field), RTOL_MOMENTS, field)
    return seq


@pytest.mark.parametrize("gaps", [False, True], ids=["full", "gaps"])
@pytest.mark.parametrize("case", list(CASES))
def test_filter_moments_and_loglik_equal_sequential(case, gaps):
    spec, data = CASES[case]
    y, exog = _data(data, gaps)
    seq = _assert_filters_agree(spec, _params(spec), y, exog)
    L = parallel.prefix_length(layout(spec), N_TIME)
    assert L < N_TIME and not np.any(np.asarray(seq.kind)[L:] == 2), "the scan part must run here"


@pytest.mark.parametrize("case", ["local_level", "dummy_ar2", "regression_state"])
def test_smoothed_moments_equal_sequential(case):
    spec, data = CASES[case]
    y, exog = _data(data, gaps=True)
    p = _params(spec)
    seq = engine.smooth(spec, p, y, exog, filter="standard")
    par = engine.smooth(spec, p, y, exog, filter="parallel")
    assert_rel_close(par.state_mean, seq.state_mean, RTOL_MOMENTS, "smoothed mean")
    assert_rel_close(par.state_cov, seq.state_cov, RTOL_MOMENTS, "smoothed cov")
    for name, (mean, var) in seq.components.items():
        assert_rel_close(par.components[name][0], mean, RTOL_MOMENTS, name)
        assert_rel_close(par.components[name][1], var, RTOL_MOMENTS, name)


def test_long_diffuse_phase_falls_back_to_the_exact_sequential_pass():
    """A NaN run longer than the prefix (and a regressor that is zero for a while) leaves the
    prefix diffuse: the result is still exactly the sequential one."""
    spec, _ = CASES["dummy_ar2"]
    y, _ = _data("air", gaps=False)
    y[:30] = np.nan
    _assert_filters_agree(spec, _params(spec), y)
    seq = engine.smooth(spec, _params(spec), y, filter="standard")
    par = engine.smooth(spec, _params(spec), y, filter="parallel")
    assert_rel_close(par.state_mean, seq.state_mean, RTOL_MOMENTS, "smoothed mean")
    spec, _ = CASES["regression_state"]
    y, exog = _data("seatbelts", gaps=False)
    exog = np.where(np.arange(N_TIME)[:, None] < 30, 0.0, exog)
    _assert_filters_agree(spec, _params(spec), y, exog)


@pytest.mark.parametrize("n_time", [1, 2, 3, 5])
def test_short_series(n_time):
    """T below the prefix (all sequential) and, for a stationary model, no prefix at all."""
    stationary = {"irregular": True, "autoregressive": {"order": 1}}
    for spec in [{"irregular": True, "level": {"kind": "local_level"}}] + [stationary] * (n_time > 1):
        y = nile()[:n_time].astype(float) - 900.0
        p = default_params(engine.param_names(spec), variance=100.0)
        assert float(engine.loglik(spec, p, y, filter="parallel")) == pytest.approx(
            float(engine.loglik(spec, p, y, filter="standard")), rel=RTOL_LL, abs=0)
    assert parallel.prefix_length(layout(stationary), n_time) == 0


def test_long_series_loglik():
    """T = 1e4 (local linear trend, gaps): the scan stays exact over many levels."""
    spec = {"level": {"kind": "local_linear_trend"}}
    p = np.array([1.0, 0.1, 1e-4])
    y = np.array(engine.simulate(jax.random.PRNGKey(0), spec, p, 10_000))
    y[[0, 5, 500, 501, 9999]] = np.nan
    seq = engine.loglik_terms(spec, p, y, filter="standard")
    par = engine.loglik_terms(spec, p, y, filter="parallel")
    assert float(jnp.sum(par)) == pytest.approx(float(jnp.sum(seq)), rel=RTOL_LL, abs=0)
    assert_rel_close(par, seq, 1e-8, "loglik terms")


@pytest.mark.parametrize("case", ["dummy_ar2", "regression_time_varying"])
def test_gradients_agree(case):
    spec, data = CASES[case]
    y, exog = _data(data, gaps=True)
    p = jnp.asarray(_params(spec))
    grad = lambda f: np.asarray(jax.grad(lambda v: engine.loglik(spec, v, y, exog, filter=f))(p))
    g_seq, g_par = grad("standard"), grad("parallel")
    assert np.all(np.isfinite(g_par))
    assert_rel_close(g_par, g_seq, 1e-6, "gradient")


def test_loglik_many_parallel_equals_sequential():
    spec, _ = CASES["dummy_ar2"]
    y, _ = _data("air", gaps=True)
    Y = np.stack([y, y[::-1], y + 0.5])
    P = _params(spec) * np.array([[1.0], [2.0], [0.5]])
    np.testing.assert_allclose(np.asarray(engine.loglik_many(spec, P, Y, filter="parallel")),
                               np.asarray(engine.loglik_many(spec, P, Y, filter="standard")), rtol=RTOL_LL)


def test_catch_up_parallel_equals_sequential():
    """The online bank's history pass: from the diffuse prior, then from a proper belief."""
    spec, _ = CASES["dummy_ar2"]
    y, _ = _data("air", gaps=True)
    P = _params(spec) * np.array([[1.0], [3.0], [0.3]])
    bank = engine.make_bank(spec, P)
    out = {}
    for method in ("standard", "parallel"):
        config = engine.OnlineConfig(engine.ModelSpec.from_dict(spec), catch_up_filter=method)
        belief = engine.online_catch_up(config, bank, engine.online_init(config, bank), y[:30])
        out[method] = engine.online_catch_up(config, bank, belief, y[30:])
    seq, par = out["standard"], out["parallel"]
    np.testing.assert_allclose(np.asarray(par.log_weight), np.asarray(seq.log_weight), rtol=1e-9, atol=1e-12)
    assert_rel_close(par.filter.mean, seq.filter.mean, RTOL_MOMENTS, "mean")
    assert_rel_close(par.filter.cov, seq.filter.cov, RTOL_MOMENTS, "cov")
    assert int(par.t) == int(seq.t) == N_TIME and not np.any(np.asarray(par.filter.diffuse))
    with pytest.raises(ValueError, match="catch_up_filter"):
        config = engine.OnlineConfig(engine.ModelSpec.from_dict(spec), sqrt=True, catch_up_filter="parallel")
        engine.online_catch_up(config, bank, engine.online_init(config, bank), y)


def test_auto_choice():
    """Sequential on a CPU at every length; the scan on an accelerator from the crossover on."""
    assert not parallel.use_parallel(10 ** 6, 13, backend="cpu")
    assert parallel.use_parallel(parallel.CROSSOVER_STEPS, 13, backend="gpu")
    assert not parallel.use_parallel(parallel.CROSSOVER_STEPS - 1, 13, backend="gpu")
    assert not parallel.use_parallel(10 ** 6, 13, batch=10 ** 4, backend="gpu")   # elements too big
    spec, _ = CASES["local_level"]
    y, _ = _data("nile", gaps=True)
    assert float(engine.loglik(spec, _params(spec), y)) == float(engine.loglik(spec, _params(spec), y,
                                                                                filter="standard"))
    with pytest.raises(ValueError, match="parallel"):
        engine.loglik(spec, _params(spec), y, filter="scan")
