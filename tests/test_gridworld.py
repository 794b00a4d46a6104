"""Tests for slt_jax.zoo.gridworld: exact values against closed forms, regret, gradients, the LLC."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import slt_jax as sj
from slt_jax.zoo.gridworld import Gridworld


@pytest.mark.parametrize("length, discount", [(6, 0.9), (4, 0.5)])
def test_corridor_optimal_values_are_geometric_sums(length, discount):
    world = Gridworld(1, length, goal=(0, length - 1), discount=discount)
    distance = np.arange(length)[::-1]  # steps from cell i to the goal
    expected = -(1 - discount**distance) / (1 - discount)
    np.testing.assert_allclose(world.optimal_values(), expected, atol=1e-5)
    # Reward only at the goal: v*(s) = γ^(d - 1).
    sparse = Gridworld(1, length, goal=(0, length - 1), discount=discount, step_reward=0.0, goal_reward=1.0)
    np.testing.assert_allclose(sparse.optimal_values(), np.where(distance > 0, discount ** (distance - 1.0), 0.0), atol=1e-5)
    # Every non-goal state's only optimal action is "right".
    expected_actions = np.zeros((length, 4), bool)
    expected_actions[:-1, sj.gridworld.ACTIONS.index("right")] = True
    expected_actions[-1] = True  # the terminal goal: every action is worth 0
    np.testing.assert_array_equal(world.optimal_actions(), expected_actions)


def test_walls_and_shortest_paths():
    # . # G      the wall forces the bottom-left cell around: distances 2, 1 / 3(top-left via bottom)
    # . . .
    world = Gridworld(2, 3, goal=(0, 2), walls=[(0, 1)], discount=0.9)
    chex.assert_shape([world.cells, world.next_state, world.rewards], [(5, 2), (5, 4), (5, 4)])
    distances = {(0, 0): 4, (1, 0): 3, (1, 1): 2, (1, 2): 1, (0, 2): 0}
    expected = [-(1 - 0.9 ** distances[tuple(cell)]) / 0.1 for cell in world.cells.tolist()]
    np.testing.assert_allclose(world.optimal_values(), expected, atol=1e-5)
    np.testing.assert_allclose(world.value_iteration()[0], expected, atol=1e-5)
    top_left = world.cells.tolist().index([0, 0])
    assert world.next_state[top_left, sj.gridworld.ACTIONS.index("right")] == top_left  # bumps into the wall


def test_optimal_policy_has_zero_regret_and_random_policy_matches_hand_computation():
    world = Gridworld(1, 3, goal=(0, 2), discount=0.9)
    optimal = jnp.where(world.optimal_actions(), 0.0, -30.0)
    assert abs(float(world.regret(optimal))) < 1e-6
    np.testing.assert_allclose(world.state_regret(optimal), 0.0, atol=1e-6)
    # Uniform policy, γ = 0.9: up/down bump (stay), so from cell 0 it moves right w.p. 1/4 and stays
    # w.p. 3/4; from cell 1 it reaches the goal w.p. 1/4, goes left w.p. 1/4, stays w.p. 1/2:
    #   v0 = -1 + γ(3/4 v0 + 1/4 v1),  v1 = -1 + γ(1/4 v0 + 1/2 v1)   =>   v0 = -248/41, v1 = -176/41.
    np.testing.assert_allclose(world.policy_values(jnp.zeros((3, 4))), [-248 / 41, -176 / 41, 0.0], rtol=1e-5)
    # v* = (-1.9, -1): regret = mean(248/41 - 1.9, 176/41 - 1).
    np.testing.assert_allclose(world.regret(jnp.zeros((3, 4))), (248 / 41 - 1.9 + 176 / 41 - 1) / 2, rtol=1e-5)


def test_regret_gradients_are_finite_and_descend():
    world = Gridworld(2, 3, goal=(1, 2), discount=0.8)
    logits = jax.random.normal(jax.random.key(0), (world.num_states, 4))
    grad_fn = jax.jit(jax.grad(world.regret))
    gradient = grad_fn(logits)
    chex.assert_shape(gradient, logits.shape)
    chex.assert_tree_all_finite(gradient)
    assert float(world.regret(logits - 0.1 * gradient)) < float(world.regret(logits))
    np.testing.assert_array_equal(gradient[world.goal_state], 0.0)  # the goal's policy does not matter


@pytest.mark.parametrize("temperature", [0.1, 1.0])
def test_soft_optimum_is_the_softmax_of_soft_q_values(temperature):
    world = Gridworld(2, 3, goal=(0, 2), discount=0.9)
    optimum = world.optimal_logits(temperature)
    assert abs(float(world.regret(optimum, temperature))) < 1e-5
    np.testing.assert_allclose(jax.grad(world.regret, argnums=0)(optimum, temperature), 0.0, atol=1e-5)
    others = optimum + jax.random.normal(jax.random.key(1), optimum.shape)
    assert float(world.regret(others, temperature)) > 1e-3
    # Soft values satisfy the soft Bellman equation v(s) = τ logsumexp((r + γ v(next)) / τ).
    values, q_values = world.value_iteration(temperature)
    live = world.start_mask
    np.testing.assert_allclose(values[live], temperature * jax.nn.logsumexp(q_values / temperature, axis=1)[live], atol=1e-5)


def test_regret_loss_trains_tabular_and_network_policies():
    world = Gridworld(1, 4, goal=(0, 3), discount=0.9)
    data = world.start_states()
    chex.assert_shape(data["inputs"], (3,))
    loss_fn = world.regret_loss()
    np.testing.assert_allclose(jnp.mean(loss_fn(jnp.zeros((4, 4)), data)), world.regret(jnp.zeros((4, 4))), rtol=1e-6)
    tabular = sj.train(loss_fn, jnp.zeros((4, 4)), data, optimizer=optax.adam(0.3), num_steps=200)
    assert tabular.losses[-1] < 1e-2 * tabular.losses[0]
    model = sj.models.MLP(world.height + world.width, [8], 4, rngs=nnx.Rngs(0))
    params, network_loss = sj.from_nnx(model, loss_fn, inputs=lambda batch: world.state_features())
    network = sj.train(network_loss, params, data, optimizer=optax.adam(0.05), num_steps=200)
    assert network.losses[-1] < 1e-2 * network.losses[0]


def test_llc_of_the_soft_optimal_tabular_policy():
    # At the soft optimum the regret is locally quadratic with rank (S - 1)(A - 1) = 6 (softmax shifts
    # and the goal's logits are flat), so the LLC follows the quadratic formula of docs/conventions.md.
    world = Gridworld(1, 3, goal=(0, 2), discount=0.9)
    temperature, nbeta, localization, step_size = 0.5, 1000.0, 1.0, 5e-4
    loss_fn, data, optimum = world.regret_loss(temperature), world.start_states(), world.optimal_logits(temperature)
    hessian = jax.hessian(lambda logits: jnp.mean(loss_fn(logits, data)))(optimum).reshape(12, 12)
    curvature = np.clip(np.linalg.eigvalsh(hessian), 0.0, None)
    assert np.sum(curvature > 1e-3) == 6
    expected = sj.theory.quadratic_llc(curvature, nbeta, localization, step_size)  # 3.017, step included
    config = sj.SamplerConfig(step_size=step_size, nbeta=nbeta, localization=localization, num_chains=16,
                              num_draws=2000, num_burnin=300, batch_size=2, mala_every=0)
    result = sj.estimate_llc(loss_fn, optimum, data, config, key=0, progress=False, loss_estimator="full")
    assert np.all(np.isfinite(result.llc_per_chain))
    stderr = result.llc_std / np.sqrt(config.num_chains)
    # Measured 3.114 ± 0.072 (z = 1.3): the regret's higher-order terms stay inside the chains' error.
    assert abs(result.llc_mean - expected) < 4 * stderr, (result.llc_mean, expected, stderr)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="discount"):
        Gridworld(1, 3, goal=(0, 2), discount=1.0)
    with pytest.raises(ValueError, match="goal"):
        Gridworld(1, 3, goal=(1, 0))
    with pytest.raises(ValueError, match="goal=.*wall"):
        Gridworld(2, 2, goal=(0, 0), walls=[(0, 0)])
    with pytest.raises(ValueError, match="walls\\[0\\]"):
        Gridworld(2, 2, goal=(0, 0), walls=[(5, 5)])
    world = Gridworld(1, 3, goal=(0, 2))
    with pytest.raises(ValueError, match="logits has shape"):
        world.policy_values(jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="temperature"):
        world.regret(jnp.zeros((3, 4)), temperature=-1.0)
    with pytest.raises(ValueError, match="infinite logits"):
        world.optimal_logits(0.0)
    with pytest.warns(RuntimeWarning, match="max_iterations"):
        world.value_iteration(0.5, max_iterations=2)
