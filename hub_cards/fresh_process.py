"""Run code in a fresh Python process that cannot import this package: what a Hub user without it sees when
loading a folder with ``trust_remote_code``."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

PRELUDE = r"""
import importlib.abc, sys

class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {"eagle_hub", "modeling_eagle", "processing", "training", "hub_cards"}:
            raise ImportError(f"the folder's code imports {name}, which Hub users do not have")

sys.meta_path.insert(0, _Block())
sys.path = [p for p in sys.path if p not in ("", ".")]
"""


def run_without_package(code: str, *args, timeout: float, python: str | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` (after ``PRELUDE``) with ``args`` in a scratch folder, offline, with its own modules cache."""
    with tempfile.TemporaryDirectory(prefix="eagle-fresh-") as scratch:
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "HF_MODULES_CACHE": str(Path(scratch) / "modules"),
            "TRANSFORMERS_VERBOSITY": "error",
            "TOKENIZERS_PARALLELISM": "false",
        }
        env.pop("PYTHONPATH", None)
        return subprocess.run(
            [python or sys.executable, "-c", PRELUDE + code, *map(str, args)],
            capture_output=True,
            text=True,
            cwd=scratch,
            env=env,
            timeout=timeout,
        )
