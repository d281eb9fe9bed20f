"""Fleet view-model without a server: a small local run equals `engine.fit_many`, drill-down and
"open in Fit", a NaN-only uploaded series, a bad Ray address, cancel and a closed session."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

import engine
from app.viewmodels import DataModel, SpecModel
from app.viewmodels.fleet_model import SPEC_MODEL_TAB, FleetModel
from app.workers import SessionWorker

N_SERIES, N_TIME = 6, 60


@pytest.fixture
def fleet():
    worker = SessionWorker("test-fleet")
    data = DataModel(dataset="nile")
    yield FleetModel(data, SpecModel(data), worker, n_time=N_TIME)
    worker.shutdown()


def test_local_run_matches_engine_and_drills_down(fleet):
    fleet.n_series = N_SERIES
    seen = []
    fleet.param.watch(lambda e: seen.append(e.new), "done_series")
    fleet.run().result()
    assert fleet.status == "done", fleet.message
    ref = engine.make_fleet(N_SERIES, N_TIME, 0)
    expected = engine.fit_many(ref.spec, ref.Y, method="mle").table
    got = fleet.result.table
    assert list(got["series"]) == list(ref.truth["series"])
    assert list(got["status"]) == list(expected["status"])
    names = engine.param_names(ref.spec)
    np.testing.assert_allclose(got[["loglik", *names]].to_numpy(float), expected[["loglik", *names]].to_numpy(float),
                               rtol=1e-6)
    assert seen == sorted(seen) and seen[-1] == N_SERIES and fleet.progress == 100
    summary = fleet.summary()
    assert summary["series"] == N_SERIES and summary["failed"] == int((expected["status"] == "failed").sum())

    name = got["series"].iloc[2]
    fleet.select(name).result()
    d = fleet.detail
    assert d.name == name and d.row["series"] == name
    np.testing.assert_array_equal(d.y, ref.Y[2])
    # the drill-down is the filter at the row's parameters: its one-step moments give the same
    # log-likelihood terms as the engine at those parameters, wherever a step is standard
    params = {p: got[p].iloc[2] for p in names}
    terms = np.asarray(engine.loglik_terms(ref.spec, params, ref.Y[2]))
    ok = np.isfinite(d.predicted_sd)
    z = (d.y[ok] - d.predicted_mean[ok]) / d.predicted_sd[ok]
    dens = -0.5 * (np.log(2 * np.pi * d.predicted_sd[ok] ** 2) + z ** 2)
    np.testing.assert_allclose(dens, terms[ok], rtol=1e-8, atol=1e-10)
    assert d.anomaly.sum() == got["n_anomalies"].iloc[2]  # the anomalies marked are the ones counted

    assert fleet.open_in_data(name)
    data, spec_model = fleet.data, fleet.spec_model
    assert data.target == name and data.ready and not data.log_transform
    np.testing.assert_array_equal(data.y, ref.Y[2])
    assert spec_model.spec == fleet.result.spec  # the Fit and Stream tabs fit the same model


def test_nan_only_uploaded_series_is_flagged_and_the_rest_fit(fleet):
    rng = np.random.default_rng(1)
    t = np.arange(40)
    frame = pd.DataFrame({"t": t, "a": 10 + np.cumsum(rng.normal(size=40)), "empty": np.nan,
                          "b": 5 + rng.normal(size=40)})
    assert fleet.load_upload(frame.to_csv(index=False, na_rep="").encode(), "wide.csv")
    assert fleet.source == "(uploaded file)" and fleet.n_series == 3 and fleet.data_error == ""
    fleet.spec_model.level = "local_level"
    fleet.spec_choice = SPEC_MODEL_TAB
    fleet.run().result()
    assert fleet.status == "done", fleet.message
    table = fleet.result.table.set_index("series")
    assert table.loc["empty", "status"] == "failed" and table.loc["empty", "message"]
    assert (table.loc[["a", "b"], "status"] != "failed").all()
    assert fleet.select("empty") is None and "failed" in fleet.detail_message
    # a malformed upload is explained and the loaded table stays
    assert not fleet.load_upload(b"t,a\n1,2\n2,x\n", "bad.csv")
    assert "bad.csv" in fleet.data_error and "'a'" in fleet.data_error


@pytest.mark.timeout(300)
def test_bad_ray_address_gives_a_message(fleet):
    fleet.param.update(n_series=2, backend="ray", address="not an address")
    assert fleet.run() is None and fleet.status == "error" and "host:port" in fleet.message
    fleet.address = "127.0.0.1:1"  # nothing listens there
    future = fleet.run()
    with pytest.raises(Exception):
        future.result()
    assert fleet.status == "error" and "127.0.0.1:1" in fleet.message and not fleet.busy


def test_cancel_and_closed_session_stop_the_job(fleet):
    fleet.param.update(n_series=64, batch_size=4)
    fleet.param.watch(lambda e: e.new >= 4 and fleet.cancel(), "done_series")  # cancel after the first batch
    run = fleet.run().result()
    assert run.cancelled and fleet.status == "cancelled" and not fleet.busy
    assert 4 <= len(fleet.result.table) < 64  # the finished batches are kept and shown
    started = threading.Event()
    fleet.param.watch(lambda e: e.new and started.set(), "total_series")
    future = fleet.run()  # the app stays usable; a session that closes cancels its job
    started.wait()
    fleet.worker.shutdown(wait=False)
    assert future.result().cancelled


@pytest.mark.timeout(300)
def test_the_status_says_what_the_job_waits_for_on_ray(fleet):
    """Before the first series is fitted, a Ray job says it is connecting (or starting Ray), not "Fitted 0"."""
    fleet.param.update(n_series=2, backend="ray", address="127.0.0.1:1")   # nothing listens there
    messages = []
    fleet.param.watch(lambda e: messages.append(e.new), "message")
    with pytest.raises(ConnectionError):
        fleet.run().result()
    assert messages[1] == "Connecting to the Ray cluster at 127.0.0.1:1…"
    assert not any(m.startswith("Fitted") for m in messages) and fleet.status == "error"


def test_job_statuses_are_one_vocabulary(fleet):
    from app.viewmodels.job import STATUSES, Job

    assert isinstance(fleet, Job) and tuple(fleet.param.status.objects) == STATUSES
    with pytest.raises(ValueError, match="running"):
        fleet.finish("running", "not an end")


def test_tables_are_the_same_across_batch_sizes_in_the_stated_sense():
    """Ray and local runs differ only in their default batch size (one batch per local core, one
    per Ray task); a batch of another size rounds differently, and a variance at the boundary
    then ends at another tiny value. SAME_TABLES states the precision; this checks exactly it."""
    from app.viewmodels.fleet_model import SAME_PARAM_RTOL, table_differences

    fl = engine.make_fleet(12, 120, 0)   # the Fleet tab's synthetic fleet, 12 series
    halves = engine.fit_many(fl.spec, fl.Y, method="mle", batch_size=6).table
    whole = engine.fit_many(fl.spec, fl.Y, method="mle", batch_size=12).table
    assert table_differences(halves, whole, fl.spec, fl.Y) == []
    names = engine.param_names(fl.spec)
    moved = whole.copy()
    moved.loc[0, names[1]] += 10 * SAME_PARAM_RTOL * np.nanvar(fl.Y[0])
    assert table_differences(halves, moved, fl.spec, fl.Y) == [names[1]]
