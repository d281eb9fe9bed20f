"""Priors: each family is the distribution its name says (checked against scipy), defaults
scale with the data, and bad priors are refused with a message naming the parameter."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats as st

import engine
from engine.priors import Prior, check_priors, resolve_priors, sample_sites

from .helpers import nile

LOCAL_LEVEL = {"irregular": True, "level": {"kind": "local_level"}}
RICH = {"irregular": True, "level": {"kind": "local_linear_trend"},
        "cycle": {"period_bounds": [5, 30], "damped": True, "stochastic": True},
        "autoregressive": {"order": 2}}

# family, arguments, the same distribution in scipy
SCIPY = [
    ("half_normal", (2.0,), st.halfnorm(scale=2.0)),
    ("half_cauchy", (1.5,), st.halfcauchy(scale=1.5)),
    ("half_student_t", (3.0, 2.0), None),  # |T|, T ~ t(3, scale 2): density 2·t.pdf on (0, ∞)
    ("inverse_gamma", (3.0, 2.0), st.invgamma(3.0, scale=2.0)),
    ("log_normal", (0.5, 0.7), st.lognorm(0.7, scale=np.exp(0.5))),
    ("exponential", (1.7,), st.expon(scale=1 / 1.7)),
    ("gamma", (2.5, 0.5), st.gamma(2.5, scale=2.0)),
    ("normal", (1.0, 3.0), st.norm(1.0, 3.0)),
    ("uniform", (-1.0, 2.0), st.uniform(-1.0, 3.0)),
    ("beta", (2.0, 5.0), st.beta(2.0, 5.0)),
]


@pytest.mark.parametrize("family,args,ref", SCIPY, ids=[s[0] for s in SCIPY])
def test_each_family_matches_scipy(family, args, ref):
    d = Prior(family, args).distribution()
    xs = np.array([0.05, 0.3, 0.9]) if family in ("beta", "uniform") else np.array([0.1, 0.8, 2.5])
    if ref is None:
        expected = np.log(2 * st.t(args[0], scale=args[1]).pdf(xs))
    else:
        expected = ref.logpdf(xs)
    np.testing.assert_allclose(np.asarray(d.log_prob(xs)), expected, rtol=1e-10)


def test_every_parameter_gets_a_default_prior_on_its_support():
    y = nile()
    priors = resolve_priors(RICH, y)
    assert list(priors) == sample_sites(RICH)
    spec = engine.ModelSpec.from_dict(RICH)
    lo, hi = spec.cycle.frequency_bounds
    assert priors["frequency.cycle"] == Prior("uniform", (lo, hi))
    assert priors["damping.cycle"] == Prior("uniform", (0.0, 1.0))
    assert priors["pacf.L1"] == priors["pacf.L2"] == Prior("uniform", (-1.0, 1.0))
    for name in ("sigma2.irregular", "sigma2.level", "sigma2.trend", "sigma2.cycle", "sigma2.ar"):
        assert priors[name].family == "half_normal"


def test_default_variance_priors_scale_with_the_data():
    y = nile()
    small = engine.default_priors(LOCAL_LEVEL, y)
    big = engine.default_priors(LOCAL_LEVEL, 10 * y)
    for name in ("sigma2.irregular", "sigma2.level"):
        assert big[name]["scale"] == pytest.approx(100 * small[name]["scale"], rel=1e-12)
        # weakly informative: the variance of the differenced series is well inside the prior
        assert small[name]["scale"] == pytest.approx(2 * np.var(np.diff(y)), rel=1e-12)


def test_regression_coefficient_default_scales_with_y_over_x():
    df = engine.load_dataset("seatbelts")
    spec = {"irregular": True, "level": {"kind": "local_level"},
            "regression": {"columns": ["petrol_price"], "coefficients": "parameters"}}
    y = np.log(df["drivers"].to_numpy(float))
    x = df[["petrol_price"]].to_numpy(float)
    p = resolve_priors(spec, y, x)["beta.petrol_price"]
    assert p.family == "normal" and p.args[0] == 0.0
    assert p.args[1] == pytest.approx(10 * np.std(y) / np.std(x), rel=1e-9)


def test_spec_priors_and_argument_priors_are_used_and_auto_fills_in():
    y = nile()
    spec = dict(LOCAL_LEVEL, priors={"sigma2.level": {"dist": "inverse_gamma", "concentration": 3, "rate": "auto"}})
    priors = resolve_priors(spec, y, priors={"sigma2.irregular": {"dist": "exponential"}})
    assert priors["sigma2.level"].family == "inverse_gamma"
    assert priors["sigma2.level"].args[0] == 3.0 and priors["sigma2.level"].args[1] > 0
    typical = 2 * np.var(np.diff(y))
    assert priors["sigma2.irregular"] == Prior("exponential", (1 / typical,))


def test_ar1_prior_may_be_named_by_its_coefficient():
    spec = {"irregular": True, "autoregressive": {"order": 1}}
    priors = resolve_priors(spec, nile(), priors={"ar.L1": {"dist": "uniform", "low": 0.0, "high": 1.0}})
    assert priors["pacf.L1"] == Prior("uniform", (0.0, 1.0))


@pytest.mark.parametrize("bad,words", [
    ({"sigma2.level": {"dist": "normal", "loc": 0, "scale": 1}}, ["sigma2.level", "positive"]),
    ({"sigma2.nope": {"dist": "half_normal"}}, ["sigma2.nope", "sigma2.level"]),
    ({"sigma2.level": {"dist": "half_normal", "scale": -1}}, ["sigma2.level", "scale", "positive"]),
    ({"sigma2.level": {"dist": "wishart"}}, ["sigma2.level", "half_normal"]),
    ({"sigma2.level": {"dist": "half_normal", "sd": 2}}, ["sigma2.level", "scale", "sd"]),
    ({"sigma2.level": {"dist": "half_normal", "scale": "big"}}, ["sigma2.level", "number"]),
    ({"sigma2.level": {"dist": "uniform", "low": 3, "high": 1}}, ["sigma2.level", "low < high"]),
    ({"ar.L2": {"dist": "normal"}}, ["ar.L2", "pacf"]),
], ids=lambda v: str(v)[:40])
def test_invalid_priors_are_refused_naming_the_parameter(bad, words):
    with pytest.raises(ValueError) as err:
        resolve_priors(dict(LOCAL_LEVEL, autoregressive={"order": 2}), nile(), priors=bad)
    for w in words:
        assert w in str(err.value)


def test_bounded_parameters_refuse_priors_leaving_their_range():
    with pytest.raises(ValueError, match="damping.cycle.*inside"):
        resolve_priors(RICH, nile(), priors={"damping.cycle": {"dist": "uniform", "low": 0, "high": 2}})
    with pytest.raises(ValueError, match="frequency.cycle"):
        resolve_priors(RICH, nile(), priors={"frequency.cycle": {"dist": "normal", "loc": 0.5, "scale": 1}})
    # a narrower range inside the bounds is fine
    resolve_priors(RICH, nile(), priors={"damping.cycle": {"dist": "beta", "concentration1": 5,
                                                           "concentration0": 1}})


@pytest.mark.parametrize("bad", [
    {"sigma2.level": {"dist": "normal", "loc": 0, "scale": 1}},
    {"sigma2.nope": {"dist": "half_normal"}},
    {"sigma2.level": {"dist": "half_normal", "scale": -5}},
    {"sigma2.level": {"dist": "wishart"}},
    {"sigma2.level": {"dist": ["half_normal"]}},
    {"sigma2.level": {"dist": "half_normal", "sd": 2}},
    {"sigma2.level": {"dist": "half_normal", "scale": "big"}},
    {"sigma2.level": {"dist": "half_normal", "scale": None}},
    {"sigma2.level": {"dist": "uniform", "low": 3, "high": 1}},
    {"sigma2.level": 5},
    {"ar.L2": {"dist": "normal"}},
], ids=lambda v: str(v)[:40])
def test_check_priors_refuses_without_data_what_resolve_priors_refuses(bad):
    """A saved spec's priors are checked when it is read, before there is data: check_priors gives the
    same message as resolve_priors (which the fit runs) for everything the data does not decide."""
    spec = dict(LOCAL_LEVEL, autoregressive={"order": 2})
    with pytest.raises(ValueError) as with_data:
        resolve_priors(spec, nile(), priors=bad)
    with pytest.raises(ValueError) as without:
        check_priors(spec, bad)
    assert str(without.value) == str(with_data.value)


def test_check_priors_accepts_what_resolve_priors_accepts():
    spec = dict(RICH, priors={"sigma2.level": {"dist": "inverse_gamma", "concentration": 3, "rate": "auto"},
                              "damping.cycle": {"dist": "beta", "concentration1": 5, "concentration0": 1},
                              "pacf.L2": {"dist": "uniform", "low": -0.5, "high": 0.5}})
    check_priors(spec)
    resolve_priors(spec, nile())
    check_priors({"irregular": True, "autoregressive": {"order": 1}},
                 {"ar.L1": {"dist": "uniform", "low": 0, "high": 1}})
