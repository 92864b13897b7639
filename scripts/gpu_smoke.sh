#!/usr/bin/env bash
# GPU correctness smoke (a few minutes on one GPU): every sparse backend against the dense reference on
# the GPU, then the smoke experiment (a tiny random OPT on a synthetic task) trained on the GPU with
# Random Masking (backend auto, torch and triton), Structured Masking, LoRA and FT in fp32, bf16 and
# fp16, and under protocol=paper in fp16 (dynamic loss scaling); one line per run record,
# beside a CPU fp32 run of the same configs. Exits non-zero when a backend or a run fails.
#
#   bash scripts/gpu_smoke.sh [DIR]     # records under DIR (default: a temporary folder)
#
# Without CUDA it runs the backend check on CPU and the CPU runs only, and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
out=${1:-$(mktemp -d)}
mkdir -p "$out"
status=0

"$PYTHON" scripts/gpu_smoke.py backends || status=1

train() { "$PYTHON" -m rmpeft.train --multirun experiment=smoke hydra.sweep.dir="$out/hydra" "$@" >"$out/train.log" 2>&1 \
              || { tail -n 30 "$out/train.log"; status=1; }; }
train results_root="$out/cpu" trainer.device=cpu trainer.precision=fp32 \
    method=masking,structured_masking,lora,ft
if "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    train results_root="$out/cuda" trainer.device=cuda trainer.precision=fp32,bf16,fp16 \
        method=masking,structured_masking,lora,ft
    train results_root="$out/cuda-backends" trainer.device=cuda trainer.precision=bf16 \
        method=masking method.backend=torch,triton
    train results_root="$out/cuda-paper" trainer.device=cuda trainer.precision=fp16 protocol=paper \
        method=masking,lora
else
    echo "gpu_smoke: no CUDA device here; CPU runs only"
fi
"$PYTHON" scripts/gpu_smoke.py records "$out"/cpu "$out"/cuda* || status=1
exit $status
