"""Compiled programs of a long-lived process: kept on disk across processes, and kept under
the kernel's limit on one process's memory mappings.

Each program XLA compiles for the CPU lives in memory mappings of its own (about three per
program), and JAX keeps every program it has compiled in its caches for the life of the
process. A server that fits many models, or a long test run, can so reach the kernel's limit
on one process's mappings (`vm.max_map_count`, 65530 by default). The next compilation then
aborts the whole process ("LLVM ERROR: Unable to allocate section memory"), however much
memory is free. `trim_compiled` empties JAX's caches once the process is past a fraction of
that limit; a program dropped that way is compiled again on its next use.

Trimming is decided here once for the whole process, never by one job on its own: a job that
runs compiled programs does so inside `using_compiled()`, and the caches are emptied only
while no such job runs (between jobs), so a job never loses its programs half-way and then
compiles them again. The last job to leave trims when the process is past the fraction; once
it is past `URGENT_FRACTION`, new jobs wait until the running ones have left and the caches
are emptied, so a busy process cannot put the trim off until it aborts.
"""

from __future__ import annotations

import gc
import os
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

import jax

__all__ = [
    "mapping_count", "mapping_limit", "on_trim", "TRIM_FRACTION", "URGENT_FRACTION", "trim_compiled",
    "using_compiled", "jobs_using_compiled", "enable_compilation_cache",
]


_MAPS = "/proc/self/maps"
_LIMIT = "/proc/sys/vm/max_map_count"


def mapping_count() -> int | None:
    """How many memory mappings this process has (None where the OS does not say)."""
    try:
        with open(_MAPS, "rb") as f:
            return f.read().count(b"\n")
    except OSError:
        return None


def mapping_limit() -> int | None:
    """The kernel's limit on one process's memory mappings (None where the OS does not say)."""
    try:
        with open(_LIMIT) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


_CLEARERS: list[Callable[[], None]] = []


def on_trim(clear: Callable[[], None]) -> None:
    """Register `clear` to empty a cache of the engine's own that holds compiled programs
    (ahead-of-time executables JAX's caches do not know about); `trim_compiled` calls it."""
    _CLEARERS.append(clear)


TRIM_FRACTION = 0.5     # past this share of the mapping limit, the caches are emptied between jobs
URGENT_FRACTION = 0.8   # past this share, new jobs wait for the running ones to leave, then the trim


def _past(fraction: float) -> bool:
    count, limit = mapping_count(), mapping_limit()
    return count is not None and limit is not None and count > fraction * limit


class _Jobs:
    """The process's jobs that run compiled programs, and whether a trim waits for them to leave."""

    def __init__(self):
        self.changed = threading.Condition()
        self.running = 0            # jobs inside `using_compiled` (outermost entries)
        self.trim_waiting = False   # a trim was asked for while jobs ran: the last one to leave does it
        self.depth = threading.local()


_JOBS = _Jobs()


def _drop_all() -> None:
    for clear in _CLEARERS:
        clear()
    jax.clear_caches()
    gc.collect()


def trim_compiled(fraction: float = TRIM_FRACTION) -> bool:
    """Drop JAX's compiled programs, and the engine's own (`on_trim`), when this process holds
    more than `fraction` of the mappings it may have; True when they were dropped now.

    While a job runs inside `using_compiled()` nothing is dropped under it: the trim is left to
    the last job to leave (False here). Safe from any thread."""
    if not _past(fraction):
        return False
    with _JOBS.changed:
        if _JOBS.running:
            _JOBS.trim_waiting = True
            return False
        _drop_all()
        _JOBS.trim_waiting = False
        _JOBS.changed.notify_all()
    return True


@contextmanager
def using_compiled(fraction: float = TRIM_FRACTION) -> Iterator[None]:
    """Run a job that uses compiled programs: none of them is dropped while it runs.

    On leaving, the last running job empties the caches when the process holds more than
    `fraction` of its mappings (or a trim was asked for meanwhile). A job entering while a
    trim waits, with the process past `URGENT_FRACTION`, waits for that trim first. Re-entrant
    on one thread (a job that starts another inside itself does not wait for itself).
    """
    depth = getattr(_JOBS.depth, "n", 0)
    if depth == 0:
        with _JOBS.changed:
            while _JOBS.trim_waiting and _JOBS.running and _past(URGENT_FRACTION):
                _JOBS.changed.wait()
            _JOBS.running += 1
    _JOBS.depth.n = depth + 1
    try:
        yield
    finally:
        _JOBS.depth.n = depth
        if depth == 0:
            with _JOBS.changed:
                _JOBS.running -= 1
                if _JOBS.running == 0 and (_JOBS.trim_waiting or _past(fraction)):
                    _drop_all()
                    _JOBS.trim_waiting = False
                _JOBS.changed.notify_all()


def jobs_using_compiled() -> int:
    """How many jobs run inside `using_compiled()` now."""
    with _JOBS.changed:
        return _JOBS.running


def enable_compilation_cache() -> None:
    """Keep compiled programs on disk so a new process does not recompile the same model.

    A process-wide JAX setting, so it is switched on by whoever owns the process (the app's
    server start, the command line, a Ray task of ours, the test suite), never by importing
    the engine. STREAMSSM_JAX_CACHE sets the folder ("0" turns it off); a cache the user
    configured wins.
    """
    where = os.environ.get("STREAMSSM_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "streamssm", "jax"))
    if where == "0" or jax.config.jax_compilation_cache_dir:
        return
    try:
        os.makedirs(where, exist_ok=True)
    except OSError:
        return
    jax.config.update("jax_compilation_cache_dir", where)
    # every program, the small ones too: a fit's eager slices and reshapes are about 24 of its 28
    # programs, each a fraction of a second to compile (more on a busy machine), and a fresh
    # process that reads its large programs from disk would otherwise compile them all again
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

