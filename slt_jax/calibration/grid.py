"""The settings grid: every (nβ, γ, ε) to try, and running them as ONE ``run_chains`` call.

The settings are configurations of one compiled program (``grid=``), grouped only under the
config's ``memory_budget``; their health figures are ``slt_jax.diagnostics.trace_metrics`` of the
per-draw nβ(L - L*) (``slt_jax.traces.llc_draws``) after the calibration burn-in.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np

from slt_jax import diagnostics, traces
from slt_jax.calibration.curvature import step_size_grid
from slt_jax.config import SamplerConfig
from slt_jax.sampler import ChainsResult, Recording, run_chains
from slt_jax.types import Batch, LossFn, Mask, Params

__all__ = ["Problem", "Axes", "Grid", "GridRun", "settings_grid", "run_grid"]


class Problem(NamedTuple):
    """The posterior a calibration samples: ``loss_fn`` at ``params`` on ``data``, over ``component``."""

    loss_fn: LossFn
    params: Params
    data: Batch
    component: Mask | None = None


class Axes(NamedTuple):
    """The values to try: ε (None: ``default_step_sizes`` of ``num_step_sizes`` per (nβ, γ)), nβ and γ."""

    step_sizes: np.ndarray | None
    nbetas: np.ndarray
    localizations: np.ndarray
    num_step_sizes: int = 6


class Grid(NamedTuple):
    """The settings, ``(G,)`` each, grouped by (nβ, γ), ε ascending within a group."""

    step_size: np.ndarray
    nbeta: np.ndarray
    localization: np.ndarray

    @property
    def size(self) -> int:
        return int(self.step_size.size)

    def groups(self) -> dict[tuple[float, float], list[int]]:
        """``{(nβ, γ): setting indices}``, ε ascending within each group, groups in grid order."""
        groups: dict = {}
        for i in np.argsort(self.step_size, kind="stable"):
            groups.setdefault((self.nbeta[i], self.localization[i]), []).append(int(i))
        return groups


class GridRun(NamedTuple):
    """The grid's chains and health: ``metrics`` ``{name: (G,)}``, ``llc_per_chain`` ``(G, C)`` (NaN
    for diverged chains) and the per-draw nβ(L - L*) ``draws`` ``(G, C, D)``."""

    chains: ChainsResult
    draws: np.ndarray
    metrics: dict
    llc_per_chain: np.ndarray


def settings_grid(problem: Problem, config: SamplerConfig, axes: Axes, *, key, bias_tolerance: float) -> tuple[Grid, int]:
    """(every (nβ, γ) of ``axes`` with its step sizes (given, or ``default_step_sizes`` at that nβ, γ),
    the chain-steps of the pilot chains that anchored them); ``config`` is the run's."""
    rows, pilot_chain_steps = [], 0
    for nbeta, localization in itertools.product(axes.nbetas, axes.localizations):
        step_sizes = axes.step_sizes
        if step_sizes is None:
            step_sizes, spent = step_size_grid(
                problem.loss_fn, problem.params, problem.data,
                config.replace(nbeta=float(nbeta), localization=float(localization)), key=key,
                component=problem.component, num_step_sizes=axes.num_step_sizes, bias_tolerance=bias_tolerance,
            )
            pilot_chain_steps += spent
        rows += [(float(e), float(nbeta), float(localization)) for e in np.atleast_1d(step_sizes)]
    return Grid(*(np.array(column) for column in zip(*rows))), pilot_chain_steps


def run_grid(problem: Problem, schedule: SamplerConfig, grid: Grid, *, key, loss_estimator: str, burnin_draws: int,
             progress: bool) -> GridRun:
    """Runs every setting as a configuration of one ``run_chains`` call and measures its health."""
    component = problem.component
    chains = run_chains(
        problem.loss_fn, [problem.params], problem.data, schedule, key=key, masks=None if component is None else [component],
        grid=grid._asdict(), recording=Recording(**traces.estimator_options(loss_estimator)),
        progress=progress and "calibration",
    )
    draws = traces.llc_draws(chains, loss_estimator)  # (G, C, D) nβ(L - L*)
    adaptive = schedule.preconditioner_spec.adaptive
    per_setting = [
        diagnostics.trace_metrics(
            draws[i], nbeta=grid.nbeta[i], diverged=chains.diverged[i], mala_acceptance=chains.mala_acceptance[i],
            grad_norm=chains.grad_norm[i], step_size=None if adaptive else grid.step_size[i], burnin_draws=burnin_draws,
        )
        for i in range(grid.size)
    ]
    metrics = {k: np.array([m[k] for m in per_setting]) for k in per_setting[0] if k != "note"}
    llc_per_chain = np.where(chains.diverged, np.nan, draws[:, :, burnin_draws:].mean(axis=2))
    return GridRun(chains, draws, metrics, llc_per_chain)
