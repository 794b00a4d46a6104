"""Per-example and per-token susceptibilities of component-restricted posteriors (SCIENCE.md §3).

For a component C (a bool mask) the chains sample only C's weights, the rest clamped at w*. With
φ_C = L(w) - L_n(w*) at those draws, the response of probe example (or token) xy is

    χ^C_xy = -Cov_C[ φ_C, l_xy - L ]          (Baker et al. 2025; no nβ factor)

estimated per chain from streamed Welford cross-moments (``slt_jax.stats``): memory O(N probe
rows), independent of the number of draws. All components run as ONE compiled program, vmapped
over the stack of masks.

Which L (the unbiased design). The posterior is defined by L_n, so the exact linear response of
upweighting xy is -nβ Cov(φ, l_xy - L_n). Covariances are biased by any noise shared by both
factors: evaluating φ AND the centering term on the same minibatch adds +E[Var(L_B | w)] to every
χ (devinterp's estimator does this when its sampling-task batch changes per draw). Here:

* ``centering="full"`` (default): φ and L are the full-data loss L_n(w) at each draw. Exact; one
  pass over the training data per draw.
* ``centering="probe"``: φ is the paired difference L_B(w) - L_B(w*) on the draw's own SGLD
  minibatch. That batch is drawn independently of the draw's position, so the difference is an
  unbiased estimate of L_n(w) - L_n(w*) whose noise is uncorrelated with the probe losses, and
  pairing with w* cancels most of the minibatch noise (a control variate). L is the mean loss of
  the probe rows. Costs one forward pass of the batch per draw. The columns then sum to zero over
  the probe rows; they equal the ``"full"`` values when the probes are the training set, and
  otherwise differ from them by one constant per column (which z-scoring removes).

Step size. The identities hold for the sampled distribution; SGLD at step ε samples a slightly
wider law than the posterior (for a quadratic loss the covariance is (A(I - εA/4))^{-1}, A = nβH + γI,
while the mean is exact), so χ̂ is inflated by O(εA/4) relative to the exact posterior's linear
response (e.g. what ``slt_jax.pattern`` relies on). Calibrate ε small when the values matter.

``method="two_chain"`` is devinterp 2.x's estimator: the products and E[φ] come from the restricted
chain, the centering mean E[l_xy - L] from the full chain,

    χ^C_xy = -( E_C[φ (l_xy - L)] - E_C[φ] · E_full[l_xy - L] ),

which equals the covariance form only when restricting C does not move E[l_xy - L]; it is not
invariant to the offset of φ. Per chain c it pairs restricted chain c with full chain c.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
import numpy as np

from slt_jax import validation
from slt_jax import llc as llc_lib
from slt_jax import sampler as sampler_lib
from slt_jax import stats
from slt_jax.sampler import ChainsOutput
from slt_jax.stats import ProbeLabels
from slt_jax.types import Array, Batch, KeyLike, LossFn, Mask, Params

__all__ = ["SusceptibilityResult", "ResponsePCA", "estimate_susceptibilities", "METHODS", "stack_masks"]

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
    signs = np.sign(v[np.argmax(np.abs(v), axis=0), np.arange(rank)])
    signs[signs == 0] = 1.0
    u, v = u * signs, v * signs
    variance = s**2 / max(matrix.shape[0] - 1, 1)
    total = np.sum(centered**2) / max(matrix.shape[0] - 1, 1)
    ratio = variance / total if total > 0 else np.zeros_like(variance)
    return ResponsePCA(u * s, v, s, variance, ratio)


@dataclasses.dataclass(frozen=True)
class SusceptibilityResult:
    """A response matrix: one row per probe example (token), one column per component (observable).

    Attributes:
        chi: ``(N, K)`` mean over non-diverged chains of the per-chain estimates.
        stderr: ``(N, K)`` std (ddof=1) of the per-chain estimates / sqrt(number of chains).
        chi_per_chain: ``(num_chains, N, K)``; NaN for diverged chains.
        components: ``K`` column names: the component's name for its loss observable φ_C, and
            ``"component/function"`` for user functions.
        column_component, column_observable: ``(K,)`` the two parts of each column name.
        labels: ``ProbeLabels`` (probe name, example, token) of the N rows.
        observable_mean: ``(K,)`` ⟨φ⟩ of each column in its restricted posterior.
        observable_mean_per_chain: ``(num_chains, K)``.
        nbeta: nβ of the run.
        method: ``"covariance"`` or ``"two_chain"``.
        centering: ``"full"`` or ``"probe"``.
        diverged: ``(num_components, num_chains)`` bool.
        chains: the raw ``ChainsOutput`` (accumulator states, traces if kept, settings, timings).
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
    chains: ChainsOutput

    @property
    def llc(self) -> dict[str, float]:
        """The refined LLC nβ⟨φ_C⟩ of every component (its loss-observable column)."""
        loss = self.column_observable == "loss"
        return {str(c): float(self.nbeta * m) for c, m in zip(self.column_component[loss], self.observable_mean[loss])}

    def zscored(self) -> np.ndarray:
        """``chi`` with every column standardized (raw columns are not comparable across components)."""
        return zscore_columns(self.chi)

    def row_centered(self, matrix: np.ndarray | None = None) -> np.ndarray:
        """Rows of ``matrix`` (default: the z-scored chi) minus their mean over columns."""
        return center_rows(self.zscored() if matrix is None else matrix)

    def pca(self, num_components: int | None = None, *, standardize: bool = True, center: bool = False) -> ResponsePCA:
        """PCA of the response matrix: z-score columns (``standardize``), optionally center rows."""
        matrix = self.zscored() if standardize else self.chi
        return response_pca(center_rows(matrix) if center else matrix, num_components)

    def to_numpy(self) -> dict[str, np.ndarray]:
        """Plain numpy arrays (for ``np.savez`` / slt_jax's io)."""
        return dict(
            chi=self.chi,
            stderr=self.stderr,
            chi_per_chain=self.chi_per_chain,
            components=np.asarray(self.components, dtype=str),
            column_component=self.column_component.astype(str),
            column_observable=self.column_observable.astype(str),
            probe=self.labels.probe.astype(str),
            example=self.labels.example,
            token=self.labels.token,
            observable_mean=self.observable_mean,
            observable_mean_per_chain=self.observable_mean_per_chain,
            nbeta=np.asarray(self.nbeta),
            diverged=self.diverged,
        )

    def to_xarray(self):
        """An ``xarray.Dataset`` with dims ``(row, column, chain)`` and the labels as coordinates."""
        try:
            import xarray as xr
        except ImportError as error:  # pragma: no cover - optional dependency
            raise ImportError("to_xarray needs xarray: pip install 'slt_jax[interop]'.") from error
        coords = dict(
            column=self.components,
            component=("column", self.column_component.astype(str)),
            observable=("column", self.column_observable.astype(str)),
            probe=("row", self.labels.probe.astype(str)),
            example=("row", self.labels.example),
            token=("row", self.labels.token),
        )
        return xr.Dataset(
            dict(
                chi=(("row", "column"), self.chi),
                stderr=(("row", "column"), self.stderr),
                chi_per_chain=(("chain", "row", "column"), self.chi_per_chain),
                observable_mean=(("column",), self.observable_mean),
            ),
            coords=coords,
            attrs=dict(nbeta=self.nbeta, method=self.method, centering=self.centering, sign="chi = -Cov(phi, l - L)"),
        )

    def __repr__(self) -> str:
        return (
            f"SusceptibilityResult(chi: {self.chi.shape[0]} rows x {self.chi.shape[1]} columns "
            f"{self.components}, method={self.method!r}, centering={self.centering!r}, nbeta={self.nbeta:.4g})"
        )


def stack_masks(components: Mapping[str, Mask | Callable | None], params: Params) -> tuple[list[str], Mask]:
    """Validates named masks (None = every weight) and stacks them: leaves ``(G,) + leaf.shape``."""
    if not isinstance(components, Mapping) or not components:
        raise TypeError(f"components must be a non-empty dict {{name: bool mask}}, got {components!r}.")
    names, stacked = [], []
    for name, mask in components.items():
        if mask is None:
            mask = jax.tree.map(lambda _: np.asarray(True), params)
        checked = validation.check_masks(mask, params, None, name=f"components[{name!r}]")
        names.append(str(name))
        stacked.append(jax.tree.map(np.asarray, checked))
    return names, jax.tree.map(lambda *leaves: np.stack(leaves), *stacked)


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


def estimate_susceptibilities(
    loss_fn: LossFn,
    params: Params,
    data: Batch,
    *,
    probes: Mapping[str, Batch],
    components: Mapping[str, Mask | Callable | None] | None = None,
    key: KeyLike,
    step_size: float,
    nbeta: float | None = None,
    localization: float,
    num_chains: int = 4,
    num_draws: int,
    num_burnin: int = 0,
    num_steps_between_draws: int = 1,
    batch_size: int,
    sampler: str = "sgld",
    observables: Mapping[str, Callable[[Params], Array]] | None = None,
    method: str = "covariance",
    centering: str = "full",
    include_full: bool = True,
    per_token: bool = True,
    probe_batch_size: int | None = None,
    keep_traces: bool = False,
    progress: bool = True,
    **kwargs,
) -> SusceptibilityResult:
    """Estimates χ^C_xy = -Cov_C(φ_C, l_xy - L) for every component C and probe row xy.

    Args:
        loss_fn: ``loss_fn(params, batch)`` -> per-example ``(batch,)`` or per-token
            ``(batch, seq)`` losses.
        params: w*, a pytree.
        data: the training data (sampling minibatches and, for ``centering="full"``, L_n).
        probes: ``{name: probe_data}``; each example (token, if ``per_token``) is a row.
        components: ``{name: bool mask or callable(params) -> mask or None (all weights)}``.
        key: int seed or PRNG key; every component's chain c uses the same noise stream.
        step_size, nbeta, localization: SGLD hyperparameters (scalars; nβ None: n / log n).
        num_chains, num_draws, num_burnin, num_steps_between_draws, batch_size, sampler: the run.
        observables: extra ``{name: phi(params) -> array}``; each entry of each becomes a column
            ``"component/name"`` next to the component's loss observable φ_C.
        method: ``"covariance"`` (Baker et al., default) or ``"two_chain"`` (devinterp 2.x; needs
            the ``"full"`` component).
        centering: ``"full"`` (exact L_n, one data pass per draw) or ``"probe"`` (paired minibatch
            φ, one extra forward of the batch; centred on the probe mean); see the module docstring.
        include_full: add the unrestricted component ``"full"`` first if absent.
        per_token: rows per token for sequence losses (False: per sequence).
        probe_batch_size: evaluate probes in chunks of this many examples.
        keep_traces: also keep every draw's observables (memory grows with num_draws).
        progress: tqdm bar.
        **kwargs: passed to ``slt_jax.run_chains`` (``weight_decay``, ``chunk_draws``, ...).

    Returns:
        A ``SusceptibilityResult`` with ``chi`` of shape ``(N, K)``, K = components x observables.

    >>> import jax.numpy as jnp, slt_jax as sj
    >>> loss_fn = lambda w, batch: 0.5 * (batch["y"] - batch["x"] @ w) ** 2
    >>> data = {"x": jnp.eye(2).repeat(10, axis=0), "y": jnp.ones(20)}
    >>> result = sj.estimate_susceptibilities(loss_fn, jnp.ones(2), data, probes={"train": data},
    ...     components={"w0": jnp.array([True, False])}, key=0, step_size=1e-2, nbeta=10.0,
    ...     localization=1.0, num_draws=100, batch_size=20, progress=False)
    >>> result.chi.shape, result.components
    ((20, 2), ['full', 'w0'])
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}; use 'covariance' (Baker et al.) or 'two_chain' (devinterp 2.x).")
    for name, value in (("step_size", step_size), ("nbeta", nbeta), ("localization", localization)):
        if value is not None and np.ndim(value) != 0:
            raise ValueError(f"{name} must be a scalar; components (not hyperparameter grids) are vmapped here.")
    if validation.check_positive_int(num_draws, "num_draws") < 2:
        raise ValueError(f"num_draws={num_draws}: a covariance needs at least 2 draws per chain (use hundreds).")
    if validation.check_positive_int(num_chains, "num_chains") < 2:
        warnings.warn("num_chains=1: stderr needs at least 2 chains and will be NaN.", stacklevel=2)
    n = validation.check_data(data)
    components = dict(components or {})
    if include_full and "full" not in components:
        components = {"full": None, **components}
    if method == "two_chain" and "full" not in components:
        raise ValueError("method='two_chain' centers with the full chain: include a 'full' component (include_full=True).")
    names, masks = stack_masks(components, params)
    nbeta = sampler_lib.default_nbeta(n) if nbeta is None else nbeta
    init_loss = float(sampler_lib.full_data_loss(loss_fn, params, data, batch_size))
    observed = stats.observables(
        loss_fn, params, data, probes=probes, functions=observables, centering=centering, per_token=per_token,
        probe_batch_size=probe_batch_size, full_batch_size=batch_size, init_loss=init_loss,
    )
    chains = sampler_lib.run_chains(
        loss_fn, params, data, key=key, step_size=step_size, nbeta=nbeta, localization=localization,
        num_chains=num_chains, num_draws=num_draws, num_burnin=num_burnin,
        num_steps_between_draws=num_steps_between_draws, batch_size=batch_size, sampler=sampler, masks=masks,
        observe=observed.observe, observe_data=observed.observe_data, accumulator=observed.accumulator,
        keep_traces=keep_traces, init_loss=init_loss, progress=progress, description="susceptibilities", **kwargs,
    )
    num_rows = len(observed.labels.example)
    full_index = names.index("full") if "full" in names else None
    per_chain = _estimates(chains.accumulator, num_rows, method, full_index)  # (G, C, p, N)
    observable_mean = np.asarray(chains.accumulator.mean_x, np.float64)  # (G, C, p)
    diverged = np.asarray(chains.diverged, bool)
    if method == "two_chain":
        # A diverged full chain poisons the centering of every component's chain with its index.
        diverged = diverged | diverged[full_index][None]
    per_chain = np.where(diverged[..., None, None], np.nan, per_chain)
    observable_mean = np.where(diverged[..., None], np.nan, observable_mean)
    for g, name in enumerate(names):
        if diverged[g].any():
            diverged_at = np.where(diverged[g], np.maximum(chains.diverged_at[g], 0), -1)
            message = llc_lib.divergence_message(diverged_at, num_chains).replace("the estimate", "chi")
            warnings.warn(f"component {name!r}: {message}", RuntimeWarning, stacklevel=2)

    num_x = len(observed.x_names)
    # (G, C, p, N) -> (C, N, G * p): component-major columns.
    chi_per_chain = per_chain.transpose(1, 3, 0, 2).reshape(num_chains, num_rows, len(names) * num_x)
    mean_per_chain = observable_mean.transpose(1, 0, 2).reshape(num_chains, len(names) * num_x)
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (every chain diverged) stay NaN
        chi = np.nanmean(chi_per_chain, axis=0)
        good = np.sum(np.isfinite(chi_per_chain), axis=0)
        stderr = np.nanstd(chi_per_chain, axis=0, ddof=1) / np.sqrt(np.maximum(good, 1))
        mean = np.nanmean(mean_per_chain, axis=0)
    column_component = np.repeat(np.asarray(names, dtype=object), num_x)
    column_observable = np.tile(np.asarray(observed.x_names, dtype=object), len(names))
    column_names = [c if o == "loss" else f"{c}/{o}" for c, o in zip(column_component, column_observable)]
    return SusceptibilityResult(
        chi=chi,
        stderr=stderr,
        chi_per_chain=chi_per_chain,
        components=column_names,
        column_component=column_component,
        column_observable=column_observable,
        labels=observed.labels,
        observable_mean=mean,
        observable_mean_per_chain=mean_per_chain,
        nbeta=float(nbeta),
        method=method,
        centering=centering,
        diverged=diverged,
        chains=chains,
    )


def estimate_susceptibilities_over_checkpoints(*args, **kwargs):  # TODO(helper B): implement
    raise NotImplementedError
