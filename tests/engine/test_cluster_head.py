"""The private local Ray is started from a single-threaded helper process, so a process with
threads (a server, JAX) never forks for it: JAX's warning that `os.fork()` was called in its
multi-threaded process does not appear; a helper that dies is reported and the next job starts
another (the process lives on); the helper and its cluster end when the process disconnects."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = r"""
import os, threading, time, warnings
import numpy as np
import psutil
import jax.numpy as jnp
import engine
from engine import cluster

warnings.simplefilter("always")
jnp.ones(3).block_until_ready()          # JAX's backends (and its threads) are up, as in a server
threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
spec = {"irregular": True, "level": {"kind": "local_level"}}
params = {n: 1.0 for n in engine.param_names(spec)}
Y = np.arange(40.0).reshape(2, 20)
ray_table = engine.fit_many(spec, Y, method="filter", backend="ray", params=params).table
local_table = engine.fit_many(spec, Y, method="filter", params=params).table
assert np.allclose(ray_table["loglik"], local_table["loglik"], rtol=1e-12, atol=0)
names = {p.name() for p in psutil.Process().children(recursive=True)}
assert {"gcs_server", "raylet"} <= names, names
# a helper that dies is reported and replaced, and this process lives on (Ray's own client would
# end it once its lost cluster stays away past the reconnect timeout)
helper, = [p for p in psutil.Process().children() if "--head" in p.cmdline()]
helper.kill()
deadline = time.monotonic() + 60
while cluster._state["head"] is not None and time.monotonic() < deadline:
    time.sleep(0.5)
assert cluster._state["head"] is None, "the dead helper was not noticed"
time.sleep(float(os.environ["RAY_gcs_rpc_server_reconnect_timeout_s"]) + 5)
again = engine.fit_many(spec, Y, method="filter", backend="ray", params=params).table
assert np.allclose(again["loglik"], local_table["loglik"], rtol=1e-12, atol=0)
cluster.shutdown()
deadline = time.monotonic() + 30
while psutil.Process().children(recursive=True) and time.monotonic() < deadline:
    time.sleep(0.5)
left = [p.name() for p in psutil.Process().children(recursive=True)]
assert not left, left
print("clean")
"""


@pytest.mark.timeout(600)
def test_local_ray_starts_without_forking_this_process():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["RAY_gcs_rpc_server_reconnect_timeout_s"] = "10"   # Ray's grace period for a lost cluster, shortened
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=540)
    out = done.stdout + done.stderr
    assert done.returncode == 0 and "clean" in done.stdout, out[-4000:]
    assert "os.fork() was called" not in out, out[-4000:]
    assert "the local Ray stopped" in out, out[-4000:]
