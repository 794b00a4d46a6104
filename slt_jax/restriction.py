"""Restricted chains: a chain that samples a component carries only that component's coordinates.

A component is a bool mask over the params (``slt_jax.masks``). ``restrict`` turns it into a
``Restriction``: for every parameter leaf one static ``LeafLayout`` and, per configuration, traced
offsets. A leaf is

* ``absent`` (no coordinate sampled): it stays the centre's array, and no gradient is taken for it;
* ``whole``: the chain carries the whole leaf;
* ``slice``: a contiguous block along one axis, every other axis whole (an attention head's slice of
  a ``(in, heads, head_dim)`` kernel): the chain carries a dense ``(in, 1, head_dim)`` block, put in
  place with ``lax.dynamic_update_slice`` at a traced start, so heads of one layer share a layout and
  vmap over their starts;
* ``elements``: any other pattern: a gather/scatter of flat indices.

The chain's position is a pytree with the params' structure whose frozen leaves are ``None`` (an
empty subtree). ``insert(center, position)`` builds the full parameters for the loss, and a gradient
taken with respect to the position alone lets XLA drop the frozen weights' gradient work. With every
leaf ``whole`` the position is exactly the params pytree (the unrestricted chain).

>>> import numpy as np, slt_jax as sj
>>> params = {"w": np.zeros((3, 4, 2)), "b": np.zeros(2)}
>>> head = {"w": np.zeros((3, 4, 2), bool), "b": np.asarray(False)}
>>> head["w"][:, 1] = True
>>> restriction = sj.restriction.restrict(head, params)
>>> restriction.layout.leaves
(None, LeafLayout(kind='slice', axis=1, size=1, shape=(3, 1, 2)))
>>> restriction.num_sampled
6
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from slt_jax.types import Array, Mask, Params

__all__ = ["LeafLayout", "Layout", "Restriction", "restrict", "unrestricted", "insert", "extract", "stack_offsets"]


class LeafLayout(NamedTuple):
    """How one parameter leaf is sampled (static: part of the compiled program's signature).

    Attributes:
        kind: ``"whole"``, ``"slice"`` or ``"elements"`` (absent leaves are ``None``).
        axis: the sliced axis (``"slice"``), else 0.
        size: the block's length along ``axis`` (``"slice"``) or the number of elements.
        shape: the shape of the chain's piece of this leaf.
    """

    kind: str
    axis: int
    size: int
    shape: tuple[int, ...]


class Layout(NamedTuple):
    """The static layout of a restriction: one ``LeafLayout`` or ``None`` per params leaf."""

    leaves: tuple[LeafLayout | None, ...]

    @property
    def num_sampled(self) -> int:
        return sum(int(np.prod(leaf.shape)) for leaf in self.leaves if leaf is not None)


class Restriction(NamedTuple):
    """One component: its static ``layout`` and per-leaf ``offsets``.

    Attributes:
        layout: the ``Layout``.
        offsets: one entry per params leaf: the start index (int32 scalar) of a ``slice``, the
            flat indices ``(size,)`` of ``elements``, else ``None``. With a leading configuration
            axis when stacked (``stack_offsets``).
    """

    layout: Layout
    offsets: tuple

    @property
    def num_sampled(self) -> int:
        return self.layout.num_sampled


def _leaf_restriction(mask: np.ndarray, shape: tuple[int, ...]):
    mask = np.broadcast_to(np.asarray(mask, bool), shape)
    if not mask.any():
        return None, None
    if mask.all():
        return LeafLayout("whole", 0, 0, tuple(shape)), None
    for axis in range(len(shape)):
        other = tuple(a for a in range(len(shape)) if a != axis)
        along = mask.any(axis=other) if other else mask
        selected = np.flatnonzero(along)
        start, size = int(selected[0]), int(selected.size)
        contiguous = selected[-1] - start + 1 == size
        block = np.zeros(shape[axis], bool)
        block[start:start + size] = True
        expand = [None] * len(shape)
        expand[axis] = slice(None)
        if contiguous and np.array_equal(mask, np.broadcast_to(block[tuple(expand)], shape)):
            piece = list(shape)
            piece[axis] = size
            return LeafLayout("slice", axis, size, tuple(piece)), np.asarray(start, np.int32)
    indices = np.flatnonzero(mask.ravel()).astype(np.int32)
    return LeafLayout("elements", 0, int(indices.size), (int(indices.size),)), indices


def restrict(mask: Mask | None, params: Params) -> Restriction:
    """The ``Restriction`` of a validated bool ``mask`` (None: every coordinate) over ``params``."""
    leaves = jax.tree.leaves(params)
    if mask is None:
        return unrestricted(params)
    layouts, offsets = [], []
    for mask_leaf, leaf in zip(jax.tree.leaves(mask), leaves):
        layout, offset = _leaf_restriction(np.asarray(mask_leaf), np.shape(leaf))
        layouts.append(layout)
        offsets.append(offset)
    return Restriction(Layout(tuple(layouts)), tuple(offsets))


def unrestricted(params: Params) -> Restriction:
    """The restriction that samples every coordinate (the chain's position is the params pytree)."""
    leaves = jax.tree.leaves(params)
    return Restriction(Layout(tuple(LeafLayout("whole", 0, 0, tuple(np.shape(x))) for x in leaves)), (None,) * len(leaves))


def stack_offsets(restrictions: list[Restriction]) -> tuple:
    """Stacks the offsets of restrictions that share one layout: a leading configuration axis."""
    layouts = {r.layout for r in restrictions}
    if len(layouts) != 1:
        raise ValueError("only restrictions with the same layout can share a compiled program.")
    return tuple(
        None if first is None else jnp.asarray(np.stack([r.offsets[i] for r in restrictions]))
        for i, first in enumerate(restrictions[0].offsets)
    )


def _piece(layout: LeafLayout, offset, leaf: Array) -> Array:
    if layout.kind == "whole":
        return leaf
    if layout.kind == "slice":
        return jax.lax.dynamic_slice_in_dim(leaf, offset, layout.size, axis=layout.axis)
    return jnp.take(jnp.ravel(leaf), offset, mode="clip")


def _put(layout: LeafLayout, offset, leaf: Array, piece: Array) -> Array:
    if layout.kind == "whole":
        return piece
    if layout.kind == "slice":
        return jax.lax.dynamic_update_slice_in_dim(leaf, piece.astype(leaf.dtype), offset, axis=layout.axis)
    return jnp.ravel(leaf).at[offset].set(piece.astype(leaf.dtype), mode="promise_in_bounds").reshape(leaf.shape)


def extract(layout: Layout, offsets: tuple, params: Params) -> Params:
    """The chain's piece of ``params``: params' structure, ``None`` at frozen leaves."""
    leaves, treedef = jax.tree.flatten(params)
    return jax.tree.unflatten(
        treedef, [None if lay is None else _piece(lay, off, leaf) for lay, off, leaf in zip(layout.leaves, offsets, leaves)]
    )


def insert(layout: Layout, offsets: tuple, center: Params, position: Params) -> Params:
    """The full parameters: ``center`` with the chain's ``position`` put in place."""
    leaves, treedef = jax.tree.flatten(center)
    pieces = treedef.flatten_up_to(position)
    return jax.tree.unflatten(
        treedef,
        [leaf if lay is None else _put(lay, off, leaf, piece) for lay, off, leaf, piece in zip(layout.leaves, offsets, leaves, pieces)],
    )
