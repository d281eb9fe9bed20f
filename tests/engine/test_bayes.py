"""Bayesian fits against exact references.

* the log posterior is statsmodels' log-likelihood + the priors' scipy densities + the
  log-Jacobian of the unconstraining map, written out by hand;
* on the iid Gaussian model with an inverse-gamma prior the posterior of the variance is
  inverse-gamma in closed form: NUTS moments and the MAP/Laplace fit must match it;
* Nile's local-level posterior (two variances) by quadrature on a grid, with statsmodels'
  likelihood and scipy's prior densities, against NUTS within Monte Carlo error; simulated
  trend + seasonal + AR parameters inside their credible intervals; a badly scaled prior flagged;
* pointwise log-likelihoods sum to the log-likelihood of each draw; the InferenceData has the
  groups and statistics ArviZ expects, and survives a netCDF round trip.
"""

from __future__ import annotations

import threading
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats as st

import engine
from engine.bayes import _sampler

from .helpers import nile, sm_loglik, sm_model, with_gaps

CYCLE_AR = {"irregular": True, "level": {"kind": "local_level"},
            "cycle": {"period_bounds": [4, 40], "damped": True, "stochastic": True},
            "autoregressive": {"order": 2}}
IID = {"irregular": True}          # y_t ~ N(0, σ²): the closed-form reference
A0, B0 = 3.0, 2.0                  # inverse-gamma prior on σ²
IID_PRIOR = {"sigma2.irregular": {"dist": "inverse_gamma", "concentration": A0, "rate": B0}}


def iid_data(n=60, sigma2=1.7, seed=3):
    return np.random.default_rng(seed).normal(0.0, np.sqrt(sigma2), n)


def iid_posterior(y):
    """σ² | y ~ InverseGamma(A0 + n/2, B0 + Σy²/2) (observed values only)."""
    obs = y[np.isfinite(y)]
    return A0 + obs.size / 2, B0 + np.sum(obs ** 2) / 2


def test_log_posterior_is_loglik_plus_prior_plus_jacobian():
    y = with_gaps(nile(), index=(0, 5, 30, 31, 32, 90))
    spec = engine.ModelSpec.from_dict(CYCLE_AR)
    logp, to_u, to_c = engine.log_posterior(spec, y)
    names = engine.param_names(spec)
    theta = {"sigma2.irregular": 14000.0, "sigma2.level": 1300.0, "sigma2.cycle": 900.0, "sigma2.ar": 400.0,
             "frequency.cycle": 2 * np.pi / 12, "damping.cycle": 0.8, "ar.L1": 0.5, "ar.L2": -0.3}
    vec = jnp.array([theta[n] for n in names])
    z = to_u(vec)
    np.testing.assert_allclose(np.asarray(to_c(z)), np.asarray(vec), rtol=1e-12)
    priors = engine.default_priors(spec, y)
    lo, hi = spec.cycle.frequency_bounds
    # PACFs of the AR(2) part (Durbin–Levinson step-down by hand)
    phi1, phi2 = theta["ar.L1"], theta["ar.L2"]
    pacf = {"pacf.L2": phi2, "pacf.L1": phi1 / (1 - phi2)}
    ref = sm_loglik(CYCLE_AR, [theta[n] for n in names], y)
    for n in ("sigma2.irregular", "sigma2.level", "sigma2.cycle", "sigma2.ar"):
        ref += st.halfnorm(scale=priors[n]["scale"]).logpdf(theta[n]) + np.log(theta[n])   # θ = exp z
    f = theta["frequency.cycle"]
    ref += st.uniform(lo, hi - lo).logpdf(f) + np.log((f - lo) * (hi - f) / (hi - lo))      # θ = lo + (hi−lo)σ(z)
    rho = theta["damping.cycle"]
    ref += np.log(rho * (1 - rho))                                                         # uniform(0, 1)
    for r in pacf.values():
        ref += np.log(0.5) + np.log((1 + r) * (1 - r) / 2)                                 # uniform(−1, 1)
    assert float(logp(z)) == pytest.approx(ref, rel=1e-9)


def test_unconstrained_coordinates_map_anywhere_into_the_valid_region():
    spec = engine.ModelSpec.from_dict(CYCLE_AR)
    _, to_u, to_c = engine.log_posterior(spec, nile())
    z = jnp.asarray(np.random.default_rng(0).normal(0, 4, (500, 8)))
    theta = np.asarray(jax.vmap(to_c)(z))
    p = dict(zip(engine.param_names(spec), theta.T))
    lo, hi = spec.cycle.frequency_bounds
    assert all(np.all(p[n] > 0) for n in p if n.startswith("sigma2."))
    assert np.all((p["frequency.cycle"] > lo) & (p["frequency.cycle"] < hi))
    assert np.all((p["damping.cycle"] > 0) & (p["damping.cycle"] < 1))
    # AR(2) stationarity triangle
    assert np.all((p["ar.L2"] > -1) & (p["ar.L2"] < 1 - np.abs(p["ar.L1"])))
    np.testing.assert_allclose(np.asarray(jax.vmap(to_u)(jnp.asarray(theta))), np.asarray(z), rtol=1e-6, atol=1e-6)


def test_make_model_is_a_numpyro_model_with_one_site_per_parameter():
    import numpyro
    from numpyro import handlers

    y = nile()
    model = engine.make_model(CYCLE_AR, y)
    tr = handlers.trace(handlers.seed(model, 0)).get_trace()
    sampled = [k for k, v in tr.items() if v["type"] == "sample" and not v.get("is_observed")]
    assert sampled == ["sigma2.irregular", "sigma2.level", "sigma2.cycle", "sigma2.ar", "frequency.cycle",
                       "damping.cycle", "pacf.L1", "pacf.L2"]
    assert tr["ar.L1"]["type"] == "deterministic" and tr["loglik"]["type"] == "sample"
    assert isinstance(tr["sigma2.level"]["fn"], numpyro.distributions.HalfNormal)


@pytest.fixture(scope="module")
def iid_fit():
    y = iid_data()
    y[[5, 6, 30]] = np.nan
    calls = []
    idata = engine.fit_nuts(IID, y, chains=4, warmup=300, draws=500, seed=0, priors=IID_PRIOR,
                            progress=lambda c, i, n: calls.append((c, i, n)))
    return y, idata, calls


def test_nuts_matches_the_closed_form_posterior(iid_fit):
    y, idata, _ = iid_fit
    a, b = iid_posterior(y)
    draws = np.asarray(idata.posterior["sigma2.irregular"]).ravel()
    exact = st.invgamma(a, scale=b)
    diag = engine.diagnose(idata)
    ess = diag.table.loc["sigma2.irregular", "ess_bulk"]
    mcse = exact.std() / np.sqrt(ess)
    assert abs(draws.mean() - exact.mean()) < 5 * mcse
    assert draws.std() == pytest.approx(exact.std(), rel=0.15)
    for q in (0.1, 0.5, 0.9):
        assert st.percentileofscore(draws, exact.ppf(q)) / 100 == pytest.approx(q, abs=0.05)
    assert diag.trustworthy, diag.verdict


NILE_LL = {"irregular": True, "level": {"kind": "local_level"}}
NILE_PRIORS = {"sigma2.irregular": {"dist": "inverse_gamma", "concentration": 2.0, "rate": 20000.0},
               "sigma2.level": {"dist": "half_normal", "scale": 5000.0}}


@pytest.mark.slow
def test_nile_posterior_matches_numerical_integration_on_a_grid():
    """p(σ²_ε, σ²_η | y) ∝ L(σ²) π(σ²_ε) π(σ²_η) on a 100 × 120 grid in log-variance (with the
    Jacobian e^u of σ² = e^u), L from statsmodels' exact-diffuse filter: NUTS's marginal means,
    sds and quantiles agree within Monte Carlo error."""
    y = nile()
    mod = sm_model(NILE_LL, y)   # parameters (sigma2.irregular, sigma2.level)
    u = {"sigma2.irregular": np.linspace(np.log(3e3), np.log(6e4), 100),
         "sigma2.level": np.linspace(np.log(10.0), np.log(4e4), 120)}
    U1, U2 = np.meshgrid(u["sigma2.irregular"], u["sigma2.level"], indexing="ij")
    loglik = np.vectorize(lambda a, b: mod.loglike(np.array([a, b])))(np.exp(U1), np.exp(U2))
    log_post = (loglik + st.invgamma(2.0, scale=20000.0).logpdf(np.exp(U1)) + st.halfnorm(scale=5000.0).logpdf(np.exp(U2))
                + U1 + U2)
    w = np.exp(log_post - log_post.max())
    assert max(w[0].max(), w[-1].max(), w[:, 0].max(), w[:, -1].max()) < 1e-5   # the grid holds the mass
    w /= w.sum()
    marginals = {"sigma2.irregular": w.sum(axis=1), "sigma2.level": w.sum(axis=0)}

    idata = engine.fit_nuts(NILE_LL, y, chains=4, warmup=500, draws=1000, seed=1, priors=NILE_PRIORS)
    diag = engine.diagnose(idata)
    assert diag.trustworthy, diag.verdict
    for name, m in marginals.items():
        theta = np.exp(u[name])
        mean = np.sum(m * theta)
        sd = np.sqrt(np.sum(m * (theta - mean) ** 2))
        draws = np.asarray(idata.posterior[name]).ravel()
        assert abs(draws.mean() - mean) < 4 * sd / np.sqrt(diag.table.loc[name, "ess_bulk"]), name
        assert draws.std() == pytest.approx(sd, rel=0.1), name
        cdf = np.cumsum(m) - m / 2          # at the grid points (midpoint rule)
        for q in (0.05, 0.25, 0.5, 0.75, 0.95):
            quantile = np.exp(np.interp(q, cdf, u[name]))
            assert np.mean(draws <= quantile) == pytest.approx(q, abs=0.03), (name, q)


@pytest.mark.slow
def test_nuts_recovers_the_parameters_of_simulated_trend_seasonal_ar_data():
    spec = {"irregular": True, "level": {"kind": "local_linear_trend"},
            "seasonal": [{"period": 4, "form": "dummy", "stochastic": True}], "autoregressive": {"order": 1}}
    truth = {"sigma2.irregular": 0.3, "sigma2.level": 0.2, "sigma2.trend": 0.01, "sigma2.seasonal": 0.05,
             "sigma2.ar": 1.0, "ar.L1": 0.6}
    y = np.asarray(engine.simulate(jax.random.PRNGKey(7), spec, truth, 300))
    # 4 x 200 draws give a bulk ESS of 260-690 per parameter: the 0.5% and 99.5% quantiles are
    # then within about 0.01 in probability of the posterior's, and the truth sits between its
    # 0.07 and 0.78 quantiles (the same as with 4 x 400 draws)
    idata = engine.fit_nuts(spec, y, chains=4, warmup=200, draws=200, seed=0)
    assert engine.diagnose(idata).divergences == 0
    for name, value in truth.items():
        lo, hi = np.quantile(np.asarray(idata.posterior[name]), [0.005, 0.995])
        assert lo < value < hi, (name, value, lo, hi)


@pytest.mark.parametrize("spec, y, prior, side", [
    # far too narrow: iid data of variance 1.7 under a half-normal of scale 0.01 on it
    (IID, iid_data(), {"sigma2.irregular": {"dist": "half_normal", "scale": 0.01}}, "above"),
    # far too high: Nile's irregular variance (about 15,000) under a prior whose mass is near 1e8
    (NILE_LL, nile(), {"sigma2.irregular": {"dist": "inverse_gamma", "concentration": 20.0, "rate": 2e9}}, "below"),
])
def test_a_badly_scaled_prior_is_flagged_not_shown_as_a_good_fit(spec, y, prior, side):
    """The posterior piles up in the prior's far tail, and the verdict says so whether or not
    the chains mix well; the data-scaled default priors raise no such conflict."""
    diag = engine.diagnose(engine.fit_nuts(spec, y, chains=2, warmup=300, draws=300, seed=0, priors=prior))
    assert not diag.trustworthy
    assert any("sigma2.irregular" in r and side in r and "badly scaled" in r for r in diag.reasons), diag.reasons
    default = engine.diagnose(engine.fit_nuts(spec, y, chains=2, warmup=300, draws=300, seed=0))
    assert not any("prior" in r for r in default.reasons), default.reasons
    assert default.table["prior_quantile"].between(0.01, 0.99).all()


def test_inference_data_has_every_group_and_statistic(iid_fit):
    y, idata, _ = iid_fit
    assert set(idata.groups()) >= {"posterior", "sample_stats", "log_likelihood", "observed_data"}
    assert idata.posterior.sizes["chain"] == 4 and idata.posterior.sizes["draw"] == 500
    ss = idata.sample_stats
    for name in ("diverging", "energy", "tree_depth", "step_size", "n_steps", "acceptance_rate", "lp"):
        assert name in ss
    assert ss["diverging"].dtype == bool
    assert engine.spec_of(idata) == engine.ModelSpec.from_dict(IID)
    np.testing.assert_array_equal(np.asarray(idata.observed_data["y"]), y)


def test_pointwise_loglik_sums_to_each_draws_loglik(iid_fit):
    y, idata, _ = iid_fit
    ll = np.asarray(idata.log_likelihood["y"])            # (chain, draw, time)
    theta = np.asarray(idata.posterior["sigma2.irregular"])
    for c, d in [(0, 0), (3, 499), (2, 17)]:
        ref = st.norm(0, np.sqrt(theta[c, d])).logpdf(y[np.isfinite(y)]).sum()
        assert ll[c, d].sum() == pytest.approx(ref, rel=1e-10)
    assert np.all(ll[..., np.isnan(y)] == 0)
    import arviz as az
    with warnings.catch_warnings():   # Pareto-k advice on a 57-point fit is not under test
        warnings.simplefilter("ignore", UserWarning)
        loo = az.loo(idata)
    assert np.isfinite(loo.elpd_loo)


def test_progress_reports_every_chain_up_to_the_total(iid_fit):
    _, _, calls = iid_fit
    total = 800
    assert {c for c, _, _ in calls} == {0, 1, 2, 3}
    assert all(n == total for _, _, n in calls)
    last = [i for c, i, _ in calls if c == 0]
    assert last == sorted(last) and last[-1] == total


def test_refit_on_new_data_of_the_same_shape_does_not_recompile(iid_fit):
    y, idata, _ = iid_fit
    prob = engine.bayes.make_problem(IID, y, priors=IID_PRIOR)
    shapes = engine.bayes._shapes(prob.spec, y, None)
    sampler = _sampler(prob.spec, prob.families, shapes, 300, engine.bayes._chunk_len(300, 500), 0.8, 10, False)
    # a fit in this test (the suite may have trimmed the compiled programs since the fixture's)
    engine.fit_nuts(IID, y, chains=4, warmup=300, draws=500, seed=0, priors=IID_PRIOR)
    compiled = sampler.compiled["chunk"]   # the sampling chunk, compiled ahead of time
    engine.fit_nuts(IID, iid_data(seed=9), chains=4, warmup=300, draws=500, seed=2, priors=IID_PRIOR)
    assert sampler.compiled["chunk"] is compiled
    assert sampler.init._cache_size() == 1


def test_a_seed_gives_the_same_draws_whichever_thread_runs_each_chain(iid_fit):
    y, idata, _ = iid_fit
    again = engine.fit_nuts(IID, y, chains=4, warmup=300, draws=500, seed=0, priors=IID_PRIOR)
    np.testing.assert_array_equal(again.posterior["sigma2.irregular"], idata.posterior["sigma2.irregular"])
    chains = np.asarray(idata.posterior["sigma2.irregular"])
    assert len({tuple(c[:5]) for c in chains}) == 4   # the chains are not copies of one another


def test_cancel_stops_the_fit():
    ev = threading.Event()
    ev.set()
    with pytest.raises(engine.FitCancelled):
        engine.fit_nuts(IID, iid_data(), chains=2, warmup=50, draws=50, priors=IID_PRIOR, cancel=ev)


def test_map_and_laplace_match_the_closed_form():
    y = iid_data()
    a, b = iid_posterior(y)
    fit = engine.fit_map(IID, y, priors=IID_PRIOR)
    # on u = log σ² the density is ∝ σ²^(−a) exp(−b/σ²): mode σ² = b/a, curvature a
    assert fit.params["sigma2.irregular"] == pytest.approx(b / a, rel=1e-6)
    assert fit.z_cov[0, 0] == pytest.approx(1 / a, rel=1e-4)
    assert fit.converged
    draws = fit.laplace_draws(4000, seed=0)["sigma2.irregular"]
    assert np.median(draws) == pytest.approx(b / a, rel=0.03)


def test_map_with_wide_priors_is_near_the_mle():
    y = nile()
    spec = {"irregular": True, "level": {"kind": "local_level"}}
    mle = engine.fit_mle(spec, y)
    wide = {n: {"dist": "log_normal", "loc": np.log(1e4), "scale": 100.0} for n in mle.params}
    fit = engine.fit_map(spec, y, priors=wide)
    # log-normal prior on σ² is flat in log σ² up to −log σ², which the Jacobian +log σ² cancels
    for n, v in mle.params.items():
        assert fit.params[n] == pytest.approx(v, rel=2e-3)
    # the MLE maximises the likelihood: the MAP's log-likelihood can only be lower
    assert fit.converged and fit.loglik <= mle.loglik + 1e-6


def test_nuts_on_an_ar_model_keeps_every_draw_stationary_and_says_a_short_run_is_not_trustworthy():
    spec = {"irregular": True, "autoregressive": {"order": 2}}
    y = engine.simulate(jax.random.PRNGKey(0), spec, {"sigma2.irregular": 0.5, "sigma2.ar": 1.0,
                                                      "ar.L1": 0.5, "ar.L2": -0.3}, 80)
    idata = engine.fit_nuts(spec, y, chains=2, warmup=60, draws=40, seed=0)
    phi1, phi2 = np.asarray(idata.posterior["ar.L1"]), np.asarray(idata.posterior["ar.L2"])
    assert np.all((phi2 > -1) & (phi2 < 1 - np.abs(phi1)))
    diag = engine.diagnose(idata)
    assert not diag.trustworthy and any("ess" in r for r in diag.reasons)


def test_bad_inputs_are_refused_clearly():
    with pytest.raises(ValueError, match="sigma2.level"):
        engine.fit_nuts({"irregular": True, "level": {"kind": "local_level"}}, nile(),
                        priors={"sigma2.level": {"dist": "normal"}})
    with pytest.raises(ValueError, match="infinite"):
        engine.fit_nuts({"irregular": True, "level": {"kind": "local_level"}}, np.r_[nile()[:50], np.inf])


PRIOR_EXAMPLES = {"half_normal": (2.0,), "half_cauchy": (0.5,), "half_student_t": (3.0, 2.0),
                  "inverse_gamma": (3.0, 2.0), "log_normal": (0.3, 0.8), "exponential": (1.5,),
                  "gamma": (2.5, 4.0), "normal": (1.0, 3.0), "uniform": (-2.0, 5.0), "beta": (2.0, 5.0)}


@pytest.mark.parametrize("family", sorted(PRIOR_EXAMPLES))
def test_chain_starts_are_numpyro_prior_medians_on_its_unconstrained_coordinates(family):
    """The host-side starts against NumPyro itself: the median of 200,000 prior draws, and
    the inverse of `biject_to` of the prior's support."""
    from numpyro.distributions import biject_to

    from engine.bayes import _prior_median, _to_unconstrained_value
    from engine.priors import FAMILIES, make_distribution

    assert set(PRIOR_EXAMPLES) == set(FAMILIES)
    args = PRIOR_EXAMPLES[family]
    d = make_distribution(family, tuple(jnp.asarray(a) for a in args))
    key = jax.random.PRNGKey(0)
    if family == "half_student_t":   # |t| (NumPyro samples the truncation by an inverse CDF that needs TFP)
        import numpyro.distributions as dist
        draws = np.abs(np.asarray(dist.StudentT(args[0], 0.0, args[1]).sample(key, (200_000,))))
    else:
        draws = np.asarray(d.sample(key, (200_000,)))
    median = _prior_median(family, args)
    assert np.mean(draws <= median) == pytest.approx(0.5, abs=0.005)
    expected = float(biject_to(d.support).inv(jnp.asarray(median)))
    assert _to_unconstrained_value(family, args, median) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_a_chain_starts_with_the_exact_potential_and_gradient_of_the_posterior():
    """The inits get the likelihood at the starts from the pointwise program (its gradient by
    central differences); the state they build must carry −log p and its gradient at the
    start as NumPyro's own potential gives them (cycle + AR(2): interval and PACF sites, gaps)."""
    from engine.bayes import _chain_keys, _chunk_len, _initial_points, _shapes, _start_likelihood
    from engine.priors import sample_sites

    y = with_gaps(nile(), index=(0, 5, 30, 31, 32, 90))
    prob = engine.bayes.make_problem(CYCLE_AR, y)
    sites = sample_sites(prob.spec)
    starts = _initial_points(prob.families, [prob.priors[n].args for n in sites], seed=4, chains=3)
    ll, grad = _start_likelihood(prob, starts)   # 3 × 17 rows: one padded chunk
    sampler = _sampler(prob.spec, prob.families, _shapes(prob.spec, prob.y, prob.x), 10, _chunk_len(10, 10), 0.8, 5, False)
    logp, _, _ = engine.log_posterior(CYCLE_AR, y)
    value_and_grad = jax.jit(jax.value_and_grad(logp))
    order = sorted(sites)
    for c, key in enumerate(_chain_keys(0, 3)):
        start = {n: jnp.asarray(starts[i, c]) for i, n in enumerate(sites)}
        state = sampler.init(start, key, prob.args, ll[c], {n: g[c] for n, g in grad.items()})
        z = jnp.array([starts[sites.index(n), c] for n in order])
        value, gradient = value_and_grad(z)
        assert float(state.potential_energy) == pytest.approx(-float(value), rel=1e-10)
        expected = -np.asarray(gradient)
        got = np.array([float(state.z_grad[n]) for n in order])
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())
