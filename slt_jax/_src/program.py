"""The compiled chunk program: the kernel scanned over draws, vmapped over chains and configurations.

``slt_jax.sampler`` drives it. One call runs ``num_draws * steps_per_draw`` steps of every chain of
every configuration in a group: ``vmap`` (centres) ∘ ``vmap`` (variants: component offsets and
hyperparameters) ∘ ``vmap`` (chains) ∘ ``lax.scan`` (draws) ∘ ``lax.scan`` (steps between draws).
The step is ``kernels.build_kernel``'s kernel applied to the chain's restricted loss. Everything here
runs under ``jit``; nothing here touches the host.
"""

from __future__ import annotations

import collections
import functools
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from slt_jax import kernels, restriction
from slt_jax._src import validation
from slt_jax.kernels import Hyperparameters, Preconditioner, SGLDInfo, SGLDState
from slt_jax.types import Array, Batch, LossFn, Params, PRNGKey, PyTree

__all__ = ["Accumulator", "DrawContext", "Carry", "DrawRecord", "take_rows", "batched_mean", "example_losses", "full_data_loss",
           "compiled_chunk", "compile_count"]


class Accumulator(NamedTuple):
    """An on-device streaming statistic of per-draw observables (carried in the scan).

    Attributes:
        init: ``init(example_values) -> state`` where ``example_values`` is one draw's observables.
        update: ``update(state, values) -> state``, called once per draw, per chain.
    """

    init: Callable[[PyTree], PyTree]
    update: Callable[[PyTree, PyTree], PyTree]


class DrawContext(NamedTuple):
    """What ``observe(params, info, context)`` sees besides the draw's full parameters.

    Attributes:
        batch: the draw's SGLD minibatch (drawn independently of the position).
        center: this configuration's w* (full params).
        init_loss: this configuration's L_n(w*), float32 scalar.
        data: the run's ``observe_data`` (e.g. probe datasets), or None.
        center_loss: the mean loss AT w* on ``batch`` (float32 scalar) when the run evaluates it
            (``run_chains(center_loss=True)``), else None. The sampler gathers it from the
            per-example losses at w*, computed once per centre, when that is cheaper than one
            forward pass per draw (``slt_jax._src.planning``).
    """

    batch: Batch
    center: Params
    init_loss: Array
    data: PyTree
    center_loss: Array | None = None


class Carry(NamedTuple):
    state: SGLDState
    accumulator: PyTree
    diverged_at: Array  # int32, first step whose loss was non-finite, -1 if none


class DrawRecord(NamedTuple):
    info: SGLDInfo
    full_loss: Array
    center_loss: Array
    observed: PyTree


def take_rows(data: Batch, indices: Array) -> Batch:
    # Indices are drawn in [0, n); "clip" skips the fill-mode bounds masking (measured ~40% faster).
    return jax.tree.map(lambda x: jnp.take(x, indices, axis=0, mode="clip"), data)


def _map_batches(function, data: Batch, batch_size: int) -> tuple:
    """``function`` over ``data`` in batches of ``batch_size``: ``(stacked results of the full
    batches or None, result of the partial last batch or None, its size)``, with ``lax.map``."""
    n = jax.tree.leaves(data)[0].shape[0]
    num_full = n // batch_size
    remainder = n - num_full * batch_size
    head = tail = None
    if num_full:
        batches = jax.tree.map(lambda x: x[: num_full * batch_size].reshape((num_full, batch_size) + x.shape[1:]), data)
        head = jax.lax.map(function, batches)
    if remainder:
        tail = function(jax.tree.map(lambda x: x[num_full * batch_size :], data))
    return head, tail, remainder


def batched_mean(loss_fn: LossFn, params: Params, data: Batch, batch_size: int) -> Array:
    """The mean loss over all of ``data`` in batches of ``batch_size`` (a partial last batch weighted)."""
    n = jax.tree.leaves(data)[0].shape[0]
    head, tail, remainder = _map_batches(lambda b: kernels.mean_loss(loss_fn, params, b), data, batch_size)
    total = jnp.zeros((), jnp.float32)
    if head is not None:
        total = total + jnp.sum(head) * batch_size
    if tail is not None:
        total = total + tail * remainder
    return total / n


batched_mean_jit = jax.jit(batched_mean, static_argnums=(0, 3))


@functools.partial(jax.jit, static_argnums=(0, 3))
def example_losses(loss_fn: LossFn, params: Params, data: Batch, batch_size: int) -> Array:
    """``loss_fn(params, ·)`` of every example, ``(n, ...)``, evaluated in batches of ``batch_size``
    (``loss_fn`` must return per-example losses with a leading batch axis)."""
    head, tail, _ = _map_batches(lambda b: loss_fn(params, b), data, batch_size)
    parts = [] if head is None else [head.reshape((-1,) + head.shape[2:])]
    if tail is not None:
        parts.append(tail)
    return jnp.concatenate(parts).astype(jnp.float32)


def full_data_loss(loss_fn: LossFn, params: Params, data: Batch, batch_size: int | None = None) -> Array:
    """L_n(params): the exact mean loss over all n examples, evaluated in batches of ``batch_size``.

    Every example (and token) carries equal weight; a last partial batch is weighted by its size.
    """
    n = validation.check_data(data)
    batch_size = n if batch_size is None else min(validation.check_positive_int(batch_size, "batch_size"), n)
    return batched_mean_jit(loss_fn, params, data, batch_size)


class Static(NamedTuple):
    """The static (compile-time) settings of a chunk program."""

    loss_fn: LossFn
    layout: restriction.Layout
    preconditioner: Preconditioner
    batch_size: int
    num_draws: int
    steps_per_draw: int
    recorded: bool
    observe: Callable | None
    accumulator: Accumulator | None
    keep_traces: bool
    full_loss_every: int
    full_loss_batch_size: int
    mala_every: int
    diagnostics_every: int
    center_loss: bool
    center_cache: bool  # the loss at w* on a batch is gathered from per-example losses at w*
    bulk_noise: bool


def chain_chunk(carry: Carry, chain_key: PRNGKey, data: Batch, center: Params, init_loss: Array, center_cache: Array,
                offsets: tuple, hyper: Hyperparameters, step_offset: Array, draw_offset: Array, observe_data: PyTree,
                static: Static):
    """Runs ``num_draws * steps_per_draw`` steps of ONE chain of ONE configuration.

    ``center_cache`` holds the per-example losses at the centre ``(n, ...)`` when
    ``static.center_cache`` (else an empty placeholder)."""
    n = jax.tree.leaves(data)[0].shape[0]
    num_steps = static.num_draws * static.steps_per_draw
    noise_key, batch_key = jax.random.split(chain_key)
    steps = step_offset + jnp.arange(num_steps, dtype=jnp.int32)
    layout = static.layout
    position_center = restriction.extract(layout, offsets, center)

    def position_loss(position, batch):
        return static.loss_fn(restriction.embed(layout, offsets, center, position), batch)

    kernel = kernels.build_kernel(position_loss, preconditioner=static.preconditioner)
    step_kernel = lambda *args: kernel(*args, diagnostics=False)

    # Randomness is keyed per step: fold_in(key, t), so chunking never changes the draws.
    if static.bulk_noise:
        noise = jax.vmap(lambda t: kernels.tree_normal(jax.random.fold_in(noise_key, t), position_center))(steps)
    else:
        noise = None  # drawn inside each step from the same per-step key
    if static.batch_size == n:
        indices = jnp.zeros((num_steps, 0), jnp.int32)  # full batch: every step sees all the data
    else:
        indices = jax.vmap(lambda t: jax.random.randint(jax.random.fold_in(batch_key, t), (static.batch_size,), 0, n))(steps)
    reshape = lambda x: x.reshape((static.num_draws, static.steps_per_draw) + x.shape[1:])
    noise, indices, steps = jax.tree.map(reshape, (noise, indices, steps))

    def batch_of(step_indices):
        return data if static.batch_size == n else take_rows(data, step_indices)

    def one_step(kernel, state, diverged_at, step_noise, step_indices, step):
        batch = batch_of(step_indices)
        new_state, info = kernel(jax.random.fold_in(noise_key, step), state, batch, position_center, hyper, step_noise)
        diverged_at = jnp.where((diverged_at < 0) & ~jnp.isfinite(info.loss), step, diverged_at)
        return new_state, info, diverged_at, batch

    def inner(inner_carry, inner_xs):
        state, diverged_at = inner_carry
        state, _, diverged_at, _ = one_step(step_kernel, state, diverged_at, *inner_xs)
        return (state, diverged_at), None

    def draw(carry: Carry, xs):
        draw_noise, draw_indices, draw_steps, draw_index = xs
        first = (jax.tree.map(lambda x: x[0], draw_noise), draw_indices[0], draw_steps[0])
        if not static.recorded:
            (state, diverged_at), _ = jax.lax.scan(inner, (carry.state, carry.diverged_at), (draw_noise, draw_indices, draw_steps))
            return Carry(state, carry.accumulator, diverged_at), None
        # Diagnostics and MALA only on the draws due: the draw index is the same for every chain, so
        # under vmap these stay real branches around the extra work (the step itself is unbranched).
        due = lambda every: every == 1 or (draw_index % every == 0)
        draw_kernel = lambda *args: kernel(
            *args, diagnostics=due(static.diagnostics_every), mala=bool(static.mala_every) and due(static.mala_every)
        )
        state = carry.state
        new_state, info, diverged_at, batch = one_step(draw_kernel, state, carry.diverged_at, *first)
        nan = jnp.full((), jnp.nan, jnp.float32)
        params = None
        if static.full_loss_every or static.observe is not None:
            params = restriction.embed(layout, offsets, center, state.position)
        full_loss = nan
        if static.full_loss_every:
            full_loss = jax.lax.cond(
                draw_index % static.full_loss_every == 0,
                lambda: batched_mean(static.loss_fn, params, data, static.full_loss_batch_size).astype(jnp.float32),
                lambda: nan,
            )
        at_center = nan
        if static.center_loss:
            if not static.center_cache:
                at_center = kernels.mean_loss(static.loss_fn, center, batch).astype(jnp.float32)
            elif static.batch_size == n:
                at_center = jnp.mean(center_cache)
            else:
                at_center = jnp.mean(jnp.take(center_cache, first[1], axis=0, mode="clip"))
        observed = None
        accumulated = carry.accumulator
        if static.observe is not None:
            context = DrawContext(batch, center, init_loss, observe_data, at_center if static.center_loss else None)
            observed = static.observe(params, info, context)
            if static.accumulator is not None:
                accumulated = static.accumulator.update(accumulated, observed)
        if static.steps_per_draw > 1:
            rest = (jax.tree.map(lambda x: x[1:], draw_noise), draw_indices[1:], draw_steps[1:])
            (new_state, diverged_at), _ = jax.lax.scan(inner, (new_state, diverged_at), rest)
        record = DrawRecord(info, full_loss, at_center, observed if static.keep_traces else None)
        return Carry(new_state, accumulated, diverged_at), record

    draw_indices = draw_offset + jnp.arange(static.num_draws, dtype=jnp.int32)
    return jax.lax.scan(draw, carry, (noise, indices, steps, draw_indices))


def _chunk(carry, chain_keys, data, centers, init_losses, center_caches, offsets, hyper, step_offset, draw_offset, observe_data,
           *, static: Static):
    def run(c, k, center, init_loss, cache, off, h):
        return chain_chunk(c, k, data, center, init_loss, cache, off, h, step_offset, draw_offset, observe_data, static)

    per_chain = jax.vmap(run, in_axes=(0, 0, None, None, None, None, None))
    per_variant = jax.vmap(per_chain, in_axes=(0, None, None, None, None, 0, 0))
    per_center = jax.vmap(per_variant, in_axes=(0, None, 0, 0, 0, None, None))
    return per_center(carry, chain_keys, centers, init_losses, center_caches, offsets, hyper)


_chunk_jit = jax.jit(_chunk, static_argnames=("static",), donate_argnums=(0,))

_COMPILE_COUNT = [0]
# Executables by signature, least recently used first; bounded so that notebooks redefining their
# loss functions do not accumulate executables without limit.
_COMPILED: collections.OrderedDict = collections.OrderedDict()
_MAX_COMPILED = 64


def compile_count() -> int:
    """How many times the sampler's chunk program has been compiled in this process."""
    return _COMPILE_COUNT[0]


def _signature(args, static: Static) -> tuple:
    leaves, treedef = jax.tree.flatten(args)
    shapes = tuple((np.shape(x), str(getattr(x, "dtype", type(x))), str(getattr(x, "sharding", None))) for x in leaves)
    return (treedef, shapes, static)


def compiled_chunk(args, static: Static) -> tuple[Callable, float]:
    """AOT-compiles the chunk program once per signature; returns (executable, seconds spent)."""
    signature = _signature(args, static)
    if signature in _COMPILED:
        _COMPILED.move_to_end(signature)
        return _COMPILED[signature], 0.0
    start = time.perf_counter()
    # The non-partitionable threefry layout generates the same-quality bits about 2x faster on CPU;
    # the noise is drawn per chain (the sharded axis is the vmapped key axis), so nothing needs the
    # partitionable layout, and the stream is fixed by this choice, not by the device count.
    with jax.threefry_partitionable(False):
        executable = _chunk_jit.lower(*args, static=static).compile()
    _COMPILE_COUNT[0] += 1
    _COMPILED[signature] = executable
    while len(_COMPILED) > _MAX_COMPILED:
        _COMPILED.popitem(last=False)
    return executable, time.perf_counter() - start
