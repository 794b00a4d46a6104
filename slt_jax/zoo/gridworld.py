"""A tiny deterministic gridworld with exact optimal values and a differentiable policy loss.

States are the free (non-wall) cells in row-major order; four actions move up, right, down, left
(``ACTIONS``), and a move into a wall or off the grid stays put. Every action taken outside the
goal earns ``step_reward``, plus ``goal_reward`` on the step that enters the goal; the goal is
terminal (its value is 0). With discount γ < 1 and a shortest path of d steps to the goal, the
optimal value is the geometric sum

    v*(s) = step_reward · (1 - γ^d) / (1 - γ) + goal_reward · γ^(d - 1)

(when reaching the goal is optimal, e.g. ``step_reward < 0`` or ``goal_reward > 0``).

A policy is a table of logits ``(num_states, num_actions)``, π = softmax(logits) per state. Its
values are exact: ``policy_values`` solves ``(I - γ P_π) v = r_π`` with ``jnp.linalg.solve``, so
``regret`` (the mean over start states of v* - v_π, every non-goal state a start state) is
differentiable in the logits. With ``temperature`` τ > 0 every value is entropy-regularized (soft):
r_π gains τ·H(π(·|s)) and the optimum is the finite softmax policy ``optimal_logits(τ)`` = Q*_τ/τ.

For the sampler the data are the start states: ``regret_loss()`` is a per-state loss
``loss(logits, batch) -> (batch,)`` regrets of the states ``batch["inputs"]``, usable directly as
the ``loss_fn`` of a tabular policy (params = the logits table) or as the ``loss`` of
``slt_jax.from_nnx`` for a network that maps ``state_features()`` to logits.

>>> import slt_jax as sj
>>> world = sj.gridworld.Gridworld(1, 4, goal=(0, 3), discount=0.5)
>>> [round(float(v), 4) for v in world.optimal_values()]   # -(1 - 0.5^d) / 0.5, d = 3, 2, 1, 0
[-1.75, -1.5, -1.0, 0.0]
>>> bool(abs(world.regret(world.optimal_logits(temperature=0.1), temperature=0.1)) < 1e-6)
True
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from slt_jax.adapters import batch_inputs
from slt_jax.types import Array, Batch

__all__ = ["ACTIONS", "Gridworld", "Dynamics"]

ACTIONS: tuple[str, ...] = ("up", "right", "down", "left")
"""Action names in index order."""
_MOVES = np.array([(-1, 0), (0, 1), (1, 0), (0, -1)])

# Policy-iteration refinements after value iteration: exact for τ = 0 once the greedy policy is
# optimal, and quadratically convergent (Newton) for τ > 0.
_POLISH_STEPS = 3


def _cell(value, name: str, height: int, width: int) -> tuple[int, int]:
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in value)
        or not (0 <= value[0] < height and 0 <= value[1] < width)
    ):
        raise ValueError(f"{name}={value!r} must be a (row, column) pair of ints inside the {height} x {width} grid.")
    return int(value[0]), int(value[1])


def _number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
        raise TypeError(f"{name}={value!r} must be a finite number.")
    return float(value)


def _bellman_backup(q_values: Array, temperature: float) -> Array:
    """``(S, A)`` -> ``(S,)``: max over actions, or τ·logsumexp(q/τ) (the soft maximum)."""
    if temperature == 0.0:
        return jnp.max(q_values, axis=1)
    return temperature * jax.nn.logsumexp(q_values / temperature, axis=1)


def _policy(q_values: Array, temperature: float) -> Array:
    """The (soft-)greedy policy ``(S, A)`` of action values ``(S, A)``."""
    if temperature == 0.0:
        return jax.nn.one_hot(jnp.argmax(q_values, axis=1), q_values.shape[1], dtype=q_values.dtype)
    return jax.nn.softmax(q_values / temperature, axis=1)


class Dynamics(NamedTuple):
    """The arrays of a ``Gridworld`` that its exact computations use (a pytree).

    Attributes:
        next_state: ``(S, A)`` int32 successor of each state and action.
        rewards: ``(S, A)`` float32 reward of each action (0 in the goal row).
        live: ``(S,)`` float32, 1 outside the goal and 0 at it (the goal is terminal).
        discount: γ.
    """

    next_state: Array
    rewards: Array
    live: Array
    discount: float


def _q_values(dynamics: Dynamics, values: Array) -> Array:
    """``(S,)`` state values -> ``(S, A)`` action values ``r + γ v(next)`` (0 at the terminal goal)."""
    return dynamics.live[:, None] * (dynamics.rewards + dynamics.discount * values[dynamics.next_state])


def _evaluate(dynamics: Dynamics, policy: Array, log_policy: Array, temperature: float) -> Array:
    """Exact (soft) values ``(S,)`` of action probabilities ``(S, A)``: solves ``(I - γ P_π) v = r_π``."""
    num_states = policy.shape[0]
    successors = jax.nn.one_hot(dynamics.next_state, num_states, dtype=policy.dtype)  # (S, A, S)
    transitions = dynamics.live[:, None] * jnp.einsum("sa,sat->st", policy, successors)  # the goal row stays 0
    rewards = jnp.sum(policy * dynamics.rewards, axis=1)
    if temperature > 0.0:
        entropy = -jnp.sum(jnp.where(policy > 0, policy * log_policy, 0.0), axis=1)
        rewards = rewards + temperature * dynamics.live * entropy
    return jnp.linalg.solve(jnp.eye(num_states, dtype=policy.dtype) - dynamics.discount * transitions, rewards)


@partial(jax.jit, static_argnames=("temperature", "max_iterations"))
def _solve(dynamics: Dynamics, tolerance: float, *, temperature: float, max_iterations: int):
    """Value iteration to ``tolerance`` then ``_POLISH_STEPS`` policy-iteration steps.

    Returns ``(values (S,), q_values (S, A), last max |Δv|, iterations)``.
    """

    def backup(values):
        return dynamics.live * _bellman_backup(_q_values(dynamics, values), temperature)  # v(goal) = 0

    def cond(carry):
        _, change, iteration = carry
        return (change > tolerance) & (iteration < max_iterations)

    def body(carry):
        values, _, iteration = carry
        updated = backup(values)
        return updated, jnp.max(jnp.abs(updated - values)), iteration + 1

    start = jnp.zeros(dynamics.live.shape, jnp.float32)
    values, change, iterations = jax.lax.while_loop(cond, body, (start, jnp.float32(jnp.inf), 0))
    for _ in range(_POLISH_STEPS):
        q_values = _q_values(dynamics, values)
        policy = _policy(q_values, temperature)
        log_policy = jax.nn.log_softmax(q_values / temperature, axis=1) if temperature > 0 else jnp.zeros_like(policy)
        values = _evaluate(dynamics, policy, log_policy, temperature)
    return values, _q_values(dynamics, values), change, iterations


class Gridworld:
    """A deterministic gridworld with one terminal goal (see the module docstring).

    Args:
        height, width: grid size; ``(row, column)`` cells, row 0 at the top.
        goal: the terminal goal cell ``(row, column)``.
        walls: cells that are not states (moves into them stay put).
        discount: γ in [0, 1).
        step_reward: reward of every action taken outside the goal (default -1: values count steps).
        goal_reward: extra reward on the step that enters the goal.

    Attributes:
        cells: ``(S, 2)`` int ``(row, column)`` of each state, row-major; ``goal_state`` its goal index.
        next_state: ``(S, A)`` int, the deterministic successor of each state and action.
        rewards: ``(S, A)`` float32, 0 in the goal row.
        start_mask: ``(S,)`` bool, True for every non-goal state (the start states).
        dynamics: the same as a ``Dynamics`` pytree of JAX arrays.
    """

    def __init__(
        self,
        height: int,
        width: int,
        goal: tuple[int, int],
        walls: Sequence[tuple[int, int]] = (),
        discount: float = 0.9,
        step_reward: float = -1.0,
        goal_reward: float = 0.0,
    ):
        for name, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name}={value!r} must be an int >= 1.")
        height, width = int(height), int(width)
        goal = _cell(goal, "goal", height, width)
        walls = {_cell(w, f"walls[{i}]", height, width) for i, w in enumerate(walls)}
        if goal in walls:
            raise ValueError(f"goal={goal} is also a wall; remove it from walls.")
        discount = _number(discount, "discount")
        if not 0.0 <= discount < 1.0:
            raise ValueError(f"discount={discount} must lie in [0, 1) so that every policy has finite values.")
        self.height, self.width, self.goal, self.walls = height, width, goal, tuple(sorted(walls))
        self.discount = discount
        self.step_reward, self.goal_reward = _number(step_reward, "step_reward"), _number(goal_reward, "goal_reward")

        cells = [(r, c) for r in range(height) for c in range(width) if (r, c) not in walls]
        if len(cells) < 2:
            raise ValueError("the grid has no state besides the goal; enlarge it or remove walls.")
        index = {cell: s for s, cell in enumerate(cells)}
        self.cells = np.array(cells, np.int32)
        self.goal_state = index[goal]
        self.next_state = np.zeros((len(cells), len(ACTIONS)), np.int32)
        for s, (r, c) in enumerate(cells):
            for a, (dr, dc) in enumerate(_MOVES):
                self.next_state[s, a] = index.get((r + dr, c + dc), s)
        self.rewards = np.full(self.next_state.shape, self.step_reward, np.float32)
        self.rewards[self.next_state == self.goal_state] += self.goal_reward
        self.rewards[self.goal_state] = 0.0
        self.start_mask = np.arange(len(cells)) != self.goal_state
        self.dynamics = Dynamics(
            jnp.asarray(self.next_state), jnp.asarray(self.rewards), jnp.asarray(self.start_mask, jnp.float32), self.discount
        )
        self._optimal: dict[float, tuple[Array, Array]] = {}

    @property
    def num_states(self) -> int:
        """S, the number of free cells (the goal included)."""
        return len(self.cells)

    @property
    def num_actions(self) -> int:
        """A = 4."""
        return len(ACTIONS)

    def __repr__(self) -> str:
        return (
            f"Gridworld(height={self.height}, width={self.width}, goal={self.goal}, walls={list(self.walls)}, "
            f"discount={self.discount}, step_reward={self.step_reward}, goal_reward={self.goal_reward})"
        )

    # -----------------------------------------------------------------------------------------
    # exact values

    def _check_logits(self, logits) -> Array:
        logits = jnp.asarray(logits)
        if logits.shape != (self.num_states, self.num_actions):
            raise ValueError(
                f"logits has shape {logits.shape}; expected (num_states, num_actions) = "
                f"{(self.num_states, self.num_actions)}, one row per state (world.cells)."
            )
        return logits

    def value_iteration(
        self, temperature: float = 0.0, *, tolerance: float = 1e-6, max_iterations: int = 10_000
    ) -> tuple[Array, Array]:
        """Optimal (soft) values by value iteration in a ``lax.while_loop``, then policy iteration.

        Bellman backups ``v <- max_a r + γ v(next)`` (τ·logsumexp(·/τ) for τ > 0) from v = 0 run
        until the largest change is at most ``tolerance``; then ``_POLISH_STEPS`` exact evaluations
        of the (soft-)greedy policy make the values exact to float32 rounding.

        Args:
            temperature: τ >= 0; 0 is the ordinary (hard) optimum.
            tolerance: stopping threshold on ``max |Δv|``.
            max_iterations: a cap; a warning names it if the backups had not converged.

        Returns:
            ``(values (S,), q_values (S, A))``, with value 0 (and q 0) at the goal.
        """
        temperature = self._check_temperature(temperature)
        if isinstance(max_iterations, bool) or not isinstance(max_iterations, (int, np.integer)) or max_iterations < 1:
            raise ValueError(f"max_iterations={max_iterations!r} must be an int >= 1.")
        tolerance = _number(tolerance, "tolerance")
        if tolerance <= 0:
            raise ValueError(f"tolerance={tolerance} must be > 0 (float32 values stop changing near 1e-7).")
        # Evaluated eagerly even when called inside a jit trace: v* is a constant of any program.
        with jax.ensure_compile_time_eval():
            values, q_values, change, _ = _solve(self.dynamics, tolerance, temperature=temperature, max_iterations=int(max_iterations))
            converged = float(change) <= tolerance
        if not converged:
            warnings.warn(
                f"value iteration stopped at max_iterations={max_iterations} with max |Δv| = {float(change):.3g} > "
                f"tolerance={tolerance}; raise max_iterations (γ={self.discount} contracts slowly) or the tolerance.",
                RuntimeWarning,
                stacklevel=2,
            )
        return values, q_values

    def optimal_values(self, temperature: float = 0.0) -> Array:
        """v*_τ ``(S,)`` (``value_iteration``), cached per temperature."""
        temperature = self._check_temperature(temperature)
        if temperature not in self._optimal:
            self._optimal[temperature] = self.value_iteration(temperature)
        return self._optimal[temperature][0]

    def optimal_actions(self, tolerance: float = 1e-5) -> np.ndarray:
        """``(S, A)`` bool: the actions within ``tolerance`` of the best (hard) action value."""
        self.optimal_values(0.0)
        q_values = np.asarray(self._optimal[0.0][1])
        return q_values >= q_values.max(axis=1, keepdims=True) - tolerance

    def optimal_logits(self, temperature: float) -> Array:
        """The optimal policy's logits ``(S, A)``: Q*_τ / τ for τ > 0 (softmax of it is optimal).

        For τ = 0 the optimum is deterministic and lies at infinite logits; use
        ``jnp.where(world.optimal_actions(), 0.0, -30.0)`` for a policy within e^-30 of it.
        """
        temperature = self._check_temperature(temperature)
        if temperature == 0.0:
            raise ValueError(
                "temperature=0: the hard optimum needs infinite logits; pass temperature > 0 or use "
                "jnp.where(world.optimal_actions(), 0.0, -30.0)."
            )
        self.optimal_values(temperature)
        return self._optimal[temperature][1] / temperature

    def policy_values(self, logits: Array, temperature: float = 0.0) -> Array:
        """Exact (soft) values ``(S,)`` of π = softmax(logits), solving ``(I - γ P_π) v = r_π``.

        Args:
            logits: ``(S, A)``, one row per state.
            temperature: τ >= 0; with τ > 0, r_π gains τ·H(π(·|s)) outside the goal.

        Returns:
            ``(S,)`` values, differentiable in ``logits``; 0 at the goal.
        """
        logits = self._check_logits(logits)
        temperature = self._check_temperature(temperature)
        return _evaluate(self.dynamics, jax.nn.softmax(logits, axis=1), jax.nn.log_softmax(logits, axis=1), temperature)

    def state_regret(self, logits: Array, temperature: float = 0.0) -> Array:
        """``(S,)`` v*_τ - v^τ_π per state (>= 0, 0 at the goal), differentiable in ``logits``."""
        return self.optimal_values(temperature) - self.policy_values(logits, temperature)

    def regret(self, logits: Array, temperature: float = 0.0) -> Array:
        """The scalar mean over start states (every non-goal state) of ``state_regret``."""
        return jnp.mean(self.state_regret(logits, temperature)[jnp.asarray(np.flatnonzero(self.start_mask))])

    # -----------------------------------------------------------------------------------------
    # the sampler's view: data = start states

    def start_states(self) -> dict[str, np.ndarray]:
        """``{"inputs": (S - 1,) int32}``, the index of every start state: the data of ``regret_loss``."""
        return {"inputs": np.flatnonzero(self.start_mask).astype(np.int32)}

    def state_features(self) -> np.ndarray:
        """``(S, height + width)`` float32: one-hot row then one-hot column of each state."""
        return np.concatenate(
            [np.eye(self.height, dtype=np.float32)[self.cells[:, 0]], np.eye(self.width, dtype=np.float32)[self.cells[:, 1]]],
            axis=1,
        )

    def regret_loss(self, temperature: float = 0.0) -> Callable[[Array, Batch], Array]:
        """A per-state loss ``loss(logits, batch) -> (batch,)``: ``state_regret`` at the batch's states.

        The batch is ``{"inputs": state indices (batch,)}`` (``start_states()``) or a tuple whose
        first entry holds them.

        ``logits`` is the full ``(S, A)`` table (the policy at every state enters each state's
        value). For a tabular policy it is the ``loss_fn(params, batch)`` itself (params = logits);
        for a network policy pass it to ``slt_jax.from_nnx(model, loss,
        inputs=lambda batch: world.state_features())``. The mean over ``start_states()`` is
        ``regret``. v*_τ is computed here, once.

        >>> import jax.numpy as jnp, slt_jax as sj
        >>> world = sj.gridworld.Gridworld(1, 3, goal=(0, 2))
        >>> loss_fn = world.regret_loss()
        >>> loss_fn(jnp.zeros((3, 4)), world.start_states()).shape
        (2,)
        """
        optimal = self.optimal_values(temperature)

        def loss(logits: Array, batch: Batch) -> Array:
            return (optimal - self.policy_values(logits, temperature))[batch_inputs(batch)]

        return loss

    def _check_temperature(self, temperature) -> float:
        temperature = _number(temperature, "temperature")
        if temperature < 0:
            raise ValueError(f"temperature={temperature} must be >= 0 (0 = no entropy regularization).")
        return temperature
