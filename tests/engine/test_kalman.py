"""Exact-diffuse Kalman filter and smoother against statsmodels UnobservedComponents.

References are statsmodels models built with `use_exact_diffuse=True` from the same spec
(see helpers.sm_model), evaluated at the same parameter points. Tolerances: log-likelihoods
relative 1e-6 (RTOL_LL; ~1e-12 is typical), smoothed moments 1e-6 relative to their largest
magnitude, the square-root filter against the standard one 1e-9.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import statsmodels.api as sm

import engine

from .helpers import (GAP_INDEX, KINDS, RTOL_LL, air, assert_rel_close, co2, default_params, nile, seatbelts,
                      sm_model, with_gaps)

BETAS = {"beta.petrol_price": -2.0, "beta.law": -0.2}


def _y(data: str, gaps: bool):
    """(y, exog) for a data set name; gaps adds NaN runs to the series."""
    if data == "air":
        y, exog = air(), None
    elif data == "seatbelts":
        y, exog = seatbelts()
    elif data == "seatbelts_z":
        # petrol_price standardised: raw, it is ~0.1 and nearly constant, so its coefficient is
        # almost collinear with the level while diffuse and the smoothed covariances in that
        # phase lose up to ~4-6 digits in both statsmodels and the engine (checked against a
    # 200-digit reference); standardised, both agree with that reference to ~1e-11
        y, exog = seatbelts()
        x = exog["petrol_price"].to_numpy(dtype=float)
        exog = exog.assign(petrol_price=(x - x.mean()) / x.std())
    elif data == "co2":
        y, exog = co2(), None  # real gaps already
    elif data == "nile":
        y, exog = nile(), None
    else:
        raise KeyError(data)
    if gaps and data != "co2":
        y = with_gaps(y, (0, 5, 30, 31, 32, 90))
    return y, exog


def _kind_spec(kind: str, y) -> tuple[dict, object]:
    """Spec for a trend kind and the statsmodels model it is compared with (for 'fixed
    intercept' and 'fixed slope' both add an irregular: nothing else is random)."""
    spec = {"level": {"kind": kind}}
    mod = sm_model(spec, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", engine.SpecificationWarning)  # tested in test_spec
        spec = engine.ModelSpec.from_dict(spec).to_dict()
    assert engine.param_names(spec) == list(mod.param_names)
    return spec, mod


def _variance_points(names, rng) -> list[np.ndarray]:
    """Three parameter points (all parameters are variances here)."""
    k = len(names)
    p1 = np.full(k, 1e-3)
    p2 = np.array([1e-2 if n == "sigma2.irregular" else 1e-4 for n in names])
    p3 = 10.0 ** rng.uniform(-5, -2, size=k)
    return [p1, p2, p3]


# -- every trend kind -----------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("gaps", [False, True], ids=["full", "gaps"])
def test_loglik_every_level_kind(kind, gaps, rng):
    y, _ = _y("air", gaps)
    spec, mod = _kind_spec(kind, y)
    for p in _variance_points(engine.param_names(spec), rng):
        ours = float(engine.loglik(spec, p, y))
        ref = float(mod.loglike(p))
        assert np.isfinite(ours)
        assert ours == pytest.approx(ref, rel=RTOL_LL, abs=0), (kind, p)


def test_loglik_dict_params_equal_vector_params():
    spec = {"level": {"kind": "local_linear_trend"}, "seasonal": [{"period": 12}]}
    names = engine.param_names(spec)
    p = np.array([3e-4, 7e-4, 1e-6, 5e-3])
    y = with_gaps(air())
    assert float(engine.loglik(spec, dict(zip(names, p)), y)) == float(engine.loglik(spec, p, y))


# -- components -----------------------------------------------------------------------------
LL = {"kind": "local_level"}
LLT = {"kind": "local_linear_trend"}
CASES = {
    "dummy12": ({"level": LLT, "seasonal": [{"period": 12}]}, "air"),
    "trig12": ({"level": LL, "seasonal": [{"period": 12, "form": "trig", "harmonics": 3}]}, "air"),
    "trig12_trig4": ({"level": LL, "seasonal": [{"period": 12, "form": "trig", "harmonics": 3},
                                                {"period": 4, "form": "trig", "harmonics": 1}]}, "air"),
    "dummy12det_trig4": ({"level": LL, "seasonal": [{"period": 12, "stochastic": False},
                                                    {"period": 4, "form": "trig"}]}, "air"),
    "trig12det_trig4": ({"level": {"kind": "smooth_trend"},
                         "seasonal": [{"period": 12, "form": "trig", "harmonics": 2, "stochastic": False},
                                      {"period": 4, "form": "trig", "harmonics": 1}]}, "air"),
    "cycle_damped_stoch": ({"level": LL, "cycle": {"period_bounds": [6, 48], "damped": True,
                                                   "stochastic": True}}, "air"),
    "cycle_undamped_stoch": ({"level": LL, "cycle": {"damped": False, "stochastic": True}}, "air"),
    "cycle_damped_det": ({"level": LL, "cycle": {"damped": True, "stochastic": False}}, "air"),
    "cycle_undamped_det": ({"level": LL, "cycle": {"damped": False, "stochastic": False}}, "air"),
    "ar1": ({"level": LL, "autoregressive": {"order": 1}}, "air"),
    "ar3": ({"level": LLT, "autoregressive": {"order": 3}}, "air"),
    "seasonal_ar2_cycle": ({"level": LL, "seasonal": [{"period": 12}], "cycle": {"damped": True},
                            "autoregressive": {"order": 2}}, "air"),
    "no_irregular": ({"irregular": False, "level": LLT, "seasonal": [{"period": 12}]}, "air"),
    "random_walk_with_irregular": ({"irregular": True, "level": {"kind": "random_walk"}}, "air"),
    "reg_parameters": ({"level": LL, "seasonal": [{"period": 12}],
                        "regression": {"columns": ["petrol_price", "law"],
                                       "coefficients": "parameters"}}, "seatbelts"),
    "reg_state": ({"level": LL, "seasonal": [{"period": 12}],
                   "regression": {"columns": ["petrol_price", "law"], "coefficients": "state"}}, "seatbelts"),
    "co2_llt_dummy": ({"level": LLT, "seasonal": [{"period": 12}]}, "co2"),
    "co2_smooth_trig_ar1": ({"level": {"kind": "smooth_trend"},
                             "seasonal": [{"period": 12, "form": "trig", "harmonics": 2}],
                             "autoregressive": {"order": 1}}, "co2"),
}


def _points(spec, y) -> list[np.ndarray]:
    """Two parameter points: variances relative to the data's scale, plausible other values."""
    names = engine.param_names(spec)
    dy = np.diff(y)
    v = float(np.nanvar(dy[np.isfinite(dy)]))
    return [default_params(names, variance=0.1 * v, beta=BETAS),
            default_params(names, variance=0.01 * v, ar=(-0.3, 0.2, 0.4), frequency=2 * np.pi / 12,
                           damping=0.7, beta={k: 0.5 * b for k, b in BETAS.items()})]


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("gaps", [False, True], ids=["full", "gaps"])
def test_loglik_components(case, gaps):
    spec, data = CASES[case]
    if data == "co2" and not gaps:
        pytest.skip("co2 has its own gaps; one run covers it")
    y, exog = _y(data, gaps)
    if case.startswith("ar2"):
        y = y - np.nanmean(y)
    mod = sm_model(spec, y, exog)
    assert engine.param_names(spec) == list(mod.param_names)
    for p in _points(spec, y):
        ours = float(engine.loglik(spec, p, y, exog))
        ref = float(mod.loglike(p))
        assert ours == pytest.approx(ref, rel=RTOL_LL, abs=0), (case, p)


def test_nyquist_harmonic_against_exact_reference():
    """A trig seasonal with harmonics = period/2 has a sine state that never enters y.

    That state stays diffuse for ever, so P∞ never vanishes and the end of the diffuse
    phase rests on round-off. Here statsmodels' P∞ residue grows past its 1e-10 threshold
    at t = 72 and it counts a spurious diffuse step (+10.5 in the log-likelihood). The exact
    value is that of the same statsmodels model with the unobservable state initialised as
    known (it cannot affect y); the engine must give that.
    """
    from statsmodels.tsa.statespace.initialization import Initialization

    spec = {"level": {"kind": "smooth_trend"},
            "seasonal": [{"period": 12, "form": "trig", "harmonics": 2, "stochastic": False},
                         {"period": 4, "form": "trig", "harmonics": 2}]}
    y, _ = _y("air", gaps=True)
    p = np.full(len(engine.param_names(spec)), 1e-3)
    mod = sm_model(spec, y)
    m = mod.k_states
    # the last state is the sine partner of the period-4 harmonic at frequency π
    assert np.allclose(np.asarray(mod.ssm["design"])[0][-2:], [1.0, 0.0])
    init = Initialization(m)
    init.set((0, m - 1), "diffuse")
    init.set((m - 1, m), "known", constant=[0.0], stationary_cov=[[0.0]])
    mod.ssm.initialization = init
    exact = float(mod.loglike(p))
    for filt in ("standard", "sqrt"):
        assert float(engine.loglik(spec, p, y, filter=filt)) == pytest.approx(exact, rel=RTOL_LL, abs=0)


# -- an independent reference: de Jong's augmented filter (tests/engine/reference_diffuse.py) ----
def _births(n: int) -> np.ndarray:
    return engine.load_dataset("births")["births"].to_numpy(dtype=float)[:n]


def _births_spec(yearly_harmonics: int) -> dict:
    return {"level": LL, "seasonal": [{"period": 7, "form": "trig", "harmonics": 3},
                                      {"period": 365, "form": "trig", "harmonics": yearly_harmonics}]}


def _births_point(spec, y) -> np.ndarray:
    v = float(np.var(np.diff(y)))
    return np.array([0.1 * v if n == "sigma2.irregular" else 1e-3 * v for n in engine.param_names(spec)])


REFERENCE_CASES = {
    "nile_ll": ({"level": LL}, "nile"),
    "air_llt_dummy12_gaps": (CASES["dummy12"][0], "air_gaps"),
    # shares the frequency π/2 between both seasonals: a direction no observation reaches
    "air_trig12_trig4": (CASES["trig12_trig4"][0], "air"),
    "seatbelts_reg_state": (CASES["reg_state"][0], "seatbelts"),
    "births_weekly_yearly1": (_births_spec(1), "births"),
}


@pytest.mark.parametrize("case", list(REFERENCE_CASES))
def test_loglik_equals_augmented_reference(case):
    """Where the diffuse phase is well conditioned, the engine, statsmodels and de Jong's
    augmented filter (no diffuse steps, no thresholds) agree to round-off."""
    from .reference_diffuse import statsmodels_diffuse_loglik

    spec, data = REFERENCE_CASES[case]
    if data == "births":
        y, exog = _births(400), None
        points = [_births_point(spec, y)]
    else:
        y, exog = _y(data.removesuffix("_gaps"), data.endswith("_gaps"))
        points = _points(spec, y)
    mod = sm_model(spec, y, exog)
    for p in points:
        ref = statsmodels_diffuse_loglik(mod, p)
        assert float(mod.loglike(p)) == pytest.approx(ref, rel=1e-9, abs=0), (case, "statsmodels")
        for filt in ("standard", "sqrt", "augmented"):
            assert float(engine.loglik(spec, p, y, exog, filter=filt)) == pytest.approx(ref, rel=1e-9, abs=0), \
                (case, filt)


@pytest.mark.parametrize("case", [*REFERENCE_CASES, "births_weekly_yearly2", "births_weekly_yearly3"])
def test_ill_conditioned_diffuse_start_is_reported(case):
    """engine.diffuse_conditioning flags exactly the cases where the diffuse recursion is not
    exact: those that the augmented reference shows off (births with 2 or more yearly
    harmonics, see the next test), and none of those where all three agree."""
    if case.startswith("births"):
        spec, y, exog = _births_spec(int(case[-1])), _births(400), None
        p = _births_point(spec, y)
    else:
        spec, data = REFERENCE_CASES[case]
        y, exog = _y(data.removesuffix("_gaps"), data.endswith("_gaps"))
        p = _points(spec, y)[0]
    message = engine.diffuse_conditioning(spec, p, y, exog)
    if case in ("births_weekly_yearly2", "births_weekly_yearly3"):
        assert message is not None and "ill-conditioned" in message and "harmonics" in message
    else:
        assert message is None


@pytest.mark.parametrize("harmonics", [2, 4])
def test_augmented_filter_is_exact_where_the_diffuse_start_is_ill_conditioned(harmonics):
    """filter="augmented" (engine.augmented) equals the reference where Koopman's recursion does
    not (next test), and its gradient is finite and equals central differences."""
    from .reference_diffuse import statsmodels_diffuse_loglik

    spec = _births_spec(harmonics)
    y = _births(400)
    p = _births_point(spec, y)
    ref = statsmodels_diffuse_loglik(sm_model(spec, y), p)
    f = lambda q: engine.loglik(spec, q, y, filter="augmented")  # noqa: E731
    assert float(f(jnp.asarray(p))) == pytest.approx(ref, rel=1e-9, abs=0)
    g = np.asarray(jax.grad(f)(jnp.asarray(p)))
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, _central_differences(f, p), rtol=1e-5, atol=1e-6 * np.max(np.abs(g)))
    with pytest.raises(ValueError, match="total log-likelihood only"):
        engine.loglik_terms(spec, p, y, filter="augmented")


@pytest.mark.xfail(strict=True, reason=(
    "known defect: Koopman's exact-diffuse recursion is ill-conditioned when the diffuse "
    "directions are nearly collinear over the first d observations (low-frequency yearly "
    "harmonics of a daily series). engine.loglik(filter='augmented') and fit_mle are exact here (test "
    "above); per-step terms, filtered and smoothed moments and streaming still use the recursion"))
def test_births_yearly_harmonics_against_augmented_reference():
    """Daily births, level + weekly trig(3) + yearly trig(2): 11 diffuse states.

    Over the first 11 days cos/sin(2πjt/365) are nearly polynomials in t, so the exact F∞_t
    (the squared pivots of the 11×11 diffuse design) fall geometrically: ~4, 7e-2, 4e-5,
    9e-9, 2e-12. The last is below the absolute 1e-10 threshold (engine and statsmodels), so
    it is taken as a standard step and the leftover P∞ makes later spurious diffuse steps;
    and even with the right decisions (threshold lowered) the float64 recursion is off by ~13,
    since the P* update divides by F∞² ≈ 4e-24. The exact value comes from the augmented
    filter, whose least-squares matrix S is well conditioned (cond ≈ 50 at n = 400); it was
    checked against the dense GLS form of the same likelihood (to 1e-11). On these 400 days
    the engine is +17.8 from it, statsmodels +1.1 (statsmodels never ends its diffuse phase
    here: its P∞ residue stays above the threshold); with 3 or more yearly harmonics both are
    off by 10s to 1000s.
    """
    from .reference_diffuse import statsmodels_diffuse_loglik

    spec = _births_spec(2)
    y = _births(400)
    p = _births_point(spec, y)
    ref = statsmodels_diffuse_loglik(sm_model(spec, y), p)
    for filt in ("standard", "sqrt"):
        assert float(engine.loglik(spec, p, y, filter=filt)) == pytest.approx(ref, rel=RTOL_LL, abs=0), filt


SQRT_CASES = ["dummy12", "trig12_trig4", "cycle_damped_stoch", "cycle_undamped_det", "ar3",
              "reg_state", "co2_llt_dummy", "no_irregular"]


@pytest.mark.parametrize("case", SQRT_CASES)
def test_sqrt_filter_equals_standard(case):
    spec, data = CASES[case]
    y, exog = _y(data, gaps=True)
    for p in _points(spec, y):
        std = float(engine.loglik(spec, p, y, exog, filter="standard"))
        sq = float(engine.loglik(spec, p, y, exog, filter="sqrt"))
        assert sq == pytest.approx(std, rel=1e-9, abs=0)


@pytest.mark.parametrize("kind", ["local_level", "local_linear_trend", "smooth_trend", "random_trend"])
def test_sqrt_filter_equals_standard_trend_kinds(kind):
    y, _ = _y("air", gaps=True)
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
    y, exog = _y(data, gaps=True)
    p = _points(spec, y)[0]
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
    y, _ = _y(data, gaps=True)
    p = _points(spec, y)[0]
    terms = np.asarray(engine.loglik_terms(spec, p, y))
    assert terms.shape == y.shape
    assert np.all(terms[np.isnan(y)] == 0)
    assert terms.sum() == pytest.approx(float(engine.loglik(spec, p, y)), rel=1e-13)


# -- smoother -------------------------------------------------------------------------------
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
    y, exog = _y(data, gaps)
    if exog is not None and "regression" in spec:
        exog = exog[spec["regression"]["columns"]]
    p = _points(spec, y)[0]
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
    y, _ = _y("air", gaps=True)
    p = _points(spec, y)[0]
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
    y, exog = _y("seatbelts_z", gaps)
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


# -- extreme scales ---------------------------------------------------------------------------
SCALE_SPEC = {"level": LLT, "seasonal": [{"period": 12}]}
SCALE_PARAMS = np.array([3e-4, 7e-4, 1e-6, 5e-3])


def _sm_scaled_reference(y, scale) -> float:
    """statsmodels' log-likelihood of (scale·y, scale²·σ²), taken through scale 1.

    log p(s·y | s²σ²) = log p(y | σ²) − N log s, N the observations that are not diffuse
    steps; statsmodels supplies both log p(y | σ²) and N. (Evaluated directly at s = 1e-8
    statsmodels is no reference: its absolute 1e-10 threshold on F*_t then skips every
    non-diffuse observation and returns only the diffuse terms.)
    """
    res = sm_model(SCALE_SPEC, y).filter(SCALE_PARAMS)
    observed = np.isfinite(y)
    diffuse = np.zeros(len(y), bool)
    diffuse[: res.nobs_diffuse] = res.forecasts_error_diffuse_cov[0, 0, : res.nobs_diffuse] > 1e-10
    n_standard = int(np.sum(observed & ~diffuse))
    return float(res.llf) - n_standard * np.log(scale)


@pytest.mark.parametrize("scale", [1e8, 1e-8])
@pytest.mark.parametrize("gaps", [False, True], ids=["full", "gaps"])
def test_extreme_scales_match_statsmodels_and_stay_psd(scale, gaps):
    y, _ = _y("air", gaps)
    ys, ps = y * scale, SCALE_PARAMS * scale ** 2
    ref = _sm_scaled_reference(y, scale)
    if scale > 1:  # large scales: statsmodels evaluated directly agrees
        assert float(sm_model(SCALE_SPEC, ys).loglike(ps)) == pytest.approx(ref, rel=RTOL_LL, abs=0)
    for filt in ("standard", "sqrt"):
        ours = float(engine.loglik(SCALE_SPEC, ps, ys, filter=filt))
        assert ours == pytest.approx(ref, rel=RTOL_LL, abs=0), filt
        P = np.asarray(engine.filter_series(SCALE_SPEC, ps, ys, filter=filt).predicted_cov)
        assert np.all(np.isfinite(P))
        top = np.max(np.abs(P), axis=(1, 2), keepdims=True)
        assert np.all(np.abs(P - np.swapaxes(P, 1, 2)) <= 1e-12 * top), filt
        w = np.linalg.eigvalsh(P)
        assert np.all(w.min(axis=1) >= -1e-9 * np.maximum(w.max(axis=1), 0.0)), filt


@pytest.mark.parametrize("scale", [1e8, 1e-4, 1e-8])
def test_loglik_is_equivariant_under_rescaling(scale):
    """log p(s·y | s²·σ²) = log p(y | σ²) − N log s, N the non-diffuse observations.

    Exact algebra for every s > 0; an absolute threshold on F*_t (as statsmodels' 1e-10)
    breaks it for data on a small scale by silently dropping observations.
    """
    y = with_gaps(air())
    base = engine.filter_series(SCALE_SPEC, SCALE_PARAMS, y)
    n_standard = int(np.sum(np.asarray(base.kind) == 1))
    expected = float(np.sum(base.loglik_terms)) - n_standard * np.log(scale)
    for filt in ("standard", "sqrt"):
        got = float(engine.loglik(SCALE_SPEC, SCALE_PARAMS * scale ** 2, y * scale, filter=filt))
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-9), filt


# -- gradients --------------------------------------------------------------------------------
GRAD_CASES = {
    "llt_dummy12": (CASES["dummy12"][0], np.array([3e-4, 7e-4, 1e-6, 5e-3])),
    "ll_cycle_ar1": ({"level": LL, "cycle": {"damped": True}, "autoregressive": {"order": 1}},
                     np.array([1e-3, 1e-3, 1e-4, 2e-4, 2 * np.pi / 40, 0.9, 0.5])),
}


@pytest.mark.parametrize("case", list(GRAD_CASES))
def test_gradient_matches_finite_differences_with_gaps(case):
    spec, p = GRAD_CASES[case]
    y = with_gaps(air())
    f = lambda v: engine.loglik(spec, v, y)  # noqa: E731
    g = np.asarray(jax.grad(f)(jnp.asarray(p)))
    assert np.all(np.isfinite(g))
    fd = np.empty_like(p)
    for i in range(len(p)):
        h = 1e-5 * abs(p[i])
        e = np.zeros_like(p)
        e[i] = h
        fd[i] = (float(f(p + e)) - float(f(p - e))) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-7 * np.max(np.abs(fd)))


def test_gradient_finite_for_regression_state():
    spec = CASES["reg_state"][0]
    y, exog = _y("seatbelts", gaps=True)
    p = jnp.asarray(_points(spec, y)[0])
    g = jax.grad(lambda v: engine.loglik(spec, v, y, exog))(p)
    assert np.all(np.isfinite(np.asarray(g)))


SQRT_GRAD_CASES = {
    "local_level": ({"level": LL}, np.array([1e-3, 1e-3])),
    **GRAD_CASES,
    # a deterministic seasonal (structural zero variances) and no irregular (H = 0)
    "dummy12det_trig4": (CASES["dummy12det_trig4"][0], np.array([1e-3, 1e-3, 1e-4])),
    "no_irregular": (CASES["no_irregular"][0], np.array([7e-4, 1e-6, 5e-3])),
}


@pytest.mark.parametrize("case,gaps", [("local_level", True), ("llt_dummy12", False), ("ll_cycle_ar1", True), ("dummy12det_trig4", True),
                                       ("no_irregular", False)])
def test_sqrt_filter_gradient_equals_standard(case, gaps):
    """jax.grad through filter="sqrt" is finite and equals the standard filter's gradient.

    The square-root pre-arrays are rank deficient whenever a state has zero variance
    (diffuse states start with P* = 0, deterministic states have q = 0, no irregular gives
    H = 0), where the derivative of a QR is undefined; AR blocks start from a factor of
    their stationary covariance.
    """
    spec, p = SQRT_GRAD_CASES[case]
    y = with_gaps(air()) if gaps else air()
    std = np.asarray(jax.grad(lambda v: engine.loglik(spec, v, y))(jnp.asarray(p)))
    sq = np.asarray(jax.grad(lambda v: engine.loglik(spec, v, y, filter="sqrt"))(jnp.asarray(p)))
    assert np.all(np.isfinite(sq)), sq
    np.testing.assert_allclose(sq, std, rtol=1e-6)


# The single-series filter runs in chunks (exact-diffuse, standard or steady) and gives the
# standard and exact-diffuse chunks a hand-written tangent (the diffuse one only where T has no
# tangent: the cycle and AR cases take plain autodiff); the per-step filter behind filter_series is plain
# autodiff through one branch per step. Both must give the same derivatives in every regime.
def _stepwise_loglik(spec, p, y, exog=None):
    """Log-likelihood from the per-step filter (one branch per step, plain autodiff): the reference."""
    return jnp.sum(engine.filter_series(spec, p, y, exog, filter="standard").loglik_terms)


def _ends_steady(spec, p, y) -> bool:
    """Whether the chunked single-series filter has reached its steady (mean-only) regime."""
    from engine.model import filter_batch
    final, _ = filter_batch(engine.ModelSpec.from_dict(spec), jnp.asarray(p)[None], jnp.asarray(y)[:, None], None,
                    False, False)
    return bool(final.steady.all())


def _central_differences(f, p, rel_step=1e-5):
    fd = np.empty_like(p)
    for i in range(len(p)):
        e = np.zeros_like(p)
        e[i] = rel_step * abs(p[i])
        fd[i] = (float(f(p + e)) - float(f(p - e))) / (2 * e[i])
    return fd


CHUNKED_GRAD_CASES = {
    # converges within a few chunks: the rest of the series runs the steady (mean-only) chunks
    "steady_nile": ({"level": LL}, np.array([9000.0, 3000.0]), "nile", ()),
    # every other value missing up to t = 90: the diffuse phase spans several chunks
    "long_diffuse": (CASES["dummy12"][0], GRAD_CASES["llt_dummy12"][1], "air", tuple(range(0, 90, 2))),
    "gaps_llt_dummy12": (CASES["dummy12"][0], GRAD_CASES["llt_dummy12"][1], "air", GAP_INDEX),
    # T depends on the parameters (cycle frequency and damping, AR coefficient)
    "gaps_cycle_ar1": (*GRAD_CASES["ll_cycle_ar1"], "air", GAP_INDEX),
    # the regression coefficients enter through the observation intercept
    "reg_parameters": (CASES["reg_parameters"][0], None, "seatbelts", GAP_INDEX),
}


@pytest.mark.parametrize("case", list(CHUNKED_GRAD_CASES))
def test_chunked_gradient_equals_stepwise_autodiff(case):
    spec, p, data, gaps = CHUNKED_GRAD_CASES[case]
    y, exog = _y(data, gaps=False)
    y = with_gaps(y, gaps)
    if p is None:
        p = _points(spec, y)[0]
    if case == "steady_nile":
        assert _ends_steady(spec, p, y)
    if case == "long_diffuse":
        kind = np.asarray(engine.filter_series(spec, p, y).kind)
        assert np.flatnonzero(kind == engine.kalman.StepKind.DIFFUSE).max() > 2 * engine.kalman.CHUNK_STEPS
    p = jnp.asarray(p)
    v, g = jax.value_and_grad(lambda q: engine.loglik(spec, q, y, exog, filter="standard"))(p)
    v_ref, g_ref = jax.value_and_grad(lambda q: _stepwise_loglik(spec, q, y, exog))(p)
    assert float(v) == pytest.approx(float(v_ref), rel=1e-10)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-7, atol=1e-9 * np.max(np.abs(g_ref)))
    if case in ("steady_nile", "long_diffuse"):   # and against the function itself
        fd = _central_differences(lambda q: engine.loglik(spec, q, y, exog), np.asarray(p))
        np.testing.assert_allclose(np.asarray(g), fd, rtol=1e-5, atol=1e-7 * np.max(np.abs(fd)))


@pytest.mark.parametrize("n_time", [5, 13, 14, 15, 40])
def test_chunked_filter_on_series_near_the_length_of_its_diffuse_phase(n_time):
    """The chunked filter starts with a head of exact-diffuse steps, as many as there are diffuse
    states (13 here) plus under one step per chunk, then equal chunks: series shorter than the
    head, equal to it, or a step or two longer give the per-step filter's value and gradient."""
    spec, p = GRAD_CASES["llt_dummy12"]
    y = air()[:n_time]
    assert len(engine.system.diffuse_states(engine.system.layout(spec))) == 13
    p = jnp.asarray(p)
    v, g = jax.value_and_grad(lambda q: engine.loglik(spec, q, y, filter="standard"))(p)
    v_ref, g_ref = jax.value_and_grad(lambda q: _stepwise_loglik(spec, q, y))(p)
    assert float(v) == pytest.approx(float(v_ref), rel=1e-10)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-7, atol=1e-9 * np.max(np.abs(g_ref)))


@pytest.mark.parametrize("case", ["gaps_cycle_ar1", "reg_parameters", "long_diffuse"])
def test_chunked_forward_mode_and_hessian_equal_stepwise(case):
    """Forward mode (the NUTS path for few parameters) and the Hessian (MLE standard errors)
    go through the same hand-written tangent."""
    spec, p, data, gaps = CHUNKED_GRAD_CASES[case]
    y, exog = _y(data, gaps=False)
    y = with_gaps(y, gaps)
    p = jnp.asarray(_points(spec, y)[0] if p is None else p)
    f = lambda q: engine.loglik(spec, q, y, exog, filter="standard")  # noqa: E731
    u = jnp.linspace(0.5, 1.5, p.shape[0]) * p
    _, along = jax.jvp(f, (p,), (u,))
    g_ref = jax.grad(lambda q: _stepwise_loglik(spec, q, y, exog))(p)
    assert float(along) == pytest.approx(float(g_ref @ u), rel=1e-8)
    h = np.asarray(jax.hessian(f)(p))
    h_ref = np.asarray(jax.hessian(lambda q: _stepwise_loglik(spec, q, y, exog))(p))
    np.testing.assert_allclose(h, h_ref, rtol=1e-6, atol=1e-8 * np.max(np.abs(h_ref)))


# The exact-diffuse steps' rule (`kalman.diffuse_scan_custom_jvp`) against plain autodiff of the same steps,
# with tangents on every input it differentiates: the start (mean, P, and the gain and F it
# passes on when no step runs), H, q and the intercepts d; steps 0–2 of the local linear trend +
# quarterly seasonal are diffuse.
DIFFUSE_PATTERNS = {"gaps_in_the_diffuse_phase": (12, (0, 2)), "mixed_gaps": (12, (1, 4, 9)),
                    "ends_diffuse": (3, ()), "ends_missing": (6, (5,)), "no_steps": (0, ())}


@pytest.mark.parametrize("pattern", list(DIFFUSE_PATTERNS))
def test_the_diffuse_steps_tangent_equals_autodiff_of_the_same_steps(pattern):
    from engine import kalman
    from engine.system import build_system, layout

    spec = engine.ModelSpec.from_dict({"level": {"kind": "local_linear_trend"}, "seasonal": [{"period": 4}]})
    lay = layout(spec)
    params = dict(zip(engine.param_names(spec), jnp.array([3e-3, 7e-4, 1e-5, 5e-3])))
    system = kalman.batch_last(jax.tree.map(lambda x: jnp.asarray(x)[None], build_system(spec, params)))
    n, gaps = DIFFUSE_PATTERNS[pattern]
    y = air()[:n].copy()
    y[list(gaps)] = np.nan
    y = jnp.asarray(y)[:, None]
    rng = np.random.default_rng(0)
    normal = lambda x: jnp.asarray(rng.normal(size=np.shape(x)))  # noqa: E731
    start = kalman.init(lay, system)._replace(innov_var=jnp.ones(1))
    T, z, H, q, d = system.transition, system.design, system.obs_var, system.state_var, 0.1 * normal(y)
    A = normal(start.cov)
    primals = (start.mean, start.cov, start.gain, start.innov_var, H, q, d)
    tangents = (normal(start.mean), A + jnp.swapaxes(A, 0, 1), normal(start.gain), normal(H), normal(H),
                normal(q), normal(d))

    def with_rule(steps):
        def f(mean, cov, gain, innov_var, H, q, d):
            st, ll = steps(lay, start._replace(mean=mean, cov=cov, gain=gain, innov_var=innov_var), T, z, H, q, y, d)
            return (st.mean, st.cov, st.gain, st.innov_var), ll
        return f

    rule, plain = with_rule(kalman.diffuse_scan_custom_jvp), with_rule(kalman.diffuse_scan)
    (out, t_out), (ref, t_ref) = jax.jvp(rule, primals, tangents), jax.jvp(plain, primals, tangents)
    for a, b in zip(jax.tree.leaves((out, t_out)), jax.tree.leaves((ref, t_ref))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)
    total = lambda f: lambda *a: sum(jnp.sum(x) for x in jax.tree.leaves(f(*a)))  # noqa: E731
    for a, b in zip(jax.grad(total(rule), argnums=range(7))(*primals), jax.grad(total(plain), argnums=range(7))(*primals)):
        if a.ndim == 3:    # the rule's cotangent of a symmetric P is symmetrised
            b = 0.5 * (b + jnp.swapaxes(b, 0, 1))
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)


def test_forward_mode_keeps_the_diffuse_rule_in_chunks_after_the_head(monkeypatch):
    """A diffuse phase longer than the head (gaps early on) runs diffuse chunks after it; under
    `jax.jvp` (NUTS's path for few parameters) they must still take the rule, not plain autodiff."""
    from engine.kalman import tangents
    from engine.model import filter_batch

    spec, p, _, gaps = CHUNKED_GRAD_CASES["long_diffuse"]
    y = jnp.asarray(with_gaps(air(), gaps))[:, None]
    plain = []
    autodiff = tangents._diffuse_scan_autodiff
    monkeypatch.setattr(tangents, "_diffuse_scan_autodiff", lambda *a: plain.append(1) or autodiff(*a))
    f = lambda q: jnp.sum(filter_batch(engine.ModelSpec.from_dict(spec), q[None], y, None, False, False)[1])  # noqa: E731
    jax.jvp(f, (jnp.asarray(p),), (jnp.asarray(p),))
    assert not plain
    spec, p, _, gaps = CHUNKED_GRAD_CASES["gaps_cycle_ar1"]   # and a model whose T has a tangent does fall back
    jax.jvp(f, (jnp.asarray(p),), (jnp.asarray(p),))
    assert plain


# -- jit, vmap, batches -----------------------------------------------------------------------
def test_jit_equals_eager():
    spec, p = GRAD_CASES["llt_dummy12"]
    y = with_gaps(air())
    eager = float(engine.loglik(spec, p, y))
    jitted = jax.jit(lambda v: engine.loglik(spec, v, y))
    assert float(jitted(jnp.asarray(p))) == pytest.approx(eager, rel=1e-12)
    # y as a traced argument too
    jitted2 = jax.jit(lambda v, yy: engine.loglik(spec, v, yy))
    assert float(jitted2(jnp.asarray(p), jnp.asarray(y))) == pytest.approx(eager, rel=1e-12)


def test_vmap_equals_loop():
    spec, p = GRAD_CASES["llt_dummy12"]
    y = with_gaps(air())
    P = np.stack([p, p * 1.5, p * np.array([0.7, 2.0, 10.0, 0.3])])
    batched = np.asarray(jax.vmap(lambda v: engine.loglik(spec, v, y))(jnp.asarray(P)))
    loop = np.array([float(engine.loglik(spec, v, y)) for v in P])
    np.testing.assert_allclose(batched, loop, rtol=1e-12)


def test_loglik_many_equals_per_series(rng):
    spec, p = GRAD_CASES["llt_dummy12"]
    base = air()
    Y = np.stack([base + 0.02 * rng.standard_normal(base.shape) for _ in range(5)])
    Y[1, [0, 1, 2]] = np.nan          # gap at the start (longer diffuse phase)
    Y[2, 40:50] = np.nan              # a run in the middle (after the steady state)
    Y[3, ::7] = np.nan                # scattered
    Y[4, -5:] = np.nan                # at the end
    P = np.stack([p * f for f in (1.0, 0.5, 2.0, 1.3, 0.8)])
    many = np.asarray(engine.loglik_many(spec, P, Y))
    single = np.array([float(engine.loglik(spec, P[i], Y[i])) for i in range(5)])
    np.testing.assert_allclose(many, single, rtol=1e-10)
    # one shared parameter vector
    shared = np.asarray(engine.loglik_many(spec, p, Y))
    single = np.array([float(engine.loglik(spec, p, Y[i])) for i in range(5)])
    np.testing.assert_allclose(shared, single, rtol=1e-10)
    # and against statsmodels for one of them
    assert shared[2] == pytest.approx(float(sm_model(spec, Y[2]).loglike(p)), rel=RTOL_LL)


def test_loglik_many_with_shared_exog():
    spec = CASES["reg_parameters"][0]
    y, exog = _y("seatbelts", gaps=True)
    X = exog[["petrol_price", "law"]].to_numpy(dtype=float)
    p = _points(spec, y)[0]
    Y = np.stack([y, y + 0.01, y[::-1]])
    many = np.asarray(engine.loglik_many(spec, p, Y, X))
    single = np.array([float(engine.loglik(spec, p, yy, X)) for yy in Y])
    np.testing.assert_allclose(many, single, rtol=1e-10)
