"""Puts transformers' own common test mixins (``../shared/transformers-tests``, see its PROVENANCE.md) on the path.

transformers' wheels do not ship its tests, so the mixins live in a shared folder next to the repository. Without
it the mixin test files skip, except under CI (``CI=true``), where a missing folder fails the run.
"""

import atexit
import shutil
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import IN_CI
from PIL import Image

TRANSFORMERS_TESTS = Path(__file__).resolve().parents[2] / "shared" / "transformers-tests"

if not (TRANSFORMERS_TESTS / "tests" / "test_modeling_common.py").is_file():
    reason = f"transformers' common test mixins are not at {TRANSFORMERS_TESTS}"
    if IN_CI:
        pytest.fail(f"{reason} (CI must have them)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)

if str(TRANSFORMERS_TESTS) not in sys.path:
    sys.path.insert(0, str(TRANSFORMERS_TESTS))


def _offline_test_files() -> types.ModuleType:
    """A stand-in for transformers' ``utils/fetch_hub_objects_for_ci.py``, which ``test_processing_common`` imports
    and the shared folder lacks. Upstream, ``url_to_local_path`` returns the file CI downloaded ahead of the tests,
    or the URL; offline, image URLs get a generated local image (the tests use their size, not their content) and
    other URLs come back unchanged."""
    folder = Path(tempfile.mkdtemp(prefix="eagle-transformers-tests-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)

    def url_to_local_path(url: str, return_url_if_not_found: bool = True) -> str:
        name = url.split("/")[-1]
        if not name.lower().endswith((".png", ".jpg", ".jpeg")):
            return url if return_url_if_not_found else name
        path = folder / name
        if not path.exists():
            pixels = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(path)
        return str(path)

    module = types.ModuleType("fetch_hub_objects_for_ci")
    module.url_to_local_path = url_to_local_path
    return module


sys.modules.setdefault("fetch_hub_objects_for_ci", _offline_test_files())
