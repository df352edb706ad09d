"""Print ``name==version`` for each of pyproject's dependencies at its lower bound (``name>=version``), one a line:
what ``scripts/setup.sh --stack oldest`` installs, and what tests/test_stack.py holds constraints/oldest.txt to.
Runs with any Python 3.11+ (the standard library only: it runs before the venv has anything)."""

import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def project() -> dict:
    """pyproject.toml's ``[project]`` table."""
    return tomllib.loads(PYPROJECT.read_text())["project"]


def dependencies() -> list[str]:
    """The requirement strings of ``[project] dependencies``."""
    return project()["dependencies"]


def lower_bounds(requirements: list[str]) -> dict[str, str]:
    """name -> its lower bound, for each requirement that has one."""
    bounds = {}
    for requirement in requirements:
        match = re.match(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*(.*)$", requirement)
        lower = re.search(r">=\s*([0-9][0-9A-Za-z.]*)", match.group(2))
        if lower:
            bounds[match.group(1)] = lower.group(1)
    return bounds


if __name__ == "__main__":
    for name, version in lower_bounds(dependencies()).items():
        sys.stdout.write(f"{name}=={version}\n")
