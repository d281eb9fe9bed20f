"""Crash-safe persistence of an online filter: atomic snapshots plus an append-only log.

A snapshot holds the spec (JSON), the posterior draws, the belief pytree (weights and t
included) and the observations consumed so far (rejuvenation needs the full history). It is
written to a temporary file, fsynced and renamed over the old one, so a reader sees either
the old or the new snapshot, never half of one. Every observation is appended to the log
(one JSON line, written before the update is applied) until the next snapshot; after a
`kill -9` the restarted filter loads the snapshot and replays the log, ending exactly where an
uninterrupted run would. A torn last line (killed mid-write) is ignored.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .online import OnlineConfig, OnlineFilter, OnlineInfo, fit_priors, init, make_bank, posterior_draws
from .spec import as_spec

SNAPSHOT = "snapshot.npz"
LOG = "observations.jsonl"
FORMAT = 1


def _fsync_dir(directory: Path):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes):
    """Replace `path` with `data` atomically: temp file in the same folder, fsync, rename, fsync folder."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _storable(value) -> bool:
    """A filter setting the snapshot can keep: plain JSON (numbers, strings, priors as dicts);
    callables such as `on_event` or `log_posterior` must be passed again to `open`."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def write_snapshot(directory, filt: OnlineFilter, settings: dict | None = None):
    """Snapshot `filt` (spec, draws, belief, history, priors, random stream) into directory/snapshot.npz
    atomically."""
    directory = Path(directory)
    leaves = jax.tree_util.tree_leaves(filt.state)
    y, x = filt.history()
    settings = {**filt.settings(), **(settings or {})}   # the filter's own, so that it resumes as it ran
    if filt.priors is not None and _storable(filt.priors):   # the prior a resumed move targets
        settings.setdefault("priors", filt.priors)
    meta = {"format": FORMAT, "spec": filt.spec.to_dict(), "t": filt.t, "n_leaves": len(leaves),
            "settings": settings}
    arrays = {f"belief_{i}": np.asarray(a) for i, a in enumerate(leaves)}
    arrays.update(params=np.asarray(filt.params), history_y=y, rng_key=np.asarray(filt._key),
                  history_x=np.zeros((len(y), 0)) if x is None else x,
                  meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write(directory / SNAPSHOT, buf.getvalue())


def read_snapshot(directory, **filter_kwargs) -> tuple[OnlineFilter, dict]:
    """Rebuild the OnlineFilter saved by `write_snapshot`; returns (filter, settings)."""
    path = Path(directory) / SNAPSHOT
    if not path.exists():
        raise FileNotFoundError(f"no snapshot at {path}")
    with np.load(path) as z:
        meta = json.loads(bytes(z["meta"]).decode())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: snapshot format {meta.get('format')!r}, expected {FORMAT}")
        spec = as_spec(meta["spec"])
        params = z["params"]
        leaves = [z[f"belief_{i}"] for i in range(meta["n_leaves"])]
        y, x = z["history_y"], z["history_x"]
        key = z["rng_key"] if "rng_key" in z.files else None
    settings = dict(meta["settings"])
    kwargs = {**settings, **filter_kwargs}
    sqrt = kwargs.get("sqrt", False)
    template = init(OnlineConfig(spec, bool(sqrt)), make_bank(spec, jnp.asarray(params)))
    treedef = jax.tree_util.tree_structure(template)
    belief = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(a) for a in leaves])
    filt = OnlineFilter(spec, params, y_history=y, exog_history=x if spec.regression is not None else None,
                        belief=belief, **kwargs)
    if key is not None:   # the next move draws what it would have drawn without the restart
        filt._key = jnp.asarray(key)
    return filt, settings


class ObservationLog:
    """Append-only JSON-lines log of (t, y, exog) since the last snapshot."""

    def __init__(self, path, fsync: bool = True):
        self.path = Path(path)
        self.fsync = fsync
        self._fh = open(self.path, "a", encoding="utf-8")

    def append(self, t: int, ys: np.ndarray, xs: np.ndarray | None) -> int:
        """Write and sync the records of ys (from index t); returns the log's length before them."""
        start = self._fh.tell()
        lines = []
        for i, y in enumerate(ys):
            rec = {"t": int(t + i), "y": None if np.isnan(y) else float(y)}
            if xs is not None:
                rec["x"] = [float(v) for v in xs[i]]
            lines.append(json.dumps(rec))
        self._fh.write("\n".join(lines) + "\n")
        self._fh.flush()
        if self.fsync:
            os.fsync(self._fh.fileno())
        return start

    def rollback(self, length: int):
        """Drop what was appended after `length` (records the filter then failed to apply)."""
        self._fh.truncate(length)
        self._fh.flush()
        if self.fsync:
            os.fsync(self._fh.fileno())

    def truncate(self):
        """Start an empty log (after a snapshot has made its records redundant)."""
        self._fh.close()
        atomic_write(self.path, b"")
        self._fh = open(self.path, "a", encoding="utf-8")

    def close(self):
        self._fh.close()

    @staticmethod
    def read(path, since: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Records with t >= since, in order; a torn final line is dropped, a gap is an error."""
        path = Path(path)
        if not path.exists():
            return np.zeros(0), None
        text = path.read_text(encoding="utf-8")
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        elif lines:
            lines.pop()   # no newline: the process died while writing this record
        ys, xs, expect = [], [], since
        for i, line in enumerate(lines):
            rec = json.loads(line)
            if rec["t"] < since:
                continue
            if rec["t"] != expect:
                raise ValueError(f"{path}: line {i + 1} has t={rec['t']}, expected {expect} (log is not contiguous)")
            ys.append(np.nan if rec["y"] is None else rec["y"])
            if "x" in rec:
                xs.append(rec["x"])
            expect += 1
        return np.array(ys, dtype=float), (np.array(xs, dtype=float) if xs else None)


class DurableFilter:
    """An OnlineFilter that survives `kill -9`: every observation is logged before it is applied,
    and a snapshot is written every `snapshot_every` observations and after each bank swap."""

    def __init__(self, directory, filt: OnlineFilter, *, snapshot_every: int = 1000, fsync: bool = True,
                 settings: dict | None = None):
        self.directory = Path(directory)
        self.filter = filt
        self.snapshot_every = int(snapshot_every)
        self.settings = settings or {}
        self._log = ObservationLog(self.directory / LOG, fsync=fsync)
        self._since_snapshot = 0
        self._bank_version = filt.bank_version

    @classmethod
    def create(cls, directory, spec, posterior, y_history=None, exog_history=None, *, snapshot_every: int = 1000,
               fsync: bool = True, **filter_kwargs) -> "DurableFilter":
        """Start a new durable filter in `directory` (which must not hold a snapshot yet)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if (directory / SNAPSHOT).exists():
            raise FileExistsError(f"{directory} already holds a snapshot; use DurableFilter.open to resume it")
        spec = as_spec(spec)
        if filter_kwargs.get("priors") is None:   # a fit's priors, so that a resumed move targets them too
            filter_kwargs["priors"] = fit_priors(posterior)
        settings = {k: v for k, v in filter_kwargs.items() if _storable(v)}
        filt = OnlineFilter(spec, posterior_draws(spec, posterior), y_history=y_history,
                            exog_history=exog_history, **filter_kwargs)
        out = cls(directory, filt, snapshot_every=snapshot_every, fsync=fsync, settings=settings)
        out.snapshot()
        return out

    @classmethod
    def open(cls, directory, *, snapshot_every: int = 1000, fsync: bool = True, **filter_kwargs) -> "DurableFilter":
        """Resume from directory: load the snapshot, replay the log in one batched pass."""
        directory = Path(directory)
        filt, settings = read_snapshot(directory, **filter_kwargs)
        ys, xs = ObservationLog.read(directory / LOG, since=filt.t)
        if len(ys):
            filt.update_many(ys, xs)
        out = cls(directory, filt, snapshot_every=snapshot_every, fsync=fsync, settings=settings)
        out.snapshot()
        return out

    def update(self, y, exog=None) -> OnlineInfo:
        return self.update_many([y], None if exog is None else [exog])

    def update_many(self, ys, exog=None) -> OnlineInfo:
        ys, xs = self.filter.check_input(ys, exog)
        logged = self._log.append(self.filter.t, ys, xs)
        try:
            info = self.filter.update_many(ys, xs)
        except BaseException:   # not applied: the log must not replay it on the next open
            self._log.rollback(logged)
            raise
        self._since_snapshot += len(ys)
        if self._since_snapshot >= self.snapshot_every or self.filter.bank_version != self._bank_version:
            self.snapshot()
        return info

    def forecast(self, steps: int, exog_future=None):
        return self.filter.forecast(steps, exog_future)

    def snapshot(self):
        """Write a snapshot now and start an empty log."""
        write_snapshot(self.directory, self.filter, self.settings)
        self._log.truncate()
        self._since_snapshot = 0
        self._bank_version = self.filter.bank_version

    def close(self):
        self._log.close()
