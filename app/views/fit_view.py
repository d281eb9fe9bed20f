"""The Fit tab: the quick maximum likelihood fit, its estimates and the decomposition; the forecast of
the latest fit; the Bayesian fit."""

from __future__ import annotations

import panel as pn
import param

from ..plots import auxiliary_plot, decomposition_plot
from ..viewmodels import FitModel
from .fit_bayes_view import BayesFitView, ForecastView


class FitView(pn.viewable.Viewer):
    model = param.ClassSelector(class_=FitModel)
    bayes = param.ClassSelector(class_=BayesFitView, default=None, allow_None=True)
    forecast = param.ClassSelector(class_=ForecastView, default=None, allow_None=True)

    def __init__(self, **params):
        super().__init__(**params)
        m = self.model
        self._button = pn.widgets.Button(label="Quick fit (maximum likelihood)", color="primary")
        self._button.on_click(lambda _: m.run_quick_fit())
        self._spinner = pn.indicators.LoadingSpinner(value=False, size=30, visible=False)
        self._status = pn.pane.Alert("", visible=False, sizing_mode="stretch_width")
        m.param.watch(self._on_status, ["status", "message", "stale", "result"])
        self._on_status()
        self._layout = pn.Column(pn.Row(self._button, self._spinner), self._status, pn.panel(self._results),
                                 *(v for v in (self.forecast, self.bayes) if v is not None),
                                 sizing_mode="stretch_width")

    def _on_status(self, *_):
        m = self.model
        running = m.status == "running"
        self._button.disabled = running
        self._spinner.value = self._spinner.visible = running
        kind = {"error": "danger", "running": "info", "done": "success"}.get(m.status, "light")
        if m.status == "done" and m.converged is False:   # the colour follows the verdict
            kind = "warning"
        text = m.message
        if m.stale and m.status == "done":
            kind, text = "warning", text + " The data or model changed since: fit again to update."
        self._status.param.update(object=text, alert_type=kind, visible=bool(text))

    @param.depends("model.result")
    def _results(self):
        r = self.model.result
        if r is None:
            return pn.pane.Markdown("*No fit yet.*")
        data = self.model.data
        stats = (f"**log-likelihood** {r.loglik:.4f} &nbsp; **AIC** {r.aic:.4f} &nbsp; **BIC** {r.bic:.4f} "
                 f"&nbsp; ({r.n_obs} observations)")
        return pn.Column(
            pn.pane.Markdown(stats),
            pn.pane.DataFrame(r.table(), index=False, float_format="{:.6g}".format,
                              width=960 if r.se_notes else 520),
            "### Decomposition",
            pn.pane.HoloViews(decomposition_plot(data.index, data.y, data.target_label, r.components),
                              sizing_mode="stretch_width"),
            *self._residual_checks(r, data.index),
            sizing_mode="stretch_width",
        )

    @staticmethod
    def _residual_checks(r, index) -> list:
        if not r.auxiliary:
            return []
        return ["### Residual checks\nAuxiliary residuals: the smoothed disturbances standardised, N(0, 1) where "
                "the model holds. Beyond ±1.96, an irregular residual marks an outlier there, a level or slope "
                "(trend) residual a break.",
                pn.pane.HoloViews(auxiliary_plot(index, r.auxiliary), sizing_mode="stretch_width",
                                  css_classes=["auxiliary-residuals"])]

    def __panel__(self):
        return self._layout
