"""One batch of a fleet: `run_batch`, the whole unit of work that the backends move.

A batch is a pure function of its inputs (a seed per series), so a retried batch gives the same
rows. Series are cut into batches of one fixed shape (the last batch padded with copies of a
usable series, which are dropped), so one compiled program serves every batch of a job. Every
method ends in the same evaluation at the fitted parameters: log-likelihood, anomaly count
and, with keep=True, each series' online belief after its last observation.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .. import kalman
from ..mle import start_points
from ..model import as_param_vector
from ..spec import ModelSpec, as_spec, param_names
from ..system import layout
from .coordinates import Coordinates, make_coordinates, member_args, params_of, start_design
from .filtering import batch_innovations, late_starts_to_end, start_moves_to_end
from .scoring import MAX_ITER, optimise
from .table import series_seed

METHODS = ("mle", "map", "nuts", "filter")
ANOMALY_Z = 3.0          # |standardised one-step innovation| above this counts as an anomaly
NUTS_DEFAULTS = {"chains": 2, "warmup": 300, "draws": 300}


class FleetJob(NamedTuple):
    """What every batch of a job shares (the Ray backend puts it in the object store once)."""

    spec: dict
    method: str
    batch_size: int                 # every batch is padded to this many series (one compile)
    seed: int = 0
    keep: bool = False
    exog: np.ndarray | None = None  # (time, k) regressors shared by every series
    priors: dict | None = None      # map/nuts: priors for every series ("auto" scales per series)
    params: dict | None = None      # filter: one parameter set for every series
    maxiter: int = MAX_ITER
    nuts: dict | None = None        # nuts: chains, warmup, draws, target_accept, ...


class Batch(NamedTuple):
    """Consecutive series [start, start + len(ids)) of the fleet."""

    start: int
    ids: list
    Y: np.ndarray                   # (series, time)
    exog: np.ndarray | None = None  # (series, time, k) per-series regressors
    params: np.ndarray | None = None  # (series, k) filter: per-series parameters


class BatchOutput(NamedTuple):
    """A batch's rows of the table, and (keep=True) its posteriors and beliefs by series id."""

    rows: pd.DataFrame
    posteriors: dict
    beliefs: dict


def table_columns(spec: ModelSpec, method: str) -> list[str]:
    """The columns of a job's table, in order, for a spec and method."""
    cols = ["series", "status", "message", "n_obs", "loglik", *param_names(spec), "n_anomalies"]
    if method in ("mle", "map"):
        cols.append("n_iterations")
    if method == "nuts":
        cols += ["r_hat_max", "ess_bulk_min", "divergences", "trustworthy"]
    return cols


def failed_output(job: FleetJob, batch: Batch, message: str) -> BatchOutput:
    """Every series of the batch marked failed with `message` (the rest of the job goes on)."""
    spec = as_spec(job.spec)
    rows = pd.DataFrame({c: [np.nan] * len(batch.ids) for c in table_columns(spec, job.method)})
    rows["series"] = list(batch.ids)
    rows["status"] = "failed"
    rows["message"] = message
    rows["n_obs"] = np.isfinite(batch.Y).sum(axis=1)
    return BatchOutput(rows, {}, {})


def run_batch(job: FleetJob, batch: Batch) -> BatchOutput:
    """Fit (or filter) one batch; an error fails only this batch's series, with its message."""
    try:
        return _run_batch(job, batch)
    except Exception as err:   # noqa: BLE001 - reported in the table, the job goes on
        return failed_output(job, batch, f"{type(err).__name__}: {err}")


class _Fitted(NamedTuple):
    """What a method gives for the padded batch, before the common evaluation."""

    params: np.ndarray        # (batch, k)
    converged: np.ndarray     # (batch,) bool
    extra: dict               # column → (series,) values
    messages: dict            # series position → message
    failed: np.ndarray        # (series,) bool: the method could not fit this series
    posteriors: dict          # series id → InferenceData (nuts)


def _run_batch(job: FleetJob, batch: Batch) -> BatchOutput:
    """`run_batch` without the guard: the usable series fitted, the others failed with their reason."""
    spec = as_spec(job.spec)
    names = param_names(spec)
    n, n_time = batch.Y.shape
    n_obs = np.isfinite(batch.Y).sum(axis=1)
    n_diffuse = sum(k for *_, k, _, diffuse in layout(spec).blocks if diffuse)
    problems = [None if m > n_diffuse else
                ("no observations (every value is missing)" if m == 0 else
                 f"only {m} observation(s): the model has {n_diffuse} diffuse state(s) and needs more")
                for m in n_obs]
    good = np.array([p is None for p in problems])
    rows = failed_output(job, batch, "").rows
    rows["message"] = [p or "" for p in problems]
    if not good.any():
        return BatchOutput(rows, {}, {})
    # every batch has job.batch_size members: unusable series and the padding copy a usable one
    fill = np.where(good, np.arange(n), int(np.flatnonzero(good)[0]))
    fill = np.concatenate([fill, np.full(max(job.batch_size - n, 0), fill[-1])])[: max(job.batch_size, n)]
    Y = jnp.asarray(batch.Y[fill])
    X = jnp.asarray(batch.exog[fill]) if batch.exog is not None else \
        (None if job.exog is None else jnp.asarray(job.exog))
    if job.method == "filter":
        P = batch.params[fill] if batch.params is not None else \
            np.broadcast_to(np.asarray(as_param_vector(spec, job.params)), (len(fill), len(names)))
        fitted = _Fitted(np.asarray(P, dtype=float), np.ones(len(fill), bool), {}, {}, np.zeros(n, bool), {})
    elif job.method in ("mle", "map"):
        fitted = _optimise_batch(job, spec, Y, X, n)
    elif job.method == "nuts":
        fitted = _nuts_batch(job, spec, batch, good, fill, X)
    else:
        raise ValueError(f"method={job.method!r} is not one of {METHODS}")

    ll, n_anom, final = jax.device_get(_evaluate(spec, jnp.asarray(fitted.params), Y, X))
    P = fitted.params
    rows["loglik"] = ll[:n]
    rows["n_anomalies"] = n_anom[:n]
    for j, name in enumerate(names):
        rows[name] = P[:n, j]
    for col, values in fitted.extra.items():
        rows[col] = values
    for i, message in fitted.messages.items():
        rows.loc[i, "message"] = message
    finite = np.isfinite(ll[:n])
    rows.loc[good & ~finite & ~fitted.failed, "message"] = "the log-likelihood is not finite at these parameters"
    usable = good & finite & ~fitted.failed
    rows["status"] = np.where(usable, np.where(fitted.converged[:n], "ok", "not_converged"), "failed")
    rows.loc[~usable, [*names, "loglik", "n_anomalies"]] = np.nan
    posteriors, beliefs = dict(fitted.posteriors), {}
    if job.keep and job.method != "nuts":
        for i in np.flatnonzero(usable):
            posteriors[batch.ids[i]] = dict(zip(names, map(float, P[i])))
            beliefs[batch.ids[i]] = _belief(final, i, n_time)
    return BatchOutput(rows, posteriors, beliefs)


def _optimise_batch(job: FleetJob, spec: ModelSpec, Y, X, n: int) -> _Fitted:
    """MLE/MAP: the `fit_mle` start design in each member's coordinates, best start, scoring."""
    co = make_coordinates(spec, job.method, job.priors)
    Yn, Xn = np.asarray(Y), None if X is None else np.asarray(X)
    x_of = lambda i: None if Xn is None else (Xn[i] if Xn.ndim == 3 else Xn)
    A_mle = np.stack([member_args(spec, Coordinates("mle"), Yn[i], x_of(i), None) for i in range(len(Yn))])
    A = A_mle if co.method == "mle" else \
        np.stack([member_args(spec, co, Yn[i], x_of(i), job.priors) for i in range(len(Yn))])
    A_mle, A = jnp.asarray(A_mle), jnp.asarray(A)
    Z0 = start_design(spec, co, jnp.asarray(start_points(spec)), A_mle, A)
    # the fit only needs the likelihood (the table's numbers and beliefs come from the series as given)
    Y_fit = jnp.asarray(late_starts_to_end(Yn)) if start_moves_to_end(spec) else Y
    opt = jax.device_get(optimise(spec, co, Z0, A, Y_fit, X, int(job.maxiter)))
    P = np.asarray(params_of(spec, co, jnp.asarray(opt.z), A))
    iterations = np.asarray(opt.iterations)
    grad = np.max(np.abs(np.asarray(opt.grad)), axis=1)
    messages = {i: f"no convergence in {int(iterations[i])} iterations (max |gradient| {grad[i]:.2e} per observation)"
                for i in range(n) if not opt.converged[i]}
    return _Fitted(P, np.asarray(opt.converged), {"n_iterations": iterations[:n]}, messages, np.zeros(n, bool), {})


def _belief(final: kalman.FilterState, i: int, n_time: int):
    """Member i's filter state after the last step, as a one-draw `engine.Belief`."""
    from ..online import Belief

    fs = jax.tree_util.tree_map(lambda a: np.asarray(a)[..., i:i + 1], final)
    return Belief(fs, np.zeros(1), np.zeros(2), np.asarray(n_time, dtype=np.int64))


def _nuts_batch(job: FleetJob, spec: ModelSpec, batch: Batch, good, fill, X) -> _Fitted:
    """NUTS per series (its chains on threads), seeded per series; parameters are posterior means."""
    from ..bayes import fit_nuts
    from ..diagnostics import diagnose

    settings = {**NUTS_DEFAULTS, **(job.nuts or {})}
    names = param_names(spec)
    n = len(batch.ids)
    means = np.full((n, len(names)), np.nan)
    converged = np.zeros(len(fill), bool)
    extra = {"r_hat_max": np.full(n, np.nan), "ess_bulk_min": np.full(n, np.nan),
             "divergences": np.full(n, np.nan), "trustworthy": np.zeros(n, bool)}
    messages, posteriors = {}, {}
    for i in np.flatnonzero(good):
        x = None if X is None else np.asarray(X[i] if X.ndim == 3 else X)
        try:
            idata = fit_nuts(spec, batch.Y[i], x, seed=series_seed(job.seed, batch.start + i),
                             priors=job.priors, **settings)
            diag = diagnose(idata)
        except Exception as err:   # noqa: BLE001 - this series fails, the others go on
            messages[i] = f"{type(err).__name__}: {err}"
            continue
        means[i] = [float(idata.posterior[name].mean()) for name in names]
        extra["r_hat_max"][i] = float(diag.table["r_hat"].max())
        extra["ess_bulk_min"][i] = float(diag.table["ess_bulk"].min())
        extra["divergences"][i] = diag.divergences
        extra["trustworthy"][i] = diag.trustworthy
        converged[i] = diag.trustworthy
        if not diag.trustworthy:
            messages[i] = "; ".join(diag.reasons)
        if job.keep:
            posteriors[batch.ids[i]] = idata
    fitted = ~np.isnan(means).any(axis=1)
    stand_in = means[fitted][0] if fitted.any() else np.ones(len(names))   # evaluated, then dropped
    P = np.where(fitted[:, None], means, stand_in)[fill]
    failed = good & ~fitted
    return _Fitted(P, converged, extra, messages, failed, posteriors)



@partial(jax.jit, static_argnames=("spec",))
def _evaluate(spec, P, Y, X):
    """Log-likelihood, anomaly count and final filter state at parameters P (series, k)."""
    llf, v, F, kind, final = batch_innovations(spec, P, Y, X)
    standard = kind == 1.0
    z = jnp.where(standard, v / jnp.sqrt(jnp.where(standard, F, 1.0)), 0.0)
    return jnp.sum(llf, axis=0), jnp.sum(jnp.abs(z) > ANOMALY_Z, axis=0), final

