"""Type aliases shared across slt_jax."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

Array = jax.Array
PyTree = Any
"""A JAX pytree (nested dicts / lists / tuples / NamedTuples of arrays)."""
Params = PyTree
"""A pytree of parameter arrays, e.g. ``nnx.split(model, nnx.Param)[1]`` made pure."""
Batch = PyTree
"""A pytree of arrays sharing a leading batch axis."""
Mask = PyTree
"""A pytree of bools with the structure of ``Params``; each leaf a scalar or the leaf's shape."""
PRNGKey = jax.Array
LossFn = Callable[[Params, Batch], Array]
"""``loss_fn(params, batch) -> losses``: per-example ``(batch,)``, per-token ``(batch, seq)`` or scalar."""
KeyLike = int | jax.Array
"""An integer seed or a JAX PRNG key."""
