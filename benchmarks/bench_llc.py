"""Sampler speed against its floor: one jitted, chain-vmapped value_and_grad per step.

Workloads (issue 2):
  dln: deep linear network widths [10, 20, 20, 20, 10], n = 10,000, batch 500, 4 chains x 500 draws,
       step 1e-4, localization 100, nβ = n / log n.
  mlp: ReLU MLP 784-256-256-10 on synthetic data labelled by a random teacher (w* = teacher),
       n = 10,000, batch 256, 4 chains x 200 draws.

Reported per workload: compile time (separate), sampling time, chain-steps per second, and the floor
ratio = sampling time / (steps x floor), where the floor is the time of one value_and_grad of the mean
minibatch loss for all chains at once (vmapped), measured two ways:
  floor_call: one jitted call per step (includes dispatch, as a hand-written Python loop would pay);
  floor_scan: the same gradient iterated inside one jitted lax.scan (pure compute, the strict floor).

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


def measure_floor(loss_fn, params, data, batch_size, num_chains, repeats=200):
    batch = jax.tree.map(lambda x: x[:batch_size], data)
    stacked = jax.tree.map(lambda p: jnp.broadcast_to(p, (num_chains,) + p.shape) + 0.0, params)
    value_and_grad = jax.vmap(jax.value_and_grad(lambda p, b: jnp.mean(loss_fn(p, b))), in_axes=(0, None))
    call = jax.jit(value_and_grad)
    _block(call(stacked, batch))
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            out = call(stacked, batch)
        _block(out)
        times.append((time.perf_counter() - start) / repeats)
    floor_call = statistics.median(times)

    @jax.jit
    def scanned(p, b):
        def body(p, _):
            _, g = value_and_grad(p, b)
            # A tiny dependent update keeps XLA from hoisting the gradient out of the loop.
            return jax.tree.map(lambda a, d: a - 1e-12 * d, p, g), None

        return jax.lax.scan(body, p, None, length=repeats)[0]

    _block(scanned(stacked, batch))
    times = []
    for _ in range(5):
        start = time.perf_counter()
        _block(scanned(stacked, batch))
        times.append((time.perf_counter() - start) / repeats)
    return floor_call, statistics.median(times)


def run_workload(name, workload, quick=False):
    loss_fn, params, data, settings = workload()
    if quick:
        settings["num_draws"] = max(20, settings["num_draws"] // 10)
    sample_kwargs = dict(settings)
    first = sj.estimate_llc(loss_fn, params, data, key=0, progress=False, **sample_kwargs)
    # Second run: compiled program cached, so this is pure sampling (plus the L_n(w*) pass).
    start = time.perf_counter()
    result = sj.estimate_llc(loss_fn, params, data, key=1, progress=False, **sample_kwargs)
    wall = time.perf_counter() - start
    chains = result.chains
    steps = chains.num_steps
    floor_call, floor_scan = measure_floor(loss_fn, params, data, settings["batch_size"], settings["num_chains"])
    sampling = chains.sampling_seconds
    first_compile = first.chains.compile_seconds
    return {
        "workload": name,
        "settings": {k: (float(v) if isinstance(v, float) else v) for k, v in settings.items()},
        "num_parameters": int(sum(np.prod(p.shape) for p in jax.tree.leaves(params))),
        "steps_per_chain": steps,
        "compile_seconds_first_run": first_compile,
        "sampling_seconds": sampling,
        "wall_seconds_cached_run": wall,
        "chain_steps_per_second": settings["num_chains"] * steps / sampling,
        "floor_call_seconds": floor_call,
        "floor_scan_seconds": floor_scan,
        "floor_ratio_vs_call": sampling / (steps * floor_call),
        "floor_ratio_vs_scan": sampling / (steps * floor_scan),
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
        print(json.dumps(record, indent=1))
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
