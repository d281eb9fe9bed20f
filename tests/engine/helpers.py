"""Shared helpers for the engine tests: data, statsmodels reference models, comparisons.

The statsmodels side is built from the spec dict independently of the engine: the
trend kinds are translated to statsmodels' own string names (or, when `irregular` is
overridden, to statsmodels' documented flags), so a wrong mapping in the engine shows up
as a mismatch rather than being reproduced here.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.stats
import statsmodels.api as sm

import engine

# statsmodels' documented table of trend specifications, as its flags
# (irregular, level, stochastic_level, trend, stochastic_trend).
# Typed from the UnobservedComponents docstring, not taken from the engine.
SM_TREND_FLAGS = {
    "irregular": (True, False, False, False, False),
    "fixed intercept": (False, True, False, False, False),
    "deterministic constant": (True, True, False, False, False),
    "local level": (True, True, True, False, False),
    "random walk": (False, True, True, False, False),
    "fixed slope": (False, True, False, True, False),
    "deterministic trend": (True, True, False, True, False),
    "local linear deterministic trend": (True, True, True, True, False),
    "random walk with drift": (False, True, True, True, False),
    "local linear trend": (True, True, True, True, True),
    "smooth trend": (True, True, False, True, True),
    "random trend": (False, True, False, True, True),
}
KINDS = [k.replace(" ", "_") for k in SM_TREND_FLAGS]

# Relative tolerance of the log-likelihood checks against statsmodels (agreement is
# ~1e-12 in practice once statsmodels' own steady-state shortcut is switched off).
RTOL_LL = 1e-6


# -- data ---------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _dataset(name: str) -> pd.DataFrame:
    return engine.load_dataset(name)


def air() -> np.ndarray:
    """Log airline passengers (144 monthly values)."""
    return np.log(_dataset("airpassengers")["passengers"].to_numpy(dtype=float))


def nile() -> np.ndarray:
    return _dataset("nile")["flow"].to_numpy(dtype=float)


def co2() -> np.ndarray:
    return _dataset("co2")["co2"].to_numpy(dtype=float)


def seatbelts(columns=("petrol_price", "law")) -> tuple[np.ndarray, pd.DataFrame]:
    """Log drivers killed or seriously injured, and the regressors as a DataFrame."""
    df = _dataset("seatbelts")
    return np.log(df["drivers"].to_numpy(dtype=float)), df[list(columns)].reset_index(drop=True)


# Missing values at the start, isolated and in a run.
GAP_INDEX = (0, 5, 30, 31, 32, 100)


def with_gaps(y: np.ndarray, index=GAP_INDEX) -> np.ndarray:
    y = np.array(y, dtype=float, copy=True)
    y[list(index)] = np.nan
    return y


# -- statsmodels reference ------------------------------------------------------------------
def sm_model(spec: dict, y, exog=None, exact_steady=True) -> sm.tsa.UnobservedComponents:
    """statsmodels UnobservedComponents equivalent of an engine spec dict.

    exact_steady: switch off statsmodels' steady-state shortcut (its `tolerance`), which
    otherwise perturbs the log-likelihood in the 1e-10 (relative) range.
    """
    kw: dict = {}
    level = spec.get("level")
    kind = level["kind"] if isinstance(level, dict) else level
    if kind is not None:
        name = kind.replace("_", " ")
        if "irregular" in spec:
            _, lev, slev, tr, stoch_tr = SM_TREND_FLAGS[name]
            kw.update(irregular=bool(spec["irregular"]), level=lev, stochastic_level=slev,
                      trend=tr, stochastic_trend=stoch_tr)
        else:
            kw["level"] = name
    else:
        kw["irregular"] = bool(spec.get("irregular", True))
    seasonal = spec.get("seasonal") or []
    if isinstance(seasonal, dict):
        seasonal = [seasonal]
    dummies = [s for s in seasonal if s.get("form", "dummy") == "dummy"]
    trigs = [s for s in seasonal if s.get("form", "dummy") == "trig"]
    if len(dummies) > 1:
        raise NotImplementedError("statsmodels UC has one dummy seasonal")
    if dummies:
        kw.update(seasonal=int(dummies[0]["period"]),
                  stochastic_seasonal=dummies[0].get("stochastic", True))
    if trigs:
        kw["freq_seasonal"] = [{"period": s["period"], "harmonics": s.get("harmonics", int(s["period"] // 2))}
                               for s in trigs]
        kw["stochastic_freq_seasonal"] = [s.get("stochastic", True) for s in trigs]
    cycle = spec.get("cycle")
    if cycle:
        cycle = {} if cycle is True else cycle
        kw.update(cycle=True, damped_cycle=cycle.get("damped", True),
                  stochastic_cycle=cycle.get("stochastic", True))
        if "period_bounds" in cycle:
            kw["cycle_period_bounds"] = tuple(cycle["period_bounds"])
    ar = spec.get("autoregressive")
    if ar:
        kw["autoregressive"] = ar["order"] if isinstance(ar, dict) else int(ar)
    reg = spec.get("regression")
    if reg:
        mode = reg.get("coefficients", "parameters")
        if mode == "time_varying":
            raise NotImplementedError("no statsmodels UC equivalent")
        kw["mle_regression"] = mode == "parameters"
        if exog is None:
            raise ValueError("regression needs exog")
        exog = exog[list(reg["columns"])] if isinstance(exog, pd.DataFrame) else exog
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod = sm.tsa.UnobservedComponents(np.asarray(y, dtype=float), exog=exog,
                                          use_exact_diffuse=True, **kw)
    if exact_steady:
        mod.ssm.tolerance = 0.0
    return mod


def sm_loglik(spec: dict, params, y, exog=None) -> float:
    mod = sm_model(spec, y, exog)
    return float(mod.loglike(np.asarray(params, dtype=float)))


def default_params(names, scale=1.0, variance=0.01, ar=(0.5, -0.2, 0.1), frequency=2 * np.pi / 30,
                   damping=0.9, beta=None) -> np.ndarray:
    """A plausible parameter vector for parameter names (statsmodels spelling)."""
    out = []
    for n in names:
        if n.startswith("sigma2."):
            out.append(variance * scale)
        elif n == "frequency.cycle":
            out.append(frequency)
        elif n == "damping.cycle":
            out.append(damping)
        elif n.startswith("ar.L"):
            out.append(ar[int(n[4:]) - 1])
        elif n.startswith("beta."):
            out.append(0.0 if beta is None else beta[n])
        else:
            raise KeyError(n)
    return np.array(out, dtype=float)


def assert_rel_close(actual, expected, rtol, what=""):
    """|a - e| <= rtol * max|e| elementwise (relative to the largest magnitude of the reference)."""
    actual = np.asarray(actual, dtype=float)
    expected = np.asarray(expected, dtype=float)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    scale = max(float(np.max(np.abs(expected))), np.finfo(float).tiny) if expected.size else 1.0
    err = float(np.max(np.abs(actual - expected))) / scale if expected.size else 0.0
    assert err <= rtol, f"{what}: max relative error {err:.3e} > {rtol:.1e}"


# y_t ~ N(0, σ²) iid (irregular only); σ² ~ InvGamma(A, B) ⇒ σ² | y ~ InvGamma(A + n/2, B + Σy²/2).
IID = {"irregular": True}
A, B = 3.0, 2.0


def conjugate_log_posterior(spec, y, exog=None, priors=None):
    """Same contract as engine.bayes.log_posterior, for the conjugate model: z = log σ²."""
    def logp(z):
        s2 = jnp.exp(z[0])
        prior = scipy_invgamma_logpdf(s2)
        return engine.loglik(spec, jnp.exp(z), y) + prior + z[0]
    return logp, lambda p: jnp.log(p), lambda z: jnp.exp(z)


def scipy_invgamma_logpdf(s2):
    return A * jnp.log(B) - jax.scipy.special.gammaln(A) - (A + 1) * jnp.log(s2) - B / s2


def exact_posterior(y):
    """The exact posterior of σ² given y (NaN skipped), as a scipy distribution."""
    obs = y[~np.isnan(y)]
    return scipy.stats.invgamma(A + len(obs) / 2, scale=B + np.sum(obs ** 2) / 2)


def potential_likelihoods(prob, params) -> tuple[float, float]:
    """(the likelihood inside the MAP objective, the one inside the NUTS sampler's potential) at
    `params` for a `bayes.make_problem` problem: each potential less its prior part."""
    import jax.numpy as jnp

    from engine import bayes

    shapes = bayes._shapes(prob.spec, prob.args[0], prob.args[1])
    z = bayes._maps(prob)[0](jnp.asarray(params))

    def potential(**kw):
        co = bayes._coordinates(prob.spec, prob.families, shapes, **kw)
        return float(co.potential_fn_gen(*prob.args)(co.unravel(z)))

    prior = potential(likelihood=False)
    return (prior - float(bayes._vector_potential(prob.spec, prob.families, prob.args)(z)),
            prior - potential(for_sampler=True))
