"""Where a model or a dataset lives: a Hub repo id, or a local path resolved against a base folder.

One rule each, used by every command and loader: a recipe's paths are relative to the recipe file, a command
line's to the working directory.
"""

import re
from pathlib import Path

# ORG/NAME: both parts start a Hub name; a path starting with ".", "/" or "~" never matches.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# A relative file path such as data/train.json has the shape of a repo id; its suffix tells it apart.
FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".tsv", ".arrow", ".txt", ".yaml", ".yml")


def is_hub_id(value) -> bool:
    """Whether ``value`` reads as a Hub repo id (``org/name``) rather than a local path."""
    return isinstance(value, str) and bool(HUB_ID.match(value)) and not value.lower().endswith(FILE_SUFFIXES)


def resolve_path(path, base=None) -> Path:
    """``path`` with ``~`` expanded; a relative one is taken relative to ``base`` (default: the working folder)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else Path(base if base is not None else Path.cwd()) / path
