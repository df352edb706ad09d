"""Tests of EagleImageProcessor. Every expected value is computed here by hand (numpy / PIL / transformers'
own Pix2Struct processor), never with the processor's helpers."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require_reference
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from eagle_hub.modeling_eagle.image_processing_eagle import EagleImageProcessor  # noqa: E402

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
OTHER_MEAN = (0.485, 0.456, 0.406)
OTHER_STD = (0.229, 0.224, 0.225)

SMALL_EXPERTS = [
    {"name": "clip", "type": "clip", "image_size": 32, "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD)},
    {
        "name": "convnext",
        "type": "convnext",
        "image_size": 48,
        "image_mean": list(OTHER_MEAN),
        "image_std": list(OTHER_STD),
    },
    {"name": "pix2struct", "type": "pix2struct", "image_size": 64, "max_patches": 20, "patch_size": 8},
]


def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    # Smooth-ish content plus noise so resizes are not trivial.
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / max(width - 1, 1), yy * 255 / max(height - 1, 1), (xx + yy) % 256], axis=-1)
    noisy = base + rng.integers(-40, 40, size=base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), mode="RGB")


def pad_square_by_hand(image: Image.Image, colour: tuple[int, int, int]) -> Image.Image:
    array = np.asarray(image.convert("RGB"))
    height, width, _ = array.shape
    side = max(height, width)
    canvas = np.empty((side, side, 3), dtype=np.uint8)
    canvas[:] = np.array(colour, dtype=np.uint8)
    top, left = (side - height) // 2, (side - width) // 2
    canvas[top : top + height, left : left + width] = array
    return Image.fromarray(canvas, mode="RGB")


def expected_image_expert(image, size, mean, std, pad=True):
    if pad:
        image = pad_square_by_hand(image, tuple(int(m * 255) for m in mean))
    resized = np.asarray(image.convert("RGB").resize((size, size), Image.BICUBIC)).astype(np.float64) / 255.0
    normalised = (resized - np.array(mean)) / np.array(std)
    return normalised.transpose(2, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def processor():
    return EagleImageProcessor(experts=SMALL_EXPERTS)


@pytest.fixture(scope="module")
def wide():
    return random_image(40, 24, seed=1)


@pytest.fixture(scope="module")
def tall():
    return random_image(20, 36, seed=2)


# ----------------------------------------------------------------------------------------------- per expert
def test_per_expert_pad_shapes_and_values(processor, wide, tall):
    out = processor([wide, tall], return_tensors="pt")
    pixel_values = out["pixel_values"]
    assert isinstance(pixel_values, list) and len(pixel_values) == 3
    assert pixel_values[0].shape == (2, 3, 32, 32) and pixel_values[0].dtype == torch.float32
    assert pixel_values[1].shape == (2, 3, 48, 48)
    assert pixel_values[2].shape == (2, 20, 2 + 3 * 8 * 8)
    for spec, got in zip(SMALL_EXPERTS[:2], pixel_values[:2]):
        for i, image in enumerate((wide, tall)):
            want = expected_image_expert(image, spec["image_size"], spec["image_mean"], spec["image_std"])
            np.testing.assert_allclose(got[i].numpy(), want, atol=1e-6, rtol=0)
            # A few chosen pixels, spelled out.
            for c, y, x in [(0, 5, 7), (1, 16, 16), (2, spec["image_size"] - 1, 3)]:
                assert abs(got[i, c, y, x].item() - want[c, y, x]) < 1e-6


def test_pad_colour_at_corner(processor, wide, tall):
    out = processor([wide, tall], return_tensors="pt")["pixel_values"]
    for spec, tensor in zip(SMALL_EXPERTS[:2], out[:2]):
        mean, std = np.array(spec["image_mean"]), np.array(spec["image_std"])
        colour = np.array([int(m * 255) for m in spec["image_mean"]], dtype=np.float64)
        want = (colour / 255.0 - mean) / std
        # wide image: the top rows are padding; tall image: the left columns are padding.
        np.testing.assert_allclose(tensor[0, :, 0, 0].numpy(), want, atol=1e-5)
        np.testing.assert_allclose(tensor[1, :, -1, 0].numpy(), want, atol=1e-5)
        # and the middle of the picture is not the pad colour
        assert np.abs(tensor[0, :, tensor.shape[-1] // 2, tensor.shape[-1] // 2].numpy() - want).max() > 1e-2
    # ConvNeXt pads with its own mean colour, not CLIP's.
    assert tuple(int(m * 255) for m in OTHER_MEAN) != tuple(int(m * 255) for m in CLIP_MEAN)


def test_per_expert_resize_mode(wide):
    processor = EagleImageProcessor(experts=SMALL_EXPERTS, resize_mode="resize")
    out = processor(wide, return_tensors="pt")["pixel_values"]
    for spec, got in zip(SMALL_EXPERTS[:2], out[:2]):
        want = expected_image_expert(wide, spec["image_size"], spec["image_mean"], spec["image_std"], pad=False)
        np.testing.assert_allclose(got[0].numpy(), want, atol=1e-6, rtol=0)


def test_single_list_and_nested_inputs(processor, wide, tall):
    third = random_image(30, 30, seed=3)
    single = processor(wide, return_tensors="pt")["pixel_values"]
    flat = processor([wide, tall, third], return_tensors="pt")["pixel_values"]
    nested = processor([[wide], [tall, third]], return_tensors="pt")["pixel_values"]
    assert single[0].shape[0] == 1 and flat[0].shape[0] == 3 and nested[0].shape[0] == 3
    for a, b, c in zip(single, flat, nested):
        torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
        torch.testing.assert_close(b, c, rtol=0, atol=0)
    want = expected_image_expert(third, 32, CLIP_MEAN, CLIP_STD)
    np.testing.assert_allclose(nested[0][2].numpy(), want, atol=1e-6, rtol=0)


def test_numpy_and_tensor_inputs(processor, wide):
    reference = processor(wide, return_tensors="pt")["pixel_values"]
    hwc = np.asarray(wide)
    inputs = {
        "numpy HWC uint8": hwc,
        "numpy CHW uint8": np.ascontiguousarray(hwc.transpose(2, 0, 1)),
        "torch CHW uint8": torch.from_numpy(np.ascontiguousarray(hwc.transpose(2, 0, 1))),
        "torch HWC uint8": torch.from_numpy(hwc.copy()),
        "numpy HWC float 0..1": hwc.astype(np.float32) / 255.0,
        "numpy 4-D batch": hwc[None],
    }
    for label, image in inputs.items():
        got = processor(image, return_tensors="pt")["pixel_values"]
        for a, b in zip(got, reference):
            assert a.shape == b.shape, label
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=label)


def test_rgba_and_grayscale_are_converted(processor):
    rng = np.random.default_rng(4)
    rgba = rng.integers(0, 256, size=(24, 40, 4), dtype=np.uint8)
    alpha = rgba[..., 3:].astype(np.float64) / 255.0
    composited = np.round(rgba[..., :3] * alpha + 255.0 * (1 - alpha)).astype(np.uint8)
    got = processor(Image.fromarray(rgba, mode="RGBA"), return_tensors="pt")["pixel_values"][0]
    want = expected_image_expert(Image.fromarray(composited, mode="RGB"), 32, CLIP_MEAN, CLIP_STD)
    # Pillow composites with integer arithmetic; allow one grey level.
    np.testing.assert_allclose(got[0].numpy(), want, atol=1.01 / 255 / min(CLIP_STD))

    grey = rng.integers(0, 256, size=(24, 40), dtype=np.uint8)
    want = expected_image_expert(Image.fromarray(np.repeat(grey[..., None], 3, axis=-1)), 32, CLIP_MEAN, CLIP_STD)
    for image in (Image.fromarray(grey, mode="L"), grey, grey[None]):
        got = processor(image, return_tensors="pt")["pixel_values"][0]
        assert got.shape == (1, 3, 32, 32)
        np.testing.assert_allclose(got[0].numpy(), want, atol=1e-6, rtol=0)


def test_return_tensors_np(processor, wide):
    out = processor(wide, return_tensors="np")["pixel_values"]
    assert all(isinstance(x, np.ndarray) and x.dtype == np.float32 for x in out)


# ----------------------------------------------------------------------------------------------- pix2struct
def test_pix2struct_grid_formula_released_case():
    """The released Pix2Struct input (2048 patches of 16 px on the 1024 px square) is the 45x45 grid transformers'
    own Pix2StructImageProcessor makes: 2025 real rows with 1-based ids, 23 zero rows, the same values."""
    from transformers import Pix2StructImageProcessor

    max_patches, patch, size = 2048, 16, 1024
    experts = [
        {"name": "p2s", "type": "pix2struct", "image_size": size, "max_patches": max_patches, "patch_size": patch}
    ]
    image = random_image(size, size, seed=6)
    got = EagleImageProcessor(experts=experts)(image, return_tensors="pt")["pixel_values"][0][0]
    assert got.shape == (max_patches, 2 + 3 * patch * patch)
    side = 45
    np.testing.assert_array_equal(got[: side * side, 0].numpy(), np.repeat(np.arange(1, side + 1), side))
    np.testing.assert_array_equal(got[: side * side, 1].numpy(), np.tile(np.arange(1, side + 1), side))
    assert torch.count_nonzero(got[side * side :]) == 0 and (got[: side * side].abs().sum(-1) > 0).all()

    chw = np.asarray(image).astype(np.float32).transpose(2, 0, 1).copy()  # no pad, no resize: already 1024 square
    hf = Pix2StructImageProcessor(max_patches=max_patches, patch_size={"height": patch, "width": patch}, is_vqa=False)
    want = hf(chw, return_tensors="pt")
    assert int(want["attention_mask"][0].sum()) == side * side
    error = (got - want["flattened_patches"][0]).abs().max().item()
    print(f"released Pix2Struct patches vs transformers: max abs {error:.2e}")
    assert error <= 2e-6  # measured 4.8e-7


def test_pix2struct_ids_padding_and_values(processor, wide, tall):
    from transformers import Pix2StructImageProcessor

    got = processor([wide, tall], return_tensors="pt")["pixel_values"][2]
    max_patches, patch, size = 20, 8, 64
    side = math.isqrt(max_patches)  # 4 -> 16 real rows
    # Pix2Struct's own float formula gives the same grid for this case (so the comparison below is meaningful).
    scale = math.sqrt(max_patches * (patch / size) * (patch / size))
    assert int(scale * size / patch) == side
    real = side * side
    row_ids = np.repeat(np.arange(1, side + 1), side)
    col_ids = np.tile(np.arange(1, side + 1), side)
    hf = Pix2StructImageProcessor(max_patches=max_patches, patch_size={"height": patch, "width": patch}, is_vqa=False)
    for i, image in enumerate((wide, tall)):
        np.testing.assert_array_equal(got[i, :real, 0].numpy(), row_ids)
        np.testing.assert_array_equal(got[i, :real, 1].numpy(), col_ids)
        assert int((got[i].abs().sum(-1) != 0).sum()) == real
        assert torch.count_nonzero(got[i, real:]) == 0
        # Same square pixels (CLIP mean colour pad, PIL bicubic), through transformers' processor.
        square = pad_square_by_hand(image, tuple(int(m * 255) for m in CLIP_MEAN)).resize((size, size), Image.BICUBIC)
        chw = np.asarray(square).astype(np.float32).transpose(2, 0, 1).copy()
        want = hf(chw, return_tensors="pt")["flattened_patches"][0]
        assert want.shape == got[i].shape
        assert (got[i] - want).abs().max().item() <= 1e-5


def test_pix2struct_patch_layout_by_hand():
    # Row-major patches with the channel fastest, checked on one patch with numpy only.
    experts = [{"name": "p2s", "type": "pix2struct", "image_size": 32, "max_patches": 16, "patch_size": 8}]
    image = random_image(32, 32, seed=5)
    got = EagleImageProcessor(experts=experts)(image, return_tensors="pt")["pixel_values"][0][0]
    pixels = np.asarray(image).astype(np.float64)  # 32 = 4 * 8: no resize happens
    standardised = (pixels - pixels.mean()) / max(pixels.std(), 1 / math.sqrt(pixels.size))
    r, c = 2, 1
    block = standardised[r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8, :]  # (p_h, p_w, C) -> channel fastest
    row = got[r * 4 + c].numpy()
    assert row[0] == r + 1 and row[1] == c + 1
    np.testing.assert_allclose(row[2:], block.reshape(-1), atol=1e-5)


# ----------------------------------------------------------------------------------------------- released
def test_released_mode_matches_reference():
    from safetensors.torch import load_file

    reference = require_reference("nveagle-reference-x5", "reference")
    require_reference("nveagle-reference-x5", "reference", "reference.safetensors")

    ref = load_file(str(reference / "reference.safetensors"))
    experts = [
        {
            "name": "clip",
            "type": "clip",
            "image_size": 336,
            "image_mean": list(CLIP_MEAN),
            "image_std": list(CLIP_STD),
        },
        {"name": "convnext", "type": "convnext", "image_size": 1024, "image_mean": list(CLIP_MEAN)},
        {"name": "sam", "type": "sam", "image_size": 1024, "image_mean": list(CLIP_MEAN)},
        {"name": "det", "type": "eva02", "image_size": 1024, "image_mean": list(CLIP_MEAN)},
        {"name": "pix2struct", "type": "pix2struct", "image_size": 1024, "max_patches": 2048, "patch_size": 16},
    ]
    for spec in experts[1:4]:
        spec["image_std"] = list(CLIP_STD)
    processor = EagleImageProcessor(experts=experts, mode="released")
    image = Image.open(reference / "image.png")
    out = processor(image, return_tensors="pt")["pixel_values"]
    assert [tuple(t.shape) for t in out] == [(1, 3, 336, 336)] + [(1, 3, 1024, 1024)] * 3 + [(1, 2048, 770)]
    errors = {}
    for name, got in [
        ("pixel_1024", out[1]),
        ("clip_input", out[0]),
        ("pix2struct_flattened_patches", out[4]),
    ]:
        want = ref[name]
        errors[name] = (got - want).abs().max().item()
        assert errors[name] <= 1e-4 * want.abs().max().item(), (name, errors[name])
    for got in out[2:4]:
        torch.testing.assert_close(got, ref["pixel_1024"], rtol=0, atol=1e-4 * 2.2)
    real = int((out[4].abs().sum(-1) != 0).sum())
    assert real == 2025 == int(ref["pix2struct_attention_mask"].sum())
    print("released-mode max abs errors vs reference:", errors)


# ----------------------------------------------------------------------------------------------- config
def test_save_and_load_round_trip(tmp_path, wide):
    processor = EagleImageProcessor(experts=SMALL_EXPERTS, mode="released", resize_mode="resize", shared_size=64)
    processor.save_pretrained(tmp_path)
    loaded = EagleImageProcessor.from_pretrained(tmp_path)
    assert loaded.mode == "released" and loaded.resize_mode == "resize" and loaded.shared_size == 64
    assert [e["name"] for e in loaded.experts] == ["clip", "convnext", "pix2struct"]
    assert loaded.experts == processor.experts
    assert loaded.experts[2]["max_patches"] == 20 and loaded.experts[2]["patch_size"] == 8
    for a, b in zip(processor(wide)["pixel_values"], loaded(wide)["pixel_values"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_from_vision_experts():
    config_entries = [
        {
            "name": "clip",
            "type": "clip",
            "image_size": 32,
            "image_mean": list(CLIP_MEAN),
            "image_std": list(CLIP_STD),
            "pixel_unshuffle": 1,
            "config": {"hidden_size": 16},
        },
        {
            "name": "p2s",
            "type": "pix2struct",
            "image_size": 64,
            "max_patches": 12,
            "image_mean": None,
            "image_std": None,
            "pixel_unshuffle": 1,
            "config": {"patch_size": 8},
        },
    ]
    processor = EagleImageProcessor.from_vision_experts(config_entries, mode="per_expert")
    assert processor.experts[0] == {
        "name": "clip",
        "type": "clip",
        "image_size": 32,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
    }
    assert processor.experts[1]["max_patches"] == 12 and processor.experts[1]["patch_size"] == 8
    out = processor(random_image(10, 10), return_tensors="pt")["pixel_values"]
    assert out[0].shape == (1, 3, 32, 32) and out[1].shape == (1, 12, 2 + 3 * 64)


# ----------------------------------------------------------------------------------------------- errors
def test_validation_errors(processor, wide):
    with pytest.raises(ValueError, match="image 1 has size 0x0"):
        processor([wide, Image.new("RGB", (0, 0))])
    with pytest.raises(ValueError, match="image 0 has size 5x0"):
        processor(np.zeros((0, 5, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"image 1 has shape \(5, 5, 2\)"):
        processor([wide, np.zeros((5, 5, 2), dtype=np.uint8)])
    with pytest.raises(ValueError, match=r"experts\[0\].type is 'vit'; choose one of clip"):
        EagleImageProcessor(experts=[{"name": "x", "type": "vit", "image_size": 32}])
    with pytest.raises(ValueError, match="Unknown mode 'tiled'"):
        EagleImageProcessor(experts=SMALL_EXPERTS, mode="tiled")
    with pytest.raises(ValueError, match="Unknown mode 'tiled'"):
        processor(wide, mode="tiled")
    with pytest.raises(ValueError, match="Unknown resize_mode"):
        EagleImageProcessor(experts=SMALL_EXPERTS, resize_mode="crop")
    with pytest.raises(ValueError, match=r"experts\[0\].image_mean"):
        EagleImageProcessor(experts=[{"name": "c", "type": "clip", "image_size": 32}])
