"""Session files through the view-models, without a server: save → load gives back the data choice,
the spec with its priors, the fits and the online belief; a resumed stream equals an uninterrupted
one; bad files are refused with a message naming the problem and change nothing."""

from __future__ import annotations

import dataclasses
import io
import json
import time
import zipfile

import jax
import numpy as np
import pytest

import engine
from app.viewmodels import DataModel, FitModel, SpecModel
from app.viewmodels.fit_bayes import BayesFitModel
from app.viewmodels.priors_model import PriorsModel
from app.viewmodels.session_file import SessionBundle, SessionFileError, SessionFileModel, pack, rebuild, unpack
from app.viewmodels.stream import StreamModel, snapshot_bytes
from app.workers import SessionWorker
from engine.data import DATASETS_DIR

pytestmark = pytest.mark.timeout(900)

PRIOR = {"dist": "inverse_gamma", "concentration": 2, "rate": 1000}


def _session(name: str) -> SessionFileModel:
    worker = SessionWorker(name)
    data = DataModel(dataset="nile")
    spec = SpecModel(data)
    priors = PriorsModel(data, spec)
    fit = FitModel(data, spec, worker)
    bayes = BayesFitModel(data, priors, worker)
    stream = StreamModel(data, fit, worker, bayes=bayes, batch_size=8, max_speed=True)
    return SessionFileModel(data, spec, priors, fit, bayes, worker, stream=stream)


def _close(s: SessionFileModel) -> None:
    s.stream.shutdown()
    s.worker.shutdown()


def _wait_for(condition, what: str):
    while not condition():
        time.sleep(0.02)


@pytest.fixture
def saved():
    """A Nile session with an edited prior, a quick fit, 5 streamed observations (S = 1) and a short
    NUTS posterior, and its session file."""
    a = _session("session-a")
    assert a.priors.set_prior("sigma2.level", PRIOR)
    a.fit.run_quick_fit().result()
    a.stream.step(5).result()
    _wait_for(lambda: a.stream.n_received == 5, "five streamed observations")
    a.bayes.param.update(chains=2, warmup=50, draws=50)
    a.bayes.run_nuts().result()
    content = a.save().getvalue()
    yield a, content
    _close(a)


def test_round_trip_gives_back_spec_fits_posterior_and_belief(saved):
    a, content = saved
    b = _session("session-b")
    try:
        b.load(content, "saved.zip").result()
        assert b.status == "done" and "Restored saved.zip" in b.message
        # the spec with its edited prior
        assert b.priors.spec == a.priors.spec and b.priors.edits == {"sigma2.level": PRIOR}
        assert json.loads(b.priors.spec_text) == json.loads(a.priors.spec_text)
        # the quick fit, as a current (not stale) fit of the restored data and model
        ra, rb = a.fit.result, b.fit.result
        assert rb.params == ra.params and rb.se == ra.se and rb.loglik == ra.loglik and not b.fit.stale
        for name, (mean, sd) in ra.components.items():
            np.testing.assert_allclose(rb.components[name][0], mean, rtol=1e-10)
            np.testing.assert_allclose(rb.components[name][1], sd, rtol=1e-10)
        # the NUTS posterior: every group and value, the same verdict
        pa, pb = a.bayes.posterior, b.bayes.posterior
        assert set(pb.groups()) == set(pa.groups())
        for group in pa.groups():
            for var in pa[group].data_vars:
                np.testing.assert_array_equal(np.asarray(pb[group][var]), np.asarray(pa[group][var]))
        assert b.bayes.result.method == "nuts" and b.bayes.result.diagnosis.verdict == a.bayes.result.diagnosis.verdict
        # the belief: the same draws, weights and state arrays after the same observations
        belief = rebuild(unpack(content)).belief
        assert belief.t == a.stream.filter.t == 55
        np.testing.assert_array_equal(belief.params, a.stream.filter.params)
        for x, y in zip(jax.tree_util.tree_leaves(belief.state), jax.tree_util.tree_leaves(a.stream.filter.state)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        assert b.stream.status == "idle" and "press Play" in b.stream.message
        # resuming in the new session equals the old session streaming on without a break
        b.stream.play().result()
        a.stream.play()
        for s in (a.stream, b.stream):
            _wait_for(lambda s=s: s.status == "finished", "the stream to finish")
        assert b.stream.rows["t"].iloc[0] == 55 and len(b.stream.rows) == 45
        for col in ("x", "y", "predicted", "filtered", "lo95", "hi95"):
            np.testing.assert_allclose(b.stream.rows[col], a.stream.rows[col].iloc[5:], rtol=1e-12)
        # the x-axis holds Nile's dates (ms since the epoch)
        assert np.datetime64(int(b.stream.rows["x"].iloc[0]), "ms") == np.datetime64("1926-01-01")
    finally:
        _close(b)


def test_uploaded_data_and_map_fit_round_trip():
    a, b = _session("upload-a"), _session("upload-b")
    try:
        raw = (DATASETS_DIR / "nile.csv").read_bytes()
        assert a.data.load_upload(raw, "my_river.csv")
        a.data.log_transform = True
        a.bayes.run_map().result()
        b.load(a.save().getvalue(), "s.zip").result()
        assert b.status == "done"
        assert b.data.source == "my_river.csv" and b.data.log_transform and b.data.dataset == a.data.dataset
        np.testing.assert_array_equal(b.data.y, a.data.y)
        ra, rb = a.bayes.result, b.bayes.result
        assert rb.method == "map" and rb.mode == ra.mode and b.bayes.posterior is None
        for name in ra.draws:
            np.testing.assert_array_equal(rb.draws[name], ra.draws[name])
        np.testing.assert_allclose(rb.components["level"].mean, ra.components["level"].mean, rtol=1e-10)
        assert b.fit.result is None   # there was no quick fit to restore
    finally:
        _close(a)
        _close(b)


def _zip(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, content in files.items():
            z.writestr(name, content)
    return out.getvalue()


def _with_manifest(content: bytes, **changes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(content)) as z:
        files = {n: z.read(n) for n in z.namelist()}
    manifest = json.loads(files["session.json"])
    manifest.update(changes)
    files["session.json"] = json.dumps(manifest).encode()
    return _zip(files)


def test_bad_files_are_refused_with_a_message_and_change_nothing():
    a = _session("bad-files")
    try:
        a.fit.run_quick_fit().result()
        good = a.save().getvalue()
        bundle = unpack(good)
        other = engine.OnlineFilter.from_posterior(bundle.quick_fit["spec"], bundle.quick_fit["params"],
                                                   a.data.y[:20] + 1.0)
        manifest = json.loads(zipfile.ZipFile(io.BytesIO(good)).read("session.json"))
        state = lambda: (a.data.source, a.priors.spec, id(a.fit.result), id(a.bayes.result), a.stream.status)
        before = state()
        cases = {
            b"just some text": "not a .zip archive",
            _zip({"notes.txt": b"hello"}): "no session.json",
            _zip({"session.json": b"{oops"}): "not valid JSON",
            _with_manifest(good, format="something-else"): "does not describe a StreamSSM session",
            _with_manifest(good, version=99): "version 99",
            _with_manifest(good, spec={"level": {"kind": "no_such_trend"}}): "not a valid model spec",
            _with_manifest(good, data={**bundle.data, "dataset": "atlantis"}): "unknown dataset 'atlantis'",
            _with_manifest(good, data={**bundle.data, "target": "rainfall"}): "does not fit the data",
            _with_manifest(good, quick_fit={**bundle.quick_fit, "params": {"sigma2.x": 1.0}}): "has parameters",
            _with_manifest(good, files=["posterior.nc"]): "lists posterior.nc but does not hold it",
            _with_manifest(good, spec={**manifest["spec"], "regression": {"columns": ["flow"]}}): "regresses on",
_zip({"session.json": json.dumps({**manifest, "files": ["posterior.nc"]}).encode(),
                  "posterior.nc": b"CDF garbage"}): "posterior.nc is not a readable posterior",
            pack(dataclasses.replace(bundle, belief=b"garbage")): "belief.npz",
            pack(dataclasses.replace(bundle, belief=snapshot_bytes(other)[:2000])): "belief.npz",   # torn
            pack(dataclasses.replace(bundle, belief=snapshot_bytes(other))): "built on other data",
        }
        for content, expected in cases.items():
            future = a.load(content, "bad.zip")
            with pytest.raises(SessionFileError):
                future.result()
            assert a.status == "error" and expected in a.message and "Nothing was changed" in a.message, a.message
            assert state() == before
        # a good file still loads afterwards
        a.load(good, "good.zip").result()
        assert a.status == "done"
    finally:
        _close(a)


def test_non_finite_numbers_are_written_as_json_and_read_back_identically():
    """A quick fit whose standard errors are NaN (an estimate on a bound) and whose AIC is infinite:
    session.json used to hold bare NaN, which is not JSON (a strict reader refuses it); it now holds
    their names as strings, and the numbers read back are the same, NaN for NaN."""
    spec = {"irregular": True, "level": {"kind": "local_level"}}
    quick = {"spec": spec, "params": {"sigma2.irregular": 15099.8, "sigma2.level": 1469.1},
             "se": {"sigma2.irregular": float("nan"), "sigma2.level": 1.5}, "loglik": -632.5,
             "aic": float("inf"), "bic": -float("inf"), "converged": True, "message": "ok", "n_obs": 100}
    data = {"source": "nile", "dataset": "nile", "upload": False, "time_column": "year", "target": "flow",
            "exog": [], "log_transform": False, "sort_rows": False}
    mode = {"sigma2.irregular": float("nan"), "sigma2.level": 2.0}
    draws = {"sigma2.irregular": np.array([1.0, 2.0]), "sigma2.level": np.array([3.0, 4.0])}
    bundle = SessionBundle(data, None, spec, quick, map_fit={"spec": spec, "mode": mode, "draws": draws,
                                                             "y": np.arange(3.0), "exog": None})
    content = pack(bundle)
    with zipfile.ZipFile(io.BytesIO(content)) as z:
        text = z.read("session.json").decode()

    def refuse(name):
        raise AssertionError(f"session.json holds bare {name}")

    manifest = json.loads(text, parse_constant=refuse)
    assert manifest["quick_fit"]["se"]["sigma2.irregular"] == "NaN" and manifest["quick_fit"]["aic"] == "Infinity"
    back = unpack(content)
    for key in ("params", "se"):
        np.testing.assert_array_equal(list(back.quick_fit[key].values()), list(quick[key].values()))
        assert list(back.quick_fit[key]) == list(quick[key])
    assert [back.quick_fit[k] for k in ("loglik", "aic", "bic")] == [quick[k] for k in ("loglik", "aic", "bic")]
    np.testing.assert_array_equal(list(back.map_fit["mode"].values()), list(mode.values()))
    with pytest.raises(SessionFileError, match="aic"):
        unpack(_with_manifest(content, quick_fit=dict(manifest["quick_fit"], aic="lots")))


def test_a_table_loaded_already_parsed_is_saved_as_csv_that_loads_back():
    """`DataModel.table_bytes` is what a session file keeps of an uploaded table: the uploaded bytes,
    or a table loaded already parsed (one series of a fleet) written out; either loads back."""
    a = DataModel(dataset="nile")
    assert a.table_bytes() == (DATASETS_DIR / "nile.csv").read_bytes()
    a.load_frame(a.frame.copy(), "one series", target="flow")
    b = DataModel(dataset="nile")
    assert b.load_upload(a.table_bytes(), "one_series.csv")
    np.testing.assert_array_equal(b.y, a.y)
