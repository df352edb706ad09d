#!/usr/bin/env bash
# Set up .venv on the stack CI tests (constraints/latest.txt) and run what CI runs: lint, format check, the test
# suite, then the remote-code, modeling, processing, serving and training tests on the oldest stack
# (constraints/oldest.txt: pyproject's lower bounds, transformers 5.20 among them) in .venv-oldest.
# Usage: bash scripts/test.sh [--eval] [--newest]
#   --eval    also install lmms-eval (the eval extra, about 1 GB), so that tests/test_eval.py runs instead of being
#             skipped; CI installs it first (.ci/run), and there a missing lmms-eval fails.
#   --newest  instead: the newest releases pyproject's ranges allow, nothing pinned, in .venv-newest (with the eval
#             extra), and the whole suite: how the next releases will find this package, before a user does.
set -euo pipefail
cd "$(dirname "$0")/.."
SETUP=()
NEWEST=0
for arg in "$@"; do
  case "$arg" in
    --eval) SETUP+=(--eval) ;;
    --newest) NEWEST=1 ;;
    *) echo "test.sh: unknown argument $arg (see the usage at the top of scripts/test.sh)" >&2; exit 2 ;;
  esac
done
if [ "$NEWEST" = 1 ]; then
  VENV="${EAGLE_VENV:-.venv-newest}"
  EAGLE_VENV="$VENV" bash scripts/setup.sh --eval --stack newest
  "$VENV/bin/python" -m pip freeze --exclude-editable | sed -E 's/\+cpu$//' | LC_ALL=C sort -f >"$VENV/newest.txt"
  echo "newest releases against constraints/latest.txt (< latest, > newest):"
  diff <(grep -v '^#' constraints/latest.txt | grep -v -i -E '^(pip|setuptools|wheel)==') "$VENV/newest.txt" || true
  "$VENV/bin/python" -m pytest -q
  exit
fi
bash scripts/setup.sh ${SETUP[@]+"${SETUP[@]}"}
VENV="${EAGLE_VENV:-.venv}"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/python" -m pytest -q
# The oldest stack, in its own venv: what pyproject's lower bounds promise.
EAGLE_VENV="${VENV}-oldest" bash scripts/setup.sh --stack oldest
"${VENV}-oldest/bin/python" -m pytest -q tests/test_stack.py tests/test_remote_code.py tests/test_modeling.py \
  tests/test_processing.py tests/test_image_processing.py tests/test_serve.py \
  tests/test_training.py tests/test_training_data.py
