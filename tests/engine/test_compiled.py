"""engine.compiled: compiled programs hold memory mappings until JAX's caches are dropped."""

import jax
import jax.numpy as jnp
import pytest

from engine import compiled

pytestmark = pytest.mark.skipif(compiled.mapping_count() is None or compiled.mapping_limit() is None,
                                reason="the OS does not report memory mappings")


def _compile_programs(n: int) -> None:
    for i in range(n):   # a new function and shape each time: a new program each time
        jax.jit(lambda x, i=i: jnp.sin(x) * i + jnp.cos(x) ** 2)(jnp.ones(i + 1)).block_until_ready()


def test_compiled_programs_hold_mappings_until_trimmed():
    compiled.trim_compiled(fraction=0.0)
    before = compiled.mapping_count()
    _compile_programs(60)
    grown = compiled.mapping_count()
    assert grown - before >= 60   # at least one mapping per program

    assert not compiled.trim_compiled(fraction=1.0)   # below the limit: nothing is dropped
    assert compiled.mapping_count() >= grown - 5

    assert compiled.trim_compiled(fraction=0.0)
    assert compiled.mapping_count() - before < (grown - before) / 4


def test_a_trimmed_program_compiles_again_and_gives_the_same_result():
    f = jax.jit(lambda x: jnp.cumsum(x ** 2))
    x = jnp.arange(7.0)
    first = f(x)
    assert compiled.trim_compiled(fraction=0.0)
    assert jnp.array_equal(f(x), first)



def test_trimming_empties_the_engines_own_caches_of_executables():
    from engine import bayes

    spec = bayes.as_spec({"irregular": True, "level": {"kind": "local_level"}})
    bayes._sampler(spec, ("half_normal", "half_normal"), (20, None, False), 10, 10, 0.8, 5, False)
    assert bayes._sampler.cache_info().currsize >= 1
    assert compiled.trim_compiled(fraction=0.0)
    assert bayes._sampler.cache_info().currsize == 0


def _cache_dir_after(code: str, cache) -> str:
    import os
    import subprocess
    import sys

    env = dict(os.environ, STREAMSSM_JAX_CACHE=str(cache))
    out = subprocess.run([sys.executable, "-c", f"import engine, jax\n{code}\nprint(jax.config.jax_compilation_cache_dir)"],
                         env=env, capture_output=True, text=True, timeout=300, check=True)
    return out.stdout.strip().splitlines()[-1]


def test_importing_the_engine_leaves_the_compile_cache_off_until_asked(tmp_path):
    """The on-disk cache is a process-wide setting: its owner switches it on, an import does not."""
    cache = tmp_path / "jax-cache"
    assert _cache_dir_after("", cache) == "None" and not cache.exists()
    assert _cache_dir_after("engine.enable_compilation_cache()", cache) == str(cache) and cache.is_dir()


def test_a_running_job_keeps_its_programs_and_the_last_job_to_leave_trims():
    """Trimming is decided for the process: never under a job that runs, then between jobs."""
    import threading

    compiled.trim_compiled(fraction=0.0)
    before = compiled.mapping_count()
    other_in, other_out = threading.Event(), threading.Event()

    def other_job():
        with compiled.using_compiled(fraction=1.0):
            other_in.set()
            other_out.wait(60)

    thread = threading.Thread(target=other_job)
    thread.start()
    assert other_in.wait(60)
    with compiled.using_compiled(fraction=1.0):
        _compile_programs(40)
        grown = compiled.mapping_count()
        assert not compiled.trim_compiled(fraction=0.0)   # asked for while jobs run: left to the last one
        assert compiled.mapping_count() >= grown - 5
    assert compiled.jobs_using_compiled() == 1 and compiled.mapping_count() >= grown - 5   # the other still runs
    other_out.set()
    thread.join(60)
    assert compiled.jobs_using_compiled() == 0
    assert compiled.mapping_count() - before < (grown - before) / 4   # the last job out trimmed
