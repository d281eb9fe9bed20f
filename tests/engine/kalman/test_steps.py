"""The step family (`step`, `full_step`, dense or Cholesky P) as the per-step filter runs it.

The square-root filter equals the standard one to relative 1e-9; the kept steps (filtered
moments, pointwise terms) and a time-varying design equal statsmodels to 1e-8 and RTOL_LL.
"""

from __future__ import annotations

import numpy as np
import pytest
import statsmodels.api as sm

import engine

from ..helpers import RTOL_LL, assert_rel_close, sm_model
from .cases import y_exog, LL, CASES, param_points


SQRT_CASES = ["dummy12", "trig12_trig4", "cycle_damped_stoch", "cycle_undamped_det", "ar3",
              "reg_state", "co2_llt_dummy", "no_irregular"]


@pytest.mark.parametrize("case", SQRT_CASES)
def test_sqrt_filter_equals_standard(case):
    spec, data = CASES[case]
    y, exog = y_exog(data, gaps=True)
    for p in param_points(spec, y):
        std = float(engine.loglik(spec, p, y, exog, filter="standard"))
        sq = float(engine.loglik(spec, p, y, exog, filter="sqrt"))
        assert sq == pytest.approx(std, rel=1e-9, abs=0)


@pytest.mark.parametrize("kind", ["local_level", "local_linear_trend", "smooth_trend", "random_trend"])
def test_sqrt_filter_equals_standard_trend_kinds(kind):
    y, _ = y_exog("air", gaps=True)
    spec = {"level": {"kind": kind}, "seasonal": [{"period": 12}]}
    p = np.full(len(engine.param_names(spec)), 1e-3)
    std = float(engine.loglik(spec, p, y, filter="standard"))
    sq = float(engine.loglik(spec, p, y, filter="sqrt"))
    assert sq == pytest.approx(std, rel=1e-9, abs=0)


# -- filter moments and pointwise terms -------------------------------------------------------
@pytest.mark.parametrize("case", ["dummy12", "ar3", "reg_state"])
@pytest.mark.parametrize("filt", ["standard", "sqrt"])
def test_filter_moments_equal_statsmodels(case, filt):
    spec, data = CASES[case]
    y, exog = y_exog(data, gaps=True)
    p = param_points(spec, y)[0]
    ours = engine.filter_series(spec, p, y, exog, filter=filt)
    ref = sm_model(spec, y, exog).filter(p)
    n = len(y)
    assert_rel_close(ours.predicted_mean, ref.predicted_state[:, :n].T, 1e-8, "predicted_mean")
    assert_rel_close(ours.predicted_cov, np.moveaxis(ref.predicted_state_cov[:, :, :n], -1, 0), 1e-8,
                     "predicted_cov")
    assert_rel_close(ours.predicted_diffuse,
                     np.moveaxis(ref.predicted_diffuse_state_cov[:, :, :n], -1, 0), 1e-8, "predicted_diffuse")
    assert_rel_close(ours.filtered_mean, ref.filtered_state.T, 1e-8, "filtered_mean")
    assert_rel_close(ours.final_mean, ref.predicted_state[:, n], 1e-8, "final_mean")
    assert_rel_close(ours.final_cov, ref.predicted_state_cov[:, :, n], 1e-8, "final_cov")
    kind = np.asarray(ours.kind)
    observed = np.isfinite(y)
    assert np.all((kind == 0) == ~observed)  # nothing observed is skipped in these models
    # statsmodels counts the steps up to the last diffuse one
    assert int(np.flatnonzero(kind == 2)[-1]) + 1 == ref.nobs_diffuse
    assert_rel_close(np.asarray(ours.innovation)[observed], ref.forecasts_error[0, observed], 1e-8, "innovation")
    assert_rel_close(np.asarray(ours.innov_var)[observed], ref.forecasts_error_cov[0, 0, observed], 1e-8,
                     "innov_var")
    assert_rel_close(ours.loglik_terms, ref.llf_obs, 1e-8, "loglik terms")


def test_loglik_terms_sum_to_loglik():
    spec, data = CASES["trig12_trig4"]
    y, _ = y_exog(data, gaps=True)
    p = param_points(spec, y)[0]
    terms = np.asarray(engine.loglik_terms(spec, p, y))
    assert terms.shape == y.shape
    assert np.all(terms[np.isnan(y)] == 0)
    assert terms.sum() == pytest.approx(float(engine.loglik(spec, p, y)), rel=1e-13)


# -- time-varying regression (no UC equivalent): a hand-built statsmodels MLEModel ---------
class _LevelTimeVaryingCoefficient(sm.tsa.statespace.MLEModel):
    """y_t = μ_t + x_t β_t + ε_t,  μ and β random walks, both exact diffuse."""

    def __init__(self, endog, x):
        super().__init__(endog, k_states=2, k_posdef=2)
        design = np.zeros((1, 2, len(endog)))
        design[0, 0] = 1.0
        design[0, 1] = x
        self.ssm["design"] = design
        self.ssm["transition"] = np.eye(2)
        self.ssm["selection"] = np.eye(2)
        self.ssm.initialize_diffuse()
        self.ssm.tolerance = 0.0

    @property
    def param_names(self):
        return ["sigma2.irregular", "sigma2.level", "sigma2.petrol_price"]

    def update(self, params, **kwargs):
        params = super().update(params, **kwargs)
        self.ssm["obs_cov", 0, 0] = params[0]
        self.ssm["state_cov"] = np.diag(params[1:])


@pytest.mark.parametrize("gaps", [False, True], ids=["full", "gaps"])
def test_time_varying_regression_equals_handbuilt_statsmodels(gaps):
    y, exog = y_exog("seatbelts_z", gaps)
    exog = exog[["petrol_price"]]
    spec = {"level": LL, "regression": {"columns": ["petrol_price"], "coefficients": "time_varying"}}
    assert engine.param_names(spec) == ["sigma2.irregular", "sigma2.level", "sigma2.petrol_price"]
    mod = _LevelTimeVaryingCoefficient(y, exog["petrol_price"].to_numpy())
    for p in ([3e-3, 1e-3, 1e-4], [1e-2, 1e-4, 1e-2], [1e-3, 1e-3, 1e-8]):
        ref = float(mod.loglike(np.array(p)))
        assert float(engine.loglik(spec, p, y, exog)) == pytest.approx(ref, rel=RTOL_LL, abs=0)
        assert float(engine.loglik(spec, p, y, exog, filter="sqrt")) == pytest.approx(ref, rel=RTOL_LL, abs=0)
    # smoothed states too
    p = np.array([3e-3, 1e-3, 1e-4])
    ours = engine.smooth(spec, p, y, exog)
    sref = mod.smooth(p)
    assert_rel_close(ours.state_mean, sref.smoothed_state.T, 1e-6, "smoothed_state")
    assert_rel_close(ours.state_cov, np.moveaxis(sref.smoothed_state_cov, -1, 0), 1e-6, "smoothed_state_cov")
