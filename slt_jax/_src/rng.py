"""The sampler's random bits: JAX's Threefry-2x32 stream, with the hash unrolled.

JAX lowers its Threefry-2x32 hash on the CPU as a rolled loop of five iterations (to keep compile
times short), so every call pays loop and per-operation overhead: on the small arrays of one chunk
of one chain's draws that is most of its cost (measured 28 ns per 32-bit word at 2,400 words, 4.3 at
240,000, against 9.3 and 1.4 unrolled; ``benchmarks/bench_loop.py``). ``FAST_THREEFRY`` is a JAX PRNG
implementation (``jax.extend.random.define_prng_impl``) whose key data, layout and outputs are those
of ``jax.random``'s default ``threefry2x32`` with ``jax_threefry_partitionable`` off, bit for bit,
but whose hash is written out as its twenty rounds of plain ``jnp`` integer operations, which XLA
fuses into one loop over the array. ``fast(key)`` re-labels a threefry key; any other key (``rbg``,
``unsafe_rbg``, a user's own) is returned unchanged.

The Threefry-2x32 hash is Salmon et al. 2011 ("Parallel random numbers: as easy as 1, 2, 3"), with
20 rounds and the rotation constants of the Random123 reference. The counter layout that makes the
streams equal to JAX's (checked bitwise in ``tests/test_rng.py``):

* ``hash(key, counts)``: the flat counts, padded to even length with a zero, are cut into a first
  and a second half, hashed pairwise, and the two output halves are concatenated (the pad dropped);
* ``random_bits(key, 32, shape)`` is ``hash(key, iota(size))``;
* ``split(key, shape)`` is ``hash(key, iota(2 * size))`` reshaped to ``(*shape, 2)``;
* ``fold_in(key, d)`` is ``hash(key, [0, d])``.

Bit widths other than 32 and arrays of more than 2^32 - 1 words are delegated to JAX's own threefry
(the same bits by definition), so only the common path is re-implemented.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import define_prng_impl

__all__ = ["FAST_THREEFRY", "fast", "threefry_hash"]

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)
_MAX_WORDS = np.iinfo(np.uint32).max


def _rotate_left(x, bits: int):
    return (x << np.uint32(bits)) | (x >> np.uint32(32 - bits))


def threefry_hash(key1, key2, x1, x2):
    """Threefry-2x32 with 20 rounds of the counter pairs ``(x1, x2)`` under the key ``(key1, key2)``
    (uint32 arrays that broadcast together); returns the two uint32 output words, unrolled."""
    schedule = (key1, key2, key1 ^ key2 ^ _PARITY)
    x1, x2 = x1 + schedule[0], x2 + schedule[1]
    for block in range(5):
        for rotation in _ROTATIONS[block % 2]:
            x1 = x1 + x2
            x2 = _rotate_left(x2, rotation) ^ x1
        x1 = x1 + schedule[(block + 1) % 3]
        x2 = x2 + schedule[(block + 2) % 3] + np.uint32(block + 1)
    return x1, x2


def _hash_counts(key, counts):
    """``counts`` (flat uint32) hashed in JAX's threefry_2x32 layout (module docstring)."""
    size = counts.shape[0]
    if size % 2:
        counts = jnp.concatenate([counts, jnp.zeros((1,), jnp.uint32)])
    half = counts.shape[0] // 2
    first, second = threefry_hash(key[0], key[1], counts[:half], counts[half:])
    return jnp.concatenate([first, second])[:size]


def _as_threefry(key):
    return jax.random.wrap_key_data(key, impl="threefry2x32")


def _seed(seed):
    return jax.random.key_data(jax.random.key(seed, impl="threefry2x32"))


def _split(key, shape):
    size = math.prod(shape)
    return _hash_counts(key, jnp.arange(2 * size, dtype=jnp.uint32)).reshape((*shape, 2))


def _fold_in(key, data):
    return _hash_counts(key, jnp.stack([jnp.zeros((), jnp.uint32), jnp.asarray(data, jnp.uint32)]))


def _random_bits(key, bit_width, shape):
    size = math.prod(shape)
    if bit_width != 32 or size >= _MAX_WORDS:
        with jax.threefry_partitionable(False):
            return jax.random.bits(_as_threefry(key), shape, jnp.dtype(f"uint{bit_width}"))
    return _hash_counts(key, jnp.arange(size, dtype=jnp.uint32)).reshape(shape)


FAST_THREEFRY = define_prng_impl(key_shape=(2,), seed=_seed, split=_split, random_bits=_random_bits, fold_in=_fold_in,
                                 name="threefry2x32_unrolled", tag="fry_u")


def fast(key):
    """``key`` (a typed key array of any shape) on ``FAST_THREEFRY`` if it is a ``threefry2x32`` key:
    the same streams, computed faster; any other key unchanged."""
    if str(jax.random.key_impl(key)) != "threefry2x32":
        return key
    return jax.random.wrap_key_data(jax.random.key_data(key), impl=FAST_THREEFRY)
