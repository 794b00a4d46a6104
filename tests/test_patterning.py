"""Patterning: ρ = 1 + α χᵀ(χχᵀ)^{-1} dμ, group targets, positivity, evaluation (docs/conventions.md §3)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import slt_jax as sj

import linear_gaussian as lg


def test_pattern_algebra_full_row_rank():
    rng = np.random.default_rng(0)
    chi = rng.normal(size=(3, 20))
    target = np.array([0.3, -0.1, 0.05])
    alpha = 2.5
    rho = sj.pattern(chi, target, alpha, min_weight=None).weights
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
    rho = sj.pattern(chi, target, 1.0, min_weight=None).weights
    np.testing.assert_allclose(rho - 1, np.linalg.pinv(chi) @ target, rtol=1e-10, atol=1e-12)
    reachable = chi @ np.array([0.1] * 10)
    np.testing.assert_allclose(chi @ (sj.pattern(chi, reachable, 1.0, min_weight=None).weights - 1), reachable, atol=1e-10)


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
    np.testing.assert_allclose(sj.pattern(Result(), np.ones(2), 0.5).weights, sj.pattern(chi, np.ones(2), 0.5).weights)


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
    patterning = sj.pattern(chi, target, alpha)
    assert patterning.achievable_fraction == 1.0
    rho = patterning.weights
    assert rho.min() > 0  # a valid reweighting
    shift_per_chain = lg.mean_displacement(rho, key=11) - lg.mean_displacement(np.ones(lg.N), key=11)  # common noise
    shift = shift_per_chain.mean(0)[:2]
    stderr = shift_per_chain.std(0, ddof=1)[:2] / np.sqrt(lg.NUM_CHAINS)
    exact = (lg.exact_mean_displacement(rho) - lg.exact_mean_displacement(np.ones(lg.N)))[:2]
    assert np.all(np.abs(shift - exact) < 4 * stderr + 1e-6), (shift, exact, stderr)
    # Linear response with an estimated χ: within 10% of αβ|dμ| (χ̂ error, ULA inflation, O(α²)).
    np.testing.assert_allclose(shift, alpha * beta * target, atol=0.1 * alpha * beta * np.abs(target).max())


# --- issue 10 §5: group targets, positive weights, evaluation by training ---------------------------


def _result_with_chains(chi_per_chain: np.ndarray, components: list[str]):
    """A duck-typed SusceptibilityResult from per-chain estimates ``(num_chains, N, K)``."""

    class Result:
        pass

    result = Result()
    result.chi_per_chain, result.components = chi_per_chain, components
    result.chi = chi_per_chain.mean(axis=0)
    return result


def test_group_solve_planted_closed_form():
    """Group A responds only to observable 0, group B only to 1: s_g = dμ_g / (m_g c_g) exactly."""
    sizes, responses = np.array([3, 5]), np.array([0.4, -0.25])  # per-example χ of each group to "its" observable
    groups = np.repeat([0, 1], sizes)
    chi = np.zeros((2, sizes.sum()))
    chi[0, groups == 0], chi[1, groups == 1] = responses[0], responses[1]
    target, alpha = np.array([0.3, 0.2]), 0.5
    result = sj.pattern(chi, target, alpha, groups=groups)
    np.testing.assert_allclose(result.group_chi, np.diag(sizes * responses))
    np.testing.assert_allclose(result.direction, target / (sizes * responses), rtol=1e-12)
    np.testing.assert_allclose(result.group_weights, 1 + alpha * target / (sizes * responses), rtol=1e-12)
    np.testing.assert_array_equal(result.weights, result.group_weights[groups])  # broadcast to the examples
    np.testing.assert_allclose(chi @ (result.weights - 1) / alpha, target, rtol=1e-12)  # first-order shift = target
    np.testing.assert_allclose(result.shift, alpha * target, rtol=1e-12)
    assert (result.alpha, result.achievable_fraction, list(result.group_sizes)) == (alpha, 1.0, [3, 5])


def test_group_solve_general_is_the_size_weighted_minimum_norm():
    rng = np.random.default_rng(3)
    groups = rng.permutation(np.repeat([0, 1, 2, 3], [2, 7, 4, 5]))
    per_chain = rng.normal(size=(6, groups.size, 3))  # (chains, N rows, K columns)
    result_in = _result_with_chains(per_chain, ["a", "b", "c"])
    target = np.array([0.05, -0.02])
    result = sj.pattern(result_in, target, 1.0, groups=groups, columns=["c", "a"], min_weight=None)
    chi = result_in.chi[:, [2, 0]].T  # (2, N)
    membership = np.eye(4)[groups]
    chi_group, m = chi @ membership, membership.sum(0)
    # min Σ_g m_g s_g² s.t. χ_G s = dμ  =>  s = M⁻¹χ_Gᵀ(χ_G M⁻¹ χ_Gᵀ)⁻¹ dμ
    expected = (chi_group / m).T @ np.linalg.solve((chi_group / m) @ chi_group.T, target)
    np.testing.assert_allclose(result.group_chi, chi_group, rtol=1e-12)
    np.testing.assert_allclose(result.direction, expected, rtol=1e-10)
    np.testing.assert_allclose(chi @ (result.weights - 1), target, rtol=1e-10)
    # Standard errors propagate from the per-chain group sums (not from the rows' stderr in quadrature).
    sums = per_chain[:, :, [2, 0]].transpose(0, 2, 1) @ membership  # (chains, 2, G)
    np.testing.assert_allclose(result.group_stderr, sums.std(0, ddof=1) / np.sqrt(6), rtol=1e-10)
    np.testing.assert_allclose(result.shift_stderr, (sums @ expected).std(0, ddof=1) / np.sqrt(6), rtol=1e-8)
    # A dict of row indices is the same partition; singleton groups are the per-example solve.
    as_dict = {f"g{g}": np.flatnonzero(groups == g) for g in range(4)}
    by_name = sj.pattern(result_in, target, 1.0, groups=as_dict, columns=["c", "a"], min_weight=None)
    np.testing.assert_allclose(by_name.weights, result.weights, rtol=1e-12)
    assert by_name.group_names == ["g0", "g1", "g2", "g3"]
    np.testing.assert_allclose(
        sj.pattern(chi, target, groups=np.arange(groups.size), min_weight=None).weights,
        sj.pattern(chi, target, min_weight=None).weights, rtol=1e-12,
    )
    assert np.all(np.isnan(sj.pattern(chi, target, groups=groups).group_stderr))  # a plain matrix has no chains


def test_alpha_is_reduced_to_keep_every_weight_above_the_floor():
    groups = np.repeat([0, 1], [2, 8])
    chi = np.where(groups == 0, 0.5, -0.125)[None]  # χ_G = [1, -1]; group sizes 2 and 8
    # s = M⁻¹χ_Gᵀ(χ_G M⁻¹χ_Gᵀ)⁻¹dμ = (1/2, -1/8) dμ / (1/2 + 1/8) = (0.8, -0.2) dμ; at dμ = 6, α = 1
    # the small group would need weight 1 + 4.8 and the large one 1 - 1.2 < 0.
    with pytest.warns(UserWarning, match=r"alpha reduced from 1 to 0\.75.*75\.0% of the requested shift"):
        result = sj.pattern(chi, np.array([6.0]), 1.0, groups=groups, min_weight=0.1)
    np.testing.assert_allclose(result.achievable_fraction, 0.9 / 1.2)
    np.testing.assert_allclose(result.alpha, 0.75)
    assert result.requested_alpha == 1.0
    np.testing.assert_allclose(result.weights.min(), 0.1)  # the largest α: the floor is reached exactly
    np.testing.assert_allclose(result.group_weights, [1 + 0.75 * 4.8, 0.1])
    np.testing.assert_allclose(result.shift, [0.75 * 6.0])  # the achievable part of the request
    # No floor: the unconstrained (negative) weights, no warning.
    free = sj.pattern(chi, np.array([6.0]), 1.0, groups=groups, min_weight=None)
    np.testing.assert_allclose(free.group_weights, [5.8, -0.2])
    assert free.achievable_fraction == 1.0
    with pytest.raises(ValueError, match=r"min_weight=1\.0 must lie in \[0, 1\)"):
        sj.pattern(chi, np.array([6.0]), groups=groups, min_weight=1.0)


def test_pattern_group_input_errors_name_the_fix():
    chi = np.ones((2, 6))
    with pytest.raises(ValueError, match=r"groups has shape \(5,\).*one group id per example, shape \(6,\)"):
        sj.pattern(chi, np.zeros(2), groups=np.zeros(5, int))
    with pytest.raises(ValueError, match=r"ids \[1\] have no rows.*renumber"):
        sj.pattern(chi, np.zeros(2), groups=np.array([0, 0, 2, 2, 2, 0]))
    with pytest.raises(ValueError, match=r"groups\['b'\] is empty"):
        sj.pattern(chi, np.zeros(2), groups={"a": np.arange(6), "b": []})
    with pytest.raises(ValueError, match=r"cover 4 of the n=6 rows.*'rest'"):
        sj.pattern(chi, np.zeros(2), groups={"a": [0, 1], "b": [2, 3]})
    with pytest.raises(ValueError, match="disjoint"):
        sj.pattern(chi, np.zeros(2), groups={"a": [0, 1, 2], "b": [2, 3, 4, 5]})
    with pytest.raises(ValueError, match="non-negative integer ids"):
        sj.pattern(chi, np.zeros(2), groups=np.linspace(0, 1, 6))
    with pytest.raises(ValueError, match=r"target_shift has shape \(3,\).*one entry per observable.*columns="):
        sj.pattern(chi, np.zeros(3), groups=np.zeros(6, int))
    with pytest.raises(ValueError, match=r"columns: 'z' is not a column name"):
        sj.pattern(_result_with_chains(np.ones((2, 6, 2)), ["x", "y"]), np.zeros(1), columns=["z"])


def _two_group_regression():
    """y = x·(1, 0) on group A, y = x·(0, 1) on group B, plus noise: upweighting A moves w toward (1, 0)."""
    n = 32
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, 2))
    groups = np.repeat([0, 1], n // 2)
    y = np.where(groups == 0, x[:, 0], x[:, 1]) + 0.1 * rng.normal(size=n)
    return x, y, groups


def _weighted_least_squares(x, y, rho):
    return np.linalg.solve((x * rho[:, None]).T @ x, (x * rho[:, None]).T @ y)


_REGRESSION_LOSS = lambda w, batch: 0.5 * (batch["y"] - batch["x"] @ w) ** 2  # noqa: E731 (one object: one compile)
_REGRESSION_OPTIMIZER = optax.sgd(optax.exponential_decay(0.2, 50, 0.5, transition_begin=150))


def test_evaluate_patterning_linear_regression_matches_the_prediction():
    """Trained shift of w under group weights vs the linear-response prediction β χ (ρ - 1).

    χ is the exact Gaussian-posterior susceptibility of φ = w (docs/conventions.md §3, γ → 0):
    χ_i = (nβH)⁻¹ x_i r_i, and β χ (ρ - 1) = H⁻¹ (1/n) Σ_i (ρ_i - 1) x_i r_i is the first-order shift of
    the least-squares minimiser, whatever nβ. Minibatch SGD on a quadratic has mean iterate equal
    to full-batch GD (the gradient is affine in w), so after convergence the seeds scatter around the
    weighted minimiser without bias. Tolerance: 4 standard errors over seeds plus the first-order
    error |exact weighted least squares - linear prediction| (computed in closed form).
    """
    x, y, groups = _two_group_regression()
    n = len(y)
    w_star = np.linalg.lstsq(x, y, rcond=None)[0]
    r, h, nbeta = y - x @ w_star, x.T @ x / n, 50.0
    chi = np.linalg.solve(nbeta * h, (x * r[:, None]).T)  # (2 observables w_0, w_1; n examples)
    beta = nbeta / n
    patterning = sj.pattern(chi[:1], np.array([0.1 / beta]), groups=groups)  # move w_0 by +0.1
    assert patterning.group_weights[0] > 1 > patterning.group_weights[1]  # upweight group A
    predicted = beta * chi @ (patterning.weights - 1)  # both observables, w_1 untargeted
    np.testing.assert_allclose(predicted[0], 0.1, rtol=1e-10)
    data = {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(y, jnp.float32)}
    evaluation = sj.evaluate_patterning(
        _REGRESSION_LOSS, jnp.zeros(2), data, patterning, lambda w: w, optimizer=_REGRESSION_OPTIMIZER,
        num_steps=400, batch_size=8, seeds=range(8), predicted_shift=predicted,
    )
    assert evaluation.baseline.shape == evaluation.steered.shape == (8, 2)
    assert np.all(np.sign(evaluation.realised_shift) == np.sign(predicted)) and predicted[1] < 0  # toward (1, 0)
    exact = _weighted_least_squares(x, y, patterning.weights) - w_star
    tolerance = 4 * evaluation.realised_stderr + np.abs(exact - predicted)
    assert np.all(np.abs(evaluation.realised_shift - predicted) < tolerance), (evaluation.realised_shift, predicted, tolerance)
    assert np.all(np.abs(evaluation.realised_shift - exact) < 4 * evaluation.realised_stderr + 1e-3)
    np.testing.assert_allclose(
        evaluation.zscore, (evaluation.realised_shift - predicted) / evaluation.realised_stderr, rtol=1e-12
    )


def test_evaluate_patterning_input_errors():
    x, y, groups = _two_group_regression()
    data = {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(y, jnp.float32)}
    run = lambda **kw: sj.evaluate_patterning(  # noqa: E731
        _REGRESSION_LOSS, jnp.zeros(2), data, kw.pop("weights", np.ones(len(y))), lambda w: w,
        optimizer=_REGRESSION_OPTIMIZER, num_steps=2, **kw,
    )
    with pytest.raises(ValueError, match="at least two seeds"):
        run(seeds=[0])
    with pytest.raises(ValueError, match=r"predicted_shift has shape \(3,\).*k=2.*shape \(2,\)"):
        run(predicted_shift=np.zeros(3))
    with pytest.raises(ValueError, match="positive mean"):
        run(weights=-np.ones(len(y)))
    with pytest.raises(ValueError, match="one weight per example"):
        run(weights=np.ones(5))
