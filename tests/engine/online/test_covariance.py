"""The forms a draw's P is held in (dense, packed upper triangle, Cholesky factor): each bank
equals the batch filter.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import engine
from engine.online import covariance

from ..helpers import assert_rel_close
from .cases import SPEC, MANUAL, make_draws, make_series, stream_updates


def test_pack_keeps_the_upper_triangle_and_unpack_restores_the_symmetric_matrix():
    from engine import kalman
    A = np.random.default_rng(2).standard_normal((5, 5, 3))
    P = jnp.asarray(A + np.swapaxes(A, 0, 1))
    packed = kalman.pack(P)
    assert len(packed) == 15 and all(x.shape == (3,) for x in packed)
    assert [tuple(ij) for ij in kalman.packed_pairs(5)][:6] == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (1, 1)]
    np.testing.assert_array_equal(kalman.unpack(packed, 5), P)


def test_a_large_bank_keeps_its_covariance_packed_and_still_equals_the_batch_filter():
    """A settled bank of PACKED_MIN_DRAWS draws holds P packed between updates (single ones and
    micro-batches, a gap included); `state` gives it dense, and it, the weights and the
    forecast equal those of one batch pass over the same data."""
    y = make_series(n=70, seed=8, gaps=())
    y[55] = np.nan
    S = covariance.PACKED_MIN_DRAWS
    a = engine.OnlineFilter(SPEC, make_draws(S), y_history=y[:40], rejuvenation=MANUAL)
    b = engine.OnlineFilter(SPEC, make_draws(S), y_history=y[:40], rejuvenation=MANUAL)
    batch = engine.OnlineFilter(SPEC, make_draws(S), y_history=y[:70], rejuvenation=MANUAL)
    a.update_many(y[40:70])
    for v in y[40:70]:
        b.update(v)
    for filt in (a, b):
        assert covariance._is_packed(filt._belief.filter)
        assert filt.state.filter.cov.shape == (5, 5, S)
        np.testing.assert_allclose(filt.state.filter.cov, batch.state.filter.cov, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(filt.state.filter.mean, batch.state.filter.mean, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(filt.weights, batch.weights, rtol=1e-10)
        np.testing.assert_allclose(filt.forecast(5).quantiles, batch.forecast(5).quantiles, rtol=1e-10)


def test_square_root_bank_equals_the_batch_filter_per_draw():
    y = make_series()
    draws = make_draws(3)
    filt = engine.OnlineFilter(engine.OnlineConfig(SPEC, sqrt=True), draws, rejuvenation=MANUAL)
    infos, beliefs = stream_updates(filt, y)
    for s in range(len(draws)):
        ref = engine.filter_series(SPEC, draws[s], y)
        L = np.array([b.filter.cov[:, :, s] for b in beliefs])
        assert np.allclose(L, np.tril(L))            # the belief holds a Cholesky factor
        assert_rel_close(np.array([i.filtered_mean[:, s] for i in infos]), ref.filtered_mean, 1e-9, "filtered mean")
        assert_rel_close((L @ np.swapaxes(L, 1, 2))[:-1], ref.predicted_cov[1:], 1e-9, "predicted cov")
        ll = sum(float(i.loglik[s]) for i in infos)
        assert ll == pytest.approx(float(engine.loglik(SPEC, draws[s], y)), rel=1e-9, abs=1e-9)
