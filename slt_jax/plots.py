"""Figures for SGLD runs (matplotlib; no pyplot, so they render headless with any backend).

Every function returns a ``matplotlib.figure.Figure`` and, given ``path``, also writes it (PNG or
any format matplotlib knows from the suffix). In a notebook the returned figure displays itself.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

__all__ = ["plot_traces", "plot_calibration", "plot_llc_checkpoints", "plot_response_pca"]


def _finish(figure: Figure, path) -> Figure:
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=110)
    return figure


def _trace_inputs(result, config: int):
    """(loss (C, D), init_loss, nbeta, steps (D,), num_burnin, diverged_at (C,), title) of a result."""
    from slt_jax.llc import LLCResult

    if isinstance(result, LLCResult):
        chains, loss, nbeta = result.chains, np.asarray(result.loss_trace, np.float64), result.nbeta
        diverged_at = np.asarray(chains.diverged_at)
    else:  # ChainsOutput
        chains = result
        loss = np.asarray(chains.loss, np.float64)
        diverged_at = np.asarray(chains.diverged_at)
        nbeta = np.ravel(chains.settings["nbeta"])
        if loss.ndim == 3:
            loss, diverged_at = loss[config], diverged_at[config]
            nbeta = nbeta[config if nbeta.size > 1 else 0]
        else:
            nbeta = nbeta[0]
    s = chains.settings
    num_burnin = int(s.get("num_burnin", 0))
    steps = num_burnin + np.arange(loss.shape[1]) * int(s.get("num_steps_between_draws", 1))
    return loss, float(chains.init_loss), float(nbeta), steps, num_burnin, diverged_at


def plot_traces(result, *, burnin_draws: int = 0, config: int = 0, title: str | None = None, path=None) -> Figure:
    """Loss per chain (with L(w*)) and the running LLC per chain, burn-in shaded.

    Args:
        result: an ``LLCResult`` or a ``ChainsOutput`` (``config`` picks one of a grid).
        burnin_draws: recorded draws also treated as burn-in (shaded, excluded from the running LLC).
        config: configuration index of a grid ``ChainsOutput``.
        title: figure title.
        path: where to save the figure (optional).
    """
    loss, init_loss, nbeta, steps, num_burnin, diverged_at = _trace_inputs(result, config)
    figure = Figure(figsize=(10, 3.8))
    loss_axes, llc_axes = figure.subplots(1, 2)
    burnin_end = steps[burnin_draws] if burnin_draws < steps.size else steps[-1]
    for axes in (loss_axes, llc_axes):
        if burnin_end > 0:
            axes.axvspan(0, burnin_end, color="0.9", label="burn-in")
    shifted = nbeta * (loss[:, burnin_draws:] - init_loss)
    running = np.cumsum(shifted, axis=1) / np.arange(1, shifted.shape[1] + 1)
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
    loss_axes.set(xlabel="step", ylabel="loss", title="loss per chain")
    llc_axes.set(xlabel="step", ylabel="running LLC  nβ(mean L − L(w*))", title="LLC per chain")
    with np.errstate(all="ignore"):
        final = running[:, -1][np.isfinite(running[:, -1])] if running.size else np.array([])
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
    """
    c = calibration
    m = c.metrics
    figure = Figure(figsize=(15, 4.2))
    grid_axes, health_axes, trace_axes = figure.subplots(1, 3)
    bias_axes = health_axes.twinx()
    groups = {}
    for i in np.argsort(c.step_size, kind="stable"):
        groups.setdefault((c.nbeta[i], c.localization[i]), []).append(i)
    divergent = c.diverged.any(axis=1)
    finite = m["llc_mean"][np.isfinite(m["llc_mean"])]
    floor = finite.min() if finite.size else 0.0
    for (nbeta, localization), members in groups.items():
        members = np.array(members)
        label = f"nβ={nbeta:.4g}, γ={localization:.3g}"
        line = grid_axes.errorbar(c.step_size[members], m["llc_mean"][members], yerr=m["llc_std"][members], lw=1.0,
                                  capsize=2, label=label)
        color = line[0].get_color()
        ok = members[c.passed[members] & c.equilibrated[members]]
        other = members[~(c.passed[members] & c.equilibrated[members]) & ~divergent[members]]
        grid_axes.scatter(c.step_size[ok], m["llc_mean"][ok], color=color, zorder=3)
        grid_axes.scatter(c.step_size[other], m["llc_mean"][other], facecolor="white", edgecolor=color, zorder=3)
        bad = members[divergent[members]]
        grid_axes.scatter(c.step_size[bad], np.full(bad.size, floor), marker="x", color="red", zorder=3)
        health_axes.plot(c.step_size[members], m["mala_acceptance"][members], marker="o", color=color, lw=1.0)
        bias_axes.plot(c.step_size[members], m["relative_bias"][members], marker="s", ls="--", color=color, lw=1.0)
    if c.recommended >= 0:
        r = c.recommended
        grid_axes.scatter([c.step_size[r]], [m["llc_mean"][r]], marker="*", s=250, color="gold", edgecolor="k",
                          zorder=4, label="recommended")
    grid_axes.set(xscale="log", xlabel="step size ε", ylabel="LLC (± std over chains)", title="calibration grid")
    grid_axes.legend(fontsize=7)
    health_axes.axhline(c.settings["mala_threshold"], color="k", lw=0.8, ls=":")
    bias_axes.axhline(c.settings["bias_tolerance"], color="0.4", lw=0.8, ls=":")
    health_axes.set(xscale="log", xlabel="step size ε", ylabel="MALA acceptance (circles)", title="health")
    bias_axes.set_ylabel("predicted relative bias (squares)")
    bias_axes.set_yscale("log")
    if c.recommended >= 0:
        r = c.recommended
        loss = np.asarray(c.chains.loss[r], np.float64)
        if c.chains.center_loss is not None and c.settings.get("loss_estimator") == "paired":
            loss = loss - np.asarray(c.chains.center_loss[r], np.float64) + c.init_loss
        steps = np.arange(loss.shape[1]) * int(c.settings.get("num_steps_between_draws", 1))
        trace_axes.axvspan(0, steps[c.burnin_draws], color="0.9", label="calibration burn-in")
        for chain in range(loss.shape[0]):
            trace_axes.plot(steps, loss[chain], lw=0.6, alpha=0.8)
        trace_axes.axhline(c.init_loss, color="k", ls="--", lw=1.0, label="L(w*)")
        trace_axes.legend(fontsize=7)
        trace_axes.set(xlabel="step", ylabel="loss", title=f"recommended: ε={c.step_size[r]:.3g}")
    else:
        trace_axes.text(0.5, 0.5, "no recommendation:\nevery setting diverged", ha="center", va="center")
        trace_axes.set_axis_off()
    return _finish(figure, path)


def plot_llc_checkpoints(
    checkpoints,
    llc,
    llc_error=None,
    *,
    true_llc: float | None = None,
    xlabel: str = "training step",
    log_x: bool = False,
    path=None,
) -> Figure:
    """LLC over training checkpoints with error bars.

    Args:
        checkpoints: ``(K,)`` checkpoint positions (training steps).
        llc: ``(K,)`` LLC means, or a list of K ``LLCResult`` (then the error bars are their std
            over chains).
        llc_error: ``(K,)`` error bar half-widths (e.g. std over chains); optional.
        true_llc: a known learning coefficient to draw as a horizontal line.
        xlabel: label of the x axis.
        log_x: logarithmic x axis.
        path: where to save the figure (optional).
    """
    checkpoints = np.asarray(checkpoints, np.float64)
    if len(llc) and hasattr(llc[0], "llc_mean"):
        llc_error = np.array([r.llc_std for r in llc]) if llc_error is None else llc_error
        llc = np.array([r.llc_mean for r in llc])
    llc = np.asarray(llc, np.float64)
    if llc.shape != checkpoints.shape:
        raise ValueError(f"llc has shape {llc.shape} but checkpoints has shape {checkpoints.shape}; pass one value per checkpoint.")
    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    axes.errorbar(checkpoints, llc, yerr=None if llc_error is None else np.asarray(llc_error, np.float64), marker="o",
                  capsize=3, lw=1.2, label="LLC estimate")
    if true_llc is not None:
        axes.axhline(true_llc, color="k", ls="--", lw=1.0, label=f"λ = {true_llc:g}")
    axes.set(xlabel=xlabel, ylabel="LLC", title="LLC over checkpoints", xscale="log" if log_x else "linear")
    axes.legend(fontsize=8)
    return _finish(figure, path)


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

    SCIENCE.md §3: raw columns are not comparable across components, so columns are z-scored
    (``standardize``) and rows optionally centred (``center_rows`` removes the uniform mode) before
    the PCA. Arrows show the loadings of each component (column).

    Args:
        chi: ``(num_probes, num_components)`` array.
        labels: optional ``(num_probes,)`` category per probe (colours and legend).
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
    x = chi - chi.mean(axis=0)
    if standardize:
        x = x / np.where(chi.std(axis=0) > 0, chi.std(axis=0), 1.0)
    if center_rows:
        x = x - x.mean(axis=1, keepdims=True)
    u, singular, vt = np.linalg.svd(x, full_matrices=False)
    explained = singular**2 / max(np.sum(singular**2), 1e-300)
    a, b = components
    scores = u[:, [a, b]] * singular[[a, b]]
    figure = Figure(figsize=(6, 5))
    axes = figure.subplots()
    if labels is None:
        axes.scatter(scores[:, 0], scores[:, 1], s=12)
    else:
        labels = np.asarray(labels)
        if labels.shape != (chi.shape[0],):
            raise ValueError(f"labels has shape {labels.shape}; pass one label per probe ({chi.shape[0]},).")
        for value in np.unique(labels):
            chosen = labels == value
            axes.scatter(scores[chosen, 0], scores[chosen, 1], s=12, label=str(value))
        axes.legend(fontsize=7, markerscale=1.5)
    scale = np.abs(scores).max() / max(np.abs(vt[[a, b]]).max(), 1e-12) * 0.8
    for j in range(chi.shape[1]):
        axes.annotate("", xy=(vt[a, j] * scale, vt[b, j] * scale), xytext=(0, 0),
                      arrowprops=dict(arrowstyle="->", color="0.4", lw=0.8))
        if component_names is not None:
            axes.text(vt[a, j] * scale, vt[b, j] * scale, str(component_names[j]), fontsize=7, color="0.3")
    axes.set(xlabel=f"PC{a + 1} ({explained[a]:.0%})", ylabel=f"PC{b + 1} ({explained[b]:.0%})",
             title="response matrix PCA")
    return _finish(figure, path)
