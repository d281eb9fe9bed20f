"""Brute-force references for discrete HMMs: every state path of a short series, in numpy.

log p(z, y) = log π(z_0) + Σ_t log A_t[z_t, z_{t+1}] + Σ_t ℓ_t(z_t) for each of the K^T paths; the
likelihood, the marginals and the best path are then sums and maxima over that table.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.special import logsumexp


def random_hmm(rng: np.random.Generator, n_states: int, n_time: int, time_varying: bool = False,
               zeros: bool = False):
    """log π (K,), log A ((K, K) or (T − 1, K, K)), ℓ (T, K): Dirichlet rows and Gaussian log-likelihoods.

    With `zeros`, a few transitions are impossible (−∞), to exercise the log-space arithmetic."""
    pi = rng.dirichlet(np.ones(n_states))
    shape = (n_time - 1, n_states) if time_varying else (n_states,)
    A = rng.dirichlet(np.ones(n_states), size=shape)
    if zeros:
        A[..., 0, -1] = 0.0
        A = A / A.sum(-1, keepdims=True)
    with np.errstate(divide="ignore"):
        return np.log(pi), np.log(A), 2.0 * rng.normal(size=(n_time, n_states))


def path_log_joint(log_init, log_trans, log_lik):
    """(paths (K^T, T) int, log p(z, y) (K^T,)) for every path."""
    n_time, k = log_lik.shape
    A = log_trans if log_trans.ndim == 3 else np.broadcast_to(log_trans, (n_time - 1, k, k))
    paths = np.array(list(itertools.product(range(k), repeat=n_time)))
    t = np.arange(n_time)
    lj = log_init[paths[:, 0]] + log_lik[t, paths].sum(1)
    if n_time > 1:
        lj = lj + A[t[:-1], paths[:, :-1], paths[:, 1:]].sum(1)
    return paths, lj


def marginals(paths, log_joint, k):
    """log p(z_t = j | y) (T, K) from the path table."""
    n_time = paths.shape[1]
    out = np.full((n_time, k), -np.inf)
    for t in range(n_time):
        for j in range(k):
            sel = paths[:, t] == j
            if sel.any():
                out[t, j] = logsumexp(log_joint[sel])
    return out - logsumexp(log_joint)


def filtered(log_init, log_trans, log_lik):
    """(log p(z_t | y_{0:t}) (T, K), log p(y_{0:t}) (T,)) by enumerating each prefix of the series."""
    n_time, k = log_lik.shape
    out, evidence = [], []
    for t in range(1, n_time + 1):
        A = log_trans[: t - 1] if log_trans.ndim == 3 else log_trans
        paths, lj = path_log_joint(log_init, A, log_lik[:t])
        out.append(marginals(paths, lj, k)[-1])
        evidence.append(logsumexp(lj))
    return np.array(out), np.array(evidence)
