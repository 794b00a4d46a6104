"""Restricted (weight-refined) LLCs of many components, as one compiled program.

For a component C given by a bool mask (``slt_jax.component_mask``, ``slt_jax.head_mask``), the
restricted LLC samples only C's coordinates, the rest clamped at w*:

    λ̂_C = nβ · (mean_d L_{c,d} - L_n(w*)),   chains moving along M_C ⊙ w only.

``estimate_llc_per_component`` stacks the masks along the sampler's configuration axis
(``sampler.run_chains(masks=...)``), so every component runs in the same ``vmap``ped program: one
compilation, one pass of the data pipeline. Each component's chains use the same keys as
``estimate_llc(..., mask=mask, key=key)`` would, so the two agree up to float round-off.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping

import jax
import numpy as np

from slt_jax import validation
from slt_jax import llc as llc_lib
from slt_jax import sampler as sampler_lib
from slt_jax.llc import LLCResult
from slt_jax.sampler import ChainsOutput, DivergenceError
from slt_jax.types import Batch, KeyLike, LossFn, Mask, Params

__all__ = ["ComponentLLCResult", "estimate_llc_per_component"]

# Memory allowed for the chains' state of one run (positions, gradients, noise, ...): bounds how
# many components share a run when components_per_run is not given.
_RUN_BUDGET_BYTES = 1 << 30
_COPIES_PER_CHAIN = 8  # rough number of parameter-sized buffers per chain inside a step

_PYTREE_FIELDS = ("observed", "accumulator", "final_state")


@dataclasses.dataclass(frozen=True)
class ComponentLLCResult:
    """Restricted LLCs of named components: a (components x chains) table with diagnostics.

    Attributes:
        names: component names, in the order of the ``components`` mapping.
        llc_mean: ``(num_components,)`` mean over non-diverged chains.
        llc_std: ``(num_components,)`` sample std (ddof=1) over non-diverged chains.
        llc_per_chain: ``(num_components, num_chains)``, NaN for diverged chains.
        num_selected: ``(num_components,)`` number of sampled coordinates of each component.
        results: ``{name: LLCResult}``, each with the same diagnostics as ``estimate_llc`` (traces,
            ESS, R-hat, divergence, raw ``ChainsOutput``).
        compile_seconds: total compilation time.
        sampling_seconds: total sampling time (excluding compilation).
    """

    names: list[str]
    llc_mean: np.ndarray
    llc_std: np.ndarray
    llc_per_chain: np.ndarray
    num_selected: np.ndarray
    results: dict[str, LLCResult]
    compile_seconds: float
    sampling_seconds: float

    def __getitem__(self, name: str) -> LLCResult:
        return self.results[name]

    def table(self) -> str:
        """One row per component: LLC mean ± std, coordinates, ESS, R-hat, diverged chains."""
        width = max(9, max(len(n) for n in self.names))
        lines = [f"{'component':<{width}}  {'llc':>10}  {'± std':>8}  {'coords':>8}  {'ess':>7}  {'rhat':>6}  {'diverged':>8}"]
        for index, name in enumerate(self.names):
            result = self.results[name]
            lines.append(
                f"{name:<{width}}  {self.llc_mean[index]:>10.4g}  {self.llc_std[index]:>8.2g}  {self.num_selected[index]:>8d}  "
                f"{result.ess:>7.1f}  {result.rhat:>6.3f}  {int(result.diverged.sum()):>8d}"
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"ComponentLLCResult({len(self.names)} components)\n" + self.table()


def _select_config(out: ChainsOutput, index: int, num_configs: int, settings: dict) -> ChainsOutput:
    """Configuration ``index`` of a ``run_chains`` output, shaped like ``sample``'s."""
    fields = {f.name: getattr(out, f.name) for f in dataclasses.fields(out)}
    for name, value in fields.items():
        if name in _PYTREE_FIELDS and value is not None:
            fields[name] = jax.tree.map(lambda x: x[index], value)
        elif isinstance(value, np.ndarray) and value.ndim >= 2 and value.shape[0] == num_configs:
            fields[name] = value[index]  # every (G, C, ...) array
    fields["settings"] = settings
    return ChainsOutput(**fields)


def estimate_llc_per_component(
    loss_fn: LossFn,
    params: Params,
    data: Batch,
    components: Mapping[str, Mask],
    *,
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
    progress: bool = True,
    loss_estimator: str = "minibatch",
    components_per_run: int | None = None,
    **kwargs,
) -> ComponentLLCResult:
    """Every component's restricted LLC, vmapped over the stacked masks in one compiled program.

    Args:
        loss_fn, params, data: as for ``estimate_llc``.
        components: ``{name: mask}``; each mask a bool pytree with ``params``' structure (True =
            sampled), e.g. from ``component_mask`` or ``head_mask``.
        key: int seed or PRNG key; every component uses the chain keys ``estimate_llc`` would.
        step_size, nbeta, localization, num_chains, num_draws, num_burnin,
            num_steps_between_draws, batch_size, sampler, progress, loss_estimator: as for
            ``estimate_llc`` (shared by all components; ``step_size`` must be a number).
        components_per_run: how many components share one compiled run (default: all of them,
            unless the chains' state would pass about 1 GiB). The last group is padded with a
            repeated mask so every run reuses the same executable.
        **kwargs: passed to ``slt_jax.run_chains`` (``weight_decay``, ``mala_every``, ...).

    Returns:
        A ``ComponentLLCResult``. A component whose chains all diverged gets NaN and a warning;
        ``DivergenceError`` is raised only if every chain of every component diverged.

    >>> import jax.numpy as jnp, slt_jax as sj
    >>> loss_fn = lambda w, batch: 0.5 * (batch["y"] - batch["x"] @ w["w"]) ** 2
    >>> data = {"x": jnp.eye(4).repeat(25, axis=0), "y": jnp.zeros(100)}
    >>> params = {"w": jnp.zeros(4)}
    >>> first_two = {"w": jnp.arange(4) < 2}
    >>> table = sj.estimate_llc_per_component(loss_fn, params, data, {"first_two": first_two},
    ...     key=0, step_size=1e-3, nbeta=100.0, localization=1.0, num_draws=100, batch_size=100,
    ...     progress=False)
    >>> table.llc_per_chain.shape
    (1, 4)
    """
    if not isinstance(components, Mapping) or not components:
        raise ValueError("components must be a non-empty dict {name: mask}; build masks with slt_jax.component_mask or head_mask.")
    for name in ("mask", "masks"):
        if name in kwargs:
            raise ValueError(f"{name}= is not an argument of estimate_llc_per_component; put every mask in components.")
    n = validation.check_data(data)
    validation.check_params(params)
    num_chains = validation.check_positive_int(num_chains, "num_chains")
    batch_size = validation.check_positive_int(batch_size, "batch_size")
    if batch_size > n:
        raise ValueError(f"batch_size={batch_size} is larger than the dataset (n={n}); use batch_size <= {n}.")
    if nbeta is None:
        nbeta = sampler_lib.default_nbeta(n)
    if np.ndim(nbeta) != 0 or not np.isfinite(nbeta) or nbeta <= 0:
        raise ValueError(f"nbeta={nbeta!r} must be a finite number > 0 for an LLC (None uses n / log n).")
    for name, value in (("step_size", step_size), ("localization", localization)):
        if isinstance(value, str) or np.ndim(value) != 0:
            raise ValueError(
                f"{name}={value!r} must be a number here (components share the hyperparameters); calibrate "
                "the step size on the full model or the largest component first."
            )
    kwargs.update(llc_lib.loss_estimator_options(loss_estimator))
    names = [str(name) for name in components]
    masks = []
    for name, mask in components.items():
        checked = validation.check_masks(mask, params, None, name=f"components[{name!r}]")
        masks.append([np.asarray(m) for m in jax.tree.leaves(checked)])
    if num_chains < 2:
        warnings.warn("num_chains=1: llc_std and R-hat need at least 2 chains and will be NaN.", stacklevel=2)
    num_components = len(masks)
    num_parameters = sum(int(np.size(p)) for p in jax.tree.leaves(params))
    if components_per_run is None:
        per_component = num_chains * num_parameters * 4 * _COPIES_PER_CHAIN
        components_per_run = max(1, min(num_components, _RUN_BUDGET_BYTES // max(1, per_component)))
    else:
        components_per_run = min(validation.check_positive_int(components_per_run, "components_per_run"), num_components)
    init_loss = kwargs.pop("init_loss", None)
    if init_loss is None:
        init_loss = float(sampler_lib.full_data_loss(loss_fn, params, data, batch_size))

    treedef = jax.tree.structure(params)
    outputs: list[tuple[ChainsOutput, int]] = []
    compile_seconds = sampling_seconds = 0.0
    for start in range(0, num_components, components_per_run):
        group = masks[start:start + components_per_run]
        group = group + [group[-1]] * (components_per_run - len(group))  # same shape, same executable
        stacked = jax.tree.unflatten(treedef, [np.stack(leaves) for leaves in zip(*group)])
        out = sampler_lib.run_chains(
            loss_fn,
            params,
            data,
            key=key,
            step_size=step_size,
            nbeta=nbeta,
            localization=localization,
            num_chains=num_chains,
            num_draws=num_draws,
            num_burnin=num_burnin,
            num_steps_between_draws=num_steps_between_draws,
            batch_size=batch_size,
            sampler=sampler,
            masks=stacked,
            init_loss=init_loss,
            progress=progress,
            description=f"components {start + 1}-{min(start + components_per_run, num_components)}/{num_components}",
            **kwargs,
        )
        compile_seconds += out.compile_seconds
        sampling_seconds += out.sampling_seconds
        outputs.extend((out, index) for index in range(min(components_per_run, num_components - start)))

    results: dict[str, LLCResult] = {}
    messages = []
    for name, (out, index) in zip(names, outputs):
        chains = _select_config(out, index, components_per_run, dict(out.settings, num_configs=1, component=name))
        trace = llc_lib.loss_trace(chains, loss_estimator)
        results[name] = llc_lib.llc_from_chains(trace, chains.init_loss, float(nbeta), chains.diverged, chains)
        if np.any(chains.diverged):
            messages.append(f"component {name!r}: " + llc_lib.divergence_message(chains.diverged_at, num_chains))
    if all(np.all(r.diverged) for r in results.values()):
        raise DivergenceError("Every chain of every component diverged; no estimate.\n" + "\n".join(messages), results)
    for message in messages:
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    return ComponentLLCResult(
        names=names,
        llc_mean=np.array([results[n].llc_mean for n in names]),
        llc_std=np.array([results[n].llc_std for n in names]),
        llc_per_chain=np.stack([results[n].llc_per_chain for n in names]),
        num_selected=np.array([int(sum(m.sum() for m in leaves)) for leaves in masks]),
        results=results,
        compile_seconds=compile_seconds,
        sampling_seconds=sampling_seconds,
    )
