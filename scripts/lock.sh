#!/usr/bin/env bash
# Rewrite the stacks CI tests from fresh resolutions, each in a throwaway venv:
#   constraints/latest.txt  the newest releases pyproject.toml allows, with the test and eval extras
#   constraints/oldest.txt  pyproject's dependencies at their lower bounds (scripts/stacks.py), with the test
#                           extra; the rest resolved with them
# Then run `bash scripts/test.sh` (and fix what the new releases broke) and commit the files together: moving CI to
# new releases is a deliberate change. Usage: bash scripts/lock.sh [latest|oldest ...] (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH=2.13.0  # the CPU build (scripts/setup.sh installs the same)
lock() {
  local stack=$1 extras=$2
  shift 2
  local venv=".venv-lock-$stack"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q "torch==$TORCH"
  "$venv/bin/python" -m pip install -q -e ".[$extras]" "torch==$TORCH" "$@"
  {
    echo "# The $stack stack: exact versions that scripts/setup.sh --stack $stack installs and CI tests."
    echo "# Written by bash scripts/lock.sh on $(date -u +%Y-%m-%d) with $("$venv/bin/python" --version); do not edit by hand."
    "$venv/bin/python" -m pip freeze --all --exclude-editable | sed -E 's/\+cpu$//' | LC_ALL=C sort -f
  } >"constraints/$stack.txt.new"
  mv "constraints/$stack.txt.new" "constraints/$stack.txt"  # a failed run leaves the previous file in place
  rm -rf "$venv"
  echo "lock.sh: wrote constraints/$stack.txt"
}
mkdir -p constraints
STACKS=("$@")
[ ${#STACKS[@]} -gt 0 ] || STACKS=(latest oldest)
for stack in "${STACKS[@]}"; do
  case "$stack" in
    latest) lock latest test,eval ;;
    oldest) mapfile -t LOWEST < <(python3 scripts/stacks.py lower-bounds) && lock oldest test "${LOWEST[@]}" ;;
    *) echo "lock.sh: unknown stack $stack (latest or oldest)" >&2; exit 2 ;;
  esac
done
