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
    bayes._sampler(spec, ("half_normal", "half_normal"), (20, None), 10, 10, 0.8, 5, False)
    assert bayes._sampler.cache_info().currsize >= 1
    assert compiled.trim_compiled(fraction=0.0)
    assert bayes._sampler.cache_info().currsize == 0
