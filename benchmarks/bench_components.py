"""Per-component restricted LLC for every attention head of the tiny transformer (issue 3).

Workload: ``slt_jax.zoo.models.AttentionOnlyTransformer`` (2 layers x 4 heads, width 32, vocab 16,
context 16) trained with Adam for 300 steps on ``tasks.repeated_tokens`` (it learns an induction
circuit), then the restricted LLC of each of the 8 heads (``head_mask``: its q/k/v/out slices) at
the trained w*, two ways with identical settings and keys:

  vmapped: ``estimate_llc_table(loss_fn, [params], data, config, components=heads)`` -- all heads
           as configurations of one run: heads of one layer share a restriction layout, so they are
           vmapped in ONE compiled program per layer (``run_chains(masks=...)``), each chain carrying
           only its head's coordinates;
  loop:    a Python loop of ``estimate_llc(component=mask)``, one head at a time (heads of one layer
           share the executable; only their offsets differ).

Reported: for each way, the first run's wall and compile time and the best sampling time over
``--repeats`` alternating repetitions, and the largest difference between the two estimates (they use
the same chain keys, so they agree up to float round-off).

Usage (any backend; JAX picks the device):
  python benchmarks/bench_components.py [--quick] [--num-draws N] [--repeats R] [--out FILE]
Default ``--out``: benchmarks/results/bench_components.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import numpy as np
import optax
from flax import nnx

import slt_jax as sj

VOCAB, PREFIX, LAYERS, HEADS, WIDTH = 16, 8, 2, 4, 32


def trained_transformer(num_steps: int):
    model = sj.models.AttentionOnlyTransformer(VOCAB, 2 * PREFIX, LAYERS, HEADS, WIDTH, rngs=nnx.Rngs(0))
    params, loss_fn = sj.from_nnx(model, "next_token")
    data = sj.tasks.repeated_tokens(0, 2048, VOCAB, PREFIX)
    start = time.perf_counter()
    result = sj.train(loss_fn, params, data, optimizer=optax.adam(3e-3), num_steps=num_steps, batch_size=64)
    train_seconds = time.perf_counter() - start
    held_out = sj.tasks.repeated_tokens(1, 512, VOCAB, PREFIX)
    losses = np.asarray(jax.jit(loss_fn)(result.params, held_out))
    return result.params, loss_fn, data, {
        "train_steps": num_steps,
        "train_seconds": train_seconds,
        "held_out_loss_repeated_tokens": float(losses[:, PREFIX - 1:].mean()),
        "held_out_loss_first_half": float(losses[:, : PREFIX - 1].mean()),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer draws (smoke run)")
    parser.add_argument("--num-chains", type=int, default=4)
    parser.add_argument("--num-draws", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2, help="alternating repetitions of both ways")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_components.json"))
    args = parser.parse_args()
    num_draws = args.num_draws or (50 if args.quick else 300)

    params, loss_fn, data, training = trained_transformer(300)
    components = {
        f"L{layer}H{head}": sj.head_mask(params, f"blocks/{layer}/attn", head) for layer in range(LAYERS) for head in range(HEADS)
    }
    config = sj.SamplerConfig(
        step_size=1e-4,
        localization=100.0,
        num_chains=args.num_chains,
        num_draws=num_draws,
        num_burnin=num_draws // 5,
        batch_size=64,
    )

    # Alternate the two ways so that both see the same (shared, noisy) machine load; the first
    # repetition of each includes its compilation, later ones reuse the executables.
    vmapped_runs, loop_runs = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        table = sj.estimate_llc_table(loss_fn, [params], data, config, key=0, components=components, progress=False)
        vmapped_runs.append({"wall_seconds": time.perf_counter() - start, "compile_seconds": table.chains.compile_seconds,
                             "sampling_seconds": table.chains.sampling_seconds, "groups": table.chains.settings["groups"]})

        start = time.perf_counter()
        looped, loop_compile, loop_sampling = {}, 0.0, 0.0
        for name, mask in components.items():
            result = sj.estimate_llc(loss_fn, params, data, config, key=0, component=mask, progress=False)
            looped[name] = result
            loop_compile += result.chains.compile_seconds
            loop_sampling += result.chains.sampling_seconds
        loop_runs.append({"wall_seconds": time.perf_counter() - start, "compile_seconds": loop_compile, "sampling_seconds": loop_sampling})

    difference = max(float(np.nanmax(np.abs(table.result(0, n).llc_per_chain - looped[n].llc_per_chain))) for n in components)
    report = {
        "benchmark": "bench_components",
        "workload": {
            "model": f"AttentionOnlyTransformer(vocab={VOCAB}, context={2 * PREFIX}, layers={LAYERS}, heads={HEADS}, width={WIDTH})",
            "num_parameters": int(sum(np.size(p) for p in jax.tree.leaves(params))),
            "task": f"repeated_tokens(n=2048, prefix={PREFIX}, repeats=2)",
            "components": len(components),
            "coordinates_per_head": int(table.num_sampled[0]),
            "config": config.to_dict(),
            "key": 0,
        },
        "training": training,
        "vmapped": {
            "first_wall_seconds": vmapped_runs[0]["wall_seconds"],
            "compile_seconds": vmapped_runs[0]["compile_seconds"],
            "best_sampling_seconds": min(r["sampling_seconds"] for r in vmapped_runs),
            "runs": vmapped_runs,
        },
        "loop": {
            "first_wall_seconds": loop_runs[0]["wall_seconds"],
            "compile_seconds": loop_runs[0]["compile_seconds"],
            "best_sampling_seconds": min(r["sampling_seconds"] for r in loop_runs),
            "runs": loop_runs,
        },
        "speedup_loop_over_vmapped": {
            "first_wall": loop_runs[0]["wall_seconds"] / vmapped_runs[0]["wall_seconds"],
            "best_sampling": min(r["sampling_seconds"] for r in loop_runs) / min(r["sampling_seconds"] for r in vmapped_runs),
        },
        "max_abs_difference_llc_per_chain": difference,
        "llc_per_head": {name: {"mean": float(table.llc_mean[0, i]), "std": float(table.llc_std[0, i])} for i, name in enumerate(table.components)},
        "environment": {
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()],
            "device_kind": jax.devices()[0].device_kind,
            "cpu_count": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "note": "shared machine: other engineers' jobs were running, so absolute times are inflated and noisy",
        },
        "command": " ".join(sys.argv),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(report, handle, indent=2)
    print(table.table())
    print(json.dumps({k: report[k] for k in ("vmapped", "loop", "speedup_loop_over_vmapped", "max_abs_difference_llc_per_chain")}, indent=2))


if __name__ == "__main__":
    main()
