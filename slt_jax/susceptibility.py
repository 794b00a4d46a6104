"""Per-example and per-token susceptibilities of component-restricted posteriors (docs/conventions.md §3).

For a component C (a bool mask) the chains sample only C's weights, the rest clamped at w*. With
φ_C = L(w) - L_n(w*) at those draws, the response of probe example (or token) xy is

    χ^C_xy = -Cov_C[ φ_C, l_xy - L ]          (Baker et al. 2025; no nβ factor)

estimated per chain from streamed Welford cross-moments (``slt_jax.stats``): memory O(N probe
rows), independent of the number of draws. Every component is a restricted configuration of one
``run_chains`` call (its chains carry only the component's coordinates; components sharing a
layout, e.g. the heads of a layer, share one compiled program). Over the checkpoints of a training
run (``estimate_susceptibilities_table`` -> ``SusceptibilityTable``) the checkpoints are the centres
of the same call: one stack of configurations checkpoint x component, each with its own w* and
L_n(w*); ``estimate_susceptibilities`` is its one-checkpoint case.

Which L (the unbiased design). The posterior is defined by L_n, so the exact linear response of
upweighting xy is -nβ Cov(φ, l_xy - L_n). Covariances are biased by any noise shared by both
factors: evaluating φ AND the centering term on the same minibatch adds +E[Var(L_B | w)] to every
χ (devinterp's estimator does this when its sampling-task batch changes per draw). Here:

* ``centering="probe"`` (default): φ is the paired difference L_B(w) - L_B(w*) on the draw's own
  SGLD minibatch. That batch is drawn independently of the draw's position, so the difference is an
  unbiased estimate of L_n(w) - L_n(w*) whose noise is uncorrelated with the probe losses, and
  pairing with w* cancels most of the minibatch noise (a control variate); the tests check it
  against ``"full"`` on real minibatches. L is the mean loss of the probe rows. Costs one forward
  pass of the batch per draw. The columns then sum to zero over the probe rows; they equal the
  ``"full"`` values when the probes are the training set, and otherwise differ from them by one
  constant per column (which z-scoring removes).
* ``centering="full"``: φ and L are the full-data loss L_n(w) at each draw. Exact, but it costs a
  pass over ALL n training examples at every draw (n / batch_size forward passes: 256 per draw at
  n = 4096, batch 16), which dominates the run for any realistic n. Use it for small datasets or
  to check ``"probe"``.

Step size. The identities hold for the sampled distribution; SGLD at step ε samples a slightly
wider law than the posterior (for a quadratic loss the covariance is (A(I - εA/4))^{-1}, A = nβH + γI,
while the mean is exact), so χ̂ is inflated by O(εA/4) relative to the exact posterior's linear
response (e.g. what ``slt_jax.pattern`` relies on). Calibrate ε small when the values matter.

``method="two_chain"`` is devinterp 2.x's estimator: the products and E[φ] come from the restricted
chain, the centering mean E[l_xy - L] from the full chain,

    χ^C_xy = -( E_C[φ (l_xy - L)] - E_C[φ] · E_full[l_xy - L] ),

which equals the covariance form only when restricting C does not move E[l_xy - L]; it is not
invariant to the offset of φ. Per chain c it pairs restricted chain c with full chain c.

Results. ``SusceptibilityResult.chi`` is the ``(N, K)`` response matrix. Raw columns are not
comparable across components, so analyses start from the fluent ``ResponseMatrix``:
``result.zscored().row_centered().pca()`` (z-score the columns, remove the uniform row mode, PCA).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from slt_jax import plots, reliability, results, stats
from slt_jax._src import frontdoor
from slt_jax.config import SamplerConfig
from slt_jax.sampler import ChainsResult, Recording, run_chains
from slt_jax.stats import ProbeLabels
from slt_jax.types import Array, Batch, KeyLike, LossFn, Mask, Params

__all__ = [
    "SusceptibilityResult",
    "SusceptibilityTable",
    "ResponseMatrix",
    "ResponsePCA",
    "estimate_susceptibilities",
    "estimate_susceptibilities_table",
    "METHODS",
    "zscore_columns",
    "center_rows",
    "response_pca",
]

METHODS = ("covariance", "two_chain")


class ResponsePCA(NamedTuple):
    """PCA (SVD) of a response matrix X (N rows, K columns) after its preprocessing.

    Attributes:
        scores: ``(N, r)`` row coordinates U·S.
        loadings: ``(K, r)`` principal axes (columns of V), sign fixed so the largest entry is > 0.
        singular_values: ``(r,)``.
        explained_variance: ``(r,)`` S² / (N - 1).
        explained_variance_ratio: ``(r,)`` fraction of the total variance.
    """

    scores: np.ndarray
    loadings: np.ndarray
    singular_values: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray


def zscore_columns(matrix: np.ndarray) -> np.ndarray:
    """Each column minus its mean, divided by its std (ddof=0); a constant column becomes 0."""
    matrix = np.asarray(matrix, np.float64)
    centered = matrix - matrix.mean(axis=0)
    scale = matrix.std(axis=0)
    return np.divide(centered, scale, out=np.zeros_like(centered), where=scale > 0)


def center_rows(matrix: np.ndarray) -> np.ndarray:
    """Each row minus its mean over columns (removes the mode shared uniformly by all components)."""
    matrix = np.asarray(matrix, np.float64)
    return matrix - matrix.mean(axis=1, keepdims=True)


def response_pca(matrix: np.ndarray, num_components: int | None = None) -> ResponsePCA:
    """PCA of ``matrix`` (N, K) by SVD after centering its columns."""
    matrix = np.asarray(matrix, np.float64)
    if not np.all(np.isfinite(matrix)):
        raise ValueError("the response matrix has NaN entries (diverged components?); drop those columns first.")
    centered = matrix - matrix.mean(axis=0)
    u, s, vt = np.linalg.svd(centered, full_matrices=False)
    rank = len(s) if num_components is None else min(int(num_components), len(s))
    u, s, v = u[:, :rank], s[:rank], vt[:rank].T
    signs = stats.fix_signs(v.T)
    u, v = u * signs, v * signs
    variance = s**2 / max(matrix.shape[0] - 1, 1)
    total = np.sum(centered**2) / max(matrix.shape[0] - 1, 1)
    ratio = variance / total if total > 0 else np.zeros_like(variance)
    return ResponsePCA(u * s, v, s, variance, ratio)


@dataclasses.dataclass(frozen=True)
class ResponseMatrix:
    """A response matrix with its row labels and column names; each transform returns a new one.

    ``values`` is ``(N, K)``: one row per probe example (token), one column per component
    (observable). Raw susceptibility columns are not comparable across components
    (docs/conventions.md §3): z-score the columns, optionally centre the rows, then take the PCA.

    Attributes:
        values: ``(N, K)`` float64.
        rows: ``ProbeLabels`` of the N rows (None when built from a bare array).
        columns: the K column names.
        transforms: the transforms applied so far, in order (``"zscored"``, ``"row_centered"``).

    >>> import numpy as np
    >>> from slt_jax.susceptibility import ResponseMatrix
    >>> matrix = ResponseMatrix(np.array([[1.0, 2.0, 0.0], [3.0, 1.0, 1.0], [2.0, 5.0, 4.0], [0.0, 1.0, 2.0]]),
    ...                         columns=["a", "b", "c"])
    >>> pca = matrix.zscored().row_centered().pca()
    >>> matrix.zscored().row_centered().transforms, pca.loadings.shape
    (('zscored', 'row_centered'), (3, 3))
    """

    values: np.ndarray
    rows: ProbeLabels | None = None
    columns: list[str] | None = None
    transforms: tuple[str, ...] = ()

    def __post_init__(self):
        values = np.asarray(self.values, np.float64)
        if values.ndim != 2:
            raise ValueError(f"a response matrix is 2-D (rows, columns), got shape {values.shape}.")
        object.__setattr__(self, "values", values)
        columns = [str(c) for c in (range(values.shape[1]) if self.columns is None else self.columns)]
        if len(columns) != values.shape[1]:
            raise ValueError(f"{len(columns)} column names for {values.shape[1]} columns.")
        object.__setattr__(self, "columns", columns)

    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape

    def __array__(self, dtype=None, copy=None):
        return self.values if dtype is None else self.values.astype(dtype)

    def _with(self, values: np.ndarray, transform: str) -> ResponseMatrix:
        return dataclasses.replace(self, values=values, transforms=self.transforms + (transform,))

    def zscored(self) -> ResponseMatrix:
        """Every column minus its mean, divided by its std (ddof=0); a constant column becomes 0."""
        return self._with(zscore_columns(self.values), "zscored")

    def row_centered(self) -> ResponseMatrix:
        """Every row minus its mean over columns (removes the mode shared uniformly by all columns)."""
        return self._with(center_rows(self.values), "row_centered")

    def pca(self, num_components: int | None = None) -> ResponsePCA:
        """PCA (SVD after centering the columns) of ``values`` as transformed so far."""
        return response_pca(self.values, num_components)


@results.register
@dataclasses.dataclass(frozen=True)
class SusceptibilityResult(results.Result):
    """A response matrix: one row per probe example (token), one column per component (observable).

    Every field is a numpy array (numeric or fixed-width unicode), a float, a string, a list of
    strings or the ``ChainsResult``, so ``slt_jax.io.save`` stores it without pickle.

    Attributes:
        chi: ``(N, K)`` mean over non-diverged chains of the per-chain estimates.
        stderr: ``(N, K)`` std (ddof=1) of the per-chain estimates / sqrt(number of chains).
        chi_per_chain: ``(num_chains, N, K)``; NaN for diverged chains.
        components: ``K`` column names: the component's name for its loss observable φ_C, and
            ``"component/function"`` for user functions.
        column_component, column_observable: ``(K,)`` str arrays, the two parts of each column name.
        labels: ``ProbeLabels`` (probe name, example, token) of the N rows.
        observable_mean: ``(K,)`` ⟨φ⟩ of each column in its restricted posterior.
        observable_mean_per_chain: ``(num_chains, K)``.
        nbeta: nβ of the run.
        method: ``"covariance"`` or ``"two_chain"``.
        centering: ``"probe"`` or ``"full"``.
        diverged: ``(num_components, num_chains)`` bool.
        chains: this checkpoint's configurations of the ``ChainsResult`` (one per component:
            accumulator states, traces if kept, settings, timings).

    Analyses go through the fluent ``ResponseMatrix``: ``result.zscored().row_centered().pca()``.
    """

    chi: np.ndarray
    stderr: np.ndarray
    chi_per_chain: np.ndarray
    components: list[str]
    column_component: np.ndarray
    column_observable: np.ndarray
    labels: ProbeLabels
    observable_mean: np.ndarray
    observable_mean_per_chain: np.ndarray
    nbeta: float
    method: str
    centering: str
    diverged: np.ndarray
    chains: ChainsResult

    @property
    def llc(self) -> dict[str, float]:
        """The refined LLC nβ⟨φ_C⟩ of every component (its loss-observable column)."""
        loss = self.column_observable == "loss"
        return {str(c): float(self.nbeta * m) for c, m in zip(self.column_component[loss], self.observable_mean[loss])}

    @property
    def matrix(self) -> ResponseMatrix:
        """``chi`` as a ``ResponseMatrix`` (rows labelled, columns named), untransformed."""
        return ResponseMatrix(self.chi, self.labels, list(self.components))

    def zscored(self) -> ResponseMatrix:
        """``chi`` with every column standardized (raw columns are not comparable across components)."""
        return self.matrix.zscored()

    def pca(self, num_components: int | None = None, *, standardize: bool = True, center: bool = False) -> ResponsePCA:
        """PCA of the response matrix: z-score columns (``standardize``), optionally center rows."""
        matrix = self.zscored() if standardize else self.matrix
        return (matrix.row_centered() if center else matrix).pca(num_components)

    def _dataset(self):
        xr = results.require("xarray")
        return xr.Dataset(
            dict(
                chi=(("row", "column"), self.chi),
                stderr=(("row", "column"), self.stderr),
                chi_per_chain=(("chain", "row", "column"), self.chi_per_chain),
                observable_mean=(("column",), self.observable_mean),
            ),
            coords=_coords(self),
            attrs=dict(nbeta=self.nbeta, method=self.method, centering=self.centering, sign="chi = -Cov(phi, l - L)"),
        )

    def plot(self, **options):
        """PCA scatter of the rows, one colour per probe (``slt_jax.plots.plot_response_pca``)."""
        return plots.plot_response_pca(self.chi, self.labels.probe, component_names=self.components, **options)

    def summary(self) -> str:
        """The matrix's shape, the chains (diverged, and with a finite χ), and its reliability line
        (``slt_jax.estimate_reliability``: is it signal or noise?)."""
        return "\n".join([repr(self), "  " + _chains_line(self), "  " + reliability.summary_line(self)])

    def __repr__(self) -> str:
        return (
            f"SusceptibilityResult(chi: {self.chi.shape[0]} rows x {self.chi.shape[1]} columns "
            f"{self.components}, method={self.method!r}, centering={self.centering!r}, nbeta={self.nbeta:.4g})"
        )


def _coords(result) -> dict:
    """Row labels and column names of a response matrix as xarray coordinates."""
    return dict(
        column=list(result.components),
        component=("column", result.column_component),
        observable=("column", result.column_observable),
        probe=("row", result.labels.probe),
        example=("row", result.labels.example),
        token=("row", result.labels.token),
    )


def _chains_line(result: SusceptibilityResult) -> str:
    """Chains, diverged chains per component, and how many chains have a finite χ (what the
    reliability line counts), so the two lines never disagree."""
    num_chains = result.chi_per_chain.shape[0]
    finite = int(np.sum(np.all(np.isfinite(result.chi_per_chain.reshape(num_chains, -1)), axis=1)))
    names = list(dict.fromkeys(np.asarray(result.column_component).tolist()))
    diverged = {name: int(count) for name, count in zip(names, np.asarray(result.diverged).sum(axis=-1))}
    return f"{num_chains} chains, {finite} with a finite chi; diverged chains per component: {diverged}"


def _estimates(state: stats.CovarianceState, num_probe_rows: int, method: str, full_index: int | None) -> np.ndarray:
    """Per-chain χ ``(G, C, p, N)`` from the streamed state (leaves ``(G, C, ...)``)."""
    cov = stats.covariance(state)  # (G, C, p, N + 1)
    if method == "covariance":
        return -(cov[..., :num_probe_rows] - cov[..., num_probe_rows:])
    count = np.asarray(state.count, np.float64)[..., None, None]
    mean_x = np.asarray(state.mean_x, np.float64)
    mean_y = np.asarray(state.mean_y, np.float64)
    comoment = np.asarray(state.comoment, np.float64)
    mean_delta = mean_y[..., :num_probe_rows] - mean_y[..., num_probe_rows:]  # E[l_xy - L], (G, C, N)
    product = (comoment[..., :num_probe_rows] - comoment[..., num_probe_rows:]) / count
    product = product + mean_x[..., :, None] * mean_delta[..., None, :]  # E_C[φ (l - L)]
    return -(product - mean_x[..., :, None] * mean_delta[full_index][None, :, None, :])


def _result(chains: ChainsResult, names: list[str], observed: stats.Observables, method: str, centering: str) -> SusceptibilityResult:
    """The ``SusceptibilityResult`` of one checkpoint's configurations (one per component)."""
    num_rows, num_x, num_chains = len(observed.labels.example), len(observed.x_names), chains.config.num_chains
    full_index = names.index("full") if "full" in names else None
    per_chain = _estimates(chains.accumulator, num_rows, method, full_index)  # (M, C, p, N)
    observable_mean = np.asarray(chains.accumulator.mean_x, np.float64)  # (M, C, p)
    diverged = np.asarray(chains.diverged, bool)
    if method == "two_chain":
        # A diverged full chain poisons the centering of every component's chain with its index.
        diverged = diverged | diverged[full_index][None]
    per_chain = np.where(diverged[..., None, None], np.nan, per_chain)
    observable_mean = np.where(diverged[..., None], np.nan, observable_mean)
    # (M, C, p, N) -> (C, N, M * p): component-major columns.
    chi_per_chain = per_chain.transpose(1, 3, 0, 2).reshape(num_chains, num_rows, len(names) * num_x)
    mean_per_chain = observable_mean.transpose(1, 0, 2).reshape(num_chains, len(names) * num_x)
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (every chain diverged) stay NaN
        chi = np.nanmean(chi_per_chain, axis=0)
        good = np.sum(np.isfinite(chi_per_chain), axis=0)
        stderr = np.nanstd(chi_per_chain, axis=0, ddof=1) / np.sqrt(np.maximum(good, 1))
        mean = np.nanmean(mean_per_chain, axis=0)
    column_component = np.repeat(np.asarray(names, dtype=str), num_x)
    column_observable = np.tile(np.asarray(observed.x_names, dtype=str), len(names))
    return SusceptibilityResult(
        chi=chi,
        stderr=stderr,
        chi_per_chain=chi_per_chain,
        components=[c if o == "loss" else f"{c}/{o}" for c, o in zip(column_component.tolist(), column_observable.tolist())],
        column_component=column_component,
        column_observable=column_observable,
        labels=observed.labels,
        observable_mean=mean,
        observable_mean_per_chain=mean_per_chain,
        nbeta=float(chains.hyperparameters.nbeta[0]),
        method=method,
        centering=centering,
        diverged=diverged,
        chains=chains,
    )


@results.register
@results.table_of(SusceptibilityResult, shared=(
    "components", "column_component", "column_observable", "labels", "nbeta", "method", "centering"))
class SusceptibilityTable(results.Table):
    """Response matrices over checkpoints: ``(checkpoint, row, column)`` (``estimate_susceptibilities_table``).

    Attributes:
        steps: ``(K,)`` training step of each checkpoint.
        chi, stderr: ``(K, N, P)``, P columns = components x observables.
        chi_per_chain: ``(K, C, N, P)``; NaN for diverged chains.
        observable_mean: ``(K, P)``; observable_mean_per_chain: ``(K, C, P)``.
        diverged: ``(K, M, C)`` bool (M components).
        components, column_component, column_observable, labels, nbeta, method, centering: as for
            ``SusceptibilityResult`` (shared by every checkpoint).
        chains: the ``ChainsResult`` of the whole run (configurations g = k * M + m).

    ``table.result(k)`` is checkpoint k's ``SusceptibilityResult``.
    """

    def summary(self) -> str:
        """Per checkpoint: its chains line and reliability line."""
        lines = [repr(self)]
        for k, step in enumerate(self.steps):
            result = self.result(k)
            lines += [f"  step {step}: {_chains_line(result)}", f"    {reliability.summary_line(result)}"]
        return "\n".join(lines)

    def _dataset(self):
        xr = results.require("xarray")
        return xr.Dataset(
            dict(
                chi=(("checkpoint", "row", "column"), self.chi),
                stderr=(("checkpoint", "row", "column"), self.stderr),
                chi_per_chain=(("checkpoint", "chain", "row", "column"), self.chi_per_chain),
                observable_mean=(("checkpoint", "column"), self.observable_mean),
            ),
            coords=dict(checkpoint=self.steps, **_coords(self)),
            attrs=dict(nbeta=self.nbeta, method=self.method, centering=self.centering, sign="chi = -Cov(phi, l - L)"),
        )

    def __repr__(self) -> str:
        return (f"SusceptibilityTable({len(self.steps)} checkpoints x {self.chi.shape[1]} rows x {self.chi.shape[2]} "
                f"columns {self.components}, method={self.method!r}, centering={self.centering!r}, nbeta={self.nbeta:.4g})")


def _report(table: SusceptibilityTable, single: bool) -> None:
    """The front door's divergence report per (checkpoint, component), then each checkpoint's reliability."""
    at = np.asarray(table.chains.diverged_at).reshape(table.diverged.shape)  # (K, M, C)
    names = list(dict.fromkeys(table.column_component.tolist()))
    full_at = at[:, names.index("full")][:, None] if "full" in names else np.full_like(at, -1)
    # Under two_chain a chain is also lost when its full partner diverged.
    diverged_at = np.where(table.diverged, np.where(at >= 0, at, full_at), -1)
    result = table.result(0) if single else table
    frontdoor.report_divergence(diverged_at, steps=table.steps, components=names, what="chi", result=result)
    for k, step in enumerate(table.steps):
        reliability.check_reliability(table.result(k), "the response matrix" + ("" if single else f" at checkpoint {step}"))


class _Options(NamedTuple):
    """What a susceptibility run does with its probes and components (one value for every checkpoint)."""

    observables: Mapping | None
    method: str
    centering: str
    include_full: bool
    per_token: bool
    probe_batch_size: int | None
    keep_traces: bool


def _admit(estimator: str, loss_fn, checkpoints, config, probes, components, steps, options: _Options):
    """The front door, then what only susceptibilities check (the method and its components)."""
    if options.method not in METHODS:
        raise ValueError(f"method={options.method!r}; use 'covariance' (Baker et al.) or 'two_chain' (devinterp 2.x).")
    admitted = frontdoor.admit(estimator, loss_fn, checkpoints, config, steps=steps, components=components,
                               include_full=options.include_full, probes=probes, per_token=options.per_token,
                               probe_batch_size=options.probe_batch_size)
    if options.method == "two_chain" and "full" not in admitted.components:
        raise ValueError("method='two_chain' centers with the full chain: include a 'full' component (include_full=True).")
    return admitted


def _table(loss_fn, admitted: frontdoor.Admission, data, key, probes, options: _Options, progress) -> SusceptibilityTable:
    """The one implementation: every checkpoint x component is a configuration of one ``run_chains``."""
    config = admitted.config
    names = admitted.components
    observed = stats.observables(
        loss_fn, admitted.checkpoints[0], data, probes=probes, functions=options.observables, centering=options.centering,
        per_token=options.per_token, probe_batch_size=options.probe_batch_size, full_batch_size=config.batch_size,
        compute_dtype=config.compute_dtype,
    )
    chains = run_chains(
        loss_fn, admitted.checkpoints, data, config, key=key, masks=admitted.masks,
        recording=Recording(observe=observed.observe, observe_data=observed.observe_data, accumulator=observed.accumulator,
                            keep_traces=options.keep_traces, center_loss=options.centering == "probe"),
        progress=progress and "susceptibilities",
    )
    num_m = len(names)
    per_checkpoint = [
        _result(chains.select(range(k * num_m, (k + 1) * num_m)), names, observed, options.method, options.centering)
        for k in range(len(admitted.checkpoints))
    ]
    return SusceptibilityTable.stack(admitted.steps, per_checkpoint, chains)


def estimate_susceptibilities_table(
    loss_fn: LossFn, checkpoints: Sequence[Params], data: Batch, config: SamplerConfig, *, key: KeyLike,
    probes: Mapping[str, Batch],
    components: Mapping[str, Mask | Callable | None] | None = None,
    steps: Sequence[int] | None = None,
    observables: Mapping[str, Callable[[Params], Array]] | None = None,
    method: str = "covariance",
    centering: str = "probe",
    include_full: bool = True,
    per_token: bool = True,
    probe_batch_size: int | None = None,
    keep_traces: bool = False,
    progress: bool = True,
) -> SusceptibilityTable:
    """Susceptibilities at every checkpoint of a training run, as ONE stack of configurations.

    The checkpoints are the centres of one ``run_chains`` call (configurations checkpoint x
    component), each with its own w* and L_n(w*) (``centering="probe"`` pairs each draw with its own
    checkpoint). With the same key, ``table.result(k)`` equals ``estimate_susceptibilities`` at
    checkpoint k alone (up to float32 rounding).

    Args:
        checkpoints: a list of params pytrees of one structure (e.g. ``sj.train(...).checkpoints``).
        steps: the training step of each checkpoint (default 0..K-1).
        loss_fn, data, config, key, probes, components, observables, method, centering,
        include_full, per_token, probe_batch_size, keep_traces, progress: as for
            ``estimate_susceptibilities``; one ``config`` (calibrate once, e.g. on the last
            checkpoint) keeps the checkpoints comparable.

    Returns:
        A ``SusceptibilityTable`` ``(checkpoint, row, column)``. ``DivergenceError`` only if every
        chain of every checkpoint diverged.

    >>> import jax.numpy as jnp, slt_jax as sj
    >>> loss_fn = lambda w, batch: 0.5 * (batch["y"] - batch["x"] @ w) ** 2
    >>> data = {"x": jnp.eye(2).repeat(10, axis=0), "y": jnp.ones(20)}
    >>> config = sj.SamplerConfig(step_size=1e-2, nbeta=10.0, localization=1.0, num_draws=100, batch_size=20)
    >>> table = sj.estimate_susceptibilities_table(loss_fn, [jnp.zeros(2), jnp.ones(2)], data, config,
    ...     key=0, probes={"train": data}, steps=[100, 200], progress=False)
    >>> table.chi.shape, table.result(1).chi.shape
    ((2, 20, 1), (20, 1))
    """
    options = _Options(observables, method, centering, include_full, per_token, probe_batch_size, keep_traces)
    admitted = _admit("estimate_susceptibilities_table", loss_fn, checkpoints, config, probes, components, steps, options)
    table = _table(loss_fn, admitted, data, key, probes, options, progress)
    _report(table, single=False)
    return table


def estimate_susceptibilities(
    loss_fn: LossFn, params: Params, data: Batch, config: SamplerConfig, *, key: KeyLike,
    probes: Mapping[str, Batch],
    components: Mapping[str, Mask | Callable | None] | None = None,
    observables: Mapping[str, Callable[[Params], Array]] | None = None,
    method: str = "covariance",
    centering: str = "probe",
    include_full: bool = True,
    per_token: bool = True,
    probe_batch_size: int | None = None,
    keep_traces: bool = False,
    progress: bool = True,
) -> SusceptibilityResult:
    """Estimates χ^C_xy = -Cov_C(φ_C, l_xy - L) for every component C and probe row xy.

    Args:
        loss_fn: ``loss_fn(params, batch)`` -> per-example ``(batch,)`` or per-token
            ``(batch, seq)`` losses.
        params: w*, a pytree.
        data: the training data (SGLD minibatches and, for ``centering="full"``, L_n).
        config: the ``SamplerConfig`` (numeric ``step_size``; ``num_draws >= 2``).
        key: int seed or PRNG key; every component's chain c uses the same noise stream.
        probes: ``{name: probe_data}``; each example (token, if ``per_token``) is a row. Probes are
            checked like the training data before compiling (e.g. token ids < vocab_size).
        components: ``{name: bool mask or callable(params) -> mask or None (all weights)}``; each
            runs restricted chains that carry only its coordinates.
        observables: extra ``{name: phi(params) -> array}`` (evaluated at the draw's full params);
            each entry of each becomes a column ``"component/name"`` next to the component's loss
            observable φ_C.
        method: ``"covariance"`` (Baker et al., default) or ``"two_chain"`` (devinterp 2.x; needs
            the ``"full"`` component).
        centering: ``"probe"`` (default: paired minibatch φ, one extra forward of the batch per
            draw; centred on the probe mean) or ``"full"`` (exact L_n: a pass over all n training
            examples at EVERY draw, which dominates the cost for large n); see the module docstring.
        include_full: add the unrestricted component ``"full"`` first if absent.
        per_token: rows per token for sequence losses (False: per sequence).
        probe_batch_size: evaluate probes in chunks of this many examples.
        keep_traces: also keep every draw's observables (memory grows with num_draws).
        progress: tqdm bar.

    Returns:
        A ``SusceptibilityResult`` with ``chi`` of shape ``(N, K)``, K = components x observables
        (the one checkpoint of ``estimate_susceptibilities_table``). Diverged chains are warned
        about per component; ``DivergenceError`` if every chain diverged.

    >>> import jax.numpy as jnp, slt_jax as sj
    >>> loss_fn = lambda w, batch: 0.5 * (batch["y"] - batch["x"] @ w) ** 2
    >>> data = {"x": jnp.eye(2).repeat(10, axis=0), "y": jnp.ones(20)}
    >>> config = sj.SamplerConfig(step_size=1e-2, nbeta=10.0, localization=1.0, num_draws=100, batch_size=20)
    >>> result = sj.estimate_susceptibilities(loss_fn, jnp.ones(2), data, config, key=0, probes={"train": data},
    ...     components={"w0": jnp.array([True, False])}, progress=False)
    >>> result.chi.shape, result.components
    ((20, 2), ['full', 'w0'])
    >>> result.zscored().row_centered().pca().loadings.shape  # the fluent analysis chain
    (2, 2)
    """
    options = _Options(observables, method, centering, include_full, per_token, probe_batch_size, keep_traces)
    admitted = _admit("estimate_susceptibilities", loss_fn, [params], config, probes, components, None, options)
    table = _table(loss_fn, admitted, data, key, probes, options, progress)
    _report(table, single=True)
    return table.result(0)
