"""Online engine: streaming equals the batch filter per draw, exact importance weights,
one trace per step, mixture quantiles, forecasts, and rejuvenation on a known posterior."""

from __future__ import annotations

import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import engine
from engine import online
from engine.online import bank as online_bank, covariance, history
from engine.online.filter import OnlineFilter
from engine.rejuvenation import RETRY_AFTER, RejuvenationConfig

from .helpers import IID, air, assert_rel_close, conjugate_log_posterior, exact_posterior, seatbelts, sm_loglik

SPEC = {"level": {"kind": "local_linear_trend"}, "seasonal": [{"period": 4}]}
BASE = np.array([1.0, 0.1, 0.01, 0.05])
GAPS = (0, 1, 9, 20, 21, 33)
MANUAL = RejuvenationConfig(automatic=False)   # moves only when asked


def _draws(n, base=BASE, spread=0.3, seed=0):
    rng = np.random.default_rng(seed)
    return base * np.exp(spread * rng.standard_normal((n, len(base))))


def _series(n=48, params=BASE, gaps=GAPS, seed=1):
    y = np.array(engine.simulate(jax.random.PRNGKey(seed), SPEC, params, n))
    y[list(gaps)] = np.nan
    return y


def _stream(filt, y):
    """Update one observation at a time; keep each step's info and the belief after it."""
    infos, beliefs = [], []
    for v in y:
        infos.append(jax.device_get(filt.update(v)))
        beliefs.append(jax.device_get(filt.state))
    return infos, beliefs


def test_streaming_equals_batch_filter_per_draw():
    """Filtered/predicted means and covariances and summed loglik per draw, diffuse start and NaN gaps."""
    y = _series()
    draws = _draws(3)
    filt = engine.OnlineFilter(SPEC, draws, rejuvenation=MANUAL)
    infos, beliefs = _stream(filt, y)
    for s in range(len(draws)):
        ref = engine.filter_series(SPEC, draws[s], y)
        filt_mean = np.array([i.filtered_mean[:, s] for i in infos])
        pred_mean = np.array([b.filter.mean[:, s] for b in beliefs])      # a_{t+1}
        pred_cov = np.array([b.filter.cov[:, :, s] for b in beliefs])     # P_{t+1}
        pred_diffuse = np.array([b.filter.diffuse_cov[:, :, s] for b in beliefs])
        assert_rel_close(filt_mean, ref.filtered_mean, 1e-9, "filtered mean")
        assert_rel_close(pred_mean[:-1], ref.predicted_mean[1:], 1e-9, "predicted mean")
        assert_rel_close(pred_cov[:-1], ref.predicted_cov[1:], 1e-9, "predicted cov")
        assert_rel_close(pred_diffuse[:-1], ref.predicted_diffuse[1:], 1e-9, "diffuse cov")
        assert_rel_close(pred_cov[-1], ref.final_cov, 1e-9, "final cov")
        ll = sum(float(i.loglik[s]) for i in infos)
        assert ll == pytest.approx(float(engine.loglik(SPEC, draws[s], y)), rel=1e-9, abs=1e-9)
        assert ll == pytest.approx(sm_loglik(SPEC, draws[s], y), rel=1e-6)
    assert [bool(i.diffuse) for i in infos[:3]] == [True, True, True]   # the exact diffuse start runs online
    assert not bool(infos[-1].diffuse)


def test_filtered_covariance_of_one_draw_equals_batch():
    y = _series(gaps=(0, 9, 20))
    filt = engine.OnlineFilter(SPEC, BASE, rejuvenation=MANUAL)
    infos, _ = _stream(filt, y)
    ref = engine.filter_series(SPEC, BASE, y)
    names = engine.component_names(SPEC)
    assert names == ["level", "trend", "seasonal_4"]
    var = np.array([i.component_var for i in infos])
    ok = np.all(np.isfinite(var), axis=1)
    assert ok.sum() > 30
    assert_rel_close(var[ok, 0], ref.filtered_cov[ok, 0, 0], 1e-9, "level")
    assert_rel_close(var[ok, 1], ref.filtered_cov[ok, 1, 1], 1e-9, "trend")
    assert_rel_close(var[ok, 2], ref.filtered_cov[ok, 2, 2], 1e-9, "seasonal")
    mean = np.array([i.component_mean for i in infos])
    assert_rel_close(mean[:, 0], ref.filtered_mean[:, 0], 1e-9, "level mean")
    # every state's filtered variance and band, once that state is identified
    state_var = np.array([i.state_var for i in infos])
    known = np.isfinite(state_var)
    assert known[ok].all() and not known[0].any()
    diag = np.diagonal(np.asarray(ref.filtered_cov), axis1=1, axis2=2)
    assert_rel_close(state_var[known], diag[known], 1e-9, "state variances")
    bands = np.array([i.state_quantiles for i in infos])
    gauss = ref.filtered_mean[:, :, None] + np.sqrt(diag)[:, :, None] * scipy.stats.norm.ppf(online.PROBS)
    assert_rel_close(bands[known], gauss[known], 1e-9, "state bands")
    assert np.isnan(bands[~known]).all()
    # one draw: the predictive is N(Z a + d, F) and the standardised innovation is v/√F
    obs = ~np.isnan(y) & (np.asarray(ref.kind) == 1)
    z = np.array([i.innovation for i in infos])
    assert_rel_close(z[obs], (ref.innovation / np.sqrt(ref.innov_var))[obs], 1e-9, "innovation")
    q = np.array([i.quantiles for i in infos])[obs]
    mu, sd = np.array([i.mean for i in infos])[obs], np.sqrt(np.array([i.var for i in infos])[obs])
    assert_rel_close(q, mu[:, None] + sd[:, None] * scipy.stats.norm.ppf(online.PROBS), 1e-9, "bands")


def test_summed_loglik_equals_statsmodels_on_airpassengers():
    y = air().copy()
    y[[3, 50, 51]] = np.nan
    params = np.array([3e-4, 7e-4, 1e-6, 5e-3])
    spec = {"level": {"kind": "local_linear_trend"}, "seasonal": [{"period": 12}]}
    filt = engine.OnlineFilter(spec, params, rejuvenation=MANUAL)
    info = filt.update_many(y)
    assert float(np.sum(info.loglik)) == pytest.approx(sm_loglik(spec, params, y), rel=1e-6)
    assert float(np.sum(info.log_pred)) == pytest.approx(sm_loglik(spec, params, y), rel=1e-6)


def test_update_many_and_catch_up_equal_single_updates():
    y = _series()
    draws = _draws(3)
    one = engine.OnlineFilter(SPEC, draws, rejuvenation=MANUAL)
    infos, _ = _stream(one, y)
    many = engine.OnlineFilter(SPEC, draws, rejuvenation=MANUAL)
    batched = [many.update_many(y[:5]), many.update_many(y[5:6]), many.update_many(y[6:])]
    hist = engine.OnlineFilter(SPEC, draws, y_history=y[:30], rejuvenation=MANUAL)
    hist.update_many(y[30:])
    for other in (many, hist):
        for a, b in zip(jax.tree_util.tree_leaves(other.state), jax.tree_util.tree_leaves(one.state)):
            np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-10, atol=1e-10)
    ll_many = np.concatenate([np.asarray(b.loglik) for b in batched])
    np.testing.assert_allclose(ll_many, np.array([i.loglik for i in infos]), rtol=1e-10, atol=1e-12)
    assert np.asarray(batched[0].t).tolist() == [0, 1, 2, 3, 4]


def test_weights_are_exact_importance_weights():
    y = _series(seed=3)
    draws = _draws(3, spread=0.8)
    filt = engine.OnlineFilter(SPEC, draws, y_history=y[:10], rejuvenation=MANUAL)
    for v in y[10:]:
        info = filt.update(v)
    ll = np.array([float(engine.loglik(SPEC, d, y)) for d in draws])
    exact = np.exp(ll - scipy.special.logsumexp(ll))
    np.testing.assert_allclose(filt.weights, exact, rtol=1e-9)
    assert float(info.ess) == pytest.approx(1 / np.sum(exact ** 2), rel=1e-9)


def test_log_predictive_increments_sum_to_log_evidence():
    y = _series(seed=4, gaps=(0, 7))
    draws = _draws(3, spread=0.6)
    filt = engine.OnlineFilter(SPEC, draws, rejuvenation=MANUAL)
    info = filt.update_many(y)
    ll = np.array([float(engine.loglik(SPEC, d, y)) for d in draws])
    evidence = scipy.special.logsumexp(ll) - np.log(len(draws))
    assert float(np.sum(info.log_pred)) == pytest.approx(evidence, rel=1e-10)


def test_one_trace_per_step():
    """The jitted step compiles once: diffuse steps, NaN steps and steady steps share the trace."""
    traces = []

    def counted(bank, belief, y):
        traces.append(1)
        return engine.online_step(config, bank, belief, y)

    config = engine.OnlineConfig(engine.ModelSpec.from_dict(SPEC))
    bank = engine.make_bank(SPEC, _draws(3))
    belief = engine.online_init(config, bank)
    step = jax.jit(counted)
    for v in _series(n=40):
        belief, _ = step(bank, belief, v)
    assert len(traces) == 1
    # the wrapper's own compiled step: one entry for this spec, whatever the data
    filt = engine.OnlineFilter(SPEC, _draws(3), rejuvenation=MANUAL)
    filt.update(1.0)
    size = online_bank._step_jit._cache_size()
    for v in _series(n=40):
        filt.update(v)
    assert online_bank._step_jit._cache_size() == size
    assert filt._settled and not filt._steady   # the rest went through the fused standard step
    size = online_bank._standard_step_jit._cache_size()
    for v in _series(n=40, seed=2):
        filt.update(v)
    assert online_bank._standard_step_jit._cache_size() == size
    # micro-batches are padded to powers of two (at least 8): sizes 1..8 share one trace
    filt.update_many(np.ones(5))
    size = online_bank._step_many_jit._cache_size()
    for n in (6, 1, 8, 3):
        filt.update_many(np.ones(n))
    assert online_bank._step_many_jit._cache_size() == size


def test_mixture_quantiles_solve_the_mixture_cdf():
    w = jnp.array([0.5, 0.3, 0.2])
    mu = jnp.array([0.0, 1.0, 3.0])
    var = jnp.array([1.0, 0.25, 0.5])
    q = np.asarray(online.mixture_quantiles(w, mu, var, online.PROBS, iters=12))
    cdf = np.sum(np.asarray(w) * scipy.stats.norm.cdf((q[:, None] - np.asarray(mu)) / np.sqrt(np.asarray(var))), axis=1)
    np.testing.assert_allclose(cdf, online.PROBS, atol=1e-12)
    # moments of the mixture against numerical integration
    mean, m2, m3, m4 = online.mixture_moments(w, mu, var)
    grid = np.linspace(-15, 20, 200001)
    dens = np.sum(np.asarray(w) * scipy.stats.norm.pdf(grid[:, None], np.asarray(mu), np.sqrt(np.asarray(var))), axis=1)
    dx = grid[1] - grid[0]
    m = np.sum(grid * dens) * dx
    for k, val in ((2, m2), (3, m3), (4, m4)):
        assert float(val) == pytest.approx(np.sum((grid - m) ** k * dens) * dx, rel=1e-7)
    assert float(mean) == pytest.approx(m, rel=1e-9)


def test_forecast_of_one_draw_equals_engine_forecast():
    y = air().copy()
    y[[10, 11, 140]] = np.nan
    spec = {"level": {"kind": "local_linear_trend"}, "seasonal": [{"period": 12}]}
    params = np.array([3e-4, 7e-4, 1e-6, 5e-3])
    filt = engine.OnlineFilter.from_posterior(spec, dict(zip(engine.param_names(spec), params)), y[:120],
                                              rejuvenation=MANUAL)
    filt.update_many(y[120:])
    ours = filt.forecast(24)
    ref = engine.forecast(spec, params, y, 24)
    assert_rel_close(ours.mean, ref.mean, 1e-9, "mean")
    assert_rel_close(ours.var, ref.var, 1e-9, "var")
    assert_rel_close(ours.quantiles[:, [0, 6]], np.stack([ref.lower, ref.upper], 1), 1e-9, "95% band")


def test_forecast_of_a_bank_is_the_weighted_mixture():
    y = _series()
    draws = _draws(3)
    filt = engine.OnlineFilter(SPEC, draws, y_history=y, rejuvenation=MANUAL)
    fc = filt.forecast(6)
    w = filt.weights
    for s in range(3):
        ref = engine.forecast(SPEC, draws[s], y, 6)
        assert_rel_close(fc.draw_mean[:, s], ref.mean, 1e-9, "draw mean")
        assert_rel_close(fc.draw_var[:, s], ref.var, 1e-9, "draw var")
    mean = np.asarray(fc.draw_mean) @ w
    var = (np.asarray(fc.draw_var) + np.asarray(fc.draw_mean) ** 2) @ w - mean ** 2
    assert_rel_close(fc.mean, mean, 1e-12, "mixture mean")
    assert_rel_close(fc.var, var, 1e-10, "mixture var")


REGRESSION_DRAWS = {"parameters": [[0.004, 0.0005, -0.3, -0.2], [0.005, 0.0004, -0.25, -0.22]],
                    "state": [[0.004, 0.0005], [0.005, 0.0004]],
                    "time_varying": [[0.004, 0.0005, 1e-4, 1e-5], [0.005, 0.0004, 2e-4, 1e-6]]}


@pytest.mark.parametrize("coefficients", sorted(REGRESSION_DRAWS))
def test_regression_exog_online_equals_batch(coefficients):
    """Two draws (the bank's observation intercept is per draw) with the coefficients as
    parameters, as states, or as random walks."""
    y, X = seatbelts()
    spec = {"level": {"kind": "local_level"},
            "regression": {"columns": ["petrol_price", "law"], "coefficients": coefficients}}
    params = np.array(REGRESSION_DRAWS[coefficients])
    x = X.to_numpy(float)
    filt = engine.OnlineFilter(spec, params, y_history=y[:150], exog_history=x[:150], rejuvenation=MANUAL)
    info = filt.update_many(y[150:], x[150:])
    for s in range(2):
        ref = engine.filter_series(spec, params[s], y, X)
        assert_rel_close(np.asarray(info.filtered_mean)[:, :, s], ref.filtered_mean[150:], 1e-9, "filtered mean")
    assert "regression" in engine.component_names(spec)
    with pytest.raises(ValueError, match="exog"):
        filt.update(1.0)
    fc = filt.forecast(3, x[-3:])
    ref = engine.forecast(spec, params[0], y, 3, X, x[-3:])
    assert_rel_close(fc.draw_mean[:, 0], ref.mean, 1e-9, "regression forecast")


def test_posterior_inputs_and_bad_input_messages():
    import arviz as az
    names = engine.param_names(SPEC)
    draws = _draws(3)
    idata = az.from_dict(posterior={n: draws[:, i].reshape(1, 3) for i, n in enumerate(names)})
    np.testing.assert_array_equal(engine.posterior_draws(SPEC, idata), draws)
    d = {n: draws[:, i] for i, n in enumerate(names)}
    np.testing.assert_array_equal(engine.posterior_draws(SPEC, d), draws)
    assert engine.posterior_draws(SPEC, dict(zip(names, BASE))).shape == (1, 4)
    with pytest.raises(ValueError, match="sigma2.trend"):
        engine.posterior_draws(SPEC, {k: v for k, v in d.items() if k != "sigma2.trend"})
    with pytest.raises(ValueError, match="NaN or inf"):
        engine.posterior_draws(SPEC, {**d, "sigma2.level": np.full(3, np.nan)})
    filt = engine.OnlineFilter.from_posterior(SPEC, idata, rejuvenation=MANUAL)
    with pytest.raises(ValueError, match="infinite"):
        filt.update(np.inf)
    with pytest.raises(ValueError, match="steps"):
        filt.forecast(0)
    with pytest.raises(ValueError, match="no regression"):
        filt.update(1.0, exog=[1.0])
    with pytest.raises(ValueError, match=r"shape \(time,\), got shape \(5, 2\)"):
        filt.update_many(np.ones((5, 2)))
    filt.update_many(np.ones((2, 1)))   # a column is one series
    assert filt.t == 2


# -- rejuvenation on a model with a known posterior ------------------------------------------
def test_rejuvenation_leaves_a_valid_sample_of_the_known_posterior():
    rng = np.random.default_rng(7)
    y = rng.normal(0.0, np.sqrt(2.5), 220)
    y[[5, 100]] = np.nan
    n0, S = 20, 1000
    start = exact_posterior(y[:n0]).rvs(S, random_state=rng)[:, None]
    filt = engine.OnlineFilter(IID, start, y_history=y[:n0], rejuvenation=RejuvenationConfig(
        automatic=False, log_posterior=conjugate_log_posterior, move_steps=20, seed=3))
    filt.update_many(y[n0:])
    ess_before = filt.ess
    target = exact_posterior(y)
    assert filt.rejuvenate(background=False)
    filt.apply_pending()
    done = [e for e in filt.events if e["kind"] == "rejuvenation_done"]
    assert len(done) == 1 and done[0]["ess_before"] == pytest.approx(ess_before)
    assert done[0]["ess_after"] == pytest.approx(S)
    draws = filt.params[:, 0]
    assert len(np.unique(draws)) > 0.5 * S   # moved, not just resampled
    # moments and quantiles of the bank against the exact posterior (Monte Carlo error ~1/√S)
    assert np.mean(draws) == pytest.approx(target.mean(), abs=0.1 * target.std())
    assert np.std(draws) == pytest.approx(target.std(), rel=0.15)
    for p in (0.1, 0.5, 0.9):
        assert np.mean(draws <= target.ppf(p)) == pytest.approx(p, abs=0.05)
    # the swapped-in bank is exactly the filter of those draws over the whole history
    ref = engine.OnlineFilter(IID, filt.params, y_history=y, rejuvenation=MANUAL)
    np.testing.assert_allclose(np.asarray(filt.state.filter.mean), np.asarray(ref.state.filter.mean), atol=1e-12)
    assert filt.t == len(y)


def test_background_rejuvenation_swaps_in_a_caught_up_bank():
    """Low ESS triggers a move in the background; the stream keeps going; the new bank is caught
    up exactly on the observations that arrived meanwhile, weighted from the move's start."""
    rng = np.random.default_rng(11)
    y = rng.normal(0.0, 3.0, 400)
    S = 200
    start = exact_posterior(y[:1] * 0.1).rvs(S, random_state=rng)[:, None]  # a poor bank: ESS collapses
    filt = engine.OnlineFilter(IID, start, rejuvenation=RejuvenationConfig(
        automatic=True, ess_threshold=0.5, log_posterior=conjugate_log_posterior, move_steps=5, seed=1))
    i = 0
    while not filt.rejuvenating:
        filt.update(y[i])
        i += 1
    for _ in range(5):   # the stream goes on with the old bank while the move runs
        filt.update(y[i])
        i += 1
    filt.wait_for_rejuvenation()
    filt.update(y[i])    # the finished bank is caught up and swapped in here
    kinds = [e["kind"] for e in filt.events]
    assert kinds[:2] == ["rejuvenation_start", "rejuvenation_done"], filt.events
    start_ev, done = filt.events[0], filt.events[1]
    assert start_ev["ess_before"] < 0.5 * S
    assert done["duration_s"] > 0 and done["t_swap"] >= done["t_start"] + 5 and 0 < done["acceptance"] <= 1
    t0, t1 = done["t_start"], i + 1
    config = filt.config
    bank = engine.make_bank(IID, filt.params)
    belief = engine.online_catch_up(config, bank, engine.online_init(config, bank), y[:t0])
    belief = engine.online_catch_up(config, bank, belief._replace(log_weight=jnp.full(S, -np.log(S))), y[t0:t1])
    ref = engine.OnlineFilter(IID, filt.params, y_history=y[:t1], belief=belief, rejuvenation=MANUAL)
    np.testing.assert_allclose(filt.weights, ref.weights, rtol=1e-9)
    np.testing.assert_allclose(np.asarray(filt.state.filter.cov), np.asarray(ref.state.filter.cov), rtol=1e-9)


def test_default_rejuvenation_uses_the_fitted_models_log_posterior():
    """Without an explicit log posterior, the move targets engine.bayes.log_posterior."""
    import engine.bayes as bayes
    y = np.asarray(engine.simulate(jax.random.PRNGKey(0), {"level": "local_level"}, [1.0, 0.2], 60))
    names = engine.param_names({"level": "local_level"})
    rng = np.random.default_rng(0)
    draws = {n: np.exp(rng.normal(np.log(v), 0.3, 40)) for n, v in zip(names, (1.0, 0.2))}
    filt = engine.OnlineFilter.from_posterior({"level": "local_level"}, draws, y[:40],
                                              rejuvenation=RejuvenationConfig(automatic=False, move_steps=2))
    filt.update_many(y[40:])
    assert filt.rejuvenate(background=False)
    filt.apply_pending()
    assert [e["kind"] for e in filt.events] == ["rejuvenation_start", "rejuvenation_done"], filt.events
    logp, to_unc, _ = bayes.log_posterior(filt.spec, jnp.asarray(y))
    assert np.all(np.isfinite(np.asarray(jax.vmap(logp)(jax.vmap(to_unc)(jnp.asarray(filt.params))))))


def test_steady_bank_takes_the_mean_only_path_and_still_equals_batch():
    """Once every draw's P has converged, updates move only the means (O(state·draw)); a NaN
    sends the bank back through the covariance update. Both stay equal to the batch filter."""
    base = np.array([1.0, 0.5, 0.1, 0.3])
    draws = base * np.exp(0.3 * np.random.default_rng(0).standard_normal((3, 4)))
    y = np.array(engine.simulate(jax.random.PRNGKey(2), SPEC, base, 460))
    y[[0, 430]] = np.nan
    filt = engine.OnlineFilter(SPEC, draws, y_history=y[:400], rejuvenation=MANUAL)
    assert np.all(np.asarray(filt.state.filter.steady)), "the test needs a converged bank"
    before = online_bank._steady_step_jit._cache_size() + online_bank._steady_step_many_jit._cache_size()
    infos, beliefs = _stream(filt, y[400:440])
    many = jax.device_get(filt.update_many(y[440:]))
    assert online_bank._steady_step_jit._cache_size() + online_bank._steady_step_many_jit._cache_size() > before
    assert all(bool(i.steady) for i in infos[:30]) and not bool(infos[30].steady)
    for s in range(3):
        ref = engine.filter_series(SPEC, draws[s], y)
        fm = np.concatenate([np.array([i.filtered_mean[:, s] for i in infos]), many.filtered_mean[:, :, s]])
        assert_rel_close(fm, ref.filtered_mean[400:], 1e-9, "filtered mean")
        ll = np.concatenate([[i.loglik[s] for i in infos], many.loglik[:, s]])
        assert_rel_close(ll, ref.loglik_terms[400:], 1e-9, "loglik terms")
        cov = np.array([b.filter.cov[:, :, s] for b in beliefs])
        assert_rel_close(cov[:-1], ref.predicted_cov[401:440], 1e-9, "predicted cov")
        assert_rel_close(np.asarray(filt.state.filter.cov)[:, :, s], ref.final_cov, 1e-9, "final cov")
    one = engine.OnlineFilter(SPEC, draws[:1], y_history=y[:400], rejuvenation=MANUAL)
    infos1, _ = _stream(one, y[400:420])
    ref = engine.filter_series(SPEC, draws[0], y)
    assert_rel_close(np.array([i.component_var for i in infos1]),
                     np.stack([ref.filtered_cov[400:420, k, k] for k in range(3)], 1), 1e-9, "component var")


def test_select_step_gives_the_pure_api_the_wrappers_fast_paths():
    """A pure loop that picks each step with `select_step` (flags read from the belief) goes
    through the general, standard and steady steps as the wrapper does, and equals both the
    wrapper and the batch filter."""
    base = np.array([1.0, 0.5, 0.1, 0.3])
    draws = base * np.exp(0.3 * np.random.default_rng(0).standard_normal((3, 4)))
    y = np.array(engine.simulate(jax.random.PRNGKey(2), SPEC, base, 440))
    y[[0, 9, 420]] = np.nan
    config = engine.OnlineConfig(engine.ModelSpec.from_dict(SPEC))
    bank = engine.make_bank(SPEC, draws)
    compiled = {fn: jax.jit(fn, static_argnums=0) for fn in (online.step, online.standard_step, online.steady_step)}
    belief, chosen, infos = engine.online_init(config, bank), [], []
    for v in y:
        one_step = online.select_step(online.step_flags(belief, v))
        belief, info = compiled[one_step](config, bank, belief, v)
        chosen.append(one_step)
        infos.append(jax.device_get(info))
    assert chosen[0] is online.step and online.standard_step in chosen[:400] and online.steady_step in chosen[:420]
    assert chosen[420] is online.standard_step   # a missing value leaves the steady path
    filt = engine.OnlineFilter(config, draws, rejuvenation=MANUAL)
    wrapped, _ = _stream(filt, y)
    for s in range(3):
        ref = engine.filter_series(SPEC, draws[s], y)
        fm = np.array([i.filtered_mean[:, s] for i in infos])
        assert_rel_close(fm, ref.filtered_mean, 1e-9, "filtered mean")
        assert_rel_close(np.array([i.loglik[s] for i in infos]), ref.loglik_terms, 1e-9, "loglik terms")
        assert_rel_close(fm, np.array([i.filtered_mean[:, s] for i in wrapped]), 1e-12, "wrapper")
    # a micro-batch's flags: every observation counts
    flags = online.step_flags(belief, y[400:408])
    assert flags.settled and flags.observed
    assert not online.step_flags(belief, y[415:423]).observed


# -- the fused bank step ---------------------------------------------------------------------
RICH = {"level": {"kind": "local_linear_trend"}, "seasonal": [{"period": 4}, {"period": 7, "form": "trig"}],
        "cycle": {"period_bounds": [6, 20], "damped": True}, "autoregressive": {"order": 2}}


def _rich_bank(n_draws=3, seed=0):
    names = engine.param_names(RICH)
    base = {n: 0.3 for n in names}
    base.update({"frequency.cycle": 2 * np.pi / 10, "damping.cycle": 0.9, "ar.L1": 0.5, "ar.L2": -0.2})
    rng = np.random.default_rng(seed)
    draws = np.array([[base[n] * np.exp(0.1 * rng.standard_normal()) for n in names] for _ in range(n_draws)])
    return draws, engine.make_bank(RICH, draws)


def test_rows_apply_is_the_block_transition():
    """T X by rows equals the block-structured product for every block kind (dense, dummy, k = 1)."""
    from engine import kalman
    from engine.system import layout, transition_apply
    _, bank = _rich_bank()
    lay = layout(RICH)
    X = jnp.asarray(np.random.default_rng(1).standard_normal((lay.n_states, lay.n_states, 3)))
    T = bank.system.transition
    np.testing.assert_allclose(np.stack(kalman.rows_apply(lay, T, list(X))), transition_apply(lay, T, X),
                               rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(np.stack(kalman.rows_apply(lay, T, list(X[:, 0]))), transition_apply(lay, T, X[:, 0]),
                               rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("form", ["dense", "packed"])
def test_fused_standard_step_equals_the_filters_step(form):
    """The fused standard updates (dense P for the fleet, packed P for the bank) give the filter's
    own step (state, gain, steady test, loglik), observed and missing, for a model with every
    kind of block."""
    from engine import kalman
    from engine.system import layout
    draws, bank = _rich_bank()
    lay = layout(RICH)
    y = np.array(engine.simulate(jax.random.PRNGKey(5), RICH, draws[0], 60))
    config = engine.OnlineConfig(engine.ModelSpec.from_dict(RICH))
    belief = engine.online_catch_up(config, bank, engine.online_init(config, bank), y[:40])
    assert not np.any(np.asarray(belief.filter.diffuse))
    st, z, d = belief.filter, bank.system.design, jnp.zeros(3)
    for v in (y[40], np.nan, y[41]):
        yb = jnp.full(3, v)
        if form == "dense":
            ours, ll, v = kalman.standard_step_fused(lay, bank.system, st, yb, d, z)
        else:
            ours, ll, v = kalman.standard_step_packed(lay, bank.system, st._replace(cov=kalman.pack(st.cov)),
                                                       yb, d, z)
            ours = ours._replace(cov=kalman.unpack(ours.cov, lay.n_states))
        ref, info = kalman.step(lay, bank.system, st, yb, d, z, keep=True)
        np.testing.assert_allclose(ll, info.loglik, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(v, info.innovation, rtol=1e-12, atol=1e-12)
        for name, a, b in zip(ref._fields, ours, ref):
            np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-11, atol=1e-11, err_msg=name)
        st = ours


def test_pack_keeps_the_upper_triangle_and_unpack_restores_the_symmetric_matrix():
    from engine import kalman
    A = np.random.default_rng(2).standard_normal((5, 5, 3))
    P = jnp.asarray(A + np.swapaxes(A, 0, 1))
    packed = kalman.pack(P)
    assert len(packed) == 15 and all(x.shape == (3,) for x in packed)
    assert [tuple(ij) for ij in kalman.packed_pairs(5)][:6] == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (1, 1)]
    np.testing.assert_array_equal(kalman.unpack(packed, 5), P)


def test_a_large_bank_keeps_its_covariance_packed_and_still_equals_the_batch_filter():
    """A settled bank of PACKED_MIN_DRAWS draws holds P packed between updates (single ones and
    micro-batches, a gap included); `state` gives it dense, and it, the weights and the
    forecast equal those of one batch pass over the same data."""
    y = _series(n=70, seed=8, gaps=())
    y[55] = np.nan
    S = covariance.PACKED_MIN_DRAWS
    a = engine.OnlineFilter(SPEC, _draws(S), y_history=y[:40], rejuvenation=MANUAL)
    b = engine.OnlineFilter(SPEC, _draws(S), y_history=y[:40], rejuvenation=MANUAL)
    batch = engine.OnlineFilter(SPEC, _draws(S), y_history=y[:70], rejuvenation=MANUAL)
    a.update_many(y[40:70])
    for v in y[40:70]:
        b.update(v)
    for filt in (a, b):
        assert covariance._is_packed(filt._belief.filter)
        assert filt.state.filter.cov.shape == (5, 5, S)
        np.testing.assert_allclose(filt.state.filter.cov, batch.state.filter.cov, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(filt.state.filter.mean, batch.state.filter.mean, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(filt.weights, batch.weights, rtol=1e-10)
        np.testing.assert_allclose(filt.forecast(5).quantiles, batch.forecast(5).quantiles, rtol=1e-10)


def test_bank_bands_match_the_mixture_quantiles():
    """The step's predictive bands (Newton with the fast normal CDF) agree with `mixture_quantiles`
    (exact CDF, same Newton step) for a spread-out bank."""
    y = _series(seed=6, gaps=())
    draws = _draws(50, spread=0.8)
    filt = engine.OnlineFilter(SPEC, draws, y_history=y[:30], rejuvenation=MANUAL)
    w = filt.weights
    info = jax.device_get(filt.update(y[30]))
    ref = np.asarray(online.mixture_quantiles(jnp.asarray(w), jnp.asarray(info.draw_mean),
                                              jnp.asarray(info.draw_var), online.PROBS, iters=1))
    np.testing.assert_allclose(info.quantiles, ref, atol=1e-5 * np.sqrt(float(info.var)))
    cdf = np.sum(w * scipy.stats.norm.cdf((info.quantiles[:, None] - info.draw_mean) / np.sqrt(info.draw_var)), axis=1)
    np.testing.assert_allclose(cdf, online.PROBS, atol=2e-3)


def test_posterior_draws_are_not_weighted_by_the_history_they_condition_on():
    """from_posterior: draws from p(θ | y_history) keep equal weights after the catch-up; the
    constructor (prior draws) weights them by the history's likelihood, the exact IS weights."""
    y = np.asarray(engine.simulate(jax.random.PRNGKey(3), {"irregular": True}, [1.0], 200))
    draws = {"sigma2.irregular": np.random.default_rng(1).uniform(0.8, 1.2, 50)}
    post = engine.OnlineFilter.from_posterior({"irregular": True}, draws, y, rejuvenation=MANUAL)
    assert_rel_close(post.weights, np.full(50, 1 / 50), 1e-12, "posterior weights")
    assert post.ess == pytest.approx(50.0)
    prior = engine.OnlineFilter({"irregular": True}, draws["sigma2.irregular"][:, None], y_history=y,
                                rejuvenation=MANUAL)
    ll = np.array([float(engine.loglik({"irregular": True}, [v], y)) for v in draws["sigma2.irregular"]])
    w = np.exp(ll - ll.max())
    assert_rel_close(prior.weights, w / w.sum(), 1e-9, "importance weights")


def test_rejuvenation_move_pads_the_history_and_equals_the_unpadded_move():
    """move_on_posterior pads y with missing values to a power of two: the same moved draws as
    resample_move on the plain log posterior, and one compiled program for a bucket of lengths."""
    from engine import bayes
    from engine.rejuvenation import resample_move

    spec = {"level": "local_level"}
    y = np.asarray(engine.simulate(jax.random.PRNGKey(4), spec, [1.0, 0.2], 90))
    rng = np.random.default_rng(0)
    params = np.exp(rng.normal(np.log([1.0, 0.2]), 0.3, (20, 2)))
    log_weight = rng.normal(size=20)
    key = jax.random.PRNGKey(7)
    ours, info = bayes.move_on_posterior(key, spec, y[:70], None, None, params, log_weight, n_steps=3)
    logp, to_u, to_c = engine.log_posterior(spec, jnp.asarray(y[:70]))
    ref, ref_info = resample_move(key, logp, to_u, to_c, jnp.asarray(params), jnp.asarray(log_weight), 3)
    assert_rel_close(ours, ref, 1e-9, "moved draws")
    assert float(info.acceptance) == pytest.approx(float(ref_info.acceptance))
    compiled = bayes._move_jit._cache_size()
    bayes.move_on_posterior(key, spec, y[:90], None, None, params, log_weight, n_steps=3)   # same bucket (128)
    assert bayes._move_jit._cache_size() == compiled


def test_catch_up_in_power_of_two_pieces_equals_one_pass():
    """Rejuvenation catches a new bank up in pieces of power-of-two lengths: same belief as one pass."""

    y = _series(77)
    y[[3, 50]] = np.nan
    filt = engine.OnlineFilter(SPEC, _draws(3), rejuvenation=MANUAL)
    one = online_bank._catch_up_jit(filt.config, filt.bank, filt.state, jnp.asarray(y), None)
    pieces = history._catch_up_pieces(filt.config, filt.bank, filt.state, y, None)   # len(y) = 2^k + ... pieces
    assert len(y) & (len(y) - 1), "the test needs a length that is not a power of two"
    for a, b in zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(pieces)):
        np.testing.assert_allclose(np.asarray(b, float), np.asarray(a, float), rtol=1e-10, atol=1e-12)


def _batch_predictives(draws, y):
    """Per draw and step, from the batch filter: the predictive mean and variance of y_t and the
    log-likelihood terms, each (time, draw)."""
    refs = [engine.filter_series(SPEC, d, y) for d in draws]
    mu = np.stack([y - np.asarray(r.innovation) for r in refs], axis=1)
    F = np.stack([np.asarray(r.innov_var) for r in refs], axis=1)
    ll = np.stack([np.asarray(r.loglik_terms) for r in refs], axis=1)
    return mu, F, ll, refs


def test_mixture_pit_innovation_anomaly_and_cusum_match_the_batch_filter_and_scipy():
    """After a level shift the mixture PIT, standardised innovation, anomaly flag and the CUSUM
    drift alarm equal their definitions computed from the batch filter of each draw with scipy."""
    y = _series(n=70, seed=3, gaps=(0, 20))
    y[50:] += 12.0   # a level shift the model does not expect
    draws = _draws(6, spread=0.5)
    filt = engine.OnlineFilter(SPEC, draws, rejuvenation=MANUAL)
    infos, _ = _stream(filt, y)
    mu, F, ll, _ = _batch_predictives(draws, y)
    log_w = np.full(len(draws), -np.log(len(draws)))
    upper = lower = 0.0
    config = filt.config
    drifts = []
    for t, info in enumerate(infos):
        w = np.exp(log_w - np.logaddexp.reduce(log_w))     # the weights before y_t
        valid = not np.isnan(y[t]) and not bool(info.diffuse)
        if valid:
            u = (y[t] - mu[t]) / np.sqrt(F[t])
            pit = float(np.sum(w * scipy.stats.norm.cdf(u)))
            # Φ⁻¹ of the smaller tail: accurate far out, where 1 − PIT is below roundoff of PIT
            z = scipy.stats.norm.ppf(pit) if pit <= 0.5 else scipy.stats.norm.isf(np.sum(w * scipy.stats.norm.sf(u)))
            assert float(info.pit) == pytest.approx(pit, abs=1e-12), t
            assert float(info.innovation) == pytest.approx(z, rel=1e-9, abs=1e-9), t
            assert bool(info.anomaly) == (abs(z) > config.anomaly_z), t
            upper, lower = max(0.0, upper + z - config.cusum_k), max(0.0, lower - z - config.cusum_k)
        else:
            assert np.isnan(info.pit) and np.isnan(info.innovation) and not bool(info.anomaly)
        drift = max(upper, lower) > config.cusum_h
        if drift:
            upper = lower = 0.0
        assert bool(info.drift) == drift, t
        np.testing.assert_allclose(info.cusum, [upper, lower], atol=1e-9)
        drifts.append(drift)
        log_w = log_w + ll[t]
    assert bool(infos[50].anomaly) and any(drifts[50:53]) and not any(drifts[:50])


def test_drift_triggers_a_background_refit_when_asked():
    rng = np.random.default_rng(5)
    y = rng.normal(0.0, np.sqrt(2.5), 120)
    y[80:] += 15.0
    start = exact_posterior(y[:40]).rvs(200, random_state=rng)[:, None]
    events = {}
    for refit in (False, True):
        filt = engine.OnlineFilter(IID, start, y_history=y[:40], weigh_history=False, rejuvenation=RejuvenationConfig(
            ess_threshold=0.0, refit_on_drift=refit, log_posterior=conjugate_log_posterior, move_steps=2))
        for v in y[40:90]:
            info = filt.update(v)
            filt.wait_for_rejuvenation()
        events[refit] = [e for e in filt.events if e["kind"] == "rejuvenation_start"]
    assert events[False] == []
    assert [e["reason"] for e in events[True]][:1] == ["drift"] and events[True][0]["t_start"] >= 81


def test_failed_moves_back_off_instead_of_restarting_at_every_update():
    def broken(spec, y, exog=None, priors=None):
        raise RuntimeError("no posterior today")

    rng = np.random.default_rng(2)
    y = rng.normal(0.0, 3.0, 200)
    start = exact_posterior(y[:1] * 0.1).rvs(100, random_state=rng)[:, None]   # ESS collapses at once
    filt = engine.OnlineFilter(IID, start, rejuvenation=RejuvenationConfig(ess_threshold=0.99, log_posterior=broken))
    for v in y:
        filt.update(v)
        filt.wait_for_rejuvenation()
    starts = [e["t_start"] for e in filt.events if e["kind"] == "rejuvenation_start"]
    failed = [e for e in filt.events if e["kind"] == "rejuvenation_failed"]
    assert len(failed) == len(starts) and "no posterior today" in failed[0]["error"]
    assert 3 <= len(starts) <= 5, starts          # 16, 32, 64, 128 observations apart, not 200 tries
    gaps = np.diff(starts)
    assert np.all(gaps >= [RETRY_AFTER * 2 ** k for k in range(len(gaps))])
    assert [e["failures"] for e in failed] == list(range(1, len(failed) + 1))
    assert all(e["retry_at"] <= s for e, s in zip(failed, starts[1:]))
    assert filt.t == len(y)                        # the stream itself never stopped


def test_close_ends_a_move_in_flight_and_keeps_the_bank():
    """A move still running when the filter is closed gives up (before its catch-up), nothing is
    swapped in afterwards, no new move starts, and updates go on with the same bank."""
    started = threading.Event()

    def slow(spec, y, exog=None, priors=None):
        started.set()
        time.sleep(0.5)
        return conjugate_log_posterior(spec, y, exog, priors)

    rng = np.random.default_rng(4)
    y = rng.normal(0.0, 2.0, 300)
    start = exact_posterior(y[:200]).rvs(50, random_state=rng)[:, None]
    filt = engine.OnlineFilter(IID, start, y_history=y[:200], weigh_history=False,
                               rejuvenation=RejuvenationConfig(log_posterior=slow, move_steps=2, ess_threshold=0.0))
    params = filt.params.copy()
    assert filt.rejuvenate("test")
    started.wait()
    assert filt.close(timeout=60)
    assert not filt.rejuvenating and not filt.rejuvenate("again")
    for v in y[200:]:
        filt.update(v)
    np.testing.assert_array_equal(filt.params, params)
    assert [e["kind"] for e in filt.events] == ["rejuvenation_start"]
    assert filt.t == len(y)


def test_an_observation_no_draw_can_weigh_keeps_the_weights():
    """y so large that v² overflows gives every draw a log-likelihood of −inf: the step says so
    (log_pred = −inf, an anomaly) and keeps the weights instead of turning them into NaN."""
    y = _series(gaps=())
    filt = engine.OnlineFilter(SPEC, _draws(3), y_history=y[:40], rejuvenation=MANUAL)
    before = filt.weights.copy()
    info = filt.update(1e200)
    assert float(info.log_pred) == -np.inf and bool(info.anomaly)
    np.testing.assert_array_equal(filt.weights, before)
    assert float(info.ess) == pytest.approx(1.0 / np.sum(before ** 2))
    assert np.all(np.isfinite(np.asarray(info.state_mean)))


def test_a_failed_step_leaves_history_and_belief_in_step(monkeypatch):
    """An update whose compiled step raises consumes nothing: the history and the belief still
    agree, and the next updates equal a run that never saw the failure."""
    y = _series(gaps=())
    filt = engine.OnlineFilter(SPEC, _draws(3), y_history=y[:20], rejuvenation=MANUAL)
    real = OnlineFilter._step_for

    def failing(self, *args, **kwargs):
        monkeypatch.setattr(OnlineFilter, "_step_for", real)   # fails once
        def step(*_):
            raise RuntimeError("out of memory while compiling")
        return step

    monkeypatch.setattr(OnlineFilter, "_step_for", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        filt.update(y[20])
    assert filt.t == int(filt.state.t) == 20
    filt.update_many(y[20:30])
    ref = engine.OnlineFilter(SPEC, _draws(3), y_history=y[:30], rejuvenation=MANUAL)
    assert filt.t == int(filt.state.t) == 30
    np.testing.assert_array_equal(filt.history()[0], y[:30])
    assert_rel_close(np.asarray(filt.state.filter.mean), np.asarray(ref.state.filter.mean), 1e-9, "mean")


def test_square_root_bank_equals_the_batch_filter_per_draw():
    y = _series()
    draws = _draws(3)
    filt = engine.OnlineFilter(engine.OnlineConfig(SPEC, sqrt=True), draws, rejuvenation=MANUAL)
    infos, beliefs = _stream(filt, y)
    for s in range(len(draws)):
        ref = engine.filter_series(SPEC, draws[s], y)
        L = np.array([b.filter.cov[:, :, s] for b in beliefs])
        assert np.allclose(L, np.tril(L))            # the belief holds a Cholesky factor
        assert_rel_close(np.array([i.filtered_mean[:, s] for i in infos]), ref.filtered_mean, 1e-9, "filtered mean")
        assert_rel_close((L @ np.swapaxes(L, 1, 2))[:-1], ref.predicted_cov[1:], 1e-9, "predicted cov")
        ll = sum(float(i.loglik[s]) for i in infos)
        assert ll == pytest.approx(float(engine.loglik(SPEC, draws[s], y)), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("iters", [0, 3])
def test_component_and_state_bands_are_the_quantiles_of_the_mixed_filtered_belief(iters):
    """The level's bands: quantiles of Σ_s w_s N(a_{t|t,s}, P_{t|t,s}) with a, P from each draw's
    batch filter and w the exact posterior weights after y_t, solved with scipy. Newton steps
    (component_quantile_iters) make them exact; the default Cornish–Fisher start is close, as
    are every state's bands."""
    y = _series(seed=6, gaps=())
    draws = _draws(40, spread=0.8)
    filt = engine.OnlineFilter(engine.OnlineConfig(SPEC, component_quantile_iters=iters), draws, y_history=y[:30],
                               rejuvenation=MANUAL)
    info = jax.device_get(filt.update(y[30]))
    _, _, ll, refs = _batch_predictives(draws, y[:31])
    lw = ll.sum(axis=0)
    w = np.exp(lw - np.logaddexp.reduce(lw))
    assert online.component_names(SPEC)[0] == "level"
    m = np.array([r.filtered_mean[-1, 0] for r in refs])
    sd = np.sqrt([r.filtered_cov[-1, 0, 0] for r in refs])
    cdf = lambda q: np.sum(w * scipy.stats.norm.cdf((q - m) / sd))
    exact = [scipy.optimize.brentq(lambda q: cdf(q) - p, m.min() - 10 * sd.max(), m.max() + 10 * sd.max(), xtol=1e-14)
             for p in online.PROBS]
    mix_sd = float(np.sqrt(info.component_var[0]))
    assert float(info.component_mean[0]) == pytest.approx(np.sum(w * m), rel=1e-9)
    assert mix_sd ** 2 == pytest.approx(np.sum(w * (sd ** 2 + (m - np.sum(w * m)) ** 2)), rel=1e-9)
    tol = 1e-7 if iters else 0.05
    np.testing.assert_allclose(info.component_quantiles[0], exact, atol=tol * mix_sd)
    # each filtered state's mixture: its mean and variance exactly, its bands (Cornish–Fisher) closely
    a = np.array([r.filtered_mean[-1] for r in refs])                                   # (draw, state)
    v = np.array([np.diagonal(r.filtered_cov[-1]) for r in refs])
    mean = w @ a
    np.testing.assert_allclose(info.state_mean, mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(info.state_var, w @ (v + (a - mean) ** 2), rtol=1e-9)
    for i in range(a.shape[1]):
        cdf_i = lambda q: np.sum(w * scipy.stats.norm.cdf((q - a[:, i]) / np.sqrt(v[:, i])))
        lo, hi = a[:, i].min() - 10 * np.sqrt(v[:, i].max()), a[:, i].max() + 10 * np.sqrt(v[:, i].max())
        exact_i = [scipy.optimize.brentq(lambda q: cdf_i(q) - p, lo, hi, xtol=1e-14) for p in online.PROBS]
        np.testing.assert_allclose(info.state_quantiles[i], exact_i, atol=0.05 * np.sqrt(info.state_var[i]))


def test_from_posterior_keeps_the_fits_priors_for_the_rejuvenation_move():
    """An InferenceData from fit_nuts carries its priors; the bank's default move targets them
    (resolved again, they are the same priors whatever the history's scale)."""
    from engine import bayes
    spec = {"level": "local_level"}
    y = np.asarray(engine.simulate(jax.random.PRNGKey(0), spec, [1.0, 0.2], 60))
    priors = {"sigma2.irregular": {"dist": "inverse_gamma", "concentration": 3.0, "rate": 2.0},
              "sigma2.level": {"dist": "half_normal", "scale": 0.7}}
    idata = engine.fit_nuts(spec, y[:40], chains=1, warmup=60, draws=40, seed=0, priors=priors)
    filt = engine.OnlineFilter.from_posterior(spec, idata, y[:40],
                                              rejuvenation=RejuvenationConfig(automatic=False, move_steps=2))
    assert filt.rejuvenator.config.priors == online.fit_priors(idata)
    for history in (y[:40], 1e3 * y):   # data-scaled defaults would differ between these
        resolved = bayes.make_problem(spec, history, priors=filt.rejuvenator.config.priors).priors
        assert {n: p.as_dict() for n, p in resolved.items()} == priors
    assert online.fit_priors({"sigma2.irregular": [1.0], "sigma2.level": [0.2]}) is None
    filt.update_many(y[40:])
    assert filt.rejuvenate(background=False)
    filt.apply_pending()
    assert [e["kind"] for e in filt.events] == ["rejuvenation_start", "rejuvenation_done"], filt.events
