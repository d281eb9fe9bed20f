"""The cores this process may use: how many threads the fits (NUTS chains, fleet batches) run at once."""

from __future__ import annotations

import os

__all__ = [
    "usable_cores",
]


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not on Linux
        return os.cpu_count() or 1
