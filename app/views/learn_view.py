"""The Learn tab: one step of the filter, quantity by quantity, with variance sliders."""

from __future__ import annotations

import numpy as np
import panel as pn
import param

from ..plots import learn_plot, time_label
from ..viewmodels import LearnModel

SLIDER_DECADES = 3  # each variance slider spans 10^±3 around its starting value


def markdown_text(text: str) -> str:
    """Plain text for a Markdown pane: a * (as in F*_t) is a literal star, not emphasis."""
    return text.replace("*", "\\*")


class LearnView(pn.viewable.Viewer):
    model = param.ClassSelector(class_=LearnModel)

    def __init__(self, **params):
        super().__init__(**params)
        m = self.model
        back = pn.widgets.Button(label="◀ Step back", width=110)
        fwd = pn.widgets.Button(label="Step forward ▶", width=130)
        back.on_click(lambda _: m.back())
        fwd.on_click(lambda _: m.forward())
        self._t = pn.widgets.IntInput(label="Time index t", value=m.t, start=0, width=120)
        self._t.param.watch(self._on_t, "value")
        m.param.watch(lambda e: setattr(self._t, "value", e.new), "t")
        self._run = pn.widgets.Button(label="Run the filter for this model", color="primary",
                                      visible=m.pending)
        self._run.on_click(lambda _: m.run())
        m.param.watch(lambda e: setattr(self._run, "visible", e.new), "pending")
        self._layout = pn.Column(
            pn.Row(back, fwd, self._t, self._run),
            pn.Row(pn.Column("### Variances", pn.panel(self._sliders), width=340),
                   pn.Column(pn.panel(self._step), sizing_mode="stretch_width"),
                   sizing_mode="stretch_width"),
            sizing_mode="stretch_width",
        )

    def _on_t(self, event):
        """A typed time index, kept inside the steps shown; an emptied box shows the current one again."""
        m = self.model
        if event.new is None:
            self._t.value = m.t
            return
        m.t = max(0, min(int(event.new), m.n_obs - 1))

    @param.depends("model.generation")
    def _sliders(self):
        m = self.model
        sliders = []
        for name, value in m.variances.items():
            centre = np.log10(value) if value > 0 else -3.0
            s = pn.widgets.FloatSlider(label=f"log10 {name}", start=round(centre - SLIDER_DECADES, 2),
                                       end=round(centre + SLIDER_DECADES, 2), step=0.05,
                                       value=round(centre, 2), width=300)
            s.param.watch(lambda e, n=name: setattr(m, "variances", dict(m.variances, **{n: 10 ** e.new})),
                          "value_throttled")
            sliders.append(s)
        return pn.Column(*sliders) if sliders else pn.pane.Markdown("*This model has no variances.*")

    @param.depends("model.step", "model.error", "model.busy", "model.pending", "model.notice")
    def _step(self):
        m = self.model
        if m.error:
            return pn.pane.Alert(m.error, alert_type="warning")
        notice = [pn.pane.Alert(m.notice, alert_type="info")] if m.notice else []
        s = m.step
        if m.pending:
            spec = m.spec_model.spec
            return pn.Column(*notice, pn.pane.Markdown(
                f"This model has {spec.n_states if spec else '?'} states: its filter takes a while to compile and "
                "run, so it waits for you. Press **Run the filter for this model** to step through it."))
        if s is None:
            return pn.Column(*notice, pn.pane.Markdown("*Computing the filter…*" if m.busy else ""))
        d = m.data
        comps = s.components
        level = comps.loc[comps["component"] == "level", "posterior mean"]
        level = float(level.iloc[0]) if len(level) else None   # a model may have no level (or no state)
        summary = (f"**t = {s.t}** ({time_label(s.time, d.index)}) — step kind: **{s.kind}**\n\n"
                   "| quantity | value |\n|---|---|\n"
                   + "".join(f"| {markdown_text(name)} | {value:.6g} |\n" for name, value in m.summary_rows()))
        table = (pn.pane.DataFrame(comps, index=False, float_format="{:.5g}".format, na_rep="—",
                                   sizing_mode="stretch_width") if len(comps) else
                 pn.pane.Markdown("*This model has no state components: the prediction is the regression "
                                  "(or zero) and the whole innovation is measurement noise.*",
                                  sizing_mode="stretch_width"))
        return pn.Column(
            *notice,
            # on diffuse steps the prediction carries no information (infinite variance): not drawn
            pn.pane.HoloViews(learn_plot(d.index, d.y, d.target_label, s.t,
                                         s.predicted if s.kind == "standard" else None,
                                         np.sqrt(s.innov_var) if s.kind == "standard" else None, level),
                              sizing_mode="stretch_width", linked_axes=False),   # its own window, not the Fit tab's
            pn.pane.Markdown(summary, width=420, css_classes=["learn-summary"]),
            table,
            pn.pane.Markdown(m.explanation(), sizing_mode="stretch_width"),
            sizing_mode="stretch_width",
        )

    def __panel__(self):
        return self._layout
