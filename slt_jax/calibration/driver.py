"""``calibrate``: validate, build the grid, run it, judge it, recommend, assemble the result."""

from __future__ import annotations

import time
import warnings
from typing import NamedTuple

import jax
import numpy as np

from slt_jax._src import validation
from slt_jax.calibration.grid import Axes, Grid, GridRun, Problem, run_grid, settings_grid
from slt_jax.calibration.judge import Recommendation, Rule, Verdict, judge, recommend
from slt_jax.calibration.result import CalibrationResult
from slt_jax.calibration.schedule import calibration_schedule, check_fraction
from slt_jax.config import SamplerConfig
from slt_jax.restriction import restrict
from slt_jax.types import Batch, KeyLike, LossFn, Mask, Params

__all__ = ["calibrate"]


def _rule(config: SamplerConfig, n: int, default_fraction: float, burnin_fraction, mala_threshold, bias_tolerance,
          target_nbeta, num_coordinates: int) -> Rule:
    burnin_fraction = default_fraction if burnin_fraction is None else burnin_fraction
    rule = Rule(
        num_coordinates=num_coordinates,
        burnin_fraction=check_fraction(burnin_fraction, "burnin_fraction", -1e-12, 0.9),
        mala_threshold=check_fraction(mala_threshold, "mala_threshold", 0.0, 1.0),
        bias_tolerance=check_fraction(bias_tolerance, "bias_tolerance", 0.0, 1.0),
        target_nbeta=config.nbeta_for(n) if target_nbeta is None else float(target_nbeta),
    )
    if not rule.target_nbeta > 0:
        raise ValueError(f"target_nbeta={target_nbeta!r} must be > 0 (the default is the config's nbeta, or n / log n).")
    return rule


def _axes(config: SamplerConfig, n: int, step_sizes, nbetas, localizations, num_step_sizes) -> Axes:
    nbetas = validation.check_scalar_grid(
        [config.nbeta_for(n)] if nbetas is None else nbetas, "nbetas", allow_zero=False,
        fix="The LLC needs nbeta > 0; the default is n / log n.",
    )
    localizations = validation.check_scalar_grid(
        [config.localization] if localizations is None else localizations, "localizations", allow_zero=True,
        fix="Typical values are 1 to 1000.",
    )
    if step_sizes is not None:
        step_sizes = validation.check_scalar_grid(step_sizes, "step_sizes", allow_zero=False,
                                                  fix="Or pass None for an automatic grid.")
        step_sizes = np.sort(np.atleast_1d(step_sizes))
    return Axes(step_sizes, np.atleast_1d(nbetas), np.atleast_1d(localizations), num_step_sizes)


# Checks that a smaller step size fixes: a grid whose every setting fails one of them (or diverged) sits
# too high, and a default grid is extended downward once (``_lower_grid``).
_STEP_TOO_LARGE = ("bias", "mala")


def _lower_grid(grid: Grid, verdict: Verdict, divergent: np.ndarray, rule: Rule, num_step_sizes: int) -> Grid | None:
    """A factor-2 grid below ``grid`` when every setting of its one (nβ, γ) group diverged or failed a
    check that a smaller ε fixes (``_STEP_TOO_LARGE``), else None. Its top is the smallest ε times
    tolerance / predicted bias of that setting (the bias is first order in ε), at most half of it."""
    if len(grid.groups()) != 1:
        return None
    failing = [divergent[i] or bool(set(verdict.problems[i]) & set(_STEP_TOO_LARGE)) for i in range(grid.size)]
    if not all(failing):
        return None
    smallest = int(np.argmin(grid.step_size))
    bias = verdict.metrics["relative_bias"][smallest]
    shrink = 0.5 if not np.isfinite(bias) or bias <= 0 else min(0.5, rule.bias_tolerance / bias)
    top = grid.step_size[smallest] * max(shrink, 2.0 ** -num_step_sizes)
    step_size = top * 2.0 ** -np.arange(num_step_sizes)[::-1]
    return Grid(step_size, np.full(num_step_sizes, grid.nbeta[0]), np.full(num_step_sizes, grid.localization[0]))


class _Trial(NamedTuple):
    """One grid's calibration chains, run and judged: its schedule, burn-in draws, run, verdict,
    which settings diverged and the recommendation."""

    schedule: SamplerConfig
    burnin_draws: int
    run: GridRun
    verdict: Verdict
    divergent: np.ndarray
    choice: Recommendation


def _trial(problem: Problem, config: SamplerConfig, grid: Grid, rule: Rule, budget, spent_chain_steps: int, key,
           loss_estimator: str, progress: bool) -> _Trial:
    """Runs ``grid`` within what is left of the budget, judges it and recommends a setting."""
    schedule, _ = calibration_schedule(config, num_settings=grid.size, budget=budget, spent_chain_steps=spent_chain_steps)
    burnin_draws = int(rule.burnin_fraction * schedule.num_draws)
    run = run_grid(problem, schedule, grid, key=key, loss_estimator=loss_estimator, burnin_draws=burnin_draws, progress=progress)
    verdict = judge(run.metrics, run.llc_per_chain, grid, rule, adaptive=schedule.preconditioner_spec.adaptive)
    divergent = np.asarray(run.chains.diverged).any(axis=1)
    return _Trial(schedule, burnin_draws, run, verdict, divergent, recommend(grid, verdict, divergent, rule, burnin_draws))


class _Context(NamedTuple):
    """What the result records about the call besides the grid and its verdict."""

    config: SamplerConfig
    started: float
    burnin_draws: int
    loss_estimator: str
    step_size_grid: str
    pilot_chain_steps: int
    budget: float | None


def _settings(run: GridRun, grid: Grid, choice: Recommendation, rule: Rule, context: _Context) -> tuple[str, dict]:
    """(the reason with the measured cost, the result's ``settings``)."""
    config, schedule, burnin_draws = context.config, run.chains.config, context.burnin_draws
    seconds = time.perf_counter() - context.started
    grid_chain_steps = int(grid.size * schedule.num_chains * schedule.num_steps)
    calibration_chain_steps = grid_chain_steps + context.pilot_chain_steps
    # The run the calibration serves: the config's chains and schedule, with the burn-in the choice needs.
    run_chain_steps = int(config.num_chains * (config.num_steps + max(choice.num_burnin - config.num_burnin, 0)))
    relative = calibration_chain_steps / run_chain_steps
    reason = choice.reason + (
        f" Cost: {seconds:.1f} s ({run.chains.compile_seconds:.1f} s compiling); {grid.size} settings x "
        f"{schedule.num_chains} chains x {schedule.num_steps} steps + {context.pilot_chain_steps} pilot chain-steps = "
        f"{relative:.2f}x the {run_chain_steps} chain-steps of the run"
        + ("" if context.budget is None else f" (budget {context.budget:g}x)") + "."
    )
    cost = dict(seconds=seconds, compile_seconds=float(run.chains.compile_seconds), grid_chain_steps=grid_chain_steps,
                pilot_chain_steps=int(context.pilot_chain_steps), calibration_chain_steps=calibration_chain_steps,
                run_chain_steps=run_chain_steps, relative_chain_steps=relative, budget=context.budget)
    settings = dict(
        run.chains.settings, cost=cost, rule=rule.describe(), mala_threshold=rule.mala_threshold,
        bias_tolerance=rule.bias_tolerance, burnin_fraction=rule.burnin_fraction, loss_estimator=context.loss_estimator,
        target_nbeta=rule.target_nbeta, step_size_grid=context.step_size_grid, recommended_num_burnin=int(choice.num_burnin),
        validated_num_burnin=burnin_draws, validated_num_draws=schedule.num_draws - burnin_draws,
    )
    return reason, settings


def _result(run: GridRun, grid: Grid, verdict: Verdict, choice: Recommendation, reason: str, settings: dict,
            context: _Context) -> CalibrationResult:
    return CalibrationResult(
        step_size=grid.step_size, nbeta=grid.nbeta, localization=grid.localization, metrics=verdict.metrics,
        llc_per_chain=run.llc_per_chain, diverged=np.asarray(run.chains.diverged), problems=verdict.problems,
        passed=verdict.passed, equilibrated=verdict.equilibrated, recommended_index=int(choice.index), reason=reason,
        init_loss=float(run.chains.init_loss[0]), burnin_draws=context.burnin_draws, config=context.config,
        chains=run.chains, settings=settings,
    )


def calibrate(
    loss_fn: LossFn, params: Params, data: Batch, config: SamplerConfig, *, key: KeyLike,
    component: Mask | None = None,
    # the grid (calibration.grid.Axes)
    step_sizes=None, nbetas=None, localizations=None, num_step_sizes: int = 6,
    budget: float | None = 1.0,
    # the judging rule (calibration.judge.Rule)
    burnin_fraction: float | None = None, mala_threshold: float = 0.9, bias_tolerance: float = 0.05,
    target_nbeta: float | None = None,
    loss_estimator: str = "paired",
    progress: bool = True,
) -> CalibrationResult:
    """Runs a grid of short chains in one ``run_chains`` call and recommends a setting (package docstring).

    Args:
        loss_fn, params, data, key, component: as for ``slt_jax.estimate_llc``.
        config: the run's ``SamplerConfig``. Its ``num_chains`` (at least 2), ``batch_size``,
            ``preconditioner``, ``scheme`` (None: ``"leimkuhler-matthews"``, which the recommended
            config then names), ``weight_decay`` and ``memory_budget`` are the calibration chains';
            their schedule is ``calibration_schedule(config, num_settings, budget, pilots)`` (short: at
            most 2000 recorded steps, and within the budget).
            Its ``step_size`` is not used (the grid's are); its ``nbeta`` and ``localization`` are the
            defaults of ``nbetas`` and ``localizations``.
        step_sizes: ε values (tried with every (nβ, γ)), or None for ``default_step_sizes`` per (nβ, γ).
        nbetas: nβ values; None uses the config's (n / log n when ``config.nbeta`` is None).
        localizations: γ values; None uses the config's.
        burnin_fraction: leading fraction of the calibration draws treated as burn-in by the metrics
            (default: the config's ``num_burnin / num_steps`` clipped to [0.2, 0.5], 0.5 without one).
        mala_threshold: minimum mean MALA acceptance of a passing setting on a two-coordinate
            posterior; on d coordinates ``diagnostics.mala_requirement(mala_threshold, d)``.
        bias_tolerance: maximum predicted relative step-size bias of a passing setting.
        target_nbeta: the nβ to prefer (default: the config's, n / log n when None).
        num_step_sizes: grid length when ``step_sizes`` is None (factor-2 steps below the top).
        budget: the calibration's chain-steps (pilot chains included) at most this multiple of the
            run's (``config.num_chains x config.num_steps``): the settings share it, at most 4 chains
            each and at least 200 steps per chain. None: ``min(num_steps, 2000)`` steps whatever
            they cost. ``settings["cost"]`` reports both figures.
        loss_estimator: ``"paired"`` (default: L_B(w) - L_B(w*) + L_n(w*), which cancels the batch
            noise that otherwise swamps short chains; one extra forward pass per draw) or
            ``"minibatch"`` (``slt_jax.traces``).
        progress: tqdm progress bar.

    Returns:
        A ``CalibrationResult``; ``.recommended`` is the chosen ``SamplerConfig``, ``.reason`` why.
        Warns (``RuntimeWarning``) when no setting passed and the recommendation is a fallback, or
        when every setting diverged.

    >>> import jax.numpy as jnp, slt_jax as sj
    >>> loss_fn = lambda w, batch: 0.5 * (batch["y"] - batch["x"] @ w) ** 2
    >>> data = {"x": jnp.eye(4).repeat(50, axis=0), "y": jnp.zeros(200)}
    >>> config = sj.SamplerConfig(step_size="auto", nbeta=100.0, localization=1.0, num_draws=500, batch_size=200)
    >>> result = sj.calibrate(loss_fn, jnp.zeros(4), data, config, key=0, num_step_sizes=4, progress=False)
    >>> result.recommended.step_size in result.step_size
    True
    """
    started = time.perf_counter()
    n = validation.check_data(data)
    validation.check_params(params)
    schedule, default_fraction = calibration_schedule(config)  # validates config
    scheme_chosen = config.scheme is None
    config = config.replace(scheme=schedule.scheme)  # the one place that resolves it
    num_coordinates = restrict(validation.check_masks(component, params, name="component"), params).num_sampled
    rule = _rule(config, n, default_fraction, burnin_fraction, mala_threshold, bias_tolerance, target_nbeta,
                 num_coordinates)
    axes = _axes(config, n, step_sizes, nbetas, localizations, num_step_sizes)
    if loss_estimator not in ("paired", "minibatch"):
        raise ValueError(f"loss_estimator={loss_estimator!r}; use 'paired' or 'minibatch' for calibration.")
    if budget is not None and not (np.ndim(budget) == 0 and budget > 0):
        raise ValueError(f"budget={budget!r} must be a number > 0 (calibration chain-steps per run chain-step), or None.")
    key = validation.as_key(key)

    problem = Problem(loss_fn, params, data, component)
    grid, pilot_chain_steps = settings_grid(problem, config, axes, key=key, bias_tolerance=rule.bias_tolerance)
    trial = _trial(problem, config, grid, rule, budget, pilot_chain_steps, key, loss_estimator, progress)
    lower = None
    if trial.choice.fallback and step_sizes is None:
        lower = _lower_grid(grid, trial.verdict, trial.divergent, rule, axes.num_step_sizes)
    if lower is not None:  # the pilot chains misjudged the scales (a degenerate point): once more, lower
        pilot_chain_steps += int(grid.size * trial.schedule.num_chains * trial.schedule.num_steps)
        first, grid = grid, lower
        trial = _trial(problem, config, grid, rule, budget, pilot_chain_steps, jax.random.fold_in(key, 1), loss_estimator, progress)
        extended = (f"The first grid ({first.step_size.min():.3g} to {first.step_size.max():.3g}) had no passing setting: every "
                    f"one diverged or failed the bias or MALA check, so the grid was extended below it (its chain-steps "
                    f"count among the pilot chain-steps). ")
        trial = trial._replace(choice=trial.choice._replace(reason=extended + trial.choice.reason))
    run, verdict, choice, burnin_draws = trial.run, trial.verdict, trial.choice, trial.burnin_draws
    if choice.fallback:
        warnings.warn(choice.reason, RuntimeWarning, stacklevel=2)
    context = _Context(config, started, burnin_draws, loss_estimator, "given" if step_sizes is not None else "default_step_sizes",
                       pilot_chain_steps, None if budget is None else float(budget))
    reason, settings = _settings(run, grid, choice, rule, context)
    if scheme_chosen:
        reason += (f" Scheme: {config.scheme} (the config named none): its step-size bias is second order in ε, "
                   "so the bias figures above, Euler's, bound it from above (docs/conventions.md §1, §4).")
    return _result(run, grid, verdict, choice, reason, settings, context)
