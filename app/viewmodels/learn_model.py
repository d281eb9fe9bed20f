"""LearnModel: one time step of the Kalman filter, taken apart for teaching.

prior state a_t, P_t → predicted observation ŷ_t = Z a_t + d_t with variance F_t = Z P_t Zᵀ + H
→ innovation v_t = y_t − ŷ_t → gain K_t = P_t Zᵀ / F_t → posterior a_{t|t} = a_t + K_t v_t,
P_{t|t} = P_t − K_t F_t K_tᵀ. The moments come from `engine.filter_series`; only the gain is
formed here (from the engine's P_t and F_t) to show how the update splits the innovation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import param

import engine
from engine.spec import ModelSpec, param_names
from engine.transforms import scales

from ..workers import SessionWorker
from .data_model import DataModel
from .fit_model import FitModel
from .spec_model import SpecModel

KINDS = {0: "missing", 1: "standard", 2: "diffuse"}
COMPONENT_COLUMNS = ["component", "prior mean", "prior sd", "share of innovation", "posterior mean", "posterior sd"]
log = logging.getLogger("streamssm.app")

# What each quantity is, per step kind ("standard", "diffuse", "missing"); a kind's own text replaces
# the standard one where the exact diffuse filter computes something else.
EXPLANATIONS = {
    "prior": "**Prior state** a_t, P_t: what the model believes about each component before seeing y_t "
             "(the previous posterior pushed one step through the transition, plus the state noise).",
    "predicted": "**Predicted observation** ŷ_t = Z a_t + d_t, with variance F_t = Z P_t Zᵀ + H: "
                 "the sum of the components' predictions plus the measurement noise H, so F_t ≥ H.",
    "innovation": "**Innovation** v_t = y_t − ŷ_t: the surprise. Its log-density under N(0, F_t), "
                  "−½(log 2π + log F_t + v_t² / F_t), is this step's contribution to the log-likelihood.",
    "gain": "**Kalman gain** K_t = P_t Zᵀ / F_t: how much of the surprise each state absorbs. Components "
            "that are more uncertain (or whose noise variance is larger) take a larger share; "
            "Z K_t = 1 − H / F_t of it in all.",
    "posterior": "**Posterior** a_{t|t} = a_t + K_t v_t, P_{t|t} = P_t − K_t F_t K_tᵀ: the belief after "
                 "y_t, with less uncertainty than the prior.",
    "diffuse": "**Diffuse step**: some state the observation sees still has an infinite (flat) prior. Its "
               "prior covariance is P_t = κ P∞_t + P\\*_t with κ → ∞, so the predictive variance "
               "F_t = κ F∞_t + F\\*_t has a diffuse part F∞_t = Z P∞_t Zᵀ > 0 and a finite part "
               "F\\*_t = Z P\\*_t Zᵀ + H. The exact diffuse filter takes the limit κ → ∞.",
    "diffuse predicted": "**Predicted observation** ŷ_t = Z a_t + d_t: only the finite part of the prior "
                         "predicts; its variance is infinite (F∞_t > 0), so it is not drawn.",
    "diffuse innovation": "**Innovation** v_t = y_t − ŷ_t. Under an infinite variance every value of y_t is "
                          "equally likely, so v_t does not enter the likelihood: this step contributes "
                          "−½(log 2π + log F∞_t), from the diffuse part F∞_t alone (the exact diffuse "
                          "likelihood of Durbin & Koopman 2012).",
    "diffuse gain": "**Kalman gain** K_t = P∞_t Zᵀ / F∞_t: the observation pins down the flat direction of "
                    "the state, so Z K_t = 1: all of the surprise goes to the states, none to the noise.",
    "diffuse posterior": "**Posterior** a_{t|t} = a_t + K_t v_t, with P∞ reduced by P∞_t Zᵀ Z P∞_t / F∞_t: "
                         "one flat direction fewer. Once P∞ is zero, every later step is a standard one.",
    "missing": "**Missing observation**: nothing to learn, so the posterior equals the prior, the step "
               "contributes 0 to the log-likelihood and the uncertainty keeps growing.",
}
@dataclass(frozen=True)
class FilterStep:
    """Every quantity of one filter step, for one time index t."""

    t: int
    time: object
    kind: str               # "standard", "diffuse" (F∞_t > 0) or "missing", as the engine's filter took it
    y: float
    predicted: float        # ŷ_t
    innov_var: float        # F*_t = Z P*_t Zᵀ + H: the whole F_t on a standard step, its finite part on a diffuse one
    diffuse_var: float      # F∞_t = Z P∞_t Zᵀ: > 0 on a diffuse step, 0 once no state is diffuse
    innovation: float       # v_t
    obs_var: float          # H
    loglik: float           # the engine's log-likelihood term of this step (`FilterResult.loglik_terms`)
    prior_mean: np.ndarray      # (state,)
    prior_cov: np.ndarray       # (state, state)
    gain: np.ndarray            # (state,)
    posterior_mean: np.ndarray  # (state,)
    posterior_cov: np.ndarray   # (state, state)
    components: pd.DataFrame    # one row per component: prior/posterior mean and sd, share of v_t


def _component_selectors(spec: ModelSpec, design_t: np.ndarray) -> list[tuple[str, np.ndarray, bool]]:
    """(name, vector s, part of y_t?) per component of `engine.component_selectors`: s·α is the
    component's contribution to y_t, or for `trend` (the slope of a local linear trend, which
    enters y_t only through the next level) the slope state itself. A fixed-coefficient
    regression (x_t β, no state) has its own row."""
    out = []
    for sel in engine.component_selectors(spec):
        if not sel.states:
            continue
        s = np.zeros(len(design_t))
        ix = list(sel.states)
        s[ix] = design_t[ix] if sel.weighted else 1.0
        out.append((sel.name, s, sel.weighted))
    return out


def filter_step(spec: ModelSpec, params: dict, y: np.ndarray, exog, result: engine.FilterResult,
                t: int, index=None) -> FilterStep:
    """Take step t of a filter run apart into prior → prediction → innovation → gain → posterior."""
    system = engine.build_system(spec, params, None if exog is None else np.asarray(exog, dtype=float))
    design = np.asarray(system.design)
    Z = design[t] if design.ndim == 2 else design
    d_all = np.asarray(system.obs_intercept)
    d = float(d_all[t]) if d_all.ndim else float(d_all)
    H = float(system.obs_var)
    a, P = np.asarray(result.predicted_mean[t]), np.asarray(result.predicted_cov[t])
    Pinf = np.asarray(result.predicted_diffuse[t])
    a_post, P_post = np.asarray(result.filtered_mean[t]), np.asarray(result.filtered_cov[t])
    kind = KINDS[int(result.kind[t])]
    v = float(result.innovation[t])
    F, F_diffuse = float(result.innov_var[t]), float(result.diffuse_var[t])
    if kind == "standard":
        gain = P @ Z / F
    elif kind == "diffuse":
        gain = Pinf @ Z / F_diffuse
    else:
        gain = np.zeros_like(a)
    rows = []
    for name, s, in_observation in _component_selectors(spec, Z):
        flat = float(s @ Pinf @ s) > 0
        rows.append({"component": name,
                     "prior mean": float(s @ a), "prior sd": np.inf if flat else float(np.sqrt(max(s @ P @ s, 0))),
                     # s·K_t: the share of v_t that moves this part of ŷ_{t|t}; they sum to Z K_t = 1 − H/F_t.
                     # The slope is not part of y_t: its gain is in the state table, not a share
                     "share of innovation": float(s @ gain) if in_observation else np.nan,
                     "posterior mean": float(s @ a_post),
                     "posterior sd": float(np.sqrt(max(s @ P_post @ s, 0)))})
    if spec.regression is not None and spec.regression.coefficients == "parameters":
        rows.append({"component": "regression", "prior mean": d, "prior sd": 0.0, "share of innovation": 0.0,
                     "posterior mean": d, "posterior sd": 0.0})
    return FilterStep(t, None if index is None else index[t], kind, float(y[t]), float(Z @ a + d), F, F_diffuse, v, H,
                      float(result.loglik_terms[t]), a, P, gain, a_post, P_post,
                      pd.DataFrame(rows, columns=COMPONENT_COLUMNS))   # the columns even with no component


def default_params(spec: ModelSpec, y: np.ndarray, exog) -> dict[str, float]:
    """Starting values for teaching: variances at the data's scale (as the optimiser starts), a
    mid-range cycle frequency, damping 0.9, AR and regression coefficients 0."""
    base = scales(spec, y, None if exog is None else np.asarray(exog, dtype=float))
    out = {}
    for n in param_names(spec):
        if n.startswith("sigma2."):
            out[n] = float(base[n]) * 0.1
        elif n == "frequency.cycle":
            lo, hi = spec.cycle.frequency_bounds
            out[n] = 0.5 * (lo + hi)
        elif n == "damping.cycle":
            out[n] = 0.9
        else:
            out[n] = 0.0
    return out


# The step view keeps three (time, state, state) float64 histories (the prior, diffuse prior and
# posterior covariances of every step). This budget bounds them: a longer series is shown from its
# start for as many steps as fit (the 3652 daily births whole up to 55 states).
HISTORY_BUDGET = 256 * 2 ** 20
# Up to this many covariance entries per history (steps × states², 16 MB) the filter runs as soon as
# the model, data or fit change, even while the Learn tab is not shown: measured, a tenth of a second
# once compiled (the daily births with 23 states). Beyond, a run takes seconds (births with 65 states:
# 6 s) and many harmonics take a minute to compile, in the session's one worker and ahead of the
# user's fits, so the filter waits until the Learn tab asks for it (`run`).
EAGER_ENTRIES = 2_000_000


def steps_within_budget(n_states: int, n_obs: int) -> int:
    """How many of n_obs steps fit their three state covariance histories in HISTORY_BUDGET bytes."""
    return min(n_obs, HISTORY_BUDGET // (3 * 8 * max(n_states, 1) ** 2))


class LearnModel(param.Parameterized):
    """State of the teaching mode: the step shown, the variances in use and the filter run behind them."""

    t = param.Integer(default=0, bounds=(0, None))
    variances = param.Dict(default={}, doc="sigma2.* → value used by the filter")
    step = param.ClassSelector(class_=FilterStep, default=None, allow_None=True, constant=True)
    busy = param.Boolean(default=False, constant=True)
    pending = param.Boolean(default=False, constant=True,
                            doc="A large model's filter waits for `run` (it is not started by itself)")
    error = param.String(default="", constant=True)
    notice = param.String(default="", constant=True, doc="Why only the first n_obs observations are shown")
    n_obs = param.Integer(default=0, constant=True, doc="Observations the step view covers")
    generation = param.Integer(default=0, constant=True, doc="Counts resets (new model, data or fit)")

    def __init__(self, data: DataModel, spec: SpecModel, fit: FitModel, worker: SessionWorker, **params):
        super().__init__(**params)
        self.data, self.spec_model, self.fit, self.worker = data, spec, fit, worker
        self._params: dict[str, float] = {}
        self._run = None  # (spec, params, y, exog, FilterResult)
        self._allowed = None  # the large spec whose filter the user asked for (`run`)
        self._request = 0     # the latest filter request; older results are dropped
        spec.param.watch(self._reset, ["spec"])
        data.param.watch(self._reset, ["frame", "target", "exog", "log_transform"])
        fit.param.watch(self._reset, ["result"])
        self._reset()

    def _set(self, **values):
        with param.edit_constant(self):
            self.param.update(**values)

    def _reset(self, *_):
        """New model, data or fit: start again (never raising into the watchers of those)."""
        try:
            self._start()
        except Exception as exc:   # noqa: BLE001 (shown in the Learn tab instead of breaking other tabs)
            log.exception("the step-by-step view could not start")
            self._run = None
            self._set(step=None, busy=False, pending=False, error=f"The step-by-step view failed: {exc}")

    def _start(self):
        """The variances start from the fitted values when there are some, else the defaults; the
        filter runs now for a small model, on `run` for a large one."""
        spec = self.spec_model.spec
        self._run = None
        self._request += 1   # a result still on its way belongs to the old model or data
        if spec is None or not self.data.ready:
            self._set(step=None, busy=False, pending=False, notice="",
                      error="Choose valid data and a valid model first.")
            return
        y, exog = self.data.y, self.data.exog_frame
        m, n = spec.n_states, len(y)
        shown = steps_within_budget(m, n)
        if shown < n and shown <= m:   # too few steps to get past the diffuse start
            self._set(step=None, busy=False, pending=False, notice="",
                      error=f"This model has {m} states: the step-by-step view keeps their covariances for "
                            f"every step and has room for only {shown} steps in its "
                            f"{HISTORY_BUDGET / 2 ** 20:.0f} MB. Use fewer states to step through it.")
            return
        notice = "" if shown == n else (
            f"Showing the first {shown} of {n} observations: with {m} states every step's covariances take "
            f"{3 * 8 * m * m / 2 ** 20:.1f} MB, and the step-by-step view keeps at most "
            f"{HISTORY_BUDGET / 2 ** 20:.0f} MB.")
        params = default_params(spec, y, exog)
        fit = self.fit.result
        if fit is not None and fit.spec == spec and not self.fit.stale:
            params.update(fit.params)
        self._params = params
        with param.parameterized.discard_events(self):
            self.t = min(self.t, shown - 1)
        self.param.t.bounds = (0, shown - 1)
        with param.parameterized.discard_events(self):
            self.variances = {k: v for k, v in params.items() if k.startswith("sigma2.")}
        waits = shown * m * m > EAGER_ENTRIES and spec != self._allowed
        self._set(step=None, busy=False, error="", notice=notice, pending=waits, n_obs=shown,
                  generation=self.generation + 1)
        self._refilter()

    def run(self):
        """Run the filter for the current (large) model: the Learn tab's button."""
        self._allowed = self.spec_model.spec
        if self.pending:
            self._set(pending=False)
            self._refilter()

    @param.depends("variances", watch=True)
    def _refilter(self):
        spec = self.spec_model.spec
        if spec is None or not self.data.ready or self.pending or self.n_obs < 1:
            return
        params = dict(self._params, **self.variances)
        y = self.data.y[:self.n_obs]
        exog = self.data.exog_frame
        exog = None if exog is None else exog.iloc[:self.n_obs]
        self._request += 1
        request = self._request
        self._set(busy=True)
        self.worker.submit(engine.filter_series, spec, params, y, exog,
                           on_done=lambda res: self._filtered(request, spec, params, y, exog, res),
                           on_error=lambda exc: self._failed(request, exc))

    def _filtered(self, request, spec, params, y, exog, result):
        if request != self._request:
            return  # an older request; a newer one is on its way
        self._run = (spec, params, y, exog, result)
        self._set(busy=False, error="")
        self._show()

    def _failed(self, request, exc):
        if request == self._request:
            self._set(busy=False, error=f"The filter failed: {exc}")

    @param.depends("t", watch=True)
    def _show(self):
        if self._run is None:
            return
        spec, params, y, exog, result = self._run
        t = min(self.t, len(y) - 1)
        try:
            step = filter_step(spec, params, y, exog, result, t, self.data.index)
        except Exception as exc:   # noqa: BLE001 (shown in the Learn tab instead of a traceback)
            log.exception("taking filter step %d apart failed", t)
            self._set(step=None, error=f"Could not take step {t} apart: {exc}")
            return
        self._set(step=step)

    def forward(self):
        if self.t < self.n_obs - 1:
            self.t += 1

    def back(self):
        if self.t > 0:
            self.t -= 1

    def explanation(self) -> str:
        """The texts for this step's kind, in the order the quantities are computed."""
        kind = self.step.kind if self.step else "standard"
        if kind == "diffuse":
            keys = ["diffuse", "prior", "diffuse predicted", "diffuse innovation", "diffuse gain",
                    "diffuse posterior"]
        elif kind == "missing":
            keys = ["missing", "prior", "predicted"]
        else:
            keys = ["prior", "predicted", "innovation", "gain", "posterior"]
        return "\n\n".join(EXPLANATIONS[k] for k in keys)

    def summary_rows(self) -> list[tuple[str, float]]:
        """(quantity, value) rows of this step's table, as the engine computed them: on a diffuse step
        both parts of the predictive variance, on a standard one F_t itself (F∞_t is 0 there)."""
        s = self.step
        if s is None:
            return []
        rows = [("observation y_t", s.y), ("predicted observation ŷ_t", s.predicted)]
        if s.kind == "diffuse":
            rows += [("diffuse predictive variance F∞_t = Z P∞_t Zᵀ", s.diffuse_var),
                     ("finite predictive variance F*_t = Z P*_t Zᵀ + H", s.innov_var)]
        else:
            rows += [("predictive variance F_t = Z P_t Zᵀ + H", s.innov_var)]
        if s.kind != "missing":
            rows += [("innovation v_t", s.innovation)]
        rows += [("measurement variance H", s.obs_var)]
        term = {"diffuse": "log-likelihood term −½(log 2π + log F∞_t)",
                "standard": "log-likelihood term −½(log 2π + log F_t + v_t²/F_t)",
                "missing": "log-likelihood term (none: y_t is missing)"}[s.kind]
        return rows + [(term, s.loglik)]
