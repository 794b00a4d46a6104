"""One process of the runs that tests/test_multihost.py compares. Run as a script, not imported:

    python tests/multihost_worker.py OUT_PREFIX [--processes 2 --process-id I --port PORT] [--checkpoint-dir DIR]

With ``--processes P > 1`` it joins a ``jax.distributed`` job of P processes (gloo CPU collectives,
coordinator on 127.0.0.1:PORT) after importing slt_jax, which must not start a JAX backend. Every
process runs the same calls with the same key and data and writes what it got to
``OUT_PREFIX.<process index>.json``, with the checkpoint files it wrote itself.
"""

import argparse
import json
import os
import pathlib
import sys
import warnings

import jax
from jax.experimental import multihost_utils

import slt_jax as sj  # before jax.distributed.initialize on purpose: importing slt_jax computes nothing
from slt_jax._src import checkpoint as resume_files


def _arguments():
    parser = argparse.ArgumentParser()
    parser.add_argument("out_prefix")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--checkpoint-dir", required=True)
    return parser.parse_args()


if __name__ == "__main__":
    ARGUMENTS = _arguments()
    if ARGUMENTS.processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{ARGUMENTS.port}", num_processes=ARGUMENTS.processes,
            process_id=ARGUMENTS.process_id, initialization_timeout=120,
        )

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from helpers import linear_regression  # noqa: E402

# One chunk length, no burn-in, no MALA check: every run below compiles one small chunk program
# (compiling dominates the time).
CONFIG = sj.SamplerConfig(step_size=1e-3, nbeta=200.0, localization=1.0, num_chains=4, num_draws=120, batch_size=50,
                          chunk_draws=30, mala_every=0)
KEY = 7

WRITES: list[str] = []  # the checkpoint files this process wrote
SNAPSHOT = "state_after_2_chunks.npz"


def _logging_save(save):
    """Logs every checkpoint file this process writes, and keeps a copy of the state after 2 chunks."""
    def logged(path, leaves, meta):
        WRITES.append(path.name)
        save(path, leaves, meta)
        if path.name == "state.npz" and meta["chunks_done"] == 2:
            save(path.with_name(SNAPSHOT), leaves, meta)

    return logged


def _checkpointed_runs(run, checkpoint_dir: str) -> dict:
    """A checkpointed run; the same run after rolling its state back to 2 of 4 chunks (an
    interruption: it resumes from chunk 2); and once more (it restores everything, writes nothing)."""
    out = {}
    resume_files._save_npz = _logging_save(resume_files._save_npz)
    for name in ("checkpointed", "resumed", "repeated"):
        written = len(WRITES)
        out[name] = _llc(run(checkpoint_dir))
        out[f"writes_{name}"] = WRITES[written:]
        if name == "checkpointed":
            if jax.process_index() == 0:
                [state] = pathlib.Path(checkpoint_dir).glob(f"*/{SNAPSHOT}")
                os.replace(state, state.with_name("state.npz"))
            multihost_utils.sync_global_devices("rolled back")
    return out


def _llc(result) -> dict:
    return {"llc_per_chain": result.llc_per_chain.tolist(), "llc_trace_0": result.llc_trace[0].tolist(),
            "final_position_0": np.asarray(result.chains.final_positions[0][0]).tolist()}


def run(checkpoint_dir: str) -> dict:
    loss_fn, w_star, data = linear_regression([1.0, 0.5, 0.1, 0.0], n=200)
    out = {"process_index": jax.process_index(), "process_count": jax.process_count(), "device_count": jax.device_count()}
    out["llc"] = _llc(sj.estimate_llc(loss_fn, w_star, data, CONFIG, key=KEY, progress=False))
    out.update(_checkpointed_runs(
        lambda directory: sj.estimate_llc(loss_fn, w_star, data, CONFIG, key=KEY, progress=False, resume_dir=directory),
        checkpoint_dir,
    ))
    # Several configurations in one program (two components of one layout), on-device accumulators.
    probes = {"train": jax.tree.map(lambda x: x[:8], data)}
    components = {"first_two": jnp.arange(4) < 2, "last_two": jnp.arange(4) >= 2}
    chi = sj.estimate_susceptibilities(loss_fn, w_star, data, CONFIG, key=KEY, probes=probes, components=components,
                                       include_full=False, progress=False)
    out["chi_per_chain"] = chi.chi_per_chain.tolist()
    # 3 chains on 4 devices: a config axis of 4 (the one configuration padded), with a warning.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        uneven = sj.estimate_llc(loss_fn, w_star, data, CONFIG.replace(num_chains=3), key=KEY, progress=False)
    out["uneven"] = uneven.llc_per_chain.tolist()
    out["warnings"] = [str(w.message) for w in caught]
    if jax.process_count() > 1:  # a different key in each process is refused before anything compiles
        before = sj.compile_count()
        try:
            sj.run_chains(loss_fn, [w_star], data, CONFIG, key=jax.process_index(), progress=False)
        except ValueError as error:
            out["different_keys"] = str(error)
        out["compiled_for_different_keys"] = sj.compile_count() - before
    return out


if __name__ == "__main__":
    os.makedirs(ARGUMENTS.checkpoint_dir, exist_ok=True)
    result = run(ARGUMENTS.checkpoint_dir)
    with open(f"{ARGUMENTS.out_prefix}.{jax.process_index()}.json", "w") as file:
        json.dump(result, file)
    sys.exit(0)
