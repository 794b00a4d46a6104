"""Patterning: invert the susceptibilities to choose per-example weights (Wang & Murfet 2026).

For observables μ = (⟨φ_1⟩, ..., ⟨φ_k⟩) and per-example weights ρ_j = 1 + α s_j over the n training
examples, linear response gives dμ ≈ α β χ s (β = nβ / n, χ the (k, n) susceptibilities of the
training examples, docs/conventions.md §3). The minimum-norm reweighting toward a target shift dμ is

    ρ = 1 + α χᵀ (χ χᵀ)^{-1} dμ          (χ⁺ dμ, least squares when χ lacks full row rank)

so that χ (ρ - 1) / α = dμ and the posterior moves by ≈ α β dμ (to first order in α; with χ̂ from
SGLD at step ε, up to its O(εA/4) covariance inflation, see ``slt_jax.susceptibility``). Sampling or training then uses the
normalized reweighted loss Σ_j ρ_j l_j / Σ_j ρ_j. The weights reach a minibatch as a data leaf:
``attach_weights(data, ρ)`` pairs every example with its weight, so the sampler's and the
trainer's minibatch gathers carry them along.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from slt_jax.types import Array, Batch, LossFn, Params

__all__ = ["pattern", "reweighted_loss", "attach_weights"]


def pattern(chi, target_shift, alpha: float = 1.0, *, rcond: float | None = None) -> np.ndarray:
    """Per-example weights ρ = 1 + α χᵀ(χχᵀ)^{-1} dμ (minimum-norm least squares).

    Args:
        chi: ``(k, n)`` susceptibilities of k observables to n training examples, or a
            ``SusceptibilityResult`` (its ``chi`` is ``(n, k)`` and is transposed here).
        target_shift: ``(k,)`` dμ, the desired direction of the observables' shift.
        alpha: α, the strength; the realized shift of ⟨φ⟩ is ≈ α β dμ (β = nβ / n).
        rcond: singular-value cutoff of the least-squares solve (numpy's default when None).

    Returns:
        ``(n,)`` float64 weights ρ; χ(ρ - 1)/α = dμ exactly when χ has full row rank.

    >>> import numpy as np, slt_jax as sj
    >>> chi = np.array([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]])
    >>> rho = sj.pattern(chi, np.array([0.1, 0.0]), alpha=2.0)
    >>> np.allclose(chi @ (rho - 1) / 2.0, [0.1, 0.0])
    True
    """
    if hasattr(chi, "chi") and hasattr(chi, "components"):
        chi = np.asarray(chi.chi).T
    chi = np.asarray(chi, np.float64)
    target_shift = np.atleast_1d(np.asarray(target_shift, np.float64))
    if chi.ndim != 2:
        raise ValueError(f"chi must be a (num_observables, num_examples) matrix, got shape {chi.shape}.")
    if target_shift.ndim != 1 or target_shift.shape[0] != chi.shape[0]:
        hint = " (chi looks transposed: pass result.chi.T or the SusceptibilityResult)" if target_shift.shape[0] == chi.shape[1] else ""
        raise ValueError(
            f"target_shift has shape {target_shift.shape} but chi has {chi.shape[0]} observables (rows){hint}; "
            "target_shift needs one entry per observable."
        )
    if not (np.all(np.isfinite(chi)) and np.all(np.isfinite(target_shift))):
        raise ValueError("chi and target_shift must be finite (drop diverged components first).")
    if not np.isfinite(alpha):
        raise ValueError(f"alpha={alpha!r} must be a finite number.")
    shift, *_ = np.linalg.lstsq(chi, target_shift, rcond=rcond)  # minimum-norm χ⁺ dμ
    return 1.0 + alpha * shift


def attach_weights(data: Batch, weights) -> dict:
    """``{"data": data, "weight": weights}``: per-example weights as a data leaf (minibatches carry them).

    Args:
        data: a pytree of arrays with a leading example axis n.
        weights: ``(n,)`` weights ρ (e.g. from ``pattern``), or ``(n, seq)`` per-token weights.
    """
    weights = np.asarray(weights)
    lengths = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in jax.tree.leaves(data)}
    if weights.ndim == 0 or lengths != {weights.shape[0]}:
        raise ValueError(
            f"weights has shape {weights.shape}; it needs one weight per example, shape (n,) (or (n, seq)) "
            f"with n = {sorted(lengths, key=str)}."
        )
    if not np.all(np.isfinite(weights)):
        raise ValueError("weights contain NaN or inf.")
    return {"data": data, "weight": jnp.asarray(weights, jnp.float32)}


def reweighted_loss(loss_fn: LossFn, weights, *, normalize: bool = True) -> LossFn:
    """The reweighted per-example loss ρ_j l_j / ρ̄, a ``loss_fn`` for the sampler or a trainer.

    Its mean over all n examples is Σ_j ρ_j l_j / Σ_j ρ_j (with ``normalize``; ρ̄ = mean ρ over the
    full data, a constant, so every minibatch mean is an unbiased estimate of it), or
    (1/n) Σ_j ρ_j l_j without. Per-token losses are scaled by their example's weight.

    Args:
        loss_fn: ``loss_fn(params, batch) -> (batch,)`` or ``(batch, seq)`` losses.
        weights: the weights ρ of the full dataset, ``(n,)`` or per token ``(n, seq)`` (for ρ̄).
        normalize: divide by ρ̄.

    Returns:
        ``loss(params, batch)`` for batches of ``attach_weights(data, weights)``.

    >>> import jax.numpy as jnp, slt_jax as sj
    >>> loss_fn = lambda w, batch: (batch - w) ** 2
    >>> data = sj.attach_weights(jnp.arange(3.0), jnp.array([2.0, 1.0, 0.0]))
    >>> round(float(sj.reweighted_loss(loss_fn, data["weight"])(0.0, data).mean()), 4)  # (2*0 + 1*1) / 3
    0.3333
    """
    weights = np.asarray(weights, np.float64)
    if weights.ndim == 0 or weights.size == 0 or not np.all(np.isfinite(weights)):
        raise ValueError(f"weights must be a finite (n,) or (n, seq) array, got shape {weights.shape}.")
    scale = float(weights.mean()) if normalize else 1.0
    if scale <= 0:
        raise ValueError(f"the weights' mean is {scale}; the normalized loss Σρl/Σρ needs Σρ > 0.")

    def loss(params: Params, batch: dict) -> Array:
        if not isinstance(batch, dict) or set(batch) != {"data", "weight"}:
            raise TypeError("reweighted_loss expects batches of slt_jax.attach_weights(data, weights).")
        losses = loss_fn(params, batch["data"])
        if jnp.ndim(losses) == 0:
            raise ValueError("reweighted_loss needs per-example losses from loss_fn, not a scalar mean.")
        weight = batch["weight"]
        if weight.shape != losses.shape[: weight.ndim]:
            raise ValueError(f"weights of shape {weight.shape} do not match the losses' shape {losses.shape}.")
        weight = weight.reshape(weight.shape + (1,) * (losses.ndim - weight.ndim))
        return weight * losses / scale

    return loss
