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
    as_key,
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
    leaf_paths,
    mask_complement,
    mask_intersection,
    mask_union,
)
from slt_jax.training import TrainResult, train

# --- susceptibilities, BIF, patterning (issue 4) ---
from slt_jax import stats
from slt_jax.bif import BIFResult, estimate_bif
from slt_jax.patterning import attach_weights, pattern, reweighted_loss
from slt_jax.stats import CovarianceState, Observables, ProbeLabels, covariance_accumulator, observables
from slt_jax.susceptibility import ResponsePCA, SusceptibilityResult, estimate_susceptibilities

# --- calibration, diagnostics, plots, io (issue 5) ---
from slt_jax import calibration, checkpoint, diagnostics, io, plots
from slt_jax.calibration import CalibrationResult, calibrate, default_step_sizes
from slt_jax.diagnostics import HealthReport, NegativeControlResult, negative_control, ou_variance
from slt_jax.io import load, save, to_arviz, to_xarray
from slt_jax.plots import plot_calibration, plot_llc_checkpoints, plot_response_pca, plot_traces

__version__ = "0.1.0"

__all__ = [name for name in dir() if not name.startswith("_")]
