"""Job: the base of view-models that run one kind of work in the session's worker.

One status vocabulary for every job (`STATUSES`), a message for the page and the phase of a
running job, `submit` to start the work with a fresh cancel flag, `report` for its progress,
`finish` (or a failure) to end it, `cancel` for the user and `shutdown` for the session's end
(called by the dashboard's one session-destroyed hook). Views watch `status`, `phase` and
`message`. The quick fit, the Bayesian fit and the fleet are Jobs; the stream is not (it runs
until stopped, with its own play/pause phases).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any, Callable

import param

import engine

from ..workers import SessionWorker

STATUSES = ("idle", "running", "done", "cancelled", "error")


class CancelFlag:
    """A job's cancel flag (`is_set()` as the engine's `cancel=` expects): set by the user, or by
    the session closing (its worker is closed)."""

    def __init__(self, worker: SessionWorker):
        self._event, self._worker = threading.Event(), worker

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set() or self._worker.closed


class Job(param.Parameterized):
    """A view-model whose work runs in the session's worker, one run at a time.

    `submit(work, ...)` sets status "running" with a message and runs `work(cancel)` in the
    worker, where `cancel` is the run's `CancelFlag`; then `on_done(result)` runs on the
    session's event loop (it sets the final status, usually with `finish`), or, when the work
    raised, status "error" with `failure_message(exc)`. Subclasses add their own parameters and
    results; they set status and message only through `_set`.
    """

    status = param.Selector(default="idle", objects=list(STATUSES), constant=True,
                            doc="idle, running, done, cancelled or error")
    message = param.String(default="", constant=True, doc="What the job is doing or how it ended")
    phase = param.String(default="", constant=True, doc="What a running job is doing now (empty otherwise)")

    def __init__(self, worker: SessionWorker, **params):
        super().__init__(**params)
        self.worker = worker
        self._cancel: CancelFlag | None = None
        self._run = 0   # which run's progress the page shows

    def _set(self, **values) -> None:
        with param.edit_constant(self):
            self.param.update(**values)

    @property
    def busy(self) -> bool:
        return self.status == "running"

    def submit(self, work: Callable[[CancelFlag], Any], *, message: str, on_done: Callable[[Any], None],
               **running) -> Future | None:
        """Start `work(cancel)` in the worker (None when a run is already going); `running` sets
        further parameters together with status and message."""
        if self.busy:
            return None
        self._cancel = cancel = CancelFlag(self.worker)
        self._run += 1
        self._set(status="running", message=message, **{"phase": "", **running})
        return self.worker.submit(work, cancel, on_done=on_done, on_error=self._failed)

    def report(self, **values) -> None:
        """From the work's thread: show its progress (phase, message, counts) on the session's event
        loop, unless the run has ended by then (a late report of a finished run is dropped)."""
        run = self._run
        self.post(lambda: self._set(**values) if self.busy and run == self._run else None)

    def refuse(self, message: str) -> None:
        """A run that cannot start: status "error" with the reason (the previous result is kept)."""
        self._set(status="error", phase="", message=message)

    def finish(self, status: str, message: str, **values) -> None:
        """End the run: status "done", "cancelled" or "error", with its message (and results)."""
        if status not in STATUSES[2:]:
            raise ValueError(f"a run ends as one of {STATUSES[2:]}, not {status!r}")
        self._set(status=status, phase="", message=message, **values)

    def failure_message(self, exc: BaseException) -> str:
        """The message shown when the work raised (subclasses say what failed, and where)."""
        return f"The job failed: {exc}"

    def _failed(self, exc: BaseException) -> None:
        if isinstance(exc, engine.FitCancelled):   # the work saw its cancel flag
            self.finish("cancelled", f"{exc}. The previous result (if any) is kept.")
        else:
            self.finish("error", self.failure_message(exc))

    def post(self, callback: Callable[[], Any]) -> None:
        """Run `callback` on the session's event loop (from the work's thread, e.g. progress)."""
        self.worker.post(callback)

    def cancel(self) -> None:
        """Ask a running job to stop (the work sees its flag set; how soon it stops is the work's)."""
        if self._cancel is not None:
            self._cancel.set()

    def shutdown(self) -> None:
        """The session ends: stop this job's work (its worker is closed right after)."""
        self.cancel()
