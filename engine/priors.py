"""Priors on the model's parameters: families, data-scaled defaults, validation.

A prior is a dict `{"dist": <family>, <argument>: <number or "auto">, ...}` using NumPyro's
distribution names (snake_case) and parameterisation, placed on the named parameter itself
(a prior on `sigma2.level` is a prior on the variance). `"auto"` takes the data-scaled default
for that argument.

Defaults (weakly informative, scaled to the data; `default_priors` shows them):

  variances `sigma2.*`    half_normal(scale = 2·v),  v = var(Δy) (var(y) if Δy is unavailable):
                          every component's variance is at most of the order of the variance
                          of the differenced series, and 2·v leaves ample room above it.
  `frequency.cycle`       uniform over the frequencies of the period bounds.
  `damping.cycle`         uniform(0, 1).
  `pacf.L{i}`             uniform(−1, 1) on the partial autocorrelations of the AR part
                          (the AR coefficients `ar.L{i}` follow from them and are stationary).
  `beta.<col>`            normal(0, 10·sd(y)/sd(x)).
  `prob.<regime>`         beta(1, 99): a switching regime (engine.regimes) on about one step in a
                          hundred, and rarer ones well supported.
  `scale.<regime>`        log_normal(log(25·v), 1): the variance a regime adds to its disturbance,
                          typically a jump of 5 sd(Δy), and kept away from 0 (where the regime
                          would be indistinguishable from the normal one).
  `nu.observation`        gamma(2, 0.1): the Student-t degrees of freedom (Juárez & Steel 2010), mean 20,
                          mass from heavy tails (ν ≈ 2) to nearly Gaussian (ν ≈ 60).
  `alpha.observation`     half_normal(1): the negative binomial's NB2 dispersion (Var = μ + α μ²),
                          mass near 0 (the Poisson limit) and up to strong overdispersion.

For counts the variances are those of the log mean, so v is taken from log(y + ½) (`transforms.scales`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping, NamedTuple

import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from .spec import ModelSpec, as_spec, param_names
from .transforms import POSITIVE_SCALES, ar_to_pacf, pacf_to_ar, scales

#: family → (NumPyro class, argument names in constructor order)
FAMILIES: dict[str, tuple[type, tuple[str, ...]]] = {
    "half_normal": (dist.HalfNormal, ("scale",)),
    "half_cauchy": (dist.HalfCauchy, ("scale",)),
    "half_student_t": (dist.LeftTruncatedDistribution, ("df", "scale")),
    "inverse_gamma": (dist.InverseGamma, ("concentration", "rate")),
    "log_normal": (dist.LogNormal, ("loc", "scale")),
    "exponential": (dist.Exponential, ("rate",)),
    "gamma": (dist.Gamma, ("concentration", "rate")),
    "normal": (dist.Normal, ("loc", "scale")),
    "uniform": (dist.Uniform, ("low", "high")),
    "beta": (dist.Beta, ("concentration1", "concentration0")),
}
POSITIVE_ARGS = {"scale", "df", "concentration", "rate", "concentration1", "concentration0"}
POSITIVE_FAMILIES = {"half_normal", "half_cauchy", "half_student_t", "inverse_gamma", "log_normal",
                     "exponential", "gamma"}
AUTO = "auto"   # an argument given as "auto" takes its data-scaled value


class Prior(NamedTuple):
    """One resolved prior: the family and its numeric arguments (constructor order)."""

    family: str
    args: tuple[float, ...]

    def as_dict(self) -> dict:
        return {"dist": self.family, **dict(zip(FAMILIES[self.family][1], self.args))}

    def distribution(self, args=None) -> dist.Distribution:
        """The NumPyro distribution; `args` may be traced arrays replacing the numbers."""
        return make_distribution(self.family, self.args if args is None else args)


def make_distribution(family: str, args) -> dist.Distribution:
    cls, _ = FAMILIES[family]
    if family == "half_student_t":
        df, scale = args
        return dist.LeftTruncatedDistribution(dist.StudentT(df, 0.0, scale), low=0.0)
    return cls(*args)


def sample_sites(spec: ModelSpec | Mapping) -> list[str]:
    """Names of the sampled quantities: `param_names` with AR coefficients replaced by PACFs."""
    spec = as_spec(spec)
    return [n.replace("ar.", "pacf.") if n.startswith("ar.L") else n for n in param_names(spec)]


def site_values_to_params(spec: ModelSpec, values: Mapping) -> jnp.ndarray:
    """Sample-site values → parameter vector in `param_names` order (PACFs → AR coefficients).

    Traceable: the samplers and the fleet's MAP coordinates map their unconstrained draws through it."""
    names = param_names(spec)
    out = [values[n] for n in names if not n.startswith("ar.L")]
    if not spec.ar_order:
        return jnp.stack(out) if out else jnp.zeros(0)
    phi = pacf_to_ar(jnp.stack([values[f"pacf.L{i + 1}"] for i in range(spec.ar_order)]))
    j = names.index("ar.L1")
    out = out[:j] + list(phi) + out[j:]
    return jnp.stack(out)


def params_to_site_values(spec: ModelSpec, pvec: jnp.ndarray) -> dict:
    """Parameter vector in `param_names` order → sample-site values, the inverse of
    `site_values_to_params` (AR coefficients → PACFs by the step-down recursion); traceable."""
    names = param_names(spec)
    values = {n: pvec[i] for i, n in enumerate(names) if not n.startswith("ar.L")}
    if spec.ar_order:
        j = names.index("ar.L1")
        pacf = ar_to_pacf(pvec[j:j + spec.ar_order])
        values.update({f"pacf.L{i + 1}": pacf[i] for i in range(spec.ar_order)})
    return values


def _default(spec: ModelSpec, name: str, scale: Mapping[str, float]) -> Prior:
    if name == "nu.observation":
        return Prior("gamma", (2.0, 0.1))
    if name == "alpha.observation":
        return Prior("half_normal", (1.0,))
    if name.startswith("sigma2."):
        return Prior("half_normal", (2.0 * scale[name],))
    if name == "frequency.cycle":
        return Prior("uniform", tuple(float(b) for b in spec.cycle.frequency_bounds))
    if name == "damping.cycle":
        return Prior("uniform", (0.0, 1.0))
    if name.startswith("pacf."):
        return Prior("uniform", (-1.0, 1.0))
    if name.startswith("prob."):
        return Prior("beta", (1.0, 99.0))
    if name.startswith("scale."):
        return Prior("log_normal", (float(np.log(25.0 * scale[name])), 1.0))
    return Prior("normal", (0.0, 10.0 * scale[name]))


def _support_problem(name: str, prior: Prior, spec: ModelSpec) -> str | None:
    """Why this prior cannot be put on this parameter (None if it can)."""
    fam, args = prior.family, prior.args
    lo_hi = {"uniform": args, "beta": (0.0, 1.0)}.get(fam)
    if name.startswith(("sigma2.", "scale.")) or name in POSITIVE_SCALES:
        if fam in POSITIVE_FAMILIES or (fam == "uniform" and args[0] >= 0):
            return None
        what = "a variance" if name.startswith("sigma2.") else "it"
        return f"{what} must be positive; use a family on (0, ∞) such as half_normal, gamma or inverse_gamma"
    bounds = {"frequency.cycle": tuple(spec.cycle.frequency_bounds) if spec.cycle else None,
              "damping.cycle": (0.0, 1.0)}.get(name)
    if name.startswith("pacf."):
        bounds = (-1.0, 1.0)
    if name.startswith("prob."):
        bounds = (0.0, 1.0)
    if bounds is not None:
        if lo_hi is not None and bounds[0] <= lo_hi[0] and lo_hi[1] <= bounds[1]:
            return None
        return (f"it must stay inside ({bounds[0]:.6g}, {bounds[1]:.6g}); "
                "use uniform with bounds inside that range" + (" or beta" if bounds == (0.0, 1.0) else ""))
    return None


def _given(spec: ModelSpec, priors: Mapping | None) -> dict[str, dict]:
    """The priors asked for, the spec's and then the `priors` argument's, by sample site; ValueError
    for a name that is not one of the model's sites."""
    sites = sample_sites(spec)
    given = {k: dict(v) for k, v in spec.priors}
    given.update(dict(priors or {}))
    if spec.ar_order == 1 and "ar.L1" in given:  # for AR(1) the PACF is the coefficient
        given["pacf.L1"] = given.pop("ar.L1")
    unknown = sorted(map(str, set(given) - set(sites)))
    if unknown:
        hint = " (priors on AR coefficients go on their partial autocorrelations pacf.L1, …)" \
            if any(u.startswith("ar.") for u in unknown) else ""
        raise ValueError(f"prior for unknown parameter(s) {unknown}{hint}; the model's parameters are {sites}")
    return given


def resolve_priors(spec, y=None, exog=None, priors: Mapping | None = None) -> dict[str, Prior]:
    """Priors for every sampled site: the spec's and the `priors` argument's, then defaults.

    Raises ValueError naming the parameter for unknown names, families, arguments, or a
    support that does not fit the parameter's constraint.
    """
    spec = as_spec(spec)
    given = _given(spec, priors)
    y_arr = np.zeros(2) if y is None else np.asarray(getattr(y, "values", y), dtype=float)
    x_arr = None if exog is None else np.asarray(getattr(exog, "values", exog), dtype=float)
    if x_arr is not None and x_arr.ndim == 1:
        x_arr = x_arr[:, None]
    scale = {n.replace("ar.", "pacf.") if n.startswith("ar.L") else n: v
             for n, v in scales(spec, y_arr, x_arr).items()}
    out = {}
    for name in sample_sites(spec):
        default = _default(spec, name, scale)
        if name not in given:
            out[name] = default
            continue
        family, args = _arguments(name, given[name])
        args = [_argument(name, family, a, _auto_argument(name, family, a, default)) if isinstance(v, str) else v
                for a, v in zip(FAMILIES[family][1], args)]   # the strings left are 'auto'
        out[name] = _checked(name, Prior(family, tuple(args)), spec)
    return out


def check_priors(spec, priors: Mapping | None = None) -> None:
    """Validate priors without the data: names, families, argument names and values, and the
    support where every argument is a number. 'auto' arguments take their value (and its checks)
    from the data, in `resolve_priors`. Raises ValueError naming the parameter, as `resolve_priors`."""
    spec = as_spec(spec)
    for name, d in _given(spec, priors).items():
        family, args = _arguments(name, d)
        if AUTO not in args:
            _checked(name, Prior(family, tuple(args)), spec)


def _arguments(name: str, d) -> tuple[str, list]:
    """The family of one prior and its arguments in constructor order, each a checked number or
    'auto'; ValueError naming the parameter otherwise."""
    if not isinstance(d, Mapping):
        raise ValueError(f"prior for {name}: expected a dict like {{'dist': 'half_normal', 'scale': 'auto'}}, "
                         f"got {d!r}")
    d = dict(d)
    family = d.pop("dist", None)
    if not isinstance(family, str) or family not in FAMILIES:
        raise ValueError(f"prior for {name}: 'dist' must be one of {sorted(FAMILIES)}, got {family!r}")
    arg_names = FAMILIES[family][1]
    extra = sorted(map(str, set(d) - set(arg_names)))
    if extra:
        raise ValueError(f"prior for {name}: {family} takes arguments {list(arg_names)}, not {extra}")
    args = []
    for a in arg_names:
        v = d.get(a, AUTO)
        args.append(AUTO if isinstance(v, str) and v == AUTO else _argument(name, family, a, v))
    return family, args


def _argument(name: str, family: str, arg: str, v) -> float:
    """One argument as a finite number, positive where the family needs it."""
    try:
        v = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"prior for {name}: argument {arg} must be a number or 'auto', got {v!r}") from None
    if not np.isfinite(v):
        raise ValueError(f"prior for {name}: argument {arg} must be finite, got {v}")
    if arg in POSITIVE_ARGS and v <= 0:
        raise ValueError(f"prior for {name}: argument {arg} of {family} must be positive, got {v}")
    return v


def _checked(name: str, prior: Prior, spec: ModelSpec) -> Prior:
    """The prior, once its arguments agree with each other and its support fits the parameter."""
    if prior.family == "uniform" and not prior.args[0] < prior.args[1]:
        raise ValueError(f"prior for {name}: uniform needs low < high, got low={prior.args[0]}, high={prior.args[1]}")
    problem = _support_problem(name, prior, spec)
    if problem:
        raise ValueError(f"prior for {name}: {prior.family} does not fit this parameter: {problem}")
    return prior


def _auto_argument(name: str, family: str, arg: str, default: Prior) -> float:
    """The data-scaled value of one argument: the default's scale, or a neutral shape."""
    if family == default.family:
        return default.args[FAMILIES[family][1].index(arg)]
    typical = {"half_normal": lambda: default.args[0], "normal": lambda: default.args[1],
               "log_normal": lambda: float(np.exp(default.args[0]))}.get(default.family, lambda: 1.0)()
    if arg in ("scale",):
        return typical
    if arg == "loc":
        return float(np.log(typical)) if family == "log_normal" else 0.0
    if arg == "rate":  # mean at the typical size: exponential 1/rate, gamma(2) 2/rate, inverse_gamma(2) rate
        return {"exponential": 1.0 / typical, "gamma": 2.0 / typical}.get(family, typical)
    if arg in ("df",):
        return 3.0
    if arg in ("concentration", "concentration1", "concentration0"):
        return 2.0 if family in ("gamma", "inverse_gamma") else 1.0
    if arg == "low":
        return 0.0 if name.startswith(("sigma2.", "damping.", "prob.", "scale.")) else -1.0
    if arg == "high":
        return 2.0 * typical if name.startswith(("sigma2.", "scale.")) else 1.0
    raise ValueError(f"prior for {name}: no automatic value for argument {arg} of {family}")


def default_priors(spec, y, exog=None) -> dict[str, dict]:
    """The default priors for this spec and data, as plain dicts (for display and editing)."""
    spec = as_spec(spec)
    return {n: p.as_dict() for n, p in resolve_priors(replace(spec, priors=()), y, exog).items()}
