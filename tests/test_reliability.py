"""Reliability of response matrices against known signal + noise (split-chain Spearman-Brown closed forms)."""

import types
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

import slt_jax as sj
from slt_jax.stats import CovarianceState

from synthetic_results import susceptibility_result


def _planted(seed, num_chains, signal_variance, noise_variance, shape=(400, 3)):
    """Per-chain estimates: a signal per entry (variance S² over rows) plus independent noise per chain."""
    rng = np.random.default_rng(seed)
    signal = np.sqrt(signal_variance) * rng.normal(size=shape)
    return signal + np.sqrt(noise_variance) * rng.normal(size=(num_chains,) + shape)


def test_reliability_matches_the_spearman_brown_closed_form():
    # S² = 1, sigma² = 4, C = 8: R = S² / (S² + sigma²/C) = 2/3; one chain rho_1 = 1/5, so the
    # prophecy for R* = 0.8 is 0.8 (1 - 0.2) / (0.2 (1 - 0.8)) = 16 chains. Over 40 seeds the
    # estimates scatter with SD 0.017 (R) and 1.2 (chains): the bounds are 4 SDs.
    report = sj.estimate_reliability(susceptibility_result(_planted(0, 8, 1.0, 4.0)), warn=False)
    assert abs(report.reliability - 2 / 3) < 0.07, report.summary()
    assert abs(report.chain_reliability - 0.2) < 0.05
    assert abs(report.chains_needed - 16) < 5
    assert report.num_chains == 8 and report.column_reliability.shape == (3,) and report.row_snr.shape == (400,)
    assert not report.mostly_noise
    assert "reliability 0.6" in report.summary() or "reliability 0.7" in report.summary()


def test_pure_noise_warns_and_rows_are_distinguishable_at_the_false_positive_rate():
    per_chain = _planted(1, 4, 0.0, 1.0, shape=(500, 17))
    with pytest.warns(RuntimeWarning, match="mostly noise"):
        report = sj.estimate_reliability(per_chain)
    assert report.mostly_noise and report.reliability < 0.1
    # Bonferroni per row: under the null at most alpha of the rows, t_3 threshold 8.95 for 17 components.
    assert report.fraction_distinguishable < 0.1
    assert report.critical_z == pytest.approx(8.952, abs=1e-3)
    assert 0.6 < report.median_snr < 0.9  # median |t_3| = 0.765


def test_the_ten_thousand_parameter_transformer_observation_fires_the_warning():
    # Seen before on a 10k-parameter induction transformer with 4 chains: median |chi|/stderr about
    # 1, chain-to-chain correlations 0.00-0.11. One-chain reliability 0.05 reproduces both.
    per_chain = _planted(2, 4, 0.05, 0.95, shape=(500, 17))
    pairs = [np.corrcoef(per_chain[a].ravel(), per_chain[b].ravel())[0, 1] for a in range(4) for b in range(a)]
    assert 0.0 <= min(pairs) and max(pairs) <= 0.11
    with pytest.warns(RuntimeWarning, match="mostly noise"):
        report = sj.estimate_reliability(per_chain)
    assert 0.7 < report.median_snr < 1.1
    # Closed form 4 * 0.05 / (1 + 3 * 0.05) = 0.174; over 40 seeds the estimate scatters with SD 0.018
    # (mean 0.178): the bound is 4 SDs.
    assert abs(report.reliability - 4 * 0.05 / (1 + 3 * 0.05)) < 0.075
    assert report.chains_needed > 40


def test_strong_signal_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = sj.estimate_reliability(_planted(3, 8, 1.0, 0.05))
    assert report.reliability > 0.95 and report.fraction_distinguishable > 0.9
    assert report.chains_needed < 8 and "ok" in report.summary()


def test_diverged_chains_are_left_out():
    per_chain = _planted(4, 6, 1.0, 1.0)
    per_chain[2] = np.nan
    report = sj.estimate_reliability(susceptibility_result(per_chain), warn=False)
    assert report.num_chains == 5 and np.isfinite(report.reliability)


def _bif_result(per_chain_cov, block_rows=None):
    """A ``BIFResult`` whose chains' accumulator holds the given per-chain covariances ``(C, N, N)``."""
    num_chains, num_rows = per_chain_cov.shape[:2]
    rows = num_rows if block_rows is None else block_rows
    count = np.full((1, num_chains), 11.0)
    state = CovarianceState(count, np.zeros((1, num_chains, rows)), np.zeros((1, num_chains, num_rows)),
                            per_chain_cov[None, :, :rows] * 10.0)
    mean = per_chain_cov.mean(axis=0)
    return sj.BIFResult(
        bif=-mean, stderr=per_chain_cov.std(axis=0, ddof=1) / np.sqrt(num_chains), correlation=mean, variance=np.diagonal(mean),
        mean_loss=np.zeros(num_rows), labels=None, nbeta=1.0, diverged=np.zeros(num_chains, bool),
        chains=types.SimpleNamespace(accumulator=state),
    )


def test_bif_reliability_leaves_out_the_diagonal_and_needs_the_whole_matrix():
    cov = _planted(5, 8, 1.0, 4.0, shape=(60, 60))
    cov = 0.5 * (cov + cov.transpose(0, 2, 1))
    noisy_diagonal = cov.copy()
    noisy_diagonal[:, np.arange(60), np.arange(60)] = 1e3 * np.random.default_rng(6).normal(size=(8, 60))
    first = sj.estimate_reliability(_bif_result(cov), warn=False)
    second = sj.estimate_reliability(_bif_result(noisy_diagonal), warn=False)
    assert first.reliability == pytest.approx(second.reliability)
    assert first.column_reliability.shape == (60,) and first.critical_z > 0
    with pytest.raises(ValueError, match="block_size=None"):
        sj.estimate_reliability(_bif_result(cov, block_rows=20))


def test_reliability_of_a_sampled_bif():
    loss_fn = lambda w, batch: 0.5 * (batch["y"] - batch["x"] @ w) ** 2
    data = {"x": jnp.eye(2).repeat(5, axis=0), "y": jnp.ones(10)}
    config = sj.SamplerConfig(step_size=1e-2, nbeta=10.0, localization=1.0, num_draws=100, batch_size=10)
    bif = sj.estimate_bif(loss_fn, jnp.zeros(2), data, config, key=0, progress=False)
    report = sj.estimate_reliability(bif, warn=False)
    assert report.num_chains == 4 and report.row_snr.shape == (10,)


def test_bad_input_names_the_fix():
    per_chain = _planted(7, 4, 1.0, 1.0)
    with pytest.raises(ValueError, match="target"):
        sj.estimate_reliability(per_chain, target=1.0)
    with pytest.raises(ValueError, match="alpha"):
        sj.estimate_reliability(per_chain, alpha=0.0)
    with pytest.raises(ValueError, match="num_splits"):
        sj.estimate_reliability(per_chain, num_splits=0)
    with pytest.raises(ValueError, match="num_chains"):
        sj.estimate_reliability(per_chain[:1])
    with pytest.raises(TypeError, match="SusceptibilityResult"):
        sj.estimate_reliability(per_chain[0])
    with pytest.raises(ValueError, match="constant"):
        sj.estimate_reliability(np.ones((4, 10, 2)), warn=False)


def _noisy_and_clear_runs():
    """A linear regression whose susceptibilities are pure noise after 10 draws x 2 chains, and clear
    (planted by the inputs' scale, two groups) after 3000 draws x 8 chains."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(12, 2)) * [3.0, 0.1], rng.normal(size=(12, 2)) * [0.1, 3.0]])
    data = {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(x @ np.array([1.0, -1.0]) + rng.normal(size=24), jnp.float32)}
    loss_fn = lambda w, batch: 0.5 * (batch["y"] - batch["x"] @ w) ** 2
    w_star = jnp.asarray(np.linalg.lstsq(x, np.asarray(data["y"]), rcond=None)[0], jnp.float32)
    components = {"w0": jnp.array([True, False]), "w1": jnp.array([False, True])}
    noisy = sj.SamplerConfig(step_size=1e-3, nbeta=24.0, localization=1.0, num_chains=2, num_draws=10, batch_size=24)
    clear = noisy.replace(num_chains=8, num_draws=3000, num_burnin=100)
    return loss_fn, w_star, data, components, noisy, clear


def test_the_estimators_warn_themselves_when_the_matrix_is_mostly_noise():
    # Issue 10, part 5: a new user's 4-chain run was noise and nothing warned. Now the estimator itself
    # issues NoisyResponseWarning, and summary() carries the reliability line.
    loss_fn, w_star, data, components, noisy, clear = _noisy_and_clear_runs()
    probes = {"train": data}
    with pytest.warns(sj.reliability.NoisyResponseWarning, match="response matrix is mostly noise"):
        res = sj.estimate_susceptibilities(loss_fn, w_star, data, noisy, key=0, probes=probes, components=components,
                                           include_full=False, progress=False)
    assert "MOSTLY NOISE" in res.summary()
    with warnings.catch_warnings():
        warnings.simplefilter("error", sj.reliability.NoisyResponseWarning)
        res = sj.estimate_susceptibilities(loss_fn, w_star, data, clear, key=0, probes=probes, components=components,
                                           include_full=False, progress=False)
    assert "[ok]" in res.summary(), res.summary()
    with pytest.warns(sj.reliability.NoisyResponseWarning, match="the BIF is mostly noise"):
        bif = sj.estimate_bif(loss_fn, w_star, data, noisy, key=0, progress=False)
    assert "reliability" in bif.summary()
