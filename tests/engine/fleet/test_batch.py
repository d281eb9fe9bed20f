"""`run_batch`: slow members moved to a smaller batch keep their results."""

from __future__ import annotations

import numpy as np

import engine

from .cases import SPEC


def test_slow_members_moved_to_a_smaller_batch_keep_their_results():
    """Batches of 32 continue their last quarter of running members in batches of 8; the rows
    equal those of batches of 8, which never shrink."""
    Y = engine.make_fleet(32, 60, seed=7, period=6).Y
    big = engine.fit_many(SPEC, Y, method="map", batch_size=32).table
    small = engine.fit_many(SPEC, Y, method="map", batch_size=8).table
    assert (big["status"] == "ok").all() and (small["status"] == "ok").all()
    assert big["n_iterations"].max() > big["n_iterations"].quantile(0.75)   # some members ran on alone
    np.testing.assert_allclose(big["loglik"], small["loglik"], rtol=1e-9)
