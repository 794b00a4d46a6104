"""From chain records to per-draw values: the loss entering λ̂, and nβ(L - L*) in ONE place.

Every estimator, diagnostic, plot and export that needs nβ(L_d - L_n(w*)) calls ``llc_draws``;
every one that needs the loss of a ``loss_estimator`` calls ``loss_trace``. Divergence is reported
by ``slt_jax._src.frontdoor.report_divergence`` (with ``divergence_message``'s text).

Loss estimators (docs/conventions.md §2), all unbiased for L_n(w_d):

* ``"minibatch"``: the minibatch loss of the draw's gradient step (the convention);
* ``"paired"``: L_B(w_d) - L_B(w*) + L_n(w*) on the same minibatch B, a control variate that cancels
  the per-example noise nβ multiplies (L_B(w*): one forward pass per draw, or a gather from the
  per-example losses at w* when cheaper, ``slt_jax._src.planning``). In λ̂ L_n(w*) cancels: it is
  never computed over all n, and the loss trace shows it as the mean of the recorded L_B(w*)
  (``ChainsResult.settings["init_loss"]``);
* ``"full"``: the full-data loss at each draw (one full pass per draw).
"""

from __future__ import annotations

import numpy as np

from slt_jax.sampler import ChainsResult

__all__ = [
    "LOSS_ESTIMATORS",
    "estimator_options",
    "loss_trace",
    "llc_draws",
    "init_loss_stderr",
    "loss_diagnostics",
    "divergence_message",
]

LOSS_ESTIMATORS = ("minibatch", "paired", "full")


def estimator_options(loss_estimator: str) -> dict:
    """The ``run_chains`` keyword arguments a ``loss_estimator`` needs (validated)."""
    if loss_estimator not in LOSS_ESTIMATORS:
        raise ValueError(f"loss_estimator={loss_estimator!r}; use one of {', '.join(map(repr, LOSS_ESTIMATORS))}.")
    return {"full": {"full_loss_every": 1}, "paired": {"center_loss": True}, "minibatch": {}}[loss_estimator]


def loss_trace(chains: ChainsResult, loss_estimator: str) -> np.ndarray:
    """The loss entering λ̂ at each draw, ``(G, C, D)`` float64."""
    estimator_options(loss_estimator)
    if loss_estimator == "full":
        if chains.full_loss is None:
            raise ValueError("loss_estimator='full' needs chains run with full_loss_every=1.")
        return np.asarray(chains.full_loss, np.float64)
    loss = np.asarray(chains.loss, np.float64)
    if loss_estimator == "paired":
        if chains.center_loss is None:
            raise ValueError("loss_estimator='paired' needs chains run with center_loss=True.")
        return loss - np.asarray(chains.center_loss, np.float64) + chains.init_loss[:, None, None]
    return loss


def llc_draws(chains: ChainsResult, loss_estimator: str = "minibatch") -> np.ndarray:
    """nβ (L_{g,c,d} - L_n(w*_g)) per configuration, chain and draw: ``(G, C, D)`` float64.

    Its mean over draws is chain c's λ̂ (docs/conventions.md §2). For ``"paired"`` it is
    nβ (L_B(w_d) - L_B(w*)): L_n(w*) cancels, so it never enters (and is never computed for it).
    """
    nbeta = np.asarray(chains.hyperparameters.nbeta, np.float64)[:, None, None]
    if loss_estimator == "paired":
        loss_trace(chains, loss_estimator)  # validates
        return nbeta * (np.asarray(chains.loss, np.float64) - np.asarray(chains.center_loss, np.float64))
    return nbeta * (loss_trace(chains, loss_estimator) - np.asarray(chains.init_loss, np.float64)[:, None, None])


def init_loss_stderr(chains: ChainsResult, loss_estimator: str = "minibatch") -> np.ndarray:
    """The standard error that L_n(w*) adds to every chain's λ̂, per configuration ``(G,)`` float64.

    L_n(w*) is one number shared by a configuration's chains, so its error does not show in their
    spread: nβ times it adds in quadrature to the chains' standard error (``LLCResult.stderr``). It is
    ``settings["init_loss"]["stderr"]`` (a subsample, ``SamplerConfig.init_loss_examples``), and 0
    when L_n(w*) is exact or cancels (``"paired"``).
    """
    estimator_options(loss_estimator)
    entry = chains.settings.get("init_loss") or {}
    if loss_estimator == "paired" or not entry.get("stderr"):
        return np.zeros(chains.num_configs)
    return np.asarray(entry["stderr"], np.float64)[np.asarray(chains.center_index, int)]


def loss_diagnostics(trace: np.ndarray) -> tuple[float, float, str]:
    """(ESS, split R-hat, note) of a ``(num_chains, num_draws)`` trace with numpyro's diagnostics.

    A trace that is constant (within every chain and across chains) has no defined ESS or R-hat:
    both are NaN and the note says why, instead of numpy's division warnings.
    """
    trace = np.asarray(trace, np.float64)
    if trace.shape[0] == 0 or trace.shape[1] < 4:
        return float("nan"), float("nan"), "too few draws (< 4) for ESS and R-hat"
    if not np.all(np.isfinite(trace)):
        return float("nan"), float("nan"), "the trace has non-finite values"
    if np.all(np.ptp(trace, axis=1) == 0):
        return float("nan"), float("nan"), "the trace is constant within every chain: ESS and R-hat are undefined"
    # numpyro (~0.3 s: its package imports its distributions) loads with the first result, not with ``import slt_jax``.
    from numpyro import diagnostics as numpyro_diagnostics

    with np.errstate(invalid="ignore", divide="ignore"):
        ess = float(numpyro_diagnostics.effective_sample_size(trace))
        rhat = float(numpyro_diagnostics.split_gelman_rubin(trace)) if trace.shape[0] >= 2 else float("nan")
    return ess, rhat, "" if trace.shape[0] >= 2 else "R-hat needs at least 2 chains"


def divergence_message(diverged_at: np.ndarray, what: str = "the estimate") -> str:
    """The user-facing explanation of which chains diverged and what to change."""
    diverged_at = np.asarray(diverged_at)
    chains = np.flatnonzero(diverged_at >= 0).tolist()
    steps = [int(diverged_at[c]) for c in chains]
    return (
        f"{len(chains)} of {diverged_at.shape[0]} chains diverged (loss became NaN/inf): chains {chains} at steps "
        f"{steps}. They are excluded from {what}. Fix: reduce step_size (e.g. by 3-10x) or increase "
        "localization; slt_jax.calibrate can choose both."
    )
