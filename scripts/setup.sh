#!/usr/bin/env bash
# Create .venv (or $EAGLE_VENV) with the CPU build of torch and this package, at the exact versions of a stack;
# idempotent (a venv already on that stack is brought back to its pins).
# Usage: bash scripts/setup.sh [--eval] [--stack latest|oldest|newest]
#   --stack latest  (default) constraints/latest.txt: every version CI tests, so that a release elsewhere cannot
#                   change what the README's commands install
#   --stack oldest  constraints/oldest.txt: each of pyproject's dependencies at its lower bound (tests/test_stack.py
#                   holds the two to each other), the rest resolved with them
#   --stack newest  no pins: the newest releases pyproject's ranges allow (scripts/test.sh --newest), to find the
#                   next breaking release before a user does
#   --eval          also install the `eval` extra: lmms-eval for `eagle eval` and `lmms-eval --model eagle` (about 1 GB)
# Moving a stack to new releases is a deliberate commit: bash scripts/lock.sh rewrites constraints/*.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
EVAL=0
STACK=latest
while [ $# -gt 0 ]; do
  case "$1" in
    --eval) EVAL=1 ;;
    --stack) STACK="${2:?--stack needs latest, oldest or newest}"; shift ;;
    *) echo "setup.sh: unknown argument $1 (see the usage at the top of scripts/setup.sh)" >&2; exit 2 ;;
  esac
  shift
done
case "$STACK" in
  latest | oldest) PIN=(-c "constraints/$STACK.txt") ;;
  newest) PIN=(--upgrade --upgrade-strategy eager) ;;
  *) echo "setup.sh: --stack $STACK: choose latest, oldest or newest" >&2; exit 2 ;;
esac
VENV="${EAGLE_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade "${PIN[@]}" pip
# The CPU build first: an unpinned torch would pull a multi-GB CUDA build.
TORCH=2.13.0
"$PY" -m pip install -q "torch==$TORCH"
EXTRAS=test
if [ "$STACK" = oldest ]; then
  # The lower bounds themselves, not only something the ranges allow (pip has no lowest-version resolution).
  mapfile -t LOWEST < <("$PY" scripts/stacks.py lower-bounds)
else
  LOWEST=()
fi
if [ "$EVAL" = 1 ]; then EXTRAS=test,eval; fi
# torch pinned in the same call: lmms-eval requires torchvision, and without the pin pip may replace the CPU torch
# with a multi-GB CUDA build to satisfy the newest torchvision ("2.13.0" matches "2.13.0+cpu").
"$PY" -m pip install -q "${PIN[@]}" -e ".[$EXTRAS]" "torch==$TORCH" ${LOWEST[@]+"${LOWEST[@]}"}
if [ "$EVAL" = 1 ]; then
  # pip picks the torchvision built for that torch, a CUDA build, which fails at import on a machine without the
  # CUDA libraries ("operator torchvision::nms does not exist") and takes transformers' AutoProcessor down with it.
  # No CPU torchvision wheel is reachable here, and nothing `eagle eval` runs (lmms-eval's evaluator and tasks, the
  # eagle model) imports it, so a torchvision that cannot be imported is removed. On a GPU machine, install the
  # torchvision matching your CUDA torch: it imports, and is kept.
  if ! "$PY" -c "import torchvision" >/dev/null 2>&1; then
    "$PY" -m pip uninstall -y -q torchvision
  fi
  "$PY" -c "import torch, lmms_eval, lmms_eval.evaluator; from transformers import AutoProcessor; \
print(f'lmms-eval ready (torch {torch.__version__})')"
fi
if [ "$STACK" != newest ]; then
  # A venv made before (another stack, an older lock) keeps what pip installed then: remove what the stack lacks.
  mapfile -t EXTRA < <("$PY" scripts/stacks.py unpinned "constraints/$STACK.txt")
  if [ ${#EXTRA[@]} -gt 0 ]; then "$PY" -m pip uninstall -y -q "${EXTRA[@]}"; fi
fi
# What the venv was set up from: tests/test_stack.py checks every installed version against it.
echo "$STACK" >"$VENV/eagle-stack"
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
"$PY" -c "import torch, transformers; print(f'stack $STACK: torch {torch.__version__}, transformers {transformers.__version__}')"
