"""View-model tests without a server: set parameters, trigger actions, check against references."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

import engine
from app.codegen import pymc_extras_code, statsmodels_code
from app.viewmodels import DataModel, FitModel, LearnModel, SpecModel
from app.viewmodels.learn_model import filter_step
from app.workers import SessionWorker, unfinished_jobs, worker_threads
from engine.spec import TREND_KINDS, ModelSpec


@pytest.fixture
def models(worker):
    data = DataModel(dataset="nile")
    spec = SpecModel(data)
    fit = FitModel(data, spec, worker)
    learn = LearnModel(data, spec, fit, worker)
    return data, spec, fit, learn


def test_data_model_loads_catalogue_and_upload_and_reports_errors():
    data = DataModel(dataset="nile")
    assert data.target == "flow" and data.y.shape == (100,) and data.error == ""
    assert not data.load_upload(b"year,flow\n1871,1\n1872,oops\n", "bad.csv")
    assert "'flow'" in data.error and "line 3" in data.error and "bad.csv" in data.error
    assert data.source == "nile"  # the previous data stays usable
    assert data.load_upload(b"date,a,b\n2020-01-01,1,2\n2020-02-01,3,4\n2020-03-01,5,6\n", "ok.csv")
    assert data.error == "" and data.source == "ok.csv" and data.target == "a"
    data.exog = ["b"]
    data.target = "b"  # a target is never also a regressor
    assert data.exog == []
    data.dataset = "airpassengers"
    assert data.log_transform and data.target_label == "log(passengers)"
    np.testing.assert_allclose(data.y, np.log(engine.load_dataset("airpassengers")["passengers"].to_numpy()))


def test_data_model_sorts_only_when_asked():
    data = DataModel(dataset="nile")
    raw = b"year,flow\n1872,2\n1871,1\n"
    assert not data.load_upload(raw, "u.csv") and "increasing order" in data.error
    data.sort_rows = True
    assert data.load_upload(raw, "u.csv")
    np.testing.assert_array_equal(data.y, [1.0, 2.0])


@pytest.mark.parametrize("kind", list(TREND_KINDS))
def test_every_level_kind_gives_a_valid_spec_and_code(kind):
    data = DataModel(dataset="nile")
    spec = SpecModel(data)
    spec.level = kind
    spec.irregular = True
    assert spec.errors == {} and spec.spec is not None
    expected = None if kind == "irregular" else kind  # the 'irregular' kind means no level at all
    assert json.loads(spec.spec_text).get("level", {}).get("kind") == expected
    assert "UnobservedComponents(" in spec.statsmodels_text and "st.MeasurementError" in spec.pymc_text


def test_spec_model_builds_every_part_and_explains_bad_choices():
    data = DataModel(dataset="seatbelts")
    spec = SpecModel(data)
    assert spec.regression_columns == ["petrol_price", "law"]  # from the catalogue's exog
    assert [x["period"] for x in spec.seasonals] == [12]  # the catalogue's suggested spec
    spec.add_seasonal(6, "dummy")
    spec.add_seasonal(365.25, "trig", harmonics=2, stochastic=False)
    spec.param.update(cycle=True, cycle_period_low=8, cycle_period_high=40, ar_order=2,
                      regression_mode="time_varying")
    assert spec.errors == {}
    s = ModelSpec.from_json(spec.spec_text)
    assert [x.form for x in s.seasonal] == ["dummy", "dummy", "trig"] and s.cycle.period_bounds == (8, 40)
    assert s.ar_order == 2 and s.regression.coefficients == "time_varying"
    spec.update_seasonal(1, period=7.5)  # fractional dummy period: explained next to that seasonal
    assert "seasonal[1]" in spec.errors and "integer period" in spec.errors["seasonal[1]"]
    assert spec.spec is None and spec.spec_text == ""
    spec.remove_seasonal(1)
    assert spec.errors == {}
    spec.cycle_period_low = 50
    assert "cycle" in spec.errors and "period_bounds" in spec.errors["cycle"]
    spec.cycle_period_low = 8
    spec.ar_order = 500  # longer than the data: spec.check_data explains it
    assert "ar" in spec.errors and "series length" in spec.errors["ar"]


def test_statsmodels_code_runs_and_matches_the_engine():
    """The generated statsmodels code builds the same model: same parameter names and log-likelihood."""
    from statsmodels.tsa.statespace.structural import UnobservedComponents  # noqa: F401

    df = engine.load_dataset("seatbelts")
    spec = ModelSpec.from_dict({"level": {"kind": "local_level"}, "seasonal": [{"period": 12}],
                                "autoregressive": {"order": 1}, "regression": {"columns": ["law"]}})
    y, X = np.log(df["drivers"].to_numpy()), df[["law"]]
    scope: dict = {"y": y, "X": X}
    code = statsmodels_code(spec).replace("result = model.fit(disp=False)\nprint(result.summary())", "")
    exec(code, scope)
    model = scope["model"]
    assert list(model.param_names) == engine.param_names(spec)
    params = np.array([0.003, 0.0003, 0.0001, 0.0005, 0.5, -0.2])
    np.testing.assert_allclose(engine.loglik(spec, params, y, X), model.loglike(params), rtol=1e-6)


def test_pymc_code_names_only_parameters_the_components_define():
    spec = ModelSpec.from_dict({"level": {"kind": "smooth_trend"}, "seasonal": [{"period": 4, "form": "trig"}],
                                "cycle": {"period_bounds": [6, 30], "damped": True}, "autoregressive": 1})
    code = pymc_extras_code(spec, data_sd=2.0)
    compile(code, "<pymc>", "exec")
    for name in ("initial_trend", "sigma_trend", "params_seasonal_4_trig", "sigma_seasonal_4_trig",
                 "params_cycle", "length_cycle", "dampening_factor_cycle", "sigma_cycle", "params_ar",
                 "sigma_ar", "sigma_irregular"):
        assert f'"{name}"' in code
    assert "innovations_order=[0, 1]" in code and "estimate_cycle_length=True" in code


def test_quick_fit_in_the_worker_matches_fit_mle(models):
    data, spec, fit, learn = models
    future = fit.run_quick_fit()
    future.result()
    assert fit.status == "done", fit.message
    ref = engine.fit_mle(spec.spec, data.y)
    for name, value in ref.params.items():
        assert fit.result.params[name] == pytest.approx(value, rel=1e-6)
    assert fit.result.loglik == pytest.approx(ref.loglik, rel=1e-9)
    sm = engine.smooth(spec.spec, ref.params, data.y)
    np.testing.assert_allclose(fit.result.components["level"][0], sm.components["level"][0], rtol=1e-6)
    assert not fit.stale
    spec.level = "local_linear_trend"
    assert fit.stale


def test_quick_fit_refuses_invalid_model_with_a_message(models):
    data, spec, fit, _ = models
    spec.add_seasonal(2.5, "dummy")
    assert fit.run_quick_fit() is None
    assert fit.status == "error" and "integer period" in fit.message


def test_learn_step_is_the_engine_filter_taken_apart(models):
    """a_{t|t} = a_t + K v_t and P_{t|t} = P_t − K F Kᵀ with the engine's moments; ŷ_t + v_t = y_t."""
    data, spec, fit, learn = models
    spec.level = "local_linear_trend"
    spec.add_seasonal(4, "dummy")
    learn.worker.submit(lambda: None, on_done=lambda _: None, on_error=lambda _: None).result()
    assert learn.step is not None, learn.error
    params = dict(learn._params, **learn.variances)
    res = engine.filter_series(spec.spec, params, data.y)
    kinds = []
    for t in (0, 3, 10, 60):
        learn.t = t
        s = learn.step
        kinds.append(s.kind)
        np.testing.assert_allclose(s.posterior_mean, np.asarray(res.filtered_mean[t]), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(s.predicted + s.innovation, data.y[t], rtol=1e-12)
        if s.kind == "standard":
            np.testing.assert_allclose(s.posterior_mean, s.prior_mean + s.gain * s.innovation, rtol=1e-8, atol=1e-8)
            np.testing.assert_allclose(s.posterior_cov, s.prior_cov - np.outer(s.gain, s.gain) * s.innov_var,
                                       rtol=1e-7, atol=1e-7 * np.abs(s.prior_cov).max())
            share = s.components.set_index("component")["share of innovation"]
            assert share.drop("trend").sum() == pytest.approx(1 - s.obs_var / s.innov_var, rel=1e-8)
    assert kinds[0] == "diffuse" and kinds[-1] == "standard"
    learn.t = 60
    learn.forward()
    assert learn.t == 61 and learn.step.t == 61
    learn.back()
    learn.back()
    assert learn.step.t == 59
    before = learn.step.innov_var
    learn.variances = dict(learn.variances, **{"sigma2.irregular": learn.variances["sigma2.irregular"] * 100})
    learn.worker.submit(lambda: None, on_done=lambda _: None, on_error=lambda _: None).result()
    assert learn.step.innov_var > before


def test_learn_step_on_missing_observation():
    data = DataModel(dataset="co2")
    spec = ModelSpec.from_dict({"level": "local_level"})
    y = data.y
    t = int(np.flatnonzero(np.isnan(y))[0])
    params = {"sigma2.irregular": 0.1, "sigma2.level": 0.2}
    s = filter_step(spec, params, y, None, engine.filter_series(spec, params, y), t)
    assert s.kind == "missing" and np.all(s.gain == 0)
    np.testing.assert_allclose(s.posterior_mean, s.prior_mean)


def test_worker_stops_its_thread_and_refuses_new_jobs():
    w = SessionWorker("stoptest")
    got = []
    w.submit(lambda x: x * 2, 21, on_done=got.append, on_error=got.append).result()
    assert got == [42] and len(worker_threads("stoptest")) == 1
    failed = w.submit(lambda: 1 / 0, on_done=got.append, on_error=got.append)
    with pytest.raises(ZeroDivisionError):
        failed.result()
    assert isinstance(got[-1], ZeroDivisionError)
    assert w.shutdown() == 0 and worker_threads("stoptest") == []
    with pytest.raises(RuntimeError, match="closed"):
        w.submit(lambda: 1, on_done=got.append, on_error=got.append)


def test_a_closed_sessions_running_job_is_unfinished_until_it_ends():
    """`unfinished_jobs` lists a job that outlives its session's close (the suite waits on it)."""
    w = SessionWorker("outlives")
    release = threading.Event()
    job = w.submit(release.wait, 60, on_done=lambda _: None, on_error=lambda _: None)
    while not job.running():
        time.sleep(0.01)
    assert w.shutdown() == 1                        # running: the close does not wait for it
    assert job in unfinished_jobs()
    release.set()
    job.result()
    assert job not in unfinished_jobs()


def test_quick_fit_passes_an_ill_conditioned_start_to_the_page(models):
    """The engine's caution about an ill-conditioned diffuse start reaches the fit's message and
    survives a session file's round trip of the fit."""
    from app.viewmodels.fit_model import from_fields, quick_fit

    _, _, fit, _ = models
    y = engine.load_dataset("births")["births"].to_numpy(dtype=float)[:400]
    spec = ModelSpec.from_dict({"level": {"kind": "local_level"},
                                "seasonal": [{"period": 7, "form": "trig", "harmonics": 3},
                                             {"period": 365, "form": "trig", "harmonics": 2}]})
    with pytest.warns(engine.DiffuseConditioningWarning):
        result = quick_fit(spec, y, None)
    assert len(result.warnings) == 1 and "ill-conditioned" in result.warnings[0]
    assert from_fields(spec, result.fields(), y, None).warnings == result.warnings
    fit._done(result, None)
    assert fit.status == "done" and "Caution: the exact-diffuse start is ill-conditioned" in fit.message


def test_a_running_quick_fit_shows_its_phase(models):
    _, _, fit, _ = models
    shown = []
    fit.param.watch(lambda e: shown.append(e.new), ["message"])
    fit.run_quick_fit().result()
    assert fit.status == "done" and fit.phase == ""
    running = [m for m in shown if m.startswith("Fitting by maximum likelihood: ")]
    for phase in ("compiling", "optimising from start 1 of 2", "standard errors", "smoothing the components"):
        assert any(phase in m for m in running), (phase, running)
    assert shown[-1].startswith("Fitted 100 observations.")


def test_a_fit_that_did_not_converge_is_never_shown_as_a_good_one(models):
    """Its status box is not green, says why the optimiser stopped and explains each undefined
    standard error; the same fit that converged is green."""
    from app.viewmodels.fit_model import from_fields
    from app.views.fit_view import FitView

    data, spec, fit, _ = models
    view = FitView(model=fit)
    stopped = engine.fit_mle(spec.spec, data.y, maxiter=1)
    fields = {"params": stopped.params, "se": {**stopped.se, "sigma2.level": float("nan")},
              "loglik": stopped.loglik, "aic": stopped.aic, "bic": stopped.bic, "converged": stopped.converged,
              "message": stopped.message, "n_obs": stopped.n_obs,
              "se_notes": {"sigma2.level": "at a boundary: variance estimated at 0 (0)"}}
    result = from_fields(spec.spec, fields, data.y, None)
    fit._done(result, fit._inputs())
    assert fit.status == "done" and not fit.converged
    assert "did not converge: stopped at the iteration limit (1 iterations)" in fit.message
    assert "1 of 2 standard errors are not defined" in fit.message
    assert view._status.alert_type == "warning"
    assert list(result.table()["note"]) == ["", "at a boundary: variance estimated at 0 (0)"]
    assert from_fields(spec.spec, result.fields(), data.y, None).se_notes == result.se_notes
    fit.run_quick_fit().result()
    assert fit.converged and view._status.alert_type == "success" and "not converge" not in fit.message
