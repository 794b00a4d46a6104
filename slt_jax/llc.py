"""The local learning coefficient (docs/conventions.md §2): one w*, or checkpoints x components.

Per chain c, with the draws' losses L_{c,d} (see ``slt_jax.traces`` for the loss estimators):

    λ̂_c = nβ · (mean_d L_{c,d} - L_n(w*))

``llc_mean`` / ``llc_std`` (ddof=1) are over the chains that did not diverge. A diverged chain (its
loss went non-finite) is reported by index, excluded, and warned about with the fix.

``estimate_llc_table`` estimates a table over checkpoints x components in as few compiled programs
as the components' layouts allow (``slt_jax.sampler``): the checkpoints of a training run are
configurations with different centres, each with its own L_n(w*). ``estimate_llc`` (one LLC, of the
whole model or restricted to a component) is its one-cell case.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from slt_jax import calibration, diagnostics, plots, results, traces
from slt_jax._src import frontdoor, planning
from slt_jax.config import SamplerConfig
from slt_jax.sampler import ChainsResult, Recording, run_chains
from slt_jax.types import Batch, KeyLike, LossFn, Mask, Params

__all__ = ["LLCResult", "LLCTable", "estimate_llc", "estimate_llc_table", "llc_result"]

# Rows of a table with fewer effective draws or a larger R-hat than these are flagged.
MIN_ESS = 100.0
MAX_RHAT = 1.1


@results.register
@dataclasses.dataclass(frozen=True)
class LLCResult(results.Result):
    """An LLC estimate with its per-chain figures and diagnostics (numpy arrays).

    Attributes:
        llc_mean: mean of ``llc_per_chain`` over non-diverged chains.
        llc_std: sample std (ddof=1) over non-diverged chains (NaN with one chain).
        llc_per_chain: ``(num_chains,)``; NaN for diverged chains.
        llc_trace: ``(num_chains, num_draws)`` running mean over draws of nβ(L - L*).
        loss_trace: ``(num_chains, num_draws)`` the loss entering λ̂ at each draw.
        init_loss: L_n(w*), full-data mean loss at w*.
        nbeta: nβ used.
        ess: effective sample size of the loss trace (numpyro), over non-diverged chains.
        rhat: split R-hat of the loss trace (numpyro); NaN with one chain.
        diverged: ``(num_chains,)`` bool.
        loss_estimator: which loss entered λ̂ (``slt_jax.traces``).
        chains: the raw ``ChainsResult`` of this one configuration (leading axis 1).
        init_loss_stderr: the standard error of the L_n(w*) that entered λ̂ (a subsample,
            ``SamplerConfig.init_loss_examples``; 0 when exact or cancelled, ``"paired"``);
            ``stderr`` adds nβ times it in quadrature.

    ``health`` is the structured ``HealthReport``; ``summary()`` its text.
    """

    llc_mean: float
    llc_std: float
    llc_per_chain: np.ndarray
    llc_trace: np.ndarray
    loss_trace: np.ndarray
    init_loss: float
    nbeta: float
    ess: float
    rhat: float
    diverged: np.ndarray
    loss_estimator: str
    chains: ChainsResult
    init_loss_stderr: float = 0.0

    @property
    def stderr(self) -> float:
        """Standard error of ``llc_mean``: the spread of the independent chains, and nβ ×
        ``init_loss_stderr`` (shared by every chain) in quadrature."""
        good = np.isfinite(self.llc_per_chain)
        chains = float(self.llc_std / np.sqrt(good.sum())) if good.sum() >= 2 else float("nan")
        return float(np.hypot(chains, self.nbeta * self.init_loss_stderr))

    @property
    def health(self) -> diagnostics.HealthReport:
        """The structured health report (``slt_jax.diagnostics.summary``; call it for other thresholds)."""
        return diagnostics.summary(self)

    def summary(self) -> str:
        """What looks wrong and what to change, as text (``str(self.health)``)."""
        return str(self.health)

    def plot(self, **options):
        """The chains' traces (``slt_jax.plots.plot_traces``)."""
        return plots.plot_traces(self, **options)

    def arviz_source(self, index: int | None = None) -> tuple[ChainsResult, str]:
        return self.chains, self.loss_estimator

    def _dataset(self):
        xr = results.require("xarray")
        variables = results.chains_variables(self.chains, ())
        variables.update(
            llc_per_chain=(("chain",), self.llc_per_chain),
            llc_trace=(("chain", "draw"), self.llc_trace),
            loss_trace=(("chain", "draw"), self.loss_trace),
        )
        return xr.Dataset({k: xr.Variable(*v) for k, v in variables.items()}, coords=results.draw_coords(self.chains),
                          attrs=results.scalar_attrs(self))

    def __repr__(self) -> str:
        return (
            f"LLCResult(llc={self.llc_mean:.4g} ± {self.llc_std:.2g} (std over chains), "
            f"chains={self.llc_per_chain.shape[0]}, diverged={int(self.diverged.sum())}, "
            f"ess={self.ess:.1f}, rhat={self.rhat:.3f})"
        )


def llc_result(chains: ChainsResult, loss_estimator: str = "minibatch") -> LLCResult:
    """The ``LLCResult`` of a one-configuration ``ChainsResult`` (``chains.select(g)``)."""
    if chains.num_configs != 1:
        raise ValueError(f"llc_result needs one configuration; select one with chains.select(g) (got {chains.num_configs}).")
    shifted = traces.llc_draws(chains, loss_estimator)[0]  # (C, D)
    diverged = np.asarray(chains.diverged[0], bool)
    counts = np.arange(1, shifted.shape[1] + 1)
    llc_trace = np.where(diverged[:, None], np.nan, np.cumsum(shifted, axis=1) / counts)
    llc_per_chain = np.where(diverged, np.nan, shifted.mean(axis=1))
    values = llc_per_chain[~diverged]
    loss = traces.loss_trace(chains, loss_estimator)[0]
    ess, rhat, _ = traces.loss_diagnostics(loss[~diverged])
    return LLCResult(
        llc_mean=float(values.mean()) if values.size else float("nan"),
        llc_std=float(values.std(ddof=1)) if values.size >= 2 else float("nan"),
        llc_per_chain=llc_per_chain,
        llc_trace=llc_trace,
        loss_trace=loss,
        init_loss=float(chains.init_loss[0]),
        nbeta=float(chains.hyperparameters.nbeta[0]),
        ess=ess,
        rhat=rhat,
        diverged=diverged,
        loss_estimator=loss_estimator,
        chains=chains,
        init_loss_stderr=float(traces.init_loss_stderr(chains, loss_estimator)[0]),
    )


@results.register
@dataclasses.dataclass(frozen=True)
class LLCTable(results.Result):
    """LLCs over checkpoints x components x chains, with the usual diagnostics (numpy arrays).

    Attributes:
        steps: ``(K,)`` training step of each checkpoint (or its index).
        components: ``M`` component names (``"full"`` for the whole model).
        llc_mean, llc_std, ess, rhat: ``(K, M)``.
        llc_per_chain: ``(K, M, C)``, NaN for diverged chains.
        diverged: ``(K, M, C)`` bool.
        init_loss: ``(K,)`` L_n(w*) of each checkpoint.
        num_sampled: ``(M,)`` coordinates each component's chains move.
        loss_estimator: which loss entered λ̂.
        chains: the ``ChainsResult`` of the whole run (configurations g = k * M + m).
        init_loss_stderr: ``(K,)`` standard error of each checkpoint's L_n(w*) as it entered λ̂
            (``LLCResult.init_loss_stderr``; zeros when exact or cancelled).

    ``stderr`` ``(K, M)``: the chains' standard error with nβ × ``init_loss_stderr`` in quadrature.
    """

    steps: np.ndarray
    components: list[str]
    llc_mean: np.ndarray
    llc_std: np.ndarray
    llc_per_chain: np.ndarray
    ess: np.ndarray
    rhat: np.ndarray
    diverged: np.ndarray
    init_loss: np.ndarray
    num_sampled: np.ndarray
    loss_estimator: str
    chains: ChainsResult
    init_loss_stderr: np.ndarray | None = None

    @property
    def stderr(self) -> np.ndarray:
        """``(K, M)`` standard error of ``llc_mean`` (chains' spread, and L_n(w*)'s error in quadrature)."""
        good = np.isfinite(self.llc_per_chain).sum(axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            chains = np.where(good >= 2, self.llc_std / np.sqrt(good), np.nan)
        nbeta = np.asarray(self.chains.hyperparameters.nbeta, np.float64).reshape(chains.shape)
        init = np.zeros(len(self.steps)) if self.init_loss_stderr is None else np.asarray(self.init_loss_stderr)
        return np.hypot(chains, nbeta * init[:, None])

    @property
    def unreliable(self) -> np.ndarray:
        """``(K, M)`` bool: ESS below 100, R-hat above 1.1, undefined, a diverged chain, or a negative
        LLC (the chains found lower loss than L(w*): that checkpoint is not a local minimum, e.g.
        untrained; ``result(k, m).summary()`` says more)."""
        with np.errstate(invalid="ignore"):
            return (~(self.ess >= MIN_ESS) | ~(self.rhat <= MAX_RHAT) | self.diverged.any(axis=-1)
                    | ~(self.llc_mean >= 0))

    def result(self, checkpoint: int = 0, component: str | int = 0) -> LLCResult:
        """The ``LLCResult`` (traces, diagnostics) of one cell; ``checkpoint`` is an index (0..K-1)."""
        m = self.components.index(component) if isinstance(component, str) else int(component)
        return llc_result(self.chains.select(int(checkpoint) * len(self.components) + m), self.loss_estimator)

    def table(self) -> str:
        """One row per (checkpoint, component): LLC ± std, ESS, R-hat, diverged; ``!`` flags unreliable rows."""
        width = max(9, *(len(c) for c in self.components))
        lines = [f"  {'step':>8}  {'component':<{width}}  {'llc':>10}  {'± std':>8}  {'ess':>7}  {'rhat':>6}  {'diverged':>8}"]
        flags = self.unreliable
        for k, step in enumerate(self.steps):
            for m, name in enumerate(self.components):
                lines.append(
                    f"{'!' if flags[k, m] else ' '} {int(step):>8}  {name:<{width}}  {self.llc_mean[k, m]:>10.4g}  "
                    f"{self.llc_std[k, m]:>8.2g}  {self.ess[k, m]:>7.1f}  {self.rhat[k, m]:>6.3f}  {int(self.diverged[k, m].sum()):>8d}"
                )
        if self.init_loss_stderr is not None and np.any(self.init_loss_stderr > 0):
            entry = self.chains.settings.get("init_loss", {})
            lines.append(f"  L_n(w*) from a subsample of {entry.get('examples')} examples adds ± nβ x "
                         f"{np.max(self.init_loss_stderr):.2g} (standard error) to every LLC of a checkpoint; "
                         "see .stderr.")
        if flags.any():
            lines.append(
                f"! unreliable: ESS < {MIN_ESS:g}, R-hat > {MAX_RHAT}, undefined, diverged chains (run longer chains), "
                "or a negative LLC (that checkpoint is not a local minimum of the loss)."
            )
        return "\n".join(lines)

    def summary(self) -> str:
        """The table with its footnote (``table()``)."""
        return repr(self)

    def plot(self, *, log_x: bool = False, path=None):
        """LLC against step per component, unreliable cells hollow (``slt_jax.plots.plot_llc_checkpoints``)."""
        return plots.plot_llc_checkpoints(self.steps, self.llc_mean, self.llc_std, loss=self.init_loss,
                                          labels=self.components, log_x=log_x, unreliable=self.unreliable, path=path)

    def _dataset(self):
        xr = results.require("xarray")
        dims = ("checkpoint", "component")
        return xr.Dataset(
            dict(
                llc_mean=(dims, self.llc_mean), llc_std=(dims, self.llc_std), ess=(dims, self.ess), rhat=(dims, self.rhat),
                unreliable=(dims, self.unreliable),
                llc_per_chain=(dims + ("chain",), self.llc_per_chain), diverged=(dims + ("chain",), self.diverged),
                init_loss=(("checkpoint",), self.init_loss), num_sampled=(("component",), self.num_sampled),
                init_loss_stderr=(("checkpoint",), np.zeros(len(self.steps)) if self.init_loss_stderr is None
                                  else self.init_loss_stderr),
            ),
            coords=dict(checkpoint=self.steps, component=self.components, chain=np.arange(self.llc_per_chain.shape[-1])),
            attrs=dict(loss_estimator=self.loss_estimator),
        )

    def __repr__(self) -> str:
        return f"LLCTable({len(self.steps)} checkpoints x {len(self.components)} components)\n" + self.table()


def _calibrate(loss_fn, admitted: frontdoor.Admission, data, key, single: bool, loss_estimator, progress):
    """``step_size="auto"``: one setting for every cell, and the settings entry that records it. A
    table calibrates for the whole model; ``estimate_llc`` (``single``) for its component."""
    planning.check_inputs(loss_fn, admitted.checkpoints, data, admitted.config, admitted.masks)  # before calibrating
    # Calibrated on the last checkpoint (the trained model, whose posterior is the tightest).
    config, calibrated = calibration.auto_step_size(
        loss_fn, admitted.checkpoints[-1], data, admitted.config, key=key, component=admitted.masks[0] if single else None,
        loss_estimator=loss_estimator, progress=progress,
    )
    entry = {"reason": calibrated.reason, "step_sizes": calibrated.step_size.tolist(), "cost": calibrated.settings["cost"]}
    if not single:
        entry["checkpoint"] = int(admitted.steps[-1])
    return config, entry


def _table(admitted: frontdoor.Admission, chains: ChainsResult, loss_estimator: str) -> LLCTable:
    """The ``LLCTable`` of a run over checkpoints x components."""
    num_k, num_m, num_c = len(admitted.checkpoints), len(admitted.components), chains.config.num_chains
    shifted = traces.llc_draws(chains, loss_estimator)  # (G, C, D)
    loss = traces.loss_trace(chains, loss_estimator)
    diverged = np.asarray(chains.diverged, bool)
    per_chain = np.where(diverged, np.nan, shifted.mean(axis=2))
    ess, rhat = np.full(len(per_chain), np.nan), np.full(len(per_chain), np.nan)
    for g in range(len(per_chain)):
        ess[g], rhat[g], _ = traces.loss_diagnostics(loss[g][~diverged[g]])
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells stay NaN
        mean = np.nanmean(per_chain, axis=1)
        std = np.nanstd(per_chain, axis=1, ddof=1)
    shape = (num_k, num_m)
    return LLCTable(
        steps=admitted.steps, components=admitted.components, llc_mean=mean.reshape(shape), llc_std=std.reshape(shape),
        llc_per_chain=per_chain.reshape(shape + (num_c,)), ess=ess.reshape(shape), rhat=rhat.reshape(shape),
        diverged=diverged.reshape(shape + (num_c,)), init_loss=np.asarray(chains.init_loss).reshape(shape)[:, 0],
        num_sampled=np.asarray(chains.num_sampled).reshape(shape)[0], loss_estimator=loss_estimator, chains=chains,
        init_loss_stderr=traces.init_loss_stderr(chains, loss_estimator).reshape(shape)[:, 0],
    )


def _llc_table(loss_fn, admitted: frontdoor.Admission, data, key, loss_estimator, progress, resume_dir,
               single: bool = False) -> LLCTable:
    """The one implementation: every checkpoint x component is a configuration of one ``run_chains``."""
    options = traces.estimator_options(loss_estimator)
    config, entry = admitted.config, None
    if config.step_size == "auto":
        config, entry = _calibrate(loss_fn, admitted, data, key, single, loss_estimator, progress)
    chains = run_chains(
        loss_fn, admitted.checkpoints, data, config, key=key,
        masks=admitted.masks, recording=Recording(**options), progress=progress and ("LLC" if single else "LLC table"),
        resume_dir=resume_dir,
    )
    if entry is not None:  # a new ChainsResult that records the calibration (results are never mutated)
        chains = dataclasses.replace(chains, settings={**chains.settings, "calibration": entry})
    return _table(admitted, chains, loss_estimator)


def estimate_llc_table(
    loss_fn: LossFn, checkpoints: Sequence[Params], data: Batch, config: SamplerConfig, *, key: KeyLike,
    components: Mapping[str, Mask | None] | None = None,
    steps: Sequence[int] | None = None,
    loss_estimator: str = "minibatch",
    progress: bool = True,
    resume_dir=None,
) -> LLCTable:
    """LLCs of every checkpoint (x every component) as one stack of configurations.

    Args:
        loss_fn, data: as for ``estimate_llc``.
        checkpoints: a list of params pytrees of one structure (e.g. ``sj.train(...).checkpoints``);
            ``[params]`` for the components of one model.
        config: the ``SamplerConfig`` shared by every cell, so the curve is comparable across
            training. ``step_size="auto"`` calibrates it ONCE, on the last checkpoint for the whole
            model (``slt_jax.calibrate`` with an independent key; its reason, grid and checkpoint are
            in ``table.chains.settings["calibration"]``), and reuses it for every cell.
        key: every cell's chain c uses the same key, so a cell equals its own ``estimate_llc`` run.
        components: ``{name: mask or None}`` (None = the whole model); default: the whole model.
        steps: training step of each checkpoint (default 0..K-1).
        loss_estimator, progress, resume_dir: as for ``estimate_llc``.

    Returns:
        An ``LLCTable`` ``(checkpoint, component, chain)``. Diverged chains are warned about per cell;
        ``DivergenceError`` only if every chain of every cell diverged.

    >>> import jax.numpy as jnp, slt_jax as sj
    >>> loss_fn = lambda w, batch: 0.5 * (batch["y"] - batch["x"] @ w["w"]) ** 2
    >>> data = {"x": jnp.eye(4).repeat(25, axis=0), "y": jnp.zeros(100)}
    >>> checkpoints = [{"w": jnp.zeros(4)}, {"w": jnp.full(4, 0.1)}]
    >>> config = sj.SamplerConfig(step_size=1e-3, nbeta=100.0, localization=1.0, num_draws=100, batch_size=100)
    >>> table = sj.estimate_llc_table(loss_fn, checkpoints, data, config, key=0,
    ...     components={"full": None, "first_two": {"w": jnp.arange(4) < 2}}, progress=False)
    >>> table.llc_per_chain.shape
    (2, 2, 4)
    """
    traces.estimator_options(loss_estimator)
    admitted = frontdoor.admit("estimate_llc_table", loss_fn, checkpoints, config, steps=steps, components=components)
    table = _llc_table(loss_fn, admitted, data, key, loss_estimator, progress, resume_dir)
    frontdoor.report_divergence(table.chains.diverged_at.reshape(table.diverged.shape), steps=table.steps,
                                components=table.components, result=table)
    return table


def estimate_llc(
    loss_fn: LossFn, params: Params, data: Batch, config: SamplerConfig, *, key: KeyLike,
    component: Mask | None = None,
    loss_estimator: str = "minibatch",
    progress: bool = True,
    resume_dir=None,
) -> LLCResult:
    """Estimates the local learning coefficient at ``params`` with multi-chain localized SGLD.

    Args:
        loss_fn: ``loss_fn(params, batch)`` -> per-example losses ``(batch,)`` (``(batch, seq)`` per
            token, or a scalar mean). A negative log-likelihood, e.g. 0.5||y - f(x)||².
        params: pytree at w*.
        data: pytree of arrays sharing a leading axis n.
        config: the ``SamplerConfig``. ``step_size="auto"`` calibrates ε at this nβ and γ first
            (``slt_jax.calibrate`` with an independent key; its reason and grid are in
            ``result.chains.settings["calibration"]``).
        key: int seed or JAX PRNG key.
        component: bool mask pytree (True = sampled) for a restricted (weight-refined) LLC: the
            chains carry only the component's coordinates, the rest clamped at w*.
        loss_estimator: ``"minibatch"`` (default), ``"paired"`` (recommended when nβ is large) or
            ``"full"`` (``slt_jax.traces``).
        progress: tqdm progress bar.
        resume_dir: a folder for resumable sampler state (``slt_jax.run_chains``).

    Returns:
        An ``LLCResult`` (the one cell of ``estimate_llc_table``). Raises ``DivergenceError`` if
        every chain diverged.

    >>> import jax.numpy as jnp, slt_jax as sj
    >>> loss_fn = lambda w, batch: 0.5 * (batch["y"] - batch["x"] @ w) ** 2
    >>> data = {"x": jnp.eye(4).repeat(25, axis=0), "y": jnp.zeros(100)}
    >>> config = sj.SamplerConfig(step_size=1e-3, nbeta=100.0, localization=1.0, num_draws=200, batch_size=100)
    >>> result = sj.estimate_llc(loss_fn, jnp.zeros(4), data, config, key=0, progress=False)
    >>> result.llc_per_chain.shape
    (4,)
    """
    traces.estimator_options(loss_estimator)
    components = None if component is None else {"component": component}
    admitted = frontdoor.admit("estimate_llc", loss_fn, [params], config, components=components)
    table = _llc_table(loss_fn, admitted, data, key, loss_estimator, progress, resume_dir, single=True)
    result = table.result(0, 0)
    frontdoor.report_divergence(result.chains.diverged_at[0], result=result)
    return result
