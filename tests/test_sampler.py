"""Sampler behaviour: determinism, sharding, compilation, divergence handling, input validation."""

import json
import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import linear_regression

import slt_jax as sj

EIGENVALUES = [1.0, 0.5, 0.1, 0.0]
KW = dict(step_size=1e-3, nbeta=200.0, localization=1.0, num_chains=4, num_draws=60, batch_size=50, progress=False)


@pytest.fixture(scope="module")
def problem():
    return linear_regression(EIGENVALUES, n=200)


def test_same_key_is_bitwise_identical_and_chunking_does_not_matter(problem):
    loss_fn, w_star, data = problem
    a = sj.sample(loss_fn, w_star, data, key=7, num_burnin=12, num_steps_between_draws=3, **KW)
    b = sj.sample(loss_fn, w_star, data, key=7, num_burnin=12, num_steps_between_draws=3, **KW)
    c = sj.sample(loss_fn, w_star, data, key=7, num_burnin=12, num_steps_between_draws=3, chunk_draws=12, **KW)
    d = sj.sample(loss_fn, w_star, data, key=8, num_burnin=12, num_steps_between_draws=3, **KW)
    np.testing.assert_array_equal(a.loss, b.loss)
    np.testing.assert_array_equal(a.loss, c.loss)
    np.testing.assert_array_equal(np.asarray(a.final_state.position), np.asarray(c.final_state.position))
    assert not np.array_equal(a.loss, d.loss)
    chex.assert_shape([a.loss, a.grad_norm, a.noise_norm, a.distance, a.mala_acceptance], (4, 60))
    assert a.num_steps == 12 + 60 * 3
    # MALA acceptance is evaluated every mala_every-th draw only.
    assert np.isfinite(a.mala_acceptance[:, ::20]).all() and np.isnan(a.mala_acceptance[:, 1:20]).all()


def test_bulk_and_in_step_noise_give_identical_chains(problem, monkeypatch):
    loss_fn, w_star, data = problem
    bulk = sj.sample(loss_fn, w_star, data, key=9, num_steps_between_draws=2, **KW)
    monkeypatch.setattr(sj.sampler, "_BULK_NOISE_MAX_PARAMETERS", 0)  # large-model path
    in_step = sj.sample(loss_fn, w_star, data, key=9, num_steps_between_draws=2, **KW)
    # The same draws; only XLA's fusion of the noise into the update differs (float32 rounding).
    np.testing.assert_allclose(bulk.loss, in_step.loss, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(bulk.final_state.position), np.asarray(in_step.final_state.position), rtol=1e-5, atol=1e-6)


def test_chains_differ_and_a_key_object_is_accepted(problem):
    loss_fn, w_star, data = problem
    out = sj.sample(loss_fn, w_star, data, key=jax.random.key(3), **KW)
    assert len({tuple(row) for row in np.round(out.loss, 6)}) == 4
    raw = sj.sample(loss_fn, w_star, data, key=jax.random.PRNGKey(3), **KW)
    np.testing.assert_array_equal(out.loss, raw.loss)


def test_no_recompilation_when_key_data_or_hyperparameter_values_change(problem):
    loss_fn, w_star, data = problem
    sj.sample(loss_fn, w_star, data, key=0, **KW)
    before = sj.compile_count()
    other = jax.tree.map(lambda x: x * 1.01, data)
    sj.sample(loss_fn, w_star, data, key=1, **KW)
    sj.sample(loss_fn, w_star * 1.1, other, key=2, **dict(KW, step_size=2e-3, nbeta=150.0, localization=3.0))
    assert sj.compile_count() == before


def test_hyperparameter_grid_runs_as_one_program_and_matches_single_runs(problem):
    loss_fn, w_star, data = problem
    grid = sj.run_chains(
        loss_fn, w_star, data, key=0, step_size=np.array([1e-3, 5e-4]), nbeta=np.array([200.0, 100.0]),
        localization=1.0, num_chains=4, num_draws=60, batch_size=50, progress=False,
    )
    chex.assert_shape(grid.loss, (2, 4, 60))
    single = sj.sample(loss_fn, w_star, data, key=0, **dict(KW, step_size=5e-4, nbeta=100.0))
    np.testing.assert_allclose(grid.loss[1], single.loss, rtol=1e-5, atol=1e-6)


SHARDING_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import jax
    sys.path.insert(0, {tests!r})
    from helpers import linear_regression
    import slt_jax as sj
    loss_fn, w_star, data = linear_regression([1.0, 0.5, 0.1, 0.0], n=200)
    out = sj.sample(loss_fn, w_star, data, key=11, step_size=1e-3, nbeta=200.0, localization=1.0,
                    num_chains=4, num_draws=40, batch_size=50, progress=False)
    print(json.dumps({{"devices": jax.device_count(), "loss": out.loss.tolist(),
                      "sharding": str(out.final_state.position.sharding)}}))
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
    assert "chain" in four["sharding"]
    np.testing.assert_allclose(np.array(four["loss"]), np.array(one["loss"]), rtol=1e-6, atol=1e-7)


def _cliff_loss(w, batch):
    # Finite near 0, NaN beyond |w| > 3.6: a chain that wanders too far diverges (6 of 16 here).
    base = 0.5 * w**2 * jnp.ones(batch.shape[0])
    return jnp.where(jnp.abs(w) > 3.6, jnp.nan, base)


def test_partial_divergence_is_reported_excluded_and_warned():
    with pytest.warns(RuntimeWarning, match=r"chains \[") as record:
        result = sj.estimate_llc(
            _cliff_loss, jnp.zeros(()), jnp.zeros((4, 1)), key=0, step_size=1.0, nbeta=1.0, localization=0.0,
            num_chains=16, num_draws=300, batch_size=4, progress=False,
        )
    diverged = np.flatnonzero(result.diverged).tolist()
    assert 2 <= len(diverged) <= 14
    assert str(diverged) in str(record[0].message)
    assert "reduce step_size" in str(record[0].message)
    assert np.isfinite(result.llc_mean) and np.isfinite(result.llc_std)
    assert np.isnan(result.llc_per_chain[result.diverged]).all()
    assert np.isfinite(result.llc_per_chain[~result.diverged]).all()
    np.testing.assert_allclose(result.llc_mean, result.llc_per_chain[~result.diverged].mean())
    assert (result.chains.diverged_at[result.diverged] >= 0).all()


def test_absurd_step_size_diverges_every_chain_and_raises_with_the_result(problem):
    loss_fn, w_star, data = problem
    with pytest.raises(sj.DivergenceError, match="reduce step_size") as info:
        sj.estimate_llc(loss_fn, w_star, data, key=0, **dict(KW, step_size=10.0, num_draws=500))
    result = info.value.result
    assert result.diverged.all() and np.isnan(result.llc_mean)
    # Detected early: the run stops at the first chunk boundary after every chain diverged.
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
        (dict(nbeta=-5.0), ValueError, "nbeta"),
        (dict(nbeta=0.0), ValueError, "nbeta"),
        (dict(localization=-1.0), ValueError, "localization"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(batch_size=500), ValueError, "larger than the dataset"),
        (dict(batch_size=2.5), TypeError, "batch_size"),
        (dict(num_chains=0), ValueError, "num_chains"),
        (dict(num_draws=0), ValueError, "num_draws"),
        (dict(sampler="adam"), ValueError, "sampler"),
        (dict(key="seed"), TypeError, "key"),
    ],
)
def test_bad_hyperparameters_raise_before_compiling(problem, change, error, match):
    loss_fn, w_star, data = problem
    kwargs = dict(KW, key=0)
    kwargs.update(change)
    with pytest.raises(error, match=match):
        _compiles(lambda: sj.estimate_llc(loss_fn, w_star, data, **kwargs))


def test_bad_data_params_mask_and_loss_raise_before_compiling(problem):
    loss_fn, w_star, data = problem
    call = lambda **kw: _compiles(lambda: sj.estimate_llc(**{**dict(loss_fn=loss_fn, params=w_star, data=data, key=0, **KW), **kw}))
    with pytest.raises(ValueError, match="different lengths"):
        call(data={"x": data["x"], "y": data["y"][:-1]})
    with pytest.raises(ValueError, match="NaN or inf"):
        call(data={"x": data["x"].at[0, 0].set(jnp.nan), "y": data["y"]})
    with pytest.raises(ValueError, match="w\\* must be finite"):
        call(params=w_star.at[0].set(jnp.inf))
    with pytest.raises(ValueError, match="same structure as params"):
        call(mask={"a": True})
    with pytest.raises(ValueError, match="shape"):
        call(mask=jnp.array([True, False]))
    with pytest.raises(TypeError, match="bool"):
        call(mask=jnp.ones(4))
    with pytest.raises(ValueError, match="selects no coordinate"):
        call(mask=jnp.zeros(4, bool))
    with pytest.raises(ValueError, match=r"per-example\s+losses of shape \(50,\)"):
        call(loss_fn=lambda w, b: jnp.ones((3,)))
    with pytest.raises(ValueError, match="failed on a batch"):
        call(loss_fn=lambda w, b: b["x"] @ jnp.ones(7))
    with pytest.raises(ValueError, match="loss_estimator"):
        call(loss_estimator="magic")


def test_full_and_paired_loss_estimators_agree_with_minibatch(problem):
    loss_fn, w_star, data = problem
    kw = dict(KW, num_draws=400, num_chains=4)
    full = sj.estimate_llc(loss_fn, w_star, data, key=5, loss_estimator="full", **kw)
    paired = sj.estimate_llc(loss_fn, w_star, data, key=5, loss_estimator="paired", **kw)
    mini = sj.estimate_llc(loss_fn, w_star, data, key=5, **kw)
    # Same chains: the three traces estimate the same L_n(w_d); paired/full remove minibatch noise.
    np.testing.assert_array_equal(full.chains.loss, mini.chains.loss)
    residual_full = np.abs(paired.loss_trace - full.loss_trace).mean()
    residual_mini = np.abs(mini.loss_trace - full.loss_trace).mean()
    assert residual_full < 0.2 * residual_mini
    np.testing.assert_allclose(full.chains.full_loss[:, 0], full.init_loss, rtol=1e-5)


def test_full_data_loss_handles_a_partial_last_batch(problem):
    loss_fn, w_star, data = problem
    exact = float(jnp.mean(loss_fn(w_star * 0.9, data)))
    for batch_size in (7, 50, 200):
        np.testing.assert_allclose(float(sj.full_data_loss(loss_fn, w_star * 0.9, data, batch_size)), exact, rtol=1e-5)
