"""The Learn tab with models of every size, and the quick fit's robustness to the views that draw
it: no component at all, a model too large to filter by itself, a long series shown in part."""

from __future__ import annotations

import numpy as np
import panel as pn
import pytest

import engine
from engine.system import diffuse_states
from app.viewmodels import DataModel, FitModel, LearnModel, SpecModel
from app.viewmodels import learn_model
from app.views import FitView, LearnView
from app.workers import SessionWorker


def session(worker, dataset="nile"):
    data = DataModel(dataset=dataset)
    spec = SpecModel(data)
    fit = FitModel(data, spec, worker)
    learn = LearnModel(data, spec, fit, worker)
    return data, spec, fit, learn


def settle(worker: SessionWorker) -> None:
    """Wait until the jobs submitted so far (and their callbacks) have run."""
    worker.submit(lambda: None, on_done=lambda _: None, on_error=lambda _: None).result()


def test_a_model_with_no_component_steps_and_fits(worker):
    """Level/trend 'none' with the irregular only: the step view used to raise a KeyError on its empty
    component table, and the quick fit, whose result it watches, stayed 'running' for ever."""
    data, spec, fit, learn = session(worker)
    learn_view, fit_view = LearnView(model=learn), FitView(model=fit)
    spec.level = "none"
    spec.irregular = True
    settle(worker)
    s = learn.step
    assert learn.error == "" and s is not None and s.components.empty
    assert s.predicted == 0.0 and s.innovation == pytest.approx(data.y[0]) and s.innov_var == s.obs_var
    fit.run_quick_fit().result()
    settle(worker)
    assert fit.status == "done" and fit.message.startswith("Fitted 100 observations.") and not fit_view._button.disabled
    assert learn.step is not None and learn.variances == {"sigma2.irregular": fit.result.params["sigma2.irregular"]}
    panel = learn_view._step()
    assert [p for p in panel.select(pn.pane.Markdown) if "no state components" in str(p.object)]


def test_a_failing_view_of_the_fit_never_leaves_the_fit_running(worker):
    """Whatever a watcher of the fit's result raises, the status leaves 'running' and the message
    names the failure, while the result itself is kept."""
    data, spec, fit, _ = session(worker)
    fit_view = FitView(model=fit)

    def broken(event):
        raise RuntimeError("this view cannot draw it")

    fit.param.watch(broken, "result")
    fit.run_quick_fit().result()
    assert fit.status == "done" and fit.result is not None and not fit_view._button.disabled
    assert "RuntimeError: this view cannot draw it" in fit.message
    assert fit.result.loglik == pytest.approx(float(engine.loglik(spec.spec, fit.result.params, data.y)), rel=1e-9)


def test_a_large_model_waits_for_the_learn_tab(worker):
    """A model with many states is not filtered by itself (it would hold the session's worker); the
    Learn tab's button runs it, and it then follows the variances like a small one."""
    data, spec, fit, learn = session(worker, "births")
    view = LearnView(model=learn)
    settle(worker)
    assert not learn.pending and learn.step is not None   # the catalogue's model (13 states) runs by itself
    spec.add_seasonal(30)   # 42 states over 3652 days: 6.4 million entries per covariance history
    settle(worker)
    assert len(data.y) * spec.spec.n_states ** 2 > learn_model.EAGER_ENTRIES
    assert learn.pending and learn.step is None and not learn.busy and view._run.visible
    assert [p for p in view._step().select(pn.pane.Markdown) if "Run the filter" in str(p.object)]
    learn.run()
    settle(worker)
    assert not learn.pending and not view._run.visible and learn.error == ""
    ref = engine.filter_series(spec.spec, dict(learn._params, **learn.variances), data.y)
    learn.t = 900
    np.testing.assert_allclose(learn.step.posterior_mean, np.asarray(ref.filtered_mean[900]), rtol=1e-9,
                               atol=1e-9 * float(np.abs(ref.filtered_mean[900]).max()))
    learn.variances = {k: 10 * v for k, v in learn.variances.items()}
    settle(worker)
    assert learn.step.innov_var > float(ref.innov_var[900])
    spec.add_seasonal(31)   # another large model waits again
    settle(worker)
    assert learn.pending and learn.step is None


def test_a_long_series_is_shown_from_its_start_within_the_budget(worker, monkeypatch):
    """The step view keeps three covariances per step: beyond its budget it shows the first steps,
    says so, and those steps are exactly the whole series' filter (the filter is causal)."""
    data, spec, fit, learn = session(worker)
    monkeypatch.setattr(learn_model, "HISTORY_BUDGET", 3 * 8 * 5 ** 2 * 40)   # 5 states for 40 steps
    view = LearnView(model=learn)
    spec.level = "local_linear_trend"
    spec.add_seasonal(4)
    assert spec.spec.n_states == 5
    shown = 40
    assert learn.n_obs == shown and learn.param.t.bounds == (0, shown - 1)
    assert f"first {shown} of 100 observations" in learn.notice
    settle(worker)
    ref = engine.filter_series(spec.spec, dict(learn._params, **learn.variances), data.y)
    view._t.value = 500   # kept inside the steps shown
    assert learn.t == shown - 1 and learn.step.t == shown - 1
    np.testing.assert_allclose(learn.step.posterior_cov, np.asarray(ref.filtered_cov[shown - 1]), rtol=1e-9,
                               atol=1e-9 * float(np.abs(ref.filtered_cov[shown - 1]).max()))
    view._t.value = None   # an emptied box shows the current index again
    assert learn.t == shown - 1 and view._t.value == shown - 1
    assert [a for a in view._step().select(pn.pane.Alert) if "first" in str(a.object)]


def test_a_model_too_large_to_step_through_is_explained(worker, monkeypatch):
    data, spec, fit, learn = session(worker)
    monkeypatch.setattr(learn_model, "HISTORY_BUDGET", 3 * 8 * 20 ** 2 * 10)
    spec.add_seasonal(20)
    settle(worker)
    assert learn.step is None and not learn.busy and "Use fewer states" in learn.error


def test_an_impossible_model_starts_no_filter(worker):
    """Period 2500 on Nile's 100 observations used to start a filter of 2499 states in the worker on
    the keystroke (23 GB, then the kernel killed the server): the spec is refused, and nothing runs."""
    data, spec, fit, learn = session(worker)
    spec.add_seasonal(2500)
    assert spec.spec is None and learn.step is None and not learn.busy
    assert learn.error == "Choose valid data and a valid model first."


def test_each_step_is_told_as_the_engine_computes_it(worker):
    """A trend + seasonal + cycle + AR model through its diffuse phase and after: each step's kind
    follows F∞_t (diffuse while F∞_t > 0), its table shows F∞_t and F*_t on diffuse steps and
    F_t ≥ H on standard ones, the term it shows is the one its words give (−½(log 2π + log F∞_t)
    on a diffuse step, the Gaussian log-density of v_t on a standard one), and the terms add up to
    the engine's log-likelihood."""
    data, spec, _, learn = session(worker, "airpassengers")
    spec.cycle, spec.ar_order = True, 1
    settle(worker)
    assert learn.error == "" and learn.step is not None
    run_spec, params, y, exog, _ = learn._run
    log_2pi = np.log(2 * np.pi)
    kinds, total = [], 0.0
    for t in range(learn.n_obs):
        learn.t = t
        s = learn.step
        rows = dict(learn.summary_rows())
        term_label = next(k for k in rows if k.startswith("log-likelihood term"))
        assert rows[term_label] == s.loglik
        if s.diffuse_var > 0:
            assert s.kind == "diffuse"
            assert rows["diffuse predictive variance F∞_t = Z P∞_t Zᵀ"] == s.diffuse_var
            assert rows["finite predictive variance F*_t = Z P*_t Zᵀ + H"] >= s.obs_var
            assert "log F∞_t" in term_label
            assert s.loglik == pytest.approx(-0.5 * (log_2pi + np.log(s.diffuse_var)), rel=1e-12)
            assert "Diffuse step" in learn.explanation() and "no likelihood term" not in learn.explanation()
        else:
            assert s.kind == "standard" and not any("F∞" in k for k in rows)
            F = rows["predictive variance F_t = Z P_t Zᵀ + H"]
            assert F >= s.obs_var > 0
            assert s.loglik == pytest.approx(-0.5 * (log_2pi + np.log(F) + s.innovation ** 2 / F), rel=1e-12)
            assert "v_t² / F_t" in learn.explanation()
        kinds.append(s.kind)
        total += s.loglik
    first_standard = kinds.index("standard")
    assert set(kinds[:first_standard]) == {"diffuse"} and set(kinds[first_standard:]) == {"standard"}
    # each diffuse step removes one flat direction: at most as many as the states that start diffuse
    assert 0 < first_standard <= len(diffuse_states(engine.layout(run_spec)))
    assert total == pytest.approx(float(engine.loglik(run_spec, params, y, exog)), rel=1e-9)
    assert [c for c in learn.step.components["component"]][:2] == ["level", "trend"]
