"""Susceptibility benchmark: workload S (a 3.1M-parameter transformer, issue 8) and the small-model rows.

Every measurement runs in a fresh subprocess, so its peak resident memory (``ru_maxrss``, which
includes the ~0.5 GB JAX/XLA runtime) and its compile times are its own. Models are at a random
initialisation and data are synthetic tokens generated here (timings and memory do not depend on
training). ``centering="probe"`` throughout (no full-data pass per draw).

Workload S (``--workload S``; issue 8):
  ``AttentionOnlyTransformer(vocab 5000, context 64, 2 layers x 8 heads, width 256)``, 3.1M
  parameters; components = the 16 heads (``head_mask``: q/k/v/out slices) + ``full``; 4 chains x 50
  draws, batch 16 of n = 1024 training sequences (``tasks.repeated_tokens``); probes ``{"a", "b"}``
  of 16 sequences each (repeated tokens, uniform random tokens): 16 x 63 x 2 = 2016 token rows.
  Rows:
    susceptibilities: wall, compile and sampling seconds and peak RSS of ``estimate_susceptibilities``;
    floor: the RESTRICTED FLOOR, the time of one jitted value_and_grad of the mean minibatch loss
      (16 x 64 tokens) with respect to one head's coordinates only (``restriction.restrict`` /
      ``extract`` / ``embed``, the rest held at w*), measured for one head of every layer, and of the
      full model; floor = steps x chains x sum over components of its gradient's time. Also the
      per-draw observation work (per component a forward pass of the 32 probe sequences; per chain
      and compiled group one of the minibatch at w*, for ``centering="probe"``: the batch and the
      centre are the same in every component, so vmap evaluates it once), reported separately as
      ``observe_floor_seconds``;
    llc: ``estimate_llc`` on the same model and schedule (compile, sampling, RSS).
  Reported: sampling / floor and sampling / (floor + observe floor). Before the redesign (main, 2-core
  CPU) the susceptibilities took 862 s wall and 11.9 GB peak RSS; estimate_llc 10 s compile, 33 s
  sampling, 1.6 GB. Goal: >= 3x faster than 862 s and <= 3 GB.
  ``--scale 10`` is a ~10x larger variant for accelerators: vocab 10000, width 512, 4 layers x 8
  heads (~14M parameters, 32 heads + full).

Small-model rows (``--workload small``): the tiny transformer (vocab 16, context 10, 2 layers x 2
heads, width 16), components ``full`` + 4 heads, 4 chains, batch 32:
  draws: streamed (Welford cross-moments on device) vs kept (``keep_traces=True``, every per-token
    loss of every draw stored, as a devinterp-style pipeline does) at increasing draws;
  probe_tokens: streamed at increasing probe sizes;
  vmapped_vs_loop: all components in one call vs one call per component.
  devinterp_bytes = components x chains x draws x tokens x 4 B (what storing those traces needs).

Usage (any backend; JAX picks the device):
  python benchmarks/bench_susceptibility.py --workload S [--scale 10] [--out FILE]
  python benchmarks/bench_susceptibility.py --workload small [--quick]
  smoke: python benchmarks/bench_susceptibility.py --workload S --num-draws 2 --heads 1 --no-llc --out /tmp/s.json
Default ``--out``: benchmarks/results/bench_susceptibility.json (bench_susceptibility_scale10.json
with ``--scale 10``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# name -> (vocab_size, context_length, num_layers, num_heads, width)
WORKLOAD_S = {1: (5000, 64, 2, 8, 256), 10: (10000, 64, 4, 8, 512)}
S_TRAIN_SEQUENCES, S_PROBE_SEQUENCES = 1024, 16
SMALL_VOCAB, SMALL_CONTEXT, SMALL_CHAINS = 16, 10, 4


# ---------------------------------------------------------------------------------------------
# helpers used inside the children


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def peak_device_mb() -> float | None:
    """Peak accelerator memory of this process (None on CPU, where it is part of the RSS)."""
    import jax

    device = jax.devices()[0]
    if device.platform == "cpu":
        return None
    stats = device.memory_stats() or {}
    return stats["peak_bytes_in_use"] / 2**20 if "peak_bytes_in_use" in stats else None


def estimate(loss_fn, params, data, config, *, key, probes, components, keep_traces=False, include_full=True):
    """``sj.estimate_susceptibilities``; returns ``(chains, num_rows, api)``."""
    import slt_jax as sj

    result = sj.estimate_susceptibilities(
        loss_fn, params, data, config, key=key, probes=probes, components=components, centering="probe",
        include_full=include_full, keep_traces=keep_traces, progress=False,
    )
    return result.chains, int(result.chi.shape[0]), "estimate_susceptibilities"


def nbytes(tree) -> int:
    import jax
    import numpy as np

    return int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree))) if tree is not None else 0


def machine() -> dict:
    import jax

    device = jax.devices()[0]
    return dict(platform=platform.platform(), processor=platform.processor(), cpus=os.cpu_count(),
                backend=jax.default_backend(), device=str(device), device_kind=device.device_kind,
                device_count=jax.device_count(), jax=jax.__version__)


# ---------------------------------------------------------------------------------------------
# workload S


def s_problem(scale: int, heads: int | None):
    """(loss_fn, params, data, probes, components, shape) of workload S at ``scale``."""
    import numpy as np
    from flax import nnx

    import slt_jax as sj

    vocab, context, layers, num_heads, width = WORKLOAD_S[scale]
    model = sj.models.AttentionOnlyTransformer(vocab, context, layers, num_heads, width, rngs=nnx.Rngs(0))
    params, loss_fn = sj.from_nnx(model, "next_token")
    data = sj.tasks.repeated_tokens(0, S_TRAIN_SEQUENCES, vocab, context // 2)
    probes = {
        "a": sj.tasks.repeated_tokens(1, S_PROBE_SEQUENCES, vocab, context // 2),
        "b": {"inputs": np.random.default_rng(2).integers(0, vocab, (S_PROBE_SEQUENCES, context)).astype(np.int32)},
    }
    names = [(l, h) for l in range(layers) for h in range(num_heads)]
    names = names if heads is None else names[:heads]
    components = {f"l{l}h{h}": sj.head_mask(params, f"blocks/{l}/attn", h) for l, h in names}
    return loss_fn, params, data, probes, components, dict(vocab_size=vocab, context_length=context, num_layers=layers,
                                                          num_heads=num_heads, width=width)


def s_config(spec: dict):
    import slt_jax as sj

    return sj.SamplerConfig(step_size=spec["step_size"], localization=spec["localization"], num_draws=spec["num_draws"],
                            batch_size=spec["batch_size"], num_chains=spec["num_chains"], mala_every=spec["mala_every"],
                            diagnostics_every=spec["diagnostics_every"])


def child_s_susceptibilities(spec: dict) -> dict:
    import jax

    import slt_jax as sj

    start = time.perf_counter()
    loss_fn, params, data, probes, components, shape = s_problem(spec["scale"], spec["heads"])
    setup_seconds = time.perf_counter() - start
    config = s_config(spec)
    compiles = sj.compile_count()
    start = time.perf_counter()
    chains, rows, api = estimate(loss_fn, params, data, config, key=0, probes=probes, components=components,
                                 include_full=spec["include_full"])
    wall = time.perf_counter() - start
    return dict(
        row="susceptibilities", api=api, model=shape,
        num_parameters=int(sum(x.size for x in jax.tree.leaves(params))),
        components=len(components) + int(spec["include_full"]), token_rows=rows,
        setup_seconds=setup_seconds, wall_seconds=wall, compile_seconds=chains.compile_seconds,
        sampling_seconds=chains.sampling_seconds, compiles=sj.compile_count() - compiles,
        groups=chains.settings["groups"], memory_budget=chains.settings["memory_budget"],
        configuration_bytes=chains.settings.get("configuration_bytes"),
        num_steps=chains.num_steps, stopped_early=bool(chains.settings["stopped_early"]),
        diverged_chains=int(chains.diverged.sum()), accumulator_bytes=nbytes(chains.accumulator),
        peak_rss_mb=peak_rss_mb(), peak_device_mb=peak_device_mb(),
    )


def _time_call(function, args, repeats: int) -> float:
    """Median seconds of ``function(*args)`` over ``repeats`` blocked calls (after one warm-up)."""
    import jax

    jax.block_until_ready(function(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(function(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def child_s_floor(spec: dict) -> dict:
    """Per-call seconds of the restricted (one head per layer) and full value_and_grad, and of the
    per-draw observation forward passes, on a batch of ``batch_size`` x context tokens."""
    import jax
    import jax.numpy as jnp

    import slt_jax as sj
    from slt_jax import restriction

    loss_fn, params, data, probes, components, shape = s_problem(spec["scale"], None)
    params = jax.tree.map(jnp.asarray, params)
    batch = jax.tree.map(lambda x: jnp.asarray(x[: spec["batch_size"]]), data)
    mean_loss = lambda p, b: jnp.mean(loss_fn(p, b))

    def restricted_value_and_grad(layout):
        def value_and_grad(position, center, offsets, batch):
            return jax.value_and_grad(lambda q: mean_loss(restriction.embed(layout, offsets, center, q), batch))(position)
        return jax.jit(value_and_grad)

    per_layer = {}
    for layer in range(shape["num_layers"]):
        r = restriction.restrict(sj.head_mask(params, f"blocks/{layer}/attn", 0), params)
        offsets = tuple(None if o is None else jnp.asarray(o) for o in r.offsets)
        position = restriction.extract(r.layout, offsets, params)
        per_layer[layer] = _time_call(restricted_value_and_grad(r.layout), (position, params, offsets, batch), spec["repeats"])
    full = _time_call(jax.jit(jax.value_and_grad(mean_loss)), (params, batch), spec["repeats"])
    probe_batch = jax.tree.map(lambda *xs: jnp.concatenate([jnp.asarray(x) for x in xs]), *probes.values())
    probe_forward = _time_call(jax.jit(loss_fn), (params, probe_batch), spec["repeats"])
    center_forward = _time_call(jax.jit(mean_loss), (params, batch), spec["repeats"])
    return dict(row="floor", restricted_head_seconds_per_layer=per_layer, full_seconds=full,
                probe_forward_seconds=probe_forward, center_forward_seconds=center_forward,
                batch_tokens=[spec["batch_size"], shape["context_length"]],
                probe_sequences=int(jax.tree.leaves(probe_batch)[0].shape[0]), peak_rss_mb=peak_rss_mb(), peak_device_mb=peak_device_mb())


def child_s_llc(spec: dict) -> dict:
    import slt_jax as sj

    loss_fn, params, data, _, _, shape = s_problem(spec["scale"], 0)
    start = time.perf_counter()
    result = sj.estimate_llc(loss_fn, params, data, s_config(spec), key=0, progress=False)
    return dict(row="llc", wall_seconds=time.perf_counter() - start, compile_seconds=result.chains.compile_seconds,
                sampling_seconds=result.chains.sampling_seconds, llc_mean=result.llc_mean,
                diverged_chains=int(result.diverged.sum()), peak_rss_mb=peak_rss_mb(), peak_device_mb=peak_device_mb())


def workload_s(args) -> dict:
    vocab, context, layers, num_heads, width = WORKLOAD_S[args.scale]
    spec = dict(scale=args.scale, heads=args.heads, include_full=not args.no_full, num_draws=args.num_draws,
                num_chains=4, batch_size=16, step_size=args.step_size, localization=100.0,
                mala_every=args.mala_every, diagnostics_every=args.diagnostics_every, repeats=args.floor_repeats)
    susceptibilities = measure("s_susceptibilities", spec)
    floor = measure("s_floor", spec)
    llc = None if args.no_llc else measure("s_llc", spec)

    steps, chains = susceptibilities["num_steps"], spec["num_chains"]
    num_heads_used = layers * num_heads if args.heads is None else args.heads
    per_layer = {int(k): v for k, v in floor["restricted_head_seconds_per_layer"].items()}
    head_layers = [l for l in range(layers) for _ in range(num_heads)][:num_heads_used]
    per_chain_step = sum(per_layer[l] for l in head_layers) + (floor["full_seconds"] if spec["include_full"] else 0.0)
    floor_seconds = steps * chains * per_chain_step
    num_components = num_heads_used + int(spec["include_full"])
    # Per draw and chain: a probe forward per component; the minibatch forward at w* depends only on
    # the chain (same keys and centre in every component), so vmap computes it once per group.
    observe_seconds = spec["num_draws"] * chains * (num_components * floor["probe_forward_seconds"]
                                                    + susceptibilities["groups"] * floor["center_forward_seconds"])
    sampling = susceptibilities["sampling_seconds"]
    summary = dict(
        wall_seconds=susceptibilities["wall_seconds"],
        compile_seconds=susceptibilities["compile_seconds"],
        sampling_seconds=sampling,
        peak_rss_gb=susceptibilities["peak_rss_mb"] / 1024,
        restricted_floor_seconds=floor_seconds,
        observe_floor_seconds=observe_seconds,
        ratio_sampling_over_floor=sampling / floor_seconds,
        ratio_sampling_over_floor_plus_observe=sampling / (floor_seconds + observe_seconds),
        speedup_vs_main_wall_862s=862.0 / susceptibilities["wall_seconds"] if args.scale == 1 else None,
        goal="wall <= 287 s (3x faster than 862 s) and peak RSS <= 3 GB" if args.scale == 1 else None,
    )
    if llc is not None:
        summary.update(llc_compile_seconds=llc["compile_seconds"], llc_sampling_seconds=llc["sampling_seconds"],
                       llc_peak_rss_gb=llc["peak_rss_mb"] / 1024)
    return dict(
        workload="S" if args.scale == 1 else f"S x{args.scale}",
        description=(f"AttentionOnlyTransformer(vocab {vocab}, context {context}, {layers} layers x {num_heads} heads, "
                     f"width {width}); {num_heads_used} heads{' + full' if spec['include_full'] else ''}; "
                     f"{chains} chains x {spec['num_draws']} draws, batch 16 of n={S_TRAIN_SEQUENCES}; probes a, b of "
                     f"{S_PROBE_SEQUENCES} sequences; centering='probe'"),
        floor_definition=("steps x chains x sum over components of one jitted value_and_grad of the mean loss on a "
                          "16 x context batch w.r.t. the component's coordinates only (one head: its q/k/v/out slices, "
                          "the rest held at w*; full: every parameter); observe floor: draws x chains x (components x forward of "
                          "the probe sequences + compiled groups x forward of the minibatch at w*)"),
        settings=spec, summary=summary, susceptibilities=susceptibilities, floor=floor, llc=llc,
        before_redesign=dict(wall_seconds=862, peak_rss_gb=11.9, llc_compile_seconds=10, llc_sampling_seconds=33,
                             llc_peak_rss_gb=1.6, machine="2-core CPU") if args.scale == 1 else None,
    )


# ---------------------------------------------------------------------------------------------
# small-model rows


def child_small(spec: dict) -> dict:
    from flax import nnx

    import slt_jax as sj

    model = sj.models.AttentionOnlyTransformer(SMALL_VOCAB, SMALL_CONTEXT, 2, 2, 16, rngs=nnx.Rngs(0))
    params, loss_fn = sj.from_nnx(model, "next_token")
    data = sj.tasks.repeated_tokens(0, 256, SMALL_VOCAB, SMALL_CONTEXT // 2)
    probes = {"probe": sj.tasks.repeated_tokens(1, spec["probe_sequences"], SMALL_VOCAB, SMALL_CONTEXT // 2)}
    heads = {f"l{l}h{h}": sj.head_mask(params, f"blocks/{l}/attn", h) for l in range(2) for h in range(2)}
    config = sj.SamplerConfig(step_size=1e-3, nbeta=50.0, localization=100.0, num_chains=SMALL_CHAINS,
                              num_draws=spec["num_draws"], batch_size=32, mala_every=0,
                              chunk_draws=min(250, spec["num_draws"]))
    start = time.perf_counter()
    compile_seconds = sampling_seconds = 0.0
    kept_bytes = accumulator_bytes = 0
    if spec["mode"] == "loop":
        # One component per call: components of one layout share the compiled program.
        runs = [dict(components={name: mask}, include_full=False) for name, mask in heads.items()]
        runs.append(dict(components={}, include_full=True))
        for run in runs:
            chains, rows, api = estimate(loss_fn, params, data, config, key=0, probes=probes, **run)
            compile_seconds += chains.compile_seconds
            sampling_seconds += chains.sampling_seconds
            accumulator_bytes += nbytes(chains.accumulator)
    else:
        chains, rows, api = estimate(loss_fn, params, data, config, key=0, probes=probes, components=heads,
                                     keep_traces=spec["mode"] == "kept")
        compile_seconds, sampling_seconds = chains.compile_seconds, chains.sampling_seconds
        accumulator_bytes, kept_bytes = nbytes(chains.accumulator), nbytes(chains.observed)
    return dict(
        spec, api=api, tokens=rows, components=5, wall_seconds=time.perf_counter() - start,
        compile_seconds=compile_seconds, sampling_seconds=sampling_seconds, peak_rss_mb=peak_rss_mb(), peak_device_mb=peak_device_mb(),
        accumulator_bytes=accumulator_bytes, kept_trace_bytes=kept_bytes,
        devinterp_bytes=5 * SMALL_CHAINS * spec["num_draws"] * rows * 4,
    )


def workload_small(args) -> dict:
    draws = [250, 500] if args.quick else [250, 500, 1000, 2000]
    probe_sizes = [8, 32] if args.quick else [16, 64, 256]
    middle = 250 if args.quick else 500
    rows = {"draws": [], "probe_tokens": [], "vmapped_vs_loop": []}
    for num_draws in draws:
        for mode in ("streamed", "kept"):
            rows["draws"].append(measure("small", dict(mode=mode, num_draws=num_draws, probe_sequences=64)))
    for probe_sequences in probe_sizes:
        rows["probe_tokens"].append(measure("small", dict(mode="streamed", num_draws=middle, probe_sequences=probe_sequences)))
    for mode in ("streamed", "loop"):
        rows["vmapped_vs_loop"].append(measure("small", dict(mode=mode, num_draws=middle, probe_sequences=16)))
    return dict(
        workload="small",
        description=(f"AttentionOnlyTransformer(vocab {SMALL_VOCAB}, context {SMALL_CONTEXT}, 2 layers x 2 heads, width 16), "
                     f"full + 4 heads, {SMALL_CHAINS} chains, batch 32, step 1e-3, nbeta 50, localization 100, "
                     "mala_every 0, centering='probe'"),
        note=("'streamed' keeps Welford cross-moments on device; 'kept' also stores every per-token trace "
              "(keep_traces=True), as a devinterp-style pipeline must; devinterp_bytes = components x chains x "
              "draws x tokens x 4 B."),
        **rows,
    )


# ---------------------------------------------------------------------------------------------
# driver


CHILDREN = {"s_susceptibilities": child_s_susceptibilities, "s_floor": child_s_floor, "s_llc": child_s_llc, "small": child_small}


def measure(kind: str, spec: dict) -> dict:
    """Runs one measurement in a fresh Python process (its own peak RSS and compile caches)."""
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", kind, json.dumps(spec)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        raise RuntimeError(f"measurement {kind} {spec} failed (exit {out.returncode})")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    parser.add_argument("--workload", choices=["S", "small", "all"], default="all")
    parser.add_argument("--scale", type=int, choices=sorted(WORKLOAD_S), default=1,
                        help="workload S size: 1 (3.1M parameters) or 10 (~14M, 32 heads; for accelerators)")
    parser.add_argument("--num-draws", type=int, default=50, help="workload S draws per chain")
    parser.add_argument("--heads", type=int, default=None, help="workload S: only the first HEADS heads (smoke runs)")
    parser.add_argument("--no-full", action="store_true", help="workload S: leave out the 'full' component")
    parser.add_argument("--no-llc", action="store_true", help="workload S: skip the estimate_llc row")
    parser.add_argument("--step-size", type=float, default=1e-5, help="workload S step size")
    parser.add_argument("--mala-every", type=int, default=20, help="workload S SamplerConfig.mala_every")
    parser.add_argument("--diagnostics-every", type=int, default=1, help="workload S SamplerConfig.diagnostics_every")
    parser.add_argument("--floor-repeats", type=int, default=20, help="timed calls per floor measurement")
    parser.add_argument("--quick", action="store_true", help="small rows: fewer and shorter runs")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child[0]](json.loads(args.child[1]))))
        return
    if args.scale != 1 and args.workload != "S":
        parser.error("--scale applies to --workload S only")
    out = args.out or os.path.join(RESULTS_DIR, "bench_susceptibility.json" if args.scale == 1 else f"bench_susceptibility_scale{args.scale}.json")
    report = dict(benchmark="bench_susceptibility", command=" ".join(sys.argv), machine=measure_machine())
    if args.workload in ("S", "all"):
        report["workload_S"] = workload_s(args)
        print(json.dumps(report["workload_S"]["summary"], indent=1), flush=True)
    if args.workload in ("small", "all"):
        report["workload_small"] = workload_small(args)
    report["note"] = ("Each row ran in a fresh process (peak RSS includes the ~0.5 GB JAX/XLA runtime). Timings on a "
                      "shared machine are indicative; see machine.")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as file:
        json.dump(report, file, indent=2)
    print(f"wrote {out}")


def measure_machine() -> dict:
    out = subprocess.run([sys.executable, "-c", "import json, sys; sys.path.insert(0, %r); import bench_susceptibility as b; "
                          "print(json.dumps(b.machine()))" % os.path.dirname(os.path.abspath(__file__))],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
