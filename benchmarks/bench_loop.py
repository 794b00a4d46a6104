"""Loop overhead of the chunk program against its floor (issue 22, item 1), one thread, CPU time.

What is timed: the sampler's compiled chunk program itself (the executable ``estimate_llc`` builds,
captured from ``slt_jax._src.program.compiled_chunk`` and called again on a copy of its inputs), and
the floor: a jitted ``lax.scan`` over the same number of steps of ``value_and_grad`` of the mean
minibatch loss, vmapped over the chains, each chain with its own batch (``bench_llc.measure_floor``'s
``per_chain_batches`` floor). Ratio = chunk time / floor time for the same number of steps. Beside
it, the fresh-batch floor (``fresh_floor_program``): the same scan over a new, pre-gathered
minibatch each step (the issue's floor reuses one batch, which stays in cache).

Timings use the process's CPU time (``time.process_time``) with XLA limited to one intra-op thread:
on a shared machine, wall time measures the other jobs, CPU time measures the work. Floor and
variants are interleaved ``--repeats`` times; the figures are the medians (and minima) of the
per-repeat ratios.

Variant sets (each variant one compile; whether its chunk outputs equal its reference bitwise is
checked and recorded):
  --set unroll (default --out results/bench_loop.json; reference: unroll 1)
    draw_unroll=k   ``lax.scan(..., unroll=k)`` on the scan over draws (with one step per draw, the
                    bench_llc settings, this is the loop that runs every step);
    step_unroll=k   the same on the inner scan over the steps between draws, on the workload with
                    ``num_steps_between_draws=10`` (the only setting where that loop has more than one step).
  --set sampler (default --out results/bench_loop_sampler.json; reference: the sampler as it is)
    sampler             the sampler's chunk program with its defaults;
    jax_threefry        the noise and minibatch indices drawn by JAX's threefry (its CPU lowering: a
                        rolled loop) instead of ``slt_jax._src.rng``'s unrolled hash (the same bits);
    branching           the draws due for MALA / diagnostics chosen by ``lax.cond`` on every draw
                        (``program.due_pattern`` disabled) instead of placed statically;
    rademacher          ``noise="rademacher"`` (other increments: no bitwise reference);
    rademacher,noise_read  the diagnostics' noise norm read from the signs instead of taken as
                        sqrt(Σ ε_t) (``kernels.sgld_update(unit_noise=...)``);
    rademacher,branching.

Usage: python benchmarks/bench_loop.py [--quick] [--set unroll|sampler] [--workloads dln,mlp] [--repeats 7] [--out FILE]
"""

from __future__ import annotations

import os

# One intra-op thread (before JAX is imported): CPU time then equals the work of one core.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                           "intra_op_parallelism_threads=1").strip()

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import NamedTuple  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_llc  # noqa: E402

import slt_jax as sj  # noqa: E402
from slt_jax import kernels  # noqa: E402
from slt_jax._src import program, rng  # noqa: E402

_sgld_update = kernels.sgld_update


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


def capture_chunk(loss_fn, params, data, config, unroll=(1, 1), patches=()):
    """(executable, inputs) of the first chunk program that ``estimate_llc`` compiles for ``config``,
    its loops traced with ``unroll`` = (draw loop, step loop), with ``patches`` (names of ``PATCHES``)
    applied while it is traced."""
    captured = []
    original = program.compiled_chunk
    scan, patched = unrolled_scan(*unroll)
    saved = [(module, name, getattr(module, name)) for patch in patches for module, name, _ in PATCHES[patch]]
    for patch in patches:
        for module, name, value in PATCHES[patch]:
            setattr(module, name, value)

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
        for module, name, value in saved:
            setattr(module, name, value)
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


def fresh_floor_program(loss_fn, params, data, batch_size, num_chains, num_steps, seed=0):
    """The floor with a fresh minibatch every step, as SGLD has: the same scan over pre-gathered
    batches ``(num_steps, num_chains, batch_size, ...)`` (drawn with replacement, gathered before the
    timed call). It is not the issue's floor: it tells how much of the gap to it is the cost of
    reading a batch that is not already in cache, which any minibatch sampler pays."""
    n = jax.tree.leaves(data)[0].shape[0]
    rows = np.random.default_rng(seed).integers(0, n, (num_steps, num_chains, batch_size))
    batches = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)[rows]), data)
    stacked = jax.tree.map(lambda p: jnp.broadcast_to(p, (num_chains,) + p.shape) + 0.0, params)
    value_and_grad = jax.vmap(jax.value_and_grad(lambda p, b: jnp.mean(loss_fn(p, b))))
    scanned = bench_llc.floor_scan(value_and_grad, num_chains, num_steps, per_step_batches=True)
    return scanned, (stacked, batches)


# Alternatives of the sampler's own choices, as (module, attribute, replacement) while tracing.
PATCHES = {
    "jax_threefry": [(rng, "fast", lambda key: key)],
    "branching": [(program, "due_pattern", lambda diagnostics_every, mala_every: None)],
    "noise_read": [(kernels, "sgld_update", lambda *args, unit_noise=False, **kwargs: _sgld_update(*args, **kwargs))],
}


class Variant(NamedTuple):
    name: str
    unroll: tuple = (1, 1)  # (draw loop, step loop)
    changes: dict = {}  # SamplerConfig changes
    patches: tuple = ()  # names of PATCHES
    reference: str | None = None  # the variant whose outputs it should equal bitwise


def variant_list(which: str, quick: bool) -> list[Variant]:
    if which == "sampler":
        return [Variant("sampler", reference="sampler"), Variant("jax_threefry", patches=("jax_threefry",), reference="sampler"),
                Variant("branching", patches=("branching",), reference="sampler"),
                Variant("rademacher", changes={"noise": "rademacher"}),
                Variant("rademacher,noise_read", changes={"noise": "rademacher"}, patches=("noise_read",)),
                Variant("rademacher,branching", changes={"noise": "rademacher"}, patches=("branching",), reference="rademacher")]
    ks = (1, 2, 4) if quick else (1, 2, 4, 8)
    rows = [Variant(f"draw_unroll={k}", (k, 1), reference="draw_unroll=1") for k in ks]
    rows += [Variant(f"thin10,step_unroll={k}", (1, k), {"num_steps_between_draws": 10}, reference="thin10,step_unroll=1") for k in ks]
    return rows


def run_workload(name: str, quick: bool, repeats: int, which: str = "unroll") -> dict:
    loss_fn, params, data, config = {"dln": bench_llc.dln_workload, "mlp": bench_llc.mlp_workload}[name]()
    config = config.replace(num_draws=config.num_draws // (10 if quick else 1))
    built, variants = {}, variant_list(which, quick)
    for variant in variants:
        program._COMPILED.clear()  # neither the unroll setting nor a patch is part of the cached signature
        jax.clear_caches()
        changed = config.replace(**variant.changes)
        if "num_steps_between_draws" in variant.changes:
            changed = changed.replace(num_draws=max(2, config.num_draws // 10))
        executable, args, steps, compile_seconds = capture_chunk(loss_fn, params, data, changed, variant.unroll, variant.patches)
        assert (max(variant.unroll) > 1) == bool(UNROLLED), (variant.name, UNROLLED)
        UNROLLED.clear()
        built[variant.name] = dict(executable=executable, args=args, steps=steps, compile_seconds=compile_seconds)
        print(f"{name} {variant.name}: compiled in {compile_seconds:.1f} s, {steps} steps per chunk", flush=True)
    outputs = {label: jax.device_get(b["executable"](*_fresh(b["args"]))) for label, b in built.items()}
    # None: no reference, or a chunk of another length (the planner aligns chunks to the MALA period only
    # where it places the due draws statically, so --quick's short runs can differ).
    comparable = lambda v: v.reference is not None and built[v.name]["steps"] == built[v.reference]["steps"]
    bitwise = {v.name: all(np.array_equal(a, b, equal_nan=True) for a, b in zip(
        jax.tree.leaves(outputs[v.name]), jax.tree.leaves(outputs[v.reference]))) if comparable(v) else None for v in variants}
    floors = {steps: floor_program(loss_fn, params, data, config.batch_size, config.num_chains, steps)
              for steps in {b["steps"] for b in built.values()}}
    fresh_floors = {steps: fresh_floor_program(loss_fn, params, data, config.batch_size, config.num_chains, steps)
                    for steps in floors}
    for scanned, inputs in list(floors.values()) + list(fresh_floors.values()):
        jax.block_until_ready(scanned(*inputs))
    ratios = {label: [] for label in built}
    fresh_ratios = {label: [] for label in built}
    per_step = {label: [] for label in built}
    floor_per_step, fresh_per_step = [], []
    order = list(built.items())
    for repeat in range(repeats):
        floor_seconds = {steps: cpu_seconds(lambda: scanned(*inputs)) / steps for steps, (scanned, inputs) in floors.items()}
        fresh_seconds = {steps: cpu_seconds(lambda: scanned(*inputs)) / steps for steps, (scanned, inputs) in fresh_floors.items()}
        floor_per_step.append(statistics.mean(floor_seconds.values()))
        fresh_per_step.append(statistics.mean(fresh_seconds.values()))
        random.Random(repeat).shuffle(order)  # a fixed order would favour (or penalise) the same variants every time
        for label, b in order:
            args = _fresh(b["args"])
            seconds = cpu_seconds(lambda: b["executable"](*args)) / b["steps"]
            per_step[label].append(seconds)
            ratios[label].append(seconds / floor_seconds[b["steps"]])
            fresh_ratios[label].append(seconds / fresh_seconds[b["steps"]])
    floor_min = min(floor_per_step)
    rows = [{"variant": label, "compile_seconds": b["compile_seconds"], "steps_per_chunk": b["steps"],
             "bitwise_equal_to_reference": bitwise[label],
             "cpu_ms_per_step_median": 1e3 * statistics.median(per_step[label]),
             "floor_ratio_median": statistics.median(ratios[label]), "floor_ratio_min": min(ratios[label]),
             "ratio_of_minima": min(per_step[label]) / floor_min,
             "fresh_floor_ratio_median": statistics.median(fresh_ratios[label]),
             "floor_ratios": ratios[label]} for label, b in built.items()]
    for row in rows:
        print(f"  {row['variant']:<24} ratio median {row['floor_ratio_median']:.3f} (min {row['floor_ratio_min']:.3f}, "
              f"of minima {row['ratio_of_minima']:.3f}; fresh-batch floor {row['fresh_floor_ratio_median']:.3f}), "
              f"{row['cpu_ms_per_step_median']:.3f} ms/step, bitwise {row['bitwise_equal_to_reference']}", flush=True)
    return {"workload": name, "config": config.to_dict(), "floor_cpu_ms_per_step_median": 1e3 * statistics.median(floor_per_step),
            "floor_cpu_ms_per_step_min": 1e3 * floor_min,
            "fresh_floor_cpu_ms_per_step_median": 1e3 * statistics.median(fresh_per_step),
            "fresh_floor_over_floor_median": statistics.median(f / g for f, g in zip(fresh_per_step, floor_per_step)),
            "variants": rows}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tenth of the draws, unroll 1, 2, 4 only, 3 repeats")
    parser.add_argument("--workloads", default="dln,mlp")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--set", choices=["unroll", "sampler"], default="unroll", help="which variants (module docstring)")
    parser.add_argument("--out", default=None, help="default: results/bench_loop.json (unroll), bench_loop_sampler.json (sampler)")
    args = parser.parse_args()
    if args.out is None:
        args.out = os.path.join(os.path.dirname(__file__), "results", "bench_loop.json" if args.set == "unroll" else "bench_loop_sampler.json")
    repeats = 3 if args.quick else args.repeats
    start = time.perf_counter()
    results = [run_workload(name, args.quick, repeats, args.set) for name in args.workloads.split(",")]
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
