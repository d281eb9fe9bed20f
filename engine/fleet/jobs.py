"""`fit_many`: a fleet's job cut into batches and dispatched to a backend, its rows assembled.

The backends only move batches (`batch.run_batch`): "local" runs them on threads of this
process, "ray" through `engine.cluster`. Results do not depend on the backend or the batch
size; a cancelled job raises `FleetCancelled` holding the batches that had finished.
"""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import pandas as pd

from .. import background
from ..bayes import FitCancelled
from ..cores import usable_cores
from ..domains import check_params
from ..model import as_param_vector
from ..priors import resolve_priors
from ..regimes import refuse_regimes
from ..spec import ModelSpec, as_spec, param_names, require_gaussian
from .batch import METHODS, Batch, BatchOutput, FleetJob, failed_output, run_batch, table_columns
from .scoring import MAX_ITER
from .table import as_series_table, batch_bounds, default_batch_size

BACKENDS = ("local", "ray")


class FleetCancelled(FitCancelled):
    """`fit_many` was cancelled; `partial` holds the rows of the batches that had finished."""

    def __init__(self, message: str, partial: "FleetResult | None" = None):
        super().__init__(message)
        self.partial = partial


@dataclass
class FleetResult:
    """The per-series table and, with keep=True, each series' posterior and online belief.

    table: one row per series (see `fit_many`). posteriors: series → dict of parameters
    (mle/map/filter) or `arviz.InferenceData` (nuts). beliefs: series → `engine.Belief`
    after the last observation at the fitted parameters (mle/map/filter; not nuts), ready for
    `engine.OnlineFilter(spec, params, y_history=y, belief=belief)`.
    """

    table: pd.DataFrame
    posteriors: dict = field(default_factory=dict)
    beliefs: dict = field(default_factory=dict)



def _filter_params(spec: ModelSpec, params, ids: list) -> tuple[dict | None, np.ndarray | None]:
    """method="filter": one dict for every series, or a per-series table (index or 'series' column)."""
    names = param_names(spec)
    if params is None:
        raise ValueError(f"method='filter' needs params: a dict of {names} or a table with one row per series")
    if isinstance(params, pd.DataFrame):
        table = params.set_index("series") if "series" in params.columns else params
        table.index = table.index.map(str)
        missing_cols = [c for c in names if c not in table.columns]
        if missing_cols:
            raise ValueError(f"the params table has no column(s) {missing_cols}")
        missing = [i for i in ids if i not in table.index]
        if missing:
            raise ValueError(f"the params table has no row for series {missing[:5]}{' …' if len(missing) > 5 else ''}")
        rows = table.loc[ids, names].to_numpy(dtype=float)
        check_params(spec, rows, name="the params table", rows="series", labels=ids)
        return None, rows
    check_params(spec, as_param_vector(spec, params))   # validates names and ranges
    return {n: float(params[n]) for n in names}, None


def fit_many(spec, Y, exog=None, *, method: str = "mle", backend: str = "local", address: str | None = None,
             batch_size: int | None = None, progress: Callable[[int, int], None] | None = None, cancel=None,
             keep: bool = False, params=None, priors: Mapping | None = None, seed: int = 0,
             maxiter: int = MAX_ITER, nuts: Mapping | None = None, max_retries: int = 3) -> FleetResult:
    """Fit one structural model to every series of a fleet, in batches.

    Y: (series, time) with NaN for missing values and ragged ends, a wide DataFrame (time
    index × one column per series) or a long one (columns series, time, value). exog:
    (time, k) shared or (series, time, k). method: "mle", "map" (default priors scaled to
    each series, or `priors`), "nuts" (`nuts`: chains/warmup/draws, small by default) or
    "filter" (log-likelihood and anomalies at `params`: a dict for every series or a table
    with one row per series). backend: "local" (this process) or "ray" (a local Ray on
    127.0.0.1, or the cluster at `address`; "auto" for the one RAY_ADDRESS names). Batches of
    `batch_size` series (default `default_batch_size`) run vectorised; results do not depend on
    the backend or the batch size. progress(done_series, total_series) is called as batches
    finish; `cancel` (anything with is_set()) stops the job with `FleetCancelled` (its
    `partial` holds the finished batches).

    Returns a `FleetResult`; its table has one row per series: series, status ("ok",
    "not_converged" or "failed"), message, n_obs, loglik, one column per parameter,
    n_anomalies (|standardised one-step innovation| > 3 at the fitted parameters), and
    n_iterations (mle/map) or r_hat_max, ess_bulk_min, divergences, trustworthy (nuts).
    keep=True also returns each series' posterior and online belief.
    """
    spec = as_spec(spec)
    refuse_regimes(spec, "fit_many")
    require_gaussian(spec, "fit_many")
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not known; use one of {METHODS}")
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not known; use one of {BACKENDS}")
    if method in ("mle", "map", "nuts") and not param_names(spec):
        raise ValueError("this model has no parameters to fit; use method='filter'")
    if priors is not None:
        resolve_priors(spec, None, None, priors)   # refuse bad priors before any work
    fleet = as_series_table(Y, exog, spec)
    n_series = len(fleet.ids)
    if batch_size is None:
        batch_size = default_batch_size(spec, n_series, usable_cores() if backend == "local" else 1)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number ≥ 1, got {batch_size!r}")
    shared_params, series_params = _filter_params(spec, params, fleet.ids) if method == "filter" else (None, None)
    shared_x = fleet.exog if fleet.exog is not None and fleet.exog.ndim == 2 else None
    job = FleetJob(spec.to_dict(), method, int(min(batch_size, n_series)), int(seed), bool(keep), shared_x,
                   None if priors is None else dict(priors), shared_params, int(maxiter),
                   None if nuts is None else dict(nuts))
    batches = [Batch(lo, fleet.ids[lo:hi], fleet.Y[lo:hi],
                     None if fleet.exog is None or fleet.exog.ndim == 2 else fleet.exog[lo:hi],
                     None if series_params is None else series_params[lo:hi])
               for lo, hi in batch_bounds(n_series, job.batch_size)]
    done = [0]

    def finished(batch: Batch):
        done[0] += len(batch.ids)
        if progress is not None:
            progress(done[0], n_series)

    with background.job("fit_many", cancel) as cancel:   # the process's exit cancels it
        return _run(job, batches, finished, cancel, done, n_series, backend, address, max_retries)


def _run(job: FleetJob, batches: list[Batch], finished: Callable[[Batch], None], cancel, done: list[int],
         n_series: int, backend: str, address: str | None, max_retries: int) -> FleetResult:
    """Run the batches on the backend; `FleetCancelled` with the finished ones once `cancel` is set."""
    outputs: dict[int, BatchOutput] = {}
    if backend == "local":
        outputs = _run_local(job, batches, finished, cancel)
        if len(outputs) < len(batches):
            raise FleetCancelled(f"cancelled after {done[0]} of {n_series} series",
                                 _assemble(job, batches, outputs, partial=True))
    else:
        from .. import cluster

        try:
            results = cluster.run_batches(run_batch, batches, job, address=address, max_retries=max_retries,
                                          progress=lambda i: finished(batches[i]), cancel=cancel)
        except cluster.Cancelled as err:
            done_outputs = {i: _output_or_failure(job, batches[i], r) for i, r in err.finished.items()}
            raise FleetCancelled(f"cancelled after {done[0]} of {n_series} series",
                                 _assemble(job, batches, done_outputs, partial=True)) from None
        outputs = {i: _output_or_failure(job, b, r) for i, (b, r) in enumerate(zip(batches, results))}
    return _assemble(job, batches, outputs)


def _run_local(job: FleetJob, batches: list[Batch], finished: Callable[[Batch], None], cancel) -> dict[int, BatchOutput]:
    """Run the batches in this process, as many at once as there are usable cores.

    XLA runs one batch's small kernels on about one core and releases the interpreter lock
    meanwhile, so batches on threads use the others (as Ray's worker processes would, without
    the copies). `finished` is called here, in the caller's thread. Once `cancel` is set no
    batch starts; those running finish. Returns the outputs by batch index (fewer if cancelled).
    """
    outputs: dict[int, BatchOutput] = {}
    todo = list(enumerate(batches))
    workers = max(1, min(len(batches), usable_cores()))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fit_many") as pool:
        running: dict = {}
        while todo or running:
            while todo and len(running) < workers and not (cancel is not None and cancel.is_set()):
                i, batch = todo.pop(0)
                running[pool.submit(run_batch, job, batch)] = i
            if not running:
                break
            ready, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in ready:
                i = running.pop(future)
                outputs[i] = future.result()
                finished(batches[i])
    return outputs


def _output_or_failure(job: FleetJob, batch: Batch, result) -> BatchOutput:
    """A batch's output, or failed rows naming why the backend could not run it."""
    if isinstance(result, BatchOutput):
        return result
    message = str(result).strip().splitlines()
    return failed_output(job, batch, f"{type(result).__name__}: {message[-1] if message else ''}"[:500])


def _assemble(job: FleetJob, batches: list[Batch], outputs: dict[int, BatchOutput], partial: bool = False) -> FleetResult:
    """One table in series order (finished batches only when `partial`)."""
    spec = as_spec(job.spec)
    parts = [outputs[i] for i in range(len(batches)) if i in outputs]
    if not parts:
        return FleetResult(pd.DataFrame(columns=table_columns(spec, job.method)))
    table = pd.concat([p.rows for p in parts], ignore_index=True)
    table["n_obs"] = table["n_obs"].astype(int)
    if "trustworthy" in table:
        table["trustworthy"] = table["trustworthy"].astype(bool)
    posteriors, beliefs = {}, {}
    for p in parts:
        posteriors.update(p.posteriors)
        beliefs.update(p.beliefs)
    return FleetResult(table, posteriors, beliefs)
