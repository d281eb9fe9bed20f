"""The forms the bank holds each draw's covariance P in between steps, and the standard step on them.

Dense (state, state, draw); packed, the m(m+1)/2 distinct entries of each symmetric P
(`kalman.pack`), which a large bank keeps from one step to the next; or, with sqrt=True, its
Cholesky factor. Every consumer reads P through `_dense` or the packed entries, whichever form
it comes in.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .. import kalman
from ..system import System
from .state import OnlineConfig

# From this many draws on, the bank's standard step works on the packed covariance: it moves
# half the memory but runs about twice as many (small) kernels, which costs more than it saves
# in smaller banks (13 states: 0.004 against 0.014 ms per step at 1 draw, 0.056 against 0.043 ms
# at 100, 0.41 against 0.17 ms at 1000).
PACKED_MIN_DRAWS = 64


def _use_packed(config: OnlineConfig, n_draws: int) -> bool:
    return not config.sqrt and n_draws >= PACKED_MIN_DRAWS


def _standard_update(config: OnlineConfig, lay, system: System, st: kalman.FilterState, y, d, z):
    """The bank's standard Kalman step (not sqrt) for P dense or packed (`_is_packed`): (next
    filter state, loglik, v). Large banks take the packed step and return P packed (as rows
    when it came so, else stacked), so a stream keeps it packed from one step to the next;
    small ones take the fused dense step."""
    if not (_is_packed(st) or _use_packed(config, y.shape[0])):
        return kalman.standard_step_fused(lay, system, st, y, d, z)
    rows = tuple(st.cov) if _is_packed(st) else kalman.pack(st.cov)
    fs, loglik, v = kalman.standard_step_packed(lay, system, st._replace(cov=rows), y, d, z)
    return fs._replace(cov=fs.cov if isinstance(st.cov, tuple) else jnp.stack(fs.cov)), loglik, v


def _is_packed(st: kalman.FilterState) -> bool:
    """P is held packed: the m(m+1)/2 distinct entries of each draw's P (`kalman.pack`), either
    stacked into one (pair, draw) array (between updates: one buffer to pass) or as a tuple of
    (draw,) rows (inside a micro-batch's loop: each entry updated in place, no restacking)."""
    return isinstance(st.cov, tuple) or st.cov.ndim == 2


def _packed(st: kalman.FilterState) -> kalman.FilterState:
    return st._replace(cov=jnp.stack(kalman.pack(st.cov)))


def _dense(lay, st: kalman.FilterState) -> kalman.FilterState:
    """The filter state with P dense, whichever form it is held in."""
    return st._replace(cov=kalman.unpack(tuple(st.cov), lay.n_states)) if _is_packed(st) else st


_dense_jit = jax.jit(_dense, static_argnums=0)
_packed_jit = jax.jit(_packed)
