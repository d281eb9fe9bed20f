"""The HMM forward filter against enumeration of every state path, online = batch, vmap."""

import jax
import numpy as np
import pytest
from scipy.special import logsumexp

from engine import hmm

from .enumeration import filtered, path_log_joint, random_hmm


@pytest.mark.parametrize("n_states, n_time, time_varying", [(2, 8, False), (3, 6, True), (3, 1, False)])
def test_filter_equals_enumeration(n_states, n_time, time_varying):
    rng = np.random.default_rng(n_states * 10 + n_time)
    log_init, log_trans, log_lik = random_hmm(rng, n_states, n_time, time_varying, zeros=True)
    out = hmm.forward_filter(log_init, log_trans, log_lik)
    want_filtered, want_evidence = filtered(log_init, log_trans, log_lik)
    np.testing.assert_allclose(out.loglik, logsumexp(path_log_joint(log_init, log_trans, log_lik)[1]), rtol=1e-12)
    np.testing.assert_allclose(np.exp(out.log_filtered), np.exp(want_filtered), atol=1e-12)
    np.testing.assert_allclose(out.step_loglik, np.diff(want_evidence, prepend=0.0), atol=1e-11)
    # the predicted probabilities are the filtered ones pushed through one transition
    A = log_trans if time_varying else np.broadcast_to(log_trans, (n_time - 1, n_states, n_states))
    pred = np.concatenate([log_init[None], logsumexp(want_filtered[:-1, :, None] + A, axis=1)])
    np.testing.assert_allclose(np.exp(out.log_predicted), np.exp(pred), atol=1e-12)


def test_missing_observation_is_a_zero_row():
    """A zero log-likelihood row carries no information: the filter only predicts through it."""
    rng = np.random.default_rng(3)
    log_init, log_trans, log_lik = random_hmm(rng, 3, 6)
    log_lik[2] = 0.0
    out = hmm.forward_filter(log_init, log_trans, log_lik)
    np.testing.assert_allclose(out.log_filtered[2], out.log_predicted[2], atol=1e-14)
    assert abs(float(out.step_loglik[2])) < 1e-14
    want, _ = filtered(log_init, log_trans, log_lik)
    np.testing.assert_allclose(np.exp(out.log_filtered), np.exp(want), atol=1e-12)


def test_online_steps_equal_the_batch_filter():
    rng = np.random.default_rng(4)
    log_init, log_trans, log_lik = random_hmm(rng, 3, 7, time_varying=True)
    batch = hmm.forward_filter(log_init, log_trans, log_lik)
    state, total = hmm.init(log_init), 0.0
    for t in range(7):
        state, info = hmm.step(state, log_lik[t], log_trans[min(t, 5)])
        total += float(info.loglik)
        np.testing.assert_allclose(info.log_filtered, batch.log_filtered[t], atol=1e-14)
    np.testing.assert_allclose(total, batch.loglik, rtol=1e-14)


def test_vmap_over_series_equals_one_at_a_time():
    rng = np.random.default_rng(5)
    runs = [random_hmm(rng, 2, 8) for _ in range(4)]
    stacked = [np.stack(x) for x in zip(*runs)]
    out = jax.jit(jax.vmap(hmm.forward_filter))(*stacked)
    for i, args in enumerate(runs):
        one = hmm.forward_filter(*args)
        np.testing.assert_allclose(out.loglik[i], one.loglik, rtol=1e-14)
        np.testing.assert_allclose(out.log_filtered[i], one.log_filtered, atol=1e-14)


def test_bad_transition_shape_is_named():
    with pytest.raises(ValueError, match="log_trans"):
        hmm.forward_filter(np.log([0.5, 0.5]), np.zeros((3, 2, 2)), np.zeros((3, 2)))
