"""The Ray backend: the only module that imports ray.

`connect` joins a cluster (a local one bound to 127.0.0.1 by default); `run_batches` runs
one task per batch (many series each), with the shared inputs put in the object store once,
results taken in completion order with `ray.wait`, worker deaths retried (tasks are
deterministic, so a retry gives the same result), progress reported as batches finish and
cancellation by `ray.cancel`. Exceptions raised by a task are not retried: they are returned
in the batch's place, so only that batch's series fail.
"""

from __future__ import annotations

import atexit
import os
import socket
import threading
from typing import Any, Callable, Sequence

from .bayes import FitCancelled
from .compiled import trim_compiled

CONNECT_TIMEOUT_S = 10.0   # probing a given address, and ray.init's own wait for the cluster
WORKER_ENV = {
    "XLA_PYTHON_CLIENT_PREALLOCATE": "false",   # JAX in a worker takes GPU memory as it needs it
    "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.25",
    "JAX_ENABLE_X64": "1",
}

_lock = threading.Lock()
_state: dict[str, Any] = {"started_here": False, "address": None}


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


def connect(address: str | None = None, *, num_cpus: int | None = None, timeout: float = CONNECT_TIMEOUT_S):
    """Connect this process to Ray.

    address=None starts a local Ray bound to 127.0.0.1 with the dashboard off, ignoring any
    RAY_ADDRESS in the environment; "auto" joins the cluster RAY_ADDRESS (or the local
    `ray start`) names; "host:port" joins that cluster, after checking within `timeout`
    seconds that something answers there. Reuses a connection to the same place.
    """
    import ray

    with _lock:
        wanted = address or "local"
        if ray.is_initialized():
            if _state["address"] == wanted:
                return ray
            shutdown()
        runtime_env = {"env_vars": dict(WORKER_ENV)}
        if address is None:
            _loopback_only()
            saved = os.environ.pop("RAY_ADDRESS", None)   # a stray RAY_ADDRESS must not redirect a local run
            try:
                ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                         _node_ip_address="127.0.0.1", runtime_env=runtime_env, log_to_driver=False,
                         configure_logging=False)
            finally:
                if saved is not None:
                    os.environ["RAY_ADDRESS"] = saved
            _state["started_here"] = True
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
    """Disconnect; a local Ray that `connect` started is stopped, a cluster we joined keeps running."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    _state.update(started_here=False, address=None)


atexit.register(lambda: _state["address"] is not None and shutdown())


def _call(fn: Callable, shared, batch):
    """The task body: `fn(shared, batch)` (the object store hands `shared` in). A worker
    process lives across jobs, so it too drops compiled programs near its mapping limit."""
    try:
        return fn(shared, batch)
    finally:
        trim_compiled()


def run_batches(fn: Callable, batches: Sequence, shared, *, address: str | None = None, max_retries: int = 3,
                progress: Callable[[int], None] | None = None, cancel=None, poll_s: float = 0.2) -> list:
    """fn(shared, batch) for every batch as Ray tasks; results in batch order.

    A task whose worker died is retried up to `max_retries` times; a batch that still fails
    (or whose task raised) gets the exception in its place. progress(index) is called as each
    batch finishes; cancel.is_set() cancels what is left and raises `Cancelled`.
    """
    ray = connect(address)
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
