"""A sweep in N disjoint parts (one process per GPU) and the join of their results.

The unit of work is a cell: one ``[[settings]]`` entry at one checkpoint (all components of that
checkpoint together). The sampler gives chain c of every configuration the key
``split(key, num_chains)[c]`` and a checkpoint's L_n(w*) depends on that checkpoint alone, so a
block of an entry's checkpoints run by itself gives the numbers of the same checkpoints in the whole
stack, and blocks rejoin into the one-process result. An entry with ``step_size = "auto"`` is one
unit (its calibration reads the entry's last checkpoint). ``split`` deals the units, in file order,
into N contiguous runs of about equal cost (chain-steps), so each part compiles few programs.

``join_developments`` concatenates ``DevelopmentResult`` blocks of one entry along the checkpoint
axis; every per-configuration array is concatenated, the configuration's centre index renumbered,
and the timings and the count of compiled groups (``chains.settings["groups"]``) summed over parts.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import jax
import numpy as np

from slt_jax.development import DevelopmentResult
from slt_jax.kernels import Hyperparameters
from slt_jax.llc import LLCTable
from slt_jax.sampler import ChainsResult

__all__ = ["parse_part", "split", "join_developments"]

_PART = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_part(part) -> tuple[int, int]:
    """``"i/N"`` or ``(i, N)`` -> ``(i, N)`` with 1 <= i <= N (parts are numbered from 1)."""
    if isinstance(part, str):
        match = _PART.match(part)
        if match is None:
            raise ValueError(f"part={part!r} must be 'i/N', e.g. '2/4' for the second of four parts "
                             "(SLURM: --part $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT with #SBATCH --array=1-N).")
        part = (int(match.group(1)), int(match.group(2)))
    ok = isinstance(part, tuple) and len(part) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in part)
    if not ok:
        raise TypeError(f"part={part!r} must be a string 'i/N' or a tuple (i, N) of ints.")
    index, count = part
    if count < 1 or not 1 <= index <= count:
        raise ValueError(f"part={index}/{count}: parts are numbered 1..N with N >= 1, so i must be in 1..{max(count, 1)} "
                         "(a SLURM array for N parts is #SBATCH --array=1-N).")
    return index, count


def split(weights: Sequence[float], num_parts: int) -> list[range]:
    """Contiguous runs of the units ``0..U-1`` (costs ``weights``), one non-empty run per part.

    Each run in turn ends where its cost comes closest to an equal share of what is left, so the
    parts' costs are about equal; ``num_parts`` may not exceed the number of units.
    """
    weights = np.asarray(weights, np.float64)
    count = len(weights)
    if num_parts > count:
        raise ValueError(f"the sweep has {count} unit(s) of work (settings entries x checkpoints; an entry with "
                         f"step_size = \"auto\" is one unit), fewer than the {num_parts} parts asked for; use at most "
                         f"{count} parts.")
    before = np.concatenate([[0.0], np.cumsum(weights)])  # before[u]: the cost of units 0..u-1
    bounds = [0]
    for j in range(num_parts - 1):
        start = bounds[-1]
        target = before[start] + (before[-1] - before[start]) / (num_parts - j)
        ends = np.arange(start + 1, count - (num_parts - j - 1) + 1)  # leave a unit for every later part
        bounds.append(int(ends[np.argmin(np.abs(before[ends] - target))]))
    bounds.append(count)
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def _join_settings(pieces: list[dict]) -> dict:
    """Equal values kept; flags any part raised; counts summed (e.g. compiled groups)."""
    joined = {}
    for key in dict.fromkeys(k for piece in pieces for k in piece):
        values = [piece[key] for piece in pieces if key in piece]
        if all(v == values[0] for v in values):
            joined[key] = values[0]
        elif all(isinstance(v, bool) for v in values):
            joined[key] = any(values)
        elif all(isinstance(v, (int, float)) for v in values):
            joined[key] = sum(values)
        else:
            joined[key] = values[0]
    return joined


def _join_chains(pieces: list[ChainsResult]) -> ChainsResult:
    """The configurations of every piece, in order (``select``'s inverse along the configuration axis)."""
    concatenate = lambda *xs: np.concatenate(xs, axis=0)
    fields = {}
    for field in dataclasses.fields(ChainsResult):
        name, values = field.name, [getattr(piece, field.name) for piece in pieces]
        if name == "center_index":
            offsets = np.cumsum([0] + [int(v.max()) + 1 for v in values[:-1]])
            fields[name] = np.concatenate([v + o for v, o in zip(values, offsets)])
        elif name in ("observed", "accumulator", "full_loss", "center_loss"):
            fields[name] = None if values[0] is None else jax.tree.map(concatenate, *values)
        elif name == "hyperparameters":
            fields[name] = Hyperparameters(*(concatenate(*xs) for xs in zip(*values)))
        elif name == "final_positions":
            fields[name] = [position for value in values for position in value]
        elif name in ("compile_seconds", "sampling_seconds"):
            fields[name] = sum(values)
        elif name == "num_steps":
            fields[name] = max(values)
        elif name == "settings":
            fields[name] = _join_settings(values)
        elif isinstance(values[0], np.ndarray):
            fields[name] = concatenate(*values)
        else:
            fields[name] = values[0]
    return ChainsResult(**fields)


def _join_tables(pieces: list[LLCTable]) -> LLCTable:
    first = pieces[0]
    # Every field with a leading checkpoint axis (init_loss_stderr is None in tables saved before it existed).
    along = ("steps", "llc_mean", "llc_std", "llc_per_chain", "ess", "rhat", "diverged", "init_loss", "init_loss_stderr")
    joined = {name: np.concatenate([np.asarray(getattr(p, name)) for p in pieces]) for name in along
              if getattr(first, name) is not None}
    return dataclasses.replace(first, **joined, chains=_join_chains([p.chains for p in pieces]))


def join_developments(pieces: Sequence[DevelopmentResult]) -> DevelopmentResult:
    """One ``DevelopmentResult`` from blocks of one run's checkpoints, in checkpoint order.

    Args:
        pieces: results of one settings entry over consecutive blocks of the checkpoints, each
            ``(K_p, M, C)``, same components, chains and config.

    Returns:
        The ``(sum K_p, M, C)`` result one run over every checkpoint gives.
    """
    pieces = list(pieces)
    if any(p.susceptibilities is not None for p in pieces):
        raise ValueError("join_developments joins LLC tables only; these results carry susceptibilities.")
    return dataclasses.replace(
        pieces[0], steps=np.concatenate([np.asarray(p.steps) for p in pieces]),
        llc=_join_tables([p.llc for p in pieces]),
        train_loss=np.concatenate([p.train_loss for p in pieces]), test_loss=np.concatenate([p.test_loss for p in pieces]),
    )
