"""Accuracy at scale: the deep-linear-network size classes of Furman & Lau (2024, App. E.2) (issue 9).

Each model is a deep linear network x -> x @ W_1 @ ... @ W_L drawn for its size class, with a
noiseless teacher: w* = the teacher, targets y = f(x; w*), so L_n(w*) = 0 up to float32 rounding and
the true learning coefficient is Aoyagi's λ for the widths and the rank of the product
(``slt_jax.zoo.theory.dln_learning_coefficient``).

Reference settings (the published code's ``get_params``):

  class  layers  widths    n     ε (published)  steps
  1K     2-5     5-50      1e5   5e-7           10,000
  10K    2-10    5-100     1e5   5e-7           10,000
  100K   2-10    50-500    1e6   1e-7           50,000
  1M     2-20    100-1000  1e6   5e-8           50,000
  10M    2-20    500-2000  1e6   2e-8           50,000
  100M   2-40    500-3000  1e6   2e-8           50,000

and for every class: batch 500 (drawn with replacement), γ = 1, nβ = n / log n, inputs uniform on
[-10, 10]^d, the loss ``mean((f(x) - y)²)`` over the batch AND the output dimensions (the published
loss, kept so that the published ε mean the same thing here), the last 10% of the steps are the
draws (90% burn-in).

Generation (seeded, ``numpy.random.default_rng([seed, class, model])``): the number of layers L and
the L + 1 widths are uniform integers in the class's ranges; each layer is N(0, 1/fan_in); with
probability 1/2 a layer is replaced by a random rank-r_j product (r_j uniform in 1..min(fan_in,
fan_out) - 1), the "random rank reductions per layer". The product's rank r is computed in float64.

Per model it runs ``estimate_llc`` twice, same key:
  auto:      ``step_size="auto"`` (``slt_jax.calibrate`` picks ε at this nβ, γ; no hand tuning);
  published: the class's published ε.
and records the estimate, λ, relative error, chains diverged, ESS, R-hat, ε, wall time (and the
calibration's share). A summary per class gives the median and 90th percentile |relative error|
and the failures (any chain diverged or a NaN estimate) for each method, the misses (|relative error| >
10%), the silent misses (a miss whose health report names no finding), and for ``auto`` the
calibration's chain-steps relative to the run's. ``--resummarize`` recomputes the summaries of
``--out`` from its rows (the methods its summaries list). The committed ``auto`` rows are this version's
calibration (the Leimkuhler-Matthews step where the config names no scheme, rerun with
``--methods auto``); the previous version's Euler rows are kept beside them as ``auto_euler``.

CPU budget (2 cores, about two hours for ``--classes 1K,10K,100K``): ``--models`` sets the number of
models per class (default 1K: 12, 10K: 6, 100K: 2; the committed rows ran ``--classes 1K,10K --models 12,6``
and ``--classes 100K --models 1 --num-chains 2``, then ``--models 2 --start 1`` for the second 100K
model, each with ``--append``) and ``--max-params`` redraws architectures above a
parameter cap (default: none for 1K/10K, 150,000 for 100K: the class's widest draws take tens of
minutes per run here). 1M and larger are for accelerators (``--classes 1M,10M``).

Precision: everything runs in float32. The loss at w* is exactly 0 in exact arithmetic and ~1e-12 in
float32 (targets are computed by the same jitted forward pass); nβ L_n(w*) stays below 1e-4 and is
subtracted anyway. Each draw's loss is a float32 mean of 500 x d_out squared errors (XLA's
tree reduction); the trace mean and nβ (E[L] - L*) are formed on the host in float64, so the
estimate is not limited by float32 accumulation over draws.

Usage (any backend; JAX picks the device):
  python benchmarks/bench_dln_scale.py [--classes 1K,10K,100K] [--models 6,4,1] [--num-chains 4] [--out FILE]
  python benchmarks/bench_dln_scale.py --quick                    # one 1K model, a tenth of the steps
Default ``--out``: benchmarks/results/bench_dln_scale.json.
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

import slt_jax as sj

CLASSES = {
    "1K": dict(layers=(2, 5), widths=(5, 50), n=10**5, step_size=5e-7, steps=10_000, models=12, max_params=None),
    "10K": dict(layers=(2, 10), widths=(5, 100), n=10**5, step_size=5e-7, steps=10_000, models=6, max_params=None),
    "100K": dict(layers=(2, 10), widths=(50, 500), n=10**6, step_size=1e-7, steps=50_000, models=2, max_params=150_000),
    "1M": dict(layers=(2, 20), widths=(100, 1000), n=10**6, step_size=5e-8, steps=50_000, models=4, max_params=None),
    "10M": dict(layers=(2, 20), widths=(500, 2000), n=10**6, step_size=2e-8, steps=50_000, models=2, max_params=None),
    "100M": dict(layers=(2, 40), widths=(500, 3000), n=10**6, step_size=2e-8, steps=50_000, models=1, max_params=None),
}
BATCH_SIZE = 500
LOCALIZATION = 1.0
BURNIN_FRACTION = 0.9


def draw_architecture(rng: np.random.Generator, spec: dict) -> tuple[list[int], list[np.ndarray]]:
    """(widths, float64 teacher kernels) for one model of a size class."""
    while True:
        num_layers = int(rng.integers(spec["layers"][0], spec["layers"][1] + 1))
        widths = [int(w) for w in rng.integers(spec["widths"][0], spec["widths"][1] + 1, size=num_layers + 1)]
        num_params = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
        if spec["max_params"] is None or num_params <= spec["max_params"]:
            break
    kernels = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:]):
        if rng.random() < 0.5 and min(fan_in, fan_out) > 1:
            rank = int(rng.integers(1, min(fan_in, fan_out)))
            kernel = rng.normal(size=(fan_in, rank)) @ rng.normal(size=(rank, fan_out)) / math.sqrt(fan_in * rank)
        else:
            kernel = rng.normal(size=(fan_in, fan_out)) / math.sqrt(fan_in)
        kernels.append(kernel)
    return widths, kernels


def product_rank(kernels: list[np.ndarray]) -> int:
    product = kernels[0]
    for kernel in kernels[1:]:
        product = product @ kernel
    return sj.theory.matrix_rank(product, rtol=1e-8)


def forward(kernels, x):
    for kernel in kernels:
        x = x @ kernel
    return x


def loss_fn(kernels, batch):
    """Per-example mean over the output dimensions of the squared error: the published loss
    ``mean((f(x) - y)²)`` is the batch mean of this."""
    return jnp.mean((forward(kernels, batch["x"]) - batch["y"]) ** 2, axis=-1)


_forward = jax.jit(forward)


def make_model(seed: int, class_index: int, model_index: int, spec: dict) -> dict:
    rng = np.random.default_rng([seed, class_index, model_index])
    widths, kernels64 = draw_architecture(rng, spec)
    rank = product_rank(kernels64)
    llc, multiplicity = sj.theory.dln_learning_coefficient(widths, rank)
    params = [jnp.asarray(k, jnp.float32) for k in kernels64]
    # Drawn in float32 directly (the 10M class's inputs are 8 GB; a float64 draw would double it).
    x = rng.random((spec["n"], widths[0]), dtype=np.float32) * np.float32(20.0) - np.float32(10.0)
    # Targets from the same float32 forward pass the loss uses, in chunks: L_n(w*) ~ 0.
    y = np.concatenate([np.asarray(_forward(params, jnp.asarray(x[i:i + 65536]))) for i in range(0, len(x), 65536)])
    return dict(widths=widths, rank=rank, llc=float(llc), multiplicity=int(multiplicity), params=params,
                data={"x": jnp.asarray(x), "y": jnp.asarray(y)},
                num_params=sum(a * b for a, b in zip(widths[:-1], widths[1:])))


def run_one(model: dict, spec: dict, step_size, num_chains: int, steps: int, key: int) -> dict:
    num_draws = max(int(round((1.0 - BURNIN_FRACTION) * steps)), 10)
    config = sj.SamplerConfig(
        step_size=step_size, localization=LOCALIZATION, nbeta=sj.default_nbeta(spec["n"]), batch_size=BATCH_SIZE,
        num_chains=num_chains, num_burnin=steps - num_draws, num_draws=num_draws, mala_every=0, diagnostics_every=100,
    )
    start = time.perf_counter()
    failure = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = sj.estimate_llc(loss_fn, model["params"], model["data"], config, key=key, progress=False)
        except sj.DivergenceError as error:
            result, failure = None, f"DivergenceError: {str(error)[:300]}"
    wall = time.perf_counter() - start
    row = dict(wall_seconds=wall, warnings=sorted({str(w.message)[:200] for w in caught}))
    if result is None:
        return dict(row, estimate=float("nan"), relative_error=float("nan"), diverged_chains=num_chains, failure=failure,
                    step_size=None if step_size == "auto" else step_size)
    chains = result.chains
    calibration = chains.settings.get("calibration") if isinstance(chains.settings, dict) else None
    used = result.config.step_size
    diverged = int(np.sum(result.diverged))
    estimate = float(result.llc_mean)
    row.update(
        step_size=float(used), estimate=estimate, stderr=float(result.stderr), per_chain=[float(v) for v in result.llc_per_chain],
        relative_error=(estimate - model["llc"]) / model["llc"], diverged_chains=diverged, ess=float(result.ess),
        rhat=float(result.rhat), init_loss=float(result.init_loss), nbeta=float(result.nbeta),
        compile_seconds=float(np.sum(chains.compile_seconds)), sampling_seconds=float(np.sum(chains.sampling_seconds)),
        failure=None if diverged == 0 and np.isfinite(estimate) else f"{diverged} chain(s) diverged",
    )
    health = result.health
    row["health"] = dict(ok=health.ok, findings=[f.check for f in health.findings],
                         drift=float(health.metrics.get("drift", float("nan"))), late_trend=float(health.metrics.get("late_trend", float("nan"))),
                         relative_bias=float(health.metrics.get("relative_bias", float("nan"))))
    if calibration is not None:
        row["calibration"] = {k: calibration[k] for k in ("reason", "cost") if k in calibration}
    return row


MISS = 0.10  # |relative error| above this is a miss; a miss whose health report names nothing is silent


def summarize(rows: list[dict], method: str) -> dict:
    errors = np.array([abs(r[method]["relative_error"]) for r in rows], float)
    finite = errors[np.isfinite(errors)]
    costs = [r[method]["calibration"]["cost"]["relative_chain_steps"] for r in rows
             if "cost" in r[method].get("calibration", {})]
    return dict(
        silent_misses=int(sum(abs(r[method]["relative_error"]) > MISS and r[method].get("health", {}).get("ok", False)
                              for r in rows)),
        misses=int(np.sum(finite > MISS)),
        # runs whose own summary() flags the step-size bias (for auto: a calibration that passed it)
        bias_flagged=int(sum("bias" in r[method].get("health", {}).get("findings", []) for r in rows)),
        diverged_chains=int(sum(r[method]["diverged_chains"] for r in rows)),
        calibration_relative_chain_steps_max=float(max(costs)) if costs else None,
        calibration_seconds=float(sum(r[method]["calibration"]["cost"]["seconds"] for r in rows
                                      if "cost" in r[method].get("calibration", {}))),
        models=len(rows),
        median_abs_relative_error=float(np.median(finite)) if finite.size else float("nan"),
        p90_abs_relative_error=float(np.percentile(finite, 90)) if finite.size else float("nan"),
        failures=int(sum(r[method]["failure"] is not None for r in rows)),
        nan_estimates=int(np.sum(~np.isfinite(errors))),
        wall_seconds=float(sum(r[method]["wall_seconds"] for r in rows)),
        flagged=int(sum(not r[method].get("health", {}).get("ok", False) for r in rows)),
        median_abs_relative_error_unflagged=_median([abs(r[method]["relative_error"]) for r in rows if r[method].get("health", {}).get("ok")]),
    )


def _median(values) -> float:
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", default="1K,10K,100K", help="comma-separated size classes (1K ... 100M)")
    parser.add_argument("--models", default=None, help="models per class, comma-separated (default: per class, see above)")
    parser.add_argument("--max-params", default=None, help="parameter cap per class, comma-separated ('none' = no cap)")
    parser.add_argument("--num-chains", type=int, default=4)
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiply every class's step count (e.g. 0.1 for a smoke run)")
    parser.add_argument("--methods", default="auto,published")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="one 1K model at a tenth of the steps")
    parser.add_argument("--append", action="store_true", help="keep the other classes already in --out (each class records its command)")
    parser.add_argument("--start", type=int, default=0,
                        help="with --append: keep this many models of each class from --out and run the rest")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_dln_scale.json"))
    parser.add_argument("--resummarize", action="store_true", help="recompute the summaries of --out from its rows, run nothing")
    args = parser.parse_args()
    if args.resummarize:
        with open(args.out) as f:
            out = json.load(f)
        for class_name in out["summary"]:
            rows = [m for m in out["models"] if m["size_class"] == class_name]
            out["summary"][class_name] = {method: summarize(rows, method) for method in out["summary"][class_name]}
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
        _print_summary(out)
        return
    classes = ["1K"] if args.quick else [c.strip() for c in args.classes.split(",") if c.strip()]
    unknown = [c for c in classes if c not in CLASSES]
    if unknown:
        parser.error(f"--classes: unknown {unknown}; choose from {list(CLASSES)}")
    models = [1] if args.quick else ([int(m) for m in args.models.split(",")] if args.models else [CLASSES[c]["models"] for c in classes])
    if len(models) != len(classes):
        parser.error(f"--models needs one count per class ({len(classes)}), got {len(models)}")
    caps = [CLASSES[c]["max_params"] for c in classes]
    if args.max_params:
        caps = [None if v.strip().lower() == "none" else int(v) for v in args.max_params.split(",")]
    steps_scale = 0.1 if args.quick else args.steps_scale
    methods = [m.strip() for m in args.methods.split(",")]

    out = dict(
        command=" ".join([os.path.basename(sys.executable)] + sys.argv), jax_version=jax.__version__,
        backend=jax.default_backend(), devices=[str(d) for d in jax.devices()], platform=platform.platform(),
        settings=dict(batch_size=BATCH_SIZE, localization=LOCALIZATION, burnin_fraction=BURNIN_FRACTION,
                      num_chains=args.num_chains, steps_scale=steps_scale, seed=args.seed, loss="mean((f(x) - y)^2)",
                      nbeta="n / log n", inputs="uniform[-10, 10]"),
        models=[], summary={}, commands={}, class_settings={},
    )
    kept: dict = {}
    earlier: dict = {}
    if args.append and os.path.exists(args.out):
        with open(args.out) as f:
            previous = json.load(f)
        out["models"] = [m for m in previous["models"] if m["size_class"] not in classes]
        kept = {c: [m for m in previous["models"] if m["size_class"] == c and m["index"] < args.start] for c in classes}
        earlier = {c: previous.get("commands", {}).get(c) for c in classes if kept[c]}
        out["summary"] = {c: s for c, s in previous["summary"].items() if c not in classes}
        out["commands"] = {c: s for c, s in previous.get("commands", {}).items() if c not in classes}
        # Each class keeps the settings it ran with (a class from a run that predates this field
        # ran with that run's top-level settings).
        out["class_settings"] = {c: previous.get("class_settings", {}).get(c, previous["settings"])
                                 for c in out["summary"]}
    started = time.perf_counter()
    for class_name, count, cap in zip(classes, models, caps):
        spec = dict(CLASSES[class_name], max_params=cap)
        steps = max(int(spec["steps"] * steps_scale), 100)
        rows = list(kept.get(class_name, []))
        out["models"] += rows
        for index in range(len(rows), count):
            model = make_model(args.seed, list(CLASSES).index(class_name), index, spec)
            row = dict(size_class=class_name, index=index, widths=model["widths"], rank=model["rank"], num_params=model["num_params"],
                       n=spec["n"], steps=steps, true_llc=model["llc"], multiplicity=model["multiplicity"])
            for method in methods:
                step_size = "auto" if method == "auto" else spec["step_size"]
                row[method] = run_one(model, spec, step_size, args.num_chains, steps, key=args.seed * 1000 + index)
                r = row[method]
                print(f"{class_name}#{index} d={model['num_params']} widths={model['widths']} r={model['rank']} "
                      f"λ={model['llc']:.1f} {method}: ε={r.get('step_size')} λ̂={r['estimate']:.1f} "
                      f"rel={r['relative_error']:+.3f} div={r['diverged_chains']} flags={r.get('health', {}).get('findings')} "
                      f"{r['wall_seconds']:.0f}s", flush=True)
            rows.append(row)
            out["models"].append(row)
            del model
            # Written after every model, so a long run that is stopped keeps what it finished.
            out["summary"][class_name] = {method: summarize(rows, method) for method in methods}
            out["commands"][class_name] = (f"{earlier[class_name]} (models < {args.start}), then " if kept.get(class_name) else "") + out["command"]
            out["class_settings"][class_name] = dict(out["settings"], max_params=cap, steps=steps)
            out["wall_seconds"] = time.perf_counter() - started
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, "w") as f:
                json.dump(out, f, indent=1)
    _print_summary(out)
    print(f"wrote {args.out} ({out['wall_seconds']:.0f}s)")


def _print_summary(out: dict) -> None:
    for class_name, summary in out["summary"].items():
        for method, s in summary.items():
            cost = s.get("calibration_relative_chain_steps_max")
            print(f"{class_name:>5} {method:>9}: median |rel err| {s['median_abs_relative_error']:.3f}, "
                  f"p90 {s['p90_abs_relative_error']:.3f}, failures {s['failures']}/{s['models']}, flagged {s['flagged']}, "
                  f"misses {s.get('misses')} (silent {s.get('silent_misses')}), diverged chains {s.get('diverged_chains')}, "
                  + (f"calibration <= {cost:.2f}x the run's chain-steps, " if cost is not None else "")
                  + f"{s['wall_seconds']:.0f}s")


if __name__ == "__main__":
    main()
