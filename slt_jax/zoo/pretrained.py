"""Public language-model checkpoints (GPT-2, GPT-NeoX / Pythia) read from a local Hugging Face folder.

``from_pretrained(path)`` reads ``config.json`` and the safetensors weights (one ``model.safetensors``
or the shards listed by ``model.safetensors.index.json``) and returns a ``slt_jax.zoo.decoder.Decoder``,
a Flax NNX module whose parameters have the zoo's layout: the fused projections are split at load
time, so attention head h of layer l is ``slt_jax.head_mask(params, f"blocks/{l}/attn", h)`` (its
query, key and value slices and its rows of the output projection) and the MLP of layer l is
``slt_jax.mlp_mask(params, f"blocks/{l}/mlp")``. Weights are read with the ``safetensors`` package,
never by unpickling. ``load_series`` reads several checkpoints of one model (e.g. Pythia's training
revisions) as the ``checkpoints`` list of ``estimate_llc_table`` / ``track_development``;
``token_batches`` and ``text_batches`` make the ``{"inputs": (n, seq)}`` batches of the
``"next_token"`` loss.

How each architecture maps (Hugging Face tensor -> ``from_nnx`` path), per layer l:

* GPT-2 (``model_type`` ``"gpt2"``; Conv1D weights are stored ``(in, out)``): ``h.{l}.attn.c_attn.weight``
  ``(d, 3d)`` = [Q | K | V] columns, each ``(d, heads * head_dim)`` with head h in columns
  ``h*head_dim:(h+1)*head_dim`` -> ``attn/{query,key,value}/kernel``; ``attn.c_proj.weight`` ``(d, d)``
  -> ``attn/out/kernel`` ``(heads, head_dim, d)``; ``ln_1``/``ln_2`` -> ``attn_norm``/``mlp_norm``;
  ``mlp.c_fc``/``mlp.c_proj`` -> ``mlp/hidden``/``mlp/out``; ``wte``, ``wpe``, ``ln_f`` ->
  ``embed``, ``position``, ``final_norm``; the unembedding is tied to ``wte``.
* GPT-NeoX (``"gpt_neox"``; ``nn.Linear`` weights are stored ``(out, in)``):
  ``layers.{l}.attention.query_key_value.weight`` ``(3d, d)`` is interleaved per head, output row
  ``h*3*head_dim + j*head_dim + i`` being dimension i of head h of j = query, key, value ->
  ``attn/{query,key,value}/kernel``; ``attention.dense`` -> ``attn/out``; ``input_layernorm`` /
  ``post_attention_layernorm`` -> ``attn_norm`` / ``mlp_norm``; ``mlp.dense_h_to_4h`` /
  ``mlp.dense_4h_to_h`` -> ``mlp/hidden`` / ``mlp/out``; ``embed_in``, ``final_layer_norm``,
  ``embed_out`` -> ``embed``, ``final_norm``, ``unembed`` (untied). Rotary embeddings rotate the first
  ``int(head_dim * rotary_pct)`` dimensions of each query and key head; ``use_parallel_residual``
  selects the block's residual layout.
"""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import re
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open

from slt_jax.zoo.decoder import ACTIVATIONS, Decoder, DecoderSpec, check_spec

__all__ = ["from_pretrained", "load_series", "Series", "token_batches", "text_batches", "read_spec"]

SUPPORTED = ("gpt2", "gpt_neox")
# Buffers some checkpoints carry (causal masks, rotary tables): derived from the config, not weights.
_BUFFERS = re.compile(r"(\.attn\.bias|\.attn\.masked_bias|\.attention\.bias|\.attention\.masked_bias|\.rotary_emb\.inv_freq)$")
_PICKLED = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


# ---------------------------------------------------------------------------------------------
# config.json -> DecoderSpec


def _field(config: Mapping, name: str, kind, default=None, where: str = "config.json"):
    value = config.get(name, default)
    if value is None:
        raise ValueError(f"{where} has no {name!r}; a {config.get('model_type')} config needs it.")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{where}: {name}={value!r} must be an int.")
    if kind is bool and not isinstance(value, bool):
        raise ValueError(f"{where}: {name}={value!r} must be true or false.")
    return value


def _gpt2_spec(config: Mapping) -> DecoderSpec:
    if config.get("add_cross_attention"):
        raise ValueError("config.json: add_cross_attention=true (an encoder-decoder GPT-2) is not supported.")
    width, num_heads, num_layers = (_field(config, k, int) for k in ("n_embd", "n_head", "n_layer"))
    if width % num_heads:
        raise ValueError(f"config.json: n_embd={width} is not divisible by n_head={num_heads}.")
    scale = (width // num_heads) ** -0.5 if _field(config, "scale_attn_weights", bool, True) else 1.0
    by_layer = _field(config, "scale_attn_by_inverse_layer_idx", bool, False)
    return DecoderSpec(
        vocab_size=_field(config, "vocab_size", int), context_length=_field(config, "n_positions", int),
        width=width, num_layers=num_layers, num_heads=num_heads,
        mlp_width=config.get("n_inner") or 4 * width, positions="learned",
        tie_embeddings=_field(config, "tie_word_embeddings", bool, True),
        activation=_field(config, "activation_function", str, "gelu_new"),
        layer_norm_eps=float(_field(config, "layer_norm_epsilon", float, 1e-5)),
        attention_scales=tuple(scale / (layer + 1 if by_layer else 1) for layer in range(num_layers)),
    )


def _rotary_settings(config: Mapping) -> tuple[float, float]:
    """(rotary fraction, base) from transformers 5's ``rope_parameters`` or the older keys."""
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if not isinstance(rope, Mapping):
        raise ValueError(f"config.json: rope_parameters={rope!r} must be an object.")
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise ValueError(f"config.json: rope type {kind!r} is not supported (only the default rotary embedding).")
    fraction = rope.get("partial_rotary_factor", config.get("rotary_pct", 0.25))
    base = rope.get("rope_theta", config.get("rotary_emb_base", config.get("rope_theta", 10000.0)))
    return float(fraction), float(base)


def _gpt_neox_spec(config: Mapping) -> DecoderSpec:
    width, num_heads = _field(config, "hidden_size", int), _field(config, "num_attention_heads", int)
    if width % num_heads:
        raise ValueError(f"config.json: hidden_size={width} is not divisible by num_attention_heads={num_heads}.")
    fraction, base = _rotary_settings(config)
    rotary_dims = int((width // num_heads) * fraction)
    if rotary_dims % 2:
        raise ValueError(f"config.json: rotary_pct={fraction} gives {rotary_dims} rotary dimensions per head; it must be even.")
    return DecoderSpec(
        vocab_size=_field(config, "vocab_size", int), context_length=_field(config, "max_position_embeddings", int),
        width=width, num_layers=_field(config, "num_hidden_layers", int), num_heads=num_heads,
        mlp_width=_field(config, "intermediate_size", int), positions="rotary", rotary_dims=rotary_dims,
        rotary_base=base, parallel_residual=_field(config, "use_parallel_residual", bool, True),
        tie_embeddings=_field(config, "tie_word_embeddings", bool, False),
        activation=_field(config, "hidden_act", str, "gelu"),
        layer_norm_eps=float(_field(config, "layer_norm_eps", float, 1e-5)),
        attention_bias=_field(config, "attention_bias", bool, True),
    )


def read_spec(path: str | os.PathLike) -> tuple[str, DecoderSpec]:
    """``(model_type, DecoderSpec)`` from ``path/config.json``; ``ValueError`` for an unsupported model."""
    folder = _folder(path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(f"path={str(path)!r} has no config.json; pass a Hugging Face model folder (config.json + *.safetensors).")
    config = json.loads(config_file.read_text())
    model_type = config.get("model_type")
    builders = {"gpt2": _gpt2_spec, "gpt_neox": _gpt_neox_spec}
    if model_type not in builders:
        raise ValueError(f"{config_file}: model_type={model_type!r} is not supported; from_pretrained reads {list(SUPPORTED)}.")
    name = "activation_function" if model_type == "gpt2" else "hidden_act"
    if config.get(name, "gelu") not in ACTIVATIONS:
        raise ValueError(f"{config_file}: {name}={config.get(name)!r} is not supported; use one of {sorted(ACTIVATIONS)}.")
    try:
        return model_type, check_spec(builders[model_type](config))
    except ValueError as error:
        raise ValueError(f"{config_file}: {error}") from None


# ---------------------------------------------------------------------------------------------
# the checkpoint's tensors (names, shapes) and how they become the Decoder's arrays


class _Source(NamedTuple):
    """One parameter of the Decoder: the checkpoint tensors it reads, their shapes, and how."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    build: Callable[..., np.ndarray]


def _norm(prefix: str, d: int) -> dict:
    return {"scale": _Source((f"{prefix}.weight",), ((d,),), lambda w: w),
            "bias": _Source((f"{prefix}.bias",), ((d,),), lambda b: b)}


def _gpt2_sources(spec: DecoderSpec) -> dict:
    d, h, k, m = spec.width, spec.num_heads, spec.head_dim, spec.mlp_width

    def block(p: str) -> dict:
        qkv = lambda j: _Source((f"{p}.attn.c_attn.weight",), ((d, 3 * d),), lambda w: w[:, j * d:(j + 1) * d].reshape(d, h, k))
        qkv_bias = lambda j: _Source((f"{p}.attn.c_attn.bias",), ((3 * d,),), lambda b: b[j * d:(j + 1) * d].reshape(h, k))
        attention = {name: {"kernel": qkv(j), "bias": qkv_bias(j)} for j, name in enumerate(("query", "key", "value"))}
        attention["out"] = {"kernel": _Source((f"{p}.attn.c_proj.weight",), ((d, d),), lambda w: w.reshape(h, k, d)),
                            "bias": _Source((f"{p}.attn.c_proj.bias",), ((d,),), lambda b: b)}
        linear = lambda name, shape: {"kernel": _Source((f"{p}.mlp.{name}.weight",), (shape,), lambda w: w),
                                      "bias": _Source((f"{p}.mlp.{name}.bias",), ((shape[1],),), lambda b: b)}
        return {"attn_norm": _norm(f"{p}.ln_1", d), "attn": attention, "mlp_norm": _norm(f"{p}.ln_2", d),
                "mlp": {"hidden": linear("c_fc", (d, m)), "out": linear("c_proj", (m, d))}}

    sources = {"embed": {"embedding": _Source(("wte.weight",), ((spec.vocab_size, d),), lambda w: w)},
               "position": {"embedding": _Source(("wpe.weight",), ((spec.context_length, d),), lambda w: w)},
               "blocks": [block(f"h.{layer}") for layer in range(spec.num_layers)],
               "final_norm": _norm("ln_f", d)}
    if not spec.tie_embeddings:
        sources["unembed"] = {"kernel": _Source(("lm_head.weight",), ((spec.vocab_size, d),), lambda w: w.T)}
    return sources


def _gpt_neox_sources(spec: DecoderSpec) -> dict:
    d, h, k, m = spec.width, spec.num_heads, spec.head_dim, spec.mlp_width

    def block(p: str) -> dict:
        name = f"{p}.attention.query_key_value"
        # (3d, d) rows ordered (head, q/k/v, head_dim): transpose to (d, 3d), then split the rows' axis.
        kernel = lambda j: _Source((f"{name}.weight",), ((3 * d, d),), lambda w: w.T.reshape(d, h, 3, k)[:, :, j, :])
        bias = lambda j: _Source((f"{name}.bias",), ((3 * d,),), lambda b: b.reshape(h, 3, k)[:, j, :])
        attention = {n: {"kernel": kernel(j), **({"bias": bias(j)} if spec.attention_bias else {})}
                     for j, n in enumerate(("query", "key", "value"))}
        attention["out"] = {"kernel": _Source((f"{p}.attention.dense.weight",), ((d, d),), lambda w: w.T.reshape(h, k, d))}
        if spec.attention_bias:
            attention["out"]["bias"] = _Source((f"{p}.attention.dense.bias",), ((d,),), lambda b: b)
        linear = lambda n, inp, out: {"kernel": _Source((f"{p}.mlp.{n}.weight",), ((out, inp),), lambda w: w.T),
                                      "bias": _Source((f"{p}.mlp.{n}.bias",), ((out,),), lambda b: b)}
        return {"attn_norm": _norm(f"{p}.input_layernorm", d), "attn": attention,
                "mlp_norm": _norm(f"{p}.post_attention_layernorm", d),
                "mlp": {"hidden": linear("dense_h_to_4h", d, m), "out": linear("dense_4h_to_h", m, d)}}

    sources = {"embed": {"embedding": _Source(("embed_in.weight",), ((spec.vocab_size, d),), lambda w: w)},
               "blocks": [block(f"layers.{layer}") for layer in range(spec.num_layers)],
               "final_norm": _norm("final_layer_norm", d)}
    if spec.tie_embeddings:
        return sources
    sources["unembed"] = {"kernel": _Source(("embed_out.weight",), ((spec.vocab_size, d),), lambda w: w.T)}
    return sources


_SOURCES = {"gpt2": (_gpt2_sources, "transformer."), "gpt_neox": (_gpt_neox_sources, "gpt_neox.")}


def _folder(path) -> pathlib.Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path={path!r} must be a folder path (str or os.PathLike).")
    folder = pathlib.Path(path).expanduser()
    if not folder.is_dir():
        raise ValueError(f"path={str(path)!r} is not a folder; pass the local folder of a Hugging Face model "
                         "(e.g. from huggingface_hub.snapshot_download).")
    return folder


def _weight_files(folder: pathlib.Path) -> list[pathlib.Path]:
    """The safetensors files of a checkpoint; a clear error for pickled weights."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        files = sorted({folder / name for name in weight_map.values()})
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise ValueError(f"{index} lists shards that are not in the folder: {absent}; download them all.")
        return files
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    shards = sorted(folder.glob("model-*-of-*.safetensors"))
    if shards:
        return shards
    pickled = sorted(p.name for pattern in _PICKLED for p in folder.glob(pattern))
    if pickled:
        raise ValueError(
            f"{folder} holds only pickled weights ({', '.join(pickled)}), which slt_jax never loads (unpickling runs "
            "code). Convert them to safetensors once, with a copy of transformers you trust: "
            "AutoModelForCausalLM.from_pretrained(folder).save_pretrained(folder) writes model.safetensors; or "
            "download the repository's *.safetensors files instead."
        )
    raise ValueError(f"{folder} has no model.safetensors (nor model-0000x-of-0000y.safetensors shards with their index).")


def _tensor_table(files: Sequence[pathlib.Path], prefix: str) -> dict[str, tuple[pathlib.Path, tuple[int, ...]]]:
    """``{name without the task-head prefix: (file, shape)}`` from the safetensors headers (no data read)."""
    table = {}
    for file in files:
        with safe_open(str(file), framework="numpy") as handle:
            for name in handle.keys():
                short = name[len(prefix):] if name.startswith(prefix) else name
                table[short] = (file, tuple(handle.get_slice(name).get_shape()), name)
    return table


def _read_tensor(file: pathlib.Path, name: str) -> np.ndarray:
    with safe_open(str(file), framework="numpy") as handle:
        if handle.get_slice(name).get_dtype() != "BF16":
            return handle.get_tensor(name)
    with safe_open(str(file), framework="flax") as handle:  # numpy has no bfloat16
        return np.asarray(handle.get_tensor(name).astype(jnp.float32))


def _is_source(node) -> bool:
    return isinstance(node, _Source)


def _check_sources(sources: dict, table: Mapping, folder: pathlib.Path, ignored: tuple[str, ...] = ()) -> None:
    """Every tensor the model needs is present with its shape; nothing unknown is left over."""
    needed = {}
    for source in jax.tree.leaves(sources, is_leaf=_is_source):
        needed.update(zip(source.names, source.shapes))
    missing = sorted(set(needed) - set(table))
    if missing:
        raise ValueError(f"{folder}: the checkpoint lacks tensor(s) {missing[:6]}{' ...' if len(missing) > 6 else ''} that "
                         "its config.json requires; the download is incomplete or config.json is not this model's.")
    for name, shape in needed.items():
        if table[name][1] != shape:
            raise ValueError(f"{folder}: tensor {table[name][2]!r} has shape {table[name][1]} but config.json implies "
                             f"{shape}; config.json and the weights disagree.")
    unknown = sorted(name for name in set(table) - set(needed) if not _BUFFERS.search(name) and name not in ignored)
    if unknown:
        raise ValueError(f"{folder}: tensor(s) {unknown[:6]} are not part of the model config.json describes "
                         "(more layers than num_layers, or another architecture); check config.json.")


def _load_arrays(folder: pathlib.Path, model_type: str, spec: DecoderSpec) -> dict:
    build_sources, prefix = _SOURCES[model_type]
    sources = build_sources(spec)
    table = _tensor_table(_weight_files(folder), prefix)
    # A tied checkpoint may still store its unembedding (a copy of the token embedding): not read.
    _check_sources(sources, table, folder, ("lm_head.weight", "embed_out.weight") if spec.tie_embeddings else ())
    cache: dict[str, np.ndarray] = {}

    def read(name: str) -> np.ndarray:
        if name not in cache:
            file, _, stored = table[name]
            cache[name] = np.asarray(_read_tensor(file, stored), np.float32)
        return cache[name]

    return jax.tree.map(lambda s: np.ascontiguousarray(s.build(*(read(n) for n in s.names))), sources, is_leaf=_is_source)


def from_pretrained(path: str | os.PathLike, *, dtype=jnp.float32) -> Decoder:
    """Reads a local Hugging Face checkpoint of GPT-2 or GPT-NeoX (Pythia) into a Flax NNX ``Decoder``.

    Args:
        path: a folder with ``config.json`` and ``model.safetensors`` (or sharded
            ``model-0000x-of-0000y.safetensors`` with ``model.safetensors.index.json``), e.g. from
            ``huggingface_hub.snapshot_download(repo_id, allow_patterns=["config.json", "*.safetensors*"])``.
        dtype: the parameters' dtype (``jnp.float32`` default; ``jnp.bfloat16`` halves memory).

    Returns:
        A ``Decoder``: ``tokens (batch, seq) -> logits (batch, seq, vocab_size)``, with
        ``context_length``, ``vocab_size``, ``spec``, ``attention_paths()`` and ``mlp_paths()``.
        ``slt_jax.from_nnx(model, "next_token")`` gives ``(params, loss_fn)`` in the layout of
        ``slt_jax.zoo.decoder``.

    Raises:
        ValueError: an unsupported ``model_type`` or setting, pickled weights only (``.bin``), or a
            tensor missing or of the wrong shape (named), all before any array is built.

    The logits equal ``transformers``' float32 PyTorch model's to 1e-4 on CPU (tests/test_pretrained.py).
    On a GPU, XLA may run float32 matrix products in TF32; ``jax.config.update(
    "jax_default_matmul_precision", "highest")`` restores full float32 products.

    >>> import pathlib, slt_jax as sj
    >>> folder = pathlib.Path(sj.__file__).parents[1] / "tests" / "fixtures" / "pretrained" / "gpt_neox_parallel"
    >>> model = sj.models.from_pretrained(folder)          # a random 2-layer GPT-NeoX written by transformers
    >>> params, loss_fn = sj.from_nnx(model, "next_token")
    >>> params["blocks"][0]["attn"]["query"]["kernel"].shape   # (width, heads, head_dim), split from the fused QKV
    (16, 2, 8)
    >>> head = sj.head_mask(params, model.attention_paths()[0], 1)
    """
    folder = _folder(path)
    model_type, spec = read_spec(folder)
    return Decoder(spec, _load_arrays(folder, model_type, spec), dtype=dtype)


# ---------------------------------------------------------------------------------------------
# a checkpoint series


class Series(NamedTuple):
    """Several checkpoints of one model, for ``estimate_llc_table`` / ``track_development``.

    Attributes:
        model: the first checkpoint's ``Decoder`` (its ``from_nnx`` loss serves every checkpoint).
        checkpoints: one params pytree per path, in ``from_nnx`` layout, in the order given.
        steps: the training step of each checkpoint: the number in each folder name's ``step<N>``
            (Pythia's revision names) when every name has one, else 0..K-1.
    """

    model: Decoder
    checkpoints: list
    steps: list[int]


def load_series(paths: Sequence[str | os.PathLike], *, dtype=jnp.float32) -> Series:
    """Loads checkpoints of one architecture (e.g. Pythia revisions ``step1000``, ``step2000``, ...).

    Args:
        paths: the checkpoints' folders (each as for ``from_pretrained``), in training order.
        dtype: the parameters' dtype.

    Returns:
        A ``Series(model, checkpoints, steps)``; ``params, loss_fn = sj.from_nnx(series.model,
        "next_token")`` then ``sj.estimate_llc_table(loss_fn, series.checkpoints, data, config, key=0,
        steps=series.steps)``.

    Raises:
        ValueError: fewer than one path, or a checkpoint whose architecture or tensor shapes differ
            from the first's (named), checked from the config files before any weight is read.
    """
    if isinstance(paths, (str, os.PathLike)) or not isinstance(paths, Sequence) or not paths:
        raise ValueError(f"paths={paths!r} must be a non-empty list of checkpoint folders.")
    specs = [read_spec(path) for path in paths]
    for path, spec in zip(paths[1:], specs[1:]):
        if spec != specs[0]:
            differ = [f"{name}: {a!r} vs {b!r}" for name, a, b in zip(DecoderSpec._fields, specs[0][1], spec[1]) if a != b]
            if spec[0] != specs[0][0]:
                differ.insert(0, f"model_type: {specs[0][0]!r} vs {spec[0]!r}")
            raise ValueError(f"paths: {str(path)!r} is not the same architecture as {str(paths[0])!r} "
                             f"({'; '.join(differ)}); a series holds checkpoints of one model.")
    models = [from_pretrained(path, dtype=dtype) for path in paths]
    checkpoints = [_pure_params(model) for model in models]
    names = [pathlib.Path(path).name for path in paths]
    found = [re.search(r"step(\d+)", name) for name in names]
    steps = [int(m.group(1)) for m in found] if all(found) else list(range(len(paths)))
    return Series(models[0], checkpoints, steps)


def _pure_params(model: Decoder) -> dict:
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


# ---------------------------------------------------------------------------------------------
# batches


def token_batches(
    tokens, seq_len: int | None = None, *, context_length: int | None = None, vocab_size: int | None = None
) -> dict:
    """Token ids as the ``{"inputs": (n, seq)}`` batches of the ``"next_token"`` loss.

    Args:
        tokens: a 1-d stream of token ids (cut into ``n = len // seq_len`` consecutive rows, the
            remainder dropped) or a 2-d ``(n, seq)`` array of rows.
        seq_len: the row length for a 1-d stream (default and maximum: ``context_length``); for 2-d
            tokens None or their ``seq``.
        context_length: the model's ``context_length``: longer rows are an error.
        vocab_size: the model's ``vocab_size``: ids outside ``[0, vocab_size)`` are an error.

    Returns:
        ``{"inputs": int32 array (n, seq)}``.

    >>> import numpy as np
    >>> token_batches(np.arange(10), 4)["inputs"].shape
    (2, 4)
    """
    array = np.asarray(tokens)
    if not np.issubdtype(array.dtype, np.integer) or array.ndim not in (1, 2):
        raise ValueError(f"tokens must be integer ids of shape (length,) or (n, seq), got {array.dtype} {array.shape}.")
    if seq_len is None:
        seq_len = array.shape[1] if array.ndim == 2 else context_length
        if seq_len is None:
            raise ValueError("seq_len: give the row length for a 1-d token stream (or context_length).")
    if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 2:
        raise ValueError(f"seq_len={seq_len!r} must be an int >= 2 (the next-token loss needs two tokens).")
    if context_length is not None and seq_len > context_length:
        raise ValueError(f"seq_len={seq_len} is longer than the model's context_length={context_length}; use seq_len <= "
                         f"{context_length}.")
    if array.ndim == 2:
        if array.shape[1] != seq_len:
            raise ValueError(f"tokens has rows of {array.shape[1]} tokens but seq_len={seq_len}.")
        rows = array
    else:
        count = array.shape[0] // seq_len
        if count == 0:
            raise ValueError(f"tokens has {array.shape[0]} ids, fewer than one row of seq_len={seq_len}.")
        rows = array[: count * seq_len].reshape(count, seq_len)
    if vocab_size is not None and (rows.min() < 0 or rows.max() >= vocab_size):
        raise ValueError(f"tokens has ids in [{rows.min()}, {rows.max()}] outside the model's vocabulary [0, {vocab_size}); "
                         "use the model's own tokenizer.")
    return {"inputs": jnp.asarray(rows, jnp.int32)}


def text_batches(
    text_file: str | os.PathLike,
    tokenizer_file: str | os.PathLike,
    seq_len: int | None = None,
    *,
    context_length: int | None = None,
    vocab_size: int | None = None,
) -> dict:
    """A text file, tokenized with a local ``tokenizer.json``, as ``{"inputs": (n, seq)}`` batches.

    Needs the ``tokenizers`` package (``pip install "slt_jax[lm]"``). The whole file is one token
    stream cut into rows as by ``token_batches``.

    Args:
        text_file: a UTF-8 text file.
        tokenizer_file: a Hugging Face ``tokenizer.json`` (e.g. the checkpoint folder's).
        seq_len, context_length, vocab_size: as for ``token_batches``.

    Returns:
        ``{"inputs": int32 array (n, seq)}``.
    """
    try:
        tokenizers = importlib.import_module("tokenizers")
    except ImportError:
        raise ImportError('text_batches needs the tokenizers package: pip install "slt_jax[lm]" (or pip install tokenizers).') from None
    for name, value in (("text_file", text_file), ("tokenizer_file", tokenizer_file)):
        if not pathlib.Path(value).is_file():
            raise ValueError(f"{name}={str(value)!r} is not a file.")
    tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_file))
    ids = tokenizer.encode(pathlib.Path(text_file).read_text(encoding="utf-8")).ids
    return token_batches(np.asarray(ids, np.int64), seq_len, context_length=context_length, vocab_size=vocab_size)
