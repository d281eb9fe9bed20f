"""Maximum likelihood with exact gradients: L-BFGS on the unconstrained parameters.

One compiled program per model and series shape (`_evaluate`) gives the objective, its gradient,
the parameters and the transform's Jacobian; it scores the start points, drives the optimiser
from each of the best few and gives the standard errors. Those come from the inverse of the
observed information −∂²ℓ/∂θ² on the constrained scale, by central differences of the exact
gradient (2k more calls of the same program instead of compiling a Hessian program, which costs
far more than the fit).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import partial
from itertools import product
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from .model import (DiffuseConditioningWarning, as_param_vector, augmented_needed, diffuse_conditioning, loglik,
                    prepare_fit, terms_with)
from .spec import ModelSpec, param_names
from .system import diffuse_states, layout
from .transforms import constrain, scales, unconstrain

__all__ = [
    "MLEResult", "FORWARD_MODE_MAX_PARAMS", "start_points", "start_params", "fit_mle", "find_jump",
]


@dataclass
class MLEResult:
    spec: ModelSpec
    params: dict[str, float]
    loglik: float
    aic: float
    bic: float
    se: dict[str, float]
    cov: np.ndarray              # (param, param) inverse observed information
    converged: bool
    message: str
    n_obs: int
    n_iterations: int = 0
    history: list = field(default_factory=list, repr=False)
    warnings: tuple[str, ...] = ()   # what makes the fit less exact than it looks (also issued as warnings)
    se_notes: dict[str, str] = field(default_factory=dict)   # why a standard error is NaN, by parameter

    @property
    def param_vector(self) -> np.ndarray:
        return np.array([self.params[n] for n in param_names(self.spec)])

    def summary(self) -> str:
        lines = [f"{'parameter':<32}{'estimate':>14}{'std err':>14}"]
        for n, v in self.params.items():
            note = f"  ({self.se_notes[n]})" if n in self.se_notes else ""
            lines.append(f"{n:<32}{v:>14.6g}{self.se[n]:>14.4g}{note}")
        lines.append(f"loglik {self.loglik:.6f}  aic {self.aic:.4f}  bic {self.bic:.4f}  converged {self.converged}")
        if not self.converged:
            lines.append(self.message)
        return "\n".join(lines)


# Up to this many parameters the gradient is k forward tangents: the filter's own tangent recursion
# compiles in about half the time of the reverse pass (the first fit of a model is mostly compiling),
# and for the short series quick fits see each call costs about the same.
FORWARD_MODE_MAX_PARAMS = 10


@partial(jax.jit, static_argnames=("spec", "augmented"))
def _evaluate(spec: ModelSpec, u, y, x, scale_vec, augmented: bool = True):
    """At the unconstrained vector u (param,): the objective −ℓ(θ(u))/T, its gradient in u, θ(u)
    and the transform's Jacobian ∂θ/∂u (param, param). The one compiled program of a fit.
    augmented: `model.augmented_needed` of y (decided where y is concrete).

    Up to FORWARD_MODE_MAX_PARAMS parameters take one forward tangent per direction, more take
    the reverse pass.
    """
    scale = dict(zip(param_names(spec), scale_vec))
    to_params = lambda u: constrain(spec, u, scale)

    def objective_and_params(u):
        params = to_params(u)
        return -jnp.sum(terms_with(spec, as_param_vector(spec, params), y, x, "auto", augmented)) / y.shape[0], params

    k = u.shape[0]
    if k <= FORWARD_MODE_MAX_PARAMS:
        along = lambda e: jax.jvp(objective_and_params, (u,), (e,))
        (value, params), (grad, jac_t) = jax.vmap(along)(jnp.eye(k))
        return value[0], grad, params[0], jac_t.T
    (value, params), grad = jax.value_and_grad(objective_and_params, has_aux=True)(u)
    return value, grad, params, jax.jacfwd(to_params)(u)


STATIONARY_GRAD = 1e-6   # max |∂(−loglik/T)/∂u| that counts as a stationary point
BOUNDARY = 1e-5          # a variance below this × its data scale (`scales`) is estimated at 0
FD_STEP = 1e-5           # relative step of the central differences for the observed information
JUMP_NATS = 0.1          # a change of ℓ this much beyond what its slope predicts, over a small step, is a jump
JUMP_STEPS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)   # unconstrained steps searched for a jump, nearest first


def start_points(spec: ModelSpec) -> np.ndarray:
    """A small design of unconstrained start points: each variance at the data scale or well below it."""
    names = param_names(spec)
    var_idx = [i for i, n in enumerate(names) if n.startswith("sigma2.")]
    base = np.zeros(len(names))
    if "damping.cycle" in names:
        base[names.index("damping.cycle")] = 2.0  # ρ ≈ 0.88
    for i, n in enumerate(names):   # switching regimes (engine.regimes): rare, and well above the noise
        if n.startswith("prob."):
            base[i] = np.log(0.01 / 0.99)
        elif n.startswith("scale."):
            base[i] = np.log(25.0)
    points = [base]
    if len(var_idx) <= 4:
        for levels in product((0.0, -4.0), repeat=len(var_idx)):
            p = base.copy()
            p[var_idx] = levels
            points.append(p)
    else:
        for i in var_idx:
            p = base.copy()
            p[var_idx] = -4.0
            p[i] = 0.0
            points.append(p)
    return np.unique(np.array(points), axis=0)


def start_params(spec, y, exog=None) -> dict[str, float]:
    """The first of `start_points` as parameters for this data: a valid parameter set of the spec
    (e.g. to compile a program for the model's shape while the fit runs)."""
    spec, y, x = prepare_fit(spec, y, exog)
    scale = scales(spec, np.asarray(y), None if x is None else np.asarray(x))
    return dict(zip(param_names(spec), map(float, np.asarray(constrain(spec, jnp.asarray(start_points(spec)[0]),
                                                                         scale)))))


def _optimiser_verdict(res: scipy.optimize.OptimizeResult, maxiter: int) -> tuple[bool, str]:
    """(converged, message) for an L-BFGS-B result; the message always says what happened.

    L-BFGS-B reports a failed line search when it cannot improve at machine precision; at a
    point where the gradient vanishes that is convergence, not failure.
    """
    reported = str(res.message).strip()
    largest = float(np.max(np.abs(res.jac))) if np.all(np.isfinite(res.jac)) and res.jac.size else np.inf
    if res.success:
        return True, reported
    if largest <= STATIONARY_GRAD:
        return True, (f"converged: gradient below {STATIONARY_GRAD:g} (the line search stopped at machine "
                      f"precision: {reported})")
    where = f"the largest gradient component is {largest:.2g} (convergence needs {STATIONARY_GRAD:g})"
    if res.status == 1:
        return False, f"stopped at the iteration limit ({maxiter} iterations): {where}"
    reason = reported.removeprefix("ABNORMAL:").strip().rstrip(".")
    return False, (f"the line search found no better point after {res.nit} iterations (L-BFGS-B: "
                   f"{reason or 'ABNORMAL, no reason given'}); {where}")


def find_jump(f: Callable[[np.ndarray], float], u: np.ndarray, grad: np.ndarray, n_time: int,
              steps=JUMP_STEPS) -> tuple[int, float, float] | None:
    """(parameter index, step, change of ℓ) of a discontinuity of the objective f = −ℓ/T next to
    u along a coordinate (the steepest coordinates first, the nearest step first), or None where
    f is smooth within the largest step.

    A step du along coordinate i changes ℓ by −T (f(u + du eᵢ) − f(u)); a smooth ℓ changes by
    about −T gᵢ du. A difference of more than JUMP_NATS is a jump (a line search stalls on one).
    """
    f0 = f(u)
    for i in np.argsort(-np.abs(grad), kind="stable"):   # a line search stalls along its steepest coordinates
        for h in steps:
            for du in (h, -h):
                at = np.array(u, dtype=float)
                at[i] += du
                change = -(f(at) - f0) * n_time
                if np.isfinite(change) and abs(change + grad[i] * du * n_time) > JUMP_NATS:
                    return int(i), du, change
    return None


def _jump_message(spec: ModelSpec, names: list[str], u: np.ndarray, jump: tuple[int, float, float],
                  to_params: Callable[[np.ndarray], np.ndarray]) -> str:
    """Why the optimiser stopped at a jump of the log-likelihood, and what to do about it."""
    i, du, change = jump
    at = np.array(u, dtype=float)
    at[i] += du
    here, there = float(to_params(u)[i]), float(to_params(at)[i])
    text = (f"the log-likelihood jumps by {change:+.3g} between {names[i]} = {here:.6g} and {there:.6g}: its "
            f"largest value here sits on that jump, not at a stationary point. The exact diffuse start ends when "
            f"the diffuse variance P∞ falls below its tolerance (statsmodels' recursion too)")
    if spec.cycle is not None and spec.cycle.damped:
        text += (", and the damped cycle's diffuse states decay by the damping at every step, so the step where "
                 "it ends moves with the parameters. A damping near 0 makes the cycle white noise, like the "
                 "irregular: these data hardly identify the cycle; a simpler model (no cycle, or no irregular) "
                 "fits without the jump")
    return text + "."


def _unbounded_message(spec: ModelSpec, params: dict[str, float]) -> str | None:
    """Why an optimum with a diffuse damped cycle whose damping went to 0 is not a maximum, else None.

    Under the exact diffuse start a damped cycle's diffuse states are multiplied by ρ at every step;
    as ρ → 0 the data stop seeing them and the diffuse log-likelihood grows like −log ρ without
    bound (de Jong's −½ log|S| term), so an optimiser runs to ρ = 0 and reports a large ℓ that no
    model deserves. statsmodels' recursion ends the diffuse phase at a tolerance instead and gets a
    finite, but arbitrary, value there.
    """
    if spec.cycle is None or not spec.cycle.damped or spec.initialization.kind != "diffuse":
        return None
    rho = params.get("damping.cycle")
    if rho is None or rho > 1e-3:
        return None
    return (f"the optimiser ran to damping.cycle = {rho:.3g}: with a diffuse start the log-likelihood of a "
            f"damped cycle grows without bound as its damping goes to 0 (about −log ρ), so this is not a "
            f"maximum and the log-likelihood reported is not comparable. These data hardly identify the cycle: "
            f"fit a simpler model (no cycle, or no irregular), or start the model from a proper initial state "
            f"(the spec's initialization)")


def _observed_information(evaluate: Callable, spec: ModelSpec, params: np.ndarray, scale: dict[str, float],
                          n_time: int) -> np.ndarray:
    """−∂²ℓ/∂θ² (param, param) at θ = params, by differences of the exact gradient ∂ℓ/∂θ.

    The gradient in θ is J⁻ᵀ ∇_u from one call of the compiled program at u(θ). Each column uses
    central differences, or a one-sided one where a step would leave the parameter's range (a
    variance at 0); the result is symmetrised.
    """
    def grad_at(theta):
        value, grad_u, at, jac = evaluate(unconstrain(spec, theta, scale))
        at, jac = np.asarray(at), np.asarray(jac)
        grad = -n_time * np.linalg.solve(jac.T, np.asarray(grad_u))
        return grad, at

    names = param_names(spec)
    k = len(names)
    info = np.zeros((k, k))
    for i, name in enumerate(names):
        h = FD_STEP * max(abs(params[i]), BOUNDARY * scale.get(name, 1.0) if name.startswith("sigma2.") else 1e-3)
        sides = []
        for sign in (1.0, -1.0):
            theta = params.copy()
            theta[i] += sign * h
            grad, at = grad_at(theta)
            if abs(at[i] - theta[i]) <= 1e-6 * h and np.all(np.isfinite(grad)):
                sides.append((sign, grad))
        if len(sides) == 2:
            info[:, i] = -(sides[0][1] - sides[1][1]) / (2 * h)
        elif len(sides) == 1:
            sign, grad = sides[0]
            info[:, i] = -sign * (grad - grad_at(params)[0]) / h
        else:
            info[:, i] = np.nan
    return 0.5 * (info + info.T)


def _boundary(spec: ModelSpec, name: str, value: float, scale: dict[str, float]) -> str | None:
    """Why a parameter's estimate sits at the edge of its range (where the information says nothing)."""
    if name.startswith("sigma2.") and value <= BOUNDARY * scale[name]:
        return f"at a boundary: variance estimated at 0 ({value:.2g})"
    if name == "damping.cycle" and not 1e-3 < value < 1 - BOUNDARY:
        return f"at a boundary: damping estimated at {value:.6g}"
    if name == "frequency.cycle":
        lo, hi = spec.cycle.frequency_bounds
        if not lo + BOUNDARY * (hi - lo) < value < hi - BOUNDARY * (hi - lo):
            return f"at a boundary: frequency at the edge of the cycle's period bounds ({value:.6g})"
    if name.startswith("ar.L") and spec.ar_order == 1 and abs(value) >= 1 - BOUNDARY:
        return f"at a boundary: the AR coefficient is at ±1 ({value:.6g})"
    return None


def _standard_errors(spec: ModelSpec, info: np.ndarray, params: np.ndarray, scale: dict[str, float],
                     converged: bool) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """(covariance, standard errors, a note for each NaN standard error) from the observed information."""
    names = param_names(spec)
    cov = np.full_like(info, np.nan)
    if np.all(np.isfinite(info)):
        try:
            cov = np.linalg.inv(info)
        except np.linalg.LinAlgError:
            pass
    var = np.diag(cov)
    se = np.where(var > 0, np.sqrt(np.abs(var)), np.nan)
    notes = {}
    singular = not np.all(np.isfinite(cov))
    for i, name in enumerate(names):
        if np.isfinite(se[i]):
            continue
        note = _boundary(spec, name, float(params[i]), scale)
        if note is None and singular:
            note = "not identified: the observed information is singular"
        elif note is None:
            note = "not defined: the log-likelihood is flat or curves upward here (information not positive definite)"
        if not converged:
            note += "; the optimiser did not converge"
        notes[name] = note
    return cov, se, notes


def fit_mle(spec, y, exog=None, *, start=None, maxiter: int = 500, n_starts: int = 2,
            progress: Callable[[str], None] | None = None) -> MLEResult:
    """Maximise the exact log-likelihood. `start`: optional dict of starting parameter values.

    Where the exact-diffuse start is ill-conditioned (`diffuse_conditioning`) the result says so,
    as information: the filters' diffuse phase carries the augmented filter, which stays exact there.
    progress: called with a short text as the fit enters each phase (compiling, optimising start
    i of n, standard errors), from the thread that runs the fit.
    """
    say = progress or (lambda text: None)
    spec, y, x = prepare_fit(spec, y, exog)
    names = param_names(spec)
    if not names:
        ll = float(loglik(spec, jnp.zeros(0), y, x))
        return MLEResult(spec, {}, ll, -2 * ll, -2 * ll, {}, np.zeros((0, 0)), True, "no parameters", len(y))
    y_np = np.asarray(y)
    scale = scales(spec, y_np, None if x is None else np.asarray(x))
    scale_vec = jnp.array([scale[n] for n in names])
    if start is not None:
        candidates = unconstrain(spec, np.asarray(as_param_vector(spec, start)), scale)[None]
    else:
        candidates = start_points(spec)
    augmented = augmented_needed(spec, y)
    evaluate = lambda u: _evaluate(spec, jnp.asarray(u, dtype=jnp.float64), y, x, scale_vec, augmented)  # noqa: E731
    # which directions the diffuse start identifies, and how well, hardly depends on the parameters
    # (information only: NumPy, no program; every filter's diffuse phase is exact)
    caution = diffuse_conditioning(spec, constrain(spec, jnp.asarray(candidates[0]), scale), y, x)
    say("compiling the likelihood and its gradient (once per model and series length)")
    values = [float(evaluate(candidates[0])[0])]
    say(f"scoring {len(candidates)} start points")
    values += [float(evaluate(u)[0]) for u in candidates[len(values):]]
    values = np.where(np.isfinite(values), values, np.inf)
    order = np.argsort(values)[: max(1, n_starts)]

    def fun(u):
        v, g = evaluate(u)[:2]
        v, g = float(v), np.asarray(g, dtype=float)
        if not np.isfinite(v) or not np.all(np.isfinite(g)):
            return 1e10, np.zeros_like(g)
        return v, g

    best = None
    options = {"maxiter": maxiter, "gtol": 1e-9, "ftol": 1e-14}
    for n, i in enumerate(order, start=1):
        say(f"optimising from start {n} of {len(order)}")
        res = scipy.optimize.minimize(fun, candidates[i], jac=True, method="L-BFGS-B", options=options)
        if best is None or res.fun < best.fun:
            best = res
    converged, message = _optimiser_verdict(best, maxiter)
    jump = None
    if not converged and best.status == 2:   # a line search stalls at a jump, or on curvature it misjudged
        say("optimising: looking for a jump of the likelihood where the line search stalled")
        jump = find_jump(lambda u: fun(u)[0], best.x, best.jac, int(y.shape[0]))
        if jump is not None:
            message = _jump_message(spec, names, best.x, jump,
                                    lambda u: np.asarray(evaluate(u)[2], dtype=float))
    for _ in range(2):   # a stalled line search often resumes from a fresh curvature estimate
        if converged or best.status != 2 or jump is not None:
            break
        say("optimising: restarting the stalled line search")
        res = scipy.optimize.minimize(fun, best.x, jac=True, method="L-BFGS-B", options=options)
        if not res.fun < best.fun:
            break
        res.nit += best.nit
        best = res
        converged, message = _optimiser_verdict(best, maxiter)
    value, _, pvec, _ = evaluate(best.x)
    n = int(y.shape[0])
    ll = -float(value) * n
    params_np = np.asarray(pvec, dtype=float)
    say("standard errors")
    info = _observed_information(evaluate, spec, params_np, scale, n)
    cov, se, notes = _standard_errors(spec, info, params_np, scale, converged)
    n_diffuse = len(diffuse_states(layout(spec)))
    df_model = len(names) + n_diffuse   # Durbin & Koopman (2012) §7.4, as statsmodels
    params = {k: float(v) for k, v in zip(names, params_np)}
    unbounded = _unbounded_message(spec, params)
    if unbounded is not None:
        converged, message = False, unbounded
    if caution:
        caution += (" The engine's filters carry the augmented filter through the diffuse phase, so this fit, "
                    "and the smoothing, forecasts and streams after it, use the exact likelihood.")
        warnings.warn(caution, DiffuseConditioningWarning, stacklevel=2)
    return MLEResult(spec, params, ll, -2 * ll + 2 * df_model, -2 * ll + df_model * np.log(n),
                     dict(zip(names, map(float, se))), cov, converged, message, n,
                     int(best.nit), warnings=(caution,) if caution else (), se_notes=notes)
