"""Multi-chain localized SGLD: one compiled program, vmapped over configurations and chains.

Layout of every array the sampler returns: ``(num_configs, num_chains, num_draws, ...)``. A
"configuration" is one setting of hyperparameters and mask; ``run_chains`` vmaps over a stack of
them (hyperparameter grids, component masks), ``sample`` is the single-configuration wrapper.

Design (STYLE.md habits 1-2):

* One compiled program per run shape: ``vmap`` (configs) of ``vmap`` (chains) of ``lax.scan``
  (draws) of ``lax.scan`` (steps between draws). Hyperparameters, masks, data, keys and the step
  offset are traced inputs, so changing any of their VALUES never recompiles.
* The run executes in chunks of draws, each chunk a call of the same compiled executable; between
  chunks the host reads one small array (which chains diverged) and advances a tqdm bar.
* Randomness is keyed per step: the noise and the minibatch indices of step ``t`` of chain ``c`` are
  drawn from ``fold_in(key_c, t)``, generated in bulk for a whole chunk (one vectorised RNG call,
  far cheaper on CPU than one small call per step). Results therefore do not depend on the chunk
  size, the device count, or on whether a run was resumed.
* Minibatches are drawn WITH replacement (i.i.d. uniform indices), gathered on device; with
  ``batch_size == n`` every step uses the whole dataset (exact full-batch SGLD, not a bootstrap).
* Per-draw observables and on-device accumulators (``observe`` / ``accumulator``) are evaluated
  inside the same program; full traces of observables are kept only when asked.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from slt_jax import kernels, program, validation
from slt_jax.program import Accumulator, compile_count
from slt_jax.validation import as_key
from slt_jax.kernels import Hyperparameters, Preconditioner, SGLDInfo, SGLDState
from slt_jax.types import Array, Batch, KeyLike, LossFn, Mask, Params, PyTree

__all__ = [
    "Accumulator",
    "ChainsOutput",
    "DivergenceError",
    "sample",
    "run_chains",
    "full_data_loss",
    "default_nbeta",
    "batch_nbeta",
    "as_key",
    "compile_count",
]

# Memory allowed for one chunk's pre-generated noise (bytes); bounds the chunk length.
_NOISE_BUDGET_BYTES = 128 * 2**20
# Noise for up to this many parameters per chain is drawn in bulk for a whole chunk (many tiny RNG
# calls cost several times a small model's gradient); above it, inside each step, where the bulk
# buffer's memory traffic would cost more than the RNG calls (measured on a 270k-parameter MLP: floor
# ratio 2.9 bulk vs 1.9 in-loop; on a 1.2k-parameter DLN bulk is the faster). Same keys, so the same
# draws either way (results agree to float32 rounding: XLA fuses the two differently).
_BULK_NOISE_MAX_PARAMETERS = 2**16
# Target number of chunks for progress reporting and early divergence detection.
_TARGET_CHUNKS = 10


class DivergenceError(RuntimeError):
    """Raised when every chain diverged; ``.result`` holds what was sampled."""

    def __init__(self, message: str, result: Any = None):
        super().__init__(message)
        self.result = result


@dataclasses.dataclass(frozen=True)
class ChainsOutput:
    """What ``run_chains`` returns. Leading axes ``(num_configs, num_chains)``; numpy on host.

    Attributes:
        loss: ``(G, C, D)`` minibatch loss at each draw (the batch of that step's gradient).
        grad_norm, localization_norm, noise_norm, distance: ``(G, C, D)`` per-draw diagnostics
            (see ``SGLDInfo``).
        mala_acceptance: ``(G, C, D)`` MALA acceptance probability, NaN at draws where it was not
            evaluated (every ``mala_every``-th draw is).
        full_loss: ``(G, C, D)`` full-data loss, NaN where not evaluated, or None.
        center_loss: ``(G, C, D)`` minibatch loss AT w* on each draw's batch (``center_loss=True``),
            the control variate of the paired LLC estimator, or None.
        observed: pytree of ``(G, C, D, ...)`` observable traces, or None.
        accumulator: pytree of ``(G, C, ...)`` accumulator states, or None.
        diverged: ``(G, C)`` bool, the chain's loss went non-finite.
        diverged_at: ``(G, C)`` int, first non-finite step (-1 if none).
        init_loss: L_n(w*) on the full data.
        final_state: the ``SGLDState`` after the last step, leaves ``(G, C, ...)`` (device arrays).
        num_steps: total steps taken per chain.
        compile_seconds: time spent compiling in this call.
        sampling_seconds: wall time of the sampling itself (excluding compilation).
        settings: the run's settings (JSON-serialisable dict).
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
    init_loss: float
    final_state: SGLDState
    num_steps: int
    compile_seconds: float
    sampling_seconds: float
    settings: dict


# ---------------------------------------------------------------------------------------------
# nβ conventions


def default_nbeta(n: int) -> float:
    """Watanabe's nβ* = n / log n (β* = 1/log n), the library default."""
    n = validation.check_positive_int(n, "n")
    if n < 2:
        raise ValueError(f"n={n}: default_nbeta needs n >= 2 (log 1 = 0); pass nbeta explicitly.")
    return n / math.log(n)


def batch_nbeta(batch_size: int) -> float:
    """The batch-size variant B / log B (devinterp 1.x's default). Never picked silently."""
    batch_size = validation.check_positive_int(batch_size, "batch_size")
    if batch_size < 2:
        raise ValueError(f"batch_size={batch_size}: batch_nbeta needs batch_size >= 2.")
    return batch_size / math.log(batch_size)


# ---------------------------------------------------------------------------------------------
# full-data loss




def full_data_loss(loss_fn: LossFn, params: Params, data: Batch, batch_size: int | None = None) -> Array:
    """L_n(params): the exact mean loss over all n examples, evaluated in batches of ``batch_size``.

    Every example (and token) carries equal weight; a last partial batch is weighted by its size.
    """
    n = validation.check_data(data)
    batch_size = n if batch_size is None else min(validation.check_positive_int(batch_size, "batch_size"), n)
    return program.batched_mean_jit(loss_fn, params, data, batch_size)


# ---------------------------------------------------------------------------------------------
# the driver


def _chain_sharding(num_chains: int):
    devices = jax.devices()
    if len(devices) == 1:
        return None
    if num_chains % len(devices):
        warnings.warn(
            f"num_chains={num_chains} is not a multiple of the {len(devices)} devices; chains are not "
            "sharded. Use a multiple of the device count to spread chains across devices.",
            stacklevel=3,
        )
        return None
    mesh = Mesh(np.array(devices), ("chain",))
    return NamedSharding(mesh, PartitionSpec(None, "chain")), NamedSharding(mesh, PartitionSpec())


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


def run_chains(
    loss_fn: LossFn,
    params: Params,
    data: Batch,
    *,
    key: KeyLike,
    step_size,
    nbeta,
    localization,
    weight_decay=0.0,
    num_chains: int = 4,
    num_draws: int,
    num_burnin: int = 0,
    num_steps_between_draws: int = 1,
    batch_size: int,
    sampler: str | Preconditioner = "sgld",
    masks: Mask | None = None,
    observe: Callable[[Params, SGLDInfo], PyTree] | None = None,
    observe_data: PyTree | None = None,
    accumulator: Accumulator | None = None,
    keep_traces: bool = False,
    full_loss_every: int = 0,
    mala_every: int = 20,
    center_loss: bool = False,
    init_loss: float | None = None,
    progress: bool = True,
    chunk_draws: int | None = None,
    description: str = "SGLD",
    checkpoint_dir=None,
) -> ChainsOutput:
    """Runs ``num_chains`` localized SGLD chains for each of G configurations, as one program.

    Args:
        loss_fn: ``loss_fn(params, batch)`` -> per-example ``(batch,)``, per-token ``(batch, seq)``
            or scalar mean losses.
        params: pytree at w* (the localization centre and every chain's start).
        data: pytree of arrays with a shared leading axis n.
        key: int seed or JAX PRNG key. Chain c uses ``split(key, num_chains)[c]`` in every
            configuration, so configurations differ only by their settings.
        step_size, nbeta, localization, weight_decay: scalars or 1-D grids of length G (broadcast
            together). ``nbeta`` may be 0 (the negative control), the others must be > 0 / >= 0.
        num_chains, num_draws, num_burnin, num_steps_between_draws: the schedule. Draw d is taken at
            step ``num_burnin + d * num_steps_between_draws``.
        batch_size: minibatch size m <= n, drawn with replacement; m = n means full batch (every
            step sees all the data, exactly once).
        sampler: ``"sgld"``, ``"rmsprop_sgld"``, ``"rmsprop_sgld_devinterp"`` or a ``Preconditioner``.
        masks: None, one bool mask pytree (shared by all configurations), or a stack of G masks
            (leaves with a leading axis G) when no hyperparameter is a grid longer than 1 or G
            matches.
        observe: ``observe(position, info) -> pytree`` evaluated at every draw (at the draw's
            position, before that step moves it).
        observe_data: optional pytree of arrays (e.g. probe datasets); with it ``observe`` is called
            as ``observe(position, info, observe_data, batch)``, ``batch`` being the draw's minibatch
            (the batch of ``info.loss``, drawn independently of ``position``). A traced input, so new
            values of the same shapes never recompile (a closure would bake them into the program).
        accumulator: streaming statistics of ``observe``'s values carried on device.
        keep_traces: keep every draw's ``observe`` values (memory grows with num_draws).
        full_loss_every: evaluate the full-data loss every this many draws (0 = never).
        mala_every: MALA acceptance every this many draws (0 = never); costs one extra gradient.
        center_loss: also evaluate the loss at w* on every draw's minibatch (one forward pass per
            draw), the control variate of the paired LLC estimator.
        init_loss: L_n(w*) if already known (skips one full-data pass).
        progress: show a tqdm bar.
        chunk_draws: draws per compiled chunk (default: about a tenth of the run, within a noise
            memory budget).
        checkpoint_dir: a directory to write the run's state to after every chunk; a restarted run
            with the same settings resumes from it and ends bitwise identical to an uninterrupted
            one (``slt_jax.checkpoint``).

    Returns:
        A ``ChainsOutput`` with leading axes ``(G, num_chains)``.
    """
    # ---- validation, all before compiling anything
    n = validation.check_data(data)
    validation.check_params(params)
    num_chains = validation.check_positive_int(num_chains, "num_chains")
    num_draws = validation.check_positive_int(num_draws, "num_draws")
    num_burnin = validation.check_positive_int(num_burnin, "num_burnin", minimum=0)
    num_steps_between_draws = validation.check_positive_int(num_steps_between_draws, "num_steps_between_draws")
    batch_size = validation.check_positive_int(batch_size, "batch_size")
    if batch_size > n:
        raise ValueError(f"batch_size={batch_size} is larger than the dataset (n={n}); use batch_size <= {n}.")
    full_loss_every = validation.check_positive_int(full_loss_every, "full_loss_every", minimum=0)
    mala_every = validation.check_positive_int(mala_every, "mala_every", minimum=0)
    if chunk_draws is not None:
        chunk_draws = validation.check_positive_int(chunk_draws, "chunk_draws")
    preconditioner = kernels.get_preconditioner(sampler)
    grids = {
        "step_size": validation.check_scalar_grid(step_size, "step_size", allow_zero=False, fix="Try step_size=1e-4 and calibrate (see README)."),
        "nbeta": validation.check_scalar_grid(nbeta, "nbeta", allow_zero=True, fix="The default is n / log n (slt_jax.default_nbeta)."),
        "localization": validation.check_scalar_grid(localization, "localization", allow_zero=True, fix="Typical values are 1 to 1000."),
        "weight_decay": validation.check_scalar_grid(weight_decay, "weight_decay", allow_zero=True, fix="Use 0 for none."),
    }
    lengths = {len(v) for v in grids.values() if v.ndim == 1}
    if len(lengths) > 1:
        raise ValueError(f"hyperparameter grids have different lengths {sorted(lengths)}; grids must share one length G.")
    num_configs = lengths.pop() if lengths else None
    stacked_masks = False
    if masks is not None and not callable(masks):
        first = jax.tree.leaves(masks)
        mask_leading = {np.ndim(m) for m in first}
        # A stack of masks: every leaf has one more axis than its parameter.
        stacked_masks = len(first) == len(jax.tree.leaves(params)) and all(
            np.ndim(m) == np.ndim(p) + 1 for m, p in zip(first, jax.tree.leaves(params))
        ) and bool(mask_leading)
    if stacked_masks:
        num_mask_configs = np.shape(jax.tree.leaves(masks)[0])[0]
        if num_configs is not None and num_configs != num_mask_configs:
            raise ValueError(f"masks stack {num_mask_configs} masks but the hyperparameter grids have length {num_configs}.")
        num_configs = num_mask_configs
        masks = validation.check_masks(masks, params, num_configs, name="masks")
    else:
        masks = validation.check_masks(masks, params, None, name="mask")
    num_configs = num_configs or 1
    validation.check_loss_fn(loss_fn, params, data, batch_size)
    if observe_data is not None and observe is None:
        raise ValueError("observe_data was given without observe; pass observe(position, info, observe_data, batch).")

    # ---- device inputs
    params = jax.tree.map(jnp.asarray, params)
    data = jax.tree.map(jnp.asarray, data)
    observe_data = jax.tree.map(jnp.asarray, observe_data)
    dtype = jnp.result_type(jax.tree.leaves(params)[0])
    hyper = Hyperparameters(
        *(jnp.broadcast_to(jnp.asarray(grids[f], dtype), (num_configs,)) for f in Hyperparameters._fields)
    )
    if masks is not None and not stacked_masks:
        masks = jax.tree.map(lambda m: jnp.broadcast_to(m, (num_configs,) + m.shape), masks)
    key = as_key(key)
    chain_keys = jax.random.split(key, num_chains)

    if init_loss is None:
        init_loss = float(full_data_loss(loss_fn, params, data, batch_size))
    if not np.isfinite(init_loss):
        raise ValueError(f"the full-data loss at w* is {init_loss}; loss_fn(params, data) must be finite at w*.")

    state = kernels.init(params, preconditioner)
    state = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_configs, num_chains) + jnp.shape(x)), state)
    if observe is not None and accumulator is not None:
        example_info = SGLDInfo(*(jnp.zeros((), jnp.float32) for _ in SGLDInfo._fields))
        example_batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct((batch_size,) + x.shape[1:], x.dtype), data)
        example_args = () if observe_data is None else (observe_data, example_batch)
        example = jax.eval_shape(observe, params, example_info, *example_args)
        acc_single = accumulator.init(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), example))
        acc = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_configs, num_chains) + jnp.shape(x)), acc_single)
    else:
        acc = None
    carry = program.Carry(state, acc, jnp.full((num_configs, num_chains), -1, jnp.int32))
    carry = jax.tree.map(jnp.array, carry)  # own buffers (the chunk program donates its carry)

    sharding = _chain_sharding(num_chains)
    if sharding is not None:
        chain_sharded, replicated = sharding
        carry = jax.device_put(carry, chain_sharded)
        chain_keys = jax.device_put(chain_keys, NamedSharding(chain_sharded.mesh, PartitionSpec("chain")))
        data, params, hyper, observe_data = jax.device_put((data, params, hyper, observe_data), replicated)
        if masks is not None:
            masks = jax.device_put(masks, replicated)

    static = dict(
        loss_fn=loss_fn,
        preconditioner=preconditioner,
        batch_size=batch_size,
        observe=observe,
        accumulator=accumulator,
        keep_traces=keep_traces,
        full_loss_every=full_loss_every,
        full_loss_batch_size=batch_size,
        mala_every=mala_every,
        center_loss=bool(center_loss),
        bulk_noise=sum(int(np.prod(np.shape(p))) for p in jax.tree.leaves(params)) <= _BULK_NOISE_MAX_PARAMETERS,
        masked=masks is not None,
    )
    # Bytes a chunk pre-generates per step: the noise when drawn in bulk, else the minibatch indices.
    per_step_values = sum(int(np.prod(np.shape(p))) for p in jax.tree.leaves(params)) if static["bulk_noise"] else batch_size
    per_step_bytes = num_configs * num_chains * per_step_values * 4
    schedule = [(length, 1, False) for length in _chunk_lengths(num_burnin, 1, per_step_bytes, chunk_draws)]
    schedule += [(length, num_steps_between_draws, True) for length in _chunk_lengths(num_draws, num_steps_between_draws, per_step_bytes, chunk_draws)]
    total_steps = num_burnin + num_draws * num_steps_between_draws

    records: list[program.DrawRecord] = []
    compile_seconds = 0.0
    sampling_seconds = 0.0
    step_offset = 0
    draw_offset = 0
    stopped_early = False
    checkpoint, chunks_done = None, 0
    if checkpoint_dir is not None:
        checkpoint, restored = _open_checkpoint(
            checkpoint_dir, carry, params, data, masks, observe_data, chain_keys, static, schedule, grids, init_loss
        )
        if restored is not None:
            carry, records, step_offset, draw_offset, chunks_done = restored
            carry = jax.tree.map(jnp.asarray, carry) if sharding is None else jax.device_put(carry, sharding[0])
    diverged_at = np.asarray(carry.diverged_at)
    with tqdm(total=total_steps, desc=description, disable=not progress, unit="step", leave=False) as bar:
        bar.update(step_offset)
        for index, (length, steps_per_draw, recorded) in enumerate(schedule):
            if index < chunks_done:
                continue
            if np.all(diverged_at >= 0):  # a resumed run that had stopped early
                stopped_early = True
                break
            chunk_static = dict(static, num_draws=length, steps_per_draw=steps_per_draw)
            if not recorded:
                chunk_static.update(observe=None, accumulator=None, keep_traces=False, full_loss_every=0, mala_every=0, center_loss=False)
            # Burn-in records nothing and carries no accumulator.
            chunk_carry = carry if recorded else carry._replace(accumulator=None)
            args = (
                chunk_carry,
                chain_keys,
                data,
                params,
                hyper,
                masks,
                jnp.asarray(step_offset, jnp.int32),
                jnp.asarray(draw_offset if recorded else 0, jnp.int32),
                observe_data if recorded else None,
            )
            executable, seconds = program.compiled_chunk(args, chunk_static)
            compile_seconds += seconds
            start = time.perf_counter()
            new_carry, record = executable(*args)
            if recorded:
                carry = new_carry
                records.append(record)
                draw_offset += length
            else:
                carry = new_carry._replace(accumulator=carry.accumulator)
            diverged_at = np.asarray(carry.diverged_at)  # the one host sync per chunk
            sampling_seconds += time.perf_counter() - start
            step_offset += length * steps_per_draw
            if checkpoint is not None:
                checkpoint.save(index, carry, record if recorded else None, step_offset, draw_offset)
            bar.update(length * steps_per_draw)
            if np.all(diverged_at >= 0):
                stopped_early = step_offset < total_steps
                break

    output = _assemble(records, num_configs, num_chains, num_draws, keep_traces, full_loss_every, center_loss)
    settings = dict(
        step_size=grids["step_size"].tolist(),
        nbeta=grids["nbeta"].tolist(),
        localization=grids["localization"].tolist(),
        weight_decay=grids["weight_decay"].tolist(),
        num_chains=num_chains,
        num_draws=num_draws,
        num_burnin=num_burnin,
        num_steps_between_draws=num_steps_between_draws,
        batch_size=batch_size,
        n=n,
        sampler=preconditioner._asdict(),
        num_configs=num_configs,
        masked=masks is not None,
        full_loss_every=full_loss_every,
        mala_every=mala_every,
        center_loss=bool(center_loss),
        minibatches="full batch" if batch_size == n else "with replacement",
        stopped_early=stopped_early,
    )
    return ChainsOutput(
        **output,
        accumulator=None if carry.accumulator is None else jax.tree.map(np.asarray, carry.accumulator),
        diverged=diverged_at >= 0,
        diverged_at=diverged_at,
        init_loss=float(init_loss),
        final_state=carry.state,
        num_steps=step_offset,
        compile_seconds=compile_seconds,
        sampling_seconds=sampling_seconds,
        settings=settings,
    )


def _open_checkpoint(directory, carry, params, data, masks, observe_data, chain_keys, static, schedule, grids, init_loss):
    """Builds the run's ``RunCheckpoint`` and restores it if present (see ``slt_jax.checkpoint``)."""
    from slt_jax import checkpoint as checkpoint_lib

    observed = None
    if static["observe"] is not None and static["keep_traces"]:
        example_info = SGLDInfo(*(jnp.zeros((), jnp.float32) for _ in SGLDInfo._fields))
        example_batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct((static["batch_size"],) + x.shape[1:], x.dtype), data)
        example_args = () if observe_data is None else (observe_data, example_batch)
        observed = jax.eval_shape(static["observe"], params, example_info, *example_args)
    zero = np.zeros(())
    record_like = program.DrawRecord(SGLDInfo(*(zero for _ in SGLDInfo._fields)), zero, zero, zero, observed)
    settings = dict(
        {k: v for k, v in static.items() if k != "preconditioner"},
        preconditioner=static["preconditioner"]._asdict(),
        schedule=[list(chunk) for chunk in schedule],
        grids={k: v.tolist() for k, v in grids.items()},
        init_loss=float(init_loss),
    )
    arrays = dict(params=params, data=data, masks=masks, observe_data=observe_data, chain_keys=chain_keys)
    key = checkpoint_lib.fingerprint(settings, arrays)
    run_checkpoint = checkpoint_lib.RunCheckpoint(directory, key, carry, record_like)
    return run_checkpoint, run_checkpoint.restore()


def _assemble(records, num_configs, num_chains, num_draws, keep_traces, full_loss_every, center_loss) -> dict:
    """Concatenates chunk records on device, pads an early stop with NaN, moves to host once."""
    if records:
        joined = jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=2), *records)
    else:
        joined = None
    done = 0 if joined is None else joined.info.loss.shape[2]

    def host(x):
        x = np.asarray(x)
        if done < num_draws:
            pad = np.full(x.shape[:2] + (num_draws - done,) + x.shape[3:], np.nan, dtype=np.float32 if x.dtype.kind != "f" else x.dtype)
            x = np.concatenate([x.astype(pad.dtype), pad], axis=2) if x.size or done else pad
        return x

    if joined is None:
        empty = np.full((num_configs, num_chains, num_draws), np.nan, np.float32)
        info = {f: empty for f in SGLDInfo._fields}
        return dict(
            **info,
            mala_acceptance=empty,
            full_loss=empty if full_loss_every else None,
            center_loss=empty if center_loss else None,
            observed=None,
        )
    info = {f: host(getattr(joined.info, f)) for f in SGLDInfo._fields}
    return dict(
        **info,
        mala_acceptance=host(joined.mala_acceptance),
        full_loss=host(joined.full_loss) if full_loss_every else None,
        center_loss=host(joined.center_loss) if center_loss else None,
        observed=jax.tree.map(host, joined.observed) if keep_traces and joined.observed is not None else None,
    )


def sample(
    loss_fn: LossFn,
    params: Params,
    data: Batch,
    *,
    key: KeyLike,
    step_size: float,
    nbeta: float | None = None,
    localization: float,
    mask: Mask | None = None,
    **kwargs,
) -> ChainsOutput:
    """Single-configuration ``run_chains``: outputs have leading axes ``(num_chains, ...)``.

    ``nbeta=None`` uses ``default_nbeta(n)``. See ``run_chains`` for every other argument.
    """
    for name, value in (("step_size", step_size), ("nbeta", nbeta), ("localization", localization)):
        if value is not None and np.ndim(value) != 0:
            raise ValueError(f"{name} must be a scalar in sample(); use run_chains for grids.")
    if nbeta is None:
        nbeta = default_nbeta(validation.check_data(data))
    out = run_chains(loss_fn, params, data, key=key, step_size=step_size, nbeta=nbeta, localization=localization, masks=mask, **kwargs)
    squeeze = lambda x: x[0] if x is not None else None
    fields = {f.name: getattr(out, f.name) for f in dataclasses.fields(out)}
    for name in ("loss", "grad_norm", "localization_norm", "noise_norm", "distance", "mala_acceptance", "full_loss", "center_loss", "diverged", "diverged_at"):
        fields[name] = squeeze(fields[name])
    for name in ("observed", "accumulator", "final_state"):
        if fields[name] is not None:
            fields[name] = jax.tree.map(lambda x: x[0], fields[name])
    return ChainsOutput(**fields)
