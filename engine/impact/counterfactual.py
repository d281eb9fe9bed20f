"""The counterfactual kernel: a bank of draws run past the intervention without seeing y.

Before the intervention the bank is an ordinary one (`engine.online`): each posterior draw θ_s
has its exact Kalman belief of α_{n+1} given the pre-period y_{1:n}. The counterfactual is
what y would have been without the intervention, so past it the filter only *predicts*: the
regressors x_t are seen (they enter z_t, d_t), y_t is not. Per draw the untreated outcomes
ŷ_{n+1..n+h} are jointly Gaussian given θ_s and y_{1:n}, with marginals N(μ_t, F_t) from the
predict-only step (`online.predict_step`, the step of `online.forecast`).

The cumulative counterfactual C_h = Σ_{t ≤ h} c_t ŷ_t (c_t = 1 where y_t is observed, so the
sums compare like with like) needs the covariances between horizons too. They are carried in
O(state) per draw and step by one more vector, g_t = Cov(α_t, C_{t-1}) (g = 0 at the first
post-period step):

    E C_t   = E C_{t-1} + c_t μ_t
    Var C_t = Var C_{t-1} + c_t² F_t + 2 c_t z_t·g_t
    g_{t+1} = T (g_t + c_t P_t z_t)            (η_t and ε_t are independent of C_{t-1} and α_t)

so each draw's cumulative counterfactual is exactly N(E C_h, Var C_h): no trajectories are
sampled, and the posterior of any summary is the mixture Σ_s w_s N(·) over the draws.

Cost: one predict step per draw and observation, O(state²) per draw with the structured
transition, plus O(state) for the cumulative moments; independent of the pre-period length
n and of the number h of post-period steps already seen. That is what "O(1) per observation"
means here. The draws' weights stay those of the pre-period: the post-period y is affected by
the intervention, so it must not re-weight the draws of the no-intervention model.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..online import Bank, Belief, OnlineConfig, predict_step
from ..online.covariance import _dense
from ..system import layout, transition_apply


class Counterfactual(NamedTuple):
    """What the next post-period step needs, per draw (draw last)."""

    filter: object              # kalman.FilterState: predicted belief of α_t given y_{1:n} and x only
    log_weight: jnp.ndarray     # (draw,) the pre-period weights (normalised), frozen
    cum_mean: jnp.ndarray       # (draw,) E[C | θ_s, y_{1:n}] over the post-period steps so far
    cum_var: jnp.ndarray        # (draw,) Var[C | θ_s, y_{1:n}]
    cross: jnp.ndarray          # (state, draw) g_t = Cov(α_t, C_{t-1} | θ_s, y_{1:n})
    observed_sum: jnp.ndarray   # () Σ of the observed post-period y so far
    n_observed: jnp.ndarray     # () how many post-period y were observed
    t: jnp.ndarray              # () post-period steps consumed


class CounterfactualStep(NamedTuple):
    """One post-period step's per-draw moments: everything the summaries are made of."""

    y: jnp.ndarray              # () the observed y_t (NaN if missing)
    draw_mean: jnp.ndarray      # (draw,) μ_t,s = E[ŷ_t | θ_s, y_{1:n}]
    draw_var: jnp.ndarray       # (draw,) F_t,s (inf if the predictive is still diffuse)
    cum_mean: jnp.ndarray       # (draw,) E[C_t | θ_s, y_{1:n}]
    cum_var: jnp.ndarray        # (draw,) Var[C_t | θ_s, y_{1:n}]
    observed_sum: jnp.ndarray   # () Σ observed y up to t
    n_observed: jnp.ndarray     # () count up to t


def init(config: OnlineConfig, belief: Belief) -> Counterfactual:
    """The counterfactual at the intervention from the bank's belief after the pre-period."""
    fs = _dense(layout(config.spec), belief.filter)
    n_draws = belief.log_weight.shape[0]
    zeros = jnp.zeros(n_draws)
    return Counterfactual(fs, belief.log_weight, zeros, zeros, jnp.zeros_like(fs.mean), jnp.zeros(()),
                          jnp.zeros((), jnp.int64), jnp.zeros((), jnp.int64))


def step(config: OnlineConfig, bank: Bank, cf: Counterfactual, y, exog=None) -> tuple[Counterfactual,
                                                                                      CounterfactualStep]:
    """Advance the counterfactual by one post-period step (x_t given, y_t only compared, never used
    to update); see the module's recursion."""
    lay = layout(config.spec)
    y = jnp.asarray(y, dtype=jnp.float64)
    fs, pred = predict_step(config, bank, cf.filter, exog)
    observed = jnp.isfinite(y)
    c = jnp.where(observed, 1.0, 0.0)
    cum_mean = cf.cum_mean + c * pred.mean
    cum_var = cf.cum_var + c * c * pred.var + 2 * c * jnp.sum(pred.design * cf.cross, axis=0)
    cross = transition_apply(lay, bank.system.transition, cf.cross + c * pred.cov_design)
    observed_sum = cf.observed_sum + jnp.where(observed, y, 0.0)
    n_observed = cf.n_observed + observed.astype(jnp.int64)
    diffuse = jnp.any(pred.diffuse)
    var = jnp.where(diffuse, jnp.inf, pred.var)
    new = Counterfactual(fs, cf.log_weight, cum_mean, jnp.where(diffuse, jnp.inf, cum_var), cross, observed_sum,
                         n_observed, cf.t + 1)
    return new, CounterfactualStep(y, pred.mean, var, cum_mean, new.cum_var, observed_sum, n_observed)


def run(config: OnlineConfig, bank: Bank, cf: Counterfactual, ys, exog=None):
    """`step` over a stretch ys (time,) with exog (time, k) in one `lax.scan`; the steps stacked (time first)."""
    ys = jnp.asarray(ys, dtype=jnp.float64)
    xs = jnp.zeros((ys.shape[0], 0)) if exog is None else jnp.asarray(exog, dtype=jnp.float64)

    def body(c, yx):
        y_t, x_t = yx
        return step(config, bank, c, y_t, None if exog is None else x_t)
    return lax.scan(body, cf, (ys, xs))


_run_jit = jax.jit(run, static_argnums=0)
_init_jit = jax.jit(init, static_argnums=0)


def check_proper(steps: CounterfactualStep) -> None:
    """Refuse steps whose predictive is improper: the pre-period left a state that y loads diffuse."""
    if not bool(np.all(np.isfinite(np.asarray(steps.draw_var)))):
        raise ValueError("the pre-period is too short to identify every component of the model (a state the "
                         "observations load is still diffuse after it), so the counterfactual has infinite "
                         "variance; move the intervention later or use a model with fewer components")
