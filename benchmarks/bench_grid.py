"""Configurations stacked in one program: K centres x V variants of the bench_llc DLN workload.

``run_chains`` vmaps every chain of every configuration (centres: checkpoints; variants: components
or hyperparameters) into one compiled chunk program. Reported per stack shape (K, V): the warm wall
time of ``run_chains`` (median of ``--repeats``, after one compiling call), per configuration, and
against K x V single-configuration runs (the (1, 1) row), so that the cost of stacking shows. The
variants are a step-size grid around the workload's ε; the centres are w* scaled by 1 + 0.01 k.

Usage: python benchmarks/bench_grid.py [--shapes 1x1,4x1,1x4] [--repeats 5] [--out FILE]
Default ``--out``: benchmarks/results/bench_grid.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_llc  # noqa: E402

import slt_jax as sj  # noqa: E402


def measure(centers: int, variants: int, repeats: int) -> dict:
    loss_fn, params, data, config = bench_llc.dln_workload()
    stack = [jax.tree.map(lambda p, k=k: p * (1 + 0.01 * k), params) for k in range(centers)]
    grid = {"step_size": [config.step_size * (0.5 + 0.5 * v) for v in range(variants)]}
    run = lambda seed: sj.run_chains(loss_fn, stack, data, config, key=seed, grid=grid, progress=False)
    start = time.perf_counter()
    run(0)
    cold = time.perf_counter() - start
    seconds = []
    for seed in range(1, repeats + 1):
        start = time.perf_counter()
        result = run(seed)
        seconds.append(time.perf_counter() - start)
    warm = statistics.median(seconds)
    return dict(centers=centers, variants=variants, configurations=centers * variants, chains=config.num_chains,
                draws=config.num_draws, cold_seconds=cold, warm_seconds=warm, warm_seconds_all=seconds,
                warm_seconds_per_configuration=warm / (centers * variants),
                sampling_seconds=float(result.sampling_seconds), compile_seconds=float(result.compile_seconds))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="1x1,4x1,1x4", help="KxV stacks: centres x variants")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bench_grid.json"))
    args = parser.parse_args()
    began = time.perf_counter()
    rows = []
    for shape in args.shapes.split(","):
        centers, variants = (int(x) for x in shape.split("x"))
        rows.append(measure(centers, variants, args.repeats))
        single = rows[0]["warm_seconds"] if rows[0]["configurations"] == 1 else None
        row = rows[-1]
        if single:
            row["over_separate_runs"] = row["warm_seconds"] / (single * row["configurations"])
        print(f"K={centers} V={variants}: warm {row['warm_seconds']:.3f} s ({row['warm_seconds_per_configuration']:.3f} s per "
              f"configuration{'' if not single else '; %.2fx separate runs' % row['over_separate_runs']}), "
              f"cold {row['cold_seconds']:.1f} s")
    out = dict(benchmark="bench_grid", command=" ".join(["benchmarks/bench_grid.py"] + sys.argv[1:]), jax=jax.__version__,
               backend=jax.default_backend(), devices=jax.device_count(), cpu_count=os.cpu_count(), platform=platform.platform(),
               total_seconds=time.perf_counter() - began, results=rows)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
