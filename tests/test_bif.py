"""The Bayesian influence function against the Isserlis closed form (docs/conventions.md §3)."""

import chex
import jax.numpy as jnp
import numpy as np
import pytest

import slt_jax as sj

import linear_gaussian as lg

# z = (estimate - exact) / stderr is a 16-chain t statistic (E z² = 15/13). max |z| < 5 over ~100
# entries; the entries share the chains (they are functions of a few moments of x), so their mean z²
# has only a few effective degrees of freedom: < 6 passes chance fluctuations (seen up to ~4.6 over
# seeds) while a biased estimator (e.g. Σ = 1/γ instead of the ULA-corrected one) gives > 60.
MAX_Z, MEAN_Z2 = 5.0, 6.0


def _check_against(result: sj.BIFResult, covariance: np.ndarray):
    upper = np.triu_indices(lg.N)
    z = lg.zscores(result.bif[upper], -covariance[upper], result.stderr[upper])
    assert np.abs(z).max() < MAX_Z, np.abs(z).max()
    assert np.mean(z**2) < MEAN_Z2, np.mean(z**2)
    return z


def test_bif_matches_isserlis_closed_form():
    result = lg.bif_run()
    chex.assert_shape((result.bif, result.stderr, result.correlation, result.variance), [(lg.N, lg.N)] * 3 + [(lg.N,)])
    exact = lg.loss_covariance(lg.stationary_covariance(lg.NBETA, lg.GAMMA, lg.EPS))
    _check_against(result, exact)
    # Sign: bif = -Cov, so its diagonal is -Var < 0; the correlation is +corr (devinterp's sign).
    assert np.all(np.diagonal(result.bif) < 0)
    np.testing.assert_allclose(np.diagonal(result.correlation), 1.0, rtol=1e-6)
    np.testing.assert_allclose(result.bif, -result.correlation * np.sqrt(np.outer(result.variance, result.variance)), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(result.bif, result.bif.T)
    exact_correlation = exact / np.sqrt(np.outer(np.diagonal(exact), np.diagonal(exact)))
    assert np.abs(result.correlation - exact_correlation).max() < 0.05


def test_bif_nbeta_scaling():
    """Doubling nβ halves the leading r_i r_j x_iᵀΣx_j term (Σ ≈ (nβH)^{-1})."""
    low, high = lg.bif_run(lg.NBETA), lg.bif_run(2 * lg.NBETA)
    exact_high = lg.loss_covariance(lg.stationary_covariance(2 * lg.NBETA, lg.GAMMA, lg.EPS))
    _check_against(high, exact_high)
    exact_low = lg.loss_covariance(lg.stationary_covariance(lg.NBETA, lg.GAMMA, lg.EPS))
    exact_ratio = np.abs(exact_high).sum() / np.abs(exact_low).sum()
    ratio = np.abs(high.bif).sum() / np.abs(low.bif).sum()
    # Relative stderr of each sum, propagated to the ratio.
    relative = np.sqrt((high.stderr**2).sum()) / np.abs(high.bif).sum() + np.sqrt((low.stderr**2).sum()) / np.abs(low.bif).sum()
    assert abs(ratio - exact_ratio) < 4 * relative * exact_ratio, (ratio, exact_ratio, relative)
    assert 0.4 < ratio < 0.65  # ≈ 1/2, moved by the ½(x_iᵀΣx_j)² term (∝ nβ^-2), γ and the ULA inflation


def test_bif_nbeta_zero_control():
    """nβ = 0: an OU process around w* with Σ = I / (γ(1 - εγ/4)); the BIF reflects only that."""
    gamma, eps = 1.0, 1.0
    result = lg.bif_run(0.0, gamma, eps)
    ula = np.eye(lg.D) / (gamma * (1 - eps * gamma / 4))
    _check_against(result, lg.loss_covariance(ula))
    # The uncorrected 1/γ is rejected.
    z = lg.zscores(result.bif, -lg.loss_covariance(np.eye(lg.D) / gamma), result.stderr)
    assert np.mean(z**2) > 10 * MEAN_Z2


def test_blocks_tile_the_same_matrix():
    whole, blocked = lg.bif_run(), lg.bif_run(block_size=5)  # 4 runs of the same chains, last padded
    np.testing.assert_allclose(blocked.bif, whole.bif, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(blocked.stderr, whole.stderr, rtol=1e-4, atol=1e-9)


def _sequence_loss(w, batch):
    """Per-token losses (batch, seq): token t of sequence b is ½(y_bt - x_bt·w)²."""
    return 0.5 * (batch["y"] - batch["x"] @ w) ** 2


def test_per_token_bif_and_sequence_means():
    """Per-sequence BIF = block means of the per-token BIF (same key, same chains): exact."""
    sequences = {"x": lg.train["x"].reshape(4, 4, lg.D), "y": lg.train["y"].reshape(4, 4)}
    config = lg.CONFIG.replace(num_chains=4, num_draws=500, chunk_draws=None)
    kwargs = dict(probes={"sequences": sequences}, key=1, progress=False)
    tokens = sj.estimate_bif(_sequence_loss, lg.w_star, lg.data, config, **kwargs)
    per_sequence = sj.estimate_bif(_sequence_loss, lg.w_star, lg.data, config, per_token=False, **kwargs)
    chex.assert_shape((tokens.bif, per_sequence.bif), [(16, 16), (4, 4)])
    np.testing.assert_array_equal(tokens.labels.token, np.tile(np.arange(4), 4))
    block_means = tokens.bif.reshape(4, 4, 4, 4).mean(axis=(1, 3))
    np.testing.assert_allclose(per_sequence.bif, block_means, rtol=1e-4, atol=1e-9)


def test_over_checkpoints_equals_separate_runs():
    """Two checkpoints in one stack of configurations give each checkpoint's own estimate_bif numbers
    (same key): also block by block, and with a restricted component."""
    config = lg.CONFIG.replace(num_chains=4, num_draws=300, chunk_draws=None)
    checkpoints = [lg.w_star, lg.w_star + jnp.asarray([0.3, -0.2, 0.1])]
    for options in (dict(), dict(block_size=6, component=jnp.array([True, True, False]))):
        stacked = sj.estimate_bif_table(lg.loss_fn, checkpoints, lg.data, config, key=4, probes={"train": lg.train},
                                        steps=[10, 20], progress=False, **options)
        assert stacked.steps.tolist() == [10, 20] and stacked.bif.shape == (2, lg.N, lg.N)
        for k, params in enumerate(checkpoints):
            result = stacked.result(k)
            alone = sj.estimate_bif(lg.loss_fn, params, lg.data, config, key=4, probes={"train": lg.train}, progress=False,
                                    **options)
            np.testing.assert_allclose(result.bif, alone.bif, rtol=1e-5, atol=1e-5 * np.abs(alone.bif).max())
            np.testing.assert_allclose(result.mean_loss, alone.mean_loss, rtol=1e-5)
            assert result.chains.num_configs == 1
            np.testing.assert_allclose(result.chains.init_loss, alone.chains.init_loss, rtol=1e-6)
    # Each result is its own checkpoint's (w* + δ is not the minimum: higher losses there).
    assert stacked.result(1).chains.init_loss[0] > stacked.result(0).chains.init_loss[0]
    assert stacked.mean_loss[1].mean() > stacked.mean_loss[0].mean()


def test_exports():
    result = lg.bif_run()
    dataset = result.to_xarray()
    assert set(dataset.data_vars) >= {"bif", "stderr", "correlation", "variance", "mean_loss"}
    assert {"row_probe", "row_example", "column_token"} <= set(dataset.coords)
    assert dataset["bif"].dims == ("row", "column")
    np.testing.assert_array_equal(dataset["bif"].values, result.bif)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(num_draws=1), ValueError, "at least 2 draws"),
        (dict(block_size=0), ValueError, "block_size=0"),
        (dict(probes={"p": jnp.zeros(())}), ValueError, "scalar"),
    ],
)
def test_bif_validation(kwargs, error, match):
    config = lg.CONFIG.replace(num_draws=kwargs.pop("num_draws", 10), chunk_draws=None)
    arguments = dict(key=0, progress=False, **kwargs)
    with pytest.raises(error, match=match):
        sj.estimate_bif(lg.loss_fn, lg.w_star, lg.data, config, **arguments)


def test_bif_config_and_checkpoint_validation():
    with pytest.raises(TypeError, match="SamplerConfig"):
        sj.estimate_bif(lg.loss_fn, lg.w_star, lg.data, dict(step_size=lg.EPS), key=0)
    with pytest.raises(ValueError, match="numeric step_size"):
        sj.estimate_bif(lg.loss_fn, lg.w_star, lg.data, lg.CONFIG.replace(step_size="auto"), key=0)
    with pytest.raises(TypeError, match="list of params"):
        sj.estimate_bif_table(lg.loss_fn, lg.w_star, lg.data, lg.CONFIG, key=0)
    with pytest.raises(ValueError, match="one distinct training step"):
        sj.estimate_bif_table(lg.loss_fn, [lg.w_star, lg.w_star], lg.data, lg.CONFIG, key=0, steps=[1, 1])
