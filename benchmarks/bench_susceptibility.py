"""Susceptibility benchmark: time and peak memory vs draws and probe tokens; vmapped vs looped components.

Every measurement runs in a fresh subprocess so its peak resident memory (``ru_maxrss``) is its
own. The model is the tiny attention-only transformer (2 layers x 2 heads, width 16, context 10)
at a random initialisation (timings and memory do not depend on training); the components are
``full`` plus the 4 heads. ``centering="probe"`` (no full-data pass per draw).

* streamed: ``estimate_susceptibilities`` (Welford cross-moments on device, O(tokens) memory).
* kept: the same run with ``keep_traces=True``, i.e. storing every per-token loss of every draw the
  way a devinterp-style pipeline does (it then computes covariances from the stored traces).
* devinterp_bytes: what storing those traces needs, components x chains x draws x tokens x 4 B.

Usage: ``python benchmarks/bench_susceptibility.py [--quick]``; writes
``benchmarks/results/bench_susceptibility.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

RESULTS = os.path.join(os.path.dirname(__file__), "results", "bench_susceptibility.json")
VOCAB, CONTEXT, CHAINS = 16, 10, 4


def child(config: dict) -> dict:
    import jax
    import numpy as np
    from flax import nnx

    import slt_jax as sj

    model = sj.models.AttentionOnlyTransformer(VOCAB, CONTEXT, num_layers=2, num_heads=2, width=16, rngs=nnx.Rngs(0))
    params, loss_fn = sj.from_nnx(model, "next_token")
    data = sj.tasks.repeated_tokens(0, 256, VOCAB, CONTEXT // 2)
    probe = sj.tasks.repeated_tokens(1, config["probe_sequences"], VOCAB, CONTEXT // 2)
    heads = {f"l{l}h{h}": sj.head_mask(params, f"blocks/{l}/attn", h) for l in range(2) for h in range(2)}
    common = dict(probes={"probe": probe}, step_size=1e-3, nbeta=50.0, localization=100.0, num_chains=CHAINS,
                  num_draws=config["num_draws"], batch_size=32, centering="probe", mala_every=0, progress=False,
                  chunk_draws=min(250, config["num_draws"]))
    start = time.perf_counter()
    compile_seconds = sampling_seconds = 0.0
    if config["mode"] == "loop":
        for name, mask in heads.items():  # one component per run: the mask is a traced input, one compile
            result = sj.estimate_susceptibilities(loss_fn, params, data, components={name: mask}, include_full=False,
                                                  key=0, **common)
            compile_seconds += result.chains.compile_seconds
            sampling_seconds += result.chains.sampling_seconds
        result = sj.estimate_susceptibilities(loss_fn, params, data, components={}, key=0, **common)
        compile_seconds += result.chains.compile_seconds
        sampling_seconds += result.chains.sampling_seconds
    else:
        result = sj.estimate_susceptibilities(loss_fn, params, data, components=heads, key=0,
                                              keep_traces=config["mode"] == "kept", **common)
        compile_seconds, sampling_seconds = result.chains.compile_seconds, result.chains.sampling_seconds
    wall = time.perf_counter() - start
    tokens = result.chi.shape[0]
    nbytes = lambda tree: int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree)))
    return dict(
        config,
        tokens=tokens,
        components=5,
        wall_seconds=wall,
        compile_seconds=compile_seconds,
        sampling_seconds=sampling_seconds,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        accumulator_bytes=nbytes(result.chains.accumulator),
        kept_trace_bytes=nbytes(result.chains.observed) if result.chains.observed is not None else 0,
        devinterp_bytes=5 * CHAINS * config["num_draws"] * tokens * 4,
    )


def measure(config: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(config)], capture_output=True, text=True, check=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    draws = [250, 500, 1000] if args.quick else [250, 500, 1000, 2000]
    probes = [8, 32] if args.quick else [16, 64, 256]
    rows = {"draws": [], "probe_tokens": [], "vmapped_vs_loop": []}
    for num_draws in draws:
        for mode in ("streamed", "kept"):
            rows["draws"].append(measure(dict(mode=mode, num_draws=num_draws, probe_sequences=64)))
    for probe_sequences in probes:
        rows["probe_tokens"].append(measure(dict(mode="streamed", num_draws=500, probe_sequences=probe_sequences)))
    for mode in ("streamed", "loop"):
        rows["vmapped_vs_loop"].append(measure(dict(mode=mode, num_draws=500, probe_sequences=16)))
    import jax

    report = dict(
        benchmark="bench_susceptibility",
        machine=dict(platform=platform.platform(), processor=platform.processor(), cpus=os.cpu_count(),
                     backend=jax.default_backend(), jax=jax.__version__),
        note="Run once at modest size on a shared 2-core CPU machine; timings are indicative. Each row ran in a "
        "fresh process (peak RSS includes the ~0.5 GB JAX/XLA runtime). 'streamed' keeps Welford "
        "cross-moments on device; 'kept' stores every per-token trace (keep_traces=True), as a "
        "devinterp-style pipeline must; devinterp_bytes = components x chains x draws x tokens x 4 B.",
        model="AttentionOnlyTransformer(vocab 16, context 10, 2 layers x 2 heads, width 16), 5 components, "
        f"{CHAINS} chains, batch 32, centering='probe'",
        **rows,
    )
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as file:
        json.dump(report, file, indent=2)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
