"""Head-to-head: slt_jax against devinterp (the PyTorch reference library) on the bench_llc workloads.

Runners, each in its own subprocess (one library's threads and memory never touch another's):
  slt_jax     ``sj.estimate_llc`` on ``bench_llc.dln_workload`` / ``mlp_workload``. It also writes the
              workload's arrays (float32 numpy) to a temporary folder, which the other runners load.
  devinterp   ``devinterp.slt.sampling.sample`` + ``devinterp.slt.llc.compute_llc`` (= ``llc()``,
              devinterp 2.x; its SGLD is ``SGMCMC.sgld``) on the same arrays.
  torch_loop  a hand-written PyTorch SGLD loop with the same update, run with three minibatch orders:
              ``replacement`` (i.i.d. indices, as slt_jax draws them), ``cycle`` (one shuffle per chain,
              replayed: devinterp 2.x's default ``epoch_mode="cycle"`` ``itertools.cycle``s its
              DataLoader's first epoch) and ``epoch`` (reshuffled every epoch: devinterp 1.3.2's own
              ``utils.cycle`` re-iterates the DataLoader). Batches of n // B distinct indices (drop_last), as devinterp's.
Each runner makes three calls with disjoint seeds: call 0 ("cold": first call in the process, includes
compilation / first-use allocation) and call 1 ("warm") with the workload's settings, both timed; then a
statistics call with ``--stat-chains`` chains (default 24, disjoint seeds), whose chains give the LLC
comparison (without it, ``--stat-chains 0`` or ``--quick``, the timed calls' chains are pooled). Only the
torch loop's first order is cold; its later orders run in a warm process. slt_jax's statistics call runs
with ``loss_estimator="paired"``, which records both estimators below on the same chains.

The ``lm`` workload (``--workloads lm``, its own JSON: results/bench_vs_devinterp_lm.json) is a language
model: a runner ``prepare`` builds a random-initialised GPT-NeoX (Pythia-shaped: vocab 50304, width 128,
6 layers x 4 heads, MLP 512, context 128, rotary fraction 0.25; embeddings tied, 7.6M parameters) with
``transformers`` and writes it with ``save_pretrained`` (safetensors), with uniform random token rows
and the PyTorch logits of two rows. devinterp 2.0.1 loads that folder through
``transformers.AutoModelForCausalLM`` (its default per-token loss, ``compute_per_token_loss``), slt_jax
through ``sj.models.from_pretrained`` (``sj.from_nnx(model, "next_token")``; its logits are checked
against the PyTorch ones first). Same tokens, batch size, ε, γ, nβ; 4 chains x 50 draws; cold and
warm calls, no statistics call (the LLCs pool the two timed calls' 8 chains). slt_jax runs with
``SamplerConfig(memory_budget=8e9)``: the default budget on this CPU (min(2 GiB, RAM / 8)) would
split the 4 chains of a 7.6M-parameter model into groups.

Two loss estimators are compared, from the same chains:
  minibatch  nβ (mean_t L_{B_t}(w_t) - L_n(w*)): the batch of that step's gradient (the convention of
             both libraries; with epoch-ordered batches this is where the bias lives);
  paired     nβ (mean_t [L_{B_t}(w_t) - L_{B_t}(w*)]): the same batch at w* as a control variate, which
             removes the per-example noise (devinterp's per-step per-example losses and indices are read
             back from its zarr output; the torch loop gathers precomputed losses at w*).
The bias of an order is its estimate minus the ``replacement`` torch loop's, in standard errors of the
difference (std over chains, ddof=1, / sqrt(chains), chains independent).

Convention mapping (checked against the installed devinterp source):
  * Update. devinterp ``SGMCMC.sgld`` (identity preconditioner, prior = GaussianPrior(γ, centre
    "initial")): p -= (lr/2)(nbeta * p.grad + localization (p - p0)); p += sqrt(lr) N(0, noise_level²).
    slt_jax: w -= (ε/2)(nβ g + γ(w - w*)) + sqrt(ε) ξ. So lr = ε, nbeta = nβ, localization = γ,
    noise_level = 1, weight_decay = 0; the torch loop is the same. No factor of 2 differs.
  * Gradient. devinterp backpropagates ``loss_fn(model, input_ids).mean()`` (the MEAN over the batch,
    then × nbeta), as slt_jax's g is the gradient of the mean minibatch loss. Per-example losses are
    written out identically for every runner: DLN 0.5 ||y - f(x)||² (sum over the 10 outputs, with the
    1/2), MLP softmax cross-entropy. devinterp 2.x's data are "input_ids", so each row is the example's
    index [i, i] (context length 1) and ``loss_fn`` gathers x[i], y[i] and returns (batch, 1).
  * nβ. slt_jax's default n / log n (n = 10,000: 1085.74), passed to devinterp explicitly
    (devinterp's own ``default_nbeta`` is B / log B; not used).
  * LLC. devinterp: nβ (mean over every step, burn-in included, of the batch loss - init_loss), where
    init_loss is the mean loss over ``num_init_loss_batches`` batches of its loader; here
    num_init_loss_batches = n // B (its whole first epoch: all of n for the DLN, 9,984 of 10,000 for the
    MLP). slt_jax: nβ (mean over draws of the minibatch loss of that step's gradient - L_n(w*)), L_n(w*)
    exact. The workloads have no burn-in, so both average the same steps. devinterp's per-step losses
    are re-centred on the exact L_n(w*) for the comparison; its own figures are kept
    (``devinterp_own_init_loss``).
  * Chains. devinterp seeds chain c's noise with init_seed + c. It runs with
    ``match_sampling_input_ids_across_chains=False``, so each chain shuffles its own data (its default,
    True, gives every chain the same batches, which correlates the chains and makes their spread
    understate the error). Everything else is devinterp's default (shuffle=True, epoch_mode="cycle").
  * Data. A minimal torch Dataset of index rows (not a HuggingFace Dataset), so devinterp's time is
    its sampler's, not HuggingFace indexing's.

Threads (issue 22, item 4): every runner runs once per thread setting of ``--threads`` (default
``0,1``), each in fresh processes, and the timings of all settings form one table per workload
(``timing_table``: library x threads x cold/warm, with devinterp / slt_jax ratios at equal and at
default threads). ``0`` keeps each library's defaults (torch: ``torch.get_num_threads()``, recorded;
XLA: its own thread pool); ``1`` limits every runner to ONE intra-op thread (torch.set_num_threads(1)
and OMP/MKL_NUM_THREADS=1; XLA_FLAGS --xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1); ``k`` gives both k. With ``--cores`` (the default) slt_jax also runs
once more at default threads with one JAX CPU device per core (``JAX_NUM_CPU_DEVICES``; its chains
are then spread over the cores, with the same draws: row ``slt_jax_cores``). The statistics call (and so the LLC comparison)
runs in one setting only, the one-thread setting if listed, else the first. On a shared 2-core
machine, torch's 2 OpenMP threads spin-wait whenever another job holds a core: a torch MLP step
measured 6 ms with one thread and 23-98 ms with two.

Install the optional peers (never needed by slt_jax or its tests):
  python -m pip install torch --index-url https://download.pytorch.org/whl/cpu   # CPU wheel first
  python -m pip install "devinterp>=2,<3"                                         # or: pip install -e ".[peer]"
A bare ``pip install devinterp`` pulls the multi-GB CUDA build of torch; install the CPU wheel first.
Without them the script says so and exits with status 0.

Usage (from the repository root; about 7 minutes on 2 shared CPU cores, --quick under a minute of CPU):
  python benchmarks/bench_vs_devinterp.py [--quick] [--workloads dln,mlp] [--stat-chains 24] [--threads 0,1]
  python benchmarks/bench_vs_devinterp.py --workloads lm       # the language model (also needs transformers)
Default ``--out``: benchmarks/results/bench_vs_devinterp.json (bench_vs_devinterp_lm.json for ``lm`` alone;
``_quick`` before ``.json`` with ``--quick``). ``--quick``: a tenth of the draws and no
statistics call.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TORCH_ORDERS = ("replacement", "cycle", "epoch")
ESTIMATORS = ("minibatch", "paired")
INSTALL_HINT = (
    "python -m pip install torch --index-url https://download.pytorch.org/whl/cpu && "
    'python -m pip install "devinterp>=2,<3"'
)


# ----------------------------------------------------------------------------- shared helpers


def pooled(per_chain) -> dict:
    """Mean, std (ddof=1) and standard error over chains."""
    values = np.asarray(per_chain, dtype=float)
    std = float(values.std(ddof=1)) if values.size > 1 else float("nan")
    return {"llc_mean": float(values.mean()), "llc_std": std, "llc_stderr": std / math.sqrt(values.size),
            "num_chains": int(values.size), "llc_per_chain": values.tolist()}


def difference(a: dict, b: dict) -> dict:
    """a - b with the standard error of the difference (independent chains) and its z-score."""
    delta = a["llc_mean"] - b["llc_mean"]
    stderr = math.hypot(a["llc_stderr"], b["llc_stderr"])
    return {"difference": delta, "stderr": stderr, "z": delta / stderr, "relative": delta / b["llc_mean"]}


def call_plan(seed: int, num_chains: int, stat_chains: int) -> list[tuple[int, int, bool]]:
    """(seed, chains, is_statistics_call) per call: cold, warm, then the statistics call if stat_chains > 0."""
    plan = [(seed, num_chains, False), (seed + 1, num_chains, False)]
    return plan + ([(seed + 2, stat_chains, True)] if stat_chains > 0 else [])


def save_json(path: str, record: dict) -> None:
    with open(path, "w") as f:
        json.dump(record, f, indent=2)


def process_record() -> dict:
    return {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


# ----------------------------------------------------------------------------- slt_jax runner


def run_slt_jax(workload: str, workdir: str, quick: bool, seed: int, stat_chains: int) -> dict:
    import jax

    sys.path.insert(0, HERE)
    import bench_llc
    import slt_jax as sj
    from slt_jax.traces import llc_draws

    loss_fn, params, data, config = {"dln": bench_llc.dln_workload, "mlp": bench_llc.mlp_workload}[workload]()
    if quick:
        config = config.replace(num_draws=max(20, config.num_draws // 10))
    n = int(data["x"].shape[0])
    leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(params)]
    np.savez(os.path.join(workdir, f"{workload}.npz"), x=np.asarray(data["x"]), y=np.asarray(data["y"]),
             **{f"param_{i}": leaf for i, leaf in enumerate(leaves)})
    settings = {"n": n, "step_size": config.step_size, "localization": config.localization, "nbeta": config.nbeta_for(n),
                "batch_size": config.batch_size, "num_chains": config.num_chains, "num_draws": config.num_draws,
                "num_burnin": config.num_burnin, "num_steps_between_draws": config.num_steps_between_draws,
                "stat_chains": stat_chains, "num_parameters": int(sum(leaf.size for leaf in leaves))}
    save_json(os.path.join(workdir, f"{workload}_settings.json"), settings)
    calls = []
    for key, num_chains, statistics in call_plan(seed, config.num_chains, stat_chains):
        start = time.perf_counter()  # the statistics call also records L_B(w*) for the paired estimator
        result = sj.estimate_llc(loss_fn, params, data, config.replace(num_chains=num_chains), key=key, progress=False,
                                 loss_estimator="paired" if statistics else "minibatch")
        wall = time.perf_counter() - start
        record = {"wall_seconds": wall, "compile_seconds": result.chains.compile_seconds, "key": key, "statistics": statistics,
                  "sampling_seconds": result.chains.sampling_seconds, "init_loss": float(result.init_loss),
                  "nbeta": float(result.nbeta), "diverged": int(np.sum(result.diverged)),
                  "minibatch": pooled(llc_draws(result.chains, "minibatch")[0].mean(-1))}
        if statistics:
            record["paired"] = pooled(llc_draws(result.chains, "paired")[0].mean(-1))
        calls.append(record)
    return {"settings": settings, "config": config.to_dict(), "calls": calls, "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "jax": jax.__version__, "backend": jax.default_backend(), "device_count": jax.device_count(), **process_record()}


# ----------------------------------------------------------------------------- torch side


def torch_workload(workload: str, workdir: str):
    """(model, per-example loss(model, x, y), x, y, settings) on the arrays the slt_jax runner wrote."""
    import torch

    arrays = np.load(os.path.join(workdir, f"{workload}.npz"))
    with open(os.path.join(workdir, f"{workload}_settings.json")) as f:
        settings = json.load(f)
    params = [arrays[f"param_{i}"] for i in range(sum(k.startswith("param_") for k in arrays.files))]
    x = torch.from_numpy(arrays["x"])
    layers = []
    if workload == "dln":  # leaves: kernels (in, out); out = x @ W_1 @ ... @ W_L
        for kernel in params:
            layer = torch.nn.Linear(*kernel.shape, bias=False)
            layer.weight.data.copy_(torch.from_numpy(kernel.T))
            layers.append(layer)
        y = torch.from_numpy(arrays["y"])

        def loss(model, xb, yb):
            return 0.5 * ((yb - model(xb)) ** 2).sum(-1)
    else:  # leaves per layer in jax.tree order: b (out,), w (in, out); ReLU between layers
        for bias, kernel in zip(params[0::2], params[1::2]):
            layer = torch.nn.Linear(*kernel.shape)
            layer.weight.data.copy_(torch.from_numpy(kernel.T))
            layer.bias.data.copy_(torch.from_numpy(bias))
            layers += [layer, torch.nn.ReLU()]
        layers.pop()
        y = torch.from_numpy(arrays["y"].astype(np.int64))

        def loss(model, xb, yb):
            return torch.nn.functional.cross_entropy(model(xb), yb, reduction="none")
    return torch.nn.Sequential(*layers), loss, x, y, settings


def center_losses(model, loss, x, y, chunk: int = 2000):
    """Per-example losses at w* (float32, (n,)) and the exact L_n(w*) (float64 mean)."""
    import torch

    with torch.no_grad():
        per_example = torch.cat([loss(model, x[i:i + chunk], y[i:i + chunk]) for i in range(0, len(x), chunk)])
    return per_example, float(per_example.double().mean())


def run_devinterp(workload: str, workdir: str, quick: bool, seed: int, stat_chains: int) -> dict:
    import torch
    from devinterp.slt.llc import compute_llc
    from devinterp.slt.sampling import sample

    model, loss, x, y, settings = torch_workload(workload, workdir)
    n, batch_size, nbeta = settings["n"], settings["batch_size"], settings["nbeta"]
    index_rows = torch.arange(n).unsqueeze(1).repeat(1, 2)  # "input_ids" = [i, i]: context length 1

    class IndexDataset(torch.utils.data.Dataset):
        def __len__(self):
            return n

        def __getitem__(self, i):
            return {"input_ids": index_rows[i]}

    def loss_fn(model, input_ids):  # devinterp's per-token contract: (batch, seq - 1) = (batch, 1)
        index = input_ids[:, 0]
        return loss(model, x[index], y[index]).unsqueeze(1)

    loss_at_center, init_loss = center_losses(model, loss, x, y)
    calls = []
    for call, (call_seed, num_chains, statistics) in enumerate(call_plan(seed, settings["num_chains"], stat_chains)):
        init_seed = 1000 * (call_seed + 1)
        start = time.perf_counter()  # sample + compute_llc is devinterp.slt.llc.llc
        samples = sample(model, IndexDataset(), {}, lr=settings["step_size"], n_beta=nbeta, loss_fn=loss_fn,
                         localization=settings["localization"], num_chains=num_chains, num_draws=settings["num_draws"],
                         num_burnin_steps=settings["num_burnin"], num_steps_bw_draws=settings["num_steps_between_draws"],
                         batch_size=batch_size, num_init_loss_batches=n // batch_size, init_seed=init_seed,
                         match_sampling_input_ids_across_chains=False, device="cpu",
                         output_path=os.path.join(workdir, f"devinterp_{workload}_{call}.zarr"))
        out = compute_llc(samples)
        own_per_chain = out["llc_per_chain"].values.astype(float)
        wall = time.perf_counter() - start
        step_losses = samples.dataset.sampling_loss_micro.values[..., 0].astype(np.float64)  # (chain, step, batch)
        step_index = samples.dataset.sampling_input_ids_micro.values[..., 0]
        center = loss_at_center.numpy().astype(np.float64)[step_index]
        calls.append({"wall_seconds": wall, "init_seed": init_seed, "statistics": statistics, "init_loss": init_loss,
                      "devinterp_own_init_loss_value": float(out["init_loss"].values),
                      "devinterp_own_init_loss": pooled(own_per_chain),
                      "minibatch": pooled(nbeta * (step_losses.mean(axis=(1, 2)) - init_loss)),
                      "paired": pooled(nbeta * (step_losses - center).mean(axis=(1, 2)))})
    return {"calls": calls, "threads": torch.get_num_threads(), "match_sampling_input_ids_across_chains": False,
            "epoch_mode": "cycle (devinterp default)", **process_record()}


def torch_sgld_chain(model, loss, x, y, loss_at_center, settings, order: str, seed: int) -> tuple[float, float]:
    """One chain of w -= (ε/2)(nβ g + γ(w - w*)); w += sqrt(ε) ξ. Returns the mean over draws of
    L_B(w_t) and of L_B(w_t) - L_B(w*)."""
    import copy

    import torch

    generator = torch.Generator().manual_seed(seed)
    model = copy.deepcopy(model)
    params = list(model.parameters())
    center = [p.detach().clone() for p in params]
    n, batch_size = settings["n"], settings["batch_size"]
    eps, gamma, nbeta = settings["step_size"], settings["localization"], settings["nbeta"]
    num_batches = n // batch_size  # drop_last, as devinterp's DataLoader
    num_burnin, thin = settings["num_burnin"], settings["num_steps_between_draws"]
    epoch = torch.randperm(n, generator=generator)
    draws, paired = [], []
    for step in range(num_burnin + settings["num_draws"] * thin):
        if order == "replacement":
            index = torch.randint(n, (batch_size,), generator=generator)
        else:
            if order == "epoch" and step > 0 and step % num_batches == 0:
                epoch = torch.randperm(n, generator=generator)
            position = step % num_batches
            index = epoch[position * batch_size:(position + 1) * batch_size]
        batch_loss = loss(model, x[index], y[index]).mean()
        grads = torch.autograd.grad(batch_loss, params)
        with torch.no_grad():
            for p, g, p0 in zip(params, grads, center):
                p.add_(nbeta * g + gamma * (p - p0), alpha=-0.5 * eps)
                p.add_(torch.randn(p.shape, generator=generator), alpha=math.sqrt(eps))
        if step >= num_burnin and (step - num_burnin) % thin == 0:
            value = batch_loss.item()
            draws.append(value)
            paired.append(value - loss_at_center[index].double().mean().item())
    return float(np.mean(draws)), float(np.mean(paired))


def run_torch_loop(workload: str, workdir: str, quick: bool, seed: int, stat_chains: int) -> dict:
    import torch

    model, loss, x, y, settings = torch_workload(workload, workdir)
    loss_at_center, init_loss = center_losses(model, loss, x, y)
    nbeta = settings["nbeta"]
    orders = {}
    for order in TORCH_ORDERS:
        calls = []
        for call_seed, num_chains, statistics in call_plan(seed, settings["num_chains"], stat_chains):
            start = time.perf_counter()
            means = np.array([torch_sgld_chain(model, loss, x, y, loss_at_center, settings, order,
                                               10_000 * (call_seed + 1) + chain) for chain in range(num_chains)])
            wall = time.perf_counter() - start
            calls.append({"wall_seconds": wall, "init_loss": init_loss, "statistics": statistics,
                          "minibatch": pooled(nbeta * (means[:, 0] - init_loss)), "paired": pooled(nbeta * means[:, 1])})
        orders[order] = {"calls": calls}
    return {"orders": orders, "threads": torch.get_num_threads(), **process_record()}

# ----------------------------------------------------------------------------- the language model (lm)

LM_ARCHITECTURE = dict(vocab_size=50304, hidden_size=128, num_hidden_layers=6, num_attention_heads=4,
                       intermediate_size=512, max_position_embeddings=128, rotary_pct=0.25,
                       use_parallel_residual=True, tie_word_embeddings=True)
LM_SETTINGS = dict(n=64, seq_len=128, batch_size=4, step_size=1e-4, localization=100.0, num_chains=4, num_draws=50,
                   num_burnin=0, num_steps_between_draws=1)


def lm_settings(quick: bool) -> dict:
    settings = dict(LM_SETTINGS)
    if quick:
        settings["num_draws"] = 5
    settings["nbeta"] = settings["n"] / math.log(settings["n"])   # slt_jax's default n / log n, n = sequences
    return settings


def run_prepare_lm(workload: str, workdir: str, quick: bool, seed: int, stat_chains: int) -> dict:
    """Writes the random GPT-NeoX with transformers (safetensors), the token rows and reference logits."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    settings = lm_settings(quick)
    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(GPTNeoXConfig(**LM_ARCHITECTURE)).eval()
    folder = os.path.join(workdir, "lm")
    model.save_pretrained(folder)
    tokens = np.random.default_rng(seed).integers(0, LM_ARCHITECTURE["vocab_size"], (settings["n"], settings["seq_len"]))
    np.save(os.path.join(workdir, "lm_tokens.npy"), tokens.astype(np.int32))
    with torch.no_grad():
        logits = model(torch.from_numpy(tokens[:2])).logits.numpy()
    np.save(os.path.join(workdir, "lm_logits.npy"), logits.astype(np.float32))
    settings["num_parameters"] = int(sum(p.numel() for p in model.parameters()))
    settings["architecture"] = LM_ARCHITECTURE
    save_json(os.path.join(workdir, "lm_settings.json"), settings)
    return {"settings": settings, "files": sorted(os.listdir(folder)), **process_record()}


def run_slt_jax_lm(workload: str, workdir: str, quick: bool, seed: int, stat_chains: int) -> dict:
    import jax
    import jax.numpy as jnp

    import slt_jax as sj
    from slt_jax.traces import llc_draws

    with open(os.path.join(workdir, "lm_settings.json")) as f:
        settings = json.load(f)
    start = time.perf_counter()
    model = sj.models.from_pretrained(os.path.join(workdir, "lm"))
    load_seconds = time.perf_counter() - start
    tokens = np.load(os.path.join(workdir, "lm_tokens.npy"))
    logit_error = float(np.abs(np.asarray(model(jnp.asarray(tokens[:2]))) - np.load(os.path.join(workdir, "lm_logits.npy"))).max())
    params, loss_fn = sj.from_nnx(model, "next_token")
    data = {"inputs": jnp.asarray(tokens)}
    config = sj.SamplerConfig(step_size=settings["step_size"], localization=settings["localization"], nbeta=settings["nbeta"],
                              num_chains=settings["num_chains"], num_draws=settings["num_draws"], num_burnin=settings["num_burnin"],
                              batch_size=settings["batch_size"], memory_budget=8_000_000_000)
    calls = []
    for key, num_chains, _ in call_plan(seed, settings["num_chains"], 0):
        start = time.perf_counter()
        result = sj.estimate_llc(loss_fn, params, data, config, key=key, progress=False)
        wall = time.perf_counter() - start
        calls.append({"wall_seconds": wall, "compile_seconds": result.chains.compile_seconds, "key": key, "statistics": False,
                      "sampling_seconds": result.chains.sampling_seconds, "init_loss": float(result.init_loss),
                      "nbeta": float(result.nbeta), "diverged": int(np.sum(result.diverged)),
                      "minibatch": pooled(llc_draws(result.chains, "minibatch")[0].mean(-1))})
    return {"settings": settings, "config": config.to_dict(), "calls": calls, "load_seconds": load_seconds,
            "max_abs_logit_difference_vs_torch": logit_error, "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "jax": jax.__version__, "backend": jax.default_backend(), **process_record()}


def run_devinterp_lm(workload: str, workdir: str, quick: bool, seed: int, stat_chains: int) -> dict:
    import torch
    from devinterp.slt.llc import compute_llc
    from devinterp.slt.lm_loss import compute_per_token_loss
    from devinterp.slt.sampling import sample
    from transformers import AutoModelForCausalLM

    with open(os.path.join(workdir, "lm_settings.json")) as f:
        settings = json.load(f)
    start = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"   # the GPU runbook's run uses the GPU
    model = AutoModelForCausalLM.from_pretrained(os.path.join(workdir, "lm"), dtype=torch.float32).to(device).eval()
    load_seconds = time.perf_counter() - start
    tokens = torch.from_numpy(np.load(os.path.join(workdir, "lm_tokens.npy")).astype(np.int64))
    n, batch_size, nbeta = settings["n"], settings["batch_size"], settings["nbeta"]

    class TokenRows(torch.utils.data.Dataset):
        def __len__(self):
            return n

        def __getitem__(self, i):
            return {"input_ids": tokens[i]}

    with torch.no_grad():  # the exact L_n(w*) over all n rows, float64 mean of per-token losses
        init_loss = float(torch.cat([compute_per_token_loss(model, tokens[i:i + 8].to(device))
                                     for i in range(0, n, 8)]).double().mean())
    calls = []
    for call, (call_seed, num_chains, _) in enumerate(call_plan(seed, settings["num_chains"], 0)):
        init_seed = 1000 * (call_seed + 1)
        start = time.perf_counter()
        samples = sample(model, TokenRows(), {}, lr=settings["step_size"], n_beta=nbeta,
                         localization=settings["localization"], num_chains=num_chains, num_draws=settings["num_draws"],
                         num_burnin_steps=settings["num_burnin"], num_steps_bw_draws=settings["num_steps_between_draws"],
                         batch_size=batch_size, num_init_loss_batches=n // batch_size, init_seed=init_seed,
                         match_sampling_input_ids_across_chains=False, device=device,
                         output_path=os.path.join(workdir, f"devinterp_lm_{call}.zarr"))
        out = compute_llc(samples)
        wall = time.perf_counter() - start
        step_losses = samples.dataset.sampling_loss_micro.values.astype(np.float64)   # (chain, step, batch, ...)
        per_chain = step_losses.reshape(step_losses.shape[0], -1).mean(axis=1)
        calls.append({"wall_seconds": wall, "init_seed": init_seed, "statistics": False, "init_loss": init_loss,
                      "devinterp_own_init_loss_value": float(out["init_loss"].values),
                      "devinterp_own_init_loss": pooled(out["llc_per_chain"].values.astype(float)),
                      "minibatch": pooled(nbeta * (per_chain - init_loss)),
                      "loss_micro_shape": list(step_losses.shape)})
    return {"calls": calls, "load_seconds": load_seconds, "threads": torch.get_num_threads(), "device": device,
            "attn_implementation": getattr(model.config, "_attn_implementation", None),
            "match_sampling_input_ids_across_chains": False, **process_record()}


LM_RUNNERS = {"prepare": run_prepare_lm, "slt_jax": run_slt_jax_lm, "devinterp": run_devinterp_lm}


def summarize_lm(records: dict) -> dict:
    slt, dev = records["slt_jax"], records["devinterp"]
    calls = {"slt_jax": slt["calls"], "devinterp": dev["calls"]}
    llc = {name: pool(runs, "minibatch") for name, runs in calls.items()}
    llc["devinterp_own_init_loss"] = pool(dev["calls"], "devinterp_own_init_loss")
    return {
        "workload": "lm",
        "settings": records["prepare"]["settings"],
        "wall_seconds": {name: {"cold": runs[0]["wall_seconds"], "warm": runs[1]["wall_seconds"]} for name, runs in calls.items()},
        "load_seconds": {"slt_jax": slt["load_seconds"], "devinterp": dev["load_seconds"]},
        "time_ratio_devinterp_over_slt_jax": {kind: dev["calls"][i]["wall_seconds"] / slt["calls"][i]["wall_seconds"]
                                              for i, kind in enumerate(("cold", "warm"))},
        "slt_jax_compile_seconds": [c["compile_seconds"] for c in slt["calls"]],
        "slt_jax_sampling_seconds": [c["sampling_seconds"] for c in slt["calls"]],
        "max_abs_logit_difference_vs_torch": slt["max_abs_logit_difference_vs_torch"],
        "init_loss": {"slt_jax": slt["calls"][0]["init_loss"], "torch": dev["calls"][0]["init_loss"],
                      "devinterp_own": [c["devinterp_own_init_loss_value"] for c in dev["calls"]]},
        "llc": {"minibatch": llc},
        "slt_jax_minus_devinterp": {"minibatch": difference(llc["slt_jax"], llc["devinterp"])},
        "runs": records,
    }


def print_summary_lm(row: dict) -> None:
    times, ratio = row["wall_seconds"], row["time_ratio_devinterp_over_slt_jax"]
    print(f"lm: wall cold/warm  slt_jax {times['slt_jax']['cold']:.1f}/{times['slt_jax']['warm']:.1f} s, devinterp "
          f"{times['devinterp']['cold']:.1f}/{times['devinterp']['warm']:.1f} s, ratio devinterp/slt_jax "
          f"{ratio['cold']:.2f}/{ratio['warm']:.2f}; logits vs torch {row['max_abs_logit_difference_vs_torch']:.1e}", flush=True)
    for name, est in row["llc"]["minibatch"].items():
        print(f"  minibatch {name:<24} LLC {est['llc_mean']:9.3f} ± {est['llc_stderr']:6.3f} ({est['num_chains']} chains)", flush=True)


RUNNERS = {"slt_jax": run_slt_jax, "devinterp": run_devinterp, "torch_loop": run_torch_loop}


# ----------------------------------------------------------------------------- orchestration


def missing_peers(workloads: str = "") -> str | None:
    """What is missing, or None when torch and devinterp >= 2 (and for ``lm`` transformers) are importable."""
    needed = ("torch", "devinterp") + (("transformers",) if "lm" in workloads.split(",") else ())
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        return f"{' and '.join(missing)} not installed"
    version = importlib.metadata.version("devinterp")
    if int(version.split(".")[0]) < 2:
        return f"devinterp {version} is installed; this script uses the 2.x API (devinterp.slt.sampling.sample)"
    return None


def thread_env(threads: int) -> dict:
    """Environment limiting a runner's libraries to ``threads`` intra-op threads (0: their defaults)."""
    if threads <= 0:
        return {}
    eigen = "true" if threads > 1 else "false"
    xla = f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_multi_thread_eigen={eigen} intra_op_parallelism_threads={threads}"
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
            "XLA_FLAGS": xla.strip()}


def cores_env() -> dict:
    """Environment giving JAX one CPU device per core, so that slt_jax spreads its chains over them."""
    return {"JAX_NUM_CPU_DEVICES": str(os.cpu_count())}


def spawn(runner: str, workload: str, workdir: str, args, threads: int, stat_chains: int, extra_env: dict | None = None) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--runner", runner, "--workloads", workload,
               "--workdir", workdir, "--seed", str(args.seed), "--threads", str(threads),
               "--stat-chains", str(stat_chains)] + (["--quick"] if args.quick else [])
    start = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "TQDM_DISABLE": "1", **thread_env(threads), **(extra_env or {})})
    with open(os.path.join(workdir, f"{runner}_{workload}.json")) as f:
        record = json.load(f)
    record["process_seconds"] = time.perf_counter() - start  # imports and set-up included
    record["threads_setting"] = threads
    return record


def parse_threads(text: str) -> list[int]:
    """``--threads``: comma-separated thread settings, 0 = each library's defaults."""
    try:
        modes = [int(part) for part in text.split(",")]
    except ValueError:
        modes = []
    if not modes or any(mode < 0 for mode in modes) or len(set(modes)) != len(modes):
        raise SystemExit(f"--threads={text!r}: give distinct thread counts >= 0, comma-separated (0 = library defaults), e.g. 0,1")
    return modes


def statistics_mode(modes: list[int]) -> int:
    """The thread setting whose runs make the statistics call: one thread if listed, else the first."""
    return 1 if 1 in modes else modes[0]


def _threads_label(mode: int) -> str:
    return "default" if mode == 0 else str(mode)


def timing_table(workload: str, by_mode: dict[int, dict], cores: dict | None = None) -> dict:
    """Cold and warm wall seconds per (runner, thread setting), and devinterp / slt_jax ratios;
    ``cores``: the slt_jax record with one JAX CPU device per core (``--cores``), at default threads."""
    rows = []
    for mode, records in by_mode.items():
        runs = {"slt_jax": records["slt_jax"]["calls"], "devinterp": records["devinterp"]["calls"]}
        runs.update({f"torch_loop_{order}": records["torch_loop"]["orders"][order]["calls"] for order in TORCH_ORDERS})
        for name, calls in runs.items():
            runner = "torch_loop" if name.startswith("torch_loop") else name
            rows.append({"runner": name, "threads": _threads_label(mode),
                         "threads_used": records[runner].get("threads", records[runner].get("xla_flags") or "XLA default"),
                         "cold_seconds": calls[0]["wall_seconds"], "warm_seconds": calls[1]["wall_seconds"]})
    if cores is not None:
        rows.append({"runner": "slt_jax_cores", "threads": "default", "threads_used": f"XLA default, {cores['device_count']} CPU devices",
                     "cold_seconds": cores["calls"][0]["wall_seconds"], "warm_seconds": cores["calls"][1]["wall_seconds"]})
    wall = {(row["runner"], row["threads"]): row for row in rows}
    ratios = {}
    labels = [_threads_label(mode) for mode in by_mode]
    slt_columns = [("slt_jax", label) for label in labels] + ([("slt_jax_cores", "default")] if cores is not None else [])
    for dev in labels:
        for slt_runner, slt in slt_columns:
            d, s = wall[("devinterp", dev)], wall[(slt_runner, slt)]
            name = f"devinterp[{dev}]/slt_jax[{slt}]" if slt_runner == "slt_jax" else f"devinterp[{dev}]/slt_jax_cores"
            ratios[name] = {"cold": d["cold_seconds"] / s["cold_seconds"], "warm": d["warm_seconds"] / s["warm_seconds"]}
    return {"workload": workload, "rows": rows, "time_ratio_devinterp_over_slt_jax": ratios}


def print_timing_table(table: dict) -> None:
    print(f"{table['workload']}: wall seconds, cold / warm", flush=True)
    for row in table["rows"]:
        print(f"  {row['runner']:<24} threads {row['threads']:<8} {row['cold_seconds']:8.2f} / {row['warm_seconds']:8.2f}", flush=True)
    for pair, ratio in table["time_ratio_devinterp_over_slt_jax"].items():
        print(f"  {pair:<36} cold {ratio['cold']:6.2f}  warm {ratio['warm']:6.2f}", flush=True)


def pool(calls: list[dict], estimator: str) -> dict | None:
    """The statistics call's chains, or (without one) every call's, pooled; None if a call lacks the estimator."""
    chosen = [call for call in calls if call["statistics"]] or calls
    if not all(estimator in call for call in chosen):
        return None
    return pooled([value for call in chosen for value in call[estimator]["llc_per_chain"]])


def summarize(workload: str, records: dict) -> dict:
    slt, dev, loop = records["slt_jax"], records["devinterp"], records["torch_loop"]
    calls = {"slt_jax": slt["calls"], "devinterp": dev["calls"]}
    calls.update({f"torch_loop_{order}": loop["orders"][order]["calls"] for order in TORCH_ORDERS})
    llc = {estimator: {name: pool(runs, estimator) for name, runs in calls.items()} for estimator in ESTIMATORS}
    llc["minibatch"]["devinterp_own_init_loss"] = pool(dev["calls"], "devinterp_own_init_loss")
    llc = {estimator: {name: est for name, est in table.items() if est is not None} for estimator, table in llc.items()}
    reference = "torch_loop_replacement"
    return {
        "workload": workload,
        "settings": slt["settings"],
        "wall_seconds": {name: {"cold": runs[0]["wall_seconds"], "warm": runs[1]["wall_seconds"]} for name, runs in calls.items()},
        "time_ratio_devinterp_over_slt_jax": {kind: dev["calls"][i]["wall_seconds"] / slt["calls"][i]["wall_seconds"]
                                              for i, kind in enumerate(("cold", "warm"))},
        "slt_jax_compile_seconds": [c["compile_seconds"] for c in slt["calls"][:2]],
        "slt_jax_sampling_seconds": [c["sampling_seconds"] for c in slt["calls"][:2]],
        "init_loss": {"slt_jax": slt["calls"][0]["init_loss"], "torch": dev["calls"][0]["init_loss"],
                      "devinterp_own": [c["devinterp_own_init_loss_value"] for c in dev["calls"]]},
        "timed_calls_llc_minibatch": {name: [runs[i]["minibatch"] for i in (0, 1)] for name, runs in calls.items()},
        "llc": llc,
        "bias_vs_torch_loop_replacement": {
            estimator: {name: difference(est, llc[estimator][reference]) for name, est in llc[estimator].items() if name != reference}
            for estimator in ESTIMATORS},
        "devinterp_minus_torch_loop_cycle": {estimator: difference(llc[estimator]["devinterp"], llc[estimator]["torch_loop_cycle"])
                                             for estimator in ESTIMATORS},
        "slt_jax_minus_devinterp": {estimator: difference(llc[estimator]["slt_jax"], llc[estimator]["devinterp"])
                                    for estimator in ESTIMATORS if "slt_jax" in llc[estimator]},
        "runs": records,
    }


def print_summary(row: dict) -> None:
    times, ratio = row["wall_seconds"], row["time_ratio_devinterp_over_slt_jax"]
    print(f"{row['workload']}: wall cold/warm  slt_jax {times['slt_jax']['cold']:.2f}/{times['slt_jax']['warm']:.2f} s, "
          f"devinterp {times['devinterp']['cold']:.2f}/{times['devinterp']['warm']:.2f} s, ratio devinterp/slt_jax "
          f"{ratio['cold']:.2f}/{ratio['warm']:.2f}", flush=True)
    for estimator in ESTIMATORS:
        for name, est in row["llc"][estimator].items():
            bias = row["bias_vs_torch_loop_replacement"][estimator].get(name)
            extra = f"   - replacement loop {bias['difference']:+7.2f} ({bias['z']:+5.1f} s.e.)" if bias else ""
            print(f"  {estimator:<9} {name:<24} LLC {est['llc_mean']:8.2f} ± {est['llc_stderr']:5.2f} "
                  f"({est['num_chains']} chains){extra}", flush=True)


def versions() -> dict:
    names = ("jax", "jaxlib", "numpy", "torch", "devinterp", "slt_jax", "transformers", "safetensors")
    return {"python": platform.python_version(),
            **{name: importlib.metadata.version(name) for name in names if importlib.util.find_spec(name) is not None}}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tenth of the draws, no statistics call (smoke test)")
    parser.add_argument("--workloads", default="dln,mlp")
    parser.add_argument("--stat-chains", type=int, default=None,
                        help="chains of the statistics call (default 24; --quick 0: none, the timed calls' chains are pooled)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", default="0,1",
                        help="thread settings, comma-separated: intra-op threads per library, 0 = library defaults (default 0,1)")
    parser.add_argument("--cores", action=argparse.BooleanOptionalAction, default=True,
                        help="also time slt_jax with one JAX CPU device per core (JAX_NUM_CPU_DEVICES, default threads): "
                             "its chains then run on every core (default on; needs the 0 thread setting)")
    parser.add_argument("--out", default=None, help="default results/bench_vs_devinterp.json (_lm.json for lm alone; _quick.json with --quick)")
    parser.add_argument("--runner", choices=sorted(set(RUNNERS) | set(LM_RUNNERS)), help=argparse.SUPPRESS)  # internal: one subprocess
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stat_chains is None:
        args.stat_chains = 0 if args.quick else 24
    if args.stat_chains == 1 or args.stat_chains < 0:
        parser.error(f"--stat-chains={args.stat_chains}: use 0 (no statistics call) or at least 2 chains")
    modes = parse_threads(args.threads)
    if args.runner:
        if modes[0] > 0 and args.runner != "slt_jax":  # slt_jax: XLA_FLAGS, set by the parent
            import torch

            torch.set_num_threads(modes[0])
        runners = LM_RUNNERS if args.workloads == "lm" else RUNNERS
        record = runners[args.runner](args.workloads, args.workdir, args.quick, args.seed, args.stat_chains)
        save_json(os.path.join(args.workdir, f"{args.runner}_{args.workloads}.json"), record)
        return
    if args.out is None:
        name = "bench_vs_devinterp_lm" if args.workloads == "lm" else "bench_vs_devinterp"
        name += "_quick.json" if args.quick else ".json"  # a smoke test never overwrites the full results
        args.out = os.path.join(HERE, "results", name)
    problem = missing_peers(args.workloads)
    if problem:
        print(f"bench_vs_devinterp: skipped, {problem}. The peers are an optional extra, never needed by slt_jax:\n"
              f"  {INSTALL_HINT}")
        return
    start = time.perf_counter()
    rows, tables = [], []
    stat_mode = statistics_mode(modes)
    with tempfile.TemporaryDirectory(prefix="bench_vs_devinterp_") as workdir:
        for workload in args.workloads.split(","):
            if workload == "lm":  # one thread setting: the statistics one
                rows.append(summarize_lm({runner: spawn(runner, workload, workdir, args, stat_mode, args.stat_chains)
                                          for runner in LM_RUNNERS}))
                print_summary_lm(rows[-1])
                continue
            by_mode = {}
            for mode in modes:  # a folder per setting: devinterp would read an earlier setting's zarr output back
                folder = os.path.join(workdir, f"threads_{mode}")
                os.makedirs(folder, exist_ok=True)
                by_mode[mode] = {runner: spawn(runner, workload, folder, args, mode, args.stat_chains if mode == stat_mode else 0)
                                 for runner in RUNNERS}
            cores = None
            if args.cores and 0 in modes:
                folder = os.path.join(workdir, "cores")
                os.makedirs(folder, exist_ok=True)
                cores = spawn("slt_jax", workload, folder, args, 0, 0, cores_env())
            rows.append(summarize(workload, by_mode[stat_mode]))
            rows[-1]["threads"] = _threads_label(stat_mode)
            tables.append(timing_table(workload, by_mode, cores))
            print_summary(rows[-1])
            print_timing_table(tables[-1])
    report = {
        "benchmark": "bench_vs_devinterp",
        "command": " ".join(sys.argv),
        "quick": args.quick,
        "versions": versions(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "thread_settings": [_threads_label(mode) for mode in modes],
        "statistics_threads": _threads_label(stat_mode),
        "total_seconds": time.perf_counter() - start,
        "caveats": [
            "Measured on a shared 2-core CPU machine while other jobs used the cores: wall times and their "
            "ratios are indicative only; the LLC comparison does not depend on timing.",
            "timing_table: every runner in fresh processes per thread setting ('default' = each library's own "
            "threads, torch's count recorded in threads_used); 'results' (the LLC comparison and its runs) come from the "
            "statistics_threads setting only.",
            "Cold = first call in the runner's process (slt_jax: includes XLA compilation and L_n(w*); devinterp: "
            "includes its init-loss pass and zarr set-up); warm = second call, another seed. Imports are excluded "
            "(process_seconds includes them). Both calls use the workload's settings (bench_llc).",
            "The LLC comparison uses a third, statistics call per runner (stat_chains chains, disjoint seeds; "
            "with stat_chains 0, the timed calls' chains); stderr = std(ddof=1)/sqrt(chains). The workloads have no burn-in and few draws (bench_llc's "
            "settings), so the LLCs include the rise from w* and are not converged learning coefficients: they "
            "compare samplers, not models.",
            "devinterp runs with match_sampling_input_ids_across_chains=False (independent chains); its other "
            "sampling settings are its defaults (shuffle=True, epoch_mode='cycle').",
            "lm: a random-initialised model on uniform random tokens is not at a minimum and the chains are 50 "
            "draws with no burn-in, so its LLCs compare the two samplers on one computation, not a model; "
            "slt_jax runs with SamplerConfig(memory_budget=8e9) (the default CPU budget would split the chains "
            "into groups); devinterp uses transformers' default attention implementation.",
        ],
        "timing_table": tables,
        "results": rows,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_json(args.out, report)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
