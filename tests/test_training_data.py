"""The synthetic dataset generator (training/synth.py) and the LLaVA JSON / HF dataset loaders (training/data.py)."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from datasets import load_from_disk
from PIL import Image

from eagle_hub.modeling_eagle import EagleImageProcessor
from eagle_hub.modeling_eagle.hub_folder import build_processor
from eagle_hub.training import synth
from eagle_hub.training.data import DataFormatError, load_data, load_hf_dataset, load_images, load_llava_json

SIZE = 96


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("synth") / "data"
    manifest = synth.generate(path, n=30, seed=3, image_size=SIZE, held_out=0.2)
    return path, manifest


def _read(path: Path):
    return json.loads(path.read_text())


def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------- generator


def test_word_list_and_colours():
    assert len(synth.WORDS) >= 50 and len(set(synth.WORDS)) == len(synth.WORDS)
    assert not set(synth.WORDS) & (set(synth.SHAPES) | set(synth.COLOURS))
    assert len(synth.COLOURS) >= 6 and len(set(synth.COLOURS.values())) == len(synth.COLOURS)
    assert len(synth.SHAPES) >= 4


def test_generation_is_deterministic(tmp_path, synth_dir):
    path, _ = synth_dir
    synth.generate(tmp_path / "again", n=30, seed=3, image_size=SIZE, held_out=0.2)
    first, second = _files(path), _files(tmp_path / "again")
    assert first.keys() == second.keys()
    assert all(first[name] == second[name] for name in first if not name.endswith("state.json"))
    synth.generate(tmp_path / "other", n=30, seed=4, image_size=SIZE, held_out=0.2)
    assert (tmp_path / "other" / "sft.json").read_bytes() != first["sft.json"]
    with pytest.raises(FileExistsError, match="overwrite"):
        synth.generate(tmp_path / "again", n=4, seed=3)
    synth.generate(tmp_path / "again", n=4, seed=3, image_size=SIZE, overwrite=True)
    assert len(list((tmp_path / "again" / "images").iterdir())) == 4


def test_manifest_counts(synth_dir):
    path, manifest = synth_dir
    assert manifest == _read(path / "manifest.json")
    assert manifest["n_images"] == 30 and len(list((path / "images").glob("*.png"))) == 30
    for split in ("sft", "captions", "sft_heldout"):
        records = _read(path / f"{split}.json")
        info = manifest["splits"][split]
        assert info["records"] == len(records) == len(load_from_disk(str(path / "hf" / split)))
        assert sum(info["types"].values()) == len(records)
    assert manifest["splits"]["captions"]["images"] == 24 and manifest["splits"]["sft_heldout"]["images"] == 6
    assert set(manifest["splits"]["sft"]["types"]) == set(synth.QUESTION_TYPES)
    assert all(count >= 5 for count in manifest["splits"]["sft"]["types"].values())  # balanced types


def test_both_formats_hold_the_same_records(synth_dir):
    path, _ = synth_dir
    for split in ("sft", "captions", "sft_heldout"):
        records = _read(path / f"{split}.json")
        hf = load_from_disk(str(path / "hf" / split))
        llava, skipped = load_llava_json(path / f"{split}.json", path)
        assert skipped == 0
        assert hf["id"] == [r["id"] for r in records] == llava["id"]
        assert hf["answer"] == [r["conversations"][1]["value"] for r in records]
        assert hf["type"] == [r.get("type", "caption") for r in records]
        assert hf["messages"] == llava["messages"]
        for i in (0, len(records) - 1):
            from_file = np.asarray(Image.open(path / records[i]["image"]).convert("RGB"))
            assert np.array_equal(np.asarray(hf[i]["images"][0]), from_file)
            assert np.array_equal(np.asarray(_decoded(llava[i])[0]), from_file)
    heldout = _read(path / "sft_heldout.json")
    assert all(r["type"] in synth.QUESTION_TYPES for r in heldout)
    caption = _read(path / "captions.json")[0]["conversations"]
    assert caption[0] == {"from": "human", "value": "<image>\n"} and caption[1]["value"].endswith(".")


def test_conversations_hold_all_of_an_images_questions(tmp_path):
    path = tmp_path / "conversations"
    manifest = synth.generate(
        path, n=20, seed=1, image_size=SIZE, held_out=0.25, questions_per_image=5, conversations=True
    )
    sft, metadata = _read(path / "sft.json"), {m["image"]: m for m in _read(path / "metadata.json")}
    assert len(sft) == manifest["splits"]["sft"]["images"] == 15  # one record per training image
    hf = load_from_disk(str(path / "hf" / "sft"))
    llava, skipped = load_llava_json(path / "sft.json", path)
    assert skipped == 0 and llava["messages"] == hf["messages"]
    shape_counts = []
    for record, row in zip(sft, hf):
        kinds, turns = record["type"].split("+"), record["conversations"]
        meta = metadata[record["image"]]
        applicable = set(synth.QUESTION_TYPES) - (set() if meta["text"] else {"word"})
        missing, shape_counts = applicable - set(kinds), shape_counts + [len(meta["shapes"])]
        assert len(set(kinds)) == len(kinds)
        # All that apply, except that with one shape the colour question names the shape question's answer and
        # the position question names the colour question's.
        assert missing in ([set()] if len(meta["shapes"]) > 1 else [{"colour"}, {"shape", "position"}])
        assert len(turns) == 2 * len(kinds)
        questions, answers = [t["value"] for t in turns[0::2]], [t["value"] for t in turns[1::2]]
        for i, answer in enumerate(answers):
            assert not any(answer in re.findall(r"\w+", q) for j, q in enumerate(questions) if j != i)
        assert turns[0]["value"].startswith("<image>\n") and not any("<image>" in t["value"] for t in turns[1:])
        assert row["answer"] == "\n".join(turn["value"] for turn in turns[1::2])
        assert sum(block["type"] == "image" for m in row["messages"] for block in m["content"]) == 1
    assert set(shape_counts) == {1, 2, 3}
    assert sum(manifest["splits"]["sft"]["types"].values()) == sum(len(r["type"].split("+")) for r in sft)
    heldout = _read(path / "sft_heldout.json")  # evaluation asks one question at a time
    assert all(len(r["conversations"]) == 2 and r["type"] in synth.QUESTION_TYPES for r in heldout)


def test_focus_types_get_a_single_question_split_of_their_own(tmp_path):
    path = tmp_path / "focus"
    manifest = synth.generate(
        path,
        n=20,
        seed=1,
        image_size=SIZE,
        held_out=0.25,
        questions_per_image=5,
        conversations=True,
        focus_types=("word",),
    )
    words, metadata = _read(path / "sft_word.json"), {m["image"]: m for m in _read(path / "metadata.json")}
    with_text = [m["image"] for m in metadata.values() if m["split"] == "train" and m["text"]]
    assert [r["image"] for r in words] == with_text and with_text  # every training image with a word, once
    for record in words:
        assert record["type"] == "word" and len(record["conversations"]) == 2
        assert record["conversations"][1]["value"] == metadata[record["image"]]["text"]["value"]
    hf = load_from_disk(str(path / "hf" / "sft_word"))
    assert hf["answer"] == [r["conversations"][1]["value"] for r in words]
    assert manifest["focus_types"] == ["word"] and manifest["splits"]["sft_word"]["types"] == {"word": len(words)}
    # The other splits are what they are without the focus split.
    plain = synth.generate(
        tmp_path / "plain", n=20, seed=1, image_size=SIZE, held_out=0.25, questions_per_image=5, conversations=True
    )
    assert (tmp_path / "plain" / "sft.json").read_bytes() == (path / "sft.json").read_bytes()
    assert plain["splits"]["sft"] == manifest["splits"]["sft"]
    # Overwriting without the focus type leaves no stale focus split behind.
    synth.generate(path, n=20, seed=1, image_size=SIZE, overwrite=True)
    assert not (path / "sft_word.json").exists() and not (path / "hf" / "sft_word").exists()
    with pytest.raises(ValueError, match="focus_types \\['words'\\] are not question types"):
        synth.generate(tmp_path / "bad", n=4, image_size=SIZE, focus_types=("words",))


def test_uniform_scenes_ask_what_is_drawn(tmp_path):
    path = tmp_path / "uniform"
    manifest = synth.generate(
        path, n=40, seed=2, image_size=SIZE, held_out=0.25, questions_per_image=5, conversations=True, scene="uniform"
    )
    assert manifest["scene"] == "uniform"
    metadata = {m["image"]: m for m in _read(path / "metadata.json")}
    for name, meta in metadata.items():
        shapes = meta["shapes"]
        assert len({(s["shape"], s["colour"]) for s in shapes}) == 1 and 1 <= len(shapes) <= 3
        pixels = np.asarray(Image.open(path / name))
        assert all(tuple(pixels[s["center"][1], s["center"][0]]) == synth.COLOURS[s["colour"]] for s in shapes)
    captions = {r["image"]: r["conversations"][1]["value"] for r in _read(path / "captions.json")}
    for record in _read(path / "sft.json") + _read(path / "sft_heldout.json"):
        meta = metadata[record["image"]]
        shapes, turns = meta["shapes"], record["conversations"]
        sides = {s["position"] for s in shapes}
        applicable = {"colour", "shape", "count"} | ({"position"} if len(sides) == 1 else set())
        applicable |= {"word"} if meta["text"] else set()
        kinds = record["type"].split("+")
        if meta["split"] == "train":  # nothing names another question's answer: a conversation holds them all
            assert set(kinds) == applicable
        expected = {
            "colour": ("What colour are the shapes?", shapes[0]["colour"]),
            "shape": ("Which shape is drawn?", shapes[0]["shape"]),
            "count": ("How many shapes are there?", str(len(shapes))),
            "position": ("Which side are the shapes on, left or right?", min(sides)),
            "word": ("What word is written in the image?", (meta["text"] or {}).get("value")),
        }
        for kind, question, answer in zip(kinds, turns[0::2], turns[1::2]):
            assert (question["value"].removeprefix("<image>\n"), answer["value"]) == expected[kind]
        if record["image"] in captions:
            number = {1: "A" if shapes[0]["colour"][0] not in "aeiou" else "An", 2: "Two", 3: "Three"}[len(shapes)]
            plural = "s" if len(shapes) > 1 else ""
            assert captions[record["image"]].startswith(
                f"{number} {shapes[0]['colour']} {shapes[0]['shape']}{plural}."
            )
    assert {len(m["shapes"]) for m in metadata.values()} == {1, 2, 3}
    assert set(manifest["splits"]["sft_heldout"]["types"]) == set(synth.QUESTION_TYPES)
    with pytest.raises(ValueError, match="scene must be one of \\['mixed', 'uniform'\\], got 'busy'"):
        synth.generate(tmp_path / "bad", n=4, image_size=SIZE, scene="busy")


def test_held_out_images_are_disjoint(synth_dir):
    path, _ = synth_dir
    train = {r["image"] for split in ("sft", "captions") for r in _read(path / f"{split}.json")}
    held = {r["image"] for r in _read(path / "sft_heldout.json")}
    assert held and train and not held & train
    assert len(train | held) == 30


def test_answers_match_the_pixels(synth_dir):
    path, _ = synth_dir
    metadata = {m["image"]: m for m in _read(path / "metadata.json")}
    images = {}
    for meta in metadata.values():
        pixels = np.asarray(Image.open(path / meta["image"]))
        images[meta["image"]] = pixels
        for shape in meta["shapes"]:
            x, y = shape["center"]
            assert tuple(pixels[y, x]) == synth.COLOURS[shape["colour"]], (meta["image"], shape)
            x0, y0, x1, y1 = shape["box"]
            half = (0, SIZE / 2) if shape["position"] == "left" else (SIZE / 2, SIZE)
            assert half[0] <= x0 and x1 <= half[1]
        boxes = [s["box"] for s in meta["shapes"]] + ([meta["text"]["box"]] if meta["text"] else [])
        for i, a in enumerate(boxes):  # nothing overlaps
            for b in boxes[i + 1 :]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
        if meta["text"]:
            x0, y0, x1, y1 = meta["text"]["box"]
            ink = (pixels[y0:y1, x0:x1] == synth.TEXT_COLOUR).all(-1).sum()
            assert ink > 20 and ink == (pixels == synth.TEXT_COLOUR).all(-1).sum()

    seen = set()
    for record in _read(path / "sft.json") + _read(path / "sft_heldout.json"):
        meta, kind = metadata[record["image"]], record["type"]
        question = record["conversations"][0]["value"].removeprefix("<image>\n")
        answer = record["conversations"][1]["value"]
        shapes = meta["shapes"]
        seen.add(kind)
        if kind == "count":
            assert question == "How many shapes are there?" and answer == str(len(shapes))
        elif kind == "colour":
            (name,) = re.fullmatch(r"What colour is the (\w+)\?", question).groups()
            (shape,) = [s for s in shapes if s["shape"] == name]
            x, y = shape["center"]
            assert answer == shape["colour"] and tuple(images[record["image"]][y, x]) == synth.COLOURS[answer]
        elif kind == "shape":
            (colour,) = re.fullmatch(r"What shape is the (\w+) object\?", question).groups()
            (shape,) = [s for s in shapes if s["colour"] == colour]
            assert answer == shape["shape"]
        elif kind == "position":
            (colour,) = re.fullmatch(r"Is the (\w+) object on the left or the right\?", question).groups()
            (shape,) = [s for s in shapes if s["colour"] == colour]
            centre = shape["center"][0]
            assert answer == shape["position"] == ("left" if centre < SIZE / 2 else "right")
        elif kind == "word":
            assert question == "What word is written in the image?"
            assert answer == meta["text"]["value"] and answer in synth.WORDS
    assert seen == set(synth.QUESTION_TYPES)


# ----------------------------------------------------------------------------------------------- loaders


def _decoded(row) -> list:
    """A loaded row's images, decoded as the training collator decodes them (the loaders leave them undecoded)."""
    return load_images(EagleImageProcessor(), row["images"], f"row {row.get('id')!r}")


def _image(folder: Path, name: str, colour=(200, 30, 30), mode="RGB") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (24, 20), colour if mode == "RGB" else 128).save(folder / name)
    return name


def _turns(*pairs):
    return [{"from": who, "value": value} for who, value in pairs]


def test_llava_json_to_trl_messages(tmp_path):
    images = tmp_path / "imgs"
    a, b, grey = _image(images, "a.png"), _image(images, "b.png", (0, 0, 200)), _image(images, "g.png", mode="L")
    records = [
        {"id": "single", "image": a, "conversations": _turns(("human", "<image>\nWhat is it?"), ("gpt", "red"))},
        {
            "id": "multi-turn",
            "image": grey,
            "conversations": _turns(
                ("system", "Answer briefly."),
                ("human", "<image>\nColour?"),
                ("gpt", "grey"),
                ("human", "And the size?"),
                ("gpt", "small"),
            ),
        },
        {"id": "text-only", "conversations": _turns(("human", "Hi"), ("gpt", "Hello!"))},
        {
            "id": 7,
            "image": [a, b],
            "conversations": _turns(("human", "Compare <image>\nwith <image>\n, please."), ("gpt", "red vs blue")),
        },
        {"id": "caption", "image": b, "conversations": _turns(("human", "<image>\n"), ("gpt", "A blue image."))},
    ]
    (tmp_path / "data.json").write_text(json.dumps(records))
    dataset, skipped = load_llava_json(tmp_path / "data.json", images)
    assert skipped == 0 and dataset["id"] == ["single", "multi-turn", "text-only", "7", "caption"]

    def text(value):
        return {"type": "text", "text": value}

    image = {"type": "image", "text": None}
    assert dataset["messages"] == [
        [{"role": "user", "content": [image, text("What is it?")]}, {"role": "assistant", "content": [text("red")]}],
        [
            {"role": "system", "content": [text("Answer briefly.")]},
            {"role": "user", "content": [image, text("Colour?")]},
            {"role": "assistant", "content": [text("grey")]},
            {"role": "user", "content": [text("And the size?")]},
            {"role": "assistant", "content": [text("small")]},
        ],
        [{"role": "user", "content": [text("Hi")]}, {"role": "assistant", "content": [text("Hello!")]}],
        [
            {"role": "user", "content": [text("Compare "), image, text("with "), image, text(", please.")]},
            {"role": "assistant", "content": [text("red vs blue")]},
        ],
        [{"role": "user", "content": [image]}, {"role": "assistant", "content": [text("A blue image.")]}],
    ]
    rows = list(dataset)
    assert [len(row["images"]) for row in rows] == [1, 1, 0, 2, 1]
    assert all(im.mode == "RGB" for row in rows for im in _decoded(row))  # the greyscale PNG too
    assert _decoded(rows[3])[1].getpixel((0, 0)) == (0, 0, 200)

    # JSON lines, the image folder defaulting to the file's folder, blank lines ignored
    (images / "data.jsonl").write_text("\n".join(json.dumps(r) for r in records[:2]) + "\n\n")
    lines, _ = load_llava_json(images / "data.jsonl")
    assert lines["messages"] == dataset["messages"][:2]
    assert len(load_llava_json(tmp_path / "data.json", images, max_samples=3)[0]) == 3


def test_llava_bad_records_are_named_or_skipped(tmp_path):
    good = _image(tmp_path, "ok.png")
    ok = {"id": "ok", "image": good, "conversations": _turns(("human", "<image>\nQ"), ("gpt", "A"))}
    bad = [
        ({"id": "abc", "image": "images/x.png", "conversations": ok["conversations"]}, "image 'images/x.png' not"),
        ({"id": "noconv", "image": good}, 'missing "conversations"'),
        ({"id": "twice", "image": good, "conversations": _turns(("human", "<image><image>Q"), ("gpt", "A"))}, "2 <"),
        ({"id": "none", "conversations": _turns(("human", "<image>\nQ"), ("gpt", "A"))}, "but 0 image"),
        ({"id": "role", "conversations": _turns(("robot", "Q"))}, "unknown role 'robot'"),
    ]
    for record, message in bad:
        (tmp_path / "sft.json").write_text(json.dumps([ok, record, ok]))
        with pytest.raises(DataFormatError) as error:
            load_llava_json(tmp_path / "sft.json", tmp_path)
        assert f"sft.json record 1 (id '{record['id']}'): " in str(error.value)
        assert message in str(error.value)
    assert f"not found under {tmp_path.resolve()}" in str(
        pytest.raises(DataFormatError, load_llava_json, _write(tmp_path / "m.json", [bad[0][0]]), tmp_path).value
    )

    lines = [json.dumps(ok), '{"id": "broken", "conversations": [', *(json.dumps(r) for r, _ in bad), json.dumps(ok)]
    (tmp_path / "sft.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"sft\.jsonl record 1 \(line 2\): malformed JSON line"):
        load_llava_json(tmp_path / "sft.jsonl", tmp_path)
    dataset, skipped = load_llava_json(tmp_path / "sft.jsonl", tmp_path, skip_bad=True)
    assert skipped == 1 + len(bad) and len(dataset) == 2 and dataset["id"] == ["ok", "ok"]
    assert len(load_data({"format": "llava", "path": "sft.jsonl", "skip_bad": True}, tmp_path)) == 2

    with pytest.raises(DataFormatError, match="malformed JSON at line 1"):
        load_llava_json(_write(tmp_path / "broken.json", None, raw="[{"), tmp_path)
    with pytest.raises(DataFormatError, match="no usable records"):
        load_llava_json(_write(tmp_path / "all_bad.json", [bad[1][0]]), tmp_path, skip_bad=True)


def _write(path: Path, records, raw=None) -> Path:
    path.write_text(raw if raw is not None else json.dumps(records))
    return path


def test_load_data_and_hf_sources(tmp_path, synth_dir):
    path, manifest = synth_dir
    hf = load_data({"format": "hf", "path": "data/hf/sft", "max_samples": 5}, path.parent)
    assert len(hf) == 5 and {"images", "messages", "type", "answer"} <= set(hf.column_names)
    assert _decoded(hf[0])[0].mode == "RGB"
    llava = load_data({"format": "llava", "path": "sft.json", "image_folder": "."}, path)
    assert len(llava) == manifest["splits"]["sft"]["records"]
    assert llava["messages"] == load_hf_dataset(path / "hf" / "sft")["messages"]

    # a JSON lines file with image paths relative to it, read by datasets.load_dataset
    _image(tmp_path / "imgs", "a.png")
    row = {"images": ["imgs/a.png"], "messages": [{"role": "user", "content": "Hi"}]}
    (tmp_path / "rows.jsonl").write_text(json.dumps(row) + "\n")
    from_json = load_data({"format": "hf", "path": "rows.jsonl"}, tmp_path)
    image = _decoded(from_json[0])[0]
    assert image.size == (24, 20) and image.mode == "RGB"

    (tmp_path / "wrong.jsonl").write_text(json.dumps({"text": "no images"}) + "\n")
    with pytest.raises(DataFormatError, match=r"missing column\(s\) \['images', 'messages'\]"):
        load_hf_dataset(tmp_path / "wrong.jsonl")
    with pytest.raises(DataFormatError, match="format must be one of"):
        load_data({"format": "sharegpt", "path": "x"}, tmp_path)
    with pytest.raises(FileNotFoundError):
        load_data({"format": "llava", "path": "missing.json"}, tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_data({"format": "hf", "path": "missing_dir/data"}, tmp_path)


def test_trl_collator_accepts_loaded_records(tokenizer, synth_dir):
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from eagle_hub.training.collator import make_collator

    path, _ = synth_dir
    config = tiny_config(tokenizer)
    processor = build_processor(config, tokenizer)
    dataset, _ = load_llava_json(path / "sft.json", path)
    collator = DataCollatorForVisionLanguageModeling(processor, assistant_only_loss=True)
    examples = [{**dataset[i], "images": _decoded(dataset[i])} for i in range(4)]
    batch = collator(examples)
    # The package's collator takes the loaded (undecoded) rows as they are and decodes them the same way.
    ours = make_collator(processor)([dataset[i] for i in range(4)])
    assert all(torch.equal(a, b) for a, b in zip(ours["pixel_values"], batch["pixel_values"], strict=True))
    assert torch.equal(ours["input_ids"], batch["input_ids"])

    image_id = processor.image_token_id
    n_image_tokens = (batch["input_ids"] == image_id).sum(-1)
    assert n_image_tokens.tolist() == [config.image_seq_length] * 4
    assert len(batch["pixel_values"]) > 0
    labels = batch["labels"]
    assert labels.shape == batch["input_ids"].shape
    assert ((labels != -100).sum(-1) > 0).all()
    assert not (labels == image_id).any()  # image placeholders are not supervised
    supervised = tokenizer.decode(labels[0][labels[0] != -100])
    assert examples[0]["messages"][1]["content"][0]["text"] in supervised
