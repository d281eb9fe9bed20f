"""fit_mle on a model whose diffuse likelihood has no maximum: a damped cycle under the exact
diffuse start. Its log-likelihood grows like −log ρ as the damping ρ → 0 (checked here against the
engine's own whole-series formula at two dampings, an invariant, not a stored number), so the
optimiser runs to ρ ≈ 0; the fit must say so rather than report convergence."""

import numpy as np
import jax.numpy as jnp

import engine

FIVE = {"irregular": True, "level": {"kind": "local_linear_trend"},
        "seasonal": [{"period": 12, "form": "dummy", "stochastic": True}],
        "cycle": {"damped": True, "stochastic": True}, "autoregressive": {"order": 1}}


def air60():
    return np.log(engine.load_dataset("airpassengers")["passengers"].to_numpy(float))[:60]


def test_the_diffuse_damped_cycle_likelihood_grows_as_the_damping_vanishes():
    spec, y = engine.ModelSpec.from_dict(FIVE), air60()
    names = engine.param_names(spec)
    at = {n: 1e-4 for n in names} | {"frequency.cycle": 0.5, "ar.L1": 0.5}
    ll = [float(engine.loglik(spec, jnp.array([(at | {"damping.cycle": r})[n] for n in names]), y))
          for r in (1e-6, 1e-10)]
    # ρ → ρ·1e-4 adds log(1e4) = 9.21 nats (one identified direction per damped step), up to O(ρ)
    assert abs((ll[1] - ll[0]) - np.log(1e4)) < 0.05


def test_fit_mle_refuses_to_call_the_vanishing_damping_a_maximum():
    spec, y = engine.ModelSpec.from_dict(FIVE), air60()
    fit = engine.fit_mle(spec, y)
    assert fit.params["damping.cycle"] < 1e-3   # the likelihood rises all the way to ρ = 0
    assert not fit.converged
    assert "damping.cycle" in fit.message and "grows without bound" in fit.message
