"""Keep the number of compiled programs a long-lived process holds under the kernel's limit.

Each program XLA compiles for the CPU lives in memory mappings of its own (about three per
program), and JAX keeps every program it has compiled in its caches for the life of the
process. A server that fits many models, or a long test run, can so reach the kernel's limit
on one process's mappings (`vm.max_map_count`, 65530 by default). The next compilation then
aborts the whole process ("LLVM ERROR: Unable to allocate section memory"), however much
memory is free. `trim_compiled` empties JAX's caches once the process is past a fraction of
that limit; a program dropped that way is compiled again on its next use.
"""

from __future__ import annotations

import gc
from typing import Callable

import jax

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


def trim_compiled(fraction: float = 0.5) -> bool:
    """Drop JAX's compiled programs, and the engine's own (`on_trim`), when this process
    holds more than `fraction` of the mappings it may have; True when it did. Safe from any
    thread: a program running now keeps its own reference, later calls compile again."""
    count, limit = mapping_count(), mapping_limit()
    if count is None or limit is None or count <= fraction * limit:
        return False
    for clear in _CLEARERS:
        clear()
    jax.clear_caches()
    gc.collect()
    return True

