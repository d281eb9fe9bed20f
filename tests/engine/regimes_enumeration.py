"""Exact switching-model references: every regime path, each a plain Kalman filter.

For a path s_{0:T-1} the model is linear Gaussian with time-varying variances (the observation
noise of step t inflated if s_t is an outlier, the disturbance into α_t if s_t is a shift), and
its exact diffuse log-likelihood comes from the independent augmented filter
(`reference_diffuse.augmented_diffuse_loglik`). Then

    log p(y) = log Σ_s p(s) p(y | s),    p(s_t | y_{0:t}) ∝ Σ_{s_{0:t}} p(s_{0:t}) p(y_{0:t} | s_{0:t}),

the second by enumerating the paths of every prefix. Cost K^T filters: T ≤ 10 with two regimes,
T ≤ 7 with three.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.special import logsumexp

from engine import build_system, regimes

from .reference_diffuse import augmented_diffuse_loglik


def path_loglik(system, model, y, path) -> float:
    """Exact diffuse log p(y | regime path) (numpy; `system` and `model` from the engine's builders)."""
    n = len(y)
    m = system.transition.shape[0]
    T = np.asarray(system.transition)
    q = np.asarray(system.state_var)
    extra_q = np.asarray(model.state_extra)
    H = float(system.obs_var) + np.asarray(model.obs_extra)[list(path)]
    # state_cov[t] drives α_{t+1}: the inflation of the regime of step t + 1
    nxt = list(path[1:]) + [0]
    state_cov = np.stack([np.diag(q + extra_q[:, s]) for s in nxt], axis=-1)
    d = np.broadcast_to(np.asarray(system.obs_intercept, float), (n,))
    # every array with its time axis last (length 1 where it does not vary), as the reference reads them
    return augmented_diffuse_loglik(
        np.asarray(system.design, float)[None, :, None], d[None], H[None, None], T[..., None], np.zeros((m, 1)),
        np.eye(m)[..., None], state_cov, np.zeros(m), np.asarray(system.init_diffuse), np.asarray(system.init_cov) + np.diag(extra_q[:, path[0]]),
        np.asarray(y, float))


def enumerate_paths(spec, params, y, prefixes: bool = True):
    """(exact log p(y), exact filtered regime probabilities (time, regime) or None)."""
    system = build_system(spec, params, None, len(y))
    model = regimes.regime_model(spec, params)
    log_prior = np.asarray(model.log_prior)
    k, n = len(log_prior), len(y)

    def evidence(t):   # log p(y_{0:t-1}) by paths, and the paths' log joints
        paths = np.array(list(itertools.product(range(k), repeat=t)))
        lj = np.array([log_prior[p].sum() + path_loglik(system, model, y[:t], p) for p in paths])
        return paths, lj

    paths, lj = evidence(n)
    total = float(logsumexp(lj))
    if not prefixes:
        return total, None
    probs = np.zeros((n, k))
    for t in range(1, n + 1):
        p, l = (paths, lj) if t == n else evidence(t)
        probs[t - 1] = [np.exp(logsumexp(l[p[:, -1] == j]) - logsumexp(l)) for j in range(k)]
    return total, probs
