"""One mesh for configurations, chains and parameters (``slt_jax._src.multihost``): every layout gives
the numbers of one device, configurations and chains use every device, and the model axis slices
the parameters.

Three processes of tests/mesh_worker.py, started together: 1 CPU device (the reference), 4 devices
(the default mesh, and a mesh of 4 on the model axis) and 8 devices (2 x 2 x 2). Each runs the LLC of
a linear regression and of four one-coordinate components at two checkpoints, susceptibilities of
two components and the LLC of a wide model. Tolerance: float32 rounding (XLA batches the vmapped arithmetic
differently per layout, and the model axis splits reductions).
"""

import json
import os
import pathlib
import subprocess
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import linear_regression

import slt_jax as sj
from slt_jax._src import multihost, planning

WORKER = pathlib.Path(__file__).with_name("mesh_worker.py")
TIMEOUT_SECONDS = 600
RUNS = {"one_device": (1, ["default"]), "four_devices": (4, ["default", "1,1,4"]), "eight_devices": (8, ["2,2,2"])}
AUTO = (jax.sharding.AxisType.Auto,) * 3


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("mesh")
    started = []
    for name, (devices, layouts) in RUNS.items():
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
        err = directory / f"{name}.stderr"
        with open(err, "w") as stderr:
            command = [sys.executable, str(WORKER), str(directory / f"{name}.json"), *layouts]
            started.append((name, subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr, cwd=WORKER.parent), err))
    deadline = time.monotonic() + TIMEOUT_SECONDS
    failures = []
    try:
        for name, process, err in started:
            try:
                code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                code = f"timed out after {TIMEOUT_SECONDS} s"
            if code != 0:
                failures.append(f"--- {name}: exit {code}\n" + "\n".join(err.read_text().splitlines()[-30:]))
    finally:
        for _, process, _ in started:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert not failures, "\n".join(failures)
    return {name: json.loads((directory / f"{name}.json").read_text()) for name in RUNS}


@pytest.mark.slow  # three processes, a few minutes on a loaded 2-core CPU
def test_every_layout_gives_the_numbers_of_one_device(runs):
    reference = runs["one_device"]["default"]
    layouts = [(name, layout) for name, (_, names) in RUNS.items() for layout in names if name != "one_device"]
    assert [runs[name]["device_count"] for name in RUNS] == [1, 4, 8]
    for name, layout in layouts:
        result = runs[name][layout]
        assert result["compiles"] == reference["compiles"], (name, layout)  # the second chunk reuses the first's program
        for field in ("llc", "loss", "chi_per_chain", "wide_llc", "wide_lm_llc"):
            np.testing.assert_allclose(np.array(result[field]), np.array(reference[field]), rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name} {layout} {field}")


@pytest.mark.slow  # three processes, a few minutes on a loaded 2-core CPU
def test_a_full_batch_llc_on_a_two_by_two_by_two_mesh_meets_the_closed_form(runs):
    result = runs["eight_devices"]["2,2,2"]["closed_form"]
    assert result["expected"] == pytest.approx(1.6053, abs=1e-4)
    assert abs(result["llc_mean"] - result["expected"]) < 4 * result["standard_error"], result


@pytest.mark.slow  # three processes, a few minutes on a loaded 2-core CPU
def test_four_heads_by_two_chains_use_all_four_devices(runs):
    """The default mesh on 4 devices for 2 chains: chain axis 2, config axis 2. The heads' group
    (2 checkpoints x 4 heads) splits its heads, the whole model's (2 checkpoints x 1) its checkpoints:
    every device holds its own quarter of each group's chains."""
    whole, heads = runs["four_devices"]["default"]["placement"]
    assert heads["whole_shape"][:3] == [2, 4, 2] and heads["shard_shape"][:3] == [2, 2, 1]
    assert whole["whole_shape"][:3] == [2, 1, 2] and whole["shard_shape"][:3] == [1, 1, 1]
    for group in (whole, heads):
        assert group["devices"] == group["distinct_device_shards"] == 4
        assert group["held_bytes"] * 4 == group["whole_bytes"]


@pytest.mark.slow  # three processes, a few minutes on a loaded 2-core CPU
def test_the_model_axis_cuts_the_parameter_bytes_on_each_device_four_times(runs):
    """A (64, 128) kernel and a (128,) bias, 2 chains, on a 1 x 1 x 4 mesh: each device holds a quarter
    of every chain's kernel (sliced along 128) and the whole small bias."""
    [wide] = runs["four_devices"]["1,1,4"]["wide_placement"]
    assert wide["whole_bytes"] == 2 * (64 * 128 + 128) * 4
    assert wide["held_bytes"] == 2 * (64 * 128 // 4 + 128) * 4  # 3.8x less than whole
    [reference] = runs["four_devices"]["default"]["wide_placement"]
    assert reference["held_bytes"] == reference["whole_bytes"] // 4  # config 2 (padded) x chain 2, whole leaves


@pytest.mark.slow  # three processes, a few minutes on a loaded 2-core CPU
def test_a_chain_axis_that_does_not_divide_the_chains_is_refused_before_compiling(runs):
    for name in ("four_devices", "eight_devices"):
        refusal = runs[name]["refusals"]
        assert "num_chains=3 is not a multiple of the mesh's chain axis" in refusal["chain_axis"]
        assert refusal["compiled"] == 0


def _problem():
    loss_fn, w_star, data = linear_regression([1.0, 0.5], n=20)
    config = sj.SamplerConfig(step_size=1e-3, nbeta=10.0, localization=1.0, num_chains=2, num_draws=4, batch_size=10)
    return loss_fn, w_star, data, config


@pytest.mark.parametrize("mesh, expected", [
    (lambda: jax.make_mesh((1,), ("data",), axis_types=AUTO[:1]), r"axes \('data',\); slt_jax expects the axes \('config', 'chain', 'model'\)"),
    (lambda: jax.make_mesh((1, 1, 1), multihost.AXES), r"axes \['config', 'chain', 'model'\] of type Explicit"),
])
def test_a_mesh_with_other_axes_is_refused_before_compiling(mesh, expected):
    loss_fn, w_star, data, config = _problem()
    before = sj.compile_count()
    with jax.set_mesh(mesh()):
        with pytest.raises(ValueError, match=expected):
            sj.run_chains(loss_fn, [w_star], data, config, key=0, progress=False)
    assert sj.compile_count() == before


def test_a_one_device_mesh_runs_as_no_mesh():
    loss_fn, w_star, data, config = _problem()
    plain = sj.run_chains(loss_fn, [w_star], data, config, key=0, progress=False)
    with jax.set_mesh(jax.make_mesh((1, 1, 1), multihost.AXES, axis_types=AUTO)):
        meshed = sj.run_chains(loss_fn, [w_star], data, config, key=0, progress=False)
    np.testing.assert_array_equal(meshed.loss, plain.loss)
    assert isinstance(meshed.final_positions[0], np.ndarray)


def test_groups_are_padded_to_the_config_axis_and_idle_devices_warned():
    group = planning.Group([0], [0, 1, 2, 3, 4], 1, 5, [0, 1], 2, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        [padded] = planning.pad_to_mesh([group], multihost.MeshSizes(2, 2, 1), num_chains=2)
    assert padded.variants == [0, 1, 2, 3, 4, 4] and padded.centers == [0] and padded.num_variants == 5
    checkpoints = planning.Group([0, 1, 2], [0], 3, 1, [0, 1], 2, 1)  # more centres than variants: the centres split
    with pytest.warns(UserWarning, match=r"3 configuration\(s\) x num_chains=2 on 8 devices .* repeating"):
        [padded] = planning.pad_to_mesh([checkpoints], multihost.MeshSizes(4, 2, 1), num_chains=2)
    assert padded.centers == [0, 1, 2, 2] and padded.variants == [0]


def test_param_spec_slices_the_largest_divisible_dimension_of_large_leaves():
    assert multihost.param_spec((64, 128), 4) == (None, "model")
    assert multihost.param_spec((128, 64), 4) == ("model", None)
    assert multihost.param_spec((64, 126), 4) == ("model", None)  # 126 is not a multiple of 4
    assert multihost.param_spec((64, 128), 1) == (None, None)
    assert multihost.param_spec((10, 10), 2) == (None, None)  # small: whole on every device
    assert multihost.param_spec((4097,), 2) == (None,)  # no divisible dimension
    assert multihost.default_shape(8, 2) == (4, 2, 1) and multihost.default_shape(6, 4) == (3, 2, 1)
