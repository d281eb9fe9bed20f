"""Maximum likelihood with exact gradients: L-BFGS on the unconstrained parameters.

Several start points (scaled to the data) are scored in one batched likelihood call;
the best few are optimised. Standard errors come from the inverse of the observed
information (the JAX Hessian of the log-likelihood at the optimum, constrained scale).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import partial
from itertools import product

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from .model import DiffuseConditioningWarning, as_param_vector, diffuse_conditioning, loglik, prepare_fit
from .spec import ModelSpec, param_names
from .system import diffuse_states, layout
from .transforms import constrain, scales, unconstrain


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

    @property
    def param_vector(self) -> np.ndarray:
        return np.array([self.params[n] for n in param_names(self.spec)])

    def summary(self) -> str:
        lines = [f"{'parameter':<32}{'estimate':>14}{'std err':>14}"]
        for n, v in self.params.items():
            lines.append(f"{n:<32}{v:>14.6g}{self.se[n]:>14.4g}")
        lines.append(f"loglik {self.loglik:.6f}  aic {self.aic:.4f}  bic {self.bic:.4f}  converged {self.converged}")
        return "\n".join(lines)


@partial(jax.jit, static_argnames=("spec", "filter"))
def _objective(spec, u, y, x, scale_vec, filter="auto"):
    """Negative log-likelihood per observation, as a function of the unconstrained vector."""
    scale = dict(zip(param_names(spec), scale_vec))
    return -loglik(spec, constrain(spec, u, scale), y, x, filter) / y.shape[0]


_value_and_grad = jax.jit(jax.value_and_grad(_objective, argnums=1), static_argnames=("spec", "filter"))
_batched_objective = jax.jit(jax.vmap(_objective, in_axes=(None, 0, None, None, None, None)),
                             static_argnames=("spec", "filter"))


STATIONARY_GRAD = 1e-6   # max |∂(−loglik/T)/∂u| that counts as a stationary point


def start_points(spec: ModelSpec) -> np.ndarray:
    """A small design of unconstrained start points: each variance at the data scale or well below it."""
    names = param_names(spec)
    var_idx = [i for i, n in enumerate(names) if n.startswith("sigma2.")]
    base = np.zeros(len(names))
    if "damping.cycle" in names:
        base[names.index("damping.cycle")] = 2.0  # ρ ≈ 0.88
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


def fit_mle(spec, y, exog=None, *, start=None, maxiter: int = 500, n_starts: int = 2) -> MLEResult:
    """Maximise the exact log-likelihood. `start`: optional dict of starting parameter values.

    Where the exact-diffuse start is ill-conditioned (`diffuse_conditioning`), the likelihood is
    evaluated by the augmented filter, which stays exact there, and the result says so.
    """
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
    # which directions the diffuse start identifies, and how well, hardly depends on the parameters
    caution = diffuse_conditioning(spec, constrain(spec, jnp.asarray(candidates[0]), scale), y, x)
    filter = "augmented" if caution else "auto"
    values = np.asarray(_batched_objective(spec, jnp.asarray(candidates), y, x, scale_vec, filter))
    values = np.where(np.isfinite(values), values, np.inf)
    order = np.argsort(values)[: max(1, n_starts)]

    def fun(u):
        v, g = _value_and_grad(spec, jnp.asarray(u), y, x, scale_vec, filter)
        v, g = float(v), np.asarray(g, dtype=float)
        if not np.isfinite(v) or not np.all(np.isfinite(g)):
            return 1e10, np.zeros_like(g)
        return v, g

    best = None
    for i in order:
        res = scipy.optimize.minimize(fun, candidates[i], jac=True, method="L-BFGS-B",
                                      options={"maxiter": maxiter, "gtol": 1e-9, "ftol": 1e-14})
        if best is None or res.fun < best.fun:
            best = res
    pvec = constrain(spec, jnp.asarray(best.x), scale)
    ll = float(loglik(spec, pvec, y, x, filter))
    # L-BFGS-B reports a failed line search when it cannot improve at machine precision; at a
    # point where the gradient vanishes that is convergence, not failure
    stationary = np.all(np.isfinite(best.jac)) and float(np.max(np.abs(best.jac))) <= STATIONARY_GRAD
    converged = bool(best.success) or bool(stationary)
    message = str(best.message) if best.success or not stationary else (
        f"converged: gradient below {STATIONARY_GRAD:g} (the line search stopped at machine precision: "
        f"{best.message})")
    hess = np.asarray(jax.hessian(lambda p: loglik(spec, p, y, x, filter))(pvec))
    cov = np.full_like(hess, np.nan)
    try:
        cov = np.linalg.inv(-hess)
    except np.linalg.LinAlgError:
        pass
    var = np.diag(cov)
    se = np.where(var > 0, np.sqrt(np.abs(var)), np.nan)
    n_diffuse = len(diffuse_states(layout(spec)))
    df_model = len(names) + n_diffuse   # Durbin & Koopman (2012) §7.4, as statsmodels
    n = int(y.shape[0])
    params = {k: float(v) for k, v in zip(names, np.asarray(pvec))}
    if caution:
        caution += (" The fit used the augmented filter, which is exact here; smoothed components, "
                    "forecasts and streaming use the diffuse recursion.")
        warnings.warn(caution, DiffuseConditioningWarning, stacklevel=2)
    return MLEResult(spec, params, ll, -2 * ll + 2 * df_model, -2 * ll + df_model * np.log(n),
                     dict(zip(names, map(float, se))), cov, converged, message, n,
                     int(best.nit), warnings=(caution,) if caution else ())

