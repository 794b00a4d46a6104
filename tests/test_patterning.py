"""Patterning: ρ = 1 + α χᵀ(χχᵀ)^{-1} dμ and the reweighted loss (docs/conventions.md §3)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slt_jax as sj

import linear_gaussian as lg


def test_pattern_algebra_full_row_rank():
    rng = np.random.default_rng(0)
    chi = rng.normal(size=(3, 20))
    target = np.array([0.3, -0.1, 0.05])
    alpha = 2.5
    rho = sj.pattern(chi, target, alpha)
    np.testing.assert_allclose(chi @ (rho - 1) / alpha, target, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(rho, 1 + alpha * chi.T @ np.linalg.solve(chi @ chi.T, target), rtol=1e-12)
    # Minimum norm: ρ - 1 lies in the row space of χ.
    residual = (rho - 1) - chi.T @ np.linalg.lstsq(chi.T, rho - 1, rcond=None)[0]
    np.testing.assert_allclose(residual, 0.0, atol=1e-12)


def test_pattern_rank_deficient_is_least_squares():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(2, 10))
    chi = np.vstack([base, base[0] + base[1]])  # rank 2, three observables
    target = np.array([1.0, 0.0, 0.0])  # not reachable exactly
    rho = sj.pattern(chi, target, 1.0)
    np.testing.assert_allclose(rho - 1, np.linalg.pinv(chi) @ target, rtol=1e-10, atol=1e-12)
    reachable = chi @ np.array([0.1] * 10)
    np.testing.assert_allclose(chi @ (sj.pattern(chi, reachable, 1.0) - 1), reachable, atol=1e-10)


def test_pattern_accepts_a_result_and_rejects_transposes():
    rng = np.random.default_rng(2)
    chi = rng.normal(size=(2, 8))
    with pytest.raises(ValueError, match="looks transposed"):
        sj.pattern(chi.T, np.ones(2), 1.0)
    with pytest.raises(ValueError, match="finite"):
        sj.pattern(np.full((2, 8), np.nan), np.ones(2), 1.0)

    class Result:  # duck-typed SusceptibilityResult: chi is (rows, columns)
        components = ["a", "b"]

    Result.chi = chi.T
    np.testing.assert_allclose(sj.pattern(Result(), np.ones(2), 0.5), sj.pattern(chi, np.ones(2), 0.5))


def test_reweighted_loss_is_the_normalized_weighted_mean():
    loss_fn = lambda w, batch: (batch["t"] - w) ** 2
    data = {"t": jnp.arange(6.0)}
    rho = np.array([2.0, 1.0, 0.5, 0.0, 1.0, 1.5])
    weighted = sj.reweighted_loss(loss_fn, rho)
    losses = weighted(1.0, sj.attach_weights(data, rho))
    expected = np.sum(rho * (np.arange(6.0) - 1.0) ** 2) / rho.sum()
    np.testing.assert_allclose(losses.mean(), expected, rtol=1e-6)
    # A minibatch gather carries the weights: its mean is an unbiased estimate (constant ρ̄).
    indices = jnp.array([0, 0, 5])
    batch = jax.tree.map(lambda x: x[indices], sj.attach_weights(data, rho))
    np.testing.assert_allclose(weighted(1.0, batch), rho[[0, 0, 5]] * (np.arange(6.0)[[0, 0, 5]] - 1.0) ** 2 / rho.mean(), rtol=1e-6)
    # Per-token losses take their example's weight.
    per_token = sj.reweighted_loss(lambda w, batch: (batch - w) ** 2, rho[:2], normalize=False)
    tokens = jnp.arange(6.0).reshape(2, 3)
    np.testing.assert_allclose(per_token(0.0, sj.attach_weights(tokens, rho[:2])), rho[:2, None] * tokens**2)


def test_reweighted_loss_validation():
    with pytest.raises(ValueError, match="one weight per example"):
        sj.attach_weights({"t": jnp.zeros(4)}, np.ones(3))
    with pytest.raises(ValueError, match="Σρ > 0"):
        sj.reweighted_loss(lambda w, b: b, np.zeros(3))
    with pytest.raises(TypeError, match="attach_weights"):
        sj.reweighted_loss(lambda w, b: b, np.ones(3))(0.0, jnp.zeros(3))


def test_patterning_moves_the_posterior_by_alpha_beta_target():
    """Linear-Gaussian model: sampling with ρ from χ̂ shifts ⟨x_0⟩, ⟨x_1⟩ by ≈ αβ dμ."""
    result = lg.chi_run(eps=lg.EPS_RESPONSE)  # small ε: the ULA covariance inflation is < 3%
    columns = [result.components.index("full/x[0]"), result.components.index("full/x[1]")]
    chi = result.chi[:, columns].T  # (2 observables, n examples)
    target, alpha, beta = np.array([1.0, -0.5]), 0.01, lg.NBETA / lg.N
    rho = sj.pattern(chi, target, alpha)
    assert rho.min() > 0  # a valid reweighting
    shift_per_chain = lg.mean_displacement(rho, key=11) - lg.mean_displacement(np.ones(lg.N), key=11)  # common noise
    shift = shift_per_chain.mean(0)[:2]
    stderr = shift_per_chain.std(0, ddof=1)[:2] / np.sqrt(lg.NUM_CHAINS)
    exact = (lg.exact_mean_displacement(rho) - lg.exact_mean_displacement(np.ones(lg.N)))[:2]
    assert np.all(np.abs(shift - exact) < 4 * stderr + 1e-6), (shift, exact, stderr)
    # Linear response with an estimated χ: within 10% of αβ|dμ| (χ̂ error, ULA inflation, O(α²)).
    np.testing.assert_allclose(shift, alpha * beta * target, atol=0.1 * alpha * beta * np.abs(target).max())
