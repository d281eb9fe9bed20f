"""fit_many, local backend: agreement with single-series fits, batch-size invariance, inputs, failures."""

from __future__ import annotations

import threading

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import engine
from engine.bayes import log_posterior
from engine.model import as_param_vector
from engine.fleet import Batch, FleetJob, as_series_table, default_batch_size, run_batch
from engine.fleet.coordinates import Coordinates, log_prior, make_coordinates, member_args, to_params
from engine.fleet.filtering import batch_innovations, late_starts_to_end, start_moves_to_end
from engine.fleet.table import BATCH_COV_ENTRIES
from engine.system import layout

SPEC = {"irregular": True, "level": {"kind": "local_level"},
        "seasonal": [{"period": 6, "form": "trig", "harmonics": 1, "stochastic": True}]}
NAMES = engine.param_names(SPEC)
AIR = {"level": {"kind": "local_linear_trend"}, "seasonal": [{"period": 12}]}   # 13 states


@pytest.fixture(scope="module")
def fleet():
    fl = engine.make_fleet(12, 60, seed=3, period=6)
    Y = fl.Y.copy()
    Y[5] = np.nan          # no data: fails alone
    Y[8, 45:] = np.nan     # a ragged end
    return Y


@pytest.fixture(scope="module")
def mle3(fleet):
    return engine.fit_many(SPEC, fleet, method="mle", batch_size=3)


def test_mle_agrees_with_fit_mle_per_series(fleet, mle3):
    table = mle3.table
    assert table.loc[5, "status"] == "failed" and "no observations" in table.loc[5, "message"]
    assert (table.drop(index=5)["status"] == "ok").all()
    for i in (0, 3, 8):
        ref = engine.fit_mle(SPEC, fleet[i])
        # the same optimum: ours is never worse, and equal to 1e-6 relative
        assert table.loc[i, "loglik"] >= ref.loglik - 1e-6 * abs(ref.loglik)
        assert table.loc[i, "loglik"] == pytest.approx(ref.loglik, rel=1e-6)
        params = {n: table.loc[i, n] for n in NAMES}
        assert table.loc[i, "loglik"] == pytest.approx(float(engine.loglik(SPEC, params, fleet[i])), rel=1e-9)


def test_results_do_not_depend_on_batch_size(fleet, mle3):
    other = engine.fit_many(SPEC, fleet, method="mle", batch_size=5).table
    a = mle3.table
    assert (a["status"] == other["status"]).all() and (a["n_obs"] == other["n_obs"]).all()
    np.testing.assert_allclose(a["loglik"], other["loglik"], rtol=1e-9)
    # parameters: equal where the likelihood identifies them (a variance at its zero
    # boundary is ~1e-10 of the data scale in both, but not the same tiny number)
    scale = np.nanvar(np.diff(fleet, axis=1))
    for n in NAMES:
        diff = np.abs(a[n] - other[n]).to_numpy()
        ok = np.isnan(diff) | (diff <= 1e-5 * np.abs(a[n].to_numpy()) + 1e-7 * scale)
        assert ok.all(), (n, diff)


def test_default_batch_size_follows_the_covariance_size():
    """The largest multiple of 8 with at most BATCH_COV_ENTRIES covariance entries (series ×
    states²), in [16, 256], and no more than an even share of the series per worker."""
    sizes = {}
    for spec in ({"level": {"kind": "local_level"}}, engine.make_fleet(1, 30).spec, AIR):
        spec = engine.ModelSpec.from_dict(spec)
        m = layout(spec).n_states
        size = default_batch_size(spec, 10_000, 2)
        assert size % 8 == 0 and 16 <= size <= 256
        if size < 256:
            assert size * m * m <= BATCH_COV_ENTRIES < (size + 8) * m * m
        sizes[m] = size
    assert sizes[1] == 256 and sizes[13] < sizes[6] < 256
    assert default_batch_size(engine.ModelSpec.from_dict(AIR), 30, 2) == 15     # spread over the workers
    assert default_batch_size(engine.ModelSpec.from_dict(AIR), 1, 2) == 1


def test_map_agrees_with_fit_map(fleet):
    res = engine.fit_many(SPEC, fleet[:4], method="map", batch_size=4)
    for i in range(4):
        ref = engine.fit_map(SPEC, fleet[i])
        logp, to_u, _ = log_posterior(SPEC, fleet[i])
        ours = float(logp(to_u(np.array([res.table.loc[i, n] for n in NAMES]))))
        assert res.table.loc[i, "status"] == "ok"
        assert ours >= ref.log_posterior - 1e-7 * abs(ref.log_posterior)
        assert ours == pytest.approx(ref.log_posterior, rel=1e-8)


def test_map_objective_is_fit_maps_potential(fleet):
    """Our log prior + the filter's log-likelihood = engine.bayes.log_posterior, at random points."""
    spec = engine.ModelSpec.from_dict(SPEC)
    co = make_coordinates(spec, "map", None)
    a = member_args(spec, co, fleet[0], None, None)
    logp, _, to_c = log_posterior(SPEC, fleet[0])
    for z in np.random.default_rng(1).normal(size=(3, len(NAMES))):
        theta = np.asarray(to_params(spec, co, z, a))
        np.testing.assert_allclose(theta, np.asarray(to_c(z)), rtol=1e-12)
        ours = float(engine.loglik(SPEC, theta, fleet[0])) + float(log_prior(spec, co, z, a))
        assert ours == pytest.approx(float(logp(z)), rel=1e-10)
    assert float(log_prior(spec, Coordinates("mle"), z, a)) == 0.0


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


def test_inputs_long_and_wide_tables():
    Y = np.arange(30.0).reshape(3, 10) ** 1.1
    Y[1, 7:] = np.nan
    wide = pd.DataFrame(Y.T, columns=["a", "b", "c"])
    long = wide.reset_index().melt(id_vars="index", var_name="series", value_name="value").rename(
        columns={"index": "time"}).dropna()
    for data in (wide, long):
        table = as_series_table(data)
        assert table.ids == ["a", "b", "c"]
        np.testing.assert_array_equal(table.Y, Y)
    with pytest.raises(ValueError, match="infinite value at series '0', time step 1"):
        as_series_table(np.array([[1.0, np.inf, 2.0]]))
    exog = np.ones((10, 1))
    exog[4, 0] = np.nan
    with pytest.raises(ValueError, match="exog has a NaN/inf at time step 4, column 0"):
        as_series_table(Y, exog)
    with pytest.raises(ValueError, match=r"exog must be \(time, k\) shared or \(series, time, k\)"):
        as_series_table(Y, np.ones((3, 10, 1, 1)))


def test_progress_cancel_and_a_failing_batch(fleet):
    seen = []
    cancel = threading.Event()

    def progress(done, total):
        seen.append((done, total))
        cancel.set()

    with pytest.raises(engine.FleetCancelled) as info:
        engine.fit_many(SPEC, fleet, method="filter", params={n: 1.0 for n in NAMES}, batch_size=4,
                        progress=progress, cancel=cancel)
    # no batch starts after the cancel; those already running (one per core) finish and are kept
    assert seen[0] == (4, 12) and len(seen) < 3
    assert len(info.value.partial.table) == seen[-1][0]
    # a batch that raises fails only its own series, with the reason
    job = FleetJob(SPEC, "bogus", 3)
    out = run_batch(job, Batch(0, ["x", "y", "z"], fleet[:3]))
    assert (out.rows["status"] == "failed").all() and out.rows["message"].str.contains("bogus").all()


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


def test_late_starters_fit_as_given_and_keep_their_belief():
    """A batch with late starters (moved to the end for the fit): rows equal fit_mle's, the
    table's log-likelihood is the series' own, and the kept belief continues the series online."""
    fl = engine.make_fleet(4, 80, seed=5, period=6)
    Y = fl.Y.copy()
    Y[1, :13] = np.nan
    Y[3, :25] = np.nan
    res = engine.fit_many(SPEC, Y, method="mle", keep=True)
    for i in (1, 3):
        ref = engine.fit_mle(SPEC, Y[i])
        row = res.table.loc[i]
        assert row["status"] == "ok"
        assert row["loglik"] == pytest.approx(ref.loglik, rel=1e-6)
        params = {n: row[n] for n in NAMES}
        assert row["loglik"] == pytest.approx(float(engine.loglik(SPEC, params, Y[i])), rel=1e-9)
        online = engine.OnlineFilter(SPEC, params, y_history=Y[i], belief=res.beliefs[str(i)])
        batch = engine.OnlineFilter(SPEC, params, y_history=Y[i])
        np.testing.assert_allclose(online.update(2.0).loglik, batch.update(2.0).loglik, rtol=1e-9)


def test_slow_members_moved_to_a_smaller_batch_keep_their_results():
    """Batches of 32 continue their last quarter of running members in batches of 8; the rows
    equal those of batches of 8, which never shrink."""
    Y = engine.make_fleet(32, 60, seed=7, period=6).Y
    big = engine.fit_many(SPEC, Y, method="map", batch_size=32).table
    small = engine.fit_many(SPEC, Y, method="map", batch_size=8).table
    assert (big["status"] == "ok").all() and (small["status"] == "ok").all()
    assert big["n_iterations"].max() > big["n_iterations"].quantile(0.75)   # some members ran on alone
    np.testing.assert_allclose(big["loglik"], small["loglik"], rtol=1e-9)


@pytest.mark.parametrize("method", ["mle", "map"])
def test_white_noise_variance_is_found_in_one_scoring_step(method):
    """Variances are stepped in σ² itself, where Fisher scoring is exact for white noise
    (σ² ← the mean square, whatever the start): one step to the optimum, then the stopping
    test (its Newton decrement at roundoff level) within two more. Stepping log σ² linearly,
    a variance shrinks by at most a factor e per step."""
    spec = {"level": {"kind": "irregular"}}
    Y = np.random.default_rng(0).standard_normal((6, 200)) * np.array([1e-3, 0.1, 1.0, 10.0, 1e3, 1e5])[:, None]
    table = engine.fit_many(spec, Y, method=method, batch_size=6).table
    assert (table["status"] == "ok").all()
    assert (table["n_iterations"] <= (3 if method == "mle" else 4)).all(), table["n_iterations"].tolist()
    if method == "mle":
        np.testing.assert_allclose(table["sigma2.irregular"], np.mean(Y ** 2, axis=1), rtol=1e-10)
    else:   # the MAP is where fit_map finds it
        for i in (0, 3, 5):
            assert table.loc[i, "sigma2.irregular"] == pytest.approx(
                engine.fit_map(spec, Y[i]).params["sigma2.irregular"], rel=1e-6)
