"""Every plot renders to PNG headless (MPLBACKEND=Agg in conftest; the plots never use pyplot)."""

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import slt_jax as sj
from slt_jax import calibration, diagnostics, traces
from slt_jax.kernels import Hyperparameters
from slt_jax.llc import llc_result
from slt_jax.sampler import ChainsResult

PNG = b"\x89PNG\r\n\x1a\n"
CONFIG = sj.SamplerConfig(step_size=1e-3, nbeta=100.0, localization=1.0, num_draws=120, num_burnin=30,
                          num_steps_between_draws=2, batch_size=10, num_chains=3)


def _chains(num_configs=1, num_chains=3, num_draws=120, seed=0, diverged_chain=None, center_loss=False):
    """A synthetic ``ChainsResult`` (no sampling): losses rising to 1.05 from L(w*) = 1."""
    rng = np.random.default_rng(seed)
    lead = (num_configs, num_chains)
    loss = 1.0 + 0.05 * (1 - np.exp(-np.arange(num_draws) / 20.0)) + 0.01 * rng.normal(size=lead + (num_draws,))
    diverged_at = np.full(lead, -1)
    if diverged_chain is not None:
        loss[:, diverged_chain, 80:] = np.nan
        diverged_at[:, diverged_chain] = 30 + 80 * 2
    mala = np.where(np.arange(num_draws) % 10 == 0, 0.97, np.nan) * np.ones(lead + (num_draws,))
    norms = np.abs(rng.normal(size=lead + (num_draws,)))
    hyper = Hyperparameters(np.geomspace(1e-4, 1e-2, num_configs), np.full(num_configs, 100.0), np.ones(num_configs),
                            np.zeros(num_configs))
    return ChainsResult(
        loss=loss, grad_norm=norms, localization_norm=norms, noise_norm=norms, distance=norms, mala_acceptance=mala,
        full_loss=None, center_loss=loss - 0.01 if center_loss else None, observed=None, accumulator=None,
        diverged=diverged_at >= 0, diverged_at=diverged_at, init_loss=np.ones(num_configs), hyperparameters=hyper,
        center_index=np.zeros(num_configs, int), variant_index=np.arange(num_configs), num_sampled=np.full(num_configs, 2),
        final_positions=[np.zeros((num_chains, 2))] * num_configs, num_steps=30 + 2 * num_draws, compile_seconds=0.0,
        sampling_seconds=0.0, config=CONFIG.replace(num_chains=num_chains, num_draws=num_draws),
        settings=dict(n=100, minibatches="with replacement", groups=1),
    )


def _calibration(recommended=2):
    chains = _chains(num_configs=4, center_loss=True)
    chains.diverged[3] = True
    draws = traces.llc_draws(chains, "paired")
    rows = [diagnostics.trace_metrics(draws[i], nbeta=100.0, mala_acceptance=chains.mala_acceptance[i],
                                      grad_norm=chains.grad_norm[i], step_size=1e-3, burnin_draws=60) for i in range(4)]
    metrics = {k: np.array([row[k] for row in rows]) for k in rows[0] if k != "note"}
    return calibration.CalibrationResult(
        step_size=np.geomspace(1e-4, 1e-2, 4), nbeta=np.full(4, 100.0), localization=np.ones(4), metrics=metrics,
        llc_per_chain=np.ones((4, 3)), diverged=chains.diverged, problems=[[], ["bias"], [], ["divergence"]],
        passed=np.array([True, False, True, False]), equilibrated=np.array([False, True, True, False]),
        recommended_index=recommended, reason="synthetic", init_loss=1.0, burnin_draws=60, config=CONFIG, chains=chains,
        settings=dict(chains.settings, mala_threshold=0.9, bias_tolerance=0.05, loss_estimator="paired",
                      recommended_num_burnin=60, validated_num_burnin=60, validated_num_draws=60),
    )


def _is_png(path):
    with open(path, "rb") as file:
        return file.read(8) == PNG


def test_plot_traces_from_llc_result_and_chains(tmp_path):
    chains = _chains(diverged_chain=1)
    result = llc_result(chains)
    figure = sj.plot_traces(result, burnin_draws=10, title="synthetic", path=tmp_path / "traces.png")
    assert isinstance(figure, Figure) and len(figure.axes) == 2
    assert _is_png(tmp_path / "traces.png")
    # The running LLC drawn is the running mean of traces.llc_draws (chain 0, after the burn-in draws).
    drawn = figure.axes[1].lines[0].get_ydata()
    expected = traces.llc_draws(chains)[0, 0, 10:]
    np.testing.assert_allclose(drawn, np.cumsum(expected) / np.arange(1, expected.size + 1))
    np.testing.assert_allclose(figure.axes[0].lines[0].get_xdata(), 30 + 2 * np.arange(120))
    grid = _chains(num_configs=2)
    assert isinstance(sj.plot_traces(grid, configuration=1, path=tmp_path / "grid.png"), Figure)
    assert _is_png(tmp_path / "grid.png")
    with pytest.raises(ValueError, match="configuration=2"):
        sj.plot_traces(grid, configuration=2)


def test_plot_calibration(tmp_path):
    figure = sj.plot_calibration(_calibration(), path=tmp_path / "calibration.png")
    assert isinstance(figure, Figure) and _is_png(tmp_path / "calibration.png")
    assert isinstance(_calibration().plot(), Figure)
    sj.plot_calibration(_calibration(recommended=-1), path=tmp_path / "none.png")
    assert _is_png(tmp_path / "none.png")


def test_plot_llc_checkpoints(tmp_path):
    results = [llc_result(_chains(seed=k)) for k in range(3)]
    figure = sj.plot_llc_checkpoints([100, 1000, 10000], results, true_llc=5.0, log_x=True, path=tmp_path / "llc.png")
    assert isinstance(figure, Figure) and len(figure.axes) == 1 and _is_png(tmp_path / "llc.png")
    sj.plot_llc_checkpoints(np.arange(4), np.arange(4.0), np.full(4, 0.1), path=tmp_path / "arrays.png")
    assert _is_png(tmp_path / "arrays.png")
    # A loss panel beside the LLC; a (K, M) table of components with names.
    figure = sj.plot_llc_checkpoints(np.arange(4), np.arange(8.0).reshape(4, 2), np.full((4, 2), 0.1),
                                     labels=["full", "head 0"], loss={"train": np.geomspace(1, 0.1, 4), "test": np.ones(4)},
                                     path=tmp_path / "loss.png")
    assert len(figure.axes) == 2 and _is_png(tmp_path / "loss.png")
    assert [t.get_text() for t in figure.axes[1].get_legend().get_texts()] == ["train", "test"]
    assert isinstance(sj.plot_llc_checkpoints([1, 2], [1.0, 2.0], loss=[0.5, 0.4]), Figure)
    with pytest.raises(ValueError, match="one value per checkpoint"):
        sj.plot_llc_checkpoints([1, 2], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="one value per checkpoint"):
        sj.plot_llc_checkpoints([1, 2], [1.0, 2.0], loss=[1.0])


def _overlaps(a, b):
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


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


def test_plot_response_pca_labels_clear_of_title_and_categories_interleaved():
    # One column dominates PC1 and one PC2, so a loading arrow points straight at the title.
    rng = np.random.default_rng(1)
    chi = rng.normal(size=(90, 4)) * np.array([3.0, 2.0, 0.3, 0.3])
    labels = np.repeat(["a", "b", "c"], 30)
    figure = sj.plot_response_pca(chi, labels, component_names=["first", "second", "third", "fourth"], standardize=False)
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.canvas.draw()
    axes = figure.axes[0]
    title = axes.title.get_window_extent(renderer)
    frame = axes.get_window_extent(renderer)
    names = [t for t in axes.texts if t.get_text() in {"first", "second", "third", "fourth"}]
    assert len(names) == 4
    for text in names:
        box = text.get_window_extent(renderer)
        assert not _overlaps(box, title), (text.get_text(), box, title)
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, text.get_text()
    # Every category appears in the last round of layers (none is drawn only underneath), semi-transparent.
    collections = axes.collections
    assert all(c.get_alpha() < 1 for c in collections)
    last_colors = {tuple(np.round(c.get_facecolor()[0][:3], 3)) for c in collections[-3:]}
    assert len(last_colors) == 3
    # Three categories, three markers in the legend.
    assert [t.get_text() for t in axes.get_legend().get_texts()] == ["a", "b", "c"]


def test_plot_embedding_renders_checkpoints_with_shared_colours(tmp_path):
    rng = np.random.default_rng(0)
    groups = np.repeat([0, 1, 2], 10)
    steps = {100: rng.normal(size=(30, 2)), 200: rng.normal(size=(30, 2)) + groups[:, None]}
    # The second checkpoint lacks category 0: category 2 keeps its colour (C2) in both panels.
    figure = sj.plot_embedding(steps, {100: groups, 200: np.maximum(groups, 1)}, path=tmp_path / "embedding.png")
    assert _is_png(tmp_path / "embedding.png")
    assert len(figure.axes) == 2 and [a.get_title() for a in figure.axes] == ["100", "200"]
    assert [t.get_text() for t in figure.axes[-1].get_legend().get_texts()] == ["0", "1", "2"]
    colours = [{tuple(np.round(c.get_facecolor()[0][:3], 3)) for c in axes.collections} for axes in figure.axes]
    assert len(colours[0]) == 3 and colours[1] < colours[0]
    assert len(sj.plot_embedding(steps[100]).axes) == 1
    with pytest.raises(ValueError, match="one label per row"):
        sj.plot_embedding(steps, groups)
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        sj.plot_embedding(np.zeros((5, 3)))


def test_plot_response_pca_points_agree_with_response_pca_signs():
    # The biplot and a table of sj.susceptibility.response_pca's scores use one sign convention.
    chi = np.random.default_rng(3).normal(size=(40, 4)) @ np.diag([3.0, 2.0, 1.0, 0.5])
    figure = sj.plot_response_pca(chi)
    plotted = np.asarray(figure.axes[0].collections[0].get_offsets())
    expected = sj.susceptibility.response_pca(sj.susceptibility.zscore_columns(chi)).scores[:, :2]
    np.testing.assert_allclose(plotted, expected, atol=1e-10)


def test_plot_llc_checkpoints_log_x_leaves_step_0_out_of_the_range_and_marks_unreliable_cells():
    steps, llcs = np.array([0, 10, 100]), np.array([[1000.0], [1.0], [2.0]])
    unreliable = np.array([[False], [True], [False]])
    figure = sj.plot_llc_checkpoints(steps, llcs, np.full_like(llcs, 0.1), loss=np.array([5.0, 1.0, 0.5]), log_x=True,
                                     unreliable=unreliable)
    axes, loss_axes = figure.axes
    assert axes.get_ylim()[1] < 10 and loss_axes.get_ylim()[1] < 5  # step 0's values do not stretch the axes
    hollow = [line for line in axes.lines if line.get_markerfacecolor() == "white" and len(line.get_xdata())]
    assert len(hollow) == 1 and hollow[0].get_xdata().tolist() == [10.0]
    assert "unreliable" in [text.get_text() for text in axes.get_legend().get_texts()]
