"""Diagnostics: trace-shape checks on synthetic traces, the predicted step-size bias against the
closed form (exact ULA on a quadratic), the health summary and the nβ = 0 negative control."""

import chex
import jax.numpy as jnp
import numpy as np
import pytest

import slt_jax as sj
from slt_jax import diagnostics, theory

from issue5_problems import LOCALIZATION, NBETA, exact_quadratic_loss, regression

INIT = 1.0


def _traces(seed=0, num_chains=4, num_draws=2000, level=0.05, noise=0.01):
    rng = np.random.default_rng(seed)
    return INIT + level + noise * rng.normal(size=(num_chains, num_draws))


def _checks(trace, **kwargs):
    metrics = diagnostics.trace_metrics(trace, INIT, 100.0, **kwargs)
    return {finding.check for finding in diagnostics.problems(metrics)}, metrics


def test_trace_metrics_shapes_and_healthy_trace():
    checks, metrics = _checks(_traces())
    assert checks == set()
    # λ̂ = nβ · (mean L - L*) = 100 · 0.05
    chex.assert_trees_all_close(metrics["llc_mean"], 5.0, atol=4 * metrics["llc_stderr"] + 1e-3)
    assert metrics["fraction_below"] < 1e-3 and metrics["spike_fraction"] == 0.0
    assert np.isnan(metrics["mala_acceptance"]) and np.isnan(metrics["predicted_bias"])


def test_trace_metrics_flag_each_failure():
    climb = _traces() + np.linspace(0.0, 0.05, 2000)  # the loss doubles over the run
    assert "plateau" in _checks(climb)[0]
    spiky = _traces()
    spiky[:, ::100] += 1.0
    assert "spikes" in _checks(spiky)[0]
    below = _traces(level=-0.02)
    assert {"below_init", "rise"} <= _checks(below)[0]
    disagree = _traces() + np.array([[0.0], [0.0], [0.03], [0.03]])
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
        diagnostics.trace_metrics(np.zeros(10), 0.0, 1.0)
    with pytest.raises(ValueError, match="burnin_draws"):
        diagnostics.trace_metrics(np.zeros((2, 10)), 0.0, 1.0, burnin_draws=10)


@pytest.fixture(scope="module")
def exact_grid():
    """Exact ULA (no gradient noise) on ½δᵀHδ at three step sizes."""
    params, data, h, _ = regression()
    a_max = NBETA * h.max() + LOCALIZATION
    steps = np.array([0.05, 0.1, 0.2]) / a_max
    chains = sj.run_chains(
        exact_quadratic_loss, params, data, key=1, step_size=steps, nbeta=NBETA, localization=LOCALIZATION,
        num_chains=4, num_draws=4000, num_burnin=2000, batch_size=8, progress=False, mala_every=0,
    )
    return steps, chains, h


def test_llc_and_predicted_bias_match_closed_form(exact_grid):
    steps, chains, h = exact_grid
    chex.assert_shape(chains.loss, (3, 4, 4000))
    exact_zero = theory.quadratic_llc(h, NBETA, LOCALIZATION)
    for i, step in enumerate(steps):
        metrics = diagnostics.trace_metrics(chains.loss[i], chains.init_loss, NBETA, grad_norm=chains.grad_norm[i], step_size=step)
        exact = theory.quadratic_llc(h, NBETA, LOCALIZATION, step)
        # the sampler reproduces SCIENCE.md §2's λ̂_ε (tolerance from the chains' standard error)
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
    healthy = sj.estimate_llc(
        exact_quadratic_loss, params, data, key=2, step_size=0.2 / a_max, nbeta=NBETA, localization=10.0,
        num_draws=4000, num_burnin=2000, batch_size=8, progress=False,
    )
    report = healthy.summary()
    assert isinstance(report, sj.diagnostics.HealthReport)
    assert report.ok, str(report)
    assert "No problems found" in str(report) and "LLC" in report.headline
    biased = sj.estimate_llc(
        exact_quadratic_loss, params, data, key=2, step_size=1.5 / a_max, nbeta=NBETA, localization=10.0,
        num_draws=4000, num_burnin=2000, batch_size=8, progress=False,
    )
    report = biased.summary()
    checks = {f.check: f for f in report.findings}
    assert "bias" in checks and "Reduce step_size" in checks["bias"].fix
    assert "mala" in checks
    # No burn-in and a relaxation time (2/(εA) = 12,000 steps) three times the run: every chain is still
    # climbing. 200 equal directions average out the per-coordinate noise, so the climb is clear.
    isotropic = lambda w, batch: 0.5 * jnp.sum(w**2) * jnp.ones(batch["y"].shape[0])
    short = sj.estimate_llc(
        isotropic, jnp.zeros(200), data, key=2, step_size=2.0 / ((NBETA + LOCALIZATION) * 12_000), nbeta=NBETA,
        localization=LOCALIZATION, num_draws=4000, batch_size=8, progress=False,
    )
    assert "plateau" in {f.check for f in short.summary().findings}


def test_negative_control_matches_ou_variance():
    params, data, _, _ = regression()
    control = sj.negative_control(
        exact_quadratic_loss, params, data, key=3, step_size=0.05, localization=4.0, batch_size=8, num_draws=400,
        progress=False,
    )
    assert control.passed, repr(control)
    chex.assert_trees_all_close(control.expected_variance, 1.0 / (4.0 * (1.0 - 0.05 * 4.0 / 4.0)), rtol=1e-12)
    assert abs(control.relative_error) < 0.05
    chex.assert_shape(control.variance_trace, (4, 400))
    assert "PASS" in repr(control)


def test_negative_control_validates_before_compiling():
    params, data, _, _ = regression()
    with pytest.raises(ValueError, match="localization"):
        sj.negative_control(exact_quadratic_loss, params, data, key=0, step_size=0.1, localization=0.0, batch_size=8)
    with pytest.raises(ValueError, match="unstable"):
        sj.negative_control(exact_quadratic_loss, params, data, key=0, step_size=1.0, localization=5.0, batch_size=8)
