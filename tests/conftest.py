"""Shared fixtures: tiny Eagle models, a locally built tokenizer, processors and saved folders (all offline)."""

import importlib
import math
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# transformers' common test mixins (tests/test_transformers_*.py) skip their `@slow` tests unless RUN_SLOW is set;
# they also carry the `slow` mark, so this suite's own selection (`-m slow`, deselected by default) decides.
os.environ.setdefault("RUN_SLOW", "1")

import common_tests_record  # noqa: E402
from common_tests_record import (  # noqa: E402,F401  (the record's hooks: see tests/common_tests_record.py)
    pytest_addoption,
    pytest_collection_modifyitems,
    pytest_runtest_logreport,
    pytest_sessionfinish,
)

import eagle_hub.modeling_eagle  # noqa: E402,F401  (registers the Auto classes)
from eagle_hub.modeling_eagle.hub_folder import build_processor, save_folder  # noqa: E402
from eagle_hub.modeling_eagle.modeling_eagle import EagleForConditionalGeneration  # noqa: E402
from eagle_hub.modeling_eagle.presets import eagle_config  # noqa: E402
from eagle_hub.processing.local_tokenizer import build_tokenizer  # noqa: E402

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
ROOT = Path(__file__).resolve().parents[1]


def run_process_group(command: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(command, capture_output=True, text=True)`` in a session of its own, whose every process is
    killed when the command ends, fails or times out: ``subprocess.run`` kills only the launcher on a timeout, and
    torchrun's or accelerate's workers would outlive it, holding the CPU and the port."""
    process = subprocess.Popen(
        command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    finally:
        try:  # a worker the launcher left behind, on success too
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def installed_folders() -> dict[str, Path]:
    """Installed package name -> repository folder: pyproject's ``[tool.setuptools.package-dir]`` (what pip maps)."""
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[tool.setuptools.package-dir]", 1)[1].split("\n[", 1)[0]
    return {name: ROOT / folder for name, folder in re.findall(r'^"([\w.]+)" = "([\w/]+)"$', section, flags=re.M)}


IN_CI = os.environ.get("CI", "").lower() == "true"


def require_reference(*parts: str) -> Path:
    """``REFERENCE / parts``: the authors' reference data (shared/reference beside the repository) a test needs.

    Absent, the test is skipped locally; under CI (CI=true) the run fails instead, since the fidelity claims rest
    on it (as tests/test_space.py does for its browser). Every test that reads shared/reference calls this."""
    path = REFERENCE.joinpath(*parts)
    if not path.exists():
        reason = f"the authors' reference data is missing: {path} (shared/reference is not beside the repository)"
        if IN_CI:
            pytest.fail(f"{reason}; CI must have it", pytrace=False)
        pytest.skip(reason)
    return path


def require_module(name: str, install: str = "pip install -e '.[test]'"):
    """``import name``: an optional dependency a test needs (one of the ``test`` extra's, such as bitsandbytes).

    Missing, the test is skipped locally; under CI (CI=true) the run fails instead, as for ``require_reference``:
    ``pytest.importorskip`` would skip there too and a green run would hide the untested path."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        reason = f"{name} cannot be imported ({error}): {install}"
        if IN_CI:
            pytest.fail(f"{reason}; CI must have it", pytrace=False)
        pytest.skip(reason)


# Marks used by transformers' common test mixins (its repository conftest registers them).
TRANSFORMERS_MARKS = (
    "generate",
    "torch_compile_test",
    "torch_export_test",
    "onnx_export_test",
    "executorch_export_test",
    "flash_attn_test",
    "flash_attn_3_test",
    "flash_attn_4_test",
    "all_flash_attn_test",
    "training_ci",
    "tensor_parallel_ci",
    "fsdp_ci",
    "is_pipeline_test",
    "is_staging_test",
    "accelerate_tests",
    "not_device_test",
)


def pytest_configure(config):
    common_tests_record.configure(config)
    for mark in TRANSFORMERS_MARKS:
        config.addinivalue_line("markers", f"{mark}: transformers' common tests")


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


def tiny_config(tokenizer, preset="eagle-x5-tiny", **overrides):
    return eagle_config(
        preset,
        vocab_size=len(tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        **overrides,
    )


def tiny_model(tokenizer, preset="eagle-x5-tiny", seed=0, **overrides):
    torch.manual_seed(seed)
    return EagleForConditionalGeneration(tiny_config(tokenizer, preset, **overrides)).eval()


@pytest.fixture(scope="session")
def model(tokenizer):
    return tiny_model(tokenizer)


@pytest.fixture(scope="session")
def processor(tokenizer, model):
    return build_processor(model.config, tokenizer)


@pytest.fixture(scope="session")
def saved_folder(tmp_path_factory, model, processor):
    path = tmp_path_factory.mktemp("eagle") / "eagle-x5-tiny"
    save_folder(path, processor, model=model)
    return path


def load_remotely(folder: Path, work: Path) -> dict:
    """Run tests/remote_load.py on ``folder`` in a fresh process that cannot import this package (offline, its own
    HF_HOME under ``work``) and return what it saved: classes, token ids, logits."""
    import subprocess
    import sys

    out = work / f"{Path(folder).name}-remote.pt"
    env = {**os.environ, "HF_HOME": str(work / "hf"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    run = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "remote_load.py"), str(folder), str(out)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, (folder, run.stderr[-4000:])
    return torch.load(out, weights_only=False)


def pix2struct_patches(batch, max_patches, width=770, real=None, generator=None) -> torch.Tensor:
    """Random flattened patches with 1-based row/column ids on a ``isqrt(max_patches)``-wide grid for the first
    ``real`` rows (default: the whole square grid) and all-zero padding rows after them, as the processor makes."""
    side = math.isqrt(max_patches)
    real = side * side if real is None else real
    patches = torch.randn(batch, max_patches, width, generator=generator)
    index = torch.arange(max_patches)
    is_real = index < real
    patches[:, :, 0] = torch.where(is_real, index // side + 1, 0).float()
    patches[:, :, 1] = torch.where(is_real, index % side + 1, 0).float()
    patches[:, ~is_real] = 0
    return patches


def make_image(width=48, height=40, colour=(200, 30, 30), seed=0) -> Image.Image:
    """A deterministic RGB image: a coloured rectangle on a noisy background."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randint(0, 255, (height, width, 3), generator=generator, dtype=torch.uint8)
    image = Image.fromarray(noise.numpy())
    image.paste(colour, (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    return image


def chat(question: str, n_images: int = 1) -> list[dict]:
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": question}]
    return [{"role": "user", "content": content}]
