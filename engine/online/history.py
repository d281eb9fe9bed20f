"""The consumed history on the host, and bringing a belief over a stretch of it.

A stream keeps every observation (a rejuvenation move re-filters them all). Stretches go
through the compiled kernels in padded or power-of-two shapes, so histories of ever new
lengths reuse a handful of compiled programs.
"""

from __future__ import annotations

import threading

import jax.numpy as jnp
import numpy as np

from ..rejuvenation import Closed
from .bank import _catch_up_jit, _step_many_jit
from .state import Belief

MIN_BUCKET = 8


class _History:
    """Growing host-side buffers of y (time,) and exog (time, k) (amortised doubling)."""

    def __init__(self, k: int, y=None, x=None):
        self.k, self.n = k, 0
        self.y = np.empty(1024)
        self.x = np.empty((1024, k))
        if y is not None and len(y):
            self.extend(np.asarray(y, dtype=float), None if x is None else np.asarray(x, dtype=float))

    def extend(self, y: np.ndarray, x: np.ndarray | None):
        need = self.n + len(y)
        if need > len(self.y):
            size = max(need, 2 * len(self.y))
            self.y = np.concatenate([self.y[: self.n], np.empty(size - self.n)])
            self.x = np.concatenate([self.x[: self.n], np.empty((size - self.n, self.k))])
        self.y[self.n:need] = y
        if self.k:
            self.x[self.n:need] = x
        self.n = need

    def view(self, start: int = 0, stop: int | None = None):
        stop = self.n if stop is None else stop
        return self.y[start:stop].copy(), (self.x[start:stop].copy() if self.k else None)



def _padded(ys: np.ndarray, xs: np.ndarray | None):
    """Pad a stretch to the next power of two (at least MIN_BUCKET), returning its true length too,
    so a stream or a catch-up compiles only a handful of shapes."""
    n = len(ys)
    size = max(MIN_BUCKET, 1 << max(0, int(n - 1).bit_length()))
    pad = size - n
    y_pad = np.concatenate([ys, np.zeros(pad)]).astype(np.float64)
    x_pad = None if xs is None else np.concatenate([xs, np.zeros((pad, xs.shape[1]))]).astype(np.float64)
    return y_pad, x_pad, np.int64(n)


CATCH_UP_PIECE = 4096


def _catch_up_pieces(config, bank, belief, ys: np.ndarray, xs: np.ndarray | None,
                     closing: threading.Event | None = None) -> Belief:
    """`catch_up` over pieces of power-of-two lengths (whole pieces of CATCH_UP_PIECE, then the
    binary digits of the rest), so that catching up on histories of ever new lengths, as each
    rejuvenation does, reuses at most log2(CATCH_UP_PIECE) + 1 compiled programs. Raises
    `Closed` between pieces once `closing` is set."""
    n, start = len(ys), 0
    sizes = [CATCH_UP_PIECE] * (n // CATCH_UP_PIECE)
    rest = n % CATCH_UP_PIECE
    sizes += [1 << b for b in reversed(range(rest.bit_length())) if rest >> b & 1]
    for size in sizes:
        if closing is not None and closing.is_set():
            raise Closed
        stop = start + size
        belief = _catch_up_jit(config, bank, belief, jnp.asarray(ys[start:stop]),
                               None if xs is None else jnp.asarray(xs[start:stop]))
        start = stop
    return belief


def _advance(config, bank, belief, ys: np.ndarray, xs: np.ndarray | None) -> Belief:
    """Bring a belief forward over a short stretch with the compiled micro-batch step (padded
    shapes: no new compilation), keeping its CUSUM; used to catch a new bank up with the stream."""
    cusum = belief.cusum
    for start in range(0, len(ys), 1024):
        stop = min(len(ys), start + 1024)
        belief, _ = _step_many_jit(config, bank, belief,
                                   *_padded(np.asarray(ys[start:stop], float), None if xs is None else xs[start:stop]))
    return belief._replace(cusum=cusum)

