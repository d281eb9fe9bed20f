"""Convergence diagnostics for posterior samples, with a verdict, and netCDF round-trips.

A fit is trustworthy only if every parameter has rank-normalised split R-hat ≤ 1.01 and bulk
and tail ESS ≥ 400 (Vehtari et al. 2021), no transition diverged, and no parameter's posterior
sits in the far tail of its prior (a prior–data conflict: the prior is badly scaled for the
data, or the model does not fit them). Anything else is flagged with the reason, so no caller
can show a failing fit as a good one.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

RHAT_MAX = 1.01
ESS_MIN = 400
PRIOR_TAIL = 1e-3   # a posterior median beyond the prior's 0.1% or 99.9% quantile is a conflict
# families whose density vanishes at their lower end (0, or −∞ for the normal): a posterior
# median in their lower tail is a conflict too; the others (half-normal, …) peak at zero,
# where a small variance is no conflict. Bounded families (uniform, beta) are not checked:
# their ends are the parameter's own constraints, not a choice of scale.
LOWER_TAIL_FAMILIES = {"inverse_gamma", "log_normal", "gamma", "normal"}
UPPER_TAIL_FAMILIES = {"half_normal", "half_cauchy", "half_student_t", "exponential"} | LOWER_TAIL_FAMILIES


class Diagnosis(NamedTuple):
    table: pd.DataFrame           # per parameter: mean, sd, hdi, r_hat, ess_bulk, ess_tail, mcse, div_shift,
                                  # prior_quantile (prior CDF at the posterior median; NaN if not checked)
    divergences: int              # divergent transitions, all chains
    divergences_per_chain: np.ndarray  # (chain,)
    trustworthy: bool
    reasons: tuple[str, ...]      # why not (empty when trustworthy)

    @property
    def verdict(self) -> str:
        if self.trustworthy:
            return ("trustworthy: R-hat ≤ 1.01, ESS ≥ 400 for every parameter, no divergences, "
                    "no posterior in the far tail of its prior")
        return "not trustworthy: " + "; ".join(self.reasons)


def diagnose(idata, *, rhat_max: float = RHAT_MAX, ess_min: float = ESS_MIN, hdi_prob: float = 0.94) -> Diagnosis:
    """R-hat, bulk/tail ESS, divergences and prior–data conflicts per parameter, and whether to
    trust the fit.

    `div_shift` localises divergences: for each parameter, how far (in posterior sds) the
    divergent draws sit from the mean of all draws (large |shift| points at a funnel or a
    boundary in that parameter); NaN when nothing diverged. `prior_quantile` is the prior's
    CDF at the posterior median, for the priors stored with the fit (`fit_nuts` keeps them).
    """
    import arviz as az

    post = idata.posterior
    table = az.summary(idata, kind="all", hdi_prob=hdi_prob, round_to="none")
    n_chains, n_draws = post.sizes["chain"], post.sizes["draw"]
    if "sample_stats" in idata.groups() and "diverging" in idata.sample_stats:
        div = np.asarray(idata.sample_stats["diverging"]).astype(bool)
    else:
        div = np.zeros((n_chains, n_draws), bool)
    shifts = {}
    for name in table.index:
        values = np.asarray(post[name]).reshape(n_chains, n_draws)
        sd = values.std()
        shifts[name] = (values[div].mean() - values.mean()) / sd if div.any() and sd > 0 else np.nan
    table["div_shift"] = pd.Series(shifts)
    quantiles = _prior_quantiles(idata)
    table["prior_quantile"] = pd.Series({n: q for n, (q, _) in quantiles.items()}, dtype=float)
    reasons = []
    if n_chains < 2:
        reasons.append("R-hat needs at least 2 chains")
    bad_rhat = table.index[~(table["r_hat"] <= rhat_max)].tolist()
    if bad_rhat and n_chains >= 2:
        worst = table.loc[bad_rhat, "r_hat"].max()
        reasons.append(f"R-hat > {rhat_max} for {bad_rhat} (worst {worst:.3f}): the chains disagree")
    for kind in ("ess_bulk", "ess_tail"):
        low = table.index[~(table[kind] >= ess_min)].tolist()
        if low:
            reasons.append(f"{kind.replace('_', ' ')} < {ess_min:g} for {low} (lowest {table.loc[low, kind].min():.0f}): "
                           "too few effective draws; run longer")
    n_div = int(div.sum())
    if n_div:
        worst = table["div_shift"].abs().idxmax()
        reasons.append(f"{n_div} divergent transition(s) (most related to {worst}): the sampler missed part of "
                       "the posterior; raise target_accept or reparametrise/re-prior")
    for name, (q, lower_tail) in quantiles.items():
        if q > 1 - PRIOR_TAIL or (lower_tail and q < PRIOR_TAIL):
            median = float(np.median(np.asarray(post[name])))
            side = "above" if q > 0.5 else "below"
            reasons.append(f"the posterior of {name} (median {median:.3g}) lies {side} all but {min(q, 1 - q):.2%} "
                           "of its prior's mass: the prior is badly scaled for these data, or the model does not "
                           "fit them")
    return Diagnosis(table, n_div, div.sum(axis=1), not reasons, tuple(reasons))


def _prior_quantiles(idata) -> dict[str, tuple[float, bool]]:
    """Per parameter with a stored prior whose upper tail means a conflict (`UPPER_TAIL_FAMILIES`):
    the prior's CDF at the posterior median, and whether its lower tail means one too."""
    import json

    from .priors import FAMILIES, make_distribution

    text = getattr(idata, "attrs", {}).get("priors") or idata.posterior.attrs.get("priors")
    if not text:
        return {}
    out = {}
    for name, prior in json.loads(text).items():
        family = prior["dist"]
        if name not in idata.posterior or family not in UPPER_TAIL_FAMILIES:
            continue
        distribution = make_distribution(family, tuple(prior[a] for a in FAMILIES[family][1]))
        q = float(distribution.cdf(float(np.median(np.asarray(idata.posterior[name])))))
        out[name] = (q, family in LOWER_TAIL_FAMILIES)
    return out


def to_netcdf(idata, path) -> str:
    """Save a fit (all groups, the spec and priors in the attributes) to a netCDF file."""
    idata.to_netcdf(str(path))
    return str(path)


def from_netcdf(path):
    """Load a fit saved by `to_netcdf`; boolean sample stats (e.g. `diverging`) come back as booleans."""
    import arviz as az

    idata = az.from_netcdf(str(path))
    if "sample_stats" in idata.groups() and "diverging" in idata.sample_stats:
        ss = idata.sample_stats
        if ss["diverging"].dtype != bool:
            ss["diverging"] = ss["diverging"].astype(bool)
    return idata


def spec_of(idata):
    """The ModelSpec a fit was made with (stored in its attributes)."""
    from .spec import ModelSpec

    text = getattr(idata, "attrs", {}).get("spec") or idata.posterior.attrs.get("spec")
    if text is None:
        raise ValueError("this InferenceData carries no model spec (was it made by engine.fit_nuts?)")
    return ModelSpec.from_json(text)
