"""Two-point noise (``SamplerConfig(noise="rademacher")``) against Gaussian noise: cost and bias.

Three measurements (issue 22, item 2):
  draw: seconds per million numbers of one jitted draw of ``kernels.tree_noise`` (Gaussian: threefry
        normals; rademacher: 32 signs per ``jax.random.bits`` word), with the sampler's threefry
        layout, at 2^20 numbers and at 4 x 269k = 1.08M (the MLP workload's noise per step), that
        against one chain-vmapped value_and_grad of the workload (the floor).
  floor: the MLP workload of benchmarks/bench_llc.py (784-256-256-10, batch 256, 4 chains x 200
        draws): sampling time / (steps x floor_scan), floor and both noises interleaved ``--repeats``
        times, medians of the paired ratios.
  bias: λ̂ with each noise, against the Gaussian's standard error, on DLNs (tests/issue5_problems.dln:
        the teacher trained to convergence, n = 10^4, the settings of tests/test_llc.py's DLN test)
        and on the MLP workload (more chains and draws). Different noises give different chains, so
        the comparison is of two independent estimates: difference / the Gaussian's standard error
        and / the combined standard error.

Usage:
  python benchmarks/bench_noise.py [--quick] [--repeats 3] [--out FILE]
Default ``--out``: benchmarks/results/bench_noise.json.
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
import jax.numpy as jnp
import numpy as np

import slt_jax as sj
from slt_jax import kernels

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
from bench_llc import measure_floor, mlp_workload  # noqa: E402
from issue5_problems import dln, dln_loss  # noqa: E402

NOISES = ("gaussian", "rademacher")


def _block(x):
    return jax.tree.map(lambda a: a.block_until_ready(), x)


def draw_cost(size: int, repeats: int) -> dict:
    """Median seconds of one jitted draw of ``size`` numbers, per noise (the sampler's threefry layout)."""
    like = jnp.zeros((size,), jnp.float32)
    out = {}
    with jax.threefry_partitionable(False):
        for noise in NOISES:
            # Keys folded per call, as the sampler does per step; the result is reduced so that the
            # draw cannot be skipped, and the reduction is the same for both noises.
            draw = jax.jit(lambda key, t, noise=noise: jnp.sum(kernels.tree_noise(noise, jax.random.fold_in(key, t), like)))
            key = jax.random.key(0)
            _block(draw(key, 0))
            times = []
            for t in range(repeats):
                start = time.perf_counter()
                _block(draw(key, t + 1))
                times.append(time.perf_counter() - start)
            out[noise] = statistics.median(times)
    return out


def _se(result) -> float:
    values = result.llc_per_chain[~result.diverged]
    return float(np.std(values, ddof=1) / np.sqrt(values.size))


def _compare(runs: dict) -> dict:
    g, r = runs["gaussian"], runs["rademacher"]
    se_g, se_r = _se(g), _se(r)
    diff = r.llc_mean - g.llc_mean
    return {
        "llc_gaussian": g.llc_mean, "se_gaussian": se_g, "llc_rademacher": r.llc_mean, "se_rademacher": se_r,
        "difference": diff, "difference_over_gaussian_se": diff / se_g, "difference_over_combined_se": diff / float(np.hypot(se_g, se_r)),
        "sampling_seconds": {noise: runs[noise].chains.sampling_seconds for noise in NOISES},
    }


def dln_bias(shapes, quick: bool, num_chains: int = 32) -> list[dict]:
    """λ̂ with each noise on DLNs; independent keys per noise (no shared minibatches), so the
    combined standard error is that of the difference."""
    rows = []
    for widths, rank in shapes:
        params, data, _ = dln(tuple(widths), rank, 10_000)
        lam = sj.theory.dln_learning_coefficient(list(widths), rank)[0]
        config = sj.SamplerConfig(step_size=3e-6, localization=1.0, num_chains=num_chains, num_draws=8000 // (10 if quick else 1),
                                  num_burnin=4000 // (10 if quick else 1), batch_size=100, mala_every=0)
        runs = {noise: sj.estimate_llc(dln_loss, params, data, config.replace(noise=noise), key=k, progress=False,
                                       loss_estimator="paired") for k, noise in enumerate(NOISES)}
        row = dict(widths=list(widths), rank=rank, llc_theory=lam, **_compare(runs))
        row["relative_error"] = {noise: runs[noise].llc_mean / lam - 1 for noise in NOISES}
        rows.append(row)
        print(f"DLN {widths} r{rank}: λ={lam}  gaussian {row['llc_gaussian']:.3f}±{row['se_gaussian']:.3f}  rademacher "
              f"{row['llc_rademacher']:.3f}±{row['se_rademacher']:.3f}  diff/se_g {row['difference_over_gaussian_se']:+.2f}", flush=True)
    return rows


def mlp_bias(quick: bool) -> dict:
    loss_fn, params, data, config = mlp_workload()
    config = config.replace(num_chains=8, num_draws=100 if quick else 400, num_burnin=100 if quick else 400, mala_every=0)
    runs = {noise: sj.estimate_llc(loss_fn, params, data, config.replace(noise=noise), key=0, progress=False, loss_estimator="paired")
            for noise in NOISES}
    row = dict(config=config.to_dict(), **_compare(runs))
    print(f"MLP: gaussian {row['llc_gaussian']:.2f}±{row['se_gaussian']:.2f}  rademacher {row['llc_rademacher']:.2f}"
          f"±{row['se_rademacher']:.2f}  diff/se_g {row['difference_over_gaussian_se']:+.2f}", flush=True)
    return row


def mlp_floor(repeats: int, quick: bool) -> dict:
    loss_fn, params, data, config = mlp_workload()
    if quick:
        config = config.replace(num_draws=20)
    for noise in NOISES:  # compile outside the timed repeats
        sj.estimate_llc(loss_fn, params, data, config.replace(noise=noise), key=0, progress=False)
    ratios = {noise: [] for noise in NOISES}
    floors = []
    for repeat in range(repeats):
        _, floor_scan = measure_floor(loss_fn, params, data, config.batch_size, config.num_chains)
        floors.append(floor_scan)
        for noise in NOISES:
            result = sj.estimate_llc(loss_fn, params, data, config.replace(noise=noise), key=repeat + 1, progress=False)
            ratios[noise].append(result.chains.sampling_seconds / (result.chains.num_steps * floor_scan))
    row = {"floor_scan_seconds": statistics.median(floors), "config": config.to_dict(),
           "floor_ratio_vs_scan": {noise: statistics.median(ratios[noise]) for noise in NOISES}, "repeats": ratios}
    print(f"MLP floor ratio (vs scan): gaussian {row['floor_ratio_vs_scan']['gaussian']:.2f}, rademacher "
          f"{row['floor_ratio_vs_scan']['rademacher']:.2f}", flush=True)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tenth of the steps (smoke test)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dln-chains", type=int, default=32, help="chains per noise in the DLN bias rows")
    parser.add_argument("--only-dln", action="store_true", help="only the DLN bias rows (merged into --out)")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "bench_noise.json"))
    args = parser.parse_args()
    start = time.perf_counter()
    shapes = [((4, 2, 4), 1), ((5, 5, 5), 1), ((10, 10, 10), 5)]
    if args.only_dln:
        with open(args.out) as f:
            report = json.load(f)
        report["dln_bias"] = dln_bias(shapes, args.quick, args.dln_chains)
        report["dln_command"] = " ".join(sys.argv)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
        return
    million = draw_cost(2**20, 10)
    loss_fn, params, data, config = mlp_workload()
    num_parameters = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    mlp_noise = draw_cost(config.num_chains * num_parameters, 10)  # one step's noise: 4 chains x 269k = 1.08M
    _, gradient = measure_floor(loss_fn, params, data, config.batch_size, config.num_chains)
    draw = {
        "seconds_per_million": {noise: million[noise] / (2**20 / 1e6) for noise in NOISES},
        "mlp_step_noise_numbers": config.num_chains * num_parameters, "mlp_step_noise_seconds": mlp_noise, "mlp_value_and_grad_seconds": gradient,
        "mlp_step_noise_over_gradient": {noise: mlp_noise[noise] / gradient for noise in NOISES},
    }
    print(f"draw: {draw['seconds_per_million']} s per 1e6; MLP step noise / gradient {draw['mlp_step_noise_over_gradient']}", flush=True)
    report = {
        "benchmark": "bench_noise", "jax": jax.__version__, "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind, "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "quick": args.quick, "command": " ".join(sys.argv),
        "draw": draw,
        "mlp_floor": mlp_floor(args.repeats, args.quick),
        "dln_bias": dln_bias(shapes, args.quick, args.dln_chains),
        "mlp_bias": mlp_bias(args.quick),
    }
    report["total_seconds"] = time.perf_counter() - start
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
