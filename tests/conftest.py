"""Test-wide setup: JAX on the CPU in float64, a fixed numpy seed, quiet statsmodels."""

from __future__ import annotations

import concurrent.futures
import os
import sys

# Before jax is imported anywhere: the engine tests run on the CPU (an explicit
# JAX_PLATFORMS in the environment still wins).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# No on-disk compilation cache in the suite: its server, notebook kernels and Ray workers
# run in parallel processes, and a cache entry read while another process writes it can
# crash the reader. (Subprocesses inherit this.)
os.environ.setdefault("STREAMSSM_JAX_CACHE", "0")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import engine  # noqa: E402  (importing the engine enables float64 in JAX)

engine.enable_compilation_cache()   # as the app and the CLI do; STREAMSSM_JAX_CACHE=0 (above) keeps it off

SEED = 20240611


def pytest_configure(config):
    # statsmodels' reference fits and models warn about convergence, frequency-less
    # indexes and model strings that override flags; none of that is under test.
    try:
        import statsmodels.tools.sm_exceptions  # noqa: F401
    except ImportError:  # the engine tests need it; other suites can run without
        return
    for line in (
        "ignore::statsmodels.tools.sm_exceptions.ConvergenceWarning",
        "ignore::statsmodels.tools.sm_exceptions.ValueWarning",
        "ignore::statsmodels.tools.sm_exceptions.SpecificationWarning",
    ):
        config.addinivalue_line("filterwarnings", line)


def _group(item) -> str:
    """The pytest-xdist group of a test: one served app and one Chromium for all the browser
    tests, one kernel per notebook, the tests of an engine package together (tests/engine/kalman/
    ...: its modules compile the same models), else its module (whose fixtures and compiled
    programs its tests share)."""
    path = item.nodeid.split("::")[0]
    if path.startswith("tests/ui/"):
        return "tests/ui"
    if path.startswith("tests/notebooks/"):
        return item.nodeid
    parts = path.split("/")
    if parts[:2] == ["tests", "engine"] and len(parts) > 3:
        return "/".join(parts[:3])
    return path


# The groups that take longest on one worker (measured with --durations), longest first: the
# scheduler hands them out in this order, then the others in collection order, so that the last
# groups to start are short ones and neither worker is left alone with a long group at the end.
LONGEST_FIRST = (
    "tests/ui/",
    "tests/engine/kalman/",
    "tests/notebooks/test_notebooks.py::test_notebook_runs[04",
    "tests/notebooks/test_notebooks.py::test_notebook_runs[02",
    "tests/notebooks/test_notebooks.py::test_notebook_runs[03",
    "tests/engine/impact/",
    "tests/engine/online/",
    "tests/engine/nongaussian/",
    "tests/app/test_stream_model.py",
    "tests/engine/test_bayes.py",
    "tests/engine/fleet/",
    "tests/engine/test_parallel.py",
    "tests/engine/test_demo.py",
    "tests/engine/test_persist.py",
    "tests/notebooks/",
)


def pytest_collection_modifyitems(config, items):
    """Run on several CPUs (`pytest -n 2 --dist loadgroup --no-loadscope-reorder`, as `make test`
    does): each group (see `_group`) stays on one worker, and the longest groups
    (`LONGEST_FIRST`) are handed out first."""
    if getattr(config.option, "dist", "no") == "no":
        return
    first = LONGEST_FIRST
    items.sort(key=lambda item: next((i for i, p in enumerate(first) if item.nodeid.startswith(p)), len(first)))
    for item in items:
        item.add_marker(pytest.mark.xdist_group(_group(item)))


@pytest.fixture(autouse=True)
def _fixed_numpy_seed():
    """Every test starts from the same global numpy seed."""
    np.random.seed(SEED)
    yield


HANG_GUARD_S = 600   # only so that a job that never ends fails the suite instead of hanging it


@pytest.fixture(autouse=True)
def _bounded_compiled_programs():
    """The suite compiles tens of thousands of programs in one process: drop JAX's caches
    before the process nears the kernel's limit on memory mappings (see engine.compiled).

    First let the app's session jobs that a test left running end (a closed session's job runs
    to its end and then trims too): none of them may drop caches in the middle of a later test.
    """
    yield
    workers = sys.modules.get("app.workers")   # no app imported: no session jobs
    if workers is not None:
        concurrent.futures.wait(workers.unfinished_jobs(), timeout=HANG_GUARD_S)
    engine.trim_compiled()


@pytest.fixture
def rng() -> np.random.Generator:
    """A numpy Generator with a fixed seed."""
    return np.random.default_rng(SEED)
