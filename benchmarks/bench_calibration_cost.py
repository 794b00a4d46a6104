"""What does ``calibrate`` cost next to the estimate it tunes, and does its recommendation hold? (issue 12, item 4)

The workload a first research user reported (0.1: calibrate took 342 s; its setting, run with a
shorter burn-in than its own message asked for, gave ESS 6.9 and R-hat 1.21): a ~10k-parameter
attention-only transformer (2 layers x 4 heads, width 24, vocab 32, context 16) trained on the
induction task (``slt_jax.zoo.tasks.repeated_tokens``, n = 2048 sequences), nβ = n / log n with n the
number of sequences, per-token next-token loss, batch 32, 4 chains of 1000 burn-in + 1000 draws.

  1. ``calibrate(config)`` with the default grid (timed: pilot chains, grid, compilation);
  2. ``estimate_llc(cal.recommended)``: the recommended setting at the burn-in and draws it was
     validated at, timed the same way;
  3. ``estimate_llc(config.replace(step_size=cal.recommended.step_size))``: the user's own schedule.

Reports both wall times, their ratio, the chain-step ratio ``cal.settings["cost"]``, the one reference
LLC, and the health (ESS, R-hat, findings) of both runs.

Usage: python benchmarks/bench_calibration_cost.py [--out FILE]
Default ``--out``: benchmarks/results/bench_calibration_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import optax

import slt_jax as sj


def workload():
    vocab, prefix = 32, 8
    model = sj.models.AttentionOnlyTransformer(vocab, 2 * prefix, 2, 4, 24, rngs=nnx.Rngs(0))
    tokens = {k: jnp.asarray(v) for k, v in sj.tasks.repeated_tokens(0, 2048, vocab, prefix).items()}
    params, loss_fn = sj.from_nnx(model, "next_token")
    trained = sj.train(loss_fn, params, tokens, optimizer=optax.adam(3e-3), num_steps=2000, batch_size=64)
    return loss_fn, trained.params, tokens


def health(result) -> dict:
    report = result.health
    return dict(llc=result.llc_mean, stderr=result.stderr, ess=result.ess, rhat=result.rhat,
                findings=[f.check for f in report.findings])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_calibration_cost.json"))
    args = parser.parse_args()
    loss_fn, params, tokens = workload()
    num_params = sum(x.size for x in jax.tree.leaves(params))
    config = sj.SamplerConfig(step_size="auto", localization=10.0, num_chains=4, num_burnin=1000, num_draws=1000,
                              batch_size=32)
    started = time.perf_counter()
    cal = sj.calibrate(loss_fn, params, tokens, config, key=0, progress=False)
    calibrate_seconds = time.perf_counter() - started
    recommended = cal.recommended
    started = time.perf_counter()
    validated = sj.estimate_llc(loss_fn, params, tokens, recommended, key=1, progress=False)
    validated_seconds = time.perf_counter() - started
    own = config.replace(step_size=recommended.step_size)
    started = time.perf_counter()
    mine = sj.estimate_llc(loss_fn, params, tokens, own, key=1, progress=False)
    own_seconds = time.perf_counter() - started
    out = dict(
        benchmark="bench_calibration_cost",
        workload=dict(num_params=int(num_params), n=int(tokens["inputs"].shape[0]),
                      config=config.to_dict()),
        environment=dict(jax=jax.__version__, backend=jax.default_backend(), cpu_count=os.cpu_count(),
                         python=platform.python_version(), slt_jax=sj.__version__),
        calibrate=dict(seconds=calibrate_seconds, cost=cal.settings["cost"], reference_llc=cal.reference_llc,
                       recommended=recommended.to_dict(), reason=cal.reason, repr=repr(cal)),
        recommended_run=dict(seconds=validated_seconds, **health(validated)),
        own_schedule_run=dict(seconds=own_seconds, **health(mine)),
        ratio_calibrate_to_recommended_run=calibrate_seconds / validated_seconds,
        ratio_calibrate_to_own_schedule_run=calibrate_seconds / own_seconds,
    )
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1, default=float)
    print(json.dumps({k: v for k, v in out.items() if k not in ("environment", "workload")}, indent=1, default=float))


if __name__ == "__main__":
    main()
