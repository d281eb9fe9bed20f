"""The model, draws and series shared by the online engine's tests."""

from __future__ import annotations

import jax
import numpy as np

import engine
from engine.rejuvenation import RejuvenationConfig


SPEC = {"level": {"kind": "local_linear_trend"}, "seasonal": [{"period": 4}]}
BASE = np.array([1.0, 0.1, 0.01, 0.05])
GAPS = (0, 1, 9, 20, 21, 33)
MANUAL = RejuvenationConfig(automatic=False)   # moves only when asked


def make_draws(n, base=BASE, spread=0.3, seed=0):
    rng = np.random.default_rng(seed)
    return base * np.exp(spread * rng.standard_normal((n, len(base))))


def make_series(n=48, params=BASE, gaps=GAPS, seed=1):
    y = np.array(engine.simulate(jax.random.PRNGKey(seed), SPEC, params, n))
    y[list(gaps)] = np.nan
    return y


def stream_updates(filt, y):
    """Update one observation at a time; keep each step's info and the belief after it."""
    infos, beliefs = [], []
    for v in y:
        infos.append(jax.device_get(filt.update(v)))
        beliefs.append(jax.device_get(filt.state))
    return infos, beliefs
