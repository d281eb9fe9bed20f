"""The Model tab: widgets for every part of the spec, problems shown next to them, the spec as
JSON and as statsmodels / pymc-extras code."""

from __future__ import annotations

import math

import panel as pn
import param

from engine.spec import SEASONAL_FORMS

from ..viewmodels import SpecModel
from ..viewmodels.priors_model import PriorsModel
from .data_view import choice_widget


# The code panes state their colours themselves. Panel's Markdown pane colours code with its own
# stylesheet, but when its text changes it sends the page design's stylesheets again after that one,
# and Bootstrap's `pre code { color: inherit }` then gives the code the page's near-black text colour on
# the dark code background. Rules of the pane's own (applied last, and more specific) keep the text
# colour, and lift the theme's three token colours that fall short of a 4.5:1 contrast on #263238
# (comments 2.4, JSON keys 4.2, keywords 4.3) to lighter shades of the same hues (5.1, 5.3, 5.5).
CODE_PANE_CSS = """
.codehilite pre, .codehilite code { color: var(--code-text-color, #82aaff); }
.codehilite :is(.c, .ch, .cm, .cp, .cpf, .c1, .cs, .go, .sd) { color: #90a4ae; }
.codehilite :is(.gd, .gr, .gs, .gt, .nt) { color: #ff7a93; }
.codehilite :is(.k, .kd, .kr, .kt, .na, .sa) { color: #c792ea; }
"""


class ModelView(pn.viewable.Viewer):
    model = param.ClassSelector(class_=SpecModel)
    priors = param.ClassSelector(class_=PriorsModel, default=None, allow_None=True)

    def __init__(self, **params):
        super().__init__(**params)
        m = self.model
        add = pn.widgets.Button(label="Add seasonal", color="default")
        add.on_click(lambda _: m.add_seasonal())
        w = pn.widgets
        self._layout = pn.Row(
            pn.Column(
                "### Level and noise",
                w.Select.from_param(m.param.level, label="Level / trend"),
                w.Checkbox.from_param(m.param.irregular, label="Irregular (measurement) noise"),
                self._problem("level"),
                "### Seasonals",
                pn.panel(self._seasonals),
                add,
                self._problem("seasonal"),
                "### Cycle",
                w.Checkbox.from_param(m.param.cycle, label="Include a cycle"),
                pn.Row(w.FloatInput.from_param(m.param.cycle_period_low, label="Shortest period", width=130),
                       w.FloatInput.from_param(m.param.cycle_period_high, label="Longest period", width=130)),
                pn.Row(w.Checkbox.from_param(m.param.cycle_damped, label="Damped"),
                       w.Checkbox.from_param(m.param.cycle_stochastic, label="Stochastic")),
                self._problem("cycle"),
                "### Autoregressive",
                w.IntInput.from_param(m.param.ar_order, label="AR order", width=130),
                self._problem("ar"),
                "### Regression",
                choice_widget(w.MultiChoice, m, "regression_columns", m.data.column_label,
                              label="Columns (choose regressors on the Data tab)"),
                w.Select.from_param(m.param.regression_mode, label="Coefficients"),
                self._problem("regression"),
                self._problem("spec"),
                "### Priors",
                pn.panel(self._priors),
                width=420,
            ),
            pn.Tabs(("Spec (JSON)", self._code("spec_text", "json", self.priors)),
                    ("statsmodels", self._code("statsmodels_text", "python")),
                    ("pymc-extras", self._code("pymc_text", "python")),
                    sizing_mode="stretch_width"),
            sizing_mode="stretch_width",
        )

    def _problem(self, group: str) -> pn.pane.Alert:
        """The validation message for one widget group, shown right under it."""
        alert = pn.pane.Alert("", alert_type="warning", visible=False, sizing_mode="stretch_width")

        def update(*_):
            msg = self.model.errors.get(group, "")
            alert.object, alert.visible = msg, bool(msg)
        self.model.param.watch(update, "errors")
        update()
        return alert

    def _code(self, name: str, lang: str, source=None) -> pn.pane.Markdown:
        source = source or self.model
        pane = pn.pane.Markdown("", sizing_mode="stretch_width", stylesheets=[CODE_PANE_CSS],
                                css_classes=["model-code"])

        def update(*_):
            text = getattr(source, name)
            pane.object = f"```{lang}\n{text}\n```" if text else "*The model is not valid yet; see the messages.*"
        source.param.watch(update, name)
        update()
        return pane

    @param.depends("model.seasonals", "model.errors")
    def _seasonals(self):
        m = self.model
        rows = []
        for i, s in enumerate(m.seasonals):
            value = s["period"]   # as typed: it may be empty (None) or invalid, and the message says so
            value = float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
            period = pn.widgets.FloatInput(label="Period", value=value, width=90)
            form = pn.widgets.Select(label="Form", options=list(SEASONAL_FORMS), value=s["form"], width=90)
            default_harmonics = max(1, int(value // 2)) if value is not None and 2 <= value < 1e12 else None
            harm = pn.widgets.IntInput(label="Harmonics", value=s.get("harmonics") or default_harmonics, width=90,
                                       disabled=s["form"] != "trig")
            stoch = pn.widgets.Checkbox(label="Stochastic", value=s["stochastic"])
            remove = pn.widgets.Button(label="Remove", width=80)
            period.param.watch(lambda e, i=i: m.update_seasonal(i, period=e.new), "value")
            form.param.watch(lambda e, i=i: m.update_seasonal(
                i, form=e.new, harmonics=None), "value")
            harm.param.watch(lambda e, i=i: m.update_seasonal(i, harmonics=e.new), "value")
            stoch.param.watch(lambda e, i=i: m.update_seasonal(i, stochastic=e.new), "value")
            remove.on_click(lambda _, i=i: m.remove_seasonal(i))
            problem = m.errors.get(f"seasonal[{i}]", "")
            rows.append(pn.Column(pn.Row(period, form, harm), pn.Row(stoch, remove),
                                  pn.pane.Alert(problem, alert_type="warning", visible=bool(problem))))
        return pn.Column(*rows) if rows else pn.pane.Markdown("*No seasonal component.*")

    @param.depends("priors.defaults", "priors.edits", "priors.errors")
    def _priors(self):
        p = self.priors
        if p is None or not p.defaults:
            return pn.pane.Markdown("*Priors are shown once the data and the model are valid.*")
        return pn.Column(*(self._prior_row(name) for name in p.defaults), sizing_mode="stretch_width")

    def _prior_row(self, name: str) -> pn.Column:
        """One parameter: its default (data-scaled), family and arguments to edit, the message if refused."""
        p = self.priors
        current, default = p.prior(name), p.defaults[name]
        family = pn.widgets.Select(label=name, options=p.families, value=current["dist"], width=150)
        args = {a: pn.widgets.TextInput(label=a, value=str(current.get(a, "auto")), width=110)
                for a in p.arguments(current["dist"])}
        apply = pn.widgets.Button(label="Apply", width=70)
        reset = pn.widgets.Button(label="Default", width=70, disabled=name not in p.edits)

        def number(text):
            try:
                return float(text)
            except ValueError:
                return text.strip()

        family.param.watch(lambda e: p.set_prior(name, {"dist": e.new}), "value")
        apply.on_click(lambda _: p.set_prior(name, {"dist": family.value,
                                                    **{a: number(w.value) for a, w in args.items()}}))
        reset.on_click(lambda _: p.reset(name))
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in default.items()
                          if k != "dist")
        problem = p.errors.get(name, "")
        return pn.Column(pn.Row(family, *args.values(), apply, reset),
                         pn.pane.Markdown(f"default: `{default['dist']}({shown})`", margin=(0, 10)),
                         pn.pane.Alert(problem, alert_type="warning", visible=bool(problem)))

    def __panel__(self):
        return self._layout
