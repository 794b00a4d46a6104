"""Health checks for SGLD runs: trace-shape criteria, step-size bias, summaries, negative control.

docs/conventions.md §4: a trustworthy loss trace rises above L_n(w*), levels off quickly, has no large spikes,
and its chains level off at the same value (R-hat ≈ 1). Everything here reads the per-draw records
that every run already has (``ChainsResult``: loss, grad_norm, noise_norm, mala_acceptance, ...), so
it costs nothing extra on device. The per-draw values nβ(L_d - L_n(w*)) come from
``slt_jax.traces.llc_draws`` (the one place that computes them); ESS and R-hat from
``slt_jax.traces.loss_diagnostics``.

Step-size bias. For a locally quadratic posterior (A = nβH + γI) one SGLD step with step ε inflates
the variance along eigendirection i by a factor 1/(1 - ε a_i/4) (discretization) plus, with
minibatches of size m and per-example gradient covariance V, by ε nβ² v_i/(4 m a_i)... (gradient
noise). Both enter the LLC with weight ½ nβh_i/a_i, and to first order in ε their sum is

    bias(ε) ≈ (ε/8) · E[ ||nβ g_B||² ]                         (``predicted_bias``)

where g_B is the minibatch loss gradient at the draws (``grad_norm``): E||nβ g_B||² = nβ² tr(H²Σ) +
nβ² tr(V)/m. The estimate is exact to first order for full-batch quadratics when γ ≪ nβh_i, and an
upper bound otherwise. Unlike the MALA acceptance (which, evaluated on one minibatch, is blind to
gradient noise), it sees both sources of bias; ``calibrate`` uses it to choose the step size.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import warnings

import numpy as np

from slt_jax import results, traces
from slt_jax._src import frontdoor
from slt_jax.config import SamplerConfig
from slt_jax.sampler import ChainsResult, run_chains
from slt_jax.types import Batch, KeyLike, LossFn, Mask, Params

__all__ = [
    "THRESHOLDS",
    "Finding",
    "HealthReport",
    "NegativeControlResult",
    "trace_metrics",
    "problems",
    "summary",
    "negative_control",
    "ou_variance",
    "mala_requirement",
]

THRESHOLDS: dict[str, float] = {
    "rhat": 1.1,  # split R-hat of the loss trace above this: chains disagree
    "ess": 100.0,  # ESS of the loss trace below this: too few effective draws for a stable mean
    "trend": 0.1,  # second half of the draws above the first by this fraction of the LLC: still climbing
    "trend_z": 2.0,  # ... and by this many standard errors (paired over chains)
    "drift": 0.02,  # a slow drift: a later half (or quarter) of the draws differs from the earlier by this fraction
    "drift_z": 4.0,  # ... and by this many within-chain standard errors (autocorrelation-aware, pooled over chains)
    "spike_mads": 10.0,  # a spike: a draw this many robust standard deviations above its chain's median AND a
    # jump of this many robust standard deviations of the draw-to-draw changes above both neighbours
    "spike_fraction": 0.005,  # more spikes than this fraction of draws is a problem
    "below_minibatch": 0.5,  # draws below L(w*), minibatch-loss trace (with a negative LLC; noise gives up to ~0.5)
    "below_full": 0.1,  # draws below L(w*), full-data-loss trace (a local minimum gives 0)
    "mala": 0.9,  # mean MALA acceptance below this on 2 coordinates (mala_requirement scales it to d): ε too large
    "bias": 0.05,  # predicted relative step-size bias above this
    "noise": 0.2,  # standard error of the LLC above this fraction of it: the signal is buried in noise
    "dispersion": 1.5,  # chain means spread this many times more than their own (ESS-based) standard errors imply
    "dispersion_p": 1e-3,  # ... and a chi-square test of their agreement rejects it at this level
}
"""Default thresholds of every check (shared by ``summary`` and ``calibrate``)."""


def _finite_mean(x) -> float:
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else float("nan")


def trace_metrics(
    draws,
    *,
    nbeta: float | None = None,
    diverged=None,
    mala_acceptance=None,
    grad_norm=None,
    step_size: float | None = None,
    burnin_draws: int = 0,
) -> dict[str, float | str]:
    """Every health metric of one setting's chains, from its per-draw records (numpy, host).

    Args:
        draws: ``(num_chains, num_draws)`` nβ(L_d - L_n(w*)) at each draw, i.e. one configuration
            of ``slt_jax.traces.llc_draws(chains, loss_estimator)``; its mean over draws is a chain's λ̂.
        nbeta: nβ, needed only for ``predicted_bias``.
        diverged: ``(num_chains,)`` bool; diverged chains are excluded from every metric.
        mala_acceptance: ``(num_chains, num_draws)``, NaN where not evaluated.
        grad_norm: ``(num_chains, num_draws)`` loss-gradient norm at each draw (NaN where not taken).
        step_size: ε of plain SGLD (None, e.g. for RMSProp, leaves ``predicted_bias`` NaN).
        burnin_draws: leading draws to discard (calibration runs record their burn-in).

    Returns:
        A dict: ``llc_mean``, ``llc_std`` (over chains, ddof=1), ``llc_stderr``, ``ess``, ``rhat``
        (``slt_jax.traces.loss_diagnostics``: NaN for a constant trace), ``trend`` (relative rise of
        the second half over the first), ``trend_z``, ``late_trend`` (same, fourth quarter over
        third), ``drift`` and ``drift_z`` (the largest within-chain shift between the halves, or
        between the last two quarters, relative to the LLC and in autocorrelation-aware standard
        errors: a slow drift shared by every chain, which R-hat cannot see), ``dispersion`` and
        ``dispersion_p`` (how many times more the chains' means spread than their ESS-based standard
        errors imply, and the χ² probability of that spread under agreement), ``plateau_fraction``
        (first draw, as a fraction of all draws, at which the chain-mean trace reaches its final level), ``spike_fraction``, ``fraction_below`` (draws
        below L(w*)), ``mala_acceptance``, ``predicted_bias`` (absolute, see the module docstring),
        ``relative_bias``, ``num_chains``, ``num_diverged`` (floats) and ``note`` (a string saying
        why ESS / R-hat are undefined, or ``""``).
    """
    draws = np.asarray(draws, np.float64)
    if draws.ndim != 2:
        raise ValueError(f"draws must have shape (num_chains, num_draws), got {draws.shape}.")
    num_chains, num_draws = draws.shape
    if not 0 <= burnin_draws < num_draws:
        raise ValueError(f"burnin_draws={burnin_draws} must lie in [0, num_draws={num_draws}).")
    diverged = np.zeros(num_chains, bool) if diverged is None else np.asarray(diverged, bool)
    good = ~diverged
    shifted_all = draws[good]
    shifted = shifted_all[:, burnin_draws:]
    out: dict = {"num_chains": float(num_chains), "num_diverged": float(diverged.sum())}
    nan = float("nan")
    if not good.any():
        keys = ("llc_mean", "llc_std", "llc_stderr", "ess", "rhat", "trend", "trend_z", "late_trend", "drift", "drift_z",
                "dispersion", "dispersion_p", "plateau_fraction",
                "spike_fraction", "fraction_below", "mala_acceptance", "predicted_bias", "relative_bias")
        return out | {k: nan for k in keys} | {"note": "every chain diverged"}
    per_chain = shifted.mean(axis=1)
    count = per_chain.size
    out["llc_mean"] = float(per_chain.mean())
    out["llc_std"] = float(per_chain.std(ddof=1)) if count >= 2 else nan
    out["llc_stderr"] = out["llc_std"] / math.sqrt(count) if count >= 2 else nan
    # ESS and R-hat are invariant under the affine map L -> nβ(L - L*), so these are the loss trace's.
    out["ess"], out["rhat"], note = traces.loss_diagnostics(shifted)
    scale = max(abs(out["llc_mean"]), 1e-12)
    halves, quarters = _segments(shifted)
    if halves is not None:
        difference = _shifts(halves)
        out["trend"] = float(difference.mean() / scale)
        spread = difference.std(ddof=1) if count >= 2 else nan
        out["trend_z"] = float(difference.mean() / (spread / math.sqrt(count))) if count >= 2 and spread > 0 else nan
    else:
        out["trend"] = out["trend_z"] = nan
    out["late_trend"] = float(_shifts(quarters).mean() / scale) if quarters is not None else nan
    out["drift"], out["drift_z"] = _drift([halves, quarters], scale) if shifted.shape[1] >= 16 else (nan, nan)
    out["dispersion"], out["dispersion_p"] = _dispersion(shifted) if count >= 2 and shifted.shape[1] >= 16 else (nan, nan)
    # Plateau: the first draw where the (smoothed, chain-mean) trace reaches the level of the last half.
    mean_trace = shifted_all.mean(axis=0)
    window = max(1, num_draws // 20)
    smoothed = np.convolve(mean_trace, np.ones(window) / window, mode="valid")
    level = mean_trace[num_draws // 2 :].mean()
    reached = np.flatnonzero(smoothed >= level)
    out["plateau_fraction"] = float((reached[0] + window - 1) / num_draws) if reached.size else 1.0
    out["spike_fraction"] = _spike_fraction(shifted)
    out["fraction_below"] = float((shifted < 0).mean())
    if mala_acceptance is not None:
        out["mala_acceptance"] = _finite_mean(np.asarray(mala_acceptance)[good][:, burnin_draws:])
    else:
        out["mala_acceptance"] = nan
    if grad_norm is not None and step_size is not None and nbeta is not None:
        squared = np.asarray(grad_norm, np.float64)[good][:, burnin_draws:] ** 2
        out["predicted_bias"] = float(step_size / 8.0 * nbeta**2 * _finite_mean(squared))
        out["relative_bias"] = out["predicted_bias"] / scale
    else:
        out["predicted_bias"] = out["relative_bias"] = nan
    out["note"] = note
    return out


def _mean_variance(x: np.ndarray) -> np.ndarray:
    """Per chain, the variance of the mean of ``x`` ``(C, L)``: var / ESS (numpyro's single-chain ESS)."""
    from numpyro import diagnostics as numpyro_diagnostics  # on first use, as in traces.loss_diagnostics

    out = np.empty(x.shape[0])
    for c, chain in enumerate(x):
        variance = chain.var(ddof=1)
        if not variance > 0:
            out[c] = 0.0
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            ess = float(numpyro_diagnostics.effective_sample_size(chain[None, :]))
        out[c] = variance / min(max(ess, 1.0), chain.size)
    return out


def _dispersion(shifted: np.ndarray) -> tuple[float, float]:
    """(ratio, p) of the chains' means against their own standard errors (variance / ESS per chain).

    Under agreement, Q = Σ_c (m_c - m̄)² / se_c² (m̄ the inverse-variance weighted mean) is χ² with
    C - 1 degrees of freedom; ratio = sqrt(Q / (C - 1)) is how many times more the means spread than
    their standard errors imply, p the χ² tail probability. Chains that each mix well inside their
    own region but settle at different levels (a slow mode R-hat over long chains can miss) give a
    large ratio. docs/conventions.md §4."""
    from scipy import stats as scipy_stats  # deferred: a heavy import a plain run may not need

    variance = _mean_variance(shifted)
    means = shifted.mean(axis=1)
    if not np.all(variance > 0):
        return float("nan"), float("nan")
    weights = 1.0 / variance
    center = float((weights * means).sum() / weights.sum())
    statistic = float((weights * (means - center) ** 2).sum())
    dof = means.size - 1
    return math.sqrt(statistic / dof), float(scipy_stats.chi2.sf(statistic, dof))


def _segments(shifted: np.ndarray):
    """(first half, second half) and (third quarter, fourth quarter) of each chain's draws, or None
    where a segment would be empty: the trend, late-trend and drift checks compare these."""
    length = shifted.shape[1]
    half, quarter = length // 2, length // 4
    halves = (shifted[:, :half], shifted[:, half:]) if half >= 1 else None
    quarters = (shifted[:, length - 2 * quarter:length - quarter], shifted[:, length - quarter:]) if quarter >= 1 else None
    return halves, quarters


def _shifts(pair) -> np.ndarray:
    """Per chain, the later segment's mean minus the earlier one's."""
    early, late = pair
    return late.mean(axis=1) - early.mean(axis=1)


def _drift(pairs, scale: float) -> tuple[float, float]:
    """(relative shift, z) of the most significant within-chain shift over ``pairs`` of segments
    (``_segments``: halves, late quarters). Each chain's shift is compared with its own
    autocorrelation-aware standard error (variance / ESS of each segment), pooled over chains, so a
    drift that every chain shares, which R-hat cannot see, is found too; the spread of the shifts
    over chains replaces it when larger (slow modes that a fast-mixing part of the trace hides from
    the ESS). docs/conventions.md §4."""
    best = (float("nan"), float("nan"))
    for early, late in pairs:
        num_chains = early.shape[0]
        per_chain = _shifts((early, late))
        shift = per_chain.mean()
        stderr = math.sqrt((_mean_variance(early) + _mean_variance(late)).sum()) / num_chains
        if num_chains >= 2:
            stderr = max(stderr, per_chain.std(ddof=1) / math.sqrt(num_chains))
        z = shift / stderr if stderr > 0 else (0.0 if shift == 0 else math.copysign(math.inf, shift))
        if not abs(z) <= abs(best[1]):
            best = (float(shift / scale), float(z))
    return best


def _spread(x: np.ndarray) -> np.ndarray:
    """Per row, a scale robust to a few outliers yet faithful to heavy tails: the larger of the
    MAD-based standard deviation and the standard deviation of the central 98% of the values (the
    MAD alone collapses for traces like nβ(L - L*) at a degenerate point, mostly near 0)."""
    median = np.median(x, axis=1, keepdims=True)
    mad = 1.4826 * np.median(np.abs(x - median), axis=1, keepdims=True)
    low, high = np.quantile(x, [0.01, 0.99], axis=1, keepdims=True)
    central = np.where((x >= low) & (x <= high), x, np.nan)
    trimmed = np.nanstd(central, axis=1, keepdims=True)
    return np.maximum(np.maximum(mad, trimmed), 1e-12)


def _spike_fraction(shifted: np.ndarray) -> float:
    """Fraction of draws that are spikes: far above their chain's median (``_spread``s) AND an
    isolated jump above both neighbours (``_spread``s of the draw-to-draw changes). The second
    condition keeps the tail of a smooth trace from counting (nβ(L - L*) of a 1-D quadratic is ½χ²₁,
    whose excursions are gradual, not jumps); the trimmed spread, the heavy tails of singular ones."""
    if shifted.shape[1] < 3:
        return 0.0
    k = THRESHOLDS["spike_mads"]
    median = np.median(shifted, axis=1, keepdims=True)
    high = shifted[:, 1:-1] > median + k * _spread(shifted)
    jump = np.minimum(shifted[:, 1:-1] - shifted[:, :-2], shifted[:, 1:-1] - shifted[:, 2:])
    isolated = jump > k * _spread(np.diff(shifted, axis=1))
    return float((high & isolated).sum() / shifted.size)


@dataclasses.dataclass(frozen=True)
class Finding:
    """One problem found in a run.

    Attributes:
        check: short name (``"divergence"``, ``"rhat"``, ``"ess"``, ``"plateau"``, ``"drift"``, ``"dispersion"``, ``"spikes"``,
            ``"below_init"``, ``"mala"``, ``"bias"``, ``"noise"``, ``"rise"``).
        severity: ``"error"`` (the estimate is unusable) or ``"warning"`` (probably biased or noisy).
        message: what looks wrong, with the numbers.
        fix: what to change.
    """

    check: str
    severity: str
    message: str
    fix: str


def problems(metrics: dict[str, float], *, full_loss: bool = False, thresholds: dict | None = None) -> list[Finding]:
    """The ``Finding``s implied by ``trace_metrics`` output (empty when healthy)."""
    t = THRESHOLDS | (thresholds or {})
    found: list[Finding] = []
    m = metrics
    num_good = m["num_chains"] - m["num_diverged"]
    if m["num_diverged"]:
        found.append(Finding(
            "divergence", "error",
            f"{int(m['num_diverged'])} of {int(m['num_chains'])} chains diverged (loss became NaN/inf).",
            "Reduce step_size (3-10x) or increase localization; slt_jax.calibrate chooses both.",
        ))
    if num_good == 0:
        return found
    found += _estimate_findings(m, t)
    found += _trace_findings(m, t)
    found += _sampler_findings(m, t, full_loss)
    return found


def _estimate_findings(m: dict, t: dict) -> list[Finding]:
    """Is the estimate a clear, converged signal: rise above L(w*), noise, R-hat, ESS."""
    found: list[Finding] = []
    llc, stderr = m["llc_mean"], m["llc_stderr"]
    if not llc > 0 or (np.isfinite(stderr) and llc < 2 * stderr):
        found.append(Finding(
            "rise", "error",
            f"the loss does not rise clearly above L(w*): LLC {llc:.4g} ± {stderr:.2g} (standard error).",
            "If w* is trained, the step size may be too small to move in this many draws: raise step_size "
            "or num_draws; if the trace is flat but noisy, raise nbeta or batch_size.",
        ))
    elif np.isfinite(stderr) and stderr > t["noise"] * llc:
        found.append(Finding(
            "noise", "warning",
            f"noisy estimate: standard error {stderr:.2g} is {stderr / llc:.0%} of the LLC {llc:.4g}.",
            "Run more draws or chains, or raise nbeta or batch_size for a clearer signal.",
        ))
    if m["rhat"] > t["rhat"]:
        found.append(Finding(
            "rhat", "warning",
            f"chains disagree: split R-hat {m['rhat']:.3f} > {t['rhat']}.",
            "Run longer (more num_burnin and num_draws); if chains settle at different levels, w* sits in a "
            "multimodal region: increase localization.",
        ))
    if m["ess"] < t["ess"]:
        found.append(Finding(
            "ess", "warning",
            f"low effective sample size of the loss trace: {m['ess']:.0f} < {t['ess']:.0f}.",
            "Increase num_draws (or num_chains); a larger step_size mixes faster if its bias allows.",
        ))
    return found


def _trace_findings(m: dict, t: dict) -> list[Finding]:
    """The shape of the loss trace: still climbing, slow drift, spikes."""
    found: list[Finding] = []
    if m["trend"] > t["trend"] and not (m["trend_z"] < t["trend_z"]):
        late = m["late_trend"] > t["trend"] / 2
        found.append(Finding(
            "plateau", "warning",
            f"the loss is still climbing: the second half of the draws is {m['trend']:.0%} above the first"
            + (" and still rising at the end." if late else ", then levels off."),
            "Increase localization (γ) or lower nbeta: the chain escapes the neighbourhood of w*."
            if late else "Increase num_burnin: the chains had not reached the plateau when recording began.",
        ))
    if abs(m["drift_z"]) > t["drift_z"] and abs(m["drift"]) > t["drift"] and not any(f.check == "plateau" for f in found):
        direction = "rising" if m["drift"] > 0 else "falling"
        found.append(Finding(
            "drift", "warning",
            f"slow drift: the loss is still {direction} within the chains ({m['drift']:+.1%} of the LLC between "
            f"halves or late quarters, z = {m['drift_z']:+.1f} within-chain standard errors); every chain may "
            "share it, so R-hat does not show it.",
            "Increase num_burnin (the chains have not equilibrated; equilibration time scales as 1/step_size), "
            "or raise step_size if its bias allows, or increase localization.",
        ))
    if m["dispersion"] > t["dispersion"] and m["dispersion_p"] < t["dispersion_p"]:
        found.append(Finding(
            "dispersion", "warning",
            f"the chains' means disagree {m['dispersion']:.1f}x more than their own standard errors (from each "
            f"chain's ESS) imply (χ² p = {m['dispersion_p']:.1g}): each chain mixes within its own region but they "
            "settled at different levels, so the estimate depends on where the chains went.",
            "Run longer chains (more num_burnin and num_draws) and more chains; if the levels persist, w* sits in a "
            "multimodal region: increase localization.",
        ))
    if m["spike_fraction"] > t["spike_fraction"]:
        found.append(Finding(
            "spikes", "warning",
            f"loss spikes: {m['spike_fraction']:.1%} of the draws jump more than {t['spike_mads']:.0f} robust "
            "standard deviations above their chain's median and above both neighbouring draws.",
            "Reduce step_size, or increase batch_size (spikes are often gradient noise).",
        ))
    return found


def _sampler_findings(m: dict, t: dict, full_loss: bool) -> list[Finding]:
    """Is w* a minimum and the step size small enough: draws below L(w*), MALA acceptance, bias."""
    found: list[Finding] = []
    llc = m["llc_mean"]
    limit = t["below_full"] if full_loss else t["below_minibatch"]
    # Minibatch noise alone puts up to half of the draws below L(w*) when λ/nβ is small: only a
    # majority below together with a negative LLC points at w* (a full-data trace is sharper).
    if m["fraction_below"] > limit and (full_loss or llc < 0):
        found.append(Finding(
            "below_init", "error",
            f"{m['fraction_below']:.0%} of the draws lie below L(w*) (limit {limit:.0%}): w* is not a local "
            "minimum, so the LLC is not meaningful.",
            "Train w* to convergence (or start from a better minimum) before estimating; a larger "
            "localization hides but does not fix this.",
        ))
    if m["mala_acceptance"] < t["mala"]:
        found.append(Finding(
            "mala", "warning",
            f"low MALA acceptance {m['mala_acceptance']:.3f} < {t['mala']}: the step size is large relative to "
            "the posterior's curvature.",
            "Reduce step_size (slt_jax.calibrate).",
        ))
    if m["relative_bias"] > t["bias"]:
        found.append(Finding(
            "bias", "warning",
            f"predicted step-size bias {m['predicted_bias']:.3g} ({m['relative_bias']:.0%} of the LLC; "
            "discretization plus gradient noise, (ε/8)·nβ²·E||g||²).",
            f"Reduce step_size by about {m['relative_bias'] / t['bias']:.1f}x, or raise batch_size (gradient noise).",
        ))
    return found


def mala_requirement(threshold: float, num_coordinates: int) -> float:
    """The MALA acceptance on ``num_coordinates`` coordinates that matches ``threshold`` on two.

    For a Gaussian target the log acceptance ratio of one Langevin step is ~ N(-σ²/2, σ²) with σ²
    proportional to the number of directions at a given per-direction step error (Roberts &
    Rosenthal 1998), so the mean acceptance is 2Φ(-σ/2). A fixed threshold would force ε ∝ d^(-1/3)
    on large models, while the LLC's step-size bias is a sum of per-direction terms, each set by the
    per-direction error alone. So the threshold t stated for two coordinates becomes
    2Φ(sqrt(d/2)·Φ⁻¹(t/2)) on d: 0.9 on 2, 0.66 on 24, 0.21 on 200, 0.005 on 1,000.

    >>> from slt_jax.diagnostics import mala_requirement
    >>> round(mala_requirement(0.9, 2), 3), round(mala_requirement(0.9, 24), 2)
    (0.9, 0.66)
    """
    normal = statistics.NormalDist()
    return 2.0 * normal.cdf(math.sqrt(max(num_coordinates, 1) / 2.0) * normal.inv_cdf(threshold / 2.0))


@dataclasses.dataclass(frozen=True)
class HealthReport:
    """What ``summary`` returns; prints as a short human-readable report.

    Attributes:
        headline: the estimate and the run's shape.
        findings: the problems, most severe first; empty when the run looks healthy.
        metrics: every number the checks used (see ``trace_metrics``).
        notes: remarks that are not problems (e.g. why ESS and R-hat are undefined).
    """

    headline: str
    findings: tuple[Finding, ...]
    metrics: dict
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when no check failed."""
        return not self.findings

    def __str__(self) -> str:
        lines = [self.headline]
        m = self.metrics
        lines.append(
            f"  ESS {m['ess']:.0f}, R-hat {m['rhat']:.3f}, MALA acceptance {m['mala_acceptance']:.3f}, "
            f"draws below L(w*) {m['fraction_below']:.0%}, predicted step-size bias {m['relative_bias']:.1%}"
        )
        lines += [f"  note: {note}" for note in self.notes]
        if self.ok:
            lines.append("  No problems found.")
        for finding in self.findings:
            lines.append(f"  [{finding.severity}] {finding.check}: {finding.message}\n      fix: {finding.fix}")
        return "\n".join(lines)

    __repr__ = __str__


def summary(result, *, burnin_draws: int = 0, thresholds: dict | None = None) -> HealthReport:
    """One-call health summary of an ``LLCResult``: what looks wrong and what to change.

    Args:
        result: an ``LLCResult`` (``estimate_llc``'s output, or ``LLCTable.result(k, name)``): read
            through its ``chains`` (one configuration) and ``loss_estimator``.
        burnin_draws: extra leading draws to ignore (the sampler's ``num_burnin`` steps are never
            recorded, so the default uses every draw).
        thresholds: overrides of ``THRESHOLDS``. The ``"mala"`` threshold is scaled to the chains'
            number of coordinates (``mala_requirement``), as ``calibrate`` does; an override is used as given.

    Returns:
        A ``HealthReport``; ``print(report)`` for the text, ``report.findings`` for the checks.
    """
    chains = result.chains
    if chains.num_configs != 1:
        raise ValueError(f"summary needs a one-configuration result; select one with chains.select(g) (got {chains.num_configs}).")
    config = chains.config
    hyper = chains.hyperparameters
    step_size = float(hyper.step_size[0])
    nbeta = float(hyper.nbeta[0])
    metrics = trace_metrics(
        traces.llc_draws(chains, result.loss_estimator)[0],
        nbeta=nbeta,
        diverged=chains.diverged[0],
        mala_acceptance=chains.mala_acceptance[0],
        grad_norm=chains.grad_norm[0],
        step_size=None if config.preconditioner_spec.adaptive else step_size,
        burnin_draws=burnin_draws,
    )
    notes = [metrics.pop("note")]
    init_error = nbeta * float(getattr(result, "init_loss_stderr", 0.0))
    if init_error > 0:  # L_n(w*) from a subsample: one error shared by every chain, in quadrature
        metrics["llc_stderr"] = float(np.hypot(metrics["llc_stderr"], init_error))
        notes.append(f"L_n(w*) from a subsample of {chains.settings['init_loss']['examples']} examples: its standard "
                     f"error adds ±{init_error:.2g} to the LLC (included in its standard error, "
                     f"{metrics['llc_stderr']:.2g}).")
    # The MALA threshold is stated for two coordinates; on d it is the calibration's (mala_requirement).
    thresholds = {"mala": mala_requirement(THRESHOLDS["mala"], int(np.asarray(chains.num_sampled)[0])), **(thresholds or {})}
    found = problems(metrics, full_loss=result.loss_estimator == "full", thresholds=thresholds)
    order = {"error": 0, "warning": 1}
    found.sort(key=lambda f: order.get(f.severity, 2))
    num_chains, num_draws = chains.loss.shape[1:]
    headline = (
        f"LLC {result.llc_mean:.4g} ± {result.llc_std:.2g} (std over chains) from {num_chains} chains × {num_draws} "
        f"draws; step_size={step_size:.4g}, nbeta={nbeta:.4g}, localization={float(hyper.localization[0]):.4g}, "
        f"batch_size={config.batch_size}, loss_estimator={result.loss_estimator!r}."
    )
    return HealthReport(headline, tuple(found), metrics, tuple(note for note in notes if note))


# ---------------------------------------------------------------------------------------------
# the nβ = 0 negative control


def ou_variance(step_size: float, localization: float) -> float:
    """Stationary per-coordinate variance of SGLD at nβ = 0: 1/(γ(1 - εγ/4)) (an OU process)."""
    if not 0 < step_size * localization < 4:
        raise ValueError(
            f"step_size*localization={step_size * localization:.3g} must lie in (0, 4) for a stationary "
            "OU chain; reduce step_size."
        )
    return 1.0 / (localization * (1.0 - step_size * localization / 4.0))


@results.register
@dataclasses.dataclass(frozen=True)
class NegativeControlResult(results.Result):
    """The nβ = 0 control: chains must be an OU process around w* with a known variance.

    Attributes:
        measured_variance: mean over draws and chains of ||w - w*||² / d over the sampled coordinates.
        expected_variance: 1/(γ(1 - εγ/4)) for plain SGLD (1/γ, the continuous limit, for RMSProp).
        stderr: standard error of ``measured_variance`` (from the trace's ESS).
        z_score: (measured - expected) / stderr.
        relative_error: measured / expected - 1.
        num_coordinates: d, the number of sampled coordinates.
        variance_trace: ``(num_chains, num_draws)`` ||w - w*||² / d at each draw.
        chains: the raw ``ChainsResult`` (one configuration; its ``config`` is the control's).
    """

    measured_variance: float
    expected_variance: float
    stderr: float
    z_score: float
    relative_error: float
    num_coordinates: int
    variance_trace: np.ndarray
    chains: ChainsResult

    xarray_dims = {"variance_trace": ("chain", "draw")}

    @property
    def passed(self) -> bool:
        """Whether the measured variance agrees with the expected one within 4 standard errors."""
        return bool(abs(self.z_score) < 4.0)

    def __repr__(self) -> str:
        verdict = "PASS" if self.passed else "FAIL: the sampler's noise or localization is wrong"
        return (
            f"NegativeControlResult(measured variance {self.measured_variance:.5g} ± {self.stderr:.2g}, "
            f"expected {self.expected_variance:.5g} (relative error {self.relative_error:+.2%}, "
            f"z = {self.z_score:+.2f}) over {self.num_coordinates} coordinates: {verdict})"
        )


def _control_config(config: SamplerConfig) -> SamplerConfig:
    """The control's schedule: nβ = 0, no weight decay, burn-in and thinning at least the OU's."""
    frontdoor.check_config(config, "negative_control")
    if isinstance(config.step_size, str):
        raise ValueError("negative_control needs a numeric step_size (calibrate first: sj.calibrate(...).recommended).")
    if config.localization <= 0:
        raise ValueError(
            f"localization={config.localization!r}: the negative control needs localization > 0 (at nβ = 0 only "
            "the localization keeps the chain near w*)."
        )
    rate = config.step_size * config.localization
    if rate >= 4:
        raise ValueError(f"step_size*localization={rate:.3g} >= 4: the OU chain is unstable; reduce step_size.")
    control = config.replace(
        nbeta=0.0,
        weight_decay=0.0,
        num_burnin=max(config.num_burnin, math.ceil(5.0 / rate)),
        num_steps_between_draws=max(config.num_steps_between_draws, math.ceil(0.5 / rate)),
        mala_every=0,
    )
    if control.num_steps > 10_000_000:
        raise ValueError(
            f"step_size*localization={rate:.3g} needs {control.num_steps} steps to relax and decorrelate; raise "
            "step_size or localization, or lower num_draws."
        )
    return control


def negative_control(
    loss_fn: LossFn, params: Params, data: Batch, config: SamplerConfig, *, key: KeyLike,
    component: Mask | None = None,
    progress: bool = True,
) -> NegativeControlResult:
    """Runs the sampler with nβ = 0 and compares the spread of the chains with the OU variance.

    With nβ = 0 the loss drops out and each sampled coordinate is an Ornstein-Uhlenbeck process
    around w* with variance 1/(γ(1 - εγ/4)) (docs/conventions.md §3). A mismatch means the noise
    scale, restriction or localization of the sampler (or of a custom kernel) is wrong.

    Args:
        loss_fn, params, data, key: as for ``slt_jax.estimate_llc``.
        config: the run's ``SamplerConfig`` (numeric ``step_size``, ``localization`` > 0). The control
            runs ``config.replace(nbeta=0.0, weight_decay=0.0, mala_every=0)`` with at least 5/(εγ)
            burn-in steps (the OU relaxation time is 1/(εγ)) and at least 1/(2εγ) steps between
            draws; ``result.chains.config`` is the config it ran.
        component: bool mask pytree (True = sampled): the control of a restricted chain.
        progress: tqdm progress bar.

    Returns:
        A ``NegativeControlResult``; ``.passed`` says whether it agrees within 4 standard errors.

    >>> import jax.numpy as jnp, slt_jax as sj
    >>> loss_fn = lambda w, batch: jnp.sum(w ** 2) * jnp.ones(batch.shape[0])
    >>> config = sj.SamplerConfig(step_size=0.01, localization=10.0, num_draws=400, batch_size=8)
    >>> control = sj.negative_control(loss_fn, jnp.zeros(3), jnp.zeros((8, 1)), config, key=0, progress=False)
    >>> control.passed
    True
    """
    control = _control_config(config)
    chains = run_chains(
        loss_fn, [params], data, control, key=key, masks=None if component is None else [component],
        progress=progress and "negative control",
    )
    num_coordinates = int(chains.num_sampled[0])
    variance_trace = np.asarray(chains.distance[0], np.float64) ** 2 / num_coordinates
    good = ~np.asarray(chains.diverged[0])
    frontdoor.report_divergence(chains.diverged_at[0], what="the negative control", result=chains)
    trace = variance_trace[good]
    measured = float(trace.mean())
    ess, _, _ = traces.loss_diagnostics(trace)
    ess = ess if np.isfinite(ess) else float(trace.size)
    stderr = float(trace.std(ddof=1) / math.sqrt(max(ess, 1.0))) if trace.size >= 2 else float("nan")
    adaptive = control.preconditioner_spec.adaptive
    expected = 1.0 / control.localization if adaptive else ou_variance(control.step_size, control.localization)
    if adaptive:
        warnings.warn(
            "negative_control with an adaptive preconditioner compares against 1/γ, the continuous-time variance; "
            "the per-coordinate step sizes make the exact discrete variance differ slightly.",
            UserWarning,
            stacklevel=2,
        )
    return NegativeControlResult(
        measured_variance=measured,
        expected_variance=float(expected),
        stderr=stderr,
        z_score=float((measured - expected) / stderr) if stderr > 0 else float("inf"),
        relative_error=float(measured / expected - 1.0),
        num_coordinates=num_coordinates,
        variance_trace=variance_trace,
        chains=chains,
    )
