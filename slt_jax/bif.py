"""The Bayesian influence function: BIF(i, j) = -Cov_p(l_i, l_j) (SCIENCE.md §3).

The N x N covariance of the probe rows' losses is streamed on device as a Welford Gram accumulator
(``slt_jax.stats``), per chain, without storing the draws. For N too large for an N x N state per
chain, ``block_size=b`` accumulates a (b, N) slab at a time: one run per block of rows, every run
with the same key, so the chains are the same trajectories and the slabs tile one matrix (one
compiled program serves every block: the block's row indices are a traced input).

Sign. ``bif`` is -Cov (negative on the diagonal: upweighting example i lowers its own expected
loss). ``correlation`` is the Pearson correlation of the losses, +corr, the normalized form that
devinterp returns; it has the OPPOSITE sign of ``bif``: bif_ij = -corr_ij · sqrt(Var_i Var_j).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from slt_jax import validation
from slt_jax import sampler as sampler_lib
from slt_jax import stats
from slt_jax.traces import report_divergence
from slt_jax.sampler import ChainsOutput
from slt_jax.stats import ProbeLabels
from slt_jax.types import Batch, KeyLike, LossFn, Mask, Params

__all__ = ["BIFResult", "estimate_bif"]


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
        chains: the ``ChainsOutput`` of the (last) run.
    """

    bif: np.ndarray
    stderr: np.ndarray
    correlation: np.ndarray
    variance: np.ndarray
    mean_loss: np.ndarray
    labels: ProbeLabels
    nbeta: float
    diverged: np.ndarray
    chains: ChainsOutput

    def to_numpy(self) -> dict[str, np.ndarray]:
        """Plain numpy arrays (for ``np.savez`` / slt_jax's io)."""
        return dict(
            bif=self.bif, stderr=self.stderr, correlation=self.correlation, variance=self.variance,
            mean_loss=self.mean_loss, probe=self.labels.probe.astype(str), example=self.labels.example,
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
            coords.update({f"{dim}_probe": (dim, self.labels.probe.astype(str)), f"{dim}_example": (dim, self.labels.example), f"{dim}_token": (dim, self.labels.token)})
        pair = ("row", "column")
        return xr.Dataset(
            dict(bif=(pair, self.bif), stderr=(pair, self.stderr), correlation=(pair, self.correlation), variance=(("row",), self.variance)),
            coords=coords,
            attrs=dict(nbeta=self.nbeta, sign="bif = -Cov(l_i, l_j); correlation = +corr(l_i, l_j)"),
        )

    def __repr__(self) -> str:
        return f"BIFResult(bif: {self.bif.shape}, nbeta={self.nbeta:.4g}, diverged={int(self.diverged.sum())})"


@functools.lru_cache(maxsize=32)
def _build(loss_fn, per_token, probe_batch_size):
    def observe(position, info, observe_data, batch):
        losses = stats.probe_losses(loss_fn, position, (observe_data["probe"],), per_token=per_token, probe_batch_size=probe_batch_size)
        return {"losses": losses, "block": losses[observe_data["rows"]]}

    accumulator = stats.covariance_accumulator(lambda v: v["block"], lambda v: v["losses"])
    return observe, accumulator


def estimate_bif(
    loss_fn: LossFn,
    params: Params,
    data: Batch,
    *,
    probe: Batch | None = None,
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
    mask: Mask | None = None,
    per_token: bool = True,
    block_size: int | None = None,
    probe_batch_size: int | None = None,
    progress: bool = True,
    **kwargs,
) -> BIFResult:
    """Estimates the Bayesian influence function -Cov(l_i, l_j) over the rows of ``probe``.

    Args:
        loss_fn: ``loss_fn(params, batch)`` -> ``(batch,)`` or per-token ``(batch, seq)`` losses.
        params: w*.
        data: the training data the posterior is sampled with.
        probe: the examples whose losses are compared (a pytree with a leading example axis);
            None uses ``data`` itself (the training-set BIF).
        key: int seed or PRNG key.
        step_size, nbeta, localization: SGLD hyperparameters (nβ None: n / log n).
        num_chains, num_draws, num_burnin, num_steps_between_draws, batch_size, sampler, mask: the run.
        per_token: one row per token for sequence losses (the per-token BIF); False: per sequence.
        block_size: accumulate ``block_size`` rows x N per run (N / block_size runs of the same
            chains); None: the whole N x N Gram in one run.
        probe_batch_size: evaluate the probe in chunks of this many examples.
        progress: tqdm bar.
        **kwargs: passed to ``slt_jax.run_chains``.

    Returns:
        A ``BIFResult``. Raises ``DivergenceError`` if every chain diverged.

    >>> import jax.numpy as jnp, slt_jax as sj
    >>> loss_fn = lambda w, batch: 0.5 * (batch["y"] - batch["x"] @ w) ** 2
    >>> data = {"x": jnp.eye(2).repeat(5, axis=0), "y": jnp.ones(10)}
    >>> result = sj.estimate_bif(loss_fn, jnp.zeros(2), data, key=0, step_size=1e-2, nbeta=10.0,
    ...                          localization=1.0, num_draws=100, batch_size=10, progress=False)
    >>> result.bif.shape, bool((result.bif.diagonal() < 0).all())
    ((10, 10), True)
    """
    n = validation.check_data(data)
    probe = data if probe is None else probe
    labels = stats._check_probes(loss_fn, params, {"probe": probe}, per_token, name="probe")
    num_rows = len(labels.example)
    if validation.check_positive_int(num_draws, "num_draws") < 2:
        raise ValueError(f"num_draws={num_draws}: a covariance needs at least 2 draws per chain (use hundreds).")
    if validation.check_positive_int(num_chains, "num_chains") < 2:
        warnings.warn("num_chains=1: stderr needs at least 2 chains and will be NaN.", stacklevel=2)
    block = num_rows if block_size is None else min(validation.check_positive_int(block_size, "block_size"), num_rows)
    if probe_batch_size is not None:
        probe_batch_size = validation.check_positive_int(probe_batch_size, "probe_batch_size")
    nbeta = sampler_lib.default_nbeta(n) if nbeta is None else nbeta
    observe, accumulator = _build(loss_fn, bool(per_token), probe_batch_size)
    init_loss = float(sampler_lib.full_data_loss(loss_fn, params, data, batch_size))
    probe = jax.tree.map(jnp.asarray, probe)

    # Host memory: two N x N matrices; per-chain slabs are reduced block by block.
    cov = np.empty((num_rows, num_rows))
    stderr = np.empty((num_rows, num_rows))
    for start in range(0, num_rows, block):
        # Pad the last block by repeating row 0 so every block has the same shape (one program).
        rows = np.arange(start, start + block)
        valid = rows < num_rows
        rows = np.where(valid, rows, 0)
        chains = sampler_lib.run_chains(
            loss_fn, params, data, key=key, step_size=step_size, nbeta=nbeta, localization=localization,
            num_chains=num_chains, num_draws=num_draws, num_burnin=num_burnin,
            num_steps_between_draws=num_steps_between_draws, batch_size=batch_size, sampler=sampler, masks=mask,
            observe=observe, observe_data={"probe": probe, "rows": jnp.asarray(rows, jnp.int32)},
            accumulator=accumulator, init_loss=init_loss, progress=progress,
            description=f"BIF rows {start}-{min(start + block, num_rows)}" if block < num_rows else "BIF", **kwargs,
        )
        diverged = np.asarray(chains.diverged[0], bool)
        if diverged.all():
            report_divergence(chains.diverged_at[0])
        slab = stats.covariance(chains.accumulator)[0][~diverged][:, valid, :]  # (good chains, rows, N)
        cov[rows[valid]] = slab.mean(axis=0)
        stderr[rows[valid]] = slab.std(axis=0, ddof=1) / math.sqrt(len(slab)) if len(slab) >= 2 else np.nan
    report_divergence(chains.diverged_at[0])
    mean_loss = np.asarray(chains.accumulator.mean_y[0], np.float64)[~diverged].mean(axis=0)
    # The Welford Gram is symmetric up to rounding.
    cov = 0.5 * (cov + cov.T)
    stderr = 0.5 * (stderr + stderr.T)
    variance = np.diagonal(cov).copy()
    scale = np.sqrt(np.maximum(variance, 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        correlation = cov / np.outer(scale, scale)
    return BIFResult(
        bif=-cov,
        stderr=stderr,
        correlation=correlation,
        variance=variance,
        mean_loss=mean_loss,
        labels=labels,
        nbeta=float(nbeta),
        diverged=diverged,
        chains=chains,
    )


def estimate_bif_over_checkpoints(*args, **kwargs):  # TODO(helper B): implement
    raise NotImplementedError
