"""The full smoother output (gain, smoothed disturbances and their variances, auxiliary residuals,
the r/N recursions and their diffuse counterparts) against statsmodels' univariate exact-diffuse
smoother on the same spec and parameters, and against the KFAS results that statsmodels ships
(read from the installed package at test time).

Tolerances are statsmodels' own (`CheckSSMResults`: rtol 1e-7), with an absolute floor of 1e-10
of the largest reference value so that entries that are zero up to round-off compare equal.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import statsmodels.tsa.statespace.tests as sm_tests

import engine
from engine.kalman import StepKind

from ..helpers import default_params, nile, seatbelts, sm_model, with_gaps

RTOL = 1e-7   # statsmodels' CheckSSMResults / CheckKFASMixin
LL = {"kind": "local_level"}
LLT = {"kind": "local_linear_trend"}


def close(actual, desired, what, rtol=RTOL):
    actual, desired = np.asarray(actual, dtype=float), np.asarray(desired, dtype=float)
    assert actual.shape == desired.shape, (what, actual.shape, desired.shape)
    floor = 1e-10 * max(float(np.max(np.abs(desired), initial=0.0)), 1e-300)
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=floor, err_msg=what)


def _seatbelts_z():
    y, exog = seatbelts()
    x = exog["petrol_price"].to_numpy(dtype=float)
    return y[:60], exog.assign(petrol_price=(x - x.mean()) / x.std()).iloc[:60].reset_index(drop=True)


def _case(name):
    """(spec, params, y, exog): short series, gaps inside the exact diffuse phase and after it."""
    if name == "nile_local_level":
        return {"level": LL}, np.array([15099.0, 1469.1]), nile(), None
    if name == "llt_seasonal_gaps":     # 2 + 3 diffuse states; y_0 and y_3 missing while diffuse
        spec = {"level": LLT, "seasonal": [{"period": 4}]}
        return spec, np.array([15000.0, 1000.0, 10.0, 100.0]), with_gaps(nile()[:60], (0, 3, 30, 31)), None
    if name == "llt_trig_dummy":        # a dummy and a trig seasonal, both exact diffuse
        spec = {"level": LLT, "seasonal": [{"period": 4}, {"period": 6, "form": "trig", "harmonics": 2}]}
        params = default_params(engine.param_names(spec), variance=500.0)
        return spec, params, with_gaps(nile()[:50], (2, 7, 20)), None
    y, exog = _seatbelts_z()
    coefficients = "parameters" if name == "regression_parameters" else "state"
    spec = {"level": LL, "regression": {"columns": ["petrol_price", "law"], "coefficients": coefficients}}
    names = engine.param_names(spec)
    params = default_params(names, variance=3e-3, beta={"beta.petrol_price": -0.05, "beta.law": -0.1})
    return spec, params, with_gaps(y, (1, 25, 26)), exog


CASES = ["nile_local_level", "llt_seasonal_gaps", "llt_trig_dummy", "regression_parameters", "regression_state"]


@pytest.mark.parametrize("name", CASES)
def test_disturbances_and_recursions_equal_statsmodels(name):
    spec, params, y, exog = _case(name)
    ours = engine.smooth(spec, params, y, exog, filter="standard")
    filt = engine.filter_series(spec, params, y, exog, filter="standard")
    mod = sm_model(spec, y, exog)
    ref = mod.smooth(params).smoother_results
    R, T = np.asarray(mod.ssm["selection"]), np.asarray(mod.ssm["transition"])
    moved = lambda a: np.moveaxis(np.asarray(a), -1, 0)
    assert int(np.sum(np.asarray(filt.kind) == StepKind.DIFFUSE)) > 0 and ref.nobs_diffuse > 0

    close(ours.measurement_disturbance, ref.smoothed_measurement_disturbance[0], "smoothed measurement disturbance")
    close(ours.measurement_disturbance_var, ref.smoothed_measurement_disturbance_cov[0, 0],
          "smoothed measurement disturbance variance")
    # statsmodels' state disturbances are those of its stochastic states (R η); ours cover every state
    close(ours.state_disturbance, (R @ ref.smoothed_state_disturbance).T, "smoothed state disturbance")
    close(ours.state_disturbance_cov, np.einsum("ij,jkt,lk->til", R, ref.smoothed_state_disturbance_cov, R),
          "smoothed state disturbance covariance")
    close(ours.r, ref.scaled_smoothed_estimator.T, "r")
    close(ours.N, moved(ref.scaled_smoothed_estimator_cov), "N")
    # statsmodels' diffuse arrays have one more leading column: r⁽¹⁾, N⁽¹⁾, N⁽²⁾ before the first step
    close(ours.r_diffuse, ref.scaled_smoothed_diffuse_estimator.T[1:], "r1")
    close(ours.N_diffuse1, moved(ref.scaled_smoothed_diffuse1_estimator_cov)[1:], "N1")
    close(ours.N_diffuse2, moved(ref.scaled_smoothed_diffuse2_estimator_cov)[1:], "N2")
    # statsmodels keeps the univariate gain K (P∞z/F∞ in a diffuse step) in its diffuse phase, T K after it
    K = np.asarray(filt.gain)
    diffuse = (np.arange(len(y)) < ref.nobs_diffuse)[:, None]
    close(np.where(diffuse, K, K @ T.T), ref.kalman_gain[:, 0, :].T, "Kalman gain")
    close(ours.state_mean, ref.smoothed_state.T, "smoothed state")


@pytest.mark.parametrize("name", ["llt_seasonal_gaps", "regression_state"])
def test_disturbances_are_the_smoothed_states_differences(name):
    """ε̂_t = y_t − Z_t α̂_t − d_t where y_t is observed and η̂_t = α̂_{t+1} − T α̂_t: the disturbance
    smoother and the state smoother are one recursion; a missing y_t gets ε̂ = 0, Var = H and its step
    passes r and N through the transition."""
    spec, params, y, exog = _case(name)
    sm = engine.smooth(spec, params, y, exog, filter="standard")
    system = engine.build_system(spec, dict(zip(engine.param_names(spec), params)),
                                 None if exog is None else exog.to_numpy())
    T = np.asarray(system.transition)
    Z = np.broadcast_to(np.asarray(system.design), np.asarray(sm.state_mean).shape)
    d = np.broadcast_to(np.asarray(system.obs_intercept), y.shape)
    alpha = np.asarray(sm.state_mean)
    obs = np.isfinite(y)
    close(np.asarray(sm.measurement_disturbance)[obs], (y - np.einsum("ti,ti->t", Z, alpha) - d)[obs], "ε̂ = y − Zα̂ − d")
    close(sm.state_disturbance[:-1], alpha[1:] - alpha[:-1] @ T.T, "η̂ = α̂' − Tα̂")
    gaps = np.flatnonzero(~obs)
    assert np.all(np.asarray(sm.measurement_disturbance)[gaps] == 0.0)
    np.testing.assert_allclose(np.asarray(sm.measurement_disturbance_var)[gaps], float(system.obs_var), rtol=1e-15)
    assert np.all(np.isnan(np.asarray(sm.auxiliary_measurement)[gaps]))
    r, N = np.asarray(sm.r), np.asarray(sm.N)
    for t in gaps[gaps > 0]:
        close(r[t - 1], T.T @ r[t], f"r passes the gap at {t}")
        close(N[t - 1], T.T @ N[t] @ T, f"N passes the gap at {t}")


def _kfas(name: str) -> pd.DataFrame:
    path = os.path.join(os.path.dirname(sm_tests.__file__), "results", f"results_exact_initial_{name}_R.csv")
    return pd.read_csv(path)


def _kfas_r(kfas: pd.DataFrame, m: int, n: int):
    """KFAS' r_1..r_n (r⁽⁰⁾ while it reports one, else r) and r⁽¹⁾ (0 once it reports none), (n, m) each."""
    r0 = kfas[[f"r0_{i}" for i in range(1, m + 1)]].to_numpy()
    r = np.where(np.isnan(r0), kfas[[f"r_{i}" for i in range(1, m + 1)]].to_numpy(), r0)
    r1 = np.nan_to_num(kfas[[f"r1_{i}" for i in range(1, m + 1)]].to_numpy())
    return r[1:n + 1], r1[1:n + 1]


KFAS_CASES = {   # the R script's models (statsmodels' results/test_exact_diffuse_filtering.R)
    "local_level": ({"level": LL}, [1.993, 8.253], [10.2394] + [1.0] * 9),
    "local_linear_trend": ({"level": LLT}, [1.993, 8.253, 2.334], [10.2394, 4.2039, 6.123123] + [1.0] * 7),
    "local_linear_trend_missing": ({"level": LLT}, [1.993, 8.253, 2.334],
                                   [10.2394, np.nan, 6.123123] + [1.0] * 7),
}


@pytest.mark.parametrize("name", list(KFAS_CASES))
def test_smoother_output_equals_kfas(name):
    spec, params, y = KFAS_CASES[name]
    y = np.asarray(y)
    kfas = _kfas(name)
    n, m = len(y), engine.layout(spec).n_states
    sm = engine.smooth(spec, params, y, filter="standard")
    col = lambda key: kfas[[f"{key}_{i}" for i in range(1, m + 1)]].to_numpy()[:n]
    total = lambda a: np.asarray(a).reshape(n, -1).sum(axis=1)
    r, r1 = _kfas_r(kfas, m, n)
    close(sm.r, r, "r (r⁽⁰⁾ while diffuse)")
    close(sm.r_diffuse, r1, "r⁽¹⁾")
    sum_N = np.where(kfas["sumN0"].isna(), kfas["sumN"], kfas["sumN0"]).astype(float)[1:n + 1]
    close(total(sm.N), sum_N, "Σ N (N⁽⁰⁾ while diffuse)")
    close(total(sm.N_diffuse1), np.nan_to_num(kfas["sumN1"].to_numpy())[1:n + 1], "Σ N⁽¹⁾")
    close(total(sm.N_diffuse2), np.nan_to_num(kfas["sumN2"].to_numpy())[1:n + 1], "Σ N⁽²⁾")
    close(sm.measurement_disturbance, kfas["epshat_1"].to_numpy()[:n], "ε̂")
    close(sm.measurement_disturbance_var, kfas["Veps_1"].to_numpy()[:n], "Var(ε | y)")
    close(sm.state_disturbance, col("etahat"), "η̂")
    close(total(sm.state_disturbance_cov), kfas["sumVeta"].to_numpy()[:n], "Σ Var(η | y)")
    close(sm.state_mean, col("alphahat"), "α̂")
    close(total(sm.state_cov), kfas["sumV"].to_numpy()[:n], "Σ V")
    # auxiliary residuals as KFAS' rstandard(type = "pearson") and, with one state, type = "state"
    H = params[0]
    obs = np.isfinite(y)
    pearson = kfas["epshat_1"].to_numpy()[:n][obs] / np.sqrt(H - kfas["Veps_1"].to_numpy()[:n][obs])
    close(np.asarray(sm.auxiliary_measurement)[obs], pearson, "auxiliary measurement residual")
    if m == 1:
        q = params[1]
        state = kfas["etahat_1"].to_numpy()[:n - 1] / np.sqrt(q - kfas["sumVeta"].to_numpy()[:n - 1])
        close(np.asarray(sm.auxiliary_state)[:n - 1, 0], state, "auxiliary state residual")
        assert np.isnan(np.asarray(sm.auxiliary_state)[-1, 0])   # η̂_n = 0: nothing after the last step


def test_auxiliary_residuals_flag_an_outlier_and_a_level_shift():
    """A spike shows in the measurement residual, a level shift in the level's, at their dates."""
    rng = np.random.default_rng(3)
    y = np.cumsum(rng.normal(0, 0.3, 100)) + rng.normal(0, 1.0, 100)   # Nile's length: compiled once
    y[30] += 8.0
    y[70:] += 6.0
    sm = engine.smooth({"level": LL}, [1.0, 0.09], y, filter="standard")
    aux_eps, aux_level = np.asarray(sm.auxiliary_measurement), np.asarray(sm.auxiliary_state)[:, 0]
    assert int(np.nanargmax(np.abs(aux_eps))) == 30 and abs(aux_eps[30]) > 3
    assert int(np.nanargmax(np.abs(aux_level))) == 69 and abs(aux_level[69]) > 3   # η_69 moves α_70


def test_standardised_is_nan_where_undefined():
    est = np.array([1.0, 2.0, 0.0, 0.0])
    var = np.array([0.75, 0.0, 1.0, 0.0])
    prior = np.array([1.0, 1.0, 1.0, 0.0])
    out = np.asarray(engine.model.standardised(est, var, prior))
    np.testing.assert_allclose(out[:2], [2.0, 2.0])
    assert np.all(np.isnan(out[2:]))
