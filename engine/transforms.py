"""Maps between unconstrained vectors (for optimisers and samplers) and model parameters.

variances  σ² = s · exp(u)                       (s: a data-based scale, for conditioning)
ν, α       s · exp(u)                            (Student-t dof, s = 10; NB2 dispersion, s = 1)
frequency  λ = lo + (hi − lo) · sigmoid(u)       (inside the cycle's period bounds)
damping    ρ = sigmoid(u)                        ∈ (0, 1)
AR         φ from partial autocorrelations tanh(u) by Durbin–Levinson (stationary by construction)
betas      β = s_β · u
regimes    prob = sigmoid(u) ∈ (0, 1),  scale = s · exp(u) (a variance, as σ²)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .spec import ModelSpec, param_names

__all__ = [
    "POSITIVE_SCALES", "pacf_to_ar", "ar_to_pacf", "scales", "constrain", "unconstrain",
]


POSITIVE_SCALES = {"nu.observation": 10.0, "alpha.observation": 1.0}   # positive, not variances: fixed scales


def pacf_to_ar(pacf: jnp.ndarray) -> jnp.ndarray:
    """Durbin–Levinson: partial autocorrelations in (−1, 1) → coefficients of a stationary AR(p)."""
    p = pacf.shape[-1]
    phi = jnp.zeros(0)
    for k in range(p):
        r = pacf[k]
        phi = jnp.concatenate([phi - r * phi[::-1], r[None]])
    return phi


def ar_to_pacf(phi):
    """Inverse of `pacf_to_ar` (the step-down recursion): AR coefficients (p,) → partial
    autocorrelations (p,). NumPy in, NumPy out (start values, no compiled program); a JAX array
    in, JAX out (traceable: the priors read AR coefficients as PACFs)."""
    xp = np if isinstance(phi, (np.ndarray, list, tuple)) else jnp
    phi = xp.asarray(phi, dtype=float)
    p = phi.shape[-1]
    pacf = [None] * p
    for k in range(p - 1, -1, -1):
        r = phi[k]
        pacf[k] = r
        if k:
            phi = (phi[:k] + r * phi[:k][::-1]) / (1 - r * r)
    return xp.stack(pacf) if p else xp.zeros(0)


def scales(spec: ModelSpec, y: np.ndarray, exog: np.ndarray | None = None) -> dict[str, float]:
    """Typical magnitudes of each parameter for this data (used for conditioning and default priors).

    For counts the states live on the log scale: the variances are scaled by log(y + ½)."""
    y = np.asarray(y, dtype=float)
    if spec.observation.is_count:
        y = np.log(np.where(np.isfinite(y), np.maximum(y, 0.0), np.nan) + 0.5)
    obs = y[np.isfinite(y)]
    dy = np.diff(y)
    dy = dy[np.isfinite(dy)]
    var_y = float(np.var(obs)) if obs.size > 1 else 1.0
    var_dy = float(np.var(dy)) if dy.size > 1 else var_y
    base = max(var_dy, var_y * 1e-6, 1e-300) if var_y > 0 else 1.0
    out = {}
    for i, name in enumerate(param_names(spec)):
        if name.startswith(("sigma2.", "scale.")):
            out[name] = base
        elif name in POSITIVE_SCALES:
            out[name] = POSITIVE_SCALES[name]
        elif name.startswith("beta."):
            col = spec.exog_columns.index(name[len("beta."):])
            sx = float(np.nanstd(exog[:, col])) if exog is not None else 1.0
            out[name] = np.sqrt(var_y) / sx if sx > 0 else 1.0
        else:
            out[name] = 1.0
    return out


def constrain(spec: ModelSpec, u: jnp.ndarray, scale: dict[str, float]) -> jnp.ndarray:
    """Unconstrained vector → parameter vector in `param_names` order."""
    names = param_names(spec)
    out = []
    i = 0
    while i < len(names):
        name = names[i]
        if name.startswith(("sigma2.", "scale.")) or name in POSITIVE_SCALES:
            out.append(scale[name] * jnp.exp(u[i]))
        elif name == "frequency.cycle":
            lo, hi = spec.cycle.frequency_bounds
            out.append(lo + (hi - lo) * jax.nn.sigmoid(u[i]))
        elif name == "damping.cycle" or name.startswith("prob."):
            out.append(jax.nn.sigmoid(u[i]))
        elif name == "ar.L1":
            p = spec.ar_order
            out.extend(list(pacf_to_ar(jnp.tanh(u[i:i + p]))))
            i += p
            continue
        else:  # beta
            out.append(scale[name] * u[i])
        i += 1
    return jnp.stack(out)


def unconstrain(spec: ModelSpec, params: np.ndarray, scale: dict[str, float]) -> np.ndarray:
    names = param_names(spec)
    params = np.asarray(params, dtype=float)
    out = np.zeros(len(names))
    for i, name in enumerate(names):
        x = params[i]
        if name.startswith(("sigma2.", "scale.")) or name in POSITIVE_SCALES:
            out[i] = np.log(max(x, 1e-300) / scale[name])
        elif name == "frequency.cycle":
            lo, hi = spec.cycle.frequency_bounds
            f = np.clip((x - lo) / (hi - lo), 1e-9, 1 - 1e-9)
            out[i] = np.log(f / (1 - f))
        elif name == "damping.cycle" or name.startswith("prob."):
            f = np.clip(x, 1e-9, 1 - 1e-9)
            out[i] = np.log(f / (1 - f))
        elif name.startswith("beta."):
            out[i] = x / scale[name]
    if spec.ar_order:
        j = names.index("ar.L1")
        out[j:j + spec.ar_order] = np.arctanh(np.clip(ar_to_pacf(params[j:j + spec.ar_order]), -0.999999, 0.999999))
    return out
