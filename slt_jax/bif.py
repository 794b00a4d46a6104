"""The Bayesian influence function: BIF(i, j) = -Cov_p(l_i, l_j) (docs/conventions.md §3).

The N x N covariance of the probe rows' losses is streamed on device as a Welford Gram accumulator
(``slt_jax.stats``), per chain, without storing the draws. For N too large for an N x N state per
chain, ``block_size=b`` accumulates a (b, N) slab at a time: one run per block of rows, every run
with the same key, so the chains are the same trajectories and the slabs tile one matrix (one
compiled program serves every block: the block's row indices are a traced input).

Over the checkpoints of a training run (``estimate_bif_table`` -> ``BIFTable``) the checkpoints are
the centres of the same runs: one stack of configurations, each with its own w*; ``estimate_bif``
is the one-checkpoint case of the same function. Probes are spelled as for the susceptibilities:
``probes={name: batch}`` (None: the training data, one probe named ``"data"``).

Sign. ``bif`` is -Cov (negative on the diagonal: upweighting example i lowers its own expected
loss). ``correlation`` is the Pearson correlation of the losses, +corr, the normalized form that
devinterp returns; it has the OPPOSITE sign of ``bif``: bif_ij = -corr_ij · sqrt(Var_i Var_j).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from slt_jax import kernels, reliability, results, stats
from slt_jax._src import frontdoor, validation
from slt_jax.config import SamplerConfig
from slt_jax.sampler import ChainsResult, Recording, run_chains
from slt_jax.stats import ProbeLabels
from slt_jax.types import Batch, KeyLike, LossFn, Mask, Params

__all__ = ["BIFResult", "BIFTable", "estimate_bif", "estimate_bif_table"]


@results.register
@dataclasses.dataclass(frozen=True)
class BIFResult(results.Result):
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

    def _dataset(self):
        xr = results.require("xarray")
        pair = ("row", "column")
        return xr.Dataset(
            dict(bif=(pair, self.bif), stderr=(pair, self.stderr), correlation=(pair, self.correlation),
                 variance=(("row",), self.variance), mean_loss=(("row",), self.mean_loss)),
            coords=_coords(self.labels),
            attrs=dict(nbeta=self.nbeta, sign="bif = -Cov(l_i, l_j); correlation = +corr(l_i, l_j)"),
        )

    def summary(self) -> str:
        """The matrix's shape, diverged chains, and its reliability line over the off-diagonal
        entries (``slt_jax.estimate_reliability``; undefined for a BIF estimated in blocks)."""
        return "\n".join([repr(self), "  " + reliability.summary_line(self)])

    def __repr__(self) -> str:
        return f"BIFResult(bif: {self.bif.shape}, nbeta={self.nbeta:.4g}, diverged={int(self.diverged.sum())})"


def _coords(labels: ProbeLabels) -> dict:
    coords = {}
    for dim in ("row", "column"):
        coords.update({f"{dim}_probe": (dim, labels.probe), f"{dim}_example": (dim, labels.example),
                       f"{dim}_token": (dim, labels.token)})
    return coords


@functools.lru_cache(maxsize=32)
def _build(loss_fn, per_token, probe_batch_size):
    def observe(params, info, context):
        data = context.data
        losses = stats.probe_losses(loss_fn, params, data["probes"], per_token=per_token, probe_batch_size=probe_batch_size)
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


@results.register
@results.table_of(BIFResult, shared=("labels", "nbeta"))
class BIFTable(results.Table):
    """BIF matrices over checkpoints: ``(checkpoint, row, column)`` (``estimate_bif_table``).

    Attributes:
        steps: ``(K,)`` training step of each checkpoint.
        bif, stderr, correlation: ``(K, N, N)``.
        variance, mean_loss: ``(K, N)``.
        diverged: ``(K, C)`` bool.
        labels, nbeta: as for ``BIFResult`` (shared by every checkpoint).
        chains: the ``ChainsResult`` of the (last block's) run, one configuration per checkpoint.

    ``table.result(k)`` is checkpoint k's ``BIFResult``.
    """

    def summary(self) -> str:
        """Per checkpoint: diverged chains and the reliability line."""
        lines = [repr(self)]
        for k, step in enumerate(self.steps):
            lines.append(f"  step {step}: {int(self.diverged[k].sum())} diverged; {reliability.summary_line(self.result(k))}")
        return "\n".join(lines)

    def _dataset(self):
        xr = results.require("xarray")
        triple = ("checkpoint", "row", "column")
        return xr.Dataset(
            dict(bif=(triple, self.bif), stderr=(triple, self.stderr), correlation=(triple, self.correlation),
                 variance=(("checkpoint", "row"), self.variance), mean_loss=(("checkpoint", "row"), self.mean_loss)),
            coords=dict(checkpoint=self.steps, **_coords(self.labels)),
            attrs=dict(nbeta=self.nbeta, sign="bif = -Cov(l_i, l_j); correlation = +corr(l_i, l_j)"),
        )

    def __repr__(self) -> str:
        return (f"BIFTable({len(self.steps)} checkpoints x bif {self.bif.shape[1:]}, nbeta={self.nbeta:.4g}, "
                f"diverged={int(self.diverged.sum())})")


def _table(steps, cov, stderr, chains: ChainsResult, labels: ProbeLabels) -> BIFTable:
    """The ``BIFTable`` of the chain-mean covariances ``(K, N, N)`` and their stderr."""
    return BIFTable.stack(steps, [_result(cov[k], stderr[k], chains.select(k), labels) for k in range(len(steps))], chains)


def _blocks(loss_fn, admitted: frontdoor.Admission, data, key, probes, block, options, progress):
    """Runs every block of rows; yields (row indices, valid rows, chains) per block."""
    num_rows = len(admitted.labels.example)
    # The probe losses carry the chain's rounding (the run's own mixed_precision wrapper).
    loss_fn = kernels.mixed_precision(loss_fn, admitted.config.compute_dtype)
    observe, accumulator = _build(loss_fn, bool(options["per_token"]), options["probe_batch_size"])
    probes = tuple(jax.tree.map(jnp.asarray, probe) for probe in probes.values())
    init_losses = None
    for start in range(0, num_rows, block):
        # Pad the last block by repeating row 0 so every block has the same shape (one program).
        rows = np.arange(start, start + block)
        valid = rows < num_rows
        rows = np.where(valid, rows, 0)
        chains = run_chains(
            loss_fn, admitted.checkpoints, data, admitted.config, key=key, masks=admitted.masks,
            recording=Recording(observe=observe, observe_data={"probes": probes, "rows": jnp.asarray(rows, jnp.int32)},
                                accumulator=accumulator, init_losses=init_losses),
            progress=progress and (f"BIF rows {start}-{min(start + block, num_rows)}" if block < num_rows else "BIF"),
        )
        init_losses = chains.init_loss  # L_n(w*) once per checkpoint, not once per block
        yield rows, valid, chains
        if chains.diverged.all():  # the same trajectories in every block: no need to run the rest
            return


def _admit(estimator: str, loss_fn, checkpoints, data, config, probes, component, steps, options: dict):
    """The front door (probes None: the training data, one probe named ``"data"``)."""
    return frontdoor.admit(
        estimator, loss_fn, checkpoints, config, steps=steps, components=None if component is None else {"component": component},
        probes={"data": data} if probes is None else probes, per_token=options["per_token"],
        probe_batch_size=options["probe_batch_size"],
    )


def _bif_table(loss_fn, admitted: frontdoor.Admission, data, key, probes, options: dict, progress) -> BIFTable:
    """The one implementation: checkpoints are the centres of one run per block of rows."""
    probes = {"data": data} if probes is None else probes
    num_rows, num_k = len(admitted.labels.example), len(admitted.checkpoints)
    block_size = options["block_size"]
    block = num_rows if block_size is None else min(validation.check_positive_int(block_size, "block_size"), num_rows)
    # Host memory: two N x N matrices per checkpoint; per-chain slabs are reduced block by block.
    cov = np.full((num_k, num_rows, num_rows), np.nan)
    stderr = np.full((num_k, num_rows, num_rows), np.nan)
    for rows, valid, chains in _blocks(loss_fn, admitted, data, key, probes, block, options, progress):
        slabs = stats.covariance(chains.accumulator)  # (K, C, block, N)
        for k in range(num_k):
            slab = slabs[k][~chains.diverged[k]][:, valid, :]  # (good chains, rows, N)
            if len(slab):
                cov[k, rows[valid]] = slab.mean(axis=0)
            if len(slab) >= 2:
                stderr[k, rows[valid]] = slab.std(axis=0, ddof=1) / math.sqrt(len(slab))
    return _table(admitted.steps, cov, stderr, chains, admitted.labels)


def _report(table: BIFTable, single: bool) -> None:
    """The front door's divergence report per checkpoint, then each checkpoint's reliability
    (blocked runs keep only the last block's chains: undefined, skipped)."""
    diverged_at = np.asarray(table.chains.diverged_at)[:, None, :]  # (K, 1, C)
    result = table.result(0) if single else table
    frontdoor.report_divergence(diverged_at, steps=table.steps, what="the BIF", result=result)
    for k, step in enumerate(table.steps):
        reliability.check_reliability(table.result(k), "the BIF" + ("" if single else f" at checkpoint {step}"))


def estimate_bif_table(
    loss_fn: LossFn, checkpoints: Sequence[Params], data: Batch, config: SamplerConfig, *, key: KeyLike,
    probes: Mapping[str, Batch] | None = None,
    component: Mask | None = None,
    steps: Sequence[int] | None = None,
    per_token: bool = True,
    block_size: int | None = None,
    probe_batch_size: int | None = None,
    progress: bool = True,
) -> BIFTable:
    """The BIF at every checkpoint of a training run, the checkpoints run as one stack of configurations.

    With the same key, ``table.result(k)`` equals ``estimate_bif`` at checkpoint k alone (up to
    float32 rounding).

    Args:
        checkpoints: a list of params pytrees of one structure (e.g. ``sj.train(...).checkpoints``).
        steps: the training step of each checkpoint (default 0..K-1).
        loss_fn, data, config, key, probes, component, per_token, block_size, probe_batch_size,
        progress: as for ``estimate_bif``.

    Returns:
        A ``BIFTable`` ``(checkpoint, row, column)``. ``DivergenceError`` only if every chain of
        every checkpoint diverged.

    >>> import jax.numpy as jnp, slt_jax as sj
    >>> loss_fn = lambda w, batch: 0.5 * (batch["y"] - batch["x"] @ w) ** 2
    >>> data = {"x": jnp.eye(2).repeat(5, axis=0), "y": jnp.ones(10)}
    >>> config = sj.SamplerConfig(step_size=1e-2, nbeta=10.0, localization=1.0, num_draws=100, batch_size=10)
    >>> table = sj.estimate_bif_table(loss_fn, [jnp.zeros(2), jnp.ones(2)], data, config, key=0,
    ...                               steps=[10, 20], progress=False)
    >>> table.bif.shape, table.result(1).bif.shape
    ((2, 10, 10), (10, 10))
    """
    options = dict(per_token=per_token, block_size=block_size, probe_batch_size=probe_batch_size)
    admitted = _admit("estimate_bif_table", loss_fn, checkpoints, data, config, probes, component, steps, options)
    table = _bif_table(loss_fn, admitted, data, key, probes, options, progress)
    _report(table, single=False)
    return table


def estimate_bif(
    loss_fn: LossFn, params: Params, data: Batch, config: SamplerConfig, *, key: KeyLike,
    probes: Mapping[str, Batch] | None = None,
    component: Mask | None = None,
    per_token: bool = True,
    block_size: int | None = None,
    probe_batch_size: int | None = None,
    progress: bool = True,
) -> BIFResult:
    """Estimates the Bayesian influence function -Cov(l_i, l_j) over the rows of ``probes``.

    Args:
        loss_fn: ``loss_fn(params, batch)`` -> ``(batch,)`` or per-token ``(batch, seq)`` losses.
        params: w*.
        data: the training data the posterior is sampled with.
        config: the ``SamplerConfig`` (numeric ``step_size``; ``num_draws >= 2``).
        key: int seed or PRNG key.
        probes: ``{name: batch}``, the examples whose losses are compared (each a pytree with a
            leading example axis; rows follow the dict's order), spelled as for
            ``estimate_susceptibilities``; None uses ``data`` itself (the training-set BIF, one
            probe named ``"data"``). Checked like the training data before compiling.
        component: a bool mask: restricted chains that move only its coordinates (None: all).
        per_token: one row per token for sequence losses (the per-token BIF); False: per sequence.
        block_size: accumulate ``block_size`` rows x N per run (N / block_size runs of the same
            chains); None: the whole N x N Gram in one run.
        probe_batch_size: evaluate the probes in chunks of this many examples.
        progress: tqdm bar.

    Returns:
        A ``BIFResult`` (the one checkpoint of ``estimate_bif_table``). Raises ``DivergenceError``
        if every chain diverged.

    >>> import jax.numpy as jnp, slt_jax as sj
    >>> loss_fn = lambda w, batch: 0.5 * (batch["y"] - batch["x"] @ w) ** 2
    >>> data = {"x": jnp.eye(2).repeat(5, axis=0), "y": jnp.ones(10)}
    >>> config = sj.SamplerConfig(step_size=1e-2, nbeta=10.0, localization=1.0, num_draws=100, batch_size=10)
    >>> result = sj.estimate_bif(loss_fn, jnp.zeros(2), data, config, key=0, progress=False)
    >>> result.bif.shape, bool((result.bif.diagonal() < 0).all())
    ((10, 10), True)
    """
    options = dict(per_token=per_token, block_size=block_size, probe_batch_size=probe_batch_size)
    admitted = _admit("estimate_bif", loss_fn, [params], data, config, probes, component, None, options)
    table = _bif_table(loss_fn, admitted, data, key, probes, options, progress)
    _report(table, single=True)
    return table.result(0)
