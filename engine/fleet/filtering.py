"""The batched filter of a fleet: each member's own exact-diffuse arithmetic, series last.

Inside a batch the filter runs natively batched (series last) and every member's arithmetic is
its own: the exact-diffuse update (`kalman.diffuse_step`) for a prefix that holds the diffuse
phase, then the standard one (the diffuse one if a member is still diffuse), so a series' result
does not depend on which series share its batch, on the batch size, or on the backend that ran
it. For the fit, a late start is filtered as a ragged end where that leaves the likelihood exact
(`start_moves_to_end`), so late starters do not keep the batch in the diffuse update.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .. import kalman, parallel
from ..model import batch_systems
from ..spec import ModelSpec
from ..system import layout


def batch_innovations(spec: ModelSpec, P, Y, X):
    """Filter a batch, each member on its own: P (series, k), Y (series, time).

    The exact-diffuse update runs for the first `parallel.prefix_length` steps, which hold
    every member's diffuse phase unless a member has too few observations there; the rest
    takes the standard update, or the diffuse one again if some member is still diffuse (one
    `lax.cond` on the primal state, a branch that each member's numbers do not depend on).
    Returns log-likelihood terms, innovations v_t, their variances F_t and kinds (0 skipped,
    1 standard, 2 diffuse), each (time, series), and the final batch-last `kalman.FilterState`.
    """
    lay = layout(spec)
    n_series, n_time = Y.shape
    system = kalman.batch_last(batch_systems(spec, P, X))
    d = system.obs_intercept
    d = jnp.broadcast_to(d if d.ndim == 2 else d[None], (n_time, n_series))
    varying = lay.time_varying_design

    def scan(use_diffuse: bool, state, xs):
        def body(state, xs):
            y_t, d_t, z_t = xs if varying else (*xs, system.design)
            if not use_diffuse:   # no member diffuse: the fused update (no steady test, not used here)
                new, llf, v = kalman.standard_step_fused(lay, system, state, y_t, d_t, z_t, test_steady=False)
                kind = jnp.where(new.prev_observed & (new.innov_var > 0), 1.0, 0.0)
                return new, (llf, v, new.innov_var, kind)
            new, info = kalman.diffuse_step(lay, system, state, y_t, d_t, z_t, False, True)
            return new, (info.loglik, info.innovation, info.innov_var, info.kind.astype(jnp.float64))
        return lax.scan(body, state, xs)

    xs = (Y.T, d, system.design) if varying else (Y.T, d)
    state = kalman.init(lay, system)
    n_prefix = parallel.prefix_length(lay, n_time)
    if n_prefix == 0:            # no diffuse states
        final, out = scan(False, state, xs)
    elif n_prefix == n_time:
        final, out = scan(True, state, xs)
    else:
        mid, head = scan(True, state, jax.tree_util.tree_map(lambda x: x[:n_prefix], xs))
        tail_xs = jax.tree_util.tree_map(lambda x: x[n_prefix:], xs)
        settled = mid._replace(diffuse_cov=jnp.zeros_like(mid.diffuse_cov))   # what the diffuse update keeps
        final, tail = lax.cond(jnp.any(mid.diffuse), lambda: scan(True, mid, tail_xs),
                               lambda: scan(False, settled, tail_xs))
        out = jax.tree_util.tree_map(lambda h, t: jnp.concatenate([h, t]), head, tail)
    return (*out, final)


def start_moves_to_end(spec: ModelSpec) -> bool:
    """Whether a late start may be filtered as a ragged end instead (see `late_starts_to_end`).

    The system is time-invariant (no regression) and every diffuse block's transition has
    |det| = 1 (trend, seasonals, an undamped cycle), so its diffuse prior, carried over the
    missing start, is again diffuse with the same normalisation (the noise gathered meanwhile
    is absorbed), and stationary blocks (AR) are at their stationary law at any time. A damped
    cycle's diffuse prior shrinks by ρ² a step: its exact-diffuse likelihood changes."""
    return spec.regression is None and (spec.cycle is None or not spec.cycle.damped)


def late_starts_to_end(Y: np.ndarray) -> np.ndarray:
    """Each row's leading missing values moved to its end: (series, time) → (series, time).

    For a spec where `start_moves_to_end` holds the exact-diffuse likelihood is unchanged,
    and a fleet's late starters then end their diffuse phase as early as the others, so the
    batched filter can leave the diffuse update after its prefix."""
    n_time = Y.shape[1]
    observed = ~np.isnan(Y)
    first = np.where(observed.any(axis=1), observed.argmax(axis=1), 0)
    return np.take_along_axis(Y, (np.arange(n_time)[None] + first[:, None]) % n_time, axis=1)

