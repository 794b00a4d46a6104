"""Pure-functional localized SGLD kernels (SCIENCE.md §1).

The target is the localized, tempered posterior

    p(w) ∝ exp(-nβ L_n(w) - (γ/2) ||w - w*||² - (λ_wd/2) ||w||²)

and one SGLD step with step size ε, mask M (True = sampled) and loss gradient g of the MEAN
minibatch loss is

    w ← w - (ε_t/2) ⊙ M ⊙ [nβ g + γ (w - w*) + λ_wd w] + sqrt(ε_t) ⊙ M ⊙ ξ,   ξ ~ N(0, I)

with ε_t = ε for plain SGLD and ε_t = ε / (sqrt(v̂_t) + eps) for RMSProp-SGLD, whose second-moment
statistics v are fed by the loss gradient g only (never by the localization term).

The kernels follow blackjax: ``init(position) -> SGLDState`` and
``kernel(rng_key, state, batch) -> (SGLDState, SGLDInfo)``. Hyperparameters travel as data (a
``Hyperparameters`` NamedTuple of arrays), so grids of them can be vmapped without recompiling.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from slt_jax.types import Array, Batch, LossFn, Mask, Params, PRNGKey, PyTree

__all__ = [
    "Hyperparameters",
    "Preconditioner",
    "PRECONDITIONERS",
    "SGLDState",
    "SGLDInfo",
    "hyperparameters",
    "get_preconditioner",
    "init",
    "build_kernel",
    "sgld_update",
    "mean_loss",
    "potential",
    "mala_log_acceptance",
]


class Hyperparameters(NamedTuple):
    """SGLD hyperparameters as float arrays (scalars, or stacked along leading grid axes).

    Attributes:
        step_size: ε, shape ``()``.
        nbeta: nβ, the inverse temperature times the number of samples, shape ``()``.
        localization: γ, the strength of the pull toward w*, shape ``()``.
        weight_decay: λ_wd, an optional Gaussian prior centred at zero, shape ``()``.
    """

    step_size: Array
    nbeta: Array
    localization: Array
    weight_decay: Array


class Preconditioner(NamedTuple):
    """Static description of the per-coordinate step size ε_t.

    Attributes:
        name: ``"sgld"``, ``"rmsprop_sgld"`` (Hitchcock & Hoogland 2025, Alg. 3) or
            ``"rmsprop_sgld_devinterp"`` (devinterp's convention).
        alpha: RMSProp decay α.
        eps: the constant added to sqrt(v̂).
        initial_second_moment: v_{-1}; 1.0 for H&H, 0.0 for devinterp.
        bias_correction: divide v_t by 1 - α^{t+1} (H&H) or not (devinterp).
    """

    name: str
    alpha: float = 0.99
    eps: float = 0.1
    initial_second_moment: float = 1.0
    bias_correction: bool = True

    @property
    def adaptive(self) -> bool:
        return self.name != "sgld"


PRECONDITIONERS: dict[str, Preconditioner] = {
    "sgld": Preconditioner("sgld"),
    # eps = 0.1 caps any coordinate's step at 10ε: a coordinate whose loss gradient is exactly zero
    # (a dead ReLU unit, an unused weight) has v̂_t -> 0, and a tiny eps would give it a step of
    # ε/eps that the localization term cannot stabilise (measured: divergence after ~2.5k steps).
    "rmsprop_sgld": Preconditioner("rmsprop_sgld", 0.99, 0.1, 1.0, True),
    "rmsprop_sgld_devinterp": Preconditioner("rmsprop_sgld_devinterp", 0.99, 0.1, 0.0, False),
}


def get_preconditioner(sampler: str | Preconditioner) -> Preconditioner:
    """Returns the ``Preconditioner`` named by ``sampler`` (or ``sampler`` itself)."""
    if isinstance(sampler, Preconditioner):
        if sampler.name not in PRECONDITIONERS:
            raise ValueError(f"sampler: unknown preconditioner name {sampler.name!r}; use one of {sorted(PRECONDITIONERS)}.")
        if not 0.0 <= sampler.alpha < 1.0:
            raise ValueError(f"sampler: RMSProp alpha must lie in [0, 1), got {sampler.alpha}.")
        if sampler.eps < 0:
            raise ValueError(f"sampler: RMSProp eps must be >= 0, got {sampler.eps}.")
        return sampler
    if sampler not in PRECONDITIONERS:
        raise ValueError(
            f"sampler={sampler!r} is not a known sampler; use one of {sorted(PRECONDITIONERS)} "
            "or pass a slt_jax.Preconditioner."
        )
    return PRECONDITIONERS[sampler]


class SGLDState(NamedTuple):
    """State of one chain.

    Attributes:
        position: the current parameters w_t, a pytree like the params.
        second_moment: RMSProp's running mean of g² (a pytree like the params), or ``None`` for
            plain SGLD.
        count: the number of steps taken, int32 scalar.
    """

    position: Params
    second_moment: PyTree | None
    count: Array


class SGLDInfo(NamedTuple):
    """Per-step diagnostics, all scalars.

    Attributes:
        loss: the minibatch mean loss L_B(w_t) at the pre-step position (the batch of the gradient).
        grad_norm: ||M ⊙ g_t||, the loss-gradient norm over sampled coordinates.
        localization_norm: ||M ⊙ γ (w_t - w*)||, the size of the localization force.
        noise_norm: ||sqrt(ε_t) ⊙ M ⊙ ξ_t||, the size of the injected noise.
        distance: ||M ⊙ (w_t - w*)||, the distance from w*.
    """

    loss: Array
    grad_norm: Array
    localization_norm: Array
    noise_norm: Array
    distance: Array


def hyperparameters(step_size, nbeta, localization, weight_decay=0.0, dtype=jnp.float32) -> Hyperparameters:
    """Builds a ``Hyperparameters`` of float arrays (no validation; see ``slt_jax.sampler``)."""
    as_array = lambda x: jnp.asarray(x, dtype=dtype)
    return Hyperparameters(as_array(step_size), as_array(nbeta), as_array(localization), as_array(weight_decay))


def mean_loss(loss_fn: LossFn, params: Params, batch: Batch) -> Array:
    """The mean of ``loss_fn(params, batch)`` over every example (and token)."""
    return jnp.mean(loss_fn(params, batch))


def init(position: Params, sampler: str | Preconditioner = "sgld") -> SGLDState:
    """Initial state at ``position`` (usually w*)."""
    preconditioner = get_preconditioner(sampler)
    if preconditioner.adaptive:
        second_moment = jax.tree.map(
            lambda w: jnp.full(jnp.shape(w), preconditioner.initial_second_moment, jnp.result_type(w)), position
        )
    else:
        second_moment = None
    return SGLDState(position, second_moment, jnp.zeros((), jnp.int32))


def _where_mask(mask: Mask | None, value: PyTree) -> PyTree:
    if mask is None:
        return value
    # `where` (not a multiply) so that a masked-out coordinate stays exact even if its update is inf.
    return jax.tree.map(lambda m, v: jnp.where(m, v, jnp.zeros_like(v)), mask, value)


def _step_sizes(preconditioner: Preconditioner, second_moment, grad, count, step_size):
    """Returns (per-coordinate ε_t pytree or scalar, new second moment)."""
    if not preconditioner.adaptive:
        return step_size, None
    alpha = preconditioner.alpha
    new_second_moment = jax.tree.map(lambda v, g: alpha * v + (1.0 - alpha) * g * g, second_moment, grad)
    if preconditioner.bias_correction:
        correction = 1.0 - alpha ** (count.astype(jnp.float32) + 1.0)
        corrected = jax.tree.map(lambda v: v / correction, new_second_moment)
    else:
        corrected = new_second_moment
    step_sizes = jax.tree.map(lambda v: step_size / (jnp.sqrt(v) + preconditioner.eps), corrected)
    return step_sizes, new_second_moment


def _per_leaf(step_sizes, position):
    if isinstance(step_sizes, jax.Array) and jnp.ndim(step_sizes) == 0:
        return jax.tree.map(lambda _: step_sizes, position)
    return step_sizes


def sgld_update(
    state: SGLDState,
    loss: Array,
    grad: Params,
    noise: Params,
    center: Params,
    hyper: Hyperparameters,
    mask: Mask | None,
    preconditioner: Preconditioner,
) -> tuple[SGLDState, SGLDInfo]:
    """One SGLD step given the loss, its gradient and standard-normal noise (all at ``state``).

    Args:
        state: the chain's state at w_t.
        loss: L_B(w_t), scalar.
        grad: ∇L_B(w_t), pytree like the position.
        noise: ξ_t ~ N(0, I), pytree like the position.
        center: w*, pytree like the position.
        hyper: the hyperparameters (scalars).
        mask: bool pytree (leaves scalar or leaf-shaped) or None for "sample everything".
        preconditioner: the static preconditioner description.

    Returns:
        The new state and the step's ``SGLDInfo``.
    """
    position = state.position
    step_sizes, second_moment = _step_sizes(preconditioner, state.second_moment, grad, state.count, hyper.step_size)
    step_sizes = _per_leaf(step_sizes, position)
    displacement = jax.tree.map(lambda w, c: w - c, position, center)
    localization_force = jax.tree.map(lambda d: hyper.localization * d, displacement)
    drift = jax.tree.map(
        lambda g, f, w: hyper.nbeta * g + f + hyper.weight_decay * w, grad, localization_force, position
    )
    scaled_noise = jax.tree.map(lambda e, xi: jnp.sqrt(e) * xi, step_sizes, noise)
    increment = jax.tree.map(lambda e, dr, xi: -0.5 * e * dr + xi, step_sizes, drift, scaled_noise)
    new_position = jax.tree.map(lambda w, u: w + u, position, _where_mask(mask, increment))
    distance = optax.tree.norm(_where_mask(mask, displacement))
    info = SGLDInfo(
        loss=loss,
        grad_norm=optax.tree.norm(_where_mask(mask, grad)),
        localization_norm=hyper.localization * distance,  # ||M⊙γ(w - w*)|| exactly, no extra pass
        noise_norm=optax.tree.norm(_where_mask(mask, scaled_noise)),
        distance=distance,
    )
    if second_moment is not None and mask is not None:
        # Statistics of a frozen coordinate are irrelevant; keep them unchanged for clarity.
        second_moment = jax.tree.map(lambda m, new, old: jnp.where(m, new, old), mask, second_moment, state.second_moment)
    return SGLDState(new_position, second_moment, state.count + 1), info


def potential(loss: Array, position: Params, center: Params, hyper: Hyperparameters, mask: Mask | None) -> Array:
    """U(w) = nβ L + (γ/2)||M(w - w*)||² + (λ_wd/2)||M w||² (the negative log target, up to a constant)."""
    displacement = jax.tree.map(lambda w, c: w - c, position, center)
    return (
        hyper.nbeta * loss
        + 0.5 * hyper.localization * optax.tree.norm(_where_mask(mask, displacement), squared=True)
        + 0.5 * hyper.weight_decay * optax.tree.norm(_where_mask(mask, position), squared=True)
    )


def mala_log_acceptance(
    position: Params,
    potential_value: Array,
    potential_grad: Params,
    proposal: Params,
    proposal_potential: Array,
    proposal_potential_grad: Params,
    step_sizes: Params,
    mask: Mask | None,
) -> Array:
    """log of the Metropolis-adjusted Langevin acceptance probability of ``position -> proposal``.

    The proposal density is q(w'|w) = N(w - (ε/2)∇U(w), diag ε) over the sampled coordinates
    (Lau et al. 2023); both potentials must be evaluated on the same minibatch. Returns
    min(0, log α), so ``exp`` of it is the acceptance probability.
    """

    def log_q(to, frm, grad_frm):
        residual = jax.tree.map(lambda t, f, g, e: (t - f + 0.5 * e * g) ** 2 / (2.0 * e), to, frm, grad_frm, step_sizes)
        return -optax.tree.sum(_where_mask(mask, residual))

    log_ratio = (
        potential_value
        - proposal_potential
        + log_q(position, proposal, proposal_potential_grad)
        - log_q(proposal, position, potential_grad)
    )
    return jnp.minimum(0.0, jnp.where(jnp.isnan(log_ratio), -jnp.inf, log_ratio))


def build_kernel(
    loss_fn: LossFn,
    center: Params,
    *,
    sampler: str | Preconditioner = "sgld",
    mask: Mask | None = None,
):
    """Builds a single-chain SGLD kernel (blackjax style).

    Args:
        loss_fn: ``loss_fn(params, batch)`` returning per-example losses (or a scalar mean).
        center: w*, the localization centre.
        sampler: ``"sgld"``, ``"rmsprop_sgld"``, ``"rmsprop_sgld_devinterp"`` or a ``Preconditioner``.
        mask: bool pytree, True = sampled (None samples everything).

    Returns:
        ``kernel(rng_key, state, batch, hyper) -> (SGLDState, SGLDInfo)``.

    >>> import jax, jax.numpy as jnp
    >>> import slt_jax as sj
    >>> loss_fn = lambda w, batch: 0.5 * jnp.sum(w ** 2) * jnp.ones(batch.shape[0])
    >>> kernel = sj.kernels.build_kernel(loss_fn, jnp.zeros(2))
    >>> state = sj.kernels.init(jnp.zeros(2))
    >>> hyper = sj.kernels.hyperparameters(1e-3, 100.0, 1.0)
    >>> state, info = kernel(jax.random.key(0), state, jnp.zeros((8, 1)), hyper)
    >>> state.position.shape
    (2,)
    """
    preconditioner = get_preconditioner(sampler)
    value_and_grad = jax.value_and_grad(lambda p, b: mean_loss(loss_fn, p, b))

    def kernel(rng_key: PRNGKey, state: SGLDState, batch: Batch, hyper: Hyperparameters):
        loss, grad = value_and_grad(state.position, batch)
        noise = tree_normal(rng_key, state.position)
        return sgld_update(state, loss, grad, noise, center, hyper, mask, preconditioner)

    return kernel


def tree_normal(rng_key: PRNGKey, like: PyTree) -> PyTree:
    """Standard-normal noise with the structure, shapes and dtypes of ``like``.

    One flat draw, unravelled: a single threefry instance instead of one per leaf, which cuts the
    compile time of a chunk program several-fold (measured 26 s -> 6 s for a 3-matrix network).
    """
    flat, unravel = ravel_pytree(like)
    return unravel(jax.random.normal(rng_key, flat.shape, flat.dtype))
