"""Derivatives of the log-likelihood: reverse and forward mode, the Hessian, the square-root
filter's, and the hand-written tangents of the chunked scans (`tangents`), against central
differences and plain autodiff of the per-step filter.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import engine

from ..helpers import GAP_INDEX, air, with_gaps
from .cases import y_exog, LL, CASES, param_points, GRAD_CASES, stepwise_loglik, central_differences


@pytest.mark.parametrize("case", list(GRAD_CASES))
def test_gradient_matches_finite_differences_with_gaps(case):
    spec, p = GRAD_CASES[case]
    y = with_gaps(air())
    f = lambda v: engine.loglik(spec, v, y)  # noqa: E731
    g = np.asarray(jax.grad(f)(jnp.asarray(p)))
    assert np.all(np.isfinite(g))
    fd = np.empty_like(p)
    for i in range(len(p)):
        h = 1e-5 * abs(p[i])
        e = np.zeros_like(p)
        e[i] = h
        fd[i] = (float(f(p + e)) - float(f(p - e))) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-7 * np.max(np.abs(fd)))


def test_gradient_finite_for_regression_state():
    spec = CASES["reg_state"][0]
    y, exog = y_exog("seatbelts", gaps=True)
    p = jnp.asarray(param_points(spec, y)[0])
    g = jax.grad(lambda v: engine.loglik(spec, v, y, exog))(p)
    assert np.all(np.isfinite(np.asarray(g)))


SQRT_GRAD_CASES = {
    "local_level": ({"level": LL}, np.array([1e-3, 1e-3])),
    **GRAD_CASES,
    # a deterministic seasonal (structural zero variances) and no irregular (H = 0)
    "dummy12det_trig4": (CASES["dummy12det_trig4"][0], np.array([1e-3, 1e-3, 1e-4])),
    "no_irregular": (CASES["no_irregular"][0], np.array([7e-4, 1e-6, 5e-3])),
}


@pytest.mark.parametrize("case,gaps", [("local_level", True), ("llt_dummy12", False), ("ll_cycle_ar1", True), ("dummy12det_trig4", True),
                                       ("no_irregular", False)])
def test_sqrt_filter_gradient_equals_standard(case, gaps):
    """jax.grad through filter="sqrt" is finite and equals the standard filter's gradient.

    The square-root pre-arrays are rank deficient whenever a state has zero variance
    (diffuse states start with P* = 0, deterministic states have q = 0, no irregular gives
    H = 0), where the derivative of a QR is undefined; AR blocks start from a factor of
    their stationary covariance.
    """
    spec, p = SQRT_GRAD_CASES[case]
    y = with_gaps(air()) if gaps else air()
    std = np.asarray(jax.grad(lambda v: engine.loglik(spec, v, y))(jnp.asarray(p)))
    sq = np.asarray(jax.grad(lambda v: engine.loglik(spec, v, y, filter="sqrt"))(jnp.asarray(p)))
    assert np.all(np.isfinite(sq)), sq
    np.testing.assert_allclose(sq, std, rtol=1e-6)


def _ends_steady(spec, p, y) -> bool:
    """Whether the chunked single-series filter has reached its steady (mean-only) regime."""
    from engine.model import filter_batch
    final, _ = filter_batch(engine.ModelSpec.from_dict(spec), jnp.asarray(p)[None], jnp.asarray(y)[:, None], None,
                    False, False)
    return bool(final.steady.all())


CHUNKED_GRAD_CASES = {
    # converges within a few chunks: the rest of the series runs the steady (mean-only) chunks
    "steady_nile": ({"level": LL}, np.array([9000.0, 3000.0]), "nile", ()),
    # every other value missing up to t = 90: the diffuse phase spans several chunks
    "long_diffuse": (CASES["dummy12"][0], GRAD_CASES["llt_dummy12"][1], "air", tuple(range(0, 90, 2))),
    "gaps_llt_dummy12": (CASES["dummy12"][0], GRAD_CASES["llt_dummy12"][1], "air", GAP_INDEX),
    # T depends on the parameters (cycle frequency and damping, AR coefficient)
    "gaps_cycle_ar1": (*GRAD_CASES["ll_cycle_ar1"], "air", GAP_INDEX),
    # the regression coefficients enter through the observation intercept
    "reg_parameters": (CASES["reg_parameters"][0], None, "seatbelts", GAP_INDEX),
}


@pytest.mark.parametrize("case", list(CHUNKED_GRAD_CASES))
def test_chunked_gradient_equals_stepwise_autodiff(case):
    spec, p, data, gaps = CHUNKED_GRAD_CASES[case]
    y, exog = y_exog(data, gaps=False)
    y = with_gaps(y, gaps)
    if p is None:
        p = param_points(spec, y)[0]
    if case == "steady_nile":
        assert _ends_steady(spec, p, y)
    if case == "long_diffuse":
        kind = np.asarray(engine.filter_series(spec, p, y).kind)
        assert np.flatnonzero(kind == engine.kalman.StepKind.DIFFUSE).max() > 2 * engine.kalman.CHUNK_STEPS
    p = jnp.asarray(p)
    v, g = jax.value_and_grad(lambda q: engine.loglik(spec, q, y, exog, filter="standard"))(p)
    v_ref, g_ref = jax.value_and_grad(lambda q: stepwise_loglik(spec, q, y, exog))(p)
    assert float(v) == pytest.approx(float(v_ref), rel=1e-10)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-7, atol=1e-9 * np.max(np.abs(g_ref)))
    if case in ("steady_nile", "long_diffuse"):   # and against the function itself
        fd = central_differences(lambda q: engine.loglik(spec, q, y, exog), np.asarray(p))
        np.testing.assert_allclose(np.asarray(g), fd, rtol=1e-5, atol=1e-7 * np.max(np.abs(fd)))


@pytest.mark.parametrize("case", ["gaps_cycle_ar1", "reg_parameters", "long_diffuse"])
def test_chunked_forward_mode_and_hessian_equal_stepwise(case):
    """Forward mode (the NUTS path for few parameters) and the Hessian (MLE standard errors)
    go through the same hand-written tangent."""
    spec, p, data, gaps = CHUNKED_GRAD_CASES[case]
    y, exog = y_exog(data, gaps=False)
    y = with_gaps(y, gaps)
    p = jnp.asarray(param_points(spec, y)[0] if p is None else p)
    f = lambda q: engine.loglik(spec, q, y, exog, filter="standard")  # noqa: E731
    u = jnp.linspace(0.5, 1.5, p.shape[0]) * p
    _, along = jax.jvp(f, (p,), (u,))
    g_ref = jax.grad(lambda q: stepwise_loglik(spec, q, y, exog))(p)
    assert float(along) == pytest.approx(float(g_ref @ u), rel=1e-8)
    h = np.asarray(jax.hessian(f)(p))
    h_ref = np.asarray(jax.hessian(lambda q: stepwise_loglik(spec, q, y, exog))(p))
    np.testing.assert_allclose(h, h_ref, rtol=1e-6, atol=1e-8 * np.max(np.abs(h_ref)))


# The exact-diffuse steps' rule (`kalman.diffuse_scan_custom_jvp`) against plain autodiff of the same steps,
# with tangents on every input it differentiates: the start (mean, P, and the gain and F it
# passes on when no step runs), H, q and the intercepts d; steps 0–2 of the local linear trend +
# quarterly seasonal are diffuse.
DIFFUSE_PATTERNS = {"gaps_in_the_diffuse_phase": (12, (0, 2)), "mixed_gaps": (12, (1, 4, 9)),
                    "ends_diffuse": (3, ()), "ends_missing": (6, (5,)), "no_steps": (0, ())}


@pytest.mark.parametrize("pattern", list(DIFFUSE_PATTERNS))
def test_the_diffuse_steps_tangent_equals_autodiff_of_the_same_steps(pattern):
    from engine import kalman
    from engine.system import build_system, layout

    spec = engine.ModelSpec.from_dict({"level": {"kind": "local_linear_trend"}, "seasonal": [{"period": 4}]})
    lay = layout(spec)
    params = dict(zip(engine.param_names(spec), jnp.array([3e-3, 7e-4, 1e-5, 5e-3])))
    system = kalman.batch_last(jax.tree.map(lambda x: jnp.asarray(x)[None], build_system(spec, params)))
    n, gaps = DIFFUSE_PATTERNS[pattern]
    y = air()[:n].copy()
    y[list(gaps)] = np.nan
    y = jnp.asarray(y)[:, None]
    rng = np.random.default_rng(0)
    normal = lambda x: jnp.asarray(rng.normal(size=np.shape(x)))  # noqa: E731
    start = kalman.init(lay, system)._replace(innov_var=jnp.ones(1))
    T, z, H, q, d = system.transition, system.design, system.obs_var, system.state_var, 0.1 * normal(y)
    A = normal(start.cov)
    primals = (start.mean, start.cov, start.gain, start.innov_var, H, q, d)
    tangents = (normal(start.mean), A + jnp.swapaxes(A, 0, 1), normal(start.gain), normal(H), normal(H),
                normal(q), normal(d))

    def with_rule(steps):
        def f(mean, cov, gain, innov_var, H, q, d):
            st, ll = steps(lay, start._replace(mean=mean, cov=cov, gain=gain, innov_var=innov_var), T, z, H, q, y, d)
            return (st.mean, st.cov, st.gain, st.innov_var), ll
        return f

    rule, plain = with_rule(kalman.diffuse_scan_custom_jvp), with_rule(kalman.diffuse_scan)
    (out, t_out), (ref, t_ref) = jax.jvp(rule, primals, tangents), jax.jvp(plain, primals, tangents)
    for a, b in zip(jax.tree.leaves((out, t_out)), jax.tree.leaves((ref, t_ref))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)
    total = lambda f: lambda *a: sum(jnp.sum(x) for x in jax.tree.leaves(f(*a)))  # noqa: E731
    for a, b in zip(jax.grad(total(rule), argnums=range(7))(*primals), jax.grad(total(plain), argnums=range(7))(*primals)):
        if a.ndim == 3:    # the rule's cotangent of a symmetric P is symmetrised
            b = 0.5 * (b + jnp.swapaxes(b, 0, 1))
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)


def test_forward_mode_keeps_the_diffuse_rule_in_chunks_after_the_head(monkeypatch):
    """A diffuse phase longer than the head (gaps early on) runs diffuse chunks after it; under
    `jax.jvp` (NUTS's path for few parameters) they must still take the rule, not plain autodiff."""
    from engine.kalman import tangents
    from engine.model import filter_batch

    spec, p, _, gaps = CHUNKED_GRAD_CASES["long_diffuse"]
    y = jnp.asarray(with_gaps(air(), gaps))[:, None]
    plain = []
    autodiff = tangents._diffuse_scan_autodiff
    monkeypatch.setattr(tangents, "_diffuse_scan_autodiff", lambda *a: plain.append(1) or autodiff(*a))
    f = lambda q: jnp.sum(filter_batch(engine.ModelSpec.from_dict(spec), q[None], y, None, False, False)[1])  # noqa: E731
    jax.jvp(f, (jnp.asarray(p),), (jnp.asarray(p),))
    assert not plain
    spec, p, _, gaps = CHUNKED_GRAD_CASES["gaps_cycle_ar1"]   # and a model whose T has a tangent does fall back
    jax.jvp(f, (jnp.asarray(p),), (jnp.asarray(p),))
    assert plain
