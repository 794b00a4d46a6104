"""A small optax training loop that keeps checkpoints (for LLC-over-training studies).

It works on the same ``(params, loss_fn)`` pair as the sampler (e.g. from ``slt_jax.from_nnx``),
so the checkpoints can go straight into ``slt_jax.estimate_llc_table``. Minibatches are drawn with
replacement, keyed by ``fold_in(key, step)``, so where the checkpoints fall never changes the run.

The steps run in one compiled program per ``(loss_fn, optimizer, batch_size, data and params
shapes)``: a loop of at most ``SEGMENT_STEPS`` steps whose trip count is a traced argument. Every
gap between checkpoints, and every later call with the same ``loss_fn`` and ``optimizer`` objects,
reuses it (define them once, outside a loop, to keep that cache hit).

>>> import jax.numpy as jnp, optax, slt_jax as sj
>>> loss_fn = lambda w, batch: 0.5 * (batch["y"] - batch["x"] @ w) ** 2
>>> data = {"x": jnp.eye(2).repeat(8, axis=0), "y": jnp.ones(16)}
>>> result = sj.training.train(loss_fn, jnp.zeros(2), data, optimizer=optax.sgd(0.5), num_steps=50,
...                            checkpoint_every=25)
>>> result.checkpoint_steps, len(result.checkpoints)
([0, 25, 50], 3)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from slt_jax._src import validation
from slt_jax.types import Batch, LossFn, Params

__all__ = ["TrainResult", "train", "SEGMENT_STEPS"]

# Steps per call of the compiled loop (the size of its loss buffer); longer gaps take several calls.
SEGMENT_STEPS = 512


class TrainResult(NamedTuple):
    """What ``train`` returns.

    Attributes:
        params: the parameters after ``num_steps`` steps.
        checkpoints: the parameters at each of ``checkpoint_steps`` (a list of pytrees, on host).
        checkpoint_steps: the step counts of the checkpoints (0 = the initial parameters).
        losses: ``(num_steps,)`` minibatch mean loss at each step, before that step's update.
    """

    params: Params
    checkpoints: list[Params]
    checkpoint_steps: list[int]
    losses: np.ndarray


def checkpoint_schedule(num_steps: int, checkpoint_every: int | None, checkpoint_steps: Sequence[int] | None) -> list[int]:
    """The sorted steps ``train`` keeps checkpoints at (0 = the initial parameters), validated."""
    if checkpoint_every is not None and checkpoint_steps is not None:
        raise ValueError("pass checkpoint_every or checkpoint_steps, not both.")
    if checkpoint_every is not None:
        if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, (int, np.integer)) or checkpoint_every < 1:
            raise ValueError(f"checkpoint_every={checkpoint_every!r} must be an int >= 1.")
        steps = list(range(0, num_steps + 1, int(checkpoint_every)))
    elif checkpoint_steps is not None:
        steps = [int(s) for s in checkpoint_steps]
        bad = [s for s in steps if not 0 <= s <= num_steps]
        if bad:
            raise ValueError(f"checkpoint_steps {bad} lie outside [0, num_steps={num_steps}].")
    else:
        steps = []
    return sorted(set(steps) | {num_steps})


@functools.partial(jax.jit, static_argnames=("loss_fn", "optimizer", "batch_size"))
def _segment(params, opt_state, data, key, start, count, *, loss_fn, optimizer, batch_size):
    """Runs steps ``start .. start + count - 1`` (count <= SEGMENT_STEPS); returns the new state and
    a ``(SEGMENT_STEPS,)`` loss buffer whose first ``count`` entries are the steps' losses."""
    n = jax.tree.leaves(data)[0].shape[0]
    value_and_grad = jax.value_and_grad(lambda p, batch: jnp.mean(loss_fn(p, batch)))

    def body(i, carry):
        params, opt_state, losses = carry
        if batch_size is None:
            batch = data
        else:
            indices = jax.random.randint(jax.random.fold_in(key, start + i), (batch_size,), 0, n)
            batch = jax.tree.map(lambda x: jnp.take(x, indices, axis=0), data)
        loss, grads = value_and_grad(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, losses.at[i].set(loss.astype(losses.dtype))

    losses = jnp.full((SEGMENT_STEPS,), jnp.nan, jnp.float32)
    return jax.lax.fori_loop(0, count, body, (params, opt_state, losses))


def train(
    loss_fn: LossFn,
    params: Params,
    data: Batch,
    *,
    optimizer: optax.GradientTransformation,
    num_steps: int,
    batch_size: int | None = None,
    seed: int = 0,
    checkpoint_every: int | None = None,
    checkpoint_steps: Sequence[int] | None = None,
) -> TrainResult:
    """Minimises the mean of ``loss_fn`` with an optax optimizer, keeping checkpoints.

    Args:
        loss_fn: ``loss_fn(params, batch)`` -> per-example (or per-token) losses; their mean is
            minimised.
        params: initial parameters.
        data: pytree of arrays sharing a leading axis n.
        optimizer: any ``optax.GradientTransformation`` (e.g. ``optax.adamw(1e-3)``). The compiled
            loop is cached per (``loss_fn``, ``optimizer``) object: reuse them across calls.
        num_steps: number of optimizer steps.
        batch_size: minibatch size (drawn with replacement); None uses the full data every step.
        seed: minibatch seed.
        checkpoint_every: keep params every this many steps (including step 0 and the last).
        checkpoint_steps: or an explicit list of steps in ``[0, num_steps]``. The final params are
            always a checkpoint.

    Returns:
        A ``TrainResult``.
    """
    if not isinstance(optimizer, optax.GradientTransformation) and not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(f"optimizer must be an optax.GradientTransformation (e.g. optax.adam(1e-3)), got {optimizer!r}.")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(params, batch), got {loss_fn!r}.")
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps={num_steps!r} must be an int >= 1.")
    num_steps = int(num_steps)
    n = validation.check_data(data)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or not 1 <= batch_size <= n):
        raise ValueError(f"batch_size={batch_size!r} must be an int in [1, n={n}] or None (full batch).")
    schedule = checkpoint_schedule(num_steps, checkpoint_every, checkpoint_steps)

    data = jax.tree.map(jnp.asarray, data)
    params = jax.tree.map(jnp.asarray, params)
    key = jax.random.key(seed)
    run = functools.partial(_segment, loss_fn=loss_fn, optimizer=optimizer, batch_size=None if batch_size is None else int(batch_size))
    opt_state = optimizer.init(params)
    checkpoints, buffers = [], []
    done = 0
    for target in schedule:
        while done < target:
            count = min(SEGMENT_STEPS, target - done)
            params, opt_state, losses = run(params, opt_state, data, key, jnp.int32(done), jnp.int32(count))
            buffers.append((losses, count))
            done += count
        checkpoints.append(jax.tree.map(np.asarray, params))
    return TrainResult(
        params=params,
        checkpoints=checkpoints,
        checkpoint_steps=schedule,
        losses=np.concatenate([np.asarray(losses)[:count] for losses, count in buffers]),
    )
