"""Online engine: O(1) Bayesian updates of a bank of Kalman filters, one per posterior draw.

After a fit, each of S posterior draws θ_s keeps its own exact (diffuse-initialised)
Kalman belief. A new observation costs one batched Kalman step for the whole bank,
independent of the history length, and re-weights the draws by their one-step
predictive density (sequential importance sampling of the static parameters, as in
IBIS):

    log w_s ← log w_s + log p(y_t | y_{1:t-1}, θ_s) − log Σ_r w_r p(y_t | y_{1:t-1}, θ_r)

The predictive of y_t is the mixture Σ_s w_s N(μ_s, F_s). The pure core is the
`init`/`step` pair over the `Belief` pytree (the caller jits, `OnlineConfig` is static);
`OnlineFilter` is the thin stateful wrapper that also keeps the history, runs the
background rejuvenation (see `engine.rejuvenation`) and swaps the new bank in.
"""

from __future__ import annotations

import json
import threading
import time
from functools import lru_cache, partial
from typing import Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.special import ndtri

from . import kalman
from .model import _systems, as_param_vector
from .spec import ModelSpec, as_spec, param_names
from .system import System, block_structure, check_exog, layout

# quantiles reported for the 95%, 80% and 50% bands, and the median
PROBS = (0.025, 0.1, 0.25, 0.5, 0.75, 0.9, 0.975)
BAND_LEVELS = {0.95: (0, 6), 0.8: (1, 5), 0.5: (2, 4)}  # level → (lower, upper) index in PROBS


class OnlineConfig(NamedTuple):
    """Static settings of the online step (hashable: a `jax.jit` static argument)."""

    spec: ModelSpec
    sqrt: bool = False          # square-root (Cholesky) covariance recursion
    quantile_iters: int = 1     # Newton refinements of the predictive quantiles of y (0: Cornish–Fisher only)
    anomaly_z: float = 3.5      # |standardised innovation| above this flags an anomaly
    cusum_k: float = 0.5        # CUSUM allowance (in standard deviations)
    cusum_h: float = 5.0        # CUSUM decision threshold
    component_quantile_iters: int = 0  # the same for the filtered components (each costs ~7·S erf)
    catch_up_filter: str = "auto"  # history pass: "standard", "parallel" (associative scan) or "auto"


class Bank(NamedTuple):
    """The S parameter draws and their systems (batch-last); constant between rejuvenations."""

    params: jnp.ndarray   # (draw, param) in `param_names` order
    system: System        # batch-last: transition (state, state, draw), ...


class Belief(NamedTuple):
    """What the next step needs: each draw's predicted Kalman belief and its log weight."""

    filter: kalman.FilterState  # a_{t+1}, P_{t+1} (or its Cholesky factor), P∞, per draw (draw last)
    log_weight: jnp.ndarray     # (draw,) normalised: logsumexp = 0
    cusum: jnp.ndarray          # (2,) upper and lower CUSUM of the standardised innovations
    t: jnp.ndarray              # () observations consumed


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


class OnlineForecast(NamedTuple):
    """h-step predictive of y from the current belief, mixed over the draws."""

    mean: jnp.ndarray        # (steps,)
    var: jnp.ndarray         # (steps,)
    quantiles: jnp.ndarray   # (steps, len(PROBS))
    draw_mean: jnp.ndarray   # (steps, draw)
    draw_var: jnp.ndarray    # (steps, draw)
    weight: jnp.ndarray      # (draw,)


# -- mixtures of Gaussians ------------------------------------------------------------------
def mixture_moments(w, mu, var):
    """Mean and central moments m2, m3, m4 of Σ_s w_s N(μ_s, var_s) over the last axis."""
    mean = jnp.sum(w * mu, axis=-1)
    m2, m3, m4 = (jnp.sum(t, axis=-1) for t in _central_terms(w, mu - mean[..., None], var))
    return mean, m2, m3, m4


def _central_terms(w, dev, var):
    """Per-draw terms of the central moments m2, m3, m4 of a mixture, given each draw's μ_s − mean."""
    d2 = dev * dev
    return w * (var + d2), w * dev * (d2 + 3 * var), w * (d2 * d2 + 6 * d2 * var + 3 * var * var)


def mixture_quantiles(w, mu, var, probs=PROBS, iters: int = 2):
    """Quantiles of the mixture Σ_s w_s N(μ_s, var_s) (mixture over the last axis).

    Start from the Cornish–Fisher expansion with the mixture's exact skewness and kurtosis
    (exact for one draw), then `iters` Newton steps on Σ w_s Φ((q − μ_s)/σ_s) = p, kept
    inside the bracket [min μ − 8σ, max μ + 8σ]. Returns (..., len(probs)).
    """
    q = _cornish_fisher(*mixture_moments(w, mu, var), probs)
    if iters:
        sd = jnp.sqrt(jnp.maximum(var, 0.0))
        lo, hi = jnp.min(mu - 8 * sd, axis=-1), jnp.max(mu + 8 * sd, axis=-1)
        for _ in range(iters):
            excess, pdf = _newton_terms(mu, sd, q, probs)
            q = _newton_update(q, jnp.sum(w[..., None, :] * excess, axis=-1), jnp.sum(w[..., None, :] * pdf, axis=-1),
                               lo, hi)
    return q


def _cornish_fisher(mean, m2, m3, m4, probs):
    """Quantiles at `probs` from the mean and central moments m2..m4 (exact for a Gaussian): (..., probs)."""
    sd = jnp.sqrt(jnp.maximum(m2, 0.0))
    m2_safe = jnp.where(m2 > 0, m2, 1.0)
    g1 = jnp.where(m2 > 0, m3 / (m2_safe * jnp.sqrt(m2_safe)), 0.0)[..., None]
    g2 = jnp.where(m2 > 0, m4 / (m2_safe * m2_safe) - 3.0, 0.0)[..., None]
    z = ndtri(jnp.asarray(probs))
    cf = z + (z * z - 1) * g1 / 6 + (z ** 3 - 3 * z) * g2 / 24 - (2 * z ** 3 - 5 * z) * g1 * g1 / 36
    return mean[..., None] + sd[..., None] * cf


def _newton_terms(mu, sd, q, probs, fast: bool = False):
    """Per-draw terms of F(q) − p and of f(q) for the mixture CDF F at q: (..., probs, draw) each.

    Φ((q − μ_s)/σ_s) − Φ(z_p), with z_p = Φ⁻¹(p) and Σ w_s = 1, sums to F(q) − p. Exact Φ goes
    through erf (absolute accuracy is what a quantile in [0.025, 0.975] needs, at a fraction of
    the cost of `ndtr`). fast: Φ to 1.5e-7 sharing the density's exponential (Abramowitz & Stegun
    7.1.26), about a fifth of the cost; taking the same Φ at z_p keeps a Gaussian's quantiles
    exact, and the step's error is that of Φ' (~1e-6) times the spread of the draws.
    """
    phi = _normal_cdf_fast if fast else _normal_cdf
    safe_sd = jnp.where(sd > 0, sd, 1.0)[..., None, :]
    u = (q[..., None] - mu[..., None, :]) / safe_sd
    cdf_u, kernel = phi(u)
    cdf_z, _ = phi(ndtri(jnp.asarray(probs))[:, None])
    return cdf_u - cdf_z, kernel / (safe_sd * np.sqrt(2 * np.pi))


def _normal_cdf(u):
    """(Φ(u), exp(−u²/2)) through erf."""
    return 0.5 + 0.5 * lax.erf(u * np.sqrt(0.5)), jnp.exp(-0.5 * u * u)


def _normal_cdf_fast(u):
    """(Φ(u) to 1.5e-7, exp(−u²/2)): erf(x) ≈ 1 − t (a1 + … + a5 t⁴) e^{−x²}, t = 1/(1 + p x)."""
    x = jnp.abs(u) * np.sqrt(0.5)
    t = 1.0 / (1.0 + 0.3275911 * x)
    kernel = jnp.exp(-x * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    half_erf = 0.5 - 0.5 * poly * kernel
    return 0.5 + jnp.where(u < 0, -half_erf, half_erf), kernel


def _newton_update(q, excess, pdf, lo, hi):
    """One Newton step q − (F(q) − p)/f(q) on the mixture CDF, kept inside [lo, hi]."""
    step = excess / jnp.where(pdf > 0, pdf, 1.0)
    return jnp.where(pdf > 0, jnp.clip(q - step, lo[..., None], hi[..., None]), q)


def _sums(*terms):
    """Σ over the last (draw) axis of every term, as one reduction (one kernel instead of one each).

    terms: arrays (..., draw) with any leading shapes; returns the sums with those shapes.
    """
    return _reduce(jnp.sum, terms)


def _maxima(*terms):
    """max over the last (draw) axis of every term, as one reduction (see `_sums`)."""
    return _reduce(jnp.max, terms)


def _reduce(op, terms):
    flat = [jnp.reshape(t, (-1, t.shape[-1])) for t in terms]
    total = op(jnp.concatenate(flat), axis=-1)
    out, start = [], 0
    for t, f in zip(terms, flat):
        out.append(jnp.reshape(total[start:start + f.shape[0]], t.shape[:-1]))
        start += f.shape[0]
    return out


# -- components -----------------------------------------------------------------------------
@lru_cache(maxsize=64)
def _component_index(spec: ModelSpec) -> tuple[tuple[str, tuple[int, ...], bool], ...]:
    """Static (name, state indices whose design entry can be non-zero, use the design?) per component.

    The slope of a local linear trend is reported as 'trend' (its own state, unit weight).
    """
    spec = as_spec(spec)
    lay = layout(spec)
    out = []
    designs = [design for *_, design in block_structure(spec)]
    for design, (name, start, k, _, _) in zip(designs, lay.blocks):
        nz = tuple(start + int(i) for i in np.flatnonzero(design))
        if name == "regression":
            nz = tuple(range(start, start + k))
        if nz:
            out.append((name, nz, True))
        if name == "level" and k == 2:
            out.append(("trend", (start + 1,), False))
    if spec.regression is not None and spec.regression.coefficients == "parameters":
        out.append(("regression", (), True))
    return tuple(out)


def component_names(spec) -> list[str]:
    """Names of the components reported in `OnlineInfo.component_*`, in order."""
    return [name for name, _, _ in _component_index(as_spec(spec))]


def _components(spec, z, d, a_f, entry, M, K, F):
    """Per-draw filtered mean and variance of each component: (component, draw) each.

    A component c·α_t over the static states ix needs only c P_{t|t}[ix, ix] c
    = c P c − 2 (c·K)(c·M) + F (c·K)², with M = P z and F = F* (valid for the diffuse, standard
    and missing cases alike); entry(i, j) gives P_ij (draw,). Written on single rows so that it
    fuses into the step's elementwise loops.
    """
    means, variances = [], []
    for name, idx, use_design in _component_index(spec):
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


def _kalman_step(config: OnlineConfig, lay, system: System, st: kalman.FilterState, y, d, z):
    """The bank's Kalman step: (next filter state, loglik, F∞ (draw,), still diffuse (component + state, draw)).

    Picks the cheapest exact update for the whole bank, as `kalman.step` does: mean only when every
    draw is steady and y_t observed; the fused standard update when no draw is diffuse (dense P);
    otherwise the filter's own exact-diffuse step, which also reports F∞ = z P∞ z and, per
    component and per state, whether its block of the next P∞ is still non-zero.
    """
    n_draws = y.shape[0]
    no_diffuse = (jnp.zeros(n_draws), jnp.zeros((len(_component_index(config.spec)) + lay.n_states, n_draws), bool))

    def diffuse():
        fs, loglik = kalman.step(lay, system, st, y, d, z, sqrt=config.sqrt)
        Pinf = jnp.where(st.diffuse, st.diffuse_cov, 0.0)
        Fi = jnp.sum(z * kalman._mv(Pinf, z), axis=0)
        still = [jnp.sum(_block(fs.diffuse_cov, jnp.asarray(ix)) ** 2, axis=(0, 1)) > kalman.TOL_DIFFUSE if ix
                 else jnp.zeros(n_draws, bool) for _, ix, _ in _component_index(config.spec)]
        states = [fs.diffuse_cov[i, i] ** 2 > kalman.TOL_DIFFUSE for i in range(lay.n_states)]
        return fs, loglik, Fi, jnp.stack(still + states) if still + states else no_diffuse[1]

    def standard():
        if config.sqrt:
            return kalman.step(lay, system, st, y, d, z, sqrt=True) + no_diffuse
        fs, loglik, _ = _standard_update(config, lay, system, st, y, d, z)
        return (_dense(lay, fs), loglik) + no_diffuse

    def steady():
        return kalman._steady_step(lay, system, st, y, d, z, config.sqrt, False) + no_diffuse

    index = jnp.where(jnp.all(st.steady & ~jnp.isnan(y)), 0, jnp.where(jnp.any(st.diffuse), 2, 1))
    return lax.switch(index, [steady, standard, diffuse])


# From this many draws on, the bank's standard step works on the packed covariance: it moves
# half the memory but runs about twice as many (small) kernels, which costs more than it saves
# in smaller banks (13 states: 0.004 against 0.014 ms per step at 1 draw, 0.056 against 0.043 ms
# at 100, 0.41 against 0.17 ms at 1000).
PACKED_MIN_DRAWS = 64


def _use_packed(config: OnlineConfig, n_draws: int) -> bool:
    return not config.sqrt and n_draws >= PACKED_MIN_DRAWS


def _standard_update(config: OnlineConfig, lay, system: System, st: kalman.FilterState, y, d, z):
    """The bank's standard Kalman step (not sqrt) for P dense or packed (`_is_packed`): (next
    filter state, loglik, v). Large banks take the packed step and return P packed (as rows
    when it came so, else stacked), so a stream keeps it packed from one step to the next;
    small ones take the fused dense step."""
    if not (_is_packed(st) or _use_packed(config, y.shape[0])):
        return kalman._fused_standard_step(lay, system, st, y, d, z)
    rows = tuple(st.cov) if _is_packed(st) else kalman.pack(st.cov)
    fs, loglik, v = kalman._packed_standard_step(lay, system, st._replace(cov=rows), y, d, z)
    return fs._replace(cov=fs.cov if isinstance(st.cov, tuple) else jnp.stack(fs.cov)), loglik, v


def _is_packed(st: kalman.FilterState) -> bool:
    """P is held packed: the m(m+1)/2 distinct entries of each draw's P (`kalman.pack`), either
    stacked into one (pair, draw) array (between updates: one buffer to pass) or as a tuple of
    (draw,) rows (inside a micro-batch's loop: each entry updated in place, no restacking)."""
    return isinstance(st.cov, tuple) or st.cov.ndim == 2


def _packed(st: kalman.FilterState) -> kalman.FilterState:
    return st._replace(cov=jnp.stack(kalman.pack(st.cov)))


def _dense(lay, st: kalman.FilterState) -> kalman.FilterState:
    """The filter state with P dense, whichever form it is held in."""
    return st._replace(cov=kalman.unpack(tuple(st.cov), lay.n_states)) if _is_packed(st) else st


def _block(P, ix):
    return P[ix[:, None], ix[None, :]]


# -- pure core ------------------------------------------------------------------------------
def make_bank(spec, params) -> Bank:
    """Systems for S parameter draws (draw, param): built once per bank, batch-last."""
    spec = as_spec(spec)
    params = jnp.asarray(params, dtype=jnp.float64)
    exog = jnp.zeros((1, spec.k_exog)) if spec.regression is not None else None
    return Bank(params, kalman.batch_last(_systems(spec, params, exog)))


def _design(spec: ModelSpec, bank: Bank, exog_t):
    """(z (state, draw), d (draw,)) at one time step; with regression they depend on x_t."""
    n_draws = bank.params.shape[0]
    if spec.regression is None:
        return bank.system.design, jnp.zeros(n_draws)
    x = jnp.reshape(jnp.asarray(exog_t, dtype=jnp.float64), (1, spec.k_exog))
    sys_t = _systems(spec, bank.params, x)   # only Z_t and d_t are used (the rest is dead code)
    z = sys_t.design[:, 0] if sys_t.design.ndim == 3 else sys_t.design
    intercept = sys_t.obs_intercept   # (draw,) when the coefficients are states, (draw, 1) when parameters
    d = (jnp.broadcast_to(jnp.reshape(intercept, (intercept.shape[0], -1))[:, 0], (n_draws,)) if intercept.ndim
         else jnp.zeros(n_draws))
    return z.T, d


def init(config: OnlineConfig, bank: Bank, log_weight=None) -> Belief:
    """Belief before any observation: each draw's exact diffuse prior; equal weights by default."""
    n_draws = bank.params.shape[0]
    if log_weight is None:
        log_weight = jnp.full(n_draws, -jnp.log(n_draws))
    log_weight = jnp.asarray(log_weight, dtype=jnp.float64)
    log_weight = log_weight - jax.scipy.special.logsumexp(log_weight)
    fs = kalman.init(layout(config.spec), bank.system, config.sqrt)
    return Belief(fs, log_weight, jnp.zeros(2), jnp.zeros((), jnp.int64))


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
    mu = kalman._z_dot(lay, st.mean, z) + d
    updated = observed & (draw_diffuse | (F > 0))
    v = jnp.where(updated, jnp.where(observed, y, 0.0) - mu, 0.0)
    a_f = st.mean + K * v
    if config.sqrt:   # P = L Lᵀ
        L = st.cov
        entry = lambda i, j: jnp.sum(L[i] * L[j], axis=0)
        M = kalman._mv(L, jnp.sum(L * z[:, None], axis=0))
    elif _is_packed(st):
        rows = tuple(st.cov)
        entry = kalman._packed_entry(rows, lay.n_states)
        M = kalman._packed_mat_z(lay, rows, z)
    else:
        entry = lambda i, j: st.cov[i, j]
        M = kalman._mat_z(lay, st.cov, z)
    comp_mu, comp_var = _components(config.spec, z, d, a_f, entry, M, K, F)
    state_var = jnp.stack([entry(i, i) - 2 * K[i] * M[i] + F * K[i] * K[i] for i in range(lay.n_states)])
    if still is not None:
        n_comp = comp_var.shape[0]
        comp_var = jnp.where(still[:n_comp], jnp.inf, comp_var)
        state_var = jnp.where(still[n_comp:], jnp.inf, state_var)
    return _DrawStep(mu, F, draw_diffuse, loglik, a_f, comp_mu, comp_var, state_var)


def step(config: OnlineConfig, bank: Bank, belief: Belief, y, exog=None) -> tuple[Belief, OnlineInfo]:
    """Observe y_t (NaN: predict only) for every draw; re-weight; report the predictive and filtered belief.

    The bank's Kalman step (`_kalman_step`) advances every draw and keeps K_t and F*_t in its
    state; the report needs only O(state·draw) more.
    """
    spec = config.spec
    lay = layout(spec)
    y = jnp.asarray(y, dtype=jnp.float64)
    z, d = _design(spec, bank, exog)
    st = _dense(lay, belief.filter)
    fs, loglik, Fi, still = _kalman_step(config, lay, bank.system, st, jnp.broadcast_to(y, d.shape), d, z)
    ds = _per_draw(config, lay, z, d, st, fs.gain, fs.innov_var, Fi, y, loglik, still)
    return _report(config, belief, fs, y, ds)


def standard_step(config: OnlineConfig, bank: Bank, belief: Belief, y, exog=None) -> tuple[Belief, OnlineInfo]:
    """`step` for a bank with no diffuse draw (every `filter.diffuse` False): the fused standard
    covariance update, without the branch (whose operands XLA would copy). P dense or packed
    (`_packed`); a large bank's P comes out packed (see `_standard_update`)."""
    if config.sqrt:
        return step(config, bank, belief, y, exog)
    spec = config.spec
    lay = layout(spec)
    y = jnp.asarray(y, dtype=jnp.float64)
    z, d = _design(spec, bank, exog)
    st = belief.filter
    fs, loglik, _ = _standard_update(config, lay, bank.system, st, jnp.broadcast_to(y, d.shape), d, z)
    ds = _per_draw(config, lay, z, d, st, fs.gain, fs.innov_var, jnp.zeros_like(d), y, loglik)
    return _report(config, belief, fs, y, ds)


def steady_step(config: OnlineConfig, bank: Bank, belief: Belief, y, exog=None) -> tuple[Belief, OnlineInfo]:
    """`step` for a bank whose covariances have all converged (every `filter.steady`) and an observed y_t.

    P, K and F are then fixed, so only the means move: a ← T(a + K v), O(state·draw). This is
    the arithmetic of the filter's own steady update, without carrying the covariances through
    it (the caller should donate the belief so that they are not copied either).
    """
    spec = config.spec
    lay = layout(spec)
    y = jnp.asarray(y, dtype=jnp.float64)
    z, d = _design(spec, bank, exog)
    st = belief.filter
    K, F = st.gain, st.innov_var
    v = y - kalman._z_dot(lay, st.mean, z) - d
    loglik = -0.5 * (kalman.LOG_2PI + jnp.log(F) + v * v / F)
    ds = _per_draw(config, lay, z, d, st, K, F, jnp.zeros_like(F), y, loglik)
    fs = st._replace(mean=jnp.stack(kalman._rows_apply(lay, bank.system.transition, list(ds.filt_mean))),
                     prev_observed=jnp.ones_like(st.steady))
    return _report(config, belief, fs, y, ds)


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


def step_many(config: OnlineConfig, bank: Bank, belief: Belief, ys, exog=None, n=None, one_step=None):
    """`step` over the first n observations of a micro-batch ys (time,) in one compiled loop.

    n (traced, default all) lets padded batches of one length share a trace; the info is
    stacked over the padded length (rows past n are zeros). one_step: `step` (default),
    `standard_step` (no draw diffuse: a large bank's loop carries P packed and returns it so)
    or `steady_step` (every y observed and the bank steady).
    """
    step_fn = step if one_step is None else one_step
    # the loop's carry keeps one form of P: dense for `step`; for a large bank's `standard_step`
    # packed rows (half the memory to move), stacked again at the end; as it comes for
    # `steady_step` (P unused)
    if step_fn is step:
        belief = belief._replace(filter=_dense(layout(config.spec), belief.filter))
    elif (step_fn is standard_step and not isinstance(belief.filter.cov, tuple)
          and (_use_packed(config, belief.log_weight.shape[0]) or _is_packed(belief.filter))):
        st = belief.filter
        rows = tuple(st.cov) if _is_packed(st) else kalman.pack(st.cov)
        belief, buf = step_many(config, bank, belief._replace(filter=st._replace(cov=rows)), ys, exog, n, one_step)
        return belief._replace(filter=belief.filter._replace(cov=jnp.stack(belief.filter.cov))), buf
    size = ys.shape[0]
    n = size if n is None else n
    info_shape = jax.eval_shape(lambda b, y, x: step_fn(config, bank, b, y, x)[1], belief, ys[0],
                                None if exog is None else exog[0])
    buf = jax.tree_util.tree_map(lambda s: jnp.zeros((size,) + s.shape, s.dtype), info_shape)

    def body(i, carry):
        b, buf = carry
        b, info = step_fn(config, bank, b, ys[i], None if exog is None else exog[i])
        return b, jax.tree_util.tree_map(lambda B, v: B.at[i].set(v), buf, info)

    return lax.fori_loop(0, n, body, (belief, buf))


def catch_up(config: OnlineConfig, bank: Bank, belief: Belief, ys, exog=None) -> Belief:
    """Consume a stretch of history ys (time,) in one batched filter pass (`kalman.run`, no reports).

    The log weights gain each draw's summed log-likelihood; the CUSUM is left as it is.
    exog: (time, k) for the same stretch. With config.catch_up_filter "parallel" (or "auto" on a
    GPU/TPU for long stretches, see `parallel.use_parallel`) the pass is the associative-scan
    filter (`parallel.run`, same results); it needs the dense covariance (sqrt=False).
    """
    from . import parallel

    spec = config.spec
    lay = layout(spec)
    n_draws = bank.params.shape[0]
    ys = jnp.asarray(ys, dtype=jnp.float64)
    x = None if exog is None else jnp.asarray(exog, dtype=jnp.float64)
    Y = jnp.broadcast_to(ys[:, None], (ys.shape[0], n_draws))
    method = config.catch_up_filter
    if method not in ("standard", "parallel", "auto") or (method == "parallel" and config.sqrt):
        raise ValueError(f"catch_up_filter={method!r}: use 'standard', 'parallel' (not with sqrt=True) or 'auto'")
    scan = method == "parallel" or (method == "auto" and not config.sqrt
                                     and parallel.use_parallel(ys.shape[0], lay.n_states, n_draws))
    run = parallel.run if scan else partial(kalman.run, sqrt=config.sqrt)
    fs, ll = run(lay, _systems(spec, bank.params, x), Y, state=belief.filter)
    lw = belief.log_weight + jnp.sum(ll, axis=0)
    return belief._replace(filter=fs, log_weight=lw - jax.scipy.special.logsumexp(lw), t=belief.t + ys.shape[0])


def forecast(config: OnlineConfig, bank: Bank, belief: Belief, steps: int, exog_future=None) -> OnlineForecast:
    """h = 1..steps predictive of y from the belief: a run of predict-only steps, O(steps)."""
    spec = config.spec
    lay = layout(spec)
    n_draws = bank.params.shape[0]
    xs = jnp.zeros((steps, 0)) if exog_future is None else jnp.asarray(exog_future, dtype=jnp.float64)
    nan = jnp.full(n_draws, jnp.nan)

    def body(fs, x_t):
        z, d = _design(spec, bank, None if exog_future is None else x_t)
        fs, si = kalman.step(lay, bank.system, fs, nan, d, z, sqrt=config.sqrt, keep=True)
        mu = jnp.sum(z * si.pred_mean, axis=0) + d
        var = jnp.einsum("ib,ijb,jb->b", z, si.pred_cov, z) + bank.system.obs_var
        diffuse = jnp.einsum("ib,ijb,jb->b", z, si.pred_diffuse, z) > kalman.TOL_DIFFUSE
        return fs, (mu, jnp.where(diffuse, jnp.inf, var))

    _, (mu, var) = lax.scan(body, _dense(lay, belief.filter), xs)
    w = jnp.exp(belief.log_weight)
    finite = jnp.isfinite(var)
    var_f = jnp.where(finite, var, 1.0)
    mean, m2, _, _ = mixture_moments(w, mu, var_f)
    q = mixture_quantiles(w, mu, var_f, PROBS, config.quantile_iters)
    bad = ~jnp.all(finite, axis=-1)
    return OnlineForecast(mean, jnp.where(bad, jnp.inf, m2), jnp.where(bad[:, None], jnp.nan, q), mu, var, w)


# the stream's belief is donated: its (state, state, draw) buffers are updated in place, and on
# the steady path they pass through untouched instead of being copied
_step_jit = jax.jit(step, static_argnums=0, donate_argnums=2)
_step_many_jit = jax.jit(step_many, static_argnums=0, donate_argnums=2)
_standard_step_jit = jax.jit(standard_step, static_argnums=0, donate_argnums=2)
_standard_step_many_jit = jax.jit(partial(step_many, one_step=standard_step), static_argnums=0, donate_argnums=2)
_steady_step_jit = jax.jit(steady_step, static_argnums=0, donate_argnums=2)
_steady_step_many_jit = jax.jit(partial(step_many, one_step=steady_step), static_argnums=0, donate_argnums=2)
_catch_up_jit = jax.jit(catch_up, static_argnums=0)
_forecast_jit = jax.jit(forecast, static_argnums=(0, 3))
_make_bank_jit = jax.jit(make_bank, static_argnums=0)
_init_jit = jax.jit(init, static_argnums=0)
_dense_jit = jax.jit(_dense, static_argnums=0)
_packed_jit = jax.jit(_packed)
MIN_BUCKET = 8
# observations before an automatic move is tried again after one failed (doubling with each failure)
RETRY_AFTER = 16


def _padded(ys: np.ndarray, xs: np.ndarray | None):
    """Pad a stretch to the next power of two (at least MIN_BUCKET), returning its true length too,
    so a stream or a catch-up compiles only a handful of shapes."""
    n = len(ys)
    size = max(MIN_BUCKET, 1 << max(0, int(n - 1).bit_length()))
    pad = size - n
    y_pad = np.concatenate([ys, np.zeros(pad)]).astype(np.float64)
    x_pad = None if xs is None else np.concatenate([xs, np.zeros((pad, xs.shape[1]))]).astype(np.float64)
    return y_pad, x_pad, np.int64(n)


CATCH_UP_PIECE = 4096


class _Closed(Exception):
    """The filter was closed while a move was catching up: the move ends without a result."""


def _catch_up_pieces(config, bank, belief, ys: np.ndarray, xs: np.ndarray | None,
                     closing: threading.Event | None = None) -> Belief:
    """`catch_up` over pieces of power-of-two lengths (whole pieces of CATCH_UP_PIECE, then the
    binary digits of the rest), so that catching up on histories of ever new lengths, as each
    rejuvenation does, reuses at most log2(CATCH_UP_PIECE) + 1 compiled programs. Raises
    `_Closed` between pieces once `closing` is set."""
    n, start = len(ys), 0
    sizes = [CATCH_UP_PIECE] * (n // CATCH_UP_PIECE)
    rest = n % CATCH_UP_PIECE
    sizes += [1 << b for b in reversed(range(rest.bit_length())) if rest >> b & 1]
    for size in sizes:
        if closing is not None and closing.is_set():
            raise _Closed
        stop = start + size
        belief = _catch_up_jit(config, bank, belief, jnp.asarray(ys[start:stop]),
                               None if xs is None else jnp.asarray(xs[start:stop]))
        start = stop
    return belief


def _advance(config, bank, belief, ys: np.ndarray, xs: np.ndarray | None) -> Belief:
    """Bring a belief forward over a short stretch with the compiled micro-batch step (padded
    shapes: no new compilation), keeping its CUSUM; used to catch a new bank up with the stream."""
    cusum = belief.cusum
    for start in range(0, len(ys), 1024):
        stop = min(len(ys), start + 1024)
        belief, _ = _step_many_jit(config, bank, belief,
                                   *_padded(np.asarray(ys[start:stop], float), None if xs is None else xs[start:stop]))
    return belief._replace(cusum=cusum)


# -- posterior draws ------------------------------------------------------------------------
def posterior_draws(spec, posterior) -> np.ndarray:
    """(draw, param) from an arviz.InferenceData (variables named as `param_names`, dims
    (chain, draw)), a dict name → draws (S,) or scalar, or an array (S, k) / (k,)."""
    spec = as_spec(spec)
    names = param_names(spec)
    group = getattr(posterior, "posterior", None)
    if group is not None:   # arviz.InferenceData
        missing = [n for n in names if n not in group.data_vars]
        if missing:
            raise ValueError(f"the posterior has no variable(s) {missing}; the spec needs {names}")
        cols = [np.asarray(group[n].values, dtype=float).reshape(-1) for n in names]
    elif isinstance(posterior, Mapping):
        unknown = set(posterior) - set(names)
        missing = [n for n in names if n not in posterior]
        if unknown or missing:
            raise ValueError(f"posterior names do not match the spec: missing {missing}, unknown "
                             f"{sorted(unknown)}; the spec needs {names}")
        cols = [np.atleast_1d(np.asarray(posterior[n], dtype=float)).reshape(-1) for n in names]
        sizes = {c.size for c in cols}
        if len(sizes - {1}) > 1:
            raise ValueError(f"posterior draws have different lengths {sorted(sizes)}; give each parameter "
                             "the same number of draws (or a scalar)")
        n = max(sizes) if sizes else 1
        cols = [np.broadcast_to(c, (n,)) for c in cols]
    else:
        arr = np.atleast_2d(np.asarray(posterior, dtype=float))
        if arr.shape[-1] != len(names):
            raise ValueError(f"posterior array must be (draws, {len(names)}) for {names}, got {arr.shape}")
        cols = list(arr.T)
    draws = np.stack(cols, axis=-1) if cols else np.zeros((1, 0))
    if not np.all(np.isfinite(draws)):
        bad = names[int(np.argwhere(~np.isfinite(draws))[0, 1])]
        raise ValueError(f"posterior draws of {bad!r} contain NaN or inf")
    return draws


def fit_priors(posterior) -> dict | None:
    """The priors a fit of `engine.fit_nuts` used ({name: {"dist": …, args}}, from the
    InferenceData's attrs), so that a rejuvenation move targets the same posterior; None for
    other inputs."""
    text = (getattr(posterior, "attrs", None) or {}).get("priors")
    return json.loads(text) if isinstance(text, str) else None


# -- stateful wrapper -----------------------------------------------------------------------
class _History:
    """Growing host-side buffers of y (time,) and exog (time, k) (amortised doubling)."""

    def __init__(self, k: int, y=None, x=None):
        self.k, self.n = k, 0
        self.y = np.empty(1024)
        self.x = np.empty((1024, k))
        if y is not None and len(y):
            self.extend(np.asarray(y, dtype=float), None if x is None else np.asarray(x, dtype=float))

    def extend(self, y: np.ndarray, x: np.ndarray | None):
        need = self.n + len(y)
        if need > len(self.y):
            size = max(need, 2 * len(self.y))
            self.y = np.concatenate([self.y[: self.n], np.empty(size - self.n)])
            self.x = np.concatenate([self.x[: self.n], np.empty((size - self.n, self.k))])
        self.y[self.n:need] = y
        if self.k:
            self.x[self.n:need] = x
        self.n = need

    def view(self, start: int = 0, stop: int | None = None):
        stop = self.n if stop is None else stop
        return self.y[start:stop].copy(), (self.x[start:stop].copy() if self.k else None)


class OnlineFilter:
    """A posterior bank of Kalman filters updated one observation at a time.

    `update` / `update_many` never re-filter the history. When the effective sample size falls
    below `ess_threshold`·S (or the CUSUM signals drift, with `refit_on_drift`), a background
    thread resamples and moves the draws with MCMC on the full-data posterior; the stream keeps
    using the old bank meanwhile and the new one is swapped in at the next update, after
    catching up on what arrived during the move. Each event goes to `events` and `on_event`.
    After a failed move, automatic ones wait `RETRY_AFTER` observations (doubling with each
    failure in a row) instead of starting again at every update.

    `params` are draws from the prior (or any weighted set): catching up on `y_history`
    weights each by its likelihood, as sequential importance sampling does. Posterior draws
    given that history go through `from_posterior` (or `weigh_history=False`), which keeps
    their weights.

    One thread at a time: `update` donates the belief's buffers, so reads (`state`, `ess`,
    `forecast`, `rejuvenate`) from another thread must hold the same lock as the updates (as the
    app's stream does). `close` ends the background work.
    """

    def __init__(self, spec, params, *, y_history=None, exog_history=None, log_weight=None,
                 belief: Belief | None = None, sqrt: bool = False, quantile_iters: int = 1,
                 component_quantile_iters: int = 0, anomaly_z: float = 3.5, cusum_k: float = 0.5,
                 cusum_h: float = 5.0,
                 ess_threshold: float = 0.5, rejuvenate: bool = True, refit_on_drift: bool = False,
                 log_posterior: Callable | None = None, priors=None, move_steps: int = 10,
                 seed: int = 0, on_event: Callable[[dict], None] | None = None, weigh_history: bool = True):
        spec = as_spec(spec)
        self.spec = spec
        self.config = OnlineConfig(spec, bool(sqrt), int(quantile_iters), float(anomaly_z),
                                   float(cusum_k), float(cusum_h), int(component_quantile_iters))
        params = np.atleast_2d(np.asarray(as_param_vector(spec, params), dtype=float))
        self.bank = _make_bank_jit(spec, jnp.asarray(params))
        y_hist = np.zeros(0) if y_history is None else np.asarray(getattr(y_history, "values", y_history), float)
        if y_hist.ndim != 1:
            raise ValueError(f"y_history must be one series of shape (time,), got shape {y_hist.shape}")
        if np.isinf(y_hist).any():
            raise ValueError(f"y_history has an infinite value at index {int(np.flatnonzero(np.isinf(y_hist))[0])}; "
                             "use NaN for missing values")
        x_hist = None
        if spec.regression is not None and len(y_hist):
            x_hist = np.asarray(check_exog(spec, exog_history, len(y_hist)), dtype=float)[: len(y_hist)]
        self._history = _History(spec.k_exog, y_hist, x_hist)
        if belief is None:
            belief = _init_jit(self.config, self.bank, None if log_weight is None else jnp.asarray(log_weight))
            if len(y_hist):
                start_weight = belief.log_weight
                belief = _catch_up_jit(self.config, self.bank, belief, jnp.asarray(y_hist),
                                       None if x_hist is None else jnp.asarray(x_hist))
                if not weigh_history:   # the draws already condition on the history
                    belief = belief._replace(log_weight=start_weight)
        elif int(belief.t) != len(y_hist):
            raise ValueError(f"the belief has consumed {int(belief.t)} observations but the history has {len(y_hist)}")
        self._belief = belief
        self.ess_threshold = float(ess_threshold)
        self.rejuvenate_enabled = bool(rejuvenate)
        self.refit_on_drift = bool(refit_on_drift)
        self.move_steps = int(move_steps)
        self.priors = priors
        self._log_posterior = log_posterior
        self._key = jax.random.PRNGKey(seed)
        self.on_event = on_event
        self.events: list[dict] = []
        self.bank_version = 0
        self._lock = threading.Lock()
        self._move: threading.Thread | None = None
        self._pending = None
        self._last_info: OnlineInfo | None = None
        self._steady = False   # every draw's covariance has converged: the O(state·draw) path applies
        self._settled = not bool(np.any(np.asarray(belief.filter.diffuse)))  # no draw diffuse: no branch needed
        self._unavailable_reported = False
        self._failures = 0        # failed moves in a row; automatic moves back off after each
        self._retry_at = 0        # no automatic move before this many observations
        self._closing = threading.Event()   # `close`: a move in flight gives up at its next piece

    @classmethod
    def from_posterior(cls, spec, posterior, y_history=None, exog_history=None, **kwargs) -> "OnlineFilter":
        """Bank from an InferenceData / dict of draws / single parameter set, caught up on the history.

        The draws come from p(θ | y_history), so catching up does not re-weight them (that would
        count the history twice); pass `weigh_history=True` for draws from the prior instead.
        An InferenceData from `fit_nuts` also gives its priors (`fit_priors`), which the default
        rejuvenation move then targets: the defaults scale with the data, so without them the
        move's prior would drift as the history grows.
        """
        kwargs.setdefault("weigh_history", False)
        if kwargs.get("priors") is None:
            kwargs["priors"] = fit_priors(posterior)
        return cls(spec, posterior_draws(spec, posterior), y_history=y_history, exog_history=exog_history,
                   **kwargs)

    # -- read-only views -----------------------------------------------------------------
    @property
    def state(self) -> Belief:
        """The current belief, P dense. Its arrays may be reused by the next update (copy what you keep).

        A large bank holds P packed between updates (see `_standard_update`); this unpacks it."""
        b = self._belief
        return b._replace(filter=_dense_jit(layout(self.spec), b.filter)) if _is_packed(b.filter) else b

    @property
    def params(self) -> np.ndarray:
        return np.asarray(self.bank.params)

    @property
    def weights(self) -> np.ndarray:
        return np.exp(np.asarray(self._belief.log_weight))

    @property
    def ess(self) -> float:
        w = self.weights
        return float(1.0 / np.sum(w * w))

    @property
    def t(self) -> int:
        return self._history.n

    def settings(self) -> dict:
        """The constructor's settings (beyond spec, draws and history) that rebuild this filter's
        behaviour: what a snapshot keeps (`engine.persist`)."""
        c = self.config
        return {"sqrt": c.sqrt, "quantile_iters": c.quantile_iters,
                "component_quantile_iters": c.component_quantile_iters, "anomaly_z": c.anomaly_z, "cusum_k": c.cusum_k, "cusum_h": c.cusum_h,
                "ess_threshold": self.ess_threshold, "rejuvenate": self.rejuvenate_enabled,
                "refit_on_drift": self.refit_on_drift, "move_steps": self.move_steps}

    @property
    def n_draws(self) -> int:
        return int(self.bank.params.shape[0])

    def history(self):
        """(y (time,), exog (time, k) or None): everything consumed so far."""
        return self._history.view()

    # -- updates -------------------------------------------------------------------------
    def _exog_rows(self, exog, n: int):
        if self.spec.regression is None:
            if exog is not None:
                raise ValueError("exog was given but the spec has no regression")
            return None
        if exog is None:
            raise ValueError(f"the model regresses on {list(self.spec.exog_columns)}: pass exog for each observation")
        x = np.asarray(exog, dtype=float).reshape(n, self.spec.k_exog)
        if not np.all(np.isfinite(x)):
            raise ValueError("exog must be finite (NaN/inf found)")
        return x

    def check_input(self, ys, exog=None) -> tuple[np.ndarray, np.ndarray | None]:
        """Validated (ys (time,), exog (time, k) or None) for an update; raises naming what is wrong."""
        try:
            arr = np.asarray(ys, dtype=float)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"observations must be numbers (NaN for missing): {exc}") from None
        if arr.size != max(arr.shape, default=1):   # (time, 1 + k) would be read as (1 + k)·time values
            raise ValueError(f"observations must be one series of shape (time,), got shape {arr.shape}; "
                             "pass regressors as exog")
        ys = arr.reshape(-1)
        if len(ys) == 0:
            raise ValueError("an update needs at least one observation")
        if np.isinf(ys).any():
            raise ValueError(f"observation {int(np.flatnonzero(np.isinf(ys))[0])} of the batch is infinite; "
                             "use NaN for a missing value")
        return ys, self._exog_rows(exog, len(ys))

    def update(self, y, exog=None) -> OnlineInfo:
        """Consume one observation (NaN: predict only). Returns its `OnlineInfo` (device arrays)."""
        ys, x = self.check_input([y], None if exog is None else [exog])
        y = float(ys[0])
        self._before_update()
        fn = self._step_for(not np.isnan(y), _steady_step_jit, _standard_step_jit, _step_jit)
        # host values go in as NumPy: an eager jnp.asarray would be a computation of its own
        # that the step waits for (about 0.07 ms of a 0.25 ms update at S = 1)
        self._belief, info = fn(self.config, self.bank, self._belief, np.float64(y),
                                None if x is None else np.asarray(x[0], dtype=np.float64))
        self._history.extend(np.array([y]), x)   # only once the step has succeeded: history and belief agree
        self._after_update(info, None, observed=not np.isnan(y))
        return info

    def update_many(self, ys, exog=None) -> OnlineInfo:
        """Consume a micro-batch in one call (one `lax.scan`); the info is stacked over time."""
        ys, x = self.check_input(ys, exog)
        n = len(ys)
        self._before_update()
        y_pad, x_pad, n_valid = _padded(ys, x)
        observed = not np.isnan(ys).any()
        fn = self._step_for(observed, _steady_step_many_jit, _standard_step_many_jit, _step_many_jit)
        self._belief, info = fn(self.config, self.bank, self._belief, y_pad, x_pad, n_valid)
        self._history.extend(ys, x)
        if len(y_pad) > n:
            info = jax.tree_util.tree_map(lambda a: a[:n], info)
        self._after_update(info, n - 1, observed)
        return info

    def _step_for(self, observed: bool, steady, standard, general):
        """The compiled step for the next update: `steady` once every draw has converged and
        the update has no missing value, `standard` once no draw is diffuse, else `general`.
        A large bank's P is packed before its first standard step, the form those keep."""
        if self._steady and observed:
            return steady
        if not self._settled:
            return general
        if _use_packed(self.config, self.n_draws) and not _is_packed(self._belief.filter):
            self._belief = self._belief._replace(filter=_packed_jit(self._belief.filter))
        return standard

    def forecast(self, steps: int, exog_future=None) -> OnlineForecast:
        """Predictive of y for the next `steps` observations, mixed over the draws (O(steps))."""
        steps = int(steps)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        xf = None
        if self.spec.regression is not None:
            if exog_future is None:
                raise ValueError(f"forecasting a regression model needs exog_future with columns "
                                 f"{list(self.spec.exog_columns)} for the {steps} future steps")
            xf = jnp.asarray(check_exog(self.spec, exog_future, steps))[:steps]
        return _forecast_jit(self.config, self.bank, self._belief, steps, xf)

    # -- rejuvenation --------------------------------------------------------------------
    def _emit(self, event: dict):
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)

    def _before_update(self):
        """Swap in a finished rejuvenated bank (caught up on what arrived during the move)."""
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return
        if isinstance(pending, BaseException):   # reported by the move, which also set the back-off
            return
        self._failures = 0
        bank, belief, event = pending
        n_now = self._history.n
        t_bank = int(belief.t)
        if t_bank < n_now:
            belief = _advance(self.config, bank, belief, *self._history.view(t_bank, n_now))
        belief = belief._replace(cusum=self._belief.cusum)
        self.bank, self._belief = bank, belief
        self._steady, self._last_info = False, None
        self._settled = not bool(np.any(np.asarray(belief.filter.diffuse)))
        self.bank_version += 1
        event = dict(event, kind="rejuvenation_done", t_swap=n_now, caught_up=n_now - event["t_start"],
                     ess_after=self.ess, duration_s=time.perf_counter() - event.pop("_t0"))
        self._emit(event)

    def _after_update(self, info: OnlineInfo, last, observed: bool):
        """Read the previous step's info (finished by now: no stall) for the steady flag and the
        ESS; trigger a background move on low ESS or drift."""
        prev, self._last_info = self._last_info, (info, last)
        if not observed:          # a predict-only step moves P off its fixed point
            self._steady = False
        if prev is None:
            return
        pinfo, plast = prev
        row = () if plast is None else plast
        # steadiness only grows while every y is observed, and a diffuse part only shrinks, so
        # the lagged flags are safe
        # np.asarray per array: jax.device_get of a tuple costs ~40 µs even once they are on the host
        steady, settled, ess = (np.asarray(a)[row] for a in (pinfo.steady, pinfo.settled, pinfo.ess))
        self._steady = observed and bool(steady)
        self._settled = self._settled or bool(settled)
        if not self.rejuvenate_enabled or self.rejuvenating or self._history.n < self._retry_at:
            return
        low = float(ess) < self.ess_threshold * self.n_draws
        drift = self.refit_on_drift and bool(np.any(np.asarray(pinfo.drift)))
        if low or drift:
            self.rejuvenate(reason="low_ess" if low else "drift")

    @property
    def rejuvenating(self) -> bool:
        return self._move is not None and self._move.is_alive()

    def _log_posterior_factory(self):
        if self._log_posterior is not None:
            return self._log_posterior
        from . import bayes  # the full-data posterior of the fit
        return getattr(bayes, "log_posterior", None)

    def rejuvenate(self, reason: str = "requested", background: bool = True) -> bool:
        """Resample and move the draws on the full-data posterior; returns False if not possible now
        (a move is running, or the filter is closed)."""
        if self.rejuvenating or self._closing.is_set():
            return False
        try:
            factory = self._log_posterior_factory()
        except ImportError:
            factory = None
        if factory is None:
            if not self._unavailable_reported:
                self._unavailable_reported = True
                self._emit({"kind": "rejuvenation_unavailable", "t": self.t,
                            "reason": "no full-data log posterior (engine.bayes.log_posterior) available"})
            return False
        from .rejuvenation import resample_move
        t0 = self.t
        y, x = self._history.view()
        params = np.array(self.bank.params)        # host copies: the stream donates its buffers
        log_weight = np.array(self._belief.log_weight)
        self._key, key = jax.random.split(self._key)
        ess_before = self.ess
        event = {"kind": "rejuvenation_start", "reason": reason, "t_start": t0, "ess_before": ess_before}
        self._emit(dict(event))
        event["_t0"] = time.perf_counter()

        def work():
            try:
                if self._log_posterior is None:   # the fit's posterior: compiled once per history bucket
                    from .bayes import move_on_posterior
                    new_params, move_info = move_on_posterior(key, self.spec, y, x, self.priors, params,
                                                              log_weight, self.move_steps)
                else:
                    logp, to_unc, to_con = factory(self.spec, jnp.asarray(y),
                                                   None if x is None else jnp.asarray(x), self.priors)
                    move = jax.jit(partial(resample_move, logp=logp, to_unconstrained=to_unc,
                                           to_constrained=to_con, n_steps=self.move_steps))
                    new_params, move_info = move(key, params=params, log_weight=log_weight)
                bank = _make_bank_jit(self.spec, new_params)
                belief = _init_jit(self.config, bank, None)
                if t0:
                    belief = _catch_up_pieces(self.config, bank, belief, y, x, self._closing)
                    belief = belief._replace(log_weight=jnp.full(bank.params.shape[0], -jnp.log(bank.params.shape[0])))
                # keep up with the stream while it runs, so the swap itself has little left to do
                while True:
                    if self._closing.is_set():
                        raise _Closed
                    n_now = self._history.n
                    if n_now - int(belief.t) <= 16:
                        break
                    belief = _advance(self.config, bank, belief, *self._history.view(int(belief.t), n_now))
                jax.block_until_ready(belief)
                done = dict(event, acceptance=float(move_info.acceptance),
                            unique_draws=int(move_info.unique_draws))
                with self._lock:
                    if self._closing.is_set():
                        return
                    self._pending = (bank, belief, done)
            except _Closed:   # nobody is left to use the new bank
                return
            except BaseException as exc:  # surfaced as an event, never silent
                with self._lock:   # back off before the stream's next look at the ESS
                    self._pending = exc
                    self._failures += 1
                    self._retry_at = self._history.n + RETRY_AFTER * 2 ** (self._failures - 1)
                    failures, retry_at = self._failures, self._retry_at
                self._emit({"kind": "rejuvenation_failed", "t_start": t0, "error": repr(exc), "failures": failures,
                            "retry_at": retry_at})

        self._move = threading.Thread(target=work, name="rejuvenation", daemon=True)
        self._move.start()
        if not background:
            self._move.join()
        return True

    def close(self, timeout: float | None = 10.0) -> bool:
        """Stop background work: no new moves, and the filter keeps its bank (a finished move is
        not swapped in; one in flight gives up at its next catch-up piece, after its MCMC step).
        Updates still work. True when no move thread is left after `timeout` seconds."""
        self._closing.set()
        with self._lock:
            self._pending = None
        return self.wait_for_rejuvenation(timeout)

    def wait_for_rejuvenation(self, timeout: float | None = None) -> bool:
        """Block until a running move has finished (its bank is swapped in at the next update)."""
        if self._move is not None:
            self._move.join(timeout)
        return not self.rejuvenating

    def apply_pending(self):
        """Swap in a finished move now (otherwise it happens at the next update)."""
        self._before_update()
