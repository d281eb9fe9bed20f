"""The Bayesian part of the Fit tab: MAP and NUTS controls, live progress, cancel, results, save/reload;
and the forecast panel of the latest fit."""

from __future__ import annotations

import warnings

import arviz as az
import holoviews as hv
import numpy as np
import panel as pn
import param

from ..plots import _OPTS, BAND_LABEL, band_area, component_panel, forest_plot
from ..viewmodels.fit_bayes import BayesFitModel, ForecastBands, ForecastModel, code_names


def band_plot(index, y, label, components) -> hv.Layout:
    """Observed series with each component's posterior mean and 95% equal-tailed band."""
    x = np.asarray(index)
    panels = []
    for name, band in components.items():
        panels.append(component_panel(x, band.mean, band.lower, band.upper, name, "#e07b39",
                                      f"{name}: posterior mean and {BAND_LABEL}", y if name == "level" else None))
    return hv.Layout(panels).cols(1).opts(shared_axes=False)


def check_plots(index, check) -> hv.Layout:
    """Standardised one-step residuals over time and the PIT histogram (flat when the model fits)."""
    x = np.asarray(index)
    ok = np.isfinite(check.residual)
    res = hv.Scatter((x[ok], check.residual[ok]), "time", "standardised residual").opts(
        title="one-step standardised residuals", **_OPTS)
    counts, edges = np.histogram(check.pit[np.isfinite(check.pit)], bins=10, range=(0, 1))
    pit = hv.Histogram((edges, counts), kdims=["PIT"], vdims=["count"]).opts(title="PIT histogram", **_OPTS)
    return (res + pit).cols(2).opts(shared_axes=False)


class BayesFitView(pn.viewable.Viewer):
    model = param.ClassSelector(class_=BayesFitModel)

    def __init__(self, **params):
        super().__init__(**params)
        m, w = self.model, pn.widgets
        self._map = w.Button(label="MAP fit", color="primary")
        self._nuts = w.Button(label="Run NUTS", color="primary")
        self._cancel = w.Button(label="Cancel", color="warning", disabled=True)
        self._map.on_click(lambda _: m.run_map())
        self._nuts.on_click(lambda _: m.run_nuts())
        self._cancel.on_click(lambda _: m.cancel())
        self._bar = pn.indicators.Progress(value=0, max=100, width=400, css_classes=["nuts-progress"])
        self._status = pn.pane.Alert("", visible=False, sizing_mode="stretch_width")
        m.param.watch(self._on_status, ["status", "phase", "message", "progress"])
        self._on_status()
        save = pn.Row(w.FileDownload(callback=m.spec_file, filename="spec.json", label="Download spec (JSON)"),
                      w.FileDownload(callback=m.posterior_file, filename="posterior.nc",
                                     label="Download posterior (netCDF)"))
        upload = w.FileInput(accept=".json,.nc", multiple=False)
        upload.param.watch(lambda e: e.new and m.load_file(e.new, upload.filename or ""), "value")
        self._layout = pn.Column(
            "## Bayesian fit",
            pn.Row(w.IntInput.from_param(m.param.chains, width=90), w.IntInput.from_param(m.param.warmup, width=90),
                   w.IntInput.from_param(m.param.draws, width=90), w.IntInput.from_param(m.param.seed, width=90)),
            pn.Row(self._map, self._nuts, self._cancel), self._bar, self._status,
            pn.Row(save, pn.Column("Reload a saved spec or posterior", upload)),
            pn.panel(self._results), sizing_mode="stretch_width")

    def _on_status(self, *_):
        m = self.model
        self._map.disabled = self._nuts.disabled = m.busy
        self._cancel.disabled = not m.busy
        self._bar.value = -1 if m.busy and m.phase == "compiling" else m.progress  # -1: indeterminate while compiling
        kind = {"error": "danger", "cancelled": "warning", "done": "success"}.get(m.status, "info")
        if m.status == "done" and m.result is not None and m.result.diagnosis is not None \
                and not m.result.diagnosis.trustworthy:
            kind = "warning"
        self._status.param.update(object=m.message, alert_type=kind, visible=bool(m.message))

    @param.depends("model.result")
    def _results(self):
        r, data = self.model.result, self.model.data
        if r is None:
            return pn.pane.Markdown("*No Bayesian fit yet.*")
        parts = []
        if r.diagnosis is not None:
            d = r.diagnosis
            names = list(r.summary["parameter"])
            if not d.trustworthy:
                reasons = "\n".join(f"- {code_names(x, names)}" for x in d.reasons)
                parts.append(pn.pane.Alert(f"**This fit is not trustworthy.** Do not use its estimates yet.\n\n"
                                           f"{reasons}", alert_type="danger", css_classes=["fit-untrustworthy"]))
            else:
                parts.append(pn.pane.Alert(code_names(d.verdict, names), alert_type="success"))
            parts.append("### Diagnostics")
            cols = ["parameter", "mean", "sd", "r_hat", "ess_bulk", "ess_tail", "div_shift", "prior_quantile"]
            parts.append(pn.pane.DataFrame(r.summary[[c for c in cols if c in r.summary]], index=False,
                                           float_format="{:.4g}".format, na_rep="—"))   # div_shift: no divergences
            parts.append(f"divergences: {d.divergences}")
        else:
            parts.append(pn.pane.DataFrame(r.summary, index=False, float_format="{:.6g}".format))
        parts += ["### Decomposition with posterior bands",
                  pn.pane.HoloViews(band_plot(data.index[:len(r.check.residual)], np.asarray(
                      r.draws.observed_data["y"]) if r.idata is not None else data.y, data.target_label,
                      r.components), sizing_mode="stretch_width"),
                  "### One-step checks",
                  pn.pane.HoloViews(check_plots(data.index[:len(r.check.residual)], r.check),
                                    sizing_mode="stretch_width")]
        if r.idata is not None:
            parts += ["### Posterior", pn.Tabs(*self._arviz_tabs(r.idata), dynamic=True)]
        return pn.Column(*parts, sizing_mode="stretch_width")

    @staticmethod
    def _arviz_tabs(idata):
        """ArviZ's trace, rank, forest and pair plots with the Bokeh backend."""
        def grid(plot, width=260):
            from bokeh.layouts import gridplot
            arr = np.atleast_2d(np.asarray(plot, dtype=object))
            return gridplot([[f for f in row] for row in arr.tolist()], width=width, height=220)
        with warnings.catch_warnings():   # ArviZ's Bokeh trace plot uses a Bokeh call deprecated since 3.4
            warnings.filterwarnings("ignore", message=r".*scatter\(radius=")
            trace = az.plot_trace(idata, backend="bokeh", show=False)
        _density_ranges(trace)
        out = [("Trace", pn.pane.Bokeh(grid(trace, width=420))),
               ("Rank", pn.pane.Bokeh(grid(az.plot_rank(idata, backend="bokeh", show=False))))]
        draws = {name: np.asarray(idata.posterior[name]) for name in idata.posterior.data_vars}
        out.append(("Forest", pn.pane.Bokeh(forest_plot(draws), sizing_mode="stretch_width",
                                            css_classes=["posterior-forest"])))
        if len(idata.posterior.data_vars) > 1:
            out.append(("Pair", pn.pane.Bokeh(grid(az.plot_pair(idata, backend="bokeh", show=False,
                                                                divergences=True)))))
        return out

    def __panel__(self):
        return self._layout


def _density_ranges(trace) -> None:
    """Give the densities of a Bokeh trace plot explicit y ranges: a parameter on a large scale (a
    variance of 10⁴ has densities near 10⁻⁵) otherwise gets an automatic range the browser draws flat."""
    from bokeh.models import Range1d

    for fig in np.atleast_2d(np.asarray(trace, dtype=object))[:, 0]:
        tops = [np.nanmax(r.data_source.data["y"]) for r in fig.renderers
                if len(r.data_source.data.get("y", [])) and np.isfinite(np.nanmax(r.data_source.data["y"]))]
        if tops and max(tops) > 0:
            fig.y_range = Range1d(0.0, 1.05 * max(tops))


def forecast_plot(bands: ForecastBands, label: str) -> hv.Overlay:
    """The last observations, then the forecast's posterior mean with its 50% and 95% equal-tailed bands."""
    f = bands.future
    x = np.asarray(f["time"])
    out = (band_area(x, f["lo95"], f["hi95"], label, label=BAND_LABEL, color="#e07b39", alpha=0.2)
           * band_area(x, f["lo50"], f["hi50"], label, label="50% interval", color="#e07b39", alpha=0.4)
           * hv.Curve((x, f["mean"]), "time", label, label="forecast mean").opts(color="#e07b39", line_width=2)
           * hv.Curve((np.asarray(bands.history["time"]), bands.history["y"]), "time", label,
                      label="observed").opts(color="black"))
    return out.opts(**_OPTS, legend_position="right", ylabel=label, shared_axes=False,
                    title=f"{label}: forecast from the {bands.label}")


class ForecastView(pn.viewable.Viewer):
    """The forecast panel of the Fit tab: steps ahead, status, and the bands plot."""

    model = param.ClassSelector(class_=ForecastModel)

    def __init__(self, **params):
        super().__init__(**params)
        m = self.model
        self._status = pn.pane.Alert("", visible=False, sizing_mode="stretch_width")
        m.param.watch(self._on_status, ["status", "message"])
        self._on_status()
        steps = pn.widgets.IntSlider.from_param(m.param.steps, label="Steps ahead", start=1, end=120, width=300)
        self._layout = pn.Column("## Forecast", steps, self._status, pn.panel(self._plot),
                                 sizing_mode="stretch_width", css_classes=["fit-forecast"])

    def _on_status(self, *_):
        m = self.model
        kind = {"error": "danger", "running": "info"}.get(m.status, "light")
        self._status.param.update(object=m.message, alert_type=kind, visible=bool(m.message))

    @param.depends("model.result")
    def _plot(self):
        r = self.model.result
        if r is None:
            return pn.pane.Markdown("*Fit a model to see its forecast.*")
        return pn.pane.HoloViews(forecast_plot(r, self.model.data.target_label), sizing_mode="stretch_width")

    def __panel__(self):
        return self._layout
