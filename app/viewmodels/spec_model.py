"""SpecModel: the model the user builds, as plain parameters → one validated `ModelSpec`."""

from __future__ import annotations

import logging
import re

import numpy as np
import pandas as pd
import param

import engine
from engine.spec import REGRESSION_MODES, SEASONAL_FORMS, TREND_KINDS, ModelSpec, param_names

from ..codegen import pymc_extras_code, spec_json, statsmodels_code
from .data_model import DataModel

NO_LEVEL = "none"
log = logging.getLogger("streamssm.app")
_FIELD = re.compile(r"spec field '([^']+)'")


def error_group(field: str) -> str:
    """Which widget group a spec field belongs to: 'level', 'seasonal[0]', 'cycle', 'ar', 'regression', ..."""
    head = field.split(".")[0]
    if head.startswith("seasonal["):
        return head
    return {"autoregressive": "ar", "irregular": "level"}.get(head, head)


def check_identifiable(spec: ModelSpec, n_observed: int) -> None:
    """Refuse a model with more parameters than the observations can identify (ValueError naming the
    field).

    Every state whose starting value is unknown uses up one observation to pin that value down: the
    states that start diffuse, and the p lags of an AR(p), whose first p values are what its
    coefficients are regressed on (the conditional likelihood has n − p terms). The k parameters
    must be estimated from the n_observed − u observations left; more than that leaves some of
    them to the priors alone and the maximum likelihood undefined. The AR order, one parameter and
    one unknown start per lag, is named (with the largest order that fits) when it is in the model.
    """
    k = len(param_names(spec))
    unknown = sum(size for name, _, size, _, diffuse in engine.layout(spec).blocks
                  if diffuse or name == "autoregressive")
    left = n_observed - unknown
    if k <= left:
        return
    why = (f"{n_observed} observed values, after one for each of the {unknown} states with an unknown start, "
           f"leave {max(left, 0)} to estimate them from: the data cannot identify them")
    if spec.ar_order:
        other_k = k - spec.ar_order - 1                # without the AR's lags and sigma2.ar
        other_unknown = unknown - spec.ar_order
        largest = (n_observed - other_unknown - other_k - 1) // 2   # other_k + 1 + p <= n - other_u - p
        fix = f"use an AR order of at most {largest}" if largest >= 1 else "remove the autoregressive part"
        raise ValueError(f"spec field 'autoregressive.order': AR order {spec.ar_order} makes {k} parameters, "
                         f"but {why}; {fix}, or a longer series")
    raise ValueError(f"spec field 'spec': the model has {k} parameters, but {why}; use fewer components or a "
                     "longer series")


class SpecModel(param.Parameterized):
    """Widget-level choices for every part of the spec; `spec` is the parsed result or None."""

    irregular = param.Boolean(default=True, doc="Measurement (irregular) noise ε_t")
    level = param.Selector(default="local_level", objects=[NO_LEVEL, *TREND_KINDS], doc="Level/trend kind")
    seasonals = param.List(default=[], item_type=dict, doc="Seasonals: period, form, harmonics, stochastic")
    cycle = param.Boolean(default=False)
    # Numbers may be cleared (None) or out of range in the widgets: the spec says what is wrong,
    # next to the widget, instead of the widget and the model disagreeing.
    cycle_period_low = param.Number(default=6.0, allow_None=True)
    cycle_period_high = param.Number(default=48.0, allow_None=True)
    cycle_damped = param.Boolean(default=True)
    cycle_stochastic = param.Boolean(default=True)
    ar_order = param.Integer(default=0, allow_None=True)
    regression_columns = param.ListSelector(default=[], objects=[])
    regression_mode = param.Selector(default="parameters", objects=list(REGRESSION_MODES))

    spec = param.Parameter(default=None, constant=True, doc="The parsed ModelSpec, or None when invalid")
    errors = param.Dict(default={}, constant=True, doc="widget group → message")
    spec_text = param.String(default="", constant=True)
    statsmodels_text = param.String(default="", constant=True)
    pymc_text = param.String(default="", constant=True)
    priors = param.DataFrame(default=None, allow_None=True, constant=True,
                             doc="Data-scaled default priors, when the engine provides them")

    def __init__(self, data: DataModel, **params):
        super().__init__(**params)
        self.data = data
        data.param.watch(self._on_data, ["frame", "exog", "target", "log_transform", "suggested_spec"])
        self._on_data()

    # -- editing -----------------------------------------------------------------------
    def add_seasonal(self, period: float = 12, form: str = "dummy", harmonics: int | None = None,
                     stochastic: bool = True) -> None:
        self.seasonals = [*self.seasonals, {"period": period, "form": form, "harmonics": harmonics,
                                            "stochastic": stochastic}]

    def remove_seasonal(self, i: int) -> None:
        self.seasonals = [s for j, s in enumerate(self.seasonals) if j != i]

    def update_seasonal(self, i: int, **changes) -> None:
        unknown = set(changes) - {"period", "form", "harmonics", "stochastic"}
        if unknown:
            raise ValueError(f"unknown seasonal field(s) {sorted(unknown)}")
        self.seasonals = [dict(s, **changes) if j == i else s for j, s in enumerate(self.seasonals)]

    @param.depends("level", watch=True)
    def _level_default_irregular(self):
        """Each trend kind implies whether there is an irregular term (statsmodels' convention)."""
        if self.level != NO_LEVEL:
            self.irregular = TREND_KINDS[self.level][0]

    def load(self, spec: dict | ModelSpec) -> None:
        """Set every widget from a spec (e.g. a dataset's suggested spec or a saved file).

        A spec that regresses on columns the session's regressors lack is refused (ValueError naming
        them), before any widget changes: loading it without them would fit another model.
        """
        spec = ModelSpec.from_dict(spec)
        missing = [c for c in spec.exog_columns if c not in self.param.regression_columns.objects]
        if missing:
            absent = [c for c in missing if c not in self.data.param.exog.objects]
            why = (f"which the data {self.data.source!r} does not have" if absent else
                   "which are not chosen as regressors")
            raise ValueError(f"spec field 'regression.columns': the model regresses on {missing}, {why}. Load data "
                             "with those columns and choose them as regressors on the Data tab first")
        self.level = spec.level or NO_LEVEL   # first: its watcher sets the kind's default irregular
        with param.parameterized.batch_call_watchers(self):
            self.irregular = spec.irregular
            self.seasonals = [{"period": s.period, "form": s.form,
                               "harmonics": s.n_harmonics if s.form == "trig" else None,
                               "stochastic": s.stochastic} for s in spec.seasonal]
            self.cycle = spec.cycle is not None
            if spec.cycle is not None:
                self.cycle_period_low, self.cycle_period_high = spec.cycle.period_bounds
                self.cycle_damped, self.cycle_stochastic = spec.cycle.damped, spec.cycle.stochastic
            self.ar_order = spec.ar_order
            if spec.regression is not None:
                self.regression_columns = list(spec.exog_columns)
                self.regression_mode = spec.regression.coefficients
            else:
                self.regression_columns = []

    def _on_data(self, *events):
        """Chosen regressors join the regression; a dataset's suggested spec sets the widgets."""
        names = {e.name for e in events}
        exog = list(self.data.exog)
        with param.parameterized.batch_call_watchers(self):
            self.param.regression_columns.objects = exog
            if "exog" in names or not events:
                self.regression_columns = exog
            else:
                self.regression_columns = [c for c in self.regression_columns if c in exog]
            if ("suggested_spec" in names or not events) and self.data.suggested_spec:
                try:
                    self.load(self.data.suggested_spec)
                except ValueError as exc:
                    log.warning("suggested spec of %s does not parse: %s", self.data.source, exc)
        self._update()

    # -- derived -----------------------------------------------------------------------
    def as_dict(self) -> dict:
        """The spec as the widgets describe it (before validation)."""
        d: dict = {"irregular": self.irregular}
        if self.level != NO_LEVEL:
            d["level"] = {"kind": self.level}
        seas = []
        for s in self.seasonals:
            item = {"period": s["period"], "form": s["form"], "stochastic": s["stochastic"]}
            if s["form"] == "trig" and s.get("harmonics") is not None:
                item["harmonics"] = s["harmonics"]
            seas.append(item)
        if seas:
            d["seasonal"] = seas
        if self.cycle:
            d["cycle"] = {"period_bounds": [self.cycle_period_low, self.cycle_period_high],
                          "damped": self.cycle_damped, "stochastic": self.cycle_stochastic}
        if self.ar_order != 0:   # an empty or negative order goes to the spec, which explains it
            d["autoregressive"] = {"order": self.ar_order}
        if self.regression_columns:
            d["regression"] = {"columns": list(self.regression_columns), "coefficients": self.regression_mode}
        return d

    @param.depends("irregular", "level", "seasonals", "cycle", "cycle_period_low", "cycle_period_high",
                   "cycle_damped", "cycle_stochastic", "ar_order", "regression_columns", "regression_mode",
                   watch=True)
    def _update(self):
        spec, errors = None, {}
        try:
            spec = ModelSpec.from_dict(self.as_dict())
            if self.data.frame is not None and self.data.target is not None:
                spec.check_data(len(self.data.frame), tuple(self.data.exog))
                try:
                    spec.check_length(len(self.data.frame))
                except ValueError as exc:   # it numbers seasonals in the spec's order, not the widgets'
                    raise ValueError(self._widget_order(spec, str(exc))) from None
                check_identifiable(spec, int(np.isfinite(self.data.y).sum()))
        except ValueError as exc:
            m = _FIELD.search(str(exc))
            errors[error_group(m.group(1)) if m else "spec"] = str(exc)
            spec = None
        with param.edit_constant(self):
            self.errors = errors
            self.spec = spec
            if spec is None:
                self.spec_text = self.statsmodels_text = self.pymc_text = ""
                self.priors = None
                return
            self.spec_text = spec_json(spec)
            target = self.data.target_label if self.data.target else "y"
            self.statsmodels_text = statsmodels_code(spec, target)
            self.pymc_text = pymc_extras_code(spec, self._data_sd(), target)
            self.priors = self._default_priors(spec)

    def _widget_order(self, spec: ModelSpec, message: str) -> str:
        """A message about spec.seasonal[j] renumbered as the widget row that holds that seasonal
        (the spec puts dummy seasonals first)."""
        m = re.search(r"seasonal\[(\d+)\]", message)
        if m is None:
            return message
        s = spec.seasonal[int(m.group(1))]
        rows = [i for i, row in enumerate(self.seasonals) if row["form"] == s.form and row["period"] == s.period]
        return message.replace(m.group(0), f"seasonal[{rows[0]}]") if rows else message

    def _data_sd(self) -> float:
        if self.data.frame is None or self.data.target is None:
            return 1.0
        y = self.data.y
        y = y[np.isfinite(y)]
        return float(np.std(y)) if y.size > 1 and np.std(y) > 0 else 1.0

    def _default_priors(self, spec: ModelSpec):
        """The engine's data-scaled default priors, one row per parameter (None until the engine has them)."""
        default_priors = getattr(engine, "default_priors", None)
        if default_priors is None or self.data.frame is None:
            return None
        try:
            priors = default_priors(spec, self.data.y, self.data.exog_frame)
        except (TypeError, ValueError) as exc:
            log.warning("engine.default_priors failed for %s: %s", spec.to_dict(), exc)
            return None
        rows = [{"parameter": n, **{k: v for k, v in dict(priors[n]).items()}} for n in param_names(spec)
                if n in priors]
        return pd.DataFrame(rows)


__all__ = ["SpecModel", "SEASONAL_FORMS", "NO_LEVEL", "error_group"]
