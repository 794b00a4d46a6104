"""slt_jax: SGLD posterior sampling for singular learning theory, in pure JAX.

See README.md for a quickstart and docs/conventions.md for every formula and convention.
"""

# --- sampling core: kernels, restricted chains, run settings, the driver ---
from slt_jax import config, kernels, program, restriction, sampler, theory, traces
from slt_jax.config import NbetaConventionWarning, SamplerConfig, batch_nbeta, default_nbeta
from slt_jax.kernels import Hyperparameters, Preconditioner, SGLDInfo, SGLDState
from slt_jax.program import Accumulator, DrawContext, compile_count
from slt_jax.sampler import ChainsOutput, DivergenceError, full_data_loss, run_chains

# --- adapters, masks, models, tasks ---
from slt_jax import adapters, masks, models, tasks, training
from slt_jax.adapters import from_linen, from_nnx, to_nnx
from slt_jax.masks import (
    component_mask,
    describe_mask,
    head_mask,
    mask_complement,
    mask_intersection,
    mask_union,
)
from slt_jax.training import train

# --- estimators: LLC, susceptibilities, BIF, patterning, calibration ---
from slt_jax import calibration, diagnostics, llc, stats
from slt_jax.bif import BIFResult, estimate_bif, estimate_bif_over_checkpoints
from slt_jax.calibration import CalibrationResult, calibrate
from slt_jax.diagnostics import negative_control
from slt_jax.llc import LLCResult, LLCTable, estimate_llc, estimate_llc_table
from slt_jax.patterning import attach_weights, pattern, reweighted_loss
from slt_jax.stats import observables
from slt_jax.susceptibility import (
    SusceptibilityResult,
    estimate_susceptibilities,
    estimate_susceptibilities_over_checkpoints,
)

# --- results: io and plots ---
from slt_jax import io, plots
from slt_jax.io import load, save, to_arviz, to_xarray
from slt_jax.plots import plot_calibration, plot_llc_checkpoints, plot_response_pca, plot_traces

__version__ = "0.2.0"

__all__ = sorted(
    name for name, value in dict(globals()).items() if not name.startswith("_") and name not in ("annotations",)
)
