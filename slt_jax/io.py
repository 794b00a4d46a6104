"""Saving results without pickle, and converting them to xarray / ArviZ.

``save(path, result)`` writes one ``.npz``: every array of the result (walked through dataclass
fields, NamedTuples, dicts, lists and tuples) as its own entry, plus ``__header__``, a JSON document
holding the structure, every non-array value (settings, floats, strings) and the versions of
slt_jax, jax, numpy and Python. ``load(path)`` rebuilds the object; arrays come back as numpy
arrays with their dtypes and shapes. Nothing is pickled, and ``np.load(path, allow_pickle=False)``
reads the file with numpy alone.

Any frozen dataclass defined in an ``slt_jax`` module round-trips with no extra code (issue 4's
results included); classes defined elsewhere need ``@slt_jax.io.register``. A dataclass may give
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

import jax
import numpy as np

__all__ = ["save", "load", "read_header", "register", "to_xarray", "to_arviz", "FORMAT"]

FORMAT = "slt_jax.result"
_FORMAT_VERSION = 1
_REGISTRY: dict[str, type] = {}


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


def _array_key(path: str, arrays: dict) -> str:
    key = re.sub(r"[^A-Za-z0-9_.\-\[\]]", "_", path) or "root"
    while key in arrays or key == "__header__":
        key += "_"
    return key


def _encode(obj, path: str, arrays: dict):
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int) and not isinstance(obj, bool):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, jax.Array) and jax.dtypes.issubdtype(obj.dtype, jax.dtypes.prng_key):
        key = _array_key(path, arrays)
        arrays[key] = np.asarray(jax.random.key_data(obj))
        return {"__prng_key__": key, "impl": str(jax.random.key_impl(obj))}
    if isinstance(obj, (np.ndarray, np.generic, jax.Array)):
        array = np.asarray(obj)
        if array.dtype == object:
            raise TypeError(f"{path}: object arrays cannot be saved without pickle; convert to a numeric array.")
        key = _array_key(path, arrays)
        arrays[key] = array
        return {"__array__": key, "scalar": isinstance(obj, np.generic)}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: _encode(getattr(obj, f.name), f"{path}.{f.name}", arrays) for f in dataclasses.fields(obj)}
        return {"__dataclass__": _type_name(obj), "fields": fields}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        fields = {name: _encode(value, f"{path}.{name}", arrays) for name, value in zip(obj._fields, obj)}
        return {"__namedtuple__": _type_name(obj), "fields": fields}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {"__dict__": {k: _encode(v, f"{path}.{k}", arrays) for k, v in obj.items()}}
        return {"__items__": [[_encode(k, f"{path}.key{i}", arrays), _encode(v, f"{path}[{i}]", arrays)] for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, list):
        return [_encode(v, f"{path}[{i}]", arrays) for i, v in enumerate(obj)]
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{path}[{i}]", arrays) for i, v in enumerate(obj)]}
    raise TypeError(
        f"{path or 'result'}: cannot save a {type(obj).__name__} without pickle; results may hold arrays, numbers, "
        "strings, None, dataclasses, NamedTuples, dicts, lists and tuples."
    )


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
    if "__prng_key__" in node:
        return jax.random.wrap_key_data(arrays[node["__prng_key__"]], impl=node["impl"])
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
    import slt_jax

    return {"slt_jax": slt_jax.__version__, "jax": jax.__version__, "numpy": np.__version__, "python": platform.python_version()}


def save(path, result, *, compress: bool = False) -> pathlib.Path:
    """Writes ``result`` (any slt_jax result) to ``path`` (``.npz`` is appended if missing).

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
    arrays: dict = {}
    content = _encode(result, "", arrays)
    header = {
        "format": FORMAT,
        "format_version": _FORMAT_VERSION,
        "type": _type_name(result),
        "versions": _versions(),
        "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": _encode(getattr(result, "settings", None), "settings", {}) if isinstance(getattr(result, "settings", None), dict) else None,
        "content": content,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = np.savez_compressed if compress else np.savez
    with open(path, "wb") as file:
        writer(file, __header__=np.array(json.dumps(header)), **arrays)
    return path


def read_header(path) -> dict:
    """The JSON header of a saved result (type, versions, settings, structure) without loading arrays."""
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


def _chains_variables(chains, lead: tuple[str, ...]) -> dict:
    variables = {}
    for name in _TRACES:
        value = getattr(chains, name)
        if value is not None:
            variables[name] = (lead + ("draw",), np.asarray(value))
    variables["diverged"] = (lead, np.asarray(chains.diverged))
    variables["diverged_at"] = (lead, np.asarray(chains.diverged_at))
    for group in ("observed", "accumulator", "final_state"):
        tree = getattr(chains, group)
        if tree is None:
            continue
        extra = ("draw",) if group == "observed" else ()
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            name = ".".join([group] + [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path])
            leaf = np.asarray(leaf)
            dims = lead + extra
            dims = dims + tuple(f"{name}_dim_{k}" for k in range(leaf.ndim - len(dims)))
            variables[name] = (dims, leaf)
    return variables


def _draw_coords(chains, num_draws: int) -> dict:
    s = chains.settings
    return {"step": ("draw", s.get("num_burnin", 0) + np.arange(num_draws) * s.get("num_steps_between_draws", 1))}


def to_xarray(result):
    """An ``xarray.Dataset`` with named dimensions (``chain``, ``draw``, ``config`` / ``setting``).

    Every array of the result becomes a variable; numbers and strings become attributes, and
    ``attrs["settings"]`` holds the run's settings as JSON.
    """
    xr = _require("xarray")
    from slt_jax.calibration import CalibrationResult
    from slt_jax.llc import LLCResult
    from slt_jax.sampler import ChainsOutput

    attrs = {}
    if isinstance(result, LLCResult):
        chains = result.chains
        variables = _chains_variables(chains, ("chain",))
        variables.update(
            llc_per_chain=(("chain",), result.llc_per_chain),
            llc_trace=(("chain", "draw"), result.llc_trace),
            loss_trace=(("chain", "draw"), result.loss_trace),
        )
        attrs.update({k: getattr(result, k) for k in ("llc_mean", "llc_std", "init_loss", "nbeta", "ess", "rhat")})
        coords = _draw_coords(chains, result.loss_trace.shape[1])
        settings = chains.settings
    elif isinstance(result, ChainsOutput):
        lead = ("config", "chain") if np.ndim(result.diverged) == 2 else ("chain",)
        variables = _chains_variables(result, lead)
        coords = _draw_coords(result, np.shape(result.loss)[-1])
        attrs.update(init_loss=result.init_loss, num_steps=result.num_steps)
        settings = result.settings
    elif isinstance(result, CalibrationResult):
        variables = _chains_variables(result.chains, ("setting", "chain"))
        variables.update({f"metric_{k}": (("setting",), np.asarray(v)) for k, v in result.metrics.items()})
        variables.update(
            llc_per_chain=(("setting", "chain"), result.llc_per_chain),
            passed=(("setting",), result.passed),
            equilibrated=(("setting",), result.equilibrated),
            problems=(("setting",), np.array([",".join(p) for p in result.problems])),
        )
        coords = dict(_draw_coords(result.chains, np.shape(result.chains.loss)[-1]))
        coords.update(step_size=("setting", result.step_size), nbeta=("setting", result.nbeta), localization=("setting", result.localization))
        attrs.update(recommended=result.recommended, reason=result.reason, init_loss=result.init_loss, burnin_draws=result.burnin_draws)
        settings = result.settings
    elif dataclasses.is_dataclass(result):
        dims = getattr(result, "xarray_dims", {})
        variables, settings = {}, getattr(result, "settings", None)
        for f in dataclasses.fields(result):
            value = getattr(result, f.name)
            if isinstance(value, (np.ndarray, jax.Array)):
                value = np.asarray(value)
                variables[f.name] = (dims.get(f.name, tuple(f"{f.name}_dim_{k}" for k in range(value.ndim))), value)
            elif isinstance(value, (int, float, str, bool, np.number)):
                attrs[f.name] = value
        coords = {}
    else:
        raise TypeError(f"to_xarray needs an slt_jax result (a dataclass), got {type(result).__name__}.")
    attrs["settings"] = json.dumps(settings, default=str) if settings is not None else "null"
    attrs["result_type"] = _type_name(result)
    attrs["versions"] = json.dumps(_versions())
    return xr.Dataset({k: xr.Variable(*v) for k, v in variables.items()}, coords=coords, attrs=attrs)


def to_arviz(result, *, config: int | None = None):
    """An ArviZ ``InferenceData``: ``posterior`` holds ``loss`` and ``llc`` = nβ(L - L(w*)) per
    (chain, draw) (its mean is the LLC), ``sample_stats`` the per-draw diagnostics (``diverging``
    marks draws after a chain's divergence), so ``az.summary`` and ``az.plot_trace`` work.

    Args:
        result: an ``LLCResult``, a ``ChainsOutput`` (with ``config`` for a grid) or a
            ``CalibrationResult`` (``config`` = setting index, default the recommended one).
    """
    az = _require("arviz")
    from slt_jax.calibration import CalibrationResult
    from slt_jax.llc import LLCResult
    from slt_jax.sampler import ChainsOutput

    if isinstance(result, LLCResult):
        chains, loss, nbeta = result.chains, result.loss_trace, result.nbeta
        select = lambda x: x
    elif isinstance(result, (ChainsOutput, CalibrationResult)):
        chains = result if isinstance(result, ChainsOutput) else result.chains
        grid = np.ndim(chains.diverged) == 2
        if isinstance(result, CalibrationResult) and config is None:
            config = result.recommended
        if grid and config is None:
            raise ValueError("this ChainsOutput holds a grid of configurations: pass config=<index>.")
        select = (lambda x: np.asarray(x)[config]) if grid else (lambda x: x)
        loss = select(chains.loss)
        if isinstance(result, CalibrationResult) and result.settings.get("loss_estimator") == "paired":
            loss = np.asarray(loss, np.float64) - np.asarray(select(chains.center_loss), np.float64) + chains.init_loss
        nbeta = float(np.ravel(chains.settings["nbeta"])[config if grid and np.size(chains.settings["nbeta"]) > 1 else 0])
    else:
        raise TypeError(f"to_arviz needs an LLCResult, ChainsOutput or CalibrationResult, got {type(result).__name__}.")
    loss = np.asarray(loss, np.float64)
    posterior = {"loss": loss, "llc": nbeta * (loss - chains.init_loss)}
    sample_stats = {name: np.asarray(select(getattr(chains, name))) for name in _TRACES[1:] if getattr(chains, name) is not None}
    diverged_at = np.asarray(select(chains.diverged_at))
    steps = _draw_coords(chains, loss.shape[1])["step"][1]
    sample_stats["diverging"] = (diverged_at[:, None] >= 0) & (steps[None, :] >= diverged_at[:, None])
    attrs = {"settings": json.dumps(chains.settings, default=str), "init_loss": chains.init_loss, "nbeta": nbeta, **_versions()}
    return az.from_dict(posterior=posterior, sample_stats=sample_stats, attrs=attrs, posterior_attrs=attrs, sample_stats_attrs=attrs)
