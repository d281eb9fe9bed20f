"""Checks that keep an intervention analysis honest.

A causal-impact estimate rests on three assumptions the data can partly test:

* the model describes the pre-period: its one-step-ahead predictions there are calibrated
  (`pre_period_check`: PIT uniform, intervals covering at their rate);
* it does not "find" effects where there are none: fake interventions inside the pre-period
  (`placebo_test`) should find an effect about as often as the intervals' error rate;
* the control series were not themselves moved by the intervention (`regressor_check`: each
  is analysed as a response of its own, with a local level model, at the same intervention).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import pandas as pd
import scipy.stats

from ..spec import as_spec
from .analysis import _series, causal_impact, split_at_intervention
from .effects import Effect, ImpactResult


class RegressorBreakWarning(UserWarning):
    """A control series looks affected by the intervention (its own pre/post break)."""


class PrePeriodCheck(NamedTuple):
    """Calibration of the one-step-ahead predictions over the pre-period."""

    n: int                  # predictions checked (observed, past the diffuse start)
    coverage: float         # fraction of y_t inside its `level` one-step interval
    level: float
    coverage_50: float      # fraction inside the central 50% interval
    ks_pvalue: float        # Kolmogorov–Smirnov test of PIT ~ U(0, 1) (approximate: the draws saw these data)
    ok: bool                # coverage and PIT consistent with calibration (binomial 0.1% tails, KS p ≥ 0.001)
    message: str


def pre_period_check(result: ImpactResult, tail: float = 1e-3) -> PrePeriodCheck:
    """One-step PIT and interval coverage over the pre-period of an analysis (nothing is refitted).

    The coverage counts are compared with Binomial(n, level) (and Binomial(n, ½)); `ok` is False
    when either falls in a `tail` of its binomial or the KS test rejects at `tail`. The draws were
    fitted on these data, so mild over-coverage is expected; under-coverage means the model
    misses structure, and so will its counterfactual.
    """
    pit = np.asarray(result.pre_fit.pit)
    pit = pit[np.isfinite(pit)]
    n = len(pit)
    if n == 0:
        raise ValueError("the pre-period has no one-step prediction to check (too short after the diffuse start)")
    lv = result.level
    inside = int(np.sum((pit >= (1 - lv) / 2) & (pit <= (1 + lv) / 2)))
    inside_50 = int(np.sum((pit >= 0.25) & (pit <= 0.75)))
    ks = float(scipy.stats.kstest(pit, "uniform").pvalue)

    def plausible(k, p):
        return scipy.stats.binom.cdf(k, n, p) >= tail and scipy.stats.binom.sf(k - 1, n, p) >= tail
    ok = plausible(inside, lv) and plausible(inside_50, 0.5) and ks >= tail
    msg = (f"{inside} of {n} pre-period observations fall inside their one-step {100 * lv:.0f}% interval "
           f"({100 * inside / n:.0f}%), {inside_50} inside the 50% one ({100 * inside_50 / n:.0f}%); PIT uniformity "
           f"p = {ks:.3g}. ")
    msg += ("The model is calibrated on the pre-period." if ok else
            "The model's one-step predictions are not calibrated on the pre-period: its counterfactual intervals "
            "are not to be trusted either. Try other components (seasonality, trend, AR) or other controls.")
    return PrePeriodCheck(n, inside / n, lv, inside_50 / n, ks, bool(ok), msg)


class PlaceboResult(NamedTuple):
    """Fake interventions inside the pre-period and what the analysis made of them."""

    positions: np.ndarray    # (placebo,) first post-period position of each fake intervention
    length: int              # post-period length of each
    p_no_effect: np.ndarray  # (placebo,)
    effects: list[Effect]    # cumulative effect of each
    found: np.ndarray        # (placebo,) bool: the interval of the cumulative effect excludes 0
    fraction_found: float
    expected: float          # the rate a calibrated analysis finds an effect where there is none: 1 − level
    message: str


def placebo_test(spec, y, exog=None, *, intervention, n_placebos: int = 5, length: int | None = None,
                 method: str = "map", draws: int = 200, level: float = 0.95, min_pre: int | None = None,
                 seed: int = 0, **fit) -> PlaceboResult:
    """Analyse fake interventions placed inside the pre-period (refitting each on the data before it).

    Only the pre-period of the real `intervention` is used. Each placebo's post-period has
    `length` steps (default: the real post-period's, capped at a third of the pre-period), and
    the placebos start evenly spaced from `min_pre` (default: half the pre-period) to the end of
    the pre-period. Each is fitted on the `min_pre` observations before it (a sliding window:
    every placebo sees as much data as the first, and all share one compiled fit). With no effect anywhere in the pre-period, the cumulative interval excludes 0
    for about 1 − level of them; many more "findings" mean the model's intervals are too narrow
    for these data. fit: passed to `causal_impact` (chains, warmup, priors ...).
    """
    spec = as_spec(spec)
    index, values, x = _series(y, exog, spec)
    n_pre, n_end = split_at_intervention(index, intervention)
    length = int(min(n_end - n_pre, n_pre // 3) if length is None else length)
    min_pre = n_pre // 2 if min_pre is None else int(min_pre)
    if length < 1 or min_pre + length > n_pre or n_placebos < 1:
        raise ValueError(f"placebo_test: the pre-period ({n_pre} observations) cannot hold placebo post-periods "
                         f"of length {length} after {min_pre} fitting observations; lower length or min_pre")
    positions = np.unique(np.linspace(min_pre, n_pre - length, n_placebos).round().astype(int))
    ps, effects = [], []
    for i, k in enumerate(positions):
        window = slice(k - min_pre, k + length)
        res = causal_impact(spec, values[window], None if x is None else x[window], intervention=min_pre,
                            method=method, draws=draws, level=level, seed=seed + i, check_regressors=False, **fit)
        ps.append(res.p_no_effect)
        effects.append(res.cumulative)
    found = np.array([not (e.lower <= 0 <= e.upper) for e in effects])
    frac = float(found.mean())
    expected = 1 - level
    tail = scipy.stats.binom.sf(int(found.sum()) - 1, len(found), expected)
    msg = (f"{int(found.sum())} of {len(found)} placebo interventions in the pre-period 'found' an effect "
           f"(a calibrated analysis finds one {100 * expected:.0f}% of the time")
    msg += ("); the model's intervals look too narrow for these data." if tail < 0.01 else
            "), consistent with no spurious effects.")
    return PlaceboResult(positions, length, np.array(ps), effects, found, frac, expected, msg)


class RegressorCheck(NamedTuple):
    """Each control series analysed as a response at the same intervention (local level model)."""

    columns: list[str]
    p_no_effect: np.ndarray    # (column,)
    relative: np.ndarray       # (column,) relative average effect on the control
    affected: np.ndarray       # (column,) bool: its interval excludes zero
    message: str


REGRESSOR_MODEL = {"irregular": True, "level": {"kind": "local_level"}}


def regressor_check(exog, *, intervention, columns=None, level: float = 0.95, draws: int = 200, seed: int = 0,
                    warn: bool = True) -> RegressorCheck:
    """Does a control series break at the intervention? Each column is analysed as a response of
    its own (`REGRESSOR_MODEL`, MAP): a control affected by the intervention would carry part of
    the effect into the counterfactual and bias it. Warns (`RegressorBreakWarning`) for each
    column whose effect interval excludes zero."""
    frame = exog if isinstance(exog, pd.DataFrame) else pd.DataFrame(np.asarray(exog, dtype=float).reshape(
        len(exog), -1), columns=columns)
    names = [str(c) for c in frame.columns] if columns is None else [str(c) for c in columns]
    ps, rel, hit = [], [], []
    for name in names:
        series = frame[name] if name in frame.columns else frame.iloc[:, names.index(name)]
        res = causal_impact(REGRESSOR_MODEL, series, intervention=intervention, method="map", draws=draws,
                            level=level, seed=seed, check_regressors=False)
        ps.append(res.p_no_effect)
        rel.append(res.relative.mean)
        hit.append(not (res.average.lower <= 0 <= res.average.upper))
    affected = np.array(hit, dtype=bool)
    if affected.any():
        bad = [n for n, a in zip(names, affected) if a]
        msg = (f"control series {bad} change at the intervention themselves (their own counterfactual interval "
               f"excludes no change): if the intervention moved them, the estimated effect is biased. Drop them "
               f"or check that the change has another cause.")
        if warn:
            warnings.warn(msg, RegressorBreakWarning, stacklevel=2)
    else:
        msg = "no control series changes at the intervention."
    return RegressorCheck(names, np.array(ps), np.array(rel), affected, msg)
