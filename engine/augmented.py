"""The exact diffuse log-likelihood by de Jong's augmented Kalman filter over the whole series.

The filter itself is `kalman.augmented` (the one the diffuse phase of every filter runs beside
Koopman's recursion, see there for the maths); here it runs over every observation and the
diffuse coefficients are solved for once at the end, on the directions the observations reach
(`kalman.reached_solve`): no diffuse steps, no collapse and no threshold but that of directions
no observation ever reaches. It gives the total only; `loglik(..., filter="augmented")` is this
(NaN where an observed step has F_t = 0: no irregular and no state noise yet).
"""

from __future__ import annotations

import jax.numpy as jnp

from . import kalman
from .system import Layout, System


def loglik(lay: Layout, system: System, y: jnp.ndarray) -> jnp.ndarray:
    """Exact diffuse log-likelihood of y (time,) under one (unbatched) system; NaN = missing."""
    one = lambda x: jnp.asarray(x)[..., None]   # a batch of one, batch last  # noqa: E731
    n_time = y.shape[0]
    z = jnp.broadcast_to(system.design, (n_time, lay.n_states)) if system.design.ndim == 2 else system.design
    d = jnp.broadcast_to(system.obs_intercept, (n_time,))
    aug = kalman.augmented_init(lay, one(system.init_mean), one(system.init_cov), one(system.init_diffuse))
    aug = kalman.augmented_scan(lay, one(system.transition), one(system.state_var), one(system.obs_var), aug,
                                y[:, None], d[:, None], one(z), jnp.zeros((n_time, 1)), False)
    n_d = aug.cols.shape[1]
    gram = aug.gram[..., 0]
    quad, log_det = kalman.reached_solve(gram[:n_d, :n_d], gram[:n_d, n_d])
    # an observed step with F_t = 0 is an exact constraint on δ, which least squares cannot weigh
    return jnp.where(aug.valid[0], aug.pending[0] - 0.5 * (gram[n_d, n_d] - quad + log_det), jnp.nan)
