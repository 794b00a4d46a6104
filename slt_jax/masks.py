"""Component restrictions: bool masks over a parameter pytree (True = sampled).

A mask has the structure of ``params``; each leaf is a 0-d bool array (the whole parameter in or
out) or a bool array of the parameter's shape (a partial leaf, e.g. one attention head's slice).
``slt_jax.estimate_llc(..., component=m)`` then gives the restricted (weight-refined) LLC of the
component: the other coordinates stay clamped at w*.

Paths are ``"/"``-joined keys (dict keys, sequence indices, attribute names), e.g.
``"blocks/0/attn/query/kernel"`` for the params of ``slt_jax.from_nnx``. Glob patterns match
segment by segment: ``*`` (and ``fnmatch`` classes) within one segment, ``**`` any number of
segments; a pattern that matches a module's path selects everything below it (``"layers/0"`` is
``"layers/0/**"``).

>>> import jax, numpy as np, slt_jax as sj
>>> params = {"layers": [{"kernel": np.zeros((2, 3))}, {"kernel": np.zeros((3, 1))}]}
>>> mask = sj.component_mask(params, "layers/1/**")
>>> [bool(m) for m in jax.tree.leaves(mask)]
[False, True]
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np

from slt_jax.types import Mask, Params

__all__ = [
    "leaf_paths",
    "component_mask",
    "head_mask",
    "mlp_mask",
    "mask_union",
    "mask_intersection",
    "mask_complement",
    "describe_mask",
]

Predicate = Callable[[str, np.ndarray], "bool | np.ndarray"]
"""``predicate(path, leaf) -> bool`` (whole leaf) or a bool array of the leaf's shape."""
Pattern = str | Predicate


def _key_name(key) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def _path_string(path) -> str:
    return "/".join(_key_name(k) for k in path)


def leaf_paths(params: Params) -> list[str]:
    """The ``"/"``-joined path of every leaf of ``params``, in ``jax.tree.leaves`` order."""
    return [_path_string(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def _glob_matches(pattern: Sequence[str], path: Sequence[str]) -> bool:
    """True if ``pattern`` matches ``path`` or one of its prefixes (a module selects its subtree)."""
    memo: dict[tuple[int, int], bool] = {}

    def match(i: int, j: int) -> bool:
        if (i, j) in memo:
            return memo[i, j]
        if i == len(pattern):
            result = True  # the pattern is exhausted: it matched the prefix path[:j]
        elif pattern[i] == "**":
            result = any(match(i + 1, k) for k in range(j, len(path) + 1))
        else:
            result = j < len(path) and fnmatch.fnmatchcase(path[j], pattern[i]) and match(i + 1, j + 1)
        memo[i, j] = result
        return result

    return match(0, 0)


def _split_pattern(pattern: str) -> list[str]:
    segments = [s for s in pattern.strip("/").split("/")]
    if not pattern.strip("/") or any(s == "" for s in segments):
        raise ValueError(f"pattern {pattern!r} is not a valid path glob; use e.g. 'layers/0/**' or '**/mlp/**'.")
    return segments


def _as_mask_leaf(value, leaf, where: str) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype != np.bool_:
        raise TypeError(f"{where} returned {array.dtype} values; a predicate returns a bool or a bool array.")
    if array.shape == ():
        return array
    try:
        return np.broadcast_to(array, np.shape(leaf)).copy()
    except ValueError:
        raise ValueError(f"{where} returned shape {array.shape}; use a scalar bool or the leaf's shape {np.shape(leaf)}.") from None


def _single_pattern_mask(params: Params, pattern: Pattern, paths: list[str], leaves: list) -> list[np.ndarray]:
    if isinstance(pattern, str):
        segments = _split_pattern(pattern)
        selected = [np.asarray(_glob_matches(segments, path.split("/"))) for path in paths]
        if not any(bool(s) for s in selected):
            shown = ", ".join(paths[:8]) + (", ..." if len(paths) > 8 else "")
            raise ValueError(f"pattern {pattern!r} matches no parameter. Parameter paths: {shown}.")
        return selected
    if callable(pattern):
        return [_as_mask_leaf(pattern(path, leaf), leaf, f"predicate at {path!r}") for path, leaf in zip(paths, leaves)]
    raise TypeError(f"pattern {pattern!r} must be a path glob (str), a predicate(path, leaf) or a list of them.")


def _pattern_mask(params: Params, patterns, name: str) -> list[np.ndarray]:
    paths = leaf_paths(params)
    leaves = jax.tree.leaves(params)
    if isinstance(patterns, (str,)) or callable(patterns):
        patterns = [patterns]
    if not isinstance(patterns, Sequence) or not patterns:
        raise TypeError(f"{name}: pattern {patterns!r} must be a path glob (str), a predicate(path, leaf) or a non-empty list of them.")
    combined = [np.asarray(False)] * len(leaves)
    for pattern in patterns:
        combined = [a | b for a, b in zip(combined, _single_pattern_mask(params, pattern, paths, leaves))]
    return combined


def component_mask(params: Params, include: Pattern | Sequence[Pattern], exclude: Pattern | Sequence[Pattern] | None = None) -> Mask:
    """A bool mask selecting a component of ``params`` by path globs or predicates.

    Args:
        params: the parameter pytree.
        include: a glob (``"layers/0/**"``, ``"**/mlp/**"``, ``"**/kernel"``), a
            ``predicate(path, leaf) -> bool | bool array`` (broadcast to the leaf's shape), or a
            list of them (their union).
        exclude: the same, removed from the selection (e.g. ``exclude="**/bias"``).

    Returns:
        A mask with ``params``' structure; leaves are 0-d bool arrays, or bool arrays of the leaf's
        shape where a predicate selected part of a leaf.

    Raises:
        ValueError: a glob matches no parameter (the message lists the available paths).
    """
    if not jax.tree.leaves(params):
        raise ValueError("params is empty; pass the parameter pytree (e.g. from slt_jax.from_nnx).")
    selected = _pattern_mask(params, include, "include")
    if exclude is not None:
        removed = _pattern_mask(params, exclude, "exclude")
        selected = [s & ~r for s, r in zip(selected, removed)]
    return jax.tree.unflatten(jax.tree.structure(params), selected)


def _child(node, segment: str, where: str, name: str):
    if isinstance(node, Mapping):
        for key in node:
            if str(key) == segment:
                return node[key]
        raise ValueError(f"{name}: no entry {segment!r} under {where or 'params'}; it has {sorted(map(str, node))}.")
    if isinstance(node, Sequence) and segment.isdigit() and int(segment) < len(node):
        return node[int(segment)]
    raise ValueError(f"{name}: cannot descend into {segment!r} under {where or 'params'} ({type(node).__name__}).")


def _module_at(params: Params, path: str, name: str, example: str):
    """``(stripped path, the subtree at path)``; ``name`` and ``example`` go into the errors."""
    if not isinstance(path, str) or not path.strip("/"):
        raise ValueError(f"{name}={path!r} must be a '/'-separated path such as {example!r}.")
    path = path.strip("/")
    node, where = params, ""
    for segment in path.split("/"):
        node = _child(node, segment, where, name)
        where = f"{where}/{segment}".strip("/")
    return path, node


def _check_indices(value, size: int, name: str, noun: str, where: str) -> list[int]:
    indices = [value] if np.ndim(value) == 0 else list(value)
    for index in indices:
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)) or not 0 <= index < size:
            raise ValueError(f"{name}={value!r}: {noun} indices must be ints in [0, {size}) for {where!r}.")
    return [int(index) for index in indices]


def head_mask(
    params: Params,
    attention_path: str,
    head: int | Sequence[int],
    projections: Sequence[str] = ("query", "key", "value", "out"),
) -> Mask:
    """Selects attention head(s) ``head`` of the attention module at ``attention_path``.

    Works for ``flax.nnx.MultiHeadAttention`` and ``flax.linen.MultiHeadDotProductAttention``,
    whose heads are an axis inside each kernel: head h is ``query/key/value`` ``kernel[:, h, :]``
    (kernels ``(in, heads, head_dim)``), ``bias[h, :]`` (biases ``(heads, head_dim)``) and
    ``out/kernel[h, :, :]`` (``(heads, head_dim, out)``). The out bias is shared by all heads and
    is never selected.

    Args:
        params: the parameter pytree (e.g. from ``from_nnx``/``from_linen``).
        attention_path: ``"/"``-separated path of the attention module inside params,
            e.g. ``"blocks/0/attn"``.
        head: a head index or a list of them.
        projections: which of ``"query"``, ``"key"``, ``"value"``, ``"out"`` to include (e.g.
            ``("query", "key")`` for the QK circuit).

    Returns:
        A mask with partial leaves on the selected projections and 0-d False elsewhere.
    """
    unknown = set(projections) - {"query", "key", "value", "out"}
    if unknown or not projections:
        raise ValueError(f"projections={tuple(projections)!r}: choose among 'query', 'key', 'value', 'out'.")
    attention_path, node = _module_at(params, attention_path, "attention_path", "blocks/0/attn")
    missing = [p for p in ("query", "key", "value", "out") if not (isinstance(node, Mapping) and p in node)]
    if missing:
        found = sorted(map(str, node)) if isinstance(node, Mapping) else type(node).__name__
        raise ValueError(
            f"{attention_path!r} is not a Flax multi-head attention module (missing {missing}; found {found}). "
            "Point attention_path at the nnx.MultiHeadAttention / linen.MultiHeadDotProductAttention params."
        )
    query_kernel = np.shape(node["query"]["kernel"])
    if len(query_kernel) != 3:
        raise ValueError(f"{attention_path}/query/kernel has shape {query_kernel}; expected (in, heads, head_dim).")
    num_heads = query_kernel[1]
    for projection in ("key", "value"):
        heads = np.shape(node[projection]["kernel"])[1]
        if heads != num_heads:
            raise ValueError(
                f"{attention_path}/{projection} has {heads} heads but query has {num_heads}: grouped key/value heads "
                "are shared between query heads; select them with component_mask instead."
            )
    heads = _check_indices(head, num_heads, "head", "head", attention_path)

    def select(path, leaf):
        parts = _path_string(path)
        if not parts.startswith(attention_path + "/"):
            return np.asarray(False)
        relative = parts[len(attention_path) + 1:].split("/")
        if len(relative) != 2 or relative[0] not in projections:
            return np.asarray(False)
        projection, kind = relative
        mask = np.zeros(np.shape(leaf), bool)
        if projection == "out":
            if kind != "kernel":
                return np.asarray(False)  # the out bias is shared by all heads
            mask[heads] = True
        elif kind == "kernel":
            mask[:, heads] = True
        elif kind == "bias":
            mask[heads] = True
        else:
            return np.asarray(False)
        return mask

    return jax.tree_util.tree_map_with_path(select, params)


def mlp_mask(
    params: Params,
    mlp_path: str,
    neurons: int | Sequence[int] | None = None,
    layers: tuple[str, str] = ("hidden", "out"),
) -> Mask:
    """Selects the two-layer MLP at ``mlp_path``, or some of its hidden neurons.

    The MLP is two linear layers, ``{layers[0]}`` with ``kernel`` ``(in, hidden)`` and optional
    ``bias`` ``(hidden,)``, then ``{layers[1]}`` with ``kernel`` ``(hidden, out)`` and optional ``bias``
    ``(out,)``: the ``FeedForward`` of ``slt_jax.zoo.models.TransformerLM`` and
    ``InContextRegressionTransformer`` (``"blocks/{l}/mlp"``, listed by ``model.mlp_paths()``). Hidden
    neuron j is ``{layers[0]}/kernel[:, j]``, ``{layers[0]}/bias[j]`` and ``{layers[1]}/kernel[j, :]``;
    the second layer's bias is shared by all neurons and is selected only with the whole MLP.

    Args:
        params: the parameter pytree (e.g. from ``from_nnx``/``from_linen``).
        mlp_path: ``"/"``-separated path of the MLP module inside params, e.g. ``"blocks/0/mlp"``.
        neurons: None (the whole MLP: both kernels and both biases), a hidden-neuron index or a list
            of them.
        layers: names of the (first, second) linear layer under ``mlp_path``; e.g.
            ``("Dense_0", "Dense_1")`` for a linen MLP.

    Returns:
        A mask with ``params``' structure: 0-d True on whole selected leaves, partial leaves for
        neuron slices, 0-d False elsewhere (nothing outside the two layers, e.g. no LayerNorm).

    >>> import numpy as np, slt_jax as sj
    >>> params = {"mlp": {"hidden": {"kernel": np.zeros((2, 3)), "bias": np.zeros(3)},
    ...                   "out": {"kernel": np.zeros((3, 2)), "bias": np.zeros(2)}}}
    >>> mask = sj.mlp_mask(params, "mlp", neurons=1)   # column 1 in, row 1 out, bias[1]; out bias shared
    >>> [int(np.sum(mask["mlp"][layer][kind])) for layer in ("hidden", "out") for kind in ("kernel", "bias")]
    [2, 1, 2, 0]
    """
    if not (isinstance(layers, (tuple, list)) and len(layers) == 2 and all(isinstance(x, str) and x for x in layers)):
        raise ValueError(f"layers={layers!r} must name the (first, second) linear layers, e.g. ('hidden', 'out').")
    mlp_path, node = _module_at(params, mlp_path, "mlp_path", "blocks/0/mlp")
    first, second = layers
    missing = [name for name in layers if not (isinstance(node, Mapping) and isinstance(node.get(name), Mapping) and "kernel" in node[name])]
    if missing:
        found = sorted(map(str, node)) if isinstance(node, Mapping) else type(node).__name__
        raise ValueError(
            f"{mlp_path!r} is not a two-layer MLP with layers {tuple(layers)} (missing {missing}; found {found}). "
            "Point mlp_path at the MLP module (e.g. 'blocks/0/mlp') or pass layers=(first, second)."
        )
    first_kernel, second_kernel = np.shape(node[first]["kernel"]), np.shape(node[second]["kernel"])
    if len(first_kernel) != 2 or len(second_kernel) != 2 or first_kernel[1] != second_kernel[0]:
        raise ValueError(
            f"{mlp_path!r}: kernels {first}{first_kernel} and {second}{second_kernel} are not (in, hidden) and "
            "(hidden, out) with the same hidden width."
        )
    selected = None if neurons is None else _check_indices(neurons, first_kernel[1], "neurons", "neuron", mlp_path)

    def select(path, leaf):
        parts = _path_string(path)
        if not parts.startswith(mlp_path + "/"):
            return np.asarray(False)
        relative = parts[len(mlp_path) + 1:].split("/")
        if len(relative) != 2 or relative[0] not in layers or relative[1] not in ("kernel", "bias"):
            return np.asarray(False)
        if selected is None:
            return np.asarray(True)
        layer, kind = relative
        mask = np.zeros(np.shape(leaf), bool)
        if layer == first and kind == "kernel":
            mask[:, selected] = True
        elif layer == first or kind == "kernel":  # the first bias, or the second kernel's rows
            mask[selected] = True
        else:
            return np.asarray(False)  # the second bias is shared by all neurons
        return mask

    return jax.tree_util.tree_map_with_path(select, params)


def _combine(masks, operation, name: str) -> Mask:
    if not masks:
        raise ValueError(f"{name} needs at least one mask.")
    structure = jax.tree.structure(masks[0])
    for mask in masks[1:]:
        if jax.tree.structure(mask) != structure:
            raise ValueError(f"{name}: masks have different structures ({structure} vs {jax.tree.structure(mask)}).")
    return jax.tree.map(lambda *leaves: functools.reduce(operation, [np.asarray(x, bool) for x in leaves]), *masks)


def mask_union(*masks: Mask) -> Mask:
    """Coordinates selected by any of ``masks`` (leaves broadcast: scalar | partial)."""
    return _combine(masks, np.logical_or, "mask_union")


def mask_intersection(*masks: Mask) -> Mask:
    """Coordinates selected by every one of ``masks``."""
    return _combine(masks, np.logical_and, "mask_intersection")


def mask_complement(mask: Mask) -> Mask:
    """Coordinates not selected by ``mask``."""
    return jax.tree.map(lambda m: ~np.asarray(m, bool), mask)


def describe_mask(params: Params, mask: Mask) -> str:
    """A readable per-leaf table of selected / total coordinates.

    Args:
        params: the parameter pytree.
        mask: a bool mask with ``params``' structure (scalar or leaf-shaped leaves).

    Returns:
        A multi-line string: one row per parameter (path, shape, selected, total, percent) and a
        total row.
    """
    if jax.tree.structure(mask) != jax.tree.structure(params):
        raise ValueError(f"mask structure {jax.tree.structure(mask)} does not match params {jax.tree.structure(params)}.")
    rows = []
    for path, leaf, m in zip(leaf_paths(params), jax.tree.leaves(params), jax.tree.leaves(mask)):
        shape = np.shape(leaf)
        total = int(np.prod(shape))
        selected = int(np.sum(np.broadcast_to(np.asarray(m, bool), shape)))
        rows.append((path, str(shape), selected, total))
    all_selected = sum(r[2] for r in rows)
    all_total = sum(r[3] for r in rows)
    rows.append(("total", "", all_selected, all_total))
    width = max(len(r[0]) for r in rows)
    shape_width = max(5, max(len(r[1]) for r in rows))
    lines = [f"{'parameter':<{width}}  {'shape':<{shape_width}}  {'selected':>9}  {'total':>9}  {'%':>6}"]
    for index, (path, shape, selected, total) in enumerate(rows):
        if index == len(rows) - 1:
            lines.append("-" * len(lines[0]))
        percent = 100.0 * selected / total if total else 0.0
        lines.append(f"{path:<{width}}  {shape:<{shape_width}}  {selected:>9d}  {total:>9d}  {percent:>6.1f}")
    return "\n".join(lines)
