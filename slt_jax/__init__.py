"""slt_jax: SGLD posterior sampling for singular learning theory, in pure JAX.

See README.md for a quickstart and its "Public API" table for every name below, docs/conventions.md
for every formula and convention, and docs/architecture.md for the layers.

``import slt_jax`` loads JAX, optax and the sampler; what a plain sampling run does not use loads on
first use: the Flax adapters and the Flax zoo (``from_nnx``, ``from_linen``, ``to_nnx``, ``models``,
``gridworld``) and ``analysis`` (scikit-learn, umap-learn: ``pip install "slt_jax[analysis]"``) as
lazy attributes (PEP 562 ``__getattr__`` below); matplotlib, pandas, scipy and numpyro inside the
functions that draw, export or diagnose.
"""

import importlib as _importlib
import os as _os

# --- settings and the sampler ---
from slt_jax.config import NbetaConventionWarning, SamplerConfig, batch_nbeta, default_nbeta, enable_compilation_cache
from slt_jax.kernels import Hyperparameters, Preconditioner, SGLDInfo
from slt_jax.sampler import (
    Accumulator,
    ChainsResult,
    DivergenceError,
    DrawContext,
    Recording,
    compile_count,
    draw_steps,
    full_data_loss,
    run_chains,
)

# --- models and components: masks, training, the zoo of instruments (Flax parts: lazy, below) ---
from slt_jax.masks import component_mask, describe_mask, head_mask, mask_complement, mask_intersection, mask_union, mlp_mask
from slt_jax.training import train
from slt_jax.zoo import tasks, theory

# --- estimators ---
from slt_jax.llc import LLCResult, LLCTable, estimate_llc, estimate_llc_table
from slt_jax.diagnostics import HealthReport, NegativeControlResult, negative_control
from slt_jax.calibration import CalibrationResult, calibrate
from slt_jax.stats import observables
from slt_jax.susceptibility import SusceptibilityResult, SusceptibilityTable, estimate_susceptibilities, estimate_susceptibilities_table
from slt_jax.bif import BIFResult, BIFTable, estimate_bif, estimate_bif_table
from slt_jax.reliability import ReliabilityResult, estimate_reliability
from slt_jax.patterning import PatterningEvaluation, PatterningResult, attach_weights, evaluate_patterning, pattern, reweighted_loss
from slt_jax.development import DevelopmentResult, Stages, TrajectoryPCA, track_development

# --- results: saving, conversions, plots ---
from slt_jax.io import load, save, to_arviz, to_dataframe, to_xarray
from slt_jax.plots import plot_calibration, plot_embedding, plot_llc_checkpoints, plot_response_pca, plot_traces

__version__ = "0.2.0"

# Reviewed by hand: every name here is documented in the README's "Public API" table (tests/test_layout.py).
__all__ = [
    # settings and the sampler
    "SamplerConfig", "Preconditioner", "Hyperparameters", "default_nbeta", "batch_nbeta", "NbetaConventionWarning",
    "enable_compilation_cache", "run_chains", "Recording", "ChainsResult", "DrawContext", "Accumulator", "SGLDInfo",
    "DivergenceError", "compile_count", "full_data_loss", "draw_steps",
    # models and components
    "from_nnx", "from_linen", "to_nnx", "component_mask", "head_mask", "mlp_mask", "describe_mask", "mask_union",
    "mask_intersection", "mask_complement", "train", "models", "tasks", "gridworld", "theory",
    # LLC, calibration, health
    "estimate_llc", "estimate_llc_table", "LLCResult", "LLCTable", "HealthReport", "calibrate", "CalibrationResult",
    "negative_control", "NegativeControlResult",
    # susceptibilities, BIF, reliability, patterning
    "estimate_susceptibilities", "estimate_susceptibilities_table", "SusceptibilityResult", "SusceptibilityTable",
    "observables", "estimate_bif", "estimate_bif_table", "BIFResult", "BIFTable", "estimate_reliability",
    "ReliabilityResult", "pattern", "PatterningResult", "evaluate_patterning", "PatterningEvaluation",
    "reweighted_loss", "attach_weights",
    # development over training
    "track_development", "DevelopmentResult", "Stages", "TrajectoryPCA",
    # results
    "save", "load", "to_xarray", "to_dataframe", "to_arviz", "plot_traces", "plot_calibration", "plot_llc_checkpoints",
    "plot_response_pca", "plot_embedding",
]

if _os.environ.get("SLT_JAX_CACHE_DIR"):
    # The documented switch for scripts and sweeps: compiled programs persist across processes.
    enable_compilation_cache()


# Public names whose modules import Flax (~0.5 s with its IPython-based repr) or scikit-learn and
# umap-learn (seconds, an optional extra): name -> (module, attribute or None for the module itself).
_LAZY = {
    "from_nnx": ("slt_jax.adapters", "from_nnx"),
    "from_linen": ("slt_jax.adapters", "from_linen"),
    "to_nnx": ("slt_jax.adapters", "to_nnx"),
    "models": ("slt_jax.zoo.models", None),
    "gridworld": ("slt_jax.zoo.gridworld", None),
    "analysis": ("slt_jax.analysis", None),
}


def __getattr__(name: str):
    # PEP 562: called only for names not found in the module, so each loads once, on first use.
    if name not in _LAZY:
        raise AttributeError(f"module 'slt_jax' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = _importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
