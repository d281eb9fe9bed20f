"""Where Koopman's recursion alone is exact, the augmented filter may be left out (`kalman.run`'s
`augmented`, decided in NumPy from the spec and the pattern of observations).

The NumPy pivots are checked against the filter's own F∞_t, the decision against the
ill-conditioned births cases of `test_diffuse` (which must keep the augmented filter) and the
well-conditioned monthly models (which may drop it), and dropping it against keeping it (values
and gradients) and against statsmodels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import engine
from engine import bayes, kalman
from engine.model import augmented_needed, terms_with
from engine.spec import as_spec
from engine.system import fixed_diffuse_system

from ..helpers import air, nile, sm_model
from .test_diffuse import CASES, case_inputs

AIR = {"irregular": True, "level": {"kind": "local_linear_trend"},
       "seasonal": [{"period": 12, "form": "dummy", "stochastic": True}]}
NILE = {"irregular": True, "level": {"kind": "local_level"}}
AIR_P = np.array([3e-4, 7e-4, 1e-6, 5e-3])


def test_numpy_pivots_equal_the_filters_diffuse_variances():
    """`koopman_pivots` gives the F∞_t that the filter's kept steps report, gaps included."""
    y = air()
    y[[1, 5, 30]] = np.nan
    res = engine.filter_series(AIR, AIR_P, y, filter="standard")
    f_inf = np.asarray(res.diffuse_var)
    pivots, ended = kalman.koopman_pivots(*fixed_diffuse_system(as_spec(AIR)), ~np.isnan(y))
    assert ended
    observed_diffuse = np.flatnonzero(~np.isnan(y))[: pivots.size]
    np.testing.assert_allclose(pivots, f_inf[observed_diffuse], rtol=1e-10, atol=1e-13)
    assert np.all(f_inf[observed_diffuse[-1] + 1:] == 0)


@pytest.mark.parametrize("case", list(CASES))
def test_ill_conditioned_starts_keep_the_augmented_filter(case):
    spec, y, _, _ = case_inputs(case)
    assert augmented_needed(as_spec(spec), y)


@pytest.mark.parametrize("spec, y", [(NILE, nile()), (AIR, air())])
def test_well_conditioned_starts_may_drop_it(spec, y):
    assert not augmented_needed(as_spec(spec), y)


def test_cycles_regressors_and_traced_data_keep_it():
    """A cycle's transition depends on its parameters, regressors in the state make the design
    time-varying, and a traced y has no pattern to read: the decision is left to the filter."""
    cyc = as_spec({**NILE, "cycle": {"period_bounds": [6, 60], "damped": True, "stochastic": True}})
    reg = as_spec({**NILE, "regression": {"columns": ["x"], "coefficients": "state"}})
    assert fixed_diffuse_system(cyc) is None and augmented_needed(cyc, nile())
    assert fixed_diffuse_system(reg) is None and augmented_needed(reg, nile())
    assert jax.jit(lambda y: jnp.asarray(augmented_needed(as_spec(NILE), y)))(jnp.asarray(nile()))


def test_a_gap_can_make_a_start_ill_conditioned():
    """Observing a monthly dummy seasonal only every 12th month leaves its directions unreached:
    Koopman's phase never ends, so the augmented filter stays."""
    y = air()
    y[np.arange(144) % 12 != 0] = np.nan
    assert augmented_needed(as_spec(AIR), y)


@pytest.mark.parametrize("gaps", [False, True])
def test_dropping_it_changes_neither_values_nor_gradients(gaps):
    """Where it may be dropped, the chunked filter without it equals the one with it (value and
    gradient) and statsmodels' log-likelihood."""
    y = air()
    if gaps:
        y[[1, 5, 30, 100]] = np.nan
    spec = as_spec(AIR)
    assert not augmented_needed(spec, y)
    f = {a: jax.jit(jax.value_and_grad(lambda p, a=a: jnp.sum(terms_with(spec, p, jnp.asarray(y), None, "standard",
                                                                          a))))
         for a in (True, False)}
    (v1, g1), (v0, g0) = f[True](jnp.asarray(AIR_P)), f[False](jnp.asarray(AIR_P))
    assert float(v0) == pytest.approx(float(v1), rel=1e-12, abs=0)
    np.testing.assert_allclose(np.asarray(g0), np.asarray(g1), rtol=1e-9)
    assert float(v0) == pytest.approx(sm_model(AIR, y).loglike(AIR_P), rel=1e-9, abs=0)


def test_the_samplers_likelihood_takes_the_decision_from_the_data():
    """`bayes._shapes` carries it, so the NUTS potential of AirPassengers holds no augmented filter
    and still gives statsmodels' log-likelihood."""
    y = air()
    prob = bayes.make_problem(AIR, y)
    shapes = bayes._shapes(prob.spec, prob.args[0], prob.args[1])
    assert shapes[2] is False
    z = bayes._maps(prob)[0](jnp.asarray(AIR_P))
    co = {kw: bayes._coordinates(prob.spec, prob.families, shapes, **dict([kw])) for kw in
          (("for_sampler", True), ("likelihood", False))}
    pot = {kw: float(c.potential_fn_gen(*prob.args)(c.unravel(z))) for kw, c in co.items()}
    ll = pot[("likelihood", False)] - pot[("for_sampler", True)]
    assert ll == pytest.approx(sm_model(AIR, y).loglike(AIR_P), rel=1e-9, abs=0)


def test_batched_pointwise_terms_without_it_equal_statsmodels():
    """The per-step batched filter (`pointwise_loglik`: the fit's log_likelihood group) leaves it
    out too where it may, and keeps statsmodels' terms, gaps in the diffuse phase included."""
    y = air()
    y[[3, 40]] = np.nan
    draws = np.stack([AIR_P, AIR_P * np.array([0.7, 0.8, 2.0, 0.9])])
    terms = bayes.pointwise_loglik(AIR, draws, y)
    for row, p in zip(terms, draws):
        np.testing.assert_allclose(row, sm_model(AIR, y).loglikeobs(p), rtol=1e-9, atol=1e-11)
