"""Rejuvenation of a weighted bank of posterior draws: resample, then move with MCMC.

When sequential importance weights collapse, the bank is resampled (systematic) and each
draw is moved by a few random-walk Metropolis steps that leave the full-data posterior
p(θ | y_{1:t}) invariant (the resample-move step of IBIS, Chopin 2002). The proposal is
N(z, (2.38²/d) Σ̂) in the unconstrained space, Σ̂ the weighted covariance of the bank, so it
adapts to the posterior's scale and correlations; all S chains move at once (vmap).

A stream schedules these moves with a `Rejuvenator` (configured by a `RejuvenationConfig`):
when one is due, its background thread, its finished result, the back-off after failures and
the moves' random key.
"""

from __future__ import annotations

import threading
import time
from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .background import ShuttingDown, shutting_down, start_thread

__all__ = [
    "MoveInfo", "systematic_resample", "rwm_init", "rwm_step", "resample_move", "RETRY_AFTER", "RejuvenationConfig", "MoveInput", "Closed", "Rejuvenator",
]


class MoveInfo(NamedTuple):
    acceptance: jnp.ndarray     # () mean Metropolis acceptance rate over draws and steps
    unique_draws: jnp.ndarray   # () distinct draws right after resampling


def systematic_resample(key, log_weight: jnp.ndarray) -> jnp.ndarray:
    """Indices (draw,) of a systematic resample: one uniform, S evenly spaced points on the CDF."""
    n = log_weight.shape[0]
    w = jnp.exp(log_weight - jax.scipy.special.logsumexp(log_weight))
    cdf = jnp.cumsum(w)
    points = (jax.random.uniform(key) + jnp.arange(n)) / n
    return jnp.clip(jnp.searchsorted(cdf, points * cdf[-1]), 0, n - 1)


def rwm_init(logp: Callable, z: jnp.ndarray):
    """State of S random-walk Metropolis chains: positions (draw, d) and their log densities."""
    return z, jax.vmap(logp)(z)


def rwm_step(key, logp: Callable, state, chol: jnp.ndarray):
    """One Metropolis step of every chain with proposal z + chol ε; returns (state, accepted (draw,))."""
    z, lp = state
    k_prop, k_acc = jax.random.split(key)
    prop = z + jax.random.normal(k_prop, z.shape) @ chol.T
    lp_prop = jax.vmap(logp)(prop)
    log_u = jnp.log(jax.random.uniform(k_acc, lp.shape))
    accept = jnp.isfinite(lp_prop) & (log_u < lp_prop - lp)
    return (jnp.where(accept[:, None], prop, z), jnp.where(accept, lp_prop, lp)), accept


def resample_move(key, logp: Callable, to_unconstrained: Callable, to_constrained: Callable,
                  params: jnp.ndarray, log_weight: jnp.ndarray, n_steps: int = 10):
    """Resample the weighted draws params (draw, param) and move them `n_steps` times.

    logp(z): full-data log posterior of one unconstrained vector (Jacobian included);
    to_unconstrained / to_constrained map one vector. Returns (new params (draw, param), MoveInfo).
    """
    k_res, k_move = jax.random.split(key)
    idx = systematic_resample(k_res, log_weight)
    z = jax.vmap(to_unconstrained)(jnp.asarray(params)[idx])
    n, d = z.shape
    w = jnp.exp(log_weight - jax.scipy.special.logsumexp(log_weight))
    z_all = jax.vmap(to_unconstrained)(jnp.asarray(params))
    mean = w @ z_all
    cov = (z_all - mean).T @ ((z_all - mean) * w[:, None])
    # a floor keeps the proposal alive when the weights sit on a single draw
    cov = cov + jnp.eye(d) * (1e-6 + 1e-3 * jnp.trace(cov) / max(d, 1))
    chol = jnp.linalg.cholesky(cov) * (2.38 / jnp.sqrt(max(d, 1)))
    state = rwm_init(logp, z)

    def body(carry, k):
        state, n_acc = carry
        state, acc = rwm_step(k, logp, state, chol)
        return (state, n_acc + jnp.sum(acc)), None

    (state, n_acc), _ = jax.lax.scan(body, (state, 0), jax.random.split(k_move, n_steps))
    unique = jnp.sum(jnp.zeros(n, bool).at[idx].set(True))
    new_params = jax.vmap(to_constrained)(state[0])
    return new_params, MoveInfo(n_acc / (n * max(n_steps, 1)), unique)


# -- scheduling ------------------------------------------------------------------------------
# observations before an automatic move is tried again after one failed (doubling with each failure)
RETRY_AFTER = 16


class RejuvenationConfig(NamedTuple):
    """When and how a stream rejuvenates its bank (see `Rejuvenator`)."""

    automatic: bool = True        # start moves by itself (low ESS, or drift); `Rejuvenator.start` works regardless
    ess_threshold: float = 0.5    # an automatic move once the ESS falls below ess_threshold·S
    refit_on_drift: bool = False  # ... or once the CUSUM signals drift
    move_steps: int = 10          # Metropolis steps of each move
    seed: int = 0                 # the moves' random stream
    priors: dict | None = None    # the priors of the posterior a move targets (a fit's own: `online.fit_priors`)
    log_posterior: Callable | None = None  # (spec, y, exog, priors) -> (logp, to_unconstrained, to_constrained);
                                           # None: the fit's (`engine.bayes.log_posterior`)


class MoveInput(NamedTuple):
    """What a move starts from: host copies taken when it starts (the stream goes on meanwhile)."""

    spec: Any
    y: np.ndarray               # (time,) the history
    exog: np.ndarray | None     # (time, k)
    params: np.ndarray          # (draw, param)
    log_weight: np.ndarray      # (draw,)
    ess: float


class Closed(Exception):
    """The rejuvenator was closed while a move was running: the move ends without a result."""


class Rejuvenator:
    """Schedules resample-move steps for a stream, each on a background thread.

    `due` says when an automatic move should start (ESS below `ess_threshold`·S, or drift with
    `refit_on_drift`); after a failed move, automatic ones wait `RETRY_AFTER` observations
    (doubling with each failure in a row) instead of starting again at every update. `start`
    runs a move on its own thread: `resample_move` on the full-data posterior of the history
    (the fit's, `engine.bayes.move_on_posterior`, unless the config gives a `log_posterior`),
    then the caller's `rebuild(input, new_params, closing)`, which builds the moved draws' bank
    caught up on the stream and raises `Closed` once `closing` is set. The finished result waits
    until the stream `take`s it. The rejuvenator owns the moves' random key; each event goes to
    `emit`; `position()` is the stream's number of observations so far.
    """

    def __init__(self, config: RejuvenationConfig, emit: Callable[[dict], None], position: Callable[[], int]):
        c = config
        self.config = RejuvenationConfig(bool(c.automatic), float(c.ess_threshold), bool(c.refit_on_drift),
                                         int(c.move_steps), int(c.seed), c.priors, c.log_posterior)
        self.key = jax.random.PRNGKey(self.config.seed)
        self._emit, self._position = emit, position
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._result = None       # the finished move's (rebuilt, event), or its exception, until taken
        self._failures = 0        # failed moves in a row; automatic moves back off after each
        self._retry_at = 0        # no automatic move before this many observations
        self._closing = threading.Event()   # `close`: a move in flight gives up at its next piece
        self._unavailable_reported = False

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def due(self, ess: float, n_draws: int, drift) -> str | None:
        """The reason for an automatic move now ('low_ess' or 'drift'; drift: the CUSUM flags of the
        last update), or None."""
        c = self.config
        if not c.automatic or self.running or self._position() < self._retry_at:
            return None
        if float(ess) < c.ess_threshold * n_draws:
            return "low_ess"
        if c.refit_on_drift and bool(np.any(np.asarray(drift))):
            return "drift"
        return None

    def _log_posterior(self):
        if self.config.log_posterior is not None:
            return self.config.log_posterior
        try:
            from . import bayes  # the full-data posterior of the fit
        except ImportError:
            return None
        return getattr(bayes, "log_posterior", None)

    def start(self, reason: str, read: Callable[[], MoveInput], rebuild: Callable, background: bool = True) -> bool:
        """Start a move (read: the `MoveInput`, taken only when a move does start); returns False
        if not possible now (a move is running, the rejuvenator is closed, or no posterior is
        available)."""
        if self.running or self._closing.is_set() or shutting_down():
            return False
        factory = self._log_posterior()
        if factory is None:
            if not self._unavailable_reported:
                self._unavailable_reported = True
                self._emit({"kind": "rejuvenation_unavailable", "t": self._position(),
                            "reason": "no full-data log posterior (engine.bayes.log_posterior) available"})
            return False
        inp = read()
        self.key, key = jax.random.split(self.key)
        t0 = len(inp.y)
        event = {"kind": "rejuvenation_start", "reason": reason, "t_start": t0, "ess_before": inp.ess}
        self._emit(dict(event))
        event["_t0"] = time.perf_counter()

        def work():
            try:
                new_params, move_info = self._move(key, factory, inp)
                rebuilt = rebuild(inp, new_params, self._closing)
                done = dict(event, acceptance=float(move_info.acceptance), unique_draws=int(move_info.unique_draws))
                with self._lock:
                    if self._closing.is_set():
                        return
                    self._result = (rebuilt, done)
            except Closed:   # nobody is left to use the new bank
                return
            except BaseException as exc:  # surfaced as an event, never silent
                with self._lock:   # back off before the stream's next look at the ESS
                    self._result = exc
                    self._failures += 1
                    self._retry_at = self._position() + RETRY_AFTER * 2 ** (self._failures - 1)
                    failures, retry_at = self._failures, self._retry_at
                self._emit({"kind": "rejuvenation_failed", "t_start": t0, "error": repr(exc), "failures": failures,
                            "retry_at": retry_at})

        try:   # the process's exit hook stops it (and joins it) like every engine thread
            self._thread = start_thread(work, name="rejuvenation", stop=self._closing.set)
        except ShuttingDown:
            return False
        if not background:
            self._thread.join()
        return True

    def _move(self, key, factory, inp: MoveInput):
        """(new params (draw, param), MoveInfo): resample and move the draws on p(θ | y_{1:t})."""
        c = self.config
        if c.log_posterior is None:   # the fit's posterior: compiled once per history bucket
            from .bayes import move_on_posterior
            return move_on_posterior(key, inp.spec, inp.y, inp.exog, c.priors, inp.params, inp.log_weight,
                                     c.move_steps)
        exog = None if inp.exog is None else jnp.asarray(inp.exog)
        logp, to_unc, to_con = factory(inp.spec, jnp.asarray(inp.y), exog, c.priors)
        move = jax.jit(partial(resample_move, logp=logp, to_unconstrained=to_unc, to_constrained=to_con,
                               n_steps=c.move_steps))
        return move(key, params=inp.params, log_weight=inp.log_weight)

    def take(self):
        """The finished move's (rebuilt, event), once; None while there is none, or when the move
        failed (reported, with its back-off, when it happened)."""
        with self._lock:
            result, self._result = self._result, None
        if result is None or isinstance(result, BaseException):
            return None
        self._failures = 0
        return result

    def close(self, timeout: float | None = 10.0) -> bool:
        """No new moves, and a finished one is dropped; one in flight gives up at its next
        `closing` check. True when no move thread is left after `timeout` seconds."""
        self._closing.set()
        with self._lock:
            self._result = None
        return self.wait(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a running move has finished; True when none is running."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running
