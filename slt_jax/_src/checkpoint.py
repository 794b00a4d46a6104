"""Resumable runs: the sampler's resume state at chunk boundaries, as npz files (no pickle).

(In slt_jax a *checkpoint* is a training run's parameters; what this module writes is the sampler's
*resume* state, in the user's ``resume_dir``.)

``run_chains(..., resume_dir=path)`` writes, after every chunk, the chunk's per-draw records
(``records_00003.npz``) and then the carry (chain states, accumulators, divergence steps) with the
offsets (``state.npz``, replaced atomically) into ``path/<fingerprint>/``. A restarted run with the
same fingerprint loads them and skips the chunks already done. Noise and minibatches are keyed by
(chain key, global step), and the same compiled chunk program runs on the same inputs, so the
resumed run ends bitwise identical to an uninterrupted one.

The fingerprint hashes every setting that changes the result: the hyperparameters, schedule and
chunk lengths, sampler, static options, the PRNG key, the bytes of params, data, masks and
observe_data, the jax version and backend. Functions (``loss_fn``, ``observe``) are identified by
their qualified names only: do not change a loss function's code between a run and its resumption.
A finished run's files stay, so repeating the call returns the stored result at once; delete the
directory to start over.

With several processes (``jax.distributed``) ``resume_dir`` must be on a filesystem every process
sees: every process gathers the state (a collective), process 0 alone writes it, and the others wait
at a barrier until it is written; on restart every process reads the same files, and a process that
finds a different state (a directory that is not shared) stops the run with a ``ValueError``.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re

import jax
import numpy as np

from slt_jax._src import multihost

__all__ = ["fingerprint", "RunCheckpoint"]

_STATE = "state.npz"


def _hash_tree(digest, tree) -> None:
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype.str}|{array.shape}".encode())
        digest.update(array.tobytes())


def _name(value) -> str:
    if value is None:
        return "None"
    if callable(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', type(value).__qualname__)}"
    return _ADDRESS.sub("", repr(value))


# Object reprs such as "<function loss at 0x7f...>" (inside a repr'd settings string) change from one
# process to the next; the fingerprint keeps the name and drops the address, so a restarted process
# finds its resume state.
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _stable(value):
    if isinstance(value, str):
        return _ADDRESS.sub("", value)
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_stable(v) for v in value]
    return value


def fingerprint(settings: dict, arrays: dict) -> str:
    """A hex digest of JSON-able ``settings`` (functions by name, object addresses dropped) and the
    bytes of ``arrays`` (pytrees): the same in every process for the same run."""
    digest = hashlib.sha256()
    described = {k: _stable(v) if isinstance(v, (int, float, str, bool, list, tuple, dict)) or v is None else _name(v) for k, v in settings.items()}
    described["jax"] = jax.__version__
    described["backend"] = jax.default_backend()
    digest.update(json.dumps(described, sort_keys=True, default=_name).encode())
    for name in sorted(arrays):
        digest.update(name.encode())
        _hash_tree(digest, arrays[name])
    return digest.hexdigest()[:20]


def _save_npz(path: pathlib.Path, leaves: list, meta: dict) -> None:
    temporary = path.with_name(path.name + ".tmp.npz")
    arrays = {f"leaf_{i:05d}": np.asarray(x) for i, x in enumerate(leaves)}
    with open(temporary, "wb") as file:
        np.savez(file, __meta__=np.array(json.dumps(meta)), **arrays)
    os.replace(temporary, path)


def _load_npz(path: pathlib.Path) -> tuple[list, dict]:
    with np.load(path, allow_pickle=False) as contents:
        meta = json.loads(str(contents["__meta__"]))
        leaves = [contents[f"leaf_{i:05d}"] for i in range(meta["num_leaves"])]
    return leaves, meta


class RunCheckpoint:
    """The resume files of one run (one fingerprint) under ``directory``.

    Args:
        directory: the user's ``resume_dir``.
        key: the run's fingerprint.
        carry_like: a carry pytree with the run's structure (its values are not used).
        record_like: a chunk-record pytree with the run's structure.
    """

    def __init__(self, directory, key: str, carry_like, record_like):
        self.path = pathlib.Path(directory) / key
        self.key = key
        self.carry_def = jax.tree.structure(carry_like)
        self.record_def = jax.tree.structure(record_like)

    def save(self, chunk_index: int, carry, record, step_offset: int, draw_offset: int) -> None:
        """Writes chunk ``chunk_index``'s record (if it recorded draws), then the carry and offsets.

        Every process calls it; process 0 writes, and every process returns once the files are written.
        """
        carry, record = multihost.to_host((carry, record))
        if multihost.is_writer():
            self._write(chunk_index, carry, record, step_offset, draw_offset)
        multihost.barrier(f"slt_jax resume {self.key} chunk {chunk_index}")

    def _write(self, chunk_index: int, carry, record, step_offset: int, draw_offset: int) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        if record is not None:
            leaves = jax.tree.leaves(record)
            _save_npz(self.path / f"records_{chunk_index:05d}.npz", leaves, {"num_leaves": len(leaves)})
        leaves = jax.tree.leaves(carry)
        meta = {
            "num_leaves": len(leaves),
            "fingerprint": self.key,
            "chunks_done": chunk_index + 1,
            "step_offset": int(step_offset),
            "draw_offset": int(draw_offset),
            "recorded_chunks": sorted(int(p.stem.split("_")[1]) for p in self.path.glob("records_*.npz") if ".tmp" not in p.name),
        }
        _save_npz(self.path / _STATE, leaves, meta)

    def restore(self):
        """Returns ``(carry, records, step_offset, draw_offset, chunks_done)`` or None if absent.

        ``carry`` and ``records`` hold numpy arrays; the caller moves them to the device. Every
        process calls it (it checks that every process found the same state).
        """
        restored = self._read()
        found = [-1, -1, -1] if restored is None else [restored[4], restored[2], restored[3]]
        multihost.check_same(
            f"The resume state found in {str(self.path)!r} (chunks done, step and draw offsets)", found,
            "resume_dir must be a directory that every process reads and process 0 writes (a shared filesystem).",
        )
        return restored

    def _read(self):
        state = self.path / _STATE
        if not state.exists():
            return None
        leaves, meta = _load_npz(state)
        if meta.get("fingerprint") != self.key:
            return None
        carry = jax.tree.unflatten(self.carry_def, leaves)
        records = []
        for index in meta["recorded_chunks"]:
            if index >= meta["chunks_done"]:
                continue  # a record written after the last saved state (interrupted in between)
            record_leaves, _ = _load_npz(self.path / f"records_{index:05d}.npz")
            records.append(jax.tree.unflatten(self.record_def, record_leaves))
        return carry, records, meta["step_offset"], meta["draw_offset"], meta["chunks_done"]
