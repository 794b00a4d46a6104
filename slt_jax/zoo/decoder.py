"""One decoder-only transformer in the zoo's layout, for the architectures of public checkpoints.

``Decoder(spec, params)`` is a Flax NNX module built from arrays (no random initialisation): the
GPT-2 and GPT-NeoX (Pythia) checkpoints that ``slt_jax.zoo.pretrained.from_pretrained`` reads are both
instances, told apart by their ``DecoderSpec`` (learned or rotary positions, sequential or parallel
residual, tied or untied unembedding, the MLP's activation). Its parameter layout is
``TransformerLM``'s, so ``slt_jax.head_mask`` and ``slt_jax.mlp_mask`` select a head or an MLP of a
loaded checkpoint as they do in the zoo:

* ``embed/embedding`` ``(vocab_size, width)``; learned positions only: ``position/embedding``
  ``(context_length, width)``
* ``blocks/{l}/attn_norm/{scale,bias}`` and ``blocks/{l}/mlp_norm/{scale,bias}`` ``(width,)``
* ``blocks/{l}/attn/{query,key,value}/kernel`` ``(width, num_heads, head_dim)`` and ``.../bias``
  ``(num_heads, head_dim)`` (with ``attention_bias``); ``blocks/{l}/attn/out/kernel``
  ``(num_heads, head_dim, width)`` and ``out/bias`` ``(width,)``. Head h of layer l is
  ``head_mask(params, f"blocks/{l}/attn", h)``: its query, key and value slices ``[:, h, :]`` and its
  rows ``[h]`` of the output projection.
* ``blocks/{l}/mlp/hidden/kernel`` ``(width, mlp_width)``, ``.../bias`` ``(mlp_width,)``,
  ``blocks/{l}/mlp/out/kernel`` ``(mlp_width, width)``, ``.../bias`` ``(width,)``
  (``mlp_mask(params, f"blocks/{l}/mlp")``)
* ``final_norm/{scale,bias}`` ``(width,)``; untied only: ``unembed/kernel`` ``(width, vocab_size)``

>>> import numpy as np, jax.numpy as jnp
>>> spec = DecoderSpec(vocab_size=11, context_length=8, width=8, num_layers=1, num_heads=2, mlp_width=16,
...                    positions="rotary", rotary_dims=2, parallel_residual=True, tie_embeddings=False)
>>> shapes = parameter_shapes(spec)
>>> shapes["blocks"][0]["attn"]["query"]["kernel"]          # (width, heads, head_dim)
(8, 2, 4)
>>> rng = np.random.default_rng(0)
>>> params = jax.tree.map(lambda s: 0.1 * rng.standard_normal(s), shapes, is_leaf=lambda x: isinstance(x, tuple))
>>> Decoder(spec, params)(jnp.zeros((3, 5), jnp.int32)).shape
(3, 5, 11)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from slt_jax.types import Array

__all__ = ["DecoderSpec", "Decoder", "parameter_shapes", "apply_blocks", "ACTIVATIONS"]

ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # erf form (torch.nn.functional.gelu)
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),  # tanh form (GPT-2)
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}
"""The MLP activations a checkpoint may name (Hugging Face ``activation_function`` / ``hidden_act``)."""


def apply_blocks(blocks, h: Array, *args, remat: bool = False) -> Array:
    """``h = block(h, *args)`` for each block in turn: the residual stream through a stack of blocks.

    With ``remat=True`` the gradient keeps only each block's input ``h`` ``(batch, seq, width)`` and
    recomputes the block's inner activations (attention scores ``(batch, heads, seq, seq)``, the MLP's
    ``(batch, seq, mlp_width)``) when the backward pass reaches it, for about one more forward pass.
    Blocks of one structure run as a ``lax.scan`` of a ``jax.checkpoint``-ed block over their stacked
    states: the loop makes XLA recompute and free one block at a time (unrolled checkpointed blocks
    save nothing under XLA's default CPU scheduler, which runs every recomputation early). Blocks
    that differ in a static setting (e.g. a per-layer attention scale) run unrolled under
    ``nnx.remat``. The values are the same either way.
    """
    if not remat:
        for block in blocks:
            h = block(h, *args)
        return h
    graphdefs, states = zip(*(nnx.split(block) for block in blocks))
    if any(graphdef != graphdefs[0] for graphdef in graphdefs[1:]):
        call = nnx.remat(lambda block, h, *args: block(h, *args))
        for block in blocks:
            h = call(block, h, *args)
        return h
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)  # one copy of the blocks' arrays, (L, ...)
    body = jax.checkpoint(lambda h, state: (nnx.merge(graphdefs[0], state)(h, *args), None))
    return jax.lax.scan(body, h, stacked)[0]


class DecoderSpec(NamedTuple):
    """The architecture of a ``Decoder``: everything but the weights.

    Attributes:
        vocab_size, context_length, width, num_layers, num_heads, mlp_width: sizes
            (``head_dim = width // num_heads``).
        positions: ``"learned"`` (a position embedding added to the tokens', GPT-2) or ``"rotary"``
            (rotary embeddings on the first ``rotary_dims`` of each query and key head, GPT-NeoX).
        rotary_dims: rotated dimensions per head (even, at most ``head_dim``); 0 with learned positions.
        rotary_base: the rotary frequencies' base θ (frequencies θ^(-2i / rotary_dims)).
        parallel_residual: ``h + attn(ln1(h)) + mlp(ln2(h))`` (GPT-NeoX's default) instead of
            ``h' = h + attn(ln1(h)); h' + mlp(ln2(h'))``.
        tie_embeddings: unembed with the token embedding's transpose (GPT-2) instead of
            ``unembed/kernel``.
        activation: a key of ``ACTIVATIONS``.
        layer_norm_eps: the LayerNorms' ε.
        attention_bias: whether the q/k/v and out projections have biases.
        attention_scales: the factor multiplying q·k in each layer (default ``head_dim ** -0.5``).
    """

    vocab_size: int
    context_length: int
    width: int
    num_layers: int
    num_heads: int
    mlp_width: int
    positions: str = "learned"
    rotary_dims: int = 0
    rotary_base: float = 10000.0
    parallel_residual: bool = False
    tie_embeddings: bool = True
    activation: str = "gelu_new"
    layer_norm_eps: float = 1e-5
    attention_bias: bool = True
    attention_scales: tuple[float, ...] | None = None

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    def scales(self) -> tuple[float, ...]:
        """The q·k factor of every layer, ``(num_layers,)``."""
        if self.attention_scales is None:
            return (float(self.head_dim) ** -0.5,) * self.num_layers
        return tuple(float(s) for s in self.attention_scales)


def check_spec(spec: DecoderSpec) -> DecoderSpec:
    """Raises ``ValueError`` naming the field for a spec no ``Decoder`` can have."""
    sizes = ("vocab_size", "context_length", "width", "num_layers", "num_heads", "mlp_width")
    for name in sizes:
        value = getattr(spec, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive int.")
    if spec.width % spec.num_heads:
        raise ValueError(f"width={spec.width} is not divisible by num_heads={spec.num_heads}.")
    if spec.positions not in ("learned", "rotary"):
        raise ValueError(f"positions={spec.positions!r}: use 'learned' or 'rotary'.")
    if spec.positions == "rotary" and not (0 <= spec.rotary_dims <= spec.head_dim and spec.rotary_dims % 2 == 0):
        raise ValueError(
            f"rotary_dims={spec.rotary_dims} must be even and at most head_dim={spec.head_dim} (the rotary "
            "fraction times head_dim, rounded down, must be even)."
        )
    if spec.activation not in ACTIVATIONS:
        raise ValueError(f"activation={spec.activation!r} is not supported; use one of {sorted(ACTIVATIONS)}.")
    if len(spec.scales()) != spec.num_layers:
        raise ValueError(f"attention_scales has {len(spec.scales())} entries for num_layers={spec.num_layers}.")
    return spec


def parameter_shapes(spec: DecoderSpec) -> dict:
    """The shape of every parameter, as a nested dict with the ``from_nnx`` layout (tuples as leaves)."""
    d, h, k, m = spec.width, spec.num_heads, spec.head_dim, spec.mlp_width
    norm = {"scale": (d,), "bias": (d,)}
    projection = {"kernel": (d, h, k), **({"bias": (h, k)} if spec.attention_bias else {})}
    attention = {name: dict(projection) for name in ("query", "key", "value")}
    attention["out"] = {"kernel": (h, k, d), **({"bias": (d,)} if spec.attention_bias else {})}
    block = {"attn_norm": dict(norm), "attn": attention, "mlp_norm": dict(norm),
             "mlp": {"hidden": {"kernel": (d, m), "bias": (m,)}, "out": {"kernel": (m, d), "bias": (d,)}}}
    shapes = {"embed": {"embedding": (spec.vocab_size, d)}}
    if spec.positions == "learned":
        shapes["position"] = {"embedding": (spec.context_length, d)}
    shapes["blocks"] = [block for _ in range(spec.num_layers)]
    shapes["final_norm"] = dict(norm)
    if not spec.tie_embeddings:
        shapes["unembed"] = {"kernel": (d, spec.vocab_size)}
    return shapes


def _last_axis(vector: Array, ndim: int) -> Array:
    """``vector`` ``(n,)`` shaped ``(1, ..., 1, n)`` to broadcast against an ``ndim`` array (no rank promotion)."""
    return vector.reshape((1,) * (ndim - 1) + (-1,))


class _Param(nnx.Module):
    """A group of named parameters (a Linear, a LayerNorm, an embedding) built from arrays."""

    def __init__(self, arrays: Mapping[str, Array], dtype):
        for name, array in arrays.items():
            setattr(self, name, nnx.Param(jnp.asarray(array, dtype)))


class LayerNorm(_Param):
    """``(x - mean) / sqrt(var + eps) * scale + bias`` over the last axis (biased variance, as torch)."""

    def __init__(self, arrays, eps: float, dtype):
        super().__init__(arrays, dtype)
        self.eps = eps

    def __call__(self, x: Array) -> Array:
        mean = jnp.mean(x, axis=-1, keepdims=True)
        centred = x - mean
        variance = jnp.mean(centred * centred, axis=-1, keepdims=True)
        normed = centred * jax.lax.rsqrt(variance + self.eps)
        return normed * _last_axis(self.scale[...], x.ndim) + _last_axis(self.bias[...], x.ndim)


class _Dense(_Param):
    """``x @ kernel + bias`` over the last axis; ``kernel`` ``(in, out)``."""

    def __call__(self, x: Array) -> Array:
        y = x @ self.kernel[...]
        return y + _last_axis(self.bias[...], y.ndim) if hasattr(self, "bias") else y


def _rotate(x: Array, rotary_dims: int, base: float) -> Array:
    """Rotary position embedding of the first ``rotary_dims`` of ``x`` ``(batch, seq, heads, head_dim)``
    (the half-split pairing of GPT-NeoX: dimension i rotates with i + rotary_dims / 2)."""
    if rotary_dims == 0:
        return x
    seq = x.shape[1]
    inverse_frequency = 1.0 / (base ** (jnp.arange(0, rotary_dims, 2, dtype=jnp.float32) / rotary_dims))
    angles = jnp.arange(seq, dtype=jnp.float32)[:, None] * inverse_frequency[None, :]
    angles = jnp.concatenate([angles, angles], axis=-1)[None, :, None, :]  # (1, seq, 1, rotary_dims)
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    rotated, passed = x[..., :rotary_dims], x[..., rotary_dims:]
    first, second = rotated[..., : rotary_dims // 2], rotated[..., rotary_dims // 2:]
    turned = jnp.concatenate([-second, first], axis=-1)
    return jnp.concatenate([rotated * cos + turned * sin, passed], axis=-1)


class SelfAttention(nnx.Module):
    """Causal multi-head self-attention with heads as a kernel axis (``query``/``key``/``value``/``out``)."""

    def __init__(self, arrays: Mapping, spec: DecoderSpec, scale: float, dtype):
        self.query, self.key, self.value, self.out = (_Param(arrays[name], dtype) for name in ("query", "key", "value", "out"))
        self.scale = scale
        self.rotary_dims = spec.rotary_dims if spec.positions == "rotary" else 0
        self.rotary_base = float(spec.rotary_base)

    @staticmethod
    def _project(x: Array, projection: _Param) -> Array:
        y = jnp.einsum("bsi,ihd->bshd", x, projection.kernel[...])
        return y + projection.bias[...][None, None] if hasattr(projection, "bias") else y

    def __call__(self, x: Array) -> Array:
        """``x``: ``(batch, seq, width)`` -> ``(batch, seq, width)``."""
        query = _rotate(self._project(x, self.query), self.rotary_dims, self.rotary_base)
        key = _rotate(self._project(x, self.key), self.rotary_dims, self.rotary_base)
        value = self._project(x, self.value)
        scores = jnp.einsum("bqhd,bkhd->bhqk", query, key) * self.scale
        seq = x.shape[1]
        causal = jnp.tril(jnp.ones((seq, seq), bool))[None, None]
        scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
        weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(value.dtype)
        mixed = jnp.einsum("bhqk,bkhd->bqhd", weights, value)
        y = jnp.einsum("bshd,hdo->bso", mixed, self.out.kernel[...])
        return y + _last_axis(self.out.bias[...], y.ndim) if hasattr(self.out, "bias") else y


class FeedForward(nnx.Module):
    """``out(activation(hidden(x)))``; hidden neuron j is ``hidden/kernel[:, j]``, ``hidden/bias[j]``,
    ``out/kernel[j, :]``."""

    def __init__(self, arrays: Mapping, activation: str, dtype):
        self.hidden = _Dense(arrays["hidden"], dtype)
        self.out = _Dense(arrays["out"], dtype)
        self.activation = activation

    def __call__(self, x: Array) -> Array:
        return self.out(ACTIVATIONS[self.activation](self.hidden(x)))


class DecoderBlock(nnx.Module):
    """A pre-LayerNorm block, sequential (GPT-2) or parallel (GPT-NeoX) residual."""

    def __init__(self, arrays: Mapping, spec: DecoderSpec, scale: float, dtype):
        self.attn_norm = LayerNorm(arrays["attn_norm"], spec.layer_norm_eps, dtype)
        self.attn = SelfAttention(arrays["attn"], spec, scale, dtype)
        self.mlp_norm = LayerNorm(arrays["mlp_norm"], spec.layer_norm_eps, dtype)
        self.mlp = FeedForward(arrays["mlp"], spec.activation, dtype)
        self.parallel_residual = spec.parallel_residual

    def __call__(self, h: Array) -> Array:
        """``h``: ``(batch, seq, width)`` -> ``(batch, seq, width)``."""
        attended = self.attn(self.attn_norm(h))
        if self.parallel_residual:
            return h + attended + self.mlp(self.mlp_norm(h))
        h = h + attended
        return h + self.mlp(self.mlp_norm(h))


def _check_arrays(spec: DecoderSpec, params: Mapping) -> None:
    expected = parameter_shapes(spec)
    is_shape = lambda x: isinstance(x, tuple)
    paths = {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): shape
             for path, shape in jax.tree_util.tree_flatten_with_path(expected, is_leaf=is_shape)[0]}
    given = {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): np.shape(leaf)
             for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    missing = sorted(set(paths) - set(given))
    if missing:
        raise ValueError(f"params lacks {missing[:6]}{' ...' if len(missing) > 6 else ''}; see parameter_shapes(spec).")
    for path, shape in paths.items():
        if tuple(given[path]) != shape:
            raise ValueError(f"params[{path!r}] has shape {given[path]}; the spec needs {shape}.")


class Decoder(nnx.Module):
    """A GPT-style decoder built from arrays: ``tokens (batch, seq) -> logits (batch, seq, vocab_size)``.

    Args:
        spec: the architecture (``DecoderSpec``).
        params: a nested dict of arrays with the layout of ``parameter_shapes(spec)`` (module docstring).
        dtype: the parameters' (and the computation's) dtype; softmax runs in float32.

    ``remat`` (False) rematerialises the blocks (``apply_blocks``); ``slt_jax.from_nnx(model, loss,
    remat=True)`` sets it on the loss's view of the model.

    Raises:
        ValueError: a bad spec, or an array missing or of the wrong shape (named by its path).
    """

    def __init__(self, spec: DecoderSpec, params: Mapping, *, dtype=jnp.float32):
        self.spec = check_spec(spec)
        _check_arrays(spec, params)
        self.vocab_size = spec.vocab_size
        self.context_length = spec.context_length
        self.embed = _Param(params["embed"], dtype)
        self.position = _Param(params["position"], dtype) if spec.positions == "learned" else None
        scales = spec.scales()
        self.blocks = nnx.List([DecoderBlock(params["blocks"][layer], spec, scales[layer], dtype)
                                for layer in range(spec.num_layers)])
        self.final_norm = LayerNorm(params["final_norm"], spec.layer_norm_eps, dtype)
        self.unembed = None if spec.tie_embeddings else _Param(params["unembed"], dtype)
        self.remat = False  # per-block rematerialisation; set by slt_jax.from_nnx(model, loss, remat=True)

    def __call__(self, tokens: Array) -> Array:
        """``tokens``: int ``(batch, seq)`` with seq <= context_length -> logits ``(batch, seq, vocab)``."""
        if tokens.ndim != 2 or tokens.shape[1] > self.context_length:
            raise ValueError(
                f"tokens must have shape (batch, seq) with seq <= context_length={self.context_length}, got "
                f"{tokens.shape}; cut the text into rows with slt_jax.zoo.pretrained.token_batches."
            )
        h = jnp.take(self.embed.embedding[...], tokens, axis=0)
        if self.position is not None:
            h = h + self.position.embedding[...][: tokens.shape[1]][None]
        h = self.final_norm(apply_blocks(self.blocks, h, remat=self.remat))
        kernel = self.embed.embedding[...].T if self.unembed is None else self.unembed.kernel[...]
        return h @ kernel

    def attention_paths(self) -> list[str]:
        """``["blocks/0/attn", ...]``, the ``attention_path`` of each layer for ``head_mask``."""
        return [f"blocks/{layer}/attn" for layer in range(len(self.blocks))]

    def mlp_paths(self) -> list[str]:
        """``["blocks/0/mlp", ...]``, the ``mlp_path`` of each layer for ``mlp_mask``."""
        return [f"blocks/{layer}/mlp" for layer in range(len(self.blocks))]
