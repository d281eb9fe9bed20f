"""Mixtures of Gaussians Σ_s w_s N(μ_s, var_s) over the draws: moments, quantiles, one-pass sums.

The bank's predictive of y_t, each filtered state and each component are such mixtures
(weights over the draw axis, last). Quantiles start from the Cornish–Fisher expansion with
the mixture's exact skewness and kurtosis and are refined by Newton steps on the mixture CDF.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.special import ndtri

# quantiles reported for the 95%, 80% and 50% bands, and the median
PROBS = (0.025, 0.1, 0.25, 0.5, 0.75, 0.9, 0.975)
BAND_LEVELS = {0.95: (0, 6), 0.8: (1, 5), 0.5: (2, 4)}  # level → (lower, upper) index in PROBS


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

