"""HMM smoothed and pairwise marginals against enumeration of every state path."""

import jax
import numpy as np
import pytest
from scipy.special import logsumexp

from engine import hmm

from .enumeration import marginals, path_log_joint, random_hmm


@pytest.mark.parametrize("n_states, n_time, time_varying", [(2, 8, True), (3, 6, False)])
def test_smoothed_and_pairwise_equal_enumeration(n_states, n_time, time_varying):
    rng = np.random.default_rng(20 + n_states)
    log_init, log_trans, log_lik = random_hmm(rng, n_states, n_time, time_varying, zeros=True)
    out = hmm.smooth(log_init, log_trans, log_lik, pairwise=True)
    paths, lj = path_log_joint(log_init, log_trans, log_lik)
    np.testing.assert_allclose(out.loglik, logsumexp(lj), rtol=1e-12)
    np.testing.assert_allclose(np.exp(out.log_smoothed), np.exp(marginals(paths, lj, n_states)), atol=1e-12)
    post = np.exp(lj - logsumexp(lj))
    pair = np.zeros((n_time - 1, n_states, n_states))
    for t in range(n_time - 1):
        np.add.at(pair[t], (paths[:, t], paths[:, t + 1]), post)
    np.testing.assert_allclose(np.exp(out.log_pairwise), pair, atol=1e-12)
    # the last smoothed marginal is the last filtered one
    np.testing.assert_allclose(out.log_smoothed[-1], out.log_filtered[-1], atol=1e-12)


def test_smoother_vmaps_over_series():
    rng = np.random.default_rng(23)
    runs = [random_hmm(rng, 2, 5) for _ in range(3)]
    out = jax.jit(jax.vmap(hmm.smooth))(*[np.stack(x) for x in zip(*runs)])
    for i, args in enumerate(runs):
        np.testing.assert_allclose(out.log_smoothed[i], hmm.smooth(*args).log_smoothed, atol=1e-14)
