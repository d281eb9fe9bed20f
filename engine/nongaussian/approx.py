"""The linear Gaussian model at the mode of the signal (Durbin & Koopman 2012, ch. 10-11).

Given pseudo-observations (ỹ_t, H̃_t) (`families.pseudo_observations`), the approximating model
is the structural model with observations ỹ_t = θ_t + ε̃_t, ε̃_t ~ N(0, H̃_t). Its H̃_t varies
in time, which the Kalman filter of `engine.kalman` takes as a time-varying design: dividing
row t by √H̃_t gives ỹ_t/√H̃_t = (Z_t/√H̃_t) α_t + d_t/√H̃_t + N(0, 1), the same model, whose
density differs by the Jacobian Π_t H̃_t^{-1/2}. So the exact-diffuse filter and smoother are
reused unchanged.

The mode θ̂ is the fixed point of θ ↦ E_g[θ | ỹ(θ), H̃(θ)] (the smoothed signal); it is found by
iterating that map (`lax.while_loop`) and differentiated implicitly (`lax.custom_root`): for the
counts the map is Newton's, so its Jacobian vanishes at θ̂ and the tangent solve is one step;
for the Student-t's EM map it is a short GMRES solve. The approximate log-likelihood is

    log L̂(ψ) = log g(ỹ; ψ) + Σ_t [log p(y_t | θ̂_t) − log N(ỹ_t; θ̂_t, H̃_t)],

the Laplace approximation for the counts (g(θ | ỹ) is then Gaussian with the Hessian of
log p(θ | y) at θ̂ as its precision), DK's mode approximation for the Student-t.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .. import kalman
from ..model import batch_systems
from ..spec import ModelSpec
from ..system import Layout, System, layout, transition_apply
from .families import log_density, observation_params, pseudo_observations, start_signal

__all__ = ["MAX_ITER", "TOL", "ApproxModel", "scaled_system", "gaussian_filter", "smoothed_signal", "find_mode",
           "approx_model", "model_system", "approx_from_system", "log_weights"]

MAX_ITER = 100     # iterations of the mode's fixed point
TOL = 1e-9         # converged when max_t |Δθ_t| ≤ TOL · (1 + max_t |θ_t|)
# steps of the implicit tangent's solve (see `find_mode`): Newton's map needs one, EM's error
# falls like ρ^k with ρ its rate of convergence (measured: ρ ≈ 0.3-0.6 on t local levels)
TANGENT_STEPS = {"poisson": 1, "negative_binomial": 1, "student_t": 40}


class ApproxModel(NamedTuple):
    """The Gaussian model at the mode, for one series (time leading)."""

    mode: jnp.ndarray           # (time,) θ̂_t, the mode of p(θ | y)
    pseudo_y: jnp.ndarray       # (time,) ỹ_t (NaN where y is missing)
    pseudo_var: jnp.ndarray     # (time,) H̃_t
    loglik: jnp.ndarray         # () the approximate log-likelihood log L̂ (see the module's docstring)
    gaussian_loglik: jnp.ndarray  # () log g(ỹ): the approximating model's exact diffuse log-likelihood
    iterations: jnp.ndarray     # () iterations of the fixed point
    converged: jnp.ndarray      # () bool: reached TOL within MAX_ITER


def scaled_system(lay: Layout, system: System, pseudo_var, n_time: int) -> tuple[Layout, System]:
    """The approximating model as a unit-variance model with a time-varying design (one series):
    Z_t/√H̃_t, d_t/√H̃_t, H = 1 (see the module's docstring). Returns its layout and system."""
    s = 1.0 / jnp.sqrt(pseudo_var)
    Z = jnp.broadcast_to(system.design, (n_time, lay.n_states)) * s[:, None]
    d = jnp.broadcast_to(system.obs_intercept, (n_time,)) * s
    return (lay._replace(time_varying_design=True, observed_states=()),
            system._replace(design=Z, obs_intercept=d, obs_var=jnp.ones(())))


def gaussian_filter(lay: Layout, system: System, pseudo_y, pseudo_var):
    """Filter the approximating model: (scaled layout, scaled system, kept `StepInfo` (time leading,
    batch dropped), log g(ỹ) with the Jacobian of the scaling)."""
    n_time = pseudo_y.shape[0]
    lay_s, sys_s = scaled_system(lay, system, pseudo_var, n_time)
    batch = kalman.batch_last(jax.tree_util.tree_map(lambda a: a[None], sys_s))

    # the exact-diffuse step throughout (exact in every phase; with a time-varying design no
    # steady phase comes): one branch to compile and differentiate instead of `kalman.step`'s three
    def body(state, xs):
        y_t, d_t, z_t = xs
        return kalman.full_step(lay_s, batch, state, y_t, d_t, z_t, kalman.Phase.DIFFUSE, False, True)

    xs = ((pseudo_y / jnp.sqrt(pseudo_var))[:, None], batch.obs_intercept, batch.design)
    _, info = lax.scan(body, kalman.init(lay_s, batch), xs)
    info = jax.tree_util.tree_map(lambda a: a[..., 0], info)
    observed = ~jnp.isnan(pseudo_y)
    ll = jnp.sum(info.loglik) - 0.5 * jnp.sum(jnp.where(observed, jnp.log(pseudo_var), 0.0))
    return lay_s, sys_s, info, ll


def mean_forward(lay_s: Layout, sys_s: System, info, Y) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The filter's means and innovations for other data Y (time, batch) at the gains of `info`
    (the same system and missing-data pattern): a_{t+1} = T (a_t + K_t v_t), v_t = y_t − z_tᵀ a_t − d_t.
    Linear in Y, O(m) per step and series. Returns a (time, state, batch), v (time, batch)."""
    T = sys_s.transition

    def body(a, xs):
        y_t, z_t, d_t, K, kind = xs
        v = jnp.where(kind > kalman.StepKind.NONE, jnp.where(jnp.isnan(y_t), 0.0, y_t) - z_t @ a - d_t, 0.0)
        return transition_apply(lay_s, T, a + K[:, None] * v[None]), (a, v)

    a0 = jnp.broadcast_to(sys_s.init_mean[:, None], (lay_s.n_states, Y.shape[1]))
    _, (a, v) = lax.scan(body, a0, (Y, sys_s.design, sys_s.obs_intercept, info.gain, info.kind))
    return a, v


def smoothed_signal(lay_s: Layout, sys_s: System, info, Y, signal_design, signal_intercept) -> jnp.ndarray:
    """E_g[θ_t | Y] (time, batch) for data Y (time, batch) scaled as the system (see `scaled_system`),
    sharing the gains of `info`: the means by `mean_forward`, then the exact-diffuse smoother
    (`kalman.smooth_one`) vectorised over the batch (its covariance part, the same for every
    member, is computed once or not at all). signal_design (time, state), signal_intercept (time,):
    the unscaled θ_t = Z_t α_t + d_t."""
    a, v = mean_forward(lay_s, sys_s, info, Y)

    def one(a_i, v_i):
        return kalman.smooth_one(lay_s, sys_s, info._replace(pred_mean=a_i, innovation=v_i), sys_s.design).mean

    alpha = jax.vmap(one, in_axes=(-1, -1), out_axes=-1)(a, v)     # (time, state, batch)
    return jnp.einsum("ts,tsb->tb", signal_design, alpha) + signal_intercept[:, None]


def _signal_rows(lay: Layout, system: System, n_time: int):
    return (jnp.broadcast_to(system.design, (n_time, lay.n_states)),
            jnp.broadcast_to(system.obs_intercept, (n_time,)))


def find_mode(spec: ModelSpec, lay: Layout, system: System, pvec, y, offset, max_iter: int = MAX_ITER,
              tol: float = TOL):
    """(θ̂ (time,), iterations, converged): the fixed point of the smoothing map, differentiable in
    the parameters by implicit differentiation (see the module's docstring)."""
    family = spec.observation.family
    obs_p = observation_params(spec, pvec)
    n_time = y.shape[0]
    Zs, ds = _signal_rows(lay, system, n_time)

    def smoothing_map(theta):
        y_t, H = pseudo_observations(family, y, theta, offset, obs_p)
        lay_s, sys_s, info, _ = gaussian_filter(lay, system, y_t, H)
        return smoothed_signal(lay_s, sys_s, info, (y_t / jnp.sqrt(H))[:, None], Zs, ds)[:, 0]

    def solve(f, theta0):
        def cond(c):
            _, it, change = c
            return (it < max_iter) & (change > tol)

        def body(c):
            theta, it, _ = c
            step = f(theta)
            new = theta + step
            return new, it + 1, jnp.max(jnp.abs(step)) / (1.0 + jnp.max(jnp.abs(new)))

        theta, it, change = lax.while_loop(cond, body, (theta0, jnp.zeros((), int), jnp.array(jnp.inf)))
        # float aux: custom_root's tangent rule mishandles integer and boolean aux outputs
        return theta, (it.astype(float), (change <= tol).astype(float))

    def tangent_solve(g, b):
        # g(x) = (J − I) x with J the map's Jacobian at θ̂: x ← J x − b converges like J^k, in one
        # step for Newton's map (J = 0 at the root), linearly for EM's (spectral radius below 1).
        # A scan of fixed length, linear in b, so that reverse mode can transpose it.
        def body(x, _):
            return x + g(x) - b, None

        return lax.scan(body, -b, None, length=TANGENT_STEPS[family])[0]

    theta0 = lax.stop_gradient(start_signal(family, y, offset))
    theta, (iterations, converged) = lax.custom_root(lambda th: smoothing_map(th) - th, theta0, solve,
                                                     tangent_solve, has_aux=True)
    return theta, lax.stop_gradient(iterations).astype(int), lax.stop_gradient(converged) > 0


@partial(jax.jit, static_argnames=("spec", "max_iter"))
def approx_model(spec: ModelSpec, pvec, y, x, offset, max_iter: int = MAX_ITER, tol: float = TOL) -> ApproxModel:
    """The Gaussian model at the mode and the approximate log-likelihood, for checked inputs
    (`engine.nongaussian.prepare`): parameter vector (k,), y (time,), exog (time, k) or None,
    offset log E_t (time,)."""
    return approx_from_system(spec, model_system(spec, pvec, x), pvec, y, offset, max_iter, tol)


def model_system(spec: ModelSpec, pvec, x) -> System:
    """The structural model's system for one parameter vector (its obs_var is not used here)."""
    return jax.tree_util.tree_map(lambda a: a[0], batch_systems(spec, pvec[None], x))


def approx_from_system(spec: ModelSpec, system: System, pvec, y, offset, max_iter: int = MAX_ITER,
                       tol: float = TOL) -> ApproxModel:
    """`approx_model` for a given system of the spec's layout (its initial state, say, set otherwise
    than exact diffuse); traceable."""
    lay = layout(spec)
    theta, iterations, converged = find_mode(spec, lay, system, pvec, y, offset, max_iter, tol)
    family = spec.observation.family
    obs_p = observation_params(spec, pvec)
    y_t, H = pseudo_observations(family, y, theta, offset, obs_p)
    _, _, _, ll_g = gaussian_filter(lay, system, y_t, H)
    log_w = log_weights(family, y, y_t, H, theta[None], offset, obs_p)[0]
    return ApproxModel(theta, y_t, H, ll_g + log_w, ll_g, iterations, converged)


def log_weights(family: str, y, pseudo_y, pseudo_var, thetas, offset, obs_p) -> jnp.ndarray:
    """log p(y | θ) − log g(ỹ | θ) for signals thetas (draw, time): (draw,)."""
    observed = ~jnp.isnan(y)
    e = jnp.where(observed, pseudo_y, 0.0) - thetas
    log_g = jnp.where(observed, -0.5 * (kalman.LOG_2PI + jnp.log(pseudo_var) + e * e / pseudo_var), 0.0)
    return jnp.sum(log_density(family, y, thetas, offset, obs_p) - log_g, axis=-1)
