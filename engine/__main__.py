"""Command line: `python -m engine batch ...` fits one model to every series of a table, headless.

Example:
    python -m engine batch --data wide.csv --spec spec.json --method mle --ray-address auto \\
        --out results.parquet
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

DESCRIPTION = "StreamSSM engine from the command line."
BATCH_HELP = """Fit one structural model to every series of a table (a fleet), in batches.

The table is a CSV or Parquet file, either wide (a time column, then one column per
series; ragged ends and gaps are empty cells) or long (columns series, time, value).
The result has one row per series: series, status (ok / not_converged / failed), message,
n_obs, loglik, one column per parameter (statsmodels names), n_anomalies, and the
method's diagnostics. Progress goes to stderr; a bad input ends with exit status 2 and a
one-line message."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    b = sub.add_parser("batch", help="fit one model to every series of a table", description=BATCH_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("--data", required=True, metavar="FILE",
                   help="CSV or Parquet table: wide (time column + one column per series) or long "
                        "(columns series, time, value)")
    b.add_argument("--spec", required=True, metavar="JSON",
                   help="the model: a JSON file, or the JSON text itself "
                        "(e.g. '{\"irregular\": true, \"level\": {\"kind\": \"local_level\"}}')")
    b.add_argument("--method", default="mle", choices=["mle", "map", "nuts", "filter"],
                   help="mle: maximum likelihood; map: posterior mode with default (or the spec's) priors; "
                        "nuts: NUTS per series (small runs); filter: log-likelihood and anomalies at --params "
                        "(default: mle)")
    b.add_argument("--params", metavar="JSON",
                   help="for --method filter: parameters for every series as JSON (file or text), or a "
                        "CSV/Parquet table with a 'series' column and one column per parameter")
    b.add_argument("--backend", choices=["local", "ray"],
                   help="local: this process; ray: Ray tasks (default: ray when --ray-address is given, else local)")
    b.add_argument("--ray-address", metavar="ADDRESS",
                   help="the Ray cluster to use: host:port, or 'auto' for the one RAY_ADDRESS or a local "
                        "`ray start` names; without it --backend ray starts a local Ray on 127.0.0.1")
    b.add_argument("--batch-size", type=int, metavar="N",
                   help="series per batch (vectorised together; default: about 4096 covariance entries, "
                        "series × states², at most 256 series)")
    b.add_argument("--seed", type=int, default=0, help="seed of the job (nuts: one seed per series from it)")
    b.add_argument("--time-column", metavar="NAME", help="the time column of a wide CSV (default: detected)")
    b.add_argument("--out", required=True, metavar="FILE", help="where to write the table: .parquet or .csv")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _read_json(text: str, what: str):
    path = Path(text)
    try:
        raw = path.read_text() if not text.lstrip().startswith(("{", "[")) and path.exists() else text
        return json.loads(raw)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{what}: not a readable JSON file or JSON text ({err})") from None


def _read_table(path: str, time_column: str | None = None):
    """A table from CSV (the engine's safe parser, no size limit) or Parquet."""
    import pandas as pd

    import engine

    p = Path(path)
    if not p.exists():
        raise ValueError(f"--data: no such file {path}")
    if p.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(p)
    with open(p, "rb") as f:
        head = f.readline().decode("utf-8-sig", "replace").strip().lower().split(",")
    if {"series", "time", "value"} <= {h.strip() for h in head}:
        return pd.read_csv(p)          # long tables carry text series names: the numeric parser refuses them
    with open(p, "rb") as f:
        table = engine.read_table(f, max_bytes=None, time_column=time_column)
    column = table.attrs.get("time_column")
    return table.drop(columns=[column]) if column else table


class _Progress:
    """A progress bar on stderr: tqdm when installed, else a plain line per batch."""

    def __init__(self, quiet: bool):
        self.quiet, self.bar, self.t0 = quiet, None, time.perf_counter()

    def __call__(self, done: int, total: int):
        if self.quiet:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            rate = done / max(time.perf_counter() - self.t0, 1e-9)
            print(f"{done}/{total} series ({rate:.1f}/s)", file=sys.stderr, flush=True)
            return
        if self.bar is None:
            self.bar = tqdm(total=total, unit="series", file=sys.stderr)
        self.bar.update(done - self.bar.n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def batch(args) -> int:
    import pandas as pd

    import engine

    engine.enable_compilation_cache()   # this command owns its process: a rerun reuses the compiled programs
    spec = _read_json(args.spec, "--spec")
    engine.ModelSpec.from_dict(spec)
    data = _read_table(args.data, args.time_column)
    params = None
    if args.method == "filter":
        if not args.params:
            raise ValueError("--method filter needs --params")
        params = _read_table(args.params) if Path(args.params).suffix.lower() in (".csv", ".parquet", ".pq") \
            and not args.params.lstrip().startswith("{") else _read_json(args.params, "--params")
        if isinstance(params, pd.DataFrame) and "series" in params.columns:
            params["series"] = params["series"].astype(str)
    out = Path(args.out)
    if out.suffix.lower() not in (".parquet", ".csv"):
        raise ValueError(f"--out must end in .parquet or .csv, got {args.out}")
    backend = args.backend or ("ray" if args.ray_address else "local")
    progress = _Progress(args.quiet)
    try:
        result = engine.fit_many(spec, data, method=args.method, backend=backend, address=args.ray_address,
                                 batch_size=args.batch_size, progress=progress, params=params, seed=args.seed)
    finally:
        progress.close()
    table = result.table
    if out.suffix.lower() == ".parquet":
        table.to_parquet(out, index=False)
    else:
        table.to_csv(out, index=False)
    counts = table["status"].value_counts().to_dict()
    if not args.quiet:
        print(f"wrote {len(table)} series to {out}: " + ", ".join(f"{v} {k}" for k, v in counts.items()),
              file=sys.stderr)
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"batch": batch}[args.command](args)
    except (ValueError, ConnectionError, OSError) as err:
        message = " ".join(str(err).split())
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
