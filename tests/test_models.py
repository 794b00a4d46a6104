"""Tests for slt_jax.zoo.models: documented parameter layouts and forward semantics."""

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


def _count(mask, params):
    return int(sum(np.broadcast_to(np.asarray(m), np.shape(p)).sum() for m, p in zip(jax.tree.leaves(mask), jax.tree.leaves(params))))


def test_transformer_lm_layout_causality_and_tied_embeddings():
    vocab, context, width, heads, mlp = 5, 8, 8, 2, 16
    model = sj.models.TransformerLM(vocab, context, 2, heads, width, mlp_width=mlp, head_dim=4, rngs=nnx.Rngs(0))
    params, _ = sj.from_nnx(model, "next_token")
    shapes = jax.tree.map(jnp.shape, params)
    assert sorted(shapes) == ["blocks", "embed", "final_norm", "position", "unembed"]
    assert shapes["unembed"] == {"kernel": (width, vocab), "bias": (vocab,)}
    assert shapes["final_norm"] == {"scale": (width,), "bias": (width,)}
    for layer in range(2):
        block = shapes["blocks"][layer]
        assert block["attn_norm"] == block["mlp_norm"] == {"scale": (width,), "bias": (width,)}
        for name in ("query", "key", "value"):
            assert block["attn"][name] == {"kernel": (width, heads, 4), "bias": (heads, 4)}
        assert block["attn"]["out"] == {"kernel": (heads, 4, width), "bias": (width,)}
        assert block["mlp"] == {"hidden": {"kernel": (width, mlp), "bias": (mlp,)}, "out": {"kernel": (mlp, width), "bias": (width,)}}
    assert model.attention_paths() == ["blocks/0/attn", "blocks/1/attn"]
    assert model.mlp_paths() == ["blocks/0/mlp", "blocks/1/mlp"]

    tokens = jax.random.randint(jax.random.key(0), (2, context), 0, vocab)
    both = _apply(model, jnp.concatenate([tokens, tokens.at[:, 3].set((tokens[:, 3] + 1) % vocab)]))
    logits, changed = both[:2], both[2:]
    chex.assert_shape(logits, (2, context, vocab))
    np.testing.assert_allclose(changed[:, :3], logits[:, :3], rtol=1e-5, atol=1e-6)
    assert not np.allclose(changed[:, 3:], logits[:, 3:])
    with pytest.raises(ValueError, match="context_length"):
        jax.eval_shape(model, jnp.zeros((1, context + 1), jnp.int32))

    tied = sj.models.TransformerLM(vocab, context, 1, heads, width, tie_embeddings=True, rngs=nnx.Rngs(0))
    tied_params, _ = sj.from_nnx(tied, "next_token")
    assert "unembed" not in tied_params
    assert tied_params["blocks"][0]["mlp"]["hidden"]["kernel"].shape == (width, 4 * width)  # default mlp_width
    # With the block outputs zeroed, tied logits are final_norm(embeddings) @ embedding.T.
    block = tied.blocks[0]
    for layer in (block.attn.out, block.mlp.out):
        layer.kernel[...] = jnp.zeros_like(layer.kernel[...])
        layer.bias[...] = jnp.zeros_like(layer.bias[...])
    expected = nnx.jit(lambda m, t: m.final_norm(m.embed(t) + m.position(jnp.arange(context))[None]) @ m.embed.embedding[...].T)
    np.testing.assert_allclose(_apply(tied, tokens), expected(tied, tokens), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="mlp_width"):
        sj.models.TransformerLM(vocab, context, 1, heads, width, mlp_width=0, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="tie_embeddings"):
        sj.models.TransformerLM(vocab, context, 1, heads, width, tie_embeddings="yes", rngs=nnx.Rngs(0))


def test_transformer_lm_masks_and_restricted_llc():
    vocab, width, heads, head_dim, mlp = 5, 8, 2, 4, 16
    model = sj.models.TransformerLM(vocab, 8, 2, heads, width, mlp_width=mlp, rngs=nnx.Rngs(0))
    params, loss_fn = sj.from_nnx(model, "next_token")
    total = _count(jax.tree.map(lambda p: np.asarray(True), params), params)
    head = sj.head_mask(params, "blocks/1/attn", 0)
    assert _count(head, params) == 3 * (width * head_dim + head_dim) + head_dim * width
    assert not any(np.any(m) for m in jax.tree.leaves(head["blocks"][0]))  # nothing outside layer 1's attention
    mlp_block = sj.mlp_mask(params, "blocks/0/mlp")
    assert _count(mlp_block, params) == width * mlp + mlp + mlp * width + width
    assert all(np.ndim(m) == 0 and bool(m) for m in jax.tree.leaves(mlp_block["blocks"][0]["mlp"]))  # whole leaves
    assert _count(mlp_block, params) == _count(sj.component_mask(params, "blocks/0/mlp"), params)
    neurons = sj.mlp_mask(params, "blocks/0/mlp", neurons=[2, 5])
    assert _count(neurons, params) == 2 * (width + 1 + width)
    every_component = sj.mask_union(
        *[sj.head_mask(params, path, h) for path in model.attention_paths() for h in range(heads)],
        *[sj.mlp_mask(params, path) for path in model.mlp_paths()],
    )
    # Heads and MLPs tile every block parameter except the norms and the shared attention out bias.
    covered = {
        path: float(np.mean(np.broadcast_to(np.asarray(m), np.shape(p))))
        for path, m, p in zip(sj.masks.leaf_paths(params), jax.tree.leaves(every_component), jax.tree.leaves(params))
    }
    in_a_component = lambda path: ("/attn/" in path or "/mlp/" in path) and not path.endswith("/attn/out/bias")
    assert covered == {path: float(in_a_component(path)) for path in covered}
    assert _count(every_component, params) < total

    tokens = {"inputs": jnp.asarray(sj.tasks.repeated_tokens(0, 16, vocab, 4)["inputs"])}
    config = sj.SamplerConfig(step_size=1e-4, nbeta=10.0, localization=100.0, num_chains=2, num_draws=20, batch_size=8, mala_every=0)
    result = sj.estimate_llc(loss_fn, params, tokens, config, key=0, component=neurons, progress=False)
    assert np.all(np.isfinite(result.llc_per_chain))


def test_in_context_regression_transformer():
    dim, context, width = 3, 4, 8
    model = sj.models.InContextRegressionTransformer(dim, context, 2, 2, width, mlp_width=16, rngs=nnx.Rngs(0))
    params, loss_fn = sj.from_nnx(model, "mse")
    shapes = jax.tree.map(jnp.shape, params)
    assert shapes["embed"] == {"kernel": (dim + 1, width), "bias": (width,)}
    assert shapes["position"] == {"embedding": (2 * context, width)}
    assert shapes["readout"] == {"kernel": (width, 1), "bias": (1,)}
    assert shapes["blocks"][1]["mlp"]["hidden"] == {"kernel": (width, 16), "bias": (16,)}
    assert model.attention_paths() == ["blocks/0/attn", "blocks/1/attn"] and model.mlp_paths() == ["blocks/0/mlp", "blocks/1/mlp"]
    data = sj.tasks.in_context_regression(0, 5, dim, context, num_tasks=4, noise_std=0.1)
    inputs = jnp.asarray(data["inputs"])
    # One call: the data, y_1 changed (token 3), x_1 changed (token 2).
    outputs = _apply(model, jnp.concatenate([inputs, inputs.at[:, 3, 0].add(1.0), inputs.at[:, 2, 1:].add(1.0)]))
    predictions, changed_y, changed_x = outputs[:5], outputs[5:10], outputs[10:]
    chex.assert_shape(predictions, (5, context))
    chex.assert_shape(jax.eval_shape(loss_fn, params, data), (5,))  # "mse": 0.5 * sum_k (y_k - ŷ_k)² per sequence
    # The prediction of y_k (token 2k) sees x_k but not y_k nor anything later.
    np.testing.assert_allclose(changed_y[:, :2], predictions[:, :2], rtol=1e-5, atol=1e-6)
    assert not np.allclose(changed_y[:, 2:], predictions[:, 2:])
    np.testing.assert_allclose(changed_x[:, :1], predictions[:, :1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(changed_x[:, 1], predictions[:, 1])
    chex.assert_shape(jax.eval_shape(model, inputs[:, :5]), (5, 3))  # a prefix ending on x_2
    with pytest.raises(ValueError, match="dim \\+ 1"):
        jax.eval_shape(model, jnp.zeros((1, 2, dim)))
    with pytest.raises(ValueError, match="num_context"):
        jax.eval_shape(model, jnp.zeros((1, 2 * context + 2, dim + 1)))


# Issue 18, item 7: help() and inspect show the zoo models' constructor arguments, not (*args, **kwargs).
def test_zoo_models_show_their_constructor_signatures():
    import inspect

    for cls in (sj.models.DeepLinearNetwork, sj.models.MLP, sj.models.AttentionOnlyTransformer, sj.models.TransformerLM,
                sj.models.InContextRegressionTransformer):
        parameters = inspect.signature(cls).parameters
        assert "rngs" in parameters and "args" not in parameters and "self" not in parameters, (cls, parameters)
    assert list(inspect.signature(sj.models.MLP).parameters)[:3] == ["in_features", "hidden_features", "out_features"]
