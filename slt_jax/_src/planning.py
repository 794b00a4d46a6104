"""Preparing a run: validation (before anything compiles), configurations, groups, chunks.

``slt_jax.sampler.run_chains`` calls ``prepare`` (validate the inputs, resolve every configuration's
restriction and hyperparameters, L_n(w*) of every centre), ``groups`` (split the configurations into
compiled groups: one per restriction layout, and within a layout as many configurations as fit the
memory budget on each device of the mesh's config axis, padded to a multiple of that axis:
``pad_to_mesh``) and ``chunks`` (the chunks of burn-in and recorded draws).

The memory model of one configuration (``configuration_bytes``): ``num_chains`` x (the chain's state,
a few copies of the component's coordinates; the touched parameter leaves, rebuilt at each step; XLA's
temporary buffers of one restricted ``value_and_grad`` on a minibatch, from its compiled memory
analysis; the observables and their accumulators), plus one copy of the centre per configuration when
the centres differ. The default budget (``default_memory_budget``) is half the accelerator's memory,
or min(2 GiB, RAM / 8) on a CPU host.
"""

from __future__ import annotations

import collections
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from slt_jax import kernels, restriction
from slt_jax._src import multihost, program, validation
from slt_jax.config import NbetaConventionWarning, SamplerConfig
from slt_jax.kernels import Hyperparameters, SGLDInfo
from slt_jax._src.program import DrawContext, Recording, full_data_loss
from slt_jax.types import Array, Batch, KeyLike, LossFn, Mask, Params, PyTree

__all__ = ["Plan", "Group", "Variant", "Chunk", "prepare", "groups", "pad_to_mesh", "chunks", "configuration_bytes",
           "default_memory_budget", "example_draw", "observed_shapes"]

# Memory allowed for one chunk's pre-generated noise (bytes); bounds the chunk length.
_NOISE_BUDGET_BYTES = 128 * 2**20
# Target number of chunks for progress reporting and early divergence detection.
_TARGET_CHUNKS = 10
_HYPERPARAMETERS = Hyperparameters._fields


def default_memory_budget() -> int:
    """Bytes one compiled group may use: half the accelerator's memory, or min(2 GiB, RAM / 8) on CPU."""
    device = jax.local_devices()[0]  # jax.devices()[0] may belong to another process
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"]) // 2
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        ram = 16 * 2**30
    return int(min(2 * 2**30, ram // 8))


def _nbytes(tree) -> int:
    return sum(int(np.prod(np.shape(x))) * np.dtype(getattr(x, "dtype", np.float32)).itemsize for x in jax.tree.leaves(tree))


# Memory analyses by signature, least recently used first; bounded (each key holds a loss function,
# and notebooks that redefine theirs would otherwise keep every old one alive).
_ACTIVATION_BYTES: collections.OrderedDict = collections.OrderedDict()
_MAX_ACTIVATION_ENTRIES = 128


def _temp_bytes(identity, function, *args) -> int:
    """XLA's temporary-buffer size of ``function(*args)``, compiled once per ``identity`` (what the
    function computes, e.g. ``(loss_fn, layout)``: ``function`` itself is a fresh closure each call)
    and argument signature."""
    signature = (identity, jax.tree.structure(args), tuple((np.shape(x), str(x.dtype)) for x in jax.tree.leaves(args)))
    if signature in _ACTIVATION_BYTES:
        _ACTIVATION_BYTES.move_to_end(signature)
        return _ACTIVATION_BYTES[signature]
    try:
        analysis = jax.jit(function).lower(*args).compile().memory_analysis()
        size = int(getattr(analysis, "temp_size_in_bytes", 0) or 0)
    except Exception:  # pragma: no cover - backends without memory analysis
        size = 0
    _ACTIVATION_BYTES[signature] = size
    while len(_ACTIVATION_BYTES) > _MAX_ACTIVATION_ENTRIES:
        _ACTIVATION_BYTES.popitem(last=False)
    return size


# ---------------------------------------------------------------------------------------------
# prepare: validation (before any compilation) and the device inputs


class Variant(NamedTuple):
    restriction: restriction.Restriction
    hyper: Hyperparameters  # float64 numpy scalars (nβ resolved)


class Plan(NamedTuple):
    n: int
    config: SamplerConfig  # as given (``nbeta`` unresolved); the batch size is ``config.batch_size``
    centers: list  # device pytrees
    init_losses: np.ndarray  # (K,)
    variants: list[Variant]
    chain_keys: Array
    data: Batch
    static: program.Static  # without layout / num_draws / steps_per_draw / recorded
    observe_data: PyTree
    center_caches: list  # per centre, the per-example losses at it (n, ...), or None (no cache)


def check_centers(centers: Sequence[Params]) -> list:
    """``centers`` as a list, after checking that every checkpoint has checkpoint 0's structure and shapes."""
    if isinstance(centers, Mapping) or not isinstance(centers, (list, tuple)) or not centers:
        raise TypeError(
            "centers must be a non-empty list of params pytrees (one per checkpoint); for one w* pass [params]."
        )
    validation.check_params(centers[0])
    reference = jax.tree.structure(centers[0])
    shapes = [np.shape(x) for x in jax.tree.leaves(centers[0])]
    for index, center in enumerate(centers[1:], start=1):
        structure = jax.tree.structure(center)
        if structure != reference:
            raise ValueError(
                f"checkpoint {index} has a different pytree structure from checkpoint 0:\n  0: {reference}\n"
                f"  {index}: {structure}\nEvery checkpoint must be the same model (same parameter names and nesting)."
            )
        for (path, leaf), shape in zip(jax.tree_util.tree_flatten_with_path(center)[0], shapes):
            if np.shape(leaf) != shape:
                raise ValueError(
                    f"checkpoint {index}{jax.tree_util.keystr(path)} has shape {np.shape(leaf)} but checkpoint 0 has "
                    f"{shape}; every checkpoint must have the same parameter shapes."
                )
        validation.check_params(center)
    return list(centers)


def check_inputs(loss_fn, centers, data, config: SamplerConfig, masks=None) -> None:
    """The input checks ``run_chains`` makes before compiling, for callers that do work first
    (``step_size="auto"`` calibrates before the main run): data, checkpoint structures, masks, loss_fn."""
    n = validation.check_data(data)
    centers = check_centers(centers)
    for index, mask in enumerate([None] if masks is None else masks):
        validation.check_masks(mask, centers[0], name=f"masks[{index}]")
    validation.check_loss_fn(loss_fn, centers[0], data, min(config.batch_size, n))


def _variants(config: SamplerConfig, n: int, params: Params, masks, grid) -> list[Variant]:
    masks = [None] if masks is None else list(masks)
    if not masks:
        raise ValueError("masks is empty: pass None (the whole model) or a list of bool masks.")
    grid = dict(grid or {})
    unknown = set(grid) - set(_HYPERPARAMETERS)
    if unknown:
        raise ValueError(f"grid has unknown hyperparameter(s) {sorted(unknown)}; use {list(_HYPERPARAMETERS)}.")
    if isinstance(config.step_size, str) and "step_size" not in grid:
        raise ValueError("run_chains needs a numeric step_size; 'auto' is resolved by estimate_llc / calibrate.")
    base = dict(step_size=config.step_size, nbeta=config.nbeta_for(n), localization=config.localization, weight_decay=config.weight_decay)
    columns = {}
    for name in _HYPERPARAMETERS:
        values = np.atleast_1d(np.asarray(grid.get(name, base[name]), np.float64))
        if values.ndim != 1 or not np.all(np.isfinite(values)) or np.any(values < 0) or (name == "step_size" and np.any(values == 0)):
            raise ValueError(f"grid[{name!r}]={values!r} must be a 1-D array of finite values >= 0 (step_size > 0).")
        columns[name] = values
    lengths = {len(masks)} | {len(v) for v in columns.values()}
    lengths.discard(1)
    if len(lengths) > 1:
        raise ValueError(f"masks and grid have different lengths {sorted(lengths)}; they must share one length (or be 1).")
    num_variants = lengths.pop() if lengths else 1
    restrictions = []
    for index, mask in enumerate(masks):
        checked = validation.check_masks(mask, params, name=f"masks[{index}]")
        restrictions.append(restriction.restrict(checked, params))
    if len(restrictions) == 1:
        restrictions = restrictions * num_variants
    columns = {name: np.broadcast_to(values, (num_variants,)) for name, values in columns.items()}
    return [Variant(r, Hyperparameters(**{name: columns[name][v] for name in _HYPERPARAMETERS}))
            for v, r in enumerate(restrictions)]


def _check_recording(recording: Recording | None) -> Recording:
    if recording is None:
        return Recording()
    if not isinstance(recording, Recording):
        raise TypeError(
            f"recording must be a slt_jax.Recording (or None), got {type(recording).__name__}; build one with "
            "sj.Recording(observe=..., accumulator=..., keep_traces=..., full_loss_every=..., center_loss=...)."
        )
    if recording.observe is not None and not callable(recording.observe):
        raise TypeError(f"Recording.observe must be callable as observe(params, info, context), got {recording.observe!r}.")
    if recording.observe_data is not None and recording.observe is None:
        raise ValueError("Recording.observe_data was given without observe; pass observe(params, info, context).")
    if recording.accumulator is not None and recording.observe is None:
        raise ValueError("Recording.accumulator was given without observe; the accumulator streams observe's values.")
    every = validation.check_positive_int(recording.full_loss_every, "Recording.full_loss_every", minimum=0)
    return recording._replace(full_loss_every=every, keep_traces=bool(recording.keep_traces), center_loss=bool(recording.center_loss))


def _warn_per_token_nbeta(config: SamplerConfig, n: int, loss_shape: tuple) -> None:
    if config.nbeta is None and len(loss_shape) >= 2:
        warnings.warn(NbetaConventionWarning(
            f"loss_fn returns per-token losses {loss_shape} and nbeta is the default n / log n with n = {n} "
            f"SEQUENCES (nbeta = {config.nbeta_for(n):.4g}), not n tokens (docs/conventions.md §1). Pass nbeta= "
            f"to choose the convention explicitly, e.g. nbeta=sj.default_nbeta({n}) to keep this one."
        ), stacklevel=validation.external_stacklevel())


def _init_losses(loss_fn, centers: list, data, config: SamplerConfig, known, caches) -> np.ndarray:
    """L_n(w*) of every centre: as given, the mean of its cached per-example losses (the same full
    pass, once), or one batched full-data pass."""
    if known is None and caches is not None:
        known = [float(jnp.mean(cache)) for cache in caches]
    elif known is None:
        known = [float(full_data_loss(loss_fn, c, data, config.batch_size)) for c in centers]
    try:
        losses = np.asarray(known, np.float64).reshape(len(centers))
    except (TypeError, ValueError):
        raise ValueError(f"Recording.init_losses={known!r} must hold one L_n(w*) per centre ({len(centers)}).") from None
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        raise ValueError(f"the full-data loss at checkpoint(s) {bad.tolist()} is not finite; loss_fn must be finite at w*.")
    return losses


def prepare(loss_fn: LossFn, centers: Sequence[Params], data: Batch, config: SamplerConfig, *, key: KeyLike,
            masks: Sequence[Mask | None] | None = None, grid: Mapping[str, Sequence[float]] | None = None,
            recording: Recording | None = None) -> Plan:
    """Validates a run's inputs (before anything compiles) and resolves its configurations."""
    if not isinstance(config, SamplerConfig):
        raise TypeError(f"config must be a slt_jax.SamplerConfig, got {type(config).__name__}.")
    n = validation.check_data(data)
    centers = check_centers(centers)
    if config.batch_size > n:
        raise ValueError(f"batch_size={config.batch_size} is larger than the dataset (n={n}); use batch_size <= {n}.")
    recording = _check_recording(recording)
    variants = _variants(config, n, centers[0], masks, grid)
    loss_shape = validation.check_loss_fn(loss_fn, centers[0], data, config.batch_size)
    _warn_per_token_nbeta(config, n, loss_shape)
    data = jax.tree.map(jnp.asarray, data)
    centers = [jax.tree.map(jnp.asarray, c) for c in centers]
    caches = _center_caches(loss_fn, centers, data, config, len(variants), loss_shape) if recording.center_loss else None
    init_losses = _init_losses(loss_fn, centers, data, config, recording.init_losses, caches)
    static = program.Static(
        loss_fn=loss_fn, layout=None, preconditioner=config.preconditioner_spec, batch_size=config.batch_size,
        num_draws=0, steps_per_draw=1, recorded=True, recording=recording.compiled_part(), mala_every=config.mala_every,
        diagnostics_every=config.diagnostics_every, center_cache=caches is not None, bulk_noise=False,
    )
    chain_keys = jax.random.split(validation.as_key(key), config.num_chains)
    observe_data = jax.tree.map(jnp.asarray, recording.observe_data)
    return Plan(n, config, centers, init_losses, variants, chain_keys, data, static, observe_data, caches)


# The per-example losses at a centre are kept on device when they take at most this many bytes.
_CENTER_CACHE_MAX_BYTES = 256 * 2**20


def _center_caches(loss_fn, centers, data, config: SamplerConfig, num_variants: int, loss_shape: tuple) -> list | None:
    """Per-example losses at each centre, when gathering them beats a forward pass per draw.

    The paired estimator and probe-centred susceptibilities need L_B(w*) on every draw's minibatch.
    With per-example losses at w* computed once (n forward examples per centre), that is a gather
    and a mean, the same number up to float32 rounding. Worth it when n is below the examples the
    per-draw passes would evaluate (draws x chains x variants x batch_size), the loss is
    per-example (``loss_shape``, its output on a batch, has a leading batch axis) and the cache fits
    ``_CENTER_CACHE_MAX_BYTES``. L_n(w*) is then the cache's mean (no second full pass).
    """
    n = jax.tree.leaves(data)[0].shape[0]
    per_draw_examples = config.num_draws * config.num_chains * num_variants * config.batch_size
    if n > per_draw_examples:
        return None
    if len(loss_shape) == 0:
        return None  # a scalar mean loss: evaluate at w* on each batch
    if n * int(np.prod(loss_shape[1:])) * 4 * len(centers) > _CENTER_CACHE_MAX_BYTES:
        return None
    return [program.example_losses(loss_fn, c, data, config.batch_size) for c in centers]


# ---------------------------------------------------------------------------------------------
# plan: groups of configurations under the memory budget


class Group(NamedTuple):
    centers: list[int]  # indices into plan.centers (padded by repetition)
    variants: list[int]  # indices into plan.variants (padded by repetition)
    num_centers: int  # before padding
    num_variants: int


def example_draw(plan: Plan, batch: Batch | None = None) -> tuple[SGLDInfo, DrawContext]:
    """Zero ``info`` and a ``context`` of the shapes ``observe`` sees at a draw (``batch``: a
    minibatch, by default abstract), to trace ``observe`` outside the program."""
    if batch is None:
        batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct((plan.config.batch_size,) + x.shape[1:], x.dtype), plan.data)
    zero = jnp.zeros((), jnp.float32)
    info = SGLDInfo(*(zero for _ in SGLDInfo._fields))
    center_loss = zero if plan.static.recording.center_loss else None
    return info, DrawContext(batch, plan.centers[0], zero, plan.observe_data, center_loss)


def observed_shapes(plan: Plan) -> PyTree | None:
    """``observe``'s values at one draw as ``jax.ShapeDtypeStruct`` leaves, or None without observe."""
    observe = plan.static.recording.observe
    return None if observe is None else jax.eval_shape(observe, plan.centers[0], *example_draw(plan))


def configuration_bytes(plan: Plan, layout: restriction.Layout, offsets: tuple) -> int:
    """Bytes one configuration needs in a group: chains' state, activations, observables."""
    config, recording = plan.config, plan.static.recording
    center = plan.centers[0]
    piece = restriction.extract(layout, offsets, center)
    copies = 6 + (2 if config.preconditioner_spec.adaptive else 0)
    touched = sum(_nbytes(leaf) for leaf, lay in zip(jax.tree.leaves(center), layout.leaves) if lay is not None)
    batch = jax.tree.map(lambda x: jnp.zeros((config.batch_size,) + x.shape[1:], x.dtype), plan.data)

    def value_and_grad(position, batch):
        loss = lambda p: kernels.mean_loss(plan.static.loss_fn, restriction.insert(layout, offsets, center, p), batch)
        return jax.value_and_grad(loss)(position)

    shapes = tuple((np.shape(x), str(x.dtype)) for x in jax.tree.leaves(center))
    per_chain = copies * _nbytes(piece) + 2 * touched + _temp_bytes(("value_and_grad", plan.static.loss_fn, layout, shapes),
                                                                    value_and_grad, piece, batch)
    observe = recording.observe
    if observe is not None:
        info, context = example_draw(plan, batch)
        values = jax.eval_shape(observe, center, info, context)
        per_chain += _temp_bytes(("observe", observe), lambda p, i, c: observe(p, i, c), center, info, context) + 2 * _nbytes(values)
        if recording.accumulator is not None:
            example = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), values)
            per_chain += 2 * _nbytes(jax.eval_shape(recording.accumulator.init, example))
        if recording.keep_traces:
            per_chain += config.num_draws * _nbytes(values)
    per_chain += config.num_draws * 8 * 4  # the records
    return config.num_chains * per_chain + (_nbytes(center) if len(plan.centers) > 1 else 0)


def groups(plan: Plan) -> tuple[list[Group], int]:
    """The compiled groups (one per restriction layout, split by the memory budget) and the largest
    configuration's bytes."""
    config = plan.config
    budget = config.memory_budget or default_memory_budget()
    mesh = multihost.sizes(multihost.run_mesh(config.num_chains))
    by_layout: dict = {}
    largest = 0
    for index, variant in enumerate(plan.variants):
        by_layout.setdefault(variant.restriction.layout, []).append(index)
    num_centers = len(plan.centers)
    groups = []
    for layout, members in by_layout.items():
        per_config = configuration_bytes(plan, layout, plan.variants[members[0]].restriction.offsets)
        if per_config > budget:
            raise ValueError(
                f"memory_budget={budget} bytes is too small for one configuration ({per_config} bytes: "
                f"{config.num_chains} chains of a component with {layout.num_sampled} coordinates, with their "
                f"activations). Raise SamplerConfig.memory_budget to at least {per_config}, or use fewer chains "
                "or a smaller batch_size."
            )
        largest = max(largest, per_config)
        capacity = budget // per_config * mesh.config  # the budget is per device; the config axis splits a group
        variants_per_group = min(len(members), capacity)
        centers_per_group = max(1, min(num_centers, capacity // variants_per_group))
        for c0 in range(0, num_centers, centers_per_group):
            center_block = list(range(c0, min(c0 + centers_per_group, num_centers)))
            for v0 in range(0, len(members), variants_per_group):
                variant_block = members[v0:v0 + variants_per_group]
                groups.append(Group(
                    center_block + [center_block[-1]] * (centers_per_group - len(center_block)),
                    variant_block + [variant_block[-1]] * (variants_per_group - len(variant_block)),
                    len(center_block), len(variant_block),
                ))
    return pad_to_mesh(groups, mesh, config.num_chains), largest


def pad_to_mesh(groups: list[Group], mesh: multihost.MeshSizes, num_chains: int) -> list[Group]:
    """Every group with the axis that the mesh's config axis splits (``multihost.config_dim``: centres
    or variants) padded by repetition to a multiple of its size (padded configurations are dropped on
    assembly); warns when a whole device's share is padding (devices repeating others' work)."""
    if mesh.config == 1:
        return groups
    out, idle = [], []
    for group in groups:
        dim = multihost.config_dim(len(group.centers), len(group.variants))
        members = [group.centers, group.variants][dim]
        members = members + [members[-1]] * (multihost.padded(len(members), mesh.config) - len(members))
        real = [group.num_centers, group.num_variants][dim]
        if len(members) - real >= len(members) // mesh.config:
            idle.append(real)
        out.append(group._replace(centers=members) if dim == 0 else group._replace(variants=members))
    if idle:
        warnings.warn(
            f"{idle[0]} configuration(s) x num_chains={num_chains} on {mesh.config * mesh.chain * mesh.model} devices "
            f"(mesh axes config={mesh.config}, chain={mesh.chain}, model={mesh.model}) leave devices repeating the "
            "work of others. For every device to do its own work, make the configurations x chains a multiple of the "
            "device count (e.g. num_chains a multiple of it).",
            stacklevel=validation.external_stacklevel(),
        )
    return out


# ---------------------------------------------------------------------------------------------
# chunks


def _chunk_lengths(total_draws: int, steps_per_draw: int, per_step_bytes: int, requested: int | None) -> list[int]:
    if total_draws == 0:
        return []
    if requested is not None:
        size = requested
    else:
        size = max(1, math.ceil(total_draws / _TARGET_CHUNKS))
        size = max(1, min(size, _NOISE_BUDGET_BYTES // max(1, per_step_bytes * steps_per_draw)))
        # Prefer a size that divides the run: a remainder chunk is one more compilation.
        divisors = [d for d in range(max(1, size // 2), size + 1) if total_draws % d == 0]
        size = divisors[-1] if divisors else size
    lengths = [size] * (total_draws // size)
    if total_draws % size:
        lengths.append(total_draws % size)
    return lengths


class Chunk(NamedTuple):
    """One call of the chunk program: ``num_draws * steps_per_draw`` steps, recording a draw at the
    first of every ``steps_per_draw`` when ``recorded`` (burn-in chunks record nothing)."""

    num_draws: int
    steps_per_draw: int
    recorded: bool

    @property
    def num_steps(self) -> int:
        return self.num_draws * self.steps_per_draw


def chunks(config: SamplerConfig, per_step_bytes: int) -> list[Chunk]:
    """The chunks of a group's run: burn-in chunks first, then the recorded ones."""
    burnin = _chunk_lengths(config.num_burnin, 1, per_step_bytes, config.chunk_draws)
    draws = _chunk_lengths(config.num_draws, config.num_steps_between_draws, per_step_bytes, config.chunk_draws)
    return [Chunk(length, 1, False) for length in burnin] + [Chunk(length, config.num_steps_between_draws, True) for length in draws]


