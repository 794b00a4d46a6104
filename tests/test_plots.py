"""Every plot renders to PNG headless (MPLBACKEND=Agg in conftest; the plots never use pyplot)."""

import numpy as np
import pytest
from matplotlib.figure import Figure

import slt_jax as sj
from slt_jax import calibration, diagnostics, kernels
from slt_jax.llc import llc_from_chains
from slt_jax.sampler import ChainsOutput

PNG = b"\x89PNG\r\n\x1a\n"


def _chains(num_configs=None, num_chains=3, num_draws=120, seed=0, diverged_chain=None):
    rng = np.random.default_rng(seed)
    lead = (num_chains,) if num_configs is None else (num_configs, num_chains)
    loss = 1.0 + 0.05 * (1 - np.exp(-np.arange(num_draws) / 20.0)) + 0.01 * rng.normal(size=lead + (num_draws,))
    diverged_at = np.full(lead, -1)
    if diverged_chain is not None:
        loss[..., diverged_chain, 80:] = np.nan
        diverged_at[..., diverged_chain] = 30 + 80 * 2
    mala = np.where(np.arange(num_draws) % 10 == 0, 0.97, np.nan) * np.ones(lead + (num_draws,))
    norms = np.abs(rng.normal(size=lead + (num_draws,)))
    state = kernels.SGLDState(np.zeros(lead + (2,)), None, np.full(lead, num_draws))
    return ChainsOutput(
        loss=loss, grad_norm=norms, localization_norm=norms, noise_norm=norms, distance=norms, mala_acceptance=mala,
        full_loss=None, center_loss=None, observed=None, accumulator=None, diverged=diverged_at >= 0,
        diverged_at=diverged_at, init_loss=1.0, final_state=state, num_steps=30 + 2 * num_draws, compile_seconds=0.0,
        sampling_seconds=0.0,
        settings=dict(step_size=np.geomspace(1e-4, 1e-2, num_configs or 1).tolist() if num_configs else 1e-3, nbeta=100.0,
                      localization=1.0, num_burnin=30, num_steps_between_draws=2, batch_size=10, n=100),
    )


def _calibration(recommended=2):
    chains = _chains(num_configs=4)
    chains.diverged[3] = True
    metrics_rows = [diagnostics.trace_metrics(chains.loss[i], 1.0, 100.0, mala_acceptance=chains.mala_acceptance[i],
                                              grad_norm=chains.grad_norm[i], step_size=1e-3, burnin_draws=60) for i in range(4)]
    metrics = {k: np.array([row[k] for row in metrics_rows]) for k in metrics_rows[0]}
    return calibration.CalibrationResult(
        step_size=np.geomspace(1e-4, 1e-2, 4), nbeta=np.full(4, 100.0), localization=np.ones(4), metrics=metrics,
        llc_per_chain=np.ones((4, 3)), diverged=chains.diverged, problems=[[], ["bias"], [], ["divergence"]],
        passed=np.array([True, False, True, False]), equilibrated=np.array([False, True, True, False]),
        recommended=recommended, reason="synthetic", init_loss=1.0, burnin_draws=60, chains=chains,
        settings=dict(chains.settings, mala_threshold=0.9, bias_tolerance=0.05, num_steps_between_draws=2,
                      recommended_num_burnin=60),
    )


def _is_png(path):
    with open(path, "rb") as file:
        return file.read(8) == PNG


def test_plot_traces_from_llc_result_and_chains(tmp_path):
    chains = _chains(diverged_chain=1)
    result = llc_from_chains(chains.loss, 1.0, 100.0, chains.diverged, chains)
    figure = sj.plot_traces(result, burnin_draws=10, title="synthetic", path=tmp_path / "traces.png")
    assert isinstance(figure, Figure) and len(figure.axes) == 2
    assert _is_png(tmp_path / "traces.png")
    grid = _chains(num_configs=2)
    assert isinstance(sj.plot_traces(grid, config=1, path=tmp_path / "grid.png"), Figure)
    assert _is_png(tmp_path / "grid.png")


def test_plot_calibration(tmp_path):
    figure = sj.plot_calibration(_calibration(), path=tmp_path / "calibration.png")
    assert isinstance(figure, Figure) and _is_png(tmp_path / "calibration.png")
    assert isinstance(_calibration().plot(), Figure)
    sj.plot_calibration(_calibration(recommended=-1), path=tmp_path / "none.png")
    assert _is_png(tmp_path / "none.png")


def test_plot_llc_checkpoints(tmp_path):
    chains = _chains()
    results = [llc_from_chains(chains.loss + 0.01 * k, 1.0, 100.0, chains.diverged, chains) for k in range(3)]
    figure = sj.plot_llc_checkpoints([100, 1000, 10000], results, true_llc=5.0, log_x=True, path=tmp_path / "llc.png")
    assert isinstance(figure, Figure) and _is_png(tmp_path / "llc.png")
    sj.plot_llc_checkpoints(np.arange(4), np.arange(4.0), np.full(4, 0.1), path=tmp_path / "arrays.png")
    assert _is_png(tmp_path / "arrays.png")
    with pytest.raises(ValueError, match="one value per checkpoint"):
        sj.plot_llc_checkpoints([1, 2], [1.0, 2.0, 3.0])


def test_plot_response_pca(tmp_path):
    rng = np.random.default_rng(0)
    chi = rng.normal(size=(60, 5)) + np.repeat(np.eye(3, 5) * 4, 20, axis=0)
    labels = np.repeat(["induction", "bigram", "other"], 20)
    figure = sj.plot_response_pca(chi, labels, component_names=list("abcde"), center_rows=True, path=tmp_path / "pca.png")
    assert isinstance(figure, Figure) and _is_png(tmp_path / "pca.png")
    assert isinstance(sj.plot_response_pca(chi, components=(1, 2)), Figure)
    with pytest.raises(ValueError, match="num_probes"):
        sj.plot_response_pca(np.zeros(5))
    with pytest.raises(ValueError, match="one label per probe"):
        sj.plot_response_pca(chi, labels[:5])
    with pytest.raises(ValueError, match="NaN"):
        sj.plot_response_pca(np.full((4, 3), np.nan))
