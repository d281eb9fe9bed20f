"""Maximum likelihood against statsmodels' fits, and recovery of known parameters."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import engine

from .helpers import air, nile, sm_model

CASES = {
    "nile_local_level": ({"level": {"kind": "local_level"}}, nile),
    "air_llt_dummy12": ({"level": {"kind": "local_linear_trend"}, "seasonal": [{"period": 12}]}, air),
    "air_ll_trig12_ar1": ({"level": {"kind": "local_level"},
                           "seasonal": [{"period": 12, "form": "trig", "harmonics": 3}],
                           "autoregressive": {"order": 1}}, air),
}


@pytest.fixture(scope="module")
def fits():
    """Each case fitted once (by the engine and by statsmodels), lazily."""
    cache = {}

    def get(case):
        if case not in cache:
            spec, data = CASES[case]
            y = data()
            ours = engine.fit_mle(spec, y)
            mod = sm_model(spec, y)
            # statsmodels' default L-BFGS tolerances stop ~1% short on Nile; tighten them
            ref = mod.fit(disp=False, maxiter=1000, pgtol=1e-10, factr=10)
            at_ours = mod.smooth(ours.param_vector, cov_type="approx")
            cache[case] = (spec, y, ours, mod, ref, at_ours)
        return cache[case]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_fit_reaches_statsmodels_optimum(case, fits):
    spec, y, ours, mod, ref, at_ours = fits(case)
    assert ours.converged, ours.message
    assert list(ours.params) == engine.param_names(spec) == list(mod.param_names)
    assert np.all(np.isfinite(ours.param_vector))
    # at least as good as statsmodels' own fit
    assert ours.loglik >= ref.llf - 1e-4
    # the reported log-likelihood is the model's log-likelihood at the reported parameters
    assert ours.loglik == pytest.approx(at_ours.llf, rel=1e-9)
    assert ours.loglik == pytest.approx(float(engine.loglik(spec, ours.params, y)), rel=1e-12)
    # variances are non-negative, AR inside the stationary region
    for name, value in ours.params.items():
        if name.startswith("sigma2."):
            assert value >= 0, name
        if name.startswith("ar.L"):
            assert abs(value) < 1, name


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_aic_bic_follow_statsmodels(case, fits):
    """statsmodels' information criteria count the diffuse states as parameters."""
    _, y, ours, _, _, at_ours = fits(case)
    assert ours.aic == pytest.approx(at_ours.aic, rel=1e-9)
    assert ours.bic == pytest.approx(at_ours.bic, rel=1e-9)
    assert ours.n_obs == len(y)


@pytest.mark.slow
def test_nile_parameters_and_standard_errors(fits):
    _, _, ours, mod, ref, at_ours = fits("nile_local_level")
    for i, name in enumerate(mod.param_names):
        assert ours.params[name] == pytest.approx(ref.params[i], rel=1e-2), name
    # Durbin & Koopman (2012, §2.10): σ²_ε ≈ 15099, σ²_η ≈ 1469.1
    assert ours.params["sigma2.irregular"] == pytest.approx(15099, rel=1e-3)
    assert ours.params["sigma2.level"] == pytest.approx(1469.1, rel=1e-3)
    # standard errors from the observed information, as statsmodels' numerical Hessian
    for i, name in enumerate(mod.param_names):
        assert ours.se[name] == pytest.approx(at_ours.bse[i], rel=1e-4), name


@pytest.mark.slow
def test_airpassengers_parameters(fits):
    _, _, ours, mod, ref, _ = fits("air_llt_dummy12")
    sm_params = dict(zip(mod.param_names, ref.params))
    for name in ("sigma2.irregular", "sigma2.level", "sigma2.seasonal"):
        assert ours.params[name] == pytest.approx(sm_params[name], rel=1e-2), name
    # the slope variance sits on the boundary at the optimum
    assert ours.params["sigma2.trend"] < 1e-8 and sm_params["sigma2.trend"] < 1e-8


@pytest.mark.slow
def test_recovers_simulated_local_level():
    truth = {"sigma2.irregular": 1.0, "sigma2.level": 0.1}
    spec = {"level": {"kind": "local_level"}}
    y = np.asarray(engine.simulate(jax.random.PRNGKey(0), spec, truth, 2000))
    assert y.shape == (2000,)
    res = engine.fit_mle(spec, y)
    assert res.converged
    for name, value in truth.items():
        se = res.se[name]
        assert np.isfinite(se) and se > 0
        assert abs(res.params[name] - value) < 3 * se, (name, res.params[name], se)
    # and statsmodels agrees on this likelihood's optimum
    ref = sm_model(spec, y).fit(disp=False, pgtol=1e-10, factr=10)
    assert res.loglik >= ref.llf - 1e-4


def test_a_stalled_line_search_at_a_stationary_point_counts_as_converged():
    """log US employment series whose variances are ~1e-8: L-BFGS-B ends with ABNORMAL at the optimum.

    The optimum is checked against statsmodels' exact-diffuse fit (its best over three optimisers
    is no higher than ours), and the gradient there vanishes.
    """
    import warnings

    import statsmodels.api as sm

    y = np.log(engine.load_dataset("us_employment")["CEU1011330001"].to_numpy(float))
    spec = engine.catalogue_entry("us_employment")["suggested_spec"]
    ours = engine.fit_mle(spec, y)
    model = sm.tsa.UnobservedComponents(y, level="local linear trend", seasonal=12, stochastic_seasonal=True,
                                        use_exact_diffuse=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        best = max(model.fit(disp=False, method=m, maxiter=2000).llf for m in ("lbfgs", "nm"))
    assert ours.loglik >= best - 1e-6
    assert ours.converged, ours.message


def test_fit_on_an_ill_conditioned_diffuse_start_says_so():
    """A daily series with two yearly harmonics: the diffuse start is ill-conditioned (the
    augmented reference in tests/engine/kalman/test_scan.py shows Koopman's recursion off there), so the
    fit uses the augmented filter and says so in a warning and on the result; a well-conditioned fit says nothing."""
    y = engine.load_dataset("births")["births"].to_numpy(dtype=float)[:400]
    spec = {"level": {"kind": "local_level"}, "seasonal": [{"period": 7, "form": "trig", "harmonics": 3},
                                                            {"period": 365, "form": "trig", "harmonics": 2}]}
    with pytest.warns(engine.DiffuseConditioningWarning, match="ill-conditioned"):
        res = engine.fit_mle(spec, y)
    assert len(res.warnings) == 1 and "augmented filter" in res.warnings[0]
    # the fit maximised the exact likelihood: the independent reference's value at the optimum,
    # which no start in statsmodels' own fit beats
    from .reference_diffuse import statsmodels_diffuse_loglik
    mod = sm_model(spec, y)
    assert res.loglik == pytest.approx(statsmodels_diffuse_loglik(mod, res.param_vector), rel=1e-9)
    sm_fit = mod.fit(disp=False, maxiter=500)
    assert res.loglik >= statsmodels_diffuse_loglik(mod, sm_fit.params) - 1e-4

    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", engine.DiffuseConditioningWarning)
        assert engine.fit_mle({"level": {"kind": "local_level"}}, nile()).warnings == ()


@pytest.mark.parametrize("n_observed", [0, 2])
def test_a_series_that_leaves_nothing_to_fit_is_refused(n_observed):
    """With no more observed values than diffuse states (2 for a local linear trend) the exact
    diffuse likelihood does not depend on the parameters: every fit refuses, naming why."""
    spec = {"level": {"kind": "local_linear_trend"}}
    y = np.full(12, np.nan)
    y[[3, 7][:n_observed]] = [1.0, 2.0][:n_observed]
    assert float(engine.loglik(spec, [1.0, 0.5, 0.1], y)) == pytest.approx(
        float(engine.loglik(spec, [3.0, 0.1, 2.0], y)), abs=1e-12)   # flat: nothing to fit
    for fit in (engine.fit_mle, engine.fit_map):
        with pytest.raises(ValueError, match=f"{n_observed} observed value.*2 diffuse"):
            fit(spec, y)
    y[[1, 5, 9]] = [1.5, 0.2, 2.5]   # more observations than diffuse states: a likelihood to maximise
    assert engine.fit_mle(spec, y).n_obs == 12


@pytest.mark.slow
def test_observed_information_by_gradient_differences_is_the_hessian(fits):
    """The standard errors' information (differences of the exact gradient) against JAX's exact
    Hessian of the log-likelihood at the optimum, where it is well inside the parameter space."""
    import jax.numpy as jnp

    from engine.mle import _evaluate, _observed_information
    from engine.transforms import scales

    spec_d, y, ours, _, _, _ = fits("nile_local_level")
    spec = engine.ModelSpec.from_dict(spec_d)
    scale = scales(spec, y)
    scale_vec = jnp.array([scale[n] for n in engine.param_names(spec)])
    evaluate = lambda u: _evaluate(spec, jnp.asarray(u), jnp.asarray(y), None, scale_vec)
    info = _observed_information(evaluate, spec, ours.param_vector, scale, len(y))
    exact = -np.asarray(jax.hessian(lambda p: engine.loglik(spec, p, y))(jnp.asarray(ours.param_vector)))
    np.testing.assert_allclose(info, exact, rtol=1e-6)
    np.testing.assert_allclose(ours.cov, np.linalg.inv(exact), rtol=1e-6)


def test_a_fit_stopped_at_the_iteration_limit_says_so_and_is_not_converged():
    res = engine.fit_mle({"level": {"kind": "local_level"}}, nile(), maxiter=1)
    assert not res.converged
    assert "iteration limit (1 iterations)" in res.message and "largest gradient component" in res.message


def test_progress_names_each_phase():
    phases = []
    engine.fit_mle({"level": {"kind": "local_level"}}, nile(), progress=phases.append)
    assert phases[0].startswith("compiling")
    assert "optimising from start 1 of 2" in phases and "optimising from start 2 of 2" in phases
    assert phases[-1] == "standard errors"


def test_every_undefined_standard_error_is_explained():
    """A variance at 0 is a boundary (its information says nothing); a non-positive-definite or
    singular information is named as such; a defined standard error has no note."""
    from engine.mle import _standard_errors
    from engine.transforms import scales

    spec = engine.ModelSpec.from_dict({"level": {"kind": "local_level"}})
    scale = scales(spec, nile())
    params = np.array([15000.0, 0.0])
    cov, se, notes = _standard_errors(spec, np.array([[2.0, 0.0], [0.0, -1.0]]), params, scale, True)
    assert se[0] == pytest.approx(np.sqrt(0.5)) and np.isnan(se[1])
    assert list(notes) == ["sigma2.level"] and notes["sigma2.level"].startswith("at a boundary: variance estimated at 0")
    _, se, notes = _standard_errors(spec, np.array([[1.0, 0.0], [0.0, -1.0]]), np.array([1.0, 2.0]), scale, False)
    assert list(notes) == ["sigma2.level"] and "not positive definite" in notes["sigma2.level"]
    assert notes["sigma2.level"].endswith("the optimiser did not converge")
    _, se, notes = _standard_errors(spec, np.ones((2, 2)), np.array([1.0, 2.0]), scale, True)
    assert np.all(np.isnan(se)) and all(n.startswith("not identified") for n in notes.values())


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_fits_explain_exactly_their_undefined_standard_errors(case, fits):
    _, _, ours, _, _, _ = fits(case)
    assert set(ours.se_notes) == {n for n, s in ours.se.items() if not np.isfinite(s)}
    assert all(ours.se_notes.values())


def test_find_jump_names_the_coordinate_of_a_discontinuity_and_none_on_a_smooth_objective():
    """A stalled line search is checked for a jump of ℓ: found along the coordinate that has one,
    at the nearest step that crosses it, with its size in nats; none for a smooth objective."""
    from engine.mle import find_jump

    n = 50
    smooth = lambda u: float(np.sum((u - 1.0) ** 2)) / n
    grad = lambda u: 2 * (u - 1.0) / n
    u = np.array([0.3, 0.4999])
    assert find_jump(smooth, u, grad(u), n) is None
    jumpy = lambda u: smooth(u) + (3.0 / n if u[1] > 0.5 else 0.0)   # ℓ falls by 3 nats past u₁ = 0.5
    i, du, change = find_jump(jumpy, u, grad(u), n)
    assert (i, du) == (1, 1e-3) and change == pytest.approx(-3.0, abs=0.01)
