"""A zoo of small, fully understood nnx models.

Each model documents its parameter layout: the keys of ``params`` returned by
``slt_jax.from_nnx(model, loss)``, which are also the paths used by ``slt_jax.component_mask`` and
``slt_jax.head_mask``. Flax kernels map ``x -> x @ kernel``, so a kernel has shape ``(in, out)``
(the transpose of the matrix ``W`` in ``x -> W x``).

>>> from flax import nnx
>>> import slt_jax as sj
>>> model = sj.models.AttentionOnlyTransformer(vocab_size=8, context_length=6, num_layers=2,
...                                            num_heads=2, width=16, rngs=nnx.Rngs(0))
>>> params, loss_fn = sj.from_nnx(model, "next_token")
>>> params["blocks"][1]["attn"]["query"]["kernel"].shape   # (width, heads, head_dim)
(16, 2, 8)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from slt_jax.types import Array

__all__ = ["DeepLinearNetwork", "MLP", "AttentionOnlyTransformer", "AttentionBlock"]


def _check_widths(widths, name: str, minimum: int = 2) -> list[int]:
    widths = list(widths)
    if len(widths) < minimum or any(isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 1 for w in widths):
        raise ValueError(f"{name}={widths!r} must be a list of at least {minimum} positive ints.")
    return [int(w) for w in widths]


class DeepLinearNetwork(nnx.Module):
    """x -> x @ K_1 @ ... @ K_L, no biases (docs/conventions.md §2, deep linear networks).

    Parameter layout (``from_nnx``): ``layers/{j}/kernel`` of shape ``(widths[j], widths[j+1])``
    for j = 0..L-1; ``K_j`` is the transpose of docs/conventions.md's ``W_{j+1}``.

    Args:
        widths: ``[H_1 (input), H_2, ..., H_{L+1} (output)]``.
        rngs: ``nnx.Rngs`` for the initial kernels (LeCun normal), ignored with ``kernels``.
        kernels: optional initial kernels ``[(H_1, H_2), ..., (H_L, H_{L+1})]`` (e.g. a teacher from
            ``slt_jax.tasks.dln_teacher``).
    """

    def __init__(self, widths: Sequence[int], *, rngs: nnx.Rngs, kernels: Sequence[Array] | None = None):
        widths = _check_widths(widths, "widths")
        self.widths = tuple(widths)
        self.layers = nnx.List(
            [nnx.Linear(widths[j], widths[j + 1], use_bias=False, rngs=rngs) for j in range(len(widths) - 1)]
        )
        if kernels is not None:
            kernels = list(kernels)
            if len(kernels) != len(self.layers):
                raise ValueError(f"kernels: got {len(kernels)} matrices for {len(self.layers)} layers.")
            for j, (layer, kernel) in enumerate(zip(self.layers, kernels)):
                if np.shape(kernel) != (widths[j], widths[j + 1]):
                    raise ValueError(f"kernels[{j}] has shape {np.shape(kernel)}; expected {(widths[j], widths[j + 1])}.")
                layer.kernel[...] = jnp.asarray(kernel, jnp.float32)

    def __call__(self, x: Array) -> Array:
        """``x``: ``(..., H_1)`` -> ``(..., H_{L+1})``."""
        for layer in self.layers:
            x = layer(x)
        return x

    def product(self) -> Array:
        """The end-to-end kernel ``K_1 @ ... @ K_L``, shape ``(H_1, H_{L+1})``."""
        result = self.layers[0].kernel[...]
        for layer in self.layers[1:]:
            result = result @ layer.kernel[...]
        return result


class MLP(nnx.Module):
    """A fully connected network with an activation between layers (none after the last).

    Parameter layout: ``layers/{j}/kernel`` ``(sizes[j], sizes[j+1])`` and ``layers/{j}/bias``
    ``(sizes[j+1],)`` with ``sizes = [in_features, *hidden_features, out_features]``.

    Args:
        in_features, hidden_features, out_features: layer sizes.
        activation: elementwise nonlinearity (default ``nnx.relu``).
        use_bias: whether layers have biases.
        rngs: ``nnx.Rngs``.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: Sequence[int],
        out_features: int,
        *,
        activation: Callable[[Array], Array] = nnx.relu,
        use_bias: bool = True,
        rngs: nnx.Rngs,
    ):
        sizes = _check_widths([in_features, *hidden_features, out_features], "layer sizes")
        self.activation = activation
        self.layers = nnx.List(
            [nnx.Linear(sizes[j], sizes[j + 1], use_bias=use_bias, rngs=rngs) for j in range(len(sizes) - 1)]
        )

    def __call__(self, x: Array) -> Array:
        """``x``: ``(..., in_features)`` -> ``(..., out_features)``."""
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        return self.layers[-1](x)


class AttentionBlock(nnx.Module):
    """Residual causal self-attention: ``h + attn(norm(h))`` (norm optional)."""

    def __init__(self, width: int, num_heads: int, head_dim: int, *, layer_norm: bool, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(width, rngs=rngs) if layer_norm else None
        self.attn = nnx.MultiHeadAttention(
            num_heads=num_heads,
            in_features=width,
            qkv_features=num_heads * head_dim,
            out_features=width,
            decode=False,
            rngs=rngs,
        )

    def __call__(self, h: Array, mask: Array) -> Array:
        x = self.norm(h) if self.norm is not None else h
        return h + self.attn(x, mask=mask)


class AttentionOnlyTransformer(nnx.Module):
    """A small attention-only decoder (no MLPs), the standard induction-head testbed.

    ``tokens (batch, seq) -> logits (batch, seq, vocab_size)`` with learned token and position
    embeddings, ``num_layers`` residual causal attention blocks and a linear unembedding.

    Parameter layout (``from_nnx``):

    * ``embed/embedding`` ``(vocab_size, width)``; ``position/embedding`` ``(context_length, width)``
    * ``blocks/{l}/attn/{query,key,value}/kernel`` ``(width, num_heads, head_dim)`` and
      ``.../bias`` ``(num_heads, head_dim)``; ``blocks/{l}/attn/out/kernel``
      ``(num_heads, head_dim, width)`` and ``out/bias`` ``(width,)``; head h of layer l is
      ``slt_jax.head_mask(params, f"blocks/{l}/attn", h)``
    * with ``layer_norm=True``: ``blocks/{l}/norm/{scale,bias}`` ``(width,)``
    * ``unembed/kernel`` ``(width, vocab_size)``, ``unembed/bias`` ``(vocab_size,)``

    Args:
        vocab_size: number of token ids.
        context_length: maximum sequence length.
        num_layers, num_heads: depth and heads per layer.
        width: residual stream width d_model.
        head_dim: per-head width (default ``width // num_heads``).
        layer_norm: pre-attention LayerNorm in each block.
        rngs: ``nnx.Rngs``.
    """

    def __init__(
        self,
        vocab_size: int,
        context_length: int,
        num_layers: int,
        num_heads: int,
        width: int,
        *,
        head_dim: int | None = None,
        layer_norm: bool = False,
        rngs: nnx.Rngs,
    ):
        _check_widths([vocab_size, context_length, num_layers, num_heads, width], "vocab_size, context_length, num_layers, num_heads, width", 5)
        if head_dim is None:
            if width % num_heads:
                raise ValueError(f"width={width} is not divisible by num_heads={num_heads}; pass head_dim explicitly.")
            head_dim = width // num_heads
        self.vocab_size = vocab_size
        self.context_length = context_length
        self.embed = nnx.Embed(vocab_size, width, rngs=rngs)
        self.position = nnx.Embed(context_length, width, rngs=rngs)
        self.blocks = nnx.List(
            [AttentionBlock(width, num_heads, head_dim, layer_norm=layer_norm, rngs=rngs) for _ in range(num_layers)]
        )
        self.unembed = nnx.Linear(width, vocab_size, rngs=rngs)

    def __call__(self, tokens: Array) -> Array:
        """``tokens``: int ``(batch, seq)`` with seq <= context_length -> logits ``(batch, seq, vocab)``."""
        if tokens.ndim != 2 or tokens.shape[1] > self.context_length:
            raise ValueError(
                f"tokens must have shape (batch, seq) with seq <= context_length={self.context_length}, got {tokens.shape}."
            )
        seq = tokens.shape[1]
        h = self.embed(tokens) + self.position(jnp.arange(seq))[None]
        mask = nnx.make_causal_mask(jnp.ones(tokens.shape, jnp.int32))
        for block in self.blocks:
            h = block(h, mask)
        return self.unembed(h)

    def attention_paths(self) -> list[str]:
        """``["blocks/0/attn", ...]``, the ``attention_path`` of each layer for ``head_mask``."""
        return [f"blocks/{layer}/attn" for layer in range(len(self.blocks))]
