"""Diagnostics: trace-shape checks on synthetic traces, the predicted step-size bias against the
closed form (exact ULA on a quadratic), the health summary and the nβ = 0 negative control."""

import math

import chex
import jax.numpy as jnp
import numpy as np
import pytest

import slt_jax as sj
from slt_jax import diagnostics, traces
from slt_jax.zoo import theory

from issue5_problems import LOCALIZATION, NBETA, exact_quadratic_loss, regression

SYNTHETIC_NBETA = 100.0


def _traces(seed=0, num_chains=4, num_draws=2000, level=0.05, noise=0.01):
    """Synthetic per-draw nβ(L - L*) with nβ = 100 and L - L* = level + noise."""
    rng = np.random.default_rng(seed)
    return SYNTHETIC_NBETA * (level + noise * rng.normal(size=(num_chains, num_draws)))


def _checks(draws, **kwargs):
    metrics = diagnostics.trace_metrics(draws, nbeta=SYNTHETIC_NBETA, **kwargs)
    return {finding.check for finding in diagnostics.problems(metrics)}, metrics


def test_trace_metrics_shapes_and_healthy_trace():
    checks, metrics = _checks(_traces())
    assert checks == set()
    # λ̂ = nβ · (mean L - L*) = 100 · 0.05
    chex.assert_trees_all_close(metrics["llc_mean"], 5.0, atol=4 * metrics["llc_stderr"] + 1e-3)
    assert metrics["fraction_below"] < 1e-3 and metrics["spike_fraction"] == 0.0
    assert np.isnan(metrics["mala_acceptance"]) and np.isnan(metrics["predicted_bias"]) and metrics["note"] == ""


def test_constant_trace_has_undefined_ess_without_numpy_warnings():
    # filterwarnings=error: a numpy division warning would fail this test.
    metrics = diagnostics.trace_metrics(np.zeros((4, 100)), nbeta=0.0)
    assert np.isnan(metrics["ess"]) and np.isnan(metrics["rhat"]) and "constant" in metrics["note"]
    assert "rise" in {f.check for f in diagnostics.problems(metrics)}


def test_trace_metrics_flag_each_failure():
    climb = _traces() + SYNTHETIC_NBETA * np.linspace(0.0, 0.05, 2000)  # the loss doubles over the run
    assert "plateau" in _checks(climb)[0]
    spiky = _traces()
    spiky[:, ::100] += SYNTHETIC_NBETA * 1.0
    assert "spikes" in _checks(spiky)[0]
    below = _traces(level=-0.02)
    assert {"below_init", "rise"} <= _checks(below)[0]
    disagree = _traces() + SYNTHETIC_NBETA * np.array([[0.0], [0.0], [0.03], [0.03]])
    assert "rhat" in _checks(disagree)[0]
    assert "mala" in _checks(_traces(), mala_acceptance=np.full((4, 2000), 0.5))[0]
    # predicted bias (ε/8)·nβ²·E||g||² = 1e-4/8 · 1e4 · 4 = 0.5 = 10% of λ̂ = 5
    checks, metrics = _checks(_traces(), grad_norm=np.full((4, 2000), 2.0), step_size=1e-4)
    assert "bias" in checks
    chex.assert_trees_all_close(metrics["predicted_bias"], 0.5, rtol=1e-12)
    checks, metrics = _checks(_traces(), diverged=np.array([True, False, False, False]))
    assert "divergence" in checks and metrics["num_diverged"] == 1
    noisy = _traces(level=0.002, noise=0.05, num_draws=200)
    assert {"rise"} <= _checks(noisy)[0] or {"noise"} <= _checks(noisy)[0]


def test_trace_metrics_rejects_bad_shapes():
    with pytest.raises(ValueError, match="num_chains, num_draws"):
        diagnostics.trace_metrics(np.zeros(10), nbeta=1.0)
    with pytest.raises(ValueError, match="burnin_draws"):
        diagnostics.trace_metrics(np.zeros((2, 10)), nbeta=1.0, burnin_draws=10)


@pytest.fixture(scope="module")
def exact_grid():
    """Exact ULA (no gradient noise) on ½δᵀHδ at three step sizes."""
    params, data, h, _ = regression()
    a_max = NBETA * h.max() + LOCALIZATION
    steps = np.array([0.05, 0.1, 0.2]) / a_max
    config = sj.SamplerConfig(step_size=steps[0], nbeta=NBETA, localization=LOCALIZATION, num_chains=4, num_draws=4000,
                              num_burnin=2000, batch_size=8, mala_every=0)
    chains = sj.run_chains(exact_quadratic_loss, [params], data, config, key=1, grid={"step_size": steps}, progress=False)
    return steps, chains, h


def test_llc_and_predicted_bias_match_closed_form(exact_grid):
    steps, chains, h = exact_grid
    chex.assert_shape(chains.loss, (3, 4, 4000))
    np.testing.assert_array_equal(chains.hyperparameters.step_size, steps)
    exact_zero = theory.quadratic_llc(h, NBETA, LOCALIZATION)
    draws = traces.llc_draws(chains)
    for i, step in enumerate(steps):
        metrics = diagnostics.trace_metrics(draws[i], nbeta=NBETA, grad_norm=chains.grad_norm[i], step_size=step)
        exact = theory.quadratic_llc(h, NBETA, LOCALIZATION, step)
        # the sampler reproduces docs/conventions.md §2's λ̂_ε (tolerance from the chains' standard error)
        assert abs(metrics["llc_mean"] - exact) < 4 * metrics["llc_stderr"], (step, metrics["llc_mean"], exact)
        # (ε/8)·nβ²·E||g||² is the first-order bias: between nβh/a (≈ 0.5 for the flattest direction
        # here) and 1 times the exact bias λ̂_ε - λ̂_0.
        ratio = metrics["predicted_bias"] / (exact - exact_zero)
        # The predicted bias is linear in the sampled E||g||²; its relative standard error comes from
        # the spread of the per-chain means of ||g||² (independent chains).
        per_chain = np.mean(chains.grad_norm[i].astype(np.float64) ** 2, axis=1)
        relative_se = per_chain.std(ddof=1) / np.sqrt(per_chain.size) / per_chain.mean()
        assert 0.75 - 4 * relative_se < ratio < 1.05 + 4 * relative_se, (step, ratio, relative_se)


def test_summary_names_problems_and_fixes():
    params, data, h, _ = regression()
    a_max = NBETA * h.max() + LOCALIZATION
    # γ = 10 lifts the flattest direction (nβh ≈ 1) so that every direction mixes within ~50 steps.
    config = sj.SamplerConfig(step_size=0.2 / a_max, nbeta=NBETA, localization=10.0, num_draws=4000, num_burnin=2000,
                              batch_size=8)
    healthy = sj.estimate_llc(exact_quadratic_loss, params, data, config, key=2, progress=False)
    report = healthy.health
    assert isinstance(report, sj.diagnostics.HealthReport)
    assert report.ok, str(report)
    # The summary's LLC is the estimator's: both come from traces.llc_draws.
    chex.assert_trees_all_close(report.metrics["llc_mean"], healthy.llc_mean, rtol=1e-12)
    assert "No problems found" in str(report) and "LLC" in report.headline
    biased = sj.estimate_llc(exact_quadratic_loss, params, data, config.replace(step_size=1.5 / a_max), key=2, progress=False)
    report = biased.health
    checks = {f.check: f for f in report.findings}
    assert "bias" in checks and "Reduce step_size" in checks["bias"].fix
    assert "mala" in checks
    # No burn-in and a relaxation time (2/(εA) = 12,000 steps) three times the run: every chain is still
    # climbing. 200 equal directions average out the per-coordinate noise, so the climb is clear.
    isotropic = lambda w, batch: 0.5 * jnp.sum(w**2) * jnp.ones(batch["y"].shape[0])
    short_config = sj.SamplerConfig(step_size=2.0 / ((NBETA + LOCALIZATION) * 12_000), nbeta=NBETA, localization=LOCALIZATION,
                                    num_draws=4000, batch_size=8)
    short = sj.estimate_llc(isotropic, jnp.zeros(200), data, short_config, key=2, progress=False)
    assert "plateau" in {f.check for f in short.health.findings}


def test_negative_control_matches_ou_variance():
    params, data, _, _ = regression()
    config = sj.SamplerConfig(step_size=0.05, localization=4.0, batch_size=8, num_draws=400)
    control = sj.negative_control(exact_quadratic_loss, params, data, config, key=3, progress=False)
    assert control.passed, repr(control)
    chex.assert_trees_all_close(control.expected_variance, 1.0 / (4.0 * (1.0 - 0.05 * 4.0 / 4.0)), rtol=1e-12)
    assert abs(control.relative_error) < 0.05
    chex.assert_shape(control.variance_trace, (4, 400))
    assert "PASS" in repr(control)
    # nβ = 0, with the OU burn-in 5/(εγ) = 25 and thinning 1/(2εγ) = 3 the config's 0 and 1 were raised to.
    ran = control.chains.config
    assert (ran.nbeta, ran.num_burnin, ran.num_steps_between_draws) == (0.0, 25, 3)
    assert control.chains.hyperparameters.nbeta[0] == 0.0


def test_negative_control_of_a_component():
    params, data, _, _ = regression()
    config = sj.SamplerConfig(step_size=0.05, localization=4.0, batch_size=8, num_draws=400)
    mask = jnp.array([True, False, True, False])
    control = sj.negative_control(exact_quadratic_loss, params, data, config, key=4, component=mask, progress=False)
    assert control.num_coordinates == 2 and control.passed, repr(control)


def test_negative_control_validates_before_compiling():
    params, data, _, _ = regression()
    config = sj.SamplerConfig(step_size=0.1, localization=0.0, batch_size=8, num_draws=100)
    with pytest.raises(ValueError, match="localization"):
        sj.negative_control(exact_quadratic_loss, params, data, config, key=0)
    with pytest.raises(ValueError, match="unstable"):
        sj.negative_control(exact_quadratic_loss, params, data, config.replace(step_size=1.0, localization=5.0), key=0)
    with pytest.raises(ValueError, match="numeric step_size"):
        sj.negative_control(exact_quadratic_loss, params, data, config.replace(step_size="auto", localization=1.0), key=0)


# Issue 12, item 12: the spikes check fired on a smooth 1-D quadratic (nβ(L - L*) is ½χ²₁, whose
# right tail put 1.0% of the draws beyond median + 10 robust standard deviations; limit 0.5%).
def test_spikes_do_not_fire_on_smooth_one_dimensional_quadratic():
    loss_fn = lambda w, batch: 0.5 * jnp.sum(w ** 2)
    config = sj.SamplerConfig(step_size=2.8e-5, nbeta=1000.0, localization=1.0, num_chains=4, num_draws=2000,
                              num_burnin=2000, batch_size=1, mala_every=0)
    result = sj.estimate_llc(loss_fn, jnp.zeros(1), jnp.zeros((1, 1)), config, key=0, progress=False)
    report = result.health
    assert "spikes" not in {f.check for f in report.findings}, report
    assert report.metrics["spike_fraction"] < diagnostics.THRESHOLDS["spike_fraction"] / 10
    # ... and the trace it judged is the right one: λ̂ agrees with the closed form (step included).
    expected = theory.quadratic_llc([1.0], 1000.0, 1.0, step_size=2.8e-5)
    assert abs(result.llc_mean - expected) < 4 * result.stderr, (result.llc_mean, expected, result.stderr)


def _ar1(rng, num_chains, num_draws, rho):
    noise = rng.normal(size=(num_chains, num_draws))
    out = np.empty_like(noise)
    out[:, 0] = noise[:, 0]
    for t in range(1, num_draws):
        out[:, t] = rho * out[:, t - 1] + math.sqrt(1 - rho**2) * noise[:, t]
    return out


def test_drift_shared_by_every_chain_is_flagged_and_stationary_traces_are_not():
    rng = np.random.default_rng(0)
    stationary = 5.0 + 0.3 * _ar1(rng, 4, 4000, 0.9)
    checks, metrics = _checks(stationary)
    assert "drift" not in checks and abs(metrics["drift_z"]) < diagnostics.THRESHOLDS["drift_z"]
    drifting = stationary + np.linspace(0.0, 0.5, 4000)  # +10% of the LLC over the run, in every chain
    checks, metrics = _checks(drifting)
    assert metrics["rhat"] < 1.1 and metrics["trend"] < diagnostics.THRESHOLDS["trend"]  # invisible before
    assert "drift" in checks and "plateau" not in checks and "rhat" not in checks


# Issue 12, item 13: a slow drift shared by all chains went undetected (R-hat ≈ 1, the halves within
# the 10% "plateau" limit). Here 2000 flat directions (a = nβh + γ = 0.0105, relaxation ~5e4 steps)
# are still filling in while 100 stiff ones have equilibrated: the LLC creeps up by ~6% over the run.
def test_summary_flags_a_slow_drift_in_a_real_run():
    h = jnp.array([1.0] * 100 + [5e-6] * 2000)
    loss_fn = lambda w, batch: 0.5 * jnp.sum(h * w ** 2)
    config = sj.SamplerConfig(step_size=1e-3, nbeta=100.0, localization=0.01, num_chains=16, num_draws=8000,
                              num_burnin=2000, num_steps_between_draws=2, batch_size=1, mala_every=0)
    result = sj.estimate_llc(loss_fn, jnp.zeros(2100), jnp.zeros((1, 1)), config, key=0, progress=False)
    report = result.health
    checks = {f.check for f in report.findings}
    assert report.metrics["rhat"] < 1.1 and "plateau" not in checks, report
    assert "drift" in checks, report
    assert report.metrics["drift_z"] > 2 * diagnostics.THRESHOLDS["drift_z"]
    # The flag is right: the estimate is far below the stationary closed form (≈ 77.8), which the
    # chains have not reached.
    stationary = theory.quadratic_llc(np.asarray(h), 100.0, 0.01, step_size=1e-3)
    assert stationary - result.llc_mean > 10 * result.stderr, (result.llc_mean, stationary, result.stderr)


# Issue 21, item 5: chains that each mix within their own region but settle at different levels. Their
# means disagree more than each chain's ESS-based standard error allows; R-hat over long chains and the
# noise check need not see it (the spread over chains is small next to the LLC).
def test_chains_at_different_levels_are_flagged_and_agreeing_chains_are_not():
    rng = np.random.default_rng(1)
    agreeing = 5.0 + 0.3 * _ar1(rng, 8, 4000, 0.9)
    checks, metrics = _checks(agreeing)
    assert "dispersion" not in checks, metrics
    assert metrics["dispersion"] < 1.5 and metrics["dispersion_p"] > 1e-3
    levels = np.linspace(-0.1, 0.1, 8)[:, None]  # chain means ~0.07 apart (std), their standard errors ~0.02
    checks, metrics = _checks(agreeing + levels)
    assert "dispersion" in checks and "rhat" not in checks and "noise" not in checks, (checks, metrics)
    assert metrics["dispersion"] > 2.0 and metrics["dispersion_p"] < 1e-6
    # Under agreement the statistic is χ² with C - 1 degrees of freedom: p is uniform over seeds.
    p_values = [_checks(5.0 + 0.3 * _ar1(np.random.default_rng(seed), 8, 2000, 0.5))[1]["dispersion_p"] for seed in range(40)]
    assert 0.3 < np.mean(p_values) < 0.7 and min(p_values) > 1e-3, p_values
