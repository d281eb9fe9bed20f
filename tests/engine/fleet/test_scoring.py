"""Batched Fisher scoring: a white-noise variance in one step."""

from __future__ import annotations

import numpy as np
import pytest

import engine


@pytest.mark.parametrize("method", ["mle", "map"])
def test_white_noise_variance_is_found_in_one_scoring_step(method):
    """Variances are stepped in σ² itself, where Fisher scoring is exact for white noise
    (σ² ← the mean square, whatever the start): one step to the optimum, then the stopping
    test (its Newton decrement at roundoff level) within two more. Stepping log σ² linearly,
    a variance shrinks by at most a factor e per step."""
    spec = {"level": {"kind": "irregular"}}
    Y = np.random.default_rng(0).standard_normal((6, 200)) * np.array([1e-3, 0.1, 1.0, 10.0, 1e3, 1e5])[:, None]
    table = engine.fit_many(spec, Y, method=method, batch_size=6).table
    assert (table["status"] == "ok").all()
    assert (table["n_iterations"] <= (3 if method == "mle" else 4)).all(), table["n_iterations"].tolist()
    if method == "mle":
        np.testing.assert_allclose(table["sigma2.irregular"], np.mean(Y ** 2, axis=1), rtol=1e-10)
    else:   # the MAP is where fit_map finds it
        for i in (0, 3, 5):
            assert table.loc[i, "sigma2.irregular"] == pytest.approx(
                engine.fit_map(spec, Y[i]).params["sigma2.irregular"], rel=1e-6)
