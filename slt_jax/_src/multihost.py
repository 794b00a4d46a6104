"""Several processes (``jax.distributed``): a global mesh of chains, inputs placed from the same host
values in every process, results gathered whole into every process, one writer of files.

After ``jax.distributed.initialize(...)`` ``jax.devices()`` lists the devices of every process. The
sampler shards the chain axis over all of them (``chain_shardings``); every process calls slt_jax
with the same key and data, and feeds its own devices their slices of those values (``place``, no
traffic between processes). Host reads of arrays spread over processes (the divergence check between
chunks, the records, the carry) are all-gathers (``to_host``): every process takes part in them and
receives the whole array, so every process assembles the same result. In a single process these are
``jax.device_put`` and ``np.asarray``, unchanged.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from slt_jax.types import PyTree

__all__ = ["ChainShardings", "chain_shardings", "place", "to_host", "addressable", "is_writer", "barrier", "check_same"]


class ChainShardings(NamedTuple):
    """Where a group's arrays live on the global mesh (one axis, ``"chain"``, over every device).

    Attributes:
        carry: ``(K, V, C, ...)`` arrays split along the chain axis C.
        keys: ``(C,)`` chain keys split alike.
        replicated: every other input (data, centres, hyperparameters), whole on every device.
    """

    carry: NamedSharding
    keys: NamedSharding
    replicated: NamedSharding


def chain_shardings(num_chains: int, stacklevel: int = 4) -> ChainShardings | None:
    """The shardings of ``num_chains`` chains over every device of every process, or None.

    None (run unsharded) with one device, or with a warning when ``num_chains`` is not a multiple of
    the device count: then each process runs every chain on its first local device, which gives the
    same result in every process (the same program on the same inputs), only without the speed-up.
    """
    devices = jax.devices()
    if len(devices) == 1:
        return None
    if num_chains % len(devices):
        where = "" if jax.process_count() == 1 else (
            f" of {jax.process_count()} processes; each process runs every chain on its first local device"
        )
        warnings.warn(
            f"num_chains={num_chains} is not a multiple of the {len(devices)} devices{where}; chains are not "
            "sharded. Use a multiple of the device count to spread chains across devices.",
            stacklevel=stacklevel,
        )
        return None
    mesh = Mesh(np.array(devices), ("chain",))
    return ChainShardings(
        NamedSharding(mesh, PartitionSpec(None, None, "chain")),
        NamedSharding(mesh, PartitionSpec("chain")),
        NamedSharding(mesh, PartitionSpec()),
    )


def place(tree: PyTree, sharding: NamedSharding) -> PyTree:
    """``tree`` laid out on ``sharding``, from values that are the same in every process.

    Each process copies only its own devices' slices. (``jax.device_put`` onto devices of other
    processes also works, but first all-gathers every input to check it is the same everywhere,
    the whole dataset included, and refuses arrays committed to a device.)
    """
    if sharding.is_fully_addressable:
        return jax.device_put(tree, sharding)

    def one(x):
        x = jnp.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index], dtype=x.dtype)

    return jax.tree.map(one, tree)


def _gather(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)


def to_host(tree: PyTree) -> PyTree:
    """numpy copies of ``tree``'s arrays, whole, in every process.

    Arrays spread over several processes are all-gathered: a collective, so every process must call
    this at the same point of the run (the sampler's processes run the same steps in the same order).

    >>> import jax.numpy as jnp
    >>> to_host({"diverged_at": jnp.full((1, 2), -1)})
    {'diverged_at': array([[-1, -1]], dtype=int32)}
    """
    return jax.tree.map(_gather, tree)


def addressable(tree: PyTree) -> PyTree:
    """``tree`` with every array spread over several processes replaced by its whole value on this
    process's default device (a collective, like ``to_host``); other arrays are returned as they are."""
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jnp.asarray(multihost_utils.process_allgather(x, tiled=True))
        return x

    return jax.tree.map(one, tree)


def is_writer() -> bool:
    """Whether this process writes shared files (process 0)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process reaches ``barrier(name)`` (nothing to wait for in one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def check_same(name: str, value, fix: str, rtol: float = 0.0) -> None:
    """Raises a ``ValueError`` naming ``name`` when the small array ``value`` differs between processes
    (within ``rtol``); ``fix`` says what to change. A collective: every process must call it."""
    if jax.process_count() == 1:
        return
    gathered = multihost_utils.process_allgather(np.asarray(value))  # (num_processes, ...)
    same = [np.allclose(row, gathered[0], rtol=rtol, atol=0.0, equal_nan=True) for row in gathered[1:]]
    if not all(same):
        raise ValueError(
            f"{name} differs between the {jax.process_count()} processes: {gathered.tolist()} (process 0 "
            f"first). {fix}"
        )
