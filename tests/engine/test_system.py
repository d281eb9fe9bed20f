"""The layout of a spec's state vector: read from a trace of its blocks, in agreement with the
system it builds, and without running or compiling anything."""

from __future__ import annotations

import logging

import jax
import numpy as np
import pytest

import engine
from engine.components import ComponentSelector, component_selectors
from engine.system import block_structure, build_system, check_finite, layout

EVERY_BLOCK = {"level": {"kind": "local_linear_trend"},
               "seasonal": [{"period": 5}, {"period": 9, "form": "trig", "harmonics": 3}],
               "cycle": {"period_bounds": [6, 20], "damped": True}, "autoregressive": {"order": 2}}


def _params(spec):
    p = {n: 0.3 for n in engine.param_names(spec)}
    p.update({"frequency.cycle": 0.6, "damping.cycle": 0.9, "ar.L1": 0.5, "ar.L2": -0.2})
    return p


def test_block_structure_agrees_with_the_built_system():
    spec = engine.ModelSpec.from_dict(EVERY_BLOCK)
    system = build_system(spec, _params(spec))
    structure = block_structure(spec)
    assert [name for name, *_ in structure] == ["level", "seasonal_5", "freq_seasonal_9(3)", "cycle", "autoregressive"]
    np.testing.assert_array_equal(np.concatenate([design for *_, design in structure]), system.design)
    diffuse = np.concatenate([np.full(k, d, float) for _, k, _, d, _ in structure])
    np.testing.assert_array_equal(np.diag(system.init_diffuse), diffuse)
    lay = layout(spec)
    assert lay.n_states == system.transition.shape[0] == 2 + 4 + 6 + 2 + 2
    assert lay.observed_states == tuple(int(i) for i in np.flatnonzero(system.design))


def test_layout_of_a_new_spec_compiles_nothing(caplog):
    spec = engine.ModelSpec.from_dict(dict(EVERY_BLOCK, seasonal=[{"period": 23}]))   # not cached yet
    with caplog.at_level(logging.DEBUG, logger="jax"), jax.log_compiles():
        lay = layout(spec)
    assert lay.n_states == 2 + 22 + 2 + 2
    assert "Compiling" not in caplog.text


def test_component_selectors_split_the_design_row():
    """Every observed state belongs to exactly one weighted component, so the weighted components
    sum to the signal Z_t α_t; the trend is the slope state alone, with unit weight."""
    spec = engine.ModelSpec.from_dict(dict(EVERY_BLOCK, regression={"columns": ["x", "z"], "coefficients": "time_varying"}))
    system = build_system(spec, {**_params(spec), "sigma2.x": 0.1, "sigma2.z": 0.1}, np.ones((10, 2)))
    selectors = component_selectors(spec)
    assert [s.name for s in selectors] == ["level", "trend", "seasonal_5", "freq_seasonal_9(3)", "cycle",
                                           "autoregressive", "regression"]
    weighted = np.zeros(layout(spec).n_states)
    for s in selectors:
        if s.weighted:
            weighted[list(s.states)] += 1
    np.testing.assert_array_equal(weighted, np.any(np.asarray(system.design) != 0, axis=0))
    level_start = {name: start for name, start, *_ in layout(spec).blocks}["level"]
    assert selectors[1] == ComponentSelector("trend", (level_start + 1,), False)


def test_component_selectors_of_a_fixed_coefficient_regression_and_of_no_component():
    spec = {"level": {"kind": "local_level"}, "regression": {"columns": ["x"]}}
    assert [tuple(s) for s in component_selectors(spec)] == [("level", (0,), True), ("regression", (), True)]
    assert component_selectors({"irregular": True}) == ()


def test_check_finite_names_the_first_bad_value_and_the_fix():
    check_finite(np.array([1.0, np.nan, 2.0]), "y")                       # missing values are allowed
    with pytest.raises(ValueError, match=r"y has an infinite value at index 2; use NaN"):
        check_finite(np.array([1.0, np.nan, -np.inf]), "y")
    with pytest.raises(ValueError, match=r"exog has a NaN/inf at row 1, column 'law'; regressors must be finite"):
        check_finite(np.array([[1.0, 2.0], [3.0, np.nan]]), "exog", regressors=True, dims=("row", "column"),
                     labels={"column": ("petrol_price", "law")})
    with pytest.raises(ValueError, match=r"Y has an infinite value at series 'b', time step 0"):
        check_finite(np.array([[1.0, 2.0], [np.inf, 3.0]]), "Y", dims=("series", "time step"), labels={"series": ["a", "b"]})
