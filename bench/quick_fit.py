"""Quick fit benchmark: the app's Quick fit (`app.viewmodels.fit_model.quick_fit`) vs statsmodels `fit()`.

Cases: Nile with its suggested local level, AirPassengers (log) with its suggested model, and a
five-component model (local linear trend + 12-period dummy seasonal + damped stochastic cycle +
AR(1)) on the first 60 log AirPassengers values.

Each case is timed three ways, each in a fresh Python process so nothing compiled is shared:
  cold  an empty on-disk compilation cache (STREAMSSM_JAX_CACHE points at an empty folder);
  disk  the same folder again, now filled by the cold run (a server whose cache was warmed);
  hot   a second fit of the same model in the cold run's process (a server that already fitted it).
The import of the engine and the app (not part of a fit on a running server) is excluded.
statsmodels' `fit()` (its defaults) runs in this process, best of three.

    python bench/quick_fit.py [--case nile] [--case air] [--case five]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

FIVE = {"irregular": True, "level": {"kind": "local_linear_trend"},
        "seasonal": [{"period": 12, "form": "dummy", "stochastic": True}],
        "cycle": {"damped": True, "stochastic": True}, "autoregressive": {"order": 1}}


def case_data(name: str):
    """(spec dict, y) for a case, read as the app reads the shipped datasets."""
    import engine

    if name == "nile":
        entry = engine.catalogue_entry("nile")
        return entry["suggested_spec"], engine.load_dataset("nile")["flow"].to_numpy(float)
    air = np.log(engine.load_dataset("airpassengers")["passengers"].to_numpy(float))
    if name == "air":
        return engine.catalogue_entry("airpassengers")["suggested_spec"], air
    if name == "five":
        return FIVE, air[:60]
    raise ValueError(f"unknown case {name!r}; use nile, air or five")


def statsmodels_model(spec: dict, y):
    """The statsmodels UnobservedComponents equivalent of the three cases' specs."""
    import statsmodels.api as sm

    kw = {"level": spec["level"]["kind"].replace("_", " ")}
    for s in spec.get("seasonal", []):
        kw.update(seasonal=int(s["period"]), stochastic_seasonal=s.get("stochastic", True))
    if spec.get("cycle"):
        kw.update(cycle=True, damped_cycle=True, stochastic_cycle=True, cycle_period_bounds=(6, 48))
    if spec.get("autoregressive"):
        kw["autoregressive"] = spec["autoregressive"]["order"]
    return sm.tsa.UnobservedComponents(y, use_exact_diffuse=True, **kw)


def run_one(name: str) -> dict:
    """Time the app's quick fit of one case in this (fresh) process: first fit, then a second one."""
    t0 = time.perf_counter()
    from app.viewmodels.fit_model import quick_fit
    import engine

    engine.enable_compilation_cache()   # as the server's start does (STREAMSSM_JAX_CACHE names the folder)
    imported = time.perf_counter() - t0
    spec_dict, y = case_data(name)
    spec = engine.ModelSpec.from_dict(spec_dict)
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = quick_fit(spec, y, None)
        times.append(time.perf_counter() - t0)
    return {"import": imported, "first": times[0], "second": times[1], "loglik": fit.loglik,
            "converged": fit.converged, "message": fit.message}


def in_fresh_process(name: str, cache: str) -> dict:
    env = dict(os.environ, STREAMSSM_JAX_CACHE=cache, JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", name], env=env, cwd=root,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def statsmodels_time(name: str) -> tuple[float, float]:
    spec, y = case_data(name)
    best, llf = np.inf, np.nan
    for _ in range(3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            res = statsmodels_model(spec, y).fit(disp=False)
            best = min(best, time.perf_counter() - t0)
            llf = res.llf
    return best, float(llf)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", choices=["nile", "air", "five"])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one)))
        return
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    print(f"{'case':<6}{'cold s':>9}{'disk s':>9}{'hot s':>9}{'sm s':>9}{'cold/sm':>9}{'disk/sm':>9}"
          f"{'hot/sm':>9}  loglik (ours, statsmodels)  converged")
    for name in args.case or ["nile", "air", "five"]:
        with tempfile.TemporaryDirectory() as cache:
            cold = in_fresh_process(name, cache)
            disk = in_fresh_process(name, cache)
        sm_s, sm_llf = statsmodels_time(name)
        c, d, h = cold["first"], disk["first"], cold["second"]
        print(f"{name:<6}{c:>9.2f}{d:>9.2f}{h:>9.2f}{sm_s:>9.2f}{c / sm_s:>9.1f}{d / sm_s:>9.1f}{h / sm_s:>9.1f}"
              f"  {cold['loglik']:.4f}, {sm_llf:.4f}  {cold['converged']} ({cold['message'][:60]})")


if __name__ == "__main__":
    main()
