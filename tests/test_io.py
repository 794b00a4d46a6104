"""Saved results (npz + JSON header, no pickle), xarray / ArviZ conversion, and bitwise resume."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slt_jax as sj
from slt_jax import checkpoint, io

from issue5_problems import LOCALIZATION, NBETA, exact_quadratic_loss, regression, regression_loss


def assert_same(a, b, path="result"):
    """Recursively: same types, same settings, arrays with equal dtype, shape and bits (NaN == NaN)."""
    if dataclasses.is_dataclass(a):
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


def regression_loss_dict(params, batch):
    return regression_loss(params["w"], batch)


@pytest.fixture(scope="module")
def llc_result():
    params, data, _, _ = regression()
    return sj.estimate_llc(
        regression_loss_dict, {"w": params}, data, key=0, step_size=1e-3, nbeta=NBETA, localization=LOCALIZATION,
        num_draws=200, num_burnin=50, batch_size=20, loss_estimator="paired", progress=False,
    )


def _observe(position, info):
    return {"w": position, "loss": info.loss}


# Module-level functions: the sampler compiles once per (function, shape), so _grid_run reuses one program.
_SUM_OF_POSITIONS = sj.Accumulator(lambda values: jnp.zeros_like(values["w"]), lambda state, values: state + values["w"])


def _grid_run(**kwargs):
    params, data, _, _ = regression()
    return sj.run_chains(
        regression_loss, params, data, key=7, step_size=[1e-3, 2e-3], nbeta=NBETA, localization=LOCALIZATION,
        num_chains=3, num_draws=60, num_burnin=20, batch_size=20, chunk_draws=10, sampler="rmsprop_sgld",
        observe=_observe, keep_traces=True, accumulator=_SUM_OF_POSITIONS, progress=False, **kwargs,
    )


def test_llc_result_roundtrip(tmp_path, llc_result):
    path = sj.save(tmp_path / "llc", llc_result)
    assert path.suffix == ".npz"
    loaded = sj.load(path)
    assert_same(llc_result, loaded)
    header = io.read_header(path)
    assert header["type"] == "slt_jax.llc.LLCResult"
    assert set(header["versions"]) >= {"slt_jax", "jax", "numpy", "python"}
    # numpy alone, without pickle, reads every array
    with np.load(path, allow_pickle=False) as contents:
        assert any(name.endswith("loss_trace") for name in contents.files)


def test_chains_output_and_calibration_roundtrip(tmp_path):
    chains = _grid_run()
    assert chains.final_state.second_moment is not None and chains.observed is not None
    assert_same(chains, sj.load(sj.save(tmp_path / "chains.npz", chains, compress=True)))
    params, data, h, _ = regression()
    # The grid of test_calibration.py (one compiled program when the suite runs together).
    a_max = NBETA * h.max() + LOCALIZATION
    steps = np.concatenate([2.0 ** -np.arange(10)[::-1] / a_max, [6.0 / a_max, 10.0 / a_max]])
    calibration = sj.calibrate(
        exact_quadratic_loss, params, data, key=0, batch_size=8, step_sizes=steps, nbetas=[NBETA],
        localizations=[LOCALIZATION], num_draws=1000, progress=False,
    )
    loaded = sj.load(sj.save(tmp_path / "calibration", calibration))
    assert_same(calibration, loaded)
    assert loaded.recommended_settings == calibration.recommended_settings


def test_generic_dataclasses_and_errors(tmp_path):
    @dataclasses.dataclass(frozen=True)
    class Custom:
        chi: np.ndarray
        labels: list
        settings: dict
        key: jax.Array

    value = Custom(np.arange(6.0).reshape(2, 3), ["a", "b"], {"alpha": float("nan"), "n": 3, "nested": (1, None)},
                   jax.random.key(3))
    path = sj.save(tmp_path / "custom", value)
    with pytest.raises(ValueError, match="register"):
        sj.load(path)
    io.register(Custom)
    loaded = sj.load(path)
    np.testing.assert_array_equal(loaded.chi, value.chi)
    assert loaded.labels == ["a", "b"] and loaded.settings["nested"] == (1, None) and np.isnan(loaded.settings["alpha"])
    np.testing.assert_array_equal(jax.random.key_data(loaded.key), jax.random.key_data(value.key))
    with pytest.raises(TypeError, match="without pickle"):
        sj.save(tmp_path / "bad", {"x": object()})
    np.savez(tmp_path / "plain.npz", x=np.zeros(2))
    with pytest.raises(ValueError, match="not an slt_jax result"):
        sj.load(tmp_path / "plain.npz")


def test_to_xarray_preserves_arrays_and_settings(llc_result):
    pytest.importorskip("xarray")
    dataset = sj.to_xarray(llc_result)
    assert dataset["loss"].dims == ("chain", "draw") and dataset["llc_per_chain"].dims == ("chain",)
    np.testing.assert_array_equal(dataset["loss_trace"].values, llc_result.loss_trace)
    np.testing.assert_array_equal(dataset["llc_trace"].values, llc_result.llc_trace)
    for name in ("loss", "grad_norm", "noise_norm", "localization_norm", "distance", "mala_acceptance", "center_loss"):
        np.testing.assert_array_equal(dataset[name].values, getattr(llc_result.chains, name))
    np.testing.assert_array_equal(dataset["final_state.position.w"].values, llc_result.chains.final_state.position["w"])
    assert json.loads(dataset.attrs["settings"]) == json.loads(json.dumps(llc_result.settings))
    assert dataset.attrs["llc_mean"] == llc_result.llc_mean
    np.testing.assert_array_equal(dataset["step"].values, 50 + np.arange(200))
    chains = _grid_run()
    grid = sj.to_xarray(chains)
    assert grid["loss"].dims == ("config", "chain", "draw")
    np.testing.assert_array_equal(grid["observed.w"].values, chains.observed["w"])
    np.testing.assert_array_equal(grid["accumulator"].values, chains.accumulator)


def test_to_arviz_inference_data(llc_result):
    az = pytest.importorskip("arviz")
    idata = sj.to_arviz(llc_result)
    posterior = idata.posterior
    assert posterior["llc"].dims == ("chain", "draw")
    np.testing.assert_allclose(posterior["llc"].values, llc_result.nbeta * (llc_result.loss_trace - llc_result.init_loss))
    np.testing.assert_allclose(posterior["llc"].values.mean(), llc_result.llc_mean, rtol=1e-10)
    np.testing.assert_array_equal(idata.sample_stats["grad_norm"].values, llc_result.chains.grad_norm)
    assert not idata.sample_stats["diverging"].values.any()
    assert json.loads(posterior.attrs["settings"]) == json.loads(json.dumps(llc_result.settings))
    summary = az.summary(idata, var_names=["llc"], kind="diagnostics")
    assert summary.loc["llc", "ess_bulk"] > 0
    with pytest.raises(ValueError, match="config"):
        sj.to_arviz(_grid_run())


def test_resume_equals_uninterrupted_bitwise(tmp_path, monkeypatch):
    reference = _grid_run()
    original = checkpoint.RunCheckpoint.save
    calls = []

    def interrupted(self, *args, **kwargs):
        original(self, *args, **kwargs)
        calls.append(args[0])
        if len(calls) == 4:  # after two burn-in chunks and two recorded chunks
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.RunCheckpoint, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _grid_run(checkpoint_dir=tmp_path)
    monkeypatch.setattr(checkpoint.RunCheckpoint, "save", original)
    (run_dir,) = list(tmp_path.iterdir())
    assert sorted(p.name for p in run_dir.iterdir()) == ["records_00002.npz", "records_00003.npz", "state.npz"]
    resumed = _grid_run(checkpoint_dir=tmp_path)
    for field in dataclasses.fields(reference):
        if field.name not in ("compile_seconds", "sampling_seconds"):
            assert_same(getattr(reference, field.name), getattr(resumed, field.name), field.name)
    # A finished run is read back, and different settings get their own checkpoint.
    assert_same(resumed.loss, _grid_run(checkpoint_dir=tmp_path).loss)
    params, data, _, _ = regression()
    sj.sample(regression_loss, params, data, key=1, step_size=1e-3, nbeta=NBETA, localization=LOCALIZATION, num_draws=20,
              batch_size=20, progress=False, checkpoint_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 2
