"""Causal impact benchmark: the batch analysis against tfcausalimpact, and the live update's cost.

Data: a daily series with one control series, y_t = level_t + 1.2 x_t + noise (a local level,
x a random walk with a weekly pattern), and a +5% step over the last tenth (the post-period).

* ours, batch — `engine.causal_impact(method="nuts")`, cold (compilation included), on
                 local level + regression on x (coefficient a parameter);
* peer         — tfcausalimpact's `CausalImpact(..., model_args={"fit_method": "hmc"})` on the same
                 data: local level + sparse (spike-and-slab) linear regression on standardised data,
                 fitted by `tfp.sts.fit_with_hmc` with its defaults (1 chain, 100 draws after 50
                 warmup steps, a variational start: the API exposes no other settings). It has
                 TensorFlow as a dependency, so it runs in its own Python (`--peer-python`, or the
                 TFCI_PYTHON environment variable; skipped when neither is given);
* ours, live   — `OnlineImpact.update` per post-period observation with S draws (a jitted
                 predict-only step for every draw plus the live summary), median over updates,
                 early and late in the post-period (O(1): the two agree).

Printed: wall times and their ratio (measured in this run), the average effect from both with
its 95% interval, and the live update's ms per observation.

    python bench/impact.py                 # small: 1 year, NUTS 2×300, S = 200
    python bench/impact.py --full          # 3 years, NUTS 4×1000, S = 1000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import pandas as pd

import engine

SPEC = {"irregular": True, "level": {"kind": "local_level"}, "regression": {"columns": ["x"]}}

PEER = r"""
import json, sys, time
import numpy as np, pandas as pd
from causalimpact import CausalImpact
data = np.load(sys.argv[1])
df = pd.DataFrame({"y": data["y"], "x": data["x"]})
n_pre = int(data["n_pre"])
t0 = time.perf_counter()
ci = CausalImpact(df, [0, n_pre - 1], [n_pre, len(df) - 1], model_args={"fit_method": "hmc"})
wall = time.perf_counter() - t0
s = ci.summary_data
print(json.dumps({"wall": wall, "p": float(ci.p_value),
                  "average": [float(s.loc[k, "average"]) for k in ("abs_effect", "abs_effect_lower", "abs_effect_upper")]}))
"""


def simulate(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = 50 + np.cumsum(rng.normal(0, 0.5, n)) + 2 * np.sin(2 * np.pi * np.arange(n) / 7)
    level = 20 + np.cumsum(rng.normal(0, 0.2, n))
    y = level + 1.2 * x + rng.normal(0, 1.0, n)
    n_pre = n - n // 10
    y[n_pre:] *= 1.05
    return y, x, n_pre


def run_peer(python: str, y, x, n_pre) -> dict | None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data.npz")
        np.savez(path, y=y, x=x, n_pre=n_pre)
        script = os.path.join(tmp, "peer.py")
        with open(script, "w") as f:
            f.write(PEER)
        out = subprocess.run([python, script, path], capture_output=True, text=True, timeout=7200)
    if out.returncode != 0:
        print("peer failed:", out.stderr[-2000:])
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def live_cost(draws: np.ndarray, y, x, n_pre: int, n_updates: int) -> tuple[float, float]:
    """Median ms per `OnlineImpact.update` over the first and the last n_updates post-period steps."""
    monitor = engine.OnlineImpact(SPEC, draws, y[:n_pre], x[:n_pre, None])
    jax.block_until_ready(monitor.update(y[n_pre], x[n_pre]))   # compile
    times = []
    for t in range(n_pre + 1, len(y)):
        t0 = time.perf_counter()
        jax.block_until_ready(monitor.update(y[t], x[t]))
        times.append(time.perf_counter() - t0)
    times = np.array(times) * 1e3
    k = min(n_updates, len(times) // 2)
    return float(np.median(times[:k])), float(np.median(times[-k:]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="3 years daily, NUTS 4×1000, S = 1000")
    ap.add_argument("--peer-python", default=os.environ.get("TFCI_PYTHON"),
                    help="a Python with tfcausalimpact installed (default: $TFCI_PYTHON; none: skip the peer)")
    args = ap.parse_args()
    n, chains, warmup, draws, S = (1095, 4, 1000, 1000, 1000) if args.full else (365, 2, 300, 300, 200)
    y, x, n_pre = simulate(n)
    print(f"series: {n} days, post-period {n - n_pre}; NUTS {chains}×({warmup}+{draws}); live S = {S}")

    t0 = time.perf_counter()
    res = engine.causal_impact(SPEC, y, x[:, None], intervention=n_pre, method="nuts", chains=chains,
                               warmup=warmup, draws=draws, check_regressors=False)
    ours = time.perf_counter() - t0
    a = res.average
    print(f"ours, batch:  {ours:8.1f} s   average effect {a.mean:.3f} [{a.lower:.3f}, {a.upper:.3f}]  "
          f"p = {res.p_no_effect:.3g}")
    true_effect = float(np.mean(y[n_pre:]) * (1 - 1 / 1.05))
    print(f"              true average effect {true_effect:.3f}")

    theta = res.draws[np.random.default_rng(0).choice(len(res.draws), S, replace=len(res.draws) < S)]
    early, late = live_cost(theta, y, x, n_pre, 30)
    print(f"ours, live:   {early:8.3f} ms per observation (first steps), {late:.3f} ms (last steps), S = {S}")

    if args.peer_python:
        peer = run_peer(args.peer_python, y, x, n_pre)
        if peer is not None:
            pa = peer["average"]
            print(f"peer (tfcausalimpact, hmc defaults): {peer['wall']:8.1f} s   average effect {pa[0]:.3f} "
                  f"[{pa[1]:.3f}, {pa[2]:.3f}]  p = {peer['p']:.3g}")
            print(f"ratio: ours is {peer['wall'] / ours:.1f}× the peer's speed (wall, cold, this run)")
    else:
        print("peer skipped: pass --peer-python (a Python with tfcausalimpact) or set TFCI_PYTHON")


if __name__ == "__main__":
    sys.exit(main())
