"""The associative-scan HMM filter against enumeration and against the sequential filter."""

import jax
import numpy as np
import pytest
from scipy.special import logsumexp

from engine import hmm

from .enumeration import filtered, path_log_joint, random_hmm


@pytest.mark.parametrize("time_varying", [False, True])
def test_parallel_filter_equals_enumeration(time_varying):
    rng = np.random.default_rng(11)
    log_init, log_trans, log_lik = random_hmm(rng, 3, 7, time_varying, zeros=True)
    out = jax.jit(hmm.parallel_filter)(log_init, log_trans, log_lik)
    want, evidence = filtered(log_init, log_trans, log_lik)
    np.testing.assert_allclose(out.loglik, logsumexp(path_log_joint(log_init, log_trans, log_lik)[1]), rtol=1e-12)
    np.testing.assert_allclose(np.exp(out.log_filtered), np.exp(want), atol=1e-12)
    np.testing.assert_allclose(out.step_loglik, np.diff(evidence, prepend=0.0), atol=1e-11)


def test_parallel_equals_sequential_on_a_long_batch():
    """Parity on series far too long to enumerate (including near-impossible observations), vmapped."""
    rng = np.random.default_rng(12)
    runs = [random_hmm(rng, 3, 300) for _ in range(3)]
    log_init, log_trans, log_lik = [np.stack(x) for x in zip(*runs)]
    log_lik[:, 50] -= 500.0                  # an observation that every state finds very unlikely
    seq = jax.jit(jax.vmap(hmm.forward_filter))(log_init, log_trans, log_lik)
    par = jax.jit(jax.vmap(hmm.parallel_filter))(log_init, log_trans, log_lik)
    np.testing.assert_allclose(par.loglik, seq.loglik, rtol=1e-12)
    np.testing.assert_allclose(np.exp(par.log_filtered), np.exp(seq.log_filtered), atol=1e-10)
    np.testing.assert_allclose(np.exp(par.log_predicted), np.exp(seq.log_predicted), atol=1e-10)
    np.testing.assert_allclose(par.step_loglik, seq.step_loglik, atol=1e-9)
