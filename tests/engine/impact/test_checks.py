"""Checks of an intervention analysis: pre-period calibration, placebo interventions, controls
that break at the intervention."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import engine
from engine import impact

SPEC = {"irregular": True, "level": {"kind": "local_level"}}


def _local_level(seed: int, n: int, level_sd: float = 0.3):
    rng = np.random.default_rng(seed)
    return 10 + np.cumsum(rng.normal(0, level_sd, n)) + rng.normal(0, 1, n)


def test_pre_period_check_passes_the_true_model_and_fails_a_model_that_misses_seasonality():
    y = _local_level(1, 80)
    good = engine.causal_impact(SPEC, y, intervention=60, posterior={"sigma2.irregular": 1.0, "sigma2.level": 0.09})
    check = impact.pre_period_check(good)
    assert check.ok, check.message
    assert check.n == 59 and 0.85 <= check.coverage <= 1.0
    # a strong weekly pattern the model has no component for, with a nearly fixed level
    seasonal = y + 4 * np.sin(2 * np.pi * np.arange(80) / 7)
    bad = engine.causal_impact(SPEC, seasonal, intervention=60,
                               posterior={"sigma2.irregular": 1.0, "sigma2.level": 0.01})
    check = impact.pre_period_check(bad)
    assert not check.ok and check.coverage < 0.8
    assert "not calibrated" in check.message


def test_placebo_interventions_find_nothing_in_a_series_without_effects():
    """Three fake interventions in the pre-period of a series with no effect: MAP refits find none
    (a calibrated analysis finds one 5% of the time)."""
    y = _local_level(2, 90)
    # min_pre = 50: the fits have the shape of the regressor check's below (one compiled fit for both)
    res = impact.placebo_test(SPEC, y, intervention=75, n_placebos=3, draws=100, min_pre=50)
    assert len(res.positions) == 3 and res.positions[0] == 50 and res.positions[-1] == 75 - res.length
    assert res.length == 15 and res.expected == pytest.approx(0.05)
    assert res.found.sum() == 0 and res.fraction_found == 0.0
    assert np.all(res.p_no_effect > 0.025)
    assert "0 of 3" in res.message and "consistent" in res.message


def test_placebo_refuses_a_pre_period_too_short():
    with pytest.raises(ValueError, match="placebo_test"):
        impact.placebo_test(SPEC, np.arange(20.0), intervention=10, length=8)


def test_a_control_that_breaks_at_the_intervention_is_flagged():
    """Two controls: one shifts by 8 noise sd at the intervention (the intervention moved it), the
    other does not. Only the first is flagged, with a warning naming it."""
    rng = np.random.default_rng(3)
    n, n_pre = 70, 50
    steady = 5 + np.cumsum(rng.normal(0, 0.1, n)) + rng.normal(0, 0.5, n)
    moved = 5 + np.cumsum(rng.normal(0, 0.1, n)) + rng.normal(0, 0.5, n)
    moved[n_pre:] += 4.0
    frame = pd.DataFrame({"steady": steady, "moved": moved})
    with pytest.warns(impact.RegressorBreakWarning, match="moved"):
        check = impact.regressor_check(frame, intervention=n_pre, draws=100)
    assert check.columns == ["steady", "moved"]
    assert list(check.affected) == [False, True]
    assert check.relative[1] > 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet = impact.regressor_check(frame[["steady"]], intervention=n_pre, draws=100)
    assert not quiet.affected.any() and "no control" in quiet.message
