#!/usr/bin/env bash
# Create .venv (or $EAGLE_VENV) with the CPU build of torch and this package; idempotent.
# Usage: bash scripts/setup.sh [TRANSFORMERS_SPEC]   e.g. "transformers==5.20.0" to pin another version
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${EAGLE_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
# The CPU build first: an unpinned torch would pull a multi-GB CUDA build.
"$PY" -m pip install -q "torch==2.13.0"
"$PY" -m pip install -q -e ".[test]" "$@"
"$PY" -c "import torch, transformers; print(f'torch {torch.__version__}, transformers {transformers.__version__}')"
