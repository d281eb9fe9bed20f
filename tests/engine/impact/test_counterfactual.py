"""The counterfactual kernel against a dense Gaussian reference.

The reference writes y_{1:N} of a time-invariant system as y = X δ + u: δ the diffuse initial
states (flat prior), u Gaussian with the covariance built entry by entry from the system
matrices (state covariances C(s, t) of the non-diffuse part, P*_1 included). The post-period
given the pre-period is then generalised least squares (the exact limit of a diffuse start),
and the cumulative sum's variance is cᵀ Σ c over the post-period covariance: nothing of the
Kalman recursion is used.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import ndtr

import engine
from engine import impact


def dense_post_given_pre(spec, params, x, n_pre: int, y):
    """(mean (post,), cov (post, post)) of y_{n_pre:} given the observed y_{:n_pre}, by dense GLS."""
    n = len(y)
    sys = engine.build_system(spec, params, None if x is None else jnp.asarray(x))
    T, Q = np.asarray(sys.transition), np.diag(np.asarray(sys.state_var))
    m = T.shape[0]
    Z = np.broadcast_to(np.asarray(sys.design), (n, m))
    d = np.broadcast_to(np.asarray(sys.obs_intercept), (n,))
    H = float(sys.obs_var)
    D = np.asarray(sys.init_diffuse)[:, np.diag(np.asarray(sys.init_diffuse)) > 0]   # (state, diffuse)
    # powers of T and the non-diffuse state covariances C(t, t)
    powers, C = [np.eye(m)], [np.asarray(sys.init_cov)]
    for _ in range(1, n):
        powers.append(T @ powers[-1])
        C.append(T @ C[-1] @ T.T + Q)
    X = np.stack([Z[t] @ powers[t] @ D for t in range(n)])          # (time, diffuse)
    S = np.empty((n, n))
    for s in range(n):
        for t in range(s, n):
            S[s, t] = S[t, s] = Z[s] @ C[s] @ powers[t - s].T @ Z[t] + (H if s == t else 0.0)
    pre = np.flatnonzero(np.isfinite(y[:n_pre]))
    post = np.arange(n_pre, n)
    Spp_inv = np.linalg.inv(S[np.ix_(pre, pre)])
    A = S[np.ix_(post, pre)] @ Spp_inv                  # regression of u_post on u_pre
    Xr = X[post] - A @ X[pre]
    info = X[pre].T @ Spp_inv @ X[pre]
    delta = np.linalg.solve(info, X[pre].T @ Spp_inv @ (y[pre] - d[pre]))
    mean = d[post] + X[post] @ delta + A @ (y[pre] - d[pre] - X[pre] @ delta)
    cov = S[np.ix_(post, post)] - A @ S[np.ix_(pre, post)] + Xr @ np.linalg.solve(info, Xr.T)
    return mean, cov


CASES = {
    # the coefficient is a (diffuse) state: the design changes with x_t
    "level+state regression": (
        {"irregular": True, "level": {"kind": "local_level"}, "regression": {"columns": ["x"], "coefficients": "state"}},
        {"sigma2.irregular": 0.8, "sigma2.level": 0.15}),
    # trend, seasonal, a stationary AR block (P*_1 ≠ 0) and a fixed coefficient in d_t
    "trend+seasonal+ar+beta": (
        {"irregular": True, "level": {"kind": "local_linear_trend"},
         "seasonal": [{"period": 4, "form": "dummy", "stochastic": True}], "autoregressive": {"order": 1},
         "regression": {"columns": ["x"]}},
        {"sigma2.irregular": 0.5, "sigma2.level": 0.1, "sigma2.trend": 0.01, "sigma2.seasonal": 0.05,
         "sigma2.ar": 0.3, "ar.L1": 0.6, "beta.x": 1.5}),
}


def _data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    x = np.cumsum(rng.normal(0, 1, n))[:, None] * 0.3 + np.sin(np.arange(n) / 3.0)[:, None]
    y = 2.0 * x[:, 0] + np.cumsum(rng.normal(0, 0.4, n)) + rng.normal(0, 0.7, n)
    return x, y


@pytest.mark.parametrize("case", list(CASES))
def test_counterfactual_moments_equal_dense_gls(case):
    """Each step's predictive and the cumulative sum's mean and variance (with a missing value in
    each period, which the sum skips) equal the dense GLS reference."""
    spec, params = CASES[case]
    n_pre, n = 30, 42
    x, y = _data(n, 3)
    y[7] = np.nan
    y[n_pre + 4] = np.nan
    monitor = impact.OnlineImpact(spec, params, y[:n_pre], x[:n_pre])
    monitor.update_many(y[n_pre:], x[n_pre:])
    res = monitor.result()
    mean, cov = dense_post_given_pre(spec, params, x, n_pre, y)
    np.testing.assert_allclose(res.draw_mean[:, 0], mean, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(res.draw_var[:, 0], np.diag(cov), rtol=1e-8)
    c = np.isfinite(y[n_pre:]).astype(float)
    cum_var = [c[:h] @ cov[:h, :h] @ c[:h] for h in range(1, n - n_pre + 1)]
    np.testing.assert_allclose(res.cum_mean[:, 0], np.cumsum(c * mean), rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(res.cum_var[:, 0], cum_var, rtol=1e-8)


def test_effects_of_a_weighted_bank_are_the_mixture_of_the_dense_references():
    """Three draws with unequal weights: the cumulative effect's mean is the weighted mean, its
    interval's ends are where the mixture CDF of the dense references is 2.5% / 97.5%, and
    p_no_effect is that CDF's smaller tail at the observed sum."""
    spec = {"irregular": True, "level": {"kind": "local_level"}}
    draws = {"sigma2.irregular": np.array([0.5, 1.0, 1.5]), "sigma2.level": np.array([0.05, 0.2, 0.1])}
    w = np.array([0.2, 0.5, 0.3])
    n_pre, n = 25, 35
    _, y = _data(n, 5)
    y[n_pre:] += 1.0
    monitor = impact.OnlineImpact(spec, draws, y[:n_pre], log_weight=np.log(w))
    monitor.update_many(y[n_pre:])
    res = monitor.result()
    means, sds = [], []
    for s in range(3):
        mean, cov = dense_post_given_pre(spec, {k: v[s] for k, v in draws.items()}, None, n_pre, y)
        means.append(mean.sum())
        sds.append(np.sqrt(cov.sum()))
    means, sds = np.array(means), np.array(sds)
    total = y[n_pre:].sum()
    cdf = lambda c: float(np.sum(w * ndtr((c - means) / sds)))
    assert res.cumulative.mean == pytest.approx(total - w @ means, rel=1e-9)
    # effect = total − C: its lower end is total − (C's 97.5% quantile)
    assert cdf(total - res.cumulative.lower) == pytest.approx(0.975, abs=1e-8)
    assert cdf(total - res.cumulative.upper) == pytest.approx(0.025, abs=1e-8)
    assert res.p_no_effect == pytest.approx(min(cdf(total), 1 - cdf(total)), rel=1e-9)
    assert res.average.mean == pytest.approx(res.cumulative.mean / (n - n_pre), rel=1e-12)


def test_pointwise_moments_equal_posterior_forecast():
    """The counterfactual's per-step moments are the h-step forecasts of `posterior_forecast`
    (another path: the batched filter over the series extended by missing values)."""
    spec = {"irregular": True, "level": {"kind": "local_linear_trend"},
            "seasonal": [{"period": 4, "form": "trig", "stochastic": True}]}
    draws = {name: np.array([0.05, 0.1]) * (i + 1) for i, name in enumerate(engine.param_names(spec))}
    _, y = _data(40, 8)
    monitor = impact.OnlineImpact(spec, draws, y[:30])
    monitor.update_many(y[30:])
    res = monitor.result()
    ref = engine.posterior_forecast(spec, draws, y[:30], steps=10)
    np.testing.assert_allclose(res.draw_mean.T, ref.draws_mean, rtol=1e-9)
    np.testing.assert_allclose(res.draw_var.T, ref.draws_var, rtol=1e-9)


def test_a_pre_period_that_leaves_a_state_diffuse_is_refused():
    spec = {"irregular": True, "level": {"kind": "local_linear_trend"}}
    monitor = impact.OnlineImpact(spec, {"sigma2.irregular": 1.0, "sigma2.level": 0.1, "sigma2.trend": 0.01}, [1.0])
    with pytest.raises(ValueError, match="still diffuse"):
        monitor.update(2.0)
    assert monitor.t == 0   # refused before anything was recorded
