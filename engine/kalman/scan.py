"""Filtering over time: `run` (a scan of `step`, or the chunked driver for one series) and
`mean_pass` (many series sharing one system's gains).

`run_chunked` decides the phase once per chunk of CHUNK_STEPS steps instead of once per step,
and runs each chunk as one phase's scan; see its docstring for why.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from ..system import Layout, System, diffuse_states, transition_apply
from .augmented import augmented_scan, collapse_state
from .state import LOG_2PI, FilterState, Phase, StepInfo, StepKind, batch_last, converged, init, phase_of
from .steps import diffuse_scan, settled_step, standard_scan, steady_scan, step
from .tangents import diffuse_scan_custom_jvp, standard_scan_custom_jvp

CHUNK_STEPS = 32    # time steps per phase decision in `run` (see `run_chunked`)


def run(lay: Layout, system: System, y: jnp.ndarray, *, sqrt: bool = False, keep: bool = False,
        state: FilterState | None = None, augmented: bool = True):
    """Filter a batch over time.

    system: batched with the batch axis LEADING (as `jax.vmap(build_system)` gives it);
    y: (time, batch). Returns (final batch-last state, per-step outputs stacked over time:
    StepInfo (batch last) if keep else loglik (time, batch)). One series without a time-varying
    design, when only the log-likelihood terms are wanted, takes `run_chunked`; otherwise every
    step is a `step` (one phase decision per step).

    augmented: False where Koopman's recursion alone is known to be exact for this spec and
    pattern of observations (`augmented.koopman_exact`, decided before tracing): no step carries
    the augmented filter (its tangents cost the sampler as much as the rest of a short series).
    """
    n_time, batch = y.shape
    system = batch_last(system)
    if state is None:
        state = init(lay, system, sqrt)
    if not augmented:
        state = state._replace(augmented=None)
    d = system.obs_intercept
    d = jnp.broadcast_to(d if d.ndim == 2 else d[None], (n_time, batch))
    time_varying = lay.time_varying_design
    if batch == 1 and not (keep or time_varying):   # batches keep the per-step phase switch
        return run_chunked(lay, system, state, y, d, sqrt)

    def steps(state, xs, settled: bool):
        def body(carry, xs):
            if time_varying:
                y_t, d_t, z_t = xs
            else:
                (y_t, d_t), z_t = xs, system.design
            if settled:
                return settled_step(lay, system, carry, y_t, d_t, z_t, sqrt=sqrt, keep=keep)
            return step(lay, system, carry, y_t, d_t, z_t, sqrt=sqrt, keep=keep)
        return lax.scan(body, state, xs)

    xs = (y, d, system.design) if time_varying else (y, d)
    n_diffuse = len(diffuse_states(lay))
    head = min(n_time, 2 * n_diffuse + CHUNK_STEPS)
    if n_diffuse == 0 or head == n_time:
        return steps(state, xs, False)
    # after a head that holds the diffuse phase of every member with its observations, the steps
    # carry no augmented filter: a branch copies whatever it carries, and that carry is larger than P
    mid, out_head = steps(state, jax.tree_util.tree_map(lambda x: x[:head], xs), False)
    rest = jax.tree_util.tree_map(lambda x: x[head:], xs)

    def settled():
        final, out = steps(mid._replace(augmented=None), rest, True)
        return final._replace(augmented=mid.augmented), out

    final, out = lax.cond(jnp.any(mid.diffuse), lambda: steps(mid, rest, False), settled)
    return final, jax.tree_util.tree_map(lambda h, t: jnp.concatenate([h, t]), out_head, out)


def run_chunked(lay: Layout, system: System, state: FilterState, y, d, sqrt: bool):
    """Log-likelihood terms: a head of diffuse-phase steps, then equal chunks of at most
    CHUNK_STEPS steps, one phase decision per chunk instead of per step.

    system: batch-last, its design not time-varying; y, d: (time, batch). A per-step
    `lax.switch` costs about as much as a whole standard update for m ≈ 13 on a CPU, and in
    reverse mode it stores every branch's residuals at every step. The head runs the
    exact-diffuse update (valid in every case) over the first steps: as many as there are
    diffuse states, where the diffuse phase ends when those observations are present, plus
    fewer than one step per chunk so that the rest splits into equal chunks. Each chunk then
    runs in the `Phase` that `phase_of` gives for its start and its observations: DIFFUSE
    (while any member is still diffuse, after gaps early on), STEADY (every member converged and
    no missing value in the chunk: the O(m) mean update), or STANDARD (the plain covariance
    update, no branching). Each phase is exact for the steps it is given; diffuse and standard
    chunks carry hand-written tangents (`diffuse_scan_custom_jvp`, `standard_scan_custom_jvp`),
    and diffuse steps are rematerialised in reverse mode so that they store only their inputs.
    Same results as stepping with `step`, up to when the steady state starts. A state without
    an augmented filter (None) runs Koopman's diffuse steps alone (see `run`'s `augmented`).
    """
    n_time, batch = y.shape
    rest = max(n_time - len(diffuse_states(lay)), 0)
    n_chunks = max(-(-rest // CHUNK_STEPS), 1)
    size = rest // n_chunks
    head = n_time - n_chunks * size      # the diffuse states' steps and fewer than n_chunks more
    z = system.design

    @jax.checkpoint
    def diffuse(st, xs):   # exact in every case: Koopman's steps, the augmented filter beside them, the collapse
        args = (lay, st, system.transition, z, system.obs_var, system.state_var, *xs)
        new, ll = diffuse_scan(*args, sqrt=True) if sqrt else diffuse_scan_custom_jvp(*args)
        if ll.shape[0] == 0 or st.augmented is None:   # None: Koopman's recursion is exact here (`run`)
            return new, ll
        aug = augmented_scan(lay, system.transition, system.state_var, system.obs_var, st.augmented, *xs, z, ll, sqrt)
        new, correction = collapse_state(new._replace(augmented=aug), st.diffuse, sqrt)
        return new._replace(steady=new.steady & ~st.diffuse), ll.at[-1].add(correction)

    def standard(st, xs):
        # carry only what the covariance update needs; the rest of the state is set at the end
        args = (st.mean, st.cov, system.transition, z, system.obs_var, system.state_var, xs[0], xs[1])
        a, P, K, F, ll = standard_scan(lay, *args, sqrt=True) if sqrt else standard_scan_custom_jvp(lay, *args)
        observed = ~jnp.isnan(xs[0])
        steady = jnp.zeros_like(st.steady)
        if not sqrt:  # converged over the whole chunk (stricter than one step's change), all observed
            steady = jnp.all(observed, axis=0) & (F > 0) & converged(P, st.cov)
        return st._replace(mean=a, cov=P, gain=K, innov_var=F, steady=steady, prev_observed=observed[-1]), ll

    def steady(st, xs):
        a, ll = steady_scan(lay, st.mean, st.gain, st.innov_var, system.transition, z, xs[0], xs[1])
        return st._replace(mean=a, prev_observed=~jnp.isnan(xs[0][-1])), ll

    branch = {Phase.DIFFUSE: diffuse, Phase.STANDARD: standard, Phase.STEADY: steady}

    def chunk(st, xs):
        return lax.switch(phase_of(st, xs[0]), [branch[p] for p in Phase], st, xs)

    st, ll_head = diffuse(state, (y[:head], d[:head]))
    if size == 0:
        return st, ll_head
    y_c, d_c = y[head:].reshape(n_chunks, size, batch), d[head:].reshape(n_chunks, size, batch)
    final, ll = lax.scan(chunk, st, (y_c, d_c))
    return final, jnp.concatenate([ll_head, ll.reshape(n_chunks * size, batch)])


def mean_pass(lay: Layout, transition: jnp.ndarray, design: jnp.ndarray, obs_intercept: jnp.ndarray,
              gains: StepInfo, Y: jnp.ndarray) -> jnp.ndarray:
    """Log-likelihood terms of many series that share one system and one missing-data pattern.

    The covariances, gains K_t and variances F_t do not depend on the data, only on the
    parameters and on which y_t are missing; `gains` holds them for one member (from
    `run(..., keep=True)`, batch axis dropped). Each series then needs only
    a ← T(a + K_t v_t), v_t = y_t − Z a − d_t: O(m) per series and step.
    transition (m, m); design (m,); obs_intercept (time,) or (); Y (time, series).
    Returns (time, series).
    """
    n_time, n_series = Y.shape
    d = jnp.broadcast_to(obs_intercept, (n_time,))

    def body(a, xs):
        y_t, d_t, K, F, Fi, kind = xs
        diffuse, standard = kind == StepKind.DIFFUSE, kind == StepKind.STANDARD
        v = jnp.where(jnp.isnan(y_t), 0.0, y_t) - design @ a - d_t
        v = jnp.where(kind > StepKind.NONE, v, 0.0)
        a_f = a + K[:, None] * v[None]
        F_safe = jnp.where(standard, F, 1.0)
        llf = jnp.where(diffuse, -0.5 * (LOG_2PI + jnp.log(jnp.where(diffuse, Fi, 1.0))),
                        jnp.where(standard, -0.5 * (LOG_2PI + jnp.log(F_safe) + v * v / F_safe), 0.0))
        return transition_apply(lay, transition, a_f), llf

    a0 = jnp.zeros((lay.n_states, n_series))
    xs = (Y, d, gains.gain, gains.innov_var, gains.diffuse_var, gains.kind)
    return lax.scan(body, a0, xs)[1]
