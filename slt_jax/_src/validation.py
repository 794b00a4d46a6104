"""Input validation, all in Python, before anything compiles.

Every check raises a ``ValueError`` or ``TypeError`` that names the argument, the value and the fix.
``external_stacklevel`` points a warning at the user's line, outside the package.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from slt_jax.types import Batch, KeyLike, LossFn, Mask, Params, PRNGKey

__all__ = [
    "as_key",
    "check_data",
    "check_loss_fn",
    "check_masks",
    "check_params",
    "check_positive_int",
    "check_scalar_grid",
    "external_stacklevel",
]

_PACKAGE_DIRECTORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../slt_jax


def external_stacklevel() -> int:
    """The ``stacklevel`` that makes a ``warnings.warn`` in the calling function point at the first
    frame outside the slt_jax package (the user's line), however deep inside the package the
    warning is raised. (Python 3.12's ``skip_file_prefixes`` does this; we support 3.11.)"""
    frame = sys._getframe(1)  # the function that calls warnings.warn: stacklevel 1
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIRECTORY + os.sep):
        frame = frame.f_back
        level += 1
    return level


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__}).")
    if value < minimum:
        raise ValueError(f"{name}={value} must be >= {minimum}.")
    return int(value)


def check_scalar_grid(value, name: str, *, allow_zero: bool, fix: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number (or a 1-D array of numbers for a grid), got {value!r}.") from None
    if array.ndim > 1:
        raise ValueError(f"{name} must be a scalar or a 1-D grid, got shape {array.shape}.")
    bad = ~np.isfinite(array) | (array < 0) | ((array == 0) & (not allow_zero))
    if np.any(bad):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}={value!r} must be finite and {bound}. {fix}")
    return array


def as_key(key: KeyLike) -> PRNGKey:
    """Accepts an int seed, a typed key (``jax.random.key``) or a raw uint32[2] key."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return jax.random.key(int(key))
    if isinstance(key, jax.Array):
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            if key.shape != ():
                raise ValueError(f"key must be a single PRNG key, got a batch of shape {key.shape}.")
            return key
        if key.dtype == jnp.uint32 and key.shape == (2,):
            return jax.random.wrap_key_data(key)
    raise TypeError(f"key must be an int seed or a JAX PRNG key (jax.random.key(0)), got {key!r}.")


def check_data(data: Batch) -> int:
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise ValueError("data is empty: pass a pytree of arrays sharing a leading axis n.")
    lengths = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(data)[0]:
        shape = np.shape(leaf)
        name = jax.tree_util.keystr(path) or "data"
        if len(shape) == 0:
            raise ValueError(f"data{name} is a scalar; every data array needs a leading example axis n.")
        lengths[name] = shape[0]
        if np.issubdtype(np.asarray(leaf).dtype, np.inexact) and not np.all(np.isfinite(np.asarray(leaf))):
            raise ValueError(f"data{name} contains NaN or inf values; clean or drop those examples first.")
    if len(set(lengths.values())) != 1:
        raise ValueError(
            f"data arrays have different lengths along axis 0: {lengths}. Every leaf of data must share "
            "the leading example axis n."
        )
    n = next(iter(lengths.values()))
    if n < 1:
        raise ValueError("data has zero examples.")
    return n


def check_params(params: Params) -> None:
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    if not leaves:
        raise ValueError("params is empty: pass the pytree of parameter arrays at w*.")
    for path, leaf in leaves:
        array = np.asarray(leaf)
        if not np.issubdtype(array.dtype, np.floating):
            raise TypeError(
                f"params{jax.tree_util.keystr(path)} has dtype {array.dtype}; SGLD needs floating-point "
                "parameters (split integer state out of params)."
            )
        if not np.all(np.isfinite(array)):
            raise ValueError(f"params{jax.tree_util.keystr(path)} contains NaN or inf; w* must be finite.")


def check_masks(masks: Mask | None, params: Params, name: str = "mask") -> Mask | None:
    """Validates a bool mask (or a callable ``params -> mask``) and broadcasts its leaves to the
    parameters' shapes."""
    if masks is None:
        return None
    if callable(masks):
        masks = masks(params)
    params_structure = jax.tree.structure(params)
    try:
        mask_structure = jax.tree.structure(masks)
    except Exception:  # pragma: no cover - defensive
        mask_structure = None
    if mask_structure != params_structure:
        raise ValueError(
            f"{name} must be a bool pytree with the same structure as params.\n  params: {params_structure}\n"
            f"  {name}:   {mask_structure}\nBuild it with jax.tree.map(lambda p: <bool or bool array>, params) "
            "or slt_jax.component_mask."
        )
    out = []
    for (path, leaf), param in zip(jax.tree_util.tree_flatten_with_path(masks)[0], jax.tree.leaves(params)):
        array = np.asarray(leaf)
        where = f"{name}{jax.tree_util.keystr(path)}"
        if array.dtype != np.bool_:
            raise TypeError(f"{where} has dtype {array.dtype}; masks are bool (True = sampled).")
        param_shape = np.shape(param)
        if array.shape not in ((), param_shape):
            raise ValueError(
                f"{where} has shape {array.shape} but the parameter has shape {param_shape}; a mask leaf is a "
                "scalar bool or an array of the parameter's shape."
            )
        out.append(np.broadcast_to(array, param_shape))
    mask_arrays = jax.tree.unflatten(params_structure, [jnp.asarray(m) for m in out])
    if not any(bool(np.any(m)) for m in out):
        raise ValueError(f"{name} selects no coordinate at all; at least one parameter must be sampled.")
    return mask_arrays


def check_loss_fn(loss_fn: LossFn, params: Params, data: Batch, batch_size: int) -> tuple[int, ...]:
    """Checks ``loss_fn`` on an abstract batch; returns the shape of its output."""
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(params, batch), got {loss_fn!r}.")
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct((batch_size,) + np.shape(x)[1:], np.asarray(x).dtype), data)
    try:
        out = jax.eval_shape(loss_fn, params, batch)
    except Exception as error:
        raise ValueError(f"loss_fn(params, batch) failed on a batch of {batch_size} examples: {error}") from error
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise ValueError(f"loss_fn must return one array of losses, got a {type(out).__name__}: {out}.")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"loss_fn must return floating losses, got dtype {out.dtype}.")
    if out.shape != () and out.shape[0] != batch_size:
        raise ValueError(
            f"loss_fn returned shape {out.shape} for a batch of {batch_size}; it must return per-example "
            f"losses of shape ({batch_size},) (or ({batch_size}, seq) per token), or a scalar mean."
        )
    return tuple(out.shape)
