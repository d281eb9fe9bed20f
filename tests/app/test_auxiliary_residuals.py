"""The Fit tab's residual checks: the auxiliary residuals of a quick fit, the points beyond ±1.96
named by date. On the Nile (local level at Durbin & Koopman's estimates) they find what Durbin &
Koopman (2012, §2.12.3) find: the outlier of 1913 and the break after the Aswan dam of 1898-99."""

from __future__ import annotations

import holoviews as hv
import numpy as np
import panel as pn
import pytest

import engine
from app.plots import BAND_Z, auxiliary_plot, beyond_band
from app.viewmodels import DataModel, FitModel, SpecModel
from app.viewmodels.fit_model import from_fields
from app.views.fit_view import FitView
from engine.spec import ModelSpec

SPEC = ModelSpec.from_dict({"irregular": True, "level": {"kind": "local_level"}})
FIELDS = {"params": {"sigma2.irregular": 15099.0, "sigma2.level": 1469.1}, "se": {"sigma2.irregular": 0.0,
          "sigma2.level": 0.0}, "loglik": 0.0, "aic": 0.0, "bic": 0.0, "converged": True, "message": "",
          "n_obs": 100}


@pytest.fixture(scope="module")
def nile():
    df = engine.load_dataset("nile")
    return df.index, df["flow"].to_numpy(dtype=float)


@pytest.fixture(scope="module")
def fit(nile):
    return from_fields(SPEC, FIELDS, nile[1], None)


def test_quick_fit_keeps_the_auxiliary_residuals_of_its_smoother(nile, fit):
    sm = engine.smooth(SPEC, FIELDS["params"], nile[1])
    assert list(fit.auxiliary) == ["irregular", "level"]
    np.testing.assert_array_equal(fit.auxiliary["irregular"], np.asarray(sm.auxiliary_measurement))
    np.testing.assert_array_equal(fit.auxiliary["level"], np.asarray(sm.auxiliary_state)[:, 0])


def test_the_nile_outlier_and_break_are_named_by_date(nile, fit):
    index = nile[0]
    irregular, level = beyond_band(index, fit.auxiliary["irregular"]), beyond_band(index, fit.auxiliary["level"])
    assert irregular[0][1] == "1913" and irregular[0][2] < -BAND_Z
    assert level[0][1] == "1898" and level[0][2] < -BAND_Z      # η_1898 moves the level of 1899
    for named, values in ((irregular, fit.auxiliary["irregular"]), (level, fit.auxiliary["level"])):
        outside = np.abs(np.nan_to_num(values)) > BAND_Z
        assert sorted(i for i, _, _ in named) == list(np.flatnonzero(outside))
        assert all(abs(a[2]) >= abs(b[2]) for a, b in zip(named, named[1:]))


def test_beyond_band_skips_undefined_residuals():
    assert beyond_band(range(4), np.array([np.nan, 2.5, -1.0, -3.0])) == [(3, "3", -3.0), (1, "1", 2.5)]


def test_auxiliary_plot_draws_the_band_and_names_the_points_beyond_it(nile, fit):
    layout = auxiliary_plot(nile[0], fit.auxiliary, n_named=3)
    assert len(layout) == 2
    for panel, (name, values) in zip(layout, fit.auxiliary.items()):
        lines = sorted(el.data for el in panel.traverse(lambda e: e, [hv.HLine]))
        assert lines == pytest.approx([-BAND_Z, BAND_Z])
        labels = panel.traverse(lambda e: e, [hv.Labels])
        named = beyond_band(nile[0], values)
        shown = [t for element in labels for t in element.dimension_values("date")]
        assert sorted(shown) == sorted(t for _, t, _ in named[:3])
        red = panel.traverse(lambda e: e, [hv.Scatter])[1]
        assert len(red) == len(named) and f"{len(named)} beyond ±1.96" in panel.opts.get().kwargs["title"]
        hv.render(panel, backend="bokeh")   # draws


def test_the_fit_tab_shows_the_residual_checks(worker, fit):
    data = DataModel(dataset="nile")
    model = FitModel(data, SpecModel(data), worker)
    view = FitView(model=model)
    model._done(fit, model._inputs())     # as a finished quick fit does
    panel = view._results()
    panes = [p for p in panel.select(pn.pane.HoloViews) if "auxiliary-residuals" in p.css_classes]
    assert len(panes) == 1 and len(panes[0].object) == len(fit.auxiliary) == 2
    assert [p for p in panel.select(pn.pane.Markdown) if "Residual checks" in str(p.object)]
