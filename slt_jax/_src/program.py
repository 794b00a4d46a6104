"""The compiled chunk program: the kernel scanned over draws, vmapped over chains and configurations.

``slt_jax.sampler`` drives it. One call runs ``num_draws * steps_per_draw`` steps of every chain of
every configuration in a group: ``vmap`` (centres) ∘ ``vmap`` (variants: component offsets and
hyperparameters) ∘ ``vmap`` (chains) ∘ ``lax.scan`` (draws) ∘ ``lax.scan`` (steps between draws).
The step is ``kernels.build_kernel``'s kernel applied to the chain's restricted loss. ``Static.loss_fn`` is
the loss the run evaluates everywhere (``kernels.mixed_precision`` of the user's, so every loss of a run
carries the same rounding). The chunk
program (``chain_chunk``) runs under ``jit`` and never touches the host; ``compiled_chunk`` compiles it
on the host (timed, cached per signature), and ``full_data_loss`` / ``example_losses`` are jitted
passes over the whole dataset that the planning step calls from the host.
"""

from __future__ import annotations

import collections
import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
import numpy as np

from slt_jax import kernels, restriction
from slt_jax._src import rng, validation
from slt_jax.kernels import Hyperparameters, Preconditioner, SGLDInfo, SGLDState
from slt_jax.types import Array, Batch, LossFn, Params, PRNGKey, PyTree

__all__ = ["Accumulator", "DrawContext", "Recording", "Carry", "DrawRecord", "CenterInputs", "VariantInputs", "Offsets", "Placement",
           "take_rows", "batched_mean", "example_losses", "full_data_loss", "microbatched_mean", "compiled_chunk", "compile_count"]


class Accumulator(NamedTuple):
    """An on-device streaming statistic of per-draw observables (carried in the scan).

    Attributes:
        init: ``init(example_values) -> state`` where ``example_values`` is one draw's observables.
        update: ``update(state, values) -> state``, called once per draw, per chain.
    """

    init: Callable[[PyTree], PyTree]
    update: Callable[[PyTree, PyTree], PyTree]


class Recording(NamedTuple):
    """What a run records at each draw besides the minibatch loss and the kernel's diagnostics.

    One immutable value, passed whole to ``run_chains(recording=...)``; the default records nothing
    extra. ``G`` configurations, ``C`` chains, ``D`` draws, ``K`` centres.

    Attributes:
        observe: ``observe(params, info, context) -> pytree`` evaluated at every draw at the draw's
            full parameters (before that step moves them); ``info`` is the draw's ``SGLDInfo`` and
            ``context`` a ``DrawContext``. Its values are streamed into ``accumulator`` and/or kept
            (``keep_traces``) as ``ChainsResult.observed`` of leaves ``(G, C, D, ...)``.
        observe_data: pytree of arrays for ``observe`` (e.g. probe datasets), seen as
            ``context.data``. A traced input, so new values of the same shapes never recompile (a
            closure would bake them into the program). Needs ``observe``.
        accumulator: an ``Accumulator`` of ``observe``'s values carried on device, returned as
            ``ChainsResult.accumulator`` of leaves ``(G, C, ...)``. Needs ``observe``.
        keep_traces: keep every draw's ``observe`` values (memory grows with the draws).
        full_loss_every: evaluate the full-data loss L_n(w) every this many draws, 0 = never
            (``ChainsResult.full_loss``, ``(G, C, D)``, NaN between).
        center_loss: also evaluate the loss at w* on every draw's minibatch, the control variate of
            the paired LLC estimator (``ChainsResult.center_loss`` ``(G, C, D)`` and
            ``DrawContext.center_loss``): one forward pass per draw, or a gather from the
            per-example losses at each centre, computed once when n is at most the examples those
            passes would evaluate and ``loss_fn`` is per-example.
        init_losses: L_n(w*) of each centre ``(K,)`` if already known (``DrawContext.init_loss``,
            ``ChainsResult.init_loss``); None lets the planner find it where the run needs it
            (``slt_jax._src.planning.init_loss_source``): never computed in a ``center_loss`` run
            (L_n(w*) cancels from the paired forms), else one full-data pass per centre (or a
            subsample, ``SamplerConfig.init_loss_examples``).
    """

    observe: Callable[[Params, SGLDInfo, DrawContext], PyTree] | None = None
    observe_data: PyTree | None = None
    accumulator: Accumulator | None = None
    keep_traces: bool = False
    full_loss_every: int = 0
    center_loss: bool = False
    init_losses: Sequence[float] | None = None

    def compiled_part(self) -> Recording:
        """The settings that shape the compiled program (hashable): the data fields dropped, and
        ``keep_traces`` only where there is something to keep."""
        return self._replace(observe_data=None, init_losses=None, keep_traces=bool(self.keep_traces and self.observe is not None))


class DrawContext(NamedTuple):
    """What ``observe(params, info, context)`` sees besides the draw's full parameters.

    Attributes:
        batch: the draw's SGLD minibatch (drawn independently of the position).
        center: this configuration's w* (full params).
        init_loss: this configuration's L_n(w*), float32 scalar: exact over all n, the subsample's
            estimate (``SamplerConfig.init_loss_examples``), or NaN in a ``center_loss`` run without
            a per-example cache at w*, where it is never computed (use ``center_loss``: L_n(w*)
            cancels from every paired difference).
        data: the run's ``observe_data`` (e.g. probe datasets), or None.
        center_loss: the mean loss AT w* on ``batch`` (float32 scalar) when the run evaluates it
            (``Recording(center_loss=True)``), else None. The sampler gathers it from the
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


def microbatched_mean(loss_fn: Callable, microbatches: int) -> Callable:
    """``loss_fn``'s mean loss on a batch, evaluated (and differentiated) over ``microbatches`` equal
    microbatches in a ``lax.scan``, so at most one microbatch's activations are alive at a time.

    ``loss_fn(position, batch, context)`` returns per-example ``(b,)``, per-token ``(b, t)`` or scalar
    mean losses; ``context`` is a pytree it reads but is not differentiated with respect to (w*,
    component offsets: passed in, not closed over). The result ``mean(position, batch, context)`` is a
    scalar: the mean over microbatches of each microbatch's mean, which is the whole batch's mean
    because the microbatches have equal sizes (``microbatches`` must divide the batch size). Its
    gradient is a ``jax.custom_vjp`` whose forward pass runs ``value_and_grad`` on each microbatch and
    keeps the summed gradient as the residual: no recomputation, no stored activations.
    """

    def split(batch):
        return jax.tree.map(lambda x: x.reshape((microbatches, x.shape[0] // microbatches) + x.shape[1:]), batch)

    def one(position, micro, context):
        return kernels.mean_loss(lambda p, b: loss_fn(p, b, context), position, micro).astype(jnp.float32)

    @jax.custom_vjp
    def mean(position, batch, context):
        total, _ = jax.lax.scan(lambda acc, micro: (acc + one(position, micro, context), None), jnp.zeros((), jnp.float32),
                                split(batch))
        return total / microbatches

    def forward(position, batch, context):
        def accumulate(acc, micro):
            value, grad = jax.value_and_grad(one)(position, micro, context)
            return (acc[0] + value, jax.tree.map(jnp.add, acc[1], grad)), None

        zero = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, position))
        (total, grad), _ = jax.lax.scan(accumulate, zero, split(batch))
        return total / microbatches, jax.tree.map(lambda g: g / microbatches, grad)

    def backward(grad, cotangent):
        return jax.tree.map(lambda g: (cotangent * g).astype(g.dtype), grad), None, None

    mean.defvjp(forward, backward)
    return mean


class Static(NamedTuple):
    """The static (compile-time) settings of a chunk program."""

    loss_fn: LossFn
    layout: restriction.Layout
    preconditioner: Preconditioner
    batch_size: int
    num_draws: int
    steps_per_draw: int
    recorded: bool
    recording: Recording  # its ``compiled_part()``; ``Recording()`` in unrecorded (burn-in) chunks
    mala_every: int
    diagnostics_every: int
    center_cache: bool  # the loss at w* on a batch is gathered from per-example losses at w*
    bulk_noise: bool
    noise: str  # the kind of increments, ``kernels.NOISES``
    microbatches: int = 1  # the minibatch gradient is accumulated over this many microbatches
    placement: Placement | None = None  # where the group lives on a device mesh; None: one device
    due_period: int = 0  # >0: the draws due for MALA / diagnostics, every this many, are placed statically
    aligned: bool = False  # ...in this chunk, whose first draw is due (``due_pattern``, ``periodic_scan``)


class Placement(NamedTuple):
    """Where a group's chains live on a device mesh (``slt_jax._src.multihost`` builds it).

    Attributes:
        center_axis, variant_axis, chain_axis: the mesh axis each ``vmap`` level of ``_chunk`` is
            split over (its ``spmd_axis_name``), or None.
        position: one ``NamedSharding`` per array of ONE chain's position (leaf order): the
            parameter slicing over the model axis that every step keeps (``with_sharding_constraint``;
            the vmaps add the leading axes), so that the loop's state stays sliced as placed.
    """

    center_axis: str | None
    variant_axis: str | None
    chain_axis: str | None
    position: tuple


class CenterInputs(NamedTuple):
    """A centre's traced inputs (leading axis K in a group, none inside one chain's program)."""

    center: Params  # w*, full params
    init_loss: Array  # L_n(w*), float32 scalar (NaN where not computed: ``DrawContext.init_loss``)
    center_cache: Array  # per-example losses at w* (n, ...) when ``Static.center_cache``, else a placeholder


class VariantInputs(NamedTuple):
    """A variant's traced inputs (leading axis V in a group): its component and hyperparameters."""

    offsets: tuple
    hyper: Hyperparameters


class Offsets(NamedTuple):
    """Where a chunk starts: its first global step and its first recorded draw (int32 scalars)."""

    step: Array
    draw: Array


def _loss_at_center(static: Static, at: CenterInputs, batch: Batch, indices: Array) -> Array:
    """The mean loss at w* on a draw's minibatch: a forward pass, or a gather from the cached
    per-example losses at w*."""
    if not static.center_cache:
        return kernels.mean_loss(static.loss_fn, at.center, batch).astype(jnp.float32)
    if indices.shape[0] == 0:  # full batch (no indices drawn)
        return jnp.mean(at.center_cache)
    return jnp.mean(jnp.take(at.center_cache, indices, axis=0, mode="clip"))


def _full_loss(static: Static, params: Params, data: Batch, draw_index: Array) -> Array:
    """L_n at the draw on the draws due (every ``full_loss_every``-th), else NaN."""
    nan = jnp.full((), jnp.nan, jnp.float32)
    if not static.recording.full_loss_every:
        return nan
    return jax.lax.cond(
        draw_index % static.recording.full_loss_every == 0,
        lambda: batched_mean(static.loss_fn, params, data, static.batch_size).astype(jnp.float32),
        lambda: nan,
    )


def _observe(static: Static, at: CenterInputs, params: Params, info: SGLDInfo, batch: Batch, indices: Array,
             observe_data: PyTree, accumulated: PyTree) -> tuple[Array, PyTree, PyTree]:
    """A draw's loss at w* (NaN unless recorded), observables (None unless observed) and the
    updated accumulator."""
    recording = static.recording
    at_center = _loss_at_center(static, at, batch, indices) if recording.center_loss else jnp.full((), jnp.nan, jnp.float32)
    observed = None
    if recording.observe is not None:
        context = DrawContext(batch, at.center, at.init_loss, observe_data, at_center if recording.center_loss else None)
        observed = recording.observe(params, info, context)
        if recording.accumulator is not None:
            accumulated = recording.accumulator.update(accumulated, observed)
    return at_center, observed, accumulated


def _pin(placement: Placement | None, state: SGLDState) -> SGLDState:
    """``state`` with its position (and second moment, previous noise) kept on ``placement``'s parameter slicing."""
    if placement is None:
        return state

    def pin(tree):
        if tree is None:
            return None
        leaves, treedef = jax.tree.flatten(tree)
        return treedef.unflatten([jax.lax.with_sharding_constraint(x, s) for x, s in zip(leaves, placement.position)])

    return state._replace(position=pin(state.position), second_moment=pin(state.second_moment),
                          previous_noise=pin(state.previous_noise))


def chunk_steps(start: Offsets, static: Static) -> Array:
    """The chunk's global step numbers, ``(num_draws, steps_per_draw)`` int32."""
    steps = start.step + jnp.arange(static.num_draws * static.steps_per_draw, dtype=jnp.int32)
    return steps.reshape(static.num_draws, static.steps_per_draw)


class StepDraws(NamedTuple):
    """A chunk's random draws for the chains of a group, keyed ``fold_in(key, t)`` by global step t
    (so chunking never changes them) from the halves of ``split(fast(chain_key))``, step-major:
    ``(num_draws, chains, steps_per_draw, ...)``, the layout the chunk's scans read."""

    noise_keys: PRNGKey  # (chains,): the noise drawn inside each step (when not in bulk)
    noise: Array | None  # (num_draws, chains, steps_per_draw, size) ``kernels.flat_noise``; None: drawn in the step
    rows: Array  # (num_draws, chains, steps_per_draw, batch_size) int32 minibatch rows; batch_size 0: full batch


def step_draws(chain_keys: PRNGKey, noise_like: Params, n: int, start: Offsets, static: Static) -> StepDraws:
    """The chunk's ``StepDraws`` for ``chain_keys`` (chains,); ``noise_like``: one chain's position's
    shapes and dtypes (``jax.ShapeDtypeStruct`` leaves)."""
    noise_keys, batch_keys = jax.vmap(lambda key: jax.random.split(rng.fast(key)), out_axes=1)(chain_keys)

    def per_step(keys, draw):  # draw(fold_in(key, t)) for every (draw, chain, step of the draw)
        over_steps = jax.vmap(lambda t, key: draw(jax.random.fold_in(key, t)), in_axes=(0, None))
        over_chains = jax.vmap(over_steps, in_axes=(None, 0))
        return jax.vmap(over_chains, in_axes=(0, None))(chunk_steps(start, static), keys)

    noise = None
    if static.bulk_noise:  # flat (``kernels.flat_noise``); each step unravels its own
        leaves = jax.tree.leaves(noise_like)
        size, dtype = sum(math.prod(x.shape) for x in leaves), jnp.result_type(*(x.dtype for x in leaves))
        noise = per_step(noise_keys, lambda key: kernels.flat_noise(static.noise, key, size, dtype))
    if static.batch_size == n:  # full batch: every step sees all the data
        rows = jnp.zeros((static.num_draws, chain_keys.shape[0], static.steps_per_draw, 0), jnp.int32)
    else:
        rows = per_step(batch_keys, lambda key: jax.random.randint(key, (static.batch_size,), 0, n))
    return StepDraws(noise_keys, noise, rows)


def chain_chunk(carry: Carry, draws: StepDraws, data: Batch, at: CenterInputs, variant: VariantInputs, start: Offsets,
                observe_data: PyTree, static: Static):
    """Runs ``num_draws * steps_per_draw`` steps of ONE chain of ONE configuration with its ``draws``
    (``step_draws`` of one chain: the chain axis taken out)."""
    n = jax.tree.leaves(data)[0].shape[0]
    layout, offsets, hyper = static.layout, variant.offsets, variant.hyper
    position_center = restriction.extract(layout, offsets, at.center)
    restricted = lambda position, batch, context: static.loss_fn(restriction.insert(layout, context[1], context[0], position), batch)
    if static.microbatches > 1:  # the planner's choice; the kernel sees a loss like any other
        restricted = microbatched_mean(restricted, static.microbatches)
    kernel = kernels.build_kernel(lambda position, batch: restricted(position, batch, (at.center, offsets)),
                                  preconditioner=static.preconditioner, noise=static.noise)
    step_kernel = lambda *args: kernel(*args, diagnostics=False)
    noise_key, noise, indices = draws
    steps = chunk_steps(start, static)
    unravel = ravel_pytree(position_center)[1]

    def one_step(kernel, state, diverged_at, step_noise, step_indices, step):
        batch = data if static.batch_size == n else take_rows(data, step_indices)
        if step_noise is not None:  # a flat bulk draw
            step_noise = unravel(step_noise)
        new_state, info = kernel(jax.random.fold_in(noise_key, step), state, batch, position_center, hyper, step_noise)
        new_state = _pin(static.placement, new_state)
        diverged_at = jnp.where((diverged_at < 0) & ~jnp.isfinite(info.loss), step, diverged_at)
        return new_state, info, diverged_at, batch

    def inner(inner_carry, inner_xs):
        state, diverged_at = inner_carry
        state, _, diverged_at, _ = one_step(step_kernel, state, diverged_at, *inner_xs)
        return (state, diverged_at), None

    def draw(carry: Carry, xs, flags=None):
        draw_noise, draw_indices, draw_steps, draw_index = xs
        if not static.recorded:
            (state, diverged_at), _ = jax.lax.scan(inner, (carry.state, carry.diverged_at), (draw_noise, draw_indices, draw_steps))
            return Carry(state, carry.accumulator, diverged_at), None
        if flags is None:
            # Diagnostics and MALA only on the draws due: the draw index is the same for every chain,
            # so under vmap these stay real branches around the extra work (the step is unbranched).
            due = lambda every: every == 1 or (draw_index % every == 0)
            flags = (due(static.diagnostics_every), bool(static.mala_every) and due(static.mala_every))
        draw_kernel = lambda *args: kernel(*args, diagnostics=flags[0], mala=flags[1])
        first = (jax.tree.map(lambda x: x[0], draw_noise), draw_indices[0], draw_steps[0])
        new_state, info, diverged_at, batch = one_step(draw_kernel, carry.state, carry.diverged_at, *first)
        params = None
        if static.recording.full_loss_every or static.recording.observe is not None:
            params = restriction.insert(layout, offsets, at.center, carry.state.position)
        full_loss = _full_loss(static, params, data, draw_index)
        at_center, observed, accumulated = _observe(static, at, params, info, batch, first[1], observe_data, carry.accumulator)
        record = DrawRecord(info, full_loss, at_center, observed if static.recording.keep_traces else None)
        if static.steps_per_draw > 1:
            rest = (jax.tree.map(lambda x: x[1:], draw_noise), draw_indices[1:], draw_steps[1:])
            (new_state, diverged_at), _ = jax.lax.scan(inner, (new_state, diverged_at), rest)
        return Carry(new_state, accumulated, diverged_at), record

    draw_indices = start.draw + jnp.arange(static.num_draws, dtype=jnp.int32)
    xs = (noise, indices, steps, draw_indices)
    if not (static.recorded and static.aligned):
        return jax.lax.scan(draw, carry, xs)
    period, due_flags, other_flags = due_pattern(static.diagnostics_every, static.mala_every)
    return periodic_scan(lambda c, x, due: draw(c, x, due_flags if due else other_flags), carry, xs, static.num_draws, period)


def due_pattern(diagnostics_every: int, mala_every: int) -> tuple[int, tuple, tuple] | None:
    """``(period, flags of the due draws, flags of the others)`` where the draws due for diagnostics
    and MALA are exactly every ``period``-th, so a chunk that starts on a due draw can place them
    statically (``periodic_scan``) instead of branching on every draw; flags are ``(diagnostics,
    mala)``. None where the two periods interleave otherwise (then ``lax.cond`` decides per draw).

    The planner asks for it (``planning.due_period``) on chains of many coordinates, where a branch costs
    more than the work it skips (measured on the bench_llc MLP, 270k parameters, two-point noise: floor
    ratio 1.41-1.53 with the branch, 1.38 placed statically); on small ones the nested loops cost more
    than the branch (the bench_llc DLN: 1.35-1.42 with it, 1.50-1.58 without; ``benchmarks/bench_loop.py``).
    """
    d, m = diagnostics_every, mala_every
    if m == 0 and d == 1:
        return None  # nothing is ever skipped: one kind of draw
    if d == 1:
        return m, (True, True), (True, False)
    if m == 0:
        return d, (True, False), (False, False)
    if d == m:
        return d, (True, True), (False, False)
    return None


def periodic_scan(body: Callable, carry, xs, length: int, period: int):
    """``lax.scan`` of ``body(carry, x, due)`` over the ``length`` leading entries of ``xs``, with
    ``due`` the static bool ``index % period == 0``: blocks of ``period`` (the due entry, then a scan
    of the others), then the remainder. The records come out stacked in order, as ``lax.scan``'s."""
    take = lambda tree, index: jax.tree.map(lambda x: x[index], tree)

    def segment(carry, seg, count):
        carry, head = body(carry, take(seg, 0), True)
        head = jax.tree.map(lambda x: x[None], head)
        if count == 1:
            return carry, head
        carry, tail = jax.lax.scan(lambda c, x: body(c, x, False), carry, take(seg, slice(1, None)))
        return carry, jax.tree.map(lambda a, b: jnp.concatenate([a, b]), head, tail)

    blocks, remainder = divmod(length, period)
    parts = []
    if blocks:
        blocked = jax.tree.map(lambda x: x[: blocks * period].reshape((blocks, period) + x.shape[1:]), xs)
        carry, out = jax.lax.scan(lambda c, seg: segment(c, seg, period), carry, blocked)
        parts.append(jax.tree.map(lambda x: x.reshape((blocks * period,) + x.shape[2:]), out))
    if remainder:
        carry, out = segment(carry, take(xs, slice(blocks * period, None)), remainder)
        parts.append(out)
    return carry, parts[0] if len(parts) == 1 else jax.tree.map(lambda *a: jnp.concatenate(a), *parts)


def _chunk(carry, chain_keys, data, centers: CenterInputs, variants: VariantInputs, start: Offsets, observe_data, *,
           static: Static):
    # A chain's draws depend on its key alone: every centre and variant of the chain takes the same
    # noise and the same minibatch rows. They are drawn once per chain, step-major (the layout the
    # scans read: no transposed copy of them). The rows are broadcast over the centre and variant
    # axes, so that the minibatch carries every vmapped axis the position carries: JAX then batches
    # the gradient's products over the same axes on both operands. Rows shared by those axes left
    # them as free dimensions of the products, which XLA:CPU met with transposed copies of the
    # activations (two of the four weight-gradient products of the benchmark DLN, five with three
    # variants; README, "Tests and benchmarks").
    n = jax.tree.leaves(data)[0].shape[0]
    noise_like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[3:], x.dtype), carry.state.position)
    draws = step_draws(chain_keys, noise_like, n, start, static)
    draws = draws._replace(rows=jnp.broadcast_to(draws.rows, carry.diverged_at.shape[:2] + draws.rows.shape))

    def run(c, d, at, variant):
        return chain_chunk(c, d, data, at, variant, start, observe_data, static)

    # The vmapped axes are named after the mesh axes they are split over (for ``_pin``'s constraints).
    placement = static.placement or Placement(None, None, None, ())
    shared = StepDraws(None, None, 0)  # per centre / variant: only the broadcast rows have the axis
    per_chain = jax.vmap(run, in_axes=(0, StepDraws(0, 1, 1), None, None), spmd_axis_name=placement.chain_axis)
    per_variant = jax.vmap(per_chain, in_axes=(0, shared, None, 0), spmd_axis_name=placement.variant_axis)
    per_center = jax.vmap(per_variant, in_axes=(0, shared, 0, None), spmd_axis_name=placement.center_axis)
    return per_center(carry, draws, centers, variants)


_chunk_jit = jax.jit(_chunk, static_argnames=("static",), donate_argnums=(0,))


def _jit_for(carry: Carry):
    """The chunk program for ``carry``: on a mesh, its new carry keeps the carry's shardings (so the
    next chunk calls the same executable, and the chains stay split as placed), the records where
    XLA puts them."""
    shardings = [getattr(x, "sharding", None) for x in jax.tree.leaves(carry)]
    if not any(isinstance(s, jax.sharding.NamedSharding) for s in shardings):
        return _chunk_jit
    carry_shardings = jax.tree.unflatten(jax.tree.structure(carry), shardings)
    return jax.jit(_chunk, static_argnames=("static",), donate_argnums=(0,), out_shardings=(carry_shardings, None))


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
    # Shardings are hashable and compare by mesh and spec; their str() costs more than the call on a
    # small model's chunk.
    shapes = tuple((np.shape(x), str(getattr(x, "dtype", type(x))), getattr(x, "sharding", None)) for x in leaves)
    return (treedef, shapes, static)


def compiled_chunk(args, static: Static) -> tuple[Callable, float]:
    """AOT-compiles the chunk program once per signature; returns (executable, seconds spent)."""
    signature = _signature(args, static)
    if signature in _COMPILED:
        _COMPILED.move_to_end(signature)
        return _COMPILED[signature], 0.0
    start = time.perf_counter()
    # The non-partitionable threefry layout generates the same-quality bits about 2x faster on CPU;
    # the noise is drawn per chain (the config and chain axes split the vmapped key axes; along a model
    # axis the partitioner keeps the same bits), so nothing needs the partitionable layout, and the
    # stream is fixed by this choice, not by the device count or the mesh.
    with jax.threefry_partitionable(False):
        executable = _jit_for(args[0]).lower(*args, static=static).compile()
    _COMPILE_COUNT[0] += 1
    _COMPILED[signature] = executable
    while len(_COMPILED) > _MAX_COMPILED:
        _COMPILED.popitem(last=False)
    return executable, time.perf_counter() - start
