"""The log-likelihood at a zero variance: exact diffuse, against statsmodels' exact diffuse start
and a dense GLS form of the likelihood (no filter).

statsmodels' UnobservedComponents *by default* starts approximately diffuse (P₁ = 1e6·I) and
drops the first d terms (`loglikelihood_burn` = d), so its default `llf` differs from the exact
diffuse value by the diffuse steps' terms: on Nile's local level by −½ log 2π (F∞ = 1) with
sigma2.irregular = 0 (−1396.28 exact, −1395.36 statsmodels' default), and by that plus the
1e6 start's trace in the next steps with sigma2.level = 0 (−664.39 against −663.27). With
`use_exact_diffuse=True` statsmodels agrees with the engine, and so does the dense form.
"""

from __future__ import annotations

import numpy as np
import pytest
import statsmodels.api as sm

import engine

from ..helpers import nile, sm_model
from .test_diffuse import dense_gls_loglik

NILE = {"irregular": True, "level": {"kind": "local_level"}}
HALF_LOG_2PI = 0.5 * np.log(2 * np.pi)


@pytest.mark.parametrize("p", [[0.0, 1469.0], [15099.0, 0.0]])
def test_zero_variance_equals_the_exact_diffuse_references(p):
    y = nile()
    p = np.array(p)
    ours = float(engine.loglik(NILE, p, y))
    assert ours == pytest.approx(sm_model(NILE, y).loglike(p), rel=1e-10, abs=0)
    if p[0] > 0:   # Σ nonsingular: the dense form at the point itself
        assert ours == pytest.approx(dense_gls_loglik(sm_model(NILE, y), p), rel=1e-10, abs=0)
    else:          # y₁ = α₁ exactly: Σ is singular at H = 0; the dense form's limit as H → 0
        limit = [dense_gls_loglik(sm_model(NILE, y), np.array([h, p[1]])) for h in (1e-4, 1e-5)]
        assert abs(limit[1] - ours) < abs(limit[0] - ours) < 1e-3
    default = sm.tsa.UnobservedComponents(y, "local level")   # approximate diffuse, first term burnt
    terms = np.asarray(engine.loglik_terms(NILE, p, y))
    assert terms[0] == pytest.approx(-HALF_LOG_2PI, rel=1e-12)   # the diffuse step: −½(log 2π + log F∞)
    if p[0] == 0:
        assert default.loglike(p) == pytest.approx(ours + HALF_LOG_2PI, rel=1e-10)
