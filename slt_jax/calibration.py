"""Choosing ε, nβ and γ: a grid of short chains as ONE compiled program, and a stated rule.

``calibrate`` runs every (nβ, γ, ε) setting of a grid in ONE ``run_chains`` call (``grid=``: the
settings are configurations of one compiled program, grouped only under the config's
``memory_budget``), measures each setting's health (``slt_jax.diagnostics``, on the per-draw
nβ(L - L*) of ``slt_jax.traces.llc_draws``) and recommends one as a ``SamplerConfig``
(``CalibrationResult.recommended``). The conventions are docs/conventions.md §4.

The rule (``RULE``). A setting is a CANDIDATE when no chain diverged, there are no loss spikes, at
most half of the draws lie below L(w*), the mean MALA acceptance is >= ``mala_threshold`` (0.9) and
the predicted step-size bias (ε/8)·nβ²·E||g_B||² is <= ``bias_tolerance`` (5%) of the group's
reference LLC. It is EQUILIBRATED when, in addition, the loss rose clearly above L(w*), levelled
off within the calibration burn-in (no significant trend afterwards) and the chains agree (split
R-hat <= 1.1). The reference LLC of an (nβ, γ) group is the median bias-corrected LLC (LLC minus
predicted bias) of its equilibrated settings. Among groups with a candidate and an equilibrated
setting, the rule takes

1. nβ closest (in log) to ``target_nbeta`` (default: the config's, n / log n when None): nβ defines the estimand, so it is
   the user's choice, not a tuning knob;
2. the smallest γ: localization biases the LLC downwards (½ nβh/(nβh + γ) per direction), so γ is
   raised only as far as needed for the chains to level off (no climb) and not diverge;
3. the largest candidate ε: at a fixed number of steps the chains mix faster and the estimate is
   less noisy with a larger ε, while the bias grows linearly in ε, so the largest ε within the bias
   tolerance is the best trade-off. On a factor-2 grid its bias lies in [tol/2, tol].

Equilibration is not required of the chosen ε itself: short calibration chains cannot show that a
small ε levels off, and the relaxation time scales as 1/ε. Instead the result recommends a burn-in
(``recommended.num_burnin``): the calibration burn-in scaled by ε_eq/ε, where ε_eq is the smallest
step size of the group that levelled off within it.

Why a gradient-based bias and not only MALA: the MALA acceptance (Lau et al.) is computed on one
minibatch, so it measures the discretization error alone. With minibatches the gradient noise
inflates the posterior spread by a factor ~nβ/m more than the discretization does, which MALA
cannot see (on deep linear networks with nβ/m ≈ 10 the acceptance stays above 0.999 while the LLC
is 40% too high). The predicted bias (``slt_jax.diagnostics``) includes both and is exact to first
order for quadratic losses. For RMSProp preconditioners (no single ε) the empirical Richardson estimate
from neighbouring step sizes (same chain keys, paired over chains) replaces it.

A divergent setting is never recommended. When no setting passes, the recommendation is the
non-divergent setting with the fewest failed candidate checks (bias, MALA, spikes, draws below
L(w*)), then the fewest failed equilibrium checks, then the largest step size: the checks that
fail at small ε are equilibrium checks, and a smaller ε only moves the chains less far from w*. A
warning names what failed.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from slt_jax import diagnostics, kernels, plots, traces
from slt_jax._src import validation
from slt_jax.config import SamplerConfig
from slt_jax.restriction import embed, restrict
from slt_jax.sampler import ChainsResult, DivergenceError, Recording, full_data_loss, run_chains
from slt_jax.types import Batch, KeyLike, LossFn, Mask, Params

__all__ = ["CalibrationResult", "calibrate", "calibration_schedule", "default_step_sizes", "auto_step_size", "RULE"]

RULE = (
    "Candidates: no divergence, no spikes, <= 50% of draws below L(w*), MALA acceptance >= {mala:.2f} and predicted "
    "step-size bias <= {bias:.0%} of the reference LLC. Among (nbeta, localization) groups with a candidate and a "
    "setting that levels off within the burn-in: nbeta closest to {target:.4g}, then the smallest localization, "
    "then the largest candidate step size, with a burn-in scaled by 1/step_size."
)
# Checks a setting must pass to be recommended (short calibration chains have a low ESS by design).
_REQUIRED = ("divergence", "spikes", "below_init", "mala", "bias")
# Checks that show the chains levelled off within the calibration run (equilibration time ∝ 1/ε).
_EQUILIBRIUM = ("divergence", "rise", "rhat", "plateau", "equilibration")


@dataclasses.dataclass(frozen=True)
class CalibrationResult:
    """A calibration grid with per-setting health and the recommended setting.

    Attributes:
        step_size, nbeta, localization: ``(G,)`` the settings, grouped by (nβ, γ), ε ascending;
            setting g is configuration g of ``chains``.
        metrics: dict of ``(G,)`` arrays from ``diagnostics.trace_metrics`` (after the calibration
            burn-in), plus ``empirical_bias`` (relative Richardson estimate vs. the next smaller ε
            of the group) and, for plain SGLD, ``reference_llc``.
        llc_per_chain: ``(G, num_chains)``, NaN for diverged chains.
        diverged: ``(G, num_chains)`` bool.
        problems: per setting, the names of the failed checks.
        passed: ``(G,)`` bool, a candidate: no divergence, spikes, draws below L(w*), low MALA
            acceptance or predicted bias above the tolerance.
        equilibrated: ``(G,)`` bool, the chains rose, levelled off within the burn-in and agree.
        recommended_index: index of the recommended setting, -1 if every setting diverged.
        reason: why it was chosen.
        init_loss: L_n(w*).
        burnin_draws: leading draws of each chain excluded from the metrics.
        config: the ``SamplerConfig`` ``calibrate`` was given (``chains.config`` is the schedule
            the calibration chains ran).
        chains: the grid's ``ChainsResult`` (leading axes ``(G, num_chains)``).
        settings: the rule's parameters and the run's settings.
    """

    step_size: np.ndarray
    nbeta: np.ndarray
    localization: np.ndarray
    metrics: dict
    llc_per_chain: np.ndarray
    diverged: np.ndarray
    problems: list
    passed: np.ndarray
    equilibrated: np.ndarray
    recommended_index: int
    reason: str
    init_loss: float
    burnin_draws: int
    config: SamplerConfig
    chains: ChainsResult
    settings: dict

    xarray_dims = {"llc_per_chain": ("setting", "chain"), "diverged": ("setting", "chain")}

    @property
    def recommended(self) -> SamplerConfig:
        """The recommended setting as a ``SamplerConfig``, ready for ``estimate_llc``.

        It is ``config`` with the chosen ``step_size``, ``nbeta`` and ``localization``, the burn-in
        the rule recommends (``num_burnin``, at least the calibration's) and the schedule the
        setting was validated at: ``num_draws`` post-burn-in draws, one step apart. Longer runs
        (``.replace(num_draws=...)``) only make the estimate more precise. Raises ``ValueError``
        when no setting can be recommended (every setting diverged).
        """
        if self.recommended_index < 0:
            raise ValueError(f"no setting can be recommended: {self.reason}")
        i = self.recommended_index
        return self.config.replace(
            step_size=float(self.step_size[i]),
            nbeta=float(self.nbeta[i]),
            localization=float(self.localization[i]),
            num_burnin=int(self.settings["recommended_num_burnin"]),
            num_draws=int(self.settings["validated_num_draws"]),
            num_steps_between_draws=1,
        )

    @property
    def reference_llc(self) -> float:
        """The calibration's one LLC figure, quoted by ``reason`` and ``repr``: for plain SGLD the
        median bias-corrected LLC of the recommended setting's equilibrated (nβ, γ) group (what its
        relative bias is measured against); for RMSProp the recommended setting's LLC. NaN when
        nothing is recommended."""
        if self.recommended_index < 0:
            return float("nan")
        metrics = self.metrics
        key = "reference_llc" if "reference_llc" in metrics else "llc_mean"
        return float(metrics[key][self.recommended_index])

    def table(self) -> str:
        """One line per setting (``*`` recommended, ``=`` equilibrated, ``x`` divergent) with its health figures."""
        m = self.metrics
        lines = [f"{'':2}{'step_size':>10} {'nbeta':>9} {'gamma':>8} {'llc':>9} {'±se':>7} {'rhat':>6} {'mala':>6} "
                 f"{'bias':>7} {'below':>6}  problems"]
        for i in range(self.step_size.size):
            mark = "*" if i == self.recommended_index else ("x" if self.diverged[i].any() else ("=" if self.equilibrated[i] else " "))
            lines.append(
                f"{mark:2}{self.step_size[i]:10.3g} {self.nbeta[i]:9.4g} {self.localization[i]:8.3g} "
                f"{m['llc_mean'][i]:9.4g} {m['llc_stderr'][i]:7.2g} {m['rhat'][i]:6.3f} {m['mala_acceptance'][i]:6.3f} "
                f"{m['relative_bias'][i]:7.1%} {m['fraction_below'][i]:6.0%}  {','.join(self.problems[i]) or 'ok'}"
            )
        return "\n".join(lines)

    def summary(self) -> str:
        """The table and the recommendation with its reason."""
        return f"{self.table()}\n\n{self.reason}"

    def plot(self, path=None):
        """The grid and the recommended setting's traces: ``slt_jax.plots.plot_calibration(self, path=path)``."""
        return plots.plot_calibration(self, path=path)

    def __repr__(self) -> str:
        if self.recommended_index < 0:
            return f"CalibrationResult({self.step_size.size} settings, none recommended: {self.reason})"
        i = self.recommended_index
        return (
            f"CalibrationResult({self.step_size.size} settings; recommended step_size={self.step_size[i]:.3g}, "
            f"nbeta={self.nbeta[i]:.4g}, localization={self.localization[i]:.3g}, "
            f"num_burnin={self.settings['recommended_num_burnin']}, num_draws={self.settings['validated_num_draws']}, "
            f"reference_llc={self.reference_llc:.4g})"
        )


# ---------------------------------------------------------------------------------------------
# the default step-size grid


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


# Pilot chains that measure the posterior's scales away from w* (where a degenerate loss has no
# curvature): this many chains of this many steps, at most this many rounds.
PILOT_CHAINS = 4
PILOT_STEPS = 200
PILOT_ROUNDS = 5


def default_step_sizes(
    loss_fn: LossFn,
    params: Params,
    data: Batch,
    config: SamplerConfig,
    *,
    key: KeyLike,
    component: Mask | None = None,
    num_step_sizes: int = 10,
    bias_tolerance: float = 0.05,
) -> np.ndarray:
    """A factor-2 grid of step sizes, ascending, anchored on the posterior's measured scales.

    Uses the config's nβ (``nbeta_for(n)``), γ, ``batch_size`` and ``preconditioner``. The top of the
    grid is the smaller of 1/a_max (a_max = nβ h_max + γ, h_max the top Hessian eigenvalue from power
    iteration over the ``component``'s coordinates; at ε a_max = 1 the stiffest direction's variance is
    33% too large) and twice the largest ε whose gradient-noise bias (ε/8)·nβ²·E||g_B||² could stay
    within ``bias_tolerance`` of the largest possible LLC, d/2.

    Both scales are measured where the chains go, not only at w*: at a degenerate point (normal
    crossings w1^a w2^b, where the Hessian and gradient at w* vanish) the scales at w* are those of the
    localizer alone, orders of magnitude too loose. So ``PILOT_CHAINS`` short plain-SGLD pilot chains
    (``PILOT_STEPS`` steps at a quarter of the current top, keys independent of the calibration's) are
    run from w*; h_max is the largest over w* and their end points, E||g_B||² the mean over the end
    points, and the top is lowered to the new value until it changes by less than 2x (at most
    ``PILOT_ROUNDS`` rounds; a pilot that diverges divides the top by 8). For a regular (quadratic)
    minimum the top moves by at most the factor the gradient term adds. The grid descends by factors
    of 2. For an RMSProp preconditioner it is multiplied by sqrt(E[g_i²]) + eps, the typical
    preconditioner scale.

    Returns:
        ``(num_step_sizes,)`` ascending.
    """
    n = validation.check_data(data)
    validation.check_params(params)
    num_step_sizes = validation.check_positive_int(num_step_sizes, "num_step_sizes")
    nbeta, localization, batch_size = config.nbeta_for(n), config.localization, min(config.batch_size, n)
    key = validation.as_key(key)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
    subset = rng.choice(n, size=min(n, max(batch_size, 1024)), replace=False)
    batch = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)[subset]), data)
    num_batches = 8
    indices = rng.integers(0, n, size=(num_batches, batch_size))
    batches = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)[indices]), data)
    flat = ravel_pytree(params)[0]
    start = jnp.asarray(rng.normal(size=flat.shape), flat.dtype)
    mask = validation.check_masks(component, params, name="component")
    restriction = restrict(mask, params)
    num_coordinates = restriction.num_sampled

    direction = [start]

    def scales(points, num_iterations):
        """(max top Hessian eigenvalue, mean E||g_B||²) over ``points``; each power iteration starts
        from the previous top eigenvector (the pilot's end points need only a few iterations)."""
        tops, squares = [], []
        for point in points:
            top, squared, direction[0] = _curvature_and_gradient(loss_fn, point, batch, batches, mask, direction[0], num_iterations)
            tops.append(float(top))
            squares.append(float(squared))
        return max(tops), float(np.mean(squares))

    def top_of_grid(top, squared):
        a_max = nbeta * top + localization
        if not a_max > 0:
            raise ValueError("the loss has no curvature at w* and localization is 0: pass step_sizes explicitly.")
        largest = 1.0 / a_max
        if squared > 0 and nbeta > 0:
            largest = min(largest, 2.0 * 8.0 * bias_tolerance * (num_coordinates / 2.0) / (nbeta**2 * squared))
        return largest

    top_at_center, squared = scales([params], 30)
    largest = top_of_grid(top_at_center, squared)
    pilot = config.replace(
        step_size=largest, num_chains=PILOT_CHAINS, num_draws=1, num_burnin=PILOT_STEPS - 1, num_steps_between_draws=1,
        mala_every=0, diagnostics_every=PILOT_STEPS, preconditioner="sgld",
    )
    pilot_key = jax.random.fold_in(key, 0x9170)
    init_loss = [float(full_data_loss(loss_fn, params, data, batch_size))]  # once, not once per round
    for attempt in range(PILOT_ROUNDS):  # one compiled program: only the step size changes
        chains = run_chains(
            loss_fn, [params], data, pilot.replace(step_size=largest / 4.0), key=jax.random.fold_in(pilot_key, attempt),
            masks=None if mask is None else [mask], recording=Recording(init_losses=init_loss), progress=False,
        )
        if np.asarray(chains.diverged).any():
            largest /= 8.0
            continue
        positions = chains.final_positions[0]
        ends = [
            embed(restriction.layout, restriction.offsets, params, jax.tree.map(lambda x: x[c], positions))
            for c in range(PILOT_CHAINS)
        ]
        top, squared = scales(ends, 10)
        measured = top_of_grid(max(top, top_at_center), squared)
        if measured >= largest / 2.0:
            largest = min(largest, measured)
            break
        largest = measured
    preconditioner = config.preconditioner_spec
    if preconditioner.adaptive:
        # RMSProp steps are ε / (sqrt(v) + eps) per coordinate, v ≈ E[g²] at the start: rescale the
        # grid so that the typical effective step matches the plain-SGLD anchor.
        largest *= math.sqrt(squared / num_coordinates) + preconditioner.eps
    return largest * 2.0 ** -np.arange(num_step_sizes)[::-1]


# ---------------------------------------------------------------------------------------------
# calibrate


def _empirical_bias(step_size, groups, llc_per_chain, llc_mean) -> np.ndarray:
    """Relative Richardson bias estimate of each ε from the next smaller ε of its group (paired)."""
    out = np.full(step_size.shape, np.nan)
    for members in groups.values():
        for smaller, larger in zip(members[:-1], members[1:]):
            paired = llc_per_chain[larger] - llc_per_chain[smaller]
            paired = paired[np.isfinite(paired)]
            if paired.size and step_size[larger] > step_size[smaller]:
                ratio = step_size[larger] / (step_size[larger] - step_size[smaller])
                out[larger] = paired.mean() * ratio / max(abs(llc_mean[larger]), 1e-12)
    return out


def _too_slow(groups, llc_per_chain, predicted_bias, bias_tolerance) -> list[int]:
    """Settings whose chains had not levelled off: their bias-corrected LLC falls significantly short
    of the next larger step size's (paired over chains). Equilibration time scales as 1/ε, so every
    smaller step size of the group is too slow as well."""
    slow = []
    for members in groups.values():
        for k in range(len(members) - 2, -1, -1):
            i, j = members[k], members[k + 1]
            difference = (llc_per_chain[j] - predicted_bias[j]) - (llc_per_chain[i] - predicted_bias[i])
            difference = difference[np.isfinite(difference)]
            if difference.size < 2:
                continue
            excess = difference.mean()
            stderr = difference.std(ddof=1) / math.sqrt(difference.size)
            level = abs(np.nanmean(llc_per_chain[j]) - predicted_bias[j])
            if not predicted_bias[j] <= 0.2 * level:
                continue  # beyond first order in ε the predicted bias is too low: no fair comparison
            if excess > max(2.0 * stderr, bias_tolerance * level):
                slow += members[: k + 1]
                break
    return slow


def _check_fraction(value, name: str, low: float, high: float) -> float:
    if np.ndim(value) != 0 or not low < value < high:
        raise ValueError(f"{name}={value!r} must be a number in ({low}, {high}).")
    return float(value)


# Calibration chains are short: the config's steps, at most this many, all recorded (one step apart).
MAX_CALIBRATION_DRAWS = 2000
MIN_CALIBRATION_DRAWS = 8
# MALA acceptance of calibration chains at least every this many draws (it is one of the checks).
CALIBRATION_MALA_EVERY = 10


def calibration_schedule(config: SamplerConfig) -> tuple[SamplerConfig, float]:
    """The calibration chains' ``SamplerConfig`` and default burn-in fraction for a run's ``config``.

    The chains record every step (``num_burnin=0``, one step between draws) for the config's
    ``num_steps`` steps, at most ``MAX_CALIBRATION_DRAWS`` (a long main-run schedule gives short
    calibration chains); the leading ``num_burnin / num_steps`` of them, clipped to [0.2, 0.5]
    (0.5 without burn-in), count as burn-in. MALA acceptance is taken at least every 10 draws.
    ``num_chains``, ``batch_size``, ``preconditioner``, ``weight_decay`` and the rest are the config's.
    """
    if not isinstance(config, SamplerConfig):
        raise TypeError(
            f"config must be a slt_jax.SamplerConfig, got {type(config).__name__}; e.g. "
            "sj.SamplerConfig(step_size='auto', localization=1.0, num_draws=1000, batch_size=100)."
        )
    if config.num_chains < 2:
        raise ValueError(f"num_chains={config.num_chains}: calibration compares chains (R-hat); use num_chains >= 2.")
    num_draws = min(config.num_steps, MAX_CALIBRATION_DRAWS)
    if num_draws < MIN_CALIBRATION_DRAWS:
        raise ValueError(
            f"num_draws={config.num_draws} (num_steps={config.num_steps}): calibration needs at least "
            f"{MIN_CALIBRATION_DRAWS} steps per chain; use num_draws >= 500."
        )
    mala_every = min(config.mala_every, CALIBRATION_MALA_EVERY) or CALIBRATION_MALA_EVERY
    schedule = config.replace(num_draws=num_draws, num_burnin=0, num_steps_between_draws=1, mala_every=mala_every)
    burnin_fraction = float(np.clip(config.num_burnin / config.num_steps, 0.2, 0.5)) if config.num_burnin else 0.5
    return schedule, burnin_fraction


def _settings_grid(loss_fn, params, data, config, key, component, step_sizes, nbetas, localizations, num_step_sizes,
                   bias_tolerance) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(step_size, nbeta, localization) ``(G,)`` grouped by (nβ, γ), ε ascending within a group."""
    rows = []
    for nbeta, localization in itertools.product(nbetas, localizations):
        grid = step_sizes if step_sizes is not None else default_step_sizes(
            loss_fn, params, data, config.replace(nbeta=float(nbeta), localization=float(localization)), key=key,
            component=component, num_step_sizes=num_step_sizes, bias_tolerance=bias_tolerance,
        )
        rows += [(float(e), float(nbeta), float(localization)) for e in np.atleast_1d(grid)]
    return tuple(np.array(column) for column in zip(*rows))


def calibrate(
    loss_fn: LossFn,
    params: Params,
    data: Batch,
    config: SamplerConfig,
    *,
    key: KeyLike,
    component: Mask | None = None,
    step_sizes=None,
    nbetas=None,
    localizations=None,
    burnin_fraction: float | None = None,
    mala_threshold: float = 0.9,
    bias_tolerance: float = 0.05,
    target_nbeta: float | None = None,
    num_step_sizes: int = 10,
    loss_estimator: str = "paired",
    progress: bool = True,
) -> CalibrationResult:
    """Runs a grid of short chains in one ``run_chains`` call and recommends a setting (module docstring).

    Args:
        loss_fn, params, data, key, component: as for ``slt_jax.estimate_llc``.
        config: the run's ``SamplerConfig``. Its ``num_chains``, ``batch_size``, ``preconditioner``,
            ``weight_decay`` and ``memory_budget`` are the calibration chains'; their schedule is
            ``calibration_schedule(config)`` (short: at most 2000 recorded steps). Its
            ``step_size`` is not used (the grid's are); its ``nbeta`` and ``localization`` are the
            defaults of ``nbetas`` and ``localizations``.
        step_sizes: ε values (tried with every (nβ, γ)), or None for ``default_step_sizes`` per (nβ, γ).
        nbetas: nβ values; None uses the config's (n / log n when ``config.nbeta`` is None).
        localizations: γ values; None uses the config's.
        burnin_fraction: leading fraction of the calibration draws treated as burn-in by the metrics
            (default: the config's ``num_burnin / num_steps`` clipped to [0.2, 0.5], 0.5 without one).
        mala_threshold: minimum mean MALA acceptance of a passing setting.
        bias_tolerance: maximum predicted relative step-size bias of a passing setting.
        target_nbeta: the nβ to prefer (default: the config's, n / log n when None).
        num_step_sizes: grid length when ``step_sizes`` is None.
        loss_estimator: ``"paired"`` (default: L_B(w) - L_B(w*) + L_n(w*), which cancels the batch
            noise that otherwise swamps short chains; one extra forward pass per draw) or
            ``"minibatch"`` (``slt_jax.traces``).
        progress: tqdm progress bar.

    Returns:
        A ``CalibrationResult``; ``.recommended`` is the chosen ``SamplerConfig``, ``.reason`` why.

    >>> import jax.numpy as jnp, slt_jax as sj
    >>> loss_fn = lambda w, batch: 0.5 * (batch["y"] - batch["x"] @ w) ** 2
    >>> data = {"x": jnp.eye(4).repeat(50, axis=0), "y": jnp.zeros(200)}
    >>> config = sj.SamplerConfig(step_size="auto", nbeta=100.0, localization=1.0, num_draws=500, batch_size=200)
    >>> result = sj.calibrate(loss_fn, jnp.zeros(4), data, config, key=0, num_step_sizes=4, progress=False)
    >>> result.recommended.step_size in result.step_size
    True
    """
    started = time.perf_counter()
    n = validation.check_data(data)
    validation.check_params(params)
    schedule, default_fraction = calibration_schedule(config)
    burnin_fraction = _check_fraction(default_fraction if burnin_fraction is None else burnin_fraction, "burnin_fraction", -1e-12, 0.9)
    mala_threshold = _check_fraction(mala_threshold, "mala_threshold", 0.0, 1.0)
    bias_tolerance = _check_fraction(bias_tolerance, "bias_tolerance", 0.0, 1.0)
    nbetas = [config.nbeta_for(n)] if nbetas is None else nbetas
    nbetas = np.atleast_1d(validation.check_scalar_grid(nbetas, "nbetas", allow_zero=False, fix="The LLC needs nbeta > 0; the default is n / log n."))
    localizations = [config.localization] if localizations is None else localizations
    localizations = np.atleast_1d(validation.check_scalar_grid(localizations, "localizations", allow_zero=True, fix="Typical values are 1 to 1000."))
    target_nbeta = config.nbeta_for(n) if target_nbeta is None else float(target_nbeta)
    if not target_nbeta > 0:
        raise ValueError(f"target_nbeta={target_nbeta!r} must be > 0 (the default is the config's nbeta, or n / log n).")
    if step_sizes is not None:
        step_sizes = np.sort(np.atleast_1d(validation.check_scalar_grid(step_sizes, "step_sizes", allow_zero=False, fix="Or pass None for an automatic grid.")))
    if loss_estimator not in ("paired", "minibatch"):
        raise ValueError(f"loss_estimator={loss_estimator!r}; use 'paired' or 'minibatch' for calibration.")
    key = validation.as_key(key)

    step_size, nbeta, localization = _settings_grid(
        loss_fn, params, data, schedule, key, component, step_sizes, nbetas, localizations, num_step_sizes, bias_tolerance
    )
    chains = run_chains(
        loss_fn, [params], data, schedule, key=key, masks=None if component is None else [component],
        grid={"step_size": step_size, "nbeta": nbeta, "localization": localization},
        recording=Recording(**traces.estimator_options(loss_estimator)), progress=progress and "calibration",
    )
    draws = traces.llc_draws(chains, loss_estimator)  # (G, C, D) nβ(L - L*)
    burnin_draws = int(burnin_fraction * schedule.num_draws)
    adaptive = schedule.preconditioner_spec.adaptive
    metrics, llc_per_chain = _grid_metrics(chains, draws, step_size, nbeta, burnin_draws, adaptive)
    groups: dict = {}
    for i in np.argsort(step_size, kind="stable"):
        groups.setdefault((nbeta[i], localization[i]), []).append(int(i))
    problems, passed, equilibrated = _judge(metrics, llc_per_chain, groups, step_size, adaptive, mala_threshold,
                                            bias_tolerance, burnin_fraction)
    divergent = np.asarray(chains.diverged).any(axis=1)
    recommended, reason, num_burnin = _recommend(
        step_size, nbeta, localization, metrics, problems, passed, equilibrated, divergent, groups, target_nbeta,
        mala_threshold, bias_tolerance, burnin_draws,
    )
    seconds = time.perf_counter() - started
    grid_chain_steps = int(step_size.size * schedule.num_chains * schedule.num_steps)
    if recommended >= 0:
        # One estimate at the recommended config (``recommended``): its burn-in plus the validated draws.
        estimate_chain_steps = int(config.num_chains * (num_burnin + schedule.num_draws - burnin_draws))
        reason += (
            f" Cost: {seconds:.1f} s ({chains.compile_seconds:.1f} s compiling), {step_size.size} settings x "
            f"{schedule.num_chains} chains x {schedule.num_steps} steps = {grid_chain_steps / estimate_chain_steps:.1f}x "
            f"the chain-steps of one estimate at the recommended config."
        )
    else:
        estimate_chain_steps = 0
    settings = dict(
        chains.settings,
        cost=dict(seconds=seconds, compile_seconds=float(chains.compile_seconds), grid_chain_steps=grid_chain_steps,
                  estimate_chain_steps=estimate_chain_steps,
                  relative_chain_steps=grid_chain_steps / estimate_chain_steps if estimate_chain_steps else float("nan")),
        rule=RULE.format(mala=mala_threshold, bias=bias_tolerance, target=target_nbeta),
        mala_threshold=mala_threshold,
        bias_tolerance=bias_tolerance,
        burnin_fraction=burnin_fraction,
        loss_estimator=loss_estimator,
        target_nbeta=target_nbeta,
        step_size_grid="given" if step_sizes is not None else "default_step_sizes",
        recommended_num_burnin=int(num_burnin),
        validated_num_burnin=burnin_draws,
        validated_num_draws=schedule.num_draws - burnin_draws,
    )
    return CalibrationResult(
        step_size=step_size, nbeta=nbeta, localization=localization, metrics=metrics, llc_per_chain=llc_per_chain,
        diverged=np.asarray(chains.diverged), problems=problems, passed=passed, equilibrated=equilibrated,
        recommended_index=int(recommended), reason=reason, init_loss=float(chains.init_loss[0]),
        burnin_draws=burnin_draws, config=config, chains=chains, settings=settings,
    )


def _grid_metrics(chains, draws, step_size, nbeta, burnin_draws, adaptive) -> tuple[dict, np.ndarray]:
    """``trace_metrics`` of every setting as ``(G,)`` arrays, and the per-chain LLCs after burn-in."""
    per_setting = [
        diagnostics.trace_metrics(
            draws[i], nbeta=nbeta[i], diverged=chains.diverged[i], mala_acceptance=chains.mala_acceptance[i],
            grad_norm=chains.grad_norm[i], step_size=None if adaptive else step_size[i], burnin_draws=burnin_draws,
        )
        for i in range(step_size.size)
    ]
    metrics = {k: np.array([m[k] for m in per_setting]) for k in per_setting[0] if k != "note"}
    llc_per_chain = np.where(chains.diverged, np.nan, draws[:, :, burnin_draws:].mean(axis=2))
    return metrics, llc_per_chain


def _judge(metrics, llc_per_chain, groups, step_size, adaptive, mala_threshold, bias_tolerance, burnin_fraction):
    """(problems per setting, passed, equilibrated); adds ``empirical_bias`` / ``reference_llc`` to metrics."""
    num_settings = step_size.size
    metrics["empirical_bias"] = _empirical_bias(step_size, groups, llc_per_chain, metrics["llc_mean"])
    if adaptive:
        metrics["relative_bias"] = metrics["empirical_bias"].copy()
    thresholds = {"mala": mala_threshold, "bias": bias_tolerance}
    problems = []
    for i in range(num_settings):
        found = [f.check for f in diagnostics.problems({k: metrics[k][i] for k in metrics}, thresholds=thresholds)]
        if metrics["plateau_fraction"][i] > max(burnin_fraction, 0.1) and "plateau" not in found:
            found.append("plateau")
        problems.append(found)
    if not adaptive:
        for i in _too_slow(groups, llc_per_chain, metrics["predicted_bias"], bias_tolerance):
            problems[i].append("equilibration")
    equilibrated = np.array([not set(p) & set(_EQUILIBRIUM) for p in problems])
    if not adaptive:
        # Bias relative to the group's reference LLC (the median bias-corrected LLC of its
        # equilibrated settings): the LLC of a step too small to level off is itself too low.
        reference = np.full(num_settings, np.nan)
        for members in groups.values():
            members = np.array(members)
            good = members[equilibrated[members]]
            pool = good if good.size else members[np.isfinite(metrics["llc_mean"][members])]
            if pool.size:
                corrected = metrics["llc_mean"][pool] - metrics["predicted_bias"][pool]
                reference[members] = np.median(corrected)
        metrics["reference_llc"] = reference
        with np.errstate(invalid="ignore"):
            metrics["relative_bias"] = metrics["predicted_bias"] / np.maximum(np.abs(reference), 1e-12)
        for i in range(num_settings):
            over = metrics["relative_bias"][i] > bias_tolerance
            problems[i] = [p for p in problems[i] if p != "bias"] + (["bias"] if over else [])
    passed = np.array([not set(p) & set(_REQUIRED) for p in problems])
    return problems, passed, equilibrated


def _recommend(step_size, nbeta, localization, metrics, problems, passed, equilibrated, divergent, groups, target_nbeta,
               mala_threshold, bias_tolerance, burnin_steps):
    """Returns (index or -1, reason, burn-in steps the chosen step size needs)."""
    distance = np.abs(np.log(nbeta) - math.log(target_nbeta))
    eligible = [g for g, members in groups.items() if passed[members].any() and equilibrated[members].any()]
    if eligible:
        best = min(distance[groups[g][0]] for g in eligible)
        eligible = [g for g in eligible if np.isclose(distance[groups[g][0]], best)]
        group = min(eligible, key=lambda g: g[1])
        members = np.array(groups[group])
        choice = int(members[passed[members]][np.argmax(step_size[members[passed[members]]])])
        m = {k: v[choice] for k, v in metrics.items()}
        smallest_equilibrated = step_size[members[equilibrated[members]]].min()
        if equilibrated[choice]:
            num_burnin = burnin_steps
            levelled = f"its chains level off within the calibration's {burnin_steps} burn-in steps"
        else:
            num_burnin = int(math.ceil(burnin_steps * smallest_equilibrated / step_size[choice]))
            levelled = (
                f"it levels off more slowly than this short calibration shows (failed: "
                f"{', '.join(sorted(set(problems[choice]) & set(_EQUILIBRIUM)))}); the equilibration time scales as "
                f"1/step_size, so use num_burnin >= {num_burnin} (step_size {smallest_equilibrated:.3g} levelled off "
                f"within {burnin_steps} steps)"
            )
        reason = (
            f"Recommended step_size={step_size[choice]:.3g}, nbeta={nbeta[choice]:.4g}, localization={localization[choice]:.3g}: "
            f"the largest step size with no divergence, no spikes, {m['fraction_below']:.0%} of draws below L(w*), MALA "
            f"acceptance {m['mala_acceptance']:.3f} >= {mala_threshold} and "
            + (f"predicted step-size bias {m['relative_bias']:.1%} <= {bias_tolerance:.0%} of the reference LLC "
               f"{m['reference_llc']:.4g}; " if "reference_llc" in m else
               f"empirical (Richardson) step-size bias {m['relative_bias']:.1%} <= {bias_tolerance:.0%}; ")
            + f"{levelled}."
        )
        if np.unique(localization).size > 1:
            reason += " It is at the smallest localization whose chains level off."
        if np.unique(nbeta).size > 1:
            reason += f" Its nbeta is the one closest to {target_nbeta:.4g}."
        return choice, reason, num_burnin
    usable = np.flatnonzero(~divergent & np.isfinite(metrics["llc_mean"]))
    if not usable.size:
        reason = "Every setting diverged: no recommendation. Try smaller step sizes and larger localizations."
        warnings.warn(reason, RuntimeWarning, stacklevel=3)
        return -1, reason, 0
    # Failed required checks (bias, MALA, spikes, ...) grow with ε; failed equilibrium checks shrink
    # with it (the relaxation time scales as 1/ε). So: the fewest failed required checks, then the
    # fewest failed equilibrium checks, then the LARGEST step size (the one closest to levelling off),
    # then the lowest predicted bias. Preferring the smallest ε here would pick the chain that has
    # moved least from w*, whose LLC is the most underestimated.
    checks = set(_REQUIRED) | set(_EQUILIBRIUM)
    required = np.array([len(set(problems[i]) & set(_REQUIRED)) for i in usable])
    equilibrium = np.array([len(set(problems[i]) & set(_EQUILIBRIUM)) for i in usable])
    bias = np.nan_to_num(metrics["relative_bias"][usable], nan=np.inf)
    order = np.lexsort((bias, -step_size[usable], equilibrium, required))
    choice = int(usable[order[0]])
    failed = sorted(set(problems[choice]) & checks)
    reason = (
        f"No setting passed every check. Fallback: step_size={step_size[choice]:.3g}, nbeta={nbeta[choice]:.4g}, "
        f"localization={localization[choice]:.3g}, the largest non-divergent step size with the fewest failed checks "
        f"({', '.join(failed)}). Extend the grid (smaller step sizes, larger localizations, longer chains) before trusting it."
    )
    warnings.warn(reason, RuntimeWarning, stacklevel=3)
    return choice, reason, burnin_steps


def auto_step_size(
    loss_fn: LossFn,
    params: Params,
    data: Batch,
    config: SamplerConfig,
    *,
    key: KeyLike,
    component: Mask | None = None,
    loss_estimator: str = "minibatch",
    progress: bool = True,
) -> tuple[SamplerConfig, CalibrationResult]:
    """``estimate_llc`` with ``step_size="auto"``: calibrates ε at the config's nβ and γ.

    The calibration mimics the main run: ``clip(num_steps, 500, 2000)`` recorded steps per chain
    (at least 2 chains) with the main run's burn-in fraction (clipped to [0.2, 0.5]) and a key
    independent of the main run's (so the choice does not select on the main run's noise). Its
    chains use the ``"paired"`` loss estimator whatever the main run's ``loss_estimator`` (which
    is only validated here): short chains need its control variate. Warns when the config's
    ``num_burnin`` is shorter than the burn-in the chosen step size needs (``recommended.num_burnin``).

    Returns:
        ``(config.replace(step_size=chosen), CalibrationResult)``. Raises ``DivergenceError`` when
        every calibration setting diverged.
    """
    traces.estimator_options(loss_estimator)
    if not isinstance(config, SamplerConfig):
        raise TypeError(f"config must be a slt_jax.SamplerConfig, got {type(config).__name__}.")
    calibration_key = jax.random.fold_in(validation.as_key(key), 0x5EED)
    schedule = config.replace(
        num_chains=max(config.num_chains, 2), num_draws=int(np.clip(config.num_steps, 500, MAX_CALIBRATION_DRAWS)),
        num_burnin=0, num_steps_between_draws=1,
    )
    burnin_fraction = float(np.clip(config.num_burnin / config.num_steps, 0.2, 0.5))
    result = calibrate(
        loss_fn, params, data, schedule, key=calibration_key, component=component, burnin_fraction=burnin_fraction,
        loss_estimator="paired", progress=progress,
    )
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
    return config.replace(step_size=chosen.step_size), result
