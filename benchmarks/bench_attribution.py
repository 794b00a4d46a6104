"""Data attribution on planted sub-tasks: clusters from the BIF vs from per-example gradients (issue 10).

Task: a mixture of three regression sub-tasks. Example i of group g has inputs that are zero except
on coordinates 2g, 2g + 1, and a target from a group-specific nonlinear teacher of those two
coordinates, so the examples of a group share the weights they use and the groups are known.
Models: the linear model x -> x @ w (width 0: each group's examples use their own two weights, so
the groups are separable by construction), and a ReLU MLP 6 -> H -> H -> 1 (hidden layers shared by
every group) for widths H in ``--widths``: the number of parameters d grows as H², the number of
examples N stays fixed. Both are trained with Adam.

Per width:
  BIF:      ``sj.estimate_bif`` over the N training examples (``--num-chains`` x ``--num-draws``),
            then ``sj.analysis.cluster_examples`` (spectral, eigengap choice of k). Cost: wall time
            (sampling + clustering) and the bytes of what it holds per example pair: the (N, N)
            matrix and the per-chain covariance accumulators (num_chains x N x N).
  gradient: ``sj.analysis.gradient_clusters`` (per-example gradients, (N, d), |cos| affinity,
            the same spectral clustering). Cost: wall time and the (N, d) gradient bytes.
Both report the adjusted Rand index against the planted groups and between themselves, and the
BIF's reliability (``sj.estimate_reliability``). By default both are given k = 3, the planted number
(``--num-clusters 0`` lets each choose k by the eigengap), so the ARI measures the grouping itself.
Labels carry noise (``--noise``), so w* does not interpolate and per-example gradients are not ~0.

Usage (any backend): python benchmarks/bench_attribution.py [--widths 16,64,256] [--out FILE]
Default ``--out``: benchmarks/results/bench_attribution.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import slt_jax as sj
from flax import nnx


def nbytes(tree) -> int:
    return int(sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(tree)))


def linear_loss(w, batch):
    return 0.5 * jnp.sum((batch["targets"] - batch["inputs"] @ w) ** 2, axis=-1)


def run_width(width: int, data: dict, groups: np.ndarray, args) -> dict:
    """width 0: the linear model x -> x @ w (6 x 1), fitted by least squares; else the MLP 6-H-H-1."""
    if width == 0:
        loss_fn = linear_loss
        params = jnp.zeros((6, 1))
    else:
        model = sj.models.MLP(6, [width, width], 1, rngs=nnx.Rngs(args.seed))
        params, loss_fn = sj.from_nnx(model, "mse")
    trained = sj.train(loss_fn, params, data, optimizer=optax.adam(3e-3), num_steps=args.train_steps, seed=args.seed)
    w_star = trained.params
    num_params = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(w_star))
    n = groups.size
    config = sj.SamplerConfig(step_size=args.step_size, nbeta=float(n), localization=args.localization,
                              num_chains=args.num_chains, num_draws=args.num_draws, num_burnin=args.num_draws // 5,
                              batch_size=n)
    start = time.perf_counter()
    bif = sj.estimate_bif(loss_fn, w_star, data, config, key=args.seed, progress=False)
    sampling = time.perf_counter() - start
    k = args.num_clusters or None
    by_bif = sj.analysis.cluster_examples(bif, k)
    bif_seconds = time.perf_counter() - start
    reliability = sj.estimate_reliability(bif, warn=False)
    by_gradient = sj.analysis.gradient_clusters(loss_fn, w_star, data, k)
    row = dict(
        width=width, num_parameters=num_params, num_examples=n, final_train_loss=float(trained.losses[-1]),
        bif=dict(ari_vs_planted=sj.analysis.agreement(by_bif, groups), num_clusters=int(by_bif.num_clusters),
                 seconds=bif_seconds, sampling_seconds=sampling,
                 bytes_matrix=int(bif.bif.nbytes), bytes_accumulator=nbytes(bif.chains.accumulator),
                 diverged_chains=int(np.sum(bif.diverged)), reliability=reliability.reliability,
                 fraction_distinguishable=reliability.fraction_distinguishable),
        gradient=dict(ari_vs_planted=sj.analysis.agreement(by_gradient, groups),
                      num_clusters=int(by_gradient.clusters.num_clusters), seconds=by_gradient.seconds,
                      gradient_seconds=by_gradient.gradient_seconds, bytes=int(by_gradient.gradient_bytes)),
        ari_bif_vs_gradient=sj.analysis.agreement(by_bif, by_gradient),
    )
    print(f"H={width} d={num_params}: BIF ARI {row['bif']['ari_vs_planted']:.2f} (k={row['bif']['num_clusters']}, "
          f"{bif_seconds:.1f}s, {row['bif']['bytes_matrix'] + row['bif']['bytes_accumulator']} B, reliability "
          f"{reliability.reliability:.2f}) | gradient ARI {row['gradient']['ari_vs_planted']:.2f} "
          f"(k={row['gradient']['num_clusters']}, {by_gradient.seconds:.1f}s, {by_gradient.gradient_bytes} B)", flush=True)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", default="0,16,64,256", help="0 = the linear model")
    parser.add_argument("--per-group", type=int, default=32)
    parser.add_argument("--noise", type=float, default=0.3, help="label noise (w* then does not interpolate)")
    parser.add_argument("--num-clusters", type=int, default=3, help="k for both methods (0 = each chooses, eigengap)")
    parser.add_argument("--num-chains", type=int, default=8)
    parser.add_argument("--num-draws", type=int, default=1000)
    parser.add_argument("--step-size", type=float, default=1e-4)
    parser.add_argument("--localization", type=float, default=100.0)
    parser.add_argument("--train-steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_attribution.json"))
    args = parser.parse_args()
    data = {k: jnp.asarray(v) for k, v in sj.tasks.planted_subtasks(args.seed, args.per_group, args.noise).items()}
    groups = np.asarray(data.pop("groups"))
    rows = [run_width(int(w), data, groups, args) for w in args.widths.split(",")]
    out = dict(command=" ".join([os.path.basename(sys.executable)] + sys.argv), jax_version=jax.__version__,
               backend=jax.default_backend(), platform=platform.platform(), settings=vars(args), rows=rows)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
