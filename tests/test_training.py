"""Tests for slt_jax.training, and that the zoo models learn their tasks."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import slt_jax as sj


def _linear_problem():
    loss_fn = lambda w, batch: 0.5 * (batch["y"] - batch["x"] @ w) ** 2
    x = jax.random.normal(jax.random.key(0), (64, 3))
    data = {"x": x, "y": x @ jnp.array([1.0, -2.0, 0.5])}
    return loss_fn, data


def test_checkpoints_and_losses():
    loss_fn, data = _linear_problem()
    params = jnp.zeros(3)
    result = sj.train(loss_fn, params, data, optimizer=optax.sgd(0.1), num_steps=60, batch_size=16, checkpoint_every=20)
    assert result.checkpoint_steps == [0, 20, 40, 60]
    assert len(result.checkpoints) == 4
    np.testing.assert_array_equal(result.checkpoints[0], params)
    np.testing.assert_array_equal(result.checkpoints[-1], result.params)
    chex.assert_shape(result.losses, (60,))
    assert result.losses[-10:].mean() < 1e-2 * result.losses[0]
    np.testing.assert_allclose(result.params, [1.0, -2.0, 0.5], atol=0.05)
    again = sj.train(loss_fn, params, data, optimizer=optax.sgd(0.1), num_steps=60, batch_size=16, checkpoint_every=20)
    np.testing.assert_array_equal(again.losses, result.losses)  # seeded
    explicit = sj.train(loss_fn, params, data, optimizer=optax.sgd(0.1), num_steps=60, batch_size=16, checkpoint_steps=[50, 10])
    assert explicit.checkpoint_steps == [10, 50, 60]
    np.testing.assert_array_equal(explicit.losses, result.losses)  # checkpoints do not change the run
    np.testing.assert_array_equal(explicit.checkpoints[-1], result.checkpoints[-1])


def _counted_loss(w, batch):
    return 0.5 * (batch["y"] - batch["x"] @ w) ** 2


def test_one_compilation_across_calls_and_uneven_checkpoint_gaps():
    """Issue 12 item 10: the training loop compiles once per (loss_fn, optimizer, shapes)."""
    _, data = _linear_problem()
    loss_fn = chex.assert_max_traces(_counted_loss, n=1)  # traced once per compilation
    optimizer = optax.adam(1e-2)
    first = sj.train(loss_fn, jnp.zeros(3), data, optimizer=optimizer, num_steps=40, batch_size=8, checkpoint_steps=[3, 17, 18])
    second = sj.train(loss_fn, jnp.ones(3), data, optimizer=optimizer, num_steps=23, batch_size=8, seed=1, checkpoint_every=7)
    assert first.checkpoint_steps == [3, 17, 18, 40] and second.checkpoint_steps == [0, 7, 14, 21, 23]
    chex.assert_shape(first.losses, (40,))
    # longer than one compiled segment: still the same program, and the same numbers as one gap
    long = sj.train(loss_fn, jnp.zeros(3), data, optimizer=optimizer, num_steps=sj.training.SEGMENT_STEPS + 5, batch_size=8)
    np.testing.assert_array_equal(long.losses[:40], first.losses)
    assert np.all(np.isfinite(long.losses))


def test_full_batch_is_deterministic_gradient_descent():
    loss_fn, data = _linear_problem()
    result = sj.train(loss_fn, jnp.zeros(3), data, optimizer=optax.sgd(0.1), num_steps=2)
    gradient = jax.grad(lambda w: jnp.mean(loss_fn(w, data)))
    first = -0.1 * gradient(jnp.zeros(3))
    second = first - 0.1 * gradient(first)
    np.testing.assert_allclose(result.params, second, rtol=1e-5)


def test_train_validates_arguments():
    loss_fn, data = _linear_problem()
    with pytest.raises(TypeError, match="optax"):
        sj.train(loss_fn, jnp.zeros(3), data, optimizer="adam", num_steps=2)
    with pytest.raises(ValueError, match="num_steps"):
        sj.train(loss_fn, jnp.zeros(3), data, optimizer=optax.sgd(0.1), num_steps=0)
    with pytest.raises(ValueError, match="batch_size"):
        sj.train(loss_fn, jnp.zeros(3), data, optimizer=optax.sgd(0.1), num_steps=2, batch_size=65)
    with pytest.raises(ValueError, match="checkpoint_steps"):
        sj.train(loss_fn, jnp.zeros(3), data, optimizer=optax.sgd(0.1), num_steps=2, checkpoint_steps=[3])


VOCAB, PREFIX = 16, 8
INDUCTION_LOSS = 0.3  # nats on the predictable (repeated) tokens; chance is log(16) = 2.77


def test_tiny_transformer_learns_induction():
    """2 layers x 2 heads, width 32: the repeated half becomes predictable (an induction circuit)."""
    model = sj.models.AttentionOnlyTransformer(VOCAB, 2 * PREFIX, 2, 2, 32, rngs=nnx.Rngs(0))
    params, loss_fn = sj.from_nnx(model, "next_token")
    train_data = sj.tasks.repeated_tokens(0, 2048, VOCAB, PREFIX)
    result = sj.train(loss_fn, params, train_data, optimizer=optax.adam(3e-3), num_steps=300, batch_size=64, checkpoint_every=150)
    held_out = sj.tasks.repeated_tokens(1, 512, VOCAB, PREFIX)
    losses = np.asarray(jax.jit(loss_fn)(result.params, held_out))  # (512, 2 * PREFIX - 1)
    repeated, first = losses[:, PREFIX - 1:].mean(), losses[:, : PREFIX - 1].mean()
    assert repeated < INDUCTION_LOSS, repeated
    assert first > 0.9 * np.log(VOCAB), first  # the random prefix stays unpredictable on new sequences
    initial = np.asarray(jax.jit(loss_fn)(result.checkpoints[0], held_out))[:, PREFIX - 1:].mean()
    assert initial > 0.9 * np.log(VOCAB)


def test_mlp_fits_modular_addition():
    modulus = 23
    train_data, _ = sj.tasks.train_test_split(sj.tasks.modular_addition(modulus, seed=0), 0.8, seed=0)
    model = sj.models.MLP(2 * modulus, [128], modulus, rngs=nnx.Rngs(0))
    params, loss_fn = sj.from_nnx(model, "cross_entropy")
    result = sj.train(loss_fn, params, train_data, optimizer=optax.adamw(3e-3, weight_decay=1.0), num_steps=300)
    sj.to_nnx(model, result.params)
    predictions = np.asarray(nnx.jit(lambda m, x: m(x))(model, jnp.asarray(train_data["inputs"]))).argmax(-1)
    accuracy = np.mean(predictions == train_data["targets"])
    assert accuracy >= 0.99, accuracy
