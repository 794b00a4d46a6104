"""``CalibrationResult``: a judged calibration grid and the recommended setting."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from slt_jax import plots, results, traces
from slt_jax.config import SamplerConfig
from slt_jax.sampler import ChainsResult, draw_steps

__all__ = ["CalibrationResult"]

# Per-draw traces of the calibration chains carried into ``to_xarray`` (those that were recorded).
_TRACES = ("loss", "grad_norm", "localization_norm", "noise_norm", "distance", "mala_acceptance", "full_loss", "center_loss")


@results.register
@dataclasses.dataclass(frozen=True)
class CalibrationResult(results.Result):
    """A calibration grid with per-setting health and the recommended setting.

    Built once by ``calibrate`` and never changed afterwards.

    Attributes:
        step_size, nbeta, localization: ``(G,)`` the settings, grouped by (nβ, γ), ε ascending;
            setting g is configuration g of ``chains``.
        metrics: dict of ``(G,)`` arrays from ``diagnostics.trace_metrics`` (after the calibration
            burn-in), plus ``empirical_bias`` (relative Richardson estimate vs. the next smaller ε
            of the group) and, for plain SGLD, ``reference_llc``.
        llc_per_chain: ``(G, num_chains)``, NaN for diverged chains.
        diverged: ``(G, num_chains)`` bool.
        problems: per setting, the names of the failed checks.
        passed: ``(G,)`` bool, a candidate: no divergence, spikes, draws below L(w*), low MALA
            acceptance or predicted bias above the tolerance.
        equilibrated: ``(G,)`` bool, the chains rose, levelled off within the burn-in and agree.
        recommended_index: index of the recommended setting, -1 if every setting diverged.
        reason: why it was chosen.
        init_loss: L_n(w*).
        burnin_draws: leading draws of each chain excluded from the metrics.
        config: the ``SamplerConfig`` ``calibrate`` was given (``chains.config`` is the schedule
            the calibration chains ran, ``calibration_schedule(config)``).
        chains: the grid's ``ChainsResult`` (leading axes ``(G, num_chains)``).
        settings: the rule's parameters and the run's settings.
    """

    step_size: np.ndarray
    nbeta: np.ndarray
    localization: np.ndarray
    metrics: dict
    llc_per_chain: np.ndarray
    diverged: np.ndarray
    problems: list
    passed: np.ndarray
    equilibrated: np.ndarray
    recommended_index: int
    reason: str
    init_loss: float
    burnin_draws: int
    config: SamplerConfig
    chains: ChainsResult
    settings: dict

    xarray_dims = {"llc_per_chain": ("setting", "chain"), "diverged": ("setting", "chain")}

    @property
    def recommended(self) -> SamplerConfig:
        """The recommended setting as a ``SamplerConfig``, ready for ``estimate_llc``.

        It is ``config`` with the chosen ``step_size``, ``nbeta`` and ``localization``, the burn-in
        the rule recommends (``num_burnin``, at least the calibration's) and the schedule the
        setting was validated at: ``num_draws`` post-burn-in draws, one step apart. Longer runs
        (``.replace(num_draws=...)``) only make the estimate more precise. Raises ``ValueError``
        when no setting can be recommended (every setting diverged).
        """
        if self.recommended_index < 0:
            raise ValueError(f"no setting can be recommended: {self.reason}")
        i = self.recommended_index
        return self.config.replace(
            step_size=float(self.step_size[i]),
            nbeta=float(self.nbeta[i]),
            localization=float(self.localization[i]),
            num_burnin=int(self.settings["recommended_num_burnin"]),
            num_draws=int(self.settings["validated_num_draws"]),
            num_steps_between_draws=1,
        )

    @property
    def reference_llc(self) -> float:
        """The calibration's one LLC figure, quoted by ``reason`` and ``repr``: for plain SGLD the
        median bias-corrected LLC of the recommended setting's equilibrated (nβ, γ) group (what its
        relative bias is measured against); for RMSProp the recommended setting's LLC. NaN when
        nothing is recommended."""
        if self.recommended_index < 0:
            return float("nan")
        metrics = self.metrics
        key = "reference_llc" if "reference_llc" in metrics else "llc_mean"
        return float(metrics[key][self.recommended_index])

    def table(self) -> str:
        """One line per setting (``*`` recommended, ``=`` equilibrated, ``x`` divergent) with its health figures."""
        m = self.metrics
        lines = [f"{'':2}{'step_size':>10} {'nbeta':>9} {'gamma':>8} {'llc':>9} {'±se':>7} {'rhat':>6} {'mala':>6} "
                 f"{'bias':>7} {'below':>6}  problems"]
        for i in range(self.step_size.size):
            mark = "*" if i == self.recommended_index else ("x" if self.diverged[i].any() else ("=" if self.equilibrated[i] else " "))
            lines.append(
                f"{mark:2}{self.step_size[i]:10.3g} {self.nbeta[i]:9.4g} {self.localization[i]:8.3g} "
                f"{m['llc_mean'][i]:9.4g} {m['llc_stderr'][i]:7.2g} {m['rhat'][i]:6.3f} {m['mala_acceptance'][i]:6.3f} "
                f"{m['relative_bias'][i]:7.1%} {m['fraction_below'][i]:6.0%}  {','.join(self.problems[i]) or 'ok'}"
            )
        return "\n".join(lines)

    def summary(self) -> str:
        """The table and the recommendation with its reason (a ``str``)."""
        return f"{self.table()}\n\n{self.reason}"

    def plot(self, path=None):
        """The grid and the recommended setting's traces: ``slt_jax.plots.plot_calibration(self, path=path)``."""
        return plots.plot_calibration(self, path=path)

    def _per_setting_variables(self) -> dict:
        variables = {f"metric_{k}": (("setting",), np.asarray(v)) for k, v in self.metrics.items()}
        variables.update(
            passed=(("setting",), np.asarray(self.passed, bool)),
            equilibrated=(("setting",), np.asarray(self.equilibrated, bool)),
            problems=(("setting",), np.array([",".join(p) for p in self.problems], dtype=str)),
        )
        return variables

    def _per_draw_variables(self) -> dict:
        chains, dims = self.chains, ("setting", "chain", "draw")
        variables = {name: (dims, np.asarray(getattr(chains, name))) for name in _TRACES if getattr(chains, name) is not None}
        variables["llc_draws"] = (dims, traces.llc_draws(chains, self.settings.get("loss_estimator", "paired")))
        return variables

    def _dataset(self):
        """The ``to_xarray()`` Dataset: per setting (``setting``, with ``step_size``, ``nbeta`` and
        ``localization`` as coordinates) the health figures ``metric_*``, ``passed``,
        ``equilibrated`` and ``problems``; ``llc_per_chain`` and ``diverged`` ``(setting, chain)``;
        the chains' traces and ``llc_draws`` = nβ(L - L*) ``(setting, chain, draw)`` (``step``
        coordinate). Attributes: ``recommended_index``, ``reason``, ``reference_llc``, the
        recommended config, the settings and the config as JSON."""
        xr = results.require("xarray")
        variables = self._per_setting_variables()
        variables.update(llc_per_chain=(("setting", "chain"), np.asarray(self.llc_per_chain)),
                         diverged=(("setting", "chain"), np.asarray(self.diverged, bool)))
        variables.update(self._per_draw_variables())
        schedule = self.chains.config
        num_draws = np.shape(self.chains.loss)[-1]
        coords = {
            "step_size": ("setting", np.asarray(self.step_size)), "nbeta": ("setting", np.asarray(self.nbeta)),
            "localization": ("setting", np.asarray(self.localization)),
            "step": ("draw", draw_steps(schedule, num_draws)),
        }
        attrs = {
            "recommended_index": int(self.recommended_index), "reason": self.reason, "reference_llc": self.reference_llc,
            "init_loss": float(self.init_loss), "burnin_draws": int(self.burnin_draws),
            "recommended": json.dumps(self.recommended.to_dict(), default=str) if self.recommended_index >= 0 else "",
        }
        return xr.Dataset({k: xr.Variable(*v) for k, v in variables.items()}, coords=coords, attrs=attrs)

    def to_dataframe(self, variables=None):
        """A pandas DataFrame from ``to_xarray()``. By default one row per setting (index ``setting``;
        columns ``step_size``, ``nbeta``, ``localization``, the ``metric_*`` figures, ``passed``,
        ``equilibrated``, ``problems``); ``variables`` (names of data variables) picks others, e.g.
        ``["llc_per_chain"]`` for one row per (setting, chain)."""
        return results.dataframe(self.to_xarray(), list(self._per_setting_variables()) if variables is None else variables)

    def arviz_source(self, index: int | None = None) -> tuple[ChainsResult, str]:
        """(one setting's chains, loss estimator) for ``slt_jax.to_arviz``; default the recommended setting."""
        if index is None:
            if self.recommended_index < 0:
                raise ValueError(f"no setting was recommended ({self.reason}); pass configuration=<setting index>.")
            index = self.recommended_index
        return self.chains.select(index), self.settings.get("loss_estimator", "paired")

    def __repr__(self) -> str:
        if self.recommended_index < 0:
            return f"CalibrationResult({self.step_size.size} settings, none recommended: {self.reason})"
        i = self.recommended_index
        return (
            f"CalibrationResult({self.step_size.size} settings; recommended step_size={self.step_size[i]:.3g}, "
            f"nbeta={self.nbeta[i]:.4g}, localization={self.localization[i]:.3g}, "
            f"num_burnin={self.settings['recommended_num_burnin']}, num_draws={self.settings['validated_num_draws']}, "
            f"reference_llc={self.reference_llc:.4g})"
        )
