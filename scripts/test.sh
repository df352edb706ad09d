#!/usr/bin/env bash
# Set up .venv and run what CI runs: lint, format check, the test suite, then the remote-code and pipeline
# tests against the oldest transformers this package supports.
# Usage: bash scripts/test.sh [--eval]   --eval also installs lmms-eval (the eval extra, about 1 GB), so that
# tests/test_eval.py runs instead of being skipped; CI installs it first (.ci/run), and there a missing lmms-eval fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "$@"
VENV="${EAGLE_VENV:-.venv}"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/python" -m pytest -q
# Oldest supported transformers (pyproject's lower bound), in its own venv.
OLDEST=$(sed -n 's/.*"transformers>=\([0-9.]*\),.*/\1/p' pyproject.toml)
EAGLE_VENV="${VENV}-oldest" bash scripts/setup.sh "transformers==${OLDEST}"
"${VENV}-oldest/bin/python" -m pytest -q tests/test_remote_code.py tests/test_modeling.py tests/test_processing.py \
  tests/test_image_processing.py
