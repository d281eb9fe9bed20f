"""The batched exact-diffuse filter: log-likelihoods and anomaly counts, late starts moved to
the end where that keeps the likelihood.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import engine
from engine.fleet.filtering import batch_innovations, late_starts_to_end, start_moves_to_end
from engine.model import as_param_vector

from .cases import SPEC, NAMES


def test_filter_equals_loglik_and_counts_anomalies(fleet):
    params = {n: 0.5 for n in NAMES}
    Y = fleet[:4].copy()
    Y[1, 30] += 50.0   # one gross outlier
    res = engine.fit_many(SPEC, Y, method="filter", params=params, keep=True)
    for i in range(4):
        assert res.table.loc[i, "loglik"] == pytest.approx(float(engine.loglik(SPEC, params, Y[i])), rel=1e-10)
        f = engine.filter_series(SPEC, params, Y[i])
        z = np.asarray(f.innovation) / np.sqrt(np.asarray(f.innov_var))
        assert res.table.loc[i, "n_anomalies"] == int(np.sum((np.asarray(f.kind) == 1) & (np.abs(z) > 3)))
    assert res.table.loc[1, "n_anomalies"] >= 1
    # per-series parameters from a table; the kept belief continues online exactly
    table = pd.DataFrame({"series": ["0", "1", "2", "3"], **{n: [0.5, 1.0, 2.0, 0.5] for n in NAMES}})
    per = engine.fit_many(SPEC, Y, method="filter", params=table).table
    assert per.loc[2, "loglik"] == pytest.approx(float(engine.loglik(SPEC, {n: 2.0 for n in NAMES}, Y[2])), rel=1e-10)
    online = engine.OnlineFilter(SPEC, params, y_history=Y[0], belief=res.beliefs["0"])
    batch = engine.OnlineFilter(SPEC, params, y_history=Y[0])
    np.testing.assert_allclose(online.update(3.0).loglik, batch.update(3.0).loglik, rtol=1e-9)


# One spec per block kind: the late start moved to the end must leave the exact-diffuse
# likelihood of the series as given unchanged (where `start_moves_to_end` allows it).
BLOCK_SPECS = {
    "local_level": {"irregular": True, "level": {"kind": "local_level"}},
    "local_linear_trend": {"irregular": True, "level": {"kind": "local_linear_trend"}},
    "smooth_trend": {"irregular": True, "level": {"kind": "smooth_trend"}},
    "deterministic_trend": {"irregular": True, "level": {"kind": "deterministic_trend"}},
    "dummy_seasonal": {"irregular": True, "level": {"kind": "local_level"},
                       "seasonal": [{"period": 4, "form": "dummy", "stochastic": True}]},
    "trig_seasonal": {"irregular": True, "level": {"kind": "local_linear_trend"},
                      "seasonal": [{"period": 6, "form": "trig", "harmonics": 3, "stochastic": True}]},
    "undamped_cycle": {"irregular": True, "level": {"kind": "local_level"},
                       "cycle": {"period_bounds": [6, 48], "damped": False, "stochastic": True}},
    "autoregressive": {"irregular": True, "level": {"kind": "local_level"}, "autoregressive": {"order": 2}},
}
PARAM_VALUES = {"frequency.cycle": 0.4, "damping.cycle": 0.8, "ar.L1": 0.5, "ar.L2": -0.3}


def _late_start_series(n_time=70, lead=9, seed=0):
    y = np.cumsum(np.random.default_rng(seed).normal(size=n_time)) + np.sin(np.arange(n_time))
    y[:lead] = np.nan
    y[30] = np.nan
    return y


def _batched_loglik(spec, params, y):
    spec = engine.ModelSpec.from_dict(spec)
    P = jnp.asarray(as_param_vector(spec, params))[None]
    return float(jnp.sum(batch_innovations(spec, P, jnp.asarray(y)[None], None)[0]))


@pytest.mark.parametrize("kind", sorted(BLOCK_SPECS))
def test_late_start_moved_to_the_end_keeps_the_likelihood(kind):
    spec = BLOCK_SPECS[kind]
    assert start_moves_to_end(engine.ModelSpec.from_dict(spec))
    params = {n: PARAM_VALUES.get(n, 0.7) for n in engine.param_names(spec)}
    y = _late_start_series()
    moved = late_starts_to_end(y[None])[0]
    np.testing.assert_array_equal(moved[:-9], y[9:])
    assert np.isnan(moved[-9:]).all()
    ref = float(engine.loglik(spec, params, y))
    assert _batched_loglik(spec, params, moved) == pytest.approx(ref, rel=1e-9)


def test_late_start_stays_with_a_damped_cycle_or_regression():
    """A damped cycle's diffuse prior shrinks while missing: its likelihood changes, so no move."""
    spec = {"irregular": True, "level": {"kind": "local_level"},
            "cycle": {"period_bounds": [6, 48], "damped": True, "stochastic": True}}
    params = {n: PARAM_VALUES.get(n, 0.7) for n in engine.param_names(spec)}
    y = _late_start_series()
    ref = float(engine.loglik(spec, params, y))
    assert abs(_batched_loglik(spec, params, late_starts_to_end(y[None])[0]) - ref) > 1e-3 * abs(ref)
    assert not start_moves_to_end(engine.ModelSpec.from_dict(spec))
    regression = {"irregular": True, "level": {"kind": "local_level"}, "regression": {"columns": ["x"]}}
    assert not start_moves_to_end(engine.ModelSpec.from_dict(regression))
