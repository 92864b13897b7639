#!/usr/bin/env bash
# Set up (first time only) and run the offline smoke experiment: a tiny random OPT trained with
# Random Masking on a synthetic task, on CPU. Extra arguments are Hydra overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
rmpeft-train experiment=smoke "$@"
