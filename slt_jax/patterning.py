"""Patterning: invert the susceptibilities to choose data weights (Wang & Murfet 2026).

For observables μ = (⟨φ_1⟩, ..., ⟨φ_k⟩) and per-example weights ρ_j = 1 + α s_j over the n training
examples, linear response gives dμ ≈ α β χ s (β = nβ / n, χ the (k, n) susceptibilities of the
training examples, docs/conventions.md §3). The minimum-norm reweighting toward a target shift dμ is

    ρ = 1 + α χᵀ (χ χᵀ)^{-1} dμ          (χ⁺ dμ, least squares when χ lacks full row rank)

so that χ (ρ - 1) / α = dμ and the posterior moves by ≈ α β dμ (to first order in α; with χ̂ from
SGLD at step ε, up to its O(εA/4) covariance inflation, see ``slt_jax.susceptibility``).

Groups. Per-example χ̂ is noisy, so per-example weights come out as noise. Giving every example of a
group g the same s_g, the shift is dμ ≈ α β Σ_g s_g χ_g with χ_g = Σ_{j∈g} χ_j: the group's
susceptibility is the SUM of its rows (the response to upweighting the whole group by a common
factor), and its standard error comes from the per-chain sums. The solve minimises the per-example
norm Σ_g m_g s_g² (m_g the group size) subject to χ_G s = dμ, so singleton groups give back the
per-example formula above. With full-data χ (mass conservation, Σ_j χ_j = 0) the solution has
Σ_j s_j = 0 automatically.

Positivity. α is reduced to the largest α' ≤ α whose weights all stay ≥ ``min_weight``; the result
reports the achievable fraction α'/α (and warns when it is below 1).

Sampling or training then uses the normalized reweighted loss Σ_j ρ_j l_j / Σ_j ρ_j. The weights
reach a minibatch as a data leaf: ``attach_weights(data, ρ)`` pairs every example with its weight,
so the sampler's and the trainer's minibatch gathers carry them along. ``evaluate_patterning``
trains with and without the weights over several seeds and compares the realised shift of each
observable with the predicted one.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from slt_jax import results
from slt_jax.training import train
from slt_jax.types import Array, Batch, LossFn, Params

__all__ = ["PatterningResult", "PatterningEvaluation", "pattern", "evaluate_patterning", "reweighted_loss", "attach_weights"]


@results.register
@dataclasses.dataclass(frozen=True)
class PatterningResult(results.Result):
    """What ``pattern`` returns; ``evaluate_patterning`` and ``attach_weights`` take it as it is.

    Attributes:
        weights: ``(n,)`` per-example weights ρ = 1 + α s (each example takes its group's weight).
        group_weights: ``(G,)`` one weight per group.
        group_names: ``G`` group names (the dict keys, or the ids ``"0"``, ``"1"``, ...).
        group_sizes: ``(G,)`` number of examples in each group.
        group_chi: ``(k, G)`` χ_g = Σ_{j∈g} χ_j, the susceptibility of each observable to each group.
        group_stderr: ``(k, G)`` its standard error over chains (NaN without per-chain estimates).
        direction: ``(G,)`` the solved direction s (χ_G s = dμ when reachable).
        alpha: the α used, ≤ ``requested_alpha`` so that every weight is ≥ ``min_weight``.
        requested_alpha: the α asked for.
        achievable_fraction: ``alpha / requested_alpha`` (1.0 when the request was met).
        min_weight: the floor on the weights (None: no floor).
        shift: ``(k,)`` predicted α χ_G s in χ units; ⟨φ⟩ moves by ≈ β ``shift`` (β = nβ / n).
        shift_stderr: ``(k,)`` its standard error from χ̂'s per-chain spread (NaN without chains).
    """

    weights: np.ndarray
    group_weights: np.ndarray
    group_names: list[str]
    group_sizes: np.ndarray
    group_chi: np.ndarray
    group_stderr: np.ndarray
    direction: np.ndarray
    alpha: float
    requested_alpha: float
    achievable_fraction: float
    min_weight: float | None
    shift: np.ndarray
    shift_stderr: np.ndarray

    xarray_dims = {
        "weights": ("example",), "group_weights": ("group",), "group_sizes": ("group",),
        "group_chi": ("observable", "group"), "group_stderr": ("observable", "group"), "direction": ("group",),
        "shift": ("observable",), "shift_stderr": ("observable",),
    }

    def summary(self) -> str:
        """α (and how much of the request it met), the weights' range and the predicted shift."""
        return (
            f"PatterningResult({len(self.group_names)} groups, alpha={self.alpha:.4g} "
            f"({self.achievable_fraction:.0%} of the requested {self.requested_alpha:.4g}); weights in "
            f"[{self.weights.min():.3g}, {self.weights.max():.3g}]; predicted shift {np.round(self.shift, 4).tolist()} "
            f"± {np.round(self.shift_stderr, 4).tolist()})"
        )

    def _dataset(self):
        dataset = super()._dataset()
        return dataset.assign_coords(group=list(self.group_names))


def _observables_matrix(chi, columns) -> tuple[np.ndarray, np.ndarray | None]:
    """``(k, n)`` χ and ``(num_chains, k, n)`` per-chain χ (None for a plain matrix)."""
    per_chain = None
    if hasattr(chi, "chi") and hasattr(chi, "components"):
        names = list(chi.components)
        per_chain = getattr(chi, "chi_per_chain", None)
        per_chain = None if per_chain is None else np.asarray(per_chain, np.float64).transpose(0, 2, 1)
        chi = np.asarray(chi.chi, np.float64).T
    else:
        chi = np.asarray(chi, np.float64)
        names = None
    if chi.ndim != 2:
        raise ValueError(f"chi must be a (num_observables, num_examples) matrix, got shape {chi.shape}.")
    if columns is not None:
        columns = [columns] if isinstance(columns, (str, int, np.integer)) else list(columns)
        positions = []
        for column in columns:
            if isinstance(column, str):
                if names is None or column not in names:
                    raise ValueError(f"columns: {column!r} is not a column name; use one of {names} (names need a SusceptibilityResult).")
                positions.append(names.index(column))
            elif isinstance(column, (int, np.integer)) and -chi.shape[0] <= column < chi.shape[0]:
                positions.append(int(column))
            else:
                raise ValueError(f"columns: {column!r} is not a column name or an index in [0, {chi.shape[0]}).")
        chi = chi[positions]
        per_chain = None if per_chain is None else per_chain[:, positions]
    return chi, per_chain


def _group_ids(groups, n: int) -> tuple[np.ndarray, list[str]]:
    """``(n,)`` group index of every example, and the G group names."""
    if groups is None:
        return np.arange(n), [str(j) for j in range(n)]
    if isinstance(groups, Mapping):
        ids = np.full(n, -1)
        for g, (name, rows) in enumerate(groups.items()):
            rows = np.atleast_1d(np.asarray(rows))
            if rows.size == 0:
                raise ValueError(f"groups[{name!r}] is empty; every group needs at least one row (drop it or give it rows).")
            if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer) or rows.min() < -n or rows.max() >= n:
                raise ValueError(f"groups[{name!r}] must be integer row indices in [0, n={n}), got {rows!r}.")
            if np.any(ids[rows] >= 0) or len(np.unique(rows % n)) != rows.size:
                raise ValueError(f"groups[{name!r}] repeats a row or shares rows with another group; groups must be disjoint.")
            ids[rows] = g
        if np.any(ids < 0):
            raise ValueError(f"groups cover {np.sum(ids >= 0)} of the n={n} rows; put every row in a group (e.g. a group 'rest': other rows).")
        return ids, [str(name) for name in groups]
    ids = np.asarray(groups)
    if ids.ndim != 1 or ids.shape[0] != n:
        raise ValueError(f"groups has shape {ids.shape} but chi has n={n} examples (the rows of result.chi); pass one group id per example, shape ({n},).")
    if not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0:
        raise ValueError(f"groups must be non-negative integer ids 0..G-1 (dtype {ids.dtype}, min {ids.min()}); or a dict name -> row indices.")
    sizes = np.bincount(ids)
    if np.any(sizes == 0):
        raise ValueError(f"groups: ids {np.flatnonzero(sizes == 0).tolist()} have no rows (empty groups); renumber 0..G-1, e.g. np.unique(groups, return_inverse=True)[1].")
    return ids, [str(g) for g in range(len(sizes))]


def _group_sum(values: np.ndarray, ids: np.ndarray, num_groups: int) -> np.ndarray:
    """Sums the last axis (examples) of ``values`` within each group: ``(..., n) -> (..., G)``."""
    out = np.zeros((num_groups,) + values.shape[:-1])
    np.add.at(out, ids, np.moveaxis(values, -1, 0))
    return np.moveaxis(out, 0, -1)


def _positive_fraction(step: np.ndarray, min_weight: float | None) -> float:
    """The fraction t ∈ (0, 1] such that 1 + t·step ≥ min_weight everywhere."""
    lowest = float(step.min()) if step.size else 0.0
    if min_weight is None or 1.0 + lowest >= min_weight:
        return 1.0
    return (1.0 - min_weight) / -lowest


def _stderr(per_chain: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """std (ddof=1) over finite chains / sqrt(their number), axis 0; NaN without chains."""
    if per_chain is None:
        return np.full(shape, np.nan)
    good = np.isfinite(per_chain).sum(axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # fewer than two finite chains: NaN
        return np.nanstd(per_chain, axis=0, ddof=1) / np.sqrt(np.maximum(good, 1))


def pattern(
    chi,
    target_shift,
    alpha: float = 1.0,
    *,
    groups: np.ndarray | Mapping[str, Sequence[int]] | None = None,
    columns: Sequence[str | int] | None = None,
    min_weight: float | None = 0.05,
    rcond: float | None = None,
) -> PatterningResult:
    """Weights ρ = 1 + α s toward a target shift dμ, per example or per group of examples.

    s is the minimum-norm solution of χ_G s = dμ (least squares when unreachable), χ_G the ``(k, G)``
    group susceptibilities (sums of their examples' χ); without ``groups`` every example is its own
    group and ρ = 1 + α χᵀ(χχᵀ)⁺ dμ. α is then reduced, if needed, so every weight is ≥ ``min_weight``.

    Args:
        chi: ``(k, n)`` susceptibilities of k observables to n training examples, or a
            ``SusceptibilityResult`` (its ``chi`` is ``(n, k)`` and is transposed here; its
            ``chi_per_chain`` gives the standard errors).
        target_shift: ``(k,)`` dμ, the desired direction of the observables' shift.
        alpha: α, the strength; the realized shift of ⟨φ⟩ is ≈ α β dμ (β = nβ / n).
        groups: ``(n,)`` int group ids 0..G-1 over the examples (the rows of ``result.chi``), or a
            dict name -> row indices that partitions the rows. None: one group per example.
        columns: the observables to target: column names of the result (or integer positions);
            None uses every column.
        min_weight: floor on every weight, in [0, 1); None allows any (even negative) weight.
        rcond: singular-value cutoff of the least-squares solve (numpy's default when None).

    Returns:
        A ``PatterningResult``; ``.weights`` is ``(n,)`` float64 and χ(ρ - 1)/α = dμ exactly when
        χ_G has full row rank and α was not reduced. Warns when α was reduced.

    >>> import numpy as np, slt_jax as sj
    >>> chi = np.array([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]])
    >>> rho = sj.pattern(chi, np.array([0.1, 0.0]), alpha=2.0).weights
    >>> np.allclose(chi @ (rho - 1) / 2.0, [0.1, 0.0])
    True
    >>> chi = np.array([[0.5, 0.5, -0.2, -0.8]])  # two groups of two examples
    >>> result = sj.pattern(chi, np.array([0.2]), groups=np.array([0, 0, 1, 1]))
    >>> result.group_chi, result.group_weights, result.weights.shape
    (array([[ 1., -1.]]), array([1.1, 0.9]), (4,))
    """
    chi, per_chain = _observables_matrix(chi, columns)
    target_shift = np.atleast_1d(np.asarray(target_shift, np.float64))
    if target_shift.ndim != 1 or target_shift.shape[0] != chi.shape[0]:
        hint = " (chi looks transposed: pass result.chi.T or the SusceptibilityResult)" if target_shift.shape[-1] == chi.shape[1] else ""
        raise ValueError(
            f"target_shift has shape {target_shift.shape} but chi has {chi.shape[0]} observables (rows){hint}; "
            "target_shift needs one entry per observable (select observables with columns=)."
        )
    if not (np.all(np.isfinite(chi)) and np.all(np.isfinite(target_shift))):
        raise ValueError("chi and target_shift must be finite (drop diverged components first).")
    if not np.isfinite(alpha):
        raise ValueError(f"alpha={alpha!r} must be a finite number.")
    if min_weight is not None and not 0.0 <= min_weight < 1.0:
        raise ValueError(f"min_weight={min_weight!r} must lie in [0, 1) (the unweighted ρ = 1 must satisfy it), or be None.")
    ids, names = _group_ids(groups, chi.shape[1])
    sizes = np.bincount(ids, minlength=len(names)).astype(np.float64)
    group_chi = _group_sum(chi, ids, len(names))
    # min Σ_g m_g s_g² subject to χ_G s = dμ: the minimum-norm solve in t = √m s.
    scaled, *_ = np.linalg.lstsq(group_chi / np.sqrt(sizes), target_shift, rcond=rcond)
    direction = scaled / np.sqrt(sizes)
    fraction = _positive_fraction(alpha * direction, min_weight)
    if fraction < 1.0:
        warnings.warn(
            f"pattern: the requested shift needs weights below min_weight={min_weight} (lowest "
            f"{1 + alpha * direction.min():.3g}); alpha reduced from {alpha:.4g} to {fraction * alpha:.4g}, so only "
            f"{fraction:.1%} of the requested shift is achievable with positive weights.",
            UserWarning,
            stacklevel=2,
        )
    group_per_chain = None if per_chain is None else _group_sum(per_chain, ids, len(names))  # (chains, k, G)
    return PatterningResult(
        weights=1.0 + fraction * alpha * direction[ids],
        group_weights=1.0 + fraction * alpha * direction,
        group_names=names,
        group_sizes=sizes.astype(np.int64),
        group_chi=group_chi,
        group_stderr=_stderr(group_per_chain, group_chi.shape),
        direction=direction,
        alpha=float(fraction * alpha),
        requested_alpha=float(alpha),
        achievable_fraction=float(fraction),
        min_weight=min_weight,
        shift=fraction * alpha * group_chi @ direction,
        shift_stderr=_stderr(None if group_per_chain is None else fraction * alpha * group_per_chain @ direction, target_shift.shape),
    )


@results.register
@dataclasses.dataclass(frozen=True)
class PatterningEvaluation(results.Result):
    """What ``evaluate_patterning`` returns (one row per seed, one column per observable).

    Attributes:
        seeds: the training seeds.
        baseline: ``(num_seeds, k)`` observables after unweighted training.
        steered: ``(num_seeds, k)`` observables after weighted training (same seed, same minibatches).
        realised_shift: ``(k,)`` mean over seeds of ``steered - baseline``.
        realised_stderr: ``(k,)`` its standard error (std over seeds, ddof=1, / sqrt(num_seeds)).
        predicted_shift: ``(k,)`` the prediction passed in (None if none).
        predicted_stderr: ``(k,)`` its standard error (zeros if none was passed).
        zscore: ``(k,)`` (realised - predicted) / sqrt(realised_stderr² + predicted_stderr²), or None.
    """

    seeds: list[int]
    baseline: np.ndarray
    steered: np.ndarray
    realised_shift: np.ndarray
    realised_stderr: np.ndarray
    predicted_shift: np.ndarray | None
    predicted_stderr: np.ndarray | None
    zscore: np.ndarray | None

    xarray_dims = {
        "baseline": ("seed", "observable"), "steered": ("seed", "observable"), "realised_shift": ("observable",),
        "realised_stderr": ("observable",), "predicted_shift": ("observable",), "predicted_stderr": ("observable",),
        "zscore": ("observable",),
    }

    def summary(self) -> str:
        """The realised shift against the prediction, per observable."""
        line = (f"PatterningEvaluation({len(self.seeds)} seeds): realised shift "
                f"{np.round(self.realised_shift, 4).tolist()} ± {np.round(self.realised_stderr, 4).tolist()}")
        if self.predicted_shift is not None:
            line += f"; predicted {np.round(self.predicted_shift, 4).tolist()}"
        if self.zscore is not None:
            line += f"; z {np.round(self.zscore, 2).tolist()}"
        return line

    def _dataset(self):
        return super()._dataset().assign_coords(seed=list(self.seeds))


@functools.lru_cache(maxsize=32)
def _weighted_as_data(loss_fn: LossFn) -> LossFn:
    # One loss object per loss_fn (cached), weights travelling as data: the weighted and the
    # unweighted runs, and later calls with the same loss_fn, share one compiled training program.
    return reweighted_loss(loss_fn, np.ones(1), normalize=False)


def _observe(observe_fn: Callable, params: Params) -> np.ndarray:
    value = np.atleast_1d(np.asarray(observe_fn(params), np.float64))
    if value.ndim != 1:
        raise ValueError(f"observe_fn(params) must return a scalar or a (k,) vector, got shape {value.shape}.")
    return value


def _optional_vector(name: str, value, k: int) -> np.ndarray | None:
    if value is None:
        return None
    value = np.atleast_1d(np.asarray(value, np.float64))
    if value.shape != (k,):
        raise ValueError(f"{name} has shape {value.shape} but observe_fn returns k={k} observables; pass shape ({k},).")
    return value


def _weights(weights):
    """The ``(n,)`` weights of a ``PatterningResult``, or ``weights`` itself."""
    return weights.weights if isinstance(weights, PatterningResult) else weights


def evaluate_patterning(
    loss_fn: LossFn,
    params: Params,
    data: Batch,
    weights,
    observe_fn: Callable[[Params], Array],
    *,
    optimizer: optax.GradientTransformation,
    num_steps: int,
    batch_size: int | None = None,
    seeds: Sequence[int] = (0, 1, 2, 3),
    predicted_shift=None,
    predicted_stderr=None,
) -> PatterningEvaluation:
    """Trains once unweighted and once with ``weights`` per seed and compares the observables' shift.

    Each seed trains both runs from ``params`` with ``slt_jax.train`` on the same minibatches
    (common random numbers: the difference cancels most of the minibatch noise), the weighted one
    on the normalized loss Σρl/Σρ. The weighted and unweighted runs share one compiled program.

    Args:
        loss_fn: ``loss_fn(params, batch) -> (batch,)`` per-example (or per-token) losses.
        params: initial parameters of every run.
        data: the training data, leading axis n.
        weights: ``(n,)`` weights ρ, or the ``PatterningResult`` of ``pattern``.
        observe_fn: ``observe_fn(params) -> (k,)`` observables of the trained parameters (e.g.
            per-component losses, a restricted LLC estimate, or the parameters themselves).
        optimizer, num_steps, batch_size: passed to ``slt_jax.train``.
        seeds: at least two minibatch seeds.
        predicted_shift: ``(k,)`` predicted shift of the observables, e.g. β·``result.shift`` with
            β = nβ / n (``result.shift`` is in χ units).
        predicted_stderr: ``(k,)`` its standard error, e.g. β·``result.shift_stderr``.

    Returns:
        A ``PatterningEvaluation``.
    """
    weights = np.asarray(_weights(weights), np.float64)
    if not callable(observe_fn):
        raise TypeError(f"observe_fn must be callable as observe_fn(params) -> (k,), got {observe_fn!r}.")
    seeds = [int(seed) for seed in seeds]
    if len(seeds) < 2:
        raise ValueError(f"seeds={seeds}: pass at least two seeds (the realised shift's standard error is over seeds).")
    if not np.all(np.isfinite(weights)) or weights.size == 0 or weights.mean() <= 0:
        raise ValueError("weights must be finite with a positive mean (the loss is Σρl/Σρ).")
    k = _observe(observe_fn, params).shape[0]
    predicted_shift = _optional_vector("predicted_shift", predicted_shift, k)
    predicted_stderr = _optional_vector("predicted_stderr", predicted_stderr, k)
    loss = _weighted_as_data(loss_fn)
    steered_data = attach_weights(data, weights / weights.mean())
    baseline_data = attach_weights(data, np.ones_like(weights))
    run = functools.partial(train, loss, params, optimizer=optimizer, num_steps=num_steps, batch_size=batch_size)
    baseline = np.stack([_observe(observe_fn, run(baseline_data, seed=seed).params) for seed in seeds])
    steered = np.stack([_observe(observe_fn, run(steered_data, seed=seed).params) for seed in seeds])
    difference = steered - baseline
    shift, stderr = difference.mean(axis=0), difference.std(axis=0, ddof=1) / np.sqrt(len(seeds))
    zscore = None
    if predicted_shift is not None:
        spread = np.sqrt(stderr**2 + (0.0 if predicted_stderr is None else predicted_stderr**2))
        with np.errstate(divide="ignore", invalid="ignore"):
            zscore = (shift - predicted_shift) / spread
    return PatterningEvaluation(seeds, baseline, steered, shift, stderr, predicted_shift, predicted_stderr, zscore)


def attach_weights(data: Batch, weights) -> dict:
    """``{"data": data, "weight": weights}``: per-example weights as a data leaf (minibatches carry them).

    Args:
        data: a pytree of arrays with a leading example axis n.
        weights: ``(n,)`` weights ρ (e.g. from ``pattern``), or ``(n, seq)`` per-token weights.
    """
    weights = np.asarray(_weights(weights))
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
    weights = np.asarray(_weights(weights), np.float64)
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
