"""Signal or noise? Reliability of a response matrix or BIF from its independent chains (docs/conventions.md §3).

Every entry of ``SusceptibilityResult.chi`` (and of ``BIFResult.bif``) is the mean of C per-chain
estimates X_c. Before a PCA or a clustering of the rows, ask whether the rows differ by more than
their noise. Definitions (the entries of a row are its K components; for a BIF, the row's N - 1
off-diagonal entries: the diagonal is -Var(l_i), never zero):

* Signal-to-noise: z = |chi| / stderr per entry, stderr = std_c(X_c) / sqrt(C) (ddof=1). Per row
  the median over its entries; the median, because with few chains z is t-distributed with C - 1
  degrees of freedom (infinite variance at C = 3). Under pure noise the median |z| is about 0.7.
* Distinguishable rows: a row is distinguishable from zero when any of its entries has
  |z| > t_{C-1}(1 - alpha / (2K)): a two-sided t test per entry, Bonferroni over the row's K
  entries. There is no correction across rows: under pure noise the expected fraction is at most
  ``alpha``. With few chains the test has little power (4 chains, 17 components, alpha = 0.05:
  |z| > 8.95).
* Split-chain reliability: split the good chains at random into two halves of h = floor(C/2),
  correlate (Pearson, over rows) each column's two half-means, average the correlation r over
  ``num_splits`` splits. A half averages h chains, so by Spearman-Brown the one-chain reliability
  is rho_1 = r / (h - (h - 1) r) and the C-chain mean's is R = C rho_1 / (1 + (C - 1) rho_1)
  (= 2r / (1 + r) for even C). R is the share of a column's variance over rows that is signal:
  with per-chain estimates signal + noise, R = S² / (S² + sigma² / C) (S², sigma² the variances of
  the signal over rows and of one chain's noise). The matrix's reliability is the median over its
  columns; correlations ignore each column's offset and scale, as z-scoring does.
* Chains needed: the Spearman-Brown prophecy C* = R* (1 - rho_1) / (rho_1 (1 - R*)) for a target
  R*, since the noise variance of the mean falls as 1/C. The noise variance of one chain falls
  roughly as 1/draws once the chain is past burn-in, so m times the draws is worth up to m times
  the chains.
* Mostly noise: R < 0.5 (noise variance above signal variance among rows) or fewer than 20% of
  rows distinguishable. ``estimate_reliability`` then issues a ``NoisyResponseWarning`` (a
  ``RuntimeWarning``); ``estimate_susceptibilities`` and ``estimate_bif`` check their own results
  and issue it too, and their results' ``summary()`` has the reliability line.

Chains with a non-finite entry anywhere (diverged chains) are left out.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from slt_jax import results, stats

__all__ = ["ReliabilityResult", "NoisyResponseWarning", "estimate_reliability", "MOSTLY_NOISE_RELIABILITY", "MOSTLY_NOISE_FRACTION"]


class NoisyResponseWarning(RuntimeWarning):
    """A response matrix or BIF is mostly noise (``ReliabilityResult.mostly_noise``).

    ``estimate_susceptibilities`` and ``estimate_bif`` issue it themselves, so a noisy matrix never
    goes silently into a PCA, a clustering or a patterning solve."""

MOSTLY_NOISE_RELIABILITY = 0.5
MOSTLY_NOISE_FRACTION = 0.2


@results.register
@dataclasses.dataclass(frozen=True)
class ReliabilityResult(results.Result):
    """How much of a response matrix (N rows, K columns, C chains) is signal; see the module docstring.

    Attributes:
        row_snr: ``(N,)`` median over the row's entries of |chi| / stderr.
        median_snr: median |chi| / stderr over all entries.
        distinguishable: ``(N,)`` bool, the row has an entry with |z| > ``critical_z``.
        fraction_distinguishable: the share of rows distinguishable from zero.
        critical_z: t_{C-1}(1 - alpha / (2K)), the Bonferroni threshold of one row.
        alpha: the row-wise false-positive rate.
        split_half: ``(K,)`` correlation over rows of the two half-means of each column.
        column_reliability: ``(K,)`` Spearman-Brown reliability of each column's C-chain mean.
        reliability: median of ``column_reliability``.
        chain_reliability: rho_1, the reliability of one chain, from ``reliability``.
        num_chains: C, the chains used (diverged chains left out).
        target: the target reliability R* of ``chains_needed``.
        chains_needed: C* for ``target`` (inf when rho_1 <= 0: no signal to amplify).
        mostly_noise: ``reliability < 0.5`` or ``fraction_distinguishable < 0.2``.
    """

    row_snr: np.ndarray
    median_snr: float
    distinguishable: np.ndarray
    fraction_distinguishable: float
    critical_z: float
    alpha: float
    split_half: np.ndarray
    column_reliability: np.ndarray
    reliability: float
    chain_reliability: float
    num_chains: int
    target: float
    chains_needed: float
    mostly_noise: bool

    xarray_dims = {"row_snr": ("row",), "distinguishable": ("row",), "split_half": ("column",),
                   "column_reliability": ("column",)}

    def summary(self) -> str:
        """One line: reliability, distinguishable rows, median |chi|/stderr, chains for the target."""
        needed = "never (no signal)" if not np.isfinite(self.chains_needed) else f"~{int(np.ceil(self.chains_needed))}"
        verdict = "MOSTLY NOISE" if self.mostly_noise else "ok"
        return (
            f"reliability {self.reliability:.2f} (split-chain, Spearman-Brown, {self.num_chains} chains); "
            f"{self.fraction_distinguishable:.0%} of rows distinguishable from 0 (|z| > {self.critical_z:.2f}, "
            f"Bonferroni per row, alpha {self.alpha:g}); median |chi|/stderr {self.median_snr:.2f}; "
            f"chains for reliability {self.target:g}: {needed} (now {self.num_chains}) [{verdict}]"
        )


def _per_chain(result) -> tuple[np.ndarray, np.ndarray]:
    """Per-chain estimates ``(C, N, K)`` and the bool ``(N, K)`` of entries that count.

    Results are recognised by their fields (this module sits below ``susceptibility`` and ``bif``,
    which call it): ``chi_per_chain`` (a ``SusceptibilityResult``), or ``bif`` with ``chains`` (a
    ``BIFResult``)."""
    if hasattr(result, "chi_per_chain"):
        per_chain = np.asarray(result.chi_per_chain, np.float64)
        return per_chain, np.ones(per_chain.shape[1:], bool)
    if hasattr(result, "bif") and hasattr(result, "chains"):
        if result.chains is None or result.chains.accumulator is None:
            raise ValueError("this BIFResult carries no per-chain state (chains.accumulator); rerun estimate_bif.")
        per_chain = -stats.covariance(result.chains.accumulator)[0]  # (C, rows of the last block, N)
        num_rows = result.bif.shape[0]
        if per_chain.shape[1] != num_rows:
            raise ValueError(
                f"this BIF was estimated in blocks (block_size={per_chain.shape[1]} < {num_rows} rows) and keeps "
                "only the last block's per-chain state; rerun estimate_bif with block_size=None for its reliability."
            )
        per_chain = np.where(np.asarray(result.diverged, bool)[:, None, None], np.nan, per_chain)
        return per_chain, ~np.eye(num_rows, dtype=bool)
    per_chain = np.asarray(result, np.float64)
    if per_chain.ndim != 3:
        raise TypeError(
            "estimate_reliability takes a SusceptibilityResult, a BIFResult or per-chain estimates of shape "
            f"(num_chains, N, K); got {type(result).__name__} of shape {np.shape(result)}."
        )
    return per_chain, np.ones(per_chain.shape[1:], bool)


def _column_correlation(a: np.ndarray, b: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Pearson correlation over rows of each column of ``a`` and ``b`` ``(..., N, K)``, valid entries only."""
    count = valid.sum(axis=-2)
    center = lambda x: np.where(valid, x - np.sum(np.where(valid, x, 0.0), axis=-2, keepdims=True) / count, 0.0)
    a, b = center(a), center(b)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(a * b, axis=-2) / np.sqrt(np.sum(a * a, axis=-2) * np.sum(b * b, axis=-2))


def estimate_reliability(
    result,
    *,
    target: float = 0.8,
    alpha: float = 0.05,
    num_splits: int = 20,
    seed: int = 0,
    warn: bool = True,
) -> ReliabilityResult:
    """Signal-to-noise, split-chain reliability and distinguishable rows of a response matrix or BIF.

    Args:
        result: a ``SusceptibilityResult`` (rows = probe rows, columns = components), a
            ``BIFResult`` estimated with ``block_size=None`` (rows = columns = probe rows, diagonal
            left out), or per-chain estimates ``(num_chains, N, K)``.
        target: the reliability R* that ``chains_needed`` aims for, in (0, 1).
        alpha: the row-wise false-positive rate of the distinguishability test, in (0, 1).
        num_splits: random halvings of the chains averaged in the split-half correlation.
        seed: seed of the halvings.
        warn: issue a ``NoisyResponseWarning`` when the matrix is mostly noise (see the module docstring).

    Returns:
        A ``ReliabilityResult``; ``.summary()`` is one line.

    >>> import numpy as np
    >>> from slt_jax.reliability import estimate_reliability
    >>> rng = np.random.default_rng(0)
    >>> signal = rng.normal(size=(200, 3))                       # S² = 1 over rows
    >>> per_chain = signal + 2.0 * rng.normal(size=(16, 200, 3))  # sigma² = 4 per chain
    >>> report = estimate_reliability(per_chain)                 # exact: 1 / (1 + 4 / 16) = 0.8
    >>> round(report.reliability, 1), report.mostly_noise
    (0.8, False)
    """
    if not 0 < target < 1:
        raise ValueError(f"target={target!r} must lie in (0, 1), e.g. 0.8.")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha!r} must lie in (0, 1), e.g. 0.05.")
    if isinstance(num_splits, bool) or not isinstance(num_splits, (int, np.integer)) or num_splits < 1:
        raise ValueError(f"num_splits={num_splits!r} must be a positive int, e.g. 20.")
    per_chain, valid = _per_chain(result)
    good = np.all(np.isfinite(per_chain) | ~valid, axis=(1, 2))
    per_chain = per_chain[good]
    num_chains, num_rows = per_chain.shape[0], per_chain.shape[1]
    if num_chains < 2 or num_rows < 3:
        raise ValueError(
            f"reliability needs >= 2 non-diverged chains and >= 3 rows; got {num_chains} chains and {num_rows} rows. "
            "Run more chains (SamplerConfig(num_chains=...))."
        )
    mean = per_chain.mean(axis=0)
    stderr = per_chain.std(axis=0, ddof=1) / np.sqrt(num_chains)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(valid, np.abs(mean) / stderr, np.nan)
    entries_per_row = int(valid.sum(axis=1).max())
    from scipy import stats as scipy_stats  # scipy.stats loads on first use, not with ``import slt_jax`` (~0.3 s)

    critical_z = float(scipy_stats.t.ppf(1 - alpha / (2 * entries_per_row), num_chains - 1))
    distinguishable = np.any(z > critical_z, axis=1)

    half = num_chains // 2
    rng = np.random.default_rng(seed)
    orders = np.stack([rng.permutation(num_chains) for _ in range(num_splits)])  # (S, C)
    first = per_chain[orders[:, :half]].mean(axis=1)  # (S, N, K)
    second = per_chain[orders[:, half:2 * half]].mean(axis=1)
    split_half = np.mean(_column_correlation(first, second, valid), axis=0)  # (K,)
    # A negative split-half correlation is no signal: reliability 0, not a negative number.
    positive = np.maximum(split_half, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        one_chain = positive / (half - (half - 1) * positive)
        column_reliability = num_chains * one_chain / (1 + (num_chains - 1) * one_chain)
    if not np.any(np.isfinite(column_reliability)):
        raise ValueError("every column is constant over the rows; there is no pattern whose reliability to measure.")
    reliability = float(np.nanmedian(column_reliability))
    chain_reliability = reliability / (num_chains - (num_chains - 1) * reliability)
    chains_needed = target * (1 - chain_reliability) / (chain_reliability * (1 - target)) if chain_reliability > 0 else np.inf
    fraction = float(distinguishable.mean())
    report = ReliabilityResult(
        row_snr=np.nanmedian(z, axis=1), median_snr=float(np.nanmedian(z)), distinguishable=distinguishable,
        fraction_distinguishable=fraction, critical_z=critical_z, alpha=float(alpha), split_half=split_half,
        column_reliability=column_reliability, reliability=reliability, chain_reliability=float(chain_reliability),
        num_chains=num_chains, target=float(target), chains_needed=float(chains_needed),
        mostly_noise=bool(reliability < MOSTLY_NOISE_RELIABILITY or fraction < MOSTLY_NOISE_FRACTION),
    )
    if warn and report.mostly_noise:
        warnings.warn(
            f"the matrix is mostly noise: {report.summary()}. Rows differ mainly by sampling noise; run more chains "
            "(or draws) before clustering or PCA.", NoisyResponseWarning, stacklevel=2,
        )
    return report


def _report_or_why(result) -> tuple[ReliabilityResult | None, str]:
    """The ``ReliabilityResult`` of ``result``, or None and why it is undefined (fewer than 2 good chains
    or 3 rows, constant columns, a BIF kept in blocks)."""
    try:
        return estimate_reliability(result, warn=False), ""
    except (ValueError, TypeError) as error:
        return None, str(error)


def summary_line(result) -> str:
    """The reliability line of a result's ``summary()``."""
    report, why = _report_or_why(result)
    return report.summary() if report is not None else f"reliability undefined: {why}"


def check_reliability(result, what: str) -> ReliabilityResult | None:
    """What the estimators call on their result: the ``ReliabilityResult`` with a ``NoisyResponseWarning``
    when mostly noise, or None when it is undefined."""
    report, _ = _report_or_why(result)
    if report is None:
        return None
    if report.mostly_noise:
        warnings.warn(
            f"{what} is mostly noise: {report.summary()}. Its rows differ mainly by sampling noise; run more chains "
            "(or draws) before a PCA, clustering or patterning (slt_jax.estimate_reliability).",
            NoisyResponseWarning, stacklevel=3,
        )
    return report
