"""Draws docs/architecture.png, the layer diagram of docs/architecture.md (python docs/architecture_diagram.py).

Each band is a layer; a module imports only modules in its own band's lower neighbours or below
(tests/test_layout.py checks the exact order). Arrows show the main flow of a call.
"""

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

# (band title, colour, [(module, one-line role), ...]) from the top (what users call) to the bottom.
BANDS = [
    ("app", "#f2e6ff", [("analysis", "clusters, embeddings, influences"), ("io", "save / load / xarray via the protocol"),
                         ("sweep", "TOML sweeps"), ("cli", "slt-jax demo / run")]),
    ("estimators", "#e6f0ff", [("diagnostics", "health, controls"), ("calibration/", "grid, judge, auto"), ("llc", "LLCResult / LLCTable"),
                                ("reliability", "signal or noise"), ("susceptibility", "χ tables"), ("bif", "BIF tables"),
                                ("patterning", "reweighting"), ("development", "over training")]),
    ("edge: models and data", "#e6ffe6", [("masks", "heads, MLPs, layers"), ("adapters", "Flax NNX / Linen -> (params, loss_fn)"),
                                           ("zoo/", "models, tasks, gridworld, theory,\ndecoder, pretrained (GPT-2, GPT-NeoX)"),
                                           ("training", "checkpoints")]),
    ("results and the front door", "#fff5e0", [("results", "the result protocol, registry"),
                                               ("_src/frontdoor", "what every estimator calls first"), ("plots", "matplotlib figures")]),
    ("driver", "#ffe6e6", [("sampler", "run_chains, Recording, ChainsResult"), ("traces", "loss estimators, nβ(L - L*)"),
                           ("stats", "observables, covariances")]),
    ("engine (_src, private)", "#f0f0f0", [("_src/program", "the compiled chunk"), ("_src/multihost", "mesh, gathers"),
                                           ("_src/checkpoint", "resume state"), ("_src/planning", "configurations, groups, chunks, memory")]),
    ("foundations", "#ffffff", [("types", "aliases"), ("_src/validation", "checks before compiling"), ("kernels", "SGLD step (blackjax style)"),
                                ("restriction", "restricted chains"), ("config", "SamplerConfig")]),
]


def main(path=pathlib.Path(__file__).with_name("architecture.png")):
    figure, axes = plt.subplots(figsize=(15, 9.5))
    axes.set(xlim=(0, 15), ylim=(0, len(BANDS) * 1.3 + 0.3))
    axes.axis("off")
    for row, (title, colour, modules) in enumerate(BANDS):
        y = (len(BANDS) - 1 - row) * 1.3 + 0.2
        axes.add_patch(FancyBboxPatch((0.1, y), 14.8, 1.1, boxstyle="round,pad=0.02", fc=colour, ec="#888888"))
        axes.text(0.25, y + 0.95, title, fontsize=10, fontweight="bold", va="top")
        width = 12.4 / len(modules)
        size = 9 if len(modules) < 8 else 7.5
        for i, (name, role) in enumerate(modules):
            x = 2.4 + i * width
            axes.add_patch(FancyBboxPatch((x + 0.05, y + 0.15), width - 0.15, 0.8, boxstyle="round,pad=0.02", fc="white", ec="#444444"))
            axes.text(x + width / 2, y + 0.7, name, ha="center", va="center", fontsize=size, fontweight="bold", family="monospace")
            axes.text(x + width / 2, y + 0.38, role, ha="center", va="center", fontsize=size - 1.5)
        if row < len(BANDS) - 1:
            axes.annotate("", xy=(1.2, y - 0.08), xytext=(1.2, y + 0.35), arrowprops=dict(arrowstyle="->", lw=1.5, color="#555555"))
    axes.text(0.25, 0.35, "imports flow\ndownward only", fontsize=8, color="#555555")
    axes.set_title("slt_jax: layers, lowest at the bottom (a module imports only modules below it; left to right within a band; tests/test_layout.py)", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


if __name__ == "__main__":
    print(main())
