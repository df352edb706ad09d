"""Print ``name==version`` for each of pyproject's dependencies at its lower bound (``name>=version``), one a line:
what ``scripts/setup.sh --stack oldest`` installs, and what tests/test_stack.py holds constraints/oldest.txt to.

Reads pyproject.toml's ``[project] dependencies`` list as text (no TOML parser: Python 3.10 has none built in)."""

import re
import sys
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def dependencies(text: str | None = None) -> list[str]:
    """The requirement strings of ``[project] dependencies``."""
    text = PYPROJECT.read_text() if text is None else text
    block = re.search(r"^dependencies = \[(.*?)^\]", text, flags=re.M | re.S)
    if block is None:
        raise SystemExit(f"{PYPROJECT}: no [project] dependencies list")
    return re.findall(r'^\s*"([^"]+)",', block.group(1), flags=re.M)


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
