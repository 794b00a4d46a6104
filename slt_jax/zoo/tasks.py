"""Seeded synthetic tasks, generated in code (no downloads).

Every generator takes an integer ``seed`` (numpy ``default_rng``) and returns a dict of numpy
arrays sharing a leading example axis, ready for ``slt_jax.from_nnx`` batches (``"inputs"`` and,
where the task has them, ``"targets"``) and for the sampler's ``data``. ``train_test_split`` splits
any of them.

==========================  ====================================  =============================
generator                   inputs                                targets
==========================  ====================================  =============================
``dln_regression``          ``(n, H_1)`` float                    ``(n, H_{L+1})`` float
``modular_addition``        ``(p², 2p)`` one-hot of (a, b)        ``(p²,)`` (a + b) mod p
``repeated_tokens``         ``(n, prefix * repeats)`` int         none: use ``"next_token"``
``in_context_regression``   ``(n, 2K, d + 1)`` (x, y) tokens      ``(n, K)`` y_k
``balanced_parentheses``    ``(n, length)`` int, 0 = "(", 1 = ")" ``(n,)`` 1 if balanced
``boolean_formulas``        ``(n, 2^(depth+1) + v)`` int tokens   ``(n,)`` truth value
``planted_subtasks``        ``(n, 2G)`` float, one block per group ``(n, 1)`` float (+ ``"groups"``)
==========================  ====================================  =============================

Reference predictors of in-context regression (the baselines of Raventós et al. 2023 and of the
transient-ridge study, Carroll et al. 2025): ``ridge_predictions`` (Bayes-optimal under the
Gaussian task prior) and ``dmmse_predictions`` (Bayes-optimal under the finite task pool, whose
tasks ``regression_task_pool`` returns).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "dln_teacher",
    "dln_regression",
    "modular_addition",
    "repeated_tokens",
    "in_context_regression",
    "regression_task_pool",
    "ridge_predictions",
    "dmmse_posterior",
    "dmmse_predictions",
    "balanced_parentheses",
    "boolean_formulas",
    "BOOLEAN_TOKENS",
    "train_test_split",
]


def _check_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an int >= {minimum}.")
    return int(value)


def _rng(seed) -> np.random.Generator:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r}.")
    return np.random.default_rng(int(seed))


# ---------------------------------------------------------------------------------------------
# deep linear networks


def dln_teacher(seed: int, widths: Sequence[int], rank: int, scale: float = 1.0) -> list[np.ndarray]:
    """Teacher kernels of a deep linear network whose product has exactly rank ``rank``.

    Args:
        seed: random seed.
        widths: ``[H_1 (input), ..., H_{L+1} (output)]``.
        rank: rank of the product ``K_1 @ ... @ K_L``, ``0 <= rank <= min(widths)``.
        scale: entries are ``N(0, scale² / fan_in)``.

    Returns:
        Kernels ``[(H_1, H_2), ..., (H_L, H_{L+1})]`` (flax layout, ``x -> x @ K_1 @ ... @ K_L``),
        float32; ``slt_jax.zoo.models.DeepLinearNetwork(widths, kernels=..., rngs=...)`` loads them.
        The product has rank ``rank`` up to float32 rounding: check it with a float32 tolerance,
        e.g. ``slt_jax.zoo.theory.matrix_rank(product, rtol=1e-5)``.
    """
    widths = [_check_int(w, "widths[i]") for w in widths]
    if len(widths) < 2:
        raise ValueError(f"widths={widths} needs at least an input and an output width.")
    rank = _check_int(rank, "rank", minimum=0)
    if rank > min(widths):
        raise ValueError(f"rank={rank} exceeds min(widths)={min(widths)}; the product cannot have that rank.")
    rng = _rng(seed)
    kernels = [rng.normal(0.0, scale / np.sqrt(widths[j]), (widths[j], widths[j + 1])) for j in range(len(widths) - 1)]
    # A rank-r first factor makes the product rank r (generic Gaussian factors lose no more rank).
    left = rng.normal(0.0, 1.0, (widths[0], rank))
    right = rng.normal(0.0, scale / np.sqrt(widths[0] * max(rank, 1)), (rank, widths[1]))
    kernels[0] = left @ right
    product = kernels[0]
    for kernel in kernels[1:]:
        product = product @ kernel
    if np.linalg.matrix_rank(product) != rank:  # pragma: no cover - measure-zero event
        raise RuntimeError(f"seed={seed} produced a degenerate teacher; try another seed.")
    return [k.astype(np.float32) for k in kernels]


def dln_regression(
    seed: int, kernels: Sequence[np.ndarray], n: int, noise_std: float = 1.0, input_std: float = 1.0
) -> dict[str, np.ndarray]:
    """Regression data from a linear teacher: ``y = x @ K_1 @ ... @ K_L + noise_std * ξ``.

    Args:
        seed: random seed.
        kernels: teacher kernels (``dln_teacher``).
        n: number of examples.
        noise_std: Gaussian label noise (1 matches the ``"mse"`` loss's unit-variance likelihood).
        input_std: inputs are ``N(0, input_std² I)``.

    Returns:
        ``{"inputs": (n, H_1), "targets": (n, H_{L+1})}`` float32.
    """
    n = _check_int(n, "n")
    if noise_std < 0 or input_std <= 0:
        raise ValueError(f"noise_std={noise_std} must be >= 0 and input_std={input_std} > 0.")
    rng = _rng(seed)
    product = kernels[0]
    for kernel in kernels[1:]:
        product = product @ kernel
    inputs = rng.normal(0.0, input_std, (n, product.shape[0]))
    targets = inputs @ product + noise_std * rng.normal(size=(n, product.shape[1]))
    return {"inputs": inputs.astype(np.float32), "targets": targets.astype(np.float32)}


# ---------------------------------------------------------------------------------------------
# modular addition


def modular_addition(modulus: int, seed: int = 0) -> dict[str, np.ndarray]:
    """All ``p²`` pairs ``(a, b)`` with target ``(a + b) mod p``, shuffled.

    Returns:
        ``{"inputs": (p², 2p) float32`` one-hot of a then b, ``"targets": (p²,) int32,
        "operands": (p², 2) int32}``. Split with ``train_test_split``.
    """
    p = _check_int(modulus, "modulus", minimum=2)
    rng = _rng(seed)
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    operands = np.stack([a.ravel(), b.ravel()], axis=1)[rng.permutation(p * p)]
    eye = np.eye(p, dtype=np.float32)
    inputs = np.concatenate([eye[operands[:, 0]], eye[operands[:, 1]]], axis=1)
    return {"inputs": inputs, "targets": ((operands[:, 0] + operands[:, 1]) % p).astype(np.int32), "operands": operands.astype(np.int32)}


# ---------------------------------------------------------------------------------------------
# sequences


def repeated_tokens(seed: int, n: int, vocab_size: int, prefix_length: int, num_repeats: int = 2) -> dict[str, np.ndarray]:
    """Uniform random token prefixes repeated ``num_repeats`` times (rewards an induction head).

    A token at position t >= prefix_length equals the token at t - prefix_length, so after the first
    repeat every next token is predictable by copying; before it the loss is at best
    ``log(vocab_size)``. With the ``"next_token"`` loss (``(batch, seq - 1)``, column t predicts
    position t + 1) the predictable columns are ``t >= prefix_length - 1``.

    Returns:
        ``{"inputs": (n, prefix_length * num_repeats) int32}``.
    """
    n, vocab_size = _check_int(n, "n"), _check_int(vocab_size, "vocab_size", minimum=2)
    prefix_length, num_repeats = _check_int(prefix_length, "prefix_length"), _check_int(num_repeats, "num_repeats")
    prefix = _rng(seed).integers(0, vocab_size, (n, prefix_length))
    return {"inputs": np.tile(prefix, (1, num_repeats)).astype(np.int32)}


def in_context_regression(
    seed: int,
    n: int,
    dim: int,
    num_context: int,
    num_tasks: int | None = None,
    noise_std: float = 0.0,
    task_seed: int = 0,
) -> dict[str, np.ndarray]:
    """In-context linear regression (Garg et al. 2022; Raventós et al. 2023).

    Sequence i has a task vector t ~ N(0, I_d), inputs x_k ~ N(0, I_d) and y_k = t·x_k + noise, for
    k < K = ``num_context``, laid out as 2K tokens of width d + 1: token 2k is ``(0, x_k)`` and token
    2k + 1 is ``(y_k, 0, ..., 0)``. A causal model predicts y_k at position 2k.

    Args:
        seed: random seed of the sequences.
        n: number of sequences.
        dim: d.
        num_context: K pairs per sequence.
        num_tasks: size of a finite task pool (M in Raventós et al.), drawn from ``task_seed`` so that
            several calls share it; ``None`` draws a fresh task per sequence (infinite pool).
        noise_std: label noise.
        task_seed: seed of the finite pool (``regression_task_pool(num_tasks, dim, task_seed)``).

    Returns:
        ``{"inputs": (n, 2K, d + 1), "targets": (n, K)}`` float32 and ``"task_index": (n,)`` int32
        (-1 with an infinite pool).
    """
    n, dim, num_context = _check_int(n, "n"), _check_int(dim, "dim"), _check_int(num_context, "num_context")
    rng = _rng(seed)
    if num_tasks is None:
        tasks = rng.normal(size=(n, dim))
        task_index = np.full(n, -1, np.int32)
    else:
        pool = regression_task_pool(num_tasks, dim, task_seed)
        task_index = rng.integers(0, num_tasks, n).astype(np.int32)
        tasks = pool[task_index]
    xs = rng.normal(size=(n, num_context, dim))
    ys = np.einsum("nkd,nd->nk", xs, tasks) + noise_std * rng.normal(size=(n, num_context))
    tokens = np.zeros((n, 2 * num_context, dim + 1))
    tokens[:, 0::2, 1:] = xs
    tokens[:, 1::2, 0] = ys
    return {"inputs": tokens.astype(np.float32), "targets": ys.astype(np.float32), "task_index": task_index}


def regression_task_pool(num_tasks: int, dim: int, task_seed: int = 0) -> np.ndarray:
    """The finite task pool of ``in_context_regression(..., num_tasks, task_seed=task_seed)``.

    Returns:
        ``(num_tasks, dim)`` float64, task m in row m (``task_index`` indexes it); entries N(0, 1).
    """
    num_tasks, dim = _check_int(num_tasks, "num_tasks"), _check_int(dim, "dim")
    return _rng(task_seed).normal(size=(num_tasks, dim))


def _split_regression_tokens(inputs) -> tuple[np.ndarray, np.ndarray]:
    """``(n, 2K, d + 1)`` tokens -> xs ``(n, K, d)`` and ys ``(n, K)`` in float64."""
    inputs = np.asarray(inputs, np.float64)
    if inputs.ndim != 3 or inputs.shape[1] % 2 or inputs.shape[1] == 0 or inputs.shape[2] < 2:
        raise ValueError(
            f"inputs has shape {inputs.shape}; expected (n, 2K, d + 1) tokens from in_context_regression "
            "(an even number of tokens, width >= 2). Pass data['inputs']."
        )
    return inputs[:, 0::2, 1:], inputs[:, 1::2, 0]


def _check_std(value, name: str, allow_zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not np.isfinite(value):
        raise TypeError(f"{name}={value!r} must be a finite number.")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name}={value!r} must be {'>= 0' if allow_zero else '> 0'}.")
    return float(value)


def ridge_predictions(inputs, noise_std: float, prior_std: float = 1.0) -> np.ndarray:
    """The Bayes-optimal prediction of every y_k under a Gaussian task prior: ridge on the context.

    With tasks t ~ N(0, τ² I) (τ = ``prior_std``) and y = t·x + N(0, σ²) (σ = ``noise_std``), the
    posterior mean of t given the pairs j < k is ``t̂_k = (X_kᵀX_k + (σ²/τ²) I)⁻¹ X_kᵀ y_k`` (X_k the
    k × d matrix of earlier inputs) and the prediction at token 2k is ``x_k · t̂_k`` (0 at k = 0).
    With ``noise_std=0`` it is the limit σ → 0, the minimum-norm interpolant ``pinv(X_k) y_k``.

    Args:
        inputs: ``(n, 2K, d + 1)`` tokens of ``in_context_regression``.
        noise_std: σ of the label noise the predictor assumes (>= 0).
        prior_std: τ of the task prior (> 0); ``in_context_regression`` draws tasks with τ = 1.

    Returns:
        ``(n, K)`` float64 predictions, column k predicting ``targets[:, k]`` from the context so far.

    >>> import numpy as np, slt_jax as sj
    >>> data = sj.tasks.in_context_regression(0, n=5, dim=2, num_context=6)
    >>> predictions = sj.tasks.ridge_predictions(data["inputs"], noise_std=0.0)
    >>> predictions.shape, bool(np.allclose(predictions[:, 2:], data["targets"][:, 2:], atol=1e-4))
    ((5, 6), True)
    """
    xs, ys = _split_regression_tokens(inputs)
    noise_std = _check_std(noise_std, "noise_std", allow_zero=True)
    prior_std = _check_std(prior_std, "prior_std", allow_zero=False)
    dim = xs.shape[2]
    # Sufficient statistics of the pairs j < k: exclusive cumulative sums over the context axis.
    outer = np.einsum("nki,nkj->nkij", xs, xs)
    gram = np.cumsum(outer, axis=1) - outer  # (n, K, d, d)
    moment = np.cumsum(xs * ys[..., None], axis=1) - xs * ys[..., None]  # (n, K, d)
    if noise_std > 0:
        ridge = (noise_std / prior_std) ** 2 * np.eye(dim)
        tasks = np.linalg.solve(gram + ridge, moment[..., None])[..., 0]
    else:
        tasks = np.einsum("nkij,nkj->nki", np.linalg.pinv(gram, rcond=1e-10, hermitian=True), moment)
    return np.einsum("nkd,nkd->nk", xs, tasks)


def dmmse_posterior(inputs, task_pool, noise_std: float) -> np.ndarray:
    """The posterior over a finite task pool after each context prefix (uniform prior over the pool).

    ``p_k(m) ∝ exp(-Σ_{j<k} (y_j - t_m·x_j)² / (2σ²))``, the weights that ``dmmse_predictions``
    averages with.

    Args:
        inputs: ``(n, 2K, d + 1)`` tokens of ``in_context_regression``.
        task_pool: ``(M, d)`` tasks (``regression_task_pool``).
        noise_std: σ > 0 of the label noise the predictor assumes (the noise-free posterior is a hard
            argmin: pass a small σ such as 1e-3 for noise-free data).

    Returns:
        ``(n, K, M)`` float64; row ``[i, k]`` sums to 1 and is uniform at k = 0.
    """
    xs, ys = _split_regression_tokens(inputs)
    pool = np.asarray(task_pool, np.float64)
    if pool.ndim != 2 or pool.shape[1] != xs.shape[2] or pool.shape[0] == 0:
        raise ValueError(f"task_pool has shape {pool.shape}; expected (M, d = {xs.shape[2]}), e.g. regression_task_pool(M, d).")
    noise_std = _check_std(noise_std, "noise_std", allow_zero=False)
    squared = (ys[..., None] - np.einsum("nkd,md->nkm", xs, pool)) ** 2  # (n, K, M)
    log_weights = -(np.cumsum(squared, axis=1) - squared) / (2.0 * noise_std**2)
    log_weights -= log_weights.max(axis=-1, keepdims=True)
    weights = np.exp(log_weights)
    return weights / weights.sum(axis=-1, keepdims=True)


def dmmse_predictions(inputs, task_pool, noise_std: float) -> np.ndarray:
    """The Bayes-optimal prediction of every y_k when tasks are drawn uniformly from ``task_pool``.

    The discrete minimum-mean-squared-error predictor (dMMSE, Raventós et al. 2023): the
    posterior-weighted average ``Σ_m p_k(m) t_m·x_k`` of the pool tasks' predictions, with
    ``p_k = dmmse_posterior(...)[:, k]`` the posterior given the pairs j < k.

    Args:
        inputs: ``(n, 2K, d + 1)`` tokens of ``in_context_regression``.
        task_pool: ``(M, d)`` tasks (``regression_task_pool(num_tasks, dim, task_seed)``).
        noise_std: σ > 0 of the label noise the predictor assumes.

    Returns:
        ``(n, K)`` float64 predictions, column k predicting ``targets[:, k]``.

    >>> import numpy as np, slt_jax as sj
    >>> data = sj.tasks.in_context_regression(0, n=5, dim=2, num_context=6, num_tasks=4, noise_std=0.1)
    >>> pool = sj.tasks.regression_task_pool(4, 2)
    >>> sj.tasks.dmmse_predictions(data["inputs"], pool, noise_std=0.1).shape
    (5, 6)
    """
    xs, _ = _split_regression_tokens(inputs)
    weights = dmmse_posterior(inputs, task_pool, noise_std)
    return np.einsum("nkm,nkd,md->nk", weights, xs, np.asarray(task_pool, np.float64))


def _is_balanced(strings: np.ndarray) -> np.ndarray:
    depth = np.cumsum(np.where(strings == 0, 1, -1), axis=1)
    return (depth.min(axis=1) >= 0) & (depth[:, -1] == 0)


def balanced_parentheses(seed: int, n: int, length: int) -> dict[str, np.ndarray]:
    """Balanced-parentheses classification with hard negatives.

    Half the strings are balanced; the other half have as many "(" as ")" but are not balanced
    (the depth dips below zero), so counting alone cannot solve the task.

    Args:
        seed: random seed.
        n: number of strings.
        length: even string length.

    Returns:
        ``{"inputs": (n, length) int32`` with 0 = "(" and 1 = ")", ``"targets": (n,) int32``}.
    """
    n, length = _check_int(n, "n"), _check_int(length, "length", minimum=2)
    if length % 2:
        raise ValueError(f"length={length} must be even (a balanced string has as many '(' as ')').")
    rng = _rng(seed)
    wanted = {1: n // 2 + n % 2, 0: n // 2}
    found: dict[int, list[np.ndarray]] = {0: [], 1: []}
    base = np.repeat([0, 1], length // 2)
    while any(sum(len(x) for x in found[c]) < wanted[c] for c in (0, 1)):
        strings = rng.permuted(np.tile(base, (4 * n + 16, 1)), axis=1)
        balanced = _is_balanced(strings)
        for label, select in ((1, balanced), (0, ~balanced)):
            found[label].append(strings[select])
    positives = np.concatenate(found[1])[: wanted[1]]
    negatives = np.concatenate(found[0])[: wanted[0]]
    inputs = np.concatenate([positives, negatives])
    targets = np.concatenate([np.ones(len(positives)), np.zeros(len(negatives))])
    order = rng.permutation(n)
    return {"inputs": inputs[order].astype(np.int32), "targets": targets[order].astype(np.int32)}


BOOLEAN_TOKENS = {"pad": 0, "not": 1, "and": 2, "or": 3, "false": 4, "true": 5, "sep": 6, "x0": 7}
"""Token ids of ``boolean_formulas``; variable i is ``BOOLEAN_TOKENS["x0"] + i``."""


def _random_formula(rng: np.random.Generator, depth: int, num_variables: int) -> list[int]:
    if depth == 0 or rng.random() < 0.2:
        return [BOOLEAN_TOKENS["x0"] + int(rng.integers(num_variables))]
    op = ("not", "and", "or")[int(rng.integers(3))]
    if op == "not":
        return [BOOLEAN_TOKENS["not"]] + _random_formula(rng, depth - 1, num_variables)
    return [BOOLEAN_TOKENS[op]] + _random_formula(rng, depth - 1, num_variables) + _random_formula(rng, depth - 1, num_variables)


def _evaluate(tokens: list[int], position: int, assignment: np.ndarray) -> tuple[bool, int]:
    token = tokens[position]
    if token >= BOOLEAN_TOKENS["x0"]:
        return bool(assignment[token - BOOLEAN_TOKENS["x0"]]), position + 1
    if token == BOOLEAN_TOKENS["not"]:
        value, position = _evaluate(tokens, position + 1, assignment)
        return not value, position
    left, position = _evaluate(tokens, position + 1, assignment)
    right, position = _evaluate(tokens, position, assignment)
    return (left and right) if token == BOOLEAN_TOKENS["and"] else (left or right), position


def boolean_formulas(seed: int, n: int, num_variables: int, depth: int) -> dict[str, np.ndarray]:
    """Random Boolean formulas with a variable assignment; the target is the formula's value.

    Each input is the formula in prefix (Polish) notation over ``not``/``and``/``or`` and variables,
    right-padded with ``pad`` to ``2^(depth+1) - 1`` tokens, then ``sep`` and the assignment as
    ``num_variables`` ``true``/``false`` tokens (ids in ``BOOLEAN_TOKENS``). Classes are balanced.

    Args:
        seed: random seed.
        n: number of examples.
        num_variables: number of distinct variables.
        depth: maximum nesting depth (>= 1).

    Returns:
        ``{"inputs": (n, 2^(depth+1) + num_variables) int32, "targets": (n,) int32}``.
    """
    n, num_variables, depth = _check_int(n, "n"), _check_int(num_variables, "num_variables"), _check_int(depth, "depth")
    if depth > 10:
        raise ValueError(f"depth={depth} gives sequences of 2^{depth + 1} tokens; use depth <= 10.")
    rng = _rng(seed)
    formula_length = 2 ** (depth + 1) - 1
    wanted = {1: n // 2 + n % 2, 0: n // 2}
    rows: dict[int, list[list[int]]] = {0: [], 1: []}
    for _ in range(200 * n):
        if all(len(rows[c]) >= wanted[c] for c in (0, 1)):
            break
        formula = _random_formula(rng, depth, num_variables)
        assignment = rng.integers(0, 2, num_variables)
        value = int(_evaluate(formula, 0, assignment)[0])
        if len(rows[value]) < wanted[value]:
            padded = formula + [BOOLEAN_TOKENS["pad"]] * (formula_length - len(formula))
            values = [BOOLEAN_TOKENS["true"] if a else BOOLEAN_TOKENS["false"] for a in assignment]
            rows[value].append(padded + [BOOLEAN_TOKENS["sep"]] + values)
    if any(len(rows[c]) < wanted[c] for c in (0, 1)):  # pragma: no cover - both classes are likely
        raise RuntimeError("could not balance the classes; increase num_variables or depth.")
    inputs = np.asarray(rows[1] + rows[0], np.int32)
    targets = np.concatenate([np.ones(wanted[1]), np.zeros(wanted[0])]).astype(np.int32)
    order = rng.permutation(n)
    return {"inputs": inputs[order], "targets": targets[order]}


def planted_subtasks(seed: int, per_group: int, noise_std: float = 0.3, num_groups: int = 3) -> dict[str, np.ndarray]:
    """Regression mixing ``num_groups`` planted sub-tasks: the known answer of data attribution.

    Group g's examples draw z ~ U[-2, 2]^2 and put it on input coordinates (2g, 2g + 1), zero
    elsewhere; their target is sin(z·a_g) + z_1 z_2 / 2 + ``noise_std``·N(0, 1) with frequencies
    a_g ~ U[0.5, 1.5]^2. The groups share no input coordinate, so an example's influence (BIF) or
    per-example gradient should single out its own group; the noise keeps w* from interpolating.

    Returns:
        ``{"inputs": (n, 2 G) float32, "targets": (n, 1) float32, "groups": (n,) int}`` with
        n = G · ``per_group``, examples ordered by group. Drop ``"groups"`` before sampling.
    """
    per_group, num_groups = _check_int(per_group, "per_group"), _check_int(num_groups, "num_groups")
    noise_std = _check_std(noise_std, "noise_std", allow_zero=True)
    rng = _rng(seed)
    groups = np.repeat(np.arange(num_groups), per_group)
    inputs, targets = np.zeros((groups.size, 2 * num_groups)), np.zeros(groups.size)
    frequencies = rng.uniform(0.5, 1.5, size=(num_groups, 2))
    for g in range(num_groups):
        z = rng.uniform(-2.0, 2.0, size=(per_group, 2))
        inputs[groups == g, 2 * g:2 * g + 2] = z
        targets[groups == g] = np.sin(z @ frequencies[g]) + 0.5 * z[:, 0] * z[:, 1] + noise_std * rng.normal(size=per_group)
    return {"inputs": inputs.astype(np.float32), "targets": targets[:, None].astype(np.float32), "groups": groups}


def train_test_split(data: dict[str, np.ndarray], train_fraction: float, seed: int = 0) -> tuple[dict, dict]:
    """Splits every array of ``data`` along axis 0 into (train, test) at random.

    Args:
        data: a dict of arrays sharing a leading axis n.
        train_fraction: in (0, 1]; the train set has ``round(train_fraction * n)`` examples.
        seed: random seed of the permutation.
    """
    if not 0.0 < train_fraction <= 1.0:
        raise ValueError(f"train_fraction={train_fraction} must lie in (0, 1].")
    lengths = {key: np.shape(value)[0] for key, value in data.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"data arrays have different lengths {lengths}.")
    n = next(iter(lengths.values()))
    order = _rng(seed).permutation(n)
    cut = int(round(train_fraction * n))
    train = {key: np.asarray(value)[order[:cut]] for key, value in data.items()}
    test = {key: np.asarray(value)[order[cut:]] for key, value in data.items()}
    return train, test
