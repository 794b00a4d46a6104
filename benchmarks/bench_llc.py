"""Sampler speed against its floor: one jitted, chain-vmapped value_and_grad per step.

Workloads (issue 2):
  dln: deep linear network widths [10, 20, 20, 20, 10], n = 10,000, batch 500, 4 chains x 500 draws,
       step 1e-4, localization 100, nβ = n / log n.
  mlp: ReLU MLP 784-256-256-10 on synthetic data labelled by a random teacher (w* = teacher),
       n = 10,000, batch 256, 4 chains x 200 draws.

Reported per workload: compile time (separate), sampling time, chain-steps per second, and the floor
ratio = sampling time / (steps x floor), where the floor is the time of one value_and_grad of the mean
minibatch loss for all chains at once (vmapped), measured three ways:
  floor_call: one jitted call per step on one shared batch (includes dispatch, as a Python loop pays);
  floor_scan: the same gradient iterated inside one jitted lax.scan (pure compute, the strict floor);
  floor_scan_per_chain_batches: as floor_scan, but each chain with its own batch, as the sampler must.
Timings on a shared CPU drift between runs, so floor and sampler are measured interleaved, five
times, and the medians of the paired ratios are reported.

Usage: python benchmarks/bench_llc.py [--quick] [--out benchmarks/results/bench_llc.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import slt_jax as sj


def dln_workload(seed=0):
    widths = [10, 20, 20, 20, 10]
    rng = np.random.default_rng(seed)
    teacher = [rng.normal(size=(a, b)) / math.sqrt(a) for a, b in zip(widths[:-1], widths[1:])]
    x = rng.normal(size=(10_000, widths[0]))
    product = teacher[0]
    for w in teacher[1:]:
        product = product @ w
    y = x @ product + rng.normal(size=(10_000, widths[-1]))
    params = [jnp.asarray(w, jnp.float32) for w in teacher]
    data = {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(y, jnp.float32)}

    def loss_fn(params, batch):
        out = batch["x"]
        for w in params:
            out = out @ w
        return 0.5 * jnp.sum((batch["y"] - out) ** 2, axis=-1)

    settings = dict(step_size=1e-4, localization=100.0, nbeta=sj.default_nbeta(10_000), batch_size=500, num_chains=4, num_draws=500)
    return loss_fn, params, data, settings


def mlp_workload(seed=0):
    sizes = [784, 256, 256, 10]
    rng = np.random.default_rng(seed)
    params = [
        {"w": jnp.asarray(rng.normal(size=(a, b)) * math.sqrt(2.0 / a), jnp.float32), "b": jnp.zeros((b,), jnp.float32)}
        for a, b in zip(sizes[:-1], sizes[1:])
    ]

    def logits_fn(params, x):
        for layer in params[:-1]:
            x = jax.nn.relu(x @ layer["w"] + layer["b"])
        return x @ params[-1]["w"] + params[-1]["b"]

    x = jnp.asarray(rng.normal(size=(10_000, sizes[0])), jnp.float32)
    labels = jnp.argmax(logits_fn(params, x), axis=-1)
    data = {"x": x, "y": labels}

    def loss_fn(params, batch):
        return optax.softmax_cross_entropy_with_integer_labels(logits_fn(params, batch["x"]), batch["y"])

    settings = dict(step_size=1e-5, localization=100.0, nbeta=sj.default_nbeta(10_000), batch_size=256, num_chains=4, num_draws=200)
    return loss_fn, params, data, settings


def _block(x):
    return jax.tree.map(lambda a: a.block_until_ready(), x)


def measure_floor(loss_fn, params, data, batch_size, num_chains, repeats=100, per_chain_batches=False):
    """Seconds of one chain-vmapped value_and_grad of the mean minibatch loss: (per call, in a scan).

    ``per_chain_batches=False`` is the issue's floor: ONE batch shared by all chains (XLA can then
    merge the chains' matmuls). ``True`` gives each chain its own batch, as the sampler must (shared
    minibatches would correlate the chains' noise and make their spread understate the error).
    """
    if per_chain_batches:
        batch = jax.tree.map(lambda x: jnp.stack([x[c * batch_size : (c + 1) * batch_size] for c in range(num_chains)]), data)
        batch_axis = 0
    else:
        batch = jax.tree.map(lambda x: x[:batch_size], data)
        batch_axis = None
    stacked = jax.tree.map(lambda p: jnp.broadcast_to(p, (num_chains,) + p.shape) + 0.0, params)
    value_and_grad = jax.vmap(jax.value_and_grad(lambda p, b: jnp.mean(loss_fn(p, b))), in_axes=(0, batch_axis))
    call = jax.jit(value_and_grad)
    _block(call(stacked, batch))
    start = time.perf_counter()
    for _ in range(repeats):
        out = call(stacked, batch)
    _block(out)
    floor_call = (time.perf_counter() - start) / repeats

    @jax.jit
    def scanned(p, b):
        def body(carry, _):
            p, total = carry
            value, g = value_and_grad(p, b)
            # A tiny dependent update keeps XLA from hoisting the gradient out of the loop, and the
            # value is kept (summed) so that XLA cannot drop the loss computation either.
            return (jax.tree.map(lambda a, d: a - 1e-12 * d, p, g), total + value), None

        return jax.lax.scan(body, (p, jnp.zeros(num_chains)), None, length=repeats)[0]

    _block(scanned(stacked, batch))
    start = time.perf_counter()
    _block(scanned(stacked, batch))
    return floor_call, (time.perf_counter() - start) / repeats


def run_workload(name, workload, quick=False, repeats=5):
    """Interleaves floor and sampler measurements (timings on a shared CPU drift by ±15% between
    runs); reports medians of the paired ratios."""
    loss_fn, params, data, settings = workload()
    if quick:
        settings["num_draws"] = max(20, settings["num_draws"] // 10)
        repeats = 2
    first = sj.estimate_llc(loss_fn, params, data, key=0, progress=False, **settings)
    rows = []
    for repeat in range(repeats):
        floor_call, floor_scan = measure_floor(loss_fn, params, data, settings["batch_size"], settings["num_chains"])
        _, floor_scan_own = measure_floor(loss_fn, params, data, settings["batch_size"], settings["num_chains"], per_chain_batches=True)
        start = time.perf_counter()
        result = sj.estimate_llc(loss_fn, params, data, key=repeat + 1, progress=False, **settings)
        wall = time.perf_counter() - start
        steps = result.chains.num_steps
        sampling = result.chains.sampling_seconds
        rows.append(dict(
            sampling_seconds=sampling, wall_seconds=wall, floor_call_seconds=floor_call, floor_scan_seconds=floor_scan,
            floor_scan_per_chain_batches_seconds=floor_scan_own,
            floor_ratio_vs_call=sampling / (steps * floor_call), floor_ratio_vs_scan=sampling / (steps * floor_scan),
            floor_ratio_vs_scan_per_chain_batches=sampling / (steps * floor_scan_own),
        ))
    median = lambda key: statistics.median(r[key] for r in rows)
    return {
        "workload": name,
        "settings": {k: (float(v) if isinstance(v, float) else v) for k, v in settings.items()},
        "num_parameters": int(sum(np.prod(p.shape) for p in jax.tree.leaves(params))),
        "steps_per_chain": steps,
        "compile_seconds_first_run": first.chains.compile_seconds,
        "sampling_seconds": median("sampling_seconds"),
        "chain_steps_per_second": settings["num_chains"] * steps / median("sampling_seconds"),
        "floor_call_seconds": median("floor_call_seconds"),
        "floor_scan_seconds": median("floor_scan_seconds"),
        "floor_scan_per_chain_batches_seconds": median("floor_scan_per_chain_batches_seconds"),
        "floor_ratio_vs_call": median("floor_ratio_vs_call"),
        "floor_ratio_vs_scan": median("floor_ratio_vs_scan"),
        "floor_ratio_vs_scan_per_chain_batches": median("floor_ratio_vs_scan_per_chain_batches"),
        "repeats": rows,
        "llc_mean": result.llc_mean,
        "llc_std": result.llc_std,
        "diverged": int(result.diverged.sum()),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tenth of the draws (smoke test)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_llc.json"))
    parser.add_argument("--workloads", default="dln,mlp")
    args = parser.parse_args()
    records = []
    for name in args.workloads.split(","):
        compiles_before = sj.compile_count()
        start = time.perf_counter()
        record = run_workload(name, {"dln": dln_workload, "mlp": mlp_workload}[name], quick=args.quick)
        record["compiles"] = sj.compile_count() - compiles_before
        record["total_seconds"] = time.perf_counter() - start
        records.append(record)
        print(json.dumps({k: v for k, v in record.items() if k != "repeats"}, indent=1))
    report = {
        "benchmark": "bench_llc",
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "quick": args.quick,
        "results": records,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
