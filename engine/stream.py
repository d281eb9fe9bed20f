"""StreamRunner: feed a live or replayed series to an online filter from a background thread.

UI-agnostic: a producer thread pulls observations from a dataset (array) or a generator at a
chosen rate (or as fast as possible) into a bounded queue (back-pressure: a slow engine slows
the producer instead of growing memory); an engine thread takes whatever is queued, up to
`batch_size`, as one micro-batch (`update_many`) and publishes a `StreamBatch` to every
subscriber. Pause/resume/step/stop, throughput and latency percentiles, and errors that are
reported to subscribers and kept, never swallowed.
"""

from __future__ import annotations

import collections
import itertools
import queue
import threading
import time
import traceback
from typing import Any, Callable, Iterable, NamedTuple

import jax
import numpy as np

from .background import start_thread

__all__ = [
    "StreamBatch", "StreamError", "StreamStats", "StreamRunner",
]


_END = object()


class StreamBatch(NamedTuple):
    """One micro-batch as the subscribers see it (host numpy arrays)."""

    t: np.ndarray            # (batch,) time index of each observation in the stream
    y: np.ndarray            # (batch,)
    info: Any                # the filter's info for the batch, stacked over the batch (numpy)
    engine_s: float          # seconds the filter took for the whole batch
    latency_s: np.ndarray    # (batch,) arrival → published, per observation

    def steps(self):
        """(t, y, info of that step) for each observation of the batch."""
        for i in range(len(self.t)):
            yield int(self.t[i]), float(self.y[i]), jax.tree_util.tree_map(lambda a: a[i], self.info)


class StreamError(NamedTuple):
    """An exception raised by the source, the filter or a subscriber, with where it happened."""

    where: str               # 'source', 'engine' or 'subscriber'
    error: BaseException
    traceback: str


class StreamStats(NamedTuple):
    n_obs: int
    n_batches: int
    elapsed_s: float
    throughput: float            # observations per second since start
    engine_throughput: float     # observations per second of engine time (what the engine could sustain)
    engine_ms: dict              # per-observation engine time percentiles (batch time / batch size)
    total_ms: dict               # arrival → published latency percentiles
    queue_depth: int


def _percentiles(values) -> dict:
    if not values:
        return {"p50": float("nan"), "p90": float("nan"), "p99": float("nan"), "max": float("nan")}
    a = np.asarray(values) * 1e3
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(a.max())}


class StreamRunner:
    """Replay `source` into `filter.update_many` on a background thread.

    source: an array (time,) or (time, 1 + k) [y, exog...], or any iterable yielding y or (y, exog).
    rate: observations per second (None: as fast as the engine takes them).
    batch_size: most observations per micro-batch; queue_size bounds the observations in flight.
    Subscribers are called on the engine thread with a `StreamBatch` or a `StreamError`.
    """

    def __init__(self, filter, source: Iterable | np.ndarray, *, rate: float | None = None, batch_size: int = 64,
                 queue_size: int = 1024, window: int = 10_000):
        if rate is not None and not rate > 0:
            raise ValueError(f"rate must be > 0 observations per second (or None), got {rate!r}")
        if batch_size < 1 or queue_size < 1:
            raise ValueError(f"batch_size and queue_size must be >= 1, got {batch_size} and {queue_size}")
        self.filter = filter
        self.rate = rate
        self.batch_size = int(batch_size)
        self._source = source
        self._queue: queue.Queue = queue.Queue(maxsize=int(queue_size))
        self._leftover: list = []
        self._subscribers: list[Callable] = []
        self._sub_lock = threading.Lock()
        self._cond = threading.Condition()
        self._paused = False
        self._credits_producer = 0   # observations the producer may pull while paused
        self._credits_engine = 0     # observations the engine may process while paused
        self._in_flight = False      # a batch was taken and is not published yet
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors: list[StreamError] = []
        self._engine_ms = collections.deque(maxlen=window)
        self._total_ms = collections.deque(maxlen=window)
        self._n_obs = self._n_batches = 0
        self._run_time = 0.0
        self._started_at: float | None = None
        self.finished = threading.Event()   # set when the source is exhausted and all was processed
        self.failed = False

    # -- subscribers ---------------------------------------------------------------------
    def subscribe(self, callback: Callable[[StreamBatch | StreamError], None]) -> Callable[[], None]:
        """Register a callback; returns a function that unsubscribes it."""
        with self._sub_lock:
            self._subscribers.append(callback)

        def unsubscribe():
            with self._sub_lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)
        return unsubscribe

    def _publish(self, message):
        with self._sub_lock:
            subs = list(self._subscribers)
        for cb in subs:
            try:
                cb(message)
            except Exception as exc:  # a broken subscriber must not stop the stream or the others
                err = StreamError("subscriber", exc, traceback.format_exc())
                self.errors.append(err)
                if not isinstance(message, StreamError):
                    self._publish(err)

    def _fail(self, where: str, exc: BaseException):
        err = StreamError(where, exc, traceback.format_exc())
        self.errors.append(err)
        self.failed = True
        self._publish(err)
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    # -- control -------------------------------------------------------------------------
    def start(self, paused: bool = False) -> "StreamRunner":
        if self._threads:
            raise RuntimeError("this StreamRunner was already started; make a new one to stream again")
        self._paused = paused
        self._started_at = time.perf_counter()
        # the process's exit hook stops and joins them (engine.background)
        self._threads = [start_thread(self._produce, name="stream-source", stop=self._signal_stop),
                         start_thread(self._consume, name="stream-engine", stop=self._signal_stop)]
        return self

    def pause(self):
        """No observation is taken after this returns (until `step` or `resume`); a batch taken
        before goes on to its subscribers: `wait_idle` says when it has."""
        with self._cond:
            self._paused = True
            self._credits_producer = self._credits_engine = 0

    def resume(self):
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def step(self, n: int = 1):
        """While paused, let exactly n more observations through the engine."""
        with self._cond:
            if not self._paused:
                raise RuntimeError("step() is for a paused stream; call pause() first")
            self._credits_engine += n
            # the producer tops the queue up so that the engine's credits can be served
            self._credits_producer += max(0, self._credits_engine - self._queue.qsize())
            self._cond.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no batch is in flight (taken from the queue, not yet published), or the
        runner ended. After `pause()`, True means the subscribers have seen every observation
        that will go through until the next `step` or `resume`; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._in_flight or self._stop.is_set()
                                       or self.finished.is_set() or self.failed, timeout)

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def running(self) -> bool:
        return any(th.is_alive() for th in self._threads)

    def stop(self, timeout: float | None = None):
        """Stop both threads and wait for them (the batch being processed is finished first).
        Observations already taken from the source but not yet filtered (at most queue_size) are
        not lost: `unprocessed()` returns them once the threads have ended."""
        self._signal_stop()
        self.join(timeout)

    def _signal_stop(self):
        """Ask both threads to stop after the batch in hand (does not wait)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def unprocessed(self) -> list[tuple[float, np.ndarray | None]]:
        """(y, exog) of what the source gave but the filter never saw, in order (after `stop`); a
        live source does not give them again."""
        if self.running:
            raise RuntimeError("the runner is still running: stop it first")
        queued = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _END:
                queued.append((item[1], item[2]))
        items, self._leftover = queued + self._leftover, []   # the producer's item in hand came after the queue's
        return items

    def join(self, timeout: float | None = None):
        for th in self._threads:
            th.join(timeout)

    def raise_if_failed(self):
        """Re-raise the first source/engine error in the caller's thread."""
        for err in self.errors:
            if err.where != "subscriber":
                raise RuntimeError(f"the stream failed in its {err.where}: {err.error!r}") from err.error

    def stats(self) -> StreamStats:
        elapsed = (time.perf_counter() - self._started_at) if self._started_at else 0.0
        return StreamStats(self._n_obs, self._n_batches, elapsed,
                           self._n_obs / elapsed if elapsed > 0 else 0.0,
                           self._n_obs / self._run_time if self._run_time > 0 else 0.0,
                           _percentiles(list(self._engine_ms)), _percentiles(list(self._total_ms)),
                           self._queue.qsize())

    # -- threads -------------------------------------------------------------------------
    def _items(self):
        src = self._source
        if isinstance(src, np.ndarray) or hasattr(src, "__array__") and not hasattr(src, "__next__"):
            arr = np.asarray(src, dtype=float)
            if arr.ndim == 1:
                return ((float(v), None) for v in arr)
            if arr.ndim == 2:
                return ((float(r[0]), r[1:] if arr.shape[1] > 1 else None) for r in arr)
            raise ValueError(f"a source array must be (time,) or (time, 1 + k), got shape {arr.shape}")

        def normalise(item):
            if isinstance(item, tuple):
                y, x = item
                return float(y), None if x is None else np.asarray(x, dtype=float).reshape(-1)
            return float(item), None
        return (normalise(v) for v in src)

    def _wait_turn(self, credit: str) -> bool:
        """Block while paused without credits; consume a credit when paused. False when stopping."""
        with self._cond:
            while self._paused and getattr(self, credit) <= 0 and not self._stop.is_set():
                self._cond.wait(0.1)
            if self._stop.is_set():
                return False
            if self._paused:
                setattr(self, credit, getattr(self, credit) - 1)
            return True

    def _produce(self):
        try:
            items = self._items()
            next_at = time.perf_counter()
            for i in itertools.count():
                if not self._wait_turn("_credits_producer"):
                    return
                try:
                    y, x = next(items)
                except StopIteration:
                    break
                if self.rate is not None:
                    now = time.perf_counter()
                    next_at = max(next_at + 1.0 / self.rate, now - 1.0 / self.rate)  # no burst after a pause
                    if next_at > now:
                        self._stop.wait(next_at - now)
                queued = False
                while not self._stop.is_set():   # back-pressure: wait for room
                    try:
                        self._queue.put((i, y, x, time.perf_counter()), timeout=0.1)
                        queued = True
                        break
                    except queue.Full:
                        continue
                if queued:
                    with self._cond:   # the engine may be waiting for it
                        self._cond.notify_all()
                if not queued:   # taken from the source during a stop: kept for `unprocessed`
                    self._leftover.append((y, x))
                if self._stop.is_set():
                    return
            self._put_end()
        except Exception as exc:
            self._fail("source", exc)

    def _put_end(self):
        while not self._stop.is_set():
            try:
                self._queue.put(_END, timeout=0.1)
                with self._cond:
                    self._cond.notify_all()
                return
            except queue.Full:
                continue

    def _take_batch(self):
        """Up to batch_size queued observations (waits for the first); None at the end.

        The pause check and each take from the queue happen under one lock, so once `pause()`
        has returned no observation is taken without a step's credit: only a batch already
        taken goes on (`wait_idle` waits for it)."""
        batch = []
        with self._cond:
            while True:
                if self._stop.is_set():
                    return None
                if not (self._paused and self._credits_engine <= 0):
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        pass
                    else:
                        break
                self._cond.wait(0.1)   # the producer notifies after each put, a pause after resume/step
            if item is _END:
                return _END
            while True:
                if self._paused:
                    self._credits_engine = max(0, self._credits_engine - 1)
                batch.append(item)
                self._in_flight = True
                if len(batch) >= self.batch_size or (self._paused and self._credits_engine <= 0):
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _END:
                    self._queue.put(_END)   # seen again after this batch
                    break
        return batch

    def _consume(self):
        while not self._stop.is_set():
            batch = self._take_batch()
            if batch is None:
                return
            if batch is _END:
                self.finished.set()
                return
            try:   # a malformed item (e.g. exog on some observations only) fails the run, loudly
                t = np.array([b[0] for b in batch])
                y = np.array([b[1] for b in batch])
                xs = [b[2] for b in batch]
                if any((x_i is None) != (xs[0] is None) for x_i in xs):
                    raise ValueError("the source gave regressors with some observations and not with others")
                x = None if xs[0] is None else np.stack(xs)
                t0 = time.perf_counter()
                info = jax.device_get(self.filter.update_many(y, x))
                engine_s = time.perf_counter() - t0
            except Exception as exc:
                self._fail("engine", exc)
                return
            done = time.perf_counter()
            latency = done - np.array([b[3] for b in batch])
            self._n_obs += len(batch)
            self._n_batches += 1
            self._run_time += engine_s
            self._engine_ms.extend([engine_s / len(batch)] * len(batch))
            self._total_ms.extend(latency.tolist())
            self._publish(StreamBatch(t, y, info, engine_s, latency))
            with self._cond:
                self._in_flight = False
                self._cond.notify_all()
