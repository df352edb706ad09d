#!/usr/bin/env bash
# The main job on the built-in default, nothing downloaded: set up .venv, then `eagle quickstart` (synthetic
# visual questions, eagle-x5-small trained through the three stages, held-out accuracy, a Hub-ready folder,
# answers from a fresh process through pipeline). Arguments go to `eagle quickstart`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${EAGLE_VENV:-.venv}"
if [ "$#" -eq 0 ]; then set -- --output eagle-quickstart; fi
"$VENV/bin/eagle" quickstart "$@"
