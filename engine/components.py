"""Each structural component as its state-space block.

A block gives its transition matrix T_b, its row of the design Z_b, the diagonal
q_b of R Q Rᵀ (every component here has its disturbances on the diagonal), and
how its initial state is set (exact diffuse, or AR's stationary covariance).
The state ordering follows statsmodels UnobservedComponents: level, trend,
dummy seasonals, trigonometric seasonals, cycle, AR, regression.

`component_selectors` is the one place that says which states make up each reported
component, in one vocabulary (statsmodels' names): `level`, `trend` (the slope of a local
linear trend), `seasonal_{period}`, `freq_seasonal_{period}({harmonics})`, `cycle`,
`autoregressive` and `regression`.

What does not depend on the parameters (designs, and the transitions of the trend,
seasonal and regression blocks) is a NumPy constant: the layout reads it from a trace
without running anything (see `system.block_structure`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Mapping, NamedTuple

import jax.numpy as jnp
import numpy as np

from .spec import ModelSpec, as_spec, seasonal_param_name


class Block(NamedTuple):
    name: str            # component name used for decompositions ('level', 'seasonal_12', ...)
    transition: jnp.ndarray   # (k, k); NumPy where it does not depend on the parameters
    design: np.ndarray        # (k,) always a NumPy constant
    noise_var: jnp.ndarray    # (k,) diagonal of R Q Rᵀ
    stationary_cov: jnp.ndarray | None  # (k, k) for stationary blocks, None for diffuse
    kind: str            # how T_b acts: 'dense' or 'dummy' (shift with a sum row)
    observed: bool = True  # whether the block enters y_t through the design (trend does not)


def _zero() -> jnp.ndarray:
    return jnp.zeros(())


def _unit(k: int) -> np.ndarray:
    """The design of a block observed through its first state: (1, 0, …, 0)."""
    return np.eye(k)[0]


def trend_blocks(spec: ModelSpec, p: dict) -> list[Block]:
    level, stoch_level, trend, stoch_trend = spec.trend_flags
    if not level:
        return []
    var_level = p["sigma2.level"] if stoch_level else _zero()
    if not trend:
        return [Block("level", np.ones((1, 1)), np.ones(1), jnp.reshape(var_level, (1,)), None, "dense")]
    var_trend = p["sigma2.trend"] if stoch_trend else _zero()
    T = np.array([[1.0, 1.0], [0.0, 1.0]])
    return [Block("level", T, np.array([1.0, 0.0]), jnp.stack([var_level, var_trend]), None, "dense")]


def seasonal_block(spec: ModelSpec, s, p: dict) -> Block:
    var = p[seasonal_param_name(spec, s)] if s.stochastic else _zero()
    name = f"seasonal_{s.period}" if s.form == "dummy" else f"freq_seasonal_{s.period}({s.n_harmonics})"
    if s.form == "dummy":
        k = int(s.period) - 1
        T = np.eye(k, k, -1)
        T[0, :] = -1.0
        noise = jnp.zeros(k).at[0].set(var)
        return Block(name, T, _unit(k), noise, None, "dummy")
    h = s.n_harmonics
    j = np.arange(1, h + 1)
    lam = 2 * np.pi * j / float(s.period)
    # the Nyquist harmonic (2j = period) rotates by exactly π: keep sin at 0 so that its
    # never-observed second state cannot leak roundoff into the likelihood
    nyquist = 2 * j == s.period
    cos = np.where(nyquist, -1.0, np.cos(lam))
    sin = np.where(nyquist, 0.0, np.sin(lam))
    T = np.zeros((2 * h, 2 * h))   # block-diagonal of [[cos, sin], [−sin, cos]] rotations
    i = np.arange(h) * 2
    T[i, i], T[i, i + 1], T[i + 1, i], T[i + 1, i + 1] = cos, sin, -sin, cos
    design = np.tile([1.0, 0.0], h)
    return Block(name, T, design, jnp.full(2 * h, var), None, "dense")


def cycle_block(spec: ModelSpec, p: dict) -> Block:
    c = spec.cycle
    lam = p["frequency.cycle"]
    rho = p["damping.cycle"] if c.damped else jnp.ones(())
    cos, sin = jnp.cos(lam), jnp.sin(lam)
    T = rho * jnp.stack([jnp.stack([cos, sin]), jnp.stack([-sin, cos])])
    var = p["sigma2.cycle"] if c.stochastic else _zero()
    return Block("cycle", T, np.array([1.0, 0.0]), jnp.full(2, var), None, "dense")


def ar_block(spec: ModelSpec, p: dict) -> Block:
    order = spec.ar_order
    phi = jnp.stack([p[f"ar.L{i + 1}"] for i in range(order)])
    T = jnp.zeros((order, order)).at[0, :].set(phi)
    if order > 1:
        T = T.at[jnp.arange(1, order), jnp.arange(order - 1)].set(1.0)
    noise = jnp.zeros(order).at[0].set(p["sigma2.ar"])
    return Block("autoregressive", T, _unit(order), noise,
                 stationary_covariance(T, jnp.diag(noise)), "dense")


def regression_block(spec: ModelSpec, p: dict) -> Block:
    k = spec.k_exog
    if spec.regression.coefficients == "time_varying":
        noise = jnp.stack([p[f"sigma2.{c}"] for c in spec.exog_columns])
    else:
        noise = jnp.zeros(k)
    # the design of regression states is x_t; filled per time step by the system
    return Block("regression", np.eye(k), np.zeros(k), noise, None, "dense")


def stationary_covariance(T: jnp.ndarray, Q: jnp.ndarray) -> jnp.ndarray:
    """Solve P = T P Tᵀ + Q (discrete Lyapunov) by vectorisation: (I − T⊗T) vec P = vec Q."""
    k = T.shape[0]
    vec = jnp.linalg.solve(jnp.eye(k * k) - jnp.kron(T, T), Q.reshape(-1))
    P = vec.reshape(k, k)
    return 0.5 * (P + P.T)


def blocks(spec: ModelSpec, params: dict) -> list[Block]:
    """All blocks of a spec in state order."""
    out = trend_blocks(spec, params)
    out += [seasonal_block(spec, s, params) for s in spec.seasonal if s.form == "dummy"]
    out += [seasonal_block(spec, s, params) for s in spec.seasonal if s.form == "trig"]
    if spec.cycle is not None:
        out.append(cycle_block(spec, params))
    if spec.ar_order:
        out.append(ar_block(spec, params))
    if spec.regression_in_state:
        out.append(regression_block(spec, params))
    return out


class ComponentSelector(NamedTuple):
    """Which states make up one reported component, and how they combine.

    A component's value at time t is Σ_i w_i α_t[i] over `states`, with w_i the design row
    Z_t[i] when `weighted` (its contribution to y_t) and 1 otherwise (the trend: the slope
    state itself, which enters y_t only through the level). A regression on fixed
    coefficients has no states: its contribution is the observation intercept x_t β.
    """

    name: str                  # 'level', 'trend', 'seasonal_12', 'freq_seasonal_365.25(3)', 'cycle', ...
    states: tuple[int, ...]    # indices into the state vector
    weighted: bool             # weights from the design row Z_t (else unit weights)


def component_selectors(spec: ModelSpec | Mapping) -> tuple[ComponentSelector, ...]:
    """The reported components of a spec, in state order (a fixed-coefficient regression last).

    Each block gives one component over the states its design can weight (a regression's
    coefficient states all, their design being x_t); a local linear trend also gives `trend`,
    its slope state with unit weight. Static: safe to call under jit."""
    return _component_selectors(as_spec(spec))


@lru_cache(maxsize=512)
def _component_selectors(spec: ModelSpec) -> tuple[ComponentSelector, ...]:
    from .system import block_structure   # system builds on this module

    out, start = [], 0
    for name, k, _, _, design in block_structure(spec):
        states = tuple(range(start, start + k)) if name == "regression" else \
            tuple(start + int(i) for i in np.flatnonzero(design))
        if states:
            out.append(ComponentSelector(name, states, True))
        if name == "level" and k == 2:
            out.append(ComponentSelector("trend", (start + 1,), False))
        start += k
    if spec.regression is not None and spec.regression.coefficients == "parameters":
        out.append(ComponentSelector("regression", (), True))
    return tuple(out)
