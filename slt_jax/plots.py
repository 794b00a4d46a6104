"""Figures for SGLD runs (matplotlib; no pyplot, so they render headless with any backend).

Every function returns a ``matplotlib.figure.Figure`` and, given ``path``, also writes it (PNG or
any format matplotlib knows from the suffix). In a notebook the returned figure displays itself.

The functions read results by their attributes (an ``LLCResult``, a ``CalibrationResult``, ...) and
take the per-draw nβ(L - L*) and losses from ``slt_jax.traces``, so this module depends only on the
sampling core below it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from slt_jax import stats, traces
from slt_jax.sampler import ChainsResult, draw_steps

if TYPE_CHECKING:  # matplotlib loads when the first figure is drawn, not with ``import slt_jax`` (~0.4 s)
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

__all__ = ["plot_traces", "plot_calibration", "plot_llc_checkpoints", "plot_response_pca", "plot_embedding", "plot_trajectories"]


def _new_figure(figsize: tuple[float, float]) -> Figure:
    """An empty ``Figure`` (no pyplot). matplotlib is imported here, on first use: a sampling run
    that draws nothing never pays for it."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def _finish(figure: Figure, path) -> Figure:
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=110)
    return figure


def _trace_inputs(result, configuration: int):
    """(one-configuration ChainsResult, loss_estimator) of an ``LLCResult`` or a ``ChainsResult``."""
    if isinstance(result, ChainsResult):
        if not 0 <= configuration < result.num_configs:
            raise ValueError(f"configuration={configuration} but the ChainsResult has {result.num_configs} configurations.")
        return result.select(configuration), "minibatch"
    if not isinstance(getattr(result, "chains", None), ChainsResult):
        raise TypeError(f"plot_traces needs an LLCResult or a ChainsResult, got {type(result).__name__}.")
    return result.chains, result.loss_estimator


def plot_traces(result, *, burnin_draws: int = 0, configuration: int = 0, title: str | None = None, path=None) -> Figure:
    """Loss per chain (with L(w*)) and the running LLC per chain, burn-in shaded.

    Args:
        result: an ``LLCResult`` (its loss estimator's trace) or a ``ChainsResult`` (the minibatch
            loss; ``configuration`` picks one configuration of a grid).
        burnin_draws: recorded draws also treated as burn-in (shaded, excluded from the running LLC).
        configuration: configuration index g of a ``ChainsResult``.
        title: figure title.
        path: where to save the figure (optional).
    """
    chains, loss_estimator = _trace_inputs(result, configuration)
    loss = traces.loss_trace(chains, loss_estimator)[0]  # (C, D)
    draws = traces.llc_draws(chains, loss_estimator)[0]  # (C, D) nβ(L - L*)
    init_loss = float(chains.init_loss[0])
    diverged_at = np.asarray(chains.diverged_at[0])
    steps = draw_steps(chains.config, loss.shape[1])
    if not 0 <= burnin_draws < loss.shape[1]:
        raise ValueError(f"burnin_draws={burnin_draws} must lie in [0, num_draws={loss.shape[1]}).")
    figure = _new_figure((10, 3.8))
    loss_axes, llc_axes = figure.subplots(1, 2)
    burnin_end = steps[burnin_draws]
    for axes in (loss_axes, llc_axes):
        if burnin_end > 0:
            axes.axvspan(0, burnin_end, color="0.9", label="burn-in")
    kept = draws[:, burnin_draws:]
    running = np.cumsum(kept, axis=1) / np.arange(1, kept.shape[1] + 1)
    for chain in range(loss.shape[0]):
        line, = loss_axes.plot(steps, loss[chain], lw=0.7, alpha=0.8, label=f"chain {chain}")
        llc_axes.plot(steps[burnin_draws:], running[chain], lw=1.0, color=line.get_color())
        if diverged_at[chain] >= 0:
            loss_axes.axvline(diverged_at[chain], color=line.get_color(), ls=":", lw=1.0)
    loss_axes.axhline(init_loss, color="k", ls="--", lw=1.0, label="L(w*)")
    finite = loss[np.isfinite(loss)]
    if finite.size:
        low, high = np.percentile(finite, [0.5, 99.5])
        pad = 0.1 * (high - low + 1e-12)
        loss_axes.set_ylim(min(low, init_loss) - pad, high + pad)
    label = "loss" if loss_estimator == "minibatch" else f"loss ({loss_estimator})"
    loss_axes.set(xlabel="step", ylabel=label, title="loss per chain")
    llc_axes.set(xlabel="step", ylabel="running LLC  nβ(mean L − L(w*))", title="LLC per chain")
    final = running[:, -1][np.isfinite(running[:, -1])]
    if final.size:
        llc_axes.axhline(final.mean(), color="k", lw=1.0, ls="--", label=f"mean {final.mean():.3g}")
    loss_axes.legend(fontsize=7, loc="best")
    llc_axes.legend(fontsize=7, loc="best")
    if title:
        figure.suptitle(title)
    return _finish(figure, path)


def plot_calibration(calibration, *, path=None) -> Figure:
    """The calibration grid (LLC and health per setting) and the recommended setting's traces.

    Left: LLC ± std over chains against the step size, one line per (nβ, γ); filled markers pass
    every check, open ones do not, red crosses diverged; a star marks the recommendation. Middle:
    MALA acceptance and predicted relative bias with their thresholds. Right: loss traces of the
    recommended setting with the calibration burn-in shaded.

    Args:
        calibration: a ``CalibrationResult`` (read by its attributes: ``step_size``, ``nbeta``,
            ``localization``, ``metrics``, ``diverged``, ``passed``, ``equilibrated``,
            ``recommended_index``, ``init_loss``, ``burnin_draws``, ``chains``, ``settings``).
        path: where to save the figure (optional).
    """
    c = calibration
    m = c.metrics
    figure = _new_figure((15, 4.2))
    grid_axes, health_axes, trace_axes = figure.subplots(1, 3)
    bias_axes = health_axes.twinx()
    groups = {}
    for i in np.argsort(c.step_size, kind="stable"):
        groups.setdefault((c.nbeta[i], c.localization[i]), []).append(i)
    divergent = np.asarray(c.diverged).any(axis=1)
    finite = m["llc_mean"][np.isfinite(m["llc_mean"])]
    floor = finite.min() if finite.size else 0.0
    for (nbeta, localization), members in groups.items():
        members = np.array(members)
        label = f"nβ={nbeta:.4g}, γ={localization:.3g}"
        line = grid_axes.errorbar(c.step_size[members], m["llc_mean"][members], yerr=m["llc_std"][members], lw=1.0,
                                  capsize=2, label=label)
        color = line[0].get_color()
        healthy = c.passed[members] & c.equilibrated[members]
        ok = members[healthy]
        other = members[~healthy & ~divergent[members]]
        grid_axes.scatter(c.step_size[ok], m["llc_mean"][ok], color=color, zorder=3)
        grid_axes.scatter(c.step_size[other], m["llc_mean"][other], facecolor="white", edgecolor=color, zorder=3)
        bad = members[divergent[members]]
        grid_axes.scatter(c.step_size[bad], np.full(bad.size, floor), marker="x", color="red", zorder=3)
        health_axes.plot(c.step_size[members], m["mala_acceptance"][members], marker="o", color=color, lw=1.0)
        bias_axes.plot(c.step_size[members], m["relative_bias"][members], marker="s", ls="--", color=color, lw=1.0)
    r = int(c.recommended_index)
    if r >= 0:
        grid_axes.scatter([c.step_size[r]], [m["llc_mean"][r]], marker="*", s=250, color="gold", edgecolor="k",
                          zorder=4, label="recommended")
    grid_axes.set(xscale="log", xlabel="step size ε", ylabel="LLC (± std over chains)", title="calibration grid")
    grid_axes.legend(fontsize=7)
    health_axes.axhline(c.settings["mala_threshold"], color="k", lw=0.8, ls=":")
    bias_axes.axhline(c.settings["bias_tolerance"], color="0.4", lw=0.8, ls=":")
    health_axes.set(xscale="log", xlabel="step size ε", ylabel="MALA acceptance (circles)", title="health")
    bias_axes.set_ylabel("predicted relative bias (squares)")
    if np.any(np.asarray(m["relative_bias"]) > 0):
        bias_axes.set_yscale("log")
    if r >= 0:
        chosen = c.chains.select(r)
        loss = traces.loss_trace(chosen, c.settings.get("loss_estimator", "minibatch"))[0]
        steps = draw_steps(chosen.config, loss.shape[1])
        trace_axes.axvspan(steps[0], steps[min(c.burnin_draws, steps.size - 1)], color="0.9", label="calibration burn-in")
        for chain in range(loss.shape[0]):
            trace_axes.plot(steps, loss[chain], lw=0.6, alpha=0.8)
        trace_axes.axhline(c.init_loss, color="k", ls="--", lw=1.0, label="L(w*)")
        trace_axes.legend(fontsize=7)
        trace_axes.set(xlabel="step", ylabel="loss", title=f"recommended: ε={c.step_size[r]:.3g}")
    else:
        trace_axes.text(0.5, 0.5, "no recommendation:\nevery setting diverged", ha="center", va="center")
        trace_axes.set_axis_off()
    return _finish(figure, path)


def _loss_series(loss, num_checkpoints: int) -> dict[str, np.ndarray]:
    series = dict(loss) if isinstance(loss, Mapping) else {"loss": loss}
    out = {}
    for name, values in series.items():
        values = np.asarray(values, np.float64)
        if values.shape != (num_checkpoints,):
            raise ValueError(
                f"loss {name!r} has shape {values.shape}; pass one value per checkpoint ({num_checkpoints},)."
            )
        out[str(name)] = values
    return out


def _llc_columns(steps, llcs, errors, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list]:
    """Validated (steps (K,), llcs (K, M), errors (K, M) or None, M labels) of ``plot_llc_checkpoints``."""
    steps = np.asarray(steps, np.float64)
    if len(llcs) and hasattr(llcs[0], "llc_mean"):
        errors = np.array([r.llc_std for r in llcs]) if errors is None else errors
        llcs = np.array([r.llc_mean for r in llcs])
    llcs = np.asarray(llcs, np.float64)
    if llcs.ndim not in (1, 2) or llcs.shape[0] != steps.shape[0] or steps.ndim != 1:
        raise ValueError(
            f"llcs has shape {llcs.shape} but steps has shape {steps.shape}; pass one value per checkpoint "
            "((K,) or (K, num_components))."
        )
    columns = llcs.reshape(llcs.shape[0], -1)
    if errors is not None:
        errors = np.asarray(errors, np.float64)
        if errors.shape != llcs.shape:
            raise ValueError(f"errors has shape {errors.shape}; it needs the shape of llcs {llcs.shape}.")
        errors = errors.reshape(columns.shape)
    if labels is None:
        labels = ["LLC estimate"] if llcs.ndim == 1 else [f"component {m}" for m in range(columns.shape[1])]
    if len(labels) != columns.shape[1]:
        raise ValueError(f"labels has {len(labels)} names for {columns.shape[1]} columns of llcs.")
    return steps, columns, errors, list(labels)


def plot_llc_checkpoints(
    steps,
    llcs,
    errors=None,
    *,
    loss=None,
    labels=None,
    true_llc: float | None = None,
    xlabel: str = "training step",
    log_x: bool = False,
    boundaries=None,
    unreliable=None,
    path=None,
) -> Figure:
    """LLC over training checkpoints with error bars, and optionally the loss beside it.

    Args:
        steps: ``(K,)`` checkpoint positions (training steps).
        llcs: ``(K,)`` LLC means, ``(K, M)`` (one line per component, e.g. ``LLCTable.llc_mean``),
            or a list of K ``LLCResult`` (then the error bars are their std over chains).
        errors: error bar half-widths of ``llcs``' shape (e.g. ``LLCTable.llc_std``); optional.
        loss: ``(K,)`` a loss per checkpoint (e.g. ``LLCTable.init_loss``, the L_n(w*) of each
            checkpoint), or ``{name: (K,)}`` for several (train / test); drawn in a second panel
            beside the LLC, sharing its x axis.
        labels: names of the ``M`` columns of a 2-D ``llcs`` (legend).
        true_llc: a known learning coefficient to draw as a horizontal line.
        xlabel: label of the x axis.
        log_x: logarithmic x axis; checkpoints at step <= 0 are left out (of the axes' ranges too).
        boundaries: steps of stage boundaries (``slt_jax.development.detect_stages``), drawn as
            dotted vertical lines in every panel.
        unreliable: bool mask of ``llcs``' shape (e.g. ``LLCTable.unreliable``): those cells are
            drawn as hollow markers.
        path: where to save the figure (optional).
    """
    steps, columns, errors, labels = _llc_columns(steps, llcs, errors, labels)
    flags = np.zeros(columns.shape, bool) if unreliable is None else np.asarray(unreliable, bool).reshape(columns.shape)
    shown = steps > 0 if log_x else np.ones(steps.shape, bool)
    series = None if loss is None else {k: v[shown] for k, v in _loss_series(loss, steps.shape[0]).items()}
    steps, columns, flags = steps[shown], columns[shown], flags[shown]
    errors = None if errors is None else errors[shown]
    figure = _new_figure((6, 4) if series is None else (11, 4))
    if series is None:
        axes = figure.subplots()
    else:
        axes, loss_axes = figure.subplots(1, 2, sharex=True)
    for m, label in enumerate(labels):
        line = axes.errorbar(steps, columns[:, m], yerr=None if errors is None else errors[:, m], marker="o", capsize=3,
                             lw=1.2, label=str(label))
        if flags[:, m].any():  # hollow markers over the unreliable cells
            axes.plot(steps[flags[:, m]], columns[flags[:, m], m], ls="", marker="o", markerfacecolor="white",
                      markeredgecolor=line.lines[0].get_color(), zorder=3)
    if flags.any():
        axes.plot([], [], ls="", marker="o", markerfacecolor="white", markeredgecolor="0.3", label="unreliable")
    if true_llc is not None:
        axes.axhline(true_llc, color="k", ls="--", lw=1.0, label=f"λ = {true_llc:g}")
    axes.set(xlabel=xlabel, ylabel="LLC", title="LLC over checkpoints", xscale="log" if log_x else "linear")
    axes.legend(fontsize=8)
    if series is not None:
        for name, values in series.items():
            loss_axes.plot(steps, values, marker=".", lw=1.2, label=name)
        loss_axes.set(xlabel=xlabel, ylabel="loss", title="loss over checkpoints", xscale="log" if log_x else "linear")
        if np.all(np.concatenate(list(series.values())) > 0):
            loss_axes.set_yscale("log")
        loss_axes.legend(fontsize=8)
    for boundary in () if boundaries is None else np.atleast_1d(np.asarray(boundaries, np.float64)):
        for panel in figure.axes:
            panel.axvline(boundary, color="0.4", ls=":", lw=1.2)
    return _finish(figure, path)


def plot_trajectories(projections, steps, explained_variance_ratio=None, *, labels=None, path=None) -> Figure:
    """Trajectories in the plane of two principal components (``slt_jax.development.trajectory_pca``).

    Args:
        projections: ``(R, K, >= 2)`` per run, per checkpoint, the coordinates.
        steps: ``(R, K)`` the checkpoints' steps (the first and last are annotated).
        explained_variance_ratio: ``(>= 2,)`` for the axis labels (optional).
        labels: ``R`` run names (legend).
        path: where to save the figure (optional).
    """
    projections = np.asarray(projections, np.float64)
    steps = np.asarray(steps)
    if projections.ndim != 3 or projections.shape[2] < 2 or steps.shape != projections.shape[:2]:
        raise ValueError(f"projections {projections.shape} must be (runs, checkpoints, >= 2) and steps {steps.shape} (runs, checkpoints).")
    labels = [f"run {r}" for r in range(projections.shape[0])] if labels is None else list(labels)
    if len(labels) != projections.shape[0]:
        raise ValueError(f"labels has {len(labels)} names for {projections.shape[0]} runs.")
    figure = _new_figure((6, 5))
    axes = figure.subplots()
    for run, label in zip(projections, labels):
        line = axes.plot(run[:, 0], run[:, 1], marker=".", lw=1.2, label=str(label))[0]
        axes.scatter(run[-1, 0], run[-1, 1], color=line.get_color(), marker="s", zorder=3)
    for r in range(projections.shape[0]):
        for k in (0, projections.shape[1] - 1):
            axes.annotate(f"{steps[r, k]:g}", projections[r, k, :2], fontsize=7, xytext=(3, 3), textcoords="offset points")
    ratio = [None, None] if explained_variance_ratio is None else list(np.asarray(explained_variance_ratio)[:2])
    axes.set(xlabel="PC1" + ("" if ratio[0] is None else f" ({ratio[0]:.0%})"),
             ylabel="PC2" + ("" if ratio[1] is None else f" ({ratio[1]:.0%})"), title="trajectories over training")
    axes.legend(fontsize=8)
    return _finish(figure, path)


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")


def _scatter_categories(axes, points: np.ndarray, codes: np.ndarray, num_categories: int) -> None:
    """``points`` (n, 2) of category ``codes`` (n,): a colour and a marker per category, semi-transparent.

    Interleaved layers: the points, shuffled, are drawn in rounds, each round every category in a
    rotated order, so no category is always drawn last (on top of the others).
    """
    order = np.random.default_rng(0).permutation(points.shape[0])
    for r, chunk in enumerate(np.array_split(order, min(8, points.shape[0]))):
        for k in np.roll(np.arange(num_categories), -r):
            chosen = chunk[codes[chunk] == k]
            if chosen.size:
                axes.scatter(points[chosen, 0], points[chosen, 1], s=16, color=f"C{k % 10}",
                             marker=_MARKERS[k % len(_MARKERS)], alpha=0.65, edgecolors="white", linewidths=0.3)


def _category_handles(categories) -> list[Line2D]:
    from matplotlib.lines import Line2D

    return [Line2D([], [], ls="", marker=_MARKERS[k % len(_MARKERS)], color=f"C{k % 10}", label=str(value))
            for k, value in enumerate(categories)]


def plot_response_pca(
    chi,
    labels=None,
    *,
    component_names=None,
    standardize: bool = True,
    center_rows: bool = False,
    components: tuple[int, int] = (0, 1),
    path=None,
) -> Figure:
    """PCA scatter of a response (susceptibility) matrix: one point per probe.

    docs/conventions.md §3: raw columns are not comparable across components, so columns are
    z-scored (``standardize``) and rows optionally centred (``center_rows`` removes the uniform mode)
    before the PCA. Arrows show the loadings of each component (column).

    Categories are drawn interleaved (shuffled points in rounds, a fixed seed), semi-transparent with
    a marker per category, so no category hides another by being drawn last; the loading labels sit
    inside the axes, clear of the title.

    Args:
        chi: ``(num_probes, num_components)`` array.
        labels: optional ``(num_probes,)`` category per probe (colours, markers and legend).
        component_names: optional names of the columns, for the loading arrows.
        standardize, center_rows: preprocessing, as above.
        components: which two principal components to plot.
        path: where to save the figure (optional).
    """
    chi = np.asarray(chi, np.float64)
    if chi.ndim != 2 or min(chi.shape) < 2:
        raise ValueError(f"chi must be a (num_probes, num_components) array with both sides >= 2, got shape {chi.shape}.")
    if not np.all(np.isfinite(chi)):
        raise ValueError("chi contains NaN or inf; drop those probes first.")
    if max(components) >= min(chi.shape):
        raise ValueError(f"components={components}: chi of shape {chi.shape} has {min(chi.shape)} principal components.")
    if component_names is not None and len(component_names) != chi.shape[1]:
        raise ValueError(f"component_names has {len(component_names)} names for {chi.shape[1]} columns of chi.")
    x = chi - chi.mean(axis=0)
    if standardize:
        x = x / np.where(chi.std(axis=0) > 0, chi.std(axis=0), 1.0)
    if center_rows:
        x = x - x.mean(axis=1, keepdims=True)
    u, singular, vt = np.linalg.svd(x, full_matrices=False)
    # The sign convention of susceptibility.response_pca: each axis's largest loading is positive,
    # so the picture and a table of that function's loadings agree.
    signs = stats.fix_signs(vt)
    u, vt = u * signs, vt * signs[:, None]
    explained = singular**2 / max(np.sum(singular**2), 1e-300)
    a, b = components
    scores = u[:, [a, b]] * singular[[a, b]]
    figure = _new_figure((6, 5))
    axes = figure.subplots()
    if labels is None:
        axes.scatter(scores[:, 0], scores[:, 1], s=14, alpha=0.7, edgecolors="white", linewidths=0.3)
    else:
        labels = np.asarray(labels)
        if labels.shape != (chi.shape[0],):
            raise ValueError(f"labels has shape {labels.shape}; pass one label per probe ({chi.shape[0]},).")
        categories, codes = np.unique(labels, return_inverse=True)
        _scatter_categories(axes, scores, codes, categories.size)
        axes.legend(handles=_category_handles(categories), fontsize=7, markerscale=1.2, loc="best", framealpha=0.8)
    loadings = vt[[a, b]].T  # (num_components, 2)
    scale = np.abs(scores).max() / max(np.abs(loadings).max(), 1e-12) * 0.8
    tips = loadings * scale
    for j, (tip_x, tip_y) in enumerate(tips):
        axes.annotate("", xy=(tip_x, tip_y), xytext=(0, 0), arrowprops=dict(arrowstyle="->", color="0.4", lw=0.8))
        if component_names is not None:
            # Outward from the origin, anchored at the tip, clipped to the axes (never over the title).
            axes.annotate(str(component_names[j]), xy=(tip_x, tip_y), xytext=(3 * np.sign(tip_x), 3 * np.sign(tip_y)),
                          textcoords="offset points", ha="left" if tip_x >= 0 else "right",
                          va="bottom" if tip_y >= 0 else "top", fontsize=7, color="0.25", annotation_clip=True,
                          clip_on=True)
    # Room for the points, the arrow tips and their labels inside the axes.
    extent = np.vstack([scores, tips * 1.25, np.zeros((1, 2))])
    low, high = extent.min(axis=0), extent.max(axis=0)
    pad = 0.08 * np.maximum(high - low, 1e-12)
    axes.set_xlim(low[0] - pad[0], high[0] + pad[0])
    axes.set_ylim(low[1] - pad[1], high[1] + pad[1])
    axes.set(xlabel=f"PC{a + 1} ({explained[a]:.0%})", ylabel=f"PC{b + 1} ({explained[b]:.0%})")
    axes.set_title("response matrix PCA", pad=10)
    return _finish(figure, path)


def _panels(values) -> tuple[list, list[str] | None]:
    """One entry per panel: an array, a list, or a ``{step: array}`` dict (panel titles from its keys)."""
    if isinstance(values, Mapping):
        return list(values.values()), [str(key) for key in values]
    if isinstance(values, (list, tuple)):
        return list(values), None
    return [values], None


def plot_embedding(
    coordinates,
    labels=None,
    *,
    titles=None,
    axis_labels: tuple[str, str] = ("dimension 1", "dimension 2"),
    title: str | None = None,
    path=None,
) -> Figure:
    """Scatter of row embeddings (e.g. ``slt_jax.analysis.embed``), coloured by a label per row.

    Several embeddings in one space (one per checkpoint: the development view) become one panel
    each, with shared axes and one colour per category across panels. To see every checkpoint in
    one panel instead, concatenate the coordinates and pass the checkpoint of each row as labels.

    Args:
        coordinates: ``(N, 2)``, or a list or ``{step: (N_t, 2)}`` dict of them (one panel each).
        labels: a category per row (token type, cluster, checkpoint): ``(N,)``, or one array per
            panel in the same form as ``coordinates``.
        titles: a title per panel (default: the dict's keys, if any).
        axis_labels: labels of the x and y axes.
        title: the figure's title.
        path: where to save the figure (optional).
    """
    panels, keys = _panels(coordinates)
    panels = [np.asarray(points, np.float64) for points in panels]
    for k, points in enumerate(panels):
        if points.ndim != 2 or points.shape[1] != 2 or not np.all(np.isfinite(points)):
            raise ValueError(f"coordinates[{k}] has shape {points.shape}; pass finite (N, 2) coordinates (embed(..., num_components=2)).")
    titles = keys if titles is None else [str(t) for t in titles]
    if titles is not None and len(titles) != len(panels):
        raise ValueError(f"titles has {len(titles)} entries for {len(panels)} panels.")
    if labels is not None:
        labels = [np.asarray(values) for values in _panels(labels)[0]]
        if len(labels) != len(panels) or any(l.shape != (p.shape[0],) for l, p in zip(labels, panels)):
            raise ValueError(f"labels: pass one label per row of every panel, shapes {[(p.shape[0],) for p in panels]}.")
        categories = np.unique(np.concatenate(labels))
    figure = _new_figure((4.2 * len(panels) + 0.8, 4.2))
    axes_list = np.atleast_1d(figure.subplots(1, len(panels), sharex=True, sharey=True, squeeze=False)[0])
    for k, (axes, points) in enumerate(zip(axes_list, panels)):
        if labels is None:
            axes.scatter(points[:, 0], points[:, 1], s=14, alpha=0.7, edgecolors="white", linewidths=0.3)
        else:
            _scatter_categories(axes, points, np.searchsorted(categories, labels[k]), categories.size)
        axes.set(xlabel=axis_labels[0], ylabel=axis_labels[1] if k == 0 else None)
        if titles is not None:
            axes.set_title(titles[k], fontsize=9)
    if labels is not None:
        axes_list[-1].legend(handles=_category_handles(categories), fontsize=7, markerscale=1.2, loc="best", framealpha=0.8)
    if title is not None:
        figure.suptitle(title)
    return _finish(figure, path)
