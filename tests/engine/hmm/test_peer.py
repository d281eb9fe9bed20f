"""The HMM kernels against dynamax's HMM inference (an independent implementation), when installed."""

import numpy as np
import pytest

from engine import hmm

from .enumeration import random_hmm

dynamax_inference = pytest.importorskip(
    "dynamax.hidden_markov_model.inference",
    reason="dynamax (the bench extra) is not installed: the peer comparison needs it")


def test_filter_smoother_viterbi_match_dynamax():
    rng = np.random.default_rng(50)
    log_init, log_trans, log_lik = random_hmm(rng, 3, 40, time_varying=True)
    pi, A = np.exp(log_init), np.exp(log_trans)
    post = dynamax_inference.hmm_smoother(pi, A, log_lik)
    ours = hmm.smooth(log_init, log_trans, log_lik)
    np.testing.assert_allclose(ours.loglik, post.marginal_loglik, rtol=1e-10)
    np.testing.assert_allclose(np.exp(ours.log_filtered), post.filtered_probs, atol=1e-10)
    np.testing.assert_allclose(np.exp(ours.log_smoothed), post.smoothed_probs, atol=1e-10)
    np.testing.assert_array_equal(hmm.viterbi(log_init, log_trans, log_lik).path,
                                  dynamax_inference.hmm_posterior_mode(pi, A, log_lik))
