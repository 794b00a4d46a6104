"""Tests for slt_jax.zoo.tasks: seeded, correct synthetic data."""

import chex
import numpy as np
import pytest

import slt_jax as sj
from slt_jax.zoo.tasks import BOOLEAN_TOKENS


def _same(a, b):
    return all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("widths, rank", [([4, 3, 5], 0), ([4, 3, 5], 2), ([5, 5, 5], 5), ([6, 4, 8, 3], 2)])
def test_dln_teacher_has_the_chosen_product_rank(widths, rank):
    kernels = sj.tasks.dln_teacher(7, widths, rank)
    assert [k.shape for k in kernels] == [(widths[j], widths[j + 1]) for j in range(len(widths) - 1)]
    product = kernels[0]
    for kernel in kernels[1:]:
        product = product @ kernel
    assert sj.theory.matrix_rank(product, rtol=1e-5) == rank
    with pytest.raises(ValueError, match="rank"):
        sj.tasks.dln_teacher(0, widths, min(widths) + 1)


def test_dln_regression():
    kernels = sj.tasks.dln_teacher(0, [3, 4, 2], 2)
    clean = sj.tasks.dln_regression(1, kernels, 50, noise_std=0.0)
    chex.assert_shape([clean["inputs"], clean["targets"]], [(50, 3), (50, 2)])
    np.testing.assert_allclose(clean["targets"], clean["inputs"] @ kernels[0] @ kernels[1], rtol=1e-5, atol=1e-5)
    noisy = sj.tasks.dln_regression(1, kernels, 4000, noise_std=0.5)
    residual = noisy["targets"] - noisy["inputs"] @ kernels[0] @ kernels[1]
    assert abs(residual.std() - 0.5) < 0.02
    assert _same(noisy, sj.tasks.dln_regression(1, kernels, 4000, noise_std=0.5))


def test_modular_addition_covers_every_pair():
    data = sj.tasks.modular_addition(7, seed=3)
    chex.assert_shape([data["inputs"], data["targets"], data["operands"]], [(49, 14), (49,), (49, 2)])
    a, b = data["operands"].T
    np.testing.assert_array_equal(data["targets"], (a + b) % 7)
    np.testing.assert_array_equal(data["inputs"][:, :7].argmax(1), a)
    np.testing.assert_array_equal(data["inputs"][:, 7:].argmax(1), b)
    assert len({(x, y) for x, y in data["operands"]}) == 49
    assert not np.array_equal(data["operands"], sj.tasks.modular_addition(7, seed=4)["operands"])
    train, test = sj.tasks.train_test_split(data, 0.6, seed=0)
    assert len(train["targets"]) == 29 and len(test["targets"]) == 20
    assert not {tuple(x) for x in train["operands"]} & {tuple(x) for x in test["operands"]}


def test_repeated_tokens():
    data = sj.tasks.repeated_tokens(0, 10, vocab_size=5, prefix_length=4, num_repeats=3)
    tokens = data["inputs"]
    chex.assert_shape(tokens, (10, 12))
    assert tokens.dtype == np.int32 and tokens.min() >= 0 and tokens.max() < 5
    np.testing.assert_array_equal(tokens[:, 4:8], tokens[:, :4])
    np.testing.assert_array_equal(tokens[:, 8:], tokens[:, :4])
    assert _same(data, sj.tasks.repeated_tokens(0, 10, 5, 4, 3))
    assert not _same(data, sj.tasks.repeated_tokens(1, 10, 5, 4, 3))


@pytest.mark.parametrize("num_tasks", [None, 3])
def test_in_context_regression(num_tasks):
    dim, context = 3, 6
    data = sj.tasks.in_context_regression(0, 40, dim, context, num_tasks=num_tasks)
    chex.assert_shape([data["inputs"], data["targets"], data["task_index"]], [(40, 2 * context, dim + 1), (40, context), (40,)])
    xs, ys = data["inputs"][:, 0::2, 1:], data["inputs"][:, 1::2, 0]
    np.testing.assert_array_equal(ys, data["targets"])
    assert not np.any(data["inputs"][:, 0::2, 0]) and not np.any(data["inputs"][:, 1::2, 1:])
    # Noise-free: each sequence's task vector is recovered exactly by least squares.
    tasks = np.stack([np.linalg.lstsq(x, y, rcond=None)[0] for x, y in zip(xs, ys)])
    if num_tasks is None:
        assert np.all(data["task_index"] == -1)
        assert len(np.unique(tasks.round(3), axis=0)) == 40
    else:
        assert set(data["task_index"].tolist()) <= set(range(num_tasks))
        assert len(np.unique(tasks.round(3), axis=0)) <= num_tasks
        # Another seed with the same task_seed shares the pool.
        other = sj.tasks.in_context_regression(1, 40, dim, context, num_tasks=num_tasks)
        other_tasks = np.stack([np.linalg.lstsq(x, y, rcond=None)[0] for x, y in zip(other["inputs"][:, 0::2, 1:], other["targets"])])
        for index in range(num_tasks):
            mine, theirs = tasks[data["task_index"] == index], other_tasks[other["task_index"] == index]
            if len(mine) and len(theirs):
                np.testing.assert_allclose(mine[0], theirs[0], rtol=1e-3, atol=1e-4)



def test_regression_task_pool_is_the_pool_of_in_context_regression():
    pool = sj.tasks.regression_task_pool(3, 2, task_seed=5)
    chex.assert_shape(pool, (3, 2))
    data = sj.tasks.in_context_regression(0, 30, 2, 4, num_tasks=3, task_seed=5)
    xs = data["inputs"][:, 0::2, 1:]
    np.testing.assert_allclose(data["targets"], np.einsum("nkd,nd->nk", xs, pool[data["task_index"]]), rtol=1e-5, atol=1e-5)


def test_ridge_predictions_are_the_posterior_mean():
    rng = np.random.default_rng(0)
    dim, context, noise_std, prior_std = 2, 4, 0.5, 2.0
    inputs = np.zeros((3, 2 * context, dim + 1))
    inputs[:, 0::2, 1:] = rng.normal(size=(3, context, dim))
    inputs[:, 1::2, 0] = rng.normal(size=(3, context))
    predictions = sj.tasks.ridge_predictions(inputs, noise_std, prior_std)
    chex.assert_shape(predictions, (3, context))
    for i in range(3):
        xs, ys = inputs[i, 0::2, 1:], inputs[i, 1::2, 0]
        for k in range(context):
            # Posterior of t ~ N(0, τ² I) given y_j = t·x_j + N(0, σ²), j < k.
            precision = xs[:k].T @ xs[:k] / noise_std**2 + np.eye(dim) / prior_std**2
            mean = np.linalg.solve(precision, xs[:k].T @ ys[:k] / noise_std**2)
            np.testing.assert_allclose(predictions[i, k], xs[k] @ mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(predictions[:, 0], 0.0)  # no context: the prior mean
    # Noise-free data: once k >= d pairs are seen the interpolant recovers each task exactly.
    data = sj.tasks.in_context_regression(1, 10, 3, 6)
    exact = sj.tasks.ridge_predictions(data["inputs"], noise_std=0.0)
    np.testing.assert_allclose(exact[:, 3:], data["targets"][:, 3:], atol=1e-4)
    assert np.max(np.abs(exact[:, :3] - data["targets"][:, :3])) > 0.1


def test_dmmse_concentrates_on_the_true_task():
    num_tasks, dim, context = 5, 3, 12
    data = sj.tasks.in_context_regression(0, 40, dim, context, num_tasks=num_tasks, noise_std=0.05)
    pool = sj.tasks.regression_task_pool(num_tasks, dim)
    posterior = sj.tasks.dmmse_posterior(data["inputs"], pool, noise_std=0.05)
    chex.assert_shape(posterior, (40, context, num_tasks))
    np.testing.assert_allclose(posterior.sum(axis=-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(posterior[:, 0], 1.0 / num_tasks)  # the uniform prior
    true_weight = posterior[np.arange(40), :, data["task_index"]]  # (40, context)
    assert np.all(true_weight[:, -1] > 1 - 1e-6)
    assert np.mean(true_weight[:, 1]) < np.mean(true_weight[:, 3]) < np.mean(true_weight[:, -1])
    predictions = sj.tasks.dmmse_predictions(data["inputs"], pool, noise_std=0.05)
    chex.assert_shape(predictions, (40, context))
    clean = np.einsum("nkd,nd->nk", data["inputs"][:, 0::2, 1:], pool[data["task_index"]])
    error = np.abs(predictions - clean).mean(axis=0)
    assert error[-1] < 1e-5 < error[0]
    # One task in the pool: the posterior is certain and the predictor is that task, exactly.
    single = sj.tasks.in_context_regression(2, 6, dim, 4, num_tasks=1, noise_std=0.5)
    one = sj.tasks.regression_task_pool(1, dim)
    np.testing.assert_allclose(
        sj.tasks.dmmse_predictions(single["inputs"], one, noise_std=0.5),
        np.einsum("nkd,d->nk", single["inputs"][:, 0::2, 1:].astype(np.float64), one[0]),
        rtol=1e-12,
    )


def test_reference_predictors_validate_their_input():
    data = sj.tasks.in_context_regression(0, 4, 2, 3)
    with pytest.raises(ValueError, match="inputs has shape"):
        sj.tasks.ridge_predictions(data["inputs"][:, :5], 0.1)
    with pytest.raises(ValueError, match="noise_std"):
        sj.tasks.ridge_predictions(data["inputs"], -1.0)
    with pytest.raises(ValueError, match="prior_std"):
        sj.tasks.ridge_predictions(data["inputs"], 0.1, prior_std=0.0)
    with pytest.raises(ValueError, match="task_pool"):
        sj.tasks.dmmse_predictions(data["inputs"], np.zeros((3, 5)), 0.1)
    with pytest.raises(ValueError, match="noise_std"):
        sj.tasks.dmmse_predictions(data["inputs"], np.zeros((3, 2)), 0.0)

def _balanced(string):
    depth = 0
    for symbol in string:
        depth += 1 if symbol == 0 else -1
        if depth < 0:
            return False
    return depth == 0


def test_balanced_parentheses():
    data = sj.tasks.balanced_parentheses(0, 101, 8)
    chex.assert_shape([data["inputs"], data["targets"]], [(101, 8), (101,)])
    np.testing.assert_array_equal(data["targets"], [int(_balanced(s)) for s in data["inputs"]])
    assert data["targets"].sum() == 51
    np.testing.assert_array_equal(data["inputs"].sum(axis=1), 4)  # hard negatives: equal counts
    assert _same(data, sj.tasks.balanced_parentheses(0, 101, 8))
    with pytest.raises(ValueError, match="even"):
        sj.tasks.balanced_parentheses(0, 10, 7)


def _evaluate_prefix(tokens, assignment):
    """Independent stack evaluator: scan the prefix formula from the right."""
    stack = []
    for token in reversed([t for t in tokens if t != BOOLEAN_TOKENS["pad"]]):
        if token >= BOOLEAN_TOKENS["x0"]:
            stack.append(bool(assignment[token - BOOLEAN_TOKENS["x0"]]))
        elif token == BOOLEAN_TOKENS["not"]:
            stack.append(not stack.pop())
        else:
            left, right = stack.pop(), stack.pop()
            stack.append(left and right if token == BOOLEAN_TOKENS["and"] else left or right)
    assert len(stack) == 1
    return stack[0]


def test_boolean_formulas():
    depth, num_variables = 3, 3
    data = sj.tasks.boolean_formulas(0, 60, num_variables, depth)
    length = 2 ** (depth + 1) - 1
    chex.assert_shape([data["inputs"], data["targets"]], [(60, length + 1 + num_variables), (60,)])
    assert data["targets"].sum() == 30
    for row, target in zip(data["inputs"], data["targets"]):
        assert row[length] == BOOLEAN_TOKENS["sep"]
        assignment = row[length + 1:] == BOOLEAN_TOKENS["true"]
        assert _evaluate_prefix(row[:length], assignment) == bool(target)
    assert _same(data, sj.tasks.boolean_formulas(0, 60, num_variables, depth))


def test_seeds_are_validated():
    with pytest.raises(TypeError, match="seed"):
        sj.tasks.repeated_tokens(1.5, 4, 3, 2)
    with pytest.raises(ValueError, match="train_fraction"):
        sj.tasks.train_test_split({"x": np.zeros(3)}, 0.0)


def test_planted_subtasks_blocks_and_noise():
    data = sj.tasks.planted_subtasks(0, 1000, noise_std=0.3, num_groups=3)
    assert data["inputs"].shape == (3000, 6) and data["targets"].shape == (3000, 1)
    assert data["groups"].tolist() == [0] * 1000 + [1] * 1000 + [2] * 1000
    for g in range(3):  # each group lives on its own two coordinates, nowhere else
        rows = data["inputs"][data["groups"] == g]
        assert np.all(rows[:, 2 * g:2 * g + 2] != 0) and np.all(np.delete(rows, [2 * g, 2 * g + 1], axis=1) == 0)
        assert np.all(np.abs(rows) <= 2.0)
    noiseless = sj.tasks.planted_subtasks(0, 1000, noise_std=0.0)
    np.testing.assert_array_equal(noiseless["inputs"], data["inputs"])  # the noise draws do not move the inputs
    z = (data["targets"] - noiseless["targets"])[:, 0] / 0.3  # the label noise itself: N(0, 1)
    assert abs(z.mean()) < 4 / np.sqrt(z.size) and abs(z.var() - 1) < 4 * np.sqrt(2 / z.size)
    signal = noiseless["targets"][:, 0] - 0.5 * np.prod(noiseless["inputs"].reshape(3000, 3, 2).sum(axis=1), axis=1)
    assert np.all(np.abs(signal) <= 1 + 1e-5)  # sin(z . a_g) lies in [-1, 1]
    assert _same(data, sj.tasks.planted_subtasks(0, 1000, noise_std=0.3))
    with pytest.raises(ValueError, match="noise_std"):
        sj.tasks.planted_subtasks(0, 10, noise_std=-1.0)
