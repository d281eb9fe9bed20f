"""Effects from the counterfactual's per-draw moments: bands, averages, sums, p, the written report.

Everything here is exact given the draws: each summary is a mixture Σ_s w_s N(μ_s, σ²_s) over
the draws (parameter uncertainty) of Gaussians (state and observation uncertainty), and its
intervals are that mixture's quantiles (`posterior.mixture_quantiles`, bisection on its CDF),
not Monte Carlo estimates. The effect of the intervention at t is y_t − ŷ_t with ŷ_t the
counterfactual; its interval is y_t minus the counterfactual's, upper and lower swapped.

Conventions follow CausalImpact (Brodersen et al. 2015), so that numbers can be compared:

* the *average* effect is the cumulative one over the observed post-period steps divided by
  their number; the *cumulative* one sums them;
* the *relative* effect is the absolute effect over the counterfactual's mean (its interval is
  the absolute one's over that mean), the same for the average and the cumulative;
* `p_no_effect` is the one-sided tail probability of the observed sum under the
  counterfactual, min(P(C ≥ Σ y), P(C ≤ Σ y)): small when the post-period sum is surprising
  in either direction. (CausalImpact calls it the posterior tail-area probability p and reports
  1 − p as the probability of a causal effect.) Under no effect it is uniform on [0, ½].
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy.special import ndtr

from ..posterior import Band, mixture_quantiles
from .counterfactual import check_proper


class Effect(NamedTuple):
    """A posterior summary of one number: its mean, central interval and standard deviation."""

    mean: float
    lower: float
    upper: float
    sd: float


class PrePeriodFit(NamedTuple):
    """One-step-ahead predictions over the pre-period (NaN where y is missing or diffuse)."""

    mean: np.ndarray       # (pre,) E[y_t | y_{1:t-1}] mixed over the draws
    lower: np.ndarray      # (pre,)
    upper: np.ndarray      # (pre,)
    pit: np.ndarray        # (pre,) P(Y_t ≤ y_t | y_{1:t-1}): uniform when the model is right


class ImpactResult(NamedTuple):
    """A causal-impact analysis: the counterfactual, the effects and the report.

    Arrays over the post-period have one row per post-period step (`post_index`); the
    per-draw moments they come from are kept (`draw_mean` ...) so that other summaries can be
    derived without refitting."""

    index: pd.Index              # (time,) labels of the whole analysed series
    n_pre: int                   # the first n_pre observations are the pre-period
    observed: np.ndarray         # (time,) y (NaN missing)
    level: float                 # interval probability (0.95)
    pre_fit: PrePeriodFit        # one-step predictions over the pre-period
    predicted: Band              # (post,) counterfactual ŷ_t: mean and interval
    pointwise: Band              # (post,) effect y_t − ŷ_t (NaN where y_t is missing)
    cumulative_path: Band        # (post,) Σ_{s ≤ t} (y_s − ŷ_s) over observed steps
    actual: Effect               # observed average (mean) and, in `actual_sum`, the sum
    actual_sum: float
    prediction: Effect           # counterfactual average over the observed post-period steps
    prediction_sum: Effect       # counterfactual sum
    average: Effect              # average effect
    cumulative: Effect           # cumulative effect
    relative: Effect             # relative effect (average over counterfactual mean; = cumulative's)
    p_no_effect: float           # one-sided tail probability of the observed sum (see the module)
    weights: np.ndarray          # (draw,) the draws' weights
    draws: np.ndarray            # (draw, param) the parameter draws
    draw_mean: np.ndarray        # (post, draw) μ_t,s
    draw_var: np.ndarray         # (post, draw) F_t,s
    cum_mean: np.ndarray         # (post, draw) E C_t,s
    cum_var: np.ndarray          # (post, draw) Var C_t,s
    method: str                  # "nuts", "map", "given" or "stream"
    regressors: object = None    # `checks.RegressorCheck` of the control series, when made

    @property
    def post_index(self) -> pd.Index:
        return self.index[self.n_pre:]

    @property
    def probability_of_effect(self) -> float:
        """1 − p_no_effect (CausalImpact's "posterior probability of a causal effect")."""
        return 1.0 - self.p_no_effect

    def table(self) -> pd.DataFrame:
        """CausalImpact's summary table: rows Average and Cumulative; actual, prediction, absolute and
        relative effect with their intervals and standard deviations, and p."""
        rows = {}
        for name, pred, eff, actual in (("Average", self.prediction, self.average, self.actual.mean),
                                        ("Cumulative", self.prediction_sum, self.cumulative, self.actual_sum)):
            scale = pred.mean
            rows[name] = {"Actual": actual, "Pred": pred.mean, "Pred.lower": pred.lower, "Pred.upper": pred.upper,
                          "Pred.sd": pred.sd, "AbsEffect": eff.mean, "AbsEffect.lower": eff.lower,
                          "AbsEffect.upper": eff.upper, "AbsEffect.sd": eff.sd,
                          "RelEffect": _ratio(eff.mean, scale), "RelEffect.lower": _ratio(eff.lower, scale),
                          "RelEffect.upper": _ratio(eff.upper, scale), "RelEffect.sd": _ratio(eff.sd, abs(scale)),
                          "alpha": 1 - self.level, "p": self.p_no_effect}
        return pd.DataFrame(rows).T

    def plot(self) -> pd.DataFrame:
        """The three panels' data over the whole series, indexed by time: observed; the prediction
        (one-step-ahead in the pre-period, the counterfactual after) with its band; the pointwise
        effect (the one-step residual before) with its band; the cumulative effect (0 before the
        intervention, as CausalImpact draws it) with its band; and `post`, True after the intervention."""
        pre = slice(0, self.n_pre)
        zeros = np.zeros(self.n_pre)
        y_pre = self.observed[pre]
        f = self.pre_fit
        cols = {
            "observed": self.observed,
            "predicted": np.concatenate([f.mean, self.predicted.mean]),
            "predicted_lower": np.concatenate([f.lower, self.predicted.lower]),
            "predicted_upper": np.concatenate([f.upper, self.predicted.upper]),
            "pointwise": np.concatenate([y_pre - f.mean, self.pointwise.mean]),
            "pointwise_lower": np.concatenate([y_pre - f.upper, self.pointwise.lower]),
            "pointwise_upper": np.concatenate([y_pre - f.lower, self.pointwise.upper]),
            "cumulative": np.concatenate([zeros, self.cumulative_path.mean]),
            "cumulative_lower": np.concatenate([zeros, self.cumulative_path.lower]),
            "cumulative_upper": np.concatenate([zeros, self.cumulative_path.upper]),
            "post": np.arange(len(self.observed)) >= self.n_pre,
        }
        return pd.DataFrame(cols, index=self.index)

    def summary(self, kind: str = "report", digits: int = 2) -> str:
        """A written summary: "report" (a few paragraphs in plain words, as CausalImpact's
        `summary("report")`) or "table" (the numbers of `table`, as text)."""
        if kind == "table":
            return self.table().T.to_string(float_format=lambda v: f"{v:.{digits}f}")
        if kind != "report":
            raise ValueError(f"summary kind {kind!r} is not known; use 'report' or 'table'")
        return report(self, digits)


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b != 0 else float("nan")


def _effect(draw_mean: np.ndarray, draw_var: np.ndarray, w: np.ndarray, level: float) -> Effect:
    """Mean, central interval and sd of the mixture Σ w_s N(draw_mean_s, draw_var_s) (one number)."""
    lo, hi = mixture_quantiles(draw_mean[:, None], draw_var[:, None], [(1 - level) / 2, (1 + level) / 2],
                               weights=w)[:, 0]
    mean = float(np.sum(w * draw_mean))
    var = float(np.sum(w * (draw_var + draw_mean ** 2)) - mean ** 2)
    return Effect(mean, float(lo), float(hi), float(np.sqrt(max(var, 0.0))))


def _band(draw_mean: np.ndarray, draw_var: np.ndarray, w: np.ndarray, level: float) -> Band:
    """(time,) mean and central interval of the mixtures in draw_mean, draw_var (time, draw)."""
    if draw_mean.shape[0] == 0:
        return Band(np.zeros(0), np.zeros(0), np.zeros(0))
    lo, hi = mixture_quantiles(draw_mean.T, draw_var.T, [(1 - level) / 2, (1 + level) / 2], weights=w)
    return Band(draw_mean @ w, lo, hi)


def _negate_shift(band: Band, shift: np.ndarray) -> Band:
    """The band of shift − X from the band of X (the interval's ends swap)."""
    return Band(shift - band.mean, shift - band.upper, shift - band.lower)


def tail_probability(observed_sum: float, cum_mean: np.ndarray, cum_var: np.ndarray, w: np.ndarray) -> float:
    """min(P(C ≤ s), P(C ≥ s)) for C ~ Σ w_d N(cum_mean_d, cum_var_d) and the observed sum s."""
    below = float(np.sum(w * ndtr((observed_sum - cum_mean) / np.sqrt(np.maximum(cum_var, 1e-300)))))
    return min(below, 1.0 - below)


def build_result(index: pd.Index, y: np.ndarray, n_pre: int, pre_fit: PrePeriodFit, steps, weights: np.ndarray,
                 draws: np.ndarray, level: float, method: str) -> ImpactResult:
    """The `ImpactResult` of stacked post-period steps (a `CounterfactualStep` with time first) on the host."""
    w = np.asarray(weights, dtype=float)
    w = w / w.sum()
    draw_mean, draw_var = np.asarray(steps.draw_mean), np.asarray(steps.draw_var)
    cum_mean, cum_var = np.asarray(steps.cum_mean), np.asarray(steps.cum_var)
    check_proper(steps)
    y_post = np.asarray(y[n_pre:], dtype=float)
    observed = np.isfinite(y_post)
    if not observed.any():
        raise ValueError("the post-period has no observed value: there is nothing to compare the "
                         "counterfactual with")
    predicted = _band(draw_mean, draw_var, w, level)
    pointwise = _negate_shift(predicted, y_post)     # NaN where y_t is missing
    obs_sum_path = np.asarray(steps.observed_sum, dtype=float)
    cumulative_path = _negate_shift(_band(cum_mean, cum_var, w, level), obs_sum_path)
    n_obs = int(observed.sum())
    s = float(obs_sum_path[-1])
    pred_sum = _effect(cum_mean[-1], cum_var[-1], w, level)
    cumulative = Effect(s - pred_sum.mean, s - pred_sum.upper, s - pred_sum.lower, pred_sum.sd)
    prediction = Effect(*(v / n_obs for v in pred_sum))
    average = Effect(*(v / n_obs for v in cumulative))
    relative = Effect(_ratio(average.mean, prediction.mean), _ratio(average.lower, prediction.mean),
                      _ratio(average.upper, prediction.mean), _ratio(average.sd, abs(prediction.mean)))
    actual = Effect(s / n_obs, s / n_obs, s / n_obs, 0.0)
    p = tail_probability(s, cum_mean[-1], cum_var[-1], w)
    return ImpactResult(index, n_pre, np.asarray(y, dtype=float), level, pre_fit, predicted, pointwise,
                        cumulative_path, actual, s, prediction, pred_sum, average, cumulative, relative, p, w,
                        np.asarray(draws), draw_mean, draw_var, cum_mean, cum_var, method)


def _number(v: float, digits: int) -> str:
    return f"{v:,.{digits}f}"


def _percent(v: float) -> str:
    return "n/a" if not np.isfinite(v) else f"{100 * v:+.0f}%"


def report(res: ImpactResult, digits: int = 2) -> str:
    """The analysis in plain words (what CausalImpact's `summary("report")` says, in our words)."""
    lv = f"{100 * res.level:.0f}%"
    n = lambda v: _number(v, digits)
    post = res.post_index
    n_obs = int(np.sum(np.isfinite(res.observed[res.n_pre:])))
    a, c, r = res.average, res.cumulative, res.relative
    significant = not (a.lower < 0 < a.upper)
    direction = "increase" if a.mean > 0 else "decrease"
    paras = [
        f"The intervention is taken to start at {post[0]}; the model was fitted on the {res.n_pre} observations "
        f"before it and predicts, for the {len(post)} steps after it ({n_obs} observed), what the response "
        f"would have been without the intervention (the counterfactual), with parameter and state "
        f"uncertainty ({len(res.weights)} posterior draws, {res.method}).",
        f"After the intervention the response averaged {n(res.actual.mean)}. Without it we would have expected "
        f"{n(res.prediction.mean)} ({lv} interval [{n(res.prediction.lower)}, {n(res.prediction.upper)}]). "
        f"The difference, the estimated effect of the intervention, is {n(a.mean)} per step "
        f"({lv} interval [{n(a.lower)}, {n(a.upper)}]).",
        f"Summed over the post-period the response was {n(res.actual_sum)} against an expected "
        f"{n(res.prediction_sum.mean)} ([{n(res.prediction_sum.lower)}, {n(res.prediction_sum.upper)}]): a "
        f"cumulative effect of {n(c.mean)} ([{n(c.lower)}, {n(c.upper)}]). Sums are meaningful only when the "
        f"response is a quantity that adds up (sales, counts), not for levels or rates.",
        f"In relative terms the response shows {'an increase' if a.mean > 0 else 'a decrease'} of "
        f"{_percent(r.mean)} ({lv} interval [{_percent(r.lower)}, {_percent(r.upper)}]).",
    ]
    p = res.p_no_effect
    if res.regressors is not None and np.any(res.regressors.affected):
        paras.append("Warning: " + res.regressors.message)
    if significant:
        paras.append(
            f"The {lv} interval of the effect excludes zero: the {direction} is unlikely to be chance. The "
            f"probability of a sum at least this far from the counterfactual's, were there no effect, is "
            f"p = {p:.3g} (posterior probability of an effect {100 * (1 - p):.1f}%). This assumes the model "
            f"fits the pre-period (see the one-step checks), that the control series were not themselves "
            f"affected by the intervention, and that nothing else changed at the same time.")
    else:
        paras.append(
            f"The {lv} interval of the effect includes zero, so the data do not show an effect: an apparent "
            f"{direction} this size arises by chance with probability p = {p:.3g} (one-sided). This does not "
            f"mean there was no effect; it may be too small to tell from the noise, or the control series "
            f"may explain too little of the response to make the counterfactual sharp.")
    return "\n\n".join(paras)
