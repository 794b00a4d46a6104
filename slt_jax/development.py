"""Development over training: LLC (and susceptibilities) per checkpoint, stage boundaries, trajectory PCA.

``track_development`` takes a training run's checkpoints (``sj.train(...).checkpoints`` or any list of
params pytrees of one structure, with their steps) and returns a ``DevelopmentResult``: the LLC of
every checkpoint x component x chain (one ``estimate_llc_table`` program per group), the training and
held-out loss of every checkpoint, and optionally the susceptibilities of every checkpoint (one
``estimate_susceptibilities_table`` program). ``DevelopmentResult.to_xarray()`` gives one
``xarray.Dataset`` with dims ``(checkpoint, component, chain)`` (and ``(checkpoint, row, column)``
for the susceptibilities); ``slt_jax.save`` / ``slt_jax.load`` store it like every other result.

Stage boundaries (``detect_stages``) follow the developmental-interpretability convention (Hoogland
et al. 2024): a stage ends where the LLC's trend changes, i.e. at the critical points of the
smoothed LLC curve: its local maxima and minima, and, with ``plateaus=True``, the ends of the
plateaus where its slope falls below a fraction of the largest slope. The curve is smoothed with a
Gaussian kernel over the checkpoint index (checkpoints are usually spaced evenly in step or in log
step) and its slope is taken against log(step + 1) (or step, ``log_steps=False``).

``trajectory_pca`` is the joint-trajectory analysis of the transient-ridge study: the models'
outputs on a fixed input set, one row per checkpoint (of one or several runs), centred and
projected on their principal components (``numpy.linalg.svd``), so developmental turns show
as bends of the trajectory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from slt_jax import kernels, plots, results, stats
from slt_jax._src import frontdoor, validation
from slt_jax.config import SamplerConfig
from slt_jax.llc import LLCTable, estimate_llc_table
from slt_jax._src.program import full_data_loss
from slt_jax.susceptibility import SusceptibilityTable, estimate_susceptibilities_table
from slt_jax.types import Batch, KeyLike, LossFn, Mask, Params

__all__ = ["DevelopmentResult", "Stages", "TrajectoryPCA", "detect_stages", "track_development", "trajectory_pca"]


@results.register
@dataclasses.dataclass(frozen=True)
class Stages(results.Result):
    """Stage boundaries of a curve over checkpoints (``detect_stages``).

    Attributes:
        boundaries: ``(B,)`` the steps at which a stage ends (ascending).
        kinds: ``B`` strings: ``"maximum"``, ``"minimum"`` (critical points of the smoothed curve)
            or ``"plateau start"`` / ``"plateau end"``.
        indices: ``(B,)`` checkpoint indices of the boundaries.
        smoothed: ``(K,)`` the smoothed curve.
        slope: ``(K,)`` its slope against log(step + 1) (or step).
        steps: ``(K,)`` the checkpoints' steps.
    """

    boundaries: np.ndarray
    kinds: list[str]
    indices: np.ndarray
    smoothed: np.ndarray
    slope: np.ndarray
    steps: np.ndarray

    xarray_dims = {"boundaries": ("boundary",), "indices": ("boundary",), "smoothed": ("checkpoint",),
                   "slope": ("checkpoint",), "steps": ("checkpoint",)}

    @property
    def intervals(self) -> list[tuple[float, float]]:
        """The stages as ``(first step, last step)`` pairs, split at the boundaries."""
        edges = [float(self.steps[0])] + [float(b) for b in self.boundaries] + [float(self.steps[-1])]
        return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]

    def __repr__(self) -> str:
        count = len(self.intervals)
        stages = f"{count} stage" if count == 1 else f"{count} stages"
        if not len(self.boundaries):
            return f"Stages({stages}; no boundaries)"
        marks = ", ".join(f"{b:g} ({k})" for b, k in zip(self.boundaries, self.kinds))
        return f"Stages({stages}; {'boundary at step' if len(self.boundaries) == 1 else 'boundaries at steps'} {marks})"

    def _dataset(self):
        return super()._dataset().assign_coords(kind=("boundary", np.asarray(self.kinds, dtype=str)))


def detect_stages(
    steps,
    values,
    *,
    smoothing: float = 1.0,
    log_steps: bool = True,
    min_change: float = 0.05,
    errors=None,
    z: float = 3.0,
    plateaus: bool = False,
    plateau_slope: float = 0.1,
) -> Stages:
    """Stage boundaries of a curve over checkpoints: the critical points of its smoothed version.

    Args:
        steps: ``(K,)`` increasing checkpoint steps.
        values: ``(K,)`` the curve (e.g. ``development.llc.llc_mean[:, 0]``); NaN entries (unreliable
            cells you masked) are filled by linear interpolation before smoothing.
        smoothing: standard deviation of the Gaussian kernel, in checkpoints (0 = none).
        log_steps: take the slope against log(step + 1) (checkpoints spaced logarithmically) or step.
        min_change: a critical point counts only if the smoothed curve moves by at least this
            fraction of its range between it and each neighbouring critical point (or end); this
            drops wiggles of the noise.
        errors: ``(K,)`` standard errors of ``values`` (e.g. ``llc_std / sqrt(num_chains)``); then a
            critical point must also move the curve by ``z`` x their median on both sides (a
            relative ``min_change`` alone finds "stages" in pure noise, whose range is the noise).
        z: the significance multiple for ``errors``.
        plateaus: also mark where the curve enters and leaves a plateau (|slope| below
            ``plateau_slope`` x the largest |slope|): the boundaries of a staircase, whose steps have
            no maxima or minima.
        plateau_slope: the plateau threshold as a fraction of the largest |slope|.

    Returns:
        A ``Stages``.

    >>> import numpy as np, slt_jax as sj
    >>> steps = np.arange(0, 1000, 10)
    >>> llc = np.where(steps < 400, steps / 40.0, 10.0 - (steps - 400) / 100.0)   # rises, then falls
    >>> sj.development.detect_stages(steps, llc, log_steps=False).boundaries
    array([400.])
    """
    steps = np.asarray(steps, np.float64)
    values = np.asarray(values, np.float64)
    if steps.ndim != 1 or values.shape != steps.shape:
        raise ValueError(f"steps {steps.shape} and values {values.shape} must be 1-D of the same length (one per checkpoint).")
    if steps.size < 3:
        raise ValueError(f"detect_stages needs at least 3 checkpoints, got {steps.size}; keep more checkpoints (sj.train(checkpoint_every=...)).")
    if np.any(np.diff(steps) <= 0):
        raise ValueError("steps must be strictly increasing; sort the checkpoints by step.")
    if log_steps and steps[0] < 0:
        raise ValueError("log_steps=True needs steps >= 0; pass log_steps=False for negative positions.")
    finite = np.isfinite(values)
    if finite.sum() < 3:
        raise ValueError("values has fewer than 3 finite entries; no curve to read stages from.")
    if not finite.all():
        values = np.interp(np.arange(values.size), np.flatnonzero(finite), values[finite])
    if smoothing < 0 or not 0 <= min_change < 1 or not 0 < plateau_slope < 1:
        raise ValueError(f"smoothing={smoothing} must be >= 0, min_change={min_change} in [0, 1), plateau_slope={plateau_slope} in (0, 1).")
    from scipy.ndimage import gaussian_filter1d  # scipy loads on first use, not with ``import slt_jax``

    smoothed = gaussian_filter1d(values, smoothing, mode="nearest") if smoothing > 0 else values.copy()
    position = np.log1p(steps) if log_steps else steps
    slope = np.gradient(smoothed, position)
    span = float(np.ptp(smoothed)) or 1.0
    threshold = min_change * span
    if errors is not None:
        errors = np.asarray(errors, np.float64)
        if errors.shape != values.shape:
            raise ValueError(f"errors has shape {errors.shape}; it needs one standard error per checkpoint {values.shape}.")
        threshold = max(threshold, z * float(np.nanmedian(errors)))

    # Critical points: sign changes of the slope, kept only when the curve moves by min_change x range
    # on both sides (between consecutive extrema).
    sign = np.sign(slope)
    candidates = [i for i in range(1, len(sign)) if sign[i] != 0 and sign[i - 1] != 0 and sign[i] != sign[i - 1]]
    candidates = [i if abs(slope[i]) < abs(slope[i - 1]) else i - 1 for i in candidates]
    kept: list[int] = []
    for i in candidates:
        previous = kept[-1] if kept else 0
        if abs(smoothed[i] - smoothed[previous]) >= threshold:
            kept.append(i)
    while kept and abs(smoothed[-1] - smoothed[kept[-1]]) < threshold:
        kept.pop()
    marks: dict[int, str] = {}
    reach = max(1, int(np.ceil(2 * smoothing)))  # smoothing can shift an extremum by ~σ: refine on the data
    for i in kept:
        left, right = smoothed[max(i - 1, 0)], smoothed[min(i + 1, len(smoothed) - 1)]
        kind = "maximum" if smoothed[i] >= max(left, right) else "minimum"
        low, high = max(i - reach, 0), min(i + reach + 1, len(values))
        window = values[low:high]
        marks[low + int(np.argmax(window) if kind == "maximum" else np.argmin(window))] = kind
    if plateaus:
        flat = np.abs(slope) < plateau_slope * np.max(np.abs(slope))
        for i in range(1, len(flat)):
            if flat[i] and not flat[i - 1]:
                marks.setdefault(i, "plateau start")
            elif flat[i - 1] and not flat[i]:
                marks.setdefault(i - 1, "plateau end")
    indices = np.array(sorted(marks), dtype=np.int64)
    return Stages(boundaries=steps[indices], kinds=[marks[i] for i in indices], indices=indices, smoothed=smoothed,
                  slope=slope, steps=steps)


@results.register
@dataclasses.dataclass(frozen=True)
class DevelopmentResult(results.Result):
    """A training run read through its checkpoints (``track_development``).

    Attributes:
        steps: ``(K,)`` the checkpoints' training steps.
        llc: the ``LLCTable`` ``(checkpoint, component, chain)``.
        train_loss: ``(K,)`` full-data mean loss of each checkpoint on the training data (the LLC
            table's L_n(w*): estimated, not exact, where ``llc.chains.settings["init_loss"]`` says
            so, e.g. the mean of the recorded L_B(w*) under ``loss_estimator="paired"``).
        test_loss: ``(K,)`` the same on the held-out data (NaN without ``held_out``).
        susceptibilities: the ``SusceptibilityTable`` over the checkpoints (``probes=``), else None.
    """

    steps: np.ndarray
    llc: LLCTable
    train_loss: np.ndarray
    test_loss: np.ndarray
    susceptibilities: SusceptibilityTable | None = None

    def stages(self, component: str | int = 0, **options) -> Stages:
        """``detect_stages`` of one component's LLC curve, with its standard errors over chains as
        ``errors`` (unreliable cells are kept; see ``llc.unreliable``); ``options`` go to
        ``detect_stages``."""
        m = self.llc.components.index(component) if isinstance(component, str) else int(component)
        chains = np.sum(~self.llc.diverged[:, m], axis=-1)
        errors = self.llc.llc_std[:, m] / np.sqrt(np.maximum(chains, 1))
        options.setdefault("errors", np.where(np.isfinite(errors), errors, 0.0))
        return detect_stages(self.steps, self.llc.llc_mean[:, m], **options)

    def _dataset(self):
        """The LLC table's variables (dims ``checkpoint, component, chain``), ``train_loss`` /
        ``test_loss`` ``(checkpoint,)`` and, with susceptibilities, ``chi`` and ``chi_stderr``
        ``(checkpoint, row, column)``."""
        dataset = self.llc._dataset()
        dataset["train_loss"] = (("checkpoint",), self.train_loss)
        dataset["test_loss"] = (("checkpoint",), self.test_loss)
        if self.susceptibilities is not None:
            table = self.susceptibilities
            dataset["chi"] = (("checkpoint", "row", "column"), table.chi)
            dataset["chi_stderr"] = (("checkpoint", "row", "column"), table.stderr)
            dataset = dataset.assign_coords(column=list(table.components), row=np.arange(table.chi.shape[1]))
        return dataset

    def summary(self) -> str:
        """The LLC table (unreliable rows flagged) and the stage boundaries of the first component."""
        return repr(self) + "\n" + repr(self.stages())

    def to_dataframe(self, variables=None):
        """A pandas DataFrame, one row per (checkpoint, component): LLC mean/std, ESS, R-hat, the
        losses and an ``unreliable`` flag (``variables``: a subset of those columns)."""
        import pandas as pd  # pandas loads on first export, not with ``import slt_jax`` (~0.3 s)

        k, m = self.llc.llc_mean.shape
        frame = pd.DataFrame({
            "step": np.repeat(self.steps, m), "component": np.tile(self.llc.components, k),
            "llc_mean": self.llc.llc_mean.ravel(), "llc_std": self.llc.llc_std.ravel(), "ess": self.llc.ess.ravel(),
            "rhat": self.llc.rhat.ravel(), "unreliable": self.llc.unreliable.ravel(),
            "train_loss": np.repeat(self.train_loss, m), "test_loss": np.repeat(self.test_loss, m),
        })
        return frame if variables is None else frame[["step", "component"] + ([variables] if isinstance(variables, str) else list(variables))]

    def plot(self, component: str | int | None = None, *, stages: Stages | None = None, log_x: bool = False, path=None):
        """LLC (every component, or one) and the losses against step, stage boundaries marked
        (default: ``self.stages()`` of the first component), unreliable cells (``llc.unreliable``)
        as hollow markers; ``log_x`` leaves out step 0."""
        columns = list(range(len(self.llc.components))) if component is None else [
            self.llc.components.index(component) if isinstance(component, str) else int(component)]
        stages = self.stages(columns[0]) if stages is None else stages
        loss = {"train": self.train_loss} if np.all(np.isnan(self.test_loss)) else {"train": self.train_loss, "held out": self.test_loss}
        return plots.plot_llc_checkpoints(
            self.steps, self.llc.llc_mean[:, columns], self.llc.llc_std[:, columns], loss=loss,
            labels=[self.llc.components[m] for m in columns], log_x=log_x, boundaries=stages.boundaries,
            unreliable=self.llc.unreliable[:, columns], path=path,
        )

    def __repr__(self) -> str:
        return (f"DevelopmentResult({len(self.steps)} checkpoints x {len(self.llc.components)} components"
                f"{', susceptibilities' if self.susceptibilities else ''})\n" + self.llc.table())


def track_development(
    loss_fn: LossFn, checkpoints: Sequence[Params], data: Batch, config: SamplerConfig, *, key: KeyLike,
    steps: Sequence[int] | None = None,
    components: Mapping[str, Mask | None] | None = None,
    held_out: Batch | None = None,
    probes: Mapping[str, Batch] | None = None,
    probe_components: Mapping[str, Mask | Callable | None] | None = None,
    loss_estimator: str = "minibatch",
    progress: bool = True,
) -> DevelopmentResult:
    """LLC (per component), losses and optionally susceptibilities of every checkpoint of a run.

    Args:
        loss_fn, data, config, key, loss_estimator, progress: as for ``estimate_llc_table`` (one
            config for every checkpoint, so the curve is comparable; ``step_size="auto"``
            calibrates once, on the last checkpoint).
        checkpoints: a list of params pytrees of one structure (``sj.train(...).checkpoints``).
        steps: the training step of each checkpoint (``sj.train(...).checkpoint_steps``; default
            0..K-1).
        components: ``{name: mask or None}`` for per-component LLCs (default: the whole model).
        held_out: held-out data for ``test_loss`` (optional).
        probes: ``{name: batch}`` to also estimate susceptibilities at every checkpoint
            (``estimate_susceptibilities_table``; same key and config).
        probe_components: the susceptibilities' components (default: ``components``).

    Returns:
        A ``DevelopmentResult``. Mismatched checkpoint structures raise a ``ValueError`` before anything
        compiles.

    >>> import jax.numpy as jnp, slt_jax as sj
    >>> loss_fn = lambda w, batch: 0.5 * (batch["y"] - batch["x"] @ w) ** 2
    >>> data = {"x": jnp.eye(2).repeat(10, axis=0), "y": jnp.ones(20)}
    >>> config = sj.SamplerConfig(step_size=1e-2, nbeta=10.0, localization=1.0, num_draws=50, batch_size=20)
    >>> dev = sj.track_development(loss_fn, [jnp.zeros(2), jnp.ones(2)], data, config, key=0, steps=[0, 100],
    ...                            held_out=data, progress=False)
    >>> dev.llc.llc_per_chain.shape, dev.train_loss.round(3).tolist()
    ((2, 1, 4), [0.5, 0.0])
    """
    checkpoints, steps = frontdoor.check_checkpoints(checkpoints, steps)
    if held_out is not None:
        validation.check_data(held_out)
    table = estimate_llc_table(loss_fn, list(checkpoints), data, config, key=key, components=components, steps=steps,
                               loss_estimator=loss_estimator, progress=progress)
    batch_size = table.chains.config.batch_size
    train_loss = np.asarray(table.init_loss, np.float64)
    test_loss = np.full(len(checkpoints), np.nan)
    if held_out is not None:
        held_out_loss = kernels.mixed_precision(loss_fn, table.chains.config.compute_dtype)  # as the train loss
        test_loss = np.array([float(full_data_loss(held_out_loss, c, held_out, batch_size)) for c in checkpoints])
    susceptibilities = None
    if probes is not None:
        susceptibilities = estimate_susceptibilities_table(
            loss_fn, checkpoints, data, table.chains.config, key=key, probes=probes,
            components=components if probe_components is None else probe_components, steps=steps, progress=progress,
        )
    return DevelopmentResult(steps=steps, llc=table, train_loss=train_loss, test_loss=test_loss, susceptibilities=susceptibilities)


@results.register
@dataclasses.dataclass(frozen=True)
class TrajectoryPCA(results.Result):
    """Principal components of the models' outputs along training (``trajectory_pca``).

    Attributes:
        projections: ``(R, K, num_components)`` each run's checkpoints projected on the components.
        explained_variance_ratio: ``(num_components,)``.
        components: ``(num_components, F)`` the principal directions in output space (F = inputs x
            outputs per input).
        mean: ``(F,)`` the mean output vector that was subtracted.
        steps: ``(R, K)`` the checkpoints' steps.
    """

    projections: np.ndarray
    explained_variance_ratio: np.ndarray
    components: np.ndarray
    mean: np.ndarray
    steps: np.ndarray

    xarray_dims = {"projections": ("run", "checkpoint", "pc"), "explained_variance_ratio": ("pc",),
                   "components": ("pc", "feature"), "mean": ("feature",), "steps": ("run", "checkpoint")}

    def summary(self) -> str:
        """Runs, checkpoints and the explained variance of each component."""
        runs, checkpoints, _ = self.projections.shape
        return (f"TrajectoryPCA({runs} runs x {checkpoints} checkpoints; explained variance ratio "
                f"{np.round(self.explained_variance_ratio, 3).tolist()})")

    def plot(self, labels: Sequence[str] | None = None, path=None):
        """Each run's trajectory in the plane of the first two components (steps annotated)."""
        return plots.plot_trajectories(self.projections, self.steps, self.explained_variance_ratio, labels=labels, path=path)


def trajectory_pca(
    apply_fn: Callable[[Params, jax.Array], jax.Array],
    runs: Sequence[Sequence[Params]],
    inputs,
    *,
    steps: Sequence[Sequence[int]] | None = None,
    num_components: int = 3,
) -> TrajectoryPCA:
    """Joint PCA of the outputs ``apply_fn(params, inputs)`` of every checkpoint of every run.

    Args:
        apply_fn: ``apply_fn(params, inputs) -> outputs`` (any shape; flattened per checkpoint).
        runs: a list of runs, each a list of params pytrees (one run: ``[checkpoints]``).
        inputs: the fixed input set (one batch).
        steps: per run, the checkpoints' steps (default 0..K-1).
        num_components: principal components kept (at most the number of checkpoints).

    Returns:
        A ``TrajectoryPCA``; all runs share one set of components (fitted on every checkpoint of
        every run), so their trajectories are comparable. The SVD's sign is fixed so that each
        component's largest loading is positive (deterministic output).

    >>> import jax.numpy as jnp, slt_jax as sj
    >>> run = [jnp.full(3, t) for t in (0.0, 1.0, 2.0, 3.0)]
    >>> pca = sj.development.trajectory_pca(lambda w, x: x * w, [run], jnp.ones(3), num_components=2)
    >>> pca.projections.shape, round(float(pca.explained_variance_ratio[0]), 6)
    ((1, 4, 2), 1.0)
    """
    if isinstance(runs, Mapping) or not isinstance(runs, (list, tuple)) or not runs or not all(
            isinstance(run, (list, tuple)) and run for run in runs):
        raise TypeError("runs must be a non-empty list of runs, each a non-empty list of params pytrees; one run is [checkpoints].")
    lengths = {len(run) for run in runs}
    if len(lengths) != 1:
        raise ValueError(f"every run needs the same number of checkpoints, got {sorted(lengths)}; subsample them to a common schedule.")
    num_checkpoints = lengths.pop()
    steps = np.tile(np.arange(num_checkpoints), (len(runs), 1)) if steps is None else np.asarray(steps)
    if steps.shape != (len(runs), num_checkpoints):
        raise ValueError(f"steps has shape {steps.shape}; it needs (runs, checkpoints) = {(len(runs), num_checkpoints)}.")
    total = len(runs) * num_checkpoints
    if not 1 <= num_components <= total:
        raise ValueError(f"num_components={num_components} must be between 1 and the number of checkpoints ({total}).")
    for run in runs:
        frontdoor.check_checkpoints(run)
    inputs = jax.tree.map(jnp.asarray, inputs)
    forward = jax.jit(lambda p: jnp.ravel(apply_fn(p, inputs)))
    outputs = np.stack([np.asarray(forward(p), np.float64) for run in runs for p in run])  # (R K, F)
    mean = outputs.mean(axis=0)
    centred = outputs - mean
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    vt = vt[:num_components]
    vt = vt * stats.fix_signs(vt)[:, None]
    variance = singular**2
    ratio = variance[:num_components] / variance.sum() if variance.sum() > 0 else np.zeros(num_components)
    projections = (centred @ vt.T).reshape(len(runs), num_checkpoints, num_components)
    return TrajectoryPCA(projections=projections, explained_variance_ratio=ratio, components=vt, mean=mean, steps=steps)
