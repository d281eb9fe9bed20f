"""Causal impact: what an intervention did to a series, batch and live.

Fit a structural model on the pre-period (with control series as regressors), predict the
post-period as if nothing had happened (the counterfactual), and compare (Brodersen et al.
2015, "Inferring causal impact using Bayesian structural time-series models"). Here the
states are integrated out exactly: each posterior draw's counterfactual is Gaussian, jointly
over the post-period, so the effects' intervals are exact mixture quantiles; and the
comparison can follow the post-period one observation at a time in O(1) per observation.

* `counterfactual` — the kernel: `init`/`step`/`run` of a bank run past the intervention;
* `effects`        — `ImpactResult` (bands, average, cumulative, relative, p, report, plot data);
* `analysis`       — `causal_impact` (batch) and `OnlineImpact` (live), the intervention's forms;
* `checks`         — placebo test, pre-period calibration, regressors affected by the intervention.
"""

from .analysis import ImpactStep, OnlineImpact, causal_impact, fit_pre_period, pre_period_fit, split_at_intervention
from .checks import (PlaceboResult, PrePeriodCheck, RegressorBreakWarning, RegressorCheck, placebo_test,
                     pre_period_check, regressor_check)
from .counterfactual import Counterfactual, CounterfactualStep, init, run, step
from .effects import Effect, ImpactResult, PrePeriodFit, report, tail_probability

__all__ = [
    "causal_impact", "OnlineImpact", "ImpactStep", "ImpactResult", "Effect", "PrePeriodFit",
    "Counterfactual", "CounterfactualStep", "init", "step", "run",
    "split_at_intervention", "fit_pre_period", "pre_period_fit", "report", "tail_probability",
    "placebo_test", "PlaceboResult", "pre_period_check", "PrePeriodCheck", "regressor_check", "RegressorCheck",
    "RegressorBreakWarning",
]
