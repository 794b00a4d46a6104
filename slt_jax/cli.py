"""The ``slt-jax`` command line: ``slt-jax demo``, ``slt-jax run sweep.toml`` and ``slt-jax merge DIR``.

The demo needs nothing downloaded: it builds a deep linear network teacher whose learning coefficient
is known in closed form (Aoyagi 2024), generates regression data, estimates the LLC at the trained
teacher with multi-chain SGLD (one ``SamplerConfig``, ``estimate_llc``) and prints the estimate beside
the theory, then saves a plot: the loss per chain as a running mean with a band of its spread over a
sliding window (raw minibatch losses overplotted are unreadable), and the per-chain running LLC.

``slt-jax run sweep.toml [--output DIR] [--quiet] [--part i/N]`` runs a batch experiment (``slt_jax.sweep``):
train once keeping checkpoints, then ``track_development`` over checkpoints x components for every
``[[settings]]`` entry, writing ``<dir>/<name>.npz`` (``slt_jax.load``), ``<dir>/<name>.png``,
``<dir>/table.csv``, ``<dir>/training_loss.csv``, ``<dir>/sweep.toml`` and ``<dir>/resolved.json``,
and printing a summary. ``--part i/N`` runs the i-th of N disjoint parts (one process per GPU, e.g. a
SLURM array) into ``<dir>/parts/part-i-of-N``, and ``slt-jax merge DIR`` joins the N parts into the
directory one run writes. The file is validated in full before anything trains or compiles; a mistake
is a ``ValueError`` naming the section, the key and the allowed values. Schema::

    [model]                  # required
    name = "TransformerLM"   # TransformerLM, AttentionOnlyTransformer, MLP, DeepLinearNetwork,
                             # InContextRegressionTransformer
    seed = 0                 # initialisation seed (default 0)
    ...                      # the constructor's keyword arguments (rngs excluded), e.g.
                             # vocab_size, context_length, num_layers, num_heads, width; MLP's
                             # activation by name: "relu", "gelu", "tanh", "sigmoid", "silu"

    [task]                   # required
    name = "repeated_tokens" # a generator of slt_jax.zoo.tasks: dln_regression, in_context_regression
                             # (loss "mse"), repeated_tokens ("next_token"), modular_addition,
                             # balanced_parentheses, boolean_formulas ("cross_entropy")
    seed = 0                 # data seed, also the split's (default 0)
    train_fraction = 0.8     # the rest is held out (test_loss); 1 = no split (default 0.8)
    loss = "next_token"      # optional override: "mse", "cross_entropy" or "next_token"
    ...                      # the generator's keyword arguments; dln_regression takes the
                             # teacher's rank (and widths, default [model] widths, and scale)

    [training]               # required
    optimizer = "adam"       # "adam" or "sgd"
    learning_rate = 1e-3
    num_steps = 1000
    batch_size = 64          # optional; omitted = full batch
    checkpoint_every = 100   # or checkpoint_steps = [0, 10, 100, ...] (exactly one of the two)
    seed = 0                 # minibatch seed (default 0)

    [components]             # optional; absent or empty = the whole model only
    full = true              # the whole model ("full"; default false once other components are named)
    heads = "all"            # or [[layer, head], ...]  -> "L{layer}H{head}" (models with attention)
    mlps = "all"             # or [layer, ...]          -> "mlp{layer}" (TransformerLM, InContext...)
    layers = "all"           # or [j, ...]              -> "layer{j}" (DeepLinearNetwork, MLP)

    [[settings]]             # one or more; each a SamplerConfig (SamplerConfig.from_dict)
    name = "eps1e-4"         # unique; names <name>.npz and <name>.png
    step_size = 1e-4         # or "auto"
    localization = 100.0
    num_draws = 200
    batch_size = 64
    nbeta = 20.0             # optional, like every other SamplerConfig field
    seed = 0                 # sampling key (default 0)
    loss_estimator = "minibatch"  # or "paired", "full" (default "minibatch")

    [output]                 # optional
    dir = "results"          # relative to the TOML file's folder (default "<file stem>_results")
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from matplotlib.figure import Figure

import slt_jax as sj
from slt_jax import sweep
from slt_jax.zoo import theory

# What a user's file or arguments can get wrong: printed as one line with exit status 2.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, IsADirectoryError, PermissionError)
DEMO_WIDTHS = (10, 10, 10)
DEMO_RANK = 5


def _dln_problem(widths, rank, n, seed, train_steps):
    """A DLN teacher of product rank ``rank``, its data, and w* = the teacher trained on the data."""
    kernels = sj.tasks.dln_teacher(seed, widths, rank)
    data = {k: jnp.asarray(v) for k, v in sj.tasks.dln_regression(seed + 1, kernels, n).items()}
    model = sj.models.DeepLinearNetwork(widths, rngs=nnx.Rngs(seed), kernels=kernels)
    params, loss_fn = sj.from_nnx(model, "mse")
    # w* must be a local minimum of L_n: the teacher is not (finite n), so train it to convergence.
    trained = sj.train(loss_fn, params, data, optimizer=optax.adam(3e-3), num_steps=train_steps)
    product = np.linalg.multi_dot([np.asarray(k, np.float64) for k in kernels])
    return loss_fn, trained.params, data, theory.matrix_rank(product, rtol=1e-5)


def demo(args) -> int:
    start = time.perf_counter()
    widths = tuple(args.widths)
    loss_fn, params, data, rank = _dln_problem(widths, args.rank, args.n, args.seed, args.train_steps)
    lam, multiplicity = theory.dln_learning_coefficient(widths, rank)
    d = sum(int(np.prod(np.shape(p))) for p in jax.tree.leaves(params))
    print(f"slt_jax {sj.__version__} on {jax.default_backend()} ({jax.device_count()} device(s))")
    print(f"Deep linear network, widths {list(widths)}, teacher product rank {rank}, d = {d} parameters, n = {args.n}")
    print(f"w* = the teacher trained {args.train_steps} full-batch Adam steps on the data")
    print(f"Aoyagi's learning coefficient: lambda = {lam:g} (multiplicity {multiplicity}); regular models would give d/2 = {d / 2:g}")
    config = sj.SamplerConfig(
        step_size=args.step_size, localization=args.localization, num_chains=args.chains, num_draws=args.draws,
        num_burnin=args.burnin, batch_size=args.batch_size,
    )
    print(f"{config}\nnbeta = n / log n = {config.nbeta_for(args.n):.1f}, loss_estimator='paired'")
    result = sj.estimate_llc(loss_fn, params, data, config, key=args.seed, loss_estimator="paired", progress=True)
    wall = time.perf_counter() - start
    print()
    print(f"  LLC estimate   {result.llc_mean:8.3f} ± {result.stderr:.3f} (s.e. over chains; std {result.llc_std:.3f})")
    print(f"  Aoyagi lambda  {lam:8.3f}   relative error {(result.llc_mean - lam) / lam:+.1%}")
    print("  per chain      " + "  ".join(f"{v:.3f}" for v in result.llc_per_chain))
    print(f"  ESS {result.ess:.0f} of {result.loss_trace.size} draws, split R-hat {result.rhat:.3f}, diverged chains: {int(result.diverged.sum())}")
    print(f"  compile {result.chains.compile_seconds:.1f} s, sampling {result.chains.sampling_seconds:.1f} s, wall {wall:.1f} s")
    path = _save_plot(result, lam, args.output)
    print(f"Plot of the loss and the per-chain LLC traces: {path}")
    return 0


def _windowed(values: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Centred moving mean and standard deviation over ``window`` draws (last axis), edge-truncated."""
    kernel = np.ones(window)
    count = np.convolve(np.ones(values.shape[-1]), kernel, mode="same")
    smooth = lambda x: np.apply_along_axis(lambda row: np.convolve(row, kernel, mode="same"), -1, x) / count
    mean = smooth(values)
    spread = np.sqrt(np.maximum(smooth(values**2) - mean**2, 0.0))
    return mean, spread


def plot_demo(result, lam: float, *, title: str = "slt-jax demo: deep linear network") -> Figure:
    """Loss per chain as a moving mean ± one moving std (with L(w*)), and the running LLC per chain."""
    loss = np.asarray(result.loss_trace, np.float64)
    config = result.config
    steps = sj.draw_steps(config, loss.shape[1])
    window = max(1, loss.shape[1] // 50)
    mean, spread = _windowed(loss, window)
    figure = Figure(figsize=(10, 3.8))
    loss_axes, llc_axes = figure.subplots(1, 2)
    for chain in range(loss.shape[0]):
        color = f"C{chain % 10}"
        loss_axes.fill_between(steps, mean[chain] - spread[chain], mean[chain] + spread[chain], color=color, alpha=0.15, lw=0)
        loss_axes.plot(steps, mean[chain], color=color, lw=1.0, label=f"chain {chain}")
        llc_axes.plot(steps, result.llc_trace[chain], color=color, lw=1.0)
    loss_axes.axhline(result.init_loss, color="k", ls="--", lw=1.0, label="L(w*)")
    loss_axes.set(xlabel="step", ylabel=f"loss ({result.loss_estimator})",
                  title=f"loss per chain: mean ± std over {window} draws")
    llc_axes.axhline(result.llc_mean, color="k", ls="--", lw=1.0, label=f"mean {result.llc_mean:.3g}")
    llc_axes.axhline(lam, color="C3", ls="-.", lw=1.4, label=f"Aoyagi λ = {lam:g}")
    llc_axes.set(xlabel="step", ylabel="running LLC  nβ(mean L − L(w*))", title="LLC per chain")
    llc_axes.legend(loc="lower right", fontsize=8)
    if loss.shape[0] <= 8:
        loss_axes.legend(loc="upper right", fontsize=7, ncol=2)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def _save_plot(result, lam, output):
    os.makedirs(output, exist_ok=True)
    path = os.path.abspath(os.path.join(output, "llc_traces.png"))
    plot_demo(result, lam).savefig(path, dpi=120)
    return path


def run(args) -> int:
    start = time.perf_counter()
    result = sweep.run_sweep(args.path, output=args.output, part=args.part, progress=not args.quiet)
    print(sweep.summary(result))
    print(f"{len(result.table)} (settings, checkpoint, component) rows in {time.perf_counter() - start:.1f} s; "
          f"results in {result.output}" + ("" if args.part is None else "; join the parts with slt-jax merge <dir>"))
    return 0


def merge(args) -> int:
    result = sweep.merge_sweep(args.directory)
    print(sweep.summary(result))
    print(f"{len(result.table)} (settings, checkpoint, component) rows joined from {result.output / 'parts'}; "
          f"results in {result.output}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="slt-jax", description="slt_jax: SGLD for singular learning theory.")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="estimate the LLC of a deep linear network against Aoyagi's formula")
    p.add_argument("--widths", type=int, nargs="+", default=list(DEMO_WIDTHS))
    p.add_argument("--rank", type=int, default=DEMO_RANK)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--chains", type=int, default=8)
    p.add_argument("--draws", type=int, default=8000)
    p.add_argument("--burnin", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--step-size", type=float, default=3e-6)
    p.add_argument("--localization", type=float, default=1.0)
    p.add_argument("--train-steps", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="slt_jax_demo_output")
    r = sub.add_parser("run", help="run a batch experiment described by a TOML sweep file")
    r.add_argument("path", help="the sweep file (schema: python -m pydoc slt_jax.cli)")
    r.add_argument("--output", default=None, help="results directory (overrides [output] dir)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument("--part", default=None, metavar="i/N",
                   help="run only the i-th of N disjoint parts (1 <= i <= N) into <dir>/parts/part-i-of-N; join with slt-jax merge")
    m = sub.add_parser("merge", help="join the parts of a sweep (run --part i/N) into one results directory")
    m.add_argument("directory", help="the sweep's results directory (its [output] dir, holding parts/)")
    args = parser.parse_args(argv)
    command = {"demo": demo, "run": run, "merge": merge}[args.command]
    if args.traceback:
        return command(args)
    try:
        return command(args)
    except USER_ERRORS as error:
        # A mistake in the file or the arguments: one line, and argparse's exit status for usage errors.
        print(f"slt-jax {args.command}: error: {error} (--traceback shows where)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
