"""``SamplerConfig``: the run settings, declared once and shared by every estimator.

One immutable, validated, JSON-serialisable value holds everything that defines a localized SGLD run
(docs/conventions.md §1): the three numbers of the update (ε, nβ, γ, plus an optional weight decay),
the schedule (chains, burn-in, draws, thinning), the minibatch size, the preconditioner and how often
the per-draw diagnostics are taken. ``run_chains``, ``estimate_llc``, ``estimate_llc_table``,
``estimate_susceptibilities``, ``estimate_bif``, ``calibrate`` and ``negative_control`` all take it,
``calibrate`` returns a recommended one, and every result stores the one it was run with.

>>> import slt_jax as sj
>>> config = sj.SamplerConfig(step_size=1e-4, localization=1.0, num_draws=500, batch_size=64)
>>> config.replace(num_chains=8).num_chains
8
>>> sj.SamplerConfig.from_dict(config.to_dict()) == config
True
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import pathlib

import jax
import numpy as np

from slt_jax.kernels import Preconditioner, check_compute_dtype, check_noise, check_scheme, get_preconditioner
from slt_jax._src.validation import check_positive_int

__all__ = ["SamplerConfig", "default_nbeta", "batch_nbeta", "NbetaConventionWarning", "check_names", "unknown_names",
           "enable_compilation_cache"]


def unknown_names(given, valid, what: str) -> str | None:
    """A message naming each unknown name in ``given``, its closest valid name and the valid ones, or None.

    >>> unknown_names(["num_chain"], ["num_chains", "num_draws"], "SamplerConfig field")
    "unknown SamplerConfig field 'num_chain' (did you mean 'num_chains'?); valid: num_chains, num_draws."
    """
    valid = list(valid)
    unknown = [name for name in given if name not in valid]
    if not unknown:
        return None
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1, cutoff=0.6)
        parts.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    plural = "s" if len(unknown) > 1 else ""
    return f"unknown {what}{plural} {', '.join(parts)}; valid: {', '.join(map(str, valid))}."


def check_names(given, valid, what: str) -> None:
    """Raises a ``TypeError`` with ``unknown_names``'s message when ``given`` holds a name not in ``valid``."""
    message = unknown_names(given, valid, what)
    if message is not None:
        raise TypeError(message)


def _check_number(value, name: str, *, allow_zero: bool, fix: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__}). {fix}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name}={value!r} must be finite and {'>= 0' if allow_zero else '> 0'}. {fix}")
    return value


def enable_compilation_cache(directory: str | os.PathLike | None = None) -> pathlib.Path:
    """Keeps every compiled sampling program on disk, so a new Python process reuses it.

    Each estimator compiles a few programs (seconds each on a CPU); a notebook restart or every
    script of a sweep pays that again. With the cache on, a second process loads the executables
    instead (JAX's persistent compilation cache, with no minimum compile time, so the small
    programs of small models are kept too). Tracing still runs in Python (a fraction of a second).
    Call it once, before the first estimate; the cache is keyed by the program, the JAX version and
    the device, so a stale entry is never used.

    Args:
        directory: where to keep the cache; default ``$SLT_JAX_CACHE_DIR``, else
            ``$XDG_CACHE_HOME/slt_jax/xla`` (``~/.cache/slt_jax/xla``).

    Returns:
        The cache directory (created if needed).
    """
    if directory is None:
        directory = os.environ.get("SLT_JAX_CACHE_DIR") or (
            pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "slt_jax" / "xla")
    path = pathlib.Path(directory).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


class NbetaConventionWarning(UserWarning):
    """The default nβ = n / log n was used with per-token losses: n counts sequences, not tokens.

    Issued once per process by the sampler; pass ``nbeta=`` explicitly to state the convention
    (e.g. ``sj.default_nbeta(num_sequences)`` to keep the default, silently).
    """


def default_nbeta(n: int) -> float:
    """Watanabe's nβ* = n / log n (β* = 1/log n), the library default.

    ``n`` counts the examples the loss averages over as independent draws: for next-token losses that
    is the number of sequences, not tokens (docs/conventions.md §1).
    """
    n = check_positive_int(n, "n")
    if n < 2:
        raise ValueError(f"n={n}: default_nbeta needs n >= 2 (log 1 = 0); pass nbeta explicitly.")
    return n / math.log(n)


def batch_nbeta(batch_size: int) -> float:
    """The batch-size variant B / log B (devinterp 1.x's default). Never picked silently."""
    batch_size = check_positive_int(batch_size, "batch_size")
    if batch_size < 2:
        raise ValueError(f"batch_size={batch_size}: batch_nbeta needs batch_size >= 2.")
    return batch_size / math.log(batch_size)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplerConfig:
    """The settings of a localized SGLD run (immutable; validated on construction).

    Attributes:
        step_size: ε of the update, or ``"auto"`` (``estimate_llc`` calibrates it first).
        localization: γ, the pull toward w*.
        num_draws: draws recorded per chain.
        batch_size: minibatch size m, drawn with replacement; m = n means exact full batch.
        nbeta: nβ; None means n / log n of the data it runs on (``default_nbeta``).
        weight_decay: λ_wd of an optional Gaussian prior centred at 0 (0 = none).
        num_chains: independent chains per configuration.
        num_burnin: steps before the first draw (not recorded).
        num_steps_between_draws: thinning: one draw every this many steps.
        preconditioner: ``"sgld"``, ``"rmsprop_sgld"`` (Hitchcock & Hoogland, Alg. 3),
            ``"rmsprop_sgld_devinterp"`` or a ``Preconditioner`` (to change α or eps).
        mala_every: MALA acceptance every this many draws (0 = never; one extra gradient each).
        diagnostics_every: gradient / noise / localization norms every this many draws (NaN
            between); 1 records them at every draw.
        chunk_draws: draws per compiled chunk (None: about a tenth of the run, but at least 1e11
            FLOPs of gradient work, about a second of a 2-core CPU, so that a chunk's fixed cost
            stays small; on chains of more than 65,536 coordinates a multiple of ``mala_every``
            where the run is that long, so that the draws due for MALA sit at fixed places in every
            chunk). Chunks are where progress, divergence and checkpoints are checked; results do
            not depend on it.
        memory_budget: bytes one compiled group of configurations may use (None: half of the
            accelerator's memory, or half the available RAM on a CPU host; see
            ``slt_jax._src.planning.default_memory_budget``). A configuration whose chains do not
            fit runs them in blocks, and one chain that does not fit accumulates its gradient over
            microbatches. Results do not depend on it (up to float32 rounding: XLA batches a smaller
            group differently).
        compute_dtype: ``"float32"`` or ``"bfloat16"``: the dtype of the loss's forward and backward
            passes (``slt_jax.kernels.mixed_precision``); the chain, the update, L(w) - L(w*) and every
            statistic stay float32 (docs/conventions.md §1, "Mixed precision").
        noise: ``"gaussian"`` (ξ ~ N(0, I)) or ``"rademacher"`` (independent ±1 increments, the
            simplified weak Euler scheme: the same stationary mean and covariance on a quadratic,
            cheaper to draw; docs/conventions.md §1, "Two-point noise").
        scheme: ``"euler"`` (Euler-Maruyama, the update of docs/conventions.md §1, as in devinterp)
            or ``"leimkuhler-matthews"``: the noise term uses the mean of this step's increment and
            the last one's (the last increments are carried: more memory per chain); its step-size
            bias is second order in ε (exact on a quadratic with full batches), so the figures of
            ``step_size="auto"`` and the health report's predicted bias, which are Euler's, bound it
            from above (docs/conventions.md §1, "The Leimkuhler-Matthews scheme"). None (the
            default): not chosen by the user. A run at a given ``step_size`` then takes Euler's step
            (``update_scheme``), and a calibration (``step_size="auto"``, ``calibrate``) takes
            Leimkuhler-Matthews and records it in the config it recommends: at degenerate points
            Euler's first-order bias gave auto's estimates a sign (docs/conventions.md §4).
        init_loss_examples: L_n(w*) from a subsample of this many examples (at least 2; a fixed,
            uniform draw without replacement, seeded by the run's key, the same at every centre),
            where the estimate needs L_n(w*) (``loss_estimator="minibatch"`` or ``"full"``,
            ``centering="full"``); its standard error enters λ̂'s (``LLCResult.stderr``). None:
            all n examples, refused before any pass when that pass is large and more than 10% of
            the sampling (docs/conventions.md §2); m >= n: all n, never refused. Unused where
            L_n(w*) cancels (``"paired"``, ``centering="probe"``).
    """

    step_size: float | str
    localization: float
    num_draws: int
    batch_size: int
    nbeta: float | None = None
    weight_decay: float = 0.0
    num_chains: int = 4
    num_burnin: int = 0
    num_steps_between_draws: int = 1
    preconditioner: str | Preconditioner = "sgld"
    mala_every: int = 20
    diagnostics_every: int = 1
    chunk_draws: int | None = None
    memory_budget: int | None = None
    compute_dtype: str = "float32"
    noise: str = "gaussian"
    scheme: str | None = None
    init_loss_examples: int | None = None

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)
        if isinstance(self.step_size, str):
            if self.step_size != "auto":
                raise ValueError(f"step_size={self.step_size!r}: pass a number (e.g. 1e-4) or 'auto'.")
        else:
            set_("step_size", _check_number(self.step_size, "step_size", allow_zero=False, fix="Try 1e-4, or step_size='auto'."))
        set_("localization", _check_number(self.localization, "localization", allow_zero=True, fix="Typical values are 1 to 100."))
        if self.nbeta is not None:
            set_("nbeta", _check_number(self.nbeta, "nbeta", allow_zero=True, fix="None uses n / log n (slt_jax.default_nbeta)."))
        set_("weight_decay", _check_number(self.weight_decay, "weight_decay", allow_zero=True, fix="Use 0 for none."))
        for name, minimum in (("num_draws", 1), ("batch_size", 1), ("num_chains", 1), ("num_burnin", 0),
                              ("num_steps_between_draws", 1), ("mala_every", 0), ("diagnostics_every", 1)):
            set_(name, check_positive_int(getattr(self, name), name, minimum))
        for name, minimum in (("chunk_draws", 1), ("memory_budget", 1), ("init_loss_examples", 2)):
            if getattr(self, name) is not None:
                set_(name, check_positive_int(getattr(self, name), name, minimum))
        check_compute_dtype(self.compute_dtype)
        check_noise(self.noise)
        if self.scheme is not None:
            check_scheme(self.scheme)
        preconditioner = get_preconditioner(self.preconditioner)
        # Store the name when it is a named default, so the config prints and serialises simply.
        set_("preconditioner", preconditioner.name if preconditioner == get_preconditioner(preconditioner.name) else preconditioner)

    # -- derived values ---------------------------------------------------------------------

    @property
    def update_scheme(self) -> str:
        """The scheme the chains step with: ``scheme``, or ``"euler"`` where it is None."""
        return self.scheme or "euler"

    @property
    def preconditioner_spec(self) -> Preconditioner:
        """The ``Preconditioner`` (α, eps, conventions) this config names."""
        return get_preconditioner(self.preconditioner)

    @property
    def num_steps(self) -> int:
        """Steps per chain: burn-in plus draws times thinning."""
        return self.num_burnin + self.num_draws * self.num_steps_between_draws

    def nbeta_for(self, n: int) -> float:
        """nβ for a dataset of ``n`` examples: ``nbeta`` if set, else n / log n."""
        return default_nbeta(n) if self.nbeta is None else self.nbeta

    def replace(self, **changes) -> SamplerConfig:
        """A copy with ``changes`` applied (validated again)."""
        check_names(changes, _FIELDS, "SamplerConfig field")
        return dataclasses.replace(self, **changes)

    # -- JSON --------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (``from_dict`` inverts it)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if isinstance(self.preconditioner, Preconditioner):
            out["preconditioner"] = self.preconditioner._asdict()
        return out

    @classmethod
    def from_dict(cls, values: dict) -> SamplerConfig:
        """The config saved by ``to_dict`` (e.g. from a result file's JSON header)."""
        if not isinstance(values, dict):
            raise TypeError(f"values must be a dict of SamplerConfig fields (from to_dict), got {type(values).__name__}.")
        values = dict(values)
        check_names(values, _FIELDS, "SamplerConfig field")
        if isinstance(values.get("preconditioner"), dict):
            values["preconditioner"] = Preconditioner(**values["preconditioner"])
        return cls(**values)


_FIELDS = tuple(f.name for f in dataclasses.fields(SamplerConfig))
_REQUIRED = tuple(f.name for f in dataclasses.fields(SamplerConfig) if f.default is dataclasses.MISSING)
_dataclass_init = SamplerConfig.__init__


@functools.wraps(_dataclass_init)
def _init(self, *args, **fields):
    # The dataclass's own errors name neither the closest field nor the valid ones.
    if args:
        raise TypeError(f"SamplerConfig takes keyword arguments only, e.g. SamplerConfig(step_size=1e-4, ...); fields: {', '.join(_FIELDS)}.")
    check_names(fields, _FIELDS, "SamplerConfig field")
    missing = [name for name in _REQUIRED if name not in fields]
    if missing:
        raise TypeError(f"SamplerConfig needs {', '.join(missing)}; e.g. SamplerConfig(step_size=1e-4, localization=1.0, "
                        "num_draws=1000, batch_size=100).")
    _dataclass_init(self, **fields)


SamplerConfig.__init__ = _init
