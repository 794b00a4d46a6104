"""The planner's memory count against XLA's memory analysis and the process's peak RSS.

For MLPs and Pythia-shaped ``sj.models.TransformerLM`` s of ~1M, ~10M and ~30M parameters, each in a
fresh process: a short ``run_chains`` (4 chains, batch 8, 4 draws, the default ``SamplerConfig``
otherwise, so the default memory budget), then

* ``planned_bytes``: the planner's bytes of the run's first group (``planning.memory_count``:
  data + configurations x (w* and its piece + chains x per-chain bytes));
* ``xla_bytes``: XLA's ``memory_analysis()`` of that group's compiled chunk program, argument +
  output + temp - alias bytes (the buffers live during a call);
* ``rss_increase_bytes``: the process's peak RSS (``resource.getrusage``) during ``run_chains``
  above its peak before it (the model and the data already built). It includes the compiler's own
  memory and the pass over the data at w*, which the planner does not count;
* the groups, chain block and microbatches the planner chose under the default budget.

Writes ``benchmarks/results/bench_memory.json``. Usage:
``PYTHONPATH=. python benchmarks/bench_memory.py [--cases mlp-1M,lm-10M,...]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

CASES = {
    # name: (kind, sizes)
    "mlp-1M": ("mlp", dict(widths=[256, 1000, 1000, 16])),
    "mlp-10M": ("mlp", dict(widths=[256, 3000, 3000, 16])),
    "mlp-30M": ("mlp", dict(widths=[256, 5400, 5400, 16])),
    "lm-1M": ("lm", dict(vocab_size=4096, width=128, num_layers=4, num_heads=4, context_length=64)),
    "lm-10M": ("lm", dict(vocab_size=50304, width=128, num_layers=6, num_heads=4, context_length=128)),  # Pythia-14M shape
    "lm-30M": ("lm", dict(vocab_size=50304, width=384, num_layers=6, num_heads=6, context_length=128)),
}
NUM_SEQUENCES = 32


def _model(kind: str, sizes: dict):
    import jax.numpy as jnp
    import numpy as np

    import slt_jax as sj

    rng = np.random.default_rng(0)
    if kind == "mlp":
        widths = sizes["widths"]
        params = {f"layer{i}": {"w": jnp.asarray(rng.normal(size=(a, b)) / np.sqrt(a), jnp.float32), "b": jnp.zeros(b)}
                  for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]))}

        def loss_fn(params, batch):
            hidden = batch["x"]
            for i in range(len(params)):
                hidden = hidden @ params[f"layer{i}"]["w"] + params[f"layer{i}"]["b"][None, :]
                hidden = jnp.tanh(hidden) if i < len(params) - 1 else hidden
            return jnp.mean((hidden - batch["y"]) ** 2, axis=-1)

        data = {"x": jnp.asarray(rng.normal(size=(NUM_SEQUENCES, widths[0])), jnp.float32),
                "y": jnp.asarray(rng.normal(size=(NUM_SEQUENCES, widths[-1])), jnp.float32)}
        return params, loss_fn, data
    from flax import nnx

    model = sj.models.TransformerLM(sizes["vocab_size"], sizes["context_length"], sizes["num_layers"], sizes["num_heads"],
                                    sizes["width"], tie_embeddings=True, rngs=nnx.Rngs(0))
    params, loss_fn = sj.from_nnx(model, "next_token")
    tokens = rng.integers(0, sizes["vocab_size"], (NUM_SEQUENCES, sizes["context_length"]))
    return params, loss_fn, {"inputs": jnp.asarray(tokens, jnp.int32)}


def run_case(name: str) -> dict:
    import jax
    import numpy as np

    import slt_jax as sj
    from slt_jax import sampler
    from slt_jax._src import planning

    kind, sizes = CASES[name]
    params, loss_fn, data = _model(kind, sizes)
    num_parameters = int(sum(np.size(x) for x in jax.tree.leaves(params)))
    config = sj.SamplerConfig(step_size=1e-7, nbeta=10.0, localization=100.0, num_chains=4, num_draws=4, batch_size=8)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    result = sj.run_chains(loss_fn, [params], data, config, key=0, progress=False)
    wall = time.perf_counter() - start
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    plan = planning.prepare(loss_fn, [params], data, config, key=0)
    group = plan.schedule.groups[0]
    restriction = plan.variants[group.variants[0]].restriction
    count = planning.memory_count(plan, restriction.layout, restriction.offsets, group.microbatches)
    num_configs = len(group.centers) * len(group.variants)
    planned = count.shared + num_configs * (count.per_configuration + len(group.chains) * count.per_chain)
    stats = sampler._compiled_memory(plan, group)  # the run's executable (cached by signature)
    xla = stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes - stats.alias_size_in_bytes
    return dict(
        case=name, kind=kind, sizes=sizes, num_parameters=num_parameters, parameter_bytes=4 * num_parameters,
        settings={k: result.settings[k] for k in ("groups", "chain_block", "microbatches", "configuration_bytes", "memory_budget")},
        planned_bytes=int(planned), per_chain_bytes=int(count.per_chain), per_chain_copies=count.per_chain / (4 * num_parameters),
        xla_bytes=int(xla), xla_temp_bytes=int(stats.temp_size_in_bytes), planned_over_xla=planned / xla,
        rss_increase_bytes=int(rss_after - rss_before), planned_over_rss_increase=planned / max(1, rss_after - rss_before),
        wall_seconds=wall, compile_seconds=result.compile_seconds, sampling_seconds=result.sampling_seconds,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {list(CASES)}")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one case, in this process (the child)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_memory.json"))
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case)))
        return
    rows = []
    for name in args.cases.split(","):
        child = subprocess.run([sys.executable, __file__, "--case", name], capture_output=True, text=True, env=os.environ)
        if child.returncode:
            rows.append(dict(case=name, error=child.stderr[-2000:]))
        else:
            rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    import jax

    with open(args.out, "w") as f:
        json.dump(dict(rows=rows, jax_version=jax.__version__, platform=jax.default_backend(), cpu_count=os.cpu_count(),
                       note="rss_increase_bytes includes XLA's compiler memory and the pass over the data at w*"), f, indent=1)


if __name__ == "__main__":
    main()
