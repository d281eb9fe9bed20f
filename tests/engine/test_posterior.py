"""Posterior products against plug-in references (one draw) and exact mixtures (several draws),
and the calibration of NUTS posterior forecasts on data simulated from the prior."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import scipy.optimize
import scipy.stats as st

import engine

from .helpers import air, nile, with_gaps

LOCAL_LEVEL = {"irregular": True, "level": {"kind": "local_level"}}
NILE_MLE = {"sigma2.irregular": 15099.0, "sigma2.level": 1469.1}
AIR = {"irregular": True, "level": {"kind": "local_linear_trend"}, "seasonal": [{"period": 12, "form": "dummy"}]}
AIR_PARAMS = {"sigma2.irregular": 1e-4, "sigma2.level": 5e-4, "sigma2.trend": 1e-6, "sigma2.seasonal": 5e-5}


def one_draw(params):
    return {k: np.array([v]) for k, v in params.items()}


def test_forecast_of_one_draw_is_the_plug_in_forecast():
    y = air()
    fc = engine.posterior_forecast(AIR, one_draw(AIR_PARAMS), y, 12, levels=(0.8,))
    ref = engine.forecast(AIR, AIR_PARAMS, y, 12)
    np.testing.assert_allclose(fc.draws_mean[0], np.asarray(ref.mean), rtol=1e-10)
    np.testing.assert_allclose(fc.draws_var[0], np.asarray(ref.var), rtol=1e-10)
    lo, hi = fc.band(0.8)
    sd = np.sqrt(np.asarray(ref.var))
    np.testing.assert_allclose(lo, np.asarray(ref.mean) - st.norm.ppf(0.9) * sd, rtol=1e-8)
    np.testing.assert_allclose(hi, np.asarray(ref.mean) + st.norm.ppf(0.9) * sd, rtol=1e-8)


def test_forecast_mixes_parameter_uncertainty_exactly():
    y = nile()
    post = {"sigma2.irregular": np.array([8000.0, 30000.0]), "sigma2.level": np.array([500.0, 6000.0])}
    fc = engine.posterior_forecast(LOCAL_LEVEL, post, y, 3, levels=(0.9,), seed=1)
    m, v = fc.draws_mean[:, -1], fc.draws_var[:, -1]
    cdf = lambda x: np.mean(st.norm.cdf((x - m) / np.sqrt(v)))
    for p in (0.05, 0.95):
        exact = scipy.optimize.brentq(lambda x: cdf(x) - p, -1e5, 1e5)
        assert fc.quantiles[p][-1] == pytest.approx(exact, rel=1e-8)
    assert fc.mean[-1] == pytest.approx(m.mean(), rel=1e-12)


@pytest.mark.slow
def test_posterior_forecast_intervals_cover_near_nominal_on_data_simulated_from_the_prior():
    """Parameters drawn from the prior, a series simulated from them, NUTS on its first 60
    points, forecasts of the next 4: averaged over the prior, a Bayesian predictive interval
    covers exactly its nominal share, so over 40 such series the 50/80/95% bands must hit
    near 50/80/95% (160 outcomes, correlated within a series: ± about 0.1)."""
    priors = {"sigma2.irregular": {"dist": "inverse_gamma", "concentration": 3.0, "rate": 2.0},
              "sigma2.level": {"dist": "inverse_gamma", "concentration": 3.0, "rate": 0.4}}
    rng = np.random.default_rng(5)
    n_series, n_fit, steps = 40, 60, 4
    hits = {level: [] for level in (0.5, 0.8, 0.95)}
    for i in range(n_series):
        truth = {n: st.invgamma(p["concentration"], scale=p["rate"]).rvs(random_state=rng) for n, p in priors.items()}
        y = np.asarray(engine.simulate(jax.random.PRNGKey(i), LOCAL_LEVEL, truth, n_fit + steps))
        idata = engine.fit_nuts(LOCAL_LEVEL, y[:n_fit], chains=2, warmup=200, draws=250, seed=i, priors=priors)
        fc = engine.posterior_forecast(LOCAL_LEVEL, idata, y[:n_fit], steps, seed=i)
        for level in hits:
            lo, hi = fc.band(level)
            hits[level] += list((lo <= y[n_fit:]) & (y[n_fit:] <= hi))
    for level, h in hits.items():
        assert np.mean(h) == pytest.approx(level, abs=0.1), (level, np.mean(h))


def test_regression_forecast_needs_future_exog():
    df = engine.load_dataset("seatbelts")
    spec = {"irregular": True, "level": {"kind": "local_level"},
            "regression": {"columns": ["law"], "coefficients": "parameters"}}
    params = one_draw({"sigma2.irregular": 0.01, "sigma2.level": 0.001, "beta.law": -0.2})
    y = np.log(df["drivers"].to_numpy(float))
    with pytest.raises(ValueError, match="exog_future"):
        engine.posterior_forecast(spec, params, y, 4, exog=df[["law"]])
    fc = engine.posterior_forecast(spec, params, y, 4, exog=df[["law"]], exog_future=np.ones((4, 1)))
    ref = engine.forecast(spec, {k: v[0] for k, v in params.items()}, y, 4, exog=df[["law"]],
                          exog_future=np.ones((4, 1)))
    np.testing.assert_allclose(fc.draws_mean[0], np.asarray(ref.mean), rtol=1e-10)


def test_one_step_checks_of_one_draw_are_the_standardised_innovations():
    y = with_gaps(nile(), index=(3, 40, 41))
    res = engine.filter_series(LOCAL_LEVEL, NILE_MLE, y)
    chk = engine.predictive_residuals(LOCAL_LEVEL, one_draw(NILE_MLE), y)
    standard = np.asarray(res.kind) == 1
    z = np.asarray(res.innovation) / np.sqrt(np.asarray(res.innov_var))
    np.testing.assert_allclose(chk.residual[standard], z[standard], rtol=1e-9)
    np.testing.assert_allclose(chk.pit[standard], st.norm.cdf(z[standard]), rtol=1e-9)
    assert np.all(np.isnan(chk.residual[~standard]))   # missing and diffuse steps


def test_pit_of_data_simulated_from_the_model_is_uniform():
    import jax
    y = np.asarray(engine.simulate(jax.random.PRNGKey(4), LOCAL_LEVEL, NILE_MLE, 600))
    chk = engine.predictive_residuals(LOCAL_LEVEL, one_draw(NILE_MLE), y)
    pit = chk.pit[np.isfinite(chk.pit)]
    assert st.kstest(pit, "uniform").pvalue > 0.01


def test_components_of_one_draw_are_the_smoothed_components():
    y = air()
    bands = engine.posterior_components(AIR, one_draw(AIR_PARAMS), y, hdi_prob=0.9)
    ref = engine.smooth(AIR, AIR_PARAMS, y).components
    assert set(bands) == set(ref)
    for name, (mean, var) in ref.items():
        mean, sd = np.asarray(mean), np.sqrt(np.asarray(var))
        np.testing.assert_allclose(bands[name].mean, mean, rtol=1e-9, atol=1e-12)
        half = st.norm.ppf(0.95) * sd
        np.testing.assert_allclose(bands[name].upper - bands[name].lower, 2 * half, atol=0.01 * sd.max() + 1e-12)


def test_posterior_matrix_reads_inference_data_and_dicts():
    import arviz as az
    idata = az.from_dict(posterior={"sigma2.irregular": np.ones((2, 5)), "sigma2.level": 2 * np.ones((2, 5))})
    theta = engine.posterior_matrix(LOCAL_LEVEL, idata)
    assert theta.shape == (10, 2) and np.all(theta[:, 1] == 2)
    assert engine.posterior_matrix(LOCAL_LEVEL, NILE_MLE).shape == (1, 2)
    assert engine.posterior_matrix(LOCAL_LEVEL, idata, max_draws=4).shape == (4, 2)
    with pytest.raises(ValueError, match="sigma2.level"):
        engine.posterior_matrix(LOCAL_LEVEL, {"sigma2.irregular": np.ones(3)})


def test_mixture_hdi_holds_its_mass_and_is_shortest():
    from engine.posterior import mixture_hdi
    mean, var = np.array([[0.0], [1.0]]), np.array([[1.0], [2.0]])
    lo, hi = mixture_hdi(mean, var, 0.9)
    cdf = lambda x: np.mean(st.norm.cdf((x - mean[:, 0]) / np.sqrt(var[:, 0])))
    pdf = lambda x: np.mean(st.norm.pdf((x - mean[:, 0]) / np.sqrt(var[:, 0])) / np.sqrt(var[:, 0]))
    assert cdf(hi[0]) - cdf(lo[0]) == pytest.approx(0.9, abs=2e-3)
    assert pdf(lo[0]) == pytest.approx(pdf(hi[0]), rel=1e-2)   # equal density at both ends: the shortest
