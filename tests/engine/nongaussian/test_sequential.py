"""Sequential filters of any family (`engine.nongaussian.sequential`): the particle filters against a
grid filter on a one-state Poisson level and against the `particles` package on a level +
seasonal; EKF and UKF equal to a Kalman filter (written here in NumPy) on a Gaussian model, and
close to the grid filter where their Gaussian moment-matching should be good (large counts)."""

from __future__ import annotations

import numpy as np
import pytest
from engine.nongaussian import sequential as S

from . import grid as G

RNG = np.random.default_rng(1)
T = 50
LEVEL = np.cumsum(RNG.normal(0, 0.15, T)) + 1.5
COUNTS = RNG.poisson(np.exp(LEVEL)).astype(float)
COUNTS[10] = np.nan
POISSON = {"level": "local_level", "observation": "poisson"}
Q = 0.02
M0, V0 = 1.0, 1.0           # the proper initial level N(M0, V0)
LEVELS = np.linspace(-3.0, 12.0, 3001)


@pytest.fixture(scope="module")
def grid_reference():
    terms, means = G.local_level_filter(G.poisson, COUNTS, Q, LEVELS, (M0, V0))
    return terms.sum(), means


def _runs(method, y, n_particles, seeds, spec=POISSON, params=None):
    out = [S.run(spec, params or {"sigma2.level": Q}, y, method=method, n_particles=n_particles, seed=s,
                 init_mean=M0, init_cov=V0) for s in seeds]
    return np.array([float(ll) for ll, _ in out]), [info for _, info in out]


def test_particle_filters_match_the_grid_filter(grid_reference):
    grid_ll, grid_means = grid_reference
    spread = {}
    for method in ("bootstrap", "guided"):
        lls, infos = _runs(method, COUNTS, 2000, range(6))
        se = np.std(lls, ddof=1) / np.sqrt(len(lls))
        spread[method] = np.std(lls, ddof=1)
        assert abs(lls.mean() - grid_ll) < 4 * se + 0.01, (method, lls, grid_ll)
        means = np.mean([np.asarray(i.filtered_mean[:, 0]) for i in infos], axis=0)
        assert np.max(np.abs(means - grid_means)) < 0.02, method
    # the guided (auxiliary) filter's proposal and look-ahead: far less spread at the same particles
    assert spread["guided"] < 0.5 * spread["bootstrap"], spread


def test_ekf_and_ukf_are_the_kalman_filter_on_a_gaussian_model():
    spec = {"level": "local_level", "seasonal": [{"period": 4}]}
    params = {"sigma2.irregular": 0.3, "sigma2.level": 0.05, "sigma2.seasonal": 0.01}
    m0 = np.array([1.0, 0.5, -0.2, 0.1])
    P0 = np.diag([2.0, 1.0, 1.0, 1.0]) + 0.1
    y = LEVEL + 0.5 * RNG.normal(size=T)
    y[[3, 20]] = np.nan
    Tm = np.array([[1.0, 0, 0, 0], [0, -1, -1, -1], [0, 1, 0, 0], [0, 0, 1, 0]])
    z = np.array([1.0, 1.0, 0, 0])
    a, P, ll, means = m0.copy(), P0.copy(), 0.0, []
    for y_t in y:
        if np.isfinite(y_t):
            F = z @ P @ z + 0.3
            K = P @ z / F
            v = y_t - z @ a
            ll += -0.5 * (np.log(2 * np.pi * F) + v * v / F)
            a, P = a + K * v, P - np.outer(K, K) * F
        means.append(a)
        a, P = Tm @ a, Tm @ P @ Tm.T + np.diag([0.05, 0.01, 0, 0])
    for method in ("ekf", "ukf"):
        out, info = S.run(spec, params, y, method=method, init_mean=m0, init_cov=P0)
        assert abs(float(out) - ll) < 1e-10, method
        np.testing.assert_allclose(np.asarray(info.filtered_mean), np.array(means), atol=1e-10)


def test_ekf_and_ukf_are_close_to_the_grid_filter_where_their_gaussian_matching_holds():
    """Their Gaussian matching of y_t given the past is good for large counts of a slowly moving level
    (counts about 3000, level sd 2% a step) and poor for small counts (about 5): per observation
    after the first five, the log-likelihood's error is small in the first case and far smaller
    than in the second, and the filtered level is within a tenth of its posterior sd."""
    rng = np.random.default_rng(4)
    errors = {}
    for case, shift, q in (("small", 0.0, Q), ("large", 6.5, 0.0005)):
        level = 1.5 + shift + np.cumsum(rng.normal(0, np.sqrt(q), T))
        y = rng.poisson(np.exp(level)).astype(float)
        terms, means = G.local_level_filter(G.poisson, y, q, np.linspace(shift - 1.0, shift + 4.0, 3001),
                                            (level[0], 0.05))
        for method in ("ekf", "ukf"):
            _, info = S.run(POISSON, {"sigma2.level": q}, y, method=method, init_mean=level[0], init_cov=0.05)
            sd = np.sqrt(np.asarray(info.filtered_var[5:, 0]))
            errors[method, case] = (np.mean(np.abs(np.asarray(info.loglik[5:]) - terms[5:])),
                                    np.max(np.abs(np.asarray(info.filtered_mean[5:, 0]) - means[5:]) / sd))
    for method in ("ekf", "ukf"):
        assert errors[method, "large"][0] < 0.03 and errors[method, "large"][0] < 0.2 * errors[method, "small"][0], \
            errors
        assert errors[method, "large"][1] < 0.1, errors


def test_a_diffuse_model_needs_a_proper_initial_state_and_bad_methods_are_refused():
    with pytest.raises(ValueError, match="need a proper initial state.*pass init_mean and init_cov"):
        S.run(POISSON, {"sigma2.level": Q}, COUNTS)
    with pytest.raises(ValueError, match="method='kalman' is not known"):
        S.run(POISSON, {"sigma2.level": Q}, COUNTS, method="kalman", init_mean=M0, init_cov=V0)
    with pytest.raises(ValueError, match="n_particles must be a whole number"):
        S.run(POISSON, {"sigma2.level": Q}, COUNTS, n_particles=1, init_mean=M0, init_cov=V0)


def test_particle_filters_match_the_particles_package_on_a_level_and_seasonal():
    """The model and data of `test_particles` (Poisson level + dummy seasonal of period 4, a proper
    initial state): ours (bootstrap and guided) against `particles`' bootstrap filter."""
    particles = pytest.importorskip("particles")
    from particles import state_space_models as ssm

    from . import test_particles as P
    y = P._data()
    np.random.seed(11)
    theirs = []
    for _ in range(4):
        pf = particles.SMC(fk=ssm.Bootstrap(ssm=P._PoissonLevelSeasonal(), data=list(y)), N=20000, collect=None)
        pf.run()
        theirs.append(pf.logLt)
    params = {"sigma2.level": P.Q_LEVEL, "sigma2.seasonal": P.Q_SEASONAL}
    for method in ("bootstrap", "guided"):
        ours = [float(S.run(P.SPEC, params, y, method=method, n_particles=20000, seed=s, init_mean=P.M0,
                            init_cov=P.V0)[0]) for s in range(4)]
        se = np.hypot(np.std(ours, ddof=1), np.std(theirs, ddof=1)) / 2
        assert abs(np.mean(ours) - np.mean(theirs)) < 4 * se + 0.01, (method, ours, theirs)
