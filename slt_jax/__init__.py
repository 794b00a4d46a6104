"""slt_jax: SGLD posterior sampling for singular learning theory, in pure JAX.

See README.md for the conventions (SCIENCE.md §1-§4) and a quickstart.
"""

# --- core (issue 2) ---
from slt_jax import kernels, theory
from slt_jax.kernels import Hyperparameters, Preconditioner, SGLDInfo, SGLDState
from slt_jax.llc import LLCResult, estimate_llc
from slt_jax.sampler import (
    Accumulator,
    ChainsOutput,
    DivergenceError,
    batch_nbeta,
    compile_count,
    default_nbeta,
    full_data_loss,
    run_chains,
    sample,
)

# --- adapters, masks, models, tasks (issue 3) ---
from slt_jax import adapters, components, masks, models, tasks, training
from slt_jax.adapters import from_linen, from_nnx, to_nnx
from slt_jax.components import ComponentLLCResult, estimate_llc_per_component
from slt_jax.masks import (
    component_mask,
    describe_mask,
    head_mask,
    mask_complement,
    mask_intersection,
    mask_union,
)
from slt_jax.training import train

# --- susceptibilities, BIF, patterning (issue 4) ---
from slt_jax import stats
from slt_jax.bif import BIFResult, estimate_bif
from slt_jax.patterning import attach_weights, pattern, reweighted_loss
from slt_jax.stats import observables
from slt_jax.susceptibility import SusceptibilityResult, estimate_susceptibilities

# --- calibration, diagnostics, plots, io (issue 5) ---
from slt_jax import calibration, diagnostics, io, plots
from slt_jax.calibration import CalibrationResult, calibrate
from slt_jax.diagnostics import negative_control
from slt_jax.io import load, save, to_arviz, to_xarray
from slt_jax.plots import plot_calibration, plot_llc_checkpoints, plot_response_pca, plot_traces

__version__ = "0.1.0"

__all__ = sorted(
    name for name, value in dict(globals()).items() if not name.startswith("_") and name not in ("annotations",)
)
