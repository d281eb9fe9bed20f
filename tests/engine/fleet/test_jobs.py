"""`fit_many`: per-series results equal fit_mle's and fit_map's, do not depend on the batch
size, progress and cancel, a failing batch, late starters.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import engine
from engine.bayes import log_posterior
from engine.fleet import Batch, FleetJob, run_batch

from .cases import SPEC, NAMES


def test_mle_agrees_with_fit_mle_per_series(fleet, mle3):
    table = mle3.table
    assert table.loc[5, "status"] == "failed" and "no observations" in table.loc[5, "message"]
    assert (table.drop(index=5)["status"] == "ok").all()
    for i in (0, 3, 8):
        ref = engine.fit_mle(SPEC, fleet[i])
        # the same optimum: ours is never worse, and equal to 1e-6 relative
        assert table.loc[i, "loglik"] >= ref.loglik - 1e-6 * abs(ref.loglik)
        assert table.loc[i, "loglik"] == pytest.approx(ref.loglik, rel=1e-6)
        params = {n: table.loc[i, n] for n in NAMES}
        assert table.loc[i, "loglik"] == pytest.approx(float(engine.loglik(SPEC, params, fleet[i])), rel=1e-9)


def test_results_do_not_depend_on_batch_size(fleet, mle3):
    other = engine.fit_many(SPEC, fleet, method="mle", batch_size=5).table
    a = mle3.table
    assert (a["status"] == other["status"]).all() and (a["n_obs"] == other["n_obs"]).all()
    np.testing.assert_allclose(a["loglik"], other["loglik"], rtol=1e-9)
    # parameters: equal where the likelihood identifies them (a variance at its zero
    # boundary is ~1e-10 of the data scale in both, but not the same tiny number)
    scale = np.nanvar(np.diff(fleet, axis=1))
    for n in NAMES:
        diff = np.abs(a[n] - other[n]).to_numpy()
        ok = np.isnan(diff) | (diff <= 1e-5 * np.abs(a[n].to_numpy()) + 1e-7 * scale)
        assert ok.all(), (n, diff)


def test_map_agrees_with_fit_map(fleet):
    res = engine.fit_many(SPEC, fleet[:4], method="map", batch_size=4)
    for i in range(4):
        ref = engine.fit_map(SPEC, fleet[i])
        logp, to_u, _ = log_posterior(SPEC, fleet[i])
        ours = float(logp(to_u(np.array([res.table.loc[i, n] for n in NAMES]))))
        assert res.table.loc[i, "status"] == "ok"
        assert ours >= ref.log_posterior - 1e-7 * abs(ref.log_posterior)
        assert ours == pytest.approx(ref.log_posterior, rel=1e-8)


def test_progress_cancel_and_a_failing_batch(fleet):
    seen = []
    cancel = threading.Event()

    def progress(done, total):
        seen.append((done, total))
        cancel.set()

    with pytest.raises(engine.FleetCancelled) as info:
        engine.fit_many(SPEC, fleet, method="filter", params={n: 1.0 for n in NAMES}, batch_size=4,
                        progress=progress, cancel=cancel)
    # no batch starts after the cancel; those already running (one per core) finish and are kept
    assert seen[0] == (4, 12) and len(seen) < 3
    assert len(info.value.partial.table) == seen[-1][0]
    # a batch that raises fails only its own series, with the reason
    job = FleetJob(SPEC, "bogus", 3)
    out = run_batch(job, Batch(0, ["x", "y", "z"], fleet[:3]))
    assert (out.rows["status"] == "failed").all() and out.rows["message"].str.contains("bogus").all()


def test_late_starters_fit_as_given_and_keep_their_belief():
    """A batch with late starters (moved to the end for the fit): rows equal fit_mle's, the
    table's log-likelihood is the series' own, and the kept belief continues the series online."""
    fl = engine.make_fleet(4, 60, seed=5, period=6)   # the module fleet's length: fit_mle and loglik are compiled
    Y = fl.Y.copy()
    Y[1, :13] = np.nan
    Y[3, :25] = np.nan
    res = engine.fit_many(SPEC, Y, method="mle", keep=True)
    for i in (1, 3):
        ref = engine.fit_mle(SPEC, Y[i])
        row = res.table.loc[i]
        assert row["status"] == "ok"
        assert row["loglik"] == pytest.approx(ref.loglik, rel=1e-6)
        params = {n: row[n] for n in NAMES}
        assert row["loglik"] == pytest.approx(float(engine.loglik(SPEC, params, Y[i])), rel=1e-9)
        online = engine.OnlineFilter(SPEC, params, y_history=Y[i], belief=res.beliefs[str(i)])
        batch = engine.OnlineFilter(SPEC, params, y_history=Y[i])
        np.testing.assert_allclose(online.update(2.0).loglik, batch.update(2.0).loglik, rtol=1e-9)
