"""Loop overhead of the chunk program against its floor (issue 22, item 1), one thread, CPU time.

What is timed: the sampler's compiled chunk program itself (the executable ``estimate_llc`` builds,
captured from ``slt_jax._src.program.compiled_chunk`` and called again on a copy of its inputs), and
the floor: a jitted ``lax.scan`` over the same number of steps of ``value_and_grad`` of the mean
minibatch loss, vmapped over the chains, each chain with its own batch (``bench_llc.measure_floor``'s
``per_chain_batches`` floor). Ratio = chunk time / floor time for the same number of steps.

Timings use the process's CPU time (``time.process_time``) with XLA limited to one intra-op thread:
on a shared machine, wall time measures the other jobs, CPU time measures the work. Floor and
variants are interleaved ``--repeats`` times; the figures are the medians (and minima) of the
per-repeat ratios.

Variants (each one compile; a variant must give bitwise the same chunk outputs as the baseline,
checked and recorded):
  draw_unroll=k   ``lax.scan(..., unroll=k)`` on the scan over draws (with one step per draw, the
                  bench_llc settings, this is the loop that runs every step);
  step_unroll=k   the same on the inner scan over the steps between draws, on the workload with
                  ``num_steps_between_draws=10`` (the only setting where that loop has more than one step).

Usage: python benchmarks/bench_loop.py [--quick] [--workloads dln,mlp] [--repeats 7] [--out FILE]
Default --out: benchmarks/results/bench_loop.json.
"""

from __future__ import annotations

import os

# One intra-op thread (before JAX is imported): CPU time then equals the work of one core.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                           "intra_op_parallelism_threads=1").strip()

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_llc  # noqa: E402

import slt_jax as sj  # noqa: E402
from slt_jax._src import program  # noqa: E402


UNROLLED: list[str] = []  # the loops the last capture traced with unroll > 1 (a check that the patch applied)


def unrolled_scan(draw_unroll: int, step_unroll: int):
    """``jax.lax.scan`` with ``unroll`` set for the chunk program's two loops, told apart by their body
    functions' names (``draw`` and ``inner`` in ``slt_jax._src.program.chain_chunk``)."""
    scan = jax.lax.scan

    def patched(f, *args, **kwargs):
        unroll = {"draw": draw_unroll, "inner": step_unroll}.get(getattr(f, "__name__", ""), 1)
        if unroll > 1:
            UNROLLED.append(f.__name__)
        return scan(f, *args, **kwargs) if unroll == 1 else scan(f, *args, unroll=unroll, **kwargs)

    return scan, patched


def capture_chunk(loss_fn, params, data, config, unroll=(1, 1)):
    """(executable, inputs) of the first chunk program that ``estimate_llc`` compiles for ``config``,
    its loops traced with ``unroll`` = (draw loop, step loop)."""
    captured = []
    original = program.compiled_chunk
    scan, patched = unrolled_scan(*unroll)

    def capturing(args, static):
        executable, seconds = original(args, static)
        if not captured:  # copy before the sampler's call donates the carry
            captured.append((executable, jax.tree.map(lambda a: a.copy() if isinstance(a, jax.Array) else a, args), static))
        return executable, seconds

    program.compiled_chunk = capturing
    jax.lax.scan = patched
    try:
        result = sj.estimate_llc(loss_fn, params, data, config, key=0, progress=False)
    finally:
        program.compiled_chunk = original
        jax.lax.scan = scan
    executable, args, static = captured[0]
    return executable, args, static.num_draws * static.steps_per_draw, result.chains.compile_seconds


def _fresh(args):
    return (jax.tree.map(lambda a: a.copy(), args[0]),) + tuple(args[1:])


def cpu_seconds(call) -> float:
    start = time.process_time()
    jax.tree.map(lambda a: a.block_until_ready(), call())
    return time.process_time() - start


def floor_program(loss_fn, params, data, batch_size, num_chains, num_steps):
    """(jitted scan of the chain-vmapped value_and_grad over ``num_steps`` steps, its inputs)."""
    batch = jax.tree.map(lambda x: jnp.stack([x[c * batch_size:(c + 1) * batch_size] for c in range(num_chains)]), data)
    stacked = jax.tree.map(lambda p: jnp.broadcast_to(p, (num_chains,) + p.shape) + 0.0, params)
    value_and_grad = jax.vmap(jax.value_and_grad(lambda p, b: jnp.mean(loss_fn(p, b))))
    return bench_llc.floor_scan(value_and_grad, num_chains, num_steps), (stacked, batch)


def variant_list(quick: bool) -> list[tuple[str, tuple[int, int], dict]]:
    """(name, (draw unroll, step unroll), config changes)."""
    ks = (1, 2, 4) if quick else (1, 2, 4, 8)
    rows = [(f"draw_unroll={k}", (k, 1), {}) for k in ks]
    rows += [(f"thin10,step_unroll={k}", (1, k), {"num_steps_between_draws": 10}) for k in ks]
    return rows


def run_workload(name: str, quick: bool, repeats: int) -> dict:
    loss_fn, params, data, config = {"dln": bench_llc.dln_workload, "mlp": bench_llc.mlp_workload}[name]()
    config = config.replace(num_draws=config.num_draws // (10 if quick else 1))
    built = {}
    for label, unroll, changes in variant_list(quick):
        program._COMPILED.clear()  # the unroll setting is not part of the cached signature
        jax.clear_caches()
        changed = config.replace(**changes)
        if "num_steps_between_draws" in changes:
            changed = changed.replace(num_draws=max(2, config.num_draws // 10))
        executable, args, steps, compile_seconds = capture_chunk(loss_fn, params, data, changed, unroll)
        assert (max(unroll) > 1) == bool(UNROLLED), (label, UNROLLED)
        UNROLLED.clear()
        built[label] = dict(executable=executable, args=args, steps=steps, compile_seconds=compile_seconds)
        print(f"{name} {label}: compiled in {compile_seconds:.1f} s, {steps} steps per chunk", flush=True)
    outputs = {label: jax.device_get(b["executable"](*_fresh(b["args"]))) for label, b in built.items()}
    reference = {"thin10": outputs["thin10,step_unroll=1"], "": outputs["draw_unroll=1"]}
    bitwise = {label: all(np.array_equal(a, b, equal_nan=True) for a, b in zip(
        jax.tree.leaves(out), jax.tree.leaves(reference["thin10" if label.startswith("thin10") else ""])))
        for label, out in outputs.items()}
    floors = {steps: floor_program(loss_fn, params, data, config.batch_size, config.num_chains, steps)
              for steps in {b["steps"] for b in built.values()}}
    for scanned, inputs in floors.values():
        jax.block_until_ready(scanned(*inputs))
    ratios = {label: [] for label in built}
    per_step = {label: [] for label in built}
    floor_per_step = []
    for _ in range(repeats):
        floor_seconds = {steps: cpu_seconds(lambda: scanned(*inputs)) / steps for steps, (scanned, inputs) in floors.items()}
        floor_per_step.append(statistics.mean(floor_seconds.values()))
        for label, b in built.items():
            args = _fresh(b["args"])
            seconds = cpu_seconds(lambda: b["executable"](*args)) / b["steps"]
            per_step[label].append(seconds)
            ratios[label].append(seconds / floor_seconds[b["steps"]])
    rows = [{"variant": label, "compile_seconds": b["compile_seconds"], "steps_per_chunk": b["steps"],
             "bitwise_equal_to_unroll_1": bitwise[label],
             "cpu_ms_per_step_median": 1e3 * statistics.median(per_step[label]),
             "floor_ratio_median": statistics.median(ratios[label]), "floor_ratio_min": min(ratios[label]),
             "floor_ratios": ratios[label]} for label, b in built.items()]
    for row in rows:
        print(f"  {row['variant']:<24} ratio median {row['floor_ratio_median']:.3f} (min {row['floor_ratio_min']:.3f}), "
              f"{row['cpu_ms_per_step_median']:.3f} ms/step, bitwise {row['bitwise_equal_to_unroll_1']}", flush=True)
    return {"workload": name, "config": config.to_dict(), "floor_cpu_ms_per_step_median": 1e3 * statistics.median(floor_per_step),
            "variants": rows}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tenth of the draws, unroll 1, 2, 4 only, 3 repeats")
    parser.add_argument("--workloads", default="dln,mlp")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_loop.json"))
    args = parser.parse_args()
    repeats = 3 if args.quick else args.repeats
    start = time.perf_counter()
    results = [run_workload(name, args.quick, repeats) for name in args.workloads.split(",")]
    report = {"benchmark": "bench_loop", "command": " ".join(sys.argv), "quick": args.quick, "jax": jax.__version__,
              "backend": jax.default_backend(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
              "xla_flags": os.environ["XLA_FLAGS"], "timer": "time.process_time (one intra-op thread)",
              "total_seconds": time.perf_counter() - start, "results": results}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
