"""The judging rule: which settings are candidates, which levelled off, and which one to recommend.

Pure functions of a grid's health figures (no sampling, no warnings), so the rule can be checked on
synthetic metrics. ``RULE`` states it in one paragraph; the package docstring gives the reasons.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from slt_jax import diagnostics
from slt_jax.calibration.grid import Grid

__all__ = ["RULE", "REQUIRED", "EQUILIBRIUM", "Rule", "Verdict", "Recommendation", "judge", "recommend",
           "empirical_bias", "too_slow", "travelled_bias"]

RULE = (
    "Candidates: no divergence, no spikes, <= 50% of draws below L(w*), MALA acceptance >= {mala:.3g} ({reference:.2f} "
    "on two coordinates, scaled to {dimension} as for Gaussian directions) and predicted "
    "step-size bias <= {bias:.0%} of the reference LLC. Among (nbeta, localization) groups with a candidate and a "
    "setting that levels off within the burn-in: nbeta closest to {target:.4g}, then the smallest localization, "
    "then the largest candidate step size, with a burn-in scaled by 1/step_size."
)
# Checks a setting must pass to be recommended (short calibration chains have a low ESS by design).
REQUIRED = ("divergence", "spikes", "below_init", "mala", "bias")
# Checks that show the chains levelled off within the calibration run (equilibration time ∝ 1/ε).
EQUILIBRIUM = ("divergence", "rise", "rhat", "plateau", "equilibration")


class Rule(NamedTuple):
    """The rule's parameters (validated by ``calibrate``). ``mala_threshold`` is stated for two
    coordinates; ``mala_required`` is its value on the ``num_coordinates`` sampled."""

    mala_threshold: float = 0.9
    bias_tolerance: float = 0.05
    burnin_fraction: float = 0.5
    target_nbeta: float = 1.0
    num_coordinates: int = 2

    @property
    def mala_required(self) -> float:
        return diagnostics.mala_requirement(self.mala_threshold, self.num_coordinates)

    def describe(self) -> str:
        return RULE.format(mala=self.mala_required, reference=self.mala_threshold, dimension=self.num_coordinates,
                           bias=self.bias_tolerance, target=self.target_nbeta)


class Verdict(NamedTuple):
    """The judged grid: ``metrics`` with ``empirical_bias`` (and, for plain SGLD, ``reference_llc``)
    added and ``relative_bias`` set by the rule; ``problems`` per setting; ``passed`` and
    ``equilibrated`` ``(G,)`` bool."""

    metrics: dict
    problems: list[list[str]]
    passed: np.ndarray
    equilibrated: np.ndarray


class Recommendation(NamedTuple):
    """``index`` of the chosen setting (-1: none), ``reason``, the burn-in steps it needs, and
    whether it is a ``fallback`` (no setting passed; the caller warns)."""

    index: int
    reason: str
    num_burnin: int
    fallback: bool


def empirical_bias(step_size, groups, llc_per_chain, llc_mean) -> np.ndarray:
    """Relative Richardson bias estimate of each ε from the next smaller ε of its group (paired)."""
    out = np.full(step_size.shape, np.nan)
    for members in groups.values():
        for smaller, larger in zip(members[:-1], members[1:]):
            paired = llc_per_chain[larger] - llc_per_chain[smaller]
            paired = paired[np.isfinite(paired)]
            if paired.size and step_size[larger] > step_size[smaller]:
                ratio = step_size[larger] / (step_size[larger] - step_size[smaller])
                out[larger] = paired.mean() * ratio / max(abs(llc_mean[larger]), 1e-12)
    return out


def too_slow(groups, llc_per_chain, predicted_bias, bias_tolerance) -> list[int]:
    """Settings whose chains had not levelled off: their bias-corrected LLC falls significantly short
    of the next larger step size's (paired over chains). Equilibration time scales as 1/ε, so every
    smaller step size of the group is too slow as well."""
    slow = []
    for members in groups.values():
        for k in range(len(members) - 2, -1, -1):
            i, j = members[k], members[k + 1]
            difference = (llc_per_chain[j] - predicted_bias[j]) - (llc_per_chain[i] - predicted_bias[i])
            difference = difference[np.isfinite(difference)]
            if difference.size < 2:
                continue
            excess = difference.mean()
            stderr = difference.std(ddof=1) / math.sqrt(difference.size)
            level = abs(np.nanmean(llc_per_chain[j]) - predicted_bias[j])
            if not predicted_bias[j] <= 0.2 * level:
                continue  # beyond first order in ε the predicted bias is too low: no fair comparison
            if excess > max(2.0 * stderr, bias_tolerance * level):
                slow += members[: k + 1]
                break
    return slow


def travelled_bias(step_size: np.ndarray, groups: dict, predicted_bias: np.ndarray) -> np.ndarray:
    """The predicted bias ε·max_{ε' >= ε} (bias(ε')/ε') over the group's settings at ε and above.

    (ε/8)·nβ²·E||g_B||² reads the gradient norms where the chains went, and short calibration chains
    have not gone as far as the run will: on deep linear networks E||g_B||² grew 1.5x between the
    calibration's draws and the run's at the same ε. Settings with larger ε travelled further in the
    same steps, so their E||g_B||² (bias/ε) is the better guess of what a longer run at ε sees.
    Divergent settings (NaN) are skipped.
    """
    out = np.array(predicted_bias, float)
    for members in groups.values():
        members = np.array(members)
        per_step = np.asarray(predicted_bias, float)[members] / step_size[members]
        per_step = np.where(np.isfinite(per_step), per_step, -np.inf)
        reach = np.maximum.accumulate(per_step[::-1])[::-1]  # max over this ε and the larger ones
        out[members] = np.where(np.isfinite(out[members]) & np.isfinite(reach), step_size[members] * reach, out[members])
    return out


def _reference_bias(metrics: dict, problems: list, grid: Grid, equilibrated: np.ndarray, bias_tolerance: float):
    """(metrics with ``reference_llc``, ``travelled_bias`` and ``relative_bias``, problems with
    ``bias`` re-judged): the travelled bias (``travelled_bias``) relative to the group's reference LLC
    (the median bias-corrected LLC of its equilibrated settings), since the LLC of a step too small to
    level off is itself too low."""
    groups = grid.groups()
    travelled = travelled_bias(grid.step_size, groups, metrics["predicted_bias"])
    reference = np.full(len(problems), np.nan)
    for members in groups.values():
        members = np.array(members)
        good = members[equilibrated[members]]
        pool = good if good.size else members[np.isfinite(metrics["llc_mean"][members])]
        if pool.size:
            reference[members] = np.median(metrics["llc_mean"][pool] - metrics["predicted_bias"][pool])
    with np.errstate(invalid="ignore"):
        relative = travelled / np.maximum(np.abs(reference), 1e-12)
        over = relative > bias_tolerance
    metrics = dict(metrics, reference_llc=reference, travelled_bias=travelled, relative_bias=relative)
    problems = [[p for p in found if p != "bias"] + (["bias"] if too_large else []) for found, too_large in zip(problems, over)]
    return metrics, problems


def judge(metrics: dict, llc_per_chain: np.ndarray, grid: Grid, rule: Rule, *, adaptive: bool) -> Verdict:
    """The problems of every setting, and which are candidates (``passed``) and ``equilibrated``.

    ``adaptive`` (an RMSProp preconditioner: no single ε) judges the bias by the empirical Richardson
    estimate instead of the predicted one.
    """
    groups = grid.groups()
    metrics = dict(metrics, empirical_bias=empirical_bias(grid.step_size, groups, llc_per_chain, metrics["llc_mean"]))
    if adaptive:
        metrics["relative_bias"] = metrics["empirical_bias"].copy()
    thresholds = {"mala": rule.mala_required, "bias": rule.bias_tolerance}
    problems = []
    for i in range(grid.size):
        found = [f.check for f in diagnostics.problems({k: metrics[k][i] for k in metrics}, thresholds=thresholds)]
        if metrics["plateau_fraction"][i] > max(rule.burnin_fraction, 0.1) and "plateau" not in found:
            found.append("plateau")
        problems.append(found)
    if not adaptive:
        for i in too_slow(groups, llc_per_chain, metrics["predicted_bias"], rule.bias_tolerance):
            problems[i].append("equilibration")
    equilibrated = np.array([not set(p) & set(EQUILIBRIUM) for p in problems])
    if not adaptive:
        metrics, problems = _reference_bias(metrics, problems, grid, equilibrated, rule.bias_tolerance)
    passed = np.array([not set(p) & set(REQUIRED) for p in problems])
    return Verdict(metrics, problems, passed, equilibrated)


def _chosen_reason(grid: Grid, verdict: Verdict, choice: int, rule: Rule, levelled: str) -> str:
    m = {k: v[choice] for k, v in verdict.metrics.items()}
    if "reference_llc" in m:
        bias = (f"predicted step-size bias {m['relative_bias']:.1%} <= {rule.bias_tolerance:.0%} of the reference LLC "
                f"{m['reference_llc']:.4g} (at the largest gradient norms of this or a larger step size); ")
    else:
        bias = f"empirical (Richardson) step-size bias {m['relative_bias']:.1%} <= {rule.bias_tolerance:.0%}; "
    reason = (
        f"Recommended step_size={grid.step_size[choice]:.3g}, nbeta={grid.nbeta[choice]:.4g}, "
        f"localization={grid.localization[choice]:.3g}: the largest step size with no divergence, no spikes, "
        f"{m['fraction_below']:.0%} of draws below L(w*), MALA acceptance {m['mala_acceptance']:.3f} >= "
        f"{rule.mala_required:.3g} and " + bias + f"{levelled}."
    )
    if np.unique(grid.localization).size > 1:
        reason += " It is at the smallest localization whose chains level off."
    if np.unique(grid.nbeta).size > 1:
        reason += f" Its nbeta is the one closest to {rule.target_nbeta:.4g}."
    return reason


def _choose(grid: Grid, verdict: Verdict, eligible: list, rule: Rule, burnin_steps: int) -> Recommendation:
    """Among eligible groups: nβ closest to the target, then the smallest γ, then the largest candidate ε."""
    groups, passed, equilibrated = grid.groups(), verdict.passed, verdict.equilibrated
    distance = np.abs(np.log(grid.nbeta) - math.log(rule.target_nbeta))
    best = min(distance[groups[g][0]] for g in eligible)
    group = min((g for g in eligible if np.isclose(distance[groups[g][0]], best)), key=lambda g: g[1])
    members = np.array(groups[group])
    candidates = members[passed[members]]
    choice = int(candidates[np.argmax(grid.step_size[candidates])])
    smallest_equilibrated = grid.step_size[members[equilibrated[members]]].min()
    if equilibrated[choice]:
        num_burnin = burnin_steps
        levelled = f"its chains level off within the calibration's {burnin_steps} burn-in steps"
    else:
        num_burnin = int(math.ceil(burnin_steps * smallest_equilibrated / grid.step_size[choice]))
        levelled = (
            f"it levels off more slowly than this short calibration shows (failed: "
            f"{', '.join(sorted(set(verdict.problems[choice]) & set(EQUILIBRIUM)))}); the equilibration time scales as "
            f"1/step_size, so use num_burnin >= {num_burnin} (step_size {smallest_equilibrated:.3g} levelled off "
            f"within {burnin_steps} steps)"
        )
    return Recommendation(choice, _chosen_reason(grid, verdict, choice, rule, levelled), num_burnin, False)


def _fallback(grid: Grid, verdict: Verdict, divergent: np.ndarray, burnin_steps: int) -> Recommendation:
    """No setting passed: the non-divergent one with the fewest failed checks, then the largest ε."""
    usable = np.flatnonzero(~divergent & np.isfinite(verdict.metrics["llc_mean"]))
    if not usable.size:
        reason = "Every setting diverged: no recommendation. Try smaller step sizes and larger localizations."
        return Recommendation(-1, reason, 0, True)
    # Failed required checks (bias, MALA, spikes, ...) grow with ε; failed equilibrium checks shrink
    # with it (the relaxation time scales as 1/ε). So: the fewest failed required checks, then the
    # fewest failed equilibrium checks, then the LARGEST step size (the one closest to levelling off),
    # then the lowest predicted bias. Preferring the smallest ε here would pick the chain that has
    # moved least from w*, whose LLC is the most underestimated.
    problems = verdict.problems
    required = np.array([len(set(problems[i]) & set(REQUIRED)) for i in usable])
    equilibrium = np.array([len(set(problems[i]) & set(EQUILIBRIUM)) for i in usable])
    bias = np.nan_to_num(verdict.metrics["relative_bias"][usable], nan=np.inf)
    choice = int(usable[np.lexsort((bias, -grid.step_size[usable], equilibrium, required))[0]])
    failed = sorted(set(problems[choice]) & (set(REQUIRED) | set(EQUILIBRIUM)))
    reason = (
        f"No setting passed every check. Fallback: step_size={grid.step_size[choice]:.3g}, nbeta={grid.nbeta[choice]:.4g}, "
        f"localization={grid.localization[choice]:.3g}, the largest non-divergent step size with the fewest failed checks "
        f"({', '.join(failed)}). Extend the grid (smaller step sizes, larger localizations, longer chains) before trusting it."
    )
    return Recommendation(choice, reason, burnin_steps, True)


def recommend(grid: Grid, verdict: Verdict, divergent: np.ndarray, rule: Rule, burnin_steps: int) -> Recommendation:
    """The recommended setting (``RULE``), or the fallback when no group has a candidate and an
    equilibrated setting; ``burnin_steps`` is the calibration's burn-in (its recorded steps)."""
    groups = grid.groups()
    eligible = [g for g, members in groups.items() if verdict.passed[members].any() and verdict.equilibrated[members].any()]
    if eligible:
        return _choose(grid, verdict, eligible, rule, burnin_steps)
    return _fallback(grid, verdict, divergent, burnin_steps)
