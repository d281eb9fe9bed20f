"""ModelSpec: JSON round trips, statsmodels parameter names, validation messages."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

import engine

from engine.spec import MAX_HISTORY_BYTES, MAX_STATES

from .helpers import KINDS, RTOL_LL, air, default_params, seatbelts, sm_model

# -- round trips --------------------------------------------------------------------------
CANONICAL = [
    {"irregular": True, "level": {"kind": "local_level"}},
    {"irregular": False, "level": {"kind": "local_linear_trend"}},
    {"irregular": True, "level": {"kind": "local_linear_trend"},
     "seasonal": [{"period": 12, "form": "dummy", "stochastic": True}]},
    {"irregular": True, "level": {"kind": "smooth_trend"},
     "seasonal": [{"period": 7, "form": "dummy", "stochastic": False},
                  {"period": 365.25, "form": "trig", "stochastic": True, "harmonics": 4},
                  {"period": 12, "form": "trig", "stochastic": True, "harmonics": 6}]},
    {"irregular": True, "level": {"kind": "random_walk_with_drift"},
     "cycle": {"period_bounds": [6.0, 40.0], "damped": False, "stochastic": True},
     "autoregressive": {"order": 2}},
    {"irregular": True, "level": {"kind": "local_level"},
     "regression": {"columns": ["petrol_price", "law"], "coefficients": "time_varying"}},
    {"irregular": True, "autoregressive": {"order": 3},
     "regression": {"columns": ["x"], "coefficients": "state"},
     "priors": {"sigma2.irregular": {"dist": "half_normal", "scale": 2.0}}},
]


@pytest.mark.parametrize("d", CANONICAL, ids=range(len(CANONICAL)))
def test_round_trip_dict_and_json(d):
    spec = engine.ModelSpec.from_dict(d)
    assert spec.to_dict() == d
    assert engine.ModelSpec.from_dict(spec.to_dict()) == spec
    # through JSON text, both the engine's own and a plain json.dumps of the dict
    assert engine.ModelSpec.from_json(spec.to_json()) == spec
    assert engine.ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    # frozen and hashable: usable as a static jit argument / dict key
    assert hash(spec) == hash(engine.ModelSpec.from_dict(d))
    assert engine.param_names(spec) == engine.param_names(d)


def test_round_trip_normalises_shorthand():
    short = {"level": "local_linear_trend", "seasonal": {"period": 12}, "cycle": True,
             "autoregressive": 1, "regression": {"columns": "x"}}
    spec = engine.ModelSpec.from_dict(short)
    d = spec.to_dict()
    assert d["level"] == {"kind": "local_linear_trend"}
    assert d["irregular"] is True  # the kind's statsmodels default
    assert d["seasonal"] == [{"period": 12, "form": "dummy", "stochastic": True}]
    assert d["cycle"]["damped"] is True and d["cycle"]["stochastic"] is True
    assert d["autoregressive"] == {"order": 1}
    assert d["regression"] == {"columns": ["x"], "coefficients": "parameters"}
    assert engine.ModelSpec.from_dict(d) == spec
    assert engine.ModelSpec.from_dict(d).to_dict() == d


def test_trig_default_harmonics_is_floor_half_period():
    spec = engine.ModelSpec.from_dict({"seasonal": [{"period": 12, "form": "trig"},
                                                    {"period": 7, "form": "trig"}]})
    assert [s["harmonics"] for s in spec.to_dict()["seasonal"]] == [6, 3]


@pytest.mark.parametrize("kind,default_irregular", [
    ("irregular", True), ("deterministic_constant", True), ("local_level", True), ("random_walk", False),
    ("deterministic_trend", True), ("local_linear_deterministic_trend", True),
    ("random_walk_with_drift", False), ("local_linear_trend", True), ("smooth_trend", True),
    ("random_trend", False)])
def test_irregular_default_and_override(kind, default_irregular):
    """The kind sets statsmodels' default irregular; `irregular` overrides it, except that a
    model left with no stochastic element keeps its irregular (with a warning), as statsmodels."""
    assert engine.ModelSpec.from_dict({"level": {"kind": kind}}).irregular is default_irregular
    assert ("sigma2.irregular" in engine.param_names({"level": {"kind": kind}})) is default_irregular
    if kind != "irregular":
        flipped = {"level": {"kind": kind}, "irregular": not default_irregular}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            names = engine.param_names(flipped)
        assert names == list(sm_model(flipped, air()).param_names)
        readded = kind in ("deterministic_constant", "deterministic_trend")  # nothing else is random
        assert ("sigma2.irregular" in names) is (readded or not default_irregular)
        assert any(issubclass(w.category, engine.SpecificationWarning) for w in caught) is readded


def test_trend_kinds_are_the_statsmodels_specifications():
    assert sorted(engine.TREND_KINDS) == sorted(KINDS)


# -- parameter names against statsmodels ---------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_param_names_every_level_kind(kind):
    """Names and order equal statsmodels' for the kind on its own.

    statsmodels adds an irregular to a model with no stochastic element at all
    ('fixed intercept', 'fixed slope'); the engine must describe the same model.
    """
    spec = {"level": {"kind": kind}}
    mod = sm_model(spec, air())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", engine.SpecificationWarning)  # tested below
        assert engine.param_names(spec) == list(mod.param_names)


@pytest.mark.parametrize("kind", KINDS)
def test_param_names_every_level_kind_with_seasonal_and_ar(kind):
    spec = {"level": {"kind": kind}, "seasonal": [{"period": 12}], "autoregressive": {"order": 1}}
    mod = sm_model(spec, air())
    assert engine.param_names(spec) == list(mod.param_names)


NO_STOCHASTIC_ELEMENT = [
    {"level": {"kind": "fixed_intercept"}},
    {"level": {"kind": "fixed_slope"}},
    {"level": {"kind": "deterministic_trend"}, "irregular": False},
    {"level": {"kind": "fixed_slope"}, "seasonal": [{"period": 12, "stochastic": False}]},
    {"irregular": False, "level": {"kind": "fixed_intercept"}, "cycle": {"stochastic": False}},
    {"irregular": False, "regression": {"columns": ["petrol_price", "law"], "coefficients": "state"}},
]


@pytest.mark.parametrize("d", NO_STOCHASTIC_ELEMENT, ids=range(len(NO_STOCHASTIC_ELEMENT)))
def test_model_without_stochastic_element_is_not_silently_degenerate(d):
    """A model with no disturbance at all makes y exactly deterministic after the diffuse
    steps: every later observation has F*_t = 0 and is skipped, so the likelihood does not
    depend on the data. statsmodels adds an irregular in that case (with a warning); the
    engine does the same, warns, and then describes statsmodels' model exactly.
    """
    y, exog = seatbelts()
    exog = exog if "regression" in d else None
    mod = sm_model(d, y, exog)
    assert "sigma2.irregular" in mod.param_names  # what statsmodels does
    with pytest.warns(engine.SpecificationWarning, match="no stochastic element"):
        spec = engine.ModelSpec.from_dict(d)
    assert spec.irregular and engine.param_names(spec) == list(mod.param_names)
    # the normalised spec says so explicitly: parsing it again is silent
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert engine.ModelSpec.from_dict(spec.to_dict()) == spec
    p = default_params(mod.param_names, frequency=2 * np.pi / 20)
    assert float(engine.loglik(spec, p, y, exog)) == pytest.approx(float(mod.loglike(p)), rel=RTOL_LL)


@pytest.mark.parametrize("d", [{"level": {"kind": "fixed_slope"}, "seasonal": [{"period": 12}]},
                               {"irregular": False, "autoregressive": {"order": 1}},
                               {"irregular": False, "level": {"kind": "fixed_intercept"},
                                "regression": {"columns": ["x"], "coefficients": "time_varying"}}])
def test_a_single_stochastic_element_keeps_irregular_off(d):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not engine.ModelSpec.from_dict(d).irregular


COMBOS = {
    "dummy": {"level": {"kind": "local_linear_trend"}, "seasonal": [{"period": 12}]},
    "dummy_deterministic": {"level": {"kind": "local_level"},
                            "seasonal": [{"period": 4, "stochastic": False}]},
    "trig": {"level": {"kind": "local_level"},
             "seasonal": [{"period": 12, "form": "trig", "harmonics": 3}]},
    "two_trig": {"level": {"kind": "local_level"},
                 "seasonal": [{"period": 12, "form": "trig", "harmonics": 3},
                              {"period": 4, "form": "trig", "harmonics": 1}]},
    "two_trig_one_deterministic": {"level": {"kind": "smooth_trend"},
                                   "seasonal": [{"period": 12, "form": "trig", "harmonics": 2,
                                                 "stochastic": False},
                                                {"period": 4, "form": "trig"}]},
    "trig_listed_before_dummy": {"level": {"kind": "local_level"},
                                 "seasonal": [{"period": 12, "form": "trig", "harmonics": 3},
                                              {"period": 4, "form": "dummy"}]},
    "fractional_trig": {"level": {"kind": "local_level"},
                        "seasonal": [{"period": 365.25, "form": "trig", "harmonics": 2}]},
    "cycle_damped": {"level": {"kind": "local_level"}, "cycle": {"damped": True, "stochastic": True}},
    "cycle_undamped": {"level": {"kind": "local_level"}, "cycle": {"damped": False, "stochastic": True}},
    "cycle_deterministic": {"level": {"kind": "local_level"}, "cycle": {"damped": True, "stochastic": False}},
    "ar2": {"level": {"kind": "local_level"}, "autoregressive": {"order": 2}},
    "ar2_only": {"autoregressive": {"order": 2}},
    "no_irregular": {"irregular": False, "level": {"kind": "local_linear_trend"},
                     "seasonal": [{"period": 12}]},
    "everything": {"level": {"kind": "local_linear_trend"},
                   "seasonal": [{"period": 12}, {"period": 4, "form": "trig"}],
                   "cycle": {"damped": True}, "autoregressive": {"order": 2},
                   "regression": {"columns": ["petrol_price", "law"]}},
    "regression_parameters": {"level": {"kind": "local_level"}, "seasonal": [{"period": 12}],
                              "regression": {"columns": ["petrol_price", "law"],
                                             "coefficients": "parameters"}},
    "regression_state": {"level": {"kind": "local_level"}, "seasonal": [{"period": 12}],
                         "regression": {"columns": ["petrol_price", "law"], "coefficients": "state"}},
}


@pytest.mark.parametrize("name", list(COMBOS))
def test_param_names_combinations(name):
    spec = COMBOS[name]
    y, exog = seatbelts()
    mod = sm_model(spec, y, exog if "regression" in spec else None)
    assert engine.param_names(spec) == list(mod.param_names)


def test_param_names_time_varying_regression():
    names = engine.param_names({"level": {"kind": "local_level"},
                                "regression": {"columns": ["petrol_price", "law"],
                                               "coefficients": "time_varying"}})
    assert names == ["sigma2.irregular", "sigma2.level", "sigma2.petrol_price", "sigma2.law"]


# -- validation -----------------------------------------------------------------------------
INVALID = [
    ({"level": {"kind": "local level"}}, "level.kind"),
    ({"level": {"kind": "quadratic_trend"}}, "level.kind"),
    ({"level": 3}, "level"),
    ({"levels": {"kind": "local_level"}}, "levels"),
    ({"seasonal": [{"period": 1}]}, "seasonal[0].period"),
    ({"seasonal": [{"period": 12}, {"period": 1.5, "form": "trig"}]}, "seasonal[1].period"),
    ({"seasonal": [{"period": float("nan"), "form": "trig"}]}, "seasonal[0].period"),
    ({"seasonal": [{"period": 12, "form": "trig", "harmonics": 7}]}, "seasonal[0].harmonics"),
    ({"seasonal": [{"period": 12, "form": "trig", "harmonics": 0}]}, "seasonal[0].harmonics"),
    ({"seasonal": [{"period": 12, "harmonics": 2}]}, "seasonal[0].harmonics"),
    ({"seasonal": [{"period": 12.5}]}, "seasonal[0].period"),
    ({"seasonal": [{"period": 12, "form": "fourier"}]}, "seasonal[0].form"),
    ({"seasonal": [{"form": "dummy"}]}, "seasonal[0]"),
    ({"seasonal": [{"period": 12}, {"period": 12}]}, "seasonal"),
    ({"cycle": {"period_bounds": [10, 5]}}, "cycle.period_bounds"),
    ({"cycle": {"period_bounds": [1, 5]}}, "cycle.period_bounds"),
    ({"autoregressive": {"order": -1}}, "autoregressive.order"),
    ({"autoregressive": {"order": 1.5}}, "autoregressive.order"),
    ({"regression": {"columns": []}, "level": "local_level"}, "regression.columns"),
    ({"regression": {"columns": ["x", "x"]}}, "regression.columns"),
    ({"regression": {"columns": ["x"], "coefficients": "random"}}, "regression.coefficients"),
    ({"priors": ["sigma2.level"]}, "priors"),
    # a field a component does not have is refused, not ignored (the model would differ from the one asked for)
    ({"level": {"kind": "local_level", "stochastic_level": False}}, "level.stochastic_level"),
    ({"level": "local_level", "seasonal": [{"period": 9, "form": "trig", "n_harmonics": 3}]}, "seasonal[0].n_harmonics"),
    ({"level": "local_level", "cycle": {"period_bound": [6, 20]}}, "cycle.period_bound"),
    ({"level": "local_level", "cycle": 12}, "cycle"),
    ({"level": "local_level", "autoregressive": {"order": 1, "lags": 2}}, "autoregressive.lags"),
    ({"level": "local_level", "regression": {"columns": ["x"], "time_varying": True}}, "regression.time_varying"),
]


@pytest.mark.parametrize("d,field", INVALID, ids=[f for _, f in INVALID])
def test_invalid_spec_names_the_field(d, field):
    with pytest.raises(ValueError) as info:
        engine.ModelSpec.from_dict(d)
    assert f"'{field}'" in str(info.value)


@pytest.mark.parametrize("d", [{"irregular": False}, {"irregular": False, "seasonal": []},
                               {"irregular": False, "autoregressive": {"order": 0}}])
def test_empty_model_is_refused(d):
    """No component at all is a mistake to report, not a model to complete (statsmodels would
    silently fit white noise around zero)."""
    with pytest.raises(ValueError, match="empty") as info:
        engine.ModelSpec.from_dict(d)
    assert "'irregular'" in str(info.value)


def test_not_a_dict_is_refused():
    with pytest.raises(ValueError, match="dict"):
        engine.ModelSpec.from_dict(["local_level"])


# Malformed values of every field: each is a ValueError naming the field (never a TypeError or
# KeyError from deep inside), so that the page can show it as it is.
MALFORMED = [
    ({"level": "local_level", "seasonal": [{"period": None}]}, "seasonal[0].period"),
    ({"level": "local_level", "seasonal": [{"period": "12"}]}, "seasonal[0].period"),
    ({"level": "local_level", "seasonal": [{"period": 10 ** 400}]}, "seasonal[0].period"),
    ({"level": "local_level", "seasonal": 12}, "seasonal"),
    ({"level": "local_level", "seasonal": [{"period": 12, "form": ["trig"]}]}, "seasonal[0].form"),
    ({"level": "local_level", "seasonal": [{"period": 12, "form": "trig", "harmonics": "3"}]}, "seasonal[0].harmonics"),
    ({"level": "local_level", "seasonal": [{"period": 12, "form": "trig", "harmonics": [3]}]}, "seasonal[0].harmonics"),
    ({"level": "local_level", "seasonal": [{"period": 12, "stochastic": "false"}]}, "seasonal[0].stochastic"),
    ({"level": {"kind": ["local_level"]}}, "level.kind"),
    ({"level": {"kind": {"a": 1}}}, "level.kind"),
    ({"level": "local_level", "irregular": "no"}, "irregular"),
    ({"level": "local_level", "cycle": {"period_bounds": 6}}, "cycle.period_bounds"),
    ({"level": "local_level", "cycle": {"period_bounds": [6, None]}}, "cycle.period_bounds"),
    ({"level": "local_level", "cycle": {"period_bounds": ["a", 7]}}, "cycle.period_bounds"),
    ({"level": "local_level", "cycle": {"period_bounds": [6, 20], "damped": "yes"}}, "cycle.damped"),
    ({"level": "local_level", "autoregressive": {"order": None}}, "autoregressive.order"),
    ({"level": "local_level", "autoregressive": {"order": "2"}}, "autoregressive.order"),
    ({"level": "local_level", "regression": 5}, "regression.columns"),
    ({"level": "local_level", "regression": {"columns": [["x"]]}}, "regression.columns"),
    ({"level": "local_level", "regression": {"columns": ["x"], "coefficients": ["state"]}}, "regression.coefficients"),
    ({"level": "local_level", "priors": {"x": 5}}, "priors.x"),
    ({"level": "local_level", "priors": {"sigma2.level": {"dist": "half_normal", "scale": [1]}}},
     "priors.sigma2.level"),
    ({"level": "local_level", "priors": {"sigma2.level": {"dist": "half_normal", "scale": -5}}}, "priors.sigma2.level"),
    ({"level": "local_level", "priors": {"sigma2.nope": {"dist": "half_normal"}}}, "priors.sigma2.nope"),
    ({"level": "local_level", "priors": {"sigma2.level": {"dist": ["half_normal"]}}}, "priors.sigma2.level"),
    ({"level": "local_level", "priors": {"sigma2.level": {"dist": "gaussian"}}}, "priors.sigma2.level"),
    ({"level": "local_level", 1: 2}, "1"),
]


@pytest.mark.parametrize("d,field", MALFORMED, ids=[f"{f}-{i}" for i, (_, f) in enumerate(MALFORMED)])
def test_malformed_values_are_value_errors_naming_the_field(d, field):
    with pytest.raises(ValueError) as info:
        engine.ModelSpec.from_dict(d)
    assert f"spec field '{field}'" in str(info.value)


def test_a_loaded_prior_is_validated_with_the_spec():
    """A prior that cannot be used (a negative scale) is refused when the spec is read, naming the
    parameter; priors that need the data ('auto') wait for it, and an AR(1) prior may name ar.L1."""
    with pytest.raises(ValueError, match=r"'priors\.sigma2\.level'.*scale.*positive"):
        engine.ModelSpec.from_json(json.dumps({"level": "local_level", "priors": {
            "sigma2.level": {"dist": "half_normal", "scale": -5}}}))
    spec = engine.ModelSpec.from_dict({"level": "local_level", "autoregressive": 1, "priors": {
        "sigma2.level": {"dist": "inverse_gamma", "concentration": 3, "rate": "auto"},
        "ar.L1": {"dist": "uniform", "low": 0, "high": 1}}})
    assert dict(spec.priors)["ar.L1"] == (("dist", "uniform"), ("high", 1), ("low", 0))


@pytest.mark.parametrize("d,field", [
    ({"level": "local_level", "seasonal": [{"period": 2500}]}, "seasonal[0].period"),
    ({"level": "local_level", "seasonal": [{"period": 1_000_000_000}]}, "seasonal[0].period"),
    ({"level": "local_level", "seasonal": [{"period": 1e9, "form": "trig"}]}, "seasonal[0].harmonics"),
    ({"level": "local_level", "seasonal": [{"period": 5000, "form": "trig", "harmonics": 600}, {"period": 7}]},
     "seasonal[0].harmonics"),   # numbered as given, although dummy seasonals come first in the state
    ({"irregular": True, "autoregressive": {"order": 200_000}}, "autoregressive.order"),
    ({"level": "local_level", "regression": {"columns": [f"x{i}" for i in range(1001)], "coefficients": "state"}},
     "regression.columns"),
])
def test_more_states_than_the_engine_holds_are_refused(d, field):
    """A period of 1e9 asked for a 7 EiB covariance: the state count is capped, before anything is
    built, with a message pointing at the part that makes the model big."""
    with pytest.raises(ValueError) as info:
        engine.ModelSpec.from_dict(d)
    assert f"spec field '{field}'" in str(info.value) and f"at most {MAX_STATES}" in str(info.value)


def test_the_state_cap_admits_yearly_seasonals_of_daily_data():
    """Daily data with a 365-day seasonal in either form (364 states each), plus a weekly one, a
    trend, a cycle and an AR(30), fits under the cap; one state more than the cap does not."""
    daily = {"level": "local_linear_trend", "cycle": True, "autoregressive": 30,
             "seasonal": [{"period": 7}, {"period": 365}, {"period": 365.25, "form": "trig"}]}
    assert engine.ModelSpec.from_dict(daily).n_states == 2 + 6 + 364 + 364 + 2 + 30 <= MAX_STATES
    at_cap = {"irregular": True, "autoregressive": MAX_STATES}
    assert engine.ModelSpec.from_dict(at_cap).n_states == MAX_STATES
    with pytest.raises(ValueError, match="autoregressive.order"):
        engine.ModelSpec.from_dict(dict(at_cap, level="local_level"))


def test_diffuse_states_and_history_checked_against_series_length():
    """check_length: the states with unknown starting values (all but AR's) must be fewer than the
    observations, and the covariance history kept by filtering and smoothing (n_obs × states²
    float64s) must fit MAX_HISTORY_BYTES."""
    spec = engine.ModelSpec.from_dict({"level": "local_level", "autoregressive": 3,
                                       "seasonal": [{"period": 9.5, "form": "trig"}, {"period": 12}]})
    assert spec.n_states - spec.ar_order == 1 + 8 + 11
    spec.check_length(21)
    with pytest.raises(ValueError, match=r"seasonal\[0\]\.period.*20 states.*\(11 in seasonal\[0\]\).*20 obs"):
        spec.check_length(20)   # numbered in the spec's order: dummy seasonals first
    spec.check_data(6)   # check_data also sees forecast horizons: no such check there
    # a period longer than the series is fine with a few harmonics (4 states), not as a dummy
    engine.ModelSpec.from_dict({"level": "local_level", "seasonal": [
        {"period": 365.25, "form": "trig", "harmonics": 2}]}).check_length(192)
    with pytest.raises(ValueError, match=r"seasonal\[0\]\.period"):
        engine.ModelSpec.from_dict({"level": "local_level", "seasonal": [{"period": 365}]}).check_length(192)
    births = engine.ModelSpec.from_dict({"level": "local_level", "seasonal": [
        {"period": 7}, {"period": 365.25, "form": "trig", "harmonics": 3}]})   # the catalogue's suggestion
    births.check_length(3652)
    yearly = engine.ModelSpec.from_dict({"level": "local_level", "seasonal": [{"period": 7}, {"period": 365}]})
    assert 8 * 3652 * yearly.n_states ** 2 > MAX_HISTORY_BYTES >= 8 * 3652 * births.n_states ** 2
    with pytest.raises(ValueError, match=r"seasonal\[1\]\.period.*371 states.*GiB"):
        yearly.check_length(3652)
    yearly.check_length(MAX_HISTORY_BYTES // (8 * yearly.n_states ** 2))   # a shorter series fits


def test_ar_order_checked_against_series_length():
    spec = {"autoregressive": {"order": 5}}
    params = [1.0, 1.0, 0.1, 0.1, 0.1, 0.1, 0.1]
    y = np.arange(5.0)
    with pytest.raises(ValueError, match=r"autoregressive\.order"):
        engine.loglik(spec, params, y)
    with pytest.raises(ValueError, match=r"autoregressive\.order"):
        engine.ModelSpec.from_dict(spec).check_data(5)
    engine.ModelSpec.from_dict(spec).check_data(6)  # order < length is fine


def test_regression_column_missing_from_dataframe():
    y, exog = seatbelts(["petrol_price"])
    spec = {"level": "local_level", "regression": {"columns": ["petrol_price", "law"]}}
    params = [1e-3, 1e-3, 0.0, 0.0]
    with pytest.raises(ValueError, match=r"regression\.columns") as info:
        engine.loglik(spec, params, y, exog)
    assert "law" in str(info.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_exog_is_refused(bad):
    y, exog = seatbelts()
    exog = exog.astype(float)
    exog.loc[7, "law"] = bad
    spec = {"level": "local_level", "regression": {"columns": ["petrol_price", "law"]}}
    params = [1e-3, 1e-3, 0.0, 0.0]
    with pytest.raises(ValueError, match="law") as info:
        engine.loglik(spec, params, y, exog)
    assert "7" in str(info.value)
    with pytest.raises(ValueError, match="law"):
        engine.loglik(spec, params, y, exog.to_numpy())


def test_regression_without_exog_is_refused():
    y, _ = seatbelts()
    spec = {"level": "local_level", "regression": {"columns": ["petrol_price"]}}
    with pytest.raises(ValueError, match=r"regression\.columns"):
        engine.loglik(spec, [1e-3, 1e-3, 0.0], y)


def test_dataframe_exog_is_picked_by_column_name():
    """A DataFrame with extra columns in another order gives the same answer as the right array."""
    y, exog = seatbelts(["law", "kms", "petrol_price"])
    spec = {"level": "local_level", "regression": {"columns": ["petrol_price", "law"]}}
    params = [1e-3, 1e-3, -0.5, -0.2]
    a = engine.loglik(spec, params, y, exog)
    b = engine.loglik(spec, params, y, exog[["petrol_price", "law"]].to_numpy())
    assert float(a) == pytest.approx(float(b), rel=1e-13)


def test_bad_parameters_are_refused():
    spec = {"level": "local_level"}
    y = air()
    with pytest.raises(ValueError):
        engine.loglik(spec, [1.0, 2.0, 3.0], y)
    with pytest.raises(ValueError):
        engine.loglik(spec, {"sigma2.irregular": 1.0}, y)
    with pytest.raises(ValueError):
        engine.loglik(spec, {"sigma2.irregular": 1.0, "sigma2.level": 1.0, "sigma2.trend": 1.0}, y)


def test_infinite_y_is_refused():
    y = air().copy()
    y[3] = np.inf
    with pytest.raises(ValueError, match="infinite"):
        engine.loglik({"level": "local_level"}, [1e-3, 1e-3], y)


def test_unknown_filter_is_refused():
    with pytest.raises(ValueError, match="filter"):
        engine.loglik({"level": "local_level"}, [1e-3, 1e-3], air(), filter="square-root")


def test_dataframe_series_input():
    """A pandas Series is accepted as y."""
    s = pd.Series(air())
    a = engine.loglik({"level": "local_level"}, [1e-3, 1e-3], s)
    b = engine.loglik({"level": "local_level"}, [1e-3, 1e-3], air())
    assert float(a) == float(b)
