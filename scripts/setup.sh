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
# Headless Chromium and its driver for the Space demo's browser test (tests/test_space.py): Debian's packages,
# installed only when missing; without apt (or root) the test is skipped locally, and fails under CI.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; }; then
    $SUDO apt-get update -q >/dev/null && \
      $SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null || \
      echo "warning: could not install chromium and chromium-driver (browser tests need them)" >&2
  else
    echo "warning: chromium/chromedriver missing and apt-get unavailable (browser tests need them)" >&2
  fi
fi
"$PY" -c "import torch, transformers; print(f'torch {torch.__version__}, transformers {transformers.__version__}')"
