"""The verdict on a fit: independent well-mixed chains pass; disagreeing chains, too few
effective draws, divergences and a posterior in the far tail of its prior are each flagged
with the reason; netCDF keeps everything."""

from __future__ import annotations

import json

import arviz as az
import numpy as np
import pytest
import scipy.stats as st

import engine

SPEC = {"irregular": True, "level": {"kind": "local_level"}}


def fake_fit(rng, chains=4, draws=1000, shift=0.0, ar=0.0, diverging=None, priors=None):
    """Posterior draws with a known structure (iid or AR(1) within chains, shifted chains)."""
    out = {}
    for name in ("sigma2.irregular", "sigma2.level"):
        x = rng.standard_normal((chains, draws))
        for t in range(1, draws):
            x[:, t] = ar * x[:, t - 1] + np.sqrt(1 - ar ** 2) * x[:, t]
        x += shift * np.arange(chains)[:, None]
        out[name] = np.exp(x)
    div = np.zeros((chains, draws), bool) if diverging is None else diverging
    return az.from_dict(posterior=out, sample_stats={"diverging": div, "energy": rng.standard_normal((chains, draws))},
                        attrs={"spec": engine.ModelSpec.from_dict(SPEC).to_json(),
                               **({} if priors is None else {"priors": json.dumps(priors)})})


def test_independent_chains_are_trustworthy(rng):
    d = engine.diagnose(fake_fit(rng))
    assert d.trustworthy and d.reasons == () and d.divergences == 0
    assert {"r_hat", "ess_bulk", "ess_tail", "div_shift"} <= set(d.table.columns)
    assert d.verdict.startswith("trustworthy")


def test_disagreeing_chains_are_flagged_by_r_hat(rng):
    d = engine.diagnose(fake_fit(rng, shift=0.5))
    assert not d.trustworthy and any("R-hat" in r for r in d.reasons)


def test_sticky_chains_are_flagged_by_ess(rng):
    d = engine.diagnose(fake_fit(rng, draws=300, ar=0.97))
    assert not d.trustworthy and any("ess bulk" in r for r in d.reasons)


def test_divergences_are_counted_and_localised(rng):
    div = np.zeros((4, 1000), bool)
    div[1, ::50] = True
    idata = fake_fit(rng, diverging=div)
    # make the divergent draws sit in the tail of sigma2.level only
    idata.posterior["sigma2.level"].values[div] = 50.0
    d = engine.diagnose(idata)
    assert d.divergences == 20 and list(d.divergences_per_chain) == [0, 20, 0, 0]
    assert not d.trustworthy and any("divergent" in r and "sigma2.level" in r for r in d.reasons)
    assert abs(d.table.loc["sigma2.level", "div_shift"]) > abs(d.table.loc["sigma2.irregular", "div_shift"])


# the fake posteriors are log-normal around a median of 1 (e^N(0, 1) per parameter)
@pytest.mark.parametrize("prior, conflict", [
    ({"dist": "half_normal", "scale": 2.0}, None),               # the median at its 31% quantile
    ({"dist": "half_normal", "scale": 1e-3}, "above"),           # far too narrow: the data push past it
    ({"dist": "half_normal", "scale": 1e6}, None),               # wide; small values are its mode, no conflict
    ({"dist": "inverse_gamma", "concentration": 3.0, "rate": 1e4}, "below"),   # its mass sits near 5,000
    ({"dist": "log_normal", "loc": 0.0, "scale": 1.0}, None),
    ({"dist": "uniform", "low": 0.0, "high": 1e-3}, None),       # bounded families are not checked
])
def test_a_posterior_in_the_far_tail_of_its_prior_is_flagged(rng, prior, conflict):
    ref = {"half_normal": lambda a: st.halfnorm(scale=a["scale"]), "uniform": lambda a: None,
           "inverse_gamma": lambda a: st.invgamma(a["concentration"], scale=a["rate"]),
           "log_normal": lambda a: st.lognorm(a["scale"], scale=np.exp(a["loc"]))}[prior["dist"]](prior)
    fit = fake_fit(rng, priors={"sigma2.level": prior, "pacf.L1": {"dist": "uniform", "low": -1.0, "high": 1.0}})
    d = engine.diagnose(fit)
    median = float(np.median(np.asarray(fit.posterior["sigma2.level"])))
    if ref is None:
        assert np.isnan(d.table.loc["sigma2.level", "prior_quantile"])
    else:
        assert d.table.loc["sigma2.level", "prior_quantile"] == pytest.approx(ref.cdf(median), rel=1e-6, abs=1e-12)
    flagged = [r for r in d.reasons if "prior" in r]
    if conflict is None:
        assert d.trustworthy and not flagged, d.reasons
    else:
        assert not d.trustworthy and len(flagged) == 1
        assert "sigma2.level" in flagged[0] and conflict in flagged[0] and "badly scaled" in flagged[0]


def test_netcdf_round_trip_keeps_groups_spec_and_booleans(rng, tmp_path):
    div = np.zeros((4, 1000), bool)
    div[0, 3] = True
    idata = fake_fit(rng, diverging=div)
    path = engine.to_netcdf(idata, tmp_path / "fit.nc")
    back = engine.from_netcdf(path)
    assert set(back.groups()) == set(idata.groups())
    assert back.sample_stats["diverging"].dtype == bool and bool(back.sample_stats["diverging"][0, 3])
    np.testing.assert_array_equal(back.posterior["sigma2.level"], idata.posterior["sigma2.level"])
    assert engine.spec_of(back) == engine.ModelSpec.from_dict(SPEC)
