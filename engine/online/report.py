"""What one observation reveals: the per-step `OnlineInfo` of the bank.

From each draw's predictive (μ_s, F_s) and filtered belief, and the weights before and after
the update: the mixture predictive of y_t and its bands, the log predictive density (the
increment of the log evidence) and the new weights, the PIT and standardised innovation, the
anomaly flag and a two-sided CUSUM for drift, the ESS, and the mixed filtered states and
components (see `component_names`) with their variances and bands.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.special import ndtri

from .. import kalman
from ..components import component_selectors
from ..system import layout
from .covariance import _is_packed
from .mixture import PROBS, _central_terms, _cornish_fisher, _maxima, _newton_terms, _newton_update, _sums
from .state import Belief, OnlineConfig


class OnlineInfo(NamedTuple):
    """What one observation reveals. Mixture quantities use the weights before (predictive)
    or after (filtered) the update; bands are quantiles at `PROBS`."""

    t: jnp.ndarray                    # () index of this observation (0-based)
    observed: jnp.ndarray             # () bool: y_t is not NaN
    diffuse: jnp.ndarray              # () bool: the predictive is still improper (diffuse phase)
    draw_mean: jnp.ndarray            # (draw,) μ_s = E[y_t | y_{1:t-1}, θ_s]
    draw_var: jnp.ndarray             # (draw,) F_s (inf while diffuse)
    loglik: jnp.ndarray               # (draw,) log p(y_t | y_{1:t-1}, θ_s) (exact diffuse term; 0 if missing)
    mean: jnp.ndarray                 # () mixture predictive mean
    var: jnp.ndarray                  # () mixture predictive variance
    quantiles: jnp.ndarray            # (len(PROBS),) mixture predictive quantiles
    log_pred: jnp.ndarray             # () log Σ_s w_s p(y_t | θ_s): the increment of the log evidence
    pit: jnp.ndarray                  # () Σ_s w_s Φ((y_t − μ_s)/√F_s)
    innovation: jnp.ndarray           # () standardised innovation Φ⁻¹(PIT) (= v/√F for one draw), from the
                                      #    smaller tail, so accurate far out in both
    anomaly: jnp.ndarray              # () bool: |innovation| > anomaly_z
    cusum: jnp.ndarray                # (2,) CUSUM statistics after this step
    drift: jnp.ndarray                # () bool: a CUSUM crossed its threshold (then it restarts)
    ess: jnp.ndarray                  # () effective sample size 1/Σ w_s² after the update
    steady: jnp.ndarray               # () bool: every draw's covariance has converged (O(state) updates)
    settled: jnp.ndarray              # () bool: no draw's next belief has a diffuse part left (P∞ = 0)
    filtered_mean: jnp.ndarray        # (state, draw) a_{t|t} per draw
    state_mean: jnp.ndarray           # (state,) Σ_s w_s a_{t|t,s}
    state_var: jnp.ndarray            # (state,) mixture variance of each filtered state (inf while diffuse)
    state_quantiles: jnp.ndarray      # (state, len(PROBS)) its quantiles (Cornish–Fisher from the mixture's moments)
    component_mean: jnp.ndarray       # (component,) mixture mean of each component (see `component_names`)
    component_var: jnp.ndarray        # (component,) mixture variance (inf while that component is diffuse)
    component_quantiles: jnp.ndarray  # (component, len(PROBS))



# -- components -----------------------------------------------------------------------------
def component_names(spec) -> list[str]:
    """Names of the components reported in `OnlineInfo.component_*`, in order."""
    return [sel.name for sel in component_selectors(spec)]


def _components(spec, z, d, a_f, entry, M, K, F):
    """Per-draw filtered mean and variance of each component: (component, draw) each.

    A component c·α_t over the static states ix needs only c P_{t|t}[ix, ix] c
    = c P c − 2 (c·K)(c·M) + F (c·K)², with M = P z and F = F* (valid for the diffuse, standard
    and missing cases alike); entry(i, j) gives P_ij (draw,). Written on single rows so that it
    fuses into the step's elementwise loops.
    """
    means, variances = [], []
    for _, idx, use_design in component_selectors(spec):
        if not idx:   # regression on parameters: x_t β, known given the draw
            means.append(d)
            variances.append(jnp.zeros_like(d))
            continue
        c = [z[i] if use_design else 1.0 for i in idx]
        dot = lambda x: sum(ci * x[i] for ci, i in zip(c, idx))
        cPc = sum(ci * cj * entry(i, j) for ci, i in zip(c, idx) for cj, j in zip(c, idx))
        cK = dot(K)
        means.append(dot(a_f))
        variances.append(cPc - 2 * cK * dot(M) + F * cK * cK)
    if not means:   # irregular only: nothing to decompose
        return jnp.zeros((0, d.shape[0])), jnp.zeros((0, d.shape[0]))
    return jnp.stack(means), jnp.stack(variances)


# -- per draw, then mixed -------------------------------------------------------------------
class _DrawStep(NamedTuple):
    """Per-draw results of one observation, the input of `_report`."""

    mu: jnp.ndarray          # (draw,) predictive mean of y_t
    F: jnp.ndarray           # (draw,) predictive variance (finite part)
    diffuse: jnp.ndarray     # (draw,) bool: F∞ > 0, the predictive is improper
    loglik: jnp.ndarray      # (draw,)
    filt_mean: jnp.ndarray   # (state, draw)
    comp_mu: jnp.ndarray     # (component, draw)
    comp_var: jnp.ndarray    # (component, draw), inf while diffuse
    state_var: jnp.ndarray   # (state, draw) diagonal of P_{t|t}, inf while diffuse


def _per_draw(config: OnlineConfig, lay, z, d, st: kalman.FilterState, K, F, Fi, y, loglik,
              still=None) -> _DrawStep:
    """Per-draw predictive and filtered quantities of one step from the predicted belief `st`
    and this step's gain K, F* and F∞ (state, draw / draw).

    a_{t|t} = a + K v; the components need only a few entries of P and M = P z (see
    `_components`), so no (state, state, draw) array is formed; nor do the states' filtered
    variances, the diagonal P_ii − 2 K_i M_i + F K_i² (each state as a component of its own).
    still (component + state, draw): those whose next P∞ block is non-zero get an infinite variance.
    """
    observed = ~jnp.isnan(y)
    draw_diffuse = Fi > kalman.TOL_DIFFUSE
    mu = kalman.z_dot(lay, st.mean, z) + d
    updated = observed & (draw_diffuse | (F > 0))
    v = jnp.where(updated, jnp.where(observed, y, 0.0) - mu, 0.0)
    a_f = st.mean + K * v
    if config.sqrt:   # P = L Lᵀ
        L = st.cov
        entry = lambda i, j: jnp.sum(L[i] * L[j], axis=0)
        M = kalman.mat_vec(L, jnp.sum(L * z[:, None], axis=0))
    elif _is_packed(st):
        rows = tuple(st.cov)
        entry = kalman.packed_entry(rows, lay.n_states)
        M = kalman.packed_mat_z(lay, rows, z)
    else:
        entry = lambda i, j: st.cov[i, j]
        M = kalman.mat_z(lay, st.cov, z)
    comp_mu, comp_var = _components(config.spec, z, d, a_f, entry, M, K, F)
    state_var = jnp.stack([entry(i, i) - 2 * K[i] * M[i] + F * K[i] * K[i] for i in range(lay.n_states)])
    if still is not None:
        n_comp = comp_var.shape[0]
        comp_var = jnp.where(still[:n_comp], jnp.inf, comp_var)
        state_var = jnp.where(still[n_comp:], jnp.inf, state_var)
    return _DrawStep(mu, F, draw_diffuse, loglik, a_f, comp_mu, comp_var, state_var)



def _report(config: OnlineConfig, belief: Belief, fs: kalman.FilterState, y, ds: _DrawStep):
    """Weights, mixture predictive and bands, calibration, drift, mixed filtered states and components.

    Every sum over the draws of one stage is a single reduction (`_sums`): three stages (and
    one per further Newton step), so the report is a handful of kernels whatever the model.
    """
    observed = ~jnp.isnan(y)
    w_prior = jnp.exp(belief.log_weight)
    mu = ds.mu
    F_finite = jnp.where(ds.diffuse, 1.0, ds.F)
    sd = jnp.sqrt(jnp.maximum(F_finite, 0.0))
    lw = belief.log_weight + ds.loglik
    y0 = jnp.where(observed, y, 0.0)
    comp_inf = jnp.isinf(ds.comp_var)
    comp_var = jnp.where(comp_inf, 1.0, ds.comp_var)
    comp_sd = jnp.sqrt(jnp.maximum(comp_var, 0.0))
    state_inf = jnp.isinf(ds.state_var)
    state_var = jnp.where(state_inf, 1.0, ds.state_var)
    cq_iters = config.component_quantile_iters

    # stage 1: predictive mean and PIT under the weights before the update; maxima (log weights,
    # the Newton brackets, and the flags: any draw diffuse, every draw steady, component or state diffuse)
    # both tails of the PIT, so that the innovation Φ⁻¹(PIT) stays accurate far out in either one
    half_z = (y0 - mu) / (np.sqrt(2.0) * sd)
    mean, pit, pit_upper = _sums(w_prior * mu, w_prior * 0.5 * lax.erfc(-half_z), w_prior * 0.5 * lax.erfc(half_z))
    flag = lambda b: jnp.where(b, 1.0, 0.0)
    tops = [lw, mu + 8 * sd, 8 * sd - mu, flag(ds.diffuse), flag(~fs.steady), flag(fs.diffuse), flag(comp_inf),
            flag(state_inf)]
    if cq_iters:
        tops += [ds.comp_mu + 8 * comp_sd, 8 * comp_sd - ds.comp_mu]
    top = _maxima(*tops)
    lw_max, hi, lo = jnp.where(jnp.isfinite(top[0]), top[0], 0.0), top[1], -top[2]
    diffuse, steady, settled = top[3] > 0, top[4] == 0, top[5] == 0
    comp_diffuse, state_diffuse = top[6] > 0, top[7] > 0

    # stage 2: central moments of the predictive; the updated weights (u ∝ w_post) and the
    # filtered means mixed with them
    # when no draw gives y_t a positive density (v² overflowed: every lw is −inf) the weights stay
    weighed = jnp.isfinite(top[0])
    u = jnp.where(weighed, jnp.exp(lw - lw_max), w_prior)
    m2, m3, m4, su, su2, state_sum, comp_sum = _sums(*_central_terms(w_prior, mu - mean, F_finite), u, u * u,
                                                     u * ds.filt_mean, u * ds.comp_mu)
    log_pred = jnp.where(weighed, lw_max + jnp.log(su), -jnp.inf)
    log_weight = jnp.where(weighed, lw - log_pred, belief.log_weight)
    ess = su * su / su2
    w_post = u / su
    c_mean = comp_sum / su
    s_mean = state_sum / su
    var = jnp.where(diffuse, jnp.inf, m2)
    q = _cornish_fisher(mean, m2, m3, m4, PROBS)

    # stage 3 (and one more per further Newton step): the components' and states' central
    # moments, then Newton on the predictive quantiles and (from the next stage) on the components'
    comp_terms = (_central_terms(w_post, ds.comp_mu - c_mean[:, None], comp_var)
                  + _central_terms(w_post, ds.filt_mean - s_mean[:, None], state_var))
    c_q = None
    for it in range(max(config.quantile_iters, cq_iters + 1)):
        newton_y, newton_c = it < config.quantile_iters, 1 <= it <= cq_iters
        terms = list(comp_terms) if it == 0 else []
        terms += [w_prior * t for t in _newton_terms(mu, sd, q, PROBS, fast=True)] if newton_y else []
        terms += [w_post * t for t in _newton_terms(ds.comp_mu, comp_sd, c_q, PROBS, fast=True)] if newton_c else []
        sums = _sums(*terms)
        if it == 0:
            c_m2, c_m3, c_m4, s_m2, s_m3, s_m4, *sums = sums
            c_q = _cornish_fisher(c_mean, c_m2, c_m3, c_m4, PROBS)
            s_q = _cornish_fisher(s_mean, s_m2, s_m3, s_m4, PROBS)
        if newton_y:
            q = _newton_update(q, sums[0], sums[1], lo, hi)
            sums = sums[2:]
        if newton_c:
            c_q = _newton_update(c_q, sums[0], sums[1], -top[9], top[8])
    quantiles = jnp.where(diffuse, jnp.nan, q)

    # calibration: PIT, standardised innovation, anomaly flag, two-sided CUSUM
    valid = observed & ~diffuse
    pit = jnp.where(valid, pit, jnp.nan)
    tiny = jnp.finfo(jnp.float64).tiny
    lower_z, upper_z = ndtri(jnp.maximum(pit, tiny)), -ndtri(jnp.maximum(pit_upper, tiny))
    innovation = jnp.where(valid, jnp.where(pit <= 0.5, lower_z, upper_z), jnp.nan)
    anomaly = valid & (jnp.abs(innovation) > config.anomaly_z)
    zc = jnp.where(valid, innovation, 0.0)
    upper = jnp.maximum(0.0, belief.cusum[0] + zc - config.cusum_k)
    lower = jnp.maximum(0.0, belief.cusum[1] - zc - config.cusum_k)
    cusum = jnp.where(valid, jnp.stack([upper, lower]), belief.cusum)
    drift = jnp.max(cusum) > config.cusum_h
    cusum = jnp.where(drift, 0.0, cusum)

    info = OnlineInfo(
        t=belief.t, observed=observed, diffuse=diffuse, draw_mean=mu, draw_var=jnp.where(ds.diffuse, jnp.inf, ds.F),
        loglik=ds.loglik, mean=mean, var=var, quantiles=quantiles, log_pred=log_pred, pit=pit,
        innovation=innovation, anomaly=anomaly, cusum=cusum, drift=drift, ess=ess, steady=steady, settled=settled,
        filtered_mean=ds.filt_mean, state_mean=s_mean, state_var=jnp.where(state_diffuse, jnp.inf, s_m2),
        state_quantiles=jnp.where(state_diffuse[:, None], jnp.nan, s_q), component_mean=c_mean,
        component_var=jnp.where(comp_diffuse, jnp.inf, c_m2),
        component_quantiles=jnp.where(comp_diffuse[:, None], jnp.nan, c_q))
    return Belief(fs, log_weight, cusum, belief.t + 1), info

