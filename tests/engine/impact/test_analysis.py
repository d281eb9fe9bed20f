"""causal_impact and OnlineImpact: calibration over simulated series, online = batch, the
intervention's forms, the report and the plot data.

Calibration tests count how often an interval covers the truth over independent seeds; the
count is Binomial(N, level) when the intervals are right, and the test fails only when the
count is in either 0.1% tail of that binomial (so a correct method fails one run in 500).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats

import engine
from engine import impact

LEVEL_SPEC = {"irregular": True, "level": {"kind": "local_level"}, "regression": {"columns": ["x"]}}
TRUE = {"sigma2.irregular": 1.0, "sigma2.level": 0.1, "beta.x": 2.0}
N_PRE, N_POST = 40, 15


def simulate(seed: int, effect: float, n_pre: int = N_PRE, n_post: int = N_POST):
    """A local level plus 2·x_t and unit noise; `effect` is added to every post-period y."""
    rng = np.random.default_rng(seed)
    n = n_pre + n_post
    x = rng.normal(0, 1, (n, 1)).cumsum(axis=0) * 0.3
    level = 5 + np.cumsum(rng.normal(0, np.sqrt(TRUE["sigma2.level"]), n))
    y = level + TRUE["beta.x"] * x[:, 0] + rng.normal(0, 1, n)
    y[n_pre:] += effect
    return y, x


def binomial_ok(k: int, n: int, p: float, tail: float = 1e-3) -> bool:
    """k is not in either `tail` of Binomial(n, p)."""
    return scipy.stats.binom.cdf(k, n, p) >= tail and scipy.stats.binom.sf(k - 1, n, p) >= tail


def test_binomial_tolerance_rejects_a_wrong_rate():
    """The check itself: 95% intervals that cover 85% of the time over 120 seeds are caught."""
    assert binomial_ok(114, 120, 0.95)
    assert not binomial_ok(102, 120, 0.95)


def test_intervals_cover_the_true_effect_at_their_rate_and_p_is_uniform_under_no_effect():
    """With the true parameters the counterfactual is the exact predictive, so over seeds the
    95% interval of the cumulative effect covers the true one at 95%, the pointwise interval at
    the last step likewise, and under no effect 2·p_no_effect is uniform (p is the smaller tail)."""
    n_seeds, effect = 120, 0.7
    covered_cum = covered_last = 0
    p_null = []
    for seed in range(n_seeds):
        y, x = simulate(seed, effect)
        monitor = impact.OnlineImpact(LEVEL_SPEC, TRUE, y[:N_PRE], x[:N_PRE])
        monitor.update_many(y[N_PRE:], x[N_PRE:])
        res = monitor.result()
        covered_cum += res.cumulative.lower <= effect * N_POST <= res.cumulative.upper
        covered_last += res.pointwise.lower[-1] <= effect <= res.pointwise.upper[-1]
        # the same noise without the effect: the observed sum moves by −effect·N_POST, nothing else
        p_null.append(impact.tail_probability(float(np.sum(y[N_PRE:]) - effect * N_POST), res.cum_mean[-1],
                                              res.cum_var[-1], res.weights))
    assert binomial_ok(covered_cum, n_seeds, 0.95), covered_cum
    assert binomial_ok(covered_last, n_seeds, 0.95), covered_last
    assert scipy.stats.kstest(2 * np.array(p_null), "uniform").pvalue > 1e-3


def test_map_fit_covers_the_effect_and_finds_it():
    """With parameters estimated by MAP (Laplace draws: parameter uncertainty included) the 95%
    interval still covers the true cumulative effect at about its rate, and an effect of 5 noise
    sd per step (about 5 sd of the counterfactual sum with the true parameters) is found
    (p_no_effect < 0.05) in every seed."""
    n_seeds, effect = 6, 5.0
    covered, ps = 0, []
    for seed in range(n_seeds):
        y, x = simulate(100 + seed, effect)
        res = engine.causal_impact(LEVEL_SPEC, y, x, intervention=N_PRE, method="map", draws=100, seed=seed,
                                   check_regressors=False)
        covered += res.cumulative.lower <= effect * N_POST <= res.cumulative.upper
        ps.append(res.p_no_effect)
    assert binomial_ok(covered, n_seeds, 0.95), covered
    assert max(ps) < 0.05, ps


def _draws(n: int = 6, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"sigma2.irregular": rng.uniform(0.7, 1.3, n), "sigma2.level": rng.uniform(0.05, 0.2, n),
            "beta.x": rng.normal(2.0, 0.1, n)}


def test_streaming_equals_batch_for_the_same_draws():
    """One observation at a time (a missing one among them) gives the batch result to 1e-9, and
    the live summary after the last step agrees with it (p exactly, bands to Newton accuracy)."""
    y, x = simulate(7, 1.0)
    y[N_PRE + 3] = np.nan
    draws = _draws()
    batch = engine.causal_impact(LEVEL_SPEC, y, x, intervention=N_PRE, posterior=draws, check_regressors=False)
    monitor = impact.OnlineImpact(LEVEL_SPEC, draws, y[:N_PRE], x[:N_PRE])
    monitor.update(y[N_PRE], x[N_PRE])
    traces = impact.analysis._update_jit._cache_size()
    for t in range(N_PRE + 1, N_PRE + N_POST):
        live = monitor.update(y[t], x[t])
    assert impact.analysis._update_jit._cache_size() == traces   # one compiled step serves every update
    online = monitor.result()
    for name in ("draw_mean", "draw_var", "cum_mean", "cum_var"):
        np.testing.assert_allclose(getattr(online, name), getattr(batch, name), rtol=1e-9, err_msg=name)
    for name in ("average", "cumulative", "relative", "prediction"):
        np.testing.assert_allclose(getattr(online, name), getattr(batch, name), rtol=1e-9, err_msg=name)
    assert online.p_no_effect == pytest.approx(batch.p_no_effect, rel=1e-9)
    assert float(live.p_no_effect) == pytest.approx(batch.p_no_effect, rel=1e-9)
    width = batch.cumulative.upper - batch.cumulative.lower
    np.testing.assert_allclose(np.asarray(live.cumulative), batch.cumulative[:3], atol=1e-4 * width)
    np.testing.assert_allclose(np.asarray(live.average), batch.average[:3], atol=1e-4 * width / N_POST)
    assert np.isnan(np.asarray(monitor.result().pointwise.mean)[3])


def test_from_a_running_filter_equals_starting_from_the_draws():
    """A stream's bank handed over at the intervention (no re-filtering) gives the same analysis."""
    y, x = simulate(8, 1.0)
    draws = _draws(4, 1)
    stream = engine.OnlineFilter.from_posterior(LEVEL_SPEC, draws, y[:N_PRE - 5], x[:N_PRE - 5])
    stream.update_many(y[N_PRE - 5:N_PRE], x[N_PRE - 5:N_PRE])
    handed = impact.OnlineImpact.from_filter(stream)
    handed.update_many(y[N_PRE:], x[N_PRE:])
    direct = impact.OnlineImpact(LEVEL_SPEC, draws, y[:N_PRE], x[:N_PRE], log_weight=np.log(stream.weights))
    direct.update_many(y[N_PRE:], x[N_PRE:])
    a, b = handed.result(), direct.result()
    np.testing.assert_allclose(a.cum_var, b.cum_var, rtol=1e-9)
    np.testing.assert_allclose(a.cumulative, b.cumulative, rtol=1e-9)


def test_intervention_as_position_time_period_or_range():
    index = pd.date_range("2024-01-01", periods=90, freq="D")
    split = lambda v: impact.split_at_intervention(index, v)
    assert split(31) == (31, 90)
    assert split("2024-02-01") == (31, 90)
    assert split(pd.Timestamp("2024-01-31 12:00")) == (31, 90)
    assert split(pd.Period("2024-02", freq="M")) == (31, 60)
    assert split((31, 59)) == (31, 60)
    assert split(("2024-02-01", "2024-02-29")) == (31, 60)
    for bad, match in ((0, "position 1 to 89"), (90, "position 1 to 89"), ((40, 35), "end must come after"),
                       ("2025-01-01", "position 1 to 89"), (1.5, "neither")):
        with pytest.raises(ValueError, match="intervention") as err:
            split(bad)
        assert match in str(err.value)
    with pytest.raises(ValueError, match="no time index"):
        impact.split_at_intervention(pd.RangeIndex(90), "2024-02-01")


def test_result_on_dates_report_table_and_plot_data():
    """A dated series with a period as intervention: the post-period is that period, the plot data
    has every panel on the series' dates, the table has CausalImpact's rows and columns, and the
    report says what was found; the control series (a random walk, no break) is checked and passes."""
    y, x = simulate(9, 3.0, n_pre=40, n_post=20)
    index = pd.date_range("2024-01-01", periods=60, freq="D")
    res = engine.causal_impact(LEVEL_SPEC, pd.Series(y, index=index), pd.DataFrame({"x": x[:, 0]}, index=index),
                               intervention=("2024-02-10", "2024-02-24"), posterior=_draws())
    assert res.regressors is not None and not res.regressors.affected.any()
    assert res.n_pre == 40 and len(res.post_index) == 15 and res.post_index[0] == pd.Timestamp("2024-02-10")
    plot = res.plot()
    assert list(plot.index) == list(index[:55])
    assert plot["post"].sum() == 15 and (plot.loc[~plot["post"], "cumulative"] == 0).all()
    post = plot[plot["post"]]
    assert (post["predicted_lower"] < post["predicted"]).all() and (post["predicted"] < post["predicted_upper"]).all()
    np.testing.assert_allclose(post["cumulative"].iloc[-1], res.cumulative.mean)
    np.testing.assert_allclose(post["pointwise"].sum(), res.cumulative.mean)
    table = res.table()
    assert list(table.index) == ["Average", "Cumulative"]
    assert {"Actual", "Pred", "AbsEffect.lower", "RelEffect.upper", "p"} <= set(table.columns)
    np.testing.assert_allclose(table.loc["Average", "RelEffect"], res.average.mean / res.prediction.mean)
    text = res.summary()
    assert "2024-02-10" in text and "excludes zero" in text and f"{res.average.mean:,.2f}" in text
    assert "Average" in res.summary("table")
    with pytest.raises(ValueError, match="summary kind"):
        res.summary("chart")


def test_bad_inputs_are_refused_with_the_field_named():
    y, x = simulate(10, 0.0)
    with pytest.raises(ValueError, match="method="):
        engine.causal_impact(LEVEL_SPEC, y, x, intervention=N_PRE, method="mcmc")
    with pytest.raises(ValueError, match="regression.columns"):
        engine.causal_impact(LEVEL_SPEC, y, intervention=N_PRE, posterior=_draws())
    with pytest.raises(ValueError, match="exog has 20 rows"):
        engine.causal_impact(LEVEL_SPEC, y, x[:20], intervention=N_PRE, posterior=_draws())
    monitor = impact.OnlineImpact(LEVEL_SPEC, _draws(), y[:N_PRE], x[:N_PRE])
    with pytest.raises(ValueError, match="no post-period observation"):
        monitor.result()
    with pytest.raises(ValueError, match="infinite"):
        monitor.update(np.inf, x[N_PRE])
