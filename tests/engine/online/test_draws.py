"""Posterior draws from an InferenceData, a dict or one parameter set, and the fit's priors."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import engine
from engine import online
from engine.rejuvenation import RejuvenationConfig

from ..helpers import assert_rel_close
from .cases import SPEC, BASE, MANUAL, make_draws


def test_posterior_inputs_and_bad_input_messages():
    import arviz as az
    names = engine.param_names(SPEC)
    draws = make_draws(3)
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
