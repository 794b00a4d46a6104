"""Choosing ε, nβ and γ: a grid of short chains as ONE compiled program, and a stated rule.

``calibrate`` runs every (nβ, γ, ε) setting of a grid in ONE ``run_chains`` call (``grid=``: the
settings are configurations of one compiled program, grouped only under the config's
``memory_budget``), measures each setting's health (``slt_jax.diagnostics``, on the per-draw
nβ(L - L*) of ``slt_jax.traces.llc_draws``) and recommends one as a ``SamplerConfig``
(``CalibrationResult.recommended``). ``auto_step_size`` (``estimate_llc(step_size="auto")``) is
``calibrate`` at the run's nβ and γ; both run the chains of ONE schedule rule,
``calibration_schedule(config, ...)``, within a budget: by default the calibration (pilot chains
included) costs at most the chain-steps of the run it serves. The conventions are
docs/conventions.md §4.

The package, one concern per module: ``schedule`` (the calibration chains of a run's config),
``curvature`` (``default_step_sizes``: power iteration and pilot chains anchor the ε grid),
``grid`` (the settings and running them), ``judge`` (the rule, pure functions of the health
figures), ``result`` (``CalibrationResult``), ``driver`` (``calibrate``) and ``auto``.

The rule (``RULE``). A setting is a CANDIDATE when no chain diverged, there are no loss spikes, at
most half of the draws lie below L(w*), the mean MALA acceptance is >= ``mala_threshold`` (0.9 on two
coordinates, scaled to the d sampled by ``diagnostics.mala_requirement``: the acceptance of the same
per-direction step error in d Gaussian directions, since the LLC's bias is a sum of per-direction terms
while a fixed MALA threshold would force ε ∝ d^(-1/3)) and
the predicted step-size bias (ε/8)·nβ²·E||g_B||² is <= ``bias_tolerance`` (5%) of the group's
reference LLC, with E||g_B||² the largest measured at this or a larger step size of the group
(``judge.travelled_bias``: the run travels further than its short calibration chains, and the
larger steps show where it goes). It is EQUILIBRATED when, in addition, the loss rose clearly above L(w*), levelled
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
warning names what failed. Before falling back, a default grid (one (nβ, γ) group, ``step_sizes``
not given) whose every setting diverged or failed a check that a smaller ε fixes (bias, MALA) is
extended once below itself: the pilot chains anchored it too high (at a degenerate point they can
stay where the gradients vanish). The new grid's top is the smallest ε times tolerance / its predicted
bias (at most half of it), factors of 2 below; it runs and is judged as the first grid was, its
chain-steps add to the cost, and the reason begins by saying so.

The chains take the config's ``scheme``; where it names none (the default), the Leimkuhler-Matthews
step, and the recommended config names it: at degenerate points Euler's first-order step-size bias
gave auto's estimates a sign (pooled z = +4.3 over 40 runs of the normal-crossing table, against
-1.6; docs/conventions.md §4). The rule is the same under either scheme, with the same (Euler)
predicted bias, an upper bound on Leimkuhler-Matthews's (docs/conventions.md §1).
"""

from .auto import auto_step_size
from .curvature import default_step_sizes
from .driver import calibrate
from .judge import RULE
from .result import CalibrationResult
from .schedule import calibration_schedule

__all__ = ["CalibrationResult", "calibrate", "calibration_schedule", "default_step_sizes", "auto_step_size", "RULE"]
