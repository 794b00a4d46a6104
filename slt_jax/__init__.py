"""slt_jax: SGLD posterior sampling for singular learning theory, in pure JAX.

See README.md for a quickstart and docs/conventions.md for every formula and convention.
``slt_jax.analysis`` (clustering, embeddings, top influences; the optional extra
``pip install "slt_jax[analysis]"``) loads on first use, so ``import slt_jax`` never imports
scikit-learn or umap-learn.
"""

import importlib
import os

# --- sampling core: kernels, restricted chains, run settings, the driver ---
from slt_jax import config, kernels, restriction, sampler, traces
from slt_jax._src import program
from slt_jax.zoo import theory
from slt_jax.config import NbetaConventionWarning, SamplerConfig, batch_nbeta, default_nbeta, enable_compilation_cache
from slt_jax.kernels import Hyperparameters, Preconditioner, SGLDInfo, SGLDState
from slt_jax._src.program import Accumulator, DrawContext, Recording, compile_count
from slt_jax.sampler import ChainsResult, DivergenceError, draw_steps, full_data_loss, run_chains

# --- adapters, masks, models, tasks, gridworld ---
from slt_jax import adapters, masks, training
from slt_jax.zoo import gridworld, models, tasks
from slt_jax.adapters import from_linen, from_nnx, to_nnx
from slt_jax.masks import (
    component_mask,
    describe_mask,
    head_mask,
    mask_complement,
    mask_intersection,
    mask_union,
    mlp_mask,
)
from slt_jax.training import train

# --- estimators: LLC, susceptibilities, BIF, patterning, calibration ---
from slt_jax import calibration, diagnostics, llc, reliability, stats
from slt_jax.bif import BIFResult, BIFTable, estimate_bif, estimate_bif_table
from slt_jax.calibration import CalibrationResult, calibrate
from slt_jax.diagnostics import HealthReport, NegativeControlResult, negative_control
from slt_jax.llc import LLCResult, LLCTable, estimate_llc, estimate_llc_table
from slt_jax.patterning import PatterningEvaluation, PatterningResult, attach_weights, evaluate_patterning, pattern, reweighted_loss
from slt_jax.reliability import ReliabilityResult, estimate_reliability
from slt_jax.stats import observables
from slt_jax.susceptibility import (
    SusceptibilityResult,
    SusceptibilityTable,
    estimate_susceptibilities,
    estimate_susceptibilities_table,
)

# --- development over training ---
from slt_jax import development
from slt_jax.development import DevelopmentResult, Stages, TrajectoryPCA, track_development

# --- results: io and plots ---
from slt_jax import io, plots, results
from slt_jax.io import load, save, to_arviz, to_dataframe, to_xarray
from slt_jax.plots import plot_calibration, plot_embedding, plot_llc_checkpoints, plot_response_pca, plot_traces

__version__ = "0.2.0"

if os.environ.get("SLT_JAX_CACHE_DIR"):
    # The documented switch for scripts and sweeps: compiled programs persist across processes.
    enable_compilation_cache()

__all__ = sorted(
    name for name, value in dict(globals()).items() if not name.startswith("_") and name not in ("annotations", "importlib")
)


def __getattr__(name: str):
    # PEP 562: the analysis submodule imports scikit-learn and umap-learn (seconds, an optional
    # extra), so it loads when first used, not with the package.
    if name == "analysis":
        return importlib.import_module("slt_jax.analysis")
    raise AttributeError(f"module 'slt_jax' has no attribute {name!r}")
