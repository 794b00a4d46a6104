"""Does step_size="auto" estimate the LLC as accurately as the best hand-tuned step size? (issue 5)

Deep linear networks x -> x @ K_1 @ ... @ K_L with teachers of a chosen product rank
(``slt_jax.zoo.tasks.dln_teacher``), n = 10,000 examples with unit label noise, w* = the teacher trained
to convergence on the data (full-batch Adam), nβ = n / log n, batch 100, 4 chains, the paired loss
estimator, and a fixed budget of num_burnin + num_draws steps per chain. The known λ is Aoyagi's
(``slt_jax.zoo.theory.dln_learning_coefficient``).

  hand-tuned: one ``run_chains(grid={"step_size": ...})`` call over a log grid of step sizes
              (1e-7 ... 1e-4, 13 values) at the same schedule; "best" is the ORACLE choice, the step
              size whose estimate is closest to λ (a user cannot make that choice without knowing λ).
  auto:       ``estimate_llc(config.replace(step_size="auto"))``: ``calibrate`` picks the step size
              (an independent key), then the main run uses the same schedule.
  calibrate(ε, γ): ``calibrate(loss_fn, params, data, config, key=..., localizations=(1, 10, 100))``;
              its rule also picks γ (the smallest whose chains level off); then the main run at
              the recommended ε, nβ, γ with the benchmark's fixed schedule (the recommended burn-in
              is reported next to it).

Reported per network and localization γ: λ, the hand-tuned range, the oracle-best hand-tuned
estimate, the auto estimate (± standard error over chains), relative errors and timings.

Usage (any backend; JAX picks the device):
  python benchmarks/bench_calibration.py [--quick] [--localizations 1 100] [--out FILE]
Default ``--out``: benchmarks/results/bench_calibration.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

import slt_jax as sj

NETWORKS = [([5, 5, 5], 1), ([6, 4, 8, 3], 2), ([10, 10, 10], 5), ([10, 10, 10, 10], 5), ([20, 5, 20], 3)]


def loss_fn(kernels, batch):
    out = batch["inputs"]
    for kernel in kernels:
        out = out @ kernel
    return 0.5 * jnp.sum((batch["targets"] - out) ** 2, axis=-1)


def problem(widths, rank, n, seed=0):
    """(w* trained from the teacher, data, λ, multiplicity)."""
    teacher = sj.tasks.dln_teacher(seed, widths, rank)
    data = {k: jnp.asarray(v) for k, v in sj.tasks.dln_regression(seed + 1, teacher, n).items()}
    params = [jnp.asarray(k) for k in teacher]
    objective = lambda p: jnp.mean(loss_fn(p, data))

    def fit(params, learning_rate, steps):
        optimizer = optax.adam(learning_rate)

        def step(carry, _):
            p, state = carry
            grad = jax.grad(objective)(p)
            updates, state = optimizer.update(grad, state, p)
            return (optax.apply_updates(p, updates), state), None

        return jax.lax.scan(step, (params, optimizer.init(params)), None, length=steps)[0][0]

    params = jax.jit(fit, static_argnums=(1, 2))(params, 1e-2, 3000)
    params = jax.jit(fit, static_argnums=(1, 2))(params, 1e-3, 3000)
    lam, multiplicity = sj.theory.dln_learning_coefficient(widths, rank)
    return params, data, lam, multiplicity, float(optax.tree.norm(jax.grad(objective)(params)))


def paired_llc(chains):
    """(G, C) per-chain LLC of the paired estimator, NaN for diverged chains."""
    shifted = sj.traces.llc_draws(chains, "paired")  # (G, C, D) nβ(L - L*)
    return np.where(chains.diverged, np.nan, shifted.mean(axis=-1))


def stats(per_chain):
    good = per_chain[np.isfinite(per_chain)]
    if good.size < 2:
        return float("nan"), float("nan")
    return float(good.mean()), float(good.std(ddof=1) / math.sqrt(good.size))


def run(widths, rank, localization, schedule, step_grid, seed=0):
    n, batch_size, num_chains = 10_000, 100, 4
    params, data, lam, multiplicity, grad_norm = problem(widths, rank, n, seed)
    nbeta = sj.default_nbeta(n)
    config = sj.SamplerConfig(step_size="auto", nbeta=nbeta, localization=localization, num_chains=num_chains,
                              batch_size=batch_size, **schedule)

    start = time.perf_counter()
    hand = sj.run_chains(loss_fn, [params], data, config.replace(step_size=float(step_grid[0])), key=seed,
                         grid={"step_size": step_grid}, recording=sj.Recording(center_loss=True), progress=False)
    hand_seconds = time.perf_counter() - start
    per_setting = [stats(row) for row in paired_llc(hand)]
    errors = np.array([abs(m - lam) if np.isfinite(m) else np.inf for m, _ in per_setting])
    best = int(np.argmin(errors))

    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        auto = sj.estimate_llc(loss_fn, params, data, config, key=seed, loss_estimator="paired", progress=False)
    auto_seconds = time.perf_counter() - start
    auto_step = float(auto.chains.config.step_size)
    auto_mean, auto_stderr = stats(auto.llc_per_chain)
    predicted_bias = auto.health.metrics["predicted_bias"]
    return {
        "widths": widths,
        "rank": rank,
        "num_parameters": int(sum(a * b for a, b in zip(widths[:-1], widths[1:]))),
        "lambda": lam,
        "multiplicity": multiplicity,
        "localization": localization,
        "nbeta": nbeta,
        "w_star_grad_norm": grad_norm,
        "hand_tuned": [
            {"step_size": float(e), "llc": m, "stderr": s, "diverged": int(np.sum(d))}
            for e, (m, s), d in zip(step_grid, per_setting, hand.diverged)
        ],
        "best_hand_tuned": {"step_size": float(step_grid[best]), "llc": per_setting[best][0], "stderr": per_setting[best][1],
                            "relative_error": per_setting[best][0] / lam - 1},
        "auto": {
            "step_size": auto_step,
            "llc": auto_mean,
            "stderr": auto_stderr,
            "relative_error": auto_mean / lam - 1,
            "predicted_bias": predicted_bias,
            "bias_corrected_llc": auto_mean - predicted_bias,
            "bias_corrected_relative_error": (auto_mean - predicted_bias) / lam - 1,
            "reason": auto.chains.settings["calibration"]["reason"],
            "warnings": [str(w.message) for w in caught],
            "health": [f"{f.check}: {f.message}" for f in auto.health.findings],
        },
        "seconds": {"hand_tuned_grid": hand_seconds, "auto_total": auto_seconds},
    }


def run_full_calibration(widths, rank, schedule, localizations=(1.0, 10.0, 100.0), seed=0):
    """``calibrate`` over step sizes AND localizations (its rule picks γ too), then the main run."""
    n, batch_size, num_chains = 10_000, 100, 4
    params, data, lam, _, _ = problem(widths, rank, n, seed)
    # The calibration chains' schedule (calibration_schedule) follows from this config: min(num_steps,
    # 2000) recorded steps with the config's burn-in fraction, clipped to [0.2, 0.5].
    config = sj.SamplerConfig(step_size="auto", localization=localizations[0], num_chains=num_chains,
                              batch_size=batch_size, **schedule)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        calibration = sj.calibrate(
            loss_fn, params, data, config, key=jax.random.fold_in(jax.random.key(seed), 0x5EED),
            localizations=localizations, progress=False,
        )
        chosen = calibration.recommended
        # The benchmark's fixed budget (not the recommended schedule), as for the other rows.
        result = sj.estimate_llc(
            loss_fn, params, data, config.replace(step_size=chosen.step_size, localization=chosen.localization, nbeta=chosen.nbeta),
            key=seed, loss_estimator="paired", progress=False,
        )
    mean, stderr = stats(result.llc_per_chain)
    return {
        "widths": widths, "rank": rank, "lambda": lam, "localizations": list(localizations),
        "step_size": chosen.step_size, "localization": chosen.localization, "nbeta": chosen.nbeta,
        "recommended_num_burnin": chosen.num_burnin, "num_burnin_used": schedule["num_burnin"],
        "llc": mean, "stderr": stderr,
        "relative_error": mean / lam - 1, "reason": calibration.reason, "warnings": [str(w.message) for w in caught],
        "seconds": time.perf_counter() - start,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two small networks, shorter chains")
    parser.add_argument("--localizations", type=float, nargs="+", default=[1.0, 100.0])
    parser.add_argument("--networks", type=int, default=None, help="only the first NETWORKS networks")
    parser.add_argument("--num-burnin", type=int, default=None, help="override the schedule's burn-in steps")
    parser.add_argument("--num-draws", type=int, default=None, help="override the schedule's draws")
    parser.add_argument("--grid-size", type=int, default=13, help="hand-tuned step sizes on the 1e-7 ... 1e-4 log grid")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_calibration.json"))
    args = parser.parse_args()
    networks = NETWORKS[:2] if args.quick else NETWORKS
    networks = networks if args.networks is None else networks[: args.networks]
    schedule = dict(num_burnin=1000, num_draws=2000) if args.quick else dict(num_burnin=4000, num_draws=8000)
    schedule.update({k: v for k, v in (("num_burnin", args.num_burnin), ("num_draws", args.num_draws)) if v is not None})
    step_grid = np.geomspace(1e-7, 1e-4, args.grid_size)
    rows, full_rows = [], []
    for widths, rank in networks:
        for localization in args.localizations:
            row = run(widths, rank, localization, schedule, step_grid)
            rows.append(row)
            b, a = row["best_hand_tuned"], row["auto"]
            print(
                f"{str(widths):18} r={rank} γ={localization:<5g} λ={row['lambda']:<6g} "
                f"best hand ε={b['step_size']:.2g}: {b['llc']:.2f}±{b['stderr']:.2f} ({b['relative_error']:+.1%})  "
                f"auto ε={a['step_size']:.2g}: {a['llc']:.2f}±{a['stderr']:.2f} ({a['relative_error']:+.1%})  "
                f"[{row['seconds']['auto_total']:.0f}s auto, {row['seconds']['hand_tuned_grid']:.0f}s grid]",
                flush=True,
            )
        full = run_full_calibration(widths, rank, schedule)
        full_rows.append(full)
        print(
            f"{str(widths):18} r={rank} calibrate(ε, γ∈{{1,10,100}}) -> ε={full['step_size']:.2g}, γ={full['localization']:g}: "
            f"{full['llc']:.2f}±{full['stderr']:.2f} ({full['relative_error']:+.1%}) [{full['seconds']:.0f}s]",
            flush=True,
        )
    result = {
        "benchmark": "bench_calibration",
        "settings": {"n": 10_000, "batch_size": 100, "num_chains": 4, "loss_estimator": "paired", **schedule,
                     "step_grid": step_grid.tolist(), "nbeta": "n / log n"},
        "environment": {"jax": jax.__version__, "backend": jax.default_backend(), "device": str(jax.devices()[0]),
                        "cpu_count": os.cpu_count(), "python": platform.python_version(), "slt_jax": sj.__version__},
        "command": " ".join(sys.argv),
        "rows": rows,
        "calibrate_step_and_localization": full_rows,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as file:
        json.dump(result, file, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
