"""NUTS wall time and ESS/s: StreamSSM vs pymc-extras statespace (NumPyro sampler), same models and priors.

    python bench/nuts.py [--chains 4 --warmup 1000 --draws 1000] [--only nile|air] [--skip-peer]

Models: Nile (local level) and log AirPassengers (local linear trend + 12-period dummy
seasonal). Both samplers get the same half-normal priors on the *variances* (our data-scaled
defaults). Wall times include compilation, each measured cold in its own process. pymc-extras
has no exact diffuse start: its initial states are sampled with a wide normal prior and P0 is
set to a large multiple of the identity (its documented approach).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

MODELS = {
    "nile": ({"irregular": True, "level": {"kind": "local_level"}}, "nile", "flow", None),
    "air": ({"irregular": True, "level": {"kind": "local_linear_trend"},
             "seasonal": [{"period": 12, "form": "dummy", "stochastic": True}]}, "airpassengers", "passengers", "log"),
}


def load(name):
    import engine
    spec, ds, col, transform = MODELS[name]
    y = engine.load_dataset(ds)[col].to_numpy(float)
    return spec, (np.log(y) if transform == "log" else y)


def min_ess(idata) -> float:
    import arviz as az
    s = az.summary(idata, kind="diagnostics")
    return float(s["ess_bulk"].min())


def run_ours(name, chains, warmup, draws):
    import arviz  # noqa: F401  (imports are outside the timing, for both samplers)
    import engine
    spec, y = load(name)
    t0 = time.perf_counter()
    idata = engine.fit_nuts(spec, y, chains=chains, warmup=warmup, draws=draws, seed=0)
    wall = time.perf_counter() - t0
    t1 = time.perf_counter()
    engine.fit_nuts(spec, y, chains=chains, warmup=warmup, draws=draws, seed=1)
    warm = time.perf_counter() - t1
    d = engine.diagnose(idata)
    return {"wall": wall, "warm": warm, "ess": min_ess(idata), "divergences": d.divergences,
            "means": {k: float(idata.posterior[k].mean()) for k in idata.posterior.data_vars}}


def run_pymc_extras(name, chains, warmup, draws):
    import engine
    import pymc as pm
    import pytensor.tensor as pt
    from pymc_extras.statespace import structural as st

    spec, y = load(name)
    priors = engine.default_priors(spec, y)
    if name == "nile":
        comps = st.LevelTrend(order=1, innovations_order=1) + st.MeasurementError()
        shocks = [("sigma_level_trend", ["sigma2.level"])]
    else:
        comps = (st.LevelTrend(order=2, innovations_order=[1, 1])
                 + st.TimeSeasonality(season_length=12, innovations=True) + st.MeasurementError())
        shocks = [("sigma_level_trend", ["sigma2.level", "sigma2.trend"]),
                  ("sigma_Seasonal[s=12, d=1]", ["sigma2.seasonal"])]
    mod = comps.build(verbose=False, mode="JAX")
    t0 = time.perf_counter()
    with pm.Model(coords=mod.coords):
        k = mod.k_states
        pm.Deterministic("P0", pt.eye(k) * 1e6 * np.var(y), dims=mod.param_dims["P0"])
        pm.Normal("initial_level_trend", mu=0, sigma=10 * np.abs(y).max(),
                  dims=mod.param_dims["initial_level_trend"])
        if name == "air":
            pm.Normal("params_Seasonal[s=12, d=1]", 0, 10 * np.std(y),
                      dims=mod.param_dims["params_Seasonal[s=12, d=1]"])
        for pname, ours in shocks:   # half-normal priors on the variances, as ours
            v = [pm.HalfNormal(n.replace(".", "_"), sigma=priors[n]["scale"]) for n in ours]
            dims = mod.param_dims.get(pname)
            pm.Deterministic(pname, pt.sqrt(pt.stack(v)) if dims else pt.sqrt(v[0]), dims=dims)
        v_obs = pm.HalfNormal("sigma2_irregular", sigma=priors["sigma2.irregular"]["scale"])
        pm.Deterministic("sigma_MeasurementError", pt.sqrt(v_obs))
        mod.build_statespace_graph(y[:, None], mode="JAX")
        idata = pm.sample(draws=draws, tune=warmup, chains=chains, nuts_sampler="numpyro", random_seed=0,
                          progressbar=False, compute_convergence_checks=False)
    wall = time.perf_counter() - t0
    import arviz as az
    keep = [v for v in idata.posterior.data_vars if v.startswith("sigma2_")]
    ess = float(az.summary(idata, var_names=keep, kind="diagnostics")["ess_bulk"].min())
    return {"wall": wall, "ess": ess, "divergences": int(idata.sample_stats["diverging"].sum()),
            "means": {k: float(idata.posterior[k].mean()) for k in keep}}


def child(which, name, chains, warmup, draws):
    """Run one sampler in a fresh interpreter; return its JSON result.

    Ours runs with an empty compilation cache (STREAMSSM_JAX_CACHE=0) so "wall" includes every
    compilation, as a first-ever run; "warm" is a second fit in the same process.
    """
    code = (f"import json, sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
            f"import nuts; print('RESULT' + json.dumps(nuts.run_{which}({name!r}, {chains}, {warmup}, {draws})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"),
                              "STREAMSSM_JAX_CACHE": "0"})
    for line in out.stdout.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[6:])
    raise RuntimeError(f"{which} on {name} failed:\n{out.stderr[-3000:]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1000)
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--only", choices=sorted(MODELS))
    ap.add_argument("--skip-peer", action="store_true")
    a = ap.parse_args()
    rows = []
    for name in [a.only] if a.only else list(MODELS):
        ours = child("ours", name, a.chains, a.warmup, a.draws)
        peer = None if a.skip_peer else child("pymc_extras", name, a.chains, a.warmup, a.draws)
        rows.append((name, ours, peer))
        print(f"{name}: ours {json.dumps(ours)}", flush=True)
        if peer:
            print(f"{name}: pymc-extras {json.dumps(peer)}", flush=True)
    print(f"\nNUTS {a.chains} chains x ({a.warmup} warmup + {a.draws} draws), wall incl. compile, cold process")
    print(f"{'model':<8}{'ours s':>9}{'ours warm s':>13}{'ours ESS/s':>12}{'pymc-extras s':>15}"
          f"{'its ESS/s':>11}{'speed-up':>10}{'ESS/s ratio':>13}")
    for name, o, p in rows:
        es = o["ess"] / o["wall"]
        if p:
            pe = p["ess"] / p["wall"]
            print(f"{name:<8}{o['wall']:>9.2f}{o['warm']:>13.2f}{es:>12.1f}{p['wall']:>15.2f}{pe:>11.1f}"
                  f"{p['wall'] / o['wall']:>9.1f}x{es / pe:>12.1f}x")
        else:
            print(f"{name:<8}{o['wall']:>9.2f}{o['warm']:>13.2f}{es:>12.1f}")


if __name__ == "__main__":
    main()
