"""The valid range of every model parameter, checked where parameters enter the public API.

A likelihood evaluated outside a parameter's domain is not a likelihood: a negative variance
gives a finite number, a non-stationary AR(p) has no stationary initial covariance (the
Lyapunov solve returns a matrix that is not one), every variance at zero makes the predictive
variance F_t zero. So `loglik`, `loglik_terms`, `filter_series`, `smooth`, `forecast`,
`loglik_many`, the online bank and fleets refuse such values with the parameter's name, its
value and its valid range. The check reads concrete values only: under `jit`, `grad` or `vmap`
(an optimiser's or sampler's own evaluations, which work in unconstrained coordinates mapped
into the domain by `engine.transforms`) the parameters are tracers and nothing is checked.

| parameter           | valid range                                                       |
|---------------------|-------------------------------------------------------------------|
| `sigma2.*`          | finite and ≥ 0, and not every variance 0 (the model is then degenerate) |
| `damping.cycle`     | 0 < ρ < 1 (a damped cycle's stationary start needs ρ < 1)          |
| `frequency.cycle`   | within the cycle's period bounds: 2π/hi ≤ λ ≤ 2π/lo                |
| `ar.L1 … ar.Lp`     | stationary: every root of 1 − φ₁z − … − φ_p z^p outside the unit circle |
| `prob.*`            | 0 ≤ p < 1, and Σ prob.* < 1 (the normal regime keeps a probability) |
| `scale.*`           | finite and ≥ 0 (a variance a regime adds)                          |
| `nu.observation`    | > 0 (the Student-t's degrees of freedom)                           |
| `alpha.observation` | > 0 (the negative binomial's dispersion)                           |
| anything else       | finite                                                            |

A single variance at exactly 0 is valid (a deterministic level, trend or seasonal; an MLE at
its boundary), as in statsmodels. "Every variance 0" is refused for the Gaussian family only:
a count's noise is its own distribution, so a deterministic signal still has a likelihood;
the Student-t needs its scale² `sigma2.irregular` > 0 instead.
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from .spec import ModelSpec, as_spec, param_names

__all__ = ["check_params", "param_range", "FAMILY_PARAMS"]

# the observation families' own parameters (`spec.observation_param_names`): positive
FAMILY_PARAMS = {"nu.observation": "the Student-t's degrees of freedom",
                 "alpha.observation": "the negative binomial's dispersion"}


def param_range(spec: ModelSpec, name: str) -> str:
    """The valid range of parameter `name`, in words (for messages and docs)."""
    if name.startswith("sigma2."):
        return "[0, ∞) (a variance; not every variance 0)"
    if name == "damping.cycle":
        return "(0, 1) (a damped cycle's damping)"
    if name == "frequency.cycle":
        lo, hi = spec.cycle.frequency_bounds
        p_lo, p_hi = spec.cycle.period_bounds
        return f"[{lo:.6g}, {hi:.6g}] (2π / period, for the spec's period bounds [{p_lo:g}, {p_hi:g}])"
    if name.startswith("prob."):
        return "[0, 1) (a regime's probability; the regimes' probabilities sum to less than 1)"
    if name.startswith("scale."):
        return "[0, ∞) (the variance a regime adds)"
    if name in FAMILY_PARAMS:
        return f"(0, ∞) ({FAMILY_PARAMS[name]})"
    if name.startswith("ar.L"):
        return ("the stationary region: every root of 1 − φ₁z − … − φ_p z^p outside the unit circle"
                + (" (−1 < ar.L1 < 1)" if spec.ar_order == 1 else ""))
    return "any finite number"


def _where(row: int | None, rows: str, labels: Sequence | None) -> str:
    if row is None:
        return ""
    label = labels[row] if labels is not None and row < len(labels) else row
    return f" ({rows} {label!r})" if isinstance(label, str) else f" ({rows} {label})"


def check_params(spec, params, *, name: str = "params", rows: str = "row", labels: Sequence | None = None) -> None:
    """Raise ValueError naming the first parameter outside its domain (see the module docstring).

    params: a vector (k,) in `param_names` order, or rows of them (..., k) (draws of a bank, a
    fleet's series: told as `rows` with `labels`). Tracers (inside jit/grad/vmap) pass unchecked.
    """
    if isinstance(params, jax.core.Tracer):
        return
    spec = as_spec(spec)
    names = param_names(spec)
    theta = np.asarray(params, dtype=float)
    if not names or theta.size == 0:
        return
    single = theta.ndim == 1
    table = theta.reshape(-1, len(names))

    def refuse(row: int, message: str):
        raise ValueError(f"{name}{_where(None if single else row, rows, labels)}: {message}")

    for j, pname in enumerate(names):
        col = table[:, j]
        bad = ~np.isfinite(col)
        if pname.startswith(("sigma2.", "scale.")):
            bad |= col < 0
        elif pname.startswith("prob."):
            bad |= (col < 0) | (col >= 1)
        elif pname == "damping.cycle":
            bad |= (col <= 0) | (col >= 1)
        elif pname == "frequency.cycle":
            lo, hi = spec.cycle.frequency_bounds
            bad |= (col < lo * (1 - 1e-12)) | (col > hi * (1 + 1e-12))
        elif pname in FAMILY_PARAMS:
            bad |= col <= 0
        if bad.any():
            i = int(np.argmax(bad))
            refuse(i, f"parameter {pname} = {float(col[i]):g} is out of range {param_range(spec, pname)}"
                   if pname in FAMILY_PARAMS else
                   f"{pname} = {float(col[i])!r} is outside its valid range {param_range(spec, pname)}")
    probs = [j for j, n in enumerate(names) if n.startswith("prob.")]
    if len(probs) > 1:
        total = table[:, probs].sum(axis=1)
        bad = total >= 1
        if bad.any():
            i = int(np.argmax(bad))
            refuse(i, f"the regimes' probabilities ({', '.join(f'{names[j]} = {table[i, j]:.6g}' for j in probs)}) "
                   f"sum to {total[i]:.6g} ≥ 1: the normal regime has none left; lower them")
    if spec.observation.family == "student_t":
        j = names.index("sigma2.irregular")
        zero = table[:, j] == 0
        if zero.any():
            refuse(int(np.argmax(zero)), "sigma2.irregular = 0.0: it is the Student-t's scale², which must be > 0 "
                   "(a t with scale 0 has no density); give it a positive value")
    variances = [j for j, n in enumerate(names) if n.startswith("sigma2.")]
    if variances and spec.observation.is_gaussian:
        zero = np.all(table[:, variances] == 0, axis=1)
        if zero.any():
            refuse(int(np.argmax(zero)), f"every variance ({', '.join(names[j] for j in variances)}) is 0: the "
                   "model is deterministic and its predictive variance F_t is 0, so the likelihood is "
                   "undefined; give at least one variance a positive value")
    ar = [j for j, n in enumerate(names) if n.startswith("ar.L")]
    if ar:
        phi = table[:, ar]
        p = len(ar)
        companion = np.zeros((len(phi), p, p))
        companion[:, 0, :] = phi
        if p > 1:
            companion[:, np.arange(1, p), np.arange(p - 1)] = 1.0
        radius = np.max(np.abs(np.linalg.eigvals(companion)), axis=-1)
        bad = ~(radius < 1.0)
        if bad.any():
            i = int(np.argmax(bad))
            shown = ", ".join(f"{names[j]} = {table[i, j]:.6g}" for j in ar)
            refuse(i, f"the AR coefficients ({shown}) are not stationary (largest root of the companion "
                   f"matrix {radius[i]:.6g} ≥ 1), so the AR part has no stationary initial covariance; "
                   f"valid range: {param_range(spec, names[ar[0]])}")
