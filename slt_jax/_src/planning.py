"""Preparing a run: validation (before anything compiles), configurations, the memory plan, chunks.

``slt_jax.sampler.run_chains`` calls ``prepare``: validate the inputs, resolve every configuration's
restriction and hyperparameters, split the configurations into compiled groups under the memory
budget on each device of the mesh's config axis, padded to a multiple of that axis (``groups``,
``pad_to_mesh``), and only then make the passes over the data (L_n(w*) of every centre where the
estimate needs it, ``init_loss_source`` decides; the centre caches), so that a run that cannot fit is
refused in seconds. ``chunks`` cuts a group's run into chunks of burn-in and recorded draws.

Chunk lengths (``chunks``). A chunk is one call of the compiled chunk program: progress, divergence
and checkpoints are checked between chunks, and each call has a fixed cost (a host sync, dispatch and
the program's temporary buffers, which XLA:CPU allocates afresh at every call: above glibc's 32 MiB
mmap threshold every page of them is faulted in again). Chunks are about a tenth of the run, but no
shorter than ``CHUNK_MIN_FLOPS`` of gradient work (``step_flops``, from XLA's cost analysis of the
compiled ``value_and_grad``) and within the noise budget where a chunk's noise is drawn in bulk.
Measured on the bench_llc MLP (270k parameters, 4 chains x 200 draws, 2 CPU cores): each chunk's
65 MB of temporaries cost about 16,500 page faults; 10 chunks of 20 draws took 5.3 s of CPU time
(2.8 s wall), 2 chunks of 100 4.8 s (2.5 s), medians of 8 interleaved runs.

Memory plan (``groups``). Each restriction layout is one compiled program. Its configurations
(centre x variant, all ``num_chains`` chains each) are packed into groups of the same shape under
``SamplerConfig.memory_budget``. When one configuration's chains do not fit, its chains run in
sequential blocks of equal size (the last padded by repetition; chain c keeps the key
``split(key, num_chains)[c]`` in any block, so its draws do not depend on the split); when not even
one chain fits, its minibatch gradient is accumulated over k microbatches (``program.microbatched_mean``,
k the smallest divisor of the batch size that fits). Only one chain with microbatches of one example
that still does not fit is an error.

Memory count (``memory_count``), in copies of the component's coordinates ``P`` (a chain moves only
its component; the whole model for an unrestricted chain). Per chain, since chains are vmapped and
every chain's buffers are alive at once:

* carried: the position (1; the carry is donated, so the chunk's input and output alias),
  RMSProp's second moment, and the Leimkuhler-Matthews scheme's last increments (with the new ones
  it materialises: 5, measured);
* transient in a step: the noise, the gradient, the drift, the new position and w - w* (5), the
  scaled noise kept for the diagnostics (1), RMSProp's per-coordinate step sizes (1), MALA's proposal
  gradient and the two potential gradients (3, when ``mala_every``; the log q ratio is one fused
  pass), the gradient summed over microbatches (1, with microbatches), and a chunk's bulk noise (chunk steps, components of at most
  ``BULK_NOISE_MAX_PARAMETERS`` coordinates only);
* where the draws due for MALA or sparse diagnostics are placed statically (``program.due_pattern``;
  components of more than ``BULK_NOISE_MAX_PARAMETERS`` coordinates), one more copy of the full
  parameters, and the due draw's own step buffers (5, beside the scan's; they share space with the
  activations, so only what exceeds them counts): measured in chunks of 4 and 20 draws on a
  1M-parameter MLP (plain, RMSProp, Leimkuhler-Matthews: 4.1-4.4 copies beyond the rest) and a
  TransformerLM (none). Chunks of one draw, which have no scan, measured 2.6 copies fewer;
* XLA's temporary buffers of one restricted ``value_and_grad`` on a (micro)batch, from its compiled
  memory analysis, times 1.25 (inside the chunk program they measure 1.1-1.2x those of the function
  compiled alone): the activations the backward pass keeps, and the leaves the component samples
  only part of (``insert`` rebuilds them, and their gradient, at every step);
* the observables, their accumulator and the per-draw records.

That is 7 P per chain for plain SGLD without MALA, 11 with MALA (the default ``mala_every=20``), 13
with RMSProp and MALA. Per configuration, shared by its chains: w* (an input of each centre, full
model) and its piece. Per group: the data and ``observe_data``. The count is checked against XLA's
``memory_analysis()`` of the compiled chunk program (argument + output + temp - alias bytes, the
buffers live during a call): within 30%, above (tests/test_planning.py; ``benchmarks/bench_memory.py``).

The default budget (``default_memory_budget``) is half the accelerator's memory, or on a CPU host
half the RAM available at the call (``MemAvailable``).
"""

from __future__ import annotations

import collections
import functools
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from slt_jax import kernels, restriction
from slt_jax._src import multihost, program, validation
from slt_jax.config import NbetaConventionWarning, SamplerConfig
from slt_jax.kernels import Hyperparameters, SGLDInfo
from slt_jax._src.program import DrawContext, Recording, full_data_loss
from slt_jax.types import Array, Batch, KeyLike, LossFn, Mask, Params, PyTree

__all__ = ["Plan", "Group", "Schedule", "MemoryCount", "Variant", "Chunk", "prepare", "groups", "pad_to_mesh", "chunks", "memory_count",
           "configuration_bytes", "default_memory_budget", "example_draw", "observed_shapes", "BULK_NOISE_MAX_PARAMETERS",
           "due_period", "step_flops", "CHUNK_MIN_FLOPS", "init_loss_source", "check_full_pass_cost", "full_init_losses", "subsample_init_losses", "estimated_init_losses"]

# Memory allowed for one chunk's pre-generated noise (bytes); bounds the chunk length.
_NOISE_BUDGET_BYTES = 128 * 2**20
# Target number of chunks for progress reporting and early divergence detection.
_TARGET_CHUNKS = 10
# The least gradient work (FLOPs) of a chunk (module docstring, "Chunk lengths"): about a second of a
# 2-core CPU, so that a chunk's fixed cost stays a few percent of it.
CHUNK_MIN_FLOPS = 1e11
_HYPERPARAMETERS = Hyperparameters._fields
# Noise for chains of up to this many coordinates is drawn in bulk for a whole chunk (many tiny RNG
# calls cost several times a small model's gradient); above it, inside each step, where the bulk
# buffer's memory traffic would cost more than the RNG calls (measured on a 270k-parameter MLP: floor
# ratio 2.9 bulk vs 1.9 in-loop; on a 1.2k-parameter DLN bulk is the faster). Same keys either way.
BULK_NOISE_MAX_PARAMETERS = 2**16


# A CPU host's default budget: this share of the memory available when the run starts.
_CPU_AVAILABLE_SHARE = 0.5


def _available_ram() -> int:
    """Bytes of RAM available to new allocations: ``MemAvailable`` from /proc/meminfo (Linux), else
    a quarter of the physical memory (other systems do not say what is free)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 4 * 2**30


@functools.cache
def default_memory_budget() -> int:
    """Bytes one compiled group may use: half the accelerator's memory, or on a CPU host half the RAM
    available at the first call in the process (``MemAvailable``; a quarter of the physical RAM where
    that is not known). Measured once per process, so that every run of a process (a run and its
    resumption, the runs of a sweep) plans its groups alike.

    On a 24 GiB machine with ~22 GiB available that is ~11 GiB: a Pythia-14M-shaped
    ``TransformerLM`` (7.6M parameters) runs 4 chains of batch 8 in one group.
    """
    device = jax.local_devices()[0]  # jax.devices()[0] may belong to another process
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"]) // 2
    budget = int(_available_ram() * _CPU_AVAILABLE_SHARE)
    if jax.process_count() > 1:  # every process plans the same groups: the smallest share (a collective)
        mebibytes = np.asarray(budget // 2**20, np.int32)  # int32: JAX's default integers (no x64)
        budget = int(np.min(multihost_utils.process_allgather(mebibytes))) * 2**20
    return budget


def _nbytes(tree) -> int:
    return sum(int(np.prod(np.shape(x))) * np.dtype(getattr(x, "dtype", np.float32)).itemsize for x in jax.tree.leaves(tree))


# Compiled costs by signature, least recently used first; bounded (each key holds a loss function,
# and notebooks that redefine theirs would otherwise keep every old one alive).
_COMPILED_COSTS: collections.OrderedDict = collections.OrderedDict()
_MAX_COMPILED_COSTS = 128


class CompiledCost(NamedTuple):
    """XLA's figures for one compiled function: its temporary buffers (bytes) and FLOPs (0 where the
    backend has no analysis)."""

    temp_bytes: int
    flops: float


def _compiled_cost(identity, function, *args) -> CompiledCost:
    """``CompiledCost`` of ``function(*args)``, compiled once per ``identity`` (what the function
    computes, e.g. ``(loss_fn, layout)``: ``function`` itself is a fresh closure each call) and
    argument signature."""
    signature = (identity, jax.tree.structure(args), tuple((np.shape(x), str(x.dtype)) for x in jax.tree.leaves(args)))
    if signature in _COMPILED_COSTS:
        _COMPILED_COSTS.move_to_end(signature)
        return _COMPILED_COSTS[signature]
    try:
        compiled = jax.jit(function).lower(*args).compile()
        size = int(getattr(compiled.memory_analysis(), "temp_size_in_bytes", 0) or 0)
    except Exception:  # pragma: no cover - backends without memory analysis
        compiled, size = None, 0
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = float(cost.get("flops", 0.0))
    except Exception:  # pragma: no cover - backends without cost analysis
        flops = 0.0
    _COMPILED_COSTS[signature] = CompiledCost(size, max(flops, 0.0))
    while len(_COMPILED_COSTS) > _MAX_COMPILED_COSTS:
        _COMPILED_COSTS.popitem(last=False)
    return _COMPILED_COSTS[signature]


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
    init_loss: dict | None  # where init_losses came from: ChainsResult.settings["init_loss"] (planning._init_losses)
    schedule: Schedule | None = None  # the groups under the memory budget (``groups``)


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


# L_n(w*) over all n is computed (when the estimate needs it) if its pass costs at most this fraction
# of the sampling, in forward example-evaluations (a gradient counted as 3 forwards) ...
INIT_LOSS_MAX_FRACTION = 0.1
# ... or at most this many FLOPs (XLA's cost analysis of one forward on a batch, times n / batch):
# about a second or two on a CPU, so small problems are never refused.
INIT_LOSS_FREE_FLOPS = 1e11
_SUBSAMPLE_SALT = 0x1A17


def init_loss_source(loss_fn, centers: list, data, config: SamplerConfig, recording: Recording, num_variants: int,
                     loss_shape: tuple) -> str:
    """Where L_n(w*) of every centre comes from, decided once, before any pass over the data.

    ``"given"``: ``Recording.init_losses``. ``"full"``: exact over all n: the mean of the per-example
    cache at w* where one is built (the full pass anyway), else one batched pass, allowed by
    ``check_full_pass_cost``. ``"draws"``: not computed: a run that records L_B(w*) on every draw
    (``center_loss``: the paired LLC, probe-centred susceptibilities) has L_n(w*) cancel from its
    estimates; ``DrawContext.init_loss`` is NaN and the result reports the mean of the recorded
    L_B(w*) (``estimated_init_losses``). ``"subsample"``: ``SamplerConfig.init_loss_examples`` < n.
    """
    n = jax.tree.leaves(data)[0].shape[0]
    if recording.init_losses is not None:
        return "given"
    if recording.center_loss:
        return "full" if _cache_wanted(config, n, len(centers), num_variants, loss_shape) else "draws"
    if config.init_loss_examples is not None:
        return "subsample" if config.init_loss_examples < n else "full"
    check_full_pass_cost(loss_fn, centers, data, config, recording, num_variants)
    return "full"


def _forward_flops(function, *args) -> float | None:
    """FLOPs of ``function(*args)`` from XLA's cost analysis of the lowered program (no compilation;
    a loop's body is counted once), or None where the backend has none."""
    try:
        cost = jax.jit(function).lower(*args).cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost["flops"])
    except Exception:  # pragma: no cover - backends without cost analysis
        return None


def check_full_pass_cost(loss_fn, centers: list, data, config: SamplerConfig, recording: Recording,
                         num_variants: int) -> None:
    """Raises a ``ValueError`` (before any pass) when L_n(w*) over all n costs more than
    ``INIT_LOSS_MAX_FRACTION`` of the sampling AND more than ``INIT_LOSS_FREE_FLOPS``.

    Counted in forward example-evaluations: the pass is n x centres; the sampling is steps x chains x
    configurations x batch_size x 3 (a gradient is about 3 forwards), plus n per recorded full-data
    loss, plus ``observe``'s FLOPs per draw (cost analysis) when it has one.
    """
    n, batch_size = jax.tree.leaves(data)[0].shape[0], config.batch_size
    runs = len(centers) * num_variants * config.num_chains
    every = recording.full_loss_every
    full_draws = -(-config.num_draws // every) if every else 0
    pass_examples = n * len(centers)
    sampling = runs * (3 * config.num_steps * batch_size + full_draws * n)
    if pass_examples <= INIT_LOSS_MAX_FRACTION * sampling:
        return
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct((batch_size,) + x.shape[1:], x.dtype), data)
    flops = _forward_flops(lambda p, b: kernels.mean_loss(loss_fn, p, b), centers[0], batch)
    if not flops or pass_examples * flops / batch_size <= INIT_LOSS_FREE_FLOPS:
        return
    if recording.observe is not None:
        zero = jnp.zeros((), jnp.float32)
        context = DrawContext(batch, centers[0], zero, jax.tree.map(jnp.asarray, recording.observe_data), None)
        observed = _forward_flops(recording.observe, centers[0], SGLDInfo(*(zero for _ in SGLDInfo._fields)), context)
        sampling += runs * config.num_draws * (observed or 0.0) * batch_size / flops
        if pass_examples <= INIT_LOSS_MAX_FRACTION * sampling:
            return
    suggested = max(2, min(n - 1, int(INIT_LOSS_MAX_FRACTION * sampling / len(centers))))
    raise ValueError(
        f"L_n(w*) over all n={n} examples at {len(centers)} centre(s) costs {pass_examples:.3g} forward example-"
        f"evaluations (about {pass_examples * flops / batch_size:.2g} FLOPs), {pass_examples / sampling:.0%} of the "
        f"sampling's {sampling:.3g} (steps x chains x configurations x batch_size x 3); a pass above "
        f"{INIT_LOSS_FREE_FLOPS:.0e} FLOPs may cost at most {INIT_LOSS_MAX_FRACTION:.0%}. Choose one: "
        "loss_estimator='paired' (recommended at scale: L_n(w*) cancels and is never computed; for "
        "susceptibilities centering='probe'), or L_n(w*) from a subsample, "
        f"SamplerConfig(init_loss_examples=m), e.g. m={suggested}: its standard error is added to the LLC's. "
        "(More draws or chains also make the pass a smaller share.)"
    )


def full_init_losses(loss_fn, centers: list, data, batch_size: int) -> np.ndarray:
    """L_n(w*) of every centre, ``(K,)``: one batched pass over all n each."""
    return np.asarray([float(full_data_loss(loss_fn, c, data, batch_size)) for c in centers], np.float64)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _example_means(loss_fn, params, data, batch_size: int) -> Array:
    """Each example's mean loss (over its tokens), ``(m,)``, in vmapped batches of ``batch_size``."""
    one = lambda example: kernels.mean_loss(loss_fn, params, jax.tree.map(lambda x: x[None], example))
    return jax.lax.map(one, data, batch_size=batch_size).astype(jnp.float32)


def subsample_init_losses(loss_fn, centers: list, data, examples: int, batch_size: int,
                          key: KeyLike) -> tuple[np.ndarray, np.ndarray]:
    """L_n(w*) of every centre from ``examples`` = m examples drawn uniformly without replacement
    (the same m at every centre, from ``key``), and its standard error: the std (ddof=1) of the m
    per-example losses / sqrt(m) x sqrt(1 - m / n) (the finite-population correction). ``(K,)`` each."""
    n = jax.tree.leaves(data)[0].shape[0]
    indices = jax.random.choice(jax.random.fold_in(validation.as_key(key), _SUBSAMPLE_SALT), n, (examples,), replace=False)
    subsample = program.take_rows(data, indices)
    losses = [np.asarray(_example_means(loss_fn, c, subsample, min(batch_size, examples)), np.float64) for c in centers]
    values = np.array([x.mean() for x in losses])
    stderr = np.array([x.std(ddof=1) / math.sqrt(examples) * math.sqrt(1.0 - examples / n) for x in losses])
    return values, stderr


def _init_losses(source: str, loss_fn, centers: list, data, config: SamplerConfig, recording: Recording, caches,
                 key) -> tuple[np.ndarray, dict]:
    """L_n(w*) of every centre ``(K,)`` (NaN for ``"draws"``) and its ``ChainsResult.settings["init_loss"]``
    entry: ``{"source", "examples" (per centre), "stderr" ((K,) list, 0 when exact)}``."""
    n, num_centers = jax.tree.leaves(data)[0].shape[0], len(centers)
    stderr, examples = np.zeros(num_centers), n
    if source == "given":
        known, examples = recording.init_losses, 0
    elif source == "draws":
        known, examples = np.full(num_centers, np.nan), 0  # estimated from the recorded L_B(w*) after the run
    elif source == "subsample":
        examples = config.init_loss_examples
        known, stderr = subsample_init_losses(loss_fn, centers, data, examples, config.batch_size, key)
    elif caches is not None:
        known = [float(jnp.mean(cache)) for cache in caches]
    else:
        known = full_init_losses(loss_fn, centers, data, config.batch_size)
    try:
        losses = np.asarray(known, np.float64).reshape(num_centers)
    except (TypeError, ValueError):
        raise ValueError(f"Recording.init_losses={known!r} must hold one L_n(w*) per centre ({num_centers}).") from None
    bad = np.flatnonzero(~np.isfinite(losses)) if source != "draws" else []
    if len(bad):
        raise ValueError(f"the full-data loss at checkpoint(s) {bad.tolist()} is not finite; loss_fn must be finite at w*.")
    return losses, {"source": source, "examples": int(examples), "stderr": stderr.tolist()}


def estimated_init_losses(center_loss: np.ndarray, center_index: np.ndarray, num_centers: int,
                          batch_size: int) -> tuple[np.ndarray, dict]:
    """L_n(w*) of every centre ``(K,)`` as the mean of the recorded L_B(w*) ``(G, C, D)`` of its first
    configuration (unbiased: every draw's batch is uniform; every configuration of a centre sees the
    same batches, so one holds all the information), with its ``settings["init_loss"]`` entry."""
    values, stderr, counts = np.full(num_centers, np.nan), np.full(num_centers, np.nan), []
    for k in range(num_centers):
        draws = np.asarray(center_loss[np.flatnonzero(center_index == k)[0]], np.float64)
        draws = draws[np.isfinite(draws)]
        counts.append(draws.size)
        if draws.size:
            values[k] = draws.mean()
        if draws.size >= 2:
            stderr[k] = draws.std(ddof=1) / math.sqrt(draws.size)
    return values, {"source": "draws", "examples": int(min(counts)) * batch_size, "stderr": stderr.tolist()}


def prepare(loss_fn: LossFn, centers: Sequence[Params], data: Batch, config: SamplerConfig, *, key: KeyLike,
            masks: Sequence[Mask | None] | None = None, grid: Mapping[str, Sequence[float]] | None = None,
            recording: Recording | None = None) -> Plan:
    """Validates a run's inputs (before anything compiles), resolves its configurations and splits
    them into groups under the memory budget (``groups``), then makes the passes over the data
    (L_n(w*), the centre caches)."""
    if not isinstance(config, SamplerConfig):
        raise TypeError(f"config must be a slt_jax.SamplerConfig, got {type(config).__name__}.")
    n = validation.check_data(data)
    centers = check_centers(centers)
    # One wrapper for every loss of the run (step, L_B(w*), L_n(w*), traces): equal rounding in L and L*.
    loss_fn = kernels.mixed_precision(loss_fn, config.compute_dtype)
    if config.batch_size > n:
        raise ValueError(f"batch_size={config.batch_size} is larger than the dataset (n={n}); use batch_size <= {n}.")
    recording = _check_recording(recording)
    variants = _variants(config, n, centers[0], masks, grid)
    loss_shape = validation.check_loss_fn(loss_fn, centers[0], data, config.batch_size)
    _warn_per_token_nbeta(config, n, loss_shape)
    data = jax.tree.map(jnp.asarray, data)
    centers = [jax.tree.map(jnp.asarray, c) for c in centers]
    static = program.Static(
        loss_fn=loss_fn, layout=None, preconditioner=config.preconditioner_spec, batch_size=config.batch_size,
        num_draws=0, steps_per_draw=1, recorded=True, recording=recording.compiled_part(), mala_every=config.mala_every,
        diagnostics_every=config.diagnostics_every, center_cache=False, bulk_noise=False, noise=config.noise,
    )
    chain_keys = jax.random.split(validation.as_key(key), config.num_chains)
    observe_data = jax.tree.map(jnp.asarray, recording.observe_data)
    plan = Plan(n, config, centers, None, variants, chain_keys, data, static, observe_data, None, None)
    # Before any pass over the data, so that a memory error or a refused full pass comes in seconds.
    plan = plan._replace(schedule=groups(plan))
    source = init_loss_source(loss_fn, centers, data, config, recording, len(variants), loss_shape)
    wanted = recording.center_loss and _cache_wanted(config, n, len(centers), len(variants), loss_shape)
    caches = [program.example_losses(loss_fn, c, data, config.batch_size) for c in centers] if wanted else None
    init_losses, init_loss = _init_losses(source, loss_fn, centers, data, config, recording, caches, key)
    return plan._replace(init_losses=init_losses, center_caches=caches, init_loss=init_loss,
                         static=static._replace(center_cache=caches is not None))


# The per-example losses at a centre are kept on device when they take at most this many bytes.
_CENTER_CACHE_MAX_BYTES = 256 * 2**20


def _cache_wanted(config: SamplerConfig, n: int, num_centers: int, num_variants: int, loss_shape: tuple) -> bool:
    """Whether a ``center_loss`` run keeps the per-example losses at each centre on device.

    The paired estimator and probe-centred susceptibilities need L_B(w*) on every draw's minibatch.
    With per-example losses at w* computed once (n forward examples per centre), that is a gather
    and a mean, the same number up to float32 rounding. Worth it when n is at most the examples the
    per-draw passes would evaluate (draws x chains x variants x batch_size), the loss is
    per-example (``loss_shape``, its output on a batch, has a leading batch axis) and the cache fits
    ``_CENTER_CACHE_MAX_BYTES``. L_n(w*) is then the cache's mean (exact, no second pass).
    """
    per_draw_examples = config.num_draws * config.num_chains * num_variants * config.batch_size
    if n > per_draw_examples or len(loss_shape) == 0:  # a scalar mean loss: evaluate at w* on each batch
        return False
    return n * int(np.prod(loss_shape[1:])) * 4 * num_centers <= _CENTER_CACHE_MAX_BYTES


# ---------------------------------------------------------------------------------------------
# plan: groups of configurations under the memory budget


class Group(NamedTuple):
    """One compiled group: its centres x variants x chains run as one call sequence of one executable."""

    centers: list[int]  # indices into plan.centers (padded by repetition)
    variants: list[int]  # indices into plan.variants (padded by repetition)
    num_centers: int  # before padding
    num_variants: int
    chains: list[int]  # the chains it runs, indices into plan.chain_keys (padded by repetition)
    num_chains: int  # before padding
    microbatches: int  # the minibatch gradient is accumulated over this many microbatches


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


# Copies of the component's coordinates one chain needs (see the module docstring).
_CARRIED_COPIES = 1  # the position (the scan carry; donated, so input and output alias)
_STEP_COPIES = 5  # transient in a step: noise, gradient, drift, new position, displacement from w*
_ADAPTIVE_COPIES = 2  # RMSProp: its second moment (carried) and the per-coordinate step sizes
_DIAGNOSTICS_COPIES = 1  # the scaled noise kept for its norm on recorded draws
_MALA_COPIES = 3  # the proposal's gradient and the two potential gradients (the log q ratio is one fused pass)
_MICROBATCH_COPIES = 1  # the gradient summed over microbatches
# Leimkuhler-Matthews: the last step's increments (carried), and the new ones materialised to be carried
# (Euler's draw is fused into the update): XLA's buffers of a 1M-parameter MLP grew by 5 copies per chain.
_SCHEME_COPIES = 5
# XLA's temporary buffers of a value_and_grad inside the vmapped chunk program exceed those of the
# same value_and_grad compiled alone: measured 1.10-1.18x on TransformerLMs of 1M and 7.6M parameters
# (the chunk's scatter-add of the embedding gradient and the logits are not fused into its outputs).
_ACTIVATION_FACTOR = 1.25
# Where the due draws are placed statically, the due draw (its step and MALA's extra work) runs before the
# scan of the others, and XLA keeps its step's buffers apart from the scan's: measured on a 1M-parameter
# MLP in chunks of 2 and 20 draws, 4.1-4.4 copies per chain beyond the rest of the count (plain, RMSProp,
# Leimkuhler-Matthews). They share space with the activations (a TransformerLM, whose activations are
# larger, shows none), so they count only beyond them.
_DUE_DRAW_COPIES = 5


class MemoryCount(NamedTuple):
    """The planner's bytes for one restriction layout: a group of ``G`` configurations of ``C``
    chains each needs ``shared + G * (per_configuration + C * per_chain)`` bytes."""

    per_chain: int
    per_configuration: int
    shared: int


def due_period(config: SamplerConfig, layout: restriction.Layout) -> int:
    """Every how many draws the draws due for MALA and diagnostics come, where the chunk program
    places them statically (``program.due_pattern``): on components of more than
    ``BULK_NOISE_MAX_PARAMETERS`` coordinates; 0 where it branches on every draw instead."""
    pattern = program.due_pattern(config.diagnostics_every, config.mala_every)
    return pattern[0] if pattern is not None and layout.num_sampled > BULK_NOISE_MAX_PARAMETERS else 0


def _bulk_noise_steps(config: SamplerConfig, layout: restriction.Layout, flops: float) -> int:
    """Steps of noise a chain draws in bulk for one chunk (0 when it draws inside each step): the
    longest chunk ``chunks`` can cut for a group of one chain of ``flops`` per gradient (more chains
    make chunks no longer), within the noise budget of one chain."""
    if layout.num_sampled > BULK_NOISE_MAX_PARAMETERS:
        return 0
    per_step_bytes = layout.num_sampled * 4
    longest = max([c.num_steps for c in chunks(config, per_step_bytes, 0, flops)] or [1])
    return max(1, longest)


def _gradient_cost(plan: Plan, layout: restriction.Layout, offsets: tuple, microbatches: int = 1) -> CompiledCost:
    """``CompiledCost`` of one chain's restricted ``value_and_grad`` on a (micro)batch."""
    center = plan.centers[0]
    batch = jax.tree.map(lambda x: jnp.zeros((plan.config.batch_size // microbatches,) + x.shape[1:], x.dtype), plan.data)

    def value_and_grad(position, batch):
        loss = lambda p: kernels.mean_loss(plan.static.loss_fn, restriction.insert(layout, offsets, center, p), batch)
        return jax.value_and_grad(loss)(position)

    shapes = tuple((np.shape(x), str(x.dtype)) for x in jax.tree.leaves(center))
    return _compiled_cost(("value_and_grad", plan.static.loss_fn, layout, shapes), value_and_grad,
                          restriction.extract(layout, offsets, center), batch)


def step_flops(plan: Plan, layout: restriction.Layout, offsets: tuple, microbatches: int = 1) -> float:
    """FLOPs of one chain's gradient step (XLA's cost analysis of the compiled ``value_and_grad``,
    summed over microbatches); 0 where the backend has no cost analysis."""
    return microbatches * _gradient_cost(plan, layout, offsets, microbatches).flops


def memory_count(plan: Plan, layout: restriction.Layout, offsets: tuple, microbatches: int = 1) -> MemoryCount:
    """The planner's memory count of one layout's chunk program (module docstring), in bytes."""
    config, recording = plan.config, plan.static.recording
    center = plan.centers[0]
    piece = _nbytes(restriction.extract(layout, offsets, center))
    copies = _CARRIED_COPIES + _STEP_COPIES + _DIAGNOSTICS_COPIES
    copies += _ADAPTIVE_COPIES if config.preconditioner_spec.adaptive else 0
    copies += _MALA_COPIES if config.mala_every else 0
    copies += _MICROBATCH_COPIES if microbatches > 1 else 0
    copies += _SCHEME_COPIES if config.update_scheme == "leimkuhler-matthews" else 0
    gradient = _gradient_cost(plan, layout, offsets, microbatches)
    activations = gradient.temp_bytes * _ACTIVATION_FACTOR
    per_chain = (copies + _bulk_noise_steps(config, layout, microbatches * gradient.flops)) * piece + activations
    if due_period(config, layout):
        per_chain += _nbytes(center) + max(0, _DUE_DRAW_COPIES * piece - activations)
    observe = recording.observe
    if observe is not None:
        info, context = example_draw(plan, jax.tree.map(lambda x: jnp.zeros((config.batch_size,) + x.shape[1:], x.dtype), plan.data))
        values = jax.eval_shape(observe, center, info, context)
        observe_cost = _compiled_cost(("observe", observe), lambda p, i, c: observe(p, i, c), center, info, context)
        per_chain += observe_cost.temp_bytes + 2 * _nbytes(values)
        if recording.accumulator is not None:
            example = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), values)
            per_chain += 2 * _nbytes(jax.eval_shape(recording.accumulator.init, example))
        if recording.keep_traces:
            per_chain += config.num_draws * _nbytes(values)
    per_chain += config.num_draws * 8 * 4  # the records
    # w* (an input per centre) and its piece, shared by the configuration's chains
    per_configuration = _nbytes(center) + piece
    return MemoryCount(int(per_chain), int(per_configuration), _nbytes(plan.data) + _nbytes(plan.observe_data))


def configuration_bytes(plan: Plan, layout: restriction.Layout, offsets: tuple, num_chains: int | None = None,
                        microbatches: int = 1) -> int:
    """Bytes one configuration of ``num_chains`` chains (default ``config.num_chains``) adds to a group."""
    count = memory_count(plan, layout, offsets, microbatches)
    num_chains = plan.config.num_chains if num_chains is None else num_chains
    return count.per_configuration + num_chains * count.per_chain


class Schedule(NamedTuple):
    """How a run is split under the memory budget (``groups``).

    Attributes:
        groups: the compiled groups, run one after the other.
        configuration_bytes: the largest configuration's bytes with all its chains.
        chain_block: chains per group (``num_chains`` unless a configuration's chains are split).
        microbatches: the largest number of microbatches a group's gradient is accumulated over.
        budget: the memory budget (bytes).
    """

    groups: list[Group]
    configuration_bytes: int
    chain_block: int
    microbatches: int
    budget: int


def _chain_blocks(num_chains: int, fit: int) -> list[list[int]]:
    """``num_chains`` chains in as few blocks of at most ``fit`` as possible, of equal sizes (the last
    padded by repeating its last chain), a multiple of the device count where that fits (so each
    block's chains shard over the devices)."""
    devices = len(jax.devices())
    if devices > 1 and fit >= devices:
        fit -= fit % devices
    num_blocks = math.ceil(num_chains / fit)
    size = math.ceil(num_chains / num_blocks)
    if devices > 1 and fit >= devices:
        size = min(fit, -(-size // devices) * devices)
    blocks = [list(range(c0, min(c0 + size, num_chains))) for c0 in range(0, num_chains, size)]
    return [block + [block[-1]] * (size - len(block)) for block in blocks]


def _microbatches(plan: Plan, layout: restriction.Layout, offsets: tuple, room: int) -> int:
    """The fewest microbatches (a divisor of the batch size) with which one chain fits ``room`` bytes."""
    config = plan.config
    needed = configuration_bytes(plan, layout, offsets, 1, 1)
    for k in [d for d in range(2, config.batch_size + 1) if config.batch_size % d == 0]:
        needed = configuration_bytes(plan, layout, offsets, 1, k)
        if needed <= room:
            return k
    data_bytes = _nbytes(plan.data) + _nbytes(plan.observe_data)
    raise ValueError(
        f"memory_budget={config.memory_budget or default_memory_budget()} bytes is too small for one chain of one "
        f"configuration, even with its minibatch gradient over {config.batch_size} microbatches of one example: it "
        f"needs {needed + data_bytes} bytes ({needed} for the chain of a component with {layout.num_sampled} "
        f"coordinates, {data_bytes} for the data). Raise SamplerConfig.memory_budget to at least {needed + data_bytes}, "
        "or lower batch_size, rematerialise the model's activations (jax.checkpoint), or sample fewer parameters "
        "(a smaller component mask)."
    )


def groups(plan: Plan) -> Schedule:
    """The compiled groups under the memory budget: one per restriction layout, split into blocks of
    configurations, or of one configuration's chains, or with its gradient over microbatches."""
    config = plan.config
    budget = config.memory_budget or default_memory_budget()
    mesh = multihost.sizes(multihost.run_mesh(config.num_chains))
    by_layout: dict = {}
    for index, variant in enumerate(plan.variants):
        by_layout.setdefault(variant.restriction.layout, []).append(index)
    num_centers = len(plan.centers)
    out, largest, chain_block, most_microbatches = [], 0, config.num_chains, 1
    all_chains = list(range(config.num_chains))
    for layout, members in by_layout.items():
        offsets = plan.variants[members[0]].restriction.offsets
        count = memory_count(plan, layout, offsets)
        per_config = count.per_configuration + config.num_chains * count.per_chain
        largest = max(largest, per_config)
        room = budget - count.shared
        if per_config > room:  # one configuration's chains in sequential blocks (or microbatches)
            fit = (room - count.per_configuration) // count.per_chain
            microbatches = 1 if fit >= 1 else _microbatches(plan, layout, offsets, room)
            blocks = _chain_blocks(config.num_chains, max(1, fit))
            chain_block, most_microbatches = min(chain_block, len(blocks[0])), max(most_microbatches, microbatches)
            out += [Group([c], [v], 1, 1, block, len(set(block)), microbatches)
                    for c in range(num_centers) for v in members for block in blocks]
            continue
        capacity = room // per_config * mesh.config  # the budget is per device; the config axis splits a group
        variants_per_group = min(len(members), capacity)
        centers_per_group = max(1, min(num_centers, capacity // variants_per_group))
        for c0 in range(0, num_centers, centers_per_group):
            center_block = list(range(c0, min(c0 + centers_per_group, num_centers)))
            for v0 in range(0, len(members), variants_per_group):
                variant_block = members[v0:v0 + variants_per_group]
                out.append(Group(
                    center_block + [center_block[-1]] * (centers_per_group - len(center_block)),
                    variant_block + [variant_block[-1]] * (variants_per_group - len(variant_block)),
                    len(center_block), len(variant_block), all_chains, config.num_chains, 1,
                ))
    return Schedule(pad_to_mesh(out, mesh, config.num_chains), largest, chain_block, most_microbatches, budget)


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


def _chunk_lengths(total_draws: int, steps_per_draw: int, per_step_bytes: int, requested: int | None,
                   period: int = 1, least: int = 1) -> list[int]:
    """Chunk lengths in draws: ``requested``, or about a tenth of the run and at least ``least`` draws
    within the noise budget, preferring a length that divides the run (a remainder chunk is one more
    compilation) and, where ``period`` > 1 and the run is that long, a multiple of ``period`` (so that
    every chunk starts on a draw due for MALA and diagnostics: ``program.due_pattern``)."""
    if total_draws == 0:
        return []
    if requested is not None:
        size = requested
    else:
        size = min(total_draws, max(1, math.ceil(total_draws / _TARGET_CHUNKS), least))
        limit = max(1, _NOISE_BUDGET_BYTES // max(1, per_step_bytes * steps_per_draw))
        size = min(size, limit)
        candidates = []
        if 1 < period <= min(limit, total_draws):
            # Multiples of the period within a factor 2 of the target, those dividing the run first.
            multiples = [m for m in range(period, min(limit, 2 * size, total_draws) + 1, period) if 2 * m >= size] or [period]
            candidates = sorted(multiples, key=lambda m: (total_draws % m != 0, m < least, abs(math.log(m / size))))
        if candidates:
            size = candidates[0]
        else:
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


def chunks(config: SamplerConfig, per_step_bytes: int, period: int = 0, flops_per_step: float = 0.0) -> list[Chunk]:
    """The chunks of a group's run: burn-in chunks first, then the recorded ones (of lengths that are
    multiples of ``period`` where it is > 0 and the run that long: ``due_period``), each of at least
    ``CHUNK_MIN_FLOPS`` where ``flops_per_step`` (the group's gradient FLOPs per step: ``step_flops``
    times its chains) is given (module docstring, "Chunk lengths")."""
    least = math.ceil(CHUNK_MIN_FLOPS / flops_per_step) if flops_per_step > 0 else 1
    burnin = _chunk_lengths(config.num_burnin, 1, per_step_bytes, config.chunk_draws, least=least)
    draws = _chunk_lengths(config.num_draws, config.num_steps_between_draws, per_step_bytes, config.chunk_draws, max(period, 1),
                           least=math.ceil(least / config.num_steps_between_draws))
    return [Chunk(length, 1, False) for length in burnin] + [Chunk(length, config.num_steps_between_draws, True) for length in draws]
