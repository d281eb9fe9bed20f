"""Observation families in the spec (parsing, messages, round trips, parameter names, priors) and
the families' densities and pseudo-observations against scipy and automatic derivatives."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import engine
from engine.nongaussian import families as F

LEVEL = {"level": {"kind": "local_level"}}


@pytest.mark.parametrize("observation, names", [
    ({"family": "poisson"}, ["sigma2.level"]),
    ({"family": "negative_binomial", "offset": "population"}, ["sigma2.level", "alpha.observation"]),
    ({"family": "student_t"}, ["sigma2.irregular", "sigma2.level", "nu.observation"]),
    ({"family": "gaussian"}, ["sigma2.irregular", "sigma2.level"]),
])
def test_observation_round_trips_through_dict_json_and_session_files(observation, names):
    from app.viewmodels.session_file import SessionBundle, pack, unpack
    spec = engine.ModelSpec.from_dict({**LEVEL, "observation": observation})
    assert engine.param_names(spec) == names
    assert engine.ModelSpec.from_dict(spec.to_dict()) == spec
    assert engine.ModelSpec.from_json(spec.to_json()) == spec
    if observation["family"] == "gaussian":
        assert "observation" not in spec.to_dict()    # Gaussian specs are written as before
    data = {"source": "nile", "dataset": "nile", "upload": False, "time_column": "year", "target": "flow",
            "exog": [], "log_transform": False, "sort_rows": False}
    bundle = SessionBundle(data, None, spec.to_dict(), None)
    assert engine.ModelSpec.from_dict(unpack(pack(bundle)).spec) == spec


@pytest.mark.parametrize("spec, message", [
    ({**LEVEL, "observation": {"family": "gamma"}}, r"'observation.family': unknown family 'gamma'. Choose one of"),
    ({**LEVEL, "observation": {"family": "poisson", "link": "log"}}, r"'observation.link': unknown field"),
    ({**LEVEL, "observation": 3}, r"'observation': expected a dict"),
    ({**LEVEL, "irregular": True, "observation": "poisson"}, r"'irregular': a poisson observation has no irregular"),
    ({**LEVEL, "irregular": False, "observation": "student_t"}, r"'irregular': a student_t observation needs"),
    ({**LEVEL, "observation": {"family": "student_t", "offset": "x"}}, r"'observation.offset': an exposure column"),
    ({**LEVEL, "observation": {"family": "poisson", "offset": ""}}, r"'observation.offset': expected a column name"),
    ({**LEVEL, "observation": "poisson", "priors": {"alpha.observation": {"dist": "half_normal"}}},
     r"'priors.alpha.observation'.*unknown parameter"),
    ({**LEVEL, "observation": "student_t", "priors": {"nu.observation": {"dist": "normal", "loc": 5, "scale": 1}}},
     r"'priors.nu.observation'.*must be positive"),
])
def test_bad_observation_fields_are_refused_by_name(spec, message):
    with pytest.raises(ValueError, match=message):
        engine.ModelSpec.from_dict(spec)


def test_counts_default_to_no_irregular_and_gaussian_paths_refuse_them():
    spec = engine.ModelSpec.from_dict({**LEVEL, "observation": "poisson"})
    assert not spec.irregular and spec.observation.is_count
    with pytest.raises(ValueError, match=r"'observation.family': .* supports the gaussian family only"):
        engine.filter_series(spec, {"sigma2.level": 0.1}, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"supports the gaussian family only"):
        engine.fit_mle(spec, [1.0, 2.0, 3.0])


def test_default_priors_of_the_new_parameters():
    y = np.array([3.0, 5.0, 4.0, 8.0, 6.0, 7.0])
    t = engine.default_priors({**LEVEL, "observation": "student_t"}, y)
    assert t["nu.observation"] == {"dist": "gamma", "concentration": 2.0, "rate": 0.1}
    nb = engine.default_priors({**LEVEL, "observation": "negative_binomial"}, y)
    assert nb["alpha.observation"] == {"dist": "half_normal", "scale": 1.0}
    # counts: variances of the log mean, scaled by var(Δ log(y + ½))
    assert nb["sigma2.level"]["scale"] == pytest.approx(2 * np.var(np.diff(np.log(y + 0.5))))


def test_log_densities_match_scipy():
    y = jnp.array([0.0, 3.0, 17.0, jnp.nan])
    theta = jnp.array([0.2, 1.1, 2.5, 0.0])
    offset = jnp.array([0.0, 0.5, -0.3, 0.0])
    p = F.ObservationParams(jnp.array(0.7), jnp.array(4.5), jnp.array(0.35))
    mu = np.exp(np.asarray(theta + offset))[:3]
    yy = np.asarray(y)[:3]
    np.testing.assert_allclose(F.log_density("poisson", y, theta, offset, p)[:3], stats.poisson.logpmf(yy, mu))
    np.testing.assert_allclose(F.log_density("negative_binomial", y, theta, offset, p)[:3],
                               stats.nbinom.logpmf(yy, 1 / 0.35, 1 / (1 + 0.35 * mu)))
    np.testing.assert_allclose(F.log_density("student_t", y, theta, offset, p)[:3],
                               stats.t.logpdf(yy, 4.5, loc=np.asarray(theta)[:3], scale=np.sqrt(0.7)))
    assert float(F.log_density("poisson", y, theta, offset, p)[3]) == 0.0


@pytest.mark.parametrize("family", ["poisson", "negative_binomial", "student_t"])
def test_pseudo_observations_match_the_derivatives_of_the_density(family):
    """ỹ − θ = H̃ ∂log p/∂θ for every family; H̃ = −1/∂²log p/∂θ² for the counts (Newton)."""
    y = jnp.array([0.0, 3.0, 17.0])
    theta = jnp.array([0.2, 1.1, 2.5])
    offset = jnp.array([0.0, 0.5, -0.3])
    p = F.ObservationParams(jnp.array(0.7), jnp.array(4.5), jnp.array(0.35))
    one = lambda th, i: F.log_density(family, y, jnp.asarray(theta).at[i].set(th), offset, p)[i]
    for i in range(3):
        d1 = jax.grad(one)(theta[i], i)
        d2 = jax.grad(jax.grad(one))(theta[i], i)
        y_t, H = F.pseudo_observations(family, y, theta, offset, p)
        assert float(y_t[i] - theta[i]) == pytest.approx(float(H[i] * d1), rel=1e-10, abs=1e-12)
        if family != "student_t":
            assert float(H[i]) == pytest.approx(float(-1 / d2), rel=1e-10)
