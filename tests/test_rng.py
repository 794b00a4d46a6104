"""The sampler's unrolled Threefry (``slt_jax._src.rng``) draws JAX's threefry streams bit for bit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slt_jax._src import rng


def _both(draw):
    key = jax.random.key(1234)
    with jax.threefry_partitionable(False):  # the layout the sampler's chunk program uses
        return np.asarray(draw(key)), np.asarray(draw(rng.fast(key)))


@pytest.mark.parametrize("name,draw", [
    ("split", lambda k: jax.random.key_data(jax.random.split(k, 7))),
    ("split 2-D", lambda k: jax.random.key_data(jax.random.split(k, (3, 2)))),
    ("fold_in", lambda k: jax.random.key_data(jax.random.fold_in(k, 2**31 + 5))),
    ("bits, odd size", lambda k: jax.random.bits(k, (7, 3))),
    ("bits, uint8", lambda k: jax.random.bits(k, (9,), jnp.uint8)),
    ("bits, uint16 (delegated to jax)", lambda k: jax.random.bits(k, (5,), jnp.uint16)),
    ("normal", lambda k: jax.random.normal(k, (1001,))),
    ("uniform", lambda k: jax.random.uniform(k, (4, 5))),
    ("randint", lambda k: jax.random.randint(k, (501,), 0, 10_000)),
    ("choice", lambda k: jax.random.choice(k, 100, (10,), replace=False)),
    ("jit", lambda k: jax.jit(lambda key: jax.random.normal(key, (9,)))(k)),
    ("vmap of fold_in", lambda k: jax.vmap(lambda key, t: jax.random.normal(jax.random.fold_in(key, t), (5,)))(
        jax.random.split(k, 3), jnp.arange(3))),
])
def test_fast_threefry_draws_the_same_bits(name, draw):
    expected, fast = _both(draw)
    np.testing.assert_array_equal(fast, expected)


def test_hash_is_threefry_2x32_of_the_reference():
    # Random123's known-answer vector for Threefry-2x32, 20 rounds: key and counter all ones.
    ones = np.uint32(0xFFFFFFFF)
    out = rng.threefry_hash(ones, ones, jnp.asarray([ones]), jnp.asarray([ones]))
    assert [int(x[0]) for x in out] == [0x1CB996FC, 0xBB002BE7]


def test_other_keys_are_left_alone():
    key = jax.random.key(0, impl="rbg")
    assert rng.fast(key) is key
    fast = rng.fast(jax.random.key(0))
    assert rng.fast(fast) is fast
