"""Development over training (issue 10, part 1): stage boundaries on curves with known stages, the
checkpoint sweep as one Dataset, and the joint trajectory PCA."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import slt_jax as sj
from slt_jax.development import detect_stages, trajectory_pca


def _log_steps(num=60, last=10_000):
    return np.unique(np.round(np.logspace(0, np.log10(last), num)).astype(int))


def test_stage_boundaries_of_a_rise_and_fall_curve_with_noise():
    # An LLC curve that rises until step 300, falls until step 2000, rises again: two known boundaries.
    steps = _log_steps()
    x = np.log(steps)
    truth = np.interp(x, np.log([1, 300, 2000, 10_000]), [1.0, 20.0, 8.0, 15.0])
    noisy = truth + np.random.default_rng(0).normal(0.0, 0.4, truth.shape)
    stages = detect_stages(steps, noisy, smoothing=2.0)
    assert stages.kinds == ["maximum", "minimum"], stages
    for found, expected in zip(stages.boundaries, (300, 2000)):
        # within two checkpoints of the truth (log spacing: a factor of ~1.17 per checkpoint)
        assert abs(np.log(found) - np.log(expected)) <= 2 * np.mean(np.diff(x)) + 1e-9, (found, expected)
    assert len(stages.intervals) == 3


def test_noise_alone_has_no_stages_and_a_staircase_has_plateau_edges():
    steps = np.arange(0, 2000, 20)
    flat = 5.0 + np.random.default_rng(1).normal(0.0, 0.05, steps.shape)
    # a relative threshold alone reads the noise's own range as stages; its standard error does not
    assert detect_stages(steps, flat, smoothing=2.0, log_steps=False, errors=np.full(steps.shape, 0.05)).boundaries.size == 0
    # A staircase (stagewise learning of a deep linear network): jumps at 500 and 1200, flat between.
    stair = 1.0 + 4.0 / (1 + np.exp(-(steps - 500) / 15.0)) + 4.0 / (1 + np.exp(-(steps - 1200) / 15.0))
    stages = detect_stages(steps, stair, smoothing=1.0, log_steps=False, plateaus=True)
    assert not any(k in ("maximum", "minimum") for k in stages.kinds)  # monotone: no critical points
    starts = [b for b, k in zip(stages.boundaries, stages.kinds) if k == "plateau start"]
    ends = [b for b, k in zip(stages.boundaries, stages.kinds) if k == "plateau end"]
    # each jump lies between a plateau's end and the next plateau's start, within 100 steps of both
    assert len(starts) == 2 and len(ends) == 2, stages
    for jump, end, start in zip((500, 1200), ends, starts):
        assert end < jump < start and start - end <= 200, (jump, end, start)


def test_detect_stages_rejects_bad_input_with_the_fix():
    with pytest.raises(ValueError, match="at least 3 checkpoints"):
        detect_stages([0, 1], [1.0, 2.0])
    with pytest.raises(ValueError, match="strictly increasing"):
        detect_stages([0, 2, 1], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="same length"):
        detect_stages([0, 1, 2], [1.0, 2.0])


def _regression(seed=0, n=64):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=n)).astype(np.float32)
    return {"x": jnp.asarray(x), "y": jnp.asarray(y)}


def _loss(w, batch):
    return 0.5 * (batch["y"] - batch["x"] @ w["w"]) ** 2


def test_track_development_is_the_llc_table_plus_losses_and_round_trips(tmp_path):
    data, held_out = _regression(0), _regression(1)
    run = sj.train(_loss, {"w": jnp.zeros(3)}, data, optimizer=optax.sgd(0.05), num_steps=60, batch_size=16,
                   checkpoint_steps=[0, 10, 60], seed=0)
    config = sj.SamplerConfig(step_size=1e-3, nbeta=50.0, localization=10.0, num_draws=60, batch_size=32, num_chains=2)
    dev = sj.track_development(_loss, run.checkpoints, data, config, key=3, steps=run.checkpoint_steps, held_out=held_out,
                               components={"full": None, "w0": {"w": np.array([True, False, False])}}, progress=False)
    table = sj.estimate_llc_table(_loss, run.checkpoints, data, config, key=3, steps=run.checkpoint_steps,
                                  components={"full": None, "w0": {"w": np.array([True, False, False])}}, progress=False)
    np.testing.assert_allclose(dev.llc.llc_per_chain, table.llc_per_chain, rtol=1e-6)
    for k, params in enumerate(run.checkpoints):
        expected = float(jnp.mean(_loss(params, held_out)))
        assert dev.test_loss[k] == pytest.approx(expected, rel=1e-5)
        assert dev.train_loss[k] == pytest.approx(float(jnp.mean(_loss(params, data))), rel=1e-5)
    assert dev.train_loss[-1] < dev.train_loss[0]  # training worked
    ds = dev.to_xarray()
    assert ds["llc_per_chain"].dims == ("checkpoint", "component", "chain")
    assert ds["test_loss"].dims == ("checkpoint",) and list(ds["checkpoint"].values) == [0, 10, 60]
    frame = dev.to_dataframe()
    assert len(frame) == 3 * 2 and set(frame["component"]) == {"full", "w0"}
    path = sj.save(tmp_path / "dev", dev)
    loaded = sj.load(path)
    np.testing.assert_array_equal(loaded.llc.llc_per_chain, dev.llc.llc_per_chain)
    np.testing.assert_array_equal(loaded.test_loss, dev.test_loss)
    figure = dev.plot(stages=detect_stages([0, 10, 60], [1.0, 3.0, 2.0], smoothing=0.0, log_steps=False, min_change=0.0))
    assert any(line.get_linestyle() == ":" for axes in figure.axes for line in axes.get_lines())  # boundary marked


def test_track_development_with_probes_stacks_susceptibilities_per_checkpoint():
    data = _regression(0, n=32)
    checkpoints = [{"w": jnp.zeros(3)}, {"w": jnp.array([1.0, -2.0, 0.5])}]
    config = sj.SamplerConfig(step_size=1e-3, nbeta=50.0, localization=10.0, num_draws=40, batch_size=32, num_chains=2)
    probes = {"a": jax.tree.map(lambda v: v[:5], data), "b": jax.tree.map(lambda v: v[5:9], data)}
    dev = sj.track_development(_loss, checkpoints, data, config, key=0, steps=[0, 100], probes=probes, progress=False)
    alone = sj.estimate_susceptibilities(_loss, checkpoints[1], data, config, key=0, probes=probes, progress=False)
    np.testing.assert_allclose(dev.susceptibilities.result(1).chi, alone.chi, rtol=1e-4, atol=1e-6)
    ds = dev.to_xarray()
    assert ds["chi"].dims == ("checkpoint", "row", "column") and ds["chi"].shape == (2, 9, alone.chi.shape[1])


def test_track_development_rejects_mismatched_checkpoints_before_compiling():
    data = _regression(0, n=16)
    config = sj.SamplerConfig(step_size=1e-3, nbeta=10.0, localization=1.0, num_draws=10, batch_size=16)
    before = sj.compile_count()
    with pytest.raises(ValueError, match="checkpoint 1"):
        sj.track_development(_loss, [{"w": jnp.zeros(3)}, {"w": jnp.zeros(4)}], data, config, key=0, progress=False)
    with pytest.raises(ValueError, match="one entry per checkpoint"):
        sj.track_development(_loss, [{"w": jnp.zeros(3)}], data, config, key=0, steps=[0, 1], progress=False)
    assert sj.compile_count() == before


def test_trajectory_pca_known_directions_shared_space_and_determinism():
    # Run A moves the outputs along e1, run B along e2 (then back): two components explain everything,
    # and run A's trajectory lies on one axis of the shared space.
    inputs = jnp.eye(4)
    run_a = [jnp.array([t, 0.0, 0.0, 0.0]) for t in np.linspace(0, 3, 6)]
    run_b = [jnp.array([0.0, t, 0.0, 0.0]) for t in np.concatenate([np.linspace(0, 2, 3), np.linspace(1, 0, 3)])]
    apply_fn = lambda w, x: x @ w
    pca = trajectory_pca(apply_fn, [run_a, run_b], inputs, num_components=3, steps=[np.arange(6) * 10] * 2)
    assert pca.projections.shape == (2, 6, 3)
    np.testing.assert_allclose(pca.explained_variance_ratio[:2].sum(), 1.0, atol=1e-6)
    assert pca.explained_variance_ratio[2] < 1e-9
    # back in output space, run A's displacement is along e1 only (the outputs are w itself)
    moved = (pca.projections[0] - pca.projections[0][0]) @ pca.components
    np.testing.assert_allclose(moved[:, 0], np.linspace(0, 3, 6), atol=1e-6)
    np.testing.assert_allclose(moved[:, 1:], 0.0, atol=1e-6)
    again = trajectory_pca(apply_fn, [run_a, run_b], inputs, num_components=3, steps=[np.arange(6) * 10] * 2)
    np.testing.assert_array_equal(pca.projections, again.projections)
    figure = pca.plot(labels=["A", "B"])
    assert len(figure.axes) == 1
    with pytest.raises(ValueError, match="same number of checkpoints"):
        trajectory_pca(apply_fn, [run_a, run_b[:3]], inputs)
    with pytest.raises(ValueError, match="num_components"):
        trajectory_pca(apply_fn, [run_a], inputs, num_components=7)


def test_stages_repr_reads_well_with_none_one_or_several_boundaries():
    steps = np.arange(8.0)
    none = sj.Stages(np.array([]), [], np.array([], int), steps, np.zeros(8), steps)
    one = sj.Stages(np.array([3.0]), ["maximum"], np.array([3]), steps, np.zeros(8), steps)
    two = sj.Stages(np.array([3.0, 5.0]), ["maximum", "minimum"], np.array([3, 5]), steps, np.zeros(8), steps)
    assert repr(none) == "Stages(1 stage; no boundaries)"
    assert repr(one) == "Stages(2 stages; boundary at step 3 (maximum))"
    assert repr(two) == "Stages(3 stages; boundaries at steps 3 (maximum), 5 (minimum))"
