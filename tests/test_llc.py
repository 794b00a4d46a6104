"""Known-answer tests of the LLC estimator (docs/conventions.md §2).

Every tolerance is Z standard errors of the mean over independent chains (Z = 4), plus, where the
closed form is not exact for the discretised dynamics, an explicitly computed bias bound.
"""

import chex
import flax.nnx as nnx
import jax
import jax.numpy as jnp
import optax
import numpy as np
import pytest
from helpers import linear_regression, standard_error
from issue5_problems import dln, dln_loss

import slt_jax as sj
from slt_jax.zoo import theory

Z = 4.0
EIGENVALUES = [1.0, 0.5, 0.1, 0.0]
SEPARABLE = sj.SamplerConfig(step_size=1e-3, nbeta=10.0, localization=0.0, num_chains=32, num_draws=2000,
                             num_steps_between_draws=5, num_burnin=1000, batch_size=1, mala_every=0)


# Two-point noise (noise="rademacher") has the Gaussian's stationary mean and covariance on a
# quadratic, so the quadratic closed forms hold for it at the same tolerances (docs/conventions.md §1).
@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_quadratic_full_batch_matches_step_corrected_closed_form(noise):
    loss_fn, w_star, data = linear_regression(EIGENVALUES, n=1000)
    # batch_size == n: exact full-batch SGLD. ε = 3e-3 (stable below 4/201) makes the correction large.
    config = sj.SamplerConfig(step_size=3e-3, nbeta=200.0, localization=1.0, num_chains=16, num_draws=4000,
                              num_burnin=200, batch_size=1000, noise=noise)
    result = sj.estimate_llc(loss_fn, w_star, data, config, key=0, progress=False)
    assert result.chains.settings["minibatches"] == "full batch"
    expected = theory.quadratic_llc(EIGENVALUES, 200.0, 1.0, step_size=3e-3)  # 1.6053
    se = standard_error(result)
    chex.assert_shape(result.llc_per_chain, (16,))
    chex.assert_shape(result.loss_trace, (16, 4000))
    chex.assert_shape(result.llc_trace, (16, 4000))
    assert abs(result.llc_mean - expected) < Z * se, (result.llc_mean, expected, se)
    # The step-size correction is resolved: the uncorrected value (1.4688) is rejected at 3 s.e.
    # (measured over keys 0-3: 6.5 to 10 s.e. away, while the corrected value is within 1 s.e.).
    assert abs(theory.quadratic_llc(EIGENVALUES, 200.0, 1.0) - result.llc_mean) > 3 * se
    assert result.init_loss == pytest.approx(float(jnp.mean(loss_fn(w_star, data))), rel=1e-5)
    np.testing.assert_allclose(result.llc_trace[:, -1], result.llc_per_chain, rtol=1e-6)


# scheme="leimkuhler-matthews" (docs/conventions.md §1): at the same ε = 3e-3, where Euler reads the
# step-corrected 1.6053, its stationary law is the target's, so λ̂ is the exact 1.4688.
def test_leimkuhler_matthews_full_batch_quadratic_needs_no_step_correction():
    loss_fn, w_star, data = linear_regression(EIGENVALUES, n=1000)
    config = sj.SamplerConfig(step_size=3e-3, nbeta=200.0, localization=1.0, num_chains=16, num_draws=4000,
                              num_burnin=200, batch_size=1000, scheme="leimkuhler-matthews")
    result = sj.estimate_llc(loss_fn, w_star, data, config, key=0, progress=False)
    se = standard_error(result)
    exact = theory.quadratic_llc(EIGENVALUES, 200.0, 1.0)
    assert abs(result.llc_mean - exact) < Z * se, (result.llc_mean, exact, se)
    assert abs(theory.quadratic_llc(EIGENVALUES, 200.0, 1.0, step_size=3e-3) - result.llc_mean) > 3 * se


# At a normal crossing Euler's bias is first order in ε (w1²w2², nβ = 100, ε = 1e-3: +4.0% measured
# with 8,192 chains); the Leimkuhler-Matthews step's is second order (+0.13% ± 0.08%; w1²w2⁴: +1.2%,
# Euler +2.8%), so it meets the table at a step 3x larger than the Euler test's.
@pytest.mark.parametrize("exponents", [(1, 1), (1, 2)])
def test_leimkuhler_matthews_normal_crossing_at_a_larger_step(exponents):
    k1, k2 = exponents
    reference = theory.NORMAL_CROSSING_REFERENCE[exponents][100.0]
    loss_fn = lambda w, batch: w[0] ** (2 * k1) * w[1] ** (2 * k2)
    config = sj.SamplerConfig(step_size=1e-3, nbeta=100.0, localization=1.0, num_chains=32, num_draws=2000,
                              num_steps_between_draws=10, num_burnin=2000, batch_size=1, mala_every=0,
                              scheme="leimkuhler-matthews")
    result = sj.estimate_llc(loss_fn, jnp.zeros(2), jnp.zeros((1, 1)), config, key=3, progress=False)
    se = standard_error(result)
    assert abs(result.llc_mean - reference) < Z * se, (result.llc_mean, reference, se)


# L_n(w*): "paired" with the per-example cache at w* (exact), "paired" without it (never computed),
# and the minibatch estimator with L_n(w*) from a subsample (its standard error in result.stderr);
# two-point noise at the same tolerance.
@pytest.mark.parametrize("loss_estimator, cache, init_loss_examples, noise",
                         [("paired", True, None, "gaussian"), ("paired", False, None, "gaussian"),
                          ("minibatch", False, 100, "gaussian"), ("paired", True, None, "rademacher")])
def test_quadratic_minibatch_matches_exact_closed_form(loss_estimator, cache, init_loss_examples, noise, monkeypatch):
    from slt_jax._src import planning

    if not cache:
        monkeypatch.setattr(planning, "_CENTER_CACHE_MAX_BYTES", 0)
    loss_fn, w_star, data = linear_regression(EIGENVALUES, n=1000)
    step = 1e-4
    config = sj.SamplerConfig(step_size=step, nbeta=200.0, localization=1.0, num_chains=8, num_draws=3000,
                              num_steps_between_draws=5, num_burnin=1000, batch_size=100,
                              init_loss_examples=init_loss_examples, noise=noise)
    result = sj.estimate_llc(loss_fn, w_star, data, config, key=1, progress=False, loss_estimator=loss_estimator)
    source = {(True, None): "full", (False, None): "draws", (False, 100): "subsample"}[cache, init_loss_examples]
    assert result.chains.settings["init_loss"]["source"] == source
    exact = theory.quadratic_llc(EIGENVALUES, 200.0, 1.0)
    bias_bound = theory.quadratic_llc(EIGENVALUES, 200.0, 1.0, step_size=step) - exact  # discretisation
    se = result.stderr
    assert (se > standard_error(result)) == (init_loss_examples is not None)
    assert abs(result.llc_mean - exact) < Z * se + bias_bound, (result.llc_mean, exact, se, bias_bound)


def test_separable_potential_gives_three_quarters():
    loss_fn = lambda w, batch: w[0] ** 2 + w[1] ** 4  # scalar loss is accepted
    result = sj.estimate_llc(loss_fn, jnp.zeros(2), jnp.zeros((1, 1)), SEPARABLE, key=2, progress=False)
    expected = theory.separable_llc([2, 4])
    se = standard_error(result)
    # Discretisation bias of the quadratic coordinate, from the closed form (the quartic one is smaller).
    bias_bound = 2 * (theory.quadratic_llc([2.0], 10.0, 0.0, step_size=1e-3) - 0.5)
    assert abs(result.llc_mean - expected) < Z * se + bias_bound, (result.llc_mean, se)


@pytest.mark.parametrize(
    "exponents,nbeta,reference",
    [((1, 1), 10.0, 0.2903), ((1, 1), 100.0, 0.3542), ((1, 2), 10.0, 0.1734), ((1, 2), 100.0, 0.2057)],
)
def test_normal_crossing_matches_finite_nbeta_table(exponents, nbeta, reference):
    k1, k2 = exponents
    assert theory.NORMAL_CROSSING_REFERENCE[exponents][nbeta] == reference
    loss_fn = lambda w, batch: w[0] ** (2 * k1) * w[1] ** (2 * k2)
    config = sj.SamplerConfig(step_size=1e-3 if nbeta == 10.0 else 3e-4, nbeta=nbeta, localization=1.0, num_chains=32,
                              num_draws=2000, num_steps_between_draws=10, num_burnin=2000, batch_size=1, mala_every=0)
    result = sj.estimate_llc(loss_fn, jnp.zeros(2), jnp.zeros((1, 1)), config, key=3, progress=False)
    se = standard_error(result)
    assert abs(result.llc_mean - reference) < Z * se, (result.llc_mean, reference, se)


# DLNs with w* = the teacher trained to convergence (tests/issue5_problems.dln), n = 10^4,
# nβ = n/log n, γ = 1 (localization bias negligible), ε = 3e-6, batch 100, 4000 + 8000 steps, paired
# estimator. Measured relative errors with these settings: -4.2%, +2.1%, +0.7%, +4.5%, +0.5% for the
# shapes below (8 chains, key 0); the stated tolerance is 10%. Two-point noise meets it too (two shapes
# here; all five measured in benchmarks/bench_noise.py).
DLN_RELATIVE_TOLERANCE = 0.10
DLN_SHAPES = [((4, 2, 4), 1), ((5, 5, 5), 1), ((6, 4, 8, 3), 2), ((10, 10, 10), 5), ((20, 5, 20), 3)]


@pytest.mark.parametrize(
    "widths,rank,noise",
    [(w, r, "gaussian") for w, r in DLN_SHAPES] + [((4, 2, 4), 1, "rademacher"), ((10, 10, 10), 5, "rademacher")],
)
def test_deep_linear_network_within_stated_relative_error(widths, rank, noise):
    params, data, product_rank = dln(widths, rank, 10_000)
    assert product_rank == rank
    lam, _ = theory.dln_learning_coefficient(widths, rank)
    config = sj.SamplerConfig(step_size=3e-6, localization=1.0, num_chains=8, num_draws=8000, num_burnin=4000,
                              batch_size=100, mala_every=0, noise=noise)
    result = sj.estimate_llc(dln_loss, params, data, config, key=0, progress=False, loss_estimator="paired")
    assert not result.diverged.any()
    assert abs(result.llc_mean - lam) / lam < DLN_RELATIVE_TOLERANCE, (widths, rank, result.llc_mean, lam)
    assert result.rhat < 1.1


def test_restricted_llc_of_separable_potential_sums_sampled_coordinates():
    loss_fn = lambda w, batch: w[0] ** 2 + w[1] ** 4 + jnp.abs(w[2]) ** 3
    for mask, expected in [(jnp.array([True, False, True]), 0.5 + 1 / 3), (jnp.array([False, True, False]), 0.25)]:
        result = sj.estimate_llc(loss_fn, jnp.zeros(3), jnp.zeros((1, 1)), SEPARABLE, key=4, component=mask, progress=False)
        # The chains carry only the sampled coordinates (gather/scatter of a non-slice pattern).
        assert result.chains.num_sampled[0] == int(np.sum(mask))
        assert np.shape(result.chains.final_positions[0]) == (32, int(np.sum(mask)))
        se = standard_error(result)
        bias_bound = 2 * (theory.quadratic_llc([2.0], 10.0, 0.0, step_size=1e-3) - 0.5) if mask[0] else 0.01
        assert abs(result.llc_mean - expected) < Z * se + bias_bound, (mask, result.llc_mean, expected, se)


def test_samplers_agree_on_quadratic():
    loss_fn, w_star, data = linear_regression(EIGENVALUES, n=1000)
    exact = theory.quadratic_llc(EIGENVALUES, 200.0, 1.0)
    for sampler, step in [("rmsprop_sgld", 2e-5), ("rmsprop_sgld_devinterp", 2e-4)]:
        config = sj.SamplerConfig(step_size=step, nbeta=200.0, localization=1.0, num_chains=8, num_draws=2000,
                                  num_steps_between_draws=5, num_burnin=2000, batch_size=1000, preconditioner=sampler,
                                  mala_every=0)
        result = sj.estimate_llc(loss_fn, w_star, data, config, key=5, progress=False)
        se = standard_error(result)
        # Preconditioned SGLD is only approximately stationary at the target; allow 5% on top.
        assert abs(result.llc_mean - exact) < Z * se + 0.05 * exact, (sampler, result.llc_mean, exact, se)


def test_nbeta_default_and_batch_variant():
    assert sj.default_nbeta(10_000) == pytest.approx(10_000 / np.log(10_000))
    assert sj.batch_nbeta(500) == pytest.approx(500 / np.log(500))
    loss_fn, w_star, data = linear_regression(EIGENVALUES, n=1000)
    config = sj.SamplerConfig(step_size=1e-4, localization=1.0, num_draws=10, batch_size=10)
    result = sj.estimate_llc(loss_fn, w_star, data, config, key=0, progress=False)
    assert result.nbeta == pytest.approx(1000 / np.log(1000))
    assert result.config.nbeta is None  # resolved per dataset, stored as given


def _masked_reference_loss(loss_fn, center, mask):
    """The 0.1 masked path, as a loss: the full chain moves every coordinate, but the loss sees the
    frozen ones clamped at w* (they only diffuse around w*, which the loss never sees)."""
    return lambda w, batch: loss_fn(jax.tree.map(lambda m, p, c: jnp.where(m, p, c), mask, w, center), batch)


def test_restricted_and_masked_paths_agree_on_a_separable_potential():
    loss_fn = lambda w, batch: w[0] ** 2 + w[1] ** 4 + jnp.abs(w[2]) ** 3
    mask = jnp.array([True, False, True])
    config = SEPARABLE.replace(localization=1.0)
    restricted = sj.estimate_llc(loss_fn, jnp.zeros(3), jnp.zeros((1, 1)), config, key=6, component=mask, progress=False)
    masked = sj.estimate_llc(_masked_reference_loss(loss_fn, jnp.zeros(3), mask), jnp.zeros(3), jnp.zeros((1, 1)), config,
                             key=7, progress=False)
    difference = restricted.llc_mean - masked.llc_mean
    se = np.hypot(standard_error(restricted), standard_error(masked))
    assert abs(difference) < Z * se, (restricted.llc_mean, masked.llc_mean, se)


def test_restricted_and_masked_paths_agree_on_an_attention_head():
    model = sj.models.AttentionOnlyTransformer(8, 6, 1, 2, 8, rngs=nnx.Rngs(0))
    params, loss_fn = sj.from_nnx(model, "next_token")
    tokens = sj.tasks.repeated_tokens(0, n=256, vocab_size=8, prefix_length=3)
    params = sj.train(loss_fn, params, tokens, optimizer=optax.adam(1e-2), num_steps=300, batch_size=64).params
    head = sj.head_mask(params, "blocks/0/attn", head=1)
    config = sj.SamplerConfig(step_size=1e-4, localization=10.0, num_chains=8, num_draws=400, num_burnin=200, batch_size=64,
                              mala_every=0)
    restricted = sj.estimate_llc(loss_fn, params, tokens, config, key=0, component=head, progress=False, loss_estimator="paired")
    # Dense slices: the chains carry the head's q/k/v/out blocks only.
    assert restricted.chains.num_sampled[0] == sum(int(np.sum(m)) for m in jax.tree.leaves(head))
    masked = sj.estimate_llc(_masked_reference_loss(loss_fn, params, head), params, tokens, config, key=1, progress=False,
                             loss_estimator="paired")
    se = np.hypot(standard_error(restricted), standard_error(masked))
    assert abs(restricted.llc_mean - masked.llc_mean) < Z * se, (restricted.llc_mean, masked.llc_mean, se)


def test_checkpoint_axis_equals_separate_runs_with_the_same_key():
    loss_fn, w_star, data = linear_regression(EIGENVALUES, n=200)
    checkpoints = [w_star, w_star * 1.03, w_star * 0.97]
    components = {"full": None, "head2": jnp.array([True, True, False, False])}
    config = sj.SamplerConfig(step_size=1e-3, nbeta=100.0, localization=1.0, num_draws=150, batch_size=50)
    before = sj.compile_count()
    table = sj.estimate_llc_table(loss_fn, checkpoints, data, config, key=3, components=components, steps=[0, 10, 20],
                                  progress=False)
    # Two layouts (whole model, a 2-coordinate element pattern): two programs for 6 configurations.
    assert sj.compile_count() - before <= 2
    chex.assert_shape(table.llc_per_chain, (3, 2, 4))
    for k, center in enumerate(checkpoints):
        for m, (name, mask) in enumerate(components.items()):
            alone = sj.estimate_llc(loss_fn, center, data, config, key=3, component=mask, progress=False)
            np.testing.assert_allclose(table.llc_per_chain[k, m], alone.llc_per_chain, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(table.result(k, name).llc_mean, alone.llc_mean, rtol=1e-5, atol=1e-6)
            assert table.init_loss[k] == pytest.approx(alone.init_loss, rel=1e-6)
    assert "step" in table.table() and table.to_xarray().llc_mean.dims == ("checkpoint", "component")


# Issue 12, item 4: a checkpoint sweep calibrates once (on the last checkpoint) and reuses that one
# setting for every cell, in one call; on 0.1 this raised and asked for a separate calibrate call.
def test_llc_table_with_auto_step_size_calibrates_once_and_reuses_it():
    loss_fn, w_star, data = linear_regression(EIGENVALUES, n=200)
    checkpoints = [w_star * 1.05, w_star]
    config = sj.SamplerConfig(step_size="auto", nbeta=100.0, localization=1.0, num_draws=300, num_burnin=300,
                              batch_size=50)
    table = sj.estimate_llc_table(loss_fn, checkpoints, data, config, key=0, steps=[5, 10], progress=False)
    calibration = table.chains.settings["calibration"]
    assert calibration["checkpoint"] == 10 and "Recommended" in calibration["reason"]
    chosen = table.chains.config.step_size
    assert chosen in calibration["step_sizes"] and table.chains.config.scheme == "leimkuhler-matthews"
    assert table.chains.config.replace(step_size="auto", scheme=None) == config  # the calibration's choices
    np.testing.assert_array_equal(table.chains.hyperparameters.step_size, chosen)  # one setting, every cell
    # ... and equals calibrating the last checkpoint by hand, then running the table with its step size.
    by_hand = sj.estimate_llc(loss_fn, w_star, data, config, key=0, progress=False)
    assert by_hand.config.step_size == chosen


# Issue 12, item 8: an untrained checkpoint (w* not a minimum) passed silently through summary().
def test_untrained_checkpoint_is_flagged_in_table_and_summary():
    loss_fn, w_star, data = linear_regression(EIGENVALUES, n=200)
    untrained = w_star + jnp.array([1.0, 1.0, 1.0, 0.0])  # far up the quadratic's walls
    config = sj.SamplerConfig(step_size=1e-3, nbeta=100.0, localization=1.0, num_draws=400, num_burnin=100,
                              batch_size=50)
    table = sj.estimate_llc_table(loss_fn, [untrained, w_star], data, config, key=0, progress=False)
    assert table.llc_mean[0, 0] < 0 and table.unreliable[0, 0], table
    assert "negative LLC" in table.table()  # the footnote names every criterion
    report = table.result(0).health
    assert "below_init" in {f.check for f in report.findings if f.severity == "error"}, report


# Issue 12, item 7: per-head LLCs summed to ~200 against 137 for the whole model. The miniature:
# L = ½(w0 + w1)², coupled and rank 1. Each coordinate alone sees curvature 1 (restricted LLC
# ≈ ½ each, so they sum to ≈ 1), while the whole model has one flat and one curvature-2 direction
# (LLC ≈ ½). Closed forms from theory.quadratic_llc, including the step's exact discretisation.
def test_restricted_llcs_do_not_add_up_on_a_coupled_loss():
    loss_fn = lambda w, batch: 0.5 * (w[0] + w[1]) ** 2
    step, nbeta, gamma = 1e-3, 100.0, 1.0
    config = sj.SamplerConfig(step_size=step, nbeta=nbeta, localization=gamma, num_chains=16, num_draws=2000,
                              num_steps_between_draws=5, num_burnin=1000, batch_size=1, mala_every=0)
    components = {"w0": jnp.array([True, False]), "w1": jnp.array([False, True]), "full": None}
    table = sj.estimate_llc_table(loss_fn, [jnp.zeros(2)], jnp.zeros((1, 1)), config, key=0, components=components,
                                  progress=False)
    expected = {"w0": theory.quadratic_llc([1.0], nbeta, gamma, step), "w1": theory.quadratic_llc([1.0], nbeta, gamma, step),
                "full": theory.quadratic_llc([2.0, 0.0], nbeta, gamma, step)}
    stderr = table.llc_std[0] / np.sqrt(16)
    for m, name in enumerate(table.components):
        assert abs(table.llc_mean[0, m] - expected[name]) < Z * stderr[m], (name, table.llc_mean[0, m], expected[name])
    restricted_sum = table.llc_mean[0, 0] + table.llc_mean[0, 1]
    assert restricted_sum - table.llc_mean[0, 2] > 0.4  # ≈ 0.99 against ≈ 0.50


def test_table_flags_unreliable_rows():
    loss_fn, w_star, data = linear_regression(EIGENVALUES, n=200)
    # Full batch with a tiny step: the chains have barely moved, ESS is far below 100.
    config = sj.SamplerConfig(step_size=1e-6, nbeta=100.0, localization=1.0, num_draws=40, batch_size=200)
    table = sj.estimate_llc_table(loss_fn, [w_star], data, config, key=0, progress=False)
    assert table.unreliable.all(), table
    assert "! unreliable" in table.table()


# Issue 19, item 3: no pass over all the data that the estimate does not need.
_SMALL = sj.SamplerConfig(step_size=1e-3, nbeta=200.0, localization=1.0, num_chains=4, num_draws=20, batch_size=4)


def _refuse(*args, **kwargs):
    raise AssertionError("a pass over all n examples")


def test_paired_llc_makes_no_full_data_pass_and_equals_the_exact_baseline(monkeypatch):
    from slt_jax._src import planning, program

    # n = 400 > draws x chains x batch = 320: no per-example cache at w*, one forward per draw.
    loss_fn, w_star, data = linear_regression(EIGENVALUES, n=400)
    exact = float(sj.full_data_loss(loss_fn, w_star, data))
    baseline = sj.run_chains(loss_fn, [w_star], data, _SMALL, key=3, progress=False,
                             recording=sj.Recording(center_loss=True, init_losses=[exact]))
    monkeypatch.setattr(planning, "full_init_losses", _refuse)
    monkeypatch.setattr(program, "example_losses", _refuse)
    monkeypatch.setattr(planning, "subsample_init_losses", _refuse)
    result = sj.estimate_llc(loss_fn, w_star, data, _SMALL, key=3, loss_estimator="paired", progress=False)
    np.testing.assert_array_equal(result.chains.loss, baseline.loss)
    np.testing.assert_array_equal(result.chains.center_loss, baseline.center_loss)
    # The estimate before this change, nβ((L_B(w) - L_B(w*) + L_n(w*)) - L_n(w*)), to float64 rounding.
    before = 200.0 * ((baseline.loss.astype(np.float64) - baseline.center_loss + exact) - exact).mean(axis=-1)[0]
    np.testing.assert_allclose(result.llc_per_chain, before, rtol=1e-12, atol=1e-12)
    # L_n(w*) is shown as the mean of the recorded L_B(w*): unbiased, its standard error from the draws.
    entry = result.chains.settings["init_loss"]
    assert entry["source"] == "draws" and entry["examples"] == 20 * 4 * 4
    draws = baseline.center_loss[0].astype(np.float64).ravel()
    assert entry["stderr"][0] == pytest.approx(draws.std(ddof=1) / np.sqrt(draws.size), rel=1e-9)
    assert abs(result.init_loss - exact) < Z * entry["stderr"][0]
    assert result.init_loss_stderr == 0.0 and result.stderr == pytest.approx(standard_error(result), rel=1e-12)


def test_minibatch_estimator_refuses_a_large_short_full_pass_before_any_pass(monkeypatch):
    from slt_jax._src import planning

    monkeypatch.setattr(planning, "full_init_losses", _refuse)
    # ~3.4e7 FLOPs per example (a 256 x 65536 product), n = 4096: the pass is ~1.4e11 FLOPs, and
    # 4096 forwards against 3 x 5 steps x 2 chains x batch 2 = 60 for the sampling.
    n, d, width = 4096, 256, 65536
    heavy = lambda w, batch: jnp.mean((batch["x"] @ jnp.ones((d, width))) * w, axis=1)
    data = {"x": jnp.ones((n, d))}
    config = _SMALL.replace(num_chains=2, num_draws=5, batch_size=2)
    with pytest.raises(ValueError, match=r"(?s)loss_estimator='paired'.*init_loss_examples=m"):
        sj.estimate_llc(heavy, jnp.ones(()), data, config, key=0, progress=False)
    # A small problem whose pass costs milliseconds is never refused, however short the run ...
    loss_fn, w_star, small = linear_regression(EIGENVALUES, n=400)
    monkeypatch.undo()
    short = _SMALL.replace(num_draws=2)
    assert sj.estimate_llc(loss_fn, w_star, small, short, key=0, progress=False).chains.settings["init_loss"] == {
        "source": "full", "examples": 400, "stderr": [0.0]}
    # ... until its pass counts as large (the threshold lowered): then the same message.
    monkeypatch.setattr(planning, "INIT_LOSS_FREE_FLOPS", 0.0)
    with pytest.raises(ValueError, match=r"(?s)L_n\(w\*\) over all n=400.*e\.g\. m=\d+"):
        sj.estimate_llc(loss_fn, w_star, small, short, key=0, progress=False)
    assert sj.estimate_llc(loss_fn, w_star, small, short, key=0, progress=False, loss_estimator="paired").llc_mean


def test_subsampled_init_loss_is_unbiased_with_the_closed_form_standard_error():
    from slt_jax._src import planning

    # Per-example losses 0, 1, ..., n-1: L_n = (n - 1) / 2, S² = n (n + 1) / 12 (ddof=1), and the mean
    # of m drawn without replacement has variance (1 - m/n) S² / m.
    n, m, keys = 200, 20, 300
    data = {"y": jnp.arange(n, dtype=jnp.float32)}
    per_example = lambda w, batch: batch["y"] * w
    closed = np.sqrt((1 - m / n) * n * (n + 1) / 12 / m)
    runs = [planning.subsample_init_losses(per_example, [jnp.ones(()), 2 * jnp.ones(())], data, m, 8, key) for key in range(keys)]
    values = np.array([v for v, _ in runs])  # (keys, 2 centres)
    errors = np.array([e for _, e in runs])
    np.testing.assert_allclose(values[:, 1], 2 * values[:, 0], rtol=1e-6)  # the same subsample at every centre
    assert abs(values[:, 0].mean() - (n - 1) / 2) < Z * closed / np.sqrt(keys)
    assert values[:, 0].std(ddof=1) == pytest.approx(closed, rel=0.15)
    assert np.sqrt((errors[:, 0] ** 2).mean()) == pytest.approx(closed, rel=0.05)  # E[se²] = closed² exactly
    # A scalar-mean loss and a per-token loss give the same per-example means.
    scalar = lambda w, batch: jnp.mean(batch["y"]) * w
    per_token = lambda w, batch: jnp.stack([batch["y"] - 1, batch["y"] + 1], axis=1) * w
    for other in (scalar, per_token):
        np.testing.assert_allclose(planning.subsample_init_losses(other, [jnp.ones(())], data, m, 8, 7),
                                   planning.subsample_init_losses(per_example, [jnp.ones(())], data, m, 8, 7), rtol=1e-6)


def test_subsample_standard_error_enters_the_llc_error_and_summary():
    loss_fn, w_star, data = linear_regression(EIGENVALUES, n=400)
    config = _SMALL.replace(init_loss_examples=50)
    result = sj.estimate_llc(loss_fn, w_star, data, config, key=3, progress=False)
    entry = result.chains.settings["init_loss"]
    assert entry["source"] == "subsample" and entry["examples"] == 50
    assert result.init_loss_stderr == entry["stderr"][0] > 0
    assert result.stderr == pytest.approx(np.hypot(standard_error(result), 200.0 * entry["stderr"][0]), rel=1e-12)
    assert "subsample of 50 examples" in result.summary()
    assert result.health.metrics["llc_stderr"] == pytest.approx(result.stderr, rel=1e-12)
    table = sj.estimate_llc_table(loss_fn, [w_star, w_star], data, config, key=3, progress=False)
    np.testing.assert_allclose(table.stderr[:, 0], result.stderr, rtol=1e-5)
    assert "subsample of 50 examples" in table.table()
    # The paired estimator has no L_n(w*) error: it cancels.
    assert sj.traces.init_loss_stderr(result.chains, "paired").tolist() == [0.0]
