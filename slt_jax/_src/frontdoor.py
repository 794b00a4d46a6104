"""The estimators' front door: what every estimator checks first, and how every one reports divergence.

``admit`` validates, in Python and before anything compiles (STYLE.md habit 9), the inputs every
estimator shares: the ``SamplerConfig``, the checkpoints (one params pytree, or a list with their
training steps), the components (``{name: mask}``, None = the whole model) and the probes
(``{name: batch}``: the same checks as the training data, including a finite loss at w*, so probe
token ids >= vocab_size fail here instead of giving an all-NaN χ). It returns an ``Admission``;
the estimator body then says only what is particular to it.

``report_divergence`` is the one divergence report: per (checkpoint, component) cell a
``RuntimeWarning`` naming the chains and the fix, and ``DivergenceError`` when every chain of
every cell diverged.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import numpy as np

from slt_jax import stats, traces
from slt_jax._src import planning, validation
from slt_jax.config import SamplerConfig
from slt_jax.sampler import DivergenceError
from slt_jax.stats import ProbeLabels
from slt_jax.types import Batch, LossFn, Params

__all__ = [
    "Admission",
    "admit",
    "check_config",
    "check_checkpoints",
    "check_components",
    "check_probes",
    "report_divergence",
]

CONFIG_EXAMPLE = "sj.SamplerConfig(step_size=1e-4, localization=1.0, num_draws=1000, batch_size=100)"


class Admission(NamedTuple):
    """What ``admit`` hands the estimator body.

    Attributes:
        config: the validated ``SamplerConfig``.
        checkpoints: K params pytrees of one structure.
        steps: ``(K,)`` int training step of each checkpoint (default 0..K-1).
        components: M component names.
        masks: M validated masks (None = the whole model).
        labels: ``ProbeLabels`` of the probe rows (None without probes).
    """

    config: SamplerConfig
    checkpoints: list
    steps: np.ndarray
    components: list[str]
    masks: list
    labels: ProbeLabels | None


def check_config(config, estimator: str, *, covariance: bool = False) -> SamplerConfig:
    """A ``SamplerConfig``; ``covariance`` estimators (susceptibilities, BIF) also need a numeric
    ``step_size`` and at least 2 draws. Warns when one chain leaves the spread undefined."""
    if not isinstance(config, SamplerConfig):
        raise TypeError(f"config must be a slt_jax.SamplerConfig, got {type(config).__name__}; e.g. {CONFIG_EXAMPLE}.")
    if covariance and config.step_size == "auto":
        raise ValueError(
            f"{estimator} needs a numeric step_size: calibrate once (sj.calibrate(...).recommended) and pass that config."
        )
    if covariance and config.num_draws < 2:
        raise ValueError(f"num_draws={config.num_draws}: a covariance needs at least 2 draws per chain (use hundreds).")
    if config.nbeta is not None and config.nbeta <= 0 and estimator.startswith("estimate_llc"):
        raise ValueError(f"nbeta={config.nbeta!r} must be > 0 for an LLC (None uses n / log n).")
    if config.num_chains < 2 and estimator.startswith("estimate_"):
        what = "stderr" if covariance else "llc_std and R-hat"
        warnings.warn(f"num_chains=1: {what} need at least 2 chains and will be NaN.", stacklevel=validation.external_stacklevel())
    return config


def check_checkpoints(checkpoints, steps=None) -> tuple[list, np.ndarray]:
    """A non-empty list of params pytrees of one structure and one distinct int step per checkpoint."""
    if isinstance(checkpoints, Mapping) or not isinstance(checkpoints, (list, tuple)) or not checkpoints:
        raise TypeError(
            f"checkpoints must be a non-empty list of params pytrees (e.g. sj.train(...).checkpoints), got "
            f"{type(checkpoints).__name__}; for one model pass [params]."
        )
    checkpoints = list(checkpoints)
    planning.check_centers(checkpoints)
    if steps is None:
        return checkpoints, np.arange(len(checkpoints))
    array = np.asarray(steps)
    if array.shape != (len(checkpoints),) or len(set(array.tolist())) != len(checkpoints):
        raise ValueError(
            f"steps={array.tolist()}: it needs one entry per checkpoint ({len(checkpoints)}), one distinct training step each."
        )
    return checkpoints, array.astype(np.int64) if np.issubdtype(array.dtype, np.integer) else array


def check_components(components, params: Params, *, include_full: bool = False) -> tuple[list[str], list]:
    """Component names and validated masks; None means the whole model (``{"full": None}``), and
    ``include_full`` adds ``"full"`` first if absent."""
    if components is not None and not isinstance(components, Mapping):
        raise TypeError(
            f"components must be a dict {{name: bool mask or None}} (None = the whole model), got "
            f"{type(components).__name__}; build masks with slt_jax.component_mask or slt_jax.head_mask."
        )
    components = {"full": None} if components is None and not include_full else dict(components or {})
    if include_full and "full" not in components:
        components = {"full": None, **components}
    if not components:
        raise ValueError("components is an empty dict: pass a non-empty dict {name: mask}, or None for the whole model "
                         "(the susceptibility estimators also take include_full=True).")
    names, masks = [], []
    for name, mask in components.items():
        names.append(str(name))
        masks.append(None if mask is None else validation.check_masks(mask, params, name=f"components[{name!r}]"))
    return names, masks


@functools.lru_cache(maxsize=32)
def _probe_losses(loss_fn: LossFn, per_token: bool, probe_batch_size: int | None):
    # One compiled probe pass per loss_fn, the probes and params traced: a second estimate on the
    # same model (another probe set of the same shapes, another checkpoint) does not recompile it.
    return jax.jit(lambda params, batches: stats.probe_losses(
        loss_fn, params, batches, per_token=per_token, probe_batch_size=probe_batch_size))


def check_probes(loss_fn: LossFn, checkpoints: Sequence[Params], probes, *, per_token: bool = True,
                 probe_batch_size: int | None = None) -> ProbeLabels:
    """``{name: batch}`` probes checked like the training data: shapes, per-example losses, and a
    finite loss at every checkpoint (as the sampler checks L_n(w*) of the training data).

    Returns:
        The ``ProbeLabels`` of the rows.
    """
    labels = stats.check_probes(loss_fn, checkpoints[0], probes, per_token)
    evaluate = _probe_losses(loss_fn, per_token, probe_batch_size)
    batches = tuple(probes.values())
    for index, params in enumerate(checkpoints):
        bad = np.flatnonzero(~np.isfinite(np.asarray(evaluate(params, batches))))
        if bad.size:
            names = sorted(set(labels.probe[bad].tolist()))
            raise ValueError(
                f"probes {names}: the loss at checkpoint {index} is not finite for {bad.size} row(s) (first rows "
                f"{labels.example[bad[:5]].tolist()} of {names[0]!r}); probes need the same inputs as the training data "
                "(e.g. token ids < vocab_size, no NaN). loss_fn must be finite at w* on every probe row."
            )
    return labels


def admit(
    estimator: str,
    loss_fn: LossFn,
    checkpoints: Sequence[Params],
    config,
    *,
    steps=None,
    components=None,
    include_full: bool = False,
    probes: Mapping[str, Batch] | None = None,
    per_token: bool = True,
    probe_batch_size: int | None = None,
) -> Admission:
    """The front door every estimator calls first (see the module docstring).

    Args:
        estimator: the public function's name, for the messages (``"estimate_bif_table"``...);
            ``estimate_susceptibilities*`` and ``estimate_bif*`` get the covariance checks.
        loss_fn: the estimator's loss function.
        checkpoints: a list of params pytrees (``[params]`` for one model).
        config: the ``SamplerConfig``.
        steps: the checkpoints' training steps (default 0..K-1).
        components: ``{name: mask or None}`` or None (the whole model).
        include_full: add the whole model ``"full"`` first.
        probes: ``{name: batch}`` or None.
        per_token, probe_batch_size: how the probe rows are evaluated.
    """
    covariance = estimator.startswith(("estimate_susceptibilities", "estimate_bif"))
    config = check_config(config, estimator, covariance=covariance)
    checkpoints, steps = check_checkpoints(checkpoints, steps)
    names, masks = check_components(components, checkpoints[0], include_full=include_full)
    if probe_batch_size is not None:
        probe_batch_size = validation.check_positive_int(probe_batch_size, "probe_batch_size")
    labels = None if probes is None else check_probes(
        loss_fn, checkpoints, probes, per_token=per_token, probe_batch_size=probe_batch_size)
    return Admission(config, checkpoints, steps, names, masks, labels)


def report_divergence(diverged_at, *, steps=None, components=None, what: str = "the estimate", result=None) -> None:
    """Warns per (checkpoint, component) cell with diverged chains; raises ``DivergenceError`` (with
    ``result``) when every chain of every cell diverged.

    Args:
        diverged_at: ``(K, M, C)`` (or ``(C,)``) first non-finite step per chain, -1 if none.
        steps: the K checkpoints' steps (named in the messages when K > 1).
        components: the M component names (named when M > 1).
        what: what the diverged chains are excluded from (``"chi"``, ``"the BIF"``...).
        result: attached to the ``DivergenceError``.
    """
    diverged_at = np.asarray(diverged_at)
    diverged_at = diverged_at.reshape((1, 1) + diverged_at.shape) if diverged_at.ndim == 1 else diverged_at
    num_k, num_m, _ = diverged_at.shape
    if np.all(diverged_at >= 0):
        message = traces.divergence_message(diverged_at.reshape(-1), what)
        raise DivergenceError(f"Every chain diverged: no estimate. {message}", result)
    for k, m in zip(*np.nonzero(np.any(diverged_at >= 0, axis=-1))):
        label = [f"checkpoint {steps[k]}"] if num_k > 1 and steps is not None else []
        label += [f"component {components[m]!r}"] if num_m > 1 and components is not None else []
        prefix = ", ".join(label) + ": " if label else ""
        warnings.warn(prefix + traces.divergence_message(diverged_at[k, m], what), RuntimeWarning,
                      stacklevel=validation.external_stacklevel())
