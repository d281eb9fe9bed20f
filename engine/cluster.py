"""The Ray backend: the only module that imports ray.

`connect` joins a cluster (a local one bound to 127.0.0.1 by default); `run_batches` runs
one task per batch (many series each), with the shared inputs put in the object store once,
results taken in completion order with `ray.wait`, worker deaths retried (tasks are
deterministic, so a retry gives the same result), progress reported as batches finish and
cancellation by `ray.cancel`. Exceptions raised by a task are not retried: they are returned
in the batch's place, so only that batch's series fail.

A Ray connection is process-wide: it belongs to the process, not to a job or to the thread
that happened to need it first. A local Ray is started once, by the first job that needs it,
and stopped only by `shutdown` (a server's unload hook) or at exit (by the exit hook of
`engine.background`, once every job has ended); a job only cancels its own tasks. Ray starts a local cluster's GCS server and raylet with a parent-death signal, and on
Linux the "parent" is the thread that started them, not the process: started from a job's
thread (a browser session's worker, ended with its session), the cluster was killed with that
thread, and a minute later the process's own Ray client gave up and ended the whole process.
So Ray is started and stopped on `_OWNER`, one thread that lives as long as the process.
While a job runs on one cluster, a job asking for another is refused (one process joins one
Ray at a time), never allowed to disconnect the first.

A local Ray is not started inside this process: Ray starts its GCS server and raylet with a
`fork` that runs Python in the child, unsafe (and warned about) in a process with threads, as
a server always is. `_LocalHead` starts them from a small single-threaded helper process
(`ray start --head --block`, bound to 127.0.0.1), which this process then joins by address. The
helper ends with the owner thread (a parent-death signal) and stops its cluster as it ends; a
helper that dies meanwhile is reported (logged, and the next job starts a new one).
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

from .background import shutting_down, start_thread
from .bayes import FitCancelled
from .compiled import enable_compilation_cache, using_compiled

__all__ = [
    "CONNECT_TIMEOUT_S", "Cancelled", "connect", "connected", "shutdown", "run_batches",
]


CONNECT_TIMEOUT_S = 10.0   # probing a given address, and ray.init's own wait for the cluster
LOCAL_START_ATTEMPTS = 3   # a local Ray whose raylet did not register in time is started again
WORKER_ENV = {
    "XLA_PYTHON_CLIENT_PREALLOCATE": "false",   # JAX in a worker takes GPU memory as it needs it
    "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.25",
    "JAX_ENABLE_X64": "1",
}

HEAD_START_TIMEOUT_S = 180.0   # a busy machine takes its time to start a local Ray's GCS server and raylet
RAYLET_REGISTER_S = 120.0     # how long the helper waits for its raylet to register (Ray's own wait: 30 s)
HEAD_STOP_TIMEOUT_S = 20.0     # the helper stops its cluster on SIGTERM; past this it is killed

log = logging.getLogger("streamssm.ray")

_lock = threading.Lock()
_state: dict[str, Any] = {"started_here": False, "address": None, "jobs": 0, "head": None}


class _Owner:
    """The thread that starts and stops Ray for this process, alive until the process ends.

    A daemon that outlives every job and session. The process's exit hook (`engine.background`)
    stops it after every job has ended: it disconnects (stopping a local Ray it started) and
    ends."""

    def __init__(self):
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()

    def call(self, fn: Callable[[], Any]) -> Any:
        """fn() on the owner thread (started on first use); its result or its exception here."""
        if threading.current_thread() is self._thread:
            return fn()
        with self._start:
            if self._thread is None:
                self._thread = start_thread(self._serve, name="ray-owner", stop=self._stop, last=True)
        done: Future = Future()
        self._calls.put((fn, done))
        return done.result()

    def _stop(self) -> None:
        """Disconnect after the calls queued so far, then end the thread (does not wait)."""
        self._calls.put(None)

    def _serve(self) -> None:
        while True:
            try:
                item = self._calls.get(timeout=1.0)
            except queue.Empty:
                _watch_head()
                continue
            if item is None:
                _disconnect()
                return
            fn, done = item
            try:
                done.set_result(fn())
            except BaseException as err:   # handed to the caller, whatever it is
                done.set_exception(err)


_OWNER = _Owner()


class Cancelled(FitCancelled):
    """`run_batches` was cancelled; `finished` maps batch index → result for the batches that had finished."""

    def __init__(self, message: str, finished: dict):
        super().__init__(message)
        self.finished = finished


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of "host:port" or "ray://host:port"; None when there is no port to probe."""
    rest = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def _probe(address: str, timeout: float) -> None:
    """Fail fast, with a clear message, when nothing answers at the address."""
    hp = _host_port(address)
    if hp is None:
        raise ValueError(f"Ray address {address!r} is not of the form host:port (or ray://host:port, or 'auto')")
    try:
        with socket.create_connection(hp, timeout=timeout):
            pass
    except OSError as err:
        raise ConnectionError(f"cannot reach a Ray cluster at {address} within {timeout:g} s ({err}); "
                              "is `ray start --head` running there, and is the port right?") from None


LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}   # Ray then takes 127.0.0.1 as this node's address


def _loopback_only() -> None:
    """Make Ray bind its servers to 127.0.0.1, not to every interface.

    Ray resolves a node address of 127.0.0.1 to the machine's outward address unless it
    runs without cluster support; that switch is an environment variable read when ray is
    imported (and a module constant afterwards), which the processes it spawns inherit.
    """
    os.environ.update(LOOPBACK_ENV)
    import ray._private.ray_constants as constants

    constants.ENABLE_RAY_CLUSTER = False


def _token_authentication() -> None:
    """Token authentication for a local Ray, as `ray.init` gives the Ray it starts itself, unless
    RAY_AUTH_MODE says otherwise: this process and the head it starts (which inherits the mode
    from the environment) agree on it, and the token is created where there is none."""
    from ray._private.authentication.authentication_token_setup import (
        enable_token_auth_by_default, ensure_token_if_auth_enabled)

    enable_token_auth_by_default()
    ensure_token_if_auth_enabled(None, create_token_if_missing=True)


def connect(address: str | None = None, *, num_cpus: int | None = None, timeout: float = CONNECT_TIMEOUT_S):
    """Connect this process to Ray.

    address=None starts a local Ray bound to 127.0.0.1 with the dashboard off, ignoring any
    RAY_ADDRESS in the environment; "auto" joins the cluster RAY_ADDRESS (or the local
    `ray start`) names; "host:port" joins that cluster, after checking within `timeout`
    seconds that something answers there. Reuses a connection to the same place; another
    place replaces it only while no job runs on it (else a RuntimeError says so).
    """
    return _connect(address, num_cpus, timeout, hold=False)


def _connect(address: str | None, num_cpus: int | None, timeout: float, hold: bool):
    """`connect`; with hold=True, also count one more job on the connection (under the same lock,
    so no other job can replace the connection in between)."""
    import ray

    with _lock:
        wanted = address or "local"
        if ray.is_initialized() and _state["address"] != wanted:
            if _state["jobs"]:
                raise RuntimeError(f"this process is running a job on {_describe(_state['address'])}; one "
                                   f"process joins one Ray at a time, so {_describe(wanted)} can be used once "
                                   "that job has finished (or use the same cluster)")
            _OWNER.call(_disconnect)
        if not ray.is_initialized():
            _OWNER.call(lambda: _init(ray, address, timeout, num_cpus))
        if hold:
            _state["jobs"] += 1
        return ray


def _describe(where: str) -> str:
    return "the local Ray" if where == "local" else f"the Ray cluster at {where}"


def _init(ray, address: str | None, timeout: float, num_cpus: int | None):
    """ray.init on the owner thread (see the module docstring)."""
    wanted = address or "local"
    runtime_env = {"env_vars": dict(WORKER_ENV)}
    if address is None:
        _loopback_only()
        _token_authentication()
        for attempt in range(LOCAL_START_ATTEMPTS):
            head = _LocalHead(num_cpus)
            try:
                head.wait_started(HEAD_START_TIMEOUT_S)
                ray.init(address=head.address, _node_ip_address="127.0.0.1", runtime_env=runtime_env,
                         log_to_driver=False, configure_logging=False)
                break
            except Exception as err:   # a head that missed one of Ray's start-up deadlines (a busy machine): again
                ray.shutdown()
                head.stop()
                if attempt == LOCAL_START_ATTEMPTS - 1:
                    raise RuntimeError(f"could not start a local Ray ({LOCAL_START_ATTEMPTS} tries): {err}") from None
        _state["started_here"] = True
        _state["head"] = head
    else:
        if address == "auto" and os.environ.get("RAY_ADDRESS"):
            _probe(os.environ["RAY_ADDRESS"], timeout)
        elif address != "auto":
            _probe(address, timeout)
        try:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=False, configure_logging=False,
                     _node_ip_address="127.0.0.1" if _is_local(address) else None)
        except (ConnectionError, RuntimeError, TimeoutError) as err:
            raise ConnectionError(f"cannot connect to the Ray cluster at {address}: {err}") from None
        _state["started_here"] = False
    _state["address"] = wanted
    return ray


def _is_local(address: str) -> bool:
    hp = _host_port(address)
    return hp is not None and hp[0] in ("127.0.0.1", "localhost")


def shutdown() -> None:
    """Disconnect the process; a local Ray that `connect` started is stopped, a cluster we
    joined keeps running. For the process's end (a server's unload hook, the exit handler):
    a job that still runs on it fails."""
    with _lock:
        if _state["address"] is not None and not shutting_down():   # at exit, the owner thread disconnects
            _OWNER.call(_disconnect)


def _disconnect() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
    if _state["head"] is not None:
        _state["head"].stop()
    _state.update(started_here=False, address=None, head=None)


def _watch_head() -> None:
    """On the owner thread: when the local Ray's helper has died, say so and disconnect (before
    Ray's own client gives up on its lost cluster and ends this process); the next job starts a
    new local Ray. No lock: only the owner thread changes the connection (and a caller holding
    the lock may be waiting for the owner)."""
    head = _state["head"]
    if head is None or head.alive():
        return
    log.error("the local Ray stopped (its head process exited with %s); running fleet jobs fail, the next one "
              "starts a new local Ray. Its last words:\n%s", head.returncode(), head.output_tail())
    _disconnect()


# Run by `_LocalHead` in a fresh interpreter: end with the thread that started it (Linux's
# parent-death signal), then become `ray start --head --block`, which stops its cluster on SIGTERM.
_HEAD_MAIN = """
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
except (AttributeError, OSError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(0)   # the parent is already gone
import time
import ray._private.services as services
_get_node, _register_s = services.get_node, float(sys.argv[2])

def get_node(*args, **kwargs):   # Ray waits a fixed 30 s for its raylet to register: too short on a busy machine
    deadline = time.monotonic() + _register_s
    while True:
        try:
            return _get_node(*args, **kwargs)
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)

services.get_node = get_node
from ray.scripts.scripts import main
sys.argv = ["ray", *sys.argv[3:]]
sys.exit(main())
"""


class _LocalHead:
    """A private local Ray for this process: `ray start --head --block` in a single-threaded helper
    process bound to 127.0.0.1 on free ports, its output in a temporary file."""

    def __init__(self, num_cpus: int | None):
        # every port given: Ray's raylet waits for a file naming an agent's port chosen by the agent
        # itself, a wait it gives up (and crashes) on a busy machine
        port, client_port, listen_port, agent_port, env_agent_port, metrics_port = _free_ports(6)
        self.address = f"127.0.0.1:{port}"
        self._log = tempfile.NamedTemporaryFile(prefix="streamssm-ray-head-", suffix=".log", delete=False)
        command = [sys.executable, "-c", _HEAD_MAIN, str(os.getpid()), str(RAYLET_REGISTER_S), "start", "--head", "--block",
                   "--node-ip-address=127.0.0.1", f"--port={port}", f"--ray-client-server-port={client_port}",
                   f"--dashboard-agent-listen-port={listen_port}", f"--dashboard-agent-grpc-port={agent_port}",
                   f"--runtime-env-agent-port={env_agent_port}", f"--metrics-export-port={metrics_port}",
                   "--include-dashboard=false",
                   "--disable-usage-stats"]
        if num_cpus is not None:
            command.append(f"--num-cpus={int(num_cpus)}")
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}   # a stray RAY_ADDRESS must not redirect it
        env.update(LOOPBACK_ENV)
        self._proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                      env=env, close_fds=True)

    def alive(self) -> bool:
        return self._proc.poll() is None

    def returncode(self) -> int | None:
        return self._proc.poll()

    def output_tail(self, limit: int = 3000) -> str:
        try:
            with open(self._log.name, errors="replace") as f:
                return f.read()[-limit:]
        except OSError:
            return "<no output>"

    def wait_started(self, timeout: float) -> None:
        """Until `ray start` says its node is up; a RuntimeError with its output if it ends or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "Ray runtime started" in self.output_tail(limit=10**6):
                return
            if not self.alive():
                raise RuntimeError(f"`ray start --head` exited with {self.returncode()}:\n{self.output_tail()}")
            time.sleep(0.2)
        raise RuntimeError(f"`ray start --head` did not start within {timeout:g} s:\n{self.output_tail()}")

    def stop(self) -> None:
        """SIGTERM (the helper stops its cluster), a kill past HEAD_STOP_TIMEOUT_S; the output file goes."""
        if self.alive():
            self._proc.terminate()
            try:
                self._proc.wait(HEAD_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log.close()
        try:
            os.unlink(self._log.name)
        except OSError:
            pass


def _free_ports(n: int) -> list[int]:
    """n distinct ports free on 127.0.0.1 now."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@contextmanager
def connected(address: str | None = None) -> Iterator[Any]:
    """`connect` for one job, and keep that connection while the block runs: a job asking for
    another cluster meanwhile is refused, it cannot disconnect this one. Yields the ray module."""
    ray = _connect(address, None, CONNECT_TIMEOUT_S, hold=True)
    try:
        yield ray
    finally:
        with _lock:
            _state["jobs"] -= 1


def _call(fn: Callable, shared, batch):
    """The task body: `fn(shared, batch)` (the object store hands `shared` in). A worker
    process lives across jobs: it keeps compiled programs on disk as our other processes do,
    and drops them between tasks near its mapping limit."""
    enable_compilation_cache()
    with using_compiled():
        return fn(shared, batch)


def run_batches(fn: Callable, batches: Sequence, shared, *, address: str | None = None, max_retries: int = 3,
                progress: Callable[[int], None] | None = None, cancel=None, poll_s: float = 0.2) -> list:
    """fn(shared, batch) for every batch as Ray tasks; results in batch order.

    A task whose worker died is retried up to `max_retries` times; a batch that still fails
    (or whose task raised) gets the exception in its place. progress(index) is called as each
    batch finishes; cancel.is_set() cancels what is left and raises `Cancelled`.
    """
    with connected(address) as ray:
        return _run_batches(ray, fn, batches, shared, max_retries, progress, cancel, poll_s)


def _run_batches(ray, fn, batches, shared, max_retries, progress, cancel, poll_s) -> list:
    from ray.exceptions import RayError

    remote = ray.remote(_call).options(max_retries=int(max_retries), retry_exceptions=False, num_cpus=1)
    shared_ref = ray.put(shared)
    pending = {remote.remote(fn, shared_ref, batch): i for i, batch in enumerate(batches)}
    results: dict[int, Any] = {}
    while pending:
        if cancel is not None and cancel.is_set():
            for ref in pending:
                ray.cancel(ref, force=True)
            raise Cancelled(f"cancelled with {len(pending)} of {len(batches)} batches unfinished", results)
        ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=poll_s, fetch_local=True)
        for ref in ready:
            i = pending.pop(ref)
            try:
                results[i] = ray.get(ref)   # ready: does not block
            except RayError as err:
                results[i] = err
            if progress is not None:
                progress(i)
    return [results[i] for i in range(len(batches))]
