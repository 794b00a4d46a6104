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

The transformers with MLP blocks (``TransformerLM``, ``InContextRegressionTransformer``) share one
block layout, ``blocks/{l}/{attn_norm, attn, mlp_norm, mlp}``: head h of layer l is
``slt_jax.head_mask(params, f"blocks/{l}/attn", h)`` and the MLP of layer l (or some of its hidden
neurons) is ``slt_jax.mlp_mask(params, f"blocks/{l}/mlp")``; ``model.attention_paths()`` and
``model.mlp_paths()`` list those paths.

Every transformer here (and ``Decoder``) holds ``remat = False``; ``slt_jax.from_nnx(model, loss,
remat=True)`` turns it on in the loss's view of the model, so each block's activations are recomputed
in the backward pass instead of stored (``slt_jax.zoo.decoder.apply_blocks``): long contexts fit.

Public checkpoints: ``from_pretrained(path)`` reads a local Hugging Face GPT-2 or GPT-NeoX (Pythia)
folder into a ``Decoder`` with the same block layout, ``load_series(paths)`` several checkpoints of
one model, and ``token_batches`` / ``text_batches`` make their ``{"inputs": (n, seq)}`` batches
(``slt_jax.zoo.pretrained``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from slt_jax.types import Array
from slt_jax.zoo.decoder import Decoder, DecoderSpec, apply_blocks
from slt_jax.zoo.pretrained import Series, from_pretrained, load_series, text_batches, token_batches

__all__ = [
    "DeepLinearNetwork",
    "MLP",
    "AttentionOnlyTransformer",
    "AttentionBlock",
    "TransformerLM",
    "InContextRegressionTransformer",
    "TransformerBlock",
    "FeedForward",
    # public checkpoints (slt_jax.zoo.pretrained, slt_jax.zoo.decoder)
    "from_pretrained",
    "load_series",
    "Series",
    "token_batches",
    "text_batches",
    "Decoder",
    "DecoderSpec",
]


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
            ``slt_jax.zoo.tasks.dln_teacher``).
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


def _causal_attention(width: int, num_heads: int, head_dim: int, rngs: nnx.Rngs) -> nnx.MultiHeadAttention:
    """The attention layer every transformer here uses (the causal mask is passed at call time)."""
    return nnx.MultiHeadAttention(num_heads=num_heads, in_features=width, qkv_features=num_heads * head_dim,
                                  out_features=width, decode=False, rngs=rngs)


class AttentionBlock(nnx.Module):
    """Residual causal self-attention: ``h + attn(norm(h))`` (norm optional)."""

    def __init__(self, width: int, num_heads: int, head_dim: int, *, layer_norm: bool, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(width, rngs=rngs) if layer_norm else None
        self.attn = _causal_attention(width, num_heads, head_dim, rngs)

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
        self.remat = False  # per-block rematerialisation; set by slt_jax.from_nnx(model, loss, remat=True)

    def __call__(self, tokens: Array) -> Array:
        """``tokens``: int ``(batch, seq)`` with seq <= context_length -> logits ``(batch, seq, vocab)``."""
        if tokens.ndim != 2 or tokens.shape[1] > self.context_length:
            raise ValueError(
                f"tokens must have shape (batch, seq) with seq <= context_length={self.context_length}, got {tokens.shape}."
            )
        seq = tokens.shape[1]
        h = self.embed(tokens) + self.position(jnp.arange(seq))[None]
        mask = nnx.make_causal_mask(jnp.ones(tokens.shape, jnp.int32))
        h = apply_blocks(self.blocks, h, mask, remat=self.remat)
        return self.unembed(h)

    def attention_paths(self) -> list[str]:
        """``["blocks/0/attn", ...]``, the ``attention_path`` of each layer for ``head_mask``."""
        return [f"blocks/{layer}/attn" for layer in range(len(self.blocks))]


def _check_transformer_sizes(width: int, num_heads: int, head_dim: int | None, mlp_width: int | None) -> tuple[int, int]:
    if head_dim is None:
        if width % num_heads:
            raise ValueError(f"width={width} is not divisible by num_heads={num_heads}; pass head_dim explicitly.")
        head_dim = width // num_heads
    head_dim = _check_widths([head_dim], "head_dim", 1)[0]
    mlp_width = 4 * width if mlp_width is None else _check_widths([mlp_width], "mlp_width", 1)[0]
    return head_dim, mlp_width


class FeedForward(nnx.Module):
    """The MLP of a transformer block: ``out(gelu(hidden(x)))``.

    Parameter layout: ``hidden/kernel`` ``(width, mlp_width)``, ``hidden/bias`` ``(mlp_width,)``,
    ``out/kernel`` ``(mlp_width, width)``, ``out/bias`` ``(width,)``. Hidden neuron j is
    ``hidden/kernel[:, j]``, ``hidden/bias[j]`` and ``out/kernel[j, :]`` (``slt_jax.mlp_mask``).
    GELU is ``jax.nn.gelu`` with its default tanh approximation, as in GPT-2.
    """

    def __init__(self, width: int, mlp_width: int, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(width, mlp_width, rngs=rngs)
        self.out = nnx.Linear(mlp_width, width, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        """``x``: ``(..., width)`` -> ``(..., width)``."""
        return self.out(nnx.gelu(self.hidden(x)))


class TransformerBlock(nnx.Module):
    """A pre-LayerNorm decoder block: ``h + attn(attn_norm(h))``, then ``h + mlp(mlp_norm(h))``.

    Parameter layout: ``attn_norm/{scale,bias}`` and ``mlp_norm/{scale,bias}`` ``(width,)``; ``attn``
    as in ``AttentionOnlyTransformer`` (``nnx.MultiHeadAttention``); ``mlp`` a ``FeedForward``.
    """

    def __init__(self, width: int, num_heads: int, head_dim: int, mlp_width: int, *, rngs: nnx.Rngs):
        self.attn_norm = nnx.LayerNorm(width, rngs=rngs)
        self.attn = _causal_attention(width, num_heads, head_dim, rngs)
        self.mlp_norm = nnx.LayerNorm(width, rngs=rngs)
        self.mlp = FeedForward(width, mlp_width, rngs=rngs)

    def __call__(self, h: Array, mask: Array) -> Array:
        """``h``: ``(batch, seq, width)``, ``mask``: ``(batch, 1, seq, seq)`` -> ``(batch, seq, width)``."""
        h = h + self.attn(self.attn_norm(h), mask=mask)
        return h + self.mlp(self.mlp_norm(h))


def _decoder_paths(blocks, name: str) -> list[str]:
    return [f"blocks/{layer}/{name}" for layer in range(len(blocks))]


class TransformerLM(nnx.Module):
    """A small GPT-style decoder: pre-LayerNorm blocks of causal attention and a GELU MLP.

    ``tokens (batch, seq) -> logits (batch, seq, vocab_size)``: learned token and position
    embeddings, ``num_layers`` ``TransformerBlock`` s, a final LayerNorm and an unembedding that is
    untied by default (its own kernel and bias) or, with ``tie_embeddings=True``, the transpose of
    the token embedding (``logits = h @ embed.embedding.T``, no bias). No dropout.

    Parameter layout (``from_nnx``):

    * ``embed/embedding`` ``(vocab_size, width)``; ``position/embedding`` ``(context_length, width)``
    * ``blocks/{l}/attn_norm/{scale,bias}`` and ``blocks/{l}/mlp_norm/{scale,bias}`` ``(width,)``
    * ``blocks/{l}/attn/{query,key,value}/kernel`` ``(width, num_heads, head_dim)``, ``.../bias``
      ``(num_heads, head_dim)``, ``blocks/{l}/attn/out/kernel`` ``(num_heads, head_dim, width)``,
      ``out/bias`` ``(width,)``; head h of layer l is ``slt_jax.head_mask(params, f"blocks/{l}/attn", h)``
    * ``blocks/{l}/mlp/hidden/kernel`` ``(width, mlp_width)``, ``.../hidden/bias`` ``(mlp_width,)``,
      ``blocks/{l}/mlp/out/kernel`` ``(mlp_width, width)``, ``.../out/bias`` ``(width,)``; the MLP of
      layer l is ``slt_jax.mlp_mask(params, f"blocks/{l}/mlp")``
    * ``final_norm/{scale,bias}`` ``(width,)``
    * untied only: ``unembed/kernel`` ``(width, vocab_size)``, ``unembed/bias`` ``(vocab_size,)``

    Args:
        vocab_size: number of token ids.
        context_length: maximum sequence length.
        num_layers, num_heads: depth and heads per layer.
        width: residual stream width d_model.
        mlp_width: hidden width of each MLP (default ``4 * width``).
        head_dim: per-head width (default ``width // num_heads``).
        tie_embeddings: unembed with the token embedding's transpose instead of a separate layer.
        rngs: ``nnx.Rngs``.

    >>> from flax import nnx
    >>> import jax.numpy as jnp, slt_jax as sj
    >>> model = sj.models.TransformerLM(vocab_size=8, context_length=6, num_layers=2, num_heads=2,
    ...                                 width=16, mlp_width=32, rngs=nnx.Rngs(0))
    >>> model(jnp.zeros((3, 5), jnp.int32)).shape
    (3, 5, 8)
    >>> model.mlp_paths()
    ['blocks/0/mlp', 'blocks/1/mlp']
    """

    def __init__(
        self,
        vocab_size: int,
        context_length: int,
        num_layers: int,
        num_heads: int,
        width: int,
        *,
        mlp_width: int | None = None,
        head_dim: int | None = None,
        tie_embeddings: bool = False,
        rngs: nnx.Rngs,
    ):
        _check_widths([vocab_size, context_length, num_layers, num_heads, width], "vocab_size, context_length, num_layers, num_heads, width", 5)
        head_dim, mlp_width = _check_transformer_sizes(width, num_heads, head_dim, mlp_width)
        if not isinstance(tie_embeddings, bool):
            raise TypeError(f"tie_embeddings={tie_embeddings!r} must be True or False.")
        self.vocab_size = vocab_size
        self.context_length = context_length
        self.tie_embeddings = tie_embeddings
        self.embed = nnx.Embed(vocab_size, width, rngs=rngs)
        self.position = nnx.Embed(context_length, width, rngs=rngs)
        self.blocks = nnx.List([TransformerBlock(width, num_heads, head_dim, mlp_width, rngs=rngs) for _ in range(num_layers)])
        self.final_norm = nnx.LayerNorm(width, rngs=rngs)
        self.unembed = None if tie_embeddings else nnx.Linear(width, vocab_size, rngs=rngs)
        self.remat = False  # per-block rematerialisation; set by slt_jax.from_nnx(model, loss, remat=True)

    def __call__(self, tokens: Array) -> Array:
        """``tokens``: int ``(batch, seq)`` with seq <= context_length -> logits ``(batch, seq, vocab)``."""
        if tokens.ndim != 2 or tokens.shape[1] > self.context_length:
            raise ValueError(
                f"tokens must have shape (batch, seq) with seq <= context_length={self.context_length}, got {tokens.shape}."
            )
        h = self.embed(tokens) + self.position(jnp.arange(tokens.shape[1]))[None]
        mask = nnx.make_causal_mask(jnp.ones(tokens.shape, jnp.int32))
        h = apply_blocks(self.blocks, h, mask, remat=self.remat)
        h = self.final_norm(h)
        return self.embed.attend(h) if self.unembed is None else self.unembed(h)

    def attention_paths(self) -> list[str]:
        """``["blocks/0/attn", ...]``, the ``attention_path`` of each layer for ``head_mask``."""
        return _decoder_paths(self.blocks, "attn")

    def mlp_paths(self) -> list[str]:
        """``["blocks/0/mlp", ...]``, the ``mlp_path`` of each layer for ``mlp_mask``."""
        return _decoder_paths(self.blocks, "mlp")


class InContextRegressionTransformer(nnx.Module):
    """The in-context linear regression transformer (Garg et al. 2022; Raventós et al. 2023).

    Reads the token layout of ``slt_jax.zoo.tasks.in_context_regression``, ``(batch, 2K, d + 1)`` with
    token 2k = ``(0, x_k)`` and token 2k + 1 = ``(y_k, 0, ..., 0)``, and predicts y_k at each x-token
    (position 2k, which sees the pairs before k and x_k, never y_k): a linear token projection plus a
    learned position embedding, ``num_layers`` pre-LayerNorm ``TransformerBlock`` s with causal
    attention, a final LayerNorm and a scalar readout. ``from_nnx(model, "mse")`` against the task's
    ``"targets"`` ``(batch, K)`` gives the per-sequence loss ``0.5 * sum_k (y_k - ŷ_k)²``; compare with
    ``slt_jax.zoo.tasks.ridge_predictions`` and ``slt_jax.zoo.tasks.dmmse_predictions``.

    Parameter layout (``from_nnx``):

    * ``embed/kernel`` ``(dim + 1, width)``, ``embed/bias`` ``(width,)``;
      ``position/embedding`` ``(2 * num_context, width)``
    * ``blocks/{l}/...`` as in ``TransformerLM`` (``head_mask``, ``mlp_mask``, ``attention_paths()``,
      ``mlp_paths()`` alike)
    * ``final_norm/{scale,bias}`` ``(width,)``; ``readout/kernel`` ``(width, 1)``, ``readout/bias`` ``(1,)``

    Args:
        dim: d, the input dimension of the regression (tokens have width d + 1).
        num_context: K, the most (x, y) pairs per sequence (``2 * num_context`` tokens).
        num_layers, num_heads: depth and heads per layer.
        width: residual stream width.
        mlp_width: hidden width of each MLP (default ``4 * width``).
        head_dim: per-head width (default ``width // num_heads``).
        rngs: ``nnx.Rngs``.

    >>> from flax import nnx
    >>> import jax.numpy as jnp, slt_jax as sj
    >>> model = sj.models.InContextRegressionTransformer(dim=3, num_context=5, num_layers=1, num_heads=2,
    ...                                                  width=16, rngs=nnx.Rngs(0))
    >>> model(jnp.zeros((4, 10, 4))).shape   # (batch, K): y_k predicted at token 2k
    (4, 5)
    """

    def __init__(
        self,
        dim: int,
        num_context: int,
        num_layers: int,
        num_heads: int,
        width: int,
        *,
        mlp_width: int | None = None,
        head_dim: int | None = None,
        rngs: nnx.Rngs,
    ):
        _check_widths([dim, num_context, num_layers, num_heads, width], "dim, num_context, num_layers, num_heads, width", 5)
        head_dim, mlp_width = _check_transformer_sizes(width, num_heads, head_dim, mlp_width)
        self.dim = dim
        self.num_context = num_context
        self.embed = nnx.Linear(dim + 1, width, rngs=rngs)
        self.position = nnx.Embed(2 * num_context, width, rngs=rngs)
        self.blocks = nnx.List([TransformerBlock(width, num_heads, head_dim, mlp_width, rngs=rngs) for _ in range(num_layers)])
        self.final_norm = nnx.LayerNorm(width, rngs=rngs)
        self.readout = nnx.Linear(width, 1, rngs=rngs)
        self.remat = False  # per-block rematerialisation; set by slt_jax.from_nnx(model, loss, remat=True)

    def __call__(self, tokens: Array) -> Array:
        """``tokens``: ``(batch, seq, dim + 1)`` with seq <= 2 * num_context -> ``(batch, ceil(seq / 2))``,
        the prediction of y_k at token 2k."""
        if tokens.ndim != 3 or tokens.shape[1] > 2 * self.num_context or tokens.shape[2] != self.dim + 1:
            raise ValueError(
                f"tokens must have shape (batch, seq, dim + 1 = {self.dim + 1}) with seq <= 2 * num_context = "
                f"{2 * self.num_context}, got {tokens.shape}; build them with slt_jax.zoo.tasks.in_context_regression."
            )
        h = self.embed(tokens) + self.position(jnp.arange(tokens.shape[1]))[None]
        mask = nnx.make_causal_mask(jnp.ones(tokens.shape[:2], jnp.int32))
        h = apply_blocks(self.blocks, h, mask, remat=self.remat)
        return self.readout(self.final_norm(h[:, 0::2]))[..., 0]

    def attention_paths(self) -> list[str]:
        """``["blocks/0/attn", ...]``, the ``attention_path`` of each layer for ``head_mask``."""
        return _decoder_paths(self.blocks, "attn")

    def mlp_paths(self) -> list[str]:
        """``["blocks/0/mlp", ...]``, the ``mlp_path`` of each layer for ``mlp_mask``."""
        return _decoder_paths(self.blocks, "mlp")


def _show_constructor_signature(cls: type) -> type:
    # nnx.Module's metaclass wraps construction in ``__call__(*args, **kwargs)``, which is what
    # ``help()`` and ``inspect.signature`` would show; point them at the real constructor.
    signature = inspect.signature(cls.__init__)
    cls.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1:])
    return cls


for _cls in (DeepLinearNetwork, MLP, AttentionBlock, AttentionOnlyTransformer, FeedForward, TransformerBlock, TransformerLM,
             InContextRegressionTransformer):
    _show_constructor_signature(_cls)
