"""The spec's `regimes` field, its parameters, their priors and transforms."""

import numpy as np
import pytest

import engine
from engine import regimes, transforms
from engine.spec import ModelSpec


def test_regimes_round_trip_and_parameter_names():
    spec = ModelSpec.from_dict({"level": "local_linear_trend", "seasonal": [{"period": 4}],
                                "regimes": {"seasonal_break": True, "outlier": True, "level_shift": False}})
    assert spec.regimes == ("outlier", "seasonal_break")
    assert ModelSpec.from_json(spec.to_json()) == spec
    assert engine.param_names(spec)[-4:] == ["prob.outlier", "scale.outlier", "prob.seasonal_break",
                                             "scale.seasonal_break"]
    assert regimes.regime_names(spec) == ("normal", "outlier", "seasonal_break")
    assert ModelSpec.from_dict({"level": "local_level", "regimes": {}}).regimes == ()


@pytest.mark.parametrize("bad, field", [
    ({"level": "local_level", "regimes": {"slope_shift": True}}, "regimes.slope_shift"),
    ({"regimes": {"level_shift": True}}, "regimes.level_shift"),
    ({"level": "local_level", "regimes": {"seasonal_break": True}}, "regimes.seasonal_break"),
    ({"regimes": {"outliers": True}}, "regimes.outliers"),
    ({"regimes": ["outlier"]}, "regimes"),
    ({"regimes": {"outlier": "yes"}}, "regimes.outlier"),
])
def test_bad_regimes_are_refused_by_field(bad, field):
    with pytest.raises(ValueError, match=f"spec field '{field}'"):
        ModelSpec.from_dict(bad)


def test_inflation_pattern_follows_the_layout():
    spec = ModelSpec.from_dict({"level": "local_linear_trend", "seasonal": [{"period": 4}, {"period": 6, "form": "trig", "harmonics": 1}],
                                "regimes": {"outlier": True, "level_shift": True, "slope_shift": True,
                                            "seasonal_break": True}})
    pattern = regimes.inflation_pattern(spec)
    # states: level, slope, dummy(3), trig(2); regimes: normal, outlier, level, slope, seasonal
    want = np.zeros((7, 5))
    want[0, 2] = want[1, 3] = 1.0
    want[[2, 5, 6], 4] = 1.0
    np.testing.assert_array_equal(pattern, want)


def test_regime_priors_defaults_and_support():
    spec = {"level": "local_level", "regimes": {"outlier": True}}
    y = np.cumsum(np.random.default_rng(0).normal(size=50))
    pri = engine.default_priors(spec, y)
    assert pri["prob.outlier"] == {"dist": "beta", "concentration1": 1.0, "concentration0": 99.0}
    assert pri["scale.outlier"]["dist"] == "log_normal"
    assert np.isclose(np.exp(pri["scale.outlier"]["loc"]), 25 * np.var(np.diff(y)))
    with pytest.raises(ValueError, match="prob.outlier"):
        ModelSpec.from_dict(dict(spec, priors={"prob.outlier": {"dist": "normal", "loc": 0, "scale": 1}}))
    with pytest.raises(ValueError, match="scale.outlier"):
        ModelSpec.from_dict(dict(spec, priors={"scale.outlier": {"dist": "uniform", "low": -1, "high": 1}}))
    ModelSpec.from_dict(dict(spec, priors={"prob.outlier": {"dist": "uniform", "low": 0, "high": 0.1}}))


def test_transforms_map_regime_parameters_into_their_ranges():
    spec = ModelSpec.from_dict({"level": "local_level", "regimes": {"outlier": True, "level_shift": True}})
    scale = transforms.scales(spec, np.cumsum(np.random.default_rng(1).normal(size=30)))
    values = np.array([1.0, 0.1, 0.02, 40.0, 0.003, 12.0])
    u = transforms.unconstrain(spec, values, scale)
    np.testing.assert_allclose(transforms.constrain(spec, u, scale), values, rtol=1e-12)
    extreme = np.asarray(transforms.constrain(spec, np.array([0.0, 0.0, 30.0, 5.0, -30.0, -5.0]), scale))
    assert 0 < extreme[2] < 1 and 0 < extreme[4] < 1 and extreme[3] > 0 and extreme[5] > 0
