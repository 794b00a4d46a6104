"""Tests for slt_jax.models: documented parameter layouts and forward semantics."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import slt_jax as sj

_apply = nnx.jit(lambda model, x: model(x))


def test_deep_linear_network_layout_and_product():
    kernels = sj.tasks.dln_teacher(0, [4, 3, 2], rank=1)
    model = sj.models.DeepLinearNetwork([4, 3, 2], kernels=kernels, rngs=nnx.Rngs(0))
    params, _ = sj.from_nnx(model, "mse")
    chex.assert_trees_all_equal_shapes(params, {"layers": {0: {"kernel": jnp.zeros((4, 3))}, 1: {"kernel": jnp.zeros((3, 2))}}})
    np.testing.assert_allclose(model.product(), kernels[0] @ kernels[1], rtol=1e-5, atol=1e-6)
    x = jnp.ones((5, 4))
    np.testing.assert_allclose(_apply(model, x), x @ model.product(), rtol=1e-5, atol=1e-6)
    assert sj.theory.matrix_rank(model.product(), rtol=1e-5) == 1
    with pytest.raises(ValueError, match="kernels\\[1\\]"):
        sj.models.DeepLinearNetwork([4, 3, 2], kernels=[kernels[0], kernels[0]], rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="widths"):
        sj.models.DeepLinearNetwork([4], rngs=nnx.Rngs(0))


def test_mlp_layout_and_forward():
    model = sj.models.MLP(3, [5, 4], 2, rngs=nnx.Rngs(0))
    params, _ = sj.from_nnx(model, "mse")
    shapes = jax.tree.map(jnp.shape, params)
    assert shapes == {
        "layers": {
            0: {"kernel": (3, 5), "bias": (5,)},
            1: {"kernel": (5, 4), "bias": (4,)},
            2: {"kernel": (4, 2), "bias": (2,)},
        }
    }
    x = jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)
    expected = x
    for j in range(3):
        expected = expected @ params["layers"][j]["kernel"] + params["layers"][j]["bias"][None]
        expected = jax.nn.relu(expected) if j < 2 else expected
    np.testing.assert_allclose(_apply(model, x), expected, rtol=1e-5, atol=1e-6)


def test_transformer_layout_and_causality():
    vocab, context, width, heads = 7, 6, 12, 3
    model = sj.models.AttentionOnlyTransformer(vocab, context, 2, heads, width, head_dim=2, layer_norm=True, rngs=nnx.Rngs(0))
    params, _ = sj.from_nnx(model, "next_token")
    shapes = jax.tree.map(jnp.shape, params)
    assert shapes["embed"] == {"embedding": (vocab, width)}
    assert shapes["position"] == {"embedding": (context, width)}
    assert shapes["unembed"] == {"kernel": (width, vocab), "bias": (vocab,)}
    for layer in range(2):
        block = shapes["blocks"][layer]
        assert block["norm"] == {"scale": (width,), "bias": (width,)}
        for name in ("query", "key", "value"):
            assert block["attn"][name] == {"kernel": (width, heads, 2), "bias": (heads, 2)}
        assert block["attn"]["out"] == {"kernel": (heads, 2, width), "bias": (width,)}
    assert model.attention_paths() == ["blocks/0/attn", "blocks/1/attn"]

    tokens = jax.random.randint(jax.random.key(0), (2, context), 0, vocab)
    logits = _apply(model, tokens)
    chex.assert_shape(logits, (2, context, vocab))
    # Changing the token at position t leaves the logits at positions < t unchanged.
    changed = _apply(model, tokens.at[:, 4].set((tokens[:, 4] + 1) % vocab))
    np.testing.assert_allclose(changed[:, :4], logits[:, :4], rtol=1e-5, atol=1e-6)
    assert not np.allclose(changed[:, 4:], logits[:, 4:])
    chex.assert_shape(_apply(model, tokens[:, :3]), (2, 3, vocab))  # shorter contexts are fine
    with pytest.raises(ValueError, match="context_length"):
        model(jnp.zeros((1, context + 1), jnp.int32))
    with pytest.raises(ValueError, match="divisible"):
        sj.models.AttentionOnlyTransformer(vocab, context, 1, 5, width, rngs=nnx.Rngs(0))
