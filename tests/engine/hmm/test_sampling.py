"""Forward-filtering backward-sampling draws have the exact posterior path frequencies."""

import jax
import numpy as np
from scipy import stats
from scipy.special import logsumexp

from engine import hmm

from .enumeration import path_log_joint, random_hmm

N_PATHS = 20_000


def _path_index(paths, k):
    return paths @ (k ** np.arange(paths.shape[1])[::-1])


def test_sampled_paths_match_the_enumerated_posterior():
    """Pearson's chi-square over all K^T paths: with a fixed seed the statistic must sit below the
    0.9999 quantile of its χ²(K^T − 1) law (a correct sampler fails one seed in 10⁴), and each
    marginal frequency within 5 binomial standard errors √(p(1 − p)/N) of the exact one."""
    k, n_time = 2, 5
    rng = np.random.default_rng(40)
    log_init, log_trans, log_lik = random_hmm(rng, k, n_time, time_varying=True)
    log_lik = 0.5 * log_lik                      # a posterior spread over many paths
    paths, lj = path_log_joint(log_init, log_trans, log_lik)
    prob = np.exp(lj - logsumexp(lj))
    draws = np.asarray(jax.jit(hmm.sample_paths, static_argnums=4)(jax.random.PRNGKey(7), log_init, log_trans, log_lik, N_PATHS))
    assert draws.shape == (N_PATHS, n_time)
    counts = np.bincount(_path_index(draws, k), minlength=k ** n_time)
    order = _path_index(paths, k)
    expected = np.zeros(k ** n_time)
    expected[order] = N_PATHS * prob
    assert expected.min() > 5, "every cell needs enough expected draws for the χ² law"
    chi2 = np.sum((counts - expected) ** 2 / expected)
    assert chi2 < stats.chi2.ppf(0.9999, k ** n_time - 1), chi2
    for t in range(n_time):
        p = np.array([prob[paths[:, t] == j].sum() for j in range(k)])
        freq = np.bincount(draws[:, t], minlength=k) / N_PATHS
        assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / N_PATHS)), (t, freq, p)


def test_impossible_transitions_are_never_sampled():
    k, n_time = 3, 6
    rng = np.random.default_rng(41)
    log_init, log_trans, log_lik = random_hmm(rng, k, n_time, zeros=True)   # 0 → 2 impossible
    draws = np.asarray(jax.jit(hmm.sample_paths, static_argnums=4)(jax.random.PRNGKey(8), log_init, log_trans, log_lik, 2000))
    assert not np.any((draws[:, :-1] == 0) & (draws[:, 1:] == k - 1))
