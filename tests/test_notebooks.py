"""The notebooks: each one executes in smoke mode, and the committed copies hold full-mode outputs.

Every notebook reads the environment variable ``SMOKE`` (``SMOKE=1``: the same code on smaller
models and shorter chains, seconds instead of minutes) and ends with a cell that prints one line
``HEADLINE {json}``: the numbers its text states, plus ``"smoke": true/false``.

- ``test_notebook_in_smoke_mode`` executes a fresh copy with nbclient in a real kernel (so a
  notebook cannot rot) and checks its smoke headline against wide bounds: smoke chains are short,
  these bounds only say that the computation is the right one, not that the phenomenon is sharp.
- ``test_committed_notebook_holds_full_outputs`` reads the committed file: it must have been
  executed in full mode (``"smoke": false``), hold at least one figure, and its headline must lie
  within the bounds that notebooks/README.md states as the result.
"""

import json
import pathlib

import nbclient
import nbformat
import pytest

HERE = pathlib.Path(__file__).parents[1] / "notebooks"

NOTEBOOKS = [
    "llc_ground_truth",
    "developmental_stages",
    "susceptibilities",
    "embryology_and_clusters",
    "patterning",
    "data_attribution",
    "transient_ridge",
    "grokking",
    "rl_stages",
    "pretrained_lm",
]

# Per notebook: headline key -> (low, high) for the smoke run, and for the committed full run.
SMOKE_BOUNDS = {
    "llc_ground_truth": {"num_shapes": (1, 1), "grid_settings": (20, 20), "median_abs_rel_err": (0.0, 1.2),
                         "gamma_1e4_over_lambda": (-0.1, 0.5), "eps_1e-4_over_lambda": (0.2, 2.0)},
    "developmental_stages": {"final_llc": (-20.0, 50.0), "final_repeated_loss": (2.0, 2.9),
                             "fixed_period_p5_loss": (2.0, 3.5), "stage_boundaries": (0, 3)},
    "susceptibilities": {"pc1_variance": (0.0, 1.0), "pc2_variance": (0.0, 1.0), "num_induction_heads": (0, 3),
                         "token_auc_pc1": (0.5, 1.0), "token_auc_pc2": (0.5, 1.0),
                         "induction_chi_ratio": (0.05, 5.0), "induction_loss": (0.0, 3.0)},
    "embryology_and_clusters": {"num_checkpoints": (3, 3), "induction_auc_first": (0.5, 1.0),
                                "induction_auc_final": (0.5, 1.0), "num_clusters_final": (2, 10),
                                "purity_final": (0.3, 1.0), "ari_induction_final": (-0.5, 1.0),
                                "induction_loss_final": (0.0, 3.0)},
    "patterning": {"probe_acc_unweighted": (0.0, 1.0), "probe_acc_patterned": (0.0, 1.0),
                   "hard_loss_shift_predicted": (-0.5, -1e-6), "num_seeds": (2, 2)},
    "data_attribution": {"num_examples": (36, 36), "linear_ari_gradient": (0.9, 1.0),
                         "linear_top5_same_group": (0.6, 1.0), "linear_ari_bif": (0.3, 1.0)},
    "transient_ridge": {"middle_M": (16, 16), "ridge_dmmse_distance": (0.15, 0.5),
                        "min_dist_ridge": (0.0, 5.0), "small_M_final_dist_dmmse": (0.0, 5.0),
                        "final_llc_M16": (-500.0, 500.0)},
    "grokking": {"final_test_accuracy": (0.0, 1.0), "control_final_test_accuracy": (0.0, 1.0),
                 "llc_peak": (0.0, 50.0), "llc_peak_step": (0, 300)},
    "rl_stages": {"regret_initial": (0.74, 0.77), "regret_final": (0.0, 0.05), "llc_final": (0.0, 50.0)},
    "pretrained_lm": {"num_heads": (8, 8), "loss_step0": (3.7, 4.0), "loss_final": (0.9, 1.1),
                      "chi_rows": (124, 124), "head_llc_max": (-5.0, 5.0), "full_llc": (-50.0, 100.0)},
}
FULL_BOUNDS = {
    "llc_ground_truth": {"num_shapes": (5, 5), "median_abs_rel_err": (0.0, 0.1),
                         "max_abs_rel_err": (0.0, 0.15), "max_rhat": (0.99, 1.05),
                         "gamma_1_over_lambda": (0.9, 1.1), "gamma_1e4_over_lambda": (0.0, 0.5),
                         "eps_3e-7_over_lambda": (0.5, 0.95), "eps_1e-4_over_lambda": (1.3, 3.0),
                         "eps_diverged_settings": (1, 2), "nbeta_10x_over_lambda": (1.5, 5.0),
                         "nbeta_10x_eps_scaled_over_lambda": (0.9, 1.5)},
    "developmental_stages": {"final_repeated_loss": (0.0, 0.8), "final_first_half_loss": (2.9, 4.0),
                             "fixed_period_p5_loss": (4.0, 20.0), "induction_step": (300, 2000),
                             "llc_steepest_step": (200, 1300), "first_llc": (0.0, 20.0),
                             "final_llc": (180.0, 300.0), "final_llc_stderr": (0.0, 10.0),
                             "top_head_layer": (0, 0), "end_slope_ratio": (0.1, 0.5), "first_boundary": (0, 200)},
    "susceptibilities": {"reliability": (0.8, 1.0), "num_induction_heads": (2, 3), "head_gap_pc2": (0.2, 1.5),
                         "pc2_variance": (0.1, 0.5), "token_auc_pc2": (0.6, 1.0),
                         "induction_chi_ratio": (0.2, 0.7), "induction_loss": (0.0, 0.5)},
    "embryology_and_clusters": {"reliability_min": (0.7, 1.0), "induction_auc_first": (0.45, 0.58),
                                "induction_auc_final": (0.62, 1.0), "ari_induction_first": (-0.1, 0.1),
                                "ari_induction_final": (0.1, 1.0), "num_clusters_final": (2, 10),
                                "induction_loss_final": (0.0, 0.5)},
    "patterning": {"probe_acc_shift": (0.03, 0.2), "hard_loss_shift": (-0.3, -0.02),
                   "hard_loss_shift_predicted": (-0.1, -0.005), "rare_group_chi_z": (-20.0, -4.0),
                   "other_inits_acc_shift": (0.02, 0.2), "probe_acc_unweighted": (0.4, 0.75),
                   "num_seeds": (4, 100)},
    "data_attribution": {"linear_ari_bif": (0.99, 1.0), "linear_ari_gradient": (0.99, 1.0),
                         "linear_ari_bif_vs_gradient": (0.99, 1.0), "linear_top5_same_group": (0.95, 1.0),
                         "linear_bif_reliability": (0.8, 1.0), "mlp16_ari_bif": (-0.1, 0.3),
                         "mlp16_ari_gradient": (-0.1, 0.3), "mlp16_top5_same_group": (0.6, 1.0),
                         "mlp16_gradient_top5_same_group": (0.9, 1.0)},
    "transient_ridge": {"small_M_final_dist_dmmse": (0.0, 0.1), "small_M_final_dist_ridge": (0.2, 0.5),
                        "inf_M_final_dist_ridge": (0.0, 0.25), "final_dist_dmmse": (0.0, 0.25),
                        "final_dist_ridge": (0.25, 0.4), "min_dist_ridge_step": (500, 5000),
                        "final_llc_M4": (0.0, 20.0), "final_llc_M16": (15.0, 45.0),
                        "final_llc_Minf": (15.0, 50.0)},
    "grokking": {"memorised_step": (25, 200), "grokked_step": (400, 1500), "final_test_accuracy": (0.95, 1.0),
                 "control_final_test_accuracy": (0.0, 0.2), "llc_peak_step": (200, 1000),
                 "llc_final_over_peak": (0.75, 0.95), "control_over_grokked_llc": (1.5, 2.5)},
    "rl_stages": {"regret_initial": (0.6, 0.61), "regret_final": (0.0, 1e-05), "regret_drops": (2, 2),
                  "llc_rises": (1, 1), "llc_plateau": (20.0, 25.0), "llc_final": (26.0, 31.0),
                  "llc_final_over_rrr": (0.7, 1.0)},
    "pretrained_lm": {"num_heads": (8, 8), "loss_step0": (3.8, 3.95), "loss_final": (0.9, 1.05),
                      "full_llc": (20.0, 40.0), "head_llc_max": (0.3, 1.2), "top_llc_head_layer": (0, 0),
                      "reliability": (0.8, 1.0), "chi_llc_correlation": (0.7, 1.0)},
}


def _headline(notebook):
    """The JSON after ``HEADLINE`` in the last code cell's printed output."""
    last = [cell for cell in notebook.cells if cell.cell_type == "code"][-1]
    for output in last.get("outputs", []):
        if output.get("output_type") == "stream":
            for line in output["text"].splitlines():
                if line.startswith("HEADLINE "):
                    return json.loads(line[len("HEADLINE "):])
    raise AssertionError("the last code cell must print one line 'HEADLINE {json}'")


def _check(headline, bounds, name):
    for key, (low, high) in bounds.items():
        assert key in headline, f"{name}: headline has no {key!r} (it has {sorted(headline)})"
        assert low <= headline[key] <= high, f"{name}: {key} = {headline[key]} outside [{low}, {high}]"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_in_smoke_mode(name, monkeypatch, tmp_path):
    monkeypatch.setenv("SMOKE", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend, as in Jupyter
    notebook = nbformat.read(HERE / f"{name}.ipynb", as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = []
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    headline = _headline(notebook)
    assert headline["smoke"] is True
    _check(headline, SMOKE_BOUNDS[name], name)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_holds_full_outputs(name):
    notebook = nbformat.read(HERE / f"{name}.ipynb", as_version=4)
    headline = _headline(notebook)
    assert headline["smoke"] is False, f"{name}.ipynb was committed with smoke-mode outputs"
    images = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
              if "image/png" in output.get("data", {})]
    assert images, f"{name}.ipynb holds no figure"
    errors = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
              if output.get("output_type") == "error"]
    assert not errors, f"{name}.ipynb was committed with an error output"
    _check(headline, FULL_BOUNDS[name], name)


def test_notebook_list_is_complete_and_documented():
    assert sorted(p.stem for p in HERE.glob("*.ipynb")) == sorted(NOTEBOOKS)
    readme = (HERE / "README.md").read_text()
    for name in NOTEBOOKS:
        assert f"{name}.ipynb" in readme, f"notebooks/README.md does not list {name}.ipynb"
