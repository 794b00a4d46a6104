"""One result protocol: every estimator's result summarizes, converts and saves the same way.

A result is a frozen dataclass that inherits ``Result`` and registers itself with ``@register``:

* ``summary() -> str``: what the estimate is and what looks wrong (a structured report, where there
  is one, is an attribute, e.g. ``LLCResult.health``);
* ``to_xarray()``: an ``xarray.Dataset`` with named dimensions; the default walks the dataclass's
  array fields (dims from the class attribute ``xarray_dims = {"field": ("dim", ...)}``); a class
  with its own layout overrides ``_dataset()``. Every Dataset carries ``attrs`` ``result_type``,
  ``settings``, ``config`` and ``versions``;
* ``to_dataframe(variables=None)``: ``to_xarray()`` as a pandas DataFrame;
* ``plot(...)`` where a picture means something (else ``NotImplementedError``);
* ``arviz_source(index)``: the one-configuration chains and loss estimator ``slt_jax.to_arviz``
  reads (only results with LLC draws);
* ``slt_jax.save`` / ``slt_jax.load`` round-trip it (``slt_jax.io`` resolves the class by its
  registered name; ``io`` never imports an estimator).

To adopt the protocol (e.g. a new estimator's result)::

    @results.register
    @dataclasses.dataclass(frozen=True)
    class MyResult(results.Result):
        values: np.ndarray
        xarray_dims = {"values": ("row",)}

        def summary(self) -> str:
            return f"MyResult({self.values.shape[0]} rows)"

The helpers below (``chains_variables``, ``draw_coords``, ``hyperparameter_coords``,
``scalar_attrs``) build Datasets from a ``ChainsResult`` for results that carry one.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import platform
import sys
from typing import ClassVar

import jax
import numpy as np

from slt_jax.config import SamplerConfig
from slt_jax.sampler import ChainsResult, draw_steps

__all__ = [
    "Result",
    "Table",
    "table_of",
    "register",
    "resolve",
    "registered_types",
    "chains_variables",
    "chains_dataset",
    "draw_coords",
    "hyperparameter_coords",
    "scalar_attrs",
    "dataset",
    "dataframe",
    "describe",
    "versions",
    "require",
]

_REGISTRY: dict[str, type] = {}


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register(cls: type) -> type:
    """Class decorator: lets ``slt_jax.load`` rebuild ``cls`` by its registered name.

    Every slt_jax result registers itself; a dataclass or NamedTuple defined outside slt_jax that
    is saved inside a result (or on its own) needs it too.
    """
    _REGISTRY[_type_name(cls)] = cls
    return cls


def registered_types() -> tuple[type, ...]:
    """Every registered type (the result types of the imported estimators, and user types)."""
    return tuple(_REGISTRY.values())


def resolve(name: str) -> type:
    """The class of a saved type name: a registered one, else an slt_jax class found by its module path."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    module_name, _, qualname = name.rpartition(".")
    if module_name.split(".")[0] != "slt_jax":
        raise ValueError(f"the file holds a {name}, which is not an slt_jax type; decorate {qualname} with "
                         "@slt_jax.results.register (and import it) first.")
    obj = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def require(module: str):
    """Imports an optional dependency (xarray, arviz, pandas) with an install hint."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{module} is needed for this conversion: pip install {module} (or slt_jax[interop]).") from None


def versions() -> dict:
    """The versions of slt_jax, jax, numpy and Python (saved with every result)."""
    return {"slt_jax": getattr(sys.modules.get("slt_jax"), "__version__", "unknown"), "jax": jax.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def describe(result) -> tuple[dict | None, dict | None]:
    """(settings, config dict) of a result's run, for file headers and Dataset attributes."""
    chains = result if isinstance(result, ChainsResult) else getattr(result, "chains", None)
    settings = getattr(result, "settings", None)
    if not isinstance(settings, dict):
        settings = getattr(chains, "settings", None) if isinstance(chains, ChainsResult) else None
    config = getattr(result, "config", None)
    if not isinstance(config, SamplerConfig):
        config = getattr(chains, "config", None)
    return settings, config.to_dict() if isinstance(config, SamplerConfig) else None


# ---------------------------------------------------------------------------------------------
# Dataset pieces of a ChainsResult

TRACES = ("loss", "grad_norm", "localization_norm", "noise_norm", "distance", "mala_acceptance", "full_loss", "center_loss")


def _path_name(prefix: str, path) -> str:
    return ".".join([prefix] + [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path])


def _tree_variables(prefix: str, tree, dims: tuple[str, ...]) -> dict:
    variables = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = _path_name(prefix, path)
        leaf = np.asarray(leaf)
        variables[name] = (dims + tuple(f"{name}_dim_{k}" for k in range(leaf.ndim - len(dims))), leaf)
    return variables


def _final_position_variables(chains: ChainsResult, lead: tuple[str, ...]) -> dict:
    """One variable per sampled leaf: ``(config, chain, ...)`` when every configuration's piece has
    the same shape, else one ``final_positions[g]...`` variable per configuration."""
    positions = chains.final_positions
    shapes = {tuple(np.shape(x) for x in jax.tree.leaves(p)) for p in positions}
    structures = {jax.tree.structure(p) for p in positions}
    if len(shapes) == 1 and len(structures) == 1:
        stacked = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *positions)
        return _tree_variables("final_positions", stacked, lead + ("chain",))
    variables = {}
    for g, position in enumerate(positions):
        variables.update(_tree_variables(f"final_positions[{g}]", position, ("chain",)))
    return variables


def chains_variables(chains: ChainsResult, lead: tuple[str, ...] = ("config",)) -> dict:
    """The chains' arrays as ``{name: (dims, array)}`` with dims ``lead + (chain, draw)``;
    ``lead=()`` squeezes a one-configuration ``ChainsResult``."""
    squeeze = (lambda x: np.asarray(x)[0]) if not lead else np.asarray
    variables = {}
    for name in TRACES:
        value = getattr(chains, name)
        if value is not None:
            variables[name] = (lead + ("chain", "draw"), squeeze(value))
    variables["diverged"] = (lead + ("chain",), squeeze(chains.diverged))
    variables["diverged_at"] = (lead + ("chain",), squeeze(chains.diverged_at))
    if chains.observed is not None:
        variables.update(_tree_variables("observed", jax.tree.map(squeeze, chains.observed), lead + ("chain", "draw")))
    if chains.accumulator is not None:
        variables.update(_tree_variables("accumulator", jax.tree.map(squeeze, chains.accumulator), lead + ("chain",)))
    if lead:
        variables.update(_final_position_variables(chains, lead))
        for name in ("init_loss", "center_index", "variant_index", "num_sampled"):
            variables[name] = (lead, np.asarray(getattr(chains, name)))
    else:
        variables.update(_tree_variables("final_positions", chains.final_positions[0], ("chain",)))
    return variables


def draw_coords(chains: ChainsResult) -> dict:
    """``{"step": ("draw", sampler step of each draw)}``."""
    return {"step": ("draw", draw_steps(chains.config, np.shape(chains.loss)[-1]))}


def hyperparameter_coords(chains: ChainsResult, dim: str) -> dict:
    """Each configuration's hyperparameters as coordinates along ``dim``."""
    return {name: (dim, np.asarray(value)) for name, value in chains.hyperparameters._asdict().items()}


def scalar_attrs(result) -> dict:
    """The dataclass's number, string and bool fields (Dataset attributes)."""
    return {
        f.name: getattr(result, f.name)
        for f in dataclasses.fields(result)
        if isinstance(getattr(result, f.name), (int, float, str, bool, np.number))
    }


def _standard_attrs(result) -> dict:
    settings, config = describe(result)
    return {"settings": json.dumps(settings, default=str), "config": json.dumps(config, default=str),
            "result_type": _type_name(type(result)), "versions": json.dumps(versions())}


def chains_dataset(chains: ChainsResult):
    """A ``ChainsResult`` as an ``xarray.Dataset`` ``(config, chain, draw)``, the hyperparameters,
    centre and variant index of each configuration as coordinates / variables."""
    xr = require("xarray")
    variables = chains_variables(chains, ("config",))
    coords = {**draw_coords(chains), **hyperparameter_coords(chains, "config")}
    attrs = dict(num_steps=chains.num_steps, compile_seconds=chains.compile_seconds,
                 sampling_seconds=chains.sampling_seconds, **_standard_attrs(chains))
    return xr.Dataset({k: xr.Variable(*v) for k, v in variables.items()}, coords=coords, attrs=attrs)


def _generic_variables(result) -> dict:
    """A dataclass's array fields (dims from ``xarray_dims``) and its row-label NamedTuples."""
    dims = getattr(result, "xarray_dims", {})
    variables = {}
    for f in dataclasses.fields(result):
        value = getattr(result, f.name)
        if isinstance(value, (np.ndarray, jax.Array)) and not np.asarray(value).dtype.hasobject:
            value = np.asarray(value)
            variables[f.name] = (dims.get(f.name, tuple(f"{f.name}_dim_{k}" for k in range(value.ndim))), value)
        elif isinstance(value, tuple) and hasattr(value, "_fields"):  # e.g. ProbeLabels: row labels
            for name, leaf in zip(value._fields, value):
                if isinstance(leaf, np.ndarray) and leaf.ndim == 1 and not leaf.dtype.hasobject:
                    variables[f"{f.name}_{name}"] = ((f"{f.name}_dim_0",), leaf)
    return variables


def dataset(result):
    """Any dataclass as an ``xarray.Dataset``: a ``Result`` through its protocol, a ``ChainsResult``
    with its dims, any other dataclass by its array fields."""
    if isinstance(result, Result):
        return result.to_xarray()
    if isinstance(result, ChainsResult):
        return chains_dataset(result)
    if not dataclasses.is_dataclass(result) or isinstance(result, type):
        raise TypeError(f"to_xarray needs an slt_jax result (a dataclass), got {type(result).__name__}.")
    xr = require("xarray")
    variables = _generic_variables(result)
    attrs = {**scalar_attrs(result), **_standard_attrs(result)}
    return xr.Dataset({k: xr.Variable(*v) for k, v in variables.items()}, attrs=attrs)


def dataframe(data, variables=None):
    """``data`` (an ``xarray.Dataset``), or its ``variables`` only, as a pandas DataFrame."""
    if variables is not None:
        variables = [variables] if isinstance(variables, str) else list(variables)
        missing = [v for v in variables if v not in data.data_vars]
        if missing:
            raise ValueError(f"variables {missing} are not in this result's Dataset; it has {sorted(data.data_vars)}.")
        data = data[variables]
    return data.to_dataframe()


class _ChainsConfig:
    """``result.config``: the ``SamplerConfig`` the chains ran with (None for a result without chains).

    A non-data descriptor, not a property: a result whose dataclass has a ``config`` field of its own
    (``CalibrationResult``: the config it was given) keeps that field, and the dataclass machinery
    sees no inherited default (``__get__`` on the class raises ``AttributeError``)."""

    def __get__(self, instance, owner=None) -> SamplerConfig | None:
        if instance is None:
            raise AttributeError("config")
        chains = getattr(instance, "chains", None)
        return chains.config if isinstance(chains, ChainsResult) else None


class Result:
    """The protocol every slt_jax result follows (a mixin for frozen dataclasses); see the module docstring."""

    xarray_dims: ClassVar[dict[str, tuple[str, ...]]] = {}

    def summary(self) -> str:
        """What the result is and what looks wrong, as text."""
        return repr(self)

    def _dataset(self):
        """The Dataset's variables, coordinates and attributes (override for a custom layout)."""
        xr = require("xarray")
        return xr.Dataset({k: xr.Variable(*v) for k, v in _generic_variables(self).items()}, attrs=scalar_attrs(self))

    def to_xarray(self):
        """An ``xarray.Dataset`` with named dimensions and the run's settings, config and versions as attributes."""
        result = self._dataset()
        result.attrs.update(_standard_attrs(self))
        return result

    def to_dataframe(self, variables=None):
        """A pandas DataFrame from ``to_xarray()``: one row per combination of the dims of ``variables``
        (names of data variables; default every one, broadcast against each other)."""
        return dataframe(self.to_xarray(), variables)

    def plot(self, *args, **kwargs):
        """A figure of the result (``matplotlib.figure.Figure``) where one means something."""
        raise NotImplementedError(f"{type(self).__name__} has no plot; use to_xarray() / to_dataframe().")

    def arviz_source(self, index: int | None = None) -> tuple[ChainsResult, str]:
        """(one-configuration chains, loss estimator) that ``slt_jax.to_arviz`` converts."""
        raise TypeError(f"to_arviz needs a result with LLC draws (LLCResult, CalibrationResult, ChainsResult), "
                        f"got {type(self).__name__}.")

    config = _ChainsConfig()


class Table(Result):
    """A one-checkpoint result type stacked over checkpoints (see ``table_of``).

    Every field of the cell type is a field of the table: the ``shared`` ones (the same at every
    checkpoint: labels, names, nβ) as they are, the others with a leading checkpoint axis; ``steps``
    ``(K,)`` comes first and ``chains`` is the whole run (each checkpoint's configurations in a block).
    """

    cell_type: ClassVar[type]
    shared: ClassVar[frozenset[str]]

    @classmethod
    def stack(cls, steps: np.ndarray, cells: list, chains: ChainsResult):
        """The table of ``cells`` (one result per checkpoint) from the run ``chains``."""
        values = {name: getattr(cells[0], name) if name in cls.shared else np.stack([getattr(c, name) for c in cells])
                  for name in _cell_fields(cls)}
        return cls(steps=np.asarray(steps), chains=chains, **values)

    def result(self, checkpoint: int = 0):
        """The one-checkpoint result of checkpoint index ``checkpoint`` (0..K-1), as the
        one-checkpoint estimator returns it."""
        k = int(checkpoint)
        if not 0 <= k < len(self.steps):
            raise IndexError(f"checkpoint={checkpoint}: this table has checkpoints 0..{len(self.steps) - 1} (an index, not a step).")
        per = self.chains.num_configs // len(self.steps)
        values = {name: getattr(self, name) if name in self.shared else getattr(self, name)[k] for name in _cell_fields(self)}
        return self.cell_type(chains=self.chains.select(range(k * per, (k + 1) * per)), **values)


def _cell_fields(table) -> list[str]:
    return [f.name for f in dataclasses.fields(table.cell_type) if f.name != "chains"]


def table_of(cell_type: type, *, shared: tuple[str, ...] = ()):
    """Class decorator: a frozen dataclass ``Table`` whose fields are ``steps`` and ``cell_type``'s
    fields (``shared`` ones unstacked), so a table's fields are declared once, by its cell type."""

    def build(cls: type) -> type:
        annotations = {"steps": "np.ndarray"}
        annotations.update({f.name: f.type for f in dataclasses.fields(cell_type)})
        cls.__annotations__ = {**annotations, **cls.__dict__.get("__annotations__", {})}
        cls.cell_type, cls.shared = cell_type, frozenset(shared)
        return dataclasses.dataclass(frozen=True)(cls)

    return build
