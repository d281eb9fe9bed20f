"""The per-step report: PIT, innovation, anomaly score and CUSUM against the batch filter and
scipy; component and state bands against the quantiles of the mixed filtered belief.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import scipy.stats

import engine
from engine import online

from .cases import SPEC, MANUAL, make_draws, make_series, stream_updates


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
    y = make_series(n=70, seed=3, gaps=(0, 20))
    y[50:] += 12.0   # a level shift the model does not expect
    draws = make_draws(6, spread=0.5)
    filt = engine.OnlineFilter(SPEC, draws, rejuvenation=MANUAL)
    infos, _ = stream_updates(filt, y)
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


@pytest.mark.parametrize("iters", [0, 3])
def test_component_and_state_bands_are_the_quantiles_of_the_mixed_filtered_belief(iters):
    """The level's bands: quantiles of Σ_s w_s N(a_{t|t,s}, P_{t|t,s}) with a, P from each draw's
    batch filter and w the exact posterior weights after y_t, solved with scipy. Newton steps
    (component_quantile_iters) make them exact; the default Cornish–Fisher start is close, as
    are every state's bands."""
    y = make_series(seed=6, gaps=())
    draws = make_draws(40, spread=0.8)
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
