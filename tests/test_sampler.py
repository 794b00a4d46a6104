"""Sampler behaviour: determinism, configurations, groups, sharding, compilation, divergence, validation."""

import json
import math
import os
import subprocess
import sys
import textwrap
import warnings
from types import SimpleNamespace

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import linear_regression

import slt_jax as sj
from slt_jax import kernels
from slt_jax._src import planning, program, rng

EIGENVALUES = [1.0, 0.5, 0.1, 0.0]
CONFIG = sj.SamplerConfig(step_size=1e-3, nbeta=200.0, localization=1.0, num_chains=4, num_draws=60, batch_size=50)


@pytest.fixture(scope="module")
def problem():
    return linear_regression(EIGENVALUES, n=200)


def _run(problem, config=CONFIG, key=0, **kwargs):
    loss_fn, w_star, data = problem
    return sj.run_chains(loss_fn, [w_star], data, config, key=key, progress=False, **kwargs)


def test_same_key_is_bitwise_identical_and_chunking_does_not_matter(problem):
    config = CONFIG.replace(num_burnin=12, num_steps_between_draws=3)
    a = _run(problem, config, key=7)
    b = _run(problem, config, key=7)
    c = _run(problem, config.replace(chunk_draws=12), key=7)
    d = _run(problem, config, key=8)
    np.testing.assert_array_equal(a.loss, b.loss)
    np.testing.assert_array_equal(a.loss, c.loss)
    np.testing.assert_array_equal(np.asarray(a.final_positions[0]), np.asarray(c.final_positions[0]))
    assert not np.array_equal(a.loss, d.loss)
    chex.assert_shape([a.loss, a.grad_norm, a.noise_norm, a.distance, a.mala_acceptance], (1, 4, 60))
    assert a.num_steps == 12 + 60 * 3
    # MALA acceptance is evaluated every mala_every-th draw only.
    assert np.isfinite(a.mala_acceptance[..., ::20]).all() and np.isnan(a.mala_acceptance[..., 1:20]).all()


def test_diagnostics_every_k_draws_leaves_the_chains_unchanged(problem):
    every = _run(problem, key=4)
    sparse = _run(problem, CONFIG.replace(diagnostics_every=5, mala_every=0), key=4)
    np.testing.assert_array_equal(every.loss, sparse.loss)
    assert np.isfinite(sparse.grad_norm[..., ::5]).all() and np.isnan(sparse.grad_norm[..., 1:5]).all()
    np.testing.assert_array_equal(every.grad_norm[..., ::5], sparse.grad_norm[..., ::5])
    assert np.isnan(sparse.mala_acceptance).all()


def test_bulk_and_in_step_noise_give_identical_chains(problem, monkeypatch):
    config = CONFIG.replace(num_steps_between_draws=2)
    bulk = _run(problem, config, key=9)
    monkeypatch.setattr(planning, "BULK_NOISE_MAX_PARAMETERS", 0)  # large-model path
    in_step = _run(problem, config, key=9)
    # The same draws; only XLA's fusion of the noise into the update differs (float32 rounding).
    np.testing.assert_allclose(bulk.loss, in_step.loss, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(bulk.final_positions[0]), np.asarray(in_step.final_positions[0]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("diagnostics_every,mala_every", [(1, 5), (4, 4), (3, 0), (2, 5)])
def test_due_draws_placed_statically_give_the_branching_results(problem, monkeypatch, diagnostics_every, mala_every):
    config = CONFIG.replace(num_draws=23, num_steps_between_draws=2, diagnostics_every=diagnostics_every, mala_every=mala_every)
    monkeypatch.setattr(planning, "BULK_NOISE_MAX_PARAMETERS", 0)  # the large-model path places them statically
    statics, compiled = [], program.compiled_chunk
    monkeypatch.setattr(program, "compiled_chunk", lambda args, static: statics.append(static) or compiled(args, static))
    periodic = _run(problem, config, key=5)
    recorded = [s for s in statics if s.recorded]
    assert recorded and all(s.aligned for s in recorded) == (program.due_pattern(diagnostics_every, mala_every) is not None)
    monkeypatch.setattr(program, "due_pattern", lambda d, m: None)  # every draw branches
    branching = _run(problem, config, key=5)
    # The same arithmetic, fused differently by XLA: float32 rounding only. MALA's acceptance is the
    # exp of a difference of potentials of size nβ·L ~ 1e2, so its rounding is ~1e-5 relative.
    for field, rtol in (("loss", 1e-6), ("grad_norm", 1e-6), ("noise_norm", 1e-6), ("distance", 1e-6),
                        ("localization_norm", 1e-6), ("mala_acceptance", 1e-4)):
        np.testing.assert_allclose(getattr(periodic, field), getattr(branching, field), rtol=rtol, atol=1e-7, equal_nan=True,
                                   err_msg=field)
    np.testing.assert_array_equal(np.isnan(periodic.mala_acceptance), np.isnan(branching.mala_acceptance))
    np.testing.assert_array_equal(np.isnan(periodic.grad_norm), np.broadcast_to(np.arange(23) % diagnostics_every != 0, (1, 4, 23)))


def test_periodic_chunks_start_on_due_draws():
    config = CONFIG.replace(num_draws=500, mala_every=20)
    assert {c.num_draws for c in planning.chunks(config, 4, period=20)} == {100}
    assert {c.num_draws for c in planning.chunks(config, 4)} == {50}
    assert [c.num_draws for c in planning.chunks(config.replace(num_draws=55), 4, period=20)] == [20, 20, 15]


def test_chunks_carry_at_least_the_least_gradient_work():
    # bench_llc's MLP: 4 chains x 311 MFLOP per gradient, 200 draws; 10 chunks of 20 would pay the
    # chunk's fixed cost (its fresh temporary buffers) every 20 steps (planning, "Chunk lengths").
    config = CONFIG.replace(num_draws=200, mala_every=20)
    per_step = 4 * 3.11e8
    least = math.ceil(planning.CHUNK_MIN_FLOPS / per_step)
    lengths = [c.num_draws for c in planning.chunks(config, 4, period=20, flops_per_step=per_step)]
    assert lengths == [100, 100] and min(lengths) >= least
    assert [c.num_draws for c in planning.chunks(config, 4, period=20)] == [20] * 10  # no cost analysis: a tenth
    # A run shorter than the least work is one chunk; burn-in chunks follow the same rule.
    assert [c.num_draws for c in planning.chunks(config.replace(num_draws=60, num_burnin=30), 4, 20, per_step)] == [30, 60]
    # Thinned draws: the least counts steps.
    thinned = planning.chunks(config.replace(num_steps_between_draws=10), 4, period=20, flops_per_step=per_step)
    assert all(c.num_steps >= least for c in thinned) and sum(c.num_draws for c in thinned) == 200
    # Expensive steps keep about a tenth of the run.
    assert {c.num_draws for c in planning.chunks(config, 4, period=20, flops_per_step=1e12)} == {20}


@pytest.mark.parametrize("noise_in_step", [False, True])
def test_a_run_of_cheap_steps_is_one_chunk(problem, monkeypatch, noise_in_step):
    # The sampler gives the planner the chains' gradient FLOPs (XLA's cost analysis), whether they
    # draw their noise in bulk or inside the step (forced here for the 4-coordinate regression);
    # its steps are so cheap that the whole run is one chunk, where a tenth of it was the rule.
    seen = []
    original = planning.chunks
    monkeypatch.setattr(planning, "chunks", lambda *args: seen.append(original(*args) + [args[3]]) or seen[-1][:-1])
    if noise_in_step:
        monkeypatch.setattr(planning, "BULK_NOISE_MAX_PARAMETERS", 1)
    result = _run(problem, CONFIG.replace(num_draws=40, num_burnin=20))
    flops = seen[-1][-1]
    assert 0 < flops < planning.CHUNK_MIN_FLOPS / 60  # a gradient of 50 examples x 4 coordinates, 4 chains
    assert [(c.num_draws, c.recorded) for c in seen[-1][:-1]] == [(20, False), (40, True)]
    assert not result.diverged.any()


def test_periodic_scan_matches_a_scan_with_the_flag_per_index():
    def body(total, x, due):
        return total * 2 + x + (100 if due else 0), (x, jnp.asarray(due))

    for length, period in [(23, 5), (20, 5), (3, 5), (7, 1)]:
        xs = jnp.arange(length)
        total, (seen, due) = program.periodic_scan(body, jnp.zeros((), jnp.int32), xs, length, period)
        expected = 0
        for i in range(length):
            expected = expected * 2 + i + (100 if i % period == 0 else 0)
        assert int(total) == expected
        np.testing.assert_array_equal(seen, np.arange(length))
        np.testing.assert_array_equal(due, np.arange(length) % period == 0)


def test_chains_differ_and_key_objects_are_accepted(problem):
    out = _run(problem, key=jax.random.key(3))
    assert len({tuple(row) for row in np.round(out.loss[0], 6)}) == 4
    raw = _run(problem, key=jax.random.PRNGKey(3))
    np.testing.assert_array_equal(out.loss, raw.loss)


def test_other_prng_implementations_are_deterministic(problem):
    # The PRNG implementation is the key's: "rbg" / "unsafe_rbg" keys change the stream, not the law.
    for impl in ("rbg", "unsafe_rbg"):
        a = _run(problem, key=jax.random.key(3, impl=impl))
        b = _run(problem, key=jax.random.key(3, impl=impl))
        np.testing.assert_array_equal(a.loss, b.loss)
        assert np.isfinite(a.loss).all()


def test_no_recompilation_when_key_data_centre_or_hyperparameter_values_change(problem):
    loss_fn, w_star, data = problem
    _run(problem)
    before = sj.compile_count()
    other = jax.tree.map(lambda x: x * 1.01, data)
    _run(problem, key=1)
    sj.run_chains(loss_fn, [w_star * 1.1], other, CONFIG.replace(step_size=2e-3, nbeta=150.0, localization=3.0), key=2, progress=False)
    assert sj.compile_count() == before


def test_hyperparameter_grid_runs_as_one_program_and_matches_single_runs(problem):
    before = sj.compile_count()
    grid = _run(problem, grid={"step_size": [1e-3, 5e-4], "nbeta": [200.0, 100.0]})
    chex.assert_shape(grid.loss, (2, 4, 60))
    assert sj.compile_count() - before <= 1
    single = _run(problem, CONFIG.replace(step_size=5e-4, nbeta=100.0))
    np.testing.assert_allclose(grid.loss[1], single.loss[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(grid.select(1).hyperparameters.nbeta, [100.0])


def test_configurations_are_centre_major_and_select_slices_every_field(problem):
    loss_fn, w_star, data = problem
    masks = [None, np.array([True, True, False, False])]
    out = sj.run_chains(loss_fn, [w_star, w_star * 1.05], data, CONFIG, key=0, masks=masks, progress=False)
    np.testing.assert_array_equal(out.center_index, [0, 0, 1, 1])
    np.testing.assert_array_equal(out.variant_index, [0, 1, 0, 1])
    np.testing.assert_array_equal(out.num_sampled, [4, 2, 4, 2])
    assert out.init_loss[2] > out.init_loss[0]
    picked = out.select(3)
    chex.assert_shape(picked.loss, (1, 4, 60))
    np.testing.assert_array_equal(picked.loss[0], out.loss[3])
    assert picked.final_positions[0] is out.final_positions[3]


def test_memory_budget_groups_give_identical_results(problem):
    loss_fn, w_star, data = problem
    centers = [w_star, w_star * 1.02, w_star * 0.98]
    masks = [None, np.array([True, False, True, False]), np.array([False, True, False, True])]
    whole = sj.run_chains(loss_fn, centers, data, CONFIG, key=3, masks=masks, progress=False)
    tight = CONFIG.replace(memory_budget=int(1.5 * whole.settings["configuration_bytes"]))
    grouped = sj.run_chains(loss_fn, centers, data, tight, key=3, masks=masks, progress=False)
    assert grouped.settings["groups"] > whole.settings["groups"]
    # The same draws: only XLA's batching of the vmapped arithmetic differs (float32 rounding).
    np.testing.assert_allclose(grouped.loss, whole.loss, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(grouped.diverged, whole.diverged)


SHARDING_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import jax
    sys.path.insert(0, {tests!r})
    from helpers import linear_regression
    import slt_jax as sj
    loss_fn, w_star, data = linear_regression([1.0, 0.5, 0.1, 0.0], n=200)
    config = sj.SamplerConfig(step_size=1e-3, nbeta=200.0, localization=1.0, num_chains=4, num_draws=40, batch_size=50)
    out = sj.run_chains(loss_fn, [w_star], data, config, key=11, masks=[None, np.array([True, False, True, False])],
                        progress=False)
    print(json.dumps({{"devices": jax.device_count(), "loss": out.loss.tolist()}}))
    """
)


def _run_with_devices(count):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={count}", JAX_PLATFORMS="cpu")
    script = SHARDING_SCRIPT.format(tests=os.path.dirname(__file__))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_sharding_over_four_devices_gives_the_same_results():
    one = _run_with_devices(1)
    four = _run_with_devices(4)
    assert one["devices"] == 1 and four["devices"] == 4
    np.testing.assert_allclose(np.array(four["loss"]), np.array(one["loss"]), rtol=1e-6, atol=1e-7)


def _cliff_loss(w, batch):
    # Finite near 0, NaN beyond |w| > 3.6: a chain that wanders too far diverges (6 of 16 here).
    base = 0.5 * w**2 * jnp.ones(batch.shape[0])
    return jnp.where(jnp.abs(w) > 3.6, jnp.nan, base)


def test_partial_divergence_is_reported_excluded_and_warned():
    config = sj.SamplerConfig(step_size=1.0, nbeta=1.0, localization=0.0, num_chains=16, num_draws=300, batch_size=4)
    with pytest.warns(RuntimeWarning, match=r"chains \[") as record:
        result = sj.estimate_llc(_cliff_loss, jnp.zeros(()), jnp.zeros((4, 1)), config, key=0, progress=False)
    diverged = np.flatnonzero(result.diverged).tolist()
    assert 2 <= len(diverged) <= 14
    assert str(diverged) in str(record[0].message)
    assert "reduce step_size" in str(record[0].message)
    assert np.isfinite(result.llc_mean) and np.isfinite(result.llc_std)
    assert np.isnan(result.llc_per_chain[result.diverged]).all()
    assert np.isfinite(result.llc_per_chain[~result.diverged]).all()
    np.testing.assert_allclose(result.llc_mean, result.llc_per_chain[~result.diverged].mean())
    assert (result.chains.diverged_at[0][result.diverged] >= 0).all()


def test_absurd_step_size_diverges_every_chain_and_raises_with_the_result(problem):
    loss_fn, w_star, data = problem
    with pytest.raises(sj.DivergenceError, match="reduce step_size") as info:
        sj.estimate_llc(loss_fn, w_star, data, CONFIG.replace(step_size=10.0, num_draws=500, chunk_draws=50), key=0,
                        progress=False)
    result = info.value.result
    assert result.diverged.all() and np.isnan(result.llc_mean)
    # Detected early: the run stops at the first chunk boundary after every chain diverged (by
    # default this cheap run would be one chunk: planning.CHUNK_MIN_FLOPS).
    assert result.chains.settings["stopped_early"]


def _compiles(fn):
    before = sj.compile_count()
    try:
        fn()
    finally:
        assert sj.compile_count() == before, "validation must happen before compiling"


@pytest.mark.parametrize(
    "change,error,match",
    [
        (dict(step_size=0.0), ValueError, "step_size"),
        (dict(step_size=-1e-3), ValueError, "step_size"),
        (dict(step_size=float("nan")), ValueError, "step_size"),
        (dict(step_size="fast"), ValueError, "step_size"),
        (dict(nbeta=-5.0), ValueError, "nbeta"),
        (dict(localization=-1.0), ValueError, "localization"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(batch_size=2.5), TypeError, "batch_size"),
        (dict(num_chains=0), ValueError, "num_chains"),
        (dict(num_draws=0), ValueError, "num_draws"),
        (dict(preconditioner="adam"), ValueError, "preconditioner"),
        (dict(memory_budget=0), ValueError, "memory_budget"),
    ],
)
def test_bad_settings_raise_when_the_config_is_built(change, error, match):
    with pytest.raises(error, match=match):
        CONFIG.replace(**change)


def test_config_is_immutable_and_json_round_trips():
    config = CONFIG.replace(preconditioner=sj.Preconditioner("rmsprop_sgld", alpha=0.9))
    assert sj.SamplerConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(Exception):
        config.step_size = 1.0
    with pytest.raises(TypeError, match="unknown SamplerConfig field"):
        CONFIG.replace(sampler="sgld")


def test_bad_data_params_masks_checkpoints_and_loss_raise_before_compiling(problem):
    loss_fn, w_star, data = problem
    run = lambda **kw: _compiles(lambda: sj.run_chains(**{**dict(loss_fn=loss_fn, centers=[w_star], data=data, config=CONFIG, key=0, progress=False), **kw}))
    llc = lambda **kw: _compiles(lambda: sj.estimate_llc(**{**dict(loss_fn=loss_fn, params=w_star, data=data, config=CONFIG, key=0, progress=False), **kw}))
    with pytest.raises(ValueError, match="different lengths"):
        run(data={"x": data["x"], "y": data["y"][:-1]})
    with pytest.raises(ValueError, match="NaN or inf"):
        run(data={"x": data["x"].at[0, 0].set(jnp.nan), "y": data["y"]})
    with pytest.raises(ValueError, match="w\\* must be finite"):
        run(centers=[w_star.at[0].set(jnp.inf)])
    with pytest.raises(ValueError, match="larger than the dataset"):
        run(config=CONFIG.replace(batch_size=500))
    with pytest.raises(TypeError, match="list of params"):
        run(centers=w_star)
    with pytest.raises(ValueError, match="checkpoint 1 has shape"):
        run(centers=[w_star, jnp.ones(5)])
    with pytest.raises(ValueError, match="checkpoint 1 has a different pytree structure"):
        run(centers=[w_star, {"w": w_star}])
    with pytest.raises(ValueError, match="same structure as params"):
        run(masks=[{"a": True}])
    with pytest.raises(ValueError, match="shape"):
        run(masks=[jnp.array([True, False])])
    with pytest.raises(TypeError, match="bool"):
        run(masks=[jnp.ones(4)])
    with pytest.raises(ValueError, match="selects no coordinate"):
        llc(component=jnp.zeros(4, bool))
    with pytest.raises(ValueError, match=r"memory_budget=1000 bytes is too small for one chain.*needs \d+ bytes"):
        run(config=CONFIG.replace(memory_budget=1000))
    with pytest.raises(ValueError, match="grid"):
        run(grid={"step_size": [1e-3, 2e-3], "nbeta": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match=r"per-example\s+losses of shape \(50,\)"):
        run(loss_fn=lambda w, b: jnp.ones((3,)))
    with pytest.raises(ValueError, match="failed on a batch"):
        run(loss_fn=lambda w, b: b["x"] @ jnp.ones(7))
    with pytest.raises(ValueError, match="loss_estimator"):
        llc(loss_estimator="magic")
    with pytest.raises(TypeError, match="key"):
        run(key="seed")
    with pytest.raises(ValueError, match="nbeta"):
        llc(config=CONFIG.replace(nbeta=0.0))


def test_full_and_paired_loss_estimators_agree_with_minibatch(problem):
    loss_fn, w_star, data = problem
    config = CONFIG.replace(num_draws=400)
    full = sj.estimate_llc(loss_fn, w_star, data, config, key=5, loss_estimator="full", progress=False)
    paired = sj.estimate_llc(loss_fn, w_star, data, config, key=5, loss_estimator="paired", progress=False)
    mini = sj.estimate_llc(loss_fn, w_star, data, config, key=5, progress=False)
    # Same chains: the three traces estimate the same L_n(w_d); paired/full remove minibatch noise.
    np.testing.assert_array_equal(full.chains.loss, mini.chains.loss)
    residual_full = np.abs(paired.loss_trace - full.loss_trace).mean()
    residual_mini = np.abs(mini.loss_trace - full.loss_trace).mean()
    assert residual_full < 0.2 * residual_mini
    np.testing.assert_allclose(full.chains.full_loss[0, :, 0], full.init_loss, rtol=1e-5)


def test_center_loss_gathered_from_cached_example_losses_equals_a_forward_pass(problem, monkeypatch):
    """L_B(w*) per draw: gathered from per-example losses at w* (computed once per centre) or one
    forward pass per draw; the same numbers up to float32 rounding, the chains themselves bitwise."""
    from slt_jax._src import planning

    loss_fn, w_star, data = problem
    config = CONFIG.replace(num_draws=60)
    centers = [w_star, w_star * 1.02]
    cached = sj.run_chains(loss_fn, centers, data, config, key=2, recording=sj.Recording(center_loss=True), progress=False)
    monkeypatch.setattr(planning, "_CENTER_CACHE_MAX_BYTES", 0)  # forces the per-draw forward pass
    forward = sj.run_chains(loss_fn, centers, data, config, key=2, recording=sj.Recording(center_loss=True), progress=False)
    np.testing.assert_array_equal(cached.loss, forward.loss)
    np.testing.assert_allclose(cached.center_loss, forward.center_loss, rtol=1e-5)
    # A scalar-mean loss has no per-example losses: the forward pass is used, with the same values.
    scalar_loss = lambda w, batch: jnp.mean(loss_fn(w, batch))
    monkeypatch.undo()
    scalar = sj.run_chains(scalar_loss, centers, data, config, key=2, recording=sj.Recording(center_loss=True), progress=False)
    np.testing.assert_allclose(scalar.center_loss, forward.center_loss, rtol=1e-5)
    n = data["x"].shape[0]
    assert not planning._cache_wanted(config, n, 2, 1, ())
    assert planning._cache_wanted(config, n, 2, 1, (config.batch_size,))
    # L_n(w*) of a cached run is the cache's mean: the same figure as the full-data pass; without the
    # cache it is never computed, and shown as the mean of the recorded L_B(w*).
    np.testing.assert_allclose(cached.init_loss, [float(sj.full_data_loss(loss_fn, c, data)) for c in centers], rtol=1e-6)
    assert cached.settings["init_loss"] == {"source": "full", "examples": n, "stderr": [0.0, 0.0]}
    assert forward.settings["init_loss"]["source"] == scalar.settings["init_loss"]["source"] == "draws"
    np.testing.assert_allclose(forward.init_loss, forward.center_loss[[0, 1]].astype(np.float64).mean(axis=(1, 2)), rtol=1e-12)


# Issue 12, item 6: with per-token losses the default nβ = n / log n counts sequences; say so.
def test_default_nbeta_with_per_token_losses_warns_that_n_counts_sequences(problem):
    loss_fn, w_star, data = problem
    per_token = lambda w, batch: jnp.stack([loss_fn(w, batch)] * 3, axis=1)  # (batch, 3 "tokens")
    config = CONFIG.replace(num_draws=4, nbeta=None)
    with pytest.warns(sj.NbetaConventionWarning, match="SEQUENCES") as caught:
        sj.run_chains(per_token, [w_star], data, config, key=0, progress=False)
    assert [w.filename for w in caught] == [__file__]  # the caller's line, not the library's
    with pytest.warns(sj.NbetaConventionWarning) as caught:
        sj.estimate_llc(per_token, w_star, data, config, key=0, progress=False)  # deeper inside the package
    assert {w.filename for w in caught if issubclass(w.category, sj.NbetaConventionWarning)} == {__file__}
    with warnings.catch_warnings():
        warnings.simplefilter("error", sj.NbetaConventionWarning)
        sj.run_chains(per_token, [w_star], data, config.replace(nbeta=sj.default_nbeta(200)), key=0, progress=False)
        sj.run_chains(loss_fn, [w_star], data, config, key=0, progress=False)  # per-example: no warning


def test_full_data_loss_handles_a_partial_last_batch(problem):
    loss_fn, w_star, data = problem
    exact = float(jnp.mean(loss_fn(w_star * 0.9, data)))
    for batch_size in (7, 50, 200):
        np.testing.assert_allclose(float(sj.full_data_loss(loss_fn, w_star * 0.9, data, batch_size)), exact, rtol=1e-5)


# Issue 18, item 4: the recording options are one value; the numbers below were recorded from the
# seven loose keyword arguments it replaced (same key, same draws).
def _recorded_run(problem, **recording):
    loss_fn, w_star, data = problem
    config = CONFIG.replace(num_chains=3, num_draws=12, num_burnin=4, num_steps_between_draws=2)
    observe = lambda params, info, context: {"w": params, "l": info.loss - context.init_loss}
    add = sj.Accumulator(init=lambda v: jax.tree.map(jnp.zeros_like, v), update=lambda s, v: jax.tree.map(jnp.add, s, v))
    recording = sj.Recording(**{**dict(observe=observe, observe_data=jnp.ones(3), accumulator=add, keep_traces=True,
                                       full_loss_every=3, center_loss=True), **recording})
    return sj.run_chains(loss_fn, [w_star, w_star * 1.1], data, config, key=5, masks=[None, np.array([True, False, True, False])],
                         recording=recording, progress=False)


def test_recording_reproduces_the_loose_flags_numbers(problem):
    out = _recorded_run(problem)
    f32 = lambda x: np.array(x, np.float32)
    np.testing.assert_allclose(out.loss[:, 0, :3], f32([[0.35967597, 0.60182196, 0.634221], [0.35734913, 0.61891145, 0.6159484],
                                                        [0.3805792, 0.60735786, 0.64296263], [0.37607875, 0.626233, 0.6246375]]), rtol=1e-6)
    np.testing.assert_allclose(out.full_loss[:, 1, ::3], f32([[0.5065114, 0.5052259, 0.50107384, 0.5005958],
                                                             [0.50015473, 0.50436383, 0.5004276, 0.5091018],
                                                             [0.51856685, 0.50633645, 0.5008629, 0.5000797],
                                                             [0.5046555, 0.510235, 0.5026054, 0.51208246]]), rtol=1e-6)
    assert np.isnan(out.full_loss[..., 1::3]).all()
    np.testing.assert_allclose(out.center_loss[:, 2, :2], f32([[0.31179297, 0.6076233], [0.31179297, 0.6076233],
                                                              [0.322821, 0.62113965], [0.322821, 0.62113965]]), rtol=1e-6)
    np.testing.assert_allclose(out.accumulator["l"], f32([[0.66891396, 0.27754095, -0.22134], [0.66633403, 0.260231, -0.20677316],
                                                         [0.61383665, 0.19184846, -0.3251631], [0.63573855, 0.20642744, -0.25445694]]),
                               rtol=1e-5)
    np.testing.assert_allclose(out.observed["w"][3, 1, -1], f32([1.040764, 1.1, 0.93902755, 1.1]), rtol=1e-6)
    np.testing.assert_allclose(out.init_loss, [0.5, 0.5, 0.5080000758171082, 0.5080000758171082], rtol=1e-7)
    chex.assert_shape([out.observed["l"], out.accumulator["w"]], [(4, 3, 12), (4, 3, 4)])
    np.testing.assert_array_equal(out.draw_steps, sj.draw_steps(out.config))
    np.testing.assert_array_equal(out.draw_steps, 4 + 2 * np.arange(12))
    # Known L_n(w*) skips the full-data pass; nothing recorded beyond the loss by default.
    known = _recorded_run(problem, init_losses=[0.25, 0.75])
    np.testing.assert_array_equal(known.init_loss, [0.25, 0.25, 0.75, 0.75])
    np.testing.assert_array_equal(known.loss, out.loss)
    bare = _run(problem, CONFIG.replace(num_draws=4))
    assert bare.full_loss is None and bare.center_loss is None and bare.observed is None and bare.accumulator is None


def test_accumulated_observables_may_use_the_loss_at_the_center(problem):
    out = _recorded_run(problem, observe=lambda params, info, context: info.loss - context.center_loss, keep_traces=False)
    np.testing.assert_allclose(out.accumulator, np.nansum(out.loss - out.center_loss, axis=2), rtol=1e-5)


def test_bad_recording_raises_before_compiling(problem):
    loss_fn, w_star, data = problem
    run = lambda recording: _compiles(lambda: sj.run_chains(loss_fn, [w_star], data, CONFIG, key=0, recording=recording, progress=False))
    with pytest.raises(TypeError, match="recording must be a slt_jax.Recording"):
        run({"center_loss": True})
    with pytest.raises(ValueError, match="accumulator was given without observe"):
        run(sj.Recording(accumulator=sj.Accumulator(lambda v: v, lambda s, v: s)))
    with pytest.raises(ValueError, match="observe_data was given without observe"):
        run(sj.Recording(observe_data=jnp.ones(3)))
    with pytest.raises(TypeError, match="full_loss_every must be an int"):
        run(sj.Recording(full_loss_every=0.5))
    with pytest.raises(ValueError, match="one L_n"):
        run(sj.Recording(init_losses=[0.1, 0.2]))


def test_variants_carry_their_hyperparameters(problem):
    from slt_jax._src import planning

    loss_fn, w_star, data = problem
    plan = planning.prepare(loss_fn, [w_star], data, CONFIG, key=0, grid={"step_size": [1e-3, 2e-3]})
    assert plan.config is CONFIG
    assert [v.hyper for v in plan.variants] == [sj.kernels.Hyperparameters(1e-3, 200.0, 1.0, 0.0),
                                                sj.kernels.Hyperparameters(2e-3, 200.0, 1.0, 0.0)]
    out = _run(problem, CONFIG.replace(num_draws=4), grid={"nbeta": [100.0, 300.0]})
    assert isinstance(out.hyperparameters, sj.kernels.Hyperparameters)
    np.testing.assert_array_equal(out.hyperparameters.nbeta, [100.0, 300.0])
    np.testing.assert_array_equal(out.hyperparameters.step_size, [1e-3, 1e-3])


def test_progress_rate_and_eta_exclude_compilation(problem, monkeypatch):
    """The first chunk compiles before it runs: the bar's clocks skip that time, so its first rate
    (and ETA) is the sampling's, not the compiler's."""
    import io

    from tqdm.std import tqdm as std_tqdm

    bars = []

    class RecordingBar(std_tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "file": io.StringIO(), "mininterval": 0, "miniters": 1})
            self.created, self.seen = self._time(), []
            bars.append(self)

        def update(self, n=1):
            super().update(n)
            self.seen.append((n, self.format_dict["rate"], self.format_dict["elapsed"], self._time() - self.created))

    monkeypatch.setattr(sj.sampler, "tqdm", RecordingBar)
    loss_fn, w_star, data = problem
    fresh = lambda w, batch: loss_fn(w, batch) * 1.0  # a new function: the chunk program compiles
    out = sj.run_chains(fresh, [w_star], data, CONFIG.replace(chunk_draws=6), key=0, progress="timed")
    [bar] = bars
    assert bar.desc == "timed" and out.compile_seconds > 0 and len(bar.seen) == 10
    steps, rate, elapsed, wall = bar.seen[0]
    assert steps / rate < 0.5 * out.compile_seconds  # seconds of the first chunk, compilation excluded
    assert elapsed <= wall - 0.9 * out.compile_seconds
    _, _, elapsed, wall = bar.seen[-1]
    assert elapsed <= wall - 0.9 * out.compile_seconds


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_step_draws_are_keyed_by_chain_and_global_step(noise):
    # The chunk's draws, made once for all chains in the scans' (draw, chain, step) layout, are each
    # chain's fold_in(key half, t) draws: chunking and stacking never change them.
    static = SimpleNamespace(num_draws=3, steps_per_draw=2, bulk_noise=True, noise=noise, batch_size=5)
    chain_keys = jax.random.split(jax.random.key(7), 4)
    like = {"a": jax.ShapeDtypeStruct((2, 3), jnp.float32), "b": jax.ShapeDtypeStruct((5,), jnp.float32)}
    start = program.Offsets(jnp.int32(40), jnp.int32(20))
    draws = program.step_draws(chain_keys, like, 1000, start, static)
    assert draws.noise.shape == (3, 4, 2, 11) and draws.rows.shape == (3, 4, 2, 5)
    for c in (0, 3):
        noise_key, batch_key = jax.random.split(rng.fast(chain_keys[c]))
        for d, s in ((0, 0), (2, 1)):
            t = 40 + 2 * d + s
            np.testing.assert_array_equal(draws.noise[d, c, s], kernels.flat_noise(noise, jax.random.fold_in(noise_key, t), 11))
            np.testing.assert_array_equal(draws.rows[d, c, s], jax.random.randint(jax.random.fold_in(batch_key, t), (5,), 0, 1000))
