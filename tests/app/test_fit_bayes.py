"""Bayesian fit through the view-models: priors, MAP, a short NUTS run, cancel, save and reload."""

from __future__ import annotations

import json

import numpy as np
import panel as pn
import pytest

import engine
from app.viewmodels import DataModel, SpecModel
from app.viewmodels.fit_bayes import BayesFitModel
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
    alerts = [a for a in layout.select(pn.pane.Alert) if "fit-untrustworthy" in a.css_classes]
    assert alerts and alerts[0].alert_type == "danger" and d.reasons[0] in alerts[0].object
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
