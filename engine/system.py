"""Blocks → one linear Gaussian state-space system.

    y_t     = Z_t α_t + d_t + ε_t,        ε_t ~ N(0, H)
    α_{t+1} = T α_t + η_t,                η_t ~ N(0, diag(q))
    α_1     ~ N(a_1, P*_1 + κ P∞_1),      κ → ∞  (exact diffuse)

`Layout` is the static part (block positions and kinds, hashable for jit); `System`
is the pytree of numbers. `transition_apply` multiplies by T using the block
structure, so T P Tᵀ costs O(m²) for the shift/companion blocks instead of O(m³).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .components import blocks
from .spec import ModelSpec, as_spec, param_names

__all__ = [
    "Layout", "System", "layout", "block_structure", "fixed_diffuse_system", "diffuse_states", "build_system",
    "initial_state", "transition_apply",
    "transition_sandwich", "design_at", "params_from_vector", "params_to_vector", "check_exog",
    "check_finite",
]


class Layout(NamedTuple):
    """Static description of the state vector: per block (name, start, size, kind, diffuse)."""

    blocks: tuple[tuple[str, int, int, str, bool], ...]
    n_states: int
    time_varying_design: bool  # regression coefficients in the state: Z_t contains x_t
    observed_states: tuple[int, ...] = ()  # where the (fixed) design is nonzero; () = not known


class System(NamedTuple):
    transition: jnp.ndarray     # (state, state)
    design: jnp.ndarray         # (state,) or (time, state) when time-varying
    obs_intercept: jnp.ndarray  # (time,) d_t  (x_t β for regression on parameters), or ()
    obs_var: jnp.ndarray        # () H
    state_var: jnp.ndarray      # (state,) diagonal of R Q Rᵀ
    init_mean: jnp.ndarray      # (state,)
    init_cov: jnp.ndarray       # (state, state) P*_1 (stationary part)
    init_diffuse: jnp.ndarray   # (state, state) P∞_1


def layout(spec: ModelSpec | Mapping) -> Layout:
    """The static layout of a spec's state vector (cached: it is asked for on every trace)."""
    return _layout(as_spec(spec))


@lru_cache(maxsize=512)
def block_structure(spec: ModelSpec) -> tuple[tuple[str, int, str, bool, np.ndarray], ...]:
    """(name, size, kind, diffuse, design) of each block of a spec, in state order.

    Read from an abstract trace of `blocks` (nothing is computed or compiled: the designs are
    NumPy constants), so it is cheap in a fresh process and can be asked for under jit.
    """
    out = []

    def describe(params):
        for b in blocks(spec, params):
            design = np.array(b.design, dtype=float)
            design.setflags(write=False)   # shared by every caller of the cache
            out.append((b.name, b.transition.shape[0], b.kind, b.stationary_cov is None, design))
        return 0.0

    jax.eval_shape(describe, {n: jax.ShapeDtypeStruct((), jnp.float64) for n in param_names(spec)})
    return tuple(out)


@lru_cache(maxsize=512)
def fixed_diffuse_system(spec: ModelSpec) -> tuple[np.ndarray, np.ndarray] | None:
    """(T, z) of the diffuse states alone, (diffuse, diffuse) and (diffuse,), where neither depends
    on the parameters or the data (NumPy constants, read as `block_structure` reads the designs);
    None where one does (a cycle's transition, regressors in the state)."""
    if spec.initialization.kind != "diffuse":
        return np.zeros((0, 0)), np.zeros(0)
    if spec.regression_in_state:
        return None
    parts = []

    def describe(params):
        for b in blocks(spec, params):
            if b.stationary_cov is None:
                parts.append(np.array(b.transition, dtype=float) if isinstance(b.transition, np.ndarray) else None)
                parts.append(np.array(b.design, dtype=float))
        return 0.0

    jax.eval_shape(describe, {n: jax.ShapeDtypeStruct((), jnp.float64) for n in param_names(spec)})
    transitions, designs = parts[0::2], parts[1::2]
    if any(t is None for t in transitions):
        return None
    n = sum(t.shape[0] for t in transitions)
    T, start = np.zeros((n, n)), 0
    for t in transitions:
        T[start:start + t.shape[0], start:start + t.shape[0]] = t
        start += t.shape[0]
    z = np.concatenate(designs) if designs else np.zeros(0)
    for a in (T, z):
        a.setflags(write=False)   # shared by every caller of the cache
    return T, z


@lru_cache(maxsize=512)
def _layout(spec: ModelSpec) -> Layout:
    out, start, observed = [], 0, []
    exact_diffuse = spec.initialization.kind == "diffuse"   # otherwise no state starts diffuse
    for name, k, kind, diffuse, design in block_structure(spec):
        out.append((name, start, k, kind, diffuse and exact_diffuse))
        observed += [start + i for i in np.flatnonzero(design)]
        start += k
    if start == 0:  # irregular only: one known, unused state (as statsmodels does)
        out.append(("unused", 0, 1, "dense", False))
        start = 1
    return Layout(tuple(out), start, spec.regression_in_state,
                  () if spec.regression_in_state else tuple(int(i) for i in observed))


def diffuse_states(lay: Layout) -> tuple[int, ...]:
    """Indices of the states that start exact diffuse (P∞_1 is the identity on them)."""
    return tuple(i for _, start, k, _, diffuse in lay.blocks if diffuse for i in range(start, start + k))


def build_system(spec: ModelSpec | Mapping, params: Mapping[str, jnp.ndarray],
                 exog: jnp.ndarray | None = None, n_time: int | None = None) -> System:
    """Assemble the system matrices for parameter values `params` (name → scalar)."""
    spec = as_spec(spec)
    p = {k: jnp.asarray(v, dtype=jnp.float64) for k, v in params.items()}
    missing = [n for n in param_names(spec) if n not in p]
    if missing:
        raise ValueError(f"missing parameter(s) {missing}; the spec needs {param_names(spec)}")
    bl = blocks(spec, p)
    if not bl:
        T = jnp.zeros((1, 1)); Z = jnp.zeros(1); q = jnp.zeros(1)
        P0 = jnp.zeros((1, 1)); Pinf = jnp.zeros((1, 1))
    else:
        T = jax.scipy.linalg.block_diag(*[b.transition for b in bl])
        Z = jnp.concatenate([b.design for b in bl])
        q = jnp.concatenate([b.noise_var for b in bl])
        P0 = jax.scipy.linalg.block_diag(*[b.stationary_cov if b.stationary_cov is not None
                                           else jnp.zeros_like(b.transition) for b in bl])
        Pinf = jnp.diag(jnp.concatenate([jnp.full(b.transition.shape[0], 1.0 if b.stationary_cov is None else 0.0)
                                         for b in bl]))
    m = T.shape[0]
    H = p["sigma2.irregular"] if spec.irregular else jnp.zeros(())
    d = jnp.zeros(())
    if spec.regression is not None:
        if exog is None:
            raise ValueError(f"spec field 'regression.columns': the model regresses on "
                             f"{list(spec.exog_columns)} but no exog was given. Pass exog with those columns")
        x = jnp.asarray(exog, dtype=jnp.float64)
        if x.ndim == 1:
            x = x[:, None]
        if x.shape[-1] != spec.k_exog:
            raise ValueError(f"spec field 'regression.columns': exog has {x.shape[-1]} column(s), "
                             f"the spec names {spec.k_exog}: {list(spec.exog_columns)}")
        if spec.regression.coefficients == "parameters":
            beta = jnp.stack([p[f"beta.{c}"] for c in spec.exog_columns])
            d = x @ beta
        else:
            k = spec.k_exog
            Z = jnp.concatenate([jnp.broadcast_to(Z[: m - k], (x.shape[0], m - k)), x], axis=1)
    a1, P0, Pinf = initial_state(spec, P0, Pinf)
    return System(T, Z, d, H, q, a1, P0, Pinf)


def initial_state(spec: ModelSpec, P0: jnp.ndarray, Pinf: jnp.ndarray):
    """(a₁, P*₁, P∞₁) under the spec's `initialization`, from the default exact-diffuse P*₁ (the
    stationary blocks' covariance) and P∞₁ (the identity on the diffuse blocks)."""
    init = spec.initialization
    m = P0.shape[0]
    if init.kind == "approximate_diffuse":
        return jnp.zeros(m), P0 + init.variance * Pinf, jnp.zeros_like(Pinf)
    if init.kind == "known":
        return jnp.asarray(init.mean), jnp.asarray(init.cov), jnp.zeros_like(Pinf)
    return jnp.zeros(m), P0, Pinf


def transition_apply(lay: Layout, T: jnp.ndarray, X: jnp.ndarray) -> jnp.ndarray:
    """T @ X along the state axis (axis 0), using the block structure of T.

    Either T is (state, state) and X is (state, ...), or batch-last: T is (state, state, batch)
    and X is (state, ..., batch); the batch-last form is a fused elementwise loop over the
    batch (SIMD-friendly), which is what makes the batched filter fast on CPU.
    """
    batched = T.ndim == 3
    parts = []
    for _, start, k, kind, _ in lay.blocks:
        Xb = X[start:start + k]
        Tb = T[start:start + k, start:start + k]
        if kind == "dummy":   # [-Σ x, x_1, ..., x_{k-1}]
            parts.append(jnp.concatenate([-jnp.sum(Xb, axis=0, keepdims=True), Xb[:-1]], axis=0))
        elif k == 1:
            parts.append(Tb[0, 0] * Xb)
        elif batched:
            Tb = Tb.reshape((k, k) + (1,) * (X.ndim - 2) + (T.shape[-1],))
            parts.append(jnp.sum(Tb * Xb[None], axis=1))
        else:
            parts.append(jnp.tensordot(Tb, Xb, axes=1))
    return jnp.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]


def transition_sandwich(lay: Layout, T: jnp.ndarray, P: jnp.ndarray) -> jnp.ndarray:
    """T P Tᵀ for symmetric P ((state, state) or batch-last (state, state, batch))."""
    A = transition_apply(lay, T, P)
    return transition_apply(lay, T, jnp.swapaxes(A, 0, 1))


def design_at(system: System, t) -> jnp.ndarray:
    return system.design[t] if system.design.ndim == 2 else system.design


def params_from_vector(spec: ModelSpec | Mapping, vector: jnp.ndarray) -> dict[str, jnp.ndarray]:
    """Parameter vector (statsmodels order) → dict name → value; works on traced arrays."""
    names = param_names(spec)
    return {n: vector[..., i] for i, n in enumerate(names)}


def params_to_vector(spec: ModelSpec | Mapping, params: Mapping[str, float]) -> jnp.ndarray:
    names = param_names(spec)
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"missing parameter(s) {missing}; the spec needs {names}")
    return jnp.stack([jnp.asarray(params[n], dtype=jnp.float64) for n in names], axis=-1)


def check_exog(spec: ModelSpec, exog, n_time: int):
    """Validate exog against the spec (shape, finiteness) when the values are concrete."""
    if spec.regression is None:
        return None
    if exog is None:
        raise ValueError(f"spec field 'regression.columns': the model regresses on {list(spec.exog_columns)} "
                         "but no exog was given. Pass exog with those columns")
    if hasattr(exog, "columns"):  # a DataFrame: pick the spec's columns by name
        spec.check_data(None, tuple(map(str, exog.columns)))   # n_time may be a forecast's horizon
        exog = exog[list(spec.exog_columns)].to_numpy(dtype=float)
    if isinstance(exog, jax.core.Tracer):
        return exog
    x = np.asarray(exog, dtype=float)
    if x.ndim == 1:
        x = x[:, None]
    if x.shape[0] < n_time:
        raise ValueError(f"exog has {x.shape[0]} rows but the series has {n_time}; give exog for every time step")
    check_finite(x, "exog", regressors=True, dims=("row", "column"), labels={"column": spec.exog_columns})
    return x


def check_finite(values, name: str, *, regressors: bool = False, dims: tuple[str, ...] = ("index",),
                 labels: Mapping[str, Sequence] | None = None) -> None:
    """Refuse the values a filter cannot take, naming the first bad one and the fix.

    A series may have missing values (NaN) but no infinite ones; regressors
    (`regressors=True`) may have neither, since Z_t or d_t would be undefined. The place is
    told along `dims`, one name per axis of `values`, using `labels` (dim → names, e.g.
    series ids or column names) where positions have names."""
    values = np.asarray(values, dtype=float)
    bad = ~np.isfinite(values) if regressors else np.isinf(values)
    if not bad.any():
        return
    labels = labels or {}

    def place(dim: str, i: int) -> str:
        names = labels.get(dim)
        return f"{dim} {names[i]!r}" if names is not None and i < len(names) else f"{dim} {i}"

    where = ", ".join(place(dim, int(i)) for dim, i in zip(dims, np.argwhere(bad)[0]))
    if regressors:
        raise ValueError(f"{name} has a NaN/inf at {where}; regressors must be finite (fill or drop those rows)")
    raise ValueError(f"{name} has an infinite value at {where}; use NaN for missing values")
