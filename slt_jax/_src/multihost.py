"""The device mesh of a run, and several processes (``jax.distributed``): inputs placed from the same
host values in every process, results gathered whole into every process, one writer of files.

The one module that knows about meshes and shardings. A run's mesh (``run_mesh``) has three named
axes (``AXES``):

* ``config``: the configurations of a group split over it (its centres K or its variants V, whichever
  is longer, ``config_dim``; the planner pads that axis to a multiple by repetition);
* ``chain``: the chains C;
* ``model``: every large parameter leaf of the centres and of the chains' positions (and second
  moments) sliced along its largest dimension divisible by the axis size (FSDP); XLA's SPMD
  partitioner inserts the gathers the loss needs (``param_spec``).

The user sets one around the call, ``with jax.set_mesh(jax.make_mesh((config, chain, model), AXES,
axis_types=(AxisType.Auto,) * 3)):`` (``run_chains`` picks it up); without one the run builds a default
over ``jax.devices()``: the chain axis the largest divisor of the device count that divides
``num_chains``, the config axis the rest, the model axis 1.

After ``jax.distributed.initialize(...)`` ``jax.devices()`` lists the devices of every process, and the
mesh spans them all. Every process calls slt_jax with the same key and data, and feeds its own
devices their slices of those values (``place``, no traffic between processes). Host reads of arrays
spread over processes (the divergence check between chunks, the records, the carry) are all-gathers
(``to_host``): every process takes part in them and receives the whole array, so every process
assembles the same result. In a single process these are ``jax.device_put`` and ``np.asarray``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from slt_jax._src import program
from slt_jax.types import PyTree

__all__ = ["AXES", "MeshSizes", "run_mesh", "default_shape", "sizes", "config_dim", "padded", "param_spec", "shardings",
           "spread", "placement", "place", "to_host", "is_writer", "barrier", "check_same"]

AXES = ("config", "chain", "model")
# Parameter leaves with fewer elements stay whole on every device of the model axis (slicing them
# saves little memory and costs a gather each).
MODEL_SHARD_MIN_ELEMENTS = 2**12


class MeshSizes(NamedTuple):
    """The sizes of a run's mesh axes (all 1 without a mesh)."""

    config: int
    chain: int
    model: int


def _check_user_mesh(mesh: Mesh, num_chains: int) -> Mesh:
    """The user's mesh, after checking its axes (``AXES``, in that order, of type ``Auto``) and its chain
    axis. Used as it is: arrays made inside the user's ``jax.set_mesh`` block live on it, and arrays of
    two meshes do not mix."""
    if tuple(mesh.axis_names) != AXES:
        raise ValueError(
            f"the mesh set with jax.set_mesh has axes {tuple(mesh.axis_names)}; slt_jax expects the axes {AXES} "
            f"(configurations, chains, parameter slices), e.g. jax.make_mesh((2, 2, 1), {AXES}, axis_types=(jax.sharding."
            "AxisType.Auto,) * 3) for 2 x 2 devices. "
            "Call slt_jax outside your own mesh's `with jax.set_mesh(...)` block, or inside one with these axes."
        )
    explicit = [name for name, kind in zip(mesh.axis_names, mesh.axis_types) if kind != AxisType.Auto]
    if explicit:
        raise ValueError(
            f"the mesh set with jax.set_mesh has axes {explicit} of type Explicit (jax.make_mesh's default); the sampler "
            "lets XLA's SPMD partitioner place its work, so make the mesh with Auto axes: jax.make_mesh(shape, "
            f"{AXES}, axis_types=(jax.sharding.AxisType.Auto,) * 3)."
        )
    chain = int(mesh.shape["chain"])
    if num_chains % chain:
        raise ValueError(
            f"num_chains={num_chains} is not a multiple of the mesh's chain axis ({chain}); use num_chains a multiple "
            f"of {chain} or a mesh whose chain axis divides {num_chains}."
        )
    return mesh


def run_mesh(num_chains: int) -> Mesh | None:
    """The mesh of a run of ``num_chains`` chains per configuration, or None (one device).

    The mesh set by ``jax.set_mesh`` around the call when there is one (checked: the axes ``AXES``,
    of type ``Auto``, a chain axis dividing ``num_chains``), else the default over ``jax.devices()``: the chain
    axis the largest divisor of the device count that divides ``num_chains``, the config axis the rest
    (so 4 heads x 2 chains on 4 devices use all 4), the model axis 1.
    """
    ambient = jax.sharding.get_mesh()
    if not ambient.empty:
        mesh = _check_user_mesh(ambient, num_chains)
        return None if mesh.size == 1 else mesh
    devices = jax.devices()
    if len(devices) == 1:
        return None
    shape = default_shape(len(devices), num_chains)
    return Mesh(np.asarray(devices).reshape(shape), AXES, axis_types=(AxisType.Auto,) * len(AXES))


def default_shape(num_devices: int, num_chains: int) -> MeshSizes:
    """The default mesh's axis sizes: the chain axis the largest divisor of ``num_devices`` that
    divides ``num_chains``, the config axis the rest, the model axis 1.

    >>> default_shape(4, 2), default_shape(8, 4), default_shape(4, 3)
    (MeshSizes(config=2, chain=2, model=1), MeshSizes(config=2, chain=4, model=1), MeshSizes(config=4, chain=1, model=1))
    """
    chain = max(d for d in range(1, num_devices + 1) if num_devices % d == 0 and num_chains % d == 0)
    return MeshSizes(num_devices // chain, chain, 1)


def sizes(mesh: Mesh | None) -> MeshSizes:
    """The axis sizes of ``mesh`` (``run_mesh``'s), all 1 for None."""
    return MeshSizes(1, 1, 1) if mesh is None else MeshSizes(*(int(mesh.shape[a]) for a in AXES))


def config_dim(num_centers: int, num_variants: int) -> int:
    """Which leading axis of a group's ``(K, V, ...)`` arrays the config axis splits: 1 (variants)
    unless there are more centres than variants, 0. Padding the chosen axis keeps the choice."""
    return 1 if num_variants >= num_centers else 0


def padded(count: int, size: int) -> int:
    """``count`` rounded up to a multiple of ``size``."""
    return -(-count // size) * size


def param_spec(shape: tuple[int, ...], model_size: int) -> tuple:
    """The model-axis spec of one parameter leaf of ``shape``: ``"model"`` on its largest dimension
    divisible by ``model_size`` (the first of equals), None elsewhere; all None for leaves under
    ``MODEL_SHARD_MIN_ELEMENTS`` elements or without such a dimension.

    >>> param_spec((64, 128), 4)
    (None, 'model')
    >>> param_spec((6,), 4)
    (None,)
    """
    spec = [None] * len(shape)
    if model_size > 1 and math.prod(shape) >= MODEL_SHARD_MIN_ELEMENTS:
        candidates = [d for d in range(len(shape)) if shape[d] % model_size == 0]
        if candidates:
            spec[max(candidates, key=lambda d: (shape[d], -d))] = "model"
    return tuple(spec)


def shardings(mesh: Mesh, tree: PyTree, lead: tuple = (), params: bool = False) -> PyTree:
    """A ``NamedSharding`` for every array of ``tree``: its leading axes split as ``lead`` says (axis
    names or None), its other axes over ``model`` when ``params`` (``param_spec``), else whole."""
    model_size = int(mesh.shape["model"])

    def one(x):
        rest = tuple(np.shape(x)[len(lead):])
        return NamedSharding(mesh, PartitionSpec(*lead, *(param_spec(rest, model_size) if params else (None,) * len(rest))))

    return jax.tree.map(one, tree)


def spread(mesh: Mesh, tree: PyTree, lead: tuple = (), params: bool = False) -> PyTree:
    """``tree`` placed on ``mesh`` as ``shardings(mesh, tree, lead, params)`` says (``place``)."""
    return place(tree, shardings(mesh, tree, lead, params))


def placement(mesh: Mesh | None, num_centers: int, num_variants: int, position: PyTree) -> program.Placement | None:
    """Where a group of ``num_centers x num_variants`` configurations lives on ``mesh`` (None without
    one): the config axis on the axis ``config_dim`` picks, chains on ``chain``, and every array of
    one chain's position sliced over ``model`` (``position``: arrays or shapes of one chain's piece)."""
    if mesh is None:
        return None
    dim = config_dim(num_centers, num_variants)
    model_size = int(mesh.shape["model"])
    specs = tuple(NamedSharding(mesh, PartitionSpec(*param_spec(tuple(np.shape(x)), model_size))) for x in jax.tree.leaves(position))
    return program.Placement("config" if dim == 0 else None, "config" if dim == 1 else None, "chain", specs)


def place(tree: PyTree, sharding: NamedSharding | PyTree) -> PyTree:
    """``tree`` laid out on ``sharding`` (one for every array, or a tree of them like ``tree``), from
    values that are the same in every process.

    Each process copies only its own devices' slices. (``jax.device_put`` onto devices of other
    processes also works, but first all-gathers every input to check it is the same everywhere,
    the whole dataset included, and refuses arrays committed to a device.)
    """
    if isinstance(sharding, NamedSharding):
        sharding = jax.tree.map(lambda _: sharding, tree)
    if all(where.is_fully_addressable for where in jax.tree.leaves(sharding)):
        return jax.device_put(tree, sharding)  # one batched transfer (one process's devices)

    def one(x, where):
        if where.is_fully_addressable or (isinstance(x, jax.Array) and not x.is_fully_addressable):
            return jax.device_put(x, where)  # across processes: a reshard of a global array, in every process
        if not jax.dtypes.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key):
            x = np.asarray(x)  # slices on host (PRNG keys, on their one device)
        return jax.make_array_from_callback(np.shape(x), where, lambda index: x[index], dtype=x.dtype)

    return jax.tree.map(one, tree, sharding)


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
