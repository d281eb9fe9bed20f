"""Per-session workers: engine jobs run off the UI thread, results come back via the document.

Each browser session owns one `SessionWorker` (a one-thread executor). A finished job's
callback is handed to `dispatch`, which in a served session is the document's
`add_next_tick_callback` (captured while in the session: `pn.state.curdoc` does not
follow into a thread), so widgets are only ever touched on the server's event loop.
The session's `on_session_destroyed` hook calls `shutdown`.
"""

from __future__ import annotations

import logging
import threading
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any, Callable

from engine import FitCancelled
from engine.compiled import using_compiled

log = logging.getLogger("streamssm.app")

THREAD_PREFIX = "streamssm-worker"
_WORKERS: "weakref.WeakSet[SessionWorker]" = weakref.WeakSet()   # every live session's worker


def worker_threads(session_id: str | None = None) -> list[threading.Thread]:
    """Live worker threads, of one session or of all sessions."""
    prefix = f"{THREAD_PREFIX}-{session_id}_" if session_id else f"{THREAD_PREFIX}-"
    return [t for t in threading.enumerate() if t.name.startswith(prefix) and t.is_alive()]


def unfinished_jobs() -> list[Future]:
    """The jobs of every session's worker that have not finished (queued or running; a closed
    session's running job too: it runs to its end)."""
    jobs = []
    for worker in list(_WORKERS):
        with worker._lock:
            jobs += list(worker._pending)
    return jobs


def run_now(callback: Callable[[], Any]) -> None:
    """Dispatch for use outside a server (tests, scripts): run the callback on the calling thread."""
    callback()


def document_dispatch(doc) -> Callable[[Callable[[], Any]], None]:
    """Dispatch onto a Bokeh document's event loop (safe to call from any thread)."""
    def dispatch(callback):
        doc.add_next_tick_callback(callback)
    return dispatch


class SessionWorker:
    """One background thread per session; jobs run in order, results are dispatched back."""

    def __init__(self, session_id: str, dispatch: Callable[[Callable[[], Any]], None] = run_now):
        self.session_id = session_id
        self._dispatch = dispatch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{THREAD_PREFIX}-{session_id}")
        self._closed = False
        self._lock = threading.Lock()
        self._pending: set[Future] = set()
        _WORKERS.add(self)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def dispatch(self) -> Callable[[Callable[[], Any]], None]:
        """How callbacks reach the session's event loop (for view-models that post results themselves)."""
        return self._dispatch

    def submit(self, job: Callable[..., Any], *args, on_done: Callable[[Any], None],
               on_error: Callable[[BaseException], None]) -> Future:
        """Run `job(*args)` in the worker; then `on_done(result)` or `on_error(exc)` via dispatch.

        The returned future resolves after the callback has been dispatched.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("this session has closed; its worker takes no more jobs")
            future = self._executor.submit(self._run, job, args, on_done, on_error)
            self._pending.add(future)
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: Future) -> None:
        with self._lock:
            self._pending.discard(future)

    def _run(self, job, args, on_done, on_error):
        try:   # the process trims compiled programs between jobs, never under this one (engine.compiled)
            with using_compiled():
                result = job(*args)
        except Exception as exc:  # the job failed or was cancelled: report it in the page, never as a traceback
            if isinstance(exc, FitCancelled):
                log.info("session %s: job cancelled%s: %s", self.session_id,
                         " (the session closed)" if self._closed else "", exc)
            else:
                log.info("session %s: job failed: %s", self.session_id, exc)
            if not self._closed:
                self._dispatch(partial(on_error, exc))
            raise
        if not self._closed:
            self._dispatch(partial(on_done, result))
        return result

    def post(self, callback: Callable[[], Any]) -> None:
        """Hand a callback to the session's event loop from any thread (e.g. progress from a job)."""
        if not self._closed:
            self._dispatch(callback)

    def shutdown(self, wait: bool = True) -> int:
        """Cancel queued jobs and stop the thread; returns how many of its threads are still alive.

        A job already running cannot be interrupted (JAX computations are not cancellable);
        its thread ends when the job does and its result is dropped.
        """
        with self._lock:
            self._closed = True
            busy = any(f.running() for f in self._pending)
        self._executor.shutdown(wait=wait and not busy, cancel_futures=True)
        alive = len(worker_threads(self.session_id))
        log.info("session %s closed: %d worker thread(s) still alive", self.session_id, alive)
        return alive
