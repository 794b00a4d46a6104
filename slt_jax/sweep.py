"""Config-file sweeps: one TOML file -> a trained run read through checkpoints x components x settings.

``run_sweep("sweep.toml")`` (the command ``slt-jax run sweep.toml``) trains one model on one task,
keeping checkpoints (``slt_jax.train``), then runs ``slt_jax.track_development`` over every
checkpoint x component once per ``[[settings]]`` entry, with the held-out split as ``held_out``.
Everything in the file is checked (``load_sweep``: names, keys, types, every ``SamplerConfig``;
``build``: the model, the data, the component masks and the loss's shapes, traced with
``jax.eval_shape``) before anything trains or compiles; a mistake raises a ``ValueError`` that names
the section, the key and the allowed values. The schema is documented in ``slt_jax.cli``.

The results directory holds:

* ``sweep.toml``: a copy of the file; ``resolved.json``: every setting with its default filled in,
  the loss, the split sizes, the checkpoint steps, the component names and, per settings entry, the
  ``SamplerConfig`` actually run (``step_size = "auto"`` resolved);
* ``<settings name>.npz``: the ``DevelopmentResult`` of each entry (``slt_jax.save``; ``slt_jax.load``
  reads it back);
* ``table.csv``: one row per settings entry x checkpoint x component (``SWEEP_COLUMNS``);
* ``<settings name>.png``: ``DevelopmentResult.plot`` of each entry; ``training_loss.csv``: the minibatch
  loss of every training step.

One process per GPU (a SLURM array, submitit, Ray): ``run_sweep(path, part="i/N")`` (``slt-jax run
sweep.toml --part i/N``, parts numbered 1..N) runs the i-th of N disjoint shares of the cells
(settings entry x checkpoint; an entry with ``step_size = "auto"`` is one cell, since it calibrates
on its last checkpoint) into ``<dir>/parts/part-i-of-N/``, and ``merge_sweep(dir)`` (``slt-jax merge
DIR``) joins them into the directory above (``slt_jax._src.parts``). Every part trains the model
itself: training is deterministic (fixed seeds), and the merge refuses parts whose checkpoints
differ (a hash in each part's ``part.json``), as it refuses missing parts and parts of another file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import pathlib
import re
import shutil
import tomllib
from collections.abc import Mapping

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

from slt_jax import adapters, masks, training, traces
from slt_jax._src import parts
from slt_jax.zoo import models, tasks
from slt_jax.config import SamplerConfig, unknown_names
from slt_jax.development import DevelopmentResult, Stages, track_development
from slt_jax.io import load, save

__all__ = ["Sweep", "Prepared", "SweepResult", "load_sweep", "parse_sweep", "build", "run_sweep", "merge_sweep", "summary", "MODELS", "TASK_LOSSES",
           "SWEEP_COLUMNS"]

MODELS = {
    "TransformerLM": models.TransformerLM,
    "AttentionOnlyTransformer": models.AttentionOnlyTransformer,
    "MLP": models.MLP,
    "DeepLinearNetwork": models.DeepLinearNetwork,
    "InContextRegressionTransformer": models.InContextRegressionTransformer,
}
# The loss each task implies (a [task] ``loss = "..."`` overrides it).
TASK_LOSSES = {
    "dln_regression": "mse",
    "in_context_regression": "mse",
    "repeated_tokens": "next_token",
    "modular_addition": "cross_entropy",
    "balanced_parentheses": "cross_entropy",
    "boolean_formulas": "cross_entropy",
}
OPTIMIZERS = {"adam": optax.adam, "sgd": optax.sgd}
ACTIVATIONS = {"relu": nnx.relu, "gelu": nnx.gelu, "tanh": jnp.tanh, "sigmoid": nnx.sigmoid, "silu": nnx.silu}
SECTIONS = ("model", "task", "training", "components", "settings", "output")
TRAINING_KEYS = ("optimizer", "learning_rate", "num_steps", "batch_size", "checkpoint_every", "checkpoint_steps", "seed")
COMPONENT_KEYS = ("full", "heads", "mlps", "layers")
SWEEP_COLUMNS = ["settings", "step", "component", "llc_mean", "llc_std", "ess", "rhat", "unreliable", "train_loss", "test_loss"]
# dln_regression needs teacher kernels: the file gives the teacher's shape (tasks.dln_teacher) instead.
_DLN_TEACHER_KEYS = ("widths", "rank", "scale")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A validated sweep file (``load_sweep``); every value with its default filled in.

    Attributes:
        model: ``{"name", "seed", **constructor kwargs}`` (``activation`` still a name).
        task: ``{"name", "seed", "train_fraction", "loss", **generator kwargs}``.
        training: ``TRAINING_KEYS`` (``batch_size`` None = full batch).
        components: ``{"full": bool, "heads", "mlps", "layers"}`` (each None, "all" or a list).
        settings: ``(name, SamplerConfig, seed, loss_estimator)`` per ``[[settings]]`` entry.
        output: the results directory (relative paths resolve against the file's directory).
        source: the TOML file (None for a document given as a dict).
    """

    model: dict
    task: dict
    training: dict
    components: dict
    settings: tuple[tuple[str, SamplerConfig, int, str], ...]
    output: pathlib.Path
    source: pathlib.Path | None = None

    def to_dict(self) -> dict:
        """The resolved settings as a JSON-serialisable dict."""
        return {
            "source": None if self.source is None else str(self.source), "model": self.model, "task": self.task,
            "training": self.training, "components": self.components, "output": {"dir": str(self.output)},
            "settings": [{"name": n, "seed": s, "loss_estimator": e, "config": c.to_dict()} for n, c, s, e in self.settings],
        }


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What ``build`` builds from a ``Sweep``, before training.

    Attributes:
        params, loss_fn: the model's ``from_nnx`` pair.
        train, test: dicts of ``(n_train, ...)`` / ``(n_test, ...)`` arrays (``test`` None when
            train_fraction = 1).
        components: ``{name: mask or None}`` (``"full"``, ``"L{layer}H{head}"``, ``"mlp{layer}"``,
            ``"layer{j}"``).
        optimizer: the optax transformation; schedule: the checkpoint steps.
    """

    params: object
    loss_fn: object
    train: dict
    test: dict | None
    components: dict
    optimizer: optax.GradientTransformation
    schedule: list[int]


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """What ``run_sweep`` and ``merge_sweep`` return: ``developments`` ``{settings name:
    DevelopmentResult}``, the combined ``table`` (a DataFrame with ``SWEEP_COLUMNS``), the ``training``
    result (``TrainResult``; None from ``merge_sweep``) and the ``output`` directory."""

    developments: dict[str, DevelopmentResult]
    table: pd.DataFrame
    training: training.TrainResult | None
    output: pathlib.Path


# ---------------------------------------------------------------------------------------------
# parsing and validation (no arrays)


def _section(document: Mapping, name: str, required: bool) -> dict:
    value = document.get(name)
    if value is None:
        if required:
            raise ValueError(f"the sweep file has no [{name}] section; it needs {', '.join(f'[{s}]' for s in ('model', 'task', 'training'))} "
                             "and at least one [[settings]] entry.")
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"[{name}] must be a table, got {value!r}.")
    return dict(value)


def _check_keys(section: str, values: Mapping, allowed, required=()) -> None:
    """``section`` is the label the messages start with, e.g. ``[model] (MLP)``."""
    message = unknown_names(values, allowed, "key")
    if message is not None:
        raise ValueError(f"{section}: {message}")
    missing = [k for k in required if k not in values]
    if missing:
        raise ValueError(f"{section} is missing required key(s) {missing}; allowed keys: {', '.join(allowed)}.")


def _int(section: str, key: str, value, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"[{section}] {key} = {value!r} must be an integer >= {minimum}.")
    return value


def _signature_keys(function, drop) -> tuple[list[str], list[str]]:
    """(every keyword, the required ones) of ``function`` except ``drop``."""
    parameters = [p for p in inspect.signature(function).parameters.values() if p.name not in ("self", *drop)]
    return [p.name for p in parameters], [p.name for p in parameters if p.default is inspect.Parameter.empty]


def _choice(section: str, key: str, value, allowed) -> str:
    if value not in allowed:
        raise ValueError(f"[{section}] {key} = {value!r} is not known; allowed values: {', '.join(map(repr, allowed))}.")
    return value


def _parse_model(model: dict) -> dict:
    if "name" not in model:
        raise ValueError(f"[model] needs name = one of {', '.join(map(repr, MODELS))}.")
    name = _choice("model", "name", model.pop("name"), list(MODELS))
    seed = _int("model", "seed", model.pop("seed", 0))
    allowed, required = _signature_keys(MODELS[name].__init__, ("rngs", "kernels"))
    _check_keys(f"[model] ({name})", model, allowed + ["name", "seed"], required)
    if "activation" in model:
        _choice("model", "activation", model["activation"], list(ACTIVATIONS))
    return {"name": name, "seed": seed, **model}


def _parse_task(task: dict, model: dict) -> dict:
    if "name" not in task:
        raise ValueError(f"[task] needs name = one of {', '.join(map(repr, TASK_LOSSES))}.")
    name = _choice("task", "name", task.pop("name"), list(TASK_LOSSES))
    seed = _int("task", "seed", task.pop("seed", 0))
    fraction = task.pop("train_fraction", 0.8)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"[task] train_fraction = {fraction!r} must be a number in (0, 1] (1 = no held-out split).")
    loss = _choice("task", "loss", task.pop("loss", TASK_LOSSES[name]), list(adapters.LOSSES))
    if name == "dln_regression":
        allowed, required = _signature_keys(tasks.dln_regression, ("seed", "kernels"))
        allowed, required = allowed + list(_DLN_TEACHER_KEYS), required + ["rank"]
        if "widths" not in task:
            if model["name"] != "DeepLinearNetwork":
                raise ValueError("[task] dln_regression needs widths = [...] (the teacher's widths) unless [model] is a DeepLinearNetwork.")
            task["widths"] = list(model["widths"])
    else:
        allowed, required = _signature_keys(getattr(tasks, name), ("seed",))
    _check_keys(f"[task] ({name})", task, allowed + ["name", "seed", "train_fraction", "loss"], required)
    return {"name": name, "seed": seed, "train_fraction": float(fraction), "loss": loss, **task}


def _parse_training(values: dict) -> dict:
    _check_keys("[training]", values, TRAINING_KEYS, ("optimizer", "learning_rate", "num_steps"))
    _choice("training", "optimizer", values["optimizer"], list(OPTIMIZERS))
    rate = values["learning_rate"]
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0:
        raise ValueError(f"[training] learning_rate = {rate!r} must be a number > 0 (e.g. 1e-3).")
    resolved = {"optimizer": values["optimizer"], "learning_rate": float(rate),
                "num_steps": _int("training", "num_steps", values["num_steps"], 1),
                "batch_size": None if values.get("batch_size") is None else _int("training", "batch_size", values["batch_size"], 1),
                "seed": _int("training", "seed", values.get("seed", 0))}
    if ("checkpoint_every" in values) == ("checkpoint_steps" in values):
        raise ValueError("[training] needs exactly one of checkpoint_every = N or checkpoint_steps = [...].")
    try:
        schedule = training.checkpoint_schedule(resolved["num_steps"], values.get("checkpoint_every"), values.get("checkpoint_steps"))
    except (TypeError, ValueError) as error:
        raise ValueError(f"[training] {error}") from None
    resolved["checkpoint_steps"] = schedule
    return resolved


def _index_list(key: str, value, width: int) -> list | str | None:
    if value is None or value == "all":
        return value
    ok = isinstance(value, list) and all(
        isinstance(v, list) and len(v) == width and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v)
        if width > 1 else isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    if not ok:
        shape = "[[layer, head], ...]" if width > 1 else "[layer, ...]"
        raise ValueError(f"[components] {key} = {value!r} must be \"all\" or a list {shape} of non-negative ints.")
    return value


def _parse_components(values: dict) -> dict:
    _check_keys("[components]", values, COMPONENT_KEYS)
    full = values.get("full", not values)
    if not isinstance(full, bool):
        raise ValueError(f"[components] full = {full!r} must be true or false.")
    resolved = {"full": full, "heads": _index_list("heads", values.get("heads"), 2),
                "mlps": _index_list("mlps", values.get("mlps"), 1), "layers": _index_list("layers", values.get("layers"), 1)}
    if not full and not any(resolved[k] for k in ("heads", "mlps", "layers")):
        raise ValueError("[components] selects nothing; set full = true or give heads / mlps / layers.")
    return resolved


def _parse_settings(entries) -> tuple:
    if not isinstance(entries, list) or not entries or not all(isinstance(e, Mapping) for e in entries):
        raise ValueError("the sweep file needs at least one [[settings]] table (a SamplerConfig with a name).")
    fields = [f.name for f in dataclasses.fields(SamplerConfig)]
    settings, names = [], set()
    for index, entry in enumerate(entries):
        entry = dict(entry)
        name = entry.pop("name", None)
        if not isinstance(name, str) or not _NAME.match(name) or name in names:
            raise ValueError(f"[[settings]] entry {index}: name = {name!r} must be a unique file-name-safe string "
                             "(letters, digits, '_', '-', '.'); it names <dir>/<name>.npz and <name>.png.")
        names.add(name)
        seed = _int(f"settings] [{name}", "seed", entry.pop("seed", 0))
        estimator = _choice(f"settings] [{name}", "loss_estimator", entry.pop("loss_estimator", "minibatch"), traces.LOSS_ESTIMATORS)
        _check_keys(f"[[settings]] {name!r}", entry, fields + ["name", "seed", "loss_estimator"], ("step_size", "localization", "num_draws", "batch_size"))
        try:
            config = SamplerConfig.from_dict(entry)
        except (TypeError, ValueError) as error:
            raise ValueError(f"[[settings]] {name!r}: {error}") from None
        settings.append((name, config, seed, estimator))
    return tuple(settings)


def parse_sweep(document: Mapping, *, source: pathlib.Path | None = None) -> Sweep:
    """Validates a parsed sweep document (``tomllib.load`` output); see ``slt_jax.cli`` for the schema."""
    unknown = [k for k in document if k not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown section(s) {unknown} in the sweep file; allowed: {', '.join(f'[{s}]' for s in SECTIONS)}.")
    model = _parse_model(_section(document, "model", True))
    task = _parse_task(_section(document, "task", True), model)
    training_values = _parse_training(_section(document, "training", True))
    components = _parse_components(_section(document, "components", False))
    settings = _parse_settings(document.get("settings"))
    output = _section(document, "output", False)
    _check_keys("[output]", output, ("dir",))
    default = f"{source.stem}_results" if source is not None else "slt_jax_sweep"
    directory = output.get("dir", default)
    if not isinstance(directory, str) or not directory:
        raise ValueError(f"[output] dir = {directory!r} must be a non-empty path string.")
    directory = pathlib.Path(directory)
    if not directory.is_absolute() and source is not None:
        directory = source.parent / directory
    return Sweep(model=model, task=task, training=training_values, components=components, settings=settings,
                 output=directory, source=source)


def load_sweep(path) -> Sweep:
    """Reads and validates the TOML sweep file at ``path`` (nothing is built or trained)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"path={str(path)!r}: no such sweep file; pass the path of a .toml file.")
    try:
        document = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path} is not valid TOML: {error}") from None
    return parse_sweep(document, source=path.resolve())


# ---------------------------------------------------------------------------------------------
# building (arrays, no training, no compilation)


def _build_data(task: dict) -> dict:
    name = task["name"]
    reserved = ("name", "seed", "train_fraction", "loss")
    kwargs = {k: v for k, v in task.items() if k not in reserved}
    if name == "dln_regression":
        teacher = {k: kwargs.pop(k) for k in _DLN_TEACHER_KEYS if k in kwargs}
        kwargs["kernels"] = tasks.dln_teacher(task["seed"], **teacher)
    data = getattr(tasks, name)(seed=task["seed"], **kwargs)
    # Only what the loss reads travels to the device (tasks also return e.g. "operands").
    return {k: v for k, v in data.items() if k in ("inputs", "targets")}


def _component_masks(sweep: Sweep, model, params) -> dict:
    spec, name = sweep.components, sweep.model["name"]
    components: dict = {"full": None} if spec["full"] else {}
    if spec["heads"] is not None:
        if not hasattr(model, "attention_paths"):
            raise ValueError(f"[components] heads: {name} has no attention heads; models with heads: "
                             f"{', '.join(n for n, c in MODELS.items() if hasattr(c, 'attention_paths'))}.")
        paths, num_heads = model.attention_paths(), sweep.model["num_heads"]
        pairs = [[l, h] for l in range(len(paths)) for h in range(num_heads)] if spec["heads"] == "all" else spec["heads"]
        for layer, head in pairs:
            if layer >= len(paths) or head >= num_heads:
                raise ValueError(f"[components] heads: (layer {layer}, head {head}) does not exist; the model has "
                                 f"{len(paths)} layer(s) x {num_heads} head(s).")
            components[f"L{layer}H{head}"] = masks.head_mask(params, paths[layer], head)
    for key, label, method in (("mlps", "mlp", "mlp_paths"), ("layers", "layer", None)):
        if spec[key] is None:
            continue
        if method is not None and not hasattr(model, method):
            raise ValueError(f"[components] {key}: {name} has no MLP blocks; models with them: "
                             f"{', '.join(n for n, c in MODELS.items() if hasattr(c, method))}.")
        if method is None and not isinstance(params.get("layers"), Mapping | list):
            raise ValueError(f"[components] layers: {name} has no 'layers' list; use it with DeepLinearNetwork or MLP.")
        count = len(model.mlp_paths()) if method else len(params["layers"])
        for index in (range(count) if spec[key] == "all" else spec[key]):
            if index >= count:
                raise ValueError(f"[components] {key}: index {index} does not exist; the model has {count}.")
            components[f"{label}{index}"] = (masks.mlp_mask(params, model.mlp_paths()[index]) if method
                                             else masks.component_mask(params, f"layers/{index}/**"))
    return components


def _check_fit(sweep: Sweep, loss_fn, params, train: dict) -> None:
    """Traces the loss on two examples (``jax.eval_shape``: no compilation) so a model that does not
    fit the task fails here, with the names from the file."""
    example = jax.tree.map(lambda x: jax.ShapeDtypeStruct((2, *x.shape[1:]), x.dtype), train)
    try:
        shape = jax.eval_shape(loss_fn, params, example).shape
    except Exception as error:  # any trace-time failure means the pairing is wrong
        raise ValueError(f"[model] {sweep.model['name']} does not fit [task] {sweep.task['name']} with loss "
                         f"{sweep.task['loss']!r} (set [task] loss = ... or change the model's sizes): {error}") from None
    if not shape or shape[0] != 2:
        raise ValueError(f"[task] loss = {sweep.task['loss']!r} gives losses of shape {shape} for 2 examples; "
                         "it needs (batch,) or (batch, seq).")


def build(sweep: Sweep) -> Prepared:
    """Builds the data, the split, the model, its ``(params, loss_fn)``, the component masks and the
    optimizer, and checks that they fit together (batch sizes against the split), all before training."""
    data = _build_data(sweep.task)
    fraction = sweep.task["train_fraction"]
    train, test = tasks.train_test_split(data, fraction, seed=sweep.task["seed"]) if fraction < 1 else (data, None)
    n_train = len(next(iter(train.values())))
    if test is not None and len(next(iter(test.values()))) == 0:
        test = None
    kwargs = {k: v for k, v in sweep.model.items() if k not in ("name", "seed")}
    if "activation" in kwargs:
        kwargs["activation"] = ACTIVATIONS[kwargs["activation"]]
    try:
        model = MODELS[sweep.model["name"]](**kwargs, rngs=nnx.Rngs(sweep.model["seed"]))
    except (TypeError, ValueError) as error:
        raise ValueError(f"[model] {sweep.model['name']}: {error}") from None
    params, loss_fn = adapters.from_nnx(model, sweep.task["loss"])
    _check_fit(sweep, loss_fn, params, train)
    batch_size = sweep.training["batch_size"]
    if batch_size is not None and batch_size > n_train:
        raise ValueError(f"[training] batch_size = {batch_size} exceeds the {n_train} training examples.")
    for name, config, _, _ in sweep.settings:
        if config.batch_size > n_train:
            raise ValueError(f"[[settings]] {name!r}: batch_size = {config.batch_size} exceeds the {n_train} training examples.")
    optimizer = OPTIMIZERS[sweep.training["optimizer"]](sweep.training["learning_rate"])
    return Prepared(params, loss_fn, train, test, _component_masks(sweep, model, params), optimizer,
                    sweep.training["checkpoint_steps"])


# ---------------------------------------------------------------------------------------------
# running and writing


def _stages(development: DevelopmentResult) -> Stages:
    """The default stage boundaries, or none where the curve is too short to read them from."""
    curve = development.llc.llc_mean[:, 0]
    if np.isfinite(curve).sum() >= 3:
        return development.stages(0)
    empty = np.zeros(0)
    return Stages(boundaries=empty, kinds=[], indices=np.zeros(0, np.int64), smoothed=curve, slope=np.zeros_like(curve),
                  steps=np.asarray(development.steps))


def _write_json(path: pathlib.Path, value) -> None:
    path.write_text(json.dumps(value, indent=2, default=str) + "\n")


def _part_blocks(sweep: Sweep, part) -> tuple[tuple[int, int], dict[str, range]]:
    """``(i, N)`` and this part's checkpoint indices per settings entry (``slt_jax._src.parts``)."""
    index, count = parts.parse_part(part)
    num_checkpoints = len(sweep.training["checkpoint_steps"])
    units = []  # (entry, checkpoints, cost in chain-steps x checkpoints)
    for name, config, _, _ in sweep.settings:
        cost = config.num_steps * config.num_chains
        if config.step_size == "auto":  # calibrated on the entry's last checkpoint: never split
            units.append((name, range(num_checkpoints), cost * num_checkpoints))
        else:
            units.extend((name, range(k, k + 1), cost) for k in range(num_checkpoints))
    blocks: dict[str, list[int]] = {}
    for unit in parts.split([cost for _, _, cost in units], count)[index - 1]:
        name, checkpoints, _ = units[unit]
        blocks.setdefault(name, []).extend(checkpoints)
    return (index, count), {name: range(ks[0], ks[-1] + 1) for name, ks in blocks.items()}


def _start_directory(sweep: Sweep, prepared: Prepared, directory: pathlib.Path) -> dict:
    """Creates ``directory`` with ``sweep.toml`` and ``resolved.json`` (before training); returns the resolved dict."""
    directory.mkdir(parents=True, exist_ok=True)
    if sweep.source is not None and sweep.source != (directory / "sweep.toml").resolve():
        shutil.copyfile(sweep.source, directory / "sweep.toml")
    n_test = 0 if prepared.test is None else len(next(iter(prepared.test.values())))
    resolved = sweep.to_dict() | {"data": {"n_train": len(next(iter(prepared.train.values()))), "n_test": n_test},
                                  "component_names": list(prepared.components)}
    _write_json(directory / "resolved.json", resolved)
    return resolved


def _table(developments: dict[str, DevelopmentResult]) -> pd.DataFrame:
    frames = []
    for name, development in developments.items():
        frame = development.to_dataframe()
        frame.insert(0, "settings", name)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)[SWEEP_COLUMNS]


def _write_results(directory: pathlib.Path, resolved: dict, developments: dict[str, DevelopmentResult]) -> pd.DataFrame:
    """The ``.npz``, ``.png``, ``table.csv`` and the ``config_run`` of ``resolved.json`` of every entry."""
    for name, development in developments.items():
        save(directory / f"{name}.npz", development)
        development.plot(stages=_stages(development), path=directory / f"{name}.png")
    table = _table(developments)
    table.to_csv(directory / "table.csv", index=False)
    for entry in resolved["settings"]:
        entry["config_run"] = developments[entry["name"]].llc.chains.config.to_dict()
    _write_json(directory / "resolved.json", resolved)
    return table


def _fingerprint(trained: training.TrainResult) -> str:
    """A hash of the training losses and every checkpoint's bytes: parts must have trained alike."""
    digest = hashlib.sha256(np.asarray(trained.losses).tobytes())
    for leaf in jax.tree.leaves(trained.checkpoints):
        digest.update(np.asarray(leaf).tobytes())
    return digest.hexdigest()


def run_sweep(path, *, output=None, part=None, progress: bool = True) -> SweepResult:
    """Runs the sweep file at ``path`` and writes its results directory (see the module docstring).

    Args:
        path: the TOML sweep file.
        output: a results directory overriding ``[output] dir``.
        part: ``"i/N"`` or ``(i, N)``: run only the i-th of N disjoint parts (1 <= i <= N), writing
            ``<dir>/parts/part-i-of-N/``; ``merge_sweep(<dir>)`` joins the N parts into the directory
            one run writes. Every part trains the model (same seed, same checkpoints) and samples
            its share of the settings entries x checkpoints (an entry with ``step_size = "auto"``
            stays whole).
        progress: progress bars and the printed summary.

    Returns:
        A ``SweepResult``; ``table`` has one row per settings entry x checkpoint x component (with
        ``part``: of this part's share only, and ``output`` is the part's folder).
    """
    sweep = load_sweep(path)
    if output is not None:
        sweep = dataclasses.replace(sweep, output=pathlib.Path(output))
    numbered, blocks = (None, None) if part is None else _part_blocks(sweep, part)
    prepared = build(sweep)
    directory = sweep.output if part is None else sweep.output / "parts" / "part-{}-of-{}".format(*numbered)
    resolved = _start_directory(sweep, prepared, directory)
    if part is not None:
        (directory / "part.json").unlink(missing_ok=True)  # a rerun part is unfinished until it writes it again
    trained = training.train(prepared.loss_fn, prepared.params, prepared.train, optimizer=prepared.optimizer,
                             num_steps=sweep.training["num_steps"], batch_size=sweep.training["batch_size"],
                             seed=sweep.training["seed"], checkpoint_steps=prepared.schedule)
    pd.DataFrame({"step": np.arange(len(trained.losses)), "loss": trained.losses}).to_csv(directory / "training_loss.csv", index=False)
    developments = {}
    for name, config, seed, estimator in sweep.settings:
        block = range(len(trained.checkpoints)) if blocks is None else blocks.get(name)
        if block is None:
            continue
        developments[name] = track_development(
            prepared.loss_fn, trained.checkpoints[block.start:block.stop], prepared.train, config, key=seed,
            steps=trained.checkpoint_steps[block.start:block.stop], components=prepared.components, held_out=prepared.test,
            loss_estimator=estimator, progress=progress,
        )
    if part is None:
        return SweepResult(developments, _write_results(directory, resolved, developments), trained, directory)
    for name, development in developments.items():
        save(directory / f"{name}.npz", development)
    table = _table(developments)
    table.to_csv(directory / "table.csv", index=False)
    # Written last: its presence tells merge_sweep that the part finished.
    _write_json(directory / "part.json", {"part": numbered[0], "num_parts": numbered[1], "training": _fingerprint(trained),
                                          "checkpoints": {name: [b.start, b.stop] for name, b in blocks.items()}})
    return SweepResult(developments, table, trained, directory)


_PART_DIRECTORY = re.compile(r"^part-(\d+)-of-(\d+)$")


def _finished_parts(directory: pathlib.Path) -> list[pathlib.Path]:
    """The folders ``parts/part-1-of-N .. part-N-of-N``, each with its ``part.json``, or a ValueError naming what is missing."""
    folder = directory / "parts"
    found = {} if not folder.is_dir() else {
        (int(m.group(1)), int(m.group(2))): p for p in folder.iterdir() if (m := _PART_DIRECTORY.match(p.name)) and p.is_dir()}
    if not found:
        raise ValueError(f"directory={str(directory)!r} has no parts/part-i-of-N folders; run the parts first "
                         "(slt-jax run sweep.toml --part i/N), then merge their [output] dir.")
    counts = sorted({count for _, count in found})
    if len(counts) > 1:
        raise ValueError(f"{folder} holds parts of splits into {counts} parts; keep the folders of one split "
                         "(part-i-of-N with one N) and remove the others.")
    count = counts[0]
    missing = [i for i in range(1, count + 1) if not (folder / f"part-{i}-of-{count}" / "part.json").is_file()]
    if missing:
        listed = ", ".join(f"{i}/{count}" for i in missing)
        raise ValueError(f"part(s) {listed} of {folder} are missing or unfinished (no part-i-of-{count}/part.json): run "
                         f"slt-jax run sweep.toml --part i/{count} for each to completion, then merge again.")
    return [folder / f"part-{i}-of-{count}" for i in range(1, count + 1)]


def _check_parts_agree(folders: list[pathlib.Path], records: list[dict], resolved: list[dict]) -> None:
    first = folders[0].name
    for folder, record, document in zip(folders[1:], records[1:], resolved[1:]):
        differing = [key for key in dict.fromkeys([*resolved[0], *document]) if resolved[0].get(key) != document.get(key)]
        if differing:
            raise ValueError(f"{folder / 'resolved.json'} differs from {first}'s in {differing}: the parts ran different "
                             "sweep files or options; rerun that part with the same file.")
        if record["training"] != records[0]["training"]:
            raise ValueError(f"{folder.name} trained different checkpoints than {first} (training_loss.csv and the "
                             "checkpoints' hash in part.json differ): training was not deterministic across the machines; "
                             "rerun the parts on one kind of device.")


def _joined_entry(folders: list[pathlib.Path], records: list[dict], name: str, num_checkpoints: int) -> DevelopmentResult:
    """Entry ``name``'s blocks, read from the parts that ran them and joined in checkpoint order."""
    held = sorted((record["checkpoints"][name][0], record["checkpoints"][name][1], folder)
                  for folder, record in zip(folders, records) if name in record["checkpoints"])
    covered = [k for start, stop, _ in held for k in range(start, stop)]
    if covered != list(range(num_checkpoints)):
        raise ValueError(f"the parts' blocks of settings entry {name!r} cover checkpoints {covered}, not 0..{num_checkpoints - 1} "
                         "once each: the parts come from different splits; rerun them with one N.")
    pieces = []
    for _, _, folder in held:
        path = folder / f"{name}.npz"
        if not path.is_file():
            raise ValueError(f"{path} is missing though {folder / 'part.json'} lists it; rerun that part.")
        pieces.append(load(path))
    return pieces[0] if len(pieces) == 1 else parts.join_developments(pieces)


def merge_sweep(directory) -> SweepResult:
    """Joins the parts of a sweep (``run_sweep(path, part=(i, N))``) into the results directory one
    run writes: ``<name>.npz``, ``<name>.png``, ``table.csv``, ``training_loss.csv``, ``sweep.toml``
    and ``resolved.json``, with the same rows and arrays. The timings and group counts in each
    result's ``chains`` are summed over its parts.

    Args:
        directory: the sweep's results directory (its ``[output] dir``), holding ``parts/part-i-of-N``.

    Returns:
        A ``SweepResult`` with ``training`` None (the parts trained; their losses are in
        ``training_loss.csv``). A missing or unfinished part, parts of different files or splits,
        or parts that trained different checkpoints raise a ``ValueError`` naming them.
    """
    directory = pathlib.Path(directory)
    folders = _finished_parts(directory)
    records = [json.loads((folder / "part.json").read_text()) for folder in folders]
    resolved = [json.loads((folder / "resolved.json").read_text()) for folder in folders]
    _check_parts_agree(folders, records, resolved)
    document = resolved[0]
    num_checkpoints = len(document["training"]["checkpoint_steps"])
    developments = {entry["name"]: _joined_entry(folders, records, entry["name"], num_checkpoints) for entry in document["settings"]}
    for name in ("sweep.toml", "training_loss.csv"):
        if (folders[0] / name).is_file():
            shutil.copyfile(folders[0] / name, directory / name)
    table = _write_results(directory, document, developments)
    return SweepResult(developments, table, None, directory)


def summary(result: SweepResult) -> str:
    """A short text table: the LLC (mean ± std over chains) of every component at each settings
    entry's checkpoints, flagged ``*`` where unreliable."""
    table = result.table
    cell = table["llc_mean"].map("{:.3g}".format) + " ± " + table["llc_std"].map("{:.2g}".format)
    cell = cell + np.where(table["unreliable"], "*", "")
    wide = table.assign(llc=cell).pivot_table(index=["settings", "step"], columns="component", values="llc", aggfunc="first",
                                              sort=False)
    return wide.to_string() + "\n(* = unreliable: low ESS, high R-hat or diverged chains)"
