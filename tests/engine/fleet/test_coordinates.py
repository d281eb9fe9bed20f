"""Each member's coordinates: the MAP objective is fit_map's potential."""

from __future__ import annotations

import numpy as np
import pytest

import engine
from engine.bayes import log_posterior
from engine.fleet.coordinates import Coordinates, log_prior, make_coordinates, member_args, to_params

from .cases import SPEC, NAMES


def test_map_objective_is_fit_maps_potential(fleet):
    """Our log prior + the filter's log-likelihood = engine.bayes.log_posterior, at random points."""
    spec = engine.ModelSpec.from_dict(SPEC)
    co = make_coordinates(spec, "map", None)
    a = member_args(spec, co, fleet[0], None, None)
    logp, _, to_c = log_posterior(SPEC, fleet[0])
    for z in np.random.default_rng(1).normal(size=(3, len(NAMES))):
        theta = np.asarray(to_params(spec, co, z, a))
        np.testing.assert_allclose(theta, np.asarray(to_c(z)), rtol=1e-12)
        ours = float(engine.loglik(SPEC, theta, fleet[0])) + float(log_prior(spec, co, z, a))
        assert ours == pytest.approx(float(logp(z)), rel=1e-10)
    assert float(log_prior(spec, Coordinates("mle"), z, a)) == 0.0
