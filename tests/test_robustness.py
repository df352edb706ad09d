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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

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


def test_corrupt_truncated_missing_and_url_inputs_name_the_input(tmp_path):
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


def test_library_code_loads_weights_only_from_safetensors_or_weights_only_pickles():
    for package in ("modeling_eagle", "processing", "training", "hub_cards", "benchmarks", "cli"):
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load":
                    owner = getattr(node.func.value, "id", None)
                    if owner == "torch":
                        keywords = {k.arg: k.value for k in node.keywords}
                        assert "weights_only" in keywords and getattr(keywords["weights_only"], "value", None) is True
                        assert path.name == "convert_nveagle.py", f"{path}: torch.load outside the legacy converter"
                    assert owner not in {"pickle", "dill", "joblib"}, f"{path} unpickles with {owner}.load"
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                    assert not any(n.split(".")[0] in {"pickle", "dill", "joblib"} for n in names), path


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


def test_training_killed_at_random_moments_always_resumes_to_the_same_weights(tmp_path):
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

    output = tmp_path / "killed"
    script = [sys.executable, str(HERE / "train_until_killed.py"), str(recipe), str(output), str(data), "none", "0"]
    rng = random.Random(7)
    kills = 0
    for _ in range(6):
        process = subprocess.Popen(script, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(3.0, 9.0))  # imports take ~3 s; the three stages then run for a few seconds
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.communicate(timeout=600)
        if (output / "stage3-sft" / "config.json").is_file():
            break
    final = subprocess.run(script, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    assert kills >= 1
    a = load_file(tmp_path / "straight" / "stage3-sft" / "model.safetensors")
    b = load_file(output / "stage3-sft" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)
    assert not list(output.glob(".*staging-*")), "a half-written folder was left behind"
