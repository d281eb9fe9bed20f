"""What the bank's pure functions pass around: static settings, the draws' systems, the belief."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from .. import kalman
from ..spec import ModelSpec, as_spec
from ..system import System


class OnlineConfig(NamedTuple):
    """Static settings of the online step (hashable: a `jax.jit` static argument)."""

    spec: ModelSpec
    sqrt: bool = False          # square-root (Cholesky) covariance recursion
    quantile_iters: int = 1     # Newton refinements of the predictive quantiles of y (0: Cornish–Fisher only)
    anomaly_z: float = 3.5      # |standardised innovation| above this flags an anomaly
    cusum_k: float = 0.5        # CUSUM allowance (in standard deviations)
    cusum_h: float = 5.0        # CUSUM decision threshold
    component_quantile_iters: int = 0  # the same for the filtered components (each costs ~7·S erf)
    catch_up_filter: str = "auto"  # history pass: "standard", "parallel" (associative scan) or "auto"


class Bank(NamedTuple):
    """The S parameter draws and their systems (batch-last); constant between rejuvenations."""

    params: jnp.ndarray   # (draw, param) in `param_names` order
    system: System        # batch-last: transition (state, state, draw), ...


class Belief(NamedTuple):
    """What the next step needs: each draw's predicted Kalman belief and its log weight."""

    filter: kalman.FilterState  # a_{t+1}, P_{t+1} (or its Cholesky factor), P∞, per draw (draw last)
    log_weight: jnp.ndarray     # (draw,) normalised: logsumexp = 0
    cusum: jnp.ndarray          # (2,) upper and lower CUSUM of the standardised innovations
    t: jnp.ndarray              # () observations consumed


def as_config(config) -> OnlineConfig:
    """`config` with each field in its type (the spec a `ModelSpec`), so that equal settings make
    one static argument; a model spec (anything `as_spec` takes) gets the default settings."""
    if not isinstance(config, OnlineConfig):
        return OnlineConfig(as_spec(config))
    return OnlineConfig(as_spec(config.spec), bool(config.sqrt), int(config.quantile_iters), float(config.anomaly_z),
                        float(config.cusum_k), float(config.cusum_h), int(config.component_quantile_iters),
                        str(config.catch_up_filter))
