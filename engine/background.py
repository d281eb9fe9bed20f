"""The engine's background work, stopped and waited for in one place when the process ends.

Every piece of engine work that can outlive the call that started it registers here while it
runs: threads of the engine's own (a rejuvenation move, a stream runner's two threads, the
thread that owns Ray) through `start_thread`, and cancellable jobs that run on whatever thread
called them (`fit_nuts`, `fit_many`, an app's warm-up) through `job`. One exit hook, installed
once when this module is imported, asks all of them to stop and waits for them.

Why an exit hook is needed: a daemon thread that is still inside an XLA computation when the
interpreter finalises is ended by a forced unwind through XLA's C++ frames, and the process
aborts ("terminate called after throwing an instance of ''", exit status 134, or 139), after
JAX's own exit handler has already cleared the backends under it. The hook runs where Python
runs the exit hooks of its own thread pools (`threading._register_atexit`): after the main
thread's code, before non-daemon threads are joined, before every `atexit` handler (JAX's
included). So a cancellable job running on an executor's thread is cancelled instead of
waited for to its end, and no engine thread is left inside JAX when teardown starts. Once
the hook has run, `start_thread` refuses new work (`ShuttingDown`).

Work is held by weak reference to the thread or by a registration that ends with the job,
so the registry never keeps a finished stream or filter alive.
"""

from __future__ import annotations

import atexit
import sys
import threading
import time
import weakref
from contextlib import contextmanager
from typing import Callable, Iterator

__all__ = ["ShuttingDown", "JobFlag", "start_thread", "job", "running", "stop_all", "shutting_down",
           "EXIT_NOTICE_S"]

# an exit that waits longer than this for background work says what it waits for, on stderr
EXIT_NOTICE_S = 2.0


class ShuttingDown(RuntimeError):
    """The process is ending (`stop_all` has run): no new background work starts."""


class _Work:
    """One registered piece of work: its name, how to ask it to stop, how to wait for it."""

    __slots__ = ("name", "stop", "wait", "last", "__weakref__")

    def __init__(self, name: str, stop: Callable[[], None], wait: Callable[[float | None], bool], last: bool):
        self.name, self.stop, self.wait, self.last = name, stop, wait, last


_lock = threading.Lock()
_threads: "weakref.WeakKeyDictionary[threading.Thread, _Work]" = weakref.WeakKeyDictionary()
_jobs: set[_Work] = set()
_stopping = threading.Event()


def shutting_down() -> bool:
    """True once `stop_all` has run (the process is ending)."""
    return _stopping.is_set()


def start_thread(target: Callable[[], None], *, name: str, stop: Callable[[], None],
                 last: bool = False) -> threading.Thread:
    """Start `target` on a daemon thread that the exit hook stops (`stop()`: a signal that the
    target checks between pieces of JAX work; it must not block) and joins. `last`: stopped
    only after every other piece of work has ended (what the others use, e.g. the Ray owner).
    Raises `ShuttingDown` once the process is ending."""
    thread = threading.Thread(target=target, name=name, daemon=True)

    def wait(timeout):
        thread.join(timeout)
        return not thread.is_alive()

    with _lock:
        if _stopping.is_set():
            raise ShuttingDown(f"the process is ending: {name} is not started")
        _threads[thread] = _Work(name, stop, wait, last)
        thread.start()
    return thread


class JobFlag:
    """The cancel flag a registered job checks (`is_set()`, as the engine's `cancel=` expects):
    set when the caller's own flag is, or when the process is ending."""

    def __init__(self, cancel=None):
        self._cancel, self._exit = cancel, threading.Event()

    def set(self) -> None:
        self._exit.set()

    def is_set(self) -> bool:
        return self._exit.is_set() or (self._cancel is not None and bool(self._cancel.is_set()))

    @property
    def by_exit(self) -> bool:
        """True when the flag was set by the process ending (not by the caller)."""
        return self._exit.is_set()


@contextmanager
def job(name: str, cancel=None) -> Iterator[JobFlag]:
    """Register the calling thread's cancellable work for the duration of the block; yields the
    `JobFlag` to check instead of `cancel`. The exit hook sets the flag and waits for the block
    to end (the thread itself may be a pool's, which lives on)."""
    flag, ended = JobFlag(cancel), threading.Event()
    work = _Work(name, flag.set, ended.wait, False)
    with _lock:
        if _stopping.is_set():
            flag.set()   # the job sees a cancelled flag at its first check
        _jobs.add(work)
    try:
        yield flag
    finally:
        with _lock:
            _jobs.discard(work)
        ended.set()


def running() -> list[str]:
    """Names of the registered work still running (threads alive, jobs not ended)."""
    with _lock:
        return [w.name for t, w in list(_threads.items()) if t.is_alive()] + [w.name for w in _jobs]


def _live() -> list[_Work]:
    with _lock:
        return [w for t, w in list(_threads.items()) if t.is_alive()] + list(_jobs)


def stop_all(timeout: float | None = None, notice: Callable[[str], None] | None = None) -> list[str]:
    """Ask every piece of background work to stop, wait for it (the `last` ones after the rest),
    and refuse new threads from now on. Returns the names of work still running after `timeout`
    seconds (None: wait as long as it takes; each piece stops at its next check, after the JAX
    computation it is in). `notice(text)` is told once, after `EXIT_NOTICE_S`, what it waits for."""
    _stopping.set()
    deadline = None if timeout is None else time.monotonic() + timeout
    told = [False]
    started = time.monotonic()

    def wait_for(works: list[_Work]) -> None:
        for w in works:
            try:
                w.stop()
            except Exception:   # noqa: BLE001 (a stop that fails must not keep the others running)
                pass
        for w in works:
            while True:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                step = EXIT_NOTICE_S if left is None else min(left, EXIT_NOTICE_S)
                if w.wait(step) or (left is not None and left <= step):
                    break
                if notice is not None and not told[0] and time.monotonic() - started >= EXIT_NOTICE_S:
                    told[0] = True
                    notice("waiting for background work to finish its current step: "
                           + ", ".join(sorted(set(x.name for x in _live()))))

    works = _live()
    wait_for([w for w in works if not w.last])
    wait_for([w for w in _live() if w.last])
    return [w.name for w in _live()]


def _at_exit() -> None:
    stop_all(notice=lambda text: print(f"streamssm: {text}", file=sys.stderr, flush=True))


# Before non-daemon threads are joined and before every atexit handler (see the module
# docstring); `atexit` where the interpreter has no such hook.
_register = getattr(threading, "_register_atexit", None)
if _register is not None:
    _register(_at_exit)
else:   # pragma: no cover
    atexit.register(_at_exit)
