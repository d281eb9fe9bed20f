"""Bringing a belief over a stretch of the history."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import engine
from engine.online import bank as online_bank, history

from .cases import SPEC, MANUAL, make_draws, make_series


def test_catch_up_in_power_of_two_pieces_equals_one_pass():
    """Rejuvenation catches a new bank up in pieces of power-of-two lengths: same belief as one pass."""

    y = make_series(77)
    y[[3, 50]] = np.nan
    filt = engine.OnlineFilter(SPEC, make_draws(3), rejuvenation=MANUAL)
    one = online_bank._catch_up_jit(filt.config, filt.bank, filt.state, jnp.asarray(y), None)
    pieces = history._catch_up_pieces(filt.config, filt.bank, filt.state, y, None)   # len(y) = 2^k + ... pieces
    assert len(y) & (len(y) - 1), "the test needs a length that is not a power of two"
    for a, b in zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(pieces)):
        np.testing.assert_allclose(np.asarray(b, float), np.asarray(a, float), rtol=1e-10, atol=1e-12)
