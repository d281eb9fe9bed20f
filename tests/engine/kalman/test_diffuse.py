"""The exact diffuse phase on every path, where Koopman's recursion is ill-conditioned.

Daily births, first 400 days: over the first d days the low yearly harmonics are nearly
polynomials in t, so the diffuse design is nearly collinear and Koopman's pivots F∞ fall to
round-off (statsmodels and the engine's recursion alone are off by 10s to 1000s of nats). The
augmented filter beside the recursion (`engine.kalman.augmented`) makes every path exact: the
batch filters (standard and sqrt), the per-step terms, the online bank (step, micro-batches,
catch-up), the fleet filter, `loglik_many`, and the MAP and NUTS log densities.

Two references that need no Kalman filter of ours: a dense generalised-least-squares form of the
diffuse likelihood (`dense_gls_loglik`: the joint covariance of the observations, no recursion
at all), and de Jong's augmented filter written in NumPy (`reference_diffuse`), both from
statsmodels' system matrices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import engine
from engine import bayes
from engine.fleet.filtering import batch_innovations
from engine.online import RejuvenationConfig

from ..helpers import air, potential_likelihoods, sm_model
from ..reference_diffuse import _tv, statsmodels_diffuse_loglik

RTOL = 1e-6
N_DAYS = 400
LEVEL = {"kind": "local_level"}
WEEKLY_DUMMY = {"period": 7, "form": "dummy", "stochastic": True}
WEEKLY_TRIG = {"period": 7, "form": "trig", "harmonics": 3}


def births(n: int = N_DAYS) -> np.ndarray:
    return engine.load_dataset("births")["births"].to_numpy(dtype=float)[:n]


def suggested_spec() -> dict:
    """The catalogue's suggested spec for births (level, weekly dummy, yearly trig(3))."""
    return engine.catalogue_entry("births")["suggested_spec"]


def yearly_spec(harmonics: int, weekly: dict | None) -> dict:
    seasonal = [weekly] if weekly else []
    return {"irregular": True, "level": LEVEL,
            "seasonal": seasonal + [{"period": 365.25, "form": "trig", "harmonics": harmonics, "stochastic": True}]}


def point(spec, y) -> np.ndarray:
    """Ordinary values: the irregular a tenth of the day-to-day variance, the rest 1e-3 of it."""
    v = float(np.nanvar(np.diff(y)))
    names = engine.param_names(spec)
    return np.array([0.1 * v if n == "sigma2.irregular" else 0.5 if n.startswith("beta.") else 1e-3 * v
                     for n in names])


def regressor(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    return pd.DataFrame({"x": np.cos(np.arange(n) / 11.0) + 0.3 * rng.standard_normal(n)})


# -- an independent reference with no filter: the dense GLS form ---------------------------------
def dense_gls_loglik(mod, params) -> float:
    """The exact diffuse log-likelihood from the joint law of the observations, no recursion.

    With α₁ = a + A δ + η (P∞ = A Aᵀ, η ~ N(0, P*)), the observed y = μ + X δ + u, u ~ N(0, Σ),
    where X_t = Z_t Φ_t A, μ_t = Z_t (Φ_t a + ...) + d_t and Σ_st = Z_s Φ(s, t) V_t Z_tᵀ + H δ_st
    (V_t = Var α_t given δ). The exact diffuse likelihood (the limit of log L + (d/2) log κ) is

        −½ [ n log 2π + log |Σ| + r̂ᵀ Σ⁻¹ r̂ + log |Xᵀ Σ⁻¹ X| ],   r̂ the GLS residual,

    computed here by one Cholesky of Σ and one QR of the whitened [X, y − μ]."""
    mod.update(np.asarray(params, dtype=float))
    ssm = mod.ssm
    const, diffuse, stationary = ssm.initialization(model=ssm)
    y = np.asarray(ssm.endog, dtype=float)[0]
    n, m = y.shape[0], const.shape[0]
    w, V = np.linalg.eigh(np.asarray(diffuse, dtype=float))
    keep = w > 1e-12 * max(1.0, float(np.max(np.abs(w))))
    A = V[:, keep] * np.sqrt(w[keep])
    mu_a, X_a, V_a = np.asarray(const, dtype=float), A, np.asarray(stationary, dtype=float)
    W = np.zeros((m, n))                  # column t: Φ(s, t) V_t Z_tᵀ at the current s
    Sigma, X, mu = np.zeros((n, n)), np.zeros((n, A.shape[1])), np.zeros(n)
    for s in range(n):
        Z = _tv(ssm._design, s)[0]
        W[:, s] = V_a @ Z
        Sigma[s, :s + 1] = Z @ W[:, :s + 1]
        Sigma[s, s] += float(_tv(ssm._obs_cov, s)[0, 0])
        X[s], mu[s] = Z @ X_a, Z @ mu_a + float(_tv(ssm._obs_intercept, s)[0])
        T, R = _tv(ssm._transition, s), _tv(ssm._selection, s)
        W, X_a = T @ W, T @ X_a
        mu_a = T @ mu_a + _tv(ssm._state_intercept, s)
        V_a = T @ V_a @ T.T + R @ _tv(ssm._state_cov, s) @ R.T
    Sigma = np.tril(Sigma) + np.tril(Sigma, -1).T
    obs = np.isfinite(y)
    L = np.linalg.cholesky(Sigma[np.ix_(obs, obs)])
    white = np.linalg.solve(L, np.column_stack([X[obs], (y - mu)[obs]]))
    R_f = np.linalg.qr(white, mode="r")
    d = X.shape[1]
    log_det_S = 2.0 * np.sum(np.log(np.abs(np.diagonal(R_f)[:d])))
    return -0.5 * (obs.sum() * np.log(2 * np.pi) + 2.0 * np.sum(np.log(np.diagonal(L))) + R_f[d, d] ** 2 + log_det_S)


def exact(spec, p, y, exog=None) -> float:
    """The two references, checked against each other, and their value."""
    mod = sm_model(spec, y, exog)
    gls = dense_gls_loglik(mod, p)
    assert statsmodels_diffuse_loglik(mod, p) == pytest.approx(gls, rel=1e-9, abs=0)
    return gls


def gappy(y: np.ndarray) -> np.ndarray:
    """Gaps inside the diffuse phase (the first days) and after it."""
    y = y.copy()
    y[[0, 2, 3, 7, 12, 13, 40, 41, 200]] = np.nan
    return y


CASES = {
    "suggested": (suggested_spec, False, False),
    "yearly2_weekly_dummy": (lambda: yearly_spec(2, WEEKLY_DUMMY), False, False),
    "yearly3_weekly_trig_gaps": (lambda: yearly_spec(3, WEEKLY_TRIG), True, False),
    "yearly4_no_weekly": (lambda: yearly_spec(4, None), False, False),
    "yearly6_weekly_dummy": (lambda: yearly_spec(6, WEEKLY_DUMMY), False, False),
    "yearly6_no_weekly_gaps": (lambda: yearly_spec(6, None), True, False),
    "yearly3_regression_state": (lambda: {**yearly_spec(3, WEEKLY_DUMMY),
                                          "regression": {"columns": ["x"], "coefficients": "state"}}, True, True),
    "yearly3_regression_parameters": (lambda: {**yearly_spec(3, WEEKLY_DUMMY),
                                               "regression": {"columns": ["x"], "coefficients": "parameters"}},
                                      False, True),
}


def case_inputs(case):
    make, gaps, reg = CASES[case]
    spec = make()
    y = births()
    y = gappy(y) if gaps else y
    exog = regressor(N_DAYS) if reg else None
    return spec, y, exog, point(spec, y)


ALL_FILTERS = ("yearly6_no_weekly_gaps", "yearly3_regression_state")   # sqrt and kept steps too (more compiles)


@pytest.mark.parametrize("case", list(CASES))
def test_batch_filters_and_terms_equal_the_exact_likelihood(case):
    """loglik and the sum of loglik_terms equal the dense GLS value; on some cases the sqrt
    filter and the per-step filter (kept steps: batches, the smoother's and the app's path) too."""
    spec, y, exog, p = case_inputs(case)
    ref = exact(spec, p, y, exog)
    assert float(engine.loglik(spec, p, y, exog, filter="standard")) == pytest.approx(ref, rel=RTOL, abs=0)
    terms = np.asarray(engine.loglik_terms(spec, p, y, exog, filter="standard"))
    assert np.all(terms[np.isnan(y)] == 0)
    assert float(terms.sum()) == pytest.approx(ref, rel=RTOL, abs=0)
    if case in ALL_FILTERS:
        assert float(engine.loglik(spec, p, y, exog, filter="sqrt")) == pytest.approx(ref, rel=RTOL, abs=0)
        kept = engine.filter_series(spec, p, y, exog, filter="standard").loglik_terms
        assert float(np.sum(kept)) == pytest.approx(ref, rel=RTOL, abs=0)


def test_well_conditioned_start_keeps_koopman_per_step_terms():
    """Where the diffuse start is well conditioned the per-step terms stay Koopman's (statsmodels'
    llf_obs to 1e-8, its diffuse steps included), the augmented filter only confirming them."""
    spec = {"irregular": True, "level": {"kind": "local_linear_trend"}, "seasonal": [{"period": 12}]}
    y = air()
    y[[1, 5, 30]] = np.nan
    p = np.array([3e-4, 7e-4, 1e-6, 5e-3])
    ref = sm_model(spec, y).loglikeobs(p)
    np.testing.assert_allclose(np.asarray(engine.loglik_terms(spec, p, y)), ref, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(np.asarray(engine.filter_series(spec, p, y).loglik_terms), ref, rtol=1e-8,
                               atol=1e-10)


@pytest.mark.parametrize("case", ["suggested", "yearly6_no_weekly_gaps"])
def test_online_stream_and_catch_up_equal_the_exact_likelihood(case):
    """A stream through OnlineFilter (single updates through the diffuse phase, then micro-batches)
    sums to the exact value per draw; a bank started from a history (catch-up) weighs its draws
    by the exact likelihoods."""
    spec, y, exog, p = case_inputs(case)
    draws = np.stack([p, p * np.linspace(0.7, 1.4, p.shape[0])])
    refs = [exact(spec, q, y, exog) for q in draws]
    manual = RejuvenationConfig(automatic=False)
    filt = engine.OnlineFilter(spec, draws, rejuvenation=manual)
    total = np.zeros(2)
    for v in y[:30]:
        total += np.asarray(filt.update(v).loglik)
    for start in range(30, N_DAYS, 185):
        total += np.asarray(filt.update_many(y[start:start + 185]).loglik).sum(axis=0)
    for got, ref in zip(total, refs):
        assert got == pytest.approx(ref, rel=RTOL, abs=0)
    caught = engine.OnlineFilter(spec, draws, y_history=y[:250], rejuvenation=manual)
    caught.update_many(y[250:])
    log_w = np.log(caught.weights)
    assert log_w[0] - log_w[1] == pytest.approx(refs[0] - refs[1], abs=RTOL * abs(refs[0]))


@pytest.mark.parametrize("case", ["suggested", "yearly4_no_weekly"])
def test_map_and_nuts_log_densities_hold_the_exact_likelihood(case):
    """At a fixed point, the likelihood inside the MAP objective (the potential) and inside the
    NUTS sampler's potential (its first-derivative likelihood) is the exact value."""
    spec, y, exog, p = case_inputs(case)
    ref = exact(spec, p, y, exog)
    map_ll, nuts_ll = potential_likelihoods(bayes.make_problem(spec, y, exog), p)
    assert map_ll == pytest.approx(ref, rel=RTOL, abs=0)
    assert nuts_ll == pytest.approx(ref, rel=RTOL, abs=0)


def test_fleet_and_many_series_equal_the_exact_likelihood():
    """The fleet's batched filter and loglik_many (per-series parameters) on two members."""
    spec, y, exog, p = case_inputs("yearly6_weekly_dummy")
    P = np.stack([p, 1.3 * p])
    refs = np.array([exact(spec, q, y) for q in P])
    Y = np.stack([y, y])
    ll = np.asarray(batch_innovations(engine.ModelSpec.from_dict(spec), jnp.asarray(P), jnp.asarray(Y), None)[0])
    np.testing.assert_allclose(ll.sum(axis=0), refs, rtol=RTOL)
    np.testing.assert_allclose(np.asarray(engine.loglik_many(spec, P, Y)), refs, rtol=RTOL)
    # shared parameters and missing pattern (the shared mean pass); a diffuse level absorbs a shift
    shared = np.asarray(engine.loglik_many(spec, p, np.stack([y, y + 1000.0])))
    np.testing.assert_allclose(shared, refs[[0, 0]], rtol=RTOL)


def test_gradient_through_the_collapse_equals_central_differences():
    """Exact gradients: reverse mode through the augmented filter and its collapse (and the
    hand-written tangents of Koopman's chunks) equals central differences of the whole-series
    augmented filter (`filter="augmented"`: no phase, no collapse, so a smooth function of the
    parameters), and its forward mode agrees."""
    spec, y, exog, p = case_inputs("yearly4_no_weekly")
    f = lambda q: engine.loglik(spec, q, y, filter="standard")  # noqa: E731
    smooth = lambda q: engine.loglik(spec, q, y, filter="augmented")  # noqa: E731
    g = np.asarray(jax.grad(f)(jnp.asarray(p)))
    assert np.all(np.isfinite(g))
    fd = np.empty_like(p)
    for i in range(p.shape[0]):
        e = np.zeros_like(p)
        e[i] = 1e-4 * p[i]
        fd[i] = (float(smooth(p + e)) - float(smooth(p - e))) / (2 * e[i])
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8 * np.max(np.abs(fd)))
    np.testing.assert_allclose(g, np.asarray(jax.grad(smooth)(jnp.asarray(p))), rtol=1e-8)
    _, along = jax.jvp(f, (jnp.asarray(p),), (jnp.asarray(p),))   # forward mode (NUTS with few parameters)
    assert float(along) == pytest.approx(float(g @ p), rel=1e-8)
