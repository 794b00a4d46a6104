"""The local learning coefficient estimator (SCIENCE.md §2).

Per chain c, with the draws' minibatch losses L_{c,d}:

    λ̂_c = nβ · (mean_d L_{c,d} - L_n(w*))

``llc_mean`` / ``llc_std`` (ddof=1) are over the chains that did not diverge. A diverged chain (its
loss went non-finite) is reported by index, excluded, and warned about with the fix.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
from numpyro import diagnostics

from slt_jax import validation
from slt_jax import sampler as sampler_lib
from slt_jax.sampler import ChainsOutput, DivergenceError
from slt_jax.types import Batch, KeyLike, LossFn, Mask, Params

__all__ = ["LLCResult", "estimate_llc", "llc_from_chains", "divergence_message"]


@dataclasses.dataclass(frozen=True)
class LLCResult:
    """An LLC estimate with its per-chain figures and diagnostics (numpy arrays).

    Attributes:
        llc_mean: mean of ``llc_per_chain`` over non-diverged chains.
        llc_std: sample std (ddof=1) over non-diverged chains (NaN with one chain).
        llc_per_chain: ``(num_chains,)``; NaN for diverged chains.
        llc_trace: ``(num_chains, num_draws)`` running mean over draws of nβ(L - L*).
        loss_trace: ``(num_chains, num_draws)`` the loss entering λ̂ at each draw (the minibatch
            loss by default; see ``loss_estimator``).
        init_loss: L_n(w*), full-data mean loss at w*.
        nbeta: nβ used.
        ess: effective sample size of the loss trace (numpyro), over non-diverged chains.
        rhat: split R-hat of the loss trace (numpyro); NaN with one chain.
        diverged: ``(num_chains,)`` bool.
        chains: the raw ``ChainsOutput`` (diagnostic traces, settings, timings).
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
    chains: ChainsOutput

    @property
    def settings(self) -> dict:
        return self.chains.settings

    def summary(self, **kwargs):
        """Health summary naming what looks wrong and what to change (``slt_jax.diagnostics.summary``)."""
        from slt_jax import diagnostics

        return diagnostics.summary(self, **kwargs)

    def __repr__(self) -> str:
        return (
            f"LLCResult(llc={self.llc_mean:.4g} ± {self.llc_std:.2g} (std over chains), "
            f"chains={self.llc_per_chain.shape[0]}, diverged={int(self.diverged.sum())}, "
            f"ess={self.ess:.1f}, rhat={self.rhat:.3f})"
        )


def divergence_message(diverged_at: np.ndarray, num_chains: int) -> str:
    """The user-facing explanation of which chains diverged and what to change."""
    chains = np.flatnonzero(diverged_at >= 0).tolist()
    steps = [int(diverged_at[c]) for c in chains]
    return (
        f"{len(chains)} of {num_chains} chains diverged (loss became NaN/inf): chains {chains} at steps "
        f"{steps}. They are excluded from the estimate. Fix: reduce step_size (e.g. by 3-10x) or increase "
        "localization; slt_jax.calibrate can choose both."
    )


def loss_diagnostics(loss_trace: np.ndarray) -> tuple[float, float]:
    """(ESS, split R-hat) of a ``(num_chains, num_draws)`` trace with numpyro's diagnostics."""
    if loss_trace.shape[0] == 0 or loss_trace.shape[1] < 4:
        return float("nan"), float("nan")
    ess = float(diagnostics.effective_sample_size(loss_trace))
    rhat = float(diagnostics.split_gelman_rubin(loss_trace)) if loss_trace.shape[0] >= 2 else float("nan")
    return ess, rhat


def llc_from_chains(
    loss_trace: np.ndarray, init_loss: float, nbeta: float, diverged: np.ndarray, chains: ChainsOutput
) -> LLCResult:
    """Builds an ``LLCResult`` from a ``(num_chains, num_draws)`` loss trace."""
    loss_trace = np.asarray(loss_trace, np.float64)
    shifted = nbeta * (loss_trace - init_loss)
    counts = np.arange(1, loss_trace.shape[1] + 1)
    llc_trace = np.cumsum(shifted, axis=1) / counts
    llc_per_chain = shifted.mean(axis=1)
    llc_per_chain = np.where(diverged, np.nan, llc_per_chain)
    llc_trace = np.where(diverged[:, None], np.nan, llc_trace)
    good = ~diverged
    values = llc_per_chain[good]
    llc_mean = float(values.mean()) if values.size else float("nan")
    llc_std = float(values.std(ddof=1)) if values.size >= 2 else float("nan")
    ess, rhat = loss_diagnostics(loss_trace[good])
    return LLCResult(
        llc_mean=llc_mean,
        llc_std=llc_std,
        llc_per_chain=llc_per_chain,
        llc_trace=llc_trace,
        loss_trace=loss_trace,
        init_loss=float(init_loss),
        nbeta=float(nbeta),
        ess=ess,
        rhat=rhat,
        diverged=np.asarray(diverged, bool),
        chains=chains,
    )


LOSS_ESTIMATORS = ("minibatch", "paired", "full")


def loss_estimator_options(loss_estimator: str) -> dict:
    """The ``run_chains`` keyword arguments a ``loss_estimator`` needs (validated)."""
    if loss_estimator not in LOSS_ESTIMATORS:
        raise ValueError(f"loss_estimator={loss_estimator!r}; use one of {', '.join(map(repr, LOSS_ESTIMATORS))}.")
    return {"full": {"full_loss_every": 1}, "paired": {"center_loss": True}, "minibatch": {}}[loss_estimator]


def loss_trace(chains: ChainsOutput, loss_estimator: str) -> np.ndarray:
    """The loss entering λ̂ at each draw, shaped like ``chains.loss`` (see ``estimate_llc``)."""
    if loss_estimator == "full":
        return np.asarray(chains.full_loss, np.float64)
    loss = np.asarray(chains.loss, np.float64)
    if loss_estimator == "paired":
        return loss - np.asarray(chains.center_loss, np.float64) + chains.init_loss
    return loss


def estimate_llc(
    loss_fn: LossFn,
    params: Params,
    data: Batch,
    *,
    key: KeyLike,
    step_size: float | str,
    nbeta: float | None = None,
    localization: float,
    num_chains: int = 4,
    num_draws: int,
    num_burnin: int = 0,
    num_steps_between_draws: int = 1,
    batch_size: int,
    sampler: str = "sgld",
    mask: Mask | None = None,
    progress: bool = True,
    loss_estimator: str = "minibatch",
    **kwargs,
) -> LLCResult:
    """Estimates the local learning coefficient at ``params`` with multi-chain localized SGLD.

    Args:
        loss_fn: ``loss_fn(params, batch)`` -> per-example losses ``(batch,)`` (``(batch, seq)`` per
            token, or a scalar mean). A negative log-likelihood, e.g. 0.5||y - f(x)||².
        params: pytree at w*.
        data: pytree of arrays sharing a leading axis n.
        key: int seed or JAX PRNG key.
        step_size: ε in the update (SCIENCE.md §1), or ``"auto"``: ``slt_jax.calibrate`` chooses it at
            this nβ and γ first (short chains with an independent key; its reason and grid are in
            ``result.settings["calibration"]``).
        nbeta: nβ; None uses n / log n (``default_nbeta``). It must be > 0.
        localization: γ, the pull toward w*.
        num_chains, num_draws, num_burnin, num_steps_between_draws: the schedule.
        batch_size: minibatch size (with replacement).
        sampler: ``"sgld"``, ``"rmsprop_sgld"`` or ``"rmsprop_sgld_devinterp"``.
        mask: bool pytree (True = sampled) for a restricted (weight-refined) LLC.
        progress: tqdm progress bar.
        loss_estimator: which loss L_{c,d} enters λ̂ (all unbiased for L_n(w_d)):
            ``"minibatch"`` (default, SCIENCE.md §2): the minibatch loss of that step's gradient;
            ``"paired"``: L_B(w_d) - L_B(w*) + L_n(w*) on the same minibatch B, a control variate
            that cancels the minibatch noise (one extra forward pass per draw; recommended when
            nβ is large, where nβ·L_B's batch noise swamps λ);
            ``"full"``: the full-data loss at each draw (one full pass per draw).
        **kwargs: passed to ``slt_jax.sample`` (``weight_decay``, ``mala_every``, ``chunk_draws``, ...).

    Returns:
        An ``LLCResult``. Raises ``DivergenceError`` if every chain diverged.

    >>> import jax.numpy as jnp, slt_jax as sj
    >>> loss_fn = lambda w, batch: 0.5 * (batch["y"] - batch["x"] @ w) ** 2
    >>> data = {"x": jnp.eye(4).repeat(25, axis=0), "y": jnp.zeros(100)}
    >>> result = sj.estimate_llc(loss_fn, jnp.zeros(4), data, key=0, step_size=1e-3, nbeta=100.0,
    ...                          localization=1.0, num_draws=200, batch_size=100, progress=False)
    >>> result.llc_per_chain.shape
    (4,)
    """
    if nbeta is not None and (np.ndim(nbeta) != 0 or not np.isfinite(nbeta) or nbeta <= 0):
        raise ValueError(f"nbeta={nbeta!r} must be a finite number > 0 for an LLC (None uses n / log n).")
    if validation.check_positive_int(num_chains, "num_chains") < 2:
        warnings.warn("num_chains=1: llc_std and R-hat need at least 2 chains and will be NaN.", stacklevel=2)
    kwargs.update(loss_estimator_options(loss_estimator))
    calibration = None
    if isinstance(step_size, str):
        if step_size != "auto":
            raise ValueError(f"step_size={step_size!r}: pass a number or 'auto'.")
        from slt_jax.calibration import auto_step_size

        step_size, calibration = auto_step_size(
            loss_fn, params, data, key=key, nbeta=nbeta, localization=localization, batch_size=batch_size,
            num_chains=num_chains, num_burnin=num_burnin, num_steps=num_burnin + num_draws * num_steps_between_draws, sampler=sampler,
            mask=mask, progress=progress, weight_decay=kwargs.get("weight_decay", 0.0),
        )
    chains = sampler_lib.sample(
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
        mask=mask,
        progress=progress,
        **kwargs,
    )
    nbeta_used = chains.settings["nbeta"]
    result = llc_from_chains(loss_trace(chains, loss_estimator), chains.init_loss, float(nbeta_used), chains.diverged, chains)
    if calibration is not None:
        chains.settings["calibration"] = {"reason": calibration.reason, "step_sizes": calibration.step_size.tolist()}
    report_divergence(chains.diverged_at, result)
    return result


def report_divergence(diverged_at: np.ndarray, result=None, stacklevel: int = 3) -> None:
    """Warns naming the diverged chains; raises ``DivergenceError`` if all of them diverged."""
    diverged_at = np.asarray(diverged_at)
    num_chains = diverged_at.shape[0]
    if not np.any(diverged_at >= 0):
        return
    message = divergence_message(diverged_at, num_chains)
    if np.all(diverged_at >= 0):
        raise DivergenceError("Every chain diverged; no estimate. " + message, result)
    warnings.warn(message, RuntimeWarning, stacklevel=stacklevel)
