"""The plots name what they draw: each component's y axis is the component (in the engine's vocabulary),
every band has the one convention of the app (95% equal-tailed) under one label, the forest plot's
rows are the parameters; the NUTS bands are the same convention as the quick fit's."""

from __future__ import annotations

import holoviews as hv
import numpy as np
import pytest
from scipy.stats import norm

import engine
from app.plots import BAND_LABEL, BAND_PROB, BAND_Z, decomposition_plot, forest_plot
from app.viewmodels.fit_bayes import code_names
from app.views.fit_bayes_view import band_plot
from engine.data import load_dataset
from engine.spec import ModelSpec, param_names

SPEC = ModelSpec.from_dict({"irregular": True, "level": {"kind": "local_linear_trend"},
                            "autoregressive": {"order": 1}})
PARAMS = {"sigma2.irregular": 3000.0, "sigma2.level": 500.0, "sigma2.trend": 1.0, "sigma2.ar": 200.0,
          "ar.L1": 0.5}


@pytest.fixture(scope="module")
def nile():
    return load_dataset("nile")["flow"].to_numpy(dtype=float)


def figures(layout: hv.Layout):
    """The Bokeh figure of each panel of a layout, in order."""
    return [hv.render(panel, backend="bokeh") for panel in layout]


def test_band_convention_is_one_number_and_one_label():
    assert BAND_Z == pytest.approx(norm.ppf(0.5 + BAND_PROB / 2), rel=1e-12)
    assert BAND_LABEL.startswith(f"{BAND_PROB:.0%}")


def test_decomposition_axes_are_the_engine_components(nile):
    sm = engine.smooth(SPEC, PARAMS, nile)
    comps = {k: (np.asarray(m), np.sqrt(np.clip(np.asarray(v), 0, None))) for k, (m, v) in sm.components.items()}
    assert "trend" in comps
    figs = figures(decomposition_plot(np.arange(len(nile)), nile, "flow", comps))
    labels = [f.yaxis[0].axis_label for f in figs]
    assert labels == ["flow", *[k for k in comps if k != "level"]]
    titles = [f.title.text for f in figs]
    assert all(BAND_LABEL in t for t in titles) and not [t for t in titles if "slope" in t or "HDI" in t]
    # the stacked panels' time axes line up: each spans the data exactly (the observations' panel too)
    assert {(f.x_range.start, f.x_range.end) for f in figs} == {(0, len(nile) - 1)}


def test_posterior_bands_are_equal_tailed_and_match_the_quick_fits_for_one_draw(nile):
    """With one draw the posterior of a component is Gaussian: its band must be mean ± BAND_Z sd,
    the quick fit's band; with many, the 2.5% and 97.5% quantiles of the draws' mixture."""
    one = {k: np.array([v]) for k, v in PARAMS.items()}
    bands = engine.posterior_components(SPEC, one, nile, hdi_prob=BAND_PROB, equal_tailed=True)
    sm = engine.smooth(SPEC, PARAMS, nile)
    for name, (mean, var) in sm.components.items():
        mean, sd = np.asarray(mean), np.sqrt(np.asarray(var))
        ok = np.isfinite(sd) & (sd < 1e6)
        np.testing.assert_allclose(bands[name].lower[ok], (mean - BAND_Z * sd)[ok], rtol=1e-7, atol=1e-6)
        np.testing.assert_allclose(bands[name].upper[ok], (mean + BAND_Z * sd)[ok], rtol=1e-7, atol=1e-6)
    figs = figures(band_plot(np.arange(len(nile)), nile, "flow", bands))
    assert [f.yaxis[0].axis_label for f in figs] == list(bands)
    assert all(f"posterior mean and {BAND_LABEL}" in f.title.text for f in figs)
    assert {(f.x_range.start, f.x_range.end) for f in figs} == {(0, len(nile) - 1)}
    assert all(f.sizing_mode in ("stretch_width", "stretch_both", "scale_width") for f in figs)


def test_forest_rows_are_the_parameters():
    rng = np.random.default_rng(0)
    draws = {n: rng.normal(size=(2, 40)) + i for i, n in enumerate(param_names(SPEC))}
    fig = forest_plot(draws)
    assert sorted(fig.y_range.factors) == sorted(draws) and fig.sizing_mode == "stretch_width"
    data = fig.renderers[0].data_source.data
    for i, n in enumerate(data["parameter"]):
        q = np.quantile(draws[n].ravel(), [0.025, 0.975])
        assert (data["lo95"][i], data["hi95"][i]) == pytest.approx(tuple(q))


def test_parameter_names_in_messages_are_code():
    names = ["sigma2.ar", "ar.L1", "sigma2.level"]
    text = "R-hat > 1.01 for ['sigma2.ar', 'ar.L1'] (worst 1.2); the posterior of sigma2.level lies above"
    out = code_names(text, names)
    assert out == ("R-hat > 1.01 for ['`sigma2.ar`', '`ar.L1`'] (worst 1.2); the posterior of `sigma2.level` "
                   "lies above")
    assert code_names(out, names) == out   # names already set as code stay as they are
