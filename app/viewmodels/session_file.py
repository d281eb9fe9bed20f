"""SessionFileModel: a session's work saved as one .zip file, and restored into the view-models.

The archive holds:

- ``session.json``: format and version, the data choice, the spec (with its priors), the quick
  fit's estimates, the stream's settings, and which of the files below are present;
- ``spec.json``: the spec alone (the Fit tab's reload takes it too);
- ``data.csv``: the uploaded table, when the data was uploaded (a shipped dataset is named);
- ``posterior.nc``: the NUTS posterior (`engine.to_netcdf`);
- ``map.npz``: the MAP fit: its Laplace draws and the series it was fitted to (mode in session.json);
- ``belief.npz``: the online belief of the stream (`engine.persist` snapshot format).

`pack` and `unpack` are pure. `rebuild` recomputes, in the session's worker, everything the page
shows from an unpacked bundle on a private `DataModel`; only when all of it succeeded does
`apply` (on the page's event loop) put it into the view-models, so a bad file changes nothing.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
import zipfile
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
import param

import engine
from engine.data import list_datasets
from engine.spec import ModelSpec, param_names

from ..workers import SessionWorker
from .data_model import UPLOAD, DataModel
from .fit_bayes import BayesFitModel, BayesResult, fitted_data, from_laplace, from_posterior
from .fit_model import FitModel, QuickFit, from_fields
from .priors_model import PriorsModel
from .spec_model import SpecModel
from .stream import StreamModel, check_history, filter_from_snapshot

FORMAT = "streamssm-session"
VERSION = 1
MANIFEST = "session.json"
MAX_FILE_BYTES = 64 * 2**20        # a session file larger than this is refused before it is opened
MAX_UNPACKED_BYTES = 256 * 2**20   # nor one that would unpack to more than this
DATA_KEYS = ("source", "dataset", "upload", "time_column", "target", "exog", "log_transform", "sort_rows")
QUICK_FIT_KEYS = ("spec", "params", "se", "loglik", "aic", "bic", "converged", "message", "n_obs")


class SessionFileError(ValueError):
    """The file is not a session file this app can restore; the message says what is wrong."""


@dataclass(frozen=True)
class SessionBundle:
    """What a session file holds, as plain values."""

    data: dict                         # DATA_KEYS: which table and which columns
    raw: bytes | None                  # the uploaded table (None for a shipped dataset)
    spec: dict | None                  # the model spec with its priors (None when the model was not valid)
    quick_fit: dict | None             # QUICK_FIT_KEYS: the quick fit's spec, estimates and statistics
    posterior: Any = None              # the NUTS posterior (InferenceData)
    map_fit: dict | None = None        # spec, mode, draws (name → (draw,)), y (time,), exog (time, k) or None
    stream: dict | None = None         # the stream's settings
    belief: bytes | None = None        # the online belief, `engine.persist` snapshot bytes


@dataclass(frozen=True)
class Restored:
    """A bundle with everything the page shows about it recomputed (by `rebuild`)."""

    bundle: SessionBundle
    quick_fit: QuickFit | None
    bayes: BayesResult | None
    belief: engine.OnlineFilter | None

    def summary(self) -> str:
        b = self.bundle
        parts = [f"data {b.data['source']!r}", "the model" if b.spec is not None else "no valid model"]
        if self.quick_fit is not None:
            parts.append("the quick fit")
        if self.bayes is not None:
            parts.append("the MAP fit" if self.bayes.method == "map" else "the NUTS posterior")
        if b.posterior is not None and (self.bayes is None or self.bayes.method == "map"):
            parts.append("an earlier NUTS posterior")
        if self.belief is not None:
            parts.append(f"the stream's belief at t = {self.belief.t} (Play continues from it)")
        return ", ".join(parts)


# -- the archive ---------------------------------------------------------------------------
def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}   # as JavaScript spells them


def _strict_json(value):
    """`value` with every non-finite float written as its name in NON_FINITE: JSON has no NaN or
    infinity (Python's json writes bare NaN, which other readers refuse); `_number` reads them back."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value


def _number(value, what: str) -> float:
    """A number of session.json: a JSON number, or a non-finite one written by `_strict_json`."""
    if isinstance(value, str) and value in NON_FINITE:
        return NON_FINITE[value]
    _need(isinstance(value, (int, float)) and not isinstance(value, bool), f"{MANIFEST}: {what} must be a number, "
                                                                             f"not {value!r}")
    return float(value)


def _numbers(values, what: str) -> dict[str, float]:
    _need(isinstance(values, dict), f"{MANIFEST}: {what} must map parameter names to numbers")
    return {k: _number(v, f"{what}[{k!r}]") for k, v in values.items()}


def pack(bundle: SessionBundle) -> bytes:
    """The bundle as a .zip archive (see the module docstring for its files)."""
    files: dict[str, bytes] = {}
    if bundle.spec is not None:
        files["spec.json"] = json.dumps(bundle.spec, indent=2).encode()
    if bundle.raw is not None:
        files["data.csv"] = bundle.raw
    if bundle.posterior is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = engine.to_netcdf(bundle.posterior, os.path.join(tmp, "posterior.nc"))
            with open(path, "rb") as f:
                files["posterior.nc"] = f.read()
    map_meta = None
    if bundle.map_fit is not None:
        m = bundle.map_fit
        arrays = {f"draw.{k}": np.asarray(v, dtype=float) for k, v in m["draws"].items()}
        arrays["y"] = np.asarray(m["y"], dtype=float)
        if m.get("exog") is not None:
            arrays["exog"] = np.asarray(m["exog"], dtype=float)
        files["map.npz"] = _npz(arrays)
        map_meta = {"spec": m["spec"], "mode": m["mode"]}
    if bundle.belief is not None:
        files["belief.npz"] = bundle.belief
    manifest = {"format": FORMAT, "version": VERSION, "data": bundle.data, "spec": bundle.spec,
                "quick_fit": bundle.quick_fit, "map_fit": map_meta, "stream": bundle.stream or {},
                "files": sorted(files)}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(MANIFEST, json.dumps(_strict_json(manifest), indent=2, allow_nan=False))
        for name, content in files.items():
            z.writestr(name, content)
    return out.getvalue()


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise SessionFileError(message)


def _spec(d, what: str) -> ModelSpec:
    try:
        return ModelSpec.from_dict(d)
    except (ValueError, TypeError, KeyError) as exc:
        raise SessionFileError(f"{what} is not a valid model spec: {exc}") from None


def _check_names(spec: ModelSpec, names, what: str) -> None:
    want = param_names(spec)
    _need(sorted(names) == sorted(want), f"{what} has parameters {sorted(names)}, but its model has {want}")


def unpack(content: bytes) -> SessionBundle:
    """Read and check a session file; SessionFileError names what is wrong."""
    _need(content is not None and len(content) > 0, "the file is empty")
    _need(len(content) <= MAX_FILE_BYTES, f"the file is larger than {MAX_FILE_BYTES // 2**20} MB")
    try:
        z = zipfile.ZipFile(io.BytesIO(content))
    except zipfile.BadZipFile:
        raise SessionFileError("it is not a session file (not a .zip archive)") from None
    with z:
        names = set(z.namelist())
        _need(MANIFEST in names, f"it is not a session file: the archive has no {MANIFEST}")
        _need(sum(i.file_size for i in z.infolist()) <= MAX_UNPACKED_BYTES,
              f"the archive unpacks to more than {MAX_UNPACKED_BYTES // 2**20} MB")

        def read(name: str) -> bytes:
            _need(name in names, f"the archive lists {name} but does not hold it")
            try:
                return z.read(name)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:   # e.g. a CRC mismatch
                raise SessionFileError(f"{name} in the archive is damaged ({exc})") from None

        def bare(name):
            raise ValueError(f"bare {name} is not JSON")

        try:
            manifest = json.loads(read(MANIFEST).decode("utf-8"), parse_constant=bare)
        except (UnicodeDecodeError, ValueError) as exc:   # JSONDecodeError is a ValueError
            raise SessionFileError(f"{MANIFEST} is not valid JSON ({exc})") from None
        _need(isinstance(manifest, dict) and manifest.get("format") == FORMAT,
              f"{MANIFEST} does not describe a StreamSSM session")
        _need(manifest.get("version") == VERSION,
              f"session file version {manifest.get('version')!r}; this app reads version {VERSION}")
        listed = manifest.get("files", [])
        _need(isinstance(listed, list), f"{MANIFEST}: 'files' must be a list")

        data = manifest.get("data")
        _need(isinstance(data, dict) and all(k in data for k in DATA_KEYS),
              f"{MANIFEST}: the data choice needs {list(DATA_KEYS)}")
        _need(isinstance(data["exog"], list), f"{MANIFEST}: the data's 'exog' must be a list of columns")
        raw = None
        if data["upload"]:
            _need("data.csv" in listed, "the session's data was uploaded, but the archive has no data.csv")
            raw = read("data.csv")
        else:
            known = list(list_datasets()["name"])
            _need(data["dataset"] in known, f"unknown dataset {data['dataset']!r} (shipped: {known})")

        spec = manifest.get("spec")
        if spec is not None:
            _spec(spec, "the session's model")

        quick = manifest.get("quick_fit")
        if quick is not None:
            _need(isinstance(quick, dict) and all(k in quick for k in QUICK_FIT_KEYS),
                  f"{MANIFEST}: the quick fit needs {list(QUICK_FIT_KEYS)}")
            _check_names(_spec(quick["spec"], "the quick fit's model"), quick["params"], "the quick fit")
            quick = dict(quick, params=_numbers(quick["params"], "the quick fit's params"),
                         se=_numbers(quick["se"], "the quick fit's se"),
                         **{k: _number(quick[k], f"the quick fit's {k}") for k in ("loglik", "aic", "bic")})

        posterior = None
        if "posterior.nc" in listed:
            posterior = _read_posterior(read("posterior.nc"))

        map_fit = None
        if manifest.get("map_fit") is not None:
            _need("map.npz" in listed, "the session has a MAP fit, but the archive has no map.npz")
            meta = manifest["map_fit"]
            _need(isinstance(meta, dict) and "spec" in meta and isinstance(meta.get("mode"), dict),
                  f"{MANIFEST}: the MAP fit needs its spec and mode")
            map_spec = _spec(meta["spec"], "the MAP fit's model")
            _check_names(map_spec, meta["mode"], "the MAP fit")
            try:
                with np.load(io.BytesIO(read("map.npz")), allow_pickle=False) as arrays:
                    draws = {k[len("draw."):]: arrays[k] for k in arrays.files if k.startswith("draw.")}
                    y = arrays["y"]
                    exog = arrays["exog"] if "exog" in arrays.files else None
            except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as exc:
                raise SessionFileError(f"map.npz could not be read ({exc})") from None
            _check_names(map_spec, draws, "the MAP fit's draws")
            map_fit = {"spec": meta["spec"], "mode": _numbers(meta["mode"], "the MAP fit's mode"), "draws": draws,
                       "y": y, "exog": exog}

        stream = manifest.get("stream") or {}
        _need(isinstance(stream, dict), f"{MANIFEST}: the stream settings must be a dict")
        belief = read("belief.npz") if "belief.npz" in listed else None
    return SessionBundle(data, raw, spec, quick, posterior, map_fit, stream, belief)


def _read_posterior(content: bytes):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "posterior.nc")
        with open(path, "wb") as f:
            f.write(content)
        try:
            idata = engine.from_netcdf(path)
            idata.load()
        except Exception as exc:   # netCDF readers raise many types for a damaged file
            raise SessionFileError(f"posterior.nc is not a readable posterior ({exc})") from None
    try:
        spec = engine.spec_of(idata)
        engine.posterior_matrix(spec, idata)
        fitted_data(idata)
    except (ValueError, KeyError, AttributeError) as exc:
        raise SessionFileError(f"posterior.nc is not a posterior of this app ({exc})") from None
    return idata


# -- between the bundle and the view-models ------------------------------------------------
def data_choice(data: DataModel) -> tuple[dict, bytes | None]:
    """The data choice of a DataModel as plain values, and the uploaded table's bytes (if uploaded)."""
    upload = data.dataset == UPLOAD
    choice = {"source": data.source, "dataset": data.dataset, "upload": upload, "time_column": data.time_column,
              "target": data.target, "exog": list(data.exog), "log_transform": bool(data.log_transform),
              "sort_rows": bool(data.sort_rows)}
    if not upload:
        return choice, None
    return choice, data.table_bytes()


def apply_data(data: DataModel, choice: dict, raw: bytes | None) -> None:
    """Load a saved data choice into a DataModel; SessionFileError when it does not apply."""
    try:
        data.sort_rows = bool(choice["sort_rows"])
        if choice["upload"]:
            data.load_upload(raw, str(choice["source"]))
        else:
            data.dataset = choice["dataset"]
        if not data.error:
            columns = list(data.param.time_column.objects)
            missing = [c for c in [choice["time_column"], choice["target"], *choice["exog"]] if c not in columns]
            _need(not missing, f"the saved data choice does not fit the data: no column(s) {missing} in "
                               f"{data.source!r} (columns: {columns[1:]})")
            data.param.update(time_column=choice["time_column"], target=choice["target"],
                              exog=list(choice["exog"]), log_transform=bool(choice["log_transform"]))
    except (ValueError, KeyError) as exc:
        if isinstance(exc, SessionFileError):
            raise
        raise SessionFileError(f"the saved data choice does not fit the data: {exc}") from None
    _need(not data.error and data.ready, f"the saved data could not be loaded: {data.error or 'no target'}")


def rebuild(bundle: SessionBundle) -> Restored:
    """Recompute what the page shows from a bundle (in the worker): the data on a private DataModel,
    the quick fit's components, the Bayesian bands and checks, the online belief."""
    probe = DataModel()
    apply_data(probe, bundle.data, bundle.raw)
    y, exog = probe.y, probe.exog_frame
    if bundle.spec is not None:   # what `SpecModel.load` would refuse in `apply`, refused before anything changes
        missing = [c for c in ModelSpec.from_dict(bundle.spec).exog_columns if c not in probe.exog]
        _need(not missing, f"the saved model regresses on {missing}, which the saved data choice does not "
                           "pick as regressors")
    quick = None
    if bundle.quick_fit is not None:
        spec = ModelSpec.from_dict(bundle.quick_fit["spec"])
        _need(bundle.quick_fit["n_obs"] <= len(y), "the quick fit saw more observations than the data has")
        quick = from_fields(spec, bundle.quick_fit, y, exog)
    bayes = None
    if bundle.map_fit is not None:
        m = bundle.map_fit
        bayes = from_laplace(ModelSpec.from_dict(m["spec"]), {k: float(v) for k, v in m["mode"].items()},
                             m["draws"], m["y"], m["exog"])
    elif bundle.posterior is not None:
        bayes = from_posterior(engine.spec_of(bundle.posterior), bundle.posterior, *fitted_data(bundle.posterior))
    belief = None
    if bundle.belief is not None:
        try:
            belief = filter_from_snapshot(bundle.belief)
        except ValueError as exc:
            raise SessionFileError(f"belief.npz: {exc}") from None
        if bundle.stream.get("source", "") == StreamModel.param.source.default:   # streamed the dataset
            try:
                check_history(belief, y)
            except ValueError as exc:
                raise SessionFileError(str(exc)) from None
    return Restored(bundle, quick, bayes, belief)


class SessionFileModel(param.Parameterized):
    """Saves the session's data choice, model, fits and stream belief to one file, and restores one."""

    status = param.Selector(default="idle", objects=["idle", "loading", "done", "error"], constant=True)
    message = param.String(default="", constant=True)

    def __init__(self, data: DataModel, spec: SpecModel, priors: PriorsModel, fit: FitModel,
                 bayes: BayesFitModel, worker: SessionWorker, stream: StreamModel | None = None, **params):
        super().__init__(**params)
        self.data, self.spec_model, self.priors, self.fit, self.bayes = data, spec, priors, fit, bayes
        self.worker, self.stream = worker, stream

    def _set(self, **values):
        with param.edit_constant(self):
            self.param.update(**values)

    def bundle(self) -> SessionBundle:
        """The session's work now (a quick fit the data or model changed since is left out)."""
        choice, raw = data_choice(self.data)
        spec = self.priors.spec
        quick = None
        if self.fit.result is not None and not self.fit.stale:
            quick = {"spec": self.fit.result.spec.to_dict(), **self.fit.result.fields()}
        r = self.bayes.result
        map_fit = None
        if r is not None and r.method == "map":
            map_fit = {"spec": r.spec.to_dict(), "mode": r.mode, "draws": r.draws, "y": r.y, "exog": r.exog}
        stream = self.stream.settings() if self.stream is not None else {}
        belief = self.stream.belief_snapshot() if self.stream is not None else None
        return SessionBundle(choice, raw, None if spec is None else spec.to_dict(), quick, self.bayes.posterior,
                             map_fit, stream, belief)

    def save(self) -> io.BytesIO:
        """The session file (for a download button)."""
        content = pack(self.bundle())
        self._set(status="done", message=f"Saved the session ({len(content) / 1024:.0f} kB).")
        return io.BytesIO(content)

    def load(self, content: bytes, filename: str = "session.zip") -> Future | None:
        """Restore a session file: checked and recomputed in the worker, then applied all at once;
        a bad file leaves everything as it was and says why."""
        if self.status == "loading":
            return None
        self._set(status="loading", message=f"Reading {filename}…")
        return self.worker.submit(lambda: rebuild(unpack(content)),
                                  on_done=lambda r: self.apply(r, filename),
                                  on_error=lambda exc: self._failed(exc, filename))

    def _failed(self, exc: BaseException, filename: str) -> None:
        self._set(status="error", message=f"Could not load {filename}: {exc}. Nothing was changed.")

    def apply(self, restored: Restored, filename: str = "the session file") -> None:
        """Put a rebuilt session into the view-models (on the page's event loop)."""
        b = restored.bundle
        note = f"restored from {filename}"
        apply_data(self.data, b.data, b.raw)
        if b.spec is not None:
            spec = ModelSpec.from_dict(b.spec)
            self.spec_model.load(spec)
            self.priors.load({k: dict(v) for k, v in spec.priors})
        self.fit.restore(restored.quick_fit, f"Fit {note}.")
        self.bayes.restore(restored.bayes, b.posterior, f"Bayesian fit {note}." if restored.bayes else "")
        if self.stream is not None:
            self.stream.restore(b.stream, restored.belief,
                                f"Belief {note}: press Play to continue the stream." if restored.belief else "")
        self._set(status="done", message=f"Restored {filename}: {restored.summary()}.")
