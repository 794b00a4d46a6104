#!/usr/bin/env bash
# The GPU figures (issue 9, part 4) in one command, from the repository root:
#
#   python -m pip install -e ".[test]" "jax[cuda12]" && bash benchmarks/gpu_runbook.sh
#
# Every benchmark takes only device-independent arguments; this script adds nothing but output file
# names (*_gpu.json next to the CPU results) and the larger workloads an accelerator can carry.
# Rough budget on one H100/H200: bench_llc ~2 min, workload S ~3 min, S x10 ~10 min,
# DLN classes 1M and 10M ~1-2 h (set DLN_MODELS to shorten), head-to-head ~5 min, bench_scale ~15 min.
# A step that fails is reported and the next one still runs; the exit status says if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
results=benchmarks/results
dln_models=${DLN_MODELS:-4,2}
status=0

backend=$(python -c "import jax; print(jax.default_backend())")
if [ "$backend" != "gpu" ]; then
    echo "gpu_runbook: JAX sees backend '$backend', not a GPU. Install jax[cuda12] (pip install 'jax[cuda12]')." >&2
    exit 1
fi
python -c "import jax; print('devices:', jax.devices())"

step() {
    echo "== $*"
    local start=$SECONDS
    "$@" || { echo "!! failed: $*" >&2; status=1; }
    echo "== $((SECONDS - start)) s"
}

step python benchmarks/bench_llc.py --out $results/bench_llc_gpu.json
step python benchmarks/bench_susceptibility.py --workload S --out $results/bench_susceptibility_S_gpu.json
step python benchmarks/bench_susceptibility.py --workload S --scale 10 --out $results/bench_susceptibility_S_scale10_gpu.json
step python benchmarks/bench_dln_scale.py --classes 1M,10M --models "$dln_models" --out $results/bench_dln_scale_gpu.json
# Exits 0 with a message when torch/devinterp are absent (pip install -e ".[peer]").
step python benchmarks/bench_vs_devinterp.py --out $results/bench_vs_devinterp_gpu.json
# Pythia-shaped language models at scale (issue 19): 7M to 1B parameters, 4 chains each, warm and cold.
step python benchmarks/bench_scale.py --sizes 7M,70M,160M,410M,1B --draws 50 --warm --out $results/bench_scale_gpu.json
# The language model (a Pythia-shaped GPT-NeoX read from safetensors by both libraries; needs transformers).
step python benchmarks/bench_vs_devinterp.py --workloads lm --out $results/bench_vs_devinterp_lm_gpu.json
exit $status
