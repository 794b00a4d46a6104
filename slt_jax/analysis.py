"""Analyses of response matrices and BIFs: clusters, embeddings, top influences, a gradient baseline.

Needs the optional extra: ``pip install "slt_jax[analysis]"`` (scikit-learn, umap-learn).
``import slt_jax`` imports neither this module nor them; ``sj.analysis`` loads it on first use,
and a function that needs a missing library raises an ``ImportError`` that names the extra. PCA
(numpy SVD) and ``top_influences`` need nothing beyond numpy.

Rows are compared by their standardized susceptibility vectors (docs/conventions.md §3): a
``SusceptibilityResult`` is z-scored column by column; a ``ResponseMatrix`` (``result.zscored()
.row_centered()``) or a plain ``(N, K)`` array is taken as already preprocessed.

Clustering (one tool for every analysis): spectral clustering (``sklearn.cluster.SpectralClustering``
on a precomputed affinity, labels by ``cluster_qr``). Rows of a response matrix get the
self-tuning RBF affinity of Zelnik-Manor & Perona (2004), exp(-||x_i - x_j||² / (sigma_i sigma_j))
with sigma_i the distance from row i to its 7th nearest row: scale-free, and adapted to clusters of
different spreads (on planted blocks it beat one global scale, the median heuristic, which blurs
the blocks together). Examples of a BIF get |corr(l_i, l_j)|, and examples in the gradient
baseline |cos(g_i, g_j)|: two examples interact through shared parameter directions whatever the
sign (at a minimum the sign of a per-example gradient is the sign of its residual).

The number of clusters k (2 <= k <= ``max_clusters``; k = 1, no structure, is never chosen) comes
from one of two criteria, with its value per k in ``Clusters.criterion_values``:

* ``"eigengap"`` (von Luxburg 2007; the default for examples): with 0 = lambda_1 <= lambda_2 <= ...
  the eigenvalues of the normalized Laplacian of the affinity graph, k maximizes
  lambda_{k+1} - lambda_k. It measures connectivity, what spectral clustering partitions by; one
  eigendecomposition.
* ``"silhouette"`` (Rousseeuw 1987; the default for the rows of a response matrix): k maximizes
  the mean silhouette of the k-cluster labels on Euclidean distances between the rows' features
  (the z-scored rows of a response matrix; for examples, their rows of the affinity). It measures
  compactness; one clustering per k.

Measured on planted structure: three blocks of response rows plus one pure-noise column (which
z-scoring scales up to the blocks' separation), 20 seeds: the silhouette found k = 3 in 18, the
eigengap in 12. The BIF of three planted regression sub-tasks (groups connected but not compact:
|corr| within a group ranges over [0, 1]), 6 seeds: the eigengap found k = 3 in 6, the
silhouette in 4. A small largest gap (or a silhouette near 0) means little cluster structure.
The dense N x N affinity caps N at ``MAX_ROWS``.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.flatten_util import ravel_pytree
from scipy.sparse import csgraph
from scipy.sparse import linalg as sparse_linalg

from slt_jax import reliability, stats
from slt_jax._src import validation
from slt_jax.bif import BIFResult
from slt_jax.stats import ProbeLabels
from slt_jax.susceptibility import ResponseMatrix, SusceptibilityResult, SusceptibilityTable, response_pca, zscore_columns
from slt_jax.types import Batch, LossFn, Params

# The optional extra (pip install "slt_jax[analysis]"); a missing library is None here and the
# functions that need it raise an ImportError naming the extra (the tests monkeypatch these to None).
try:
    import sklearn.cluster
    import sklearn.metrics
    import sklearn.metrics.pairwise
except ImportError:  # pragma: no cover
    sklearn = None
try:
    with warnings.catch_warnings():
        # umap-learn warns at import when TensorFlow (for ParametricUMAP, unused here) is missing.
        warnings.simplefilter("ignore", ImportWarning)
        import umap
except ImportError:  # pragma: no cover
    umap = None

__all__ = [
    "Clusters", "cluster_rows", "cluster_examples", "embed", "Influences", "top_influences",
    "GradientClusters", "gradient_clusters", "agreement", "CRITERIA", "MAX_ROWS", "MAX_GRADIENT_FLOATS",
]

CRITERIA = ("eigengap", "silhouette")
MAX_ROWS = 5000  # a dense N x N float64 affinity: 200 MB at the cap, and its Laplacian as much again
MAX_GRADIENT_FLOATS = 2**25  # N x d per-example gradients at once: 134 MB float32, twice that in float64
_DENSE_EIGEN_ROWS = 1000  # above this, the Laplacian's smallest eigenvalues come from Lanczos (eigsh)


def _require(module, what: str) -> None:
    if module is None:
        raise ImportError(f'{what} needs the optional extra: pip install "slt_jax[analysis]" '
                          "(scikit-learn, umap-learn).")


# ---------------------------------------------------------------------------------------------
# Inputs


def _warn_if_noise(result, what: str) -> None:
    """The estimators' check, again where a result is used: a ``NoisyResponseWarning`` when its
    rows differ mainly by sampling noise (a plain array carries no chains to tell)."""
    if isinstance(result, (SusceptibilityResult, BIFResult)):
        reliability.check_reliability(result, what)


def _matrix(matrix) -> ResponseMatrix:
    """A ``ResponseMatrix`` of finite values: z-scored for a ``SusceptibilityResult``, else as given."""
    if isinstance(matrix, SusceptibilityResult):
        _warn_if_noise(matrix, "the response matrix")
        matrix = matrix.zscored()
    elif not isinstance(matrix, ResponseMatrix):
        if not isinstance(matrix, (np.ndarray, jax.Array)):
            raise TypeError(f"expected a SusceptibilityResult, a ResponseMatrix or an (N, K) array, got {type(matrix).__name__}.")
        matrix = ResponseMatrix(np.asarray(matrix))
    if not np.all(np.isfinite(matrix.values)):
        raise ValueError("the matrix has NaN or inf entries (diverged components?); drop those columns first.")
    return matrix


def _stacked(matrices: Sequence) -> list[ResponseMatrix]:
    """One matrix per checkpoint; ``SusceptibilityResult``s are z-scored on the stacked rows (one scale)."""
    if not len(matrices):
        raise ValueError("no matrices: pass one per checkpoint.")
    results = [isinstance(m, SusceptibilityResult) for m in matrices]
    if any(results) and not all(results):
        raise TypeError("mix of SusceptibilityResults and other matrices; pass one kind (z-scored alike).")
    if all(results):
        for m in matrices:
            _warn_if_noise(m, "a response matrix")
        values = zscore_columns(np.concatenate([m.chi for m in matrices]))
        split = np.cumsum([m.chi.shape[0] for m in matrices])[:-1]
        matrices = [ResponseMatrix(v, m.labels, list(m.components)) for v, m in zip(np.split(values, split), matrices)]
    matrices = [_matrix(m) for m in matrices]
    widths = {m.shape[1] for m in matrices}
    if len(widths) != 1:
        raise ValueError(f"the matrices have different numbers of columns {sorted(widths)}; every checkpoint needs the same columns.")
    return matrices


class _Choice(NamedTuple):
    """How k is chosen (validated): a fixed k or None, the largest k tried, the criterion, the seed."""

    num_clusters: int | None
    max_clusters: int
    criterion: str
    random_state: int


def _check_clusters(num_clusters, max_clusters, criterion, random_state, num_rows: int) -> _Choice:
    if num_rows < 3:
        raise ValueError(f"clustering needs at least 3 rows, got {num_rows}.")
    if num_rows > MAX_ROWS:
        raise ValueError(f"{num_rows} rows: the dense affinity needs {num_rows}² x 8 bytes; cluster at most MAX_ROWS="
                         f"{MAX_ROWS} rows (e.g. one probe dataset, or a random subset of the rows).")
    if num_clusters is not None:
        num_clusters = validation.check_positive_int(num_clusters, "num_clusters", minimum=2)
        if num_clusters >= num_rows:
            raise ValueError(f"num_clusters={num_clusters} but there are only {num_rows} rows; pass num_clusters < {num_rows}.")
    max_clusters = min(10, num_rows - 1) if max_clusters is None else validation.check_positive_int(max_clusters, "max_clusters", 2)
    if max_clusters >= num_rows:
        raise ValueError(f"max_clusters={max_clusters} but there are only {num_rows} rows; pass max_clusters < {num_rows}.")
    if criterion not in CRITERIA:
        raise ValueError(f"criterion={criterion!r}; use 'eigengap' (graph connectivity) or 'silhouette' (compactness).")
    return _Choice(num_clusters, max(max_clusters, num_clusters or 2), criterion, int(random_state))


# ---------------------------------------------------------------------------------------------
# Clustering


@dataclasses.dataclass(frozen=True)
class Clusters:
    """A clustering of N rows (probe rows or examples) described by K features each.

    Attributes:
        labels: ``(N,)`` cluster of each row, 0..k-1, numbered by decreasing size.
        num_clusters: k.
        criterion: ``"eigengap"`` or ``"silhouette"``.
        candidates: ``(M,)`` the numbers of clusters considered: 2..max_clusters, or the given k.
        criterion_values: ``(M,)`` the criterion at each candidate (the largest wins unless
            ``num_clusters`` was given): lambda_{k+1} - lambda_k, or the mean silhouette in [-1, 1].
        profiles: ``(k, K)`` mean feature vector of each cluster (z-scored susceptibilities: which
            components respond; for a BIF or gradients, the mean affinity to every example).
        sizes: ``(k,)`` rows per cluster.
        distance: ``(N,)`` Euclidean distance of each row to its cluster's profile.
        columns: the K feature names.
        rows: ``ProbeLabels`` of the rows, or None.
    """

    labels: np.ndarray
    num_clusters: int
    criterion: str
    candidates: np.ndarray
    criterion_values: np.ndarray
    profiles: np.ndarray
    sizes: np.ndarray
    distance: np.ndarray
    columns: list[str]
    rows: ProbeLabels | None

    def typical_rows(self, num_rows: int = 5, context: Sequence[str] | None = None):
        """The ``num_rows`` rows of each cluster closest to its profile, as a ``pandas.DataFrame``.

        Args:
            num_rows: rows per cluster (fewer if the cluster is smaller).
            context: optional ``(N,)`` strings shown beside the labels (e.g. the decoded tokens).

        Returns:
            Columns ``cluster, rank, row, distance`` and, when known, ``probe, example, token`` and ``context``.
        """
        num_rows = validation.check_positive_int(num_rows, "num_rows")
        if context is not None and len(context) != self.labels.size:
            raise ValueError(f"context has {len(context)} entries for {self.labels.size} rows; pass one per row.")
        order = np.lexsort((self.distance, self.labels))
        rank = np.arange(order.size) - np.searchsorted(self.labels[order], self.labels[order])
        keep = order[rank < num_rows]
        table = dict(cluster=self.labels[keep], rank=rank[rank < num_rows], row=keep, distance=self.distance[keep])
        if self.rows is not None:
            table.update(probe=self.rows.probe[keep], example=self.rows.example[keep], token=self.rows.token[keep])
        if context is not None:
            table["context"] = np.asarray(context, dtype=object)[keep]
        return pd.DataFrame(table)

    def __repr__(self) -> str:
        return f"Clusters(k={self.num_clusters}, sizes={self.sizes.tolist()}, rows={self.labels.size})"


def _smallest_eigenvalues(affinity: np.ndarray, count: int, random_state: int) -> np.ndarray:
    """The ``count`` smallest eigenvalues of the normalized Laplacian I - D^-1/2 A D^-1/2, ascending."""
    laplacian = csgraph.laplacian(affinity, normed=True)
    if affinity.shape[0] <= _DENSE_EIGEN_ROWS:
        return np.linalg.eigvalsh(laplacian)[:count]
    start = np.random.default_rng(random_state).uniform(size=affinity.shape[0])
    # Largest eigenvalues of I - L: Lanczos converges fast at that end of the spectrum.
    values = sparse_linalg.eigsh(np.eye(affinity.shape[0]) - laplacian, k=count, which="LA", v0=start,
                                 return_eigenvectors=False)
    return np.sort(1.0 - values)


def _spectral_labels(affinity: np.ndarray, num_clusters: int, random_state: int) -> np.ndarray:
    with warnings.catch_warnings():
        # A disconnected graph is the clean case (each connected component a cluster, one
        # eigenvalue 0 each); scikit-learn warns about it anyway.
        warnings.filterwarnings("ignore", "Graph is not fully connected", UserWarning)
        return sklearn.cluster.SpectralClustering(
            num_clusters, affinity="precomputed", assign_labels="cluster_qr", random_state=random_state
        ).fit_predict(affinity)


def _spectral(affinity, features, columns, rows, choice: _Choice) -> Clusters:
    """``SpectralClustering`` of the precomputed ``affinity`` (N, N), k by ``choice``; ``features`` (N, K)."""
    _require(sklearn, "clustering")
    candidates = np.arange(2, choice.max_clusters + 1) if choice.num_clusters is None else np.array([choice.num_clusters])
    if choice.criterion == "eigengap":
        eigenvalues = _smallest_eigenvalues(affinity, candidates[-1] + 1, choice.random_state)
        values = eigenvalues[candidates] - eigenvalues[candidates - 1]
        labels = _spectral_labels(affinity, int(candidates[np.argmax(values)]), choice.random_state)
    else:
        distance = sklearn.metrics.pairwise.euclidean_distances(features)
        labelings = [_spectral_labels(affinity, int(k), choice.random_state) for k in candidates]
        values = np.array([sklearn.metrics.silhouette_score(distance, labels, metric="precomputed")
                           if 1 < np.unique(labels).size < labels.size else -1.0 for labels in labelings])
        labels = labelings[int(np.argmax(values))]
    # Number the clusters by decreasing size (ties by first row), so labels are reproducible.
    found, first, counts = np.unique(labels, return_index=True, return_counts=True)
    rank = np.empty(labels.max() + 1, int)
    rank[found[np.lexsort((first, -counts))]] = np.arange(found.size)
    labels = rank[labels]
    profiles = np.stack([features[labels == c].mean(axis=0) for c in range(found.size)])
    return Clusters(
        labels=labels, num_clusters=int(found.size), criterion=choice.criterion, candidates=candidates,
        criterion_values=values, profiles=profiles, sizes=np.bincount(labels),
        distance=np.linalg.norm(features - profiles[labels], axis=1), columns=list(columns), rows=rows,
    )


def cluster_rows(
    matrix,
    num_clusters: int | None = None,
    *,
    max_clusters: int | None = None,
    criterion: str = "silhouette",
    num_neighbors: int = 7,
    random_state: int = 0,
) -> Clusters:
    """Spectral clustering of the rows (tokens, examples) of a response matrix.

    Args:
        matrix: a ``SusceptibilityResult`` (z-scored columns), a ``ResponseMatrix`` or an ``(N, K)``
            array (both taken as preprocessed).
        num_clusters: k; None chooses it by ``criterion`` over 2..``max_clusters``.
        max_clusters: the largest k considered (default min(10, N - 1)).
        criterion: ``"silhouette"`` or ``"eigengap"`` (module docstring).
        num_neighbors: sigma_i of the affinity is the distance to the row's ``num_neighbors``-th
            nearest row (capped at N - 1).
        random_state: seed of scikit-learn's eigensolver.

    Returns:
        ``Clusters``: labels ``(N,)``, k, the criterion per candidate k, profiles ``(k, K)``;
        ``.typical_rows()`` lists the rows closest to each profile.

    >>> import numpy as np
    >>> from slt_jax import analysis
    >>> centres = np.repeat(np.eye(3) * 5.0, 10, axis=0)            # three planted blocks of 10 rows
    >>> rows = centres + np.random.default_rng(0).normal(size=(30, 3))
    >>> clusters = analysis.cluster_rows(rows)
    >>> clusters.num_clusters, clusters.sizes.tolist()
    (3, [10, 10, 10])
    """
    matrix = _matrix(matrix)
    choice = _check_clusters(num_clusters, max_clusters, criterion, random_state, matrix.shape[0])
    _require(sklearn, "cluster_rows")
    num_neighbors = min(validation.check_positive_int(num_neighbors, "num_neighbors"), matrix.shape[0] - 1)
    squared = sklearn.metrics.pairwise.euclidean_distances(matrix.values, squared=True)
    scale = np.sqrt(np.partition(squared, num_neighbors, axis=1)[:, num_neighbors])  # sigma_i (index 0: the row itself)
    if not scale.max() > 0:
        raise ValueError(f"every row has {num_neighbors} identical neighbours; there is nothing to cluster.")
    # A row with num_neighbors exact duplicates gets a tiny sigma: linked to its duplicates only.
    scale = np.maximum(scale, 1e-12 * scale.max())
    affinity = np.exp(-squared / np.outer(scale, scale))
    return _spectral(affinity, matrix.values, matrix.columns, matrix.rows, choice)


def _correlation(bif) -> np.ndarray:
    """The Pearson correlation of a ``BIFResult`` or of a square -Cov array."""
    _warn_if_noise(bif, "the BIF")
    if isinstance(bif, BIFResult):
        correlation = np.asarray(bif.correlation, np.float64)
    else:
        correlation = stats.correlation(-_square(bif))  # BIF = -Cov
    if not np.all(np.isfinite(correlation)):
        raise ValueError("the BIF correlation has NaN entries (a row with zero loss variance?); drop those rows first.")
    return correlation


def cluster_examples(
    bif,
    num_clusters: int | None = None,
    *,
    max_clusters: int | None = None,
    criterion: str = "eigengap",
    random_state: int = 0,
) -> Clusters:
    """Spectral clustering of examples by their BIF: affinity |corr(l_i, l_j)|.

    Args:
        bif: a ``BIFResult`` or an ``(N, N)`` BIF array (-Cov).
        num_clusters, max_clusters, criterion, random_state: as for ``cluster_rows``.

    Returns:
        ``Clusters`` whose features (profiles, distances) are the rows of the affinity.
    """
    affinity = np.abs(_correlation(bif))
    choice = _check_clusters(num_clusters, max_clusters, criterion, random_state, affinity.shape[0])
    rows = bif.labels if isinstance(bif, BIFResult) else None
    columns = [str(j) for j in range(affinity.shape[0])]
    return _spectral(affinity, affinity, columns, rows, choice)


# ---------------------------------------------------------------------------------------------
# Embeddings


def _embed_values(values: np.ndarray, method: str, num_components: int, random_state: int, num_neighbors: int,
                  min_dist: float) -> np.ndarray:
    if method == "pca":
        if num_components > min(values.shape):
            raise ValueError(f"num_components={num_components} but a {values.shape} matrix has at most {min(values.shape)}.")
        return response_pca(values, num_components).scores
    _require(umap, "embed(method='umap')")
    if values.shape[0] <= num_components + 1:
        raise ValueError(f"UMAP needs more than num_components + 1 = {num_components + 1} rows, got {values.shape[0]}.")
    # n_jobs=1: with a random_state UMAP runs single-threaded anyway (and warns unless told).
    model = umap.UMAP(n_components=num_components, n_neighbors=min(num_neighbors, values.shape[0] - 1),
                      min_dist=min_dist, random_state=random_state, n_jobs=1)
    return np.asarray(model.fit_transform(values), np.float64)


def embed(
    matrices,
    method: str = "pca",
    *,
    num_components: int = 2,
    random_state: int = 0,
    num_neighbors: int = 15,
    min_dist: float = 0.1,
):
    """Low-dimensional coordinates of the rows of a response matrix, or of several in ONE space.

    Args:
        matrices: one matrix (``SusceptibilityResult``, ``ResponseMatrix`` or ``(N, K)`` array), or
            one per checkpoint: a ``SusceptibilityTable`` (``estimate_susceptibilities_table``; the
            result is then ``{step: coordinates}``), a list, or a ``{step: matrix}`` dict. All rows
            are stacked and embedded together, so positions are comparable across checkpoints
            (the development view).
            ``SusceptibilityResult``s are z-scored with the mean and std of the stacked rows.
        method: ``"pca"`` (numpy SVD, no extra needed) or ``"umap"`` (umap-learn).
        num_components: dimensions of the embedding.
        random_state: UMAP's seed: the same seed gives the same coordinates.
        num_neighbors, min_dist: UMAP's ``n_neighbors`` (capped at N - 1) and ``min_dist``.

    Returns:
        ``(N, num_components)`` coordinates for one matrix; a list or a dict of ``(N_t, num_components)``
        arrays, one per checkpoint, for several.

    >>> import numpy as np
    >>> from slt_jax import analysis
    >>> rng = np.random.default_rng(0)
    >>> analysis.embed(rng.normal(size=(20, 4))).shape
    (20, 2)
    >>> [xy.shape for xy in analysis.embed([rng.normal(size=(20, 4)), rng.normal(size=(30, 4))])]
    [(20, 2), (30, 2)]
    """
    if method not in ("pca", "umap"):
        raise ValueError(f"method={method!r}; use 'pca' or 'umap'.")
    num_components = validation.check_positive_int(num_components, "num_components")
    if isinstance(matrices, SusceptibilityTable):
        matrices = {int(step): matrices.result(k) for k, step in enumerate(matrices.steps)}
    keys = list(matrices) if isinstance(matrices, Mapping) else None
    several = keys is not None or isinstance(matrices, (list, tuple))
    stack = _stacked([matrices[k] for k in keys] if keys is not None else list(matrices)) if several else [_matrix(matrices)]
    values = np.concatenate([m.values for m in stack])
    coordinates = _embed_values(values, method, num_components, random_state, num_neighbors, min_dist)
    pieces = np.split(coordinates, np.cumsum([m.shape[0] for m in stack])[:-1])
    if not several:
        return pieces[0]
    return dict(zip(keys, pieces)) if keys is not None else pieces


# ---------------------------------------------------------------------------------------------
# Data attribution


class Influences(NamedTuple):
    """The most influential candidate rows of each query row.

    Attributes:
        queries: ``(Q,)`` row index of each query.
        indices: ``(Q, k)`` candidate row indices, most influential first.
        values: ``(Q, k)`` their BIF (-Cov(l_query, l_candidate)), or the normalized BIF -corr.
    """

    queries: np.ndarray
    indices: np.ndarray
    values: np.ndarray

    def __repr__(self) -> str:
        num_queries, k = self.indices.shape
        if num_queries == 0:
            return f"Influences(0 queries, k={k})"
        first = ", ".join(f"{int(i)} ({v:+.3g})" for i, v in zip(self.indices[0], self.values[0]))
        return f"Influences({num_queries} queries x top {k}; row {int(self.queries[0])}: {first}{', ...' if num_queries > 1 else ''})"


def _square(bif) -> np.ndarray:
    matrix = np.asarray(bif.bif if isinstance(bif, BIFResult) else bif, np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"expected a BIFResult or a square (N, N) BIF array, got shape {matrix.shape}.")
    if not np.all(np.isfinite(matrix)):
        raise ValueError("the BIF has NaN or inf entries (diverged chains?); rerun or drop those rows first.")
    return matrix


def top_influences(
    bif,
    k: int,
    *,
    order: str = "magnitude",
    normalized: bool = False,
    queries=None,
    candidates=None,
) -> Influences:
    """The ``k`` most influential candidate (training) rows of every query row, the row itself excluded.

    Sign (docs/conventions.md §3): BIF(i, j) = -Cov(l_i, l_j), and upweighting example j changes
    the expected loss of i by d<l_i>/d rho_j = (n beta / n) BIF(i, j). So BIF < 0: j helps i (its
    weight lowers i's loss); BIF > 0: j hurts i.

    Args:
        bif: a ``BIFResult`` or an ``(N, N)`` BIF array (-Cov).
        k: candidates per query.
        order: ``"magnitude"`` (largest |BIF| first), ``"helpful"`` (most negative first) or
            ``"harmful"`` (most positive first).
        normalized: rank by BIF / sqrt(Var_i Var_j) = -corr (scale-free: the raw BIF favours
            high-variance examples).
        queries: row indices of the queries (default all rows).
        candidates: row indices of the candidate rows, e.g. the training examples (default all rows).

    Returns:
        ``Influences`` (queries ``(Q,)``, indices and values ``(Q, k)``); ties keep the lower index first.

    >>> import numpy as np
    >>> from slt_jax import analysis
    >>> bif = np.array([[-1.0, -0.5, 0.2, 0.9], [-0.5, -1.0, 0.1, 0.0], [0.2, 0.1, -1.0, -0.3], [0.9, 0.0, -0.3, -1.0]])
    >>> top = analysis.top_influences(bif, 2)
    >>> top.indices[0].tolist(), top.values[0].tolist()
    ([3, 1], [0.9, -0.5])
    >>> analysis.top_influences(bif, 1, order="helpful").indices[:, 0].tolist()
    [1, 0, 3, 2]
    """
    if not normalized:
        _warn_if_noise(bif, "the BIF")
    matrix = -_correlation(bif) if normalized else _square(bif)
    num_rows = matrix.shape[0]
    if order not in ("magnitude", "helpful", "harmful"):
        raise ValueError(f"order={order!r}; use 'magnitude', 'helpful' (most negative BIF) or 'harmful' (most positive).")
    rows = lambda index, name: np.arange(num_rows) if index is None else _indices(index, num_rows, name)
    queries, candidates = rows(queries, "queries"), rows(candidates, "candidates")
    k = validation.check_positive_int(k, "k")
    available = candidates.size - int(np.isin(queries, candidates).any())
    if k > available:
        raise ValueError(f"k={k} but only {available} candidate rows remain beside the query itself; pass k <= {available}.")
    values = matrix[np.ix_(queries, candidates)]
    key = {"magnitude": -np.abs(values), "helpful": values, "harmful": -values}[order]
    key = np.where(queries[:, None] == candidates[None, :], np.inf, key)  # never the row itself
    best = np.argsort(key, axis=1, kind="stable")[:, :k]
    return Influences(queries, candidates[best], np.take_along_axis(values, best, axis=1))


def _indices(index, num_rows: int, name: str) -> np.ndarray:
    index = np.atleast_1d(np.asarray(index))
    if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer) or index.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of row indices, got {index!r}.")
    if index.min() < 0 or index.max() >= num_rows:
        raise ValueError(f"{name} has indices outside [0, {num_rows}); pass row indices of the BIF.")
    return index


# ---------------------------------------------------------------------------------------------
# The gradient-clustering baseline


@dataclasses.dataclass(frozen=True)
class GradientClusters:
    """Examples clustered by their per-example loss gradients at w*, and what it cost.

    Attributes:
        clusters: the ``Clusters`` (affinity |cos(g_i, g_j)|).
        labels: ``(N,)`` = ``clusters.labels``.
        seconds: wall time: gradients (compile included) plus clustering.
        gradient_seconds: wall time of the gradients alone.
        gradient_bytes: size of the ``(N, d)`` gradient matrix.
        num_examples, num_parameters: N and d.
    """

    clusters: Clusters
    labels: np.ndarray
    seconds: float
    gradient_seconds: float
    gradient_bytes: int
    num_examples: int
    num_parameters: int


def _example_loss(loss_fn: LossFn, params: Params, example: Batch) -> jax.Array:
    """The loss of ONE example (the mean over its tokens for a sequence loss)."""
    return jnp.mean(loss_fn(params, jax.tree.map(lambda leaf: leaf[None], example)))


def gradient_clusters(
    loss_fn: LossFn,
    params: Params,
    data: Batch,
    num_clusters: int | None = None,
    *,
    max_clusters: int | None = None,
    criterion: str = "eigengap",
    max_gradient_floats: int = MAX_GRADIENT_FLOATS,
    random_state: int = 0,
) -> GradientClusters:
    """Baseline: spectral clustering of examples by |cos| of their loss gradients at ``params``.

    Every per-example gradient is held at once (``jax.vmap(jax.grad)`` over the examples,
    flattened): an (N, d) matrix. Small models only: N x d must stay within
    ``max_gradient_floats`` (default 2**25 floats, 134 MB in float32).

    Args:
        loss_fn: ``loss_fn(params, batch)`` -> per-example (or per-token) losses.
        params: the point w* (a pytree).
        data: the examples (a pytree with a leading example axis N).
        num_clusters, max_clusters, criterion, random_state: as for ``cluster_rows``.
        max_gradient_floats: the cap on N x d.

    Returns:
        ``GradientClusters``: labels ``(N,)``, the ``Clusters``, seconds and bytes.
    """
    validation.check_params(params)
    num_examples = validation.check_data(data)
    num_parameters = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(params))
    if num_examples * num_parameters > max_gradient_floats:
        raise ValueError(
            f"gradient_clusters holds all per-example gradients at once: N x d = {num_examples} x {num_parameters} = "
            f"{num_examples * num_parameters:.3g} floats > max_gradient_floats={max_gradient_floats:.3g}. Use fewer "
            "examples or a smaller model (or the BIF, which streams and needs no gradient matrix)."
        )
    choice = _check_clusters(num_clusters, max_clusters, criterion, random_state, num_examples)
    _require(sklearn, "gradient_clusters")
    start = time.perf_counter()
    per_example = jax.vmap(jax.grad(functools.partial(_example_loss, loss_fn)), in_axes=(None, 0))
    flat = jax.jit(lambda p, d: jax.vmap(lambda g: ravel_pytree(g)[0])(per_example(p, d)))(params, data)
    gradients = np.asarray(jax.block_until_ready(flat))
    gradient_seconds = time.perf_counter() - start
    affinity = np.abs(sklearn.metrics.pairwise.cosine_similarity(gradients))
    clusters = _spectral(affinity, affinity, [str(j) for j in range(num_examples)], None, choice)
    return GradientClusters(
        clusters=clusters, labels=clusters.labels, seconds=time.perf_counter() - start, gradient_seconds=gradient_seconds,
        gradient_bytes=int(gradients.nbytes), num_examples=num_examples, num_parameters=num_parameters,
    )


def agreement(first, second) -> float:
    """Adjusted Rand index of two clusterings (``Clusters``, ``GradientClusters`` or label arrays): 1 = identical."""
    _require(sklearn, "agreement")
    labels = [np.asarray(x.labels if isinstance(x, (Clusters, GradientClusters)) else x) for x in (first, second)]
    if labels[0].shape != labels[1].shape or labels[0].ndim != 1:
        raise ValueError(f"the clusterings label {labels[0].shape} and {labels[1].shape} rows; pass labels of the same rows.")
    return float(sklearn.metrics.adjusted_rand_score(labels[0], labels[1]))
