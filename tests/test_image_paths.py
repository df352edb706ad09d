"""One image path: a file gives the model the same pixels through ``eagle generate``, ``eagle serve``, ``eagle eval``
(lmms-eval) and training, because all four decode it with the processor's ``EagleImageProcessor.load_image``; and a
truncated file is refused on every path, also while Pillow's process-wide ``LOAD_TRUNCATED_IMAGES`` is on (lmms-eval
turns it on when its tasks are imported)."""

import base64
import copy
import io
import json

import numpy as np
import pytest
import torch
from conftest import chat, require_module
from datasets import Dataset, load_from_disk
from PIL import Image, ImageFile

from eagle_hub.serving.adaptation import open_image_url
from eagle_hub.training.collator import make_collator
from eagle_hub.training.data import DataFormatError, features, load_hf_dataset, load_llava_json


def _noise(height: int, width: int, channels: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)


def _rgba(path):
    array = _noise(20, 28, 4, 1)
    array[..., 3] = np.linspace(0, 255, 28, dtype=np.uint8)[None, :]  # transparent on the left, opaque on the right
    Image.fromarray(array, mode="RGBA").save(path)


def _palette(path):
    image = Image.fromarray(_noise(18, 24, 3, 2)).quantize(16)
    image.info["transparency"] = 3  # one palette entry is transparent
    image.save(path, transparency=3)


def _exif_rotated(path):
    image = Image.fromarray(_noise(16, 30, 3, 3))
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": a viewer shows it 16 wide and 30 tall
    image.save(path, exif=exif, quality=90)


def _grey16(path):
    values = np.random.default_rng(4).integers(0, 65536, (22, 26), dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    image.save(path)


def _cmyk(path):
    Image.fromarray(_noise(20, 20, 4, 5), mode="CMYK").save(path, quality=90)


def _truncated(save):
    def write(path):
        whole = io.BytesIO()
        save(Image.fromarray(_noise(64, 64, 3, 6)), whole)
        path.write_bytes(whole.getvalue()[: len(whole.getvalue()) * 2 // 3])

    return write


FILES = {
    "rgba.png": _rgba,
    "palette.png": _palette,
    "exif-rotated.jpg": _exif_rotated,
    "grey16.png": _grey16,
    "cmyk.jpg": _cmyk,
}
TRUNCATED = {
    "truncated.png": _truncated(lambda image, out: image.save(out, "PNG")),
    "truncated.jpg": _truncated(lambda image, out: image.save(out, "JPEG", quality=95)),
}


NAIVE = {
    "rgba.png": lambda path: Image.open(path).convert("RGB"),
    "palette.png": lambda path: Image.open(path).convert("RGB"),
    "grey16.png": lambda path: Image.open(path).convert("RGB"),
    "exif-rotated.jpg": lambda path: np.asarray(Image.open(path).convert("RGB")),  # an array carries no EXIF
}


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("image-paths")
    for name, write in {**FILES, **TRUNCATED}.items():
        write(folder / name)
    return folder


@pytest.fixture(autouse=True)
def pillow_flag_restored():
    before = ImageFile.LOAD_TRUNCATED_IMAGES
    yield
    ImageFile.LOAD_TRUNCATED_IMAGES = before


def _pixels(processor, images) -> list[torch.Tensor]:
    """What the model is fed for ``images``: the processor called with a prompt, as every path calls it."""
    prompt = processor.apply_chat_template(chat("What is it?", len(images)), add_generation_prompt=True)
    return processor(images=images, text=[prompt], return_tensors="pt")["pixel_values"]


def _data_url(path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def through_generate(processor, path):
    # cli/generate.py: load_image on the --image path, then the processor with the chat template's prompt.
    return _pixels(processor, [processor.image_processor.load_image(str(path), where=f"--image {path}")])


def through_serve(processor, path):
    # serving/adaptation.py opens the data URL (header only); transformers' handler hands the image to the processor.
    return _pixels(processor, [open_image_url(_data_url(path), "image 0")])


def load_visuals(*args):
    # lmms-eval is the eval extra (not in the README's default set-up): its tests skip without it, and fail under CI.
    require_module("lmms_eval", install="bash scripts/setup.sh --eval")
    from eagle_hub.evaluation.lmms_model import load_visuals

    return load_visuals(*args)


def through_eval(processor, visual):
    # evaluation/lmms_model.py: a task's visual (a path, or a PIL image its doc_to_visual opened) to the processor.
    return _pixels(processor, load_visuals(processor.image_processor, [visual], "task doc 0"))


def _sample(path) -> dict:
    return {"id": path.stem, "image": path.name, "conversations": [
        {"from": "human", "value": "<image>\nWhat is it?"},
        {"from": "gpt", "value": "A picture."},
    ]}  # fmt: skip


def through_llava_training(processor, path, tmp_path):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "data.json").write_text(json.dumps([_sample(path)]))
    dataset, _ = load_llava_json(tmp_path / "data.json", path.parent)
    return make_collator(processor)(list(dataset))["pixel_values"]


def through_hf_training(processor, path, tmp_path):
    # A saved dataset that embeds the file's bytes, with the schema the package writes (training.synth's).
    row = {
        "id": path.stem,
        "images": [{"bytes": path.read_bytes(), "path": path.name}],
        "messages": [
            {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "What is it?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A picture."}]},
        ],
    }
    Dataset.from_list([row], features=features()).save_to_disk(str(tmp_path / "hf"))
    return make_collator(processor)(list(load_hf_dataset(tmp_path / "hf")))["pixel_values"]


def _assert_same(got: list[torch.Tensor], want: list[torch.Tensor], path: str):
    assert len(got) == len(want), path
    for expert, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape and torch.equal(a, b), f"{path}: expert {expert} differs"


@pytest.mark.parametrize("name", list(FILES))
@pytest.mark.parametrize("truncated_flag", [False, True], ids=["pillow-default", "load-truncated-on"])
def test_every_path_feeds_the_model_the_same_pixels(processor, image_files, tmp_path, name, truncated_flag):
    ImageFile.LOAD_TRUNCATED_IMAGES = truncated_flag
    path = image_files / name
    want = through_generate(processor, path)
    paths = {
        "serve": through_serve(processor, path),
        "training (llava json)": through_llava_training(processor, path, tmp_path / "llava"),
        "training (hf dataset with bytes)": through_hf_training(processor, path, tmp_path / "hf"),
    }
    for label, got in paths.items():
        _assert_same(got, want, f"{name} via {label}")
    # The file is one that a decoder of its own gets wrong (lmms_model's Image.open(...).convert("RGB") dropped the
    # transparency and clipped 16 bits; one that ignores EXIF keeps the stored orientation), so the equality above
    # holds because every path decodes with the processor's loader. CMYK has no such trap: only the equality.
    if name in NAIVE:
        naive = _pixels(processor, [NAIVE[name](path)])
        assert not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(naive, want))


@pytest.mark.parametrize("name", list(FILES))
@pytest.mark.parametrize("truncated_flag", [False, True], ids=["pillow-default", "load-truncated-on"])
def test_eval_feeds_the_model_the_pixels_generate_does(processor, image_files, name, truncated_flag):
    ImageFile.LOAD_TRUNCATED_IMAGES = truncated_flag
    path = image_files / name
    want = through_generate(processor, path)
    _assert_same(through_eval(processor, str(path)), want, f"{name} via eval (a path)")
    _assert_same(through_eval(processor, Image.open(path)), want, f"{name} via eval (a PIL image the task opened)")


@pytest.mark.parametrize("name", list(TRUNCATED))
@pytest.mark.parametrize("truncated_flag", [False, True], ids=["pillow-default", "load-truncated-on"])
def test_eval_refuses_a_truncated_file(processor, image_files, name, truncated_flag):
    ImageFile.LOAD_TRUNCATED_IMAGES = truncated_flag
    path = image_files / name
    refused = r"(corrupt or truncated|not a readable image)"
    with pytest.raises(ValueError, match=rf"task doc 0: image 0 \(.*{name}\).*{refused}"):
        through_eval(processor, str(path))
    with pytest.raises(ValueError, match=rf"task doc 0: image 0 .*{refused}"):
        through_eval(processor, Image.open(path))
    assert ImageFile.LOAD_TRUNCATED_IMAGES is truncated_flag


@pytest.mark.parametrize("name", list(TRUNCATED))
@pytest.mark.parametrize("truncated_flag", [False, True], ids=["pillow-default", "load-truncated-on"])
def test_a_truncated_file_is_refused_on_every_path(processor, image_files, tmp_path, name, truncated_flag):
    ImageFile.LOAD_TRUNCATED_IMAGES = truncated_flag
    path = image_files / name
    refused = r"(corrupt or truncated|not a readable image)"
    attempts = {
        "generate": (lambda: through_generate(processor, path), rf"--image .*{name}.*{refused}"),
        "serve": (lambda: through_serve(processor, path), rf"image 0 .*{refused}"),
        "training (llava json)": (
            lambda: through_llava_training(processor, path, tmp_path / "llava"),
            rf"training sample '{path.stem}' image 0 \(.*{name}\).*{refused}.*remove the sample",
        ),
        "training (hf dataset with bytes)": (
            lambda: through_hf_training(processor, path, tmp_path / "hf"),
            rf"training sample '{path.stem}' image 0 \({name}\).*{refused}.*remove the sample",
        ),
    }
    for label, (attempt, message) in attempts.items():
        with pytest.raises(ValueError, match=message):
            attempt()
        assert ImageFile.LOAD_TRUNCATED_IMAGES is truncated_flag, f"{label} changed Pillow's setting"
    # The training error is the data's own (a DataFormatError, which `eagle train` reports without a traceback).
    with pytest.raises(DataFormatError):
        through_llava_training(processor, path, tmp_path / "llava")


@pytest.mark.parametrize("path_name", ["training", "eval"])
def test_eval_and_training_apply_the_processors_pixel_cap(processor, image_files, tmp_path, path_name):
    capped = copy.deepcopy(processor)
    capped.image_processor.max_image_pixels = 100  # every test file is larger
    path = image_files / "rgba.png"
    if path_name == "eval":
        with pytest.raises(ValueError, match=r"task doc 0: image 0 .*rgba.png.*over the limit"):
            through_eval(capped, str(path))
    else:
        with pytest.raises(DataFormatError, match=r"training sample 'rgba' image 0 .*over the limit"):
            through_llava_training(capped, path, tmp_path)


def test_eval_refuses_what_is_not_an_image(processor):
    with pytest.raises(ValueError, match=r"but task doc 0 gave a dict .*video and audio tasks are not supported"):
        load_visuals(processor.image_processor, [{"path": "clip.mp4"}], "task doc 0")
    assert load_visuals(processor.image_processor, [None], "task doc 0") == []


def test_loaded_training_data_stays_undecoded(image_files, tmp_path):
    (tmp_path / "data.json").write_text(json.dumps([_sample(image_files / "rgba.png")]))
    dataset, _ = load_llava_json(tmp_path / "data.json", image_files)
    assert dataset.features["images"].feature.decode is False
    # map (and its cache) sees the file's path, not pixels: nothing is decoded or re-encoded until the collator.
    paths = dataset.map(lambda row: {"n": len(row["images"]), "path": row["images"][0]["path"]})
    assert paths[0]["path"] == str((image_files / "rgba.png").resolve()) and paths[0]["n"] == 1

    # A saved dataset of embedded images is re-labelled, not copied: no cache file appears beside it, its rows hold
    # the file's bytes, and its fingerprint (what datasets caches map results under) is not the decoded one's.
    row = {"id": "a", "images": [{"bytes": (image_files / "rgba.png").read_bytes(), "path": "rgba.png"}]}
    row["messages"] = [{"role": "user", "content": [{"type": "image", "text": None}]}]
    Dataset.from_list([row], features=features()).save_to_disk(str(tmp_path / "hf"))
    saved = sorted(p.name for p in (tmp_path / "hf").iterdir())
    loaded = load_hf_dataset(tmp_path / "hf")
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == saved
    assert loaded.features["images"].feature.decode is False
    assert loaded[0]["images"][0]["bytes"] == row["images"][0]["bytes"]
    assert loaded._fingerprint != load_from_disk(str(tmp_path / "hf"))._fingerprint
