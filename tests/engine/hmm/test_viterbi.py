"""Viterbi against the best of every state path."""

import jax
import numpy as np
import pytest

from engine import hmm

from .enumeration import path_log_joint, random_hmm


@pytest.mark.parametrize("n_states, n_time, time_varying, seed", [(2, 8, False, 0), (3, 7, True, 1), (3, 6, False, 2)])
def test_viterbi_equals_best_enumerated_path(n_states, n_time, time_varying, seed):
    rng = np.random.default_rng(30 + seed)
    log_init, log_trans, log_lik = random_hmm(rng, n_states, n_time, time_varying, zeros=True)
    paths, lj = path_log_joint(log_init, log_trans, log_lik)
    out = hmm.viterbi(log_init, log_trans, log_lik)
    best = np.argmax(lj)
    gap = np.sort(lj)[-1] - np.sort(lj)[-2]
    assert gap > 1e-6, "the test case must have a unique best path"
    np.testing.assert_array_equal(out.path, paths[best])
    np.testing.assert_allclose(out.log_joint, lj[best], rtol=1e-12)


def test_viterbi_vmaps_over_series():
    rng = np.random.default_rng(34)
    runs = [random_hmm(rng, 3, 6) for _ in range(3)]
    out = jax.jit(jax.vmap(hmm.viterbi))(*[np.stack(x) for x in zip(*runs)])
    for i, args in enumerate(runs):
        paths, lj = path_log_joint(*args)
        np.testing.assert_array_equal(out.path[i], paths[np.argmax(lj)])
