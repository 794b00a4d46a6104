"""Clusters, embeddings, top influences and the gradient baseline, on planted structure with known answers."""

import subprocess
import warnings
import sys

import chex
import numpy as np
import pytest

import slt_jax as sj
from slt_jax import analysis
from slt_jax.susceptibility import ResponseMatrix, response_pca, zscore_columns

import synthetic_results
from synthetic_results import planted_regression, susceptibility_result


def _blocks(seed=0, sizes=(14, 10, 8), num_columns=3, separation=6.0, noise=0.5):
    """Rows in well-separated blocks: block c responds in component c. Returns (rows (N, K), groups (N,)).

    Block c is +6 in component c, noise 0.5 per entry; after z-scoring the columns (std ~3) the
    blocks are ~12 noise SDs apart. (A pure-noise column would be scaled up to unit variance by the
    z-scoring, comparable to the separation: then neither criterion finds k = 3 every time.)
    """
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(len(sizes)), sizes)
    rows = separation * np.eye(len(sizes), num_columns)[groups] + noise * rng.normal(size=(groups.size, num_columns))
    return rows, groups


def test_import_slt_jax_imports_neither_sklearn_nor_umap():
    code = (
        "import sys, slt_jax as sj\n"
        "assert not {'sklearn', 'umap'} & set(sys.modules), 'eager import'\n"
        "sj.analysis.cluster_rows\n"
        "assert {'sklearn', 'umap'} <= set(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)


def test_planted_blocks_are_recovered_with_the_silhouette_choice():
    rows, groups = _blocks()
    clusters = analysis.cluster_rows(rows)
    assert clusters.num_clusters == 3 and analysis.agreement(clusters, groups) == 1.0
    chex.assert_shape((clusters.labels, clusters.profiles, clusters.distance), [(32,), (3, 3), (32,)])
    assert clusters.sizes.tolist() == [14, 10, 8]  # numbered by decreasing size: label = planted group here
    np.testing.assert_array_equal(clusters.labels, groups)
    np.testing.assert_array_equal(np.argmax(clusters.profiles, axis=1), [0, 1, 2])  # which component responds
    assert clusters.criterion == "silhouette" and clusters.candidates.tolist() == list(range(2, 11))
    assert np.argmax(clusters.criterion_values) == 1 and clusters.criterion_values[1] > 0.7  # k = 3, compact
    by_eigengap = analysis.cluster_rows(rows, criterion="eigengap")
    np.testing.assert_array_equal(by_eigengap.labels, groups)
    assert np.argmax(by_eigengap.criterion_values) == 1  # the gap after lambda_3
    # A fixed k overrides the criterion; same seed, same labels.
    np.testing.assert_array_equal(analysis.cluster_rows(rows, 3).labels, clusters.labels)
    fixed = analysis.cluster_rows(rows, num_clusters=4, criterion="silhouette")
    assert fixed.num_clusters == 4 and fixed.candidates.tolist() == [4] and fixed.criterion_values.shape == (1,)


def test_a_susceptibility_result_is_zscored_and_typical_rows_carry_labels():
    rows, groups = _blocks(seed=1)
    # Columns on wildly different scales: only z-scoring makes them comparable.
    per_chain = rows * np.array([1e3, 1.0, 1e-3]) + 1e-3 * np.random.default_rng(2).normal(size=(4,) + rows.shape)
    result = susceptibility_result(per_chain)
    clusters = analysis.cluster_rows(result)
    assert analysis.agreement(clusters, groups) == 1.0
    assert clusters.columns == ["c0", "c1", "c2"] and clusters.rows is result.labels
    np.testing.assert_allclose(clusters.profiles[0], zscore_columns(result.chi)[groups == 0].mean(axis=0))
    context = [f"token {i}" for i in range(32)]
    table = clusters.typical_rows(3, context=context)
    assert list(table.columns) == ["cluster", "rank", "row", "distance", "probe", "example", "token", "context"]
    assert table.groupby("cluster").size().tolist() == [3, 3, 3]
    for cluster, group in table.groupby("cluster"):
        members = np.flatnonzero(clusters.labels == cluster)
        closest = members[np.argsort(clusters.distance[members], kind="stable")[:3]]
        assert group["row"].tolist() == closest.tolist() and group["rank"].tolist() == [0, 1, 2]
    first = table.iloc[0]
    assert first["example"] == first["row"] // 4 and first["token"] == first["row"] % 4
    assert first["context"] == f"token {first['row']}"
    # A ResponseMatrix is used as given (here: the same z-scored values).
    same = analysis.cluster_rows(result.zscored())
    np.testing.assert_array_equal(same.labels, clusters.labels)


def test_bad_clustering_input_names_the_fix(monkeypatch):
    rows, _ = _blocks()
    with pytest.raises(ValueError, match="at least 3 rows"):
        analysis.cluster_rows(rows[:2])
    with pytest.raises(ValueError, match="num_clusters < 32"):
        analysis.cluster_rows(rows, 40)
    with pytest.raises(ValueError, match="max_clusters < 5"):
        analysis.cluster_rows(rows[:5], max_clusters=6)
    with pytest.raises(ValueError, match="NaN"):
        analysis.cluster_rows(np.where(rows > 5, np.nan, rows))
    with pytest.raises(TypeError, match="SusceptibilityResult"):
        analysis.cluster_rows(rows.tolist())
    with pytest.raises(ValueError, match="MAX_ROWS"):
        analysis.cluster_rows(np.zeros((analysis.MAX_ROWS + 1, 2)))
    with pytest.raises(ValueError, match="criterion"):
        analysis.cluster_rows(rows, criterion="gap")
    with pytest.raises(ValueError, match="nothing to cluster"):
        analysis.cluster_rows(np.ones((6, 2)))
    with pytest.raises(ValueError, match="one per row"):
        analysis.cluster_rows(rows).typical_rows(context=["a"])
    # The optional extra missing: a clear ImportError naming it; PCA still works.
    monkeypatch.setattr(analysis, "sklearn", None)
    monkeypatch.setattr(analysis, "umap", None)
    with pytest.raises(ImportError, match=r'pip install "slt_jax\[analysis\]"'):
        analysis.cluster_rows(rows)
    with pytest.raises(ImportError, match="umap"):
        analysis.embed(rows, "umap")
    assert analysis.embed(rows).shape == (32, 2)


def test_pca_embedding_and_one_space_over_checkpoints():
    rows, _ = _blocks()
    coordinates = analysis.embed(rows)
    np.testing.assert_allclose(coordinates, response_pca(rows, 2).scores)
    assert analysis.embed(ResponseMatrix(rows), num_components=3).shape == (32, 3)
    with pytest.raises(ValueError, match="method"):
        analysis.embed(rows, "tsne")
    with pytest.raises(ValueError, match="num_components=4"):
        analysis.embed(rows, num_components=4)
    # Checkpoints: the rows of every checkpoint are embedded in ONE space, z-scored on the stack.
    rng = np.random.default_rng(3)
    early, late = (susceptibility_result(rng.normal(size=(4, n, 3)) * scale) for n, scale in ((20, 1.0), (32, 5.0)))
    steps = analysis.embed({100: early, 200: late})
    assert list(steps) == [100, 200] and steps[100].shape == (20, 2) and steps[200].shape == (32, 2)
    joint = response_pca(zscore_columns(np.concatenate([early.chi, late.chi])), 2).scores
    np.testing.assert_allclose(np.concatenate([steps[100], steps[200]]), joint)
    assert [c.shape for c in analysis.embed([rows, rows[:10]])] == [(32, 2), (10, 2)]
    with pytest.raises(ValueError, match="columns"):
        analysis.embed([rows, rows[:, :2]])
    with pytest.raises(TypeError, match="one kind"):
        analysis.embed([early, rows])


def test_umap_embedding_is_deterministic_per_seed():
    rows, _ = _blocks(seed=4)
    first = analysis.embed(rows, "umap", random_state=0)
    chex.assert_shape(first, (32, 2))
    np.testing.assert_array_equal(first, analysis.embed(rows, "umap", random_state=0))
    assert not np.allclose(first, analysis.embed(rows, "umap", random_state=1))
    assert [c.shape for c in analysis.embed([rows, rows[:12]], "umap")] == [(32, 2), (12, 2)]


def test_top_influences_known_ordering():
    # Row 0's BIF with rows 1..4: -0.5, 0.2, 0.9, -0.7; the diagonal (-1, the row itself) never counts.
    bif = np.array([
        [-1.0, -0.5, 0.2, 0.9, -0.7],
        [-0.5, -2.0, 0.1, 0.0, 0.3],
        [0.2, 0.1, -1.0, -0.3, 0.0],
        [0.9, 0.0, -0.3, -4.0, 0.5],
        [-0.7, 0.3, 0.0, 0.5, -1.0],
    ])
    top = analysis.top_influences(bif, 3)
    chex.assert_shape((top.indices, top.values), [(5, 3), (5, 3)])
    assert top.indices[0].tolist() == [3, 4, 1] and top.values[0].tolist() == [0.9, -0.7, -0.5]
    assert not np.any(top.indices == np.arange(5)[:, None])
    assert analysis.top_influences(bif, 2, order="helpful").indices[0].tolist() == [4, 1]
    assert analysis.top_influences(bif, 2, order="harmful").indices[0].tolist() == [3, 2]
    # Normalized: BIF / sqrt(Var_i Var_j). Row 0 with 3: 0.9 / 2 = 0.45; with 4: -0.7; with 1: -0.5 / sqrt(2).
    normalized = analysis.top_influences(bif, 3, normalized=True)
    assert normalized.indices[0].tolist() == [4, 3, 1]
    np.testing.assert_allclose(normalized.values[0], [-0.7, 0.45, -0.5 / np.sqrt(2)])
    # Queries against a candidate (training) set.
    subset = analysis.top_influences(bif, 2, queries=[0, 1], candidates=[2, 3, 4])
    assert subset.queries.tolist() == [0, 1] and subset.indices.tolist() == [[3, 4], [4, 2]]
    with pytest.raises(ValueError, match="k <= 4"):
        analysis.top_influences(bif, 5)
    with pytest.raises(ValueError, match="order"):
        analysis.top_influences(bif, 1, order="largest")
    with pytest.raises(ValueError, match="queries"):
        analysis.top_influences(bif, 1, queries=[7])
    with pytest.raises(ValueError, match="square"):
        analysis.top_influences(bif[:3], 1)


def test_bif_and_gradient_clusterings_recover_planted_subtasks():
    # Three regression sub-tasks on disjoint input subspaces (16 examples each). The posterior is
    # Gaussian with a block-diagonal covariance, so losses of different sub-tasks are uncorrelated
    # (exactly 0) and within a sub-task |corr| is ~0.6; with 4 chains x 200 draws the estimated
    # cross correlations scatter by ~0.1. Six seeds all gave ARI = 1 and k = 3 by the eigengap; the
    # bound ARI >= 0.9 allows one or two misplaced examples out of 48 (random labels give ~0).
    groups, loss_fn, w_star, data = planted_regression(seed=0)
    config = sj.SamplerConfig(step_size=3e-2, nbeta=48.0, localization=1.0, num_draws=200, batch_size=48, num_burnin=50)
    bif = sj.estimate_bif(loss_fn, w_star, data, config, key=0, progress=False)
    by_bif = analysis.cluster_examples(bif)
    assert by_bif.num_clusters == 3 and analysis.agreement(by_bif, groups) >= 0.9
    # Gradients -r_i x_i of different sub-tasks are exactly orthogonal: the |cos| graph falls apart
    # into the three sub-tasks, so the baseline is exact (ARI = 1).
    by_gradient = analysis.gradient_clusters(loss_fn, w_star, data)
    assert by_gradient.clusters.num_clusters == 3 and analysis.agreement(by_gradient, groups) == 1.0
    assert by_gradient.gradient_bytes == 48 * 6 * 4 and by_gradient.num_parameters == 6
    assert 0 < by_gradient.gradient_seconds <= by_gradient.seconds
    assert analysis.agreement(by_bif, by_gradient) >= 0.9
    # The top influences of an example come from its own sub-task.
    top = analysis.top_influences(bif, 3, normalized=True)
    assert np.mean(groups[top.indices] == groups[:, None]) > 0.9
    with pytest.raises(ValueError, match="max_gradient_floats"):
        analysis.gradient_clusters(loss_fn, w_star, data, max_gradient_floats=100)
    with pytest.raises(ValueError, match="same rows"):
        analysis.agreement(by_bif, groups[:10])


# Issue 18, item 7: the analysis functions refuse NaN and warn on a mostly-noise result, like the estimators.
def test_noise_and_nan_are_not_accepted_silently():
    rng = np.random.default_rng(0)
    noisy = synthetic_results.susceptibility_result(rng.normal(size=(4, 24, 3)))  # no signal: chains disagree
    with pytest.warns(sj.reliability.NoisyResponseWarning, match="mostly noise"):
        analysis.cluster_rows(noisy, 2)
    with pytest.warns(sj.reliability.NoisyResponseWarning, match="mostly noise"):
        analysis.embed(noisy)
    with pytest.warns(sj.reliability.NoisyResponseWarning, match="mostly noise"):
        analysis.embed([noisy, noisy])
    bif = -np.cov(rng.normal(size=(5, 40)))
    with pytest.raises(ValueError, match="BIF has NaN"):
        analysis.top_influences(np.where(np.eye(5, dtype=bool), np.nan, bif), 2)
    top = analysis.top_influences(bif, 2)
    assert repr(top).startswith("Influences(5 queries x top 2; row 0: ") and "\n" not in repr(top)


def test_embed_takes_a_susceptibility_table_and_keys_it_by_step():
    groups, loss_fn, w_star, data = planted_regression(per_group=4)
    config = sj.SamplerConfig(step_size=1e-3, nbeta=20.0, localization=10.0, num_chains=4, num_draws=40, batch_size=12)
    components = {f"w{j}": np.arange(w_star.size) == j for j in range(3)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.reliability.NoisyResponseWarning)
        table = sj.estimate_susceptibilities_table(loss_fn, [w_star, w_star + 0.05], data, config, key=0, steps=[0, 7],
                                                   probes={"train": data}, components=components, progress=False)
        from_table = analysis.embed(table)
        from_dict = analysis.embed({0: table.result(0), 7: table.result(1)})
    assert list(from_table) == [0, 7] and from_table[7].shape == (data["y"].shape[0], 2)
    np.testing.assert_array_equal(from_table[7], from_dict[7])
