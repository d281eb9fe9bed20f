"""fit_many on a real local Ray cluster: a head and a second worker node, both on 127.0.0.1.

The cluster is started once for the module with `ray start` (small --num-cpus, a temporary
--temp-dir, dashboard off) and its processes are killed by pid at the end: only the
processes of this cluster, never every Ray on the machine. (Ray resolves a multi-node
cluster's 127.0.0.1 to the machine's outward address, so only the single-node Ray that
`fit_many` starts itself can be, and is checked to be, bound to loopback only.)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

import engine
from engine import cluster

pytestmark = pytest.mark.ray

SPEC = {"irregular": True, "level": {"kind": "local_level"},
        "seasonal": [{"period": 6, "form": "trig", "harmonics": 1, "stochastic": True}]}
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    """No stray RAY_ADDRESS; the two nodes agree on authentication (off for this throwaway cluster)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "disabled"
    return env


def _cluster_processes(temp_dir: str, port: int | None = None) -> list[psutil.Process]:
    """This cluster's processes: those naming its temp dir or its head's port (the Ray client
    server names only the head's address), and all their descendants."""
    roots = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmdline = " ".join(p.info["cmdline"] or [])
            if temp_dir in cmdline or (port is not None and "ray" in cmdline and f":{port} " in cmdline + " "):
                roots.append(p)
        except psutil.Error:
            continue
    found = {p.pid: p for p in roots}
    for p in roots:
        try:
            found.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.Error:
            continue
    return list(found.values())


def _ray_start(command: list[str], temp_dir: str, attempts: int = 3) -> None:
    """`ray start`, again when its raylet missed Ray's fixed start-up deadlines (a busy machine);
    a failed head's processes are killed before the next try."""
    for attempt in range(attempts):
        done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=180)
        if done.returncode == 0:
            return
        if "--head" in command:
            for p in _cluster_processes(temp_dir):
                try:
                    p.kill()
                except psutil.Error:
                    pass
    raise RuntimeError(f"{' '.join(command[:3])} failed {attempts} times:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    temp_dir = str(tmp_path_factory.mktemp("ray"))
    port = _free_port()
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    try:
        _ray_start([RAY, "start", "--head", f"--port={port}", "--include-dashboard=false",
                    f"--temp-dir={temp_dir}", *common], temp_dir)
        _ray_start([RAY, "start", f"--address=127.0.0.1:{port}", f"--temp-dir={temp_dir}", *common], temp_dir)
        yield {"address": f"127.0.0.1:{port}", "temp_dir": temp_dir}
    finally:
        cluster.shutdown()
        for p in _cluster_processes(temp_dir, port):
            try:
                p.kill()
            except psutil.Error:
                pass


@pytest.fixture(scope="module")
def fleet():
    fl = engine.make_fleet(12, 60, seed=7, period=6)
    Y = fl.Y.copy()
    Y[4] = np.nan                      # a series with no data fails alone
    return Y


@pytest.fixture(scope="module")
def local_table(fleet):
    return engine.fit_many(SPEC, fleet, method="mle", batch_size=3).table


def _assert_same_table(a, b, rtol=1e-12):
    assert list(a.columns) == list(b.columns)
    assert (a["series"] == b["series"]).all() and (a["status"] == b["status"]).all()
    num = a.select_dtypes("number").columns
    np.testing.assert_allclose(a[num].to_numpy(float), b[num].to_numpy(float), rtol=rtol, atol=0)


def test_ray_table_equals_local_and_single_series(ray_cluster, fleet, local_table):
    done = []
    res = engine.fit_many(SPEC, fleet, method="mle", batch_size=3, backend="ray", address=ray_cluster["address"],
                          progress=lambda d, t: done.append((d, t)))
    _assert_same_table(res.table, local_table)
    assert done[-1] == (12, 12) and len(done) == 4
    assert res.table.loc[4, "status"] == "failed" and "no observations" in res.table.loc[4, "message"]
    for i in (0, 7):   # the fitted log-likelihood is the single-series one at the fitted parameters
        row = res.table.iloc[i]
        params = {n: row[n] for n in engine.param_names(SPEC)}
        assert row["loglik"] == pytest.approx(float(engine.loglik(SPEC, params, fleet[i])), rel=1e-9)


def test_killed_worker_is_retried_with_the_same_results(ray_cluster, fleet, local_table):
    killed, finished = [], threading.Event()

    def kill_a_running_task():
        """Kill the first worker of this cluster seen running a task (process title ray::_call)."""
        while not finished.is_set() and not killed:
            for p in _cluster_processes(ray_cluster["temp_dir"]):
                try:
                    if p.cmdline()[:1] == ["ray::_call"]:
                        p.kill()
                        killed.append(p.pid)
                        return
                except psutil.Error:
                    continue
            finished.wait(0.02)

    killer = threading.Thread(target=kill_a_running_task)
    killer.start()
    try:
        res = engine.fit_many(SPEC, fleet, method="mle", batch_size=3, backend="ray",
                              address=ray_cluster["address"])
    finally:
        finished.set()
        killer.join()
    assert killed, "no running task was seen to kill"
    _assert_same_table(res.table, local_table)


def test_local_ray_listens_on_loopback_only(ray_cluster):
    """backend="ray" without an address starts its own Ray, bound to 127.0.0.1, even with a stray RAY_ADDRESS."""
    params = {n: 1.0 for n in engine.param_names(SPEC)}
    Y = np.arange(40.0).reshape(2, 20)
    saved = os.environ.get("RAY_ADDRESS")
    os.environ["RAY_ADDRESS"] = ray_cluster["address"]
    try:
        res = engine.fit_many(SPEC, Y, method="filter", backend="ray", params=params)
        import ray

        ours = [psutil.Process(os.getpid())] + psutil.Process(os.getpid()).children(recursive=True)
        session = ray._private.worker._global_node.get_session_dir_path()
        assert ray_cluster["temp_dir"] not in session   # not the cluster RAY_ADDRESS named
        listening = []
        for p in ours + _cluster_processes(session):
            try:
                listening += [c.laddr for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
            except psutil.Error:
                continue
    finally:
        cluster.shutdown()
        if saved is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = saved
    local = engine.fit_many(SPEC, Y, method="filter", params=params).table
    np.testing.assert_allclose(res.table["loglik"], local["loglik"], rtol=1e-12)
    assert listening
    assert all(addr.ip in ("127.0.0.1", "::1", "::ffff:127.0.0.1") for addr in listening), listening


@pytest.mark.timeout(120)
def test_unreachable_address_fails_clearly():
    port = _free_port()   # nothing listens there
    with pytest.raises(ConnectionError, match=f"cannot reach a Ray cluster at 127.0.0.1:{port}"):
        engine.fit_many(SPEC, np.ones((2, 20)), backend="ray", address=f"127.0.0.1:{port}")


def test_local_ray_outlives_the_thread_that_started_it():
    """A local Ray belongs to the process, not to the job that first needed it. Its GCS server and
    raylet die with the thread that spawned them (Linux's parent-death signal follows the thread),
    and the process's Ray client then ends the whole process a minute later; so they must survive
    a job's thread that ends, as a closed browser session's worker does. While a job holds the
    connection, a job for another cluster is refused instead of disconnecting it."""
    params = {n: 1.0 for n in engine.param_names(SPEC)}
    Y = np.arange(40.0).reshape(2, 20)
    first = []
    try:
        job = threading.Thread(target=lambda: first.append(
            engine.fit_many(SPEC, Y, method="filter", backend="ray", params=params)))
        job.start()
        job.join()
        assert first, "the job in its own thread did not finish"
        time.sleep(2.0)   # the parent-death signal is immediate
        ray_services = [p for p in psutil.Process().children(recursive=True)
                        if p.name() in ("gcs_server", "raylet")]
        assert {p.name() for p in ray_services} == {"gcs_server", "raylet"}
        assert all(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in ray_services)
        again = engine.fit_many(SPEC, Y, method="filter", backend="ray", params=params)
        np.testing.assert_array_equal(again.table["loglik"], first[0].table["loglik"])
        with cluster.connected(None):
            with pytest.raises(RuntimeError, match="running a job on the local Ray"):
                cluster.connect(f"127.0.0.1:{_free_port()}")
    finally:
        cluster.shutdown()
