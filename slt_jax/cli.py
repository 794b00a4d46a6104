"""The ``slt-jax`` command line: ``slt-jax demo``.

The demo needs nothing downloaded: it builds a deep linear network teacher whose learning coefficient
is known in closed form (Aoyagi 2024), generates regression data, estimates the LLC at the teacher
with multi-chain SGLD and prints the estimate beside the theory, then saves a plot of the per-chain
running LLC estimates.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

DEMO_WIDTHS = (10, 10, 10)
DEMO_RANK = 5


def _dln_problem(widths, rank, n, seed):
    import jax.numpy as jnp

    from slt_jax import theory

    rng = np.random.default_rng(seed)
    weights = [rng.normal(size=(a, b)) / math.sqrt(a) for a, b in zip(widths[:-1], widths[1:])]
    u, s, vt = np.linalg.svd(weights[0], full_matrices=False)
    s[rank:] = 0.0
    weights[0] = (u * s) @ vt
    product = weights[0]
    for w in weights[1:]:
        product = product @ w
    true_rank = theory.matrix_rank(product)
    x = rng.normal(size=(n, widths[0]))
    y = x @ product + rng.normal(size=(n, widths[-1]))

    def loss_fn(params, batch):
        out = batch["x"]
        for w in params:
            out = out @ w
        return 0.5 * jnp.sum((batch["y"] - out) ** 2, axis=-1)

    params = [jnp.asarray(w, jnp.float32) for w in weights]
    data = {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(y, jnp.float32)}
    return loss_fn, params, data, true_rank


def demo(args) -> int:
    import jax

    import slt_jax as sj
    from slt_jax import theory

    start = time.perf_counter()
    widths = tuple(args.widths)
    loss_fn, params, data, rank = _dln_problem(widths, args.rank, args.n, args.seed)
    lam, multiplicity = theory.dln_learning_coefficient(widths, rank)
    d = sum(int(np.prod(p.shape)) for p in params)
    print(f"slt_jax {sj.__version__} on {jax.default_backend()} ({jax.device_count()} device(s))")
    print(f"Deep linear network, widths {list(widths)}, teacher product rank {rank}, d = {d} parameters, n = {args.n}")
    print(f"Aoyagi's learning coefficient: lambda = {lam:g} (multiplicity {multiplicity}); regular models would give d/2 = {d / 2:g}")
    settings = dict(
        step_size=args.step_size, localization=args.localization, num_chains=args.chains, num_draws=args.draws,
        num_burnin=args.burnin, batch_size=args.batch_size, loss_estimator="paired",
    )
    print("Sampling: " + ", ".join(f"{k}={v}" for k, v in settings.items()) + f", nbeta=n/log n={sj.default_nbeta(args.n):.1f}")
    result = sj.estimate_llc(loss_fn, params, data, key=args.seed, progress=True, **settings)
    wall = time.perf_counter() - start
    se = result.llc_std / math.sqrt(max(1, int((~result.diverged).sum())))
    print()
    print(f"  LLC estimate   {result.llc_mean:8.3f} ± {se:.3f} (s.e. over chains; std {result.llc_std:.3f})")
    print(f"  Aoyagi lambda  {lam:8.3f}   relative error {(result.llc_mean - lam) / lam:+.1%}")
    print("  per chain      " + "  ".join(f"{v:.3f}" for v in result.llc_per_chain))
    print(f"  ESS {result.ess:.0f} of {result.loss_trace.size} draws, split R-hat {result.rhat:.3f}, diverged chains: {int(result.diverged.sum())}")
    print(f"  compile {result.chains.compile_seconds:.1f} s, sampling {result.chains.sampling_seconds:.1f} s, wall {wall:.1f} s")
    path = _save_plot(result, lam, args.output)
    print(f"Plot of the per-chain LLC traces: {path}")
    return 0


def _save_plot(result, lam, output):
    from slt_jax import plots

    os.makedirs(output, exist_ok=True)
    path = os.path.abspath(os.path.join(output, "llc_traces.png"))
    figure = plots.plot_traces(result, title="slt-jax demo: deep linear network")
    figure.axes[1].axhline(lam, color="C3", ls="-.", lw=1.4, label=f"Aoyagi λ = {lam:g}")
    figure.axes[1].legend(loc="lower right", fontsize=8)
    figure.savefig(path, dpi=120)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="slt-jax", description="slt_jax: SGLD for singular learning theory.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="estimate the LLC of a deep linear network against Aoyagi's formula")
    p.add_argument("--widths", type=int, nargs="+", default=list(DEMO_WIDTHS))
    p.add_argument("--rank", type=int, default=DEMO_RANK)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--draws", type=int, default=2000)
    p.add_argument("--burnin", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--step-size", type=float, default=1e-4)
    p.add_argument("--localization", type=float, default=100.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="slt_jax_demo_output")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo(args)
    return 1  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
