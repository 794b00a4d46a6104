"""Saving results without pickle, and converting them to xarray / ArviZ.

``save(path, result)`` writes one ``.npz``: every array of the result (walked through dataclass
fields, NamedTuples, dicts, lists and tuples) as its own entry, plus ``__header__``, a JSON document
holding the structure, every non-array value (settings, floats, strings, the ``SamplerConfig`` via
``to_dict``) and the versions of slt_jax, jax, numpy and Python. ``load(path)`` rebuilds the
object; arrays come back as numpy arrays with their dtypes and shapes. Nothing is pickled, and
``np.load(path, allow_pickle=False)`` reads the file with numpy alone.

A result is the product of an expensive run, so ``save`` never loses it: a value it cannot store
without pickle (an arbitrary Python object, an object array) is left out, recorded in the header,
loaded back as ``None``, and named in a ``UserWarning``; everything else is written. Only a bad
path raises.

Any frozen dataclass defined in an ``slt_jax`` module round-trips with no extra code; classes
defined elsewhere need ``@slt_jax.io.register``. A dataclass may give
``xarray_dims = {"field": ("dim", ...)}`` (a class attribute) to name its arrays' dimensions in
``to_xarray``.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import json
import math
import pathlib
import platform
import re
import sys
import warnings

import jax
import numpy as np

from slt_jax import bif, susceptibility, traces
from slt_jax.calibration import CalibrationResult
from slt_jax.config import SamplerConfig
from slt_jax.development import Development
from slt_jax.llc import LLCResult, LLCTable
from slt_jax.sampler import ChainsResult

__all__ = ["save", "load", "read_header", "register", "to_xarray", "to_dataframe", "to_arviz", "FORMAT", "RESULT_TYPES"]

FORMAT = "slt_jax.result"
_FORMAT_VERSION = 2
_REGISTRY: dict[str, type] = {}

# The result types of the estimators (each round-trips through save / load; tested).
RESULT_TYPES = (
    LLCResult, LLCTable, ChainsResult, CalibrationResult, susceptibility.SusceptibilityResult, bif.BIFResult, Development,
)


def register(cls: type) -> type:
    """Allows ``load`` to rebuild ``cls`` (a dataclass or NamedTuple defined outside slt_jax)."""
    _REGISTRY[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return cls


def _type_name(obj) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _resolve(name: str) -> type:
    if name in _REGISTRY:
        return _REGISTRY[name]
    module_name, _, qualname = name.rpartition(".")
    if module_name.split(".")[0] != "slt_jax":
        raise ValueError(f"the file holds a {name}, which is not an slt_jax type; call slt_jax.io.register({qualname}) first.")
    obj = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


# ---------------------------------------------------------------------------------------------
# encoding


class _Unsaveable(Exception):
    """A value that cannot be stored without pickle."""


def _array_key(path: str, arrays: dict) -> str:
    key = re.sub(r"[^A-Za-z0-9_.\-\[\]]", "_", path) or "root"
    while key in arrays or key == "__header__":
        key += "_"
    return key


def _encode_leaf(obj, path: str, arrays: dict):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, jax.Array) and jax.dtypes.issubdtype(obj.dtype, jax.dtypes.prng_key):
        key = _array_key(path, arrays)
        arrays[key] = np.asarray(jax.random.key_data(obj))
        return {"__prng_key__": key, "impl": str(jax.random.key_impl(obj))}
    if isinstance(obj, (np.ndarray, np.generic, jax.Array)):
        array = np.asarray(obj)
        if array.dtype.hasobject:
            raise _Unsaveable("an object array (needs pickle); convert it to a numeric or string array")
        key = _array_key(path, arrays)
        arrays[key] = array
        return {"__array__": key, "scalar": isinstance(obj, np.generic)}
    raise _Unsaveable(f"a {type(obj).__name__} (results may hold arrays, numbers, strings, None, dataclasses, "
                      "NamedTuples, dicts, lists and tuples)")


def _encode(obj, path: str, arrays: dict, unsaved: list):
    """The JSON node of ``obj``; arrays go to ``arrays``; what cannot be saved goes to ``unsaved``."""
    if obj is None or isinstance(obj, (bool, str)) or (isinstance(obj, int) and not isinstance(obj, bool)):
        return obj
    recurse = lambda value, where: _encode(value, where, arrays, unsaved)
    try:
        if isinstance(obj, SamplerConfig):
            return {"__config__": recurse(obj.to_dict(), path)}
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            fields = {f.name: recurse(getattr(obj, f.name), f"{path}.{f.name}") for f in dataclasses.fields(obj)}
            return {"__dataclass__": _type_name(obj), "fields": fields}
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):
            fields = {name: recurse(value, f"{path}.{name}") for name, value in zip(obj._fields, obj)}
            return {"__namedtuple__": _type_name(obj), "fields": fields}
        if isinstance(obj, dict):
            if all(isinstance(k, str) for k in obj):
                return {"__dict__": {k: recurse(v, f"{path}.{k}") for k, v in obj.items()}}
            return {"__items__": [[recurse(k, f"{path}.key{i}"), recurse(v, f"{path}[{i}]")] for i, (k, v) in enumerate(obj.items())]}
        if isinstance(obj, list):
            return [recurse(v, f"{path}[{i}]") for i, v in enumerate(obj)]
        if isinstance(obj, tuple):
            return {"__tuple__": [recurse(v, f"{path}[{i}]") for i, v in enumerate(obj)]}
        return _encode_leaf(obj, path, arrays)
    except _Unsaveable as error:
        reason = str(error)
    except Exception as error:  # noqa: BLE001 - never lose a result to one odd value
        reason = f"{type(error).__name__}: {error}"
    where = path.lstrip(".") or "result"
    unsaved.append((where, type(obj).__name__, reason))
    return {"__unsaved__": type(obj).__name__, "reason": reason}


def _decode(node, arrays):
    if node is None or isinstance(node, (bool, str, int, float)):
        return node
    if isinstance(node, list):
        return [_decode(v, arrays) for v in node]
    if "__array__" in node:
        array = arrays[node["__array__"]]
        return array[()] if node.get("scalar") else array
    if "__float__" in node:
        return float(node["__float__"])
    if "__unsaved__" in node:
        return None
    if "__prng_key__" in node:
        return jax.random.wrap_key_data(arrays[node["__prng_key__"]], impl=node["impl"])
    if "__config__" in node:
        return SamplerConfig.from_dict(_decode(node["__config__"], arrays))
    if "__dict__" in node:
        return {k: _decode(v, arrays) for k, v in node["__dict__"].items()}
    if "__items__" in node:
        return {_decode(k, arrays): _decode(v, arrays) for k, v in node["__items__"]}
    if "__tuple__" in node:
        return tuple(_decode(v, arrays) for v in node["__tuple__"])
    if "__namedtuple__" in node:
        cls = _resolve(node["__namedtuple__"])
        return cls(**{k: _decode(v, arrays) for k, v in node["fields"].items()})
    if "__dataclass__" in node:
        cls = _resolve(node["__dataclass__"])
        values = {k: _decode(v, arrays) for k, v in node["fields"].items()}
        init = {f.name for f in dataclasses.fields(cls) if f.init}
        obj = cls(**{k: v for k, v in values.items() if k in init})
        for k, v in values.items():
            if k not in init:
                object.__setattr__(obj, k, v)
        return obj
    raise ValueError(f"unrecognised node in the file's header: {sorted(node)}")


def _versions() -> dict:
    return {"slt_jax": getattr(sys.modules.get("slt_jax"), "__version__", "unknown"), "jax": jax.__version__, "numpy": np.__version__, "python": platform.python_version()}


def _chains_of(result) -> ChainsResult | None:
    return result if isinstance(result, ChainsResult) else getattr(result, "chains", None)


def _description(result) -> tuple[dict | None, dict | None]:
    """(settings, config dict) of a result's run, for the header and xarray attributes."""
    chains = _chains_of(result)
    settings = getattr(result, "settings", None)
    if not isinstance(settings, dict):
        settings = getattr(chains, "settings", None) if isinstance(chains, ChainsResult) else None
    config = getattr(result, "config", None)
    if not isinstance(config, SamplerConfig):
        config = getattr(chains, "config", None)
    return settings, config.to_dict() if isinstance(config, SamplerConfig) else None


def save(path, result, *, compress: bool = False) -> pathlib.Path:
    """Writes ``result`` (any slt_jax result) to ``path`` (``.npz`` is appended if missing).

    Values that cannot be stored without pickle are left out and named in a ``UserWarning``
    (they load back as ``None``); the rest is always written.

    Returns:
        The path written.

    >>> import numpy as np, slt_jax as sj, tempfile, os
    >>> path = sj.io.save(os.path.join(tempfile.mkdtemp(), "run"), {"llc": np.arange(3.0), "nbeta": 10.0})
    >>> sj.io.load(path)["nbeta"]
    10.0
    """
    path = pathlib.Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    path.parent.mkdir(parents=True, exist_ok=True)  # a bad path raises here, before any work
    arrays: dict = {}
    unsaved: list = []
    content = _encode(result, "", arrays, unsaved)
    settings, config = _description(result)
    header = {
        "format": FORMAT,
        "format_version": _FORMAT_VERSION,
        "type": _type_name(result),
        "versions": _versions(),
        "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": _encode(settings, "settings", {}, []),
        "config": config,
        "unsaved": [{"path": p, "type": t, "reason": r} for p, t, r in unsaved],
        "content": content,
    }
    writer = np.savez_compressed if compress else np.savez
    with open(path, "wb") as file:
        writer(file, __header__=np.array(json.dumps(header)), **arrays)
    if unsaved:
        listed = "; ".join(f"{p} ({t}: {r})" for p, t, r in unsaved)
        warnings.warn(f"{path}: saved everything except {len(unsaved)} value(s) that cannot be stored without pickle, "
                      f"which will load as None: {listed}.", UserWarning, stacklevel=2)
    return path


def read_header(path) -> dict:
    """The JSON header of a saved result (type, versions, settings, config, structure, what was
    left out) without loading arrays."""
    with np.load(path, allow_pickle=False) as contents:
        if "__header__" not in contents.files:
            raise ValueError(f"{path} is not an slt_jax result file (no __header__ entry).")
        header = json.loads(str(contents["__header__"]))
    if header.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown format {header.get('format')!r}.")
    return header


def load(path):
    """Reads a result written by ``save``; arrays come back as numpy arrays."""
    header = read_header(path)
    if header["format_version"] > _FORMAT_VERSION:
        raise ValueError(f"{path} was written by a newer slt_jax ({header['versions']['slt_jax']}); upgrade to read it.")
    with np.load(path, allow_pickle=False) as contents:
        arrays = {name: contents[name] for name in contents.files if name != "__header__"}
    return _decode(header["content"], arrays)


# ---------------------------------------------------------------------------------------------
# xarray / ArviZ


def _require(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{module} is needed for this conversion: pip install {module} (or slt_jax[interop]).") from None


_TRACES = ("loss", "grad_norm", "localization_norm", "noise_norm", "distance", "mala_acceptance", "full_loss", "center_loss")


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


def _chains_variables(chains: ChainsResult, lead: tuple[str, ...] = ("config",)) -> dict:
    """The chains' arrays with dims ``lead + (chain, draw)``; ``lead=()`` squeezes one configuration."""
    squeeze = (lambda x: np.asarray(x)[0]) if not lead else np.asarray
    variables = {}
    for name in _TRACES:
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


def _draw_coords(chains: ChainsResult) -> dict:
    config = chains.config
    num_draws = np.shape(chains.loss)[-1]
    return {"step": ("draw", config.num_burnin + np.arange(num_draws) * config.num_steps_between_draws)}


def _hyper_coords(chains: ChainsResult, dim: str) -> dict:
    return {name: (dim, np.asarray(value)) for name, value in chains.hyperparameters._asdict().items()}


def _scalar_attrs(result) -> dict:
    return {
        f.name: getattr(result, f.name)
        for f in dataclasses.fields(result)
        if isinstance(getattr(result, f.name), (int, float, str, bool, np.number))
    }


def to_xarray(result):
    """An ``xarray.Dataset`` with named dimensions.

    * ``ChainsResult``: ``(config, chain, draw)``, with the hyperparameters, centre and variant
      index of each configuration as coordinates / variables;
    * ``LLCResult``: ``(chain, draw)`` (its one configuration);
    * ``LLCTable``: ``table.to_xarray()``, ``(checkpoint, component, chain)``;
    * ``Development``: ``development.to_xarray()``, the table's dims plus the losses and
      susceptibilities per checkpoint;
    * ``CalibrationResult``: ``(setting, chain, draw)``;
    * any other slt_jax result dataclass: its arrays (dims from its ``xarray_dims``).

    Numbers and strings become attributes; ``attrs["settings"]`` and ``attrs["config"]`` hold the
    run's settings and ``SamplerConfig`` as JSON.
    """
    xr = _require("xarray")
    if isinstance(result, (LLCTable, Development)):
        return result.to_xarray()
    attrs = {}
    coords: dict = {}
    if isinstance(result, LLCResult):
        chains = result.chains
        variables = _chains_variables(chains, ())
        variables.update(
            llc_per_chain=(("chain",), result.llc_per_chain),
            llc_trace=(("chain", "draw"), result.llc_trace),
            loss_trace=(("chain", "draw"), result.loss_trace),
        )
        attrs.update(_scalar_attrs(result))
        coords.update(_draw_coords(chains))
    elif isinstance(result, ChainsResult):
        variables = _chains_variables(result, ("config",))
        coords.update(_draw_coords(result), **_hyper_coords(result, "config"))
        attrs.update(num_steps=result.num_steps, compile_seconds=result.compile_seconds, sampling_seconds=result.sampling_seconds)
    elif isinstance(result, CalibrationResult):
        variables = _chains_variables(result.chains, ("setting",))
        variables.update({f"metric_{k}": (("setting",), np.asarray(v)) for k, v in result.metrics.items()})
        variables.update(
            llc_per_chain=(("setting", "chain"), result.llc_per_chain),
            passed=(("setting",), np.asarray(result.passed)),
            equilibrated=(("setting",), np.asarray(result.equilibrated)),
            problems=(("setting",), np.array([",".join(p) for p in result.problems], dtype=str)),
        )
        coords.update(_draw_coords(result.chains))
        coords.update(step_size=("setting", result.step_size), nbeta=("setting", result.nbeta), localization=("setting", result.localization))
        attrs.update(_scalar_attrs(result))
        if result.recommended_index >= 0:
            attrs["recommended"] = json.dumps(result.recommended.to_dict(), default=str)
    elif dataclasses.is_dataclass(result) and not isinstance(result, type):
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
        attrs.update(_scalar_attrs(result))
    else:
        raise TypeError(f"to_xarray needs an slt_jax result (a dataclass), got {type(result).__name__}.")
    settings, config = _description(result)
    attrs["settings"] = json.dumps(settings, default=str)
    attrs["config"] = json.dumps(config, default=str)
    attrs["result_type"] = _type_name(result)
    attrs["versions"] = json.dumps(_versions())
    return xr.Dataset({k: xr.Variable(*v) for k, v in variables.items()}, coords=coords, attrs=attrs)


def to_dataframe(result, variables=None):
    """A pandas DataFrame from ``to_xarray(result)``: one row per combination of the dimensions of
    ``variables`` (names of data variables; default: every one). Variables with different dims are
    broadcast against each other, so pick variables that share their dims, e.g.
    ``to_dataframe(table, ["llc_mean", "llc_std", "ess", "rhat"])`` for one row per (checkpoint,
    component).

    >>> import jax.numpy as jnp, slt_jax as sj
    >>> loss_fn = lambda w, batch: 0.5 * (batch["y"] - batch["x"] @ w) ** 2
    >>> data = {"x": jnp.eye(2).repeat(10, axis=0), "y": jnp.zeros(20)}
    >>> config = sj.SamplerConfig(step_size=1e-3, nbeta=10.0, localization=1.0, num_draws=20, batch_size=20)
    >>> table = sj.estimate_llc_table(loss_fn, [jnp.zeros(2), jnp.ones(2)], data, config, key=0, progress=False)
    >>> sj.to_dataframe(table, ["llc_mean", "ess"]).shape              # (checkpoint x component, variables)
    (2, 2)
    """
    dataset = to_xarray(result)
    if variables is not None:
        variables = [variables] if isinstance(variables, str) else list(variables)
        missing = [v for v in variables if v not in dataset.data_vars]
        if missing:
            raise ValueError(f"variables {missing} are not in this result's Dataset; it has {sorted(dataset.data_vars)}.")
        dataset = dataset[variables]
    return dataset.to_dataframe()


def to_arviz(result, *, config: int | None = None):
    """An ArviZ ``InferenceData``: ``posterior`` holds ``loss`` and ``llc`` = nβ(L - L(w*)) per
    (chain, draw) (from ``slt_jax.traces.llc_draws``; its mean is the LLC), ``sample_stats`` the
    per-draw diagnostics (``diverging`` marks draws after a chain's divergence), so ``az.summary``
    and ``az.plot_trace`` work.

    Args:
        result: an ``LLCResult`` (its loss estimator), a ``ChainsResult`` (the minibatch loss;
            ``config`` picks the configuration when there are several) or a ``CalibrationResult``
            (its loss estimator; ``config`` = setting index, default the recommended one).
        config: configuration index.
    """
    az = _require("arviz")
    if isinstance(result, LLCResult):
        chains, loss_estimator = result.chains, result.loss_estimator
    elif isinstance(result, (ChainsResult, CalibrationResult)):
        chains = _chains_of(result)
        loss_estimator = result.settings.get("loss_estimator", "paired") if isinstance(result, CalibrationResult) else "minibatch"
        if isinstance(result, CalibrationResult) and config is None:
            if result.recommended_index < 0:
                raise ValueError(f"no setting was recommended ({result.reason}); pass config=<setting index>.")
            config = result.recommended_index
        if config is None and chains.num_configs > 1:
            raise ValueError(f"this ChainsResult holds {chains.num_configs} configurations: pass config=<index>.")
        chains = chains.select(0 if config is None else config)
    else:
        raise TypeError(f"to_arviz needs an LLCResult, ChainsResult or CalibrationResult, got {type(result).__name__}.")
    loss = traces.loss_trace(chains, loss_estimator)[0]
    posterior = {"loss": loss, "llc": traces.llc_draws(chains, loss_estimator)[0]}
    sample_stats = {name: np.asarray(getattr(chains, name))[0] for name in _TRACES[1:] if getattr(chains, name) is not None}
    diverged_at = np.asarray(chains.diverged_at)[0]
    steps = _draw_coords(chains)["step"][1]
    sample_stats["diverging"] = (diverged_at[:, None] >= 0) & (steps[None, :] >= diverged_at[:, None])
    settings, config_dict = _description(chains)
    attrs = {
        "settings": json.dumps(settings, default=str), "config": json.dumps(config_dict, default=str),
        "init_loss": float(chains.init_loss[0]), "nbeta": float(chains.hyperparameters.nbeta[0]),
        "loss_estimator": loss_estimator, **_versions(),
    }
    return az.from_dict(posterior=posterior, sample_stats=sample_stats, attrs=attrs, posterior_attrs=attrs, sample_stats_attrs=attrs)
