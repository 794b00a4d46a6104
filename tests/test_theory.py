"""Closed forms of slt_jax.zoo.theory against docs/conventions.md §2 fixtures."""

import numpy as np
import pytest

from slt_jax.zoo import theory

DLN_FIXTURES = [
    ([3, 3], 0, 4.5),
    ([4, 2, 4], 1, 5.0),
    ([5, 5, 5], 1, 10.5),
    ([5, 3, 5], 0, 6.5),
    ([10, 10, 10], 5, 47.0),
    ([10, 10, 10, 10], 5, 46.0),
    ([6, 4, 8, 3], 2, 8.0),
    ([20, 5, 20], 3, 72.0),
    ([8, 8, 8, 8, 8, 8], 0, 19.5),
]


@pytest.mark.parametrize("widths,rank,expected", DLN_FIXTURES)
def test_dln_fixtures(widths, rank, expected):
    lam, multiplicity = theory.dln_learning_coefficient(widths, rank)
    np.testing.assert_allclose(lam, expected, atol=1e-9)
    assert multiplicity >= 1


def test_one_layer_is_regular():
    for a, b in [(3, 3), (2, 7), (5, 1)]:
        lam, m = theory.dln_learning_coefficient([a, b], 0)
        assert lam == theory.regular_llc(a * b) and m == 1


def test_multiplicity_of_known_cases():
    assert theory.dln_learning_coefficient([4, 2, 4], 1) == (5.0, 2)
    assert theory.dln_learning_coefficient([3, 3], 0)[1] == 1


def test_reduced_rank_regression_agrees_with_aoyagi_on_a_grid():
    for m in range(1, 7):
        for h in range(1, 7):
            for n in range(1, 7):
                for r in range(0, min(m, h, n) + 1):
                    rrr = theory.reduced_rank_regression_coefficient(m, h, n, r)
                    dln = theory.dln_learning_coefficient([m, h, n], r)
                    np.testing.assert_allclose(rrr[0], dln[0], err_msg=f"{(m, h, n, r)}")


def test_quadratic_llc_science_example():
    h = [1.0, 0.5, 0.1, 0.0]
    np.testing.assert_allclose(theory.quadratic_llc(h, 200.0, 1.0), 1.4688, atol=1e-4)
    np.testing.assert_allclose(theory.quadratic_llc(h, 200.0, 1.0, step_size=1e-3), 1.5104, atol=1e-4)
    with pytest.raises(ValueError, match="unstable"):
        theory.quadratic_llc(h, 200.0, 1.0, step_size=1.0)


def test_separable_and_matrix_rank():
    assert theory.separable_llc([2, 4]) == 0.75
    product = np.ones((4, 1)) @ np.ones((1, 5))
    assert theory.matrix_rank(product) == 1


def test_bad_widths_and_rank():
    with pytest.raises(ValueError, match="rank=4"):
        theory.dln_learning_coefficient([3, 3], 4)
    with pytest.raises(ValueError, match="widths"):
        theory.dln_learning_coefficient([3], 0)
