"""Long chains on the size-class DLNs: where the LLC trace goes after the published budget (issue 21).

``bench_dln_scale.py`` scores every estimate against Aoyagi's λ after the published budget (10,000
steps for the 1K and 10K classes, the last 10% as draws). This benchmark asks what that budget
hides: it runs 4 chains of one benchmark model (the same generator, seed and data) for many times
that budget and records the trace of nβ (L_B(w_t) - L_n(w*)) in windows, so that one can see where
and whether it levels off, and at what value, for each sampler:

  sgld:      plain SGLD (``slt_jax.run_chains``) at the given ε;
  lm:        plain SGLD with ``scheme="leimkuhler-matthews"`` (docs/conventions.md §1) at the given ε;
  rmsprop:   RMSProp-SGLD (``slt_jax.run_chains``, ``Preconditioner("rmsprop_sgld", 0.99, 1e-4, 1, True)``: eps 1e-4, as in
             docs/conventions.md §4);
  layerwise: SGLD with a constant per-layer step size ε_l = c / a_l, a_l = nβ h_l + γ and h_l the top
             Hessian eigenvalue of the minibatch loss restricted to layer l (power iteration on a
             2,048-example subset). A constant positive preconditioner leaves the target unchanged, so
             this is an exact (to O(ε)) sampler with the layers' stiffness equalised. It is not part of
             slt_jax; it is written out here (one jitted scan, vmapped over the chains) as a measured
             candidate. ``c`` is given; the top eigenvalue of the preconditioned Hessian,
             top(P^1/2 H P^1/2), is reported beside it (plain SGLD at ε has top = ε a_max).

Every run records, besides the windows, the chains' distance ||w - w*|| at the end.

Usage:
  python benchmarks/bench_dln_long.py --runs 10K:0:sgld:2e-7:100000,1K:0:sgld:3.4e-7:30000:1000 [--out FILE]
Each run is CLASS:MODEL:SAMPLER:VALUE:STEPS[:GAMMA] (VALUE = ε, or c for ``layerwise``; GAMMA the
localization, default the size-class benchmark's 1). Draws every 10 steps;
``--windows`` windows per run (default 20). Default ``--out``: benchmarks/results/bench_dln_long.json;
``--append`` keeps the runs already there.
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
from jax.flatten_util import ravel_pytree

import slt_jax as sj

sys.path.insert(0, os.path.dirname(__file__))
import bench_dln_scale as scale  # noqa: E402  (the models, loss and settings of the size-class benchmark)

EVERY = 10  # steps between recorded draws
CURVATURE_EXAMPLES = 2048


def _top_eigenvalue(hvp, size: int, rng: np.random.Generator, iterations: int = 60) -> float:
    v = jnp.asarray(rng.normal(size=size), jnp.float32)
    for _ in range(iterations):
        w = hvp(v)
        v = w / jnp.linalg.norm(w)
    return float(jnp.vdot(v, hvp(v)))


def layer_curvatures(model: dict, nbeta: float, rng: np.random.Generator) -> tuple[np.ndarray, object]:
    """(per-layer top eigenvalues of nβ ∇²L on a subset, the whole-model nβ-Hessian-vector product)."""
    params = model["params"]
    flat, unravel = ravel_pytree(params)
    subset = jax.tree.map(lambda x: x[:CURVATURE_EXAMPLES], model["data"])
    grad = jax.grad(lambda w: nbeta * jnp.mean(scale.loss_fn(unravel(w), subset)))
    hvp = jax.jit(lambda v: jax.jvp(grad, (flat,), (v,))[1])
    tops = []
    for layer in range(len(params)):
        mask = ravel_pytree([jnp.full(p.shape, float(i == layer)) for i, p in enumerate(params)])[0]
        tops.append(_top_eigenvalue(lambda v: mask * hvp(mask * v), flat.size, rng))
    return np.array(tops), hvp


def layerwise_losses(model: dict, nbeta: float, gamma: float, c: float, steps: int, key, num_chains: int, rng):
    """(``(num_chains, steps // EVERY)`` minibatch losses of layer-wise preconditioned SGLD, its end
    positions, its settings)."""
    params, n = model["params"], model["data"]["x"].shape[0]
    tops, hvp = layer_curvatures(model, nbeta, rng)
    sizes = c / (tops + gamma)
    scaling = jnp.sqrt(ravel_pytree([jnp.full(p.shape, s, jnp.float32) for p, s in zip(params, sizes)])[0])
    preconditioned_top = _top_eigenvalue(lambda v: scaling * hvp(scaling * v), scaling.size, rng)
    x, y = model["data"]["x"], model["data"]["y"]

    def chain(chain_key):
        def step(position, step_key):
            rows_key, noise_key = jax.random.split(step_key)
            rows = jax.random.randint(rows_key, (scale.BATCH_SIZE,), 0, n)
            batch = {"x": x[rows], "y": y[rows]}
            loss, grad = jax.value_and_grad(lambda w: jnp.mean(scale.loss_fn(w, batch)))(position)
            noise = [jax.random.normal(k, p.shape) for k, p in zip(jax.random.split(noise_key, len(position)), position)]
            new = [w - 0.5 * e * (nbeta * g + gamma * (w - w0)) + jnp.sqrt(e) * xi
                   for w, g, w0, e, xi in zip(position, grad, params, sizes, noise)]
            return new, loss

        def draw(position, draw_key):
            position, losses = jax.lax.scan(step, position, jax.random.split(draw_key, EVERY))
            return position, losses[0]

        return jax.lax.scan(draw, params, jax.random.split(chain_key, steps // EVERY))

    ends, losses = jax.jit(jax.vmap(chain))(jax.random.split(key, num_chains))
    settings = dict(layer_top_eigenvalues=[float(t) for t in tops], layer_step_sizes=[float(s) for s in sizes],
                    preconditioned_top=preconditioned_top)
    return np.asarray(losses), [np.asarray(leaf) for leaf in ends], settings


def library_losses(model: dict, nbeta: float, gamma: float, sampler: str, step_size: float, steps: int, key, num_chains: int):
    preconditioner = "sgld" if sampler in ("sgld", "lm") else sj.Preconditioner("rmsprop_sgld", 0.99, 1e-4, 1.0, True)
    config = sj.SamplerConfig(
        step_size=step_size, localization=gamma, nbeta=nbeta, batch_size=scale.BATCH_SIZE,
        num_chains=num_chains, num_burnin=0, num_draws=steps // EVERY, num_steps_between_draws=EVERY, mala_every=0,
        diagnostics_every=100, preconditioner=preconditioner, scheme="leimkuhler-matthews" if sampler == "lm" else "euler",
    )
    chains = sj.run_chains(scale.loss_fn, [model["params"]], model["data"], config, key=key, progress=False)
    settings = dict(preconditioner=config.to_dict()["preconditioner"], diverged=[bool(d) for d in np.asarray(chains.diverged)[0]])
    losses = np.asarray(chains.loss)[0] - float(np.asarray(chains.init_loss)[0])
    return losses, [np.asarray(leaf) for leaf in chains.final_positions[0]], settings


def run(spec: str, num_chains: int, windows: int, seed: int) -> dict:
    fields = spec.split(":")
    if len(fields) not in (5, 6):
        raise SystemExit(f"--runs: {spec!r}; each run is CLASS:MODEL:SAMPLER:VALUE:STEPS[:GAMMA]")
    class_name, index, sampler, value, steps = fields[:5]
    index, value, steps = int(index), float(value), int(steps)
    gamma = float(fields[5]) if len(fields) == 6 else scale.LOCALIZATION
    if class_name not in scale.CLASSES:
        raise SystemExit(f"--runs: class {class_name!r}; choose from {list(scale.CLASSES)}")
    if sampler not in ("sgld", "lm", "rmsprop", "layerwise"):
        raise SystemExit(f"--runs: sampler {sampler!r}; use sgld, lm, rmsprop or layerwise")
    class_spec = dict(scale.CLASSES[class_name])
    model = scale.make_model(seed, list(scale.CLASSES).index(class_name), index, class_spec)
    nbeta = sj.default_nbeta(class_spec["n"])
    key = jax.random.key(7)
    start = time.perf_counter()
    if sampler == "layerwise":
        losses, ends, settings = layerwise_losses(model, nbeta, gamma, value, steps, key, num_chains, np.random.default_rng(0))
    else:
        losses, ends, settings = library_losses(model, nbeta, gamma, sampler, value, steps, key, num_chains)
    wall = time.perf_counter() - start
    settings["end_distance"] = [float(np.sqrt(sum(np.sum((e[c] - np.asarray(w)) ** 2) for e, w in zip(ends, model["params"]))))
                                for c in range(num_chains)]
    energy = nbeta * losses  # (chains, draws): nβ (L_B - L_n(w*)); L_n(w*) ~ 1e-12 for these noiseless teachers
    bounds = np.linspace(0, energy.shape[1], windows + 1).astype(int)
    window_rows = [
        dict(first_step=int(a * EVERY), last_step=int(b * EVERY), llc=float(energy[:, a:b].mean()),
             per_chain=[float(v) for v in energy[:, a:b].mean(1)], relative_error=float(energy[:, a:b].mean() / model["llc"] - 1))
        for a, b in zip(bounds[:-1], bounds[1:])
    ]
    return dict(size_class=class_name, index=index, widths=model["widths"], rank=model["rank"], llc=model["llc"],
                num_params=model["num_params"], sampler=sampler, value=value, steps=steps, localization=gamma, num_chains=num_chains,
                published_budget=class_spec["steps"], wall_seconds=wall, finite=bool(np.isfinite(energy).all()),
                settings=settings, windows=window_rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True, help="comma-separated CLASS:MODEL:SAMPLER:VALUE:STEPS[:GAMMA]")
    parser.add_argument("--num-chains", type=int, default=4)
    parser.add_argument("--windows", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--append", action="store_true")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_dln_long.json"))
    args = parser.parse_args()
    out = dict(benchmark="bench_dln_long", jax=jax.__version__, backend=jax.default_backend(), platform=platform.platform(),
               every=EVERY, runs=[], commands=[])
    if args.append and os.path.exists(args.out):
        with open(args.out) as f:
            out = json.load(f)
    out["commands"].append(" ".join(["python"] + sys.argv))
    for spec in args.runs.split(","):
        row = run(spec.strip(), args.num_chains, args.windows, args.seed)
        out["runs"].append(row)
        last = row["windows"][-1]
        print(f"{spec}: {row['wall_seconds']:.0f} s, last window {last['llc']:.1f} ({last['relative_error']:+.1%} vs λ = {row['llc']}); "
              f"end distances {np.round(row['settings']['end_distance'], 2)}", flush=True)
        for w in row["windows"]:
            print(f"  steps {w['first_step']:>7}-{w['last_step']:<7} {w['llc']:8.1f}  {w['relative_error']:+.3f}", flush=True)
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
