"""The Student-t likelihood by importance sampling over its latent scales (the conditionally
Gaussian form; Durbin & Koopman 2012 §11.4 on mixtures, Shephard 1994).

A t_ν(0, σ²) noise is a scale mixture: ε_t | λ_t ~ N(0, σ²/λ_t), λ_t ~ Gamma(ν/2, rate ν/2)
(1/λ_t, the per-step variance factor, is InvGamma(ν/2, ν/2)). Given λ the model is linear
Gaussian and its likelihood p(y | λ) exact (the Kalman filter with H_t = σ²/λ_t), so

    p(y) = E_q[ p(y | λ) p(λ) / q(λ) ],     λ ~ q,

importance sampling over the T scales instead of the T signals. The proposal is the mean-field
fit q(λ) = Π_t Gamma(a_t, b_t) of p(λ | y) (a few coordinate-ascent passes: a_t = (ν + 1)/2,
b_t = (ν + E[(y_t − θ_t)²]/σ²)/2, with the smoothed mean and variance of θ_t under the Gaussian
model at E[λ]). Where an outlier makes p(θ_t | y) heavy-tailed or bimodal, the Gaussian
proposal over θ (`importance`) degenerates; here an outlier only puts a small λ_t in q, and the
draws' weights stay balanced (measured on a local level with t₃ outliers, ν = 3, T = 60,
20000 draws: ESS 4294 against 823 with the Gaussian proposal, se 0.014 against 0.036 nats).
It costs one Kalman filter per draw, so where the Gaussian proposal's weights are healthy
(ν ≥ 5, say) that proposal is the cheaper; `engine.loglik(method="mixture")` chooses this one.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.special import gammaln

from .. import kalman
from ..spec import ModelSpec
from ..system import layout
from .approx import gaussian_filter, model_system
from .families import observation_params
from .importance import ImportanceResult, pareto_k

__all__ = ["VB_ITERATIONS", "scale_proposal", "mixture_loglik", "loglik_mixture"]

VB_ITERATIONS = 20


def _log_gamma(x, shape, rate):
    return shape * jnp.log(rate) - gammaln(shape) + (shape - 1) * jnp.log(x) - rate * x


def scale_proposal(lay, system, y, nu, scale2, n_iter: int = VB_ITERATIONS):
    """(shape a (time,), rate b (time,)) of the mean-field Gamma fit of p(λ | y) (see the module's docstring)."""
    observed = ~jnp.isnan(y)
    n_time = y.shape[0]
    Z = jnp.broadcast_to(system.design, (n_time, lay.n_states))
    d = jnp.broadcast_to(system.obs_intercept, (n_time,))
    shape = jnp.full(n_time, 0.5 * (nu + 1))

    def body(e_lambda, _):
        H = scale2 / e_lambda
        lay_s, sys_s, info, _ = gaussian_filter(lay, system, jnp.where(observed, y, jnp.nan), H)
        sm = kalman.smooth_one(lay_s, sys_s, info, sys_s.design)
        mean = jnp.einsum("ts,ts->t", Z, sm.mean) + d
        var = jnp.einsum("ts,tsr,tr->t", Z, sm.cov, Z)
        e2 = jnp.where(observed, (jnp.where(observed, y, 0.0) - mean) ** 2 + var, 0.0)
        rate = 0.5 * (nu + e2 / scale2)
        return shape / rate, rate

    _, rates = lax.scan(body, jnp.ones(n_time), None, length=n_iter)
    return shape, rates[-1]


@partial(jax.jit, static_argnames=("spec", "n_draws"))
def mixture_loglik(key, spec: ModelSpec, pvec, y, x, n_draws: int = 1000) -> ImportanceResult:
    """The Student-t log-likelihood by importance sampling over the latent scales, for checked inputs
    (`engine.nongaussian.prepare`); fields as `importance_loglik`'s (approx_loglik: log p(y | E_q[λ]))."""
    lay = layout(spec)
    system = model_system(spec, pvec, x)
    p = observation_params(spec, pvec)
    observed = ~jnp.isnan(y)
    shape, rate = scale_proposal(lay, system, y, p.nu, p.scale2)
    lam = jax.random.gamma(key, shape, (n_draws, y.shape[0])) / rate
    lam = jnp.where(observed, lam, 1.0)
    y_obs = jnp.where(observed, y, jnp.nan)

    def gaussian_ll(l):
        return gaussian_filter(lay, system, y_obs, p.scale2 / l)[3]

    log_prior = jnp.sum(jnp.where(observed, _log_gamma(lam, 0.5 * p.nu, 0.5 * p.nu), 0.0), axis=1)
    log_q = jnp.sum(jnp.where(observed, _log_gamma(lam, shape, rate), 0.0), axis=1)
    log_w = jax.lax.map(gaussian_ll, lam, batch_size=min(256, n_draws)) + log_prior - log_q
    top = jnp.max(log_w)
    w = jnp.exp(log_w - top)
    mean_w = jnp.mean(w)
    se = jnp.std(w, ddof=1) / (jnp.sqrt(n_draws) * mean_w)
    ess = jnp.sum(w) ** 2 / jnp.sum(w * w)
    at_mean = gaussian_ll(jnp.where(observed, shape / rate, 1.0))
    return ImportanceResult(top + jnp.log(mean_w), se, ess, pareto_k(log_w), at_mean, log_w, jnp.array(True))


def loglik_mixture(spec, params, y, exog=None, *, draws: int = 1000, seed: int = 0) -> ImportanceResult:
    """`mixture_loglik` for a Student-t spec, with checked inputs."""
    from . import prepare
    spec, pvec, y, x, _ = prepare(spec, params, y, exog)
    if spec.observation.family != "student_t":
        raise ValueError(f"the scale-mixture likelihood is the Student-t's; this spec's family is "
                         f"{spec.observation.family!r} (use method='importance')")
    if draws < 2:
        raise ValueError(f"draws must be at least 2, got {draws}")
    return mixture_loglik(jax.random.PRNGKey(seed), spec, pvec, y, x, int(draws))
