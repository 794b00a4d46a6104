"""Models at scale (issue 19): Pythia-shaped language models from 7M to 1B parameters.

For each size, in a fresh subprocess (its own peak RSS), a random-initialised ``sj.models.TransformerLM``
with Pythia's widths (vocab 50304; random init is fine for cost), ``n`` uniform random token rows of
``--context`` tokens, ``sj.from_nnx(model, "next_token")`` and ``estimate_llc`` with the DEFAULT
``SamplerConfig`` apart from the schedule (``--chains`` x ``--draws``, batch ``--batch``) and the
``"paired"`` loss estimator (no pass over all n at w*). Recorded per size:

* parameters; the planner's choice (``ChainsResult.settings``: groups, chains per group, microbatches,
  its predicted bytes, the memory budget);
* memory: the planner's prediction, XLA's memory analysis of the compiled chunk program(s)
  (arguments + outputs + temporaries - aliased), and the process's peak RSS (``ru_maxrss``);
* time: the first call (cold: compile and sampling seconds as the result reports them, and the wall
  time outside both), and with ``--warm`` a second call with another key (warm wall time);
* the floor: one jitted ``value_and_grad`` of the mean minibatch loss vmapped over the chains
  (``--chains`` copies of the parameters, one batch each), median of 3 calls, times the run's steps;
  and the ratio of the (warm, else cold minus compile) wall time to it;
* the share of wall time outside sampling (planning, L_n(w*) when computed, probes).

Usage (from the repository root, on an otherwise idle machine):

    python benchmarks/bench_scale.py --sizes 7M --draws 50 --warm     # the issue's 7.6M goal, ~15 min CPU
    python benchmarks/bench_scale.py --sizes 70M --draws 2            # 70M on this 24 GiB CPU, ~10 min
    python benchmarks/bench_scale.py --sizes 7M,70M,160M,410M,1B      # accelerators (gpu_runbook.sh)

Results are merged into ``--out`` (default ``benchmarks/results/bench_scale.json``), keyed by size and
backend, so runs of different sizes accumulate.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import time

# Pythia's shapes (width, layers, heads; tied embeddings for the 14M-shaped one, as in issue 19).
SIZES = {
    "7M": dict(width=128, num_layers=6, num_heads=4, tie_embeddings=True),
    "70M": dict(width=512, num_layers=6, num_heads=8, tie_embeddings=False),
    "160M": dict(width=768, num_layers=12, num_heads=12, tie_embeddings=False),
    "410M": dict(width=1024, num_layers=24, num_heads=16, tie_embeddings=False),
    "1B": dict(width=2048, num_layers=16, num_heads=8, tie_embeddings=False),
}
VOCAB = 50304


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _compiled_bytes() -> int:
    """The largest compiled chunk program's bytes by XLA's memory analysis."""
    from slt_jax._src import program

    largest = 0
    for executable in program._COMPILED.values():
        analysis = executable.memory_analysis()
        if analysis is None:
            continue
        total = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes
                 - analysis.alias_size_in_bytes)
        largest = max(largest, int(total))
    return largest


def _floor_seconds(loss_fn, params, data, num_chains: int, batch_size: int) -> float:
    """One jitted value_and_grad of the mean minibatch loss, vmapped over the chains: median of 3."""
    import jax
    import jax.numpy as jnp

    stacked = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_chains,) + x.shape), params)
    batches = jax.tree.map(lambda x: x[: num_chains * batch_size].reshape((num_chains, batch_size) + x.shape[1:]), data)
    value_and_grad = jax.jit(jax.vmap(jax.value_and_grad(lambda p, b: jnp.mean(loss_fn(p, b)))))
    jax.block_until_ready(value_and_grad(stacked, batches))
    times = []
    for _ in range(3):
        start = time.perf_counter()
        jax.block_until_ready(value_and_grad(stacked, batches))
        times.append(time.perf_counter() - start)
    return sorted(times)[1]


def run_size(size: str, args) -> dict:
    """One size, in this process (called in a fresh subprocess)."""
    import jax
    import numpy as np
    from flax import nnx

    import slt_jax as sj

    shape = SIZES[size]
    model = sj.models.TransformerLM(vocab_size=VOCAB, context_length=args.context, mlp_width=4 * shape["width"],
                                    rngs=nnx.Rngs(0), **shape)
    params, loss_fn = sj.from_nnx(model, "next_token")
    del model
    num_parameters = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    tokens = {"inputs": np.random.default_rng(0).integers(0, VOCAB, (args.n, args.context), dtype=np.int32)}
    config = sj.SamplerConfig(step_size=1e-5, localization=100.0, num_chains=args.chains, num_draws=args.draws,
                              batch_size=args.batch)
    record = dict(size=size, parameters=num_parameters, shape=shape, vocab=VOCAB, context=args.context, n=args.n,
                  batch=args.batch, chains=args.chains, draws=args.draws, loss_estimator="paired")
    rss_start = _rss_bytes()
    start = time.perf_counter()
    result = sj.estimate_llc(loss_fn, params, tokens, config, key=0, loss_estimator="paired", progress=False)
    cold_wall = time.perf_counter() - start
    chains = result.chains
    record["cold"] = dict(wall_s=cold_wall, compile_s=chains.compile_seconds, sampling_s=chains.sampling_seconds,
                          outside_s=cold_wall - chains.compile_seconds - chains.sampling_seconds,
                          llc=float(result.llc_mean), llc_std=float(result.llc_std))
    record["settings"] = {k: v for k, v in chains.settings.items() if isinstance(v, (int, float, str, bool, list, dict))}
    record["memory"] = dict(predicted_bytes=chains.settings.get("group_bytes", chains.settings.get("configuration_bytes")),
                            xla_compiled_bytes=_compiled_bytes(), peak_rss_bytes=_rss_bytes(), rss_at_start_bytes=rss_start)
    if args.warm:
        start = time.perf_counter()
        again = sj.estimate_llc(loss_fn, params, tokens, config, key=1, loss_estimator="paired", progress=False)
        wall = time.perf_counter() - start
        record["warm"] = dict(wall_s=wall, compile_s=again.chains.compile_seconds, sampling_s=again.chains.sampling_seconds,
                              outside_s=wall - again.chains.compile_seconds - again.chains.sampling_seconds,
                              llc=float(again.llc_mean), llc_std=float(again.llc_std))
    floor_step = _floor_seconds(loss_fn, params, tokens, args.chains, args.batch)
    floor = floor_step * config.num_steps
    timed = record["warm"] if args.warm else record["cold"]
    wall = timed["wall_s"] - timed["compile_s"]
    record["floor"] = dict(step_s=floor_step, run_s=floor, wall_over_floor=wall / floor,
                           sampling_over_floor=timed["sampling_s"] / floor, outside_share=timed["outside_s"] / wall,
                           measured_on="warm call" if args.warm else "cold call minus compile seconds")
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="7M,70M", help=f"comma-separated, of {', '.join(SIZES)}")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=50)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--warm", action="store_true", help="time a second call (warm) as well")
    parser.add_argument("--out", default="benchmarks/results/bench_scale.json")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_size(args.child, args)))
        return 0
    import jax

    backend = jax.default_backend()
    out = pathlib.Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    for size in args.sizes.split(","):
        if size not in SIZES:
            parser.error(f"--sizes: unknown size {size!r}; use {', '.join(SIZES)}")
        command = [sys.executable, __file__, "--child", size] + [a for a in (argv or sys.argv[1:])]
        print(f"== {size}", flush=True)
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ))
        if done.returncode:
            record = dict(size=size, error=done.stderr[-3000:])
        else:
            record = json.loads(done.stdout.strip().splitlines()[-1])
        record.update(backend=backend, device=str(jax.devices()[0]), jax=jax.__version__, machine=platform.node(),
                      total_s=time.perf_counter() - start, command=" ".join(["python"] + sys.argv))
        results[f"{size}/{backend}"] = record
        print(json.dumps(record, indent=1), flush=True)
        out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
