"""Bayesian fits of the non-Gaussian families: MAP and NUTS with an importance-sampling correction.

NUTS runs on the approximate posterior π̂(ψ) ∝ p(ψ) L̂(ψ), with L̂ the Laplace / mode approximation
(`approx`: deterministic and differentiable, which NUTS needs), and the draws ψ_d are then
reweighted to the exact posterior by

    ξ_d = p̂(y; ψ_d) / L̂(ψ_d),

with p̂ the importance-sampling estimate of the likelihood (`importance`), unbiased for p(y; ψ):
the IS-MCMC of Vihola, Helske & Franks (2020), as R's bssm does. Self-normalised averages
Σ ξ_d f(ψ_d) / Σ ξ_d are then consistent for the exact posterior's expectations whatever the
error of L̂, as long as the weights are well behaved: their ESS and Pareto k̂ (`pareto_k`) say so,
and above k̂ = 0.7 the fit is marked untrustworthy (`CorrectionWarning`).

MAP (`fit_map`) maximises log p(ψ) + log p̂(y; ψ) with the same random numbers at every ψ
(common random numbers: the estimate is then a smooth, deterministic function of ψ, and its
gradient is exact for it), starting from the mode of the approximate posterior.
"""

from __future__ import annotations

import json
import time
import warnings
from functools import partial
from typing import Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import scipy.optimize
from jax.flatten_util import ravel_pytree
from numpyro.infer import MCMC, NUTS, init_to_median
from numpyro.infer.util import potential_energy

from ..priors import Prior, make_distribution, resolve_priors, sample_sites, site_values_to_params
from ..spec import ModelSpec, param_names
from .approx import MAX_ITER, TOL, approx_model
from .importance import importance_loglik, pareto_k

__all__ = ["CORRECTION_DRAWS", "MAP_DRAWS", "K_TRUST", "CorrectionWarning", "Problem", "make_problem",
           "fit_map", "fit_nuts", "correction", "posterior_weights", "corrected_summary", "weighted_quantile"]

CORRECTION_DRAWS = 100   # importance paths per posterior draw (50 antithetic pairs)
MAP_DRAWS = 1000         # importance paths of the MAP's exact likelihood
K_TRUST = 0.7            # above this Pareto k̂ the correction's weights are not to be trusted
CORRECTION_BATCH = 32    # posterior draws corrected at once (memory: batch × paths × time × state)


class CorrectionWarning(UserWarning):
    """The importance correction's weights are heavy-tailed (Pareto k̂ > 0.7): the corrected
    posterior is not to be trusted."""


class Problem(NamedTuple):
    """A non-Gaussian spec with resolved priors and checked data."""

    spec: ModelSpec
    priors: dict[str, Prior]
    y: jnp.ndarray            # (time,)
    x: jnp.ndarray | None     # (time, exog)
    offset: jnp.ndarray       # (time,) log exposure

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(self.priors[n].family for n in sample_sites(self.spec))

    @property
    def prior_args(self) -> tuple:
        return tuple(tuple(jnp.asarray(a, dtype=jnp.float64) for a in self.priors[n].args)
                     for n in sample_sites(self.spec))


def make_problem(spec, y, exog=None, exposure=None, priors: Mapping | None = None) -> Problem:
    from . import prepare_data
    spec, y, x, offset = prepare_data(spec, y, exog, exposure)
    if not param_names(spec):
        raise ValueError("this model has no parameters to infer (every component is fixed)")
    resolved = resolve_priors(spec, np.asarray(y), None if x is None else np.asarray(x), priors)
    return Problem(spec, resolved, y, x, offset)


def _model(spec: ModelSpec, families: tuple, loglik: Callable, prior_args, data):
    """NumPyro model: the priors' sample sites, and loglik(pvec, data) as a factor."""
    values = {n: numpyro.sample(n, make_distribution(f, a))
              for n, f, a in zip(sample_sites(spec), families, prior_args)}
    numpyro.factor("loglik", loglik(site_values_to_params(spec, values), data))


def _laplace(spec: ModelSpec):
    return lambda pvec, data: approx_model(spec, pvec, *data).loglik


def _importance(spec: ModelSpec, key, n_paths: int):
    return lambda pvec, data: importance_loglik(key, spec, pvec, *data, n_paths).loglik


def _potential(spec: ModelSpec, families: tuple, loglik: Callable, prior_args, data):
    """−log p(ψ(z) | y) − log |dψ/dz| on NumPyro's unconstrained coordinates z (k,) (sites sorted)."""
    model = partial(_model, spec, families, loglik)
    _, unravel = ravel_pytree({n: jnp.zeros(()) for n in sample_sites(spec)})
    return lambda z: potential_energy(model, (prior_args, data), {}, unravel(z))


@partial(jax.jit, static_argnames=("spec", "families", "exact", "n_paths"))
def _value_and_grad(spec, families, exact, n_paths, key, z, prior_args, data):
    loglik = _importance(spec, key, n_paths) if exact else _laplace(spec)
    return jax.value_and_grad(_potential(spec, families, loglik, prior_args, data))(z)


def _maps(prob: Problem):
    from ..bayes import _traced_maps
    return _traced_maps(prob.spec, prob.families, prob.prior_args)


def fit_map(spec, y, exog=None, exposure=None, *, priors: Mapping | None = None, start=None, maxiter: int = 500,
            exact: bool = True, draws: int = MAP_DRAWS, seed: int = 0):
    """MAP fit of a non-Gaussian model on unconstrained coordinates, with a Laplace approximation of
    the posterior there (`engine.MAPResult`).

    First the mode of the approximate posterior (the Laplace likelihood, by L-BFGS with its exact
    gradient), then, with exact=True, the mode of the exact posterior with the likelihood by
    importance sampling over `draws` paths drawn with the same random numbers (key `seed`) at
    every ψ. `loglik_se` is the estimate's Monte Carlo standard error at the mode."""
    from ..bayes import MAPResult, _prior_median, _to_unconstrained_value
    from ..mle import start_points
    from ..transforms import constrain, scales

    prob = make_problem(spec, y, exog, exposure, priors)
    spec, families, prior_args = prob.spec, prob.families, prob.prior_args
    data = (prob.y, prob.x, prob.offset)
    to_u, to_c = _maps(prob)
    key = jax.random.PRNGKey(seed)
    sites = sample_sites(spec)
    order = [sites.index(n) for n in sorted(sites)]
    candidates = [np.array([_to_unconstrained_value(f, a, _prior_median(f, a))
                            for f, a in zip(families, [prob.priors[n].args for n in sites])])[order]]
    if start is not None:
        from ..model import as_param_vector
        candidates.insert(0, np.asarray(to_u(as_param_vector(spec, start))))
    sc = scales(spec, np.asarray(prob.y), None if prob.x is None else np.asarray(prob.x))
    candidates += [np.asarray(to_u(constrain(spec, jnp.asarray(u), sc))) for u in start_points(spec)]

    def objective(is_exact: bool):
        def fun(z):
            v, g = _value_and_grad(spec, families, is_exact, int(draws), key, jnp.asarray(z), prior_args, data)
            v, g = float(v), np.asarray(g, dtype=float)
            if not np.isfinite(v) or not np.all(np.isfinite(g)):
                return 1e300, np.zeros_like(g)
            return v, g
        return fun

    options = {"maxiter": maxiter, "gtol": 1e-8, "ftol": 1e-13}
    fun = objective(False)
    values = [fun(c)[0] for c in candidates]
    best = None
    for i in np.argsort(values)[:2]:
        res = scipy.optimize.minimize(fun, candidates[i], jac=True, method="L-BFGS-B", options=options)
        if best is None or res.fun < best.fun:
            best = res
    if exact:
        fun = objective(True)
        best = scipy.optimize.minimize(fun, best.x, jac=True, method="L-BFGS-B", options=options)
    z = np.asarray(best.x)
    # the Hessian by central differences of the exact gradient (second derivatives through the
    # mode's implicit function would compile a far larger program for a k × k matrix)
    h = 1e-4
    hess = np.stack([(fun(z + h * e)[1] - fun(z - h * e)[1]) / (2 * h) for e in np.eye(len(z))])
    hess = (hess + hess.T) / 2
    w, V = np.linalg.eigh(hess)
    z_cov = (V / np.clip(w, 1e-10, None)) @ V.T
    theta = to_c(jnp.asarray(z))
    pvec = jnp.asarray(theta)
    if exact:
        r = importance_loglik(key, spec, pvec, *data, int(draws))
        ll, se = float(r.loglik), float(r.se)
    else:
        ll, se = float(approx_model(spec, pvec, *data).loglik), 0.0
    converged = bool(best.success) and bool(np.all(np.isfinite(z))) and bool(np.all(w > 0))
    message = str(best.message) + ("" if exact else " (Laplace likelihood)")
    return MAPResult(spec, {n: p.as_dict() for n, p in prob.priors.items()},
                     dict(zip(param_names(spec), map(float, np.asarray(theta)))), z, z_cov, float(-best.fun), ll,
                     converged, message, to_c, se)


class Correction(NamedTuple):
    """The importance correction of draws from the approximate posterior."""

    log_weight: jnp.ndarray     # (draw,) log ξ_d = log p̂(y; ψ_d) − log L̂(ψ_d)
    loglik: jnp.ndarray         # (draw,) log p̂(y; ψ_d), the importance estimate
    loglik_se: jnp.ndarray      # (draw,) its Monte Carlo standard error
    approx_loglik: jnp.ndarray  # (draw,) log L̂(ψ_d)
    converged: jnp.ndarray      # (draw,) bool: the mode was found


@partial(jax.jit, static_argnames=("spec", "n_paths"))
def _correction(key, spec: ModelSpec, P, y, x, offset, n_paths: int) -> Correction:
    keys = jax.random.split(key, P.shape[0])

    def one(args):
        k, pvec = args
        r = importance_loglik(k, spec, pvec, y, x, offset, n_paths)
        return Correction(r.loglik - r.approx_loglik, r.loglik, r.se, r.approx_loglik, r.converged)

    return jax.lax.map(one, (keys, P), batch_size=min(CORRECTION_BATCH, P.shape[0]))


def correction(key, spec, P, y, exog=None, exposure=None, *, draws: int = CORRECTION_DRAWS) -> Correction:
    """The importance correction of parameter rows P (draw, param) drawn from the approximate
    posterior: the importance estimate of the likelihood at each (independent random numbers per
    row) and its log ratio to the approximation."""
    from . import prepare_data
    spec, y, x, offset = prepare_data(spec, y, exog, exposure)
    return _correction(key, spec, jnp.asarray(P, dtype=jnp.float64), y, x, offset, int(draws))


def fit_nuts(spec, y, exog=None, exposure=None, *, chains: int = 4, warmup: int = 1000, draws: int = 1000,
             seed: int = 0, priors: Mapping | None = None, target_accept: float = 0.8, max_tree_depth: int = 10,
             correction_draws: int = CORRECTION_DRAWS, time_index=None):
    """NUTS on the approximate posterior, then the importance correction to the exact one
    (see the module's docstring). Returns an `arviz.InferenceData` whose posterior holds the
    unweighted draws and whose sample_stats hold each draw's `log_weight` (log ξ_d, with
    `loglik` and `loglik_se` of the importance estimate); `corrected_summary` and
    `posterior_weights` read them. attrs: `correction_ess` (the normalised weights' ESS),
    `correction_pareto_k`, `trustworthy` (k̂ ≤ 0.7 and every mode found); a `CorrectionWarning`
    when the weights are heavy-tailed."""
    import arviz as az
    from ..bayes import check_sampler_settings

    check_sampler_settings(chains=chains, warmup=warmup, draws=draws, target_accept=target_accept,
                           max_tree_depth=max_tree_depth)
    if correction_draws < 2:
        raise ValueError(f"correction_draws must be at least 2 (one antithetic pair), got {correction_draws}")
    prob = make_problem(spec, y, exog, exposure, priors)
    spec = prob.spec
    data = (prob.y, prob.x, prob.offset)
    t0 = time.perf_counter()
    model = partial(_model, spec, prob.families, _laplace(spec))
    kernel = NUTS(model, target_accept_prob=float(target_accept), max_tree_depth=int(max_tree_depth),
                  init_strategy=init_to_median(num_samples=15))
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=draws, num_chains=chains, chain_method="sequential",
                progress_bar=False)
    key_mcmc, key_is = jax.random.split(jax.random.PRNGKey(seed))
    mcmc.run(key_mcmc, prob.prior_args, data,
             extra_fields=("diverging", "energy", "num_steps", "accept_prob", "potential_energy",
                           "adapt_state.step_size"))
    sampling_seconds = time.perf_counter() - t0
    samples = mcmc.get_samples(group_by_chain=True)
    extra = mcmc.get_extra_fields(group_by_chain=True)
    names = param_names(spec)
    flat = {n: v.reshape(chains * draws) for n, v in samples.items()}
    P = jax.vmap(lambda v: site_values_to_params(spec, v))(flat)
    corr = jax.device_get(_correction(key_is, spec, P, *data, int(correction_draws)))
    log_w = np.asarray(corr.log_weight)
    finite = np.isfinite(log_w)
    ess = _ess(log_w) if finite.all() else 0.0
    k_hat = float(pareto_k(jnp.asarray(log_w))) if finite.all() else float("inf")
    all_converged = bool(np.all(corr.converged))
    trustworthy = bool(np.isfinite(k_hat) and k_hat <= K_TRUST and all_converged)
    if not trustworthy:
        warnings.warn(f"the importance correction's weights are not to be trusted: Pareto k̂ = {k_hat:.2f} "
                      f"(above {K_TRUST} the corrected posterior is unreliable), ESS {ess:.0f} of {log_w.size} draws"
                      + ("" if all_converged else "; the mode was not found at some draws")
                      + ". Use more correction_draws, or a better approximation", CorrectionWarning, stacklevel=2)
    theta = np.asarray(P).reshape(chains, draws, -1)
    posterior = {n: theta[..., i] for i, n in enumerate(names)}
    shape = (chains, draws)
    num_steps = np.asarray(extra["num_steps"])
    sample_stats = {
        "diverging": np.asarray(extra["diverging"]).astype(bool),
        "energy": np.asarray(extra["energy"]),
        "n_steps": num_steps,
        "tree_depth": (np.floor(np.log2(np.maximum(num_steps, 1))) + 1).astype(int),
        "step_size": np.asarray(extra["adapt_state.step_size"]),
        "acceptance_rate": np.asarray(extra["accept_prob"]),
        "lp": -np.asarray(extra["potential_energy"]),
        "log_weight": log_w.reshape(shape),
        "loglik": np.asarray(corr.loglik).reshape(shape),
        "loglik_se": np.asarray(corr.loglik_se).reshape(shape),
        "approx_loglik": np.asarray(corr.approx_loglik).reshape(shape),
    }
    time_coord = np.arange(prob.y.shape[0]) if time_index is None else np.asarray(time_index)
    attrs = {"spec": spec.to_json(), "priors": json.dumps({n: p.as_dict() for n, p in prob.priors.items()}),
             "inference_library": "numpyro", "inference_library_version": numpyro.__version__,
             "sampling_time": sampling_seconds, "correction_time": time.perf_counter() - t0 - sampling_seconds,
             "engine": "streamssm", "warmup": warmup,
             "likelihood": "laplace, importance-corrected", "correction_draws": int(correction_draws),
             "correction_ess": float(ess), "correction_pareto_k": k_hat, "trustworthy": int(trustworthy)}
    return az.from_dict(posterior=posterior, sample_stats=sample_stats, observed_data={"y": np.asarray(prob.y)},
                        coords={"time": time_coord}, dims={"y": ["time"]}, attrs=attrs)


def _ess(log_w: np.ndarray) -> float:
    w = np.exp(log_w - np.max(log_w))
    return float(w.sum() ** 2 / np.sum(w * w))


def posterior_weights(idata) -> np.ndarray:
    """The normalised importance weights (chain, draw) of a `fit_nuts` result of a non-Gaussian model."""
    log_w = np.asarray(idata.sample_stats["log_weight"])
    w = np.exp(log_w - np.max(log_w))
    return w / w.sum()


def weighted_quantile(values, weights, q) -> np.ndarray:
    """Quantiles q of a weighted sample (the weights' CDF at the sorted values' midpoints, interpolated)."""
    values, weights = np.ravel(values), np.ravel(weights)
    order = np.argsort(values)
    v, w = values[order], weights[order] / np.sum(weights)
    cdf = np.cumsum(w) - 0.5 * w
    return np.interp(q, cdf, v)


def corrected_summary(idata, quantiles=(0.05, 0.5, 0.95)) -> dict[str, dict]:
    """The exact posterior's mean, sd and quantiles of each parameter from the corrected draws:
    name → {"mean", "sd", "quantiles" (len(quantiles),)}."""
    w = posterior_weights(idata).ravel()
    out = {}
    for name, v in idata.posterior.data_vars.items():
        x = np.asarray(v).ravel()
        mean = float(np.sum(w * x))
        out[name] = {"mean": mean, "sd": float(np.sqrt(np.sum(w * (x - mean) ** 2))),
                     "quantiles": weighted_quantile(x, w, np.asarray(quantiles))}
    return out
