"""Config-file sweeps (issue 10 §5): ``slt-jax run sweep.toml`` -> results, a table and plots."""

import json
import re

import numpy as np
import pandas as pd
import pytest

import slt_jax as sj
from slt_jax import cli, sweep

TINY = """
[model]
name = "DeepLinearNetwork"
widths = [3, 2, 3]

[task]
name = "dln_regression"
rank = 1
n = 120
train_fraction = 0.75

[training]
optimizer = "adam"
learning_rate = 0.01
num_steps = 20
checkpoint_steps = [0]

[components]
full = true
layers = [0]

[[settings]]
name = "small"
step_size = 1e-3
localization = 10.0
nbeta = 10.0
num_draws = 12
num_chains = 2
batch_size = 30

[[settings]]
name = "large"
step_size = 3e-3
localization = 10.0
nbeta = 10.0
num_draws = 10
num_chains = 2
batch_size = 30
seed = 1

[output]
dir = "out"
"""


def _write(tmp_path, text):
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    return path


def test_cli_run_writes_results_table_and_plots(tmp_path, capsys, monkeypatch):
    path = _write(tmp_path, TINY)
    assert sweep.load_sweep(path).output == tmp_path / "out"  # [output] dir is relative to the file
    returned = []
    run_sweep = sweep.run_sweep
    monkeypatch.setattr(sweep, "run_sweep", lambda *args, **kwargs: returned.append(run_sweep(*args, **kwargs)) or returned[-1])
    out = tmp_path / "elsewhere"
    assert cli.main(["run", str(path), "--quiet", "--output", str(out)]) == 0
    assert not (tmp_path / "out").exists()
    for name in ("sweep.toml", "resolved.json", "table.csv", "training_loss.csv", "small.npz", "large.npz", "small.png", "large.png"):
        assert (out / name).is_file(), name
    table = pd.read_csv(out / "table.csv")
    assert list(table.columns) == sweep.SWEEP_COLUMNS
    assert len(table) == 2 * 2 * 2  # settings x checkpoints x components
    assert table.groupby("settings").size().to_dict() == {"large": 4, "small": 4}
    assert sorted(set(table["step"])) == [0, 20] and sorted(set(table["component"])) == ["full", "layer0"]
    assert np.all(np.isfinite(table["test_loss"]))  # the held-out quarter
    (result,) = returned
    assert result.output == out and list(result.developments) == ["small", "large"]
    for name in ("small", "large"):
        loaded, written = sj.load(out / f"{name}.npz"), result.developments[name]
        assert isinstance(loaded, sj.DevelopmentResult)
        np.testing.assert_array_equal(loaded.llc.llc_per_chain, written.llc.llc_per_chain)
        np.testing.assert_array_equal(loaded.test_loss, written.test_loss)
        np.testing.assert_array_equal(loaded.steps, [0, 20])
        rows = table[table["settings"] == name].drop(columns="settings").reset_index(drop=True)
        pd.testing.assert_frame_equal(loaded.to_dataframe(), rows, check_dtype=False, check_exact=False, rtol=1e-6)
    resolved = json.loads((out / "resolved.json").read_text())
    assert resolved["training"]["checkpoint_steps"] == [0, 20]
    assert resolved["data"] == {"n_train": 90, "n_test": 30}
    assert resolved["component_names"] == ["full", "layer0"]
    assert [s["config_run"]["num_draws"] for s in resolved["settings"]] == [12, 10]
    assert (out / "sweep.toml").read_text() == TINY
    printed = capsys.readouterr().out
    assert "layer0" in printed and "results in" in printed


@pytest.mark.parametrize("edit, message", [
    (('name = "DeepLinearNetwork"', 'name = "DeepLinearNet"'), "[model] name = 'DeepLinearNet' is not known; allowed values: 'TransformerLM'"),
    (("num_steps = 20", "num_steps = 20\nlr = 0.1"), "[training]: unknown key 'lr'; valid: optimizer"),
    (('name = "dln_regression"', 'name = "dln"'), "[task] name = 'dln' is not known"),
    (("rank = 1", "rank = 1\nnoise = 0.5"), "[task] (dln_regression): unknown key 'noise'"),
    (("nbeta = 10.0\nnum_draws = 12", "nbeta = 10.0\nnum_draw = 12"), "[[settings]] 'small': unknown key 'num_draw' (did you mean 'num_draws'?)"),
    (('step_size = 1e-3', 'step_size = "fast"'), "[[settings]] 'small': step_size='fast'"),
    (('optimizer = "adam"', 'optimizer = "adamw"'), "allowed values: 'adam', 'sgd'"),
    (("layers = [0]", "heads = \"all\""), "[components] heads: DeepLinearNetwork has no attention heads"),
    (("layers = [0]", "layers = [5]"), "[components] layers: index 5 does not exist"),
    (("batch_size = 30\n\n[[settings]]", "batch_size = 500\n\n[[settings]]"), "batch_size = 500 exceeds the 90 training examples"),
    (('name = "large"', 'name = "small"'), "must be a unique file-name-safe string"),
    (("[output]", "[outputs]"), "unknown section(s) ['outputs']"),
    (("checkpoint_steps = [0]", "checkpoint_steps = [0, 50]"), "[training] checkpoint_steps [50] lie outside"),
])
def test_bad_files_fail_before_training(tmp_path, monkeypatch, capsys, edit, message):
    def must_not_train(*args, **kwargs):
        raise AssertionError("training started before the sweep file was validated")

    monkeypatch.setattr(sj.training, "train", must_not_train)
    monkeypatch.setattr(sj, "train", must_not_train)
    path = _write(tmp_path, TINY.replace(*edit))
    assert TINY.replace(*edit) != TINY
    assert cli.main(["run", str(path)]) == 2
    printed = capsys.readouterr().err
    assert message in printed and printed.count("\n") == 1 and "Traceback" not in printed
    with pytest.raises(ValueError, match=re.escape(message)):
        cli.main(["--traceback", "run", str(path)])
    assert not (tmp_path / "out").exists()


def test_transformer_components_and_loss_are_derived_before_training():
    document = {
        "model": {"name": "TransformerLM", "vocab_size": 5, "context_length": 8, "num_layers": 2, "num_heads": 2, "width": 8},
        "task": {"name": "repeated_tokens", "n": 20, "vocab_size": 5, "prefix_length": 4, "train_fraction": 1.0},
        "training": {"optimizer": "sgd", "learning_rate": 0.1, "num_steps": 10, "checkpoint_every": 5},
        "components": {"heads": [[1, 0]], "mlps": "all"},
        "settings": [{"name": "a", "step_size": "auto", "localization": 1.0, "num_draws": 5, "batch_size": 8}],
    }
    parsed = sweep.parse_sweep(document)
    assert parsed.task["loss"] == "next_token" and parsed.training["checkpoint_steps"] == [0, 5, 10]
    prepared = sweep.build(parsed)
    assert list(prepared.components) == ["L1H0", "mlp0", "mlp1"]  # full = false once components are named
    assert prepared.test is None
    mismatched = {**document, "task": {**document["task"], "loss": "mse"}}
    with pytest.raises(ValueError, match=r"\[model\] TransformerLM does not fit \[task\] repeated_tokens with loss 'mse'"):
        sweep.build(sweep.parse_sweep(mismatched))
