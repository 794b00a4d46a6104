"""Saved results (npz + JSON header, no pickle), xarray / ArviZ conversion, bitwise resume, the CLI demo."""

import dataclasses
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slt_jax as sj
from slt_jax import io
from slt_jax._src import checkpoint

from issue5_problems import LOCALIZATION, NBETA, exact_quadratic_loss, regression, regression_loss


def assert_same(a, b, path="result"):
    """Recursively: same types, same settings, arrays with equal dtype, shape and bits (NaN == NaN)."""
    if isinstance(a, sj.SamplerConfig):
        assert a == b, (path, a, b)
    elif dataclasses.is_dataclass(a):
        assert type(a) is type(b), path
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    elif isinstance(a, tuple) and hasattr(a, "_fields"):
        assert type(a) is type(b), path
        for name in a._fields:
            assert_same(getattr(a, name), getattr(b, name), f"{path}.{name}")
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), path
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, (np.ndarray, jax.Array, np.generic)):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape, (path, a.dtype, b.dtype, a.shape, b.shape)
        np.testing.assert_array_equal(a, b, err_msg=path)
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b), path
    else:
        assert a == b, (path, a, b)


def roundtrip(tmp_path, result, name, **kwargs):
    path = sj.save(tmp_path / name, result, **kwargs)
    loaded = sj.load(path)
    assert_same(result, loaded)
    assert io.read_header(path)["unsaved"] == []
    return loaded


def regression_loss_dict(params, batch):
    return regression_loss(params["w"], batch)


CONFIG = sj.SamplerConfig(step_size=1e-3, nbeta=NBETA, localization=LOCALIZATION, num_draws=200, num_burnin=50, batch_size=20)


@pytest.fixture(scope="module")
def llc_result():
    params, data, _, _ = regression()
    return sj.estimate_llc(regression_loss_dict, {"w": params}, data, CONFIG, key=0, loss_estimator="paired", progress=False)


def _observe(params, info, context):
    return {"w": params["w"], "loss": info.loss}


# Module-level functions: the sampler compiles once per (function, shape), so _grid_run reuses one program.
_SUM_OF_POSITIONS = sj.Accumulator(lambda values: jnp.zeros_like(values["w"]), lambda state, values: state + values["w"])
_FIRST_TWO = {"w": np.arange(4) < 2}


def _grid_run(**kwargs):
    """2 centres x (full model, a restricted component) with two step sizes: G = 4 configurations."""
    params, data, _, _ = regression()
    config = sj.SamplerConfig(step_size=1e-3, nbeta=NBETA, localization=LOCALIZATION, num_chains=3, num_draws=60,
                              num_burnin=20, batch_size=20, chunk_draws=10, preconditioner="rmsprop_sgld")
    centers = [{"w": params}, {"w": params + 0.01}]
    return sj.run_chains(
        regression_loss_dict, centers, data, config, key=7, masks=[None, _FIRST_TWO], grid={"step_size": [1e-3, 2e-3]},
        recording=sj.Recording(observe=_observe, keep_traces=True, accumulator=_SUM_OF_POSITIONS), progress=False, **kwargs,
    )


@pytest.fixture(scope="module")
def grid_chains():
    return _grid_run()


def test_llc_result_roundtrip(tmp_path, llc_result):
    loaded = roundtrip(tmp_path, llc_result, "llc")
    assert loaded.config == CONFIG and loaded.chains.hyperparameters.nbeta.dtype == llc_result.chains.hyperparameters.nbeta.dtype
    path = tmp_path / "llc.npz"
    header = io.read_header(path)
    assert header["type"] == "slt_jax.llc.LLCResult"
    assert set(header["versions"]) >= {"slt_jax", "jax", "numpy", "python"}
    assert sj.SamplerConfig.from_dict(header["config"]) == CONFIG and header["settings"]["__dict__"]["n"] == 200
    # numpy alone, without pickle, reads every array
    with np.load(path, allow_pickle=False) as contents:
        assert any(name.endswith("loss_trace") for name in contents.files)


def test_chains_output_roundtrip(tmp_path, grid_chains):
    chains = grid_chains
    assert chains.loss.shape == (4, 3, 60) and chains.observed is not None and chains.accumulator is not None
    assert chains.final_positions[1]["w"].shape == (3, 2)  # the restricted chains carry 2 coordinates
    loaded = roundtrip(tmp_path, chains, "chains.npz", compress=True)
    assert isinstance(loaded.hyperparameters, sj.Hyperparameters) and loaded.config.preconditioner == "rmsprop_sgld"
    np.testing.assert_array_equal(loaded.hyperparameters.step_size, [1e-3, 2e-3, 1e-3, 2e-3])
    # a custom preconditioner is stored through SamplerConfig.to_dict
    custom = chains.config.replace(preconditioner=sj.Preconditioner(name="rmsprop_sgld", alpha=0.9, eps=0.2))
    assert_same(custom, sj.load(sj.save(tmp_path / "custom_config", {"config": custom}))["config"])


def test_llc_table_roundtrip(tmp_path):
    params, data, _, _ = regression()
    table = sj.estimate_llc_table(
        regression_loss_dict, [{"w": params}, {"w": params + 0.01}], data, CONFIG.replace(num_draws=50), key=0,
        components={"full": None, "first_two": _FIRST_TWO}, steps=[10, 20], progress=False,
    )
    loaded = roundtrip(tmp_path, table, "table")
    assert loaded.components == ["full", "first_two"]
    assert_same(table.result(1, "first_two"), loaded.result(1, "first_two"))


def test_calibration_roundtrip(tmp_path):
    params, data, h, _ = regression()
    a_max = NBETA * h.max() + LOCALIZATION
    config = sj.SamplerConfig(step_size="auto", nbeta=NBETA, localization=LOCALIZATION, num_draws=300, batch_size=8)
    calibration = sj.calibrate(
        exact_quadratic_loss, params, data, config, key=0, step_sizes=[0.05 / a_max, 0.2 / a_max, 1.0 / a_max], progress=False,
    )
    loaded = roundtrip(tmp_path, calibration, "calibration")
    assert loaded.recommended == calibration.recommended


def test_susceptibility_and_bif_roundtrip(tmp_path):
    params, data, _, _ = regression()
    config = CONFIG.replace(num_draws=100, num_burnin=20)
    probe = jax.tree.map(lambda x: x[:5], data)
    result = sj.estimate_susceptibilities(
        regression_loss_dict, {"w": params}, data, config, key=0, probes={"first": probe},
        components={"full": None, "first_two": _FIRST_TWO}, progress=False,
    )
    roundtrip(tmp_path, result, "susceptibility")
    bif = sj.estimate_bif(regression_loss_dict, {"w": params}, data, config, key=0, probes={"probe": probe}, progress=False)
    roundtrip(tmp_path, bif, "bif")
    if importlib_available("xarray"):
        assert sj.to_xarray(bif)["bif"].shape == (5, 5)


def importlib_available(name):
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def test_generic_dataclasses_and_registration(tmp_path):
    @dataclasses.dataclass(frozen=True)
    class Custom:
        chi: np.ndarray
        labels: list
        settings: dict
        key: jax.Array

    value = Custom(np.arange(6.0).reshape(2, 3), ["a", "b"], {"alpha": float("nan"), "n": 3, "nested": (1, None), 0: "int key"},
                   jax.random.key(3))
    path = sj.save(tmp_path / "custom", value)
    with pytest.raises(ValueError, match="register"):
        sj.load(path)
    sj.results.register(Custom)
    loaded = sj.load(path)
    np.testing.assert_array_equal(loaded.chi, value.chi)
    assert loaded.labels == ["a", "b"] and loaded.settings["nested"] == (1, None) and np.isnan(loaded.settings["alpha"])
    assert loaded.settings[0] == "int key"
    np.testing.assert_array_equal(jax.random.key_data(loaded.key), jax.random.key_data(value.key))
    np.savez(tmp_path / "plain.npz", x=np.zeros(2))
    with pytest.raises(ValueError, match="not an slt_jax result"):
        sj.load(tmp_path / "plain.npz")


def test_unsaveable_values_never_lose_the_result(tmp_path, llc_result):
    """Issue 12 item 1: what can be saved is saved, and the rest is named in a warning."""
    odd = dataclasses.replace(llc_result, loss_estimator=object())  # a field that cannot be stored
    value = {"result": odd, "callback": lambda x: x, "ragged": np.array([np.zeros(2), None], dtype=object)}
    with pytest.warns(UserWarning, match=r"result\.loss_estimator.*callback.*ragged"):
        path = sj.save(tmp_path / "partial", value)
    loaded = sj.load(path)
    assert loaded["callback"] is None and loaded["ragged"] is None and loaded["result"].loss_estimator is None
    assert_same(llc_result.chains, loaded["result"].chains)
    np.testing.assert_array_equal(loaded["result"].llc_trace, llc_result.llc_trace)
    assert [entry["path"] for entry in io.read_header(path)["unsaved"]] == ["result.loss_estimator", "callback", "ragged"]
    # Only a bad path raises.
    (tmp_path / "a_file").write_text("")
    with pytest.raises(OSError):
        sj.save(tmp_path / "a_file" / "run", llc_result)


def test_to_xarray(llc_result, grid_chains):
    pytest.importorskip("xarray")
    dataset = sj.to_xarray(llc_result)
    assert dataset["loss"].dims == ("chain", "draw") and dataset["llc_per_chain"].dims == ("chain",)
    np.testing.assert_array_equal(dataset["loss_trace"].values, llc_result.loss_trace)
    np.testing.assert_array_equal(dataset["llc_trace"].values, llc_result.llc_trace)
    for name in ("loss", "grad_norm", "noise_norm", "localization_norm", "distance", "mala_acceptance", "center_loss"):
        np.testing.assert_array_equal(dataset[name].values, getattr(llc_result.chains, name)[0])
    np.testing.assert_array_equal(dataset["final_positions.w"].values, llc_result.chains.final_positions[0]["w"])
    assert json.loads(dataset.attrs["config"]) == CONFIG.to_dict()
    assert json.loads(dataset.attrs["settings"]) == json.loads(json.dumps(llc_result.chains.settings))
    assert dataset.attrs["llc_mean"] == llc_result.llc_mean
    np.testing.assert_array_equal(dataset["step"].values, 50 + np.arange(200))
    grid = sj.to_xarray(grid_chains)
    assert grid["loss"].dims == ("config", "chain", "draw")
    np.testing.assert_array_equal(grid["observed.w"].values, grid_chains.observed["w"])
    np.testing.assert_array_equal(grid["accumulator"].values, grid_chains.accumulator)
    np.testing.assert_array_equal(grid["step_size"].values, grid_chains.hyperparameters.step_size)
    # restricted and full configurations carry pieces of different shapes: one variable per configuration
    np.testing.assert_array_equal(grid["final_positions[1].w"].values, grid_chains.final_positions[1]["w"])
    assert grid["final_positions[0].w"].shape == (3, 4)
    table_like = sj.to_xarray(grid_chains.select([0, 2]))  # full-model configurations only: stacked
    assert table_like["final_positions.w"].dims[:2] == ("config", "chain")


def test_to_arviz_inference_data(llc_result, grid_chains):
    az = pytest.importorskip("arviz")
    idata = sj.to_arviz(llc_result)
    posterior = idata.posterior
    assert posterior["llc"].dims == ("chain", "draw")
    np.testing.assert_array_equal(posterior["llc"].values, sj.traces.llc_draws(llc_result.chains, "paired")[0])
    np.testing.assert_allclose(posterior["llc"].values.mean(), llc_result.llc_mean, rtol=1e-10)
    np.testing.assert_array_equal(idata.sample_stats["grad_norm"].values, llc_result.chains.grad_norm[0])
    assert not idata.sample_stats["diverging"].values.any()
    assert json.loads(posterior.attrs["config"]) == CONFIG.to_dict()
    summary = az.summary(idata, var_names=["llc"], kind="diagnostics")
    assert summary.loc["llc", "ess_bulk"] > 0
    with pytest.raises(ValueError, match="config"):
        sj.to_arviz(grid_chains)
    np.testing.assert_array_equal(sj.to_arviz(grid_chains, configuration=3).posterior["loss"].values, grid_chains.loss[3])


# The Leimkuhler-Matthews state carries the last increments across the saved carry.
@pytest.mark.parametrize("scheme", ["euler", "leimkuhler-matthews"])
def test_resume_equals_uninterrupted_bitwise(tmp_path, monkeypatch, scheme):
    """``estimate_llc(..., resume_dir=d)`` interrupted, then resumed, ends bitwise identical."""
    params, data, _, _ = regression()
    config = CONFIG.replace(num_draws=60, num_burnin=20, chunk_draws=10, scheme=scheme)
    run = lambda **kwargs: sj.estimate_llc(regression_loss_dict, {"w": params}, data, config, key=3, progress=False, **kwargs)
    reference = run()
    original = checkpoint.RunCheckpoint.save
    calls = []

    def interrupted(self, *args, **kwargs):
        original(self, *args, **kwargs)
        calls.append(args[0])
        if len(calls) == 4:  # after two burn-in chunks and two recorded chunks
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.RunCheckpoint, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(resume_dir=tmp_path)
    monkeypatch.setattr(checkpoint.RunCheckpoint, "save", original)
    (run_dir,) = list(tmp_path.iterdir())
    assert sorted(p.name for p in run_dir.iterdir()) == ["records_00002.npz", "records_00003.npz", "state.npz"]
    resumed = run(resume_dir=tmp_path)
    for field in dataclasses.fields(reference.chains):
        if field.name not in ("compile_seconds", "sampling_seconds"):
            assert_same(getattr(reference.chains, field.name), getattr(resumed.chains, field.name), field.name)
    assert resumed.llc_mean == reference.llc_mean
    # A finished run is read back, and different settings get their own checkpoint.
    assert_same(resumed.chains.loss, run(resume_dir=tmp_path).chains.loss)
    sj.estimate_llc(regression_loss_dict, {"w": params}, data, config.replace(num_draws=20), key=3, progress=False,
                    resume_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 2


def test_fingerprint_is_the_same_in_every_process():
    """Settings that hold reprs of functions (addresses differ per process) fingerprint by name."""
    def make():
        def loss_fn(params, batch):
            return params

        return loss_fn

    first, second = make(), make()
    assert repr(first) != repr(second)
    arrays = {"data": np.arange(3.0)}
    assert checkpoint.fingerprint({"static": repr((first, 1))}, arrays) == checkpoint.fingerprint({"static": repr((second, 1))}, arrays)
    assert checkpoint.fingerprint({"static": repr((first, 1))}, arrays) != checkpoint.fingerprint({"static": repr((first, 2))}, arrays)


def test_cli_demo_runs(tmp_path):
    """``slt-jax demo`` with a tiny problem: prints the estimate beside Aoyagi's λ and saves the plot."""
    command = [sys.executable, "-m", "slt_jax.cli", "demo", "--widths", "4", "3", "4", "--rank", "1", "--n", "400",
               "--chains", "2", "--draws", "60", "--burnin", "20", "--batch-size", "50", "--train-steps", "50",
               "--output", str(tmp_path)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "LLC estimate" in completed.stdout and "Aoyagi lambda" in completed.stdout
    assert (tmp_path / "llc_traces.png").stat().st_size > 0
