"""Tests for slt_jax.adapters: the adapter's loss equals the module's output through the loss."""

import chex
import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import slt_jax as sj


# Jitted calls: one compilation each instead of one per primitive on a loaded CPU.
_apply = nnx.jit(lambda model, x: model(x))


def _regression_batch(seed=0, batch=5, inputs=3, outputs=2):
    key_x, key_y = jax.random.split(jax.random.key(seed))
    return jax.random.normal(key_x, (batch, inputs)), jax.random.normal(key_y, (batch, outputs))


# ---------------------------------------------------------------------------------------------
# nnx


def test_nnx_mse_per_example_matches_module():
    model = sj.models.MLP(3, [4], 2, rngs=nnx.Rngs(0))
    params, loss_fn = sj.from_nnx(model, "mse")
    x, y = _regression_batch()
    expected = 0.5 * jnp.sum((model(x) - y) ** 2, axis=-1)
    for batch in ((x, y), {"inputs": x, "targets": y}):
        losses = loss_fn(params, batch)
        chex.assert_shape(losses, (5,))
        np.testing.assert_allclose(losses, expected, rtol=1e-6)


def test_nnx_cross_entropy_per_example_matches_module():
    model = sj.models.MLP(3, [4], 6, rngs=nnx.Rngs(1))
    params, loss_fn = sj.from_nnx(model, "cross_entropy")
    x, _ = _regression_batch()
    labels = jnp.arange(5) % 6
    expected = optax.losses.softmax_cross_entropy_with_integer_labels(model(x), labels)
    losses = loss_fn(params, (x, labels))
    chex.assert_shape(losses, (5,))
    np.testing.assert_allclose(losses, expected, rtol=1e-6)


def test_nnx_next_token_per_token_matches_module():
    model = sj.models.AttentionOnlyTransformer(7, 6, 1, 2, 8, rngs=nnx.Rngs(2))
    params, loss_fn = sj.from_nnx(model, "next_token")
    loss_fn = jax.jit(loss_fn)
    tokens = jax.random.randint(jax.random.key(3), (4, 6), 0, 7)
    logits = _apply(model, tokens)
    expected = optax.losses.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:])
    losses = loss_fn(params, {"inputs": tokens})
    chex.assert_shape(losses, (4, 5))
    np.testing.assert_allclose(losses, expected, rtol=1e-5, atol=1e-6)
    # Explicit per-token labels go through "cross_entropy".
    ce_fn = jax.jit(sj.from_nnx(model, "cross_entropy")[1])
    labels = jnp.roll(tokens, -1, axis=1)
    chex.assert_shape(ce_fn(params, (tokens, labels)), (4, 6))
    np.testing.assert_allclose(ce_fn(params, (tokens, labels))[:, :-1], expected, rtol=1e-5, atol=1e-6)


def test_nnx_custom_loss_and_inputs_override():
    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    x, _ = _regression_batch(outputs=1)
    batch = {"features": x, "weight": jnp.arange(5.0)}
    params, loss_fn = sj.from_nnx(
        model, lambda outputs, b: b["weight"] * outputs[:, 0], inputs=lambda b: b["features"]
    )
    np.testing.assert_allclose(loss_fn(params, batch), jnp.arange(5.0) * model(x)[:, 0], rtol=1e-6)


class _Regularised(nnx.Module):
    def __init__(self, rngs):
        self.first = nnx.Linear(3, 4, rngs=rngs)
        self.norm = nnx.BatchNorm(4, rngs=rngs)
        self.dropout = nnx.Dropout(0.5, rngs=rngs)
        self.last = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        return self.last(self.dropout(self.norm(self.first(x))))


def test_nnx_state_is_fixed_and_randomness_off():
    model = _Regularised(nnx.Rngs(0))
    model.norm.mean[...] = jnp.arange(4.0)  # non-trivial running statistics
    params, loss_fn = sj.from_nnx(model, "mse")
    assert set(params) == {"first", "norm", "last"}  # BatchStat and RNG state are not params
    x, y = _regression_batch()
    first, second = loss_fn(params, (x, y)), loss_fn(params, (x, y))
    np.testing.assert_array_equal(first, second)  # dropout off
    # The user's model is untouched (still in training mode, same statistics).
    assert not model.dropout.deterministic and not model.norm.use_running_average
    np.testing.assert_array_equal(model.norm.mean[...], jnp.arange(4.0))
    model.eval()
    np.testing.assert_allclose(first, 0.5 * jnp.sum((model(x) - y) ** 2, axis=-1), rtol=1e-6)


def test_nnx_loss_is_pure_and_traces_once():
    model = sj.models.MLP(3, [4], 2, rngs=nnx.Rngs(0))
    params, loss_fn = sj.from_nnx(model, "mse")
    x, y = _regression_batch()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def mean_loss(p):
        return jnp.mean(loss_fn(p, (x, y)))

    mean_loss(params)
    shifted = jax.tree.map(lambda w: w + 0.1, params)
    assert float(mean_loss(shifted)) != float(mean_loss(params))
    stacked = jax.tree.map(lambda w: jnp.stack([w, w + 0.1]), params)
    chex.assert_shape(jax.vmap(loss_fn, in_axes=(0, None))(stacked, (x, y)), (2, 5))


def test_to_nnx_writes_params_back():
    model = sj.models.MLP(3, [4], 2, rngs=nnx.Rngs(0))
    params, loss_fn = sj.from_nnx(model, "mse")
    x, y = _regression_batch()
    new_params = jax.tree.map(lambda w: w * 2.0 + 0.5, params)
    assert sj.to_nnx(model, new_params) is model
    np.testing.assert_allclose(model.layers[0].bias[...], new_params["layers"][0]["bias"])
    np.testing.assert_allclose(loss_fn(new_params, (x, y)), 0.5 * jnp.sum((model(x) - y) ** 2, -1), rtol=1e-6)
    stacked = jax.tree.map(lambda w: jnp.stack([w, w]), params)
    with pytest.raises(ValueError, match="select one chain"):
        sj.to_nnx(model, stacked)
    with pytest.raises(ValueError, match="layout"):
        sj.to_nnx(model, {"layers": {}})


def test_nnx_errors_before_compiling():
    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="named loss"):
        sj.from_nnx(model, "hinge")
    with pytest.raises(TypeError, match="nnx.Module"):
        sj.from_nnx(linen.Dense(2), "mse")
    with pytest.raises(TypeError, match="inputs"):
        sj.from_nnx(model, "mse", inputs="x")
    params, loss_fn = sj.from_nnx(model, "mse")
    with pytest.raises(ValueError, match="'inputs'"):
        loss_fn(params, {"x": jnp.ones((2, 3))})
    with pytest.raises(ValueError, match="targets"):
        loss_fn(params, {"inputs": jnp.ones((2, 3))})


def _value_and_grad(loss_fn, batch):
    return jax.jit(jax.value_and_grad(lambda p: jnp.mean(loss_fn(p, batch))))


def _decoder_with_layer_scales():
    """A decoder whose blocks differ in a static setting: remat runs them unrolled, not scanned."""
    spec = sj.models.DecoderSpec(vocab_size=11, context_length=12, width=8, num_layers=2, num_heads=2, mlp_width=16,
                                 attention_scales=(0.5, 0.25))
    rng = np.random.default_rng(0)
    shapes = sj.zoo.decoder.parameter_shapes(spec)
    return sj.models.Decoder(spec, jax.tree.map(lambda s: 0.3 * rng.standard_normal(s), shapes, is_leaf=lambda x: isinstance(x, tuple)))


@pytest.mark.parametrize("build", [
    lambda: sj.models.AttentionOnlyTransformer(vocab_size=11, context_length=12, num_layers=2, num_heads=2, width=8,
                                               layer_norm=True, rngs=nnx.Rngs(1)),
    lambda: sj.models.from_pretrained(sj.__path__[0] + "/../tests/fixtures/pretrained/gpt_neox_parallel"),
    lambda: _decoder_with_layer_scales(),
], ids=["AttentionOnlyTransformer", "Decoder", "Decoder-unrolled"])
def test_nnx_remat_gives_the_same_loss_and_gradient(build):
    model = build()
    tokens = {"inputs": jax.random.randint(jax.random.key(2), (3, 8), 0, 11)}
    params, loss_fn = sj.from_nnx(model, "next_token")
    remat_params, remat_loss_fn = sj.from_nnx(model, "next_token", remat=True)
    assert model.remat is False  # the caller's model is left as it was
    chex.assert_trees_all_equal(params, remat_params)
    (value, grad), (remat_value, remat_grad) = (_value_and_grad(f, tokens)(params) for f in (loss_fn, remat_loss_fn))
    np.testing.assert_allclose(remat_value, value, rtol=1e-6)
    chex.assert_trees_all_close(remat_grad, grad, rtol=1e-5, atol=1e-7)


def test_nnx_remat_cuts_the_gradients_activation_memory():
    """XLA's compiled temp bytes of one value_and_grad, 4 blocks, context 256: 62.4 MiB -> 19.7 MiB
    (CPU); the loss and the gradient stay the same."""
    model = sj.models.TransformerLM(vocab_size=32, context_length=256, num_layers=4, num_heads=4, width=32, rngs=nnx.Rngs(0))
    batch = {"inputs": jax.random.randint(jax.random.key(0), (4, 256), 0, 32)}
    temp, values = {}, {}
    for remat in (False, True):
        params, loss_fn = sj.from_nnx(model, "next_token", remat=remat)
        compiled = _value_and_grad(loss_fn, batch).lower(params).compile()
        temp[remat] = compiled.memory_analysis().temp_size_in_bytes
        values[remat] = compiled(params)
    assert temp[True] < 0.5 * temp[False], temp
    np.testing.assert_allclose(values[True][0], values[False][0], rtol=1e-6)
    chex.assert_trees_all_close(values[True][1], values[False][1], rtol=1e-5, atol=1e-7)


def test_nnx_remat_errors_name_the_fix():
    with pytest.raises(ValueError, match="no `remat` attribute"):
        sj.from_nnx(nnx.Linear(3, 1, rngs=nnx.Rngs(0)), "mse", remat=True)
    with pytest.raises(TypeError, match="remat='yes' must be True or False"):
        sj.from_nnx(nnx.Linear(3, 1, rngs=nnx.Rngs(0)), "mse", remat="yes")


# ---------------------------------------------------------------------------------------------
# linen


class _LinenMLP(linen.Module):
    @linen.compact
    def __call__(self, x):
        return linen.Dense(2)(linen.relu(linen.Dense(4)(x)))


class _LinenTransformer(linen.Module):
    vocab: int = 7

    @linen.compact
    def __call__(self, tokens):
        h = linen.Embed(self.vocab, 8)(tokens)
        mask = linen.make_causal_mask(tokens)
        h = h + linen.MultiHeadDotProductAttention(num_heads=2, qkv_features=8, name="attn")(h, h, mask=mask)
        return linen.Dense(self.vocab)(h)


def test_linen_mse_per_example_matches_module():
    module = _LinenMLP()
    x, y = _regression_batch()
    variables = module.init(jax.random.key(0), x)
    params, loss_fn = sj.from_linen(module, variables, "mse")
    expected = 0.5 * jnp.sum((module.apply(variables, x) - y) ** 2, axis=-1)
    chex.assert_shape(loss_fn(params, (x, y)), (5,))
    np.testing.assert_allclose(loss_fn(params, {"inputs": x, "targets": y}), expected, rtol=1e-6)


def test_linen_next_token_per_token_matches_module():
    module = _LinenTransformer()
    tokens = jax.random.randint(jax.random.key(1), (3, 5), 0, 7)
    variables = module.init(jax.random.key(0), tokens)
    params, loss_fn = sj.from_linen(module, variables, "next_token")
    loss_fn = jax.jit(loss_fn)
    logits = jax.jit(module.apply)(variables, tokens)
    expected = optax.losses.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:])
    losses = loss_fn(params, (tokens,))
    chex.assert_shape(losses, (3, 4))
    np.testing.assert_allclose(losses, expected, rtol=1e-5, atol=1e-6)


class _LinenBatchNorm(linen.Module):
    @linen.compact
    def __call__(self, x, train: bool = True):
        x = linen.BatchNorm(use_running_average=not train)(linen.Dense(4)(x))
        return linen.Dense(2)(linen.Dropout(0.5, deterministic=not train)(x))


def test_linen_collections_fixed_with_apply_kwargs():
    module = _LinenBatchNorm()
    x, y = _regression_batch()
    variables = module.init(jax.random.key(0), x, train=False)
    variables["batch_stats"]["BatchNorm_0"]["mean"] = jnp.arange(4.0)
    params, loss_fn = sj.from_linen(module, variables, "mse", apply_kwargs={"train": False})
    assert set(params) == {"Dense_0", "Dense_1", "BatchNorm_0"}
    expected = 0.5 * jnp.sum((module.apply(variables, x, train=False) - y) ** 2, axis=-1)
    np.testing.assert_allclose(loss_fn(params, (x, y)), expected, rtol=1e-6)


def test_linen_errors():
    with pytest.raises(ValueError, match="'params'"):
        sj.from_linen(_LinenMLP(), {"batch_stats": {}}, "mse")
    with pytest.raises(TypeError, match="linen"):
        sj.from_linen(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), {"params": {}}, "mse")
