"""The Bayesian influence function: BIF(i, j) = -Cov_p(l_i, l_j) (docs/conventions.md §3).

The N x N covariance of the probe rows' losses is streamed on device as a Welford Gram accumulator
(``slt_jax.stats``), per chain, without storing the draws. For N too large for an N x N state per
chain, ``block_size=b`` accumulates a (b, N) slab at a time: one run per block of rows, every run
with the same key, so the chains are the same trajectories and the slabs tile one matrix (one
compiled program serves every block: the block's row indices are a traced input).

Over the checkpoints of a training run (``estimate_bif_over_checkpoints``) the checkpoints are the
centres of the same runs: one stack of configurations, each with its own w*; ``estimate_bif`` is
the one-checkpoint case of the same function.

Sign. ``bif`` is -Cov (negative on the diagonal: upweighting example i lowers its own expected
loss). ``correlation`` is the Pearson correlation of the losses, +corr, the normalized form that
devinterp returns; it has the OPPOSITE sign of ``bif``: bif_ij = -corr_ij · sqrt(Var_i Var_j).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from slt_jax import reliability, stats, traces
from slt_jax._src import validation
from slt_jax.config import SamplerConfig
from slt_jax.sampler import ChainsResult, DivergenceError, Recording, run_chains
from slt_jax.stats import ProbeLabels
from slt_jax.types import Batch, KeyLike, LossFn, Mask, Params

__all__ = ["BIFResult", "estimate_bif", "estimate_bif_over_checkpoints"]


@dataclasses.dataclass(frozen=True)
class BIFResult:
    """The BIF matrix of N probe rows (numpy).

    Attributes:
        bif: ``(N, N)`` -Cov(l_i, l_j), mean over non-diverged chains of the per-chain estimates.
        stderr: ``(N, N)`` std (ddof=1) of the per-chain estimates / sqrt(number of chains).
        correlation: ``(N, N)`` Pearson correlation corr(l_i, l_j) from the chain-mean covariance
            (+corr, devinterp's sign; opposite to ``bif``).
        variance: ``(N,)`` Var(l_i) (= -diag(bif)).
        mean_loss: ``(N,)`` posterior mean of each row's loss.
        labels: ``ProbeLabels`` of the rows.
        nbeta: nβ of the run.
        diverged: ``(num_chains,)`` bool.
        chains: this checkpoint's configuration of the ``ChainsResult`` (of the last block's run).
    """

    bif: np.ndarray
    stderr: np.ndarray
    correlation: np.ndarray
    variance: np.ndarray
    mean_loss: np.ndarray
    labels: ProbeLabels
    nbeta: float
    diverged: np.ndarray
    chains: ChainsResult

    @property
    def config(self) -> SamplerConfig:
        """The ``SamplerConfig`` the chains ran with."""
        return self.chains.config

    def to_numpy(self) -> dict[str, np.ndarray]:
        """Plain numpy arrays (for ``np.savez`` / slt_jax's io)."""
        return dict(
            bif=self.bif, stderr=self.stderr, correlation=self.correlation, variance=self.variance,
            mean_loss=self.mean_loss, probe=self.labels.probe, example=self.labels.example,
            token=self.labels.token, nbeta=np.asarray(self.nbeta), diverged=self.diverged,
        )

    def to_xarray(self):
        """An ``xarray.Dataset`` with dims ``(row, column)`` over the same N probe rows."""
        try:
            import xarray as xr
        except ImportError as error:  # pragma: no cover - optional dependency
            raise ImportError("to_xarray needs xarray: pip install 'slt_jax[interop]'.") from error
        coords = {}
        for dim in ("row", "column"):
            coords.update({f"{dim}_probe": (dim, self.labels.probe), f"{dim}_example": (dim, self.labels.example), f"{dim}_token": (dim, self.labels.token)})
        pair = ("row", "column")
        return xr.Dataset(
            dict(bif=(pair, self.bif), stderr=(pair, self.stderr), correlation=(pair, self.correlation), variance=(("row",), self.variance)),
            coords=coords,
            attrs=dict(nbeta=self.nbeta, sign="bif = -Cov(l_i, l_j); correlation = +corr(l_i, l_j)"),
        )

    def summary(self) -> str:
        """The matrix's shape, diverged chains, and its reliability line over the off-diagonal
        entries (``slt_jax.estimate_reliability``; undefined for a BIF estimated in blocks)."""
        return "\n".join([repr(self), "  " + reliability.summary_line(self)])

    def __repr__(self) -> str:
        return f"BIFResult(bif: {self.bif.shape}, nbeta={self.nbeta:.4g}, diverged={int(self.diverged.sum())})"


@functools.lru_cache(maxsize=32)
def _build(loss_fn, per_token, probe_batch_size):
    def observe(params, info, context):
        data = context.data
        losses = stats.probe_losses(loss_fn, params, (data["probe"],), per_token=per_token, probe_batch_size=probe_batch_size)
        return {"losses": losses, "block": losses[data["rows"]]}

    accumulator = stats.covariance_accumulator(lambda v: v["block"], lambda v: v["losses"])
    return observe, accumulator


def _result(cov: np.ndarray, stderr: np.ndarray, chains: ChainsResult, labels: ProbeLabels) -> BIFResult:
    """The ``BIFResult`` of one checkpoint: its chain-mean covariance, stderr and configuration."""
    diverged = np.asarray(chains.diverged[0], bool)
    good = np.asarray(chains.accumulator.mean_y[0], np.float64)[~diverged]
    mean_loss = good.mean(axis=0) if len(good) else np.full(cov.shape[0], np.nan)
    # The Welford Gram is symmetric up to rounding.
    cov = 0.5 * (cov + cov.T)
    stderr = 0.5 * (stderr + stderr.T)
    variance = np.diagonal(cov).copy()
    correlation = stats.correlation(cov)
    return BIFResult(
        bif=-cov, stderr=stderr, correlation=correlation, variance=variance, mean_loss=mean_loss, labels=labels,
        nbeta=float(chains.hyperparameters.nbeta[0]), diverged=diverged, chains=chains,
    )


def _bif(loss_fn, checkpoints, data, config, key, probe, component, per_token, block_size, probe_batch_size,
         progress, steps) -> list[BIFResult]:
    """The one implementation: checkpoints are the centres of one run per block of rows."""
    stats._check_config(config, "estimate_bif")
    probe = data if probe is None else probe
    labels = stats._check_probes(loss_fn, checkpoints[0], {"probe": probe}, per_token, name="probe")
    num_rows = len(labels.example)
    block = num_rows if block_size is None else min(validation.check_positive_int(block_size, "block_size"), num_rows)
    if probe_batch_size is not None:
        probe_batch_size = validation.check_positive_int(probe_batch_size, "probe_batch_size")
    masks = None if component is None else [validation.check_masks(component, checkpoints[0], name="component")]
    observe, accumulator = _build(loss_fn, bool(per_token), probe_batch_size)
    probe = jax.tree.map(jnp.asarray, probe)
    num_k = len(checkpoints)
    # Host memory: two N x N matrices per checkpoint; per-chain slabs are reduced block by block.
    cov = np.full((num_k, num_rows, num_rows), np.nan)
    stderr = np.full((num_k, num_rows, num_rows), np.nan)
    init_losses = None
    for start in range(0, num_rows, block):
        # Pad the last block by repeating row 0 so every block has the same shape (one program).
        rows = np.arange(start, start + block)
        valid = rows < num_rows
        rows = np.where(valid, rows, 0)
        chains = run_chains(
            loss_fn, checkpoints, data, config, key=key, masks=masks,
            recording=Recording(observe=observe, observe_data={"probe": probe, "rows": jnp.asarray(rows, jnp.int32)},
                                accumulator=accumulator, init_losses=init_losses),
            progress=progress and (f"BIF rows {start}-{min(start + block, num_rows)}" if block < num_rows else "BIF"),
        )
        init_losses = chains.init_loss  # L_n(w*) once per checkpoint, not once per block
        if chains.diverged.all():  # the same trajectories in every block: no need to run the rest
            results = [_result(cov[k], stderr[k], chains.select(k), labels) for k in range(num_k)]
            raise DivergenceError(
                "Every chain diverged; no BIF. " + traces.divergence_message(chains.diverged_at.reshape(-1)),
                results[0] if steps is None else dict(zip(steps, results)),
            )
        slabs = stats.covariance(chains.accumulator)  # (K, C, block, N)
        for k in range(num_k):
            slab = slabs[k][~chains.diverged[k]][:, valid, :]  # (good chains, rows, N)
            if len(slab):
                cov[k, rows[valid]] = slab.mean(axis=0)
            if len(slab) >= 2:
                stderr[k, rows[valid]] = slab.std(axis=0, ddof=1) / math.sqrt(len(slab))
    for k in range(num_k):
        if chains.diverged[k].any():
            label = "BIF" if steps is None else f"BIF, checkpoint {steps[k]}"
            warnings.warn(f"{label}: " + traces.divergence_message(chains.diverged_at[k]), RuntimeWarning, stacklevel=3)
    results = [_result(cov[k], stderr[k], chains.select(k), labels) for k in range(num_k)]
    for k, result in enumerate(results):  # blocked runs keep only the last block's chains: undefined, skipped
        reliability.check_reliability(result, "the BIF" + ("" if steps is None else f" at checkpoint {steps[k]}"))
    return results


def estimate_bif(
    loss_fn: LossFn,
    params: Params,
    data: Batch,
    config: SamplerConfig,
    *,
    key: KeyLike,
    probe: Batch | None = None,
    component: Mask | None = None,
    per_token: bool = True,
    block_size: int | None = None,
    probe_batch_size: int | None = None,
    progress: bool = True,
) -> BIFResult:
    """Estimates the Bayesian influence function -Cov(l_i, l_j) over the rows of ``probe``.

    Args:
        loss_fn: ``loss_fn(params, batch)`` -> ``(batch,)`` or per-token ``(batch, seq)`` losses.
        params: w*.
        data: the training data the posterior is sampled with.
        config: the ``SamplerConfig`` (numeric ``step_size``; ``num_draws >= 2``).
        key: int seed or PRNG key.
        probe: the examples whose losses are compared (a pytree with a leading example axis);
            None uses ``data`` itself (the training-set BIF).
        component: a bool mask: restricted chains that move only its coordinates (None: all).
        per_token: one row per token for sequence losses (the per-token BIF); False: per sequence.
        block_size: accumulate ``block_size`` rows x N per run (N / block_size runs of the same
            chains); None: the whole N x N Gram in one run.
        probe_batch_size: evaluate the probe in chunks of this many examples.
        progress: tqdm bar.

    Returns:
        A ``BIFResult``. Raises ``DivergenceError`` if every chain diverged.

    >>> import jax.numpy as jnp, slt_jax as sj
    >>> loss_fn = lambda w, batch: 0.5 * (batch["y"] - batch["x"] @ w) ** 2
    >>> data = {"x": jnp.eye(2).repeat(5, axis=0), "y": jnp.ones(10)}
    >>> config = sj.SamplerConfig(step_size=1e-2, nbeta=10.0, localization=1.0, num_draws=100, batch_size=10)
    >>> result = sj.estimate_bif(loss_fn, jnp.zeros(2), data, config, key=0, progress=False)
    >>> result.bif.shape, bool((result.bif.diagonal() < 0).all())
    ((10, 10), True)
    """
    return _bif(loss_fn, [params], data, config, key, probe, component, per_token, block_size, probe_batch_size,
                progress, None)[0]


def estimate_bif_over_checkpoints(
    loss_fn: LossFn,
    checkpoints: Sequence[Params],
    data: Batch,
    config: SamplerConfig,
    *,
    key: KeyLike,
    probe: Batch | None = None,
    component: Mask | None = None,
    steps: Sequence[int] | None = None,
    per_token: bool = True,
    block_size: int | None = None,
    probe_batch_size: int | None = None,
    progress: bool = True,
) -> dict[int, BIFResult]:
    """The BIF at every checkpoint of a training run, the checkpoints run as one stack of configurations.

    With the same key, each checkpoint's result equals ``estimate_bif`` at that checkpoint alone
    (up to float32 rounding).

    Args:
        checkpoints: a list of params pytrees of one structure (e.g. ``sj.train(...).checkpoints``).
        steps: the training step of each checkpoint (default 0..K-1): the keys of the result.
        loss_fn, data, config, key, probe, component, per_token, block_size, probe_batch_size,
        progress: as for ``estimate_bif``.

    Returns:
        ``{step: BIFResult}`` in checkpoint order, each holding its own configuration of the
        ``ChainsResult``. ``DivergenceError`` only if every chain of every checkpoint diverged.

    >>> import jax.numpy as jnp, slt_jax as sj
    >>> loss_fn = lambda w, batch: 0.5 * (batch["y"] - batch["x"] @ w) ** 2
    >>> data = {"x": jnp.eye(2).repeat(5, axis=0), "y": jnp.ones(10)}
    >>> config = sj.SamplerConfig(step_size=1e-2, nbeta=10.0, localization=1.0, num_draws=100, batch_size=10)
    >>> results = sj.estimate_bif_over_checkpoints(loss_fn, [jnp.zeros(2), jnp.ones(2)], data, config, key=0,
    ...                                            steps=[10, 20], progress=False)
    >>> {step: r.bif.shape for step, r in results.items()}
    {10: (10, 10), 20: (10, 10)}
    """
    checkpoints, steps = stats._check_checkpoints(checkpoints, steps)
    results = _bif(loss_fn, checkpoints, data, config, key, probe, component, per_token, block_size, probe_batch_size,
                   progress, steps)
    return dict(zip(steps, results))
