"""OnlineFilter.update_many: a micro-batch padded to its power-of-two bucket gives, for every
length, the info of the observations it was given (equal to one update at a time), and each new
length adds one small trimming program, not one per info field."""

from __future__ import annotations

import jax
import numpy as np

import engine
from engine.online.filter import _first_steps
from engine.rejuvenation import RejuvenationConfig

SPEC = {"level": {"kind": "local_level"}}
DRAWS = np.array([[1.0, 0.5], [1.5, 0.3], [0.8, 0.9]])


def _filter():
    return engine.OnlineFilter(SPEC, DRAWS, rejuvenation=RejuvenationConfig(automatic=False))


def test_padded_micro_batches_equal_single_updates():
    y = np.sin(np.arange(12) / 2.0) + 0.1 * np.arange(12)
    y[4] = np.nan
    one = _filter()
    singles = [jax.device_get(one.update(v)) for v in y]
    many = _filter()
    before = _first_steps._cache_size()
    got = [jax.device_get(many.update_many(y[a:b])) for a, b in ((0, 3), (3, 8), (8, 11), (11, 12))]
    assert _first_steps._cache_size() - before <= 3   # lengths 3, 5, 3 again and 1 (bucket 8): three trims
    for field in ("t", "mean", "var", "loglik", "ess", "state_mean", "filtered_mean"):
        stacked = np.concatenate([np.asarray(getattr(g, field)) for g in got])
        expected = np.stack([np.asarray(getattr(s, field)) for s in singles])
        assert stacked.shape == expected.shape, field
        np.testing.assert_allclose(stacked, expected, rtol=1e-12, atol=1e-12, err_msg=field)
