"""Synthetic data with known truth: demo streams for live monitoring and a fleet of sensors.

Every generator is a pure function of a PRNG key (or an integer seed) and sizes, so a
stream or a fleet is reproduced exactly from its seed. The stochastic level and seasonal
pattern of a demo stream are drawn with `engine.simulate` from the structural model it
suggests; the events (level shifts, outliers, gaps, drift, a change of seasonal pattern)
are then laid on top, and each is reported with where it is and how large it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .model import simulate
from .spec import param_names

__all__ = [
    "DemoEvent", "DemoStream", "DemoInfo", "DEMO_STREAMS", "list_demo_streams", "demo_stream", "MIN_HISTORY",
    "DemoPosterior", "demo_posterior", "Fleet", "make_fleet",
]


PERIOD = 24          # demo streams and fleet sensors: one seasonal cycle per 24 steps (hourly data)
HARMONICS = 2
NOISE_SD = 1.0       # irregular s.d. of the demo streams; event sizes are multiples of it
LEVEL_SD = 0.1       # random-walk level s.d. per step
SEASONAL_VAR = 1e-4  # per-step variance of each trigonometric seasonal state
FLEET_CHUNK = 4096   # series generated per compiled call (bounds memory for large fleets)

_RANDOM_WALK = {"irregular": False, "level": {"kind": "random_walk"}}
_TRIG = {"period": PERIOD, "form": "trig", "harmonics": HARMONICS, "stochastic": True}


def _as_key(key) -> jax.Array:
    """A typed PRNG key from a key or an integer seed."""
    if isinstance(key, (int, np.integer)):
        return jax.random.key(int(key))
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    if isinstance(key, jax.Array) and key.shape == (2,) and key.dtype == jnp.uint32:
        return jax.random.wrap_key_data(key)
    raise ValueError(f"expected a JAX PRNG key or an integer seed, got {type(key).__name__} {key!r}")


def _check_size(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------
# demo streams
# --------------------------------------------------------------------------------------

class DemoEvent(NamedTuple):
    """Something that happens in a stream: steps [start, end) and its size (units of y, or a rate)."""

    kind: str     # 'level_shift', 'outlier', 'gap', 'drift' or 'seasonal_change'
    start: int
    end: int
    size: float   # level_shift/outlier: jump in y; drift: slope per step; seasonal_change: amplitude ratio


class DemoStream(NamedTuple):
    """A synthetic stream and its truth. Where y is observed it equals the sum of `components`."""

    name: str
    y: np.ndarray                       # (time,) observations, NaN where missing
    components: dict[str, np.ndarray]   # name → (time,): level, seasonal, irregular, outliers
    events: tuple[DemoEvent, ...]
    spec: dict                          # the structural model to fit (JSON-able)
    params: dict[str, float]            # its true parameters (the events are outside the model)

    @property
    def signal(self) -> np.ndarray:
        """(time,) the noise-free signal: level + seasonal."""
        return self.components["level"] + self.components["seasonal"]


@dataclass(frozen=True)
class _Plan:
    """Which events a demo stream has; positions are fractions of the stream length."""

    shifts: tuple[float, ...] = ()
    outlier_rate: float = 0.0
    gaps: tuple[tuple[float, int], ...] = ()   # (start fraction, length in steps)
    missing_rate: float = 0.0                   # scattered single missing values
    drift: tuple[float, float] | None = None    # (start fraction, total drift in noise s.d.)
    seasonal_change: tuple[float, float] | None = None   # (fraction, amplitude ratio)


def _stream_spec(plan: _Plan) -> dict:
    kind = "local_linear_trend" if plan.drift else "local_level"
    return {"irregular": True, "level": {"kind": kind}, "seasonal": [dict(_TRIG)]}


def _stream_params(spec: dict) -> dict[str, float]:
    """True parameters of the stream model by engine name (the drift's slope is deterministic)."""
    values = {"sigma2.irregular": NOISE_SD ** 2, "sigma2.level": LEVEL_SD ** 2, "sigma2.trend": 0.0,
              f"sigma2.freq_seasonal_{PERIOD}({HARMONICS})": SEASONAL_VAR}
    return {n: values[n] for n in param_names(spec)}


class _Draws(NamedTuple):
    """All the randomness of one demo stream, drawn in one compiled call."""

    level: jnp.ndarray       # (time,) random-walk level from 0
    seasonal: jnp.ndarray    # (time,) trigonometric seasonal
    fresh: jnp.ndarray       # (time,) a second, independent seasonal (after a change of pattern)
    irregular: jnp.ndarray   # (time,)
    u_shift: jnp.ndarray     # (2, MAX_SHIFTS) uniforms for shift sizes and signs
    u_outlier: jnp.ndarray   # (4, time // PERIOD) uniforms: hit, position in the cycle, size, sign
    u_missing: jnp.ndarray   # (time,) uniforms for scattered missing values


MAX_SHIFTS = 8
_SEASONAL = {"irregular": False, "seasonal": [dict(_TRIG)]}


@partial(jax.jit, static_argnames=("n_time",))
def _draws(key, n_time: int) -> _Draws:
    k = jax.random.split(key, 7)
    seas_params = {f"sigma2.freq_seasonal_{PERIOD}({HARMONICS})": SEASONAL_VAR}
    return _Draws(simulate(k[0], _RANDOM_WALK, {"sigma2.level": LEVEL_SD ** 2}, n_time, init_scale=0.0),
                  simulate(k[1], _SEASONAL, seas_params, n_time, init_scale=3.0),
                  simulate(k[2], _SEASONAL, seas_params, n_time, init_scale=3.0),
                  NOISE_SD * jax.random.normal(k[3], (n_time,)),
                  jax.random.uniform(k[4], (2, MAX_SHIFTS)),
                  jax.random.uniform(k[5], (4, n_time // PERIOD)),
                  jax.random.uniform(k[6], (n_time,)))


def _signed_sizes(u: np.ndarray, low: float, high: float) -> np.ndarray:
    """Sizes uniform in [low, high) noise s.d. with random signs, from uniforms u (2, n)."""
    return (low + (high - low) * u[0]) * NOISE_SD * np.where(u[1] < 0.5, 1.0, -1.0)


def _compose(key, n_time: int, plan: _Plan, name: str) -> DemoStream:
    """Draw the base model with `simulate`, then add the planned events and record them."""
    n_time = _check_size("n_time", n_time, 4 * PERIOD)
    if len(plan.shifts) > MAX_SHIFTS:
        raise ValueError(f"a demo stream has at most {MAX_SHIFTS} level shifts, got {len(plan.shifts)}")
    d = jax.tree_util.tree_map(np.array, jax.device_get(_draws(_as_key(key), n_time)))
    level, seasonal, irregular = 20.0 + d.level, d.seasonal, d.irregular
    events: list[DemoEvent] = []

    for frac, size in zip(plan.shifts, _signed_sizes(d.u_shift, 6.0, 10.0)):
        t = int(frac * n_time)
        level[t:] += size
        events.append(DemoEvent("level_shift", t, t + 1, float(size)))
    if plan.drift is not None:
        frac, total = plan.drift
        t = int(frac * n_time)
        rate = total * NOISE_SD / (n_time - t)
        level[t:] += rate * np.arange(n_time - t)
        events.append(DemoEvent("drift", t, n_time, float(rate)))
    if plan.seasonal_change is not None:
        # after the change the pattern is a fresh draw scaled to `ratio` times the old amplitude
        frac, ratio = plan.seasonal_change
        t = int(frac * n_time)
        seasonal[t:] = d.fresh[t:] * (ratio * np.std(seasonal[:t]) / np.std(d.fresh[t:]))
        events.append(DemoEvent("seasonal_change", t, t + 1, float(ratio)))

    missing = np.zeros(n_time, dtype=bool)
    for frac, length in plan.gaps:
        t = int(frac * n_time)
        missing[t:t + length] = True
        events.append(DemoEvent("gap", t, min(t + length, n_time), 0.0))
    if plan.missing_rate:
        single = (d.u_missing < plan.missing_rate) & ~missing
        single[0] = False
        events += [DemoEvent("gap", int(t), int(t) + 1, 0.0) for t in np.flatnonzero(single)]
        missing |= single

    outliers = np.zeros(n_time)
    if plan.outlier_rate:
        # at most one outlier per seasonal cycle, on an observed step, so that each stands alone
        hit, where = d.u_outlier[0], d.u_outlier[1]
        times = np.arange(len(hit)) * PERIOD + (where * PERIOD).astype(int)
        chosen = (hit < plan.outlier_rate * PERIOD) & ~missing[times]
        for t, size in zip(times[chosen], _signed_sizes(d.u_outlier[2:, chosen], 6.0, 12.0)):
            outliers[t] = size
            events.append(DemoEvent("outlier", int(t), int(t) + 1, float(size)))

    y = level + seasonal + irregular + outliers
    y[missing] = np.nan
    spec = _stream_spec(plan)
    events.sort(key=lambda e: (e.start, e.kind))
    return DemoStream(name, y, {"level": level, "seasonal": seasonal, "irregular": irregular,
                                "outliers": outliers}, tuple(events), spec, _stream_params(spec))


class DemoInfo(NamedTuple):
    """A registry entry: what the stream view lists, and the plan that generates it."""

    name: str
    title: str
    description: str
    plan: _Plan


_DEMOS = (
    DemoInfo("level_shifts", "Level shifts",
             "A daily-cycle sensor whose level jumps three times by 6-10 noise s.d.; "
             "watch the filter lag, the innovations spike and the anomaly flags.",
             _Plan(shifts=(0.3, 0.55, 0.8))),
    DemoInfo("changing_seasonality", "Changing seasonality",
             "Halfway through, the daily pattern changes shape and grows 2.5 times larger; "
             "a slowly-evolving seasonal needs time to learn it.",
             _Plan(seasonal_change=(0.5, 2.5))),
    DemoInfo("outliers", "Outliers",
             "Isolated spikes of 6-12 noise s.d. in about 1% of steps; each is flagged but barely "
             "moves the filtered level.",
             _Plan(outlier_rate=0.01)),
    DemoInfo("missing_stretches", "Missing stretches",
             "Three long gaps and scattered missing readings; the filter predicts through them "
             "and its bands widen until data return.",
             _Plan(gaps=((0.2, 30), (0.5, 72), (0.75, 120)), missing_rate=0.01)),
    DemoInfo("slow_drift", "Slow drift",
             "From 40% of the way in, the level drifts steadily (8 noise s.d. by the end), like a "
             "sensor losing calibration; a trend component picks the slope up.",
             _Plan(drift=(0.4, 8.0))),
    DemoInfo("sensor", "Everything at once",
             "A level shift, outliers, a gap and a slow drift in one stream.",
             _Plan(shifts=(0.3,), outlier_rate=0.005, gaps=((0.6, 48),), drift=(0.7, 6.0))),
)

DEMO_STREAMS: dict[str, DemoInfo] = {d.name: d for d in _DEMOS}


def list_demo_streams() -> pd.DataFrame:
    """The demo streams, one row each: name, title, description."""
    return pd.DataFrame([{"name": d.name, "title": d.title, "description": d.description} for d in _DEMOS])


def demo_stream(key, name: str, n_time: int = 2000) -> DemoStream:
    """Generate demo stream `name` (see `list_demo_streams`) of `n_time` steps from a key or seed."""
    if name not in DEMO_STREAMS:
        raise ValueError(f"unknown demo stream {name!r}; valid names: {', '.join(DEMO_STREAMS)}")
    return _compose(key, n_time, DEMO_STREAMS[name].plan, name)


MIN_HISTORY = 2 * PERIOD   # observations a demo's posterior is fitted on, at least


class DemoPosterior(NamedTuple):
    """Parameter draws for a demo stream's model given its first `n_history` observations."""

    draws: dict[str, np.ndarray]   # name → (draw,)
    n_history: int
    converged: bool                # the mode search reported convergence
    message: str                   # the optimiser's message


def demo_posterior(stream: DemoStream, n_history: int, n_draws: int = 200, seed: int = 0) -> DemoPosterior:
    """Draws θ_s ~ q(θ | y_{1:n}) for the demo's model given its first n = `n_history` observations:
    the Laplace approximation at the posterior mode (`fit_map`, default priors).

    A demo stream has no NUTS fit of its own; these draws play that part, so that the online bank
    re-weights a spread of parameters (and its ESS moves) as the rest of the stream arrives. They
    see only the history, never the observations streamed after it, and the true parameters
    (`stream.params`) are not used. The observations after the history are given to the fit as
    missing (they add nothing to the likelihood), so every history length shares one compiled fit.
    """
    from .bayes import fit_map   # the model stack: the generators above do not need it

    n_history = _check_size("n_history", n_history, MIN_HISTORY)
    n_draws = _check_size("n_draws", n_draws, 1)
    if n_history > len(stream.y):
        raise ValueError(f"n_history must be at most the stream's {len(stream.y)} observations, got {n_history}")
    y = np.where(np.arange(len(stream.y)) < n_history, stream.y, np.nan)
    fit = fit_map(stream.spec, y)
    return DemoPosterior(fit.laplace_draws(n_draws, seed), n_history, bool(fit.converged), str(fit.message))


# --------------------------------------------------------------------------------------
# fleet of sensors
# --------------------------------------------------------------------------------------

class Fleet(NamedTuple):
    """Many synthetic sensors with known truth (series leading)."""

    Y: np.ndarray          # (series, time) observations, NaN where missing
    signal: np.ndarray     # (series, time) trend + seasonal + regime shift, before noise and outliers
    outlier: np.ndarray    # (series, time) bool, True where an outlier was added to an observed value
    truth: pd.DataFrame    # one row per series (see `make_fleet`)
    spec: dict             # the structural model to fit


class _SeriesDraw(NamedTuple):
    level: jnp.ndarray          # initial level
    slope: jnp.ndarray          # deterministic slope per step
    amplitude: jnp.ndarray      # first-harmonic amplitude
    phase: jnp.ndarray
    amplitude2: jnp.ndarray     # second-harmonic amplitude
    noise_sd: jnp.ndarray
    level_sd: jnp.ndarray       # random-walk s.d. per step
    regime_time: jnp.ndarray    # -1 when the series has no regime change
    regime_shift: jnp.ndarray
    gap_start: jnp.ndarray      # -1 when the series has no gap
    gap_length: jnp.ndarray
    start: jnp.ndarray          # first observed step (late starters have NaN before)


@partial(jax.jit, static_argnames=("n_time", "period"))
def _fleet_chunk(key, index, n_time: int, period: int, outlier_rate, missing_rate):
    """Series `index` (series,) of the fleet: each depends only on (key, its index)."""

    def one(i):
        k = jax.random.split(jax.random.fold_in(key, i), 8)
        u = jax.random.uniform(k[0], (16,))
        noise_sd = 0.5 + 1.5 * u[0]
        has_regime = u[1] < 0.3
        has_gap = u[2] < 0.3
        late = u[3] < 0.1
        gap_length = jnp.floor((0.05 + 0.1 * u[4]) * n_time).astype(jnp.int32)
        draw = _SeriesDraw(
            level=10.0 + 90.0 * u[5],
            slope=0.01 * noise_sd * jax.random.normal(k[1]),
            amplitude=noise_sd * 8.0 * u[6],
            phase=2 * jnp.pi * u[7],
            amplitude2=noise_sd * 2.0 * u[8],
            noise_sd=noise_sd,
            level_sd=noise_sd * (0.01 + 0.09 * u[9]),
            regime_time=jnp.where(has_regime, jnp.floor((0.2 + 0.7 * u[10]) * n_time), -1).astype(jnp.int32),
            regime_shift=jnp.where(has_regime, (5.0 + 10.0 * u[11]) * noise_sd * jnp.sign(u[12] - 0.5), 0.0),
            gap_start=jnp.where(has_gap, jnp.floor((0.1 + 0.7 * u[13]) * n_time), -1).astype(jnp.int32),
            gap_length=jnp.where(has_gap, gap_length, 0),
            start=jnp.where(late, jnp.floor(0.3 * u[14] * n_time), 0).astype(jnp.int32),
        )
        t = jnp.arange(n_time)
        # a unit random walk from 0 (one cumsum: `simulate` would cost a second compile per fleet shape)
        walk = jnp.concatenate([jnp.zeros(1), jnp.cumsum(jax.random.normal(k[2], (n_time - 1,)))])
        angle = 2 * jnp.pi * t / period + draw.phase
        signal = (draw.level + draw.slope * t + draw.level_sd * walk
                  + draw.amplitude * jnp.cos(angle) + draw.amplitude2 * jnp.cos(2 * angle + 1.0)
                  + jnp.where((draw.regime_time >= 0) & (t >= draw.regime_time), draw.regime_shift, 0.0))
        missing = ((t < draw.start)
                   | ((t >= draw.gap_start) & (t < draw.gap_start + draw.gap_length) & (draw.gap_start >= 0))
                   | (jax.random.uniform(k[3], (n_time,)) < missing_rate))
        outlier = (jax.random.uniform(k[4], (n_time,)) < outlier_rate) & ~missing
        size = (6.0 + 6.0 * jax.random.uniform(k[5], (n_time,))) * noise_sd
        sign = jnp.where(jax.random.bernoulli(k[6], 0.5, (n_time,)), 1.0, -1.0)
        y = signal + noise_sd * jax.random.normal(k[7], (n_time,)) + jnp.where(outlier, sign * size, 0.0)
        return jnp.where(missing, jnp.nan, y), signal, outlier, draw

    return jax.vmap(one)(index)


def make_fleet(n_series: int, n_time: int, seed=0, *, period: int = PERIOD, outlier_rate: float = 0.002,
               missing_rate: float = 0.002) -> Fleet:
    """A fleet of `n_series` sensors over `n_time` steps with known truth.

    Each sensor: level + slope·t + a slowly wandering random walk
    + a two-harmonic pattern of period `period` + N(0, noise_sd²) noise. About 30% have a
    regime change (a level shift of 5-15 noise s.d.), 30% a gap of 5-15% of the series,
    10% start late (NaN before `start`); outliers of 6-12 noise s.d. hit observed steps at
    `outlier_rate`, and single readings go missing at `missing_rate`. Sensor i depends only
    on (seed, i), so a larger fleet extends a smaller one. `truth` has one row per series:
    series, level, slope, amplitude, phase, amplitude2, noise_sd, level_sd, regime_time,
    regime_shift, gap_start, gap_length, start, n_outliers, n_missing.
    """
    n_series = _check_size("n_series", n_series, 1)
    n_time = _check_size("n_time", n_time, 2)
    period = _check_size("period", period, 2)
    for name, rate in (("outlier_rate", outlier_rate), ("missing_rate", missing_rate)):
        if not 0.0 <= float(rate) < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {rate!r}")
    key = _as_key(seed)
    chunk = min(FLEET_CHUNK, 1 << (n_series - 1).bit_length())   # few distinct shapes, few compiles
    parts = [jax.device_get(_fleet_chunk(key, jnp.arange(lo, lo + chunk), n_time, period, outlier_rate,
                                         missing_rate))
             for lo in range(0, n_series, chunk)]   # the last chunk may run past n_series: trimmed
    Y, signal, outlier = (np.concatenate([p[j] for p in parts])[:n_series] for j in range(3))
    draw = {f: np.concatenate([getattr(p[3], f) for p in parts])[:n_series] for f in _SeriesDraw._fields}
    truth = pd.DataFrame(draw)
    truth.insert(0, "series", [f"sensor_{i:0{max(5, len(str(n_series - 1)))}d}" for i in range(n_series)])
    truth["n_outliers"] = outlier.sum(axis=1)
    truth["n_missing"] = np.isnan(Y).sum(axis=1)
    spec = {"irregular": True, "level": {"kind": "local_linear_trend"},
            "seasonal": [{"period": period, "form": "trig", "harmonics": min(HARMONICS, period // 2),
                          "stochastic": True}]}
    return Fleet(Y, signal, outlier.astype(bool), truth, spec)

