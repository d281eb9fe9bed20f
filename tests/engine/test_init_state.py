"""Initial-state options (the spec's `initialization`) against statsmodels' own initialisations.

statsmodels' UnobservedComponents is built with the exact diffuse start (no log-likelihood burn)
and then re-initialised with `ssm.initialize_approximate_diffuse` / `ssm.initialize_known`, or
built with `use_exact_diffuse=False` (approximate diffuse on the nonstationary states, AR
stationary) and `loglikelihood_burn=0`; its log-likelihood and filtered states are the reference.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import statsmodels.api as sm

import engine
from engine import bayes
from engine.online import RejuvenationConfig
from engine.spec import ModelSpec
from engine.system import diffuse_states

from .helpers import air, nile, potential_likelihoods

NILE = {"irregular": True, "level": {"kind": "local_level"}}
NILE_P = np.array([15099.0, 1469.0])
AIR = {"irregular": True, "level": {"kind": "local_linear_trend"},
       "seasonal": [{"period": 12, "form": "dummy", "stochastic": True}]}
AIR_P = np.array([3e-4, 7e-4, 1e-6, 5e-3])
AR = {"irregular": True, "level": {"kind": "local_level"}, "autoregressive": {"order": 1}}


def statsmodels_reference(spec: dict, y, params, init):
    """(loglike, filtered states (time, state)) of statsmodels' UC under the same initialisation."""
    kw = {"level": spec["level"]["kind"].replace("_", " ")}
    if spec.get("seasonal"):
        kw["freq_seasonal" if spec["seasonal"][0].get("form") == "trig" else "seasonal"] = spec["seasonal"][0]["period"]
        kw["stochastic_seasonal"] = True
    if spec.get("autoregressive"):
        kw["autoregressive"] = spec["autoregressive"]["order"]
    if spec.get("autoregressive") and init["kind"] == "approximate_diffuse":
        mod = sm.tsa.UnobservedComponents(y, use_exact_diffuse=False, loglikelihood_burn=0, **kw)
        mod.initialize_default(approximate_diffuse_variance=init.get("variance", 1e6))
    else:
        mod = sm.tsa.UnobservedComponents(y, use_exact_diffuse=True, **kw)
        if init["kind"] == "approximate_diffuse":
            mod.ssm.initialize_approximate_diffuse(init.get("variance", 1e6))
        else:
            mod.ssm.initialize_known(np.asarray(init["mean"], float), np.asarray(init["cov"], float))
    assert mod.ssm.loglikelihood_burn == 0
    res = mod.filter(params)
    return float(res.llf), np.asarray(res.filtered_state).T


def known(m: int, scale: float, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    B = rng.standard_normal((m, m))
    return {"kind": "known", "mean": list(scale * rng.standard_normal(m)),
            "cov": (scale ** 2 * (B @ B.T / m + 0.1 * np.eye(m))).tolist()}


CASES = {
    "nile_approximate": (NILE, nile, NILE_P, {"kind": "approximate_diffuse"}),
    "nile_approximate_1e4": (NILE, nile, NILE_P, {"kind": "approximate_diffuse", "variance": 1e4}),
    "nile_known": (NILE, nile, NILE_P, {"kind": "known", "mean": [1100.0], "cov": [[1e4]]}),
    "nile_known_exact_value": (NILE, nile, NILE_P, {"kind": "known", "mean": [1120.0], "cov": [[0.0]]}),
    "air_approximate": (AIR, air, AIR_P, {"kind": "approximate_diffuse", "variance": 1e3}),
    "air_known": (AIR, air, AIR_P, known(13, 0.1)),
    "ar_approximate": (AR, nile, np.array([12000.0, 1000.0, 2000.0, 0.5]), {"kind": "approximate_diffuse"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_loglik_and_filtered_states_equal_statsmodels(case):
    base, data, p, init = CASES[case]
    spec = {**base, "initialization": init}
    y = data()
    if case == "air_known":
        y[[3, 50]] = np.nan
    ref_ll, ref_states = statsmodels_reference(base, y, p, init)
    assert float(engine.loglik(spec, p, y)) == pytest.approx(ref_ll, rel=1e-10, abs=1e-8)
    for filt in ("standard", "sqrt"):
        res = engine.filter_series(spec, p, y, filter=filt)
        assert float(np.sum(res.loglik_terms)) == pytest.approx(ref_ll, rel=1e-10, abs=1e-8), filt
        scale = np.maximum(np.abs(ref_states).max(axis=0), 1.0)
        np.testing.assert_allclose(np.asarray(res.filtered_mean) / scale, ref_states / scale, rtol=0, atol=1e-8)


def test_the_sampler_map_and_stream_use_the_initialization():
    """The NUTS potential's likelihood, the MAP potential's and a stream through OnlineFilter all
    give statsmodels' value under a known initial state."""
    base, data, p, init = CASES["air_known"]
    spec = {**base, "initialization": init}
    y = data()[:60]
    ref, _ = statsmodels_reference(base, y, p, init)
    map_ll, nuts_ll = potential_likelihoods(bayes.make_problem(spec, y), p)
    assert nuts_ll == pytest.approx(ref, rel=1e-9, abs=0)
    assert map_ll == pytest.approx(ref, rel=1e-9, abs=0)
    filt = engine.OnlineFilter(spec, p[None], rejuvenation=RejuvenationConfig(automatic=False))
    total = sum(float(np.asarray(filt.update(v).loglik)[0]) for v in y[:20])
    total += float(np.asarray(filt.update_many(y[20:]).loglik).sum())
    assert total == pytest.approx(ref, rel=1e-9, abs=0)


def test_round_trip_and_default():
    for init in ("approximate_diffuse", {"kind": "approximate_diffuse", "variance": 5.0},
                 {"kind": "known", "mean": [1.0], "cov": [[2.0]]}):
        spec = ModelSpec.from_dict({**NILE, "initialization": init})
        again = ModelSpec.from_json(spec.to_json())
        assert again == spec and hash(again) == hash(spec)
        assert again.to_dict()["initialization"]["kind"] == (init if isinstance(init, str) else init["kind"])
    plain = ModelSpec.from_dict(NILE)
    assert "initialization" not in plain.to_dict()
    assert ModelSpec.from_dict({**NILE, "initialization": "diffuse"}) == plain
    assert json.loads(ModelSpec.from_dict({**NILE, "initialization": "approximate_diffuse"}).to_json())[
        "initialization"] == {"kind": "approximate_diffuse", "variance": 1e6}


@pytest.mark.parametrize("init, field, words", [
    ("exact", "initialization.kind", "unknown kind"),
    ({"kind": "approximate_diffuse", "variance": -1}, "initialization.variance", "positive"),
    ({"kind": "approximate_diffuse", "mean": [0]}, "initialization.mean", "unknown field"),
    ({"kind": "known", "mean": [0.0]}, "initialization.cov", "missing"),
    ({"kind": "known", "mean": [0.0, 1.0], "cov": [[1.0]]}, "initialization.mean", "expected 1 numbers"),
    ({"kind": "known", "mean": [0.0], "cov": [[-1.0]]}, "initialization.cov", "positive semi-definite"),
    ({"kind": "known", "mean": [0.0], "cov": [[1.0, 0.0]]}, "initialization.cov", "1×1"),
    (3, "initialization", "expected a kind name"),
])
def test_refusals_name_the_field(init, field, words):
    with pytest.raises(ValueError, match=f"'{field}'.*{words}"):
        ModelSpec.from_dict({**NILE, "initialization": init})


def test_no_diffuse_states_and_a_full_likelihood():
    """A proper start has no diffuse state: the fit's degrees of freedom count none and every
    observation has a term (none is spent on the diffuse states)."""
    spec = {**AIR, "initialization": {"kind": "approximate_diffuse", "variance": 1e3}}
    assert diffuse_states(engine.layout(spec)) == ()
    terms = np.asarray(engine.loglik_terms(spec, AIR_P, air()))
    assert np.all(terms != 0)
