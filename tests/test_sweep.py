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


# Issue 19 item 6: a sweep in N parts (one process per GPU) merges into the directory one run writes.


def _arrays(path):
    with np.load(path, allow_pickle=False) as contents:
        return {name: contents[name] for name in contents.files if name != "__header__"}


@pytest.mark.slow  # one run and three parts: four trainings and samplings
def test_three_parts_merged_equal_one_run(tmp_path, capsys):
    path = _write(tmp_path, TINY)
    whole = sweep.run_sweep(path, output=tmp_path / "whole", progress=False)
    for index in (1, 2, 3):
        assert cli.main(["run", str(path), "--quiet", "--part", f"{index}/3"]) == 0
    blocks = [json.loads((tmp_path / "out" / "parts" / f"part-{i}-of-3" / "part.json").read_text())["checkpoints"]
              for i in (1, 2, 3)]
    # 4 cells (2 entries x 2 checkpoints) of costs 24, 24, 20, 20 chain-steps: "small" is split.
    assert blocks == [{"small": [0, 1]}, {"small": [1, 2]}, {"large": [0, 2]}]
    assert cli.main(["merge", str(tmp_path / "out")]) == 0
    assert "results in" in capsys.readouterr().out
    merged = tmp_path / "out"
    pd.testing.assert_frame_equal(pd.read_csv(merged / "table.csv"), pd.read_csv(tmp_path / "whole" / "table.csv"),
                                  check_exact=False, rtol=1e-6)
    for name in ("small", "large"):
        one, joined = _arrays(tmp_path / "whole" / f"{name}.npz"), _arrays(merged / f"{name}.npz")
        assert sorted(one) == sorted(joined)
        for key in one:
            np.testing.assert_allclose(joined[key], one[key], rtol=1e-6, err_msg=key)
        loaded = sj.load(merged / f"{name}.npz")
        assert loaded.llc.chains.num_configs == 4 and list(loaded.steps) == [0, 20]
        assert loaded.llc.chains.config == whole.developments[name].llc.chains.config
    for name in ("training_loss.csv", "sweep.toml", "small.png", "large.png"):
        assert (merged / name).is_file(), name
    assert (merged / "training_loss.csv").read_text() == (tmp_path / "whole" / "training_loss.csv").read_text()
    one, joined = (json.loads((d / "resolved.json").read_text()) for d in (tmp_path / "whole", merged))
    assert {k: v for k, v in joined.items() if k != "output"} == {k: v for k, v in one.items() if k != "output"}


@pytest.mark.parametrize("part, message", [
    ("0/3", "part=0/3: parts are numbered 1..N with N >= 1, so i must be in 1..3"),
    ("4/3", "part=4/3: parts are numbered 1..N"),
    ("2of3", "part='2of3' must be 'i/N'"),
    ("5/5", "the sweep has 4 unit(s) of work"),
])
def test_bad_part_fails_before_training(tmp_path, monkeypatch, capsys, part, message):
    monkeypatch.setattr(sj.training, "train", lambda *a, **k: pytest.fail("trained before --part was checked"))
    assert cli.main(["run", str(_write(tmp_path, TINY)), "--part", part]) == 2
    printed = capsys.readouterr().err
    assert message in printed and printed.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_merge_refuses_missing_and_mismatched_parts(tmp_path, capsys):
    path = _write(tmp_path, TINY)
    out = tmp_path / "out"
    assert cli.main(["merge", str(out)]) == 2
    assert "has no parts/part-i-of-N folders" in capsys.readouterr().err
    for index in (1, 3):
        sweep.run_sweep(path, part=f"{index}/3", progress=False)
    assert cli.main(["merge", str(out)]) == 2
    printed = capsys.readouterr().err
    assert "part(s) 2/3 of" in printed and "--part i/3" in printed and printed.count("\n") == 1
    (out / "parts" / "part-2-of-3").mkdir()
    (out / "parts" / "part-2-of-3" / "part.json").write_text((out / "parts" / "part-1-of-3" / "part.json").read_text())
    (out / "parts" / "part-2-of-3" / "resolved.json").write_text(
        (out / "parts" / "part-1-of-3" / "resolved.json").read_text().replace('"n_train": 90', '"n_train": 91'))
    with pytest.raises(ValueError, match=r"part-2-of-3/resolved.json differs from part-1-of-3's in \['data'\]"):
        sweep.merge_sweep(out)
    (out / "parts" / "part-2-of-3" / "resolved.json").write_text((out / "parts" / "part-1-of-3" / "resolved.json").read_text())
    record = json.loads((out / "parts" / "part-1-of-3" / "part.json").read_text())
    (out / "parts" / "part-2-of-3" / "part.json").write_text(json.dumps({**record, "training": "0" * 64}))
    with pytest.raises(ValueError, match="part-2-of-3 trained different checkpoints than part-1-of-3"):
        sweep.merge_sweep(out)
    (out / "parts" / "part-2-of-3" / "part.json").write_text(json.dumps(record))  # claims part 1's block again
    with pytest.raises(ValueError, match=r"settings entry 'small' cover checkpoints \[0, 0\]"):
        sweep.merge_sweep(out)
    (out / "parts" / "part-1-of-2").mkdir()
    with pytest.raises(ValueError, match=r"splits into \[2, 3\] parts"):
        sweep.merge_sweep(out)


def test_split_deals_contiguous_runs_of_about_equal_cost():
    from slt_jax._src import parts

    assert parts.split([1] * 6, 3) == [range(0, 2), range(2, 4), range(4, 6)]
    assert parts.split([10, 1, 1, 1, 1], 3) == [range(0, 1), range(1, 3), range(3, 5)]  # the heavy unit alone
    assert parts.split([1, 1, 1, 100], 4) == [range(0, 1), range(1, 2), range(2, 3), range(3, 4)]  # never an empty part
    assert parts.parse_part(" 2 / 4 ") == (2, 4) and parts.parse_part((1, 1)) == (1, 1)
    with pytest.raises(TypeError, match="tuple"):
        parts.parse_part((1.0, 2))
