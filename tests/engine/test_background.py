"""engine.background: the exit hook stops and joins the engine's background work, so a process
that ends while a rejuvenation move, a stream runner or a fleet job runs exits cleanly.

Each case runs a real Python process that ends without `close()` or `stop()` (the registry's
`stop_all` cannot be undone, so it is never called in the test process itself).
The suite runs the exit-mid-move process once (each run is confirmed mid-move: one clean exit
proves the hook joined the move); `bench/exit_mid_move.py` runs it 20 times in a row
(STREAMSSM_EXIT_RUNS sets the count here too).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from engine import background

ROOT = Path(__file__).resolve().parents[2]
RUNS = int(os.environ.get("STREAMSSM_EXIT_RUNS", "1"))
HANG_GUARD_S = 600   # only so that a process that never ends fails the test instead of hanging it

# A stream whose 1000 posterior draws the data soon contradicts: the ESS collapses, a
# rejuvenation move starts on its thread, and the script ends while it runs (no close()).
EXIT_MID_MOVE = r"""
import numpy as np
import engine
engine.enable_compilation_cache()
spec = {"irregular": True, "level": {"kind": "local_level"}}
rng = np.random.default_rng(0)
y = 1000 + np.cumsum(rng.normal(0, 30, 40)) + rng.normal(0, 100, 40)
draws = {"sigma2.irregular": rng.uniform(50, 200, 1000) ** 2, "sigma2.level": rng.uniform(1, 5, 1000) ** 2}
online = engine.OnlineFilter.from_posterior(spec, draws, y)
for v in np.linspace(3000, 6000, 40):
    online.update(v)
    if online.rejuvenating:
        break
print("moving" if online.rejuvenating else "not moving", flush=True)
"""

# A paced stream over an endless source and a fleet job on a non-daemon thread, both running
# when the main thread ends: the hook stops the runner and cancels the job before Python
# joins the job's thread (else the exit would wait for all 64 batches).
EXIT_MID_JOBS = r"""
import itertools, threading, time
import numpy as np
import engine
spec = {"irregular": True, "level": {"kind": "local_level"}}
online = engine.OnlineFilter(spec, {"sigma2.irregular": 1.0, "sigma2.level": 0.1},
                             rejuvenation=engine.RejuvenationConfig(automatic=False))
seen = threading.Event()
runner = engine.StreamRunner(online, (float(i % 7) for i in itertools.count()), rate=200)
runner.subscribe(lambda message: seen.set())
runner.start()
Y = np.cumsum(np.random.default_rng(1).normal(size=(64, 30)), axis=1)
started = threading.Event()
def fit():
    try:
        engine.fit_many(spec, Y, method="mle", batch_size=1, progress=lambda done, total: started.set())
        print("fleet finished", flush=True)
    except engine.FleetCancelled as err:
        print("fleet cancelled:", err, flush=True)
job = threading.Thread(target=fit)   # not a daemon: Python joins it at exit
job.start()
assert seen.wait(300) and started.wait(300)
print("running:", sorted(set(engine.background.running())), flush=True)
"""


def run_script(code: str, cache: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               STREAMSSM_JAX_CACHE=str(cache), JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=HANG_GUARD_S)


def test_a_process_that_ends_mid_move_exits_cleanly(tmp_path):
    """Without the hook, 134 (a forced unwind through XLA) or 139 in most runs."""
    outcomes = []
    for _ in range(RUNS):   # the later runs load the compiled programs from the on-disk cache
        done = run_script(EXIT_MID_MOVE, tmp_path / "cache")
        outcomes.append((done.returncode, done.stdout.strip(), done.stderr[-2000:]))
    assert [o[:2] for o in outcomes] == [(0, "moving")] * RUNS, outcomes


def test_a_process_that_ends_mid_stream_and_mid_fleet_stops_both_and_exits_cleanly(tmp_path):
    done = run_script(EXIT_MID_JOBS, tmp_path / "cache")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "running: ['fit_many', 'stream-engine', 'stream-source']", done.stdout
    assert lines[1].startswith("fleet cancelled: cancelled after"), done.stdout   # not all 64 series
    assert "Traceback" not in done.stderr, done.stderr[-3000:]


def test_registered_work_is_listed_while_it_runs_and_its_flag_follows_the_callers():
    release = threading.Event()
    thread = background.start_thread(lambda: release.wait(60), name="test-waiter", stop=release.set)
    caller = threading.Event()
    with background.job("test-job", caller) as flag:
        assert {"test-waiter", "test-job"} <= set(background.running())
        assert not flag.is_set()
        caller.set()
        assert flag.is_set() and not flag.by_exit
    assert "test-job" not in background.running()
    release.set()
    thread.join(HANG_GUARD_S)
    assert "test-waiter" not in background.running()


def test_the_exit_hook_is_installed_once_and_before_atexit_handlers():
    # Python runs these before joining non-daemon threads, and before every atexit handler
    if not hasattr(threading, "_register_atexit"):   # pragma: no cover
        pytest.skip("this Python has no thread-shutdown hooks")
    hooks = [h for h in threading._threading_atexits if getattr(h, "func", h) is background._at_exit]
    assert len(hooks) == 1
