"""Bad and unusual inputs: every PIL mode, EXIF, animations, corrupt files, extreme sizes, pixel caps, long and
empty prompts, absurd configs, killed training, untrusted weights. Each is handled correctly (pixels checked)
or refused with an error naming the input."""

import ast
import io
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import installed_folders
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from eagle_hub.modeling_eagle import EagleImageProcessor
from eagle_hub.modeling_eagle.configuration_eagle import EagleVisionConfig
from eagle_hub.modeling_eagle.presets import expert_specs

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


def plain_processor(**kwargs) -> EagleImageProcessor:
    """One image expert, no normalisation (mean 0, std 1): outputs are pixel/255, easy to check by hand."""
    expert = {"name": "e", "type": "clip", "image_size": 8, "image_mean": [0.0] * 3, "image_std": [1.0] * 3}
    return EagleImageProcessor(experts=[expert], resize_mode="resize", **kwargs)


def rgb_of(image, **kwargs) -> list[int]:
    """The processed colour of a uniform image, back in 0..255."""
    pixels = plain_processor(**kwargs)(image, return_tensors="pt")["pixel_values"][0][0]
    assert torch.allclose(pixels, pixels[:, :1, :1].expand_as(pixels), atol=1e-6), "image should stay uniform"
    return [round(float(v) * 255) for v in pixels[:, 0, 0]]


def palette_with_transparency() -> Image.Image:
    image = Image.new("P", (6, 6), 0)
    image.putpalette([10, 20, 30] + [0, 0, 0] * 255)
    image.info["transparency"] = 0
    return image


MODES = [
    ("1 white", Image.new("1", (6, 6), 1), [255, 255, 255]),
    ("L", Image.new("L", (6, 6), 100), [100, 100, 100]),
    ("LA opaque", Image.new("LA", (6, 6), (100, 255)), [100, 100, 100]),
    ("LA transparent", Image.new("LA", (6, 6), (100, 0)), [255, 255, 255]),
    ("P transparent", palette_with_transparency(), [255, 255, 255]),
    ("RGBA", Image.new("RGBA", (6, 6), (10, 20, 30, 255)), [10, 20, 30]),
    ("CMYK white", Image.new("CMYK", (6, 6), (0, 0, 0, 0)), [255, 255, 255]),
    ("I;16 full", Image.new("I;16", (6, 6), 65535), [255, 255, 255]),
    ("I;16 mid", Image.new("I;16", (6, 6), 257 * 100), [100, 100, 100]),
    ("F unit", Image.fromarray(np.full((6, 6), 0.5, dtype=np.float32), mode="F"), [128, 128, 128]),
    ("F 0..255", Image.fromarray(np.full((6, 6), 200.0, dtype=np.float32), mode="F"), [200, 200, 200]),
]


@pytest.mark.parametrize("label, image, expected", MODES, ids=[m[0] for m in MODES])
def test_every_pil_mode_becomes_the_right_rgb(label, image, expected):
    assert rgb_of(image) == expected


def test_exif_orientation_is_applied(tmp_path):
    array = np.zeros((10, 20, 3), dtype=np.uint8)
    array[:, :10] = (255, 0, 0)  # left half red, right half blue
    array[:, 10:] = (0, 0, 255)
    stored = Image.fromarray(array)
    exif = stored.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.png"
    stored.save(path, exif=exif)
    upright = Image.fromarray(np.ascontiguousarray(np.rot90(array, k=-1)))  # what a viewer shows: 10 wide, 20 tall
    processor = EagleImageProcessor(
        experts=[{"name": "e", "type": "clip", "image_size": 20, "image_mean": [0.0] * 3, "image_std": [1.0] * 3}]
    )
    got = processor(str(path), return_tensors="pt")["pixel_values"][0]
    want = processor(upright, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(got, want)
    assert got[0, 0, 0, 10] > 0.9 and got[0, 2, 0, 10] < 0.1  # red on top after rotation
    assert got[0, 2, -1, 10] > 0.9  # blue at the bottom


def test_animated_image_uses_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (6, 6), (200, 0, 0)), Image.new("RGB", (6, 6), (0, 0, 200))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    red = rgb_of(str(path))
    assert red[0] > 150 and red[2] < 50


def test_corrupt_truncated_missing_and_url_inputs_name_the_input(tmp_path, monkeypatch):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(os.urandom(300))
    with pytest.raises(ValueError, match=r"image 0: .*garbage.png is not a readable image"):
        plain_processor()(str(garbage))
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good, "PNG")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    with pytest.raises(ValueError, match=r"truncated.png.*(corrupt or truncated|not a readable image)"):
        plain_processor()(str(truncated))
    # Also when the process has told Pillow to accept truncated files (lmms-eval does at import), and the setting
    # is left as it was.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ValueError, match=r"truncated.png.*(corrupt or truncated|not a readable image)"):
        plain_processor()(str(truncated))
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True
    with pytest.raises(ValueError, match=r"image 1: file not found: .*nope.png"):
        plain_processor()([Image.new("RGB", (4, 4)), str(tmp_path / "nope.png")])
    with pytest.raises(ValueError, match=r"image 0 is a URL \(https://example.com/cat.png\)"):
        plain_processor()("https://example.com/cat.png")


def test_tiny_and_extreme_aspect_images_are_processed():
    one = Image.new("RGB", (1, 1), (255, 0, 0))
    assert rgb_of(one) == [255, 0, 0]
    strip = Image.new("RGB", (1, 10000), (0, 255, 0))
    out = EagleImageProcessor(
        experts=[{"name": "e", "type": "clip", "image_size": 16, "image_mean": [0.0] * 3, "image_std": [1.0] * 3}]
    )(strip, return_tensors="pt")["pixel_values"][0]
    assert out.shape == (1, 3, 16, 16) and torch.isfinite(out).all()
    # Padded to 10000x10000 with the mean colour (black here), the 1-pixel strip is 1/10000 of the width.
    assert out.abs().max() < 0.01
    wide = EagleImageProcessor(
        experts=[{"name": "e", "type": "clip", "image_size": 16, "image_mean": [0.0] * 3, "image_std": [1.0] * 3}],
        resize_mode="resize",
    )(strip, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(wide[0, 1], torch.ones(16, 16))  # stretched instead, it is all green


def test_images_over_the_pixel_cap_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"40x40 = 0.0 megapixels, over the limit .*max_image_pixels"):
        plain_processor(max_image_pixels=1000)(Image.new("RGB", (40, 40)))
    with pytest.raises(ValueError, match="max_image_pixels"):
        plain_processor(max_image_pixels=1000)(np.zeros((40, 40, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="padding it to a square"):
        plain_processor(max_image_pixels=100_000)(Image.new("RGB", (1, 1000)))
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)  # 400 megapixels in a few kilobytes
    assert bomb.stat().st_size < 200_000
    with pytest.raises(ValueError, match=r"bomb.png"):
        plain_processor()(str(bomb))


def test_prompts_too_long_or_empty_are_refused(processor, model):
    long_text = "<image>" + " word" * 3000
    with pytest.raises(ValueError, match=r"prompt 0 is \d+ tokens \(16 of them image tokens\) but the model takes at"):
        processor(images=[Image.new("RGB", (8, 8))], text=[long_text], return_tensors="pt")
    empty = processor(text=[""], return_tensors="pt")
    with pytest.raises(ValueError, match="The prompt is empty"):
        model(**empty)


def test_absurd_config_values_are_refused_at_validation():
    specs = expert_specs("eagle-x5-tiny", ["clip"])
    specs[0]["config"]["hidden_size"] = 10**7
    with pytest.raises(ValueError, match=r"experts\[0\].config.hidden_size is 10000000"):
        EagleVisionConfig(experts=specs)
    with pytest.raises(ValueError, match="grid_size is 100000"):
        EagleVisionConfig(experts=expert_specs("eagle-x5-tiny", ["clip"]), grid_size=100000)
    with pytest.raises(ValueError, match=r"image_size is 1000000"):
        EagleVisionConfig(experts=expert_specs("eagle-x5-tiny", ["clip"], image_size=10**6))
    from eagle_hub.modeling_eagle.configuration_eagle import EagleConfig

    with pytest.raises(ValueError, match="text_config.hidden_size"):
        EagleConfig(
            vision_config={"experts": expert_specs("eagle-x5-tiny", ["clip"])},
            text_config={"model_type": "llama", "hidden_size": 10**6, "vocab_size": 100},
            image_token_id=5,
        )


UNPICKLERS = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
TORCH_LOADS = {"torch.load", "torch.serialization.load"}


def load_calls(source: str) -> tuple[list[str], list[str]]:
    """(unsafe, weights-only torch loads) in ``source``, as "line N: what" strings.

    Names are resolved through the imports, so ``import torch as t; t.load``, ``from torch import load``,
    ``from torch import load as read``, ``from torch.serialization import load`` and ``from pickle import loads as
    f`` are all seen. Unsafe: importing an unpickling module at all (pickle, dill, joblib, ...), torch.load without a
    literal ``weights_only=True`` (or taken as a value, e.g. ``reader = torch.load``), numpy.load with
    ``allow_pickle=True``."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {}  # local name -> dotted name it stands for
    unsafe, weights_only = [], []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:
                    aliases[alias.name.split(".")[0]] = alias.name.split(".")[0]
                if alias.name.split(".")[0] in UNPICKLERS:
                    unsafe.append(f"line {node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
            if node.module.split(".")[0] in UNPICKLERS:
                unsafe.append(f"line {node.lineno}: from {node.module} import ...")

    def resolve(expr) -> str | None:
        if isinstance(expr, ast.Name):
            return aliases.get(expr.id)
        if isinstance(expr, ast.Attribute):
            base = resolve(expr.value)
            return f"{base}.{expr.attr}" if base else None
        return None

    def literal_true(call: ast.Call, keyword: str) -> bool:
        return any(
            k.arg == keyword and isinstance(k.value, ast.Constant) and k.value.value is True for k in call.keywords
        )

    called = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = resolve(node.func)
        called.add(id(node.func))
        if name in TORCH_LOADS:
            (weights_only if literal_true(node, "weights_only") else unsafe).append(f"line {node.lineno}: {name}")
        elif name and name.split(".")[0] in UNPICKLERS:
            unsafe.append(f"line {node.lineno}: {name}")
        elif name == "numpy.load" and literal_true(node, "allow_pickle"):
            unsafe.append(f"line {node.lineno}: numpy.load(allow_pickle=True)")
    for node in ast.walk(tree):  # torch.load taken as a value: whatever calls it later is not checked
        if isinstance(node, (ast.Name, ast.Attribute)) and id(node) not in called and resolve(node) in TORCH_LOADS:
            unsafe.append(f"line {node.lineno}: {resolve(node)} used as a value")
    return unsafe, weights_only


UNSAFE_SOURCES = {
    "torch.load": "import torch\ntorch.load(path)",
    "weights_only=False": "import torch\ntorch.load(path, weights_only=False)",
    "weights_only from a variable": "import torch\ntorch.load(path, weights_only=flag)",
    "weights_only in **kwargs": "import torch\ntorch.load(path, **options)",
    "import torch as t": "import torch as t\nt.load(path)",
    "from torch import load": "from torch import load\nload(path)",
    "from torch import load as read": "from torch import load as read\nread(path)",
    "torch.serialization.load": "import torch.serialization\ntorch.serialization.load(path)",
    "from torch.serialization import load": "from torch.serialization import load\nload(path)",
    "from torch import serialization": "from torch import serialization as s\ns.load(path)",
    "torch.load as a value": "import torch\nreader = torch.load\nreader(path, weights_only=True)",
    "pickle.load": "import pickle\npickle.load(handle)",
    "pickle.loads": "import pickle as p\np.loads(data)",
    "from pickle import loads": "from pickle import loads\nloads(data)",
    "from pickle import load as restore": "from pickle import load as restore\nrestore(handle)",
    "pickle.Unpickler": "import pickle\npickle.Unpickler(handle).load()",
    "dill": "import dill\ndill.loads(data)",
    "joblib": "import joblib\njoblib.load(path)",
    "numpy allow_pickle": "import numpy as np\nnp.load(path, allow_pickle=True)",
}
SAFE_SOURCES = {
    "torch.load(weights_only=True)": "import torch\ntorch.load(path, weights_only=True)",
    "from torch import load, weights_only": "from torch import load as read\nread(path, weights_only=True)",
    "json.load": "import json\njson.load(handle)",
    "safetensors": "from safetensors.torch import load_file\nload_file(path)",
    "numpy.load": "import numpy as np\nnp.load(path)",
    "a local function named load": "def load(x):\n    return x\n\n\nload(1)",
    "a method named load": "import torch\nmodel = torch.nn.Linear(1, 1)\nmodel.load(path)",
}


@pytest.mark.parametrize("label", list(UNSAFE_SOURCES))
def test_the_unsafe_load_scan_catches_every_spelling(label):
    unsafe, _ = load_calls(UNSAFE_SOURCES[label])
    assert unsafe, label


@pytest.mark.parametrize("label", list(SAFE_SOURCES))
def test_the_unsafe_load_scan_passes_safe_loads(label):
    unsafe, weights_only = load_calls(SAFE_SOURCES[label])
    assert unsafe == []
    assert bool(weights_only) == ("weights_only" in label)


def test_library_code_loads_weights_only_from_safetensors_or_weights_only_pickles():
    unsafe, weights_only = {}, {}
    for folder in sorted(installed_folders().values()):  # every folder the package installs
        for path in sorted(folder.rglob("*.py")):
            found, safe = load_calls(path.read_text())
            relative = str(path.relative_to(ROOT))
            if found:
                unsafe[relative] = found
            if safe:
                weights_only[relative] = safe
    assert unsafe == {}
    # The one weights-only pickle load: the converter's legacy .bin input (and the scan does see it).
    assert (
        list(weights_only) == ["modeling_eagle/convert_nveagle.py"] and len(weights_only[list(weights_only)[0]]) == 1
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(st.tuples(st.integers(1, 70), st.integers(1, 70)), min_size=0, max_size=3),
    modes=st.lists(st.sampled_from(["RGB", "L", "RGBA", "P", "1", "CMYK", "I;16", "F"]), min_size=3, max_size=3),
    extra_tokens=st.integers(-1, 1),
    words=st.lists(st.sampled_from(["a", "red", "circle", "?", "é", "\n", "  "]), max_size=8),
)
def test_processor_property_token_counts_match_images(processor, sizes, modes, extra_tokens, words):
    images = [Image.new(mode, size) for size, mode in zip(sizes, modes)]
    n_tokens = max(len(images) + extra_tokens, 0)
    text = " ".join(words) + "<image>" * n_tokens
    try:
        out = processor(images=images or None, text=[text], return_tensors="pt")
    except ValueError as error:
        assert n_tokens != len(images) and "placeholder" in str(error)
        return
    assert n_tokens == len(images)
    count = int((out["input_ids"] == processor.image_token_id).sum())
    assert count == len(images) * processor.num_image_tokens
    if images:
        assert all(p.shape[0] == len(images) for p in out["pixel_values"])
        assert all(torch.isfinite(p).all() for p in out["pixel_values"])


# Runs a recipe like `eagle train --resume` and prints a marker line when a trainer begins (with the step it resumed
# at), after every optimizer step and after every checkpoint save, so the test knows where a kill landed.
KILL_HARNESS = r"""
import os, sys, time
from transformers import TrainerCallback
import eagle_hub.training.runner as runner
from eagle_hub.training.recipe import load_recipe

recipe_path, output, data_root = sys.argv[1:4]


def mark(*words):
    print("@@marker", *words, flush=True)


class Markers(TrainerCallback):
    def __init__(self, unit):
        self.unit = unit

    def on_train_begin(self, args, state, control, **kwargs):
        mark("BEGIN", self.unit, state.global_step, state.max_steps)

    def on_step_end(self, args, state, control, **kwargs):
        mark("STEP", self.unit, state.global_step, state.max_steps)

    def on_save(self, args, state, control, **kwargs):
        mark("SAVED", self.unit, state.global_step, state.max_steps)


original = runner.build_trainer


def build_trainer(model, processor, stage, dataset, checkpoints, *args, **kwargs):
    trainer = original(model, processor, stage, dataset, checkpoints, *args, **kwargs)
    trainer.add_callback(Markers(os.path.relpath(checkpoints, output)))  # one unit: a stage, or one expert
    return trainer


runner.build_trainer = build_trainer
mark("IMPORTED")
recipe = load_recipe(recipe_path)
recipe.data_root = data_root
runner.run_recipe(recipe, output, resume=os.path.isdir(output))
mark("FINISHED")
"""


class MarkedRun:
    """The harness in a subprocess; a thread collects its marker lines as they come: (kind, unit, step, max_steps)."""

    def __init__(self, command, stderr_path: Path):
        import threading

        self.stderr = stderr_path.open("w")
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self.stderr, text=True, bufsize=1)
        self.markers: list[tuple[float, tuple]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.process.stdout:
            words = line.split()
            if words[:1] == ["@@marker"]:
                kind, *rest = words[1:]
                fields = (kind, rest[0], int(rest[1]), int(rest[2])) if rest else (kind,)
                self.markers.append((time.monotonic(), fields))

    def seen(self, kind: str) -> list[tuple]:
        return [fields for _, fields in list(self.markers) if fields[0] == kind]

    def wait_for(self, condition, timeout: float = 900) -> bool:
        """Until ``condition(self)`` holds (True) or the process ends first (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition(self):
                return True
            if self.process.poll() is not None:
                self.reader.join(timeout=30)
                return bool(condition(self))
            time.sleep(0.02)
        raise TimeoutError("the training harness made no progress")

    def step_seconds(self) -> float:
        """The shortest time between two optimizer steps of the same unit so far."""
        steps = [(t, fields[1]) for t, fields in list(self.markers) if fields[0] == "STEP"]
        gaps = [b - a for (a, unit_a), (b, unit_b) in zip(steps, steps[1:]) if unit_a == unit_b]
        return min(gaps, default=0.5)

    def finish(self, timeout: float = 900) -> int:
        code = self.process.wait(timeout=timeout)
        self.reader.join(timeout=30)
        self.stderr.close()
        return code


def complete_checkpoints(output: Path) -> dict[str, int]:
    """Unit folder (relative to ``output``) -> the newest checkpoint there whose trainer state, weights, optimizer
    and scheduler were all written (a kill mid-save leaves one of them missing or cut short)."""
    import json

    found = {}
    for checkpoint in output.glob("checkpoints/**/checkpoint-*"):
        try:
            step = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
        except (OSError, ValueError, KeyError):
            continue
        written = all((checkpoint / name).is_file() for name in ("optimizer.pt", "scheduler.pt"))
        if written and any(checkpoint.glob("*.safetensors")) and checkpoint.name == f"checkpoint-{step}":
            unit = str(checkpoint.parent.relative_to(output))
            found[unit] = max(found.get(unit, 0), step)
    return found


MIN_KILLS, MAX_KILLS = 3, 6


def test_training_killed_at_random_moments_always_resumes_to_the_same_weights(tmp_path):
    """SIGKILL at random moments after training started (never during the imports): every trainer of the next run
    begins exactly at the last complete checkpoint of its unit, at least one resumes mid-unit (step > 0), and the
    final weights equal an uninterrupted run's bit for bit. Kills alternate between any moment (mid-save included)
    and a moment within the step after a checkpoint, so a mid-unit resume always happens."""
    from safetensors.torch import load_file

    from eagle_hub.training.recipe import load_recipe
    from eagle_hub.training.runner import run_recipe
    from eagle_hub.training.synth import generate

    data = tmp_path / "data"
    generate(data, n=32, seed=0, image_size=64)
    recipe = ROOT / "training" / "recipes" / "tiny.yaml"
    straight = load_recipe(recipe)
    straight.data_root = str(data)
    run_recipe(straight, tmp_path / "straight")

    harness = tmp_path / "harness.py"
    harness.write_text(KILL_HARNESS)
    output = tmp_path / "killed"
    command = [sys.executable, str(harness), str(recipe), str(output), str(data)]
    rng = random.Random(7)
    kills, resumed, runs = [], [], 0
    while True:
        checkpoints = complete_checkpoints(output)
        run = MarkedRun(command, tmp_path / f"stderr-{runs}.txt")
        runs += 1
        kill = len(kills) < MIN_KILLS or (not resumed and len(kills) < MAX_KILLS)
        if kill and run.wait_for(lambda r: r.seen("STEP")):  # training has started in this process
            if len(kills) % 2 == 0:  # any moment: mid-step, mid-save, between units or stages
                # Counted in steps, not seconds: a fixed delay outlasted the whole run on a faster machine.
                target = len(run.seen("STEP")) + rng.randint(0, 6)
                run.wait_for(lambda r, target=target: len(r.seen("STEP")) >= target)
                time.sleep(rng.uniform(0.0, 1.0) * run.step_seconds())
            else:  # within the step after a checkpoint of a unit that is not finished yet
                mid_unit = run.wait_for(lambda r: any(step < total for _, _, step, total in r.seen("SAVED")))
                if mid_unit:
                    time.sleep(rng.uniform(0.0, 0.5) * run.step_seconds())
            if run.process.poll() is None:
                steps_before_kill = len(run.seen("STEP"))
                run.process.send_signal(signal.SIGKILL)
                kills.append(steps_before_kill)
        code = run.finish()
        begins = [(unit, step) for _, unit, step, _ in run.seen("BEGIN")]
        assert begins, f"run {runs} trained nothing"
        # Each unit this run trained began where its last complete checkpoint left it (0 without one).
        assert begins == [(unit, checkpoints.get(unit, 0)) for unit, _ in begins], (begins, checkpoints)
        resumed += [(unit, step) for unit, step in begins if step > 0]
        if code != -signal.SIGKILL:
            break
    print(f"{runs} runs; killed after {kills} optimizer steps of their run; resumed mid-unit at {resumed}")
    errors = (tmp_path / f"stderr-{runs - 1}.txt").read_text()
    assert code == 0 and run.seen("FINISHED"), errors[-3000:]
    assert len(kills) >= MIN_KILLS and all(steps >= 1 for steps in kills), kills  # every kill after a step
    assert resumed, "no run resumed from a checkpoint mid-unit"
    a = load_file(tmp_path / "straight" / "stage3-sft" / "model.safetensors")
    b = load_file(output / "stage3-sft" / "model.safetensors")
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)
    assert not list(output.glob(".*staging-*")), "a half-written folder was left behind"
