"""Many series at once: MAP fits of a sensor fleet, statsmodels in a loop vs fit_many (local, Ray).

Fleet: engine.make_fleet(series, time) (local linear trend + a two-harmonic seasonal of period 24,
gaps, late starts, outliers). Timed in one run:

  statsmodels  UnobservedComponents(...).fit() in a loop, on a sample of --sm-sample series;
               series/s extrapolated from the sample (said so in the output)
  local        engine.fit_many(method="map"), vmapped batches in this process
  ray          engine.fit_many(method="map", backend="ray") on a local Ray with --workers workers
  filter       engine.fit_many(method="filter") for --filter-series series (log-likelihood + anomalies)

Peak memory: this process (resource.getrusage) and the Ray workers' resident sets, sampled.
Usage: python bench/fleet.py [--series 10000 --time 500] [--quick]
"""

from __future__ import annotations

import argparse
import os
import resource
import threading
import time
import warnings

import numpy as np


def _statsmodels_rate(Y, n_sample: int) -> float:
    from statsmodels.tsa.statespace.structural import UnobservedComponents

    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    for y in Y[:n_sample]:
        UnobservedComponents(y, level="local linear trend", freq_seasonal=[{"period": 24, "harmonics": 2}],
                             use_exact_diffuse=True).fit(disp=False)
    return n_sample / (time.perf_counter() - t0)


class _RayMemory:
    """Peak summed RSS of Ray worker processes (children of this process's Ray), sampled every 0.5 s."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        while not self._stop.is_set():
            total = 0
            for p in psutil.process_iter(["cmdline", "memory_info"]):
                try:
                    if (p.info["cmdline"] or [""])[0].startswith("ray::"):
                        total += p.info["memory_info"].rss
                except (psutil.Error, TypeError):
                    continue
            self.peak = max(self.peak, total)
            self._stop.wait(0.5)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=10_000)
    ap.add_argument("--time", type=int, default=500)
    ap.add_argument("--filter-series", type=int, default=100_000)
    ap.add_argument("--sm-sample", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=None,
                    help="series per batch (default: the engine's choice, engine.fleet.default_batch_size)")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray run (statsmodels vs fit_many local only)")
    ap.add_argument("--quick", action="store_true", help="smoke sizes: 64 series, T=120, 5 statsmodels fits")
    args = ap.parse_args()
    if args.quick:
        args.series, args.time, args.filter_series, args.sm_sample, args.batch_size = 64, 120, 2000, 5, 32

    import engine
    from engine import cluster
    from engine.cores import usable_cores
    from engine.fleet import default_batch_size

    fleet = engine.make_fleet(args.series, args.time, seed=0)
    Y, spec = fleet.Y, fleet.spec
    chosen = args.batch_size is None
    if chosen:
        args.batch_size = default_batch_size(engine.spec.as_spec(spec), args.series, usable_cores())
    print(f"fleet: {args.series} series × T={args.time}, spec {spec}, batch {args.batch_size}{' (default)' if chosen else ''}, "
          f"CPUs {os.cpu_count()}, load average {os.getloadavg()[0]:.1f} (timings on a loaded machine are inflated)")

    sm_rate = _statsmodels_rate(Y, min(args.sm_sample, args.series))
    print(f"statsmodels UC fit loop: {sm_rate:.2f} series/s (timed on {min(args.sm_sample, args.series)} series, "
          f"extrapolated to the fleet: {args.series / sm_rate:.0f} s)")

    # compile once on one batch (the persistent cache then serves the Ray workers too)
    t0 = time.perf_counter()
    engine.fit_many(spec, Y[: args.batch_size], method="map", batch_size=args.batch_size)
    print(f"first batch incl. compile: {time.perf_counter() - t0:.1f} s")

    t0 = time.perf_counter()
    local = engine.fit_many(spec, Y, method="map", batch_size=args.batch_size)
    local_s = time.perf_counter() - t0
    local_rate = args.series / local_s
    peak_local = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"fit_many local (MAP): {local_rate:.1f} series/s ({local_s:.1f} s), "
          f"{local_rate / sm_rate:.1f}× statsmodels; peak RSS {peak_local:.0f} MiB; "
          f"status {local.table['status'].value_counts().to_dict()}; "
          f"iterations mean {local.table['n_iterations'].mean():.1f}, max {local.table['n_iterations'].max():.0f}")
    if args.no_ray:
        print(f"load average at the end {os.getloadavg()[0]:.1f}")
        return

    cluster.connect(None, num_cpus=args.workers)
    engine.fit_many(spec, Y[: 2 * args.batch_size], method="map", batch_size=args.batch_size, backend="ray")  # warm
    with _RayMemory() as mem:
        t0 = time.perf_counter()
        remote = engine.fit_many(spec, Y, method="map", batch_size=args.batch_size, backend="ray")
        ray_s = time.perf_counter() - t0
    ray_rate = args.series / ray_s
    same = np.allclose(remote.table["loglik"], local.table["loglik"], rtol=1e-9, equal_nan=True)
    print(f"fit_many ray, {args.workers} workers (MAP): {ray_rate:.1f} series/s ({ray_s:.1f} s), "
          f"{ray_rate / sm_rate:.1f}× statsmodels (target ≥ 20×); workers' peak RSS {mem.peak / 2**20:.0f} MiB; "
          f"same table as local: {same}")
    cluster.shutdown()

    params = {n: 1.0 for n in engine.param_names(spec)}
    big = engine.make_fleet(args.filter_series, args.time, seed=1).Y
    filter_batch = None if chosen else args.batch_size * 4
    engine.fit_many(spec, big[: 4 * args.batch_size], method="filter", params=params, batch_size=filter_batch)
    t0 = time.perf_counter()
    filt = engine.fit_many(spec, big, method="filter", params=params, batch_size=filter_batch)
    filt_s = time.perf_counter() - t0
    print(f"fit_many filter: {args.filter_series / filt_s:.0f} series/s ({args.filter_series} series in "
          f"{filt_s:.1f} s, local), {int(filt.table['n_anomalies'].sum())} anomalies flagged")


if __name__ == "__main__":
    main()
