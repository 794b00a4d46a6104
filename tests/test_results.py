"""One result protocol (slt_jax.results): every result type summarizes, converts and round-trips alike."""

import dataclasses
import warnings

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import xarray as xr

import slt_jax as sj
from slt_jax import io, results

import synthetic_results

X = jnp.asarray(np.random.default_rng(0).normal(size=(24, 2)), jnp.float32)
DATA = {"x": X, "y": X @ jnp.asarray([1.0, -0.5]) + 0.1}
CONFIG = sj.SamplerConfig(step_size=1e-3, nbeta=20.0, localization=1.0, num_chains=2, num_draws=30, batch_size=24)


def loss_fn(w, batch):
    return 0.5 * (batch["y"] - batch["x"] @ w) ** 2


W = jnp.asarray(np.linalg.lstsq(np.asarray(X), np.asarray(DATA["y"]), rcond=None)[0], jnp.float32)
CHECKPOINTS = [W + 0.3, W + 0.1, W]
PROBES = {"train": {"x": X[:6], "y": DATA["y"][:6]}}


def _build():
    """One small instance of every result type."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.reliability.NoisyResponseWarning)  # 30 draws: noise, on purpose
        common = dict(key=0, progress=False)
        llc = sj.estimate_llc(loss_fn, W, DATA, CONFIG, **common)
        table = sj.estimate_llc_table(loss_fn, CHECKPOINTS[:2], DATA, CONFIG, **common)
        chi = sj.estimate_susceptibilities(loss_fn, W, DATA, CONFIG, probes=PROBES, components={"w0": jnp.array([True, False])}, **common)
        chi_table = sj.estimate_susceptibilities_table(loss_fn, CHECKPOINTS[:2], DATA, CONFIG, probes=PROBES, **common)
        bif = sj.estimate_bif(loss_fn, W, DATA, CONFIG, probes=PROBES, **common)
        bif_table = sj.estimate_bif_table(loss_fn, CHECKPOINTS[:2], DATA, CONFIG, probes=PROBES, **common)
        development = sj.track_development(loss_fn, CHECKPOINTS, DATA, CONFIG, steps=[0, 10, 100], **common)
    control = sj.negative_control(loss_fn, W, DATA, CONFIG.replace(localization=10.0), **common)
    per_chain = np.random.default_rng(1).normal(size=(4, 12, 3)) + np.linspace(0, 3, 12)[None, :, None]
    reliability = sj.estimate_reliability(synthetic_results.susceptibility_result(per_chain), warn=False)
    patterning = sj.pattern(np.random.default_rng(2).normal(size=(2, 6)), np.array([0.1, -0.1]), 0.5, min_weight=None)
    evaluation = sj.PatterningEvaluation(
        seeds=[0, 1], baseline=np.zeros((2, 2)), steered=np.ones((2, 2)), realised_shift=np.ones(2),
        realised_stderr=np.zeros(2), predicted_shift=np.ones(2), predicted_stderr=np.zeros(2), zscore=np.zeros(2))
    trajectory = sj.development.trajectory_pca(lambda w, x: x @ w, [CHECKPOINTS], X, num_components=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 40 draws: no setting levels off, the fallback warns
        calibration = sj.calibrate(loss_fn, W, DATA, CONFIG.replace(num_draws=40), key=0, step_sizes=[1e-4, 1e-3], progress=False)
    return dict(
        CalibrationResult=calibration,
        LLCResult=llc, LLCTable=table, SusceptibilityResult=chi, SusceptibilityTable=chi_table, BIFResult=bif,
        BIFTable=bif_table, DevelopmentResult=development, Stages=development.stages(), NegativeControlResult=control,
        ReliabilityResult=reliability, PatterningResult=patterning, PatterningEvaluation=evaluation,
        TrajectoryPCA=trajectory,
    )


@pytest.fixture(scope="module")
def every_result():
    return _build()


def test_every_result_type_is_covered(every_result):
    """Every registered slt_jax result type has an instance here, so the protocol test sees it."""
    names = {cls.__name__ for cls in results.registered_types() if issubclass(cls, results.Result)
             and cls.__module__.startswith("slt_jax")}
    assert names <= set(every_result), names - set(every_result)
    assert all(isinstance(result, results.Result) for result in every_result.values())


@pytest.mark.parametrize("name", [
    "LLCResult", "LLCTable", "SusceptibilityResult", "SusceptibilityTable", "BIFResult", "BIFTable",
    "DevelopmentResult", "Stages", "NegativeControlResult", "ReliabilityResult", "PatterningResult",
    "PatterningEvaluation", "TrajectoryPCA", "CalibrationResult",
])
def test_protocol(every_result, name, tmp_path):
    result = every_result[name]
    assert type(result).__name__ == name
    summary = result.summary()
    assert isinstance(summary, str) and summary
    dataset = result.to_xarray()
    assert isinstance(dataset, xr.Dataset) and dataset.data_vars
    assert dataset.attrs["result_type"].endswith(name)
    assert isinstance(io.to_xarray(result), xr.Dataset)
    assert isinstance(result.to_dataframe(), pd.DataFrame)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(result, dataclasses.fields(result)[0].name, None)
    loaded = sj.load(sj.save(tmp_path / name, result))
    assert type(loaded) is type(result)
    assert loaded.summary() == summary


def test_tables_cells_equal_single_checkpoint_calls(every_result):
    """A table's result(k) is what the one-checkpoint call returns at that checkpoint (same key)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.reliability.NoisyResponseWarning)
        chi = sj.estimate_susceptibilities(loss_fn, CHECKPOINTS[1], DATA, CONFIG, key=0, probes=PROBES, progress=False)
        bif = sj.estimate_bif(loss_fn, CHECKPOINTS[1], DATA, CONFIG, key=0, probes=PROBES, progress=False)
    llc = sj.estimate_llc(loss_fn, CHECKPOINTS[1], DATA, CONFIG, key=0, progress=False)
    np.testing.assert_allclose(every_result["SusceptibilityTable"].result(1).chi, chi.chi, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(every_result["BIFTable"].result(1).bif, bif.bif, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(every_result["LLCTable"].result(1).llc_per_chain, llc.llc_per_chain, rtol=1e-5, atol=1e-6)


def test_llc_result_health_is_an_attribute_and_summary_its_text(every_result):
    result = every_result["LLCResult"]
    assert isinstance(result.health, sj.HealthReport)
    assert result.summary() == str(result.health)


def test_plots(every_result):
    from matplotlib.figure import Figure

    for name in ("LLCResult", "LLCTable", "SusceptibilityResult", "DevelopmentResult", "TrajectoryPCA"):
        assert isinstance(every_result[name].plot(), Figure), name
    with pytest.raises(NotImplementedError, match="has no plot"):
        every_result["BIFResult"].plot()


def test_io_imports_no_estimator():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(io))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module == "slt_jax"
                for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    estimators = {"llc", "susceptibility", "bif", "development", "calibration", "diagnostics", "reliability", "patterning"}
    assert not {name.rsplit(".", 1)[-1] for name in imported} & estimators, imported
