"""The fleet the fleet tests share, and one fit of it."""

from __future__ import annotations

import numpy as np
import pytest

import engine

from .cases import SPEC


@pytest.fixture(scope="module")
def fleet():
    fl = engine.make_fleet(12, 60, seed=3, period=6)
    Y = fl.Y.copy()
    Y[5] = np.nan          # no data: fails alone
    Y[8, 45:] = np.nan     # a ragged end
    return Y


@pytest.fixture(scope="module")
def mle3(fleet):
    return engine.fit_many(SPEC, fleet, method="mle", batch_size=3)
