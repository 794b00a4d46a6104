"""Flax adapters: turn an nnx or linen model into ``(params, loss_fn)`` for the sampler.

The sampler (``slt_jax.sampler``) and the kernels only see a plain-array pytree of parameters and a
pure ``loss_fn(params, batch) -> losses``; this module is the only place that knows about Flax.

* nnx: ``graphdef, params, rest = nnx.split(model, nnx.Param, ...)``; the loss calls
  ``nnx.merge(graphdef, params, rest)(inputs)``, a pure function of ``params``. The model is put in
  evaluation mode (``deterministic=True``, ``use_running_average=True``) on a view that shares its
  arrays, so dropout is off and batch statistics are held fixed. Nothing is copied per chain: the
  non-parameter state is a constant of the one compiled program.
* linen: ``module.apply({"params": params, **other_collections}, inputs, **apply_kwargs)``.

A batch is a tuple ``(inputs, targets)`` or a dict with an ``"inputs"`` entry (and ``"targets"``
for the named losses that need them); ``inputs=`` overrides how the model's input is taken.

Named losses (per example ``(batch,)`` or per token ``(batch, seq)``; the sampler averages):

* ``"mse"``: ``0.5 * ||y - f(x)||²`` summed over every non-batch axis of the outputs, the
  negative log-likelihood of unit-variance Gaussian noise up to a constant. Targets of another
  shape but the same size (``(batch,)`` for outputs ``(batch, 1)``) are reshaped.
* ``"cross_entropy"``: softmax cross-entropy of logits ``(..., classes)`` against integer labels
  ``(...)`` (``optax.losses.softmax_cross_entropy_with_integer_labels``); with logits
  ``(batch, seq, vocab)`` and labels ``(batch, seq)`` it is per token.
* ``"next_token"``: per-token cross-entropy of logits ``(batch, seq, vocab)`` at position t against
  the INPUT token at t + 1, shape ``(batch, seq - 1)`` (no targets needed).

Each named loss is computed in at least float32: bfloat16 outputs (``SamplerConfig(compute_dtype=
"bfloat16")``) are upcast before the log-softmax or the squared error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from flax.core import unfreeze

from slt_jax.types import Array, Batch, LossFn, Params

__all__ = ["LOSSES", "from_nnx", "from_linen", "to_nnx", "batch_inputs", "batch_targets"]

OutputLoss = Callable[[Any, Batch], Array]
"""``loss(outputs, batch) -> losses`` of shape ``(batch,)`` or ``(batch, seq)``."""


# ---------------------------------------------------------------------------------------------
# batches


def _batch_entry(batch: Batch, index: int, key: str, missing: str) -> Any:
    """``batch[index]`` of a tuple or ``batch[key]`` of a dict; ``missing`` says what to do when it is absent."""
    if isinstance(batch, (tuple, list)):
        if len(batch) <= index:
            raise ValueError(f"batch is a tuple of {len(batch)}; {missing}")
        return batch[index]
    if isinstance(batch, Mapping):
        if key not in batch:
            raise ValueError(f"batch is a dict with keys {sorted(batch)} but no {key!r} entry; {missing}")
        return batch[key]
    raise TypeError(f"batch must be a tuple (inputs, targets) or a dict with an 'inputs' entry, got {type(batch).__name__}; {missing}")


def batch_inputs(batch: Batch) -> Any:
    """The model input of a batch: ``batch[0]`` of a tuple, ``batch["inputs"]`` of a dict."""
    return _batch_entry(batch, 0, "inputs", "a batch is (inputs, targets) or a dict with an 'inputs' entry; rename the "
                        "input array to 'inputs' or pass inputs=lambda batch: batch['<your key>'] to the adapter.")


def batch_targets(batch: Batch) -> Any:
    """The targets of a batch: ``batch[1]`` of a tuple, ``batch["targets"]`` of a dict."""
    return _batch_entry(batch, 1, "targets", "this loss needs targets: pass batches as (inputs, targets), add a 'targets' "
                        "entry to the dict, or pass your own loss(outputs, batch).")


# ---------------------------------------------------------------------------------------------
# named losses


def _at_least_float32(x: Array) -> Array:
    # Losses are reduced in float32 even when the model runs in bfloat16 (SamplerConfig.compute_dtype):
    # a bfloat16 log-softmax or squared error would carry ~3 significant digits into every loss.
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _mse(outputs: Array, targets: Array) -> Array:
    outputs = _at_least_float32(outputs)
    targets = jnp.asarray(targets, outputs.dtype)
    if targets.shape != outputs.shape:
        if targets.size != outputs.size:
            raise ValueError(f"'mse': targets of shape {targets.shape} do not match outputs of shape {outputs.shape}.")
        targets = targets.reshape(outputs.shape)
    squared = 0.5 * (outputs - targets) ** 2
    return jnp.sum(squared.reshape(squared.shape[0], -1), axis=1) if squared.ndim > 1 else squared


def _cross_entropy(logits: Array, labels: Array) -> Array:
    if not jnp.issubdtype(jnp.asarray(labels).dtype, jnp.integer):
        raise TypeError(f"'cross_entropy' needs integer labels, got dtype {jnp.asarray(labels).dtype}.")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"'cross_entropy': labels of shape {labels.shape} do not match logits {logits.shape} (labels = logits.shape[:-1]).")
    return optax.losses.softmax_cross_entropy_with_integer_labels(_at_least_float32(logits), labels)


def _next_token(logits: Array, tokens: Array) -> Array:
    if logits.ndim != 3 or tokens.shape != logits.shape[:2]:
        raise ValueError(
            f"'next_token' needs logits (batch, seq, vocab) and input tokens (batch, seq); got {logits.shape} "
            f"and {tokens.shape}."
        )
    return _cross_entropy(logits[:, :-1], tokens[:, 1:])


LOSSES: dict[str, str] = {
    "mse": "0.5 * ||y - f(x)||^2 summed over output dims (Gaussian NLL), per example",
    "cross_entropy": "softmax cross-entropy with integer labels, per example (or per token)",
    "next_token": "cross-entropy of logits[:, t] against inputs[:, t+1], per token (batch, seq-1)",
}


def _resolve_loss(loss: str | OutputLoss, get_inputs: Callable[[Batch], Any]) -> OutputLoss:
    if callable(loss):
        return loss
    if loss == "mse":
        return lambda outputs, batch: _mse(outputs, batch_targets(batch))
    if loss == "cross_entropy":
        return lambda outputs, batch: _cross_entropy(outputs, batch_targets(batch))
    if loss == "next_token":
        return lambda outputs, batch: _next_token(outputs, get_inputs(batch))
    raise ValueError(
        f"loss={loss!r} is not a named loss; use one of {sorted(LOSSES)} or pass a callable "
        "loss(outputs, batch) -> per-example losses."
    )


def _check_inputs(inputs) -> Callable[[Batch], Any]:
    if inputs is None:
        return batch_inputs
    if not callable(inputs):
        raise TypeError(f"inputs must be None or a callable batch -> model input, got {inputs!r}.")
    return inputs


# ---------------------------------------------------------------------------------------------
# nnx


def from_nnx(
    model: nnx.Module, loss: str | OutputLoss, inputs: Callable[[Batch], Any] | None = None, *, remat: bool = False
) -> tuple[Params, LossFn]:
    """Splits an nnx model into plain parameters and a pure per-example loss.

    Args:
        model: an ``nnx.Module``. It is not modified; the loss uses an evaluation-mode view of it
            (dropout off, batch statistics fixed) that shares its arrays.
        loss: ``"mse"``, ``"cross_entropy"``, ``"next_token"`` (see the module docstring) or a
            callable ``loss(outputs, batch) -> losses`` of shape ``(batch,)`` or ``(batch, seq)``.
        inputs: ``inputs(batch) -> model input``; default ``batch[0]`` or ``batch["inputs"]``.
        remat: rematerialise each transformer block (``nnx.remat``, i.e. ``jax.checkpoint``): the
            gradient keeps only each block's input ``(batch, seq, width)`` and recomputes the
            block's activations (attention ``(batch, heads, seq, seq)``, MLP ``(batch, seq,
            mlp_width)``) in the backward pass, so long contexts fit, for about one more forward
            pass per gradient; losses and gradients are unchanged. For models with a ``remat``
            attribute: the zoo's transformers (``TransformerLM``, ``AttentionOnlyTransformer``,
            ``InContextRegressionTransformer``) and ``Decoder`` (``from_pretrained``); a model of
            your own opts in by holding ``self.remat = False`` and honouring it in ``__call__``.

    Returns:
        ``(params, loss_fn)``: ``params`` is a nested dict of the model's ``nnx.Param`` arrays
        (``nnx.to_pure_dict`` layout, e.g. ``params["layers"][0]["kernel"]``) and
        ``loss_fn(params, batch)`` the per-example (or per-token) losses.

    >>> from flax import nnx
    >>> import jax.numpy as jnp, slt_jax as sj
    >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    >>> params, loss_fn = sj.from_nnx(model, "mse")
    >>> loss_fn(params, (jnp.ones((5, 3)), jnp.zeros((5, 2)))).shape
    (5,)
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"model must be an nnx.Module, got {type(model).__name__}; use from_linen for linen modules.")
    if not isinstance(remat, bool):
        raise TypeError(f"remat={remat!r} must be True or False.")
    if remat and not isinstance(getattr(model, "remat", None), bool):
        raise ValueError(f"remat=True: {type(model).__name__} has no `remat` attribute to switch on; the zoo's transformers "
                         "and from_pretrained's Decoder have one. In a model of your own, set self.remat = False in __init__ and "
                         "run each block under nnx.remat when it is True (slt_jax.zoo.decoder.apply_blocks does this).")
    get_inputs = _check_inputs(inputs)
    output_loss = _resolve_loss(loss, get_inputs)
    graphdef, params_state, rest = nnx.split(model, nnx.Param, ...)
    # An evaluation-mode view sharing the arrays (merge builds new Variables, not new buffers).
    view = nnx.merge(graphdef, params_state, rest)
    view.eval()
    if remat:
        view.remat = True  # on the view only: the caller's model is unchanged
    graphdef, params_state, rest = nnx.split(view, nnx.Param, ...)
    params = nnx.to_pure_dict(params_state)
    if not jax.tree.leaves(params):
        raise ValueError("model has no nnx.Param variables; there is nothing to sample.")

    def loss_fn(params: Params, batch: Batch) -> Array:
        module = nnx.merge(graphdef, params, rest)
        return output_loss(module(get_inputs(batch)), batch)

    return params, loss_fn


def to_nnx(model: nnx.Module, params: Params) -> nnx.Module:
    """Writes ``params`` (e.g. a sampled or restricted position) into ``model``'s ``nnx.Param``s.

    Args:
        model: the live ``nnx.Module`` (updated in place).
        params: a pytree with the layout returned by ``from_nnx`` and the same leaf shapes (select
            one chain first, e.g. ``jax.tree.map(lambda x: x[c], final_positions)``).

    Returns:
        ``model``, for chaining.
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"model must be an nnx.Module, got {type(model).__name__}.")
    state = nnx.state(model, nnx.Param)
    reference = nnx.to_pure_dict(state)
    _check_same_layout(reference, params, "params")
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
    nnx.update(model, state)
    return model


def _check_same_layout(reference: Params, params: Params, name: str) -> None:
    if jax.tree.structure(reference) != jax.tree.structure(params):
        raise ValueError(
            f"{name} does not have the model's parameter layout.\n  model: {jax.tree.structure(reference)}\n"
            f"  {name}: {jax.tree.structure(params)}\nUse the params returned by from_nnx (or a pytree like them)."
        )
    for (path, ref), leaf in zip(jax.tree_util.tree_flatten_with_path(reference)[0], jax.tree.leaves(params)):
        if np.shape(ref) != np.shape(leaf):
            raise ValueError(
                f"{name}{jax.tree_util.keystr(path)} has shape {np.shape(leaf)} but the model's parameter has shape "
                f"{np.shape(ref)}; select one chain first (jax.tree.map(lambda x: x[c], ...))."
            )


# ---------------------------------------------------------------------------------------------
# linen


def from_linen(
    module: linen.Module,
    variables: Mapping[str, Any],
    loss: str | OutputLoss,
    inputs: Callable[[Batch], Any] | None = None,
    apply_kwargs: Mapping[str, Any] | None = None,
) -> tuple[Params, LossFn]:
    """The linen counterpart of ``from_nnx``: ``loss_fn`` calls ``module.apply``.

    Args:
        module: a ``flax.linen.Module``.
        variables: its variables (``module.init(...)``); ``variables["params"]`` are sampled and every
            other collection (e.g. ``"batch_stats"``) is held fixed.
        loss: a named loss or ``loss(outputs, batch)`` (see ``from_nnx``).
        inputs: ``inputs(batch) -> model input``; default ``batch[0]`` or ``batch["inputs"]``.
        apply_kwargs: extra keyword arguments of ``module.apply``/``__call__`` that select evaluation
            behaviour, e.g. ``{"deterministic": True}`` or ``{"train": False}``; linen has no
            global evaluation switch, so dropout and batch-norm modes are the caller's to set.

    Returns:
        ``(params, loss_fn)`` with ``params = variables["params"]`` as nested dicts.
    """
    if not isinstance(module, linen.Module):
        raise TypeError(f"module must be a flax.linen.Module, got {type(module).__name__}; use from_nnx for nnx models.")
    if not isinstance(variables, Mapping) or "params" not in variables:
        keys = sorted(variables) if isinstance(variables, Mapping) else type(variables).__name__
        raise ValueError(f"variables must be the dict from module.init(...) with a 'params' collection, got {keys}.")
    get_inputs = _check_inputs(inputs)
    output_loss = _resolve_loss(loss, get_inputs)
    apply_kwargs = dict(apply_kwargs or {})
    variables = unfreeze(variables)
    params = variables["params"]
    rest = {name: collection for name, collection in variables.items() if name != "params"}

    def loss_fn(params: Params, batch: Batch) -> Array:
        outputs = module.apply({"params": params, **rest}, get_inputs(batch), **apply_kwargs)
        return output_loss(outputs, batch)

    return params, loss_fn
