"""Non-Gaussian observations (Student-t, Poisson, negative binomial) on the structural models.

The states are those of the linear Gaussian structural model; y_t depends on the signal
θ_t = Z_t α_t + d_t through the spec's `observation.family` (`families`). Two likelihoods:

* `approximate`: the Gaussian model at the mode of p(θ | y) (`approx`), deterministic and
  differentiable, its log-likelihood the Laplace approximation (counts) — for fast fits and as
  the proposal of
* `loglik_importance`: the exact likelihood by importance sampling over whole signal paths drawn
  with the simulation smoother (`importance`), with antithetic draws and a Monte Carlo standard
  error, deterministic for a given seed.

`engine.loglik` returns the importance estimate for these families (method="importance", the
default), the approximation (method="laplace") or, for the Student-t, importance sampling over
its latent scales (method="mixture", `mixture`).

Modules: `families` (densities, pseudo-observations, moments, data checks), `approx` (the mode,
the approximating model), `importance` (the simulation smoother and the estimate), `mixture`
(the Student-t as a scale mixture), `fit` (MAP, and NUTS with the importance correction),
`sequential` (particle filters, EKF, UKF: init/step pairs for any family).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..domains import check_params
from ..model import as_param_vector, as_series
from ..spec import as_spec
from ..system import check_exog
from . import approx as approx_module, families, fit, importance, mixture, sequential
from .approx import ApproxModel, approx_model
from .families import check_observations
from .importance import DRAWS, ImportanceResult, importance_loglik
from .fit import CorrectionWarning, corrected_summary, fit_map, fit_nuts, posterior_weights

__all__ = ["METHODS", "DRAWS", "ApproxModel", "ImportanceResult", "prepare", "prepare_data", "approximate",
           "loglik_importance", "loglik", "check_observations", "families", "importance", "fit", "fit_map", "fit_nuts", "mixture", "sequential",
           "CorrectionWarning", "corrected_summary", "posterior_weights"]

METHODS = ("importance", "laplace", "mixture")


def prepare(spec, params, y, exog=None, exposure=None):
    """Checked inputs: (spec, parameter vector (k,), y (time,), exog (time, k) or None, offset log E_t (time,)).

    The data must suit the family (`check_observations`) and the parameters their ranges."""
    spec, y, x, offset = prepare_data(spec, y, exog, exposure)
    pvec = as_param_vector(spec, params)
    check_params(spec, pvec)
    return spec, pvec, y, x, offset


def prepare_data(spec, y, exog=None, exposure=None):
    """Checked data of a non-Gaussian spec: (spec, y (time,), exog (time, k) or None, offset log E_t (time,))."""
    spec = as_spec(spec)
    if spec.observation.is_gaussian:
        raise ValueError("spec field 'observation.family': the gaussian family needs no approximation; "
                         "use engine.loglik, which is exact for it")
    y = as_series(y)
    spec.check_data(y.shape[0])
    x = check_exog(spec, exog, y.shape[0])
    x = None if x is None else jnp.asarray(x)[: y.shape[0]]
    if isinstance(y, jax.core.Tracer):
        offset = jnp.zeros(y.shape[0]) if exposure is None else jnp.log(jnp.asarray(exposure)[: y.shape[0]])
    else:
        offset = jnp.asarray(check_observations(spec, np.asarray(y), exposure))
    return spec, y, x, offset


def approximate(spec, params, y, exog=None, exposure=None, *, max_iter: int = approx_module.MAX_ITER,
                tol: float = approx_module.TOL) -> ApproxModel:
    """The Gaussian model at the mode of p(θ | y) and its approximate (Laplace) log-likelihood.

    Differentiable in the parameters (implicit differentiation at the mode). `converged` says
    whether the mode was reached within max_iter iterations."""
    spec, pvec, y, x, offset = prepare(spec, params, y, exog, exposure)
    return approx_model(spec, pvec, y, x, offset, max_iter, tol)


def loglik_importance(spec, params, y, exog=None, exposure=None, *, draws: int = DRAWS, seed: int = 0,
                      max_iter: int = approx_module.MAX_ITER, tol: float = approx_module.TOL) -> ImportanceResult:
    """The exact log-likelihood by importance sampling over `draws` signal paths (antithetic pairs),
    with its Monte Carlo standard error and the weights' ESS; the same for the same seed."""
    spec, pvec, y, x, offset = prepare(spec, params, y, exog, exposure)
    if draws < 2:
        raise ValueError(f"draws must be at least 2 (one antithetic pair), got {draws}")
    return importance_loglik(jax.random.PRNGKey(seed), spec, pvec, y, x, offset, draws, max_iter, tol)


def loglik(spec, params, y, exog=None, exposure=None, *, method: str = "importance", draws: int = DRAWS,
           seed: int = 0) -> jnp.ndarray:
    """The log-likelihood of a non-Gaussian model: by importance sampling (the default; exact up to
    Monte Carlo error, deterministic for a seed), with method="laplace" the approximation at the
    mode (deterministic, differentiable), or for the Student-t with method="mixture" importance
    sampling over its latent scales (`mixture`: better where outliers make the default's weights
    degenerate)."""
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not known; use one of {METHODS}")
    if method == "laplace":
        return approximate(spec, params, y, exog, exposure).loglik
    if method == "mixture":
        if exposure is not None:
            raise ValueError("exposure applies to count families; the scale mixture is the Student-t's")
        return mixture.loglik_mixture(spec, params, y, exog, draws=draws, seed=seed).loglik
    return loglik_importance(spec, params, y, exog, exposure, draws=draws, seed=seed).loglik
