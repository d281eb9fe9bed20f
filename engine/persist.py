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

from .online import OnlineConfig, OnlineFilter, OnlineInfo, as_config, fit_priors, init, make_bank, posterior_draws
from .online.filter import check_one
from .rejuvenation import RejuvenationConfig
from .spec import as_spec

__all__ = [
    "SNAPSHOT", "LOG", "FORMAT", "atomic_write", "remove_stale_temporaries", "filter_settings", "filter_configs", "write_snapshot", "read_snapshot", "ObservationLog", "DurableFilter",
]


SNAPSHOT = "snapshot.npz"
LOG = "observations.jsonl"
FORMAT = 1


def _fsync_dir(directory: Path):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # alive, another user's
        return True
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete the temp files of `atomic_write`s to `path` whose process has died (a `kill -9`
    between writing and renaming leaves `.name.tmp-PID` behind); returns those removed."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            try:
                tmp.unlink()
                removed.append(tmp)
            except OSError:   # a read-only folder: left for a later save to try again
                pass
    return removed


def atomic_write(path: Path, data: bytes):
    """Replace `path` with `data` atomically: temp file in the same folder, fsync, rename, fsync
    folder. Temp files left by dead processes are removed first."""
    path = Path(path)
    remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        try:   # nothing half-written is left behind
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise type(err)(err.errno, f"cannot write {path.name} in {path.parent} ({err.strerror}); "
                        "the snapshot folder must be writable", str(path)) from None
    _fsync_dir(path.parent)


def _storable(value) -> bool:
    """A filter setting the snapshot can keep: plain JSON (numbers, strings, priors as dicts);
    callables such as `on_event` or `log_posterior` must be passed again to `open`."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


# settings a snapshot of an earlier version kept under another name, and ones it could keep that
# only mattered when the filter was first built (a resumed filter starts from its belief)
_RENAMED_SETTINGS = {"rejuvenate": "automatic"}
_CONSTRUCTION_ONLY = {"weigh_history", "log_weight"}


def filter_settings(filt: OnlineFilter) -> dict:
    """The settings a snapshot keeps, so that the filter resumes as it ran: every field of its
    `OnlineConfig` but the spec, and of its `RejuvenationConfig` those that are plain JSON (not the
    `log_posterior`, a callable to pass again)."""
    config = {k: v for k, v in filt.config._asdict().items() if k != "spec"}
    rejuvenation = {k: v for k, v in filt.rejuvenator.config._asdict().items()
                    if k != "log_posterior" and _storable(v)}
    return {**config, **rejuvenation}


def filter_configs(spec, settings: dict, **overrides) -> tuple[OnlineConfig, RejuvenationConfig]:
    """The (OnlineConfig, RejuvenationConfig) of snapshot settings (`filter_settings`), with
    `overrides` (fields of either, e.g. `automatic=False` or a `log_posterior`) replacing them."""
    stored = {_RENAMED_SETTINGS.get(k, k): v for k, v in settings.items() if k not in _CONSTRUCTION_ONLY}
    merged = {**stored, **overrides}
    config_fields = set(OnlineConfig._fields) - {"spec"}
    unknown = sorted(set(merged) - config_fields - set(RejuvenationConfig._fields))
    if unknown:
        raise ValueError(f"unknown filter settings {unknown}: use fields of OnlineConfig {sorted(config_fields)} "
                         f"or of RejuvenationConfig {list(RejuvenationConfig._fields)}")
    config = as_config(OnlineConfig(as_spec(spec), **{k: v for k, v in merged.items() if k in config_fields}))
    rejuvenation = RejuvenationConfig(**{k: v for k, v in merged.items() if k in RejuvenationConfig._fields})
    return config, rejuvenation


def write_snapshot(directory, filt: OnlineFilter):
    """Snapshot `filt` (spec, draws, belief, history, settings with the priors, random stream) into
    directory/snapshot.npz atomically."""
    directory = Path(directory)
    leaves = jax.tree_util.tree_leaves(filt.state)
    y, x = filt.history()
    meta = {"format": FORMAT, "spec": filt.spec.to_dict(), "t": filt.t, "n_leaves": len(leaves),
            "settings": filter_settings(filt)}
    arrays = {f"belief_{i}": np.asarray(a) for i, a in enumerate(leaves)}
    arrays.update(params=np.asarray(filt.params), history_y=y, rng_key=np.asarray(filt.rejuvenator.key),
                  history_x=np.zeros((len(y), 0)) if x is None else x,
                  meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write(directory / SNAPSHOT, buf.getvalue())


def read_snapshot(directory, **overrides) -> tuple[OnlineFilter, dict]:
    """Rebuild the OnlineFilter saved by `write_snapshot`; returns (filter, its stored settings).

    overrides: fields of `OnlineConfig` or `RejuvenationConfig` that replace the stored ones
    (a `log_posterior` callable is not stored: pass it again)."""
    path = Path(directory) / SNAPSHOT
    remove_stale_temporaries(path)
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
    config, rejuvenation = filter_configs(spec, settings, **overrides)
    template = init(config, make_bank(spec, jnp.asarray(params)))
    treedef = jax.tree_util.tree_structure(template)
    belief = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(a) for a in leaves])
    filt = OnlineFilter(config, params, rejuvenation=rejuvenation, y_history=y,
                        exog_history=x if spec.regression is not None else None, belief=belief)
    if key is not None:   # the next move draws what it would have drawn without the restart
        filt.rejuvenator.key = jnp.asarray(key)
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

    def __init__(self, directory, filt: OnlineFilter, *, snapshot_every: int = 1000, fsync: bool = True):
        self.directory = Path(directory)
        self.filter = filt
        self.snapshot_every = int(snapshot_every)
        self._log = ObservationLog(self.directory / LOG, fsync=fsync)
        self._since_snapshot = 0
        self._bank_version = filt.bank_version

    @classmethod
    def create(cls, directory, config, posterior, y_history=None, exog_history=None, *,
               rejuvenation: RejuvenationConfig | None = None, snapshot_every: int = 1000,
               fsync: bool = True) -> "DurableFilter":
        """Start a new durable filter in `directory` (which must not hold a snapshot yet).

        config: an `OnlineConfig` or a model spec; posterior: draws as `posterior_draws` takes
        them, weighted by their likelihood of the history as the `OnlineFilter` constructor does."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if (directory / SNAPSHOT).exists():
            raise FileExistsError(f"{directory} already holds a snapshot; use DurableFilter.open to resume it")
        config = as_config(config)
        rejuvenation = RejuvenationConfig() if rejuvenation is None else rejuvenation
        if rejuvenation.priors is None:   # a fit's priors, so that a resumed move targets them too
            rejuvenation = rejuvenation._replace(priors=fit_priors(posterior))
        filt = OnlineFilter(config, posterior_draws(config.spec, posterior), rejuvenation=rejuvenation,
                            y_history=y_history, exog_history=exog_history)
        out = cls(directory, filt, snapshot_every=snapshot_every, fsync=fsync)
        out.snapshot()
        return out

    @classmethod
    def open(cls, directory, *, snapshot_every: int = 1000, fsync: bool = True, **overrides) -> "DurableFilter":
        """Resume from directory: load the snapshot (overrides as `read_snapshot` takes them),
        replay the log in one batched pass."""
        directory = Path(directory)
        filt, _ = read_snapshot(directory, **overrides)
        ys, xs = ObservationLog.read(directory / LOG, since=filt.t)
        if len(ys):
            filt.update_many(ys, xs)
        out = cls(directory, filt, snapshot_every=snapshot_every, fsync=fsync)
        out.snapshot()
        return out

    def update(self, y, exog=None) -> OnlineInfo:
        check_one(y)
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
        write_snapshot(self.directory, self.filter)
        self._log.truncate()
        self._since_snapshot = 0
        self._bank_version = self.filter.bank_version

    def close(self):
        self._log.close()
