"""Multi-chain localized SGLD over a stack of configurations, as few compiled programs as possible.

A *configuration* is (w* centre, component, hyperparameters). ``run_chains`` runs ``num_chains``
chains for every configuration of ``centers x variants``: the centres are, e.g., the checkpoints of
a training run (each with its own L_n(w*)), a variant is a component mask with its hyperparameters
(a grid for calibration, components for per-head LLCs). Every array it returns has the layout
``(num_configs, num_chains, num_draws, ...)``, configurations centre-major (g = k * V + v).

How it runs (``run_chains`` = prepare and group (``slt_jax._src.planning``), drive each group, assemble):

* Variants whose components share a restriction layout (``slt_jax.restriction``: the heads of one
  layer, whole leaves, the full model) share ONE compiled program, vmapped over centres, variants
  and chains; a chain carries only its component's coordinates. Configurations beyond the
  ``memory_budget`` run in groups of the same shape (the last padded), so they reuse the executable;
  so do the chains of one configuration that does not fit, in blocks, and below one chain the
  minibatch gradient is accumulated over microbatches (``slt_jax._src.planning``).
* Each group runs in chunks of draws, each chunk a call of the same executable; between chunks the
  host reads one small array (which chains diverged) and advances a tqdm bar.
* Randomness is keyed per step: the noise and the minibatch indices of step ``t`` of chain ``c`` are
  drawn from ``fold_in(key_c, t)``, with chain c using ``split(key, num_chains)[c]`` in every
  configuration. Results therefore do not depend on the chunk size, the grouping, the device count
  or on whether a run was resumed, and a configuration gives the same numbers alone or in a stack.
* Minibatches are drawn WITH replacement (i.i.d. uniform indices), gathered on device; with
  ``batch_size == n`` every step uses the whole dataset (exact full-batch SGLD, not a bootstrap).
* What each draw records besides the loss and diagnostics is one ``Recording`` (observables and
  on-device accumulators, full-data loss, loss at w*), evaluated inside the same program at the
  draw's full parameters; full traces are kept only when asked.
* Configurations, chains and parameters are split over a device mesh of axes ``config``, ``chain``
  and ``model`` (``slt_jax._src.multihost``): the one set with ``jax.set_mesh`` around the call, or a
  default over every device (chains first, configurations with the rest). After
  ``jax.distributed.initialize`` the mesh spans every process's devices: every process makes the
  same call, the host reads are all-gathers, and every process returns the same, whole result.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from slt_jax import kernels, restriction
from slt_jax._src import checkpoint as checkpoint_lib
from slt_jax._src import multihost, planning, program
from slt_jax._src.planning import default_memory_budget
from slt_jax._src.program import Accumulator, DrawContext, Recording, compile_count, full_data_loss
from slt_jax.config import SamplerConfig
from slt_jax.kernels import Hyperparameters, SGLDInfo, SGLDState
from slt_jax.types import Batch, KeyLike, LossFn, Mask, Params, PyTree

__all__ = [
    "Accumulator",
    "DrawContext",
    "Recording",
    "ChainsResult",
    "draw_steps",
    "DivergenceError",
    "run_chains",
    "full_data_loss",
    "default_memory_budget",
    "compile_count",
]

def draw_steps(config: SamplerConfig, num_draws: int | None = None) -> np.ndarray:
    """The SGLD step of each draw, ``(num_draws,)`` int: draw d is the state entering step
    ``num_burnin + d * num_steps_between_draws`` (steps counted from 0).

    ``num_draws`` defaults to ``config.num_draws`` (pass a trace's length for a partial one).

    >>> config = SamplerConfig(step_size=1e-3, localization=1.0, batch_size=32, num_burnin=10, num_draws=3,
    ...                        num_steps_between_draws=5)
    >>> draw_steps(config)
    array([10, 15, 20])
    """
    num_draws = config.num_draws if num_draws is None else int(num_draws)
    return config.num_burnin + np.arange(num_draws) * config.num_steps_between_draws


class DivergenceError(RuntimeError):
    """Raised when every chain diverged; ``.result`` holds what was sampled."""

    def __init__(self, message: str, result: Any = None):
        super().__init__(message)
        self.result = result


@dataclasses.dataclass(frozen=True)
class ChainsResult:
    """What ``run_chains`` returns. Leading axes ``(num_configs, num_chains)``; numpy on host.

    Attributes:
        loss: ``(G, C, D)`` minibatch loss at each draw (the batch of that step's gradient).
        grad_norm, localization_norm, noise_norm, distance: ``(G, C, D)`` per-draw diagnostics
            (see ``SGLDInfo``), NaN at draws between ``diagnostics_every``.
        mala_acceptance: ``(G, C, D)`` MALA acceptance probability, NaN at draws where it was not
            evaluated (every ``mala_every``-th draw is).
        full_loss: ``(G, C, D)`` full-data loss, NaN where not evaluated, or None.
        center_loss: ``(G, C, D)`` minibatch loss AT w* on each draw's batch, the control variate
            of the paired LLC estimator, or None.
        observed: pytree of ``(G, C, D, ...)`` observable traces, or None.
        accumulator: pytree of ``(G, C, ...)`` accumulator states, or None.
        diverged: ``(G, C)`` bool, the chain's loss went non-finite.
        diverged_at: ``(G, C)`` int, first non-finite step (-1 if none).
        init_loss: ``(G,)`` L_n(w*) of each configuration's centre: exact over all n, or estimated
            where ``settings["init_loss"]`` says so (``{"source", "examples", "stderr"}``:
            ``"subsample"``, ``SamplerConfig.init_loss_examples``; ``"draws"``, the mean of the
            recorded L_B(w*) of a ``center_loss`` run, where L_n(w*) cancels and is never computed).
        hyperparameters: ``Hyperparameters`` of ``(G,)`` numpy arrays (nβ resolved).
        center_index, variant_index: ``(G,)`` which centre and which variant each configuration is.
        num_sampled: ``(G,)`` coordinates each configuration's chains move.
        final_positions: per configuration, the chains' last positions (numpy leaves ``(C, ...)``,
            frozen leaves ``None``), whole in every process.
        num_steps: total steps taken per chain.
        compile_seconds: time spent compiling in this call.
        sampling_seconds: wall time of the sampling itself (excluding compilation).
        config: the ``SamplerConfig`` of the run (``nbeta`` as given).
        settings: the rest of the run's description (JSON-serialisable dict).
    """

    loss: np.ndarray
    grad_norm: np.ndarray
    localization_norm: np.ndarray
    noise_norm: np.ndarray
    distance: np.ndarray
    mala_acceptance: np.ndarray
    full_loss: np.ndarray | None
    center_loss: np.ndarray | None
    observed: PyTree | None
    accumulator: PyTree | None
    diverged: np.ndarray
    diverged_at: np.ndarray
    init_loss: np.ndarray
    hyperparameters: Hyperparameters
    center_index: np.ndarray
    variant_index: np.ndarray
    num_sampled: np.ndarray
    final_positions: list
    num_steps: int
    compile_seconds: float
    sampling_seconds: float
    config: SamplerConfig
    settings: dict

    @property
    def num_configs(self) -> int:
        return int(self.loss.shape[0])

    @property
    def draw_steps(self) -> np.ndarray:
        """The SGLD step of each draw, ``(D,)`` (``slt_jax.sampler.draw_steps``)."""
        return draw_steps(self.config, self.loss.shape[2])

    def select(self, index: int | Sequence[int]) -> ChainsResult:
        """The configurations ``index`` (an int keeps a leading axis of 1), every field sliced."""
        indices = np.atleast_1d(np.asarray(index, int))
        take = lambda x: None if x is None else x[indices]
        fields = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in ("observed", "accumulator"):
                value = None if value is None else jax.tree.map(take, value)
            elif field.name == "hyperparameters":
                value = Hyperparameters(*(take(x) for x in value))
            elif field.name == "final_positions":
                value = [value[i] for i in indices]
            elif isinstance(value, np.ndarray):
                value = take(value)
            fields[field.name] = value
        return ChainsResult(**fields)


class _GroupRun(NamedTuple):
    records: list
    carry: program.Carry
    num_steps: int
    stopped_early: bool
    compile_seconds: float
    sampling_seconds: float


class _GroupInputs(NamedTuple):
    """A group's traced inputs (leading axes (K, V, C) for the carry) and its program settings."""

    carry: program.Carry
    centers: program.CenterInputs
    variants: program.VariantInputs
    static: program.Static


def _start_state(plan: planning.Plan, group: planning.Group, centers: Params, offsets: tuple) -> SGLDState:
    """Every chain's state at its own centre's piece, ``(K, V, C, ...)`` (C: the group's chains)."""
    layout = plan.variants[group.variants[0]].restriction.layout
    num_k, num_v, num_c = len(group.centers), len(group.variants), len(group.chains)
    start = jax.vmap(lambda c: jax.vmap(lambda o: restriction.extract(layout, o, c), axis_size=num_v)(offsets))(centers)
    state = kernels.init(start, plan.config.preconditioner_spec, plan.config.update_scheme)
    per_chain = lambda tree: jax.tree.map(lambda x: jnp.broadcast_to(x[:, :, None], (num_k, num_v, num_c) + x.shape[2:]), tree)
    return SGLDState(per_chain(state.position), per_chain(state.second_moment),
                     jnp.broadcast_to(state.count, (num_k, num_v, num_c) + jnp.shape(state.count)),
                     per_chain(state.previous_noise))


def _group_inputs(plan: planning.Plan, group: planning.Group) -> _GroupInputs:
    layout = plan.variants[group.variants[0]].restriction.layout
    variants = [plan.variants[v] for v in group.variants]
    offsets = restriction.stack_offsets([v.restriction for v in variants])
    hyper = jax.tree.map(lambda *xs: jnp.asarray(np.stack(xs), jnp.float32), *[v.hyper for v in variants])
    centers = jax.tree.map(lambda *xs: jnp.stack(xs), *[plan.centers[c] for c in group.centers])
    init_losses = jnp.asarray(plan.init_losses[group.centers], jnp.float32)
    if plan.center_caches is None:
        center_caches = jnp.zeros((len(group.centers), 0), jnp.float32)
    else:
        center_caches = jnp.stack([plan.center_caches[c] for c in group.centers])
    lead = lambda x: jnp.broadcast_to(x, (len(group.centers), len(group.variants), len(group.chains)) + jnp.shape(x))
    recording = plan.static.recording
    accumulated = None
    if recording.accumulator is not None:
        example = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), planning.observed_shapes(plan))
        accumulated = jax.tree.map(lead, recording.accumulator.init(example))
    carry = program.Carry(_start_state(plan, group, centers, offsets), accumulated, lead(jnp.array(-1, jnp.int32)))
    carry = jax.tree.map(jnp.array, carry)  # own buffers (the chunk program donates its carry)
    static = plan.static._replace(layout=layout, bulk_noise=layout.num_sampled <= planning.BULK_NOISE_MAX_PARAMETERS,
                                  due_period=planning.due_period(plan.config, layout), microbatches=group.microbatches)
    return _GroupInputs(carry, program.CenterInputs(centers, init_losses, center_caches), program.VariantInputs(offsets, hyper),
                        static)


def _flops_per_step(plan: planning.Plan, group: planning.Group, static: program.Static) -> float:
    """The group's gradient FLOPs per step (``planning.chunks``: the least work of a chunk)."""
    offsets = plan.variants[group.variants[0]].restriction.offsets
    per_chain = planning.step_flops(plan, static.layout, offsets, group.microbatches)
    return per_chain * len(group.centers) * len(group.variants) * len(group.chains)


def _compiled_memory(plan: planning.Plan, group: planning.Group):
    """XLA's ``memory_analysis()`` of ``group``'s largest recorded chunk program, compiled as the run
    compiles it (unsharded): the measure the planner's ``memory_count`` is checked against."""
    inputs = _group_inputs(plan, group)
    chunk_plan = planning.chunks(plan.config, 1, inputs.static.due_period, _flops_per_step(plan, group, inputs.static))
    chunk = max((c for c in chunk_plan if c.recorded), key=lambda c: c.num_draws)
    chain_keys = plan.chain_keys[np.asarray(group.chains)]
    placed = (chain_keys, plan.data, inputs.centers, inputs.variants, plan.observe_data)
    progress = _Progress(inputs.carry, [], 0, 0, 0)
    chunk_static, args = _chunk_call(placed, progress, chunk, inputs.static, _offsets(progress, [chunk], None)[0])
    return program.compiled_chunk(args, chunk_static)[0].memory_analysis()


def _open_resume(plan: planning.Plan, directory, group: tuple[int, planning.Group], inputs: _GroupInputs, chunk_plan) -> tuple:
    """The group's resume state (``RunCheckpoint``, fingerprinted by its inputs and settings) and
    what it restores (None when starting afresh)."""
    static = inputs.static
    observed = planning.observed_shapes(plan) if static.recording.keep_traces else None
    zero = np.zeros(())
    record_like = program.DrawRecord(SGLDInfo(*(zero for _ in SGLDInfo._fields)), zero, zero, observed)
    # Functions are described by name (their repr holds a per-process address).
    described_static = dict(static._asdict(), recording=static.recording._asdict())
    del described_static["layout"]
    group_index, group = group
    described = dict(plan.config.to_dict(), group=group_index, schedule=[list(c) for c in chunk_plan], static=described_static,
                     layout=repr(static.layout), chains=list(group.chains))
    arrays = dict(centers=inputs.centers.center, data=plan.data, offsets=inputs.variants.offsets, hyper=inputs.variants.hyper,
                  observe_data=plan.observe_data, keys=jax.random.key_data(plan.chain_keys[np.asarray(group.chains)]))
    key = checkpoint_lib.fingerprint(described, arrays)
    resume = checkpoint_lib.RunCheckpoint(directory, key, inputs.carry, record_like)
    return resume, resume.restore()


def _place(mesh, static: program.Static, carry: program.Carry, inputs: tuple) -> tuple:
    """The group's arrays on the mesh (``slt_jax._src.multihost``): the carry's leading axes
    ``(K, V, C)`` and the centres' K / the variants' V as ``static.placement`` says, chain keys over
    ``chain``, positions, second moments and centres sliced over ``model``, the rest whole on every
    device; unchanged without a mesh."""
    if mesh is None:
        return carry, inputs
    chain_keys, data, centers, variants, observe_data = inputs
    where = static.placement
    lead = (where.center_axis, where.variant_axis, where.chain_axis)
    spread = functools.partial(multihost.spread, mesh)
    state = SGLDState(spread(carry.state.position, lead, params=True), spread(carry.state.second_moment, lead, params=True),
                      spread(carry.state.count, lead), spread(carry.state.previous_noise, lead, params=True))
    carry = program.Carry(state, spread(carry.accumulator, lead), spread(carry.diverged_at, lead))
    centers = program.CenterInputs(spread(centers.center, lead[:1], params=True), spread(centers.init_loss, lead[:1]),
                                   spread(centers.center_cache, lead[:1]))
    return carry, (spread(chain_keys, ("chain",)), spread(data), centers, spread(variants, lead[1:2]), spread(observe_data))


def _offsets(progress: "_Progress", chunks: list, mesh) -> list:
    """Every remaining chunk's step and draw offsets, int32 scalars (whole on every device beside
    placed inputs), placed in one transfer: per chunk, the host's share of a small model's chunk."""
    step, draw, offsets = progress.step, progress.draw, []
    for chunk in chunks:
        offsets.append(program.Offsets(np.int32(step), np.int32(draw if chunk.recorded else 0)))
        step += chunk.num_steps
        draw += chunk.num_draws if chunk.recorded else 0
    return jax.device_put(offsets) if mesh is None else multihost.spread(mesh, offsets)


def _exclude_from_rate(bar, seconds: float) -> None:
    """Shifts the bar's clocks by ``seconds`` (compilation), so that neither its average rate (from
    ``start_t``) nor its smoothed rate and ETA (from ``last_print_t``) count them."""
    if seconds and not bar.disable:
        bar.start_t += seconds
        bar.last_print_t += seconds


class _Progress(NamedTuple):
    """Where a group's run stands between chunks."""

    carry: program.Carry
    records: list
    step: int
    draw: int
    chunks_done: int


def _chunk_call(inputs: tuple, progress: _Progress, chunk: planning.Chunk, static: program.Static, start: program.Offsets):
    """The static settings and arguments of one chunk's program call (``start``: its offsets)."""
    aligned = chunk.recorded and static.due_period > 0 and progress.draw % static.due_period == 0
    chunk_static = static._replace(num_draws=chunk.num_draws, steps_per_draw=chunk.steps_per_draw, recorded=chunk.recorded,
                                   aligned=aligned)
    carry = progress.carry
    chain_keys, data, centers, variants, observe_data = inputs
    if not chunk.recorded:
        chunk_static = chunk_static._replace(recording=Recording(), center_cache=False)
        carry, observe_data = carry._replace(accumulator=None), None
    return chunk_static, (carry, chain_keys, data, centers, variants, start, observe_data)


def _resume(plan: planning.Plan, group: tuple[int, planning.Group], inputs: _GroupInputs, chunk_plan, resume_dir, bar):
    """The group's resume state (or None) and where its run starts (``group``: its index and itself)."""
    progress = _Progress(inputs.carry, [], 0, 0, 0)
    if resume_dir is None:
        return None, progress
    resume, restored = _open_resume(plan, resume_dir, group, inputs, chunk_plan)
    if restored is not None:
        carry, records, step, draw, chunks_done = restored
        progress = _Progress(jax.tree.map(jnp.asarray, carry), records, step, draw, chunks_done)
        bar.update(step)
    return resume, progress


def _drive(plan: planning.Plan, group_index: int, group: planning.Group, bar, resume_dir) -> _GroupRun:
    """Runs one group's chunks, checking divergence (and saving its resume state) after each.

    With several processes every process runs this in step with the others: the host reads are
    all-gathers, so every process sees the same divergence and takes the same branches."""
    config = plan.config
    inputs = _group_inputs(plan, group)
    static = inputs.static
    per_step_values = static.layout.num_sampled if static.bulk_noise else config.batch_size
    num_chains = len(group.chains)
    chunk_plan = planning.chunks(config, len(group.centers) * len(group.variants) * num_chains * per_step_values * 4, static.due_period,
                                 _flops_per_step(plan, group, static))
    resume, progress = _resume(plan, (group_index, group), inputs, chunk_plan, resume_dir, bar)
    mesh = multihost.run_mesh(num_chains)
    piece = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[3:], x.dtype), inputs.carry.state.position)  # one chain's
    static = static._replace(placement=multihost.placement(mesh, len(group.centers), len(group.variants), piece))
    chain_keys = plan.chain_keys[np.asarray(group.chains)]
    carry, placed = _place(mesh, static, progress.carry, (chain_keys, plan.data, inputs.centers, inputs.variants, plan.observe_data))
    progress = progress._replace(carry=carry)
    compile_seconds = sampling_seconds = 0.0
    diverged_at = multihost.to_host(carry.diverged_at)
    stopped_early = False
    remaining = chunk_plan[progress.chunks_done:]
    for index, (chunk, offsets) in enumerate(zip(remaining, _offsets(progress, remaining, mesh)), start=progress.chunks_done):
        if np.all(diverged_at >= 0):
            stopped_early = True
            break
        chunk_static, args = _chunk_call(placed, progress, chunk, static, offsets)
        executable, seconds = program.compiled_chunk(args, chunk_static)
        compile_seconds += seconds
        _exclude_from_rate(bar, seconds)
        start = time.perf_counter()
        new_carry, record = executable(*args)
        progress = _advance(progress, chunk, new_carry, record)
        diverged_at = multihost.to_host(progress.carry.diverged_at)  # the one host sync per chunk
        sampling_seconds += time.perf_counter() - start
        if resume is not None:
            resume.save(index, progress.carry, record if chunk.recorded else None, progress.step, progress.draw)
        bar.update(chunk.num_steps)
        if np.all(diverged_at >= 0):
            stopped_early = progress.step < config.num_steps
            break
    return _GroupRun(progress.records, progress.carry, progress.step, stopped_early, compile_seconds, sampling_seconds)


def _advance(progress: _Progress, chunk: planning.Chunk, new_carry: program.Carry, record) -> _Progress:
    """The run's standing after a chunk: an unrecorded (burn-in) chunk keeps the accumulator."""
    step = progress.step + chunk.num_steps
    if not chunk.recorded:
        return progress._replace(carry=new_carry._replace(accumulator=progress.carry.accumulator), step=step)
    return _Progress(new_carry, progress.records + [record], step, progress.draw + chunk.num_draws, progress.chunks_done)


# ---------------------------------------------------------------------------------------------
# assemble


def _host_records(records, num_draws: int, recording: Recording, shape) -> dict:
    """Moves a group's chunk records to host (gathered whole in every process), concatenates them,
    pads an early stop with NaN."""
    def host(x):
        done = x.shape[3]
        if done < num_draws:
            pad = np.full(x.shape[:3] + (num_draws - done,) + x.shape[4:], np.nan, np.float32 if x.dtype.kind != "f" else x.dtype)
            x = np.concatenate([x.astype(pad.dtype), pad], axis=3)
        return x

    if not records:
        empty = np.full(shape + (num_draws,), np.nan, np.float32)
        out = {f: empty for f in SGLDInfo._fields}
        return dict(out, full_loss=empty, center_loss=empty, observed=None)
    joined = jax.tree.map(lambda *xs: np.concatenate(xs, axis=3), *multihost.to_host(records))
    out = {f: host(getattr(joined.info, f)) for f in SGLDInfo._fields}
    out["full_loss"] = host(joined.full_loss) if recording.full_loss_every else None
    out["center_loss"] = host(joined.center_loss) if recording.center_loss else None
    out["observed"] = jax.tree.map(host, joined.observed) if recording.keep_traces and joined.observed is not None else None
    return out


def _put(parts: dict, name: str, value, g: int, chains: list, shape: tuple) -> None:
    """Writes ``value`` (the configuration's chains ``chains``, leading axis C) into ``parts[name]``,
    allocated ``shape + value.shape[1:]`` (NaN, or -1 for ints) on first use."""
    if value is None:
        parts[name] = None
        return
    if name not in parts:
        fill = np.nan if value.dtype.kind == "f" else -1
        parts[name] = np.full(shape + value.shape[1:], fill, value.dtype)
    parts[name][g, chains] = value


def _assemble(plan: planning.Plan, groups: list[planning.Group], runs: list[_GroupRun]) -> dict:
    """Scatters every group's (centres x variants x chains) block back into configuration order
    g = k * V + v and chain order."""
    config, recording = plan.config, plan.static.recording
    num_variants = len(plan.variants)
    shape = (len(plan.centers) * num_variants, config.num_chains)
    fields: dict[str, Any] = {}
    observed: dict = {}
    accumulator: dict = {}
    positions_parts: list = [[] for _ in range(shape[0])]
    diverged_at = np.full(shape, -1, np.int64)
    for group, run in zip(groups, runs):
        host = _host_records(run.records, config.num_draws, recording, (len(group.centers), len(group.variants), len(group.chains)))
        group_diverged, accumulated = multihost.to_host((run.carry.diverged_at, run.carry.accumulator))
        positions = multihost.to_host(run.carry.state.position)
        chains = group.chains[:group.num_chains]
        for i in range(group.num_centers):
            for j in range(group.num_variants):
                g = group.centers[i] * num_variants + group.variants[j]
                real = lambda x: x[i, j, :group.num_chains]
                for name, value in host.items():
                    if name != "observed":
                        _put(fields, name, None if value is None else real(value), g, chains, shape)
                if host["observed"] is not None:
                    _put_tree(observed, host["observed"], real, g, chains, shape)
                if accumulated is not None:
                    _put_tree(accumulator, accumulated, real, g, chains, shape)
                diverged_at[g, chains] = real(group_diverged)
                positions_parts[g].append(jax.tree.map(real, positions))
    fields["observed"] = _tree_of(observed, host["observed"]) if observed else None
    fields["accumulator"] = _tree_of(accumulator, runs[0].carry.accumulator) if accumulator else None
    # the blocks of a configuration's chains come in chain order (groups run in order)
    fields["final_positions"] = [parts[0] if len(parts) == 1 else jax.tree.map(lambda *xs: jnp.concatenate(xs), *parts)
                                 for parts in positions_parts]
    fields["diverged_at"] = diverged_at
    fields["diverged"] = diverged_at >= 0
    return fields


def _put_tree(parts: dict, tree, real, g: int, chains: list, shape: tuple) -> None:
    """``_put`` for every leaf of ``tree`` (keyed by its path)."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        _put(parts, jax.tree_util.keystr(path), real(np.asarray(leaf)), g, chains, shape)


def _tree_of(parts: dict, like):
    """The pytree of ``like``'s structure whose leaves are ``parts`` (keyed by path)."""
    paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(like)[0]]
    return jax.tree.unflatten(jax.tree.structure(like), [parts[path] for path in paths])


# ---------------------------------------------------------------------------------------------
# the public entry point


def _witness(plan: planning.Plan) -> np.ndarray:
    """A cheap witness of the params and the data: the sum of every leaf of every centre and of the
    data (L_n(w*) is not always computed: ``planning.init_loss_source``)."""
    if jax.process_count() == 1:
        return np.zeros(0)
    leaves = [leaf for center in plan.centers for leaf in jax.tree.leaves(center)] + jax.tree.leaves(plan.data)
    return np.array([float(jnp.sum(jnp.asarray(leaf, jnp.float32))) for leaf in leaves])


def _check_processes_agree(plan: planning.Plan) -> None:
    """With several processes, every process must pass the same key, params and data: compares the
    chain keys, per-leaf sums of the centres and the data (a cheap witness) between processes, and
    the memory budget (which decides the groups, so every process runs the same programs)."""
    multihost.check_same(
        "key", jax.random.key_data(plan.chain_keys),
        "Pass the same key to every process (do not fold in jax.process_index()): the sampler itself "
        "spreads the chains over the processes' devices.",
    )
    multihost.check_same(
        "the params and data (per-leaf sums of every centre and of the data)", _witness(plan),
        "Pass the same params and the whole dataset to every process (not a per-process shard).", rtol=1e-5,
    )
    multihost.check_same(
        "memory_budget", plan.schedule.budget,
        "Set SamplerConfig(memory_budget=...) explicitly, the same in every process.",
    )


def run_chains(
    loss_fn: LossFn,
    centers: Sequence[Params],
    data: Batch,
    config: SamplerConfig,
    *,
    key: KeyLike,
    masks: Sequence[Mask | None] | None = None,
    grid: Mapping[str, Sequence[float]] | None = None,
    recording: Recording | None = None,
    progress: bool | str = True,
    resume_dir: str | os.PathLike | None = None,
) -> ChainsResult:
    """Runs ``config.num_chains`` localized SGLD chains for every configuration ``centers x variants``.

    Args:
        loss_fn: ``loss_fn(params, batch)`` -> per-example ``(batch,)``, per-token ``(batch, seq)``
            or scalar mean losses.
        centers: a list of K params pytrees of one structure (checkpoints; ``[params]`` for one w*).
            Each is its configurations' localization centre and start, with its own L_n(w*).
        data: pytree of arrays with a shared leading axis n.
        config: the ``SamplerConfig`` (``step_size`` numeric).
        key: int seed or JAX PRNG key. Chain c uses ``split(key, num_chains)[c]`` in every
            configuration, so configurations differ only by their centre, component and settings.
        masks: V bool masks (None = the whole model) naming each variant's component; chains of a
            restricted variant carry only its coordinates (``slt_jax.restriction``).
        grid: ``{hyperparameter: V values}`` overriding ``config``'s ``step_size``, ``nbeta``,
            ``localization`` or ``weight_decay`` per variant. ``masks`` and ``grid`` share the
            length V (or have length 1).
        recording: what each draw records besides the minibatch loss and the diagnostics (a
            ``Recording``: observables, accumulators, full-data loss, loss at w*, known L_n(w*));
            None records nothing more.
        progress: show a tqdm bar (its rate and ETA exclude compilation); a string shows it with
            that label (default ``"SGLD"``).
        resume_dir: a directory to write each group's sampler state to after every chunk; a
            restarted run with the same inputs resumes from it and ends bitwise identical to an
            uninterrupted one (``slt_jax._src.checkpoint``). With several processes, a directory
            every process sees; process 0 writes it.

    Returns:
        A ``ChainsResult`` with leading axes ``(K * V, num_chains)``, centre-major.

    Devices: the configurations, chains and parameter slices spread over the mesh set with
    ``with jax.set_mesh(mesh):`` around the call (axes ``("config", "chain", "model")``, type
    ``Auto``), or a default mesh over every device (``slt_jax._src.multihost``); the numbers do not
    depend on it. Several processes (after ``jax.distributed.initialize``): call ``run_chains`` in
    every process with the same arguments (key, params, data); every process returns the same,
    whole ``ChainsResult``.
    """
    if isinstance(config, SamplerConfig):
        multihost.run_mesh(config.num_chains)  # a mesh set with jax.set_mesh is checked before anything compiles
    plan = planning.prepare(loss_fn, centers, data, config, key=key, masks=masks, grid=grid, recording=recording)
    _check_processes_agree(plan)
    groups = plan.schedule.groups
    runs = []
    label = progress if isinstance(progress, str) else "SGLD"
    bar_off = not progress or not multihost.is_writer()  # one bar, on process 0
    with tqdm(total=config.num_steps * len(groups), desc=label, disable=bar_off, unit="step", leave=False) as bar:
        for index, group in enumerate(groups):
            if len(groups) > 1:
                bar.set_description(f"{label} group {index + 1}/{len(groups)}")
            runs.append(_drive(plan, index, group, bar, resume_dir))
    return _result(plan, runs)


def _result(plan: planning.Plan, runs: list[_GroupRun]) -> ChainsResult:
    config, recording, schedule = plan.config, plan.static.recording, plan.schedule
    groups = schedule.groups
    num_variants = len(plan.variants)
    center_index = np.repeat(np.arange(len(plan.centers)), num_variants)
    variant_index = np.tile(np.arange(num_variants), len(plan.centers))
    settings = dict(
        n=plan.n,
        minibatches="full batch" if config.batch_size == plan.n else "with replacement",
        groups=len(groups),
        chain_block=schedule.chain_block,
        microbatches=schedule.microbatches,
        configuration_bytes=schedule.configuration_bytes,
        memory_budget=schedule.budget,
        stopped_early=any(r.stopped_early for r in runs),
        full_loss_every=recording.full_loss_every,
        center_loss=recording.center_loss,
    )
    fields = _assemble(plan, groups, runs)
    init_losses, settings["init_loss"] = plan.init_losses, plan.init_loss
    if plan.init_loss["source"] == "draws":  # L_n(w*) cancelled; shown as the mean of the recorded L_B(w*)
        init_losses, settings["init_loss"] = planning.estimated_init_losses(fields["center_loss"], center_index, len(plan.centers),
                                                                            config.batch_size)
    return ChainsResult(
        **fields,
        init_loss=init_losses[center_index],
        hyperparameters=jax.tree.map(lambda *xs: np.asarray(xs, np.float64)[variant_index], *[v.hyper for v in plan.variants]),
        center_index=center_index,
        variant_index=variant_index,
        num_sampled=np.array([plan.variants[v].restriction.num_sampled for v in variant_index]),
        num_steps=max(r.num_steps for r in runs),
        compile_seconds=sum(r.compile_seconds for r in runs),
        sampling_seconds=sum(r.sampling_seconds for r in runs),
        config=config,
        settings=settings,
    )
