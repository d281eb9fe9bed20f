"""Bayesian fit through the view-models: priors, MAP, a short NUTS run, cancel, save and reload."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import panel as pn
import pytest

import engine
from app.viewmodels import DataModel, FitModel, SpecModel
from app.viewmodels.fit_bayes import BayesFitModel, ForecastModel, code_names, forecast_bands, time_axis
from app.viewmodels.priors_model import PriorsModel
from app.views.fit_bayes_view import BayesFitView
from app.workers import SessionWorker


@pytest.fixture
def bayes():
    worker = SessionWorker("test-bayes")
    data = DataModel(dataset="nile")
    priors = PriorsModel(data, SpecModel(data))
    yield BayesFitModel(data, priors, worker)
    worker.shutdown()


def test_priors_show_defaults_and_explain_bad_edits(bayes):
    p = bayes.priors
    data = bayes.data
    assert p.defaults == engine.default_priors(p.spec_model.spec, data.y, data.exog_frame)
    assert not p.set_prior("sigma2.level", {"dist": "normal", "loc": 0, "scale": 1})
    assert "sigma2.level" in p.errors["sigma2.level"] and "variance" in p.errors["sigma2.level"]
    assert not p.set_prior("sigma2.level", {"dist": "half_normal", "scale": -2})
    assert "positive" in p.errors["sigma2.level"]
    assert bayes.run_map() is None and "Fix the priors" in bayes.message  # a refused edit blocks the fit
    assert p.set_prior("sigma2.level", {"dist": "inverse_gamma", "concentration": 2, "rate": 1000})
    assert p.errors == {}
    assert json.loads(p.spec_text)["priors"] == {"sigma2.level": {"dist": "inverse_gamma", "concentration": 2,
                                                                  "rate": 1000}}
    p.reset()
    assert "priors" not in json.loads(p.spec_text)


def test_map_matches_engine(bayes):
    bayes.run_map().result()
    ref = engine.fit_map(bayes.priors.spec, bayes.data.y)
    assert bayes.status == "done" and bayes.result.method == "map"
    np.testing.assert_allclose(bayes.result.summary["mode"], list(ref.params.values()), rtol=1e-6)


def test_short_nuts_is_flagged_saved_reloaded_and_cancel_works(bayes):
    bayes.param.update(chains=2, warmup=50, draws=50)
    seen = []
    bayes.param.watch(lambda e: seen.append(e.new), "progress")
    bayes.run_nuts().result()
    assert bayes.status == "done" and seen[-1] == 100 and seen == sorted(seen)
    d = bayes.result.diagnosis
    assert not d.trustworthy and bayes.message.startswith("NUTS finished: not trustworthy")
    layout = pn.panel(BayesFitView(model=bayes))
    layout.get_root()  # the results (bands, ArviZ plots, diagnostics, checks) render
    assert any(t._names[:2] == ["Trace", "Rank"] for t in layout.select(pn.Tabs))
    alerts = [a for a in layout.select(pn.pane.Alert) if "fit-untrustworthy" in a.css_classes]
    shown = code_names(d.reasons[0], bayes.result.summary["parameter"])   # parameter names set as code
    assert alerts and alerts[0].alert_type == "danger" and shown in alerts[0].object
    # save and reload: the same posterior comes back with the same verdict
    saved = bayes.posterior_file().getvalue()
    before = np.asarray(bayes.posterior.posterior["sigma2.level"])
    bayes.load_file(saved, "posterior.nc").result()
    np.testing.assert_array_equal(np.asarray(bayes.posterior.posterior["sigma2.level"]), before)
    assert bayes.load_file(b"{not json", "spec.json") is None and "Could not load spec.json" in bayes.message
    # cancel: the fit stops with a message and the app stays usable
    bayes.param.update(warmup=5000, draws=5000)
    future = bayes.run_nuts()
    bayes.cancel()
    with pytest.raises(engine.FitCancelled):
        future.result()
    assert bayes.status == "cancelled" and "cancelled" in bayes.message
    assert bayes.posterior is not None and not bayes.busy  # the previous posterior is kept; new fits may start


def _drain(worker):
    """Wait until every job queued in the worker so far (and the jobs their callbacks queued) has run."""
    for _ in range(3):
        worker.submit(lambda: None, on_done=lambda _: None, on_error=lambda _: None).result()


def test_forecast_of_one_draw_is_the_plug_in_forecast_on_the_data_dates(bayes):
    """With the quick fit's estimate (S = 1 draw) the posterior forecast is the plug-in Gaussian forecast."""
    data = bayes.data
    spec = bayes.priors.spec
    params = engine.fit_mle(spec, data.y).params
    bands = forecast_bands(spec, params, data.y, 7, data.index, "estimate")
    for level, (lo, hi) in ((0.95, ("lo95", "hi95")), (0.5, ("lo50", "hi50"))):
        ref = engine.forecast(spec, params, data.y, 7, level=level)
        np.testing.assert_allclose(bands.future[lo], ref.lower, rtol=1e-8)
        np.testing.assert_allclose(bands.future[hi], ref.upper, rtol=1e-8)
    np.testing.assert_allclose(bands.future["mean"], engine.forecast(spec, params, data.y, 7).mean, rtol=1e-10)
    # the dates continue the yearly index; the history is the last observations
    assert list(bands.future["time"]) == list(pd.date_range("1971-01-01", periods=7, freq="YS"))
    assert len(bands.history) == 60 and bands.history["time"].iloc[-1] == data.index[-1]
    np.testing.assert_array_equal(bands.history["y"], data.y[-60:])
    assert list(time_axis(pd.RangeIndex(5), 5, 2)) == list(range(7))   # no dates: positions


def test_forecast_follows_the_latest_fit_in_the_worker(bayes):
    data, worker = bayes.data, bayes.worker
    fit = FitModel(data, bayes.priors.spec_model, worker)
    model = ForecastModel(data, worker, bayes=bayes, fit=fit)
    fit.run_quick_fit().result()
    _drain(worker)
    assert model.status == "done" and "quick fit" in model.result.label and len(model.result.future) == 24
    bayes.run_map().result()
    _drain(worker)
    r = bayes.result
    ref = engine.posterior_forecast(r.spec, r.draws, data.y, 24, levels=(0.5, 0.95))
    f = model.result.future
    assert model.result.label.startswith("MAP, Laplace draws (S = 500)")
    np.testing.assert_allclose(f["mean"], ref.mean, rtol=1e-10)
    np.testing.assert_allclose(f["lo95"], ref.band(0.95)[0], rtol=1e-10)
    assert (f["lo95"] < f["lo50"]).all() and (f["lo50"] < f["hi50"]).all() and (f["hi50"] < f["hi95"]).all()
    width = f["hi95"] - f["lo95"]
    assert (np.diff(width) > 0).all()   # a random-walk level: the uncertainty grows with the horizon
    model.steps = 5
    _drain(worker)
    assert len(model.result.future) == 5 and model.status == "done"
