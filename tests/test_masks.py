"""Tests for slt_jax.masks: globs, predicates, mask algebra and attention-head masks."""

import chex
import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import slt_jax as sj

WIDTH, HEADS, HEAD_DIM, VOCAB = 8, 2, 4, 5


def _selected(mask, params):
    return [np.broadcast_to(np.asarray(m), np.shape(p)) for m, p in zip(jax.tree.leaves(mask), jax.tree.leaves(params))]


def _count(mask, params):
    return int(sum(m.sum() for m in _selected(mask, params)))


@pytest.fixture(scope="module")
def mlp_params():
    return {
        "layers": [
            {"kernel": np.ones((3, 4), np.float32), "bias": np.ones(4, np.float32)},
            {"kernel": np.ones((4, 2), np.float32), "bias": np.ones(2, np.float32)},
        ],
        "head": {"mlp": {"kernel": np.ones((2, 2), np.float32)}},
    }


def test_globs_select_subtrees(mlp_params):
    assert _count(sj.component_mask(mlp_params, "layers/0/**"), mlp_params) == 16
    assert _count(sj.component_mask(mlp_params, "layers/0"), mlp_params) == 16  # a module selects its subtree
    assert _count(sj.component_mask(mlp_params, "**/bias"), mlp_params) == 6
    assert _count(sj.component_mask(mlp_params, "**/mlp/**"), mlp_params) == 4
    assert _count(sj.component_mask(mlp_params, "layers/*/kernel"), mlp_params) == 20
    assert _count(sj.component_mask(mlp_params, "**"), mlp_params) == 30
    union = sj.component_mask(mlp_params, ["layers/1/**", "head"])
    assert _count(union, mlp_params) == 14
    assert sj.masks.leaf_paths(mlp_params) == ["head/mlp/kernel", "layers/0/bias", "layers/0/kernel", "layers/1/bias", "layers/1/kernel"]
    excluded = sj.component_mask(mlp_params, "layers/**", exclude="**/bias")
    assert _count(excluded, mlp_params) == 20
    chex.assert_trees_all_equal_structs(excluded, mlp_params)


def test_predicates_and_partial_leaves(mlp_params):
    by_size = sj.component_mask(mlp_params, lambda path, leaf: np.size(leaf) > 4)
    assert _count(by_size, mlp_params) == 20
    first_row = sj.component_mask(mlp_params, lambda path, leaf: np.arange(np.shape(leaf)[0]).reshape((-1,) + (1,) * (np.ndim(leaf) - 1)) == 0 if path == "layers/0/kernel" else False)
    chex.assert_shape(first_row["layers"][0]["kernel"], (3, 4))
    assert _count(first_row, mlp_params) == 4
    with pytest.raises(ValueError, match="shape"):
        sj.component_mask(mlp_params, lambda path, leaf: np.ones(7, bool))


def test_mask_algebra(mlp_params):
    layer0 = sj.component_mask(mlp_params, "layers/0")
    kernels = sj.component_mask(mlp_params, "**/kernel")
    assert _count(sj.mask_union(layer0, kernels), mlp_params) == 28
    assert _count(sj.mask_intersection(layer0, kernels), mlp_params) == 12
    complement = sj.mask_complement(layer0)
    assert _count(complement, mlp_params) == 14
    assert _count(sj.mask_union(layer0, complement), mlp_params) == 30


def test_describe_mask(mlp_params):
    table = sj.describe_mask(mlp_params, sj.component_mask(mlp_params, "layers/0"))
    lines = table.splitlines()
    assert "layers/0/kernel" in table and "(3, 4)" in table
    assert lines[-1].split()[:3] == ["total", "16", "30"]


def test_errors_name_the_fix(mlp_params):
    with pytest.raises(ValueError, match="matches no parameter.*layers/0/bias"):
        sj.component_mask(mlp_params, "blocks/**")
    with pytest.raises(ValueError, match="not a valid path glob"):
        sj.component_mask(mlp_params, "layers//0")
    with pytest.raises(TypeError, match="pattern"):
        sj.component_mask(mlp_params, 3)


# ---------------------------------------------------------------------------------------------
# attention heads, nnx and linen


class _LinenAttention(linen.Module):
    @linen.compact
    def __call__(self, tokens):
        h = linen.Embed(VOCAB, WIDTH)(tokens)
        h = h + linen.MultiHeadDotProductAttention(num_heads=HEADS, qkv_features=HEADS * HEAD_DIM, name="attn")(
            h, h, mask=linen.make_causal_mask(tokens)
        )
        return linen.Dense(VOCAB)(h)


@pytest.fixture(scope="module")
def tokens():
    return jax.random.randint(jax.random.key(0), (6, 5), 0, VOCAB)


@pytest.fixture(scope="module", params=["nnx", "linen", "nnx_with_mlp"])
def attention_model(request, tokens):
    """(params, jitted loss_fn, attention_path) for each Flax attention module."""
    if request.param == "nnx":
        model = sj.models.AttentionOnlyTransformer(VOCAB, 5, 1, HEADS, WIDTH, head_dim=HEAD_DIM, rngs=nnx.Rngs(0))
        params, loss_fn = sj.from_nnx(model, "next_token")
        path = "blocks/0/attn"
    elif request.param == "nnx_with_mlp":
        model = sj.models.TransformerLM(VOCAB, 5, 2, HEADS, WIDTH, mlp_width=6, head_dim=HEAD_DIM, rngs=nnx.Rngs(0))
        params, loss_fn = sj.from_nnx(model, "next_token")
        path = model.attention_paths()[1]
    else:
        module = _LinenAttention()
        params, loss_fn = sj.from_linen(module, module.init(jax.random.key(0), tokens), "next_token")
        path = "attn"
    # Non-zero biases so that every entry gets a generic gradient.
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(p.size), p.shape), params)
    return params, loss_fn, jax.jit(jax.grad(lambda p, b: jnp.mean(loss_fn(p, b)))), path


def _attention(tree, path):
    for part in path.split("/"):
        tree = tree[part if part in tree else int(part)]
    return tree


def test_head_mask_selects_exactly_head_entries(attention_model):
    params, _, _, path = attention_model
    for head in range(HEADS):
        mask = sj.head_mask(params, path, head)
        chex.assert_trees_all_equal_structs(mask, params)
        # q, k, v: kernel (WIDTH, HEADS, HEAD_DIM) + bias (HEADS, HEAD_DIM); out kernel (HEADS, HEAD_DIM, WIDTH).
        assert _count(mask, params) == 3 * (WIDTH * HEAD_DIM + HEAD_DIM) + HEAD_DIM * WIDTH
        attention = _attention(mask, path)
        for name in ("query", "key", "value"):
            expected = np.zeros((WIDTH, HEADS, HEAD_DIM), bool)
            expected[:, head, :] = True
            np.testing.assert_array_equal(attention[name]["kernel"], expected)
            expected_bias = np.zeros((HEADS, HEAD_DIM), bool)
            expected_bias[head] = True
            np.testing.assert_array_equal(attention[name]["bias"], expected_bias)
        expected_out = np.zeros((HEADS, HEAD_DIM, WIDTH), bool)
        expected_out[head] = True
        np.testing.assert_array_equal(attention["out"]["kernel"], expected_out)
        assert not np.any(attention["out"]["bias"])
    both = sj.head_mask(params, path, [0, 1])
    assert _count(both, params) == 2 * _count(sj.head_mask(params, path, 0), params)
    qk = sj.head_mask(params, path, 1, projections=("query", "key"))
    assert _count(qk, params) == 2 * (WIDTH * HEAD_DIM + HEAD_DIM)


def test_masked_gradient_stays_on_the_head(attention_model, tokens):
    params, _, grad_fn, path = attention_model
    mask = sj.head_mask(params, path, 1)
    grads = grad_fn(params, (tokens,))
    masked = jax.tree.map(lambda m, g: jnp.where(m, g, 0.0), mask, grads)
    for m, g in zip(_selected(mask, params), jax.tree.leaves(masked)):
        assert not np.any(np.asarray(g)[~m])
    assert sum(int(np.count_nonzero(g)) for g in jax.tree.leaves(masked)) > 0.9 * _count(mask, params)


def test_dead_head_gets_no_qkv_gradient(attention_model, tokens):
    params, _, grad_fn, path = attention_model
    dead = 0
    params = jax.tree.map(lambda x: x, params)  # copy the containers before editing
    attention = _attention(params, path)
    attention["out"]["kernel"] = attention["out"]["kernel"].at[dead].set(0.0)
    grads = _attention(grad_fn(params, (tokens,)), path)
    for name in ("query", "key", "value"):
        kernel, bias = np.asarray(grads[name]["kernel"]), np.asarray(grads[name]["bias"])
        assert not np.any(kernel[:, dead]) and not np.any(bias[dead])
        assert np.all(np.abs(kernel[:, 1 - dead]).sum(axis=0) > 0)
    assert np.any(np.asarray(grads["out"]["kernel"][dead]))  # the dead head's out-projection still learns


def test_head_mask_errors(attention_model):
    params, _, _, path = attention_model
    with pytest.raises(ValueError, match="head indices"):
        sj.head_mask(params, path, HEADS)
    with pytest.raises(ValueError, match="no entry"):
        sj.head_mask(params, "nowhere", 0)
    with pytest.raises(ValueError, match="not a Flax multi-head attention"):
        sj.head_mask(params, path + "/query", 0)
    with pytest.raises(ValueError, match="projections"):
        sj.head_mask(params, path, 0, projections=("qkv",))


# ---------------------------------------------------------------------------------------------
# MLP blocks and their hidden neurons


class _LinenMLP(linen.Module):
    @linen.compact
    def __call__(self, x):
        h = linen.Dense(3, name="embed")(x)
        return linen.Dense(2, name="down")(linen.relu(linen.Dense(5, name="up")(h)))


@pytest.fixture(scope="module")
def feedforward_params():
    model = sj.models.TransformerLM(VOCAB, 5, 1, HEADS, WIDTH, mlp_width=6, rngs=nnx.Rngs(0))
    return sj.from_nnx(model, "next_token")[0]


def test_mlp_mask_selects_the_mlp_or_its_neurons(feedforward_params):
    params, hidden = feedforward_params, 6
    whole = sj.mlp_mask(params, "blocks/0/mlp")
    chex.assert_trees_all_equal_structs(whole, params)
    assert _count(whole, params) == WIDTH * hidden + hidden + hidden * WIDTH + WIDTH
    assert _count(whole, params) == _count(sj.component_mask(params, "blocks/0/mlp"), params)
    for neuron in range(hidden):
        mask = sj.mlp_mask(params, "blocks/0/mlp", neuron)["blocks"][0]["mlp"]
        expected_in, expected_out = np.zeros((WIDTH, hidden), bool), np.zeros((hidden, WIDTH), bool)
        expected_in[:, neuron], expected_out[neuron] = True, True
        np.testing.assert_array_equal(mask["hidden"]["kernel"], expected_in)
        np.testing.assert_array_equal(mask["hidden"]["bias"], np.arange(hidden) == neuron)
        np.testing.assert_array_equal(mask["out"]["kernel"], expected_out)
        assert not np.any(mask["out"]["bias"])  # shared by all neurons
    all_neurons = sj.mlp_mask(params, "blocks/0/mlp", list(range(hidden)))
    assert _count(all_neurons, params) == _count(whole, params) - WIDTH
    assert _count(sj.mlp_mask(params, "blocks/0/mlp", [1, 4]), params) == 2 * (2 * WIDTH + 1)


def test_mlp_mask_on_a_linen_mlp_and_errors(feedforward_params):
    params = _LinenMLP().init(jax.random.key(0), jnp.ones((1, 4)))["params"]
    wrapped = {"mlp": params}
    mask = sj.mlp_mask(wrapped, "mlp", 2, layers=("up", "down"))
    assert _count(mask, wrapped) == 3 + 1 + 2
    assert not np.any(mask["mlp"]["embed"]["kernel"])
    with pytest.raises(ValueError, match="not a two-layer MLP"):
        sj.mlp_mask(wrapped, "mlp", 0)
    with pytest.raises(ValueError, match="not a two-layer MLP"):
        sj.mlp_mask(feedforward_params, "blocks/0/attn", 0)
    with pytest.raises(ValueError, match="same hidden width"):
        sj.mlp_mask(wrapped, "mlp", 0, layers=("embed", "down"))
    with pytest.raises(ValueError, match="neuron indices"):
        sj.mlp_mask(feedforward_params, "blocks/0/mlp", 6)
    with pytest.raises(ValueError, match="mlp_path: no entry"):
        sj.mlp_mask(feedforward_params, "blocks/3/mlp")
    with pytest.raises(ValueError, match="mlp_path"):
        sj.mlp_mask(feedforward_params, "")
    with pytest.raises(ValueError, match="layers"):
        sj.mlp_mask(feedforward_params, "blocks/0/mlp", layers=("hidden",))
