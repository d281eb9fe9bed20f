"""The on-disk compilation cache holds every program of a fit, the small ones too: a second
fresh process doing the same fit reads every program it asks for from disk."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIT = """
from collections import Counter
import numpy as np
from jax import monitoring
import engine
events = Counter()
monitoring.register_event_listener(lambda name, **kw: events.update([name]))
engine.enable_compilation_cache()
y = np.cumsum(np.random.default_rng(3).normal(size=30)) + np.random.default_rng(4).normal(size=30)
spec = {"irregular": True, "level": {"kind": "local_level"}}
fit = engine.fit_mle(spec, y)
engine.smooth(spec, fit.params, y)
print(events["/jax/compilation_cache/compile_requests_use_cache"], events["/jax/compilation_cache/cache_hits"])
"""


def _fit_in_a_fresh_process(cache: Path) -> tuple[int, int]:
    """(programs asked of the cache, programs read from it) in a fresh process's fit."""
    env = dict(os.environ, STREAMSSM_JAX_CACHE=str(cache), JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", FIT], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=600, check=True)
    asked, read = map(int, out.stdout.strip().splitlines()[-1].split())
    return asked, read


def test_a_second_process_reads_every_program_from_disk(tmp_path):
    cache = tmp_path / "jax-cache"
    asked, read = _fit_in_a_fresh_process(cache)
    # the fit's large programs and the small ones beside them (a program asked for twice in this
    # process may already come from the entry it wrote itself)
    assert asked >= 5 and read < asked
    assert _fit_in_a_fresh_process(cache) == (asked, asked)
