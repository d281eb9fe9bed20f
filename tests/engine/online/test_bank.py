"""The pure bank kernel: one compiled trace per step, `select_step`'s fast paths (steady,
fused standard) equal to the filter's step and to the batch filter.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import engine
from engine import online
from engine.online import bank as online_bank

from ..helpers import assert_rel_close
from .cases import SPEC, MANUAL, make_draws, make_series, stream_updates


def test_one_trace_per_step():
    """The jitted step compiles once: diffuse steps, NaN steps and steady steps share the trace."""
    traces = []

    def counted(bank, belief, y):
        traces.append(1)
        return engine.online_step(config, bank, belief, y)

    config = engine.OnlineConfig(engine.ModelSpec.from_dict(SPEC))
    bank = engine.make_bank(SPEC, make_draws(3))
    belief = engine.online_init(config, bank)
    step = jax.jit(counted)
    for v in make_series(n=40):
        belief, _ = step(bank, belief, v)
    assert len(traces) == 1
    # the wrapper's own compiled step: one entry for this spec, whatever the data
    filt = engine.OnlineFilter(SPEC, make_draws(3), rejuvenation=MANUAL)
    filt.update(1.0)
    size = online_bank._step_jit._cache_size()
    for v in make_series(n=40):
        filt.update(v)
    assert online_bank._step_jit._cache_size() == size
    assert filt._settled and not filt._steady   # the rest went through the fused standard step
    size = online_bank._standard_step_jit._cache_size()
    for v in make_series(n=40, seed=2):
        filt.update(v)
    assert online_bank._standard_step_jit._cache_size() == size
    # micro-batches are padded to powers of two (at least 8): sizes 1..8 share one trace
    filt.update_many(np.ones(5))
    size = online_bank._step_many_jit._cache_size()
    for n in (6, 1, 8, 3):
        filt.update_many(np.ones(n))
    assert online_bank._step_many_jit._cache_size() == size


def test_steady_bank_takes_the_mean_only_path_and_still_equals_batch():
    """Once every draw's P has converged, updates move only the means (O(state·draw)); a NaN
    sends the bank back through the covariance update. Both stay equal to the batch filter."""
    base = np.array([1.0, 0.5, 0.1, 0.3])
    draws = base * np.exp(0.3 * np.random.default_rng(0).standard_normal((3, 4)))
    y = np.array(engine.simulate(jax.random.PRNGKey(2), SPEC, base, 460))
    y[[0, 430]] = np.nan
    filt = engine.OnlineFilter(SPEC, draws, y_history=y[:400], rejuvenation=MANUAL)
    assert np.all(np.asarray(filt.state.filter.steady)), "the test needs a converged bank"
    before = online_bank._steady_step_jit._cache_size() + online_bank._steady_step_many_jit._cache_size()
    infos, beliefs = stream_updates(filt, y[400:440])
    many = jax.device_get(filt.update_many(y[440:]))
    assert online_bank._steady_step_jit._cache_size() + online_bank._steady_step_many_jit._cache_size() > before
    assert all(bool(i.steady) for i in infos[:30]) and not bool(infos[30].steady)
    for s in range(3):
        ref = engine.filter_series(SPEC, draws[s], y)
        fm = np.concatenate([np.array([i.filtered_mean[:, s] for i in infos]), many.filtered_mean[:, :, s]])
        assert_rel_close(fm, ref.filtered_mean[400:], 1e-9, "filtered mean")
        ll = np.concatenate([[i.loglik[s] for i in infos], many.loglik[:, s]])
        assert_rel_close(ll, ref.loglik_terms[400:], 1e-9, "loglik terms")
        cov = np.array([b.filter.cov[:, :, s] for b in beliefs])
        assert_rel_close(cov[:-1], ref.predicted_cov[401:440], 1e-9, "predicted cov")
        assert_rel_close(np.asarray(filt.state.filter.cov)[:, :, s], ref.final_cov, 1e-9, "final cov")
    one = engine.OnlineFilter(SPEC, draws[:1], y_history=y[:400], rejuvenation=MANUAL)
    infos1, _ = stream_updates(one, y[400:420])
    ref = engine.filter_series(SPEC, draws[0], y)
    assert_rel_close(np.array([i.component_var for i in infos1]),
                     np.stack([ref.filtered_cov[400:420, k, k] for k in range(3)], 1), 1e-9, "component var")


def test_select_step_gives_the_pure_api_the_wrappers_fast_paths():
    """A pure loop that picks each step with `select_step` (flags read from the belief) goes
    through the general, standard and steady steps as the wrapper does, and equals both the
    wrapper and the batch filter."""
    base = np.array([1.0, 0.5, 0.1, 0.3])
    draws = base * np.exp(0.3 * np.random.default_rng(0).standard_normal((3, 4)))
    y = np.array(engine.simulate(jax.random.PRNGKey(2), SPEC, base, 440))
    y[[0, 9, 420]] = np.nan
    config = engine.OnlineConfig(engine.ModelSpec.from_dict(SPEC))
    bank = engine.make_bank(SPEC, draws)
    compiled = {fn: jax.jit(fn, static_argnums=0) for fn in (online.step, online.standard_step, online.steady_step)}
    belief, chosen, infos = engine.online_init(config, bank), [], []
    for v in y:
        one_step = online.select_step(online.step_flags(belief, v))
        belief, info = compiled[one_step](config, bank, belief, v)
        chosen.append(one_step)
        infos.append(jax.device_get(info))
    assert chosen[0] is online.step and online.standard_step in chosen[:400] and online.steady_step in chosen[:420]
    assert chosen[420] is online.standard_step   # a missing value leaves the steady path
    filt = engine.OnlineFilter(config, draws, rejuvenation=MANUAL)
    wrapped, _ = stream_updates(filt, y)
    for s in range(3):
        ref = engine.filter_series(SPEC, draws[s], y)
        fm = np.array([i.filtered_mean[:, s] for i in infos])
        assert_rel_close(fm, ref.filtered_mean, 1e-9, "filtered mean")
        assert_rel_close(np.array([i.loglik[s] for i in infos]), ref.loglik_terms, 1e-9, "loglik terms")
        assert_rel_close(fm, np.array([i.filtered_mean[:, s] for i in wrapped]), 1e-12, "wrapper")
    # a micro-batch's flags: every observation counts
    flags = online.step_flags(belief, y[400:408])
    assert flags.settled and flags.observed
    assert not online.step_flags(belief, y[415:423]).observed


# -- the fused bank step ---------------------------------------------------------------------
RICH = {"level": {"kind": "local_linear_trend"}, "seasonal": [{"period": 4}, {"period": 7, "form": "trig"}],
        "cycle": {"period_bounds": [6, 20], "damped": True}, "autoregressive": {"order": 2}}


def _rich_bank(n_draws=3, seed=0):
    names = engine.param_names(RICH)
    base = {n: 0.3 for n in names}
    base.update({"frequency.cycle": 2 * np.pi / 10, "damping.cycle": 0.9, "ar.L1": 0.5, "ar.L2": -0.2})
    rng = np.random.default_rng(seed)
    draws = np.array([[base[n] * np.exp(0.1 * rng.standard_normal()) for n in names] for _ in range(n_draws)])
    return draws, engine.make_bank(RICH, draws)


def test_rows_apply_is_the_block_transition():
    """T X by rows equals the block-structured product for every block kind (dense, dummy, k = 1)."""
    from engine import kalman
    from engine.system import layout, transition_apply
    _, bank = _rich_bank()
    lay = layout(RICH)
    X = jnp.asarray(np.random.default_rng(1).standard_normal((lay.n_states, lay.n_states, 3)))
    T = bank.system.transition
    np.testing.assert_allclose(np.stack(kalman.rows_apply(lay, T, list(X))), transition_apply(lay, T, X),
                               rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(np.stack(kalman.rows_apply(lay, T, list(X[:, 0]))), transition_apply(lay, T, X[:, 0]),
                               rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("form", ["dense", "packed"])
def test_fused_standard_step_equals_the_filters_step(form):
    """The fused standard updates (dense P for the fleet, packed P for the bank) give the filter's
    own step (state, gain, steady test, loglik), observed and missing, for a model with every
    kind of block."""
    from engine import kalman
    from engine.system import layout
    draws, bank = _rich_bank()
    lay = layout(RICH)
    y = np.array(engine.simulate(jax.random.PRNGKey(5), RICH, draws[0], 60))
    config = engine.OnlineConfig(engine.ModelSpec.from_dict(RICH))
    belief = engine.online_catch_up(config, bank, engine.online_init(config, bank), y[:40])
    assert not np.any(np.asarray(belief.filter.diffuse))
    st, z, d = belief.filter, bank.system.design, jnp.zeros(3)
    for v in (y[40], np.nan, y[41]):
        yb = jnp.full(3, v)
        if form == "dense":
            ours, ll, v = kalman.standard_step_fused(lay, bank.system, st, yb, d, z)
        else:
            ours, ll, v = kalman.standard_step_packed(lay, bank.system, st._replace(cov=kalman.pack(st.cov)),
                                                       yb, d, z)
            ours = ours._replace(cov=kalman.unpack(ours.cov, lay.n_states))
        ref, info = kalman.step(lay, bank.system, st, yb, d, z, keep=True)
        np.testing.assert_allclose(ll, info.loglik, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(v, info.innovation, rtol=1e-12, atol=1e-12)
        for name, a, b in zip(ref._fields, ours, ref):
            la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
            assert len(la) == len(lb), name
            for x, w in zip(la, lb):
                np.testing.assert_allclose(np.asarray(x, float), np.asarray(w, float), rtol=1e-11, atol=1e-11,
                                           err_msg=name)
        st = ours
