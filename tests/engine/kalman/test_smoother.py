"""The smoother (`smooth_one`) against statsmodels: smoothed states, covariances and components
to 1e-6 relative to their largest magnitude.
"""

from __future__ import annotations

import numpy as np
import pytest

import engine

from ..helpers import assert_rel_close, sm_model
from .cases import y_exog, LL, LLT, CASES, param_points


SMOOTH_CASES = {
    "dummy12": (CASES["dummy12"][0], "air"),
    "trig12_trig4": (CASES["trig12_trig4"][0], "air"),
    "cycle_damped_stoch": (CASES["cycle_damped_stoch"][0], "air"),
    "ar3": (CASES["ar3"][0], "air"),
    "seasonal_ar2_cycle": (CASES["seasonal_ar2_cycle"][0], "air"),
    "reg_parameters": (CASES["reg_parameters"][0], "seatbelts_z"),
    "reg_state": (CASES["reg_state"][0], "seatbelts_z"),
    "reg_state_petrol": ({"level": LL, "seasonal": [{"period": 12}],
                          "regression": {"columns": ["petrol_price"], "coefficients": "state"}}, "seatbelts_z"),
    "co2_llt_dummy": (CASES["co2_llt_dummy"][0], "co2"),
    "nile": ({"level": LL}, "nile"),
}


def _smooth_pair(spec, data, gaps=True):
    y, exog = y_exog(data, gaps)
    if exog is not None and "regression" in spec:
        exog = exog[spec["regression"]["columns"]]
    p = param_points(spec, y)[0]
    ours = engine.smooth(spec, p, y, exog)
    ref = sm_model(spec, y, exog).smooth(p)
    return y, exog, p, ours, ref


@pytest.mark.parametrize("case", list(SMOOTH_CASES))
def test_smoother_equals_statsmodels(case):
    spec, data = SMOOTH_CASES[case]
    _, _, _, ours, ref = _smooth_pair(spec, data)
    assert_rel_close(ours.state_mean, ref.smoothed_state.T, 1e-6, "smoothed_state")
    assert_rel_close(ours.state_cov, np.moveaxis(ref.smoothed_state_cov, -1, 0), 1e-6, "smoothed_state_cov")


def test_smoothed_components_equal_statsmodels():
    spec = {"level": LLT, "seasonal": [{"period": 12}, {"period": 4, "form": "trig", "harmonics": 1}],
            "cycle": {"damped": True}, "autoregressive": {"order": 1}}
    y, _ = y_exog("air", gaps=True)
    p = param_points(spec, y)[0]
    ours = engine.smooth(spec, p, y)
    ref = sm_model(spec, y).smooth(p)
    c = ours.components
    assert set(c) == {"level", "trend", "seasonal_12", "freq_seasonal_4(1)", "cycle", "autoregressive"}
    pairs = {"level": ref.level, "trend": ref.trend, "seasonal_12": ref.seasonal,
             "freq_seasonal_4(1)": ref.freq_seasonal[0], "cycle": ref.cycle, "autoregressive": ref.autoregressive}
    for name, bunch in pairs.items():
        mean, var = c[name]
        assert_rel_close(mean, bunch["smoothed"], 1e-6, name)
        assert_rel_close(var, bunch["smoothed_cov"], 1e-6, name + " var")
    # the components add up to the smoothed signal
    total = sum(np.asarray(c[n][0]) for n in c if n != "trend")
    signal = ref.smoothed_state.T @ np.asarray(ref.model.ssm["design"])[0]
    assert_rel_close(total, signal, 1e-8, "signal")


def test_regression_parameters_component():
    spec = CASES["reg_parameters"][0]
    y, exog, p, ours, _ = _smooth_pair(spec, "seatbelts_z")
    mean, var = ours.components["regression"]
    names = engine.param_names(spec)
    beta = np.array([p[names.index("beta.petrol_price")], p[names.index("beta.law")]])
    np.testing.assert_allclose(mean, exog[["petrol_price", "law"]].to_numpy() @ beta, rtol=1e-12, atol=1e-14)
    assert np.all(np.asarray(var) == 0)
