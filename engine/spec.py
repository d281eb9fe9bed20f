"""ModelSpec: the one JSON-serialisable description of a structural model.

The widgets edit it, the engine builds matrices from it, files store it. A spec
is frozen and hashable so that it can be a static argument of ``jax.jit``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

__all__ = [
    "TREND_KINDS", "REGRESSION_MODES", "SEASONAL_FORMS", "OBSERVATION_FAMILIES", "COUNT_FAMILIES",
    "SpecificationWarning", "MAX_STATES", "MAX_HISTORY_BYTES", "REGIME_KINDS", "format_period", "Seasonal", "Cycle",
    "Regression", "Observation", "Initialization", "INITIALIZATIONS", "ModelSpec", "as_spec", "param_names", "seasonal_param_name", "variance_names",
    "observation_param_names", "require_gaussian",
]


# statsmodels UnobservedComponents trend specifications, named with underscores:
# kind -> (irregular, level, stochastic_level, trend, stochastic_trend)
TREND_KINDS: dict[str, tuple[bool, bool, bool, bool, bool]] = {
    "irregular": (True, False, False, False, False),
    "fixed_intercept": (False, True, False, False, False),
    "deterministic_constant": (True, True, False, False, False),
    "local_level": (True, True, True, False, False),
    "random_walk": (False, True, True, False, False),
    "fixed_slope": (False, True, False, True, False),
    "deterministic_trend": (True, True, False, True, False),
    "local_linear_deterministic_trend": (True, True, True, True, False),
    "random_walk_with_drift": (False, True, True, True, False),
    "local_linear_trend": (True, True, True, True, True),
    "smooth_trend": (True, True, False, True, True),
    "random_trend": (False, True, False, True, True),
}

REGRESSION_MODES = ("parameters", "state", "time_varying")

# Switching regimes (`regimes` in the spec), in state order: each is a per-step event that adds the
# variance `scale.<kind>` to one disturbance with probability `prob.<kind>` (engine.regimes):
# kind -> (the disturbance it inflates, what the model needs for it to exist)
REGIME_KINDS: dict[str, tuple[str, str]] = {
    "outlier": ("the observation noise ε_t", ""),
    "level_shift": ("the level's disturbance", "a level"),
    "slope_shift": ("the slope's disturbance", "a trend (slope)"),
    "seasonal_break": ("every seasonal's disturbance", "a seasonal"),
}
SEASONAL_FORMS = ("dummy", "trig")
# How y_t depends on the signal θ_t = Z_t α_t + d_t: gaussian y = θ + ε; student_t the same with a
# Student-t ε (scale² sigma2.irregular, nu.observation degrees of freedom); poisson and
# negative_binomial (NB2, variance μ + α μ², alpha.observation) counts with log mean θ_t + log E_t.
OBSERVATION_FAMILIES = ("gaussian", "student_t", "poisson", "negative_binomial")
COUNT_FAMILIES = ("poisson", "negative_binomial")


class SpecificationWarning(UserWarning):
    """A spec was accepted but changed to describe a usable model (as statsmodels would)."""


# The most states a model may have. A dense state covariance of m states holds m² float64s and one
# filter step costs about m³ flops: at 1000 states that is 8 MB and, measured on a 2-core CPU, about
# 90 s per log-likelihood of the 3652 daily births (14 s at the 365 states of a level and a
# 365-day dummy seasonal) — the edge of what a fit can afford. The cap admits daily data
# with a yearly seasonal in either form (364 states, dummy or full trigonometric) plus weekly,
# trend, cycle and a long AR, and refuses the specs that cannot be held at all (a seasonal period
# of 2500 makes every (time, state, state) history gigabytes, one of 1e9 a 7 EiB covariance).
# How much history the data adds is bounded separately (`check_length`).
MAX_STATES = 1000

# The most bytes one (time, state, state) float64 history may take for a series: filtering with
# every step's moments (the Learn tab) and smoothing (every fit's decomposition) keep three to
# four such arrays, so 1 GiB each keeps a session's peak to a few GiB on a server shared by
# sessions. 10 years of daily data allow 191 states, a year of hourly data 123.
MAX_HISTORY_BYTES = 2 ** 30


def _check_fields(name: str, d: Mapping, known: set[str]):
    """An unknown field inside a component is an error, not silently ignored (a typo such as
    'n_harmonics' would otherwise fit a different model than the one asked for)."""
    unknown = sorted(map(str, set(d) - known))
    if unknown:
        _fail(f"{name}.{unknown[0]}", "unknown field", f"Valid fields are {sorted(known)}")


def _fail(field_name: str, problem: str, fix: str) -> None:
    raise ValueError(f"spec field '{field_name}': {problem}. {fix}")


def _shown(value: Any) -> str:
    """A value as a message quotes it: null as 'nothing', long values cut short."""
    if value is None:
        return "nothing (null)"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(field_name: str, value: Any, fix: str) -> float:
    """A finite real number (not a bool, None or text), else a ValueError naming the field."""
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        try:
            x = float(value)
        except OverflowError:
            x = math.inf
        if math.isfinite(x):
            return x
    _fail(field_name, f"expected a finite number, got {_shown(value)}", fix)


def _whole(field_name: str, value: Any, fix: str) -> int:
    """A whole number (an int, or a float with no fraction), else a ValueError naming the field."""
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) \
            and math.isfinite(float(value)) and float(value).is_integer():
        return int(value)
    _fail(field_name, f"expected a whole number, got {_shown(value)}", fix)


def _flag(field_name: str, value: Any, default: bool) -> bool:
    """true/false (absent or null: the default); anything else is refused, since bool('false') is True."""
    if value is None:
        return default
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    _fail(field_name, f"expected true or false, got {_shown(value)}", "Use true or false")


def format_period(period: float) -> str:
    """Period as statsmodels prints it in parameter names (12 -> '12', 365.25 -> '365.25')."""
    return repr(int(period)) if float(period).is_integer() else repr(float(period))


@dataclass(frozen=True)
class Seasonal:
    period: float
    form: str = "dummy"
    harmonics: int | None = None
    stochastic: bool = True

    @property
    def n_harmonics(self) -> int:
        return self.harmonics if self.harmonics is not None else int(math.floor(self.period / 2))

    @property
    def n_states(self) -> int:
        return int(self.period) - 1 if self.form == "dummy" else 2 * self.n_harmonics

    def to_dict(self) -> dict:
        d = {"period": self.period, "form": self.form, "stochastic": self.stochastic}
        if self.form == "trig":
            d["harmonics"] = self.n_harmonics
        return d


@dataclass(frozen=True)
class Cycle:
    period_bounds: tuple[float, float] = (1.5 * 4, 12 * 4)
    damped: bool = True
    stochastic: bool = True

    @property
    def frequency_bounds(self) -> tuple[float, float]:
        """Bounds on the cycle frequency λ = 2π / period, in radians."""
        lo, hi = self.period_bounds
        return (2 * math.pi / hi, 2 * math.pi / lo)

    def to_dict(self) -> dict:
        return {"period_bounds": list(self.period_bounds), "damped": self.damped,
                "stochastic": self.stochastic}


@dataclass(frozen=True)
class Regression:
    columns: tuple[str, ...]
    coefficients: str = "parameters"

    def to_dict(self) -> dict:
        return {"columns": list(self.columns), "coefficients": self.coefficients}


@dataclass(frozen=True)
class Observation:
    """The observation family, and for counts the column of exposures E_t > 0 (log μ_t = θ_t + log E_t)."""

    family: str = "gaussian"
    offset: str | None = None

    @property
    def is_count(self) -> bool:
        return self.family in COUNT_FAMILIES

    @property
    def is_gaussian(self) -> bool:
        return self.family == "gaussian"

    def to_dict(self) -> dict:
        d = {"family": self.family}
        if self.offset is not None:
            d["offset"] = self.offset
        return d


def _observation(d: Any) -> Observation:
    """Parse the 'observation' field: a dict {'family': ..., 'offset': <exposure column>} or a family name."""
    if d is None:
        return Observation()
    if isinstance(d, str):
        d = {"family": d}
    if not isinstance(d, Mapping):
        _fail("observation", f"expected a dict like {{'family': 'poisson'}}, got {_shown(d)}",
              f"Choose a family among {', '.join(OBSERVATION_FAMILIES)}")
    _check_fields("observation", d, {"family", "offset"})
    family = d.get("family", "gaussian")
    if not isinstance(family, str) or family not in OBSERVATION_FAMILIES:
        _fail("observation.family", f"unknown family {_shown(family)}",
              f"Choose one of {', '.join(OBSERVATION_FAMILIES)}")
    offset = d.get("offset")
    if offset is not None:
        if not isinstance(offset, str) or not offset:
            _fail("observation.offset", f"expected a column name, got {_shown(offset)}",
                  "Name the column of exposures (positive numbers), or leave it out")
        if family not in COUNT_FAMILIES:
            _fail("observation.offset", f"an exposure column applies to counts, not to family {family!r}",
                  f"Remove it, or use one of {', '.join(COUNT_FAMILIES)}")
    return Observation(family, offset)


INITIALIZATIONS = ("diffuse", "approximate_diffuse", "known")
APPROXIMATE_DIFFUSE_VARIANCE = 1e6   # statsmodels' `initial_variance`


@dataclass(frozen=True)
class Initialization:
    """The initial state α₁, named as statsmodels' `initialization` options.

    "diffuse" (the default): exact diffuse on the nonstationary states (level, trend, seasonals,
    cycle, regressors in the state), the stationary covariance on AR states. "approximate_diffuse":
    the same states start N(0, variance·I) instead (statsmodels' `initialize_approximate_diffuse`,
    variance 1e6 by default; every observation counts, statsmodels' `loglikelihood_burn = 0`).
    "known": α₁ ~ N(mean, cov) over the whole state vector in the engine's state order
    (statsmodels' `initialize_known`); cov may be singular (0: a known value).
    """

    kind: str = "diffuse"
    variance: float = APPROXIMATE_DIFFUSE_VARIANCE
    mean: tuple[float, ...] = ()
    cov: tuple[tuple[float, ...], ...] = ()

    def to_dict(self) -> dict:
        if self.kind == "approximate_diffuse":
            return {"kind": self.kind, "variance": self.variance}
        if self.kind == "known":
            return {"kind": self.kind, "mean": list(self.mean), "cov": [list(r) for r in self.cov]}
        return {"kind": self.kind}


def _initialization(d: Any, n_states: int) -> Initialization:
    """Parse the 'initialization' field: a kind name, or a dict {'kind': ..., ...} with the kind's
    numbers (approximate_diffuse: 'variance'; known: 'mean' (state,) and 'cov' (state, state))."""
    if d is None:
        return Initialization()
    if isinstance(d, str):
        d = {"kind": d}
    if not isinstance(d, Mapping):
        _fail("initialization", f"expected a kind name or a dict like {{'kind': 'known', 'mean': [...], "
                                f"'cov': [[...]]}}, got {_shown(d)}", f"Choose a kind among {', '.join(INITIALIZATIONS)}")
    kind = d.get("kind", "diffuse")
    if not isinstance(kind, str) or kind not in INITIALIZATIONS:
        _fail("initialization.kind", f"unknown kind {_shown(kind)}", f"Choose one of {', '.join(INITIALIZATIONS)}")
    _check_fields("initialization", d, {"kind", *{"approximate_diffuse": ("variance",),
                                                    "known": ("mean", "cov")}.get(kind, ())})
    if kind == "approximate_diffuse":
        variance = _number("initialization.variance", d.get("variance", APPROXIMATE_DIFFUSE_VARIANCE),
                           "Give a large positive variance, e.g. 1e6")
        if not (math.isfinite(variance) and variance > 0):
            _fail("initialization.variance", f"must be a positive finite number, got {_shown(variance)}",
                  "Give a large positive variance, e.g. 1e6")
        return Initialization(kind, variance=variance)
    if kind == "known":
        fix = (f"Give 'mean' as {n_states} numbers and 'cov' as a {n_states}×{n_states} symmetric positive "
               f"semi-definite matrix (lists of lists), in the model's state order")
        for name in ("mean", "cov"):
            if name not in d:
                _fail(f"initialization.{name}", "missing: a known initial state needs its mean and covariance", fix)
        try:
            mean = np.asarray(d["mean"], dtype=float)
            cov = np.asarray(d["cov"], dtype=float)
        except (TypeError, ValueError):
            _fail("initialization", f"mean and cov must be numbers, got {_shown(d['mean'])} and {_shown(d['cov'])}",
                  fix)
        if mean.shape != (n_states,):
            _fail("initialization.mean", f"expected {n_states} numbers (the model has {n_states} states), "
                                         f"got shape {mean.shape}", fix)
        if cov.shape != (n_states, n_states):
            _fail("initialization.cov", f"expected a {n_states}×{n_states} matrix, got shape {cov.shape}", fix)
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(cov))):
            _fail("initialization", "mean and cov must be finite", fix)
        if not np.allclose(cov, cov.T, rtol=1e-12, atol=0):
            _fail("initialization.cov", "not symmetric", fix)
        if n_states and np.linalg.eigvalsh(cov).min() < -1e-10 * max(1.0, float(np.abs(cov).max())):
            _fail("initialization.cov", "not positive semi-definite (a negative eigenvalue)", fix)
        return Initialization(kind, mean=tuple(map(float, mean)), cov=tuple(tuple(map(float, r)) for r in cov))
    return Initialization(kind)


@dataclass(frozen=True)
class ModelSpec:
    """A structural time-series model: y_t = level + seasonals + cycle + AR + xβ + ε_t."""

    irregular: bool = True
    level: str | None = None  # one of TREND_KINDS, or None for no level/trend
    seasonal: tuple[Seasonal, ...] = ()
    cycle: Cycle | None = None
    ar_order: int = 0
    regression: Regression | None = None
    priors: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = field(default=())
    regimes: tuple[str, ...] = ()   # switching regimes, in REGIME_KINDS order
    observation: Observation = Observation()
    initialization: Initialization = Initialization()

    # -- construction -----------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping | "ModelSpec") -> "ModelSpec":
        """Parse and validate a plain dict (as stored in JSON).

        Every malformed input is a ValueError naming the field ("spec field 'seasonal[0].period': …"),
        so that a page or a CLI can show it as it is.
        """
        if isinstance(d, ModelSpec):
            return d
        if not isinstance(d, Mapping):
            raise ValueError(f"a model spec must be a dict, got {type(d).__name__}")
        known = {"irregular", "level", "seasonal", "cycle", "autoregressive", "regression", "priors", "regimes",
                 "observation", "initialization"}
        unknown = sorted(map(str, set(d) - known))
        if unknown:
            _fail(unknown[0], "unknown field", f"Valid fields are {sorted(known)}")

        level_d = d.get("level")
        level_kind = None
        if level_d is not None:
            if isinstance(level_d, str):
                level_kind = level_d
            elif isinstance(level_d, Mapping):
                _check_fields("level", level_d, {"kind"})
                level_kind = level_d.get("kind")
            else:
                _fail("level", f"expected a dict like {{'kind': 'local_level'}}, got {level_d!r}", "")
            if not isinstance(level_kind, str) or level_kind not in TREND_KINDS:
                _fail("level.kind", f"unknown kind {level_kind!r}",
                      f"Choose one of {', '.join(TREND_KINDS)}")
        observation = _observation(d.get("observation"))
        # counts have no irregular: their noise is the count distribution's
        irregular = _flag("irregular", d.get("irregular"),
                          False if observation.is_count else TREND_KINDS[level_kind][0] if level_kind else True)
        if observation.is_count and irregular:
            _fail("irregular", f"a {observation.family} observation has no irregular component (the count "
                               "distribution is the observation noise)", "Set 'irregular': false or leave it out")
        if observation.family == "student_t":
            if d.get("irregular") is False:
                _fail("irregular", "a student_t observation needs the irregular: sigma2.irregular is its scale²",
                      "Set 'irregular': true or leave it out")
            irregular = True
        if level_kind == "irregular":
            level_kind = None  # the 'irregular' trend kind means: no level, no trend

        seasonal_d = d.get("seasonal") or []
        if isinstance(seasonal_d, Mapping):
            seasonal_d = [seasonal_d]
        if not isinstance(seasonal_d, (list, tuple)):
            _fail("seasonal", f"expected a list of seasonals, got {seasonal_d!r}",
                  "Example: [{'period': 12, 'form': 'dummy'}]")
        seasonals = []
        for i, s in enumerate(seasonal_d):
            name = f"seasonal[{i}]"
            if not isinstance(s, Mapping) or "period" not in s:
                _fail(name, "each seasonal needs a 'period'", "Example: {'period': 12, 'form': 'dummy'}")
            _check_fields(name, s, {"period", "form", "harmonics", "stochastic"})
            period = _number(f"{name}.period", s["period"], "A season needs a period >= 2 (in time steps)")
            form = s.get("form", "dummy")
            if not isinstance(form, str) or form not in SEASONAL_FORMS:
                _fail(f"{name}.form", f"unknown form {form!r}", "Use 'dummy' or 'trig'")
            if period < 2:
                _fail(f"{name}.period", f"period {s['period']!r} is below 2", "A season needs period >= 2")
            if form == "dummy" and not period.is_integer():
                _fail(f"{name}.period", f"a dummy seasonal needs an integer period, got {period}",
                      "Use form 'trig' for fractional periods such as 365.25")
            harmonics = s.get("harmonics")
            if form == "trig":
                most = int(math.floor(period / 2))
                harmonics = most if harmonics is None else _whole(
                    f"{name}.harmonics", harmonics, f"Use between 1 and {most} (period/2)")
                if harmonics < 1 or harmonics > period / 2:
                    _fail(f"{name}.harmonics", f"{harmonics} harmonics for period {period}",
                          f"Use between 1 and {most} (period/2)")
            elif harmonics is not None:
                _fail(f"{name}.harmonics", "harmonics only apply to form 'trig'", "Remove it or use form 'trig'")
            seasonals.append(Seasonal(period=int(period) if period.is_integer() else period, form=form,
                                      harmonics=harmonics,
                                      stochastic=_flag(f"{name}.stochastic", s.get("stochastic"), True)))
        names = [(s.form, s.period) for s in seasonals]
        if len(set(names)) != len(names):
            _fail("seasonal", "the same seasonal period and form appear twice", "Remove the duplicate")
        # state order as in statsmodels: dummy seasonals, then trigonometric ones
        given_index = sorted(range(len(seasonals)), key=lambda i: seasonals[i].form != "dummy")
        seasonals = [seasonals[i] for i in given_index]

        cycle = None
        cycle_d = d.get("cycle")
        if cycle_d:   # false, null or {}: no cycle
            if cycle_d is True:
                cycle_d = {}
            if not isinstance(cycle_d, Mapping):
                _fail("cycle", f"expected true or a dict, got {cycle_d!r}", "Example: {'period_bounds': [6, 48]}")
            _check_fields("cycle", cycle_d, {"period_bounds", "damped", "stochastic"})
            how = "Give [low, high] with 2 <= low < high (periods in time steps)"
            raw = cycle_d.get("period_bounds", (6.0, 48.0))
            if not isinstance(raw, (list, tuple)) or len(raw) != 2:
                _fail("cycle.period_bounds", f"got {_shown(raw)}", how)
            bounds = tuple(_number("cycle.period_bounds", b, how) for b in raw)
            if not 2 <= bounds[0] < bounds[1]:
                _fail("cycle.period_bounds", f"got {list(bounds)}", how)
            cycle = Cycle(period_bounds=bounds, damped=_flag("cycle.damped", cycle_d.get("damped"), True),
                          stochastic=_flag("cycle.stochastic", cycle_d.get("stochastic"), True))

        ar = d.get("autoregressive")
        if ar is None or ar is False:
            ar = {}
        if isinstance(ar, Mapping):
            _check_fields("autoregressive", ar, {"order"})
            order = ar.get("order", 0)
        else:
            order = ar
        if not isinstance(order, numbers.Integral) or isinstance(order, (bool, np.bool_)) or order < 0:
            _fail("autoregressive.order", f"got {_shown(order)}", "Use a whole number >= 0 (0 for no AR)")
        order = int(order)

        regression = None
        reg = d.get("regression")
        if reg:
            if isinstance(reg, Mapping):
                _check_fields("regression", reg, {"columns", "coefficients"})
            cols = reg.get("columns") if isinstance(reg, Mapping) else reg
            if isinstance(cols, str):
                cols = [cols]
            if not isinstance(cols, (list, tuple)) or not cols or not all(isinstance(c, str) and c for c in cols):
                _fail("regression.columns", f"got {cols!r}", "Give a list of column names")
            if len(set(cols)) != len(cols):
                _fail("regression.columns", "a column is listed twice", "Remove the duplicate")
            mode = reg.get("coefficients", "parameters") if isinstance(reg, Mapping) else "parameters"
            if not isinstance(mode, str) or mode not in REGRESSION_MODES:
                _fail("regression.coefficients", f"unknown mode {mode!r}", f"Choose one of {REGRESSION_MODES}")
            regression = Regression(columns=tuple(cols), coefficients=mode)

        priors_d = d.get("priors") or {}
        if not isinstance(priors_d, Mapping):
            _fail("priors", "expected a dict parameter name -> {'dist': ...}", "")
        priors = []
        for k, v in priors_d.items():
            if not isinstance(k, str) or not isinstance(v, Mapping) or not all(
                    isinstance(a, str) and (b is None or isinstance(b, (str, numbers.Real))) for a, b in v.items()):
                _fail(f"priors.{k}", f"expected a dict of names to numbers or 'auto', got {v!r}",
                      "Example: {'dist': 'half_normal', 'scale': 'auto'}")
            priors.append((k, tuple(sorted(v.items()))))

        spec = cls(irregular=irregular, level=level_kind, seasonal=tuple(seasonals), cycle=cycle,
                   ar_order=order, regression=regression, priors=tuple(sorted(priors)), observation=observation)
        spec = dataclasses.replace(spec, regimes=_regimes(d.get("regimes"), spec))
        if spec.regimes and not observation.is_gaussian:
            _fail("regimes", f"switching regimes apply to gaussian observations, not to family {observation.family!r}",
                  "Remove the regimes, or use family 'gaussian'")
        if spec.n_states > MAX_STATES:
            where, states, fix = spec._biggest_part(given_index)
            _fail(where, f"the model would have {spec.n_states} states, {states} of them in {where.split('.')[0]}; "
                         f"the engine holds at most {MAX_STATES}", fix)
        if not spec.irregular and spec.level is None and not spec.seasonal and spec.cycle is None \
                and not spec.ar_order and spec.regression is None:
            _fail("irregular", "the model is empty (no irregular, level, seasonal, cycle, AR or regression)",
                  "Add at least one component")
        if not spec.has_stochastic_element and not observation.is_count:
            # Nothing random but the initial state: after the diffuse steps y is known exactly, every
            # F*_t is 0 and the likelihood ignores the data. statsmodels adds an irregular; so do we.
            warnings.warn("spec: the model has no stochastic element (no irregular, no stochastic "
                          "level, trend, seasonal or cycle, no AR); an irregular component was added, as "
                          "statsmodels UnobservedComponents does. Set 'irregular': true to say so explicitly",
                          SpecificationWarning, stacklevel=2)
            spec = dataclasses.replace(spec, irregular=True)
        spec = dataclasses.replace(spec, initialization=_initialization(d.get("initialization"),
                                                                                  max(spec.n_states, 1)))
        if spec.priors:
            from .priors import check_priors  # priors builds on this module
            bare = dataclasses.replace(spec, priors=())
            for name, items in spec.priors:   # one at a time, to name the one that is wrong
                try:
                    check_priors(bare, {name: dict(items)})
                except ValueError as exc:
                    _fail(f"priors.{name}", str(exc), "Fix or remove that prior")
        return spec

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"irregular": self.irregular}
        if self.level is not None:
            d["level"] = {"kind": self.level}
        if self.seasonal:
            d["seasonal"] = [s.to_dict() for s in self.seasonal]
        if self.cycle is not None:
            d["cycle"] = self.cycle.to_dict()
        if self.ar_order:
            d["autoregressive"] = {"order": self.ar_order}
        if self.regression is not None:
            d["regression"] = self.regression.to_dict()
        if self.priors:
            d["priors"] = {k: dict(v) for k, v in self.priors}
        if self.regimes:
            d["regimes"] = {k: True for k in self.regimes}
        if self.observation != Observation():
            d["observation"] = self.observation.to_dict()
        if self.initialization != Initialization():
            d["initialization"] = self.initialization.to_dict()
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        return cls.from_dict(json.loads(text))

    # -- derived structure ------------------------------------------------------------
    @property
    def trend_flags(self) -> tuple[bool, bool, bool, bool]:
        """(level, stochastic_level, trend, stochastic_trend)."""
        if self.level is None:
            return (False, False, False, False)
        return TREND_KINDS[self.level][1:]

    @property
    def has_stochastic_element(self) -> bool:
        """Whether anything but the initial state is random (statsmodels' test, plus time-varying betas)."""
        _, stoch_level, _, stoch_trend = self.trend_flags
        return (self.irregular or stoch_level or stoch_trend or any(s.stochastic for s in self.seasonal)
                or (self.cycle is not None and self.cycle.stochastic) or self.ar_order > 0
                or (self.regression is not None and self.regression.coefficients == "time_varying"))

    @property
    def exog_columns(self) -> tuple[str, ...]:
        return self.regression.columns if self.regression else ()

    @property
    def k_exog(self) -> int:
        return len(self.exog_columns)

    @property
    def regression_in_state(self) -> bool:
        return self.regression is not None and self.regression.coefficients != "parameters"

    @property
    def n_states(self) -> int:
        level, _, trend, _ = self.trend_flags
        return (int(level) + int(trend) + sum(s.n_states for s in self.seasonal)
                + (2 if self.cycle else 0) + self.ar_order
                + (self.k_exog if self.regression_in_state else 0))

    def _biggest_part(self, seasonal_index: list[int] | None = None,
                      diffuse_only: bool = False) -> tuple[str, int, str]:
        """(field, states, how to use fewer) of the part of the state vector with the most states (or
        diffuse states): the one a message about the model's size points at. `seasonal_index[j]` is
        the position at which `self.seasonal[j]` was given (default: its position here, dummy first)."""
        level, _, trend, _ = self.trend_flags
        parts = [("level", int(level) + int(trend), "Use a simpler level"),
                 ("cycle", 2 if self.cycle else 0, "Remove the cycle"),
                 ("autoregressive.order", 0 if diffuse_only else self.ar_order, "Use a lower AR order"),
                 ("regression.columns", self.k_exog if self.regression_in_state else 0,
                  "Use fewer columns, or coefficients 'parameters'")]
        for j, s in enumerate(self.seasonal):
            i = j if seasonal_index is None else seasonal_index[j]
            parts.append((f"seasonal[{i}].period", s.n_states,
                          "Use a shorter period, or form 'trig' with a few harmonics (2 states each)")
                         if s.form == "dummy" else
                         (f"seasonal[{i}].harmonics", s.n_states, "Use fewer harmonics (2 states each)"))
        return max(parts, key=lambda p: p[1])

    def check_data(self, n_obs: int | None, exog_columns: tuple[str, ...] | None = None) -> None:
        """Validate the spec against data: AR order vs length (unless n_obs is None), regression
        columns present."""
        if self.ar_order and n_obs is not None and self.ar_order >= n_obs:
            _fail("autoregressive.order", f"order {self.ar_order} >= series length {n_obs}",
                  "Use a lower AR order or a longer series")
        if self.regression is not None and exog_columns is not None:
            missing = [c for c in self.exog_columns if c not in exog_columns]
            if missing:
                _fail("regression.columns", f"column(s) {missing} not in the data",
                      f"Available columns: {list(exog_columns)}")

    def check_length(self, n_obs: int) -> None:
        """Validate the spec against the length of the series it is to describe, before a fit (the
        app's check; `check_data` also sees forecast horizons, where these limits do not apply).

        The states that start diffuse (all but the AR's: level, trend, seasonals, cycle, regression
        in the state) must be fewer than the observations: each takes one to pin its starting value
        down, so a dummy seasonal with a period longer than the series leaves nothing to learn from
        (a trigonometric one with a few harmonics is fine). And the covariance history that
        filtering and smoothing keep, n_obs × states² float64s per array, must fit in
        MAX_HISTORY_BYTES. Seasonal fields are numbered in `self.seasonal`'s order.
        """
        diffuse = self.n_states - self.ar_order
        if diffuse >= n_obs:
            where, states, fix = self._biggest_part(diffuse_only=True)
            _fail(where, f"the model has {diffuse} states with unknown starting values ({states} in "
                         f"{where.split('.')[0]}), not fewer than the {n_obs} observations: pinning them down "
                         f"takes one observation each and leaves none to learn from", fix)
        m = self.n_states
        need = 8 * n_obs * m * m
        if need > MAX_HISTORY_BYTES:
            where, states, fix = self._biggest_part()
            _fail(where, f"the model has {m} states ({states} in {where.split('.')[0]}): over {n_obs} observations "
                         f"its filter and smoother would keep {need / 2 ** 30:.1f} GiB per covariance history, "
                         f"more than the {MAX_HISTORY_BYTES / 2 ** 30:.0f} GiB allowed",
                  f"{fix}, or use a shorter series")


def _regimes(value: Any, spec: ModelSpec) -> tuple[str, ...]:
    """The `regimes` field: a dict kind → true/false (null or {} for none), each kind one the model can
    carry (a level shift needs a level, ...); returned in REGIME_KINDS order."""
    if value is None or value is False:
        return ()
    if not isinstance(value, Mapping):
        _fail("regimes", f"expected a dict of regime kinds to true/false, got {_shown(value)}",
              f"Example: {{'outlier': true, 'level_shift': true}}; kinds are {list(REGIME_KINDS)}")
    _check_fields("regimes", value, set(REGIME_KINDS))
    level, _, trend, _ = spec.trend_flags
    has = {"outlier": True, "level_shift": level, "slope_shift": trend, "seasonal_break": bool(spec.seasonal)}
    chosen = []
    for kind, (_, needs) in REGIME_KINDS.items():
        if _flag(f"regimes.{kind}", value.get(kind), False):
            if not has[kind]:
                _fail(f"regimes.{kind}", f"a {kind.replace('_', ' ')} needs {needs} in the model",
                      f"Add {needs}, or set regimes.{kind} to false")
            chosen.append(kind)
    return tuple(chosen)


def as_spec(spec: Mapping | ModelSpec) -> ModelSpec:
    """Accept a ModelSpec or a plain dict."""
    return ModelSpec.from_dict(spec)


def param_names(spec: Mapping | ModelSpec) -> list[str]:
    """Parameter names in statsmodels UnobservedComponents order and spelling."""
    spec = as_spec(spec)
    level, stoch_level, trend, stoch_trend = spec.trend_flags
    names = []
    if spec.irregular:
        names.append("sigma2.irregular")
    if level and stoch_level:
        names.append("sigma2.level")
    if trend and stoch_trend:
        names.append("sigma2.trend")
    names += [seasonal_param_name(spec, s) for s in spec.seasonal if s.stochastic]
    if spec.cycle is not None and spec.cycle.stochastic:
        names.append("sigma2.cycle")
    if spec.ar_order:
        names.append("sigma2.ar")
    if spec.regression is not None and spec.regression.coefficients == "time_varying":
        names += [f"sigma2.{c}" for c in spec.exog_columns]
    if spec.cycle is not None:
        names.append("frequency.cycle")
        if spec.cycle.damped:
            names.append("damping.cycle")
    names += [f"ar.L{i + 1}" for i in range(spec.ar_order)]
    if spec.regression is not None and spec.regression.coefficients == "parameters":
        names += [f"beta.{c}" for c in spec.exog_columns]
    for kind in spec.regimes:
        names += [f"prob.{kind}", f"scale.{kind}"]
    return names + observation_param_names(spec)


def observation_param_names(spec: ModelSpec) -> list[str]:
    """The observation family's own parameters (after the structural ones): Student-t degrees of
    freedom `nu.observation`, negative binomial (NB2) dispersion `alpha.observation`."""
    return {"student_t": ["nu.observation"], "negative_binomial": ["alpha.observation"]}.get(
        spec.observation.family, [])


def require_gaussian(spec: ModelSpec, what: str) -> None:
    """Refuse a non-Gaussian observation family in a computation made for Gaussian observations only
    (the Kalman filter would treat counts as exact observations of the signal: a silent error)."""
    if not spec.observation.is_gaussian:
        _fail("observation.family", f"{what} supports the gaussian family only, got {spec.observation.family!r}",
              "Use engine.loglik or engine.nongaussian for this family, or family 'gaussian'")


def seasonal_param_name(spec: ModelSpec, s: Seasonal) -> str:
    """statsmodels' name for a seasonal variance; extra dummy seasonals get their period appended."""
    if s.form == "trig":
        return f"sigma2.freq_seasonal_{format_period(s.period)}({s.n_harmonics})"
    n_dummy = sum(1 for x in spec.seasonal if x.form == "dummy")
    return "sigma2.seasonal" if n_dummy == 1 else f"sigma2.seasonal_{format_period(s.period)}"


def variance_names(spec: ModelSpec) -> list[str]:
    """The parameters that are variances (constrained positive)."""
    return [n for n in param_names(spec) if n.startswith("sigma2.")]
