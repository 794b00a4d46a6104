"""The one schedule rule: which chains a calibration runs for a given run's ``SamplerConfig``.

``calibrate`` and ``auto_step_size`` (``estimate_llc(step_size="auto")``) both call
``calibration_schedule`` on the run's config, so a calibration judges the same chains whichever
way it was asked for.
"""

from __future__ import annotations

import numpy as np

from slt_jax.config import SamplerConfig

__all__ = ["calibration_schedule", "MAX_CALIBRATION_DRAWS", "MIN_CALIBRATION_DRAWS", "MIN_BUDGET_DRAWS",
           "MAX_BUDGET_CHAINS", "CALIBRATION_MALA_EVERY", "CALIBRATION_SCHEME"]

# Calibration chains are short: the config's steps, at most this many, all recorded (one step apart).
MAX_CALIBRATION_DRAWS = 2000
MIN_CALIBRATION_DRAWS = 8
# MALA acceptance of calibration chains at least every this many draws (it is one of the checks).
CALIBRATION_MALA_EVERY = 10
# The checks compare chains (R-hat, paired differences): a one-chain run is calibrated with two.
MIN_CALIBRATION_CHAINS = 2
# Under a budget (``calibrate(budget=...)``, 1.0 for ``step_size="auto"``): at most this many chains per
# setting (longer chains show more of the approach to equilibrium than more chains do), and at least
# this many steps per chain whatever the budget (below it the checks say little).
MAX_BUDGET_CHAINS = 4
MIN_BUDGET_DRAWS = 200
# The scheme of calibration chains whose config names none, which the recommended config then names
# (docs/conventions.md §4): with Euler's step, the first-order step-size bias gave auto's estimates
# at degenerate points a sign.
CALIBRATION_SCHEME = "leimkuhler-matthews"


def check_config(config) -> SamplerConfig:
    """The one ``SamplerConfig`` type check of the calibration entry points."""
    if not isinstance(config, SamplerConfig):
        raise TypeError(
            f"config must be a slt_jax.SamplerConfig, got {type(config).__name__}; e.g. "
            "sj.SamplerConfig(step_size='auto', localization=1.0, num_draws=1000, batch_size=100)."
        )
    return config


def check_fraction(value, name: str, low: float, high: float) -> float:
    """``value`` as a float in the open interval (low, high), else a ``ValueError`` naming it."""
    if np.ndim(value) != 0 or not low < value < high:
        raise ValueError(f"{name}={value!r} must be a number in ({low}, {high}).")
    return float(value)


def calibration_schedule(config: SamplerConfig, *, num_settings: int = 1, budget: float | None = None,
                         spent_chain_steps: int = 0) -> tuple[SamplerConfig, float]:
    """The calibration chains' ``SamplerConfig`` and default burn-in fraction for a run's ``config``.

    The chains record every step (``num_burnin=0``, one step between draws) for the config's
    ``num_steps`` steps, at most ``MAX_CALIBRATION_DRAWS`` (a long main-run schedule gives short
    calibration chains); the leading ``num_burnin / num_steps`` of them, clipped to [0.2, 0.5]
    (0.5 without burn-in), count as burn-in. MALA acceptance is taken at least every 10 draws.
    At least 2 chains run (the checks compare chains); ``num_chains`` beyond that, ``batch_size``,
    ``preconditioner``, ``weight_decay`` and the rest are the config's. The ``scheme`` is the config's,
    or ``CALIBRATION_SCHEME`` (Leimkuhler-Matthews) where it names none.

    With a ``budget`` (the calibration's chain-steps as a multiple of the run's, ``num_chains x
    num_steps``; ``spent_chain_steps`` of it already went to pilot chains) the ``num_settings``
    settings share what is left: at most ``MAX_BUDGET_CHAINS`` chains each, and as many steps as fit,
    at least ``MIN_BUDGET_DRAWS`` (so a run shorter than that floor gets a calibration dearer than
    itself; ``settings["cost"]`` says so).

    >>> import slt_jax as sj
    >>> run = sj.SamplerConfig(step_size="auto", localization=1.0, num_chains=1, num_burnin=1000,
    ...                        num_draws=3000, batch_size=100)
    >>> schedule, burnin_fraction = sj.calibration.calibration_schedule(run)
    >>> schedule.num_draws, schedule.num_burnin, schedule.num_chains, burnin_fraction
    (2000, 0, 2, 0.25)
    >>> run = run.replace(num_chains=8, num_burnin=9000, num_draws=1000)      # 80,000 chain-steps
    >>> schedule, _ = sj.calibration.calibration_schedule(run, num_settings=6, budget=1.0, spent_chain_steps=4000)
    >>> schedule.num_chains, schedule.num_draws                                # 6 x 4 x 2000 <= 76,000
    (4, 2000)
    """
    check_config(config)
    num_draws = min(config.num_steps, MAX_CALIBRATION_DRAWS)
    if num_draws < MIN_CALIBRATION_DRAWS:
        raise ValueError(
            f"num_draws={config.num_draws} (num_steps={config.num_steps}): calibration needs at least "
            f"{MIN_CALIBRATION_DRAWS} steps per chain; use num_draws >= 500."
        )
    num_chains = max(config.num_chains, MIN_CALIBRATION_CHAINS)
    if budget is not None:
        num_chains = min(num_chains, MAX_BUDGET_CHAINS)
        left = budget * config.num_chains * config.num_steps - spent_chain_steps
        affordable = int(left // (max(int(num_settings), 1) * num_chains))
        num_draws = min(num_draws, max(affordable, min(MIN_BUDGET_DRAWS, num_draws)))
    mala_every = min(config.mala_every, CALIBRATION_MALA_EVERY) or CALIBRATION_MALA_EVERY
    schedule = config.replace(
        num_chains=num_chains, num_draws=num_draws, num_burnin=0, num_steps_between_draws=1, mala_every=mala_every,
        scheme=config.scheme or CALIBRATION_SCHEME,
    )
    burnin_fraction = float(np.clip(config.num_burnin / config.num_steps, 0.2, 0.5)) if config.num_burnin else 0.5
    return schedule, burnin_fraction
