#!/usr/bin/env bash
# GPU check of the sparse update engine: rmpeft-bench on an OPT-1.3b-shaped random model in bf16 on one
# GPU (under 5 minutes on an H100), every available sparse backend (spops too when it is installed from
# IST-DASLab's repository), plus the floor, structured masking, LoRA and full fine-tuning rows; then
# rmpeft-bench --e2e (whole-run throughput of flat vs shared-prompt candidate scoring for FT, LoRA and
# masking on the SmolLM2 shape in bf16, and the memory of scoring a ReCoRD-shaped example).
#
#   bash scripts/gpu_check.sh            # the check; extra arguments go to the first rmpeft-bench
#
# Without CUDA it falls back to the quick CPU benchmark (rmpeft-bench --small) and says so.
# RMPEFT_GPU_CHECK_TINY=1 makes either path minimal (one step per row, two ratios): a smoke test.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}

extra=()
if [[ "${RMPEFT_GPU_CHECK_TINY:-0}" == "1" ]]; then
    extra=(--steps 1 --warmup 0 --ratios 0.01 0.001)
fi

"$PYTHON" - <<'PY'
import torch
from rmpeft.sparse.registry import available_backends, backends
dev = "cuda" if torch.cuda.is_available() else "cpu"
name = torch.cuda.get_device_name() if dev == "cuda" else "no CUDA device"
print(f"gpu_check: torch {torch.__version__}, {name}; sparse backends on {dev}: {', '.join(available_backends(dev))}")
for n in ("spops", "triton"):
    reason = backends()[n].unavailable_reason(torch.device(dev))
    if reason:
        print(f"gpu_check: {n} not used: {reason}")
PY

e2e_extra=(--steps 5 --warmup 2 --cell-seconds 10)
if [[ "${RMPEFT_GPU_CHECK_TINY:-0}" == "1" ]]; then
    e2e_extra=(--steps 1 --warmup 0)
fi

if "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    "$PYTHON" -m rmpeft.bench --model opt-1.3b --device cuda --dtype bf16 --steps 5 --warmup 2 \
        ${extra[@]+"${extra[@]}"} "$@"
    echo "gpu_check: whole-run scoring throughput (rmpeft-bench --e2e, SmolLM2 shape, bf16)"
    "$PYTHON" -m rmpeft.bench --e2e --device cuda --dtype bf16 "${e2e_extra[@]}"
else
    echo "gpu_check: no CUDA device here; running the CPU fallback (rmpeft-bench --small)"
    "$PYTHON" -m rmpeft.bench --small --device cpu ${extra[@]+"${extra[@]}"} "$@"
    echo "gpu_check: whole-run scoring throughput (rmpeft-bench --e2e --small)"
    "$PYTHON" -m rmpeft.bench --e2e --small --device cpu "${e2e_extra[@]}"
fi
