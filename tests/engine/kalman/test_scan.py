"""The single-series filter (`run`, `run_chunked`) and batches of series against statsmodels.

References are statsmodels models built with `use_exact_diffuse=True` from the same spec
(see helpers.sm_model) and de Jong's augmented filter (tests/engine/reference_diffuse.py),
evaluated at the same parameter points. Log-likelihoods agree to relative 1e-6 (RTOL_LL;
~1e-12 is typical).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import engine

from ..helpers import KINDS, RTOL_LL, air, sm_model, with_gaps
from .cases import y_exog, LL, LLT, CASES, param_points, GRAD_CASES, stepwise_loglik, central_differences


def _kind_spec(kind: str, y) -> tuple[dict, object]:
    """Spec for a trend kind and the statsmodels model it is compared with (for 'fixed
    intercept' and 'fixed slope' both add an irregular: nothing else is random)."""
    spec = {"level": {"kind": kind}}
    mod = sm_model(spec, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", engine.SpecificationWarning)  # tested in test_spec
        spec = engine.ModelSpec.from_dict(spec).to_dict()
    assert engine.param_names(spec) == list(mod.param_names)
    return spec, mod


def _variance_points(names, rng) -> list[np.ndarray]:
    """Three parameter points (all parameters are variances here)."""
    k = len(names)
    p1 = np.full(k, 1e-3)
    p2 = np.array([1e-2 if n == "sigma2.irregular" else 1e-4 for n in names])
    p3 = 10.0 ** rng.uniform(-5, -2, size=k)
    return [p1, p2, p3]


# -- every trend kind -----------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("gaps", [False, True], ids=["full", "gaps"])
def test_loglik_every_level_kind(kind, gaps, rng):
    y, _ = y_exog("air", gaps)
    spec, mod = _kind_spec(kind, y)
    for p in _variance_points(engine.param_names(spec), rng):
        ours = float(engine.loglik(spec, p, y))
        ref = float(mod.loglike(p))
        assert np.isfinite(ours)
        assert ours == pytest.approx(ref, rel=RTOL_LL, abs=0), (kind, p)


def test_loglik_dict_params_equal_vector_params():
    spec = {"level": {"kind": "local_linear_trend"}, "seasonal": [{"period": 12}]}
    names = engine.param_names(spec)
    p = np.array([3e-4, 7e-4, 1e-6, 5e-3])
    y = with_gaps(air())
    assert float(engine.loglik(spec, dict(zip(names, p)), y)) == float(engine.loglik(spec, p, y))


# -- components -----------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("gaps", [False, True], ids=["full", "gaps"])
def test_loglik_components(case, gaps):
    spec, data = CASES[case]
    if data == "co2" and not gaps:
        pytest.skip("co2 has its own gaps; one run covers it")
    y, exog = y_exog(data, gaps)
    if case.startswith("ar2"):
        y = y - np.nanmean(y)
    mod = sm_model(spec, y, exog)
    assert engine.param_names(spec) == list(mod.param_names)
    for p in param_points(spec, y):
        ours = float(engine.loglik(spec, p, y, exog))
        ref = float(mod.loglike(p))
        assert ours == pytest.approx(ref, rel=RTOL_LL, abs=0), (case, p)


def test_nyquist_harmonic_against_exact_reference():
    """A trig seasonal with harmonics = period/2 has a sine state that never enters y.

    That state stays diffuse for ever, so P∞ never vanishes and the end of the diffuse
    phase rests on round-off. Here statsmodels' P∞ residue grows past its 1e-10 threshold
    at t = 72 and it counts a spurious diffuse step (+10.5 in the log-likelihood). The exact
    value is that of the same statsmodels model with the unobservable state initialised as
    known (it cannot affect y); the engine must give that.
    """
    from statsmodels.tsa.statespace.initialization import Initialization

    spec = {"level": {"kind": "smooth_trend"},
            "seasonal": [{"period": 12, "form": "trig", "harmonics": 2, "stochastic": False},
                         {"period": 4, "form": "trig", "harmonics": 2}]}
    y, _ = y_exog("air", gaps=True)
    p = np.full(len(engine.param_names(spec)), 1e-3)
    mod = sm_model(spec, y)
    m = mod.k_states
    # the last state is the sine partner of the period-4 harmonic at frequency π
    assert np.allclose(np.asarray(mod.ssm["design"])[0][-2:], [1.0, 0.0])
    init = Initialization(m)
    init.set((0, m - 1), "diffuse")
    init.set((m - 1, m), "known", constant=[0.0], stationary_cov=[[0.0]])
    mod.ssm.initialization = init
    exact = float(mod.loglike(p))
    for filt in ("standard", "sqrt"):
        assert float(engine.loglik(spec, p, y, filter=filt)) == pytest.approx(exact, rel=RTOL_LL, abs=0)


# -- an independent reference: de Jong's augmented filter (tests/engine/reference_diffuse.py) ----
def _births(n: int) -> np.ndarray:
    return engine.load_dataset("births")["births"].to_numpy(dtype=float)[:n]


def _births_spec(yearly_harmonics: int) -> dict:
    return {"level": LL, "seasonal": [{"period": 7, "form": "trig", "harmonics": 3},
                                      {"period": 365, "form": "trig", "harmonics": yearly_harmonics}]}


def _births_point(spec, y) -> np.ndarray:
    v = float(np.var(np.diff(y)))
    return np.array([0.1 * v if n == "sigma2.irregular" else 1e-3 * v for n in engine.param_names(spec)])


REFERENCE_CASES = {
    "nile_ll": ({"level": LL}, "nile"),
    "air_llt_dummy12_gaps": (CASES["dummy12"][0], "air_gaps"),
    # shares the frequency π/2 between both seasonals: a direction no observation reaches
    "air_trig12_trig4": (CASES["trig12_trig4"][0], "air"),
    "seatbelts_reg_state": (CASES["reg_state"][0], "seatbelts"),
    "births_weekly_yearly1": (_births_spec(1), "births"),
}


@pytest.mark.parametrize("case", list(REFERENCE_CASES))
def test_loglik_equals_augmented_reference(case):
    """Where the diffuse phase is well conditioned, the engine, statsmodels and de Jong's
    augmented filter (no diffuse steps, no thresholds) agree to round-off."""
    from ..reference_diffuse import statsmodels_diffuse_loglik

    spec, data = REFERENCE_CASES[case]
    if data == "births":
        y, exog = _births(400), None
        points = [_births_point(spec, y)]
    else:
        y, exog = y_exog(data.removesuffix("_gaps"), data.endswith("_gaps"))
        points = param_points(spec, y)
    mod = sm_model(spec, y, exog)
    for p in points:
        ref = statsmodels_diffuse_loglik(mod, p)
        assert float(mod.loglike(p)) == pytest.approx(ref, rel=1e-9, abs=0), (case, "statsmodels")
        for filt in ("standard", "sqrt", "augmented"):
            assert float(engine.loglik(spec, p, y, exog, filter=filt)) == pytest.approx(ref, rel=1e-9, abs=0), \
                (case, filt)


@pytest.mark.parametrize("case", [*REFERENCE_CASES, "births_weekly_yearly2", "births_weekly_yearly3"])
def test_ill_conditioned_diffuse_start_is_reported(case):
    """engine.diffuse_conditioning flags exactly the cases where the diffuse recursion is not
    exact: those that the augmented reference shows off (births with 2 or more yearly
    harmonics, see the next test), and none of those where all three agree."""
    if case.startswith("births"):
        spec, y, exog = _births_spec(int(case[-1])), _births(400), None
        p = _births_point(spec, y)
    else:
        spec, data = REFERENCE_CASES[case]
        y, exog = y_exog(data.removesuffix("_gaps"), data.endswith("_gaps"))
        p = param_points(spec, y)[0]
    message = engine.diffuse_conditioning(spec, p, y, exog)
    if case in ("births_weekly_yearly2", "births_weekly_yearly3"):
        assert message is not None and "ill-conditioned" in message and "harmonics" in message
    else:
        assert message is None


@pytest.mark.parametrize("harmonics", [2, 4])
def test_augmented_filter_is_exact_where_the_diffuse_start_is_ill_conditioned(harmonics):
    """filter="augmented" (engine.augmented) equals the reference where Koopman's recursion does
    not (next test), and its gradient is finite and equals central differences."""
    from ..reference_diffuse import statsmodels_diffuse_loglik

    spec = _births_spec(harmonics)
    y = _births(400)
    p = _births_point(spec, y)
    ref = statsmodels_diffuse_loglik(sm_model(spec, y), p)
    f = lambda q: engine.loglik(spec, q, y, filter="augmented")  # noqa: E731
    assert float(f(jnp.asarray(p))) == pytest.approx(ref, rel=1e-9, abs=0)
    g = np.asarray(jax.grad(f)(jnp.asarray(p)))
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, central_differences(f, p), rtol=1e-5, atol=1e-6 * np.max(np.abs(g)))
    with pytest.raises(ValueError, match="total log-likelihood only"):
        engine.loglik_terms(spec, p, y, filter="augmented")


def test_births_yearly_harmonics_against_augmented_reference():
    """Daily births, level + weekly trig(3) + yearly trig(2): 11 diffuse states.

    Over the first 11 days cos/sin(2πjt/365) are nearly polynomials in t, so the exact F∞_t
    (the squared pivots of the 11×11 diffuse design) fall geometrically: ~4, 7e-2, 4e-5,
    9e-9, 2e-12. The last is below the absolute 1e-10 threshold (engine and statsmodels), so
    it is taken as a standard step and the leftover P∞ makes later spurious diffuse steps;
    and even with the right decisions (threshold lowered) the float64 recursion is off by ~13,
    since the P* update divides by F∞² ≈ 4e-24. The exact value comes from the augmented
    filter, whose least-squares matrix S is well conditioned (cond ≈ 50 at n = 400); it was
    checked against the dense GLS form of the same likelihood (to 1e-11). On these 400 days
    Koopman's recursion alone was +17.8 from it, statsmodels +1.1 (statsmodels never ends its
    diffuse phase here: its P∞ residue stays above the threshold); with 3 or more yearly
    harmonics both are off by 10s to 1000s. Every filter carries the augmented filter through
    the diffuse phase (`kalman.augmented`), so both filters here give the exact value.
    """
    from ..reference_diffuse import statsmodels_diffuse_loglik

    spec = _births_spec(2)
    y = _births(400)
    p = _births_point(spec, y)
    ref = statsmodels_diffuse_loglik(sm_model(spec, y), p)
    for filt in ("standard", "sqrt"):
        assert float(engine.loglik(spec, p, y, filter=filt)) == pytest.approx(ref, rel=RTOL_LL, abs=0), filt


# -- extreme scales ---------------------------------------------------------------------------
SCALE_SPEC = {"level": LLT, "seasonal": [{"period": 12}]}
SCALE_PARAMS = np.array([3e-4, 7e-4, 1e-6, 5e-3])


def _sm_scaled_reference(y, scale) -> float:
    """statsmodels' log-likelihood of (scale·y, scale²·σ²), taken through scale 1.

    log p(s·y | s²σ²) = log p(y | σ²) − N log s, N the observations that are not diffuse
    steps; statsmodels supplies both log p(y | σ²) and N. (Evaluated directly at s = 1e-8
    statsmodels is no reference: its absolute 1e-10 threshold on F*_t then skips every
    non-diffuse observation and returns only the diffuse terms.)
    """
    res = sm_model(SCALE_SPEC, y).filter(SCALE_PARAMS)
    observed = np.isfinite(y)
    diffuse = np.zeros(len(y), bool)
    diffuse[: res.nobs_diffuse] = res.forecasts_error_diffuse_cov[0, 0, : res.nobs_diffuse] > 1e-10
    n_standard = int(np.sum(observed & ~diffuse))
    return float(res.llf) - n_standard * np.log(scale)


@pytest.mark.parametrize("scale", [1e8, 1e-8])
@pytest.mark.parametrize("gaps", [False, True], ids=["full", "gaps"])
def test_extreme_scales_match_statsmodels_and_stay_psd(scale, gaps):
    y, _ = y_exog("air", gaps)
    ys, ps = y * scale, SCALE_PARAMS * scale ** 2
    ref = _sm_scaled_reference(y, scale)
    if scale > 1:  # large scales: statsmodels evaluated directly agrees
        assert float(sm_model(SCALE_SPEC, ys).loglike(ps)) == pytest.approx(ref, rel=RTOL_LL, abs=0)
    for filt in ("standard", "sqrt"):
        ours = float(engine.loglik(SCALE_SPEC, ps, ys, filter=filt))
        assert ours == pytest.approx(ref, rel=RTOL_LL, abs=0), filt
        P = np.asarray(engine.filter_series(SCALE_SPEC, ps, ys, filter=filt).predicted_cov)
        assert np.all(np.isfinite(P))
        top = np.max(np.abs(P), axis=(1, 2), keepdims=True)
        assert np.all(np.abs(P - np.swapaxes(P, 1, 2)) <= 1e-12 * top), filt
        w = np.linalg.eigvalsh(P)
        assert np.all(w.min(axis=1) >= -1e-9 * np.maximum(w.max(axis=1), 0.0)), filt


@pytest.mark.parametrize("scale", [1e8, 1e-4, 1e-8])
def test_loglik_is_equivariant_under_rescaling(scale):
    """log p(s·y | s²·σ²) = log p(y | σ²) − N log s, N the non-diffuse observations.

    Exact algebra for every s > 0; an absolute threshold on F*_t (as statsmodels' 1e-10)
    breaks it for data on a small scale by silently dropping observations.
    """
    y = with_gaps(air())
    base = engine.filter_series(SCALE_SPEC, SCALE_PARAMS, y)
    n_standard = int(np.sum(np.asarray(base.kind) == 1))
    expected = float(np.sum(base.loglik_terms)) - n_standard * np.log(scale)
    for filt in ("standard", "sqrt"):
        got = float(engine.loglik(SCALE_SPEC, SCALE_PARAMS * scale ** 2, y * scale, filter=filt))
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-9), filt


@pytest.mark.parametrize("n_time", [5, 13, 14, 15, 40])
def test_chunked_filter_on_series_near_the_length_of_its_diffuse_phase(n_time):
    """The chunked filter starts with a head of exact-diffuse steps, as many as there are diffuse
    states (13 here) plus under one step per chunk, then equal chunks: series shorter than the
    head, equal to it, or a step or two longer give the per-step filter's value and gradient."""
    spec, p = GRAD_CASES["llt_dummy12"]
    y = air()[:n_time]
    assert len(engine.system.diffuse_states(engine.system.layout(spec))) == 13
    p = jnp.asarray(p)
    v, g = jax.value_and_grad(lambda q: engine.loglik(spec, q, y, filter="standard"))(p)
    v_ref, g_ref = jax.value_and_grad(lambda q: stepwise_loglik(spec, q, y))(p)
    assert float(v) == pytest.approx(float(v_ref), rel=1e-10)
    # with no more observations than diffuse states the likelihood is flat in the parameters: the
    # exact gradient is 0 (Koopman's recursion alone, exact here) and the stepwise one round-off
    atol = max(1e-9 * np.max(np.abs(g_ref)), 1e-6)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-7, atol=atol)


# -- jit, vmap, batches -----------------------------------------------------------------------
def test_jit_equals_eager():
    spec, p = GRAD_CASES["llt_dummy12"]
    y = with_gaps(air())
    eager = float(engine.loglik(spec, p, y))
    jitted = jax.jit(lambda v: engine.loglik(spec, v, y))
    assert float(jitted(jnp.asarray(p))) == pytest.approx(eager, rel=1e-12)
    # y as a traced argument too
    jitted2 = jax.jit(lambda v, yy: engine.loglik(spec, v, yy))
    assert float(jitted2(jnp.asarray(p), jnp.asarray(y))) == pytest.approx(eager, rel=1e-12)


def test_vmap_equals_loop():
    spec, p = GRAD_CASES["llt_dummy12"]
    y = with_gaps(air())
    P = np.stack([p, p * 1.5, p * np.array([0.7, 2.0, 10.0, 0.3])])
    batched = np.asarray(jax.vmap(lambda v: engine.loglik(spec, v, y))(jnp.asarray(P)))
    loop = np.array([float(engine.loglik(spec, v, y)) for v in P])
    np.testing.assert_allclose(batched, loop, rtol=1e-12)


def test_loglik_many_equals_per_series(rng):
    spec, p = GRAD_CASES["llt_dummy12"]
    base = air()
    Y = np.stack([base + 0.02 * rng.standard_normal(base.shape) for _ in range(5)])
    Y[1, [0, 1, 2]] = np.nan          # gap at the start (longer diffuse phase)
    Y[2, 40:50] = np.nan              # a run in the middle (after the steady state)
    Y[3, ::7] = np.nan                # scattered
    Y[4, -5:] = np.nan                # at the end
    P = np.stack([p * f for f in (1.0, 0.5, 2.0, 1.3, 0.8)])
    many = np.asarray(engine.loglik_many(spec, P, Y))
    single = np.array([float(engine.loglik(spec, P[i], Y[i])) for i in range(5)])
    np.testing.assert_allclose(many, single, rtol=1e-10)
    # one shared parameter vector
    shared = np.asarray(engine.loglik_many(spec, p, Y))
    single = np.array([float(engine.loglik(spec, p, Y[i])) for i in range(5)])
    np.testing.assert_allclose(shared, single, rtol=1e-10)
    # and against statsmodels for one of them
    assert shared[2] == pytest.approx(float(sm_model(spec, Y[2]).loglike(p)), rel=RTOL_LL)


def test_loglik_many_with_shared_exog():
    spec = CASES["reg_parameters"][0]
    y, exog = y_exog("seatbelts", gaps=True)
    X = exog[["petrol_price", "law"]].to_numpy(dtype=float)
    p = param_points(spec, y)[0]
    Y = np.stack([y, y + 0.01, y[::-1]])
    many = np.asarray(engine.loglik_many(spec, p, Y, X))
    single = np.array([float(engine.loglik(spec, p, yy, X)) for yy in Y])
    np.testing.assert_allclose(many, single, rtol=1e-10)
