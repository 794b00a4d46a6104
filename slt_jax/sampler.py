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
  ``memory_budget`` run in groups of the same shape (the last padded), so they reuse the executable.
* Each group runs in chunks of draws, each chunk a call of the same executable; between chunks the
  host reads one small array (which chains diverged) and advances a tqdm bar.
* Randomness is keyed per step: the noise and the minibatch indices of step ``t`` of chain ``c`` are
  drawn from ``fold_in(key_c, t)``, with chain c using ``split(key, num_chains)[c]`` in every
  configuration. Results therefore do not depend on the chunk size, the grouping, the device count
  or on whether a run was resumed, and a configuration gives the same numbers alone or in a stack.
* Minibatches are drawn WITH replacement (i.i.d. uniform indices), gathered on device; with
  ``batch_size == n`` every step uses the whole dataset (exact full-batch SGLD, not a bootstrap).
* Per-draw observables and on-device accumulators (``observe`` / ``accumulator``) are evaluated
  inside the same program at the draw's full parameters; full traces are kept only when asked.
* Chains are split over every device when ``num_chains`` is a multiple of the device count, and
  over every process's devices after ``jax.distributed.initialize`` (``slt_jax._src.multihost``): every
  process makes the same call, the host reads are all-gathers, and every process returns the same,
  whole result.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from slt_jax._src import checkpoint as checkpoint_lib
from slt_jax import kernels, restriction
from slt_jax._src import multihost, planning, program
from slt_jax.config import SamplerConfig
from slt_jax.kernels import Hyperparameters, SGLDInfo, SGLDState
from slt_jax._src.planning import default_memory_budget
from slt_jax._src.program import Accumulator, DrawContext, compile_count, full_data_loss
from slt_jax.types import Batch, KeyLike, LossFn, Mask, Params, PyTree

__all__ = [
    "Accumulator",
    "DrawContext",
    "ChainsResult",
    "DivergenceError",
    "run_chains",
    "full_data_loss",
    "default_memory_budget",
    "compile_count",
]

# Noise for chains of up to this many coordinates is drawn in bulk for a whole chunk (many tiny RNG
# calls cost several times a small model's gradient); above it, inside each step, where the bulk
# buffer's memory traffic would cost more than the RNG calls (measured on a 270k-parameter MLP: floor
# ratio 2.9 bulk vs 1.9 in-loop; on a 1.2k-parameter DLN bulk is the faster). Same keys either way.
_BULK_NOISE_MAX_PARAMETERS = 2**16


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
        init_loss: ``(G,)`` L_n(w*) of each configuration's centre.
        hyperparameters: ``Hyperparameters`` of ``(G,)`` numpy arrays (nβ resolved).
        center_index, variant_index: ``(G,)`` which centre and which variant each configuration is.
        num_sampled: ``(G,)`` coordinates each configuration's chains move.
        final_positions: per configuration, the chains' last positions (leaves ``(C, ...)``, frozen
            leaves ``None``); jax arrays, whole on this process's default device when the chains
            span several processes.
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


def _group_inputs(plan: planning.Plan, config: SamplerConfig, group: planning.Group):
    layout = plan.variants[group.variants[0]].restriction.layout
    variants = [plan.variants[v] for v in group.variants]
    offsets = restriction.stack_offsets([v.restriction for v in variants])
    hyper = Hyperparameters(*(jnp.asarray(np.stack([v.hyper[i] for v in variants]), jnp.float32) for i in range(4)))
    centers = jax.tree.map(lambda *xs: jnp.stack(xs), *[plan.centers[c] for c in group.centers])
    init_losses = jnp.asarray(plan.init_losses[group.centers], jnp.float32)
    if plan.center_caches is None:
        center_caches = jnp.zeros((len(group.centers), 0), jnp.float32)
    else:
        center_caches = jnp.stack([plan.center_caches[c] for c in group.centers])
    num_k, num_v, num_c = len(group.centers), len(group.variants), config.num_chains
    lead = lambda x: jnp.broadcast_to(x, (num_k, num_v, num_c) + jnp.shape(x))
    # Every chain starts at its own centre's piece.
    start = jax.vmap(lambda c: jax.vmap(lambda o: restriction.extract(layout, o, c), axis_size=num_v)(offsets))(centers)
    state = kernels.init(start, config.preconditioner_spec)
    state = SGLDState(
        jax.tree.map(lambda x: jnp.broadcast_to(x[:, :, None], (num_k, num_v, num_c) + x.shape[2:]), state.position),
        None if state.second_moment is None else jax.tree.map(lambda x: jnp.broadcast_to(x[:, :, None], (num_k, num_v, num_c) + x.shape[2:]), state.second_moment),
        lead(state.count),
    )
    accumulated = None
    static = plan.static
    if static.observe is not None and static.accumulator is not None:
        batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct((config.batch_size,) + x.shape[1:], x.dtype), plan.data)
        info = SGLDInfo(*(jnp.zeros((), jnp.float32) for _ in SGLDInfo._fields))
        example = jax.eval_shape(static.observe, plan.centers[0], info, DrawContext(batch, plan.centers[0], jnp.zeros(()), plan.observe_data))
        accumulated = jax.tree.map(lead, static.accumulator.init(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), example)))
    carry = program.Carry(state, accumulated, jnp.full((num_k, num_v, num_c), -1, jnp.int32))
    carry = jax.tree.map(jnp.array, carry)  # own buffers (the chunk program donates its carry)
    num_sampled = layout.num_sampled
    static = static._replace(layout=layout, bulk_noise=num_sampled <= _BULK_NOISE_MAX_PARAMETERS)
    return carry, centers, init_losses, center_caches, offsets, hyper, static


def _open_checkpoint(plan: planning.Plan, directory, group_index, carry, static, schedule, arrays, settings):
    """The group's ``RunCheckpoint`` (fingerprinted by its inputs and settings) and what it restores."""
    observed = None
    if static.keep_traces:
        batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct((static.batch_size,) + x.shape[1:], x.dtype), plan.data)
        info = SGLDInfo(*(jnp.zeros((), jnp.float32) for _ in SGLDInfo._fields))
        context = DrawContext(batch, plan.centers[0], jnp.zeros((), jnp.float32), plan.observe_data)
        observed = jax.eval_shape(static.observe, plan.centers[0], info, context)
    zero = np.zeros(())
    record_like = program.DrawRecord(SGLDInfo(*(zero for _ in SGLDInfo._fields)), zero, zero, observed)
    # Functions are described by name (their repr holds a per-process address).
    described_static = {k: v for k, v in static._asdict().items() if k != "layout"}
    described = dict(settings, group=group_index, schedule=[list(c) for c in schedule], static=described_static,
                     layout=repr(static.layout))
    key = checkpoint_lib.fingerprint(described, arrays)
    run_checkpoint = checkpoint_lib.RunCheckpoint(directory, key, carry, record_like)
    return run_checkpoint, run_checkpoint.restore()


def _place(shardings: multihost.ChainShardings | None, carry: program.Carry, inputs: tuple) -> tuple:
    """The carry split along the chain axis over every device, chain keys alike, the rest replicated;
    unchanged on one device (or when the chains cannot be split evenly)."""
    if shardings is None:
        return carry, inputs
    chain_keys, *rest = inputs
    return (multihost.place(carry, shardings.carry),
            (multihost.place(chain_keys, shardings.keys), *multihost.place(tuple(rest), shardings.replicated)))


def _offset(value: int, shardings: multihost.ChainShardings | None) -> jax.Array:
    """A step or draw offset, an int32 scalar (replicated beside sharded inputs)."""
    value = jnp.asarray(value, jnp.int32)
    return value if shardings is None else multihost.place(value, shardings.replicated)


def _drive(plan: planning.Plan, config: SamplerConfig, group_index: int, group: planning.Group, bar, checkpoint_dir) -> _GroupRun:
    """Runs one group's chunks, checking divergence (and saving a checkpoint) after each.

    With several processes every process runs this in step with the others: the host reads are
    all-gathers, so every process sees the same divergence and takes the same branches."""
    carry, centers, init_losses, center_caches, offsets, hyper, static = _group_inputs(plan, config, group)
    num_configs = len(group.centers) * len(group.variants)
    per_step_values = static.layout.num_sampled if static.bulk_noise else config.batch_size
    schedule = planning.schedule(config, num_configs * config.num_chains * per_step_values * 4)
    records, step_offset, draw_offset, chunks_done = [], 0, 0, 0
    checkpoint = None
    if checkpoint_dir is not None:
        arrays = dict(centers=centers, data=plan.data, offsets=offsets, hyper=hyper, observe_data=plan.observe_data,
                      keys=jax.random.key_data(plan.chain_keys))
        checkpoint, restored = _open_checkpoint(plan, checkpoint_dir, group_index, carry, static, schedule, arrays, config.to_dict())
        if restored is not None:
            carry, records, step_offset, draw_offset, chunks_done = restored
            carry = jax.tree.map(jnp.asarray, carry)
            bar.update(step_offset)
    shardings = multihost.chain_shardings(config.num_chains)
    carry, inputs = _place(shardings, carry, (plan.chain_keys, plan.data, centers, init_losses, center_caches, offsets, hyper,
                                               plan.observe_data))
    chain_keys, data, centers, init_losses, center_caches, offsets, hyper, observe_data = inputs
    compile_seconds = sampling_seconds = 0.0
    diverged_at = multihost.to_host(carry.diverged_at)
    stopped_early = False
    for index, (length, steps_per_draw, recorded) in enumerate(schedule):
        if index < chunks_done:
            continue
        if np.all(diverged_at >= 0):
            stopped_early = True
            break
        chunk_static = static._replace(num_draws=length, steps_per_draw=steps_per_draw, recorded=recorded)
        if not recorded:
            chunk_static = chunk_static._replace(observe=None, accumulator=None, keep_traces=False, full_loss_every=0, center_loss=False,
                                                 center_cache=False)
        chunk_carry = carry if recorded else carry._replace(accumulator=None)
        args = (chunk_carry, chain_keys, data, centers, init_losses, center_caches, offsets, hyper,
                _offset(step_offset, shardings), _offset(draw_offset if recorded else 0, shardings), observe_data if recorded else None)
        executable, seconds = program.compiled_chunk(args, chunk_static)
        compile_seconds += seconds
        if not bar.disable:
            bar.start_t += seconds  # the progress rate excludes compilation
        start = time.perf_counter()
        new_carry, record = executable(*args)
        if recorded:
            carry = new_carry
            records.append(record)
            draw_offset += length
        else:
            carry = new_carry._replace(accumulator=carry.accumulator)
        diverged_at = multihost.to_host(carry.diverged_at)  # the one host sync per chunk
        sampling_seconds += time.perf_counter() - start
        step_offset += length * steps_per_draw
        if checkpoint is not None:
            checkpoint.save(index, carry, record if recorded else None, step_offset, draw_offset)
        bar.update(length * steps_per_draw)
        if np.all(diverged_at >= 0):
            stopped_early = step_offset < config.num_steps
            break
    return _GroupRun(records, carry, step_offset, stopped_early, compile_seconds, sampling_seconds)


# ---------------------------------------------------------------------------------------------
# assemble


def _host_records(records, num_draws: int, keep_traces: bool, full: bool, center: bool, shape) -> dict:
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
    out["full_loss"] = host(joined.full_loss) if full else None
    out["center_loss"] = host(joined.center_loss) if center else None
    out["observed"] = jax.tree.map(host, joined.observed) if keep_traces and joined.observed is not None else None
    return out


def _assemble(plan: planning.Plan, config: SamplerConfig, groups: list[planning.Group], runs: list[_GroupRun]) -> dict:
    """Scatters every group's (centres x variants) block back into configuration order g = k * V + v."""
    num_variants = len(plan.variants)
    num_configs = len(plan.centers) * num_variants
    static = plan.static
    fields: dict[str, Any] = {}
    accumulator_parts: list = [None] * num_configs
    observed_parts: list = [None] * num_configs
    final_positions: list = [None] * num_configs
    diverged_at = np.full((num_configs, config.num_chains), -1, np.int64)
    for group, run in zip(groups, runs):
        shape = (len(group.centers), len(group.variants), config.num_chains)
        host = _host_records(run.records, config.num_draws, static.keep_traces, bool(static.full_loss_every), static.center_loss, shape)
        group_diverged, accumulated = multihost.to_host((run.carry.diverged_at, run.carry.accumulator))
        positions = multihost.addressable(run.carry.state.position)
        for i in range(group.num_centers):
            for j in range(group.num_variants):
                g = group.centers[i] * num_variants + group.variants[j]
                for name, value in host.items():
                    if name == "observed":
                        if value is not None:
                            observed_parts[g] = jax.tree.map(lambda x: x[i, j], value)
                        continue
                    if value is None:
                        fields[name] = None
                        continue
                    fields.setdefault(name, np.full((num_configs,) + value.shape[2:], np.nan, value.dtype))[g] = value[i, j]
                diverged_at[g] = group_diverged[i, j]
                if accumulated is not None:
                    accumulator_parts[g] = jax.tree.map(lambda x: x[i, j], accumulated)
                final_positions[g] = jax.tree.map(lambda x: x[i, j], positions)
    stack = lambda parts: None if parts[0] is None else jax.tree.map(lambda *xs: np.stack(xs), *parts)
    fields["observed"] = stack(observed_parts)
    fields["accumulator"] = stack(accumulator_parts)
    fields["final_positions"] = final_positions
    fields["diverged_at"] = diverged_at
    fields["diverged"] = diverged_at >= 0
    return fields


# ---------------------------------------------------------------------------------------------
# the public entry point


def _check_processes_agree(plan: planning.Plan, config: SamplerConfig) -> None:
    """With several processes, every process must pass the same key, params and data: compares the
    chain keys and L_n(w*) of every centre (a cheap witness of params and data) between processes,
    and the memory budget (which decides the groups, so every process runs the same programs)."""
    multihost.check_same(
        "key", jax.random.key_data(plan.chain_keys),
        "Pass the same key to every process (do not fold in jax.process_index()): the sampler itself "
        "spreads the chains over the processes' devices.",
    )
    multihost.check_same(
        "L_n(w*) (the full-data loss at each centre)", plan.init_losses,
        "Pass the same params and the whole dataset to every process (not a per-process shard).", rtol=1e-5,
    )
    multihost.check_same(
        "memory_budget", config.memory_budget or default_memory_budget(),
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
    observe: Callable[[Params, SGLDInfo, DrawContext], PyTree] | None = None,
    observe_data: PyTree | None = None,
    accumulator: Accumulator | None = None,
    keep_traces: bool = False,
    full_loss_every: int = 0,
    center_loss: bool = False,
    init_losses: Sequence[float] | None = None,
    progress: bool = True,
    checkpoint_dir=None,
    description: str = "SGLD",
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
        observe: ``observe(params, info, context) -> pytree`` evaluated at every draw at the draw's
            full parameters (before that step moves them); ``context`` is a ``DrawContext`` (the
            draw's minibatch, the centre, its L_n(w*), ``observe_data``).
        observe_data: pytree of arrays for ``observe`` (e.g. probe datasets). A traced input, so new
            values of the same shapes never recompile (a closure would bake them into the program).
        accumulator: streaming statistics of ``observe``'s values carried on device.
        keep_traces: keep every draw's ``observe`` values (memory grows with num_draws).
        full_loss_every: evaluate the full-data loss every this many draws (0 = never).
        center_loss: also evaluate the loss at w* on every draw's minibatch, the control variate
            of the paired LLC estimator (and ``DrawContext.center_loss``): one forward pass per draw,
            or a gather from the per-example losses at each centre, computed once when n is at most
            the examples those passes would evaluate and ``loss_fn`` is per-example.
        init_losses: L_n(w*) of each centre if already known (skips a full-data pass each).
        progress: show a tqdm bar (its rate excludes compilation).
        checkpoint_dir: a directory to write each group's state to after every chunk; a restarted
            run with the same inputs resumes from it and ends bitwise identical to an uninterrupted
            one (``slt_jax._src.checkpoint``). With several processes, a directory every process sees;
            process 0 writes it.
        description: the progress bar's label.

    Returns:
        A ``ChainsResult`` with leading axes ``(K * V, num_chains)``, centre-major.

    Several processes (after ``jax.distributed.initialize``): call ``run_chains`` in every process
    with the same arguments (key, params, data). The chains are split over the devices of every
    process (``slt_jax._src.multihost``) and every process returns the same, whole ``ChainsResult``.
    """
    plan = planning.prepare(loss_fn, centers, data, config, key, masks, grid, observe, observe_data, accumulator,
                    keep_traces, full_loss_every, center_loss, init_losses)
    _check_processes_agree(plan, config)
    groups, configuration_bytes = planning.groups(plan, config)
    runs = []
    bar_off = not progress or not multihost.is_writer()  # one bar, on process 0
    with tqdm(total=config.num_steps * len(groups), desc=description, disable=bar_off, unit="step", leave=False) as bar:
        for index, group in enumerate(groups):
            runs.append(_drive(plan, config, index, group, bar, checkpoint_dir))
    fields = _assemble(plan, config, groups, runs)
    num_variants = len(plan.variants)
    hyper = np.stack([v.hyper for v in plan.variants])  # (V, 4)
    center_index = np.repeat(np.arange(len(plan.centers)), num_variants)
    variant_index = np.tile(np.arange(num_variants), len(plan.centers))
    settings = dict(
        n=plan.n,
        minibatches="full batch" if config.batch_size == plan.n else "with replacement",
        groups=len(groups),
        configuration_bytes=configuration_bytes,
        memory_budget=config.memory_budget or default_memory_budget(),
        stopped_early=any(r.stopped_early for r in runs),
        full_loss_every=plan.static.full_loss_every,
        center_loss=plan.static.center_loss,
    )
    return ChainsResult(
        **fields,
        init_loss=plan.init_losses[center_index],
        hyperparameters=Hyperparameters(*(hyper[variant_index, i] for i in range(4))),
        center_index=center_index,
        variant_index=variant_index,
        num_sampled=np.array([plan.variants[v].restriction.num_sampled for v in variant_index]),
        num_steps=max(r.num_steps for r in runs),
        compile_seconds=sum(r.compile_seconds for r in runs),
        sampling_seconds=sum(r.sampling_seconds for r in runs),
        config=config,
        settings=settings,
    )
