"""Sequential filters for any observation family: particle filters (bootstrap and guided) and the
linearised Gaussian filters (EKF, UKF), each an `init`/`step` pair over a NamedTuple state with
one per-step info (`SequentialInfo`), and `run` to scan them over a series.

The states move as in the structural model, α_{t+1} = T α_t + η_t, η_t ~ N(0, diag(q)), and
y_t depends on the signal θ_t = z_tᵀ α_t + d_t through the family (`families`). Every filter
needs a proper initial distribution α_1 ~ N(a_1, P_1) (a particle cannot be drawn from a flat
prior): `run` takes the model's where it has no diffuse states, else the caller's.

* particle filters: the state holds per-particle predictive means T α_{t−1}⁽ⁱ⁾ and a shared
  predictive covariance (Q, or P_1 at the start), so a step draws α_t⁽ⁱ⁾ from a proposal and
  weighs it. `bootstrap` proposes from the transition; `guided` from the Gaussian model at the
  mode of each particle's own p(θ_t | α_{t−1}⁽ⁱ⁾, y_t) (the local Laplace approximation, a few
  Newton or EM steps with `pseudo_observations`), drawn exactly by conditioning the bootstrap
  draw on the pseudo-observation (α = α⁺ + K(ỹ − z α⁺ − d − ε), ε ~ N(0, H̃): Matheron's rule)
  and weighed by p(y | θ) g(ỹ | α_{t−1}) / g(ỹ | θ); as an auxiliary particle filter (Pitt &
  Shephard 1999), the ancestors are first drawn by the Laplace estimate of each particle's
  predictive likelihood, so the look-ahead term does not spread the weights. The bootstrap
  filter resamples (systematically) when the ESS falls below half the particles. The sum of the steps' log p̂(y_t | y_{1:t−1}) is the usual
  estimate of the log-likelihood (its exponential is unbiased).
* EKF and UKF: the Gaussian filter matching the first two moments of y_t | θ_t
  (`mean_variance`) by linearising the mean at the predicted state (EKF, a Fahrmeir-style
  GLM filter) or by sigma points (UKF, 2m points ±√m columns of √P, equal weights). Both are
  the Kalman filter for the Gaussian family; for the others the log-likelihood is that of the
  moment-matched Gaussian, an approximation that is good where the counts are large.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.special import logsumexp

from ..spec import ModelSpec
from .families import ObservationParams, log_density, mean_variance, observation_params, pseudo_observations

__all__ = ["METHODS", "SequentialModel", "SequentialInfo", "ParticleState", "GaussianState", "particle_init",
           "particle_step", "ekf_init", "ekf_step", "ukf_init", "ukf_step", "run", "sequential_model"]

METHODS = ("bootstrap", "guided", "ekf", "ukf")
LOG_2PI = 1.8378770664093453
RESAMPLE_BELOW = 0.5     # resample when ESS < this fraction of the particles
GUIDE_ITERATIONS = 8     # Newton (counts) or EM (Student-t) steps of each particle's local mode


class SequentialModel(NamedTuple):
    """The numbers of the model a sequential filter needs (time-invariant part)."""

    transition: jnp.ndarray   # (state, state) T
    state_var: jnp.ndarray    # (state,) q, the diagonal of the state noise's covariance
    init_mean: jnp.ndarray    # (state,) a_1
    init_cov: jnp.ndarray     # (state, state) P_1 (proper)
    obs: ObservationParams


class SequentialInfo(NamedTuple):
    """What one step reports, the same for every method."""

    loglik: jnp.ndarray         # () log p̂(y_t | y_{1:t−1}) (0 where y_t is missing)
    pred_mean: jnp.ndarray      # () E[y_t | y_{1:t−1}]
    pred_var: jnp.ndarray       # () Var[y_t | y_{1:t−1}]
    filtered_mean: jnp.ndarray  # (state,) E[α_t | y_{1:t}]
    filtered_var: jnp.ndarray   # (state,) Var[α_t | y_{1:t}] (the diagonal)
    ess: jnp.ndarray            # () the particles' ESS before resampling (the particle count for EKF/UKF)


class ParticleState(NamedTuple):
    pred_mean: jnp.ndarray    # (particle, state) the mean of α_t's predictive given each particle's past
    pred_cov: jnp.ndarray     # (state, state) its covariance, shared (Q, or P_1 at the start)
    log_weight: jnp.ndarray   # (particle,) normalised log-weights


class GaussianState(NamedTuple):
    mean: jnp.ndarray         # (state,) E[α_t | y_{1:t−1}]
    cov: jnp.ndarray          # (state, state)


# ------------------------------------------------------------------------- particle filters

def particle_init(model: SequentialModel, n_particles: int) -> ParticleState:
    m = model.init_mean.shape[0]
    return ParticleState(jnp.broadcast_to(model.init_mean, (n_particles, m)), model.init_cov,
                         jnp.full(n_particles, -jnp.log(n_particles)))


def _sqrt(cov):
    w, V = jnp.linalg.eigh(cov)
    return V * jnp.sqrt(jnp.clip(w, 0.0))


def _systematic(key, log_weight):
    n = log_weight.shape[0]
    cdf = jnp.cumsum(jnp.exp(log_weight - logsumexp(log_weight)))
    u = (jax.random.uniform(key) + jnp.arange(n)) / n
    return jnp.clip(jnp.searchsorted(cdf, u), 0, n - 1)


@partial(jax.jit, static_argnames=("family", "guided"))
def particle_step(key, family: str, guided: bool, model: SequentialModel, state: ParticleState, y_t, z_t, d_t,
                  offset_t=0.0):
    """One step of the bootstrap (guided=False) or guided particle filter: (new state, `SequentialInfo`)."""
    k_eta, k_eps, k_res = jax.random.split(key, 3)
    n, m = state.pred_mean.shape
    observed = ~jnp.isnan(y_t)
    eta = jax.random.normal(k_eta, (n, m)) @ _sqrt(state.pred_cov).T
    # the predictive moments of y_t from the bootstrap draws α⁺ ~ N(pred_mean, pred_cov)
    mu, var, _ = mean_variance(family, (state.pred_mean + eta) @ z_t + d_t, offset_t, model.obs)
    w_prev = jnp.exp(state.log_weight)
    pred_mean = jnp.sum(w_prev * mu)
    pred_var = jnp.sum(w_prev * (var + mu * mu)) - pred_mean ** 2
    y_b = jnp.broadcast_to(y_t, (n,))
    off_b = jnp.broadcast_to(offset_t, (n,))
    if guided:
        alpha, log_w, loglik = _guided(k_eps, k_res, family, model, state, eta, observed, y_b, z_t, d_t, off_b)
    else:
        alpha = state.pred_mean + eta
        increment = jnp.where(observed, log_density(family, y_b, alpha @ z_t + d_t, off_b, model.obs), 0.0)
        joint = state.log_weight + increment
        loglik = logsumexp(joint)
        log_w = joint - loglik
    w = jnp.exp(log_w)
    mean = w @ alpha
    filtered_var = w @ (alpha - mean) ** 2
    ess = 1.0 / jnp.sum(w * w)
    if guided:   # the next step's first stage resamples
        idx = jnp.arange(n)
    else:
        resample = ess < RESAMPLE_BELOW * n
        idx = jnp.where(resample, _systematic(k_res, log_w), jnp.arange(n))
        log_w = jnp.where(resample, -jnp.log(n), log_w[idx])
    new = ParticleState(alpha[idx] @ model.transition.T, jnp.diag(model.state_var), log_w)
    return new, SequentialInfo(jnp.where(observed, loglik, 0.0), pred_mean, pred_var, mean, filtered_var, ess)


def _log_normal(x, mean, var):
    e = x - mean
    return -0.5 * (LOG_2PI + jnp.log(var) + e * e / var)


def _guided(k_eps, k_res, family, model, state, eta, observed, y_b, z_t, d_t, off_b):
    """The guided step as an auxiliary particle filter: each particle's local Gaussian approximation
    gives its proposal and a look-ahead λ_i ≈ log p(y_t | α_{t−1}⁽ⁱ⁾) (Laplace); ancestors are drawn
    by W_{t−1} e^λ, propagated by the proposal and weighed by the rest. (alpha, log_w, loglik)."""
    n = eta.shape[0]
    Pz = state.pred_cov @ z_t
    s2 = z_t @ Pz
    mu_i = state.pred_mean @ z_t + d_t

    def iterate(theta, _):
        y_tilde, H = pseudo_observations(family, y_b, theta, off_b, model.obs)
        return (mu_i * H + y_tilde * s2) / (H + s2), None

    theta_hat = lax.scan(iterate, mu_i, None, length=GUIDE_ITERATIONS)[0]
    y_tilde, H = pseudo_observations(family, y_b, theta_hat, off_b, model.obs)
    F = s2 + H
    log_pred = _log_normal(y_tilde, mu_i, F)
    look_ahead = jnp.where(observed, log_density(family, y_b, theta_hat, off_b, model.obs) + log_pred
                           - _log_normal(y_tilde, theta_hat, H), 0.0)
    first = state.log_weight + look_ahead
    stage1 = logsumexp(first)
    anc = jnp.where(observed, _systematic(k_res, first - stage1), jnp.arange(n))
    alpha_plus = state.pred_mean[anc] + eta
    eps = jnp.sqrt(H[anc]) * jax.random.normal(k_eps, (n,))
    alpha = alpha_plus + (Pz[None, :] / F[anc][:, None]) * (y_tilde[anc] - alpha_plus @ z_t - d_t - eps)[:, None]
    alpha = jnp.where(observed, alpha, alpha_plus)
    theta = alpha @ z_t + d_t
    increment = (log_density(family, y_b, theta, off_b, model.obs) - _log_normal(y_tilde[anc], theta, H[anc])
                 + log_pred[anc] - look_ahead[anc])
    joint = jnp.where(observed, -jnp.log(n) + increment, state.log_weight)
    stage2 = logsumexp(joint)
    return alpha, joint - stage2, stage1 + stage2


# ------------------------------------------------------------------------------ EKF and UKF

def ekf_init(model: SequentialModel) -> GaussianState:
    return GaussianState(model.init_mean, model.init_cov)


ukf_init = ekf_init


def _update_and_predict(model: SequentialModel, state: GaussianState, y_t, y_hat, S, cross):
    """The Gaussian update with predicted y_hat, its variance S and cross-covariance `cross` (state,),
    then the prediction of α_{t+1}: (new state, (loglik, filtered mean, filtered cov))."""
    observed = ~jnp.isnan(y_t)
    v = jnp.where(observed, y_t - y_hat, 0.0)
    K = jnp.where(observed, cross / S, 0.0)
    mean = state.mean + K * v
    cov = state.cov - S * jnp.outer(K, K)
    cov = 0.5 * (cov + cov.T)
    loglik = jnp.where(observed, -0.5 * (LOG_2PI + jnp.log(S) + v * v / S), 0.0)
    T = model.transition
    return GaussianState(T @ mean, T @ cov @ T.T + jnp.diag(model.state_var)), (loglik, mean, cov)


@partial(jax.jit, static_argnames=("family",))
def ekf_step(family: str, model: SequentialModel, state: GaussianState, y_t, z_t, d_t, offset_t=0.0):
    """One extended Kalman step: E[y | θ] linearised at the predicted signal, Var[y | θ] taken there."""
    theta = state.mean @ z_t + d_t
    mu, var, dmu = mean_variance(family, theta, offset_t, model.obs)
    h = dmu * z_t
    Ph = state.cov @ h
    S = h @ Ph + var
    new, (ll, mean, cov) = _update_and_predict(model, state, y_t, mu, S, Ph)
    return new, SequentialInfo(ll, mu, S, mean, jnp.diag(cov), jnp.ones(()))


@partial(jax.jit, static_argnames=("family",))
def ukf_step(family: str, model: SequentialModel, state: GaussianState, y_t, z_t, d_t, offset_t=0.0):
    """One unscented Kalman step: 2m sigma points a ± √m L_i (L L' = P), weights 1/(2m); the
    predicted y's mean and variance (E Var[y | θ] + Var E[y | θ]) and cross-covariance from them."""
    m = state.mean.shape[0]
    L = _sqrt(state.cov) * jnp.sqrt(m)
    points = jnp.concatenate([state.mean + L.T, state.mean - L.T])      # (2m, state)
    mu, var, _ = mean_variance(family, points @ z_t + d_t, offset_t, model.obs)
    y_hat = jnp.mean(mu)
    S = jnp.mean((mu - y_hat) ** 2) + jnp.mean(var)
    cross = jnp.mean((points - state.mean) * (mu - y_hat)[:, None], axis=0)
    new, (ll, mean, cov) = _update_and_predict(model, state, y_t, y_hat, S, cross)
    return new, SequentialInfo(ll, y_hat, S, mean, jnp.diag(cov), jnp.ones(()))


# ------------------------------------------------------------------------------ the driver

def sequential_model(spec: ModelSpec, pvec, x, init_mean=None, init_cov=None):
    """(SequentialModel, Z (time, state) or (state,), d (time,) or ()) for a spec and parameter vector.

    The initial distribution is the model's own where it has no diffuse state, else (init_mean,
    init_cov), which must then be given (the filters here need a proper one)."""
    from .approx import model_system
    system = model_system(spec, pvec, x)
    diffuse = bool(jnp.any(system.init_diffuse != 0))
    if init_mean is None or init_cov is None:
        if diffuse:
            raise ValueError("the particle, EKF and UKF filters need a proper initial state, and this model's "
                             "is diffuse: pass init_mean and init_cov (say, centred on the first observations "
                             "with a wide variance)")
        init_mean, init_cov = system.init_mean, system.init_cov
    m = system.transition.shape[0]
    init_mean = jnp.broadcast_to(jnp.asarray(init_mean, dtype=jnp.float64), (m,))
    init_cov = jnp.asarray(init_cov, dtype=jnp.float64)
    init_cov = jnp.diag(jnp.broadcast_to(init_cov, (m,))) if init_cov.ndim < 2 else init_cov
    model = SequentialModel(system.transition, system.state_var, init_mean, init_cov,
                            observation_params(spec, pvec))
    return model, system.design, system.obs_intercept


@partial(jax.jit, static_argnames=("family", "method", "n_particles"))
def _run(key, family: str, method: str, n_particles: int, model: SequentialModel, y, Z, d, offset):
    n_time = y.shape[0]
    xs = (jax.random.split(key, n_time), y, Z, d, offset)
    if method in ("bootstrap", "guided"):
        def body(state, x):
            k, y_t, z_t, d_t, o_t = x
            return particle_step(k, family, method == "guided", model, state, y_t, z_t, d_t, o_t)
        state = particle_init(model, n_particles)
    else:
        step = ekf_step if method == "ekf" else ukf_step

        def body(state, x):
            _, y_t, z_t, d_t, o_t = x
            return step(family, model, state, y_t, z_t, d_t, o_t)
        state = ekf_init(model)
    _, info = lax.scan(body, state, xs)
    return jnp.sum(info.loglik), info


def run(spec, params, y, exog=None, exposure=None, *, method: str = "guided", n_particles: int = 1000,
        seed: int = 0, init_mean=None, init_cov=None):
    """Filter a series with a sequential method ("bootstrap", "guided", "ekf" or "ukf") of any
    observation family (the Gaussian one included): (log-likelihood estimate, `SequentialInfo`
    with time leading). Deterministic for a seed."""
    from ..model import as_param_vector, as_series
    from ..spec import as_spec
    from ..domains import check_params
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not known; use one of {METHODS}")
    if method in ("bootstrap", "guided") and (not isinstance(n_particles, int) or n_particles < 2):
        raise ValueError(f"n_particles must be a whole number ≥ 2, got {n_particles!r}")
    spec = as_spec(spec)
    if spec.observation.is_gaussian:
        from ..model import prepare_inputs
        spec, pvec, y, x = prepare_inputs(spec, params, y, exog, check=True)
        offset = jnp.zeros(y.shape[0])
    else:
        from . import prepare
        spec, pvec, y, x, offset = prepare(spec, params, y, exog, exposure)
    check_params(spec, pvec)
    model, Z, d = sequential_model(spec, pvec, x, init_mean, init_cov)
    n_time = y.shape[0]
    Z = jnp.broadcast_to(Z, (n_time, model.init_mean.shape[0]))
    d = jnp.broadcast_to(d, (n_time,))
    return _run(jax.random.PRNGKey(seed), spec.observation.family, method, int(n_particles), model,
                as_series(y), Z, d, offset)
