"""Demo streams and the synthetic fleet: reproducible, truth consistent with the data, events present."""

import jax
import numpy as np
import pytest

import engine
from engine.demo import NOISE_SD, PERIOD

N_TIME = 960          # 40 seasonal cycles
NAMES = list(engine.DEMO_STREAMS)


@pytest.fixture(scope="module")
def streams():
    return {name: engine.demo_stream(7, name, N_TIME) for name in NAMES}


def _events(stream, kind):
    return [e for e in stream.events if e.kind == kind]


def _cycle_means(x, t, n_cycles=2):
    """Means over whole seasonal cycles just before and just after step t (the pattern cancels)."""
    w = n_cycles * PERIOD
    return np.nanmean(x[t - w:t]), np.nanmean(x[t:t + w])


def test_registry_lists_every_stream_with_a_description():
    table = engine.list_demo_streams()
    assert list(table["name"]) == NAMES
    assert {"level_shifts", "changing_seasonality", "outliers", "missing_stretches", "slow_drift"} <= set(NAMES)
    assert table["description"].str.len().min() > 20 and table["title"].str.len().min() > 3


def test_unknown_stream_and_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="level_shifts"):
        engine.demo_stream(0, "no_such_stream")
    with pytest.raises(ValueError, match="n_time"):
        engine.demo_stream(0, "outliers", n_time=10)
    with pytest.raises(ValueError, match="seed"):
        engine.demo_stream("zero", "outliers")


@pytest.mark.parametrize("name", NAMES)
def test_stream_is_reproducible_from_its_seed(streams, name):
    again = engine.demo_stream(jax.random.key(7), name, N_TIME)
    np.testing.assert_array_equal(again.y, streams[name].y)
    assert again.events == streams[name].events
    other = engine.demo_stream(8, name, N_TIME)
    assert not np.allclose(np.nan_to_num(other.y), np.nan_to_num(streams[name].y))


@pytest.mark.parametrize("name", NAMES)
def test_components_add_up_and_gaps_are_nan(streams, name):
    s = streams[name]
    assert s.y.shape == (N_TIME,)
    total = sum(s.components.values())
    observed = ~np.isnan(s.y)
    np.testing.assert_allclose(s.y[observed], total[observed], rtol=0, atol=1e-12)
    gap = np.zeros(N_TIME, dtype=bool)
    for e in _events(s, "gap"):
        gap[e.start:e.end] = True
    np.testing.assert_array_equal(np.isnan(s.y), gap)
    outlier_times = [e.start for e in _events(s, "outlier")]
    np.testing.assert_array_equal(np.flatnonzero(s.components["outliers"]), sorted(outlier_times))
    assert set(s.params) == set(engine.param_names(s.spec))
    assert all(0 <= e.start < e.end <= N_TIME for e in s.events)


def test_level_shifts_are_in_the_data(streams):
    s = streams["level_shifts"]
    shifts = _events(s, "level_shift")
    assert len(shifts) == 3
    for e in shifts:
        before, after = _cycle_means(s.y, e.start)
        assert abs(e.size) >= 6 * NOISE_SD
        assert abs((after - before) - e.size) < 2.0 * NOISE_SD


@pytest.mark.parametrize("name", ["outliers", "sensor"])
def test_outliers_stand_out_from_the_noise(streams, name):
    s = streams[name]
    times = np.array([e.start for e in _events(s, "outlier")])
    assert len(times) >= 3
    resid = (s.y - s.signal) / NOISE_SD
    assert np.all(np.abs(resid[times]) > 3.0)
    others = np.delete(resid, times)
    others = others[~np.isnan(others)]
    assert np.mean(np.abs(others) > 3.0) < 0.01
    assert 0.85 < np.std(others) < 1.15


def test_missing_stretches_are_long_and_scattered():
    s = engine.demo_stream(7, "missing_stretches", N_TIME)
    lengths = sorted(e.end - e.start for e in _events(s, "gap"))
    assert lengths[-3:] == [30, 72, 120]
    assert sum(1 for n in lengths if n == 1) >= 3


def test_slow_drift_has_the_declared_slope(streams):
    s = streams["slow_drift"]
    (e,) = _events(s, "drift")
    t = np.arange(e.start, e.end)
    deseasoned = s.y - s.components["seasonal"]
    slope_after = np.polyfit(t, deseasoned[e.start:e.end], 1)[0]
    slope_before = np.polyfit(np.arange(e.start), deseasoned[:e.start], 1)[0]
    assert e.size > 0
    assert abs((slope_after - slope_before) - e.size) < 0.5 * e.size
    assert s.spec["level"]["kind"] == "local_linear_trend"


def _harmonic_amplitude(y):
    """Amplitude (root mean square) of the two-harmonic daily pattern fitted to y minus its daily mean."""
    t = np.arange(len(y))
    daily = np.convolve(y, np.ones(PERIOD) / PERIOD, mode="same")
    keep = slice(PERIOD, len(y) - PERIOD)
    X = np.column_stack([f(2 * np.pi * k * t / PERIOD) for k in (1, 2) for f in (np.cos, np.sin)])[keep]
    coef = np.linalg.lstsq(X, (y - daily)[keep], rcond=None)[0]
    return np.std(X @ coef)


def test_changing_seasonality_changes_the_pattern_in_the_data(streams):
    s = streams["changing_seasonality"]
    (e,) = _events(s, "seasonal_change")
    before = _harmonic_amplitude(s.y[:e.start])
    after = _harmonic_amplitude(s.y[e.start:])
    assert abs(after / before - e.size) < 0.25 * e.size
    # the shape changes too: the pattern before does not fit after
    true_before = s.components["seasonal"][e.start - PERIOD:e.start]
    true_after = s.components["seasonal"][e.start:e.start + PERIOD]
    assert np.corrcoef(true_before, true_after)[0, 1] < 0.95


# ---------------------------------------------------------------------------------------
# fleet
# ---------------------------------------------------------------------------------------

N_SERIES, T_FLEET = 400, 240


@pytest.fixture(scope="module")
def fleet():
    return engine.make_fleet(N_SERIES, T_FLEET, seed=3)


def test_fleet_shapes_and_reproducibility(fleet):
    assert fleet.Y.shape == fleet.signal.shape == fleet.outlier.shape == (N_SERIES, T_FLEET)
    assert len(fleet.truth) == N_SERIES and fleet.truth["series"].is_unique
    again = engine.make_fleet(N_SERIES, T_FLEET, seed=3)
    np.testing.assert_array_equal(again.Y, fleet.Y)
    # a sensor depends only on (seed, its index): a smaller fleet is a prefix of a larger one
    small = engine.make_fleet(300, T_FLEET, seed=3)
    np.testing.assert_array_equal(small.Y, fleet.Y[:300])
    assert small.truth.equals(fleet.truth.iloc[:300])
    other = engine.make_fleet(300, T_FLEET, seed=4)
    assert not np.allclose(np.nan_to_num(other.Y), np.nan_to_num(small.Y))


def test_fleet_truth_table_matches_the_signal(fleet):
    tr = fleet.truth
    t0 = tr["level"] + tr["amplitude"] * np.cos(tr["phase"]) + tr["amplitude2"] * np.cos(2 * tr["phase"] + 1.0)
    np.testing.assert_allclose(fleet.signal[:, 0], t0, rtol=1e-12)
    np.testing.assert_array_equal(tr["n_missing"], np.isnan(fleet.Y).sum(axis=1))
    np.testing.assert_array_equal(tr["n_outliers"], fleet.outlier.sum(axis=1))
    assert set(engine.param_names(fleet.spec)) >= {"sigma2.irregular", "sigma2.level"}


def test_fleet_gaps_are_nan_where_the_truth_says(fleet):
    tr = fleet.truth
    t = np.arange(T_FLEET)
    planned = np.zeros_like(fleet.outlier)
    for i, row in enumerate(tr.itertuples()):
        planned[i] = (t < row.start) | ((row.gap_start >= 0) & (t >= row.gap_start)
                                        & (t < row.gap_start + row.gap_length))
    missing = np.isnan(fleet.Y)
    assert np.all(missing[planned])
    scattered = missing & ~planned
    assert 0 < scattered.sum() < 0.01 * fleet.Y.size
    assert (tr["gap_start"] >= 0).mean() > 0.15 and (tr["start"] > 0).any()
    assert not (fleet.outlier & missing).any()


def test_fleet_outliers_and_noise(fleet):
    sd = fleet.truth["noise_sd"].to_numpy()[:, None]
    resid = (fleet.Y - fleet.signal) / sd
    assert fleet.outlier.sum() > 50
    assert np.all(np.abs(resid[fleet.outlier]) > 3.0)
    clean = resid[~fleet.outlier & ~np.isnan(fleet.Y)]
    assert abs(np.std(clean) - 1.0) < 0.02 and abs(np.mean(clean)) < 0.02


def test_fleet_regime_changes_are_in_the_data(fleet):
    tr = fleet.truth
    w = 2 * PERIOD
    rows = tr[(tr["regime_time"] >= w) & (tr["regime_time"] <= T_FLEET - w)]
    assert len(rows) > 50
    ok = []
    for i, row in rows.iterrows():
        y = np.where(fleet.outlier[i], np.nan, fleet.Y[i])
        window = y[row.regime_time - w:row.regime_time + w]
        if np.isnan(window).mean() > 0.1:
            continue
        before, after = _cycle_means(y, row.regime_time)
        ok.append(abs((after - before) - row.regime_shift) < 2.5 * row.noise_sd)
        assert abs(row.regime_shift) >= 5 * row.noise_sd
    assert len(ok) > 30 and np.mean(ok) > 0.95


def test_fleet_bad_input_is_refused():
    with pytest.raises(ValueError, match="n_series"):
        engine.make_fleet(0, 100)
    with pytest.raises(ValueError, match="outlier_rate"):
        engine.make_fleet(10, 100, outlier_rate=1.5)


def test_demo_posterior_sees_only_the_history(streams):
    """The bank a demo streams through: draws of the Laplace approximation given the first n
    observations. Changing what comes after them changes nothing; the truth lies in the draws;
    the draws are reproducible from their seed; too short a history is refused."""
    from engine.demo import MIN_HISTORY, demo_posterior

    s = streams["changing_seasonality"]
    n = N_TIME // 2   # the pattern changes at half-way: the history follows the model
    post = demo_posterior(s, n, n_draws=400, seed=3)
    assert post.n_history == n and set(post.draws) == set(engine.param_names(s.spec))
    assert all(d.shape == (400,) and np.all(np.isfinite(d)) for d in post.draws.values())
    later = s._replace(y=np.concatenate([s.y[:n], s.y[n:] + 50.0]))
    again = demo_posterior(later, n, n_draws=400, seed=3)
    for name in post.draws:
        np.testing.assert_allclose(again.draws[name], post.draws[name], rtol=1e-7)
    irregular = post.draws["sigma2.irregular"]
    lo, hi = np.quantile(irregular, [0.005, 0.995])
    assert lo < s.params["sigma2.irregular"] < hi and np.all(irregular > 0)
    assert np.std(irregular) > 0   # a spread of draws, not one point
    mode = engine.fit_map(s.spec, s.y[:n]).params
    np.testing.assert_allclose(np.median(irregular), mode["sigma2.irregular"], rtol=0.1)
    with pytest.raises(ValueError, match="n_history"):
        demo_posterior(s, MIN_HISTORY - 1)
    with pytest.raises(ValueError, match="n_history"):
        demo_posterior(s, N_TIME + 1)
