"""A model spec written out as code a user can copy: statsmodels and pymc-extras.

Pure functions of a `ModelSpec` (and, for prior scales, the data's standard deviation).
Where a peer library cannot express part of the spec, the code says so in a comment
rather than emitting a different model silently.
"""

from __future__ import annotations

import json

from engine.spec import TREND_KINDS, ModelSpec, format_period

# statsmodels spells the trend kinds with spaces; pymc-extras needs an order and innovations mask.
_PYMC_LEVEL = {
    # kind -> (order, innovations_order) for pymc-extras LevelTrend
    "fixed_intercept": (1, 0),
    "deterministic_constant": (1, 0),
    "local_level": (1, 1),
    "random_walk": (1, 1),
    "fixed_slope": (2, 0),
    "deterministic_trend": (2, 0),
    "local_linear_deterministic_trend": (2, [1, 0]),
    "random_walk_with_drift": (2, [1, 0]),
    "local_linear_trend": (2, [1, 1]),
    "smooth_trend": (2, [0, 1]),
    "random_trend": (2, [0, 1]),
}


def spec_json(spec: ModelSpec) -> str:
    """The spec as indented JSON (what files store and the engine reads)."""
    return json.dumps(spec.to_dict(), indent=2)


def _num(x: float) -> str:
    return format_period(x)


def statsmodels_code(spec: ModelSpec, target: str = "y") -> str:
    """Equivalent `statsmodels.tsa.statespace.structural.UnobservedComponents` code."""
    args: list[str] = []
    notes: list[str] = []
    if spec.level is not None:
        if TREND_KINDS[spec.level][0] == spec.irregular:
            args.append(f'level="{spec.level.replace("_", " ")}"')
        else:
            level, stoch_level, trend, stoch_trend = spec.trend_flags
            args += ["level=True", f"stochastic_level={stoch_level}", f"trend={trend}",
                     f"stochastic_trend={stoch_trend}", f"irregular={spec.irregular}"]
    else:
        args.append(f"irregular={spec.irregular}")
    dummies = [s for s in spec.seasonal if s.form == "dummy"]
    trigs = [s for s in spec.seasonal if s.form == "trig"]
    if dummies:
        args += [f"seasonal={_num(dummies[0].period)}", f"stochastic_seasonal={dummies[0].stochastic}"]
        for s in dummies[1:]:
            notes.append(f"# UnobservedComponents takes one dummy seasonal; the period-{_num(s.period)} dummy "
                         "seasonal of this spec has no statsmodels equivalent and is left out.")
    if trigs:
        fs = ", ".join(f'{{"period": {_num(s.period)}, "harmonics": {s.n_harmonics}}}' for s in trigs)
        args += [f"freq_seasonal=[{fs}]",
                 f"stochastic_freq_seasonal=[{', '.join(str(s.stochastic) for s in trigs)}]"]
    if spec.cycle is not None:
        lo, hi = spec.cycle.period_bounds
        args += ["cycle=True", f"stochastic_cycle={spec.cycle.stochastic}", f"damped_cycle={spec.cycle.damped}",
                 f"cycle_period_bounds=({_num(lo)}, {_num(hi)})"]
    if spec.ar_order:
        args.append(f"autoregressive={spec.ar_order}")
    if spec.regression is not None:
        args.append("exog=X")
        mode = spec.regression.coefficients
        args.append(f"mle_regression={mode == 'parameters'}")
        if mode == "time_varying":
            notes.append("# UnobservedComponents has no time-varying regression coefficients; this code keeps "
                         "them fixed (in the state), which is a different model.")
    args.append("use_exact_diffuse=True")
    lines = ["import pandas as pd",
             "from statsmodels.tsa.statespace.structural import UnobservedComponents",
             "",
             f"# y: the '{target}' series (NaN for missing values)"]
    if spec.regression is not None:
        lines.append(f"# X: the regressors {list(spec.exog_columns)}, one row per time step")
    lines += notes
    lines.append("model = UnobservedComponents(")
    lines.append("    y,")
    lines += [f"    {a}," for a in args]
    lines += [")", "result = model.fit(disp=False)", "print(result.summary())"]
    return "\n".join(lines)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def pymc_extras_code(spec: ModelSpec, data_sd: float = 1.0, target: str = "y") -> str:
    """Equivalent pymc-extras structural state space code (`pymc_extras.statespace.structural`).

    pymc-extras works with standard deviations (``sigma_*``) where statsmodels and this
    project use variances (``sigma2.*``), and starts from a proper prior on the initial
    state (``P0``) rather than an exact diffuse one; the comments say so.
    """
    sd = f"{data_sd:.4g}"
    comps: list[tuple[str, str]] = []       # (variable, constructor)
    priors: list[str] = []
    notes: list[str] = []
    if spec.level is not None:
        order, innov = _PYMC_LEVEL[spec.level]
        comps.append(("trend", f'st.LevelTrend(order={order}, innovations_order={innov}, name="trend")'))
        priors.append(f'pm.Normal("initial_trend", sigma={sd}, dims=ss_mod.param_dims["initial_trend"])')
        if innov != 0:
            priors.append(f'pm.HalfNormal("sigma_trend", sigma={sd}, dims=ss_mod.param_dims["sigma_trend"])')
    for s in spec.seasonal:
        name = f"seasonal_{_safe(_num(s.period))}" + ("" if s.form == "dummy" else "_trig")
        if s.form == "dummy":
            comps.append((name, f'st.TimeSeasonality(season_length={_num(s.period)}, innovations={s.stochastic}, '
                                f'name="{name}")'))
        else:
            comps.append((name, f'st.FrequencySeasonality(season_length={_num(s.period)}, n={s.n_harmonics}, '
                                f'innovations={s.stochastic}, name="{name}")'))
        priors.append(f'pm.Normal("params_{name}", sigma={sd}, dims=ss_mod.param_dims["params_{name}"])')
        if s.stochastic:
            priors.append(f'pm.HalfNormal("sigma_{name}", sigma={sd})')
    if spec.cycle is not None:
        c = spec.cycle
        lo, hi = c.period_bounds
        comps.append(("cycle", f'st.Cycle(name="cycle", estimate_cycle_length=True, dampen={c.damped}, '
                               f'innovations={c.stochastic})'))
        priors.append(f'pm.Normal("params_cycle", sigma={sd}, dims=ss_mod.param_dims["params_cycle"])')
        priors.append(f'pm.Uniform("length_cycle", lower={_num(lo)}, upper={_num(hi)})')
        if c.damped:
            priors.append('pm.Beta("dampening_factor_cycle", alpha=2, beta=2)')
        if c.stochastic:
            priors.append(f'pm.HalfNormal("sigma_cycle", sigma={sd})')
    if spec.ar_order:
        comps.append(("ar", f'st.Autoregressive(order={spec.ar_order}, name="ar")'))
        priors.append('pm.Normal("params_ar", sigma=0.5, dims=ss_mod.param_dims["params_ar"])')
        priors.append(f'pm.HalfNormal("sigma_ar", sigma={sd})')
    if spec.regression is not None:
        mode = spec.regression.coefficients
        comps.append(("regression", f'st.Regression(name="regression", state_names={list(spec.exog_columns)}, '
                                    f'innovations={mode == "time_varying"})'))
        priors.append('pm.Normal("beta_regression", sigma=1.0, dims=ss_mod.param_dims["beta_regression"])')
        if mode == "time_varying":
            priors.append('pm.HalfNormal("sigma_beta_regression", sigma=0.1, '
                          'dims=ss_mod.param_dims["sigma_beta_regression"])')
        if mode == "parameters":
            notes.append("# Here the coefficients are sampled as parameters; pymc-extras puts them in the "
                         "state with a prior on their initial value, which gives the same model.")
    if spec.irregular:
        comps.append(("irregular", 'st.MeasurementError(name="irregular")'))
        priors.append(f'pm.HalfNormal("sigma_irregular", sigma={sd})')

    lines = ["import pymc as pm",
             "import pytensor.tensor as pt",
             "from pymc_extras.statespace import structural as st",
             "",
             f"# data: the '{target}' series as an array of shape (time, 1), NaN for missing values",
             "# pymc-extras uses standard deviations sigma_* (statsmodels and StreamSSM: variances sigma2.*)"]
    if spec.regression is not None:
        lines.append(f"# X: the regressors {list(spec.exog_columns)}, shape (time, {spec.k_exog})")
    lines += notes
    lines += [f"{var} = {ctor}" for var, ctor in comps]
    lines.append(f"ss_mod = ({' + '.join(var for var, _ in comps)}).build()")
    lines += ["",
              "with pm.Model(coords=ss_mod.coords) as model:",
              "    # a wide proper prior on the initial state stands in for the exact diffuse start",
              f'    P0_diag = pm.HalfNormal("P0_diag", sigma={sd} * 10, dims=ss_mod.param_dims["P0"][0])',
              '    P0 = pm.Deterministic("P0", pt.diag(P0_diag ** 2), dims=ss_mod.param_dims["P0"])']
    if spec.regression is not None:
        lines.append('    pm.Data("data_regression", X, dims=ss_mod.data_info["data_regression"]["dims"])')
    lines += [f"    {p}" for p in priors]
    lines += ["    ss_mod.build_statespace_graph(data)",
              '    idata = pm.sample(nuts_sampler="numpyro")']
    return "\n".join(lines)
