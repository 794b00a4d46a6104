"""The default step-size grid, anchored on the posterior's measured scales (power iteration and pilot chains).

The top of the grid is the smaller of 2/a_max (a_max = nβ h_max + γ, h_max the top Hessian
eigenvalue from power iteration over the component's coordinates; SGLD is stable below 4/a_max) and
twice the largest ε whose
gradient-noise bias (ε/8)·nβ²·E||g_B||² could stay within the tolerance of the largest possible LLC,
d/2. Both scales are measured where the chains go (short pilot chains from w*), not only at w*: at a
degenerate point the Hessian and gradient at w* vanish and the localizer alone would set the scale.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from slt_jax import kernels
from slt_jax._src import validation
from slt_jax.calibration.schedule import check_config
from slt_jax.config import SamplerConfig
from slt_jax.restriction import Restriction, insert, restrict
from slt_jax.sampler import Recording, run_chains
from slt_jax.types import Batch, KeyLike, LossFn, Mask, Params

__all__ = ["default_step_sizes", "step_size_grid", "PILOT_CHAINS", "PILOT_STEPS", "PILOT_ROUNDS", "CURVATURE_TOP"]

# Pilot chains that measure the posterior's scales away from w* (where a degenerate loss has no
# curvature): this many chains of this many steps, at most this many rounds.
PILOT_CHAINS = 4
PILOT_STEPS = 200
PILOT_ROUNDS = 5
_NUM_GRADIENT_BATCHES = 8
# The grid's top in units of 1/a_max. At ε a = 2 the stiffest direction's variance is 2x too large
# (1/(1 - ε a/4)), but it is one direction of d: the LLC's step-size bias is the sum over directions
# of ε a_i/8 (the predicted bias the rule caps), and chains that travel further level off sooner.
# 1/a_max kept deep networks' chains far from equilibrium (issue 21).
CURVATURE_TOP = 2.0


@functools.partial(jax.jit, static_argnames=("loss_fn", "num_iterations"))
def _curvature_and_gradient(loss_fn, params, batch, batches, mask, start, num_iterations):
    flat, unravel = ravel_pytree(params)
    flat_mask = jnp.ones_like(flat) if mask is None else ravel_pytree(jax.tree.map(lambda m, p: jnp.broadcast_to(m, p.shape).astype(p.dtype), mask, params))[0]
    mean_loss = lambda v, b: kernels.mean_loss(loss_fn, unravel(v), b)
    hvp = lambda v: flat_mask * jax.jvp(jax.grad(lambda w: mean_loss(w, batch)), (flat,), (flat_mask * v,))[1]

    def power(_, v):
        w = hvp(v)
        return w / (jnp.linalg.norm(w) + 1e-30)

    start = start / jnp.linalg.norm(start)
    v = jax.lax.fori_loop(0, num_iterations, power, start)
    top = jnp.abs(jnp.vdot(v, hvp(v)))
    squared = jax.lax.map(lambda b: jnp.sum((flat_mask * jax.grad(mean_loss)(flat, b)) ** 2), batches)
    # Where the Hessian vanishes (a degenerate w*) the iteration collapses to 0: keep the start.
    usable = jnp.isfinite(top) & (jnp.linalg.norm(v) > 0.5)
    return jnp.where(usable, top, 0.0), jnp.mean(squared), jnp.where(usable, v, start)


class _Probe(NamedTuple):
    """What the scales are measured with: the loss, a curvature batch ``(m, ...)``, gradient
    batches ``(8, batch_size, ...)`` and the component's mask (None = every coordinate)."""

    loss_fn: LossFn
    batch: Batch
    batches: Batch
    mask: Mask | None


class _Scales(NamedTuple):
    """Top Hessian eigenvalue (max over points), mean E||g_B||², and the last power-iteration vector."""

    top: float
    squared: float
    direction: jax.Array


class _Anchor(NamedTuple):
    """The bounds that turn measured scales into the top of the grid."""

    nbeta: float
    localization: float
    num_coordinates: int
    bias_tolerance: float

    def largest_step(self, top: float, squared: float) -> float:
        a_max = self.nbeta * top + self.localization
        if not a_max > 0:
            raise ValueError("the loss has no curvature at w* and localization is 0: pass step_sizes explicitly.")
        largest = CURVATURE_TOP / a_max
        if squared > 0 and self.nbeta > 0:
            bias_cap = 2.0 * 8.0 * self.bias_tolerance * (self.num_coordinates / 2.0) / (self.nbeta**2 * squared)
            largest = min(largest, bias_cap)
        return largest


class _Pilot(NamedTuple):
    """The pilot chains: the config they run (step size set per round), from w*, with their own keys."""

    config: SamplerConfig
    params: Params
    data: Batch
    key: jax.Array
    restriction: Restriction


def _scales(probe: _Probe, points, direction, num_iterations: int) -> _Scales:
    """Scales over ``points``; each power iteration starts from the previous top eigenvector (the
    pilot's end points need only a few iterations)."""
    tops, squares = [], []
    for point in points:
        top, squared, direction = _curvature_and_gradient(
            probe.loss_fn, point, probe.batch, probe.batches, probe.mask, direction, num_iterations
        )
        tops.append(float(top))
        squares.append(float(squared))
    return _Scales(max(tops), float(np.mean(squares)), direction)


def _pilot_ends(probe: _Probe, pilot: _Pilot, step_size: float, attempt: int) -> list | None:
    """The pilot chains' end points as full params pytrees, or None when a pilot chain diverged."""
    mask = probe.mask
    chains = run_chains(
        probe.loss_fn, [pilot.params], pilot.data, pilot.config.replace(step_size=step_size),
        key=jax.random.fold_in(pilot.key, attempt), masks=None if mask is None else [mask],
        # center_loss: L_n(w*) is then never computed (the pilot reads only its end points), at the
        # cost of one forward at w* on the pilot's one recorded draw.
        recording=Recording(center_loss=True), progress=False,
    )
    if np.asarray(chains.diverged).any():
        return None
    positions, restriction = chains.final_positions[0], pilot.restriction
    return [
        insert(restriction.layout, restriction.offsets, pilot.params, jax.tree.map(lambda x: x[c], positions))
        for c in range(PILOT_CHAINS)
    ]


def _refine(probe: _Probe, pilot: _Pilot, anchor: _Anchor, center: _Scales) -> tuple[float, float, int]:
    """(top of the grid, E||g_B||², the pilots' chain-steps) after the pilot rounds: lower the top to
    the scales measured at the pilot's end points until it changes by less than 2x; a diverging
    pilot divides it by 8."""
    largest, squared, direction = anchor.largest_step(center.top, center.squared), center.squared, center.direction
    chain_steps = 0
    for attempt in range(PILOT_ROUNDS):  # one compiled program: only the step size changes
        ends = _pilot_ends(probe, pilot, largest / 8.0, attempt)
        chain_steps += PILOT_CHAINS * PILOT_STEPS
        if ends is None:
            largest /= 8.0
            continue
        top, squared, direction = _scales(probe, ends, direction, 10)
        measured = anchor.largest_step(max(top, center.top), squared)
        if measured >= largest / 2.0:
            return min(largest, measured), squared, chain_steps
        largest = measured
    return largest, squared, chain_steps


def _probe(loss_fn, data, n: int, batch_size: int, mask, rng: np.random.Generator) -> _Probe:
    subset = rng.choice(n, size=min(n, max(batch_size, 1024)), replace=False)
    batch = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)[subset]), data)
    indices = rng.integers(0, n, size=(_NUM_GRADIENT_BATCHES, batch_size))
    batches = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)[indices]), data)
    return _Probe(loss_fn, batch, batches, mask)


def default_step_sizes(
    loss_fn: LossFn, params: Params, data: Batch, config: SamplerConfig, *, key: KeyLike,
    component: Mask | None = None,
    num_step_sizes: int = 6,
    bias_tolerance: float = 0.05,
) -> np.ndarray:
    """A factor-2 grid of step sizes, ascending, anchored on the posterior's measured scales.

    Uses the config's nβ (``nbeta_for(n)``), γ, ``batch_size`` and ``preconditioner``. The top of the
    grid is the smaller of ``CURVATURE_TOP``/a_max = 2/a_max (a_max = nβ h_max + γ, h_max the top
    Hessian eigenvalue from power iteration over the ``component``'s coordinates; SGLD is stable below
    4/a_max, and at 2/a_max the stiffest direction's variance is 2x too large, one direction of d)
    and twice the largest ε whose gradient-noise bias (ε/8)·nβ²·E||g_B||² could stay within
    ``bias_tolerance`` of the largest possible LLC, d/2.

    Both scales are measured where the chains go, not only at w*: at a degenerate point (normal
    crossings w1^a w2^b, where the Hessian and gradient at w* vanish) the scales at w* are those of the
    localizer alone, orders of magnitude too loose. So ``PILOT_CHAINS`` short plain-SGLD pilot chains
    (``PILOT_STEPS`` steps at an eighth of the current top, keys independent of the calibration's) are
    run from w*; h_max is the largest over w* and their end points, E||g_B||² the mean over the end
    points, and the top is lowered to the new value until it changes by less than 2x (at most
    ``PILOT_ROUNDS`` rounds; a pilot that diverges divides the top by 8). For a regular (quadratic)
    minimum the top moves by at most the factor the gradient term adds. The grid descends by factors
    of 2. For an RMSProp preconditioner it is multiplied by sqrt(E[g_i²]) + eps, the typical
    preconditioner scale.

    Returns:
        ``(num_step_sizes,)`` ascending. (``step_size_grid`` also returns the pilots' chain-steps.)
    """
    return step_size_grid(loss_fn, params, data, config, key=key, component=component, num_step_sizes=num_step_sizes,
                          bias_tolerance=bias_tolerance)[0]


def step_size_grid(loss_fn, params, data, config, *, key, component=None, num_step_sizes: int = 6,
                   bias_tolerance: float = 0.05) -> tuple[np.ndarray, int]:
    """``(default_step_sizes(...), the pilot chains' chain-steps)``: what the grid cost to anchor."""
    n = validation.check_data(data)
    validation.check_params(params)
    check_config(config)
    num_step_sizes = validation.check_positive_int(num_step_sizes, "num_step_sizes")
    key = validation.as_key(key)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
    mask = validation.check_masks(component, params, name="component")
    probe = _probe(loss_fn, data, n, min(config.batch_size, n), mask, rng)
    flat = ravel_pytree(params)[0]
    start = jnp.asarray(rng.normal(size=flat.shape), flat.dtype)
    restriction = restrict(mask, params)
    anchor = _Anchor(config.nbeta_for(n), config.localization, restriction.num_sampled, bias_tolerance)
    center = _scales(probe, [params], start, 30)
    pilot = _Pilot(
        config.replace(
            step_size=anchor.largest_step(center.top, center.squared), num_chains=PILOT_CHAINS, num_draws=1,
            num_burnin=PILOT_STEPS - 1, num_steps_between_draws=1, mala_every=0, diagnostics_every=PILOT_STEPS,
            preconditioner="sgld",
        ),
        params, data, jax.random.fold_in(key, 0x9170), restriction,
    )
    largest, squared, pilot_chain_steps = _refine(probe, pilot, anchor, center)
    preconditioner = config.preconditioner_spec
    if preconditioner.adaptive:
        # RMSProp steps are ε / (sqrt(v) + eps) per coordinate, v ≈ E[g²] at the start: rescale the
        # grid so that the typical effective step matches the plain-SGLD anchor.
        largest *= math.sqrt(squared / restriction.num_sampled) + preconditioner.eps
    return largest * 2.0 ** -np.arange(num_step_sizes)[::-1], pilot_chain_steps
