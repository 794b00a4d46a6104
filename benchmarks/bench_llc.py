"""Sampler speed against its floor: one jitted, chain-vmapped value_and_grad per step.

Workloads (issue 2):
  dln: deep linear network widths [10, 20, 20, 20, 10], n = 10,000, batch 500, 4 chains x 500 draws,
       step 1e-4, localization 100, nβ = n / log n.
  mlp: ReLU MLP 784-256-256-10 on synthetic data labelled by a random teacher (w* = teacher),
       n = 10,000, batch 256, 4 chains x 200 draws.
Targets (issue 8): floor ratio DLN <= 1.2, MLP <= 1.35.

Reported per workload: compile time (separate), sampling time, chain-steps per second, and the floor
ratio = sampling time / (steps x floor), where the floor is the time of one value_and_grad of the mean
minibatch loss for all chains at once (vmapped), measured three ways:
  floor_call: one jitted call per step on one shared batch (includes dispatch, as a Python loop pays);
  floor_scan: the same gradient iterated inside one jitted lax.scan (pure compute, the strict floor);
  floor_scan_per_chain_batches: as floor_scan, but each chain with its own batch, as the sampler must.

Variants (separate rows, each ``estimate_llc`` with one change from the baseline):
  baseline: ``SamplerConfig`` defaults (diagnostics_every=1, mala_every=20), ``key=seed`` (threefry);
  prng=IMPL: ``key=jax.random.key(seed, impl=IMPL)`` for IMPL in threefry2x32, rbg, unsafe_rbg;
  diagnostics_every=D, mala_every=M: for D in (1, 10) and M in (20, 0);
  scheme=leimkuhler-matthews: ``SamplerConfig(scheme="leimkuhler-matthews")`` (also alone beside the
  baseline with ``--variants scheme``);
  noise=rademacher: ``SamplerConfig(noise="rademacher")``, two-point increments (also alone beside the
  baseline with ``--variants noise``).
Timings on a shared machine drift between runs, so the floor and every variant are measured
interleaved, ``--repeats`` times (each repeat: floors, then every variant once, against that repeat's
floors), and the medians of the paired ratios are reported. Every variant is run once first to
compile (its compile time is reported; the timed repeats reuse the executable).

Usage (any backend; JAX picks the device):
  python benchmarks/bench_llc.py [--quick] [--workloads dln,mlp] [--variants all|baseline|scheme|noise] [--out FILE]
Default ``--out``: benchmarks/results/bench_llc.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
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

    config = sj.SamplerConfig(step_size=1e-4, localization=100.0, num_draws=500, batch_size=500, num_chains=4)
    return loss_fn, params, data, config


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

    config = sj.SamplerConfig(step_size=1e-5, localization=100.0, num_draws=200, batch_size=256, num_chains=4)
    return loss_fn, params, data, config


def _block(x):
    return jax.tree.map(lambda a: a.block_until_ready(), x)


def floor_scan(value_and_grad, num_chains: int, num_steps: int, per_step_batches: bool = False):
    """The floor program: a jitted scan of ``num_steps`` calls of the chain-vmapped ``value_and_grad``,
    on one batch ``b``, or (``per_step_batches``) on ``b[t]`` at step t."""

    @jax.jit
    def scanned(p, b):
        def body(carry, batch):
            p, total = carry
            value, g = value_and_grad(p, b if batch is None else batch)
            # A tiny dependent update keeps XLA from hoisting the gradient out of the loop, and the
            # value is kept (summed) so that XLA cannot drop the loss computation either.
            return (jax.tree.map(lambda a, d: a - 1e-12 * d, p, g), total + value), None

        return jax.lax.scan(body, (p, jnp.zeros(num_chains)), b if per_step_batches else None, length=num_steps)[0]

    return scanned


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

    scanned = floor_scan(value_and_grad, num_chains, repeats)

    _block(scanned(stacked, batch))
    start = time.perf_counter()
    _block(scanned(stacked, batch))
    return floor_call, (time.perf_counter() - start) / repeats


def variants(which: str) -> list[tuple[str, dict, str | None]]:
    """(name, SamplerConfig changes, PRNG implementation or None for an int seed)."""
    rows = [("baseline", {}, None)]
    if which in ("all", "scheme"):
        rows += [("scheme=leimkuhler-matthews", {"scheme": "leimkuhler-matthews"}, None)]
    if which in ("all", "noise"):
        rows += [("noise=rademacher", {"noise": "rademacher"}, None)]
    if which == "all":
        rows += [(f"prng={impl}", {}, impl) for impl in ("threefry2x32", "rbg", "unsafe_rbg")]
        rows += [
            (f"diagnostics_every={d},mala_every={m}", {"diagnostics_every": d, "mala_every": m}, None)
            for d in (1, 10) for m in (20, 0) if (d, m) != (1, 20)  # (1, 20) is the baseline
        ]
    return rows


def _key(seed: int, impl: str | None):
    return seed if impl is None else jax.random.key(seed, impl=impl)


def run_workload(name, workload, quick=False, repeats=5, which="all"):
    """Interleaves floor and sampler measurements (timings on a shared CPU drift by ±15% between
    runs); reports medians of the paired ratios, per variant."""
    loss_fn, params, data, config = workload()
    if quick:
        config = config.replace(num_draws=max(20, config.num_draws // 10))
        repeats = 2
    rows = variants(which)
    configs = {label: config.replace(**changes) for label, changes, _ in rows}
    first = {}
    for label, _, impl in rows:  # compile every variant's program once, outside the timed repeats
        result = sj.estimate_llc(loss_fn, params, data, configs[label], key=_key(0, impl), progress=False)
        first[label] = dict(compile_seconds=result.chains.compile_seconds, sampling_seconds=result.chains.sampling_seconds)
    timed = {label: [] for label, _, _ in rows}
    floors = []
    for repeat in range(repeats):
        floor_call, floor_scan = measure_floor(loss_fn, params, data, config.batch_size, config.num_chains)
        _, floor_scan_own = measure_floor(loss_fn, params, data, config.batch_size, config.num_chains, per_chain_batches=True)
        floors.append(dict(floor_call_seconds=floor_call, floor_scan_seconds=floor_scan, floor_scan_per_chain_batches_seconds=floor_scan_own))
        for label, _, impl in rows:
            start = time.perf_counter()
            result = sj.estimate_llc(loss_fn, params, data, configs[label], key=_key(repeat + 1, impl), progress=False)
            wall = time.perf_counter() - start
            steps = result.chains.num_steps
            sampling = result.chains.sampling_seconds
            timed[label].append(dict(
                sampling_seconds=sampling, wall_seconds=wall,
                floor_ratio_vs_call=sampling / (steps * floor_call), floor_ratio_vs_scan=sampling / (steps * floor_scan),
                floor_ratio_vs_scan_per_chain_batches=sampling / (steps * floor_scan_own),
                llc_mean=result.llc_mean, diverged=int(result.diverged.sum()), stopped_early=bool(result.chains.settings["stopped_early"]),
            ))
    median = lambda records, key: statistics.median(r[key] for r in records)
    out_rows = []
    for label, changes, impl in rows:
        records = timed[label]
        out_rows.append({
            "variant": label,
            "config_changes": changes,
            "prng_impl": impl or "default (int seed: threefry2x32)",
            "compile_seconds": first[label]["compile_seconds"],
            "sampling_seconds": median(records, "sampling_seconds"),
            "chain_steps_per_second": config.num_chains * config.num_steps / median(records, "sampling_seconds"),
            "floor_ratio_vs_call": median(records, "floor_ratio_vs_call"),
            "floor_ratio_vs_scan": median(records, "floor_ratio_vs_scan"),
            "floor_ratio_vs_scan_per_chain_batches": median(records, "floor_ratio_vs_scan_per_chain_batches"),
            "llc_mean_per_repeat": [r["llc_mean"] for r in records],
            "diverged": sum(r["diverged"] for r in records),
            "stopped_early": any(r["stopped_early"] for r in records),
            "repeats": records,
        })
    return {
        "workload": name,
        "config": config.to_dict(),
        "target_floor_ratio": {"dln": 1.2, "mlp": 1.35}.get(name),
        "num_parameters": int(sum(np.prod(p.shape) for p in jax.tree.leaves(params))),
        "steps_per_chain": config.num_steps,
        "floor_call_seconds": median(floors, "floor_call_seconds"),
        "floor_scan_seconds": median(floors, "floor_scan_seconds"),
        "floor_scan_per_chain_batches_seconds": median(floors, "floor_scan_per_chain_batches_seconds"),
        "floors": floors,
        "variants": out_rows,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tenth of the draws (smoke test)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_llc.json"))
    parser.add_argument("--workloads", default="dln,mlp")
    parser.add_argument("--variants", choices=["all", "baseline", "scheme", "noise"], default="all",
                        help="baseline only, baseline and the Leimkuhler-Matthews scheme, baseline and two-point noise, "
                             "or every variant row")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repetitions (--quick: 2)")
    args = parser.parse_args()
    records = []
    for name in args.workloads.split(","):
        compiles_before = sj.compile_count()
        start = time.perf_counter()
        record = run_workload(name, {"dln": dln_workload, "mlp": mlp_workload}[name], quick=args.quick, repeats=args.repeats,
                              which=args.variants)
        record["compiles"] = sj.compile_count() - compiles_before
        record["total_seconds"] = time.perf_counter() - start
        records.append(record)
        print(f"{name}: floor (scan, per-chain batches) {record['floor_scan_per_chain_batches_seconds'] * 1e3:.3f} ms/step; "
              f"target ratio <= {record['target_floor_ratio']}", flush=True)
        for row in record["variants"]:
            print(f"  {row['variant']:<36} compile {row['compile_seconds']:6.2f} s  sampling {row['sampling_seconds']:7.3f} s  "
                  f"ratio vs scan {row['floor_ratio_vs_scan']:.3f}  vs scan/own batches "
                  f"{row['floor_ratio_vs_scan_per_chain_batches']:.3f}  vs call {row['floor_ratio_vs_call']:.3f}", flush=True)
    report = {
        "benchmark": "bench_llc",
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "quick": args.quick,
        "command": " ".join(sys.argv),
        "results": records,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
