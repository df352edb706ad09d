"""The stacks CI tests (constraints/*.txt) and pyproject's ranges, read the one way scripts/setup.sh, scripts/lock.sh
and tests/test_stack.py need them. Runs with any Python 3.11+ (the standard library only: setup.sh runs it before
the venv has anything).

    python scripts/stacks.py lower-bounds            name==version for each dependency at its lower bound: what
                                                     ``setup.sh --stack oldest`` and ``lock.sh oldest`` install
    python scripts/stacks.py unpinned STACK_FILE     the installed distributions STACK_FILE does not pin (this
                                                     package aside): what ``setup.sh`` removes from a reused venv
"""

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def canonical(name: str) -> str:
    """A distribution's name as pip compares names (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


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


def pins(stack_file) -> dict[str, str]:
    """A stack file's ``NAME==VERSION`` lines as {canonical name: version}."""
    found = {}
    for line in Path(stack_file).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            if not version:
                raise SystemExit(f"{stack_file}: {line!r} is not NAME==VERSION")
            found[canonical(name)] = version
    return found


def unpinned(stack_file) -> list[str]:
    """The installed distributions (this interpreter's) that ``stack_file`` does not pin, this package aside."""
    pinned = set(pins(stack_file)) | {"eagle-hub"}
    return sorted(
        dist.metadata["Name"] for dist in metadata.distributions() if canonical(dist.metadata["Name"]) not in pinned
    )


if __name__ == "__main__":
    command, *arguments = sys.argv[1:] or [""]
    if command == "lower-bounds":
        lines = [f"{name}=={version}" for name, version in lower_bounds(dependencies()).items()]
    elif command == "unpinned" and len(arguments) == 1:
        lines = unpinned(arguments[0])
    else:
        raise SystemExit(__doc__)
    sys.stdout.write("".join(f"{line}\n" for line in lines))
