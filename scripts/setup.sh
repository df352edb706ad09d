#!/usr/bin/env bash
# Create .venv (or $EAGLE_VENV) with the CPU build of torch and this package; idempotent.
# Usage: bash scripts/setup.sh [--eval] [TRANSFORMERS_SPEC]   e.g. "transformers==5.20.0" to pin another version
#   --eval  also install the `eval` extra: lmms-eval for `eagle eval` and `lmms-eval --model eagle` (about 1 GB)
set -euo pipefail
cd "$(dirname "$0")/.."
EVAL=0
SPECS=()
for arg in "$@"; do
  if [ "$arg" = "--eval" ]; then EVAL=1; else SPECS+=("$arg"); fi
done
VENV="${EAGLE_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
# The CPU build first: an unpinned torch would pull a multi-GB CUDA build.
"$PY" -m pip install -q "torch==2.13.0"
"$PY" -m pip install -q -e ".[test]" ${SPECS[@]+"${SPECS[@]}"}
if [ "$EVAL" = 1 ]; then
  # lmms-eval requires torchvision, and the newest torchvision requires a newer torch: unpinned, pip replaces the
  # CPU torch with a multi-GB CUDA build. Pinning the installed version in the same call keeps it ("2.13.0"
  # matches "2.13.0+cpu"). pip then picks the torchvision built for that torch, a CUDA build, which fails at import
  # on a machine without the CUDA libraries ("operator torchvision::nms does not exist") and takes transformers'
  # AutoProcessor down with it. No CPU torchvision wheel is reachable here, and nothing `eagle eval` runs
  # (lmms-eval's evaluator and tasks, the eagle model) imports it, so a torchvision that cannot be imported is
  # removed. On a GPU machine, install the torchvision matching your CUDA torch: it imports, and is kept.
  TORCH=$("$PY" -c "import torch; print(torch.__version__.split('+')[0])")
  "$PY" -m pip install -q -e ".[test,eval]" "torch==$TORCH" ${SPECS[@]+"${SPECS[@]}"}
  if ! "$PY" -c "import torchvision" >/dev/null 2>&1; then
    "$PY" -m pip uninstall -y -q torchvision
  fi
  "$PY" -c "import torch, lmms_eval, lmms_eval.evaluator; from transformers import AutoProcessor; \
print(f'lmms-eval ready (torch {torch.__version__})')"
fi
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
