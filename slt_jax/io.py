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

Results follow one protocol (``slt_jax.results``): ``save`` / ``load`` rebuild any registered type
(``@slt_jax.results.register``; every slt_jax result is registered) or any slt_jax dataclass, and
``to_xarray`` / ``to_dataframe`` / ``to_arviz`` call the result's own ``to_xarray`` /
``arviz_source``. This module imports no estimator.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import pathlib
import re
import warnings

import jax
import numpy as np

from slt_jax import results, traces
from slt_jax.config import SamplerConfig
from slt_jax.sampler import ChainsResult

__all__ = ["save", "load", "read_header", "to_xarray", "to_dataframe", "to_arviz", "FORMAT"]

FORMAT = "slt_jax.result"
_FORMAT_VERSION = 2


def _type_name(obj) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


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
        cls = results.resolve(node["__namedtuple__"])
        return cls(**{k: _decode(v, arrays) for k, v in node["fields"].items()})
    if "__dataclass__" in node:
        cls = results.resolve(node["__dataclass__"])
        values = {k: _decode(v, arrays) for k, v in node["fields"].items()}
        init = {f.name for f in dataclasses.fields(cls) if f.init}
        obj = cls(**{k: v for k, v in values.items() if k in init})
        for k, v in values.items():
            if k not in init:
                object.__setattr__(obj, k, v)
        return obj
    raise ValueError(f"unrecognised node in the file's header: {sorted(node)}")


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
    settings, config = results.describe(result)
    header = {
        "format": FORMAT,
        "format_version": _FORMAT_VERSION,
        "type": _type_name(result),
        "versions": results.versions(),
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
# xarray / pandas / ArviZ: through the result protocol


def to_xarray(result):
    """An ``xarray.Dataset`` with named dimensions: ``result.to_xarray()`` for a result
    (``slt_jax.results.Result``), ``(config, chain, draw)`` for a ``ChainsResult``, the array fields
    of any other dataclass. ``attrs`` hold the result type, the run's settings and ``SamplerConfig``
    (JSON) and the versions."""
    return results.dataset(result)


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
    return results.dataframe(results.dataset(result), variables)


def to_arviz(result, *, configuration: int | None = None):
    """An ArviZ ``InferenceData``: ``posterior`` holds ``loss`` and ``llc`` = nβ(L - L(w*)) per
    (chain, draw) (from ``slt_jax.traces.llc_draws``; its mean is the LLC), ``sample_stats`` the
    per-draw diagnostics (``diverging`` marks draws after a chain's divergence), so ``az.summary``
    and ``az.plot_trace`` work.

    Args:
        result: a result with LLC draws (``LLCResult``: its loss estimator; a result's
            ``arviz_source``) or a ``ChainsResult`` (the minibatch loss; ``configuration`` picks the
            configuration when there are several).
        configuration: configuration index g.
    """
    az = results.require("arviz")
    if isinstance(result, ChainsResult):
        if configuration is None and result.num_configs > 1:
            raise ValueError(f"this ChainsResult holds {result.num_configs} configurations: pass configuration=<index>.")
        chains, loss_estimator = result.select(0 if configuration is None else configuration), "minibatch"
    elif isinstance(result, results.Result):
        chains, loss_estimator = result.arviz_source(configuration)
    else:
        raise TypeError(f"to_arviz needs an slt_jax result with LLC draws or a ChainsResult, got {type(result).__name__}.")
    loss = traces.loss_trace(chains, loss_estimator)[0]
    posterior = {"loss": loss, "llc": traces.llc_draws(chains, loss_estimator)[0]}
    sample_stats = {name: np.asarray(getattr(chains, name))[0] for name in results.TRACES[1:] if getattr(chains, name) is not None}
    diverged_at = np.asarray(chains.diverged_at)[0]
    steps = results.draw_coords(chains)["step"][1]
    sample_stats["diverging"] = (diverged_at[:, None] >= 0) & (steps[None, :] >= diverged_at[:, None])
    settings, config_dict = results.describe(chains)
    attrs = {
        "settings": json.dumps(settings, default=str), "config": json.dumps(config_dict, default=str),
        "init_loss": float(chains.init_loss[0]), "nbeta": float(chains.hyperparameters.nbeta[0]),
        "loss_estimator": loss_estimator, **results.versions(),
    }
    return az.from_dict(posterior=posterior, sample_stats=sample_stats, attrs=attrs, posterior_attrs=attrs, sample_stats_attrs=attrs)
