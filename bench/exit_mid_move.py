"""A script that ends while a rejuvenation move runs exits cleanly, N times in a row (default 20).

The test suite runs the same script (tests/engine/test_background.py, EXIT_MID_MOVE) once; this
repeats it in fresh processes, the later runs loading the compiled programs from an on-disk
cache as a user's would, and prints each exit status. Without the engine's exit hook most runs
end with 134 (a forced unwind through XLA) or 139.

    python bench/exit_mid_move.py [--runs N]

There is no peer: the outcome is a count of clean exits, which must equal N.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.engine.test_background import EXIT_MID_MOVE, run_script  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    runs = parser.parse_args().runs
    outcomes = collections.Counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(runs):
            t0 = time.perf_counter()
            done = run_script(EXIT_MID_MOVE, Path(tmp) / "cache")
            outcome = (done.returncode, done.stdout.strip())
            outcomes[outcome] += 1
            print(f"run {i + 1:2d}: exit {done.returncode}, {done.stdout.strip()!r}, {time.perf_counter() - t0:.1f} s",
                  flush=True)
            if outcome != (0, "moving"):
                print(done.stderr[-2000:], file=sys.stderr)
    clean = outcomes[(0, "moving")]
    print(f"clean exits mid-move: {clean} of {runs}; load average {os.getloadavg()[0]:.1f}")
    return 0 if clean == runs else 1


if __name__ == "__main__":
    sys.exit(main())
