"""The Student-t likelihood by importance sampling over its latent scales (`engine.nongaussian.mixture`)
against a grid filter, on a local level with t₃ outliers, where the Gaussian proposal over the
signal degenerates."""

from __future__ import annotations

import numpy as np
import pytest

import engine
from engine import nongaussian as ng

from . import grid as G

RNG = np.random.default_rng(20240611)
T = 60
HEAVY = np.cumsum(RNG.normal(0, 0.15, T)) + 1.8 + 0.3 * np.random.default_rng(5).standard_t(3, T)
HEAVY[25] = np.nan
STUDENT = {"level": "local_level", "observation": "student_t"}
DRAWS = 20000


def test_scale_mixture_matches_the_grid_filter_and_keeps_its_weights_balanced():
    grid = np.linspace(np.nanmin(HEAVY) - 15, np.nanmax(HEAVY) + 15, 3001)
    grid_ll, mix_ll = [], []
    for nu, s2 in ((3.0, 0.03), (3.0, 0.01), (5.0, 0.02)):
        params = {"sigma2.irregular": 0.09, "sigma2.level": s2, "nu.observation": nu}
        g = G.local_level_loglik(G.student_t(nu, 0.09), HEAVY, s2, grid)
        m = ng.mixture.loglik_mixture(STUDENT, params, HEAVY, draws=DRAWS, seed=1)
        grid_ll.append(g); mix_ll.append(float(m.loglik))
        assert abs(float(m.loglik) - g) < 4 * float(m.se) + 0.005, (nu, s2, float(m.loglik), g, float(m.se))
        if nu == 3.0 and s2 == 0.03:
            # where the outliers make the signal's posterior far from Gaussian: the mixture's weights
            # against the Gaussian proposal's, at the same number of draws
            r = ng.loglik_importance(STUDENT, params, HEAVY, draws=DRAWS, seed=1)
            assert float(m.ess) > 3 * float(r.ess) and float(m.se) < 0.5 * float(r.se), \
                (float(m.ess), float(r.ess), float(m.se), float(r.se))
    np.testing.assert_allclose(np.diff(mix_ll), np.diff(grid_ll), atol=0.01)


def test_engine_loglik_takes_the_mixture_on_request_and_only_for_the_student_t():
    params = {"sigma2.irregular": 0.09, "sigma2.level": 0.02, "nu.observation": 4.0}
    a = engine.loglik(STUDENT, params, HEAVY, method="mixture", draws=500, seed=2)
    assert float(a) == float(ng.mixture.loglik_mixture(STUDENT, params, HEAVY, draws=500, seed=2).loglik)
    with pytest.raises(ValueError, match="the scale-mixture likelihood is the Student-t's"):
        engine.loglik({"level": "local_level", "observation": "poisson"}, {"sigma2.level": 0.1}, [1.0, 2.0, 3.0],
                      method="mixture")


def test_student_t_with_huge_nu_is_the_gaussian_model_under_the_mixture_too():
    y = np.cumsum(RNG.normal(0, 0.15, T)) + 0.3 * RNG.normal(size=T)
    gauss = float(engine.loglik({"level": "local_level"}, {"sigma2.irregular": 0.09, "sigma2.level": 0.02}, y))
    m = ng.mixture.loglik_mixture(STUDENT, {"sigma2.irregular": 0.09, "sigma2.level": 0.02, "nu.observation": 1e8},
                                  y, draws=200)
    assert abs(float(m.loglik) - gauss) < 1e-3 and float(m.se) < 1e-3
