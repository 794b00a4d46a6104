"""``auto_step_size``: ``estimate_llc(step_size="auto")`` calibrates ε at the run's nβ and γ."""

from __future__ import annotations

import warnings

import jax

from slt_jax import traces
from slt_jax._src import validation
from slt_jax.calibration.driver import calibrate
from slt_jax.calibration.result import CalibrationResult
from slt_jax.config import SamplerConfig
from slt_jax.sampler import DivergenceError
from slt_jax.types import Batch, KeyLike, LossFn, Mask, Params

__all__ = ["auto_step_size"]

# The calibration's key is folded from the run's, so the choice does not select on the run's noise.
_CALIBRATION_KEY = 0x5EED


def auto_step_size(
    loss_fn: LossFn, params: Params, data: Batch, config: SamplerConfig, *, key: KeyLike,
    component: Mask | None = None,
    loss_estimator: str = "minibatch",
    progress: bool = True,
) -> tuple[SamplerConfig, CalibrationResult]:
    """``estimate_llc`` with ``step_size="auto"``: calibrates ε at the config's nβ and γ.

    This is ``calibrate(config)`` with its defaults, so the calibration chains follow the same
    schedule rule (``calibration_schedule``: the run's steps, at most 2000, all recorded, 2 to 4
    chains, the run's burn-in fraction clipped to [0.2, 0.5], pilot and grid chains together within
    the run's chain-steps, ``budget=1``), with a key independent of the main
    run's (so the choice does not select on the main run's noise). Its chains use the ``"paired"``
    loss estimator whatever the main run's ``loss_estimator`` (which is only validated here): short
    chains need its control variate. Warns when the config's ``num_burnin`` is shorter than the
    burn-in the chosen step size needs (``recommended.num_burnin``).

    Returns:
        ``(config.replace(step_size=chosen, scheme=the calibration's), CalibrationResult)``: the
        scheme is the config's, or ``"leimkuhler-matthews"`` where it names none (``calibrate``).
        Raises ``DivergenceError`` when every calibration setting diverged.
    """
    traces.estimator_options(loss_estimator)
    calibration_key = jax.random.fold_in(validation.as_key(key), _CALIBRATION_KEY)
    result = calibrate(loss_fn, params, data, config, key=calibration_key, component=component, loss_estimator="paired",
                       progress=progress)
    if result.recommended_index < 0:
        raise DivergenceError("step_size='auto': every calibration setting diverged. " + result.reason, result)
    chosen = result.recommended
    if chosen.num_burnin > config.num_burnin:
        warnings.warn(
            f"step_size='auto' chose {chosen.step_size:.3g}, whose chains need about {chosen.num_burnin} burn-in "
            f"steps to level off; num_burnin={config.num_burnin} is shorter, so the LLC may be underestimated. "
            "Increase num_burnin.",
            RuntimeWarning,
            stacklevel=3,
        )
    return config.replace(step_size=chosen.step_size, scheme=chosen.scheme), result
