"""A synthetic visual question-answering and captioning dataset with exact answers, for smoke-training Eagle.

Each image shows 1-3 coloured shapes in a 2x2 grid of slots on a light background and, in about half the images, a
word in a band at the bottom. Every question has exactly one short answer. Two kinds of scene (``scene=``):

``"mixed"``: distinct shapes in distinct colours; a question names one object by one attribute and asks another.

* ``colour``   -- "What colour is the circle?" -> "red"
* ``shape``    -- "What shape is the red object?" -> "circle"
* ``position`` -- "Is the red object on the left or the right?" -> "left" (every shape lies wholly in one half)

``"uniform"``: 1-3 copies of one shape in one colour; the questions ask what is drawn, so no object has to be told
from another (the quickstart's scenes: a small from-scratch LLM does not learn in minutes to look one object up by
another's attribute).

* ``colour``   -- "What colour are the shapes?" -> "red"
* ``shape``    -- "Which shape is drawn?" -> "circle"
* ``position`` -- "Which side are the shapes on, left or right?" -> "left" (only when all are on one side)

In both:

* ``count``    -- "How many shapes are there?" -> "2"
* ``word``     -- "What word is written in the image?" -> "apple"

``generate`` writes the same records in two formats:

* the authors' LLaVA JSON (``sft.json``, ``captions.json``, ``sft_heldout.json``) with ``images/xxxxx.png``;
* Hugging Face ``datasets`` folders (``hf/sft``, ``hf/captions``, ``hf/sft_heldout``) in TRL's vision-language
  format (``images`` + ``messages``), with ``type`` and ``answer`` columns for evaluation.

``validation=0.1`` carves a validation split (``sft_validation.json``, ``hf/sft_validation``) out of the training
images: the last tenth of them before the held-out ones, asked one question at a time like the held-out split and in
no training split. A choice made on it (``eagle search-experts``) leaves the held-out split for the report.

``focus_types=("word",)`` adds ``sft_word.json`` / ``hf/sft_word``: the word question of every training image that
has one, alone, for a stage that trains on that type only (the quickstart's stage 3a).

``metadata.json`` records what was drawn where (shape centres and boxes, text box) and ``manifest.json`` the counts.
Everything is deterministic given the seed: the same arguments give byte-identical JSON and PNG files.
"""

import io
import json
import logging
import math
import random
import re
import shutil
from collections import Counter
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

logger = logging.getLogger(__name__)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (30, 70, 220),
    "yellow": (240, 200, 0),
    "orange": (245, 130, 0),
    "purple": (140, 50, 190),
    "pink": (245, 105, 180),
    "brown": (130, 80, 30),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond")

# Short common words; none is a shape or colour name, so a word never reads as an answer to another question.
WORDS: tuple[str, ...] = (
    "apple", "bird", "boat", "book", "bread", "bus", "cake", "cat", "chair", "cloud",
    "cup", "dance", "dog", "door", "egg", "fish", "frog", "garden", "goat", "happy",
    "hat", "horse", "house", "juice", "key", "kite", "lamp", "leaf", "lemon", "map",
    "milk", "moon", "music", "night", "nose", "ocean", "owl", "paper", "pen", "piano",
    "queen", "rain", "river", "road", "sea", "ship", "smile", "snow", "sock", "sun",
    "table", "tea", "tiger", "toy", "train", "tree", "water", "wind", "wolf", "zebra",
)  # fmt: skip

QUESTION_TYPES: tuple[str, ...] = ("colour", "shape", "count", "position", "word")
SCENES: tuple[str, ...] = ("mixed", "uniform")
_NUMBERS = {2: "two", 3: "three"}

TEXT_COLOUR = (20, 20, 20)
# Two columns, so that every shape is on the left or the right, and shapes as large as the slots allow: at the
# quickstart's 64 px a from-scratch tower learns to tell larger shapes apart faster (a probe: 82% vs 72%).
_COLUMNS, _ROWS = 2, 2
_SHAPE_REGION = 0.7  # shapes live in the top 70% of the image, the word in the band below
_TEXT_SCALE = 40  # bitmap-font glyphs are image_size // 40 times their 6x11 pixels: 9 px wide at the model's 64 px


def _regular_polygon(cx: float, cy: float, radius: float, points: int, inner: float | None = None, rotation=-90):
    vertices = []
    step = 360 / points
    for i in range(points):
        angle = math.radians(rotation + i * step)
        vertices.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        if inner is not None:
            angle = math.radians(rotation + i * step + step / 2)
            vertices.append((cx + inner * radius * math.cos(angle), cy + inner * radius * math.sin(angle)))
    return vertices


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], rgb) -> None:
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    if shape == "circle":
        draw.ellipse(box, fill=rgb)
    elif shape == "square":
        inset = round(r * 0.1)
        draw.rectangle((x0 + inset, y0 + inset, x1 - inset, y1 - inset), fill=rgb)
    elif shape == "triangle":  # apex up, base at the bottom; the box centre is inside
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=rgb)
    elif shape == "star":
        draw.polygon(_regular_polygon(cx, cy, r, 5, inner=0.45), fill=rgb)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=rgb)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _render_text(text: str, max_width: int, max_height: int, scale: int) -> Image.Image:
    """``text`` in Pillow's built-in bitmap font, upscaled with NEAREST: crisp, binary and identical everywhere."""
    font = ImageFont.load_default_imagefont()
    left, top, right, bottom = font.getbbox(text)
    small = Image.new("L", (right - left, bottom - top), 0)
    ImageDraw.Draw(small).text((-left, -top), text, fill=255, font=font)
    scale = max(1, min(scale, max_width // small.width, max_height // small.height))
    return small.resize((small.width * scale, small.height * scale), Image.NEAREST)


def _describe(shape: dict) -> str:
    return f"{shape['colour']} {shape['shape']}"


def _caption(shapes: list[dict], text: dict | None) -> str:
    counts = Counter(_describe(s) for s in shapes)  # in drawing order
    names = [
        f"{_NUMBERS[n]} {name}s" if n > 1 else f"{'an' if name[0] in 'aeiou' else 'a'} {name}"
        for name, n in counts.items()
    ]
    body = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    caption = body[0].upper() + body[1:] + "."
    if text is not None:
        caption += f" The word '{text['value']}' is written in the picture."
    return caption


def draw_image(rng: random.Random, image_size: int, scene: str = "mixed") -> tuple[Image.Image, dict]:
    """One random image and its metadata (shapes left to right, then top to bottom; the text, if any)."""
    size = image_size
    background = tuple(rng.randint(232, 255) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)

    n_shapes = rng.randint(1, 3)
    slots = sorted(rng.sample([(c, r) for c in range(_COLUMNS) for r in range(_ROWS)], n_shapes))
    if scene == "uniform":
        kinds, colours = [rng.choice(SHAPES)] * n_shapes, [rng.choice(sorted(COLOURS))] * n_shapes
    else:
        kinds, colours = rng.sample(SHAPES, n_shapes), rng.sample(sorted(COLOURS), n_shapes)
    cell_w, cell_h = size / _COLUMNS, size * _SHAPE_REGION / _ROWS
    gap = max(2, size // 40)
    shapes = []
    for (column, row), kind, colour in zip(slots, kinds, colours):
        extent = int(min(cell_w, cell_h) - 2 * gap)
        side = rng.randint(max(6, int(extent * 0.75)), max(6, extent))
        x0 = int(column * cell_w) + gap + rng.randint(0, max(0, int(cell_w) - 2 * gap - side))
        y0 = int(row * cell_h) + gap + rng.randint(0, max(0, int(cell_h) - 2 * gap - side))
        box = (x0, y0, x0 + side, y0 + side)
        _draw_shape(draw, kind, box, COLOURS[colour])
        shapes.append(
            {
                "shape": kind,
                "colour": colour,
                "rgb": list(COLOURS[colour]),
                "box": list(box),
                "center": [(box[0] + box[2]) // 2, (box[1] + box[3]) // 2],
                "position": ("left", "right")[column],
            }
        )

    text = None
    if rng.random() < 0.5:
        value = rng.choice(WORDS)
        band_top = int(size * _SHAPE_REGION) + gap
        band_height = size - band_top - gap
        glyphs = _render_text(value, size - 2 * gap, band_height, scale=max(1, size // _TEXT_SCALE))
        x = gap + rng.randint(0, size - 2 * gap - glyphs.width)
        y = band_top + rng.randint(0, band_height - glyphs.height)
        image.paste(TEXT_COLOUR, (x, y, x + glyphs.width, y + glyphs.height), glyphs)
        text = {"value": value, "box": [x, y, x + glyphs.width, y + glyphs.height]}

    return image, {"background": list(background), "shapes": shapes, "text": text}


def _questions(meta: dict, pick: int, scene: str = "mixed") -> dict[str, tuple[str, str]]:
    """Every applicable question type -> (question, answer). In a mixed scene the colour question is about one
    shape, the shape and position questions about another where there are two, so that a conversation can hold them
    all without one question naming another's answer."""
    shapes, text = meta["shapes"], meta["text"]
    questions = {}
    if scene == "uniform":
        questions["colour"] = ("What colour are the shapes?", shapes[0]["colour"])
        questions["shape"] = ("Which shape is drawn?", shapes[0]["shape"])
        questions["count"] = ("How many shapes are there?", str(len(shapes)))
        sides = {s["position"] for s in shapes}
        if len(sides) == 1:
            questions["position"] = ("Which side are the shapes on, left or right?", sides.pop())
    elif shapes:
        a, b = shapes[pick % len(shapes)], shapes[(pick + 1) % len(shapes)]
        questions["colour"] = (f"What colour is the {a['shape']}?", a["colour"])
        questions["shape"] = (f"What shape is the {b['colour']} object?", b["shape"])
        questions["count"] = ("How many shapes are there?", str(len(shapes)))
        questions["position"] = (f"Is the {b['colour']} object on the left or the right?", b["position"])
    if text is not None:
        questions["word"] = ("What word is written in the image?", text["value"])
    return questions


def _names_an_answer(kind: str, others: list[str], questions: dict) -> bool:
    """Whether ``kind``'s question names an answer of ``others`` or theirs name its answer: in a conversation the
    later turn could copy the earlier one instead of looking (with one shape, "What colour is the star?" answers
    "What shape is the red object?")."""
    words = {k: set(re.findall(r"\w+", questions[k][0])) for k in (kind, *others)}
    return any(questions[kind][1] in words[o] or questions[o][1] in words[kind] for o in others)


def _pick_types(rng: random.Random, questions: dict, counts: Counter, k: int, conversation: bool) -> list[str]:
    """Up to ``k`` of the least-used applicable types so far (ties broken at random), which keeps the types
    balanced; for a conversation, none whose question and another's answer meet."""
    chosen = []
    for kind in sorted(sorted(questions), key=lambda t: (counts[t], rng.random())):
        if len(chosen) < k and not (conversation and _names_an_answer(kind, chosen, questions)):
            chosen.append(kind)
    counts.update(chosen)
    return chosen


def _llava_record(record_id: str, image: str, turns: list[tuple[str, str]], **extra) -> dict:
    """One LLaVA record of (question, answer) turns, the image in the first; an empty question gives the
    pretraining (caption) style ``"<image>\\n"`` human turn."""
    conversations = []
    for index, (question, answer) in enumerate(turns):
        human = f"<image>\n{question}" if index == 0 else question
        conversations += [{"from": "human", "value": human}, {"from": "gpt", "value": answer}]
    return {"id": record_id, "image": image, "conversations": conversations, **extra}


def _hf_row(record_id: str, png: bytes, image: str, turns: list[tuple[str, str]], kind: str) -> dict:
    """The same record in TRL's format; ``answer`` holds the replies, one line each."""
    messages = []
    for index, (question, answer) in enumerate(turns):
        user = [{"type": "image", "text": None}] if index == 0 else []
        if question:
            user.append({"type": "text", "text": question})
        messages += [
            {"role": "user", "content": user},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ]
    return {
        "id": record_id,
        "images": [{"bytes": png, "path": image}],
        "messages": messages,
        "type": kind,
        "answer": "\n".join(answer for _, answer in turns),
    }


_OUTPUTS = ("images", "hf", "sft.json", "captions.json", "sft_heldout.json", "metadata.json", "manifest.json")


def generate(
    output_dir,
    n: int = 1000,
    seed: int = 0,
    image_size: int = 128,
    held_out: float = 0.1,
    questions_per_image: int = 2,
    conversations: bool = False,
    focus_types: tuple[str, ...] = (),
    scene: str = "mixed",
    overwrite: bool = False,
    validation: float = 0.0,
) -> dict:
    """Draw ``n`` images into ``output_dir`` and write the captioning and question-answering splits in both formats.

    Args:
        output_dir: folder to write into (created if missing).
        n: number of images; the last ``round(n * held_out)`` are held out (questions only, no captions).
        seed: everything is a function of the seed.
        image_size: side of the square images, in pixels (>= 48).
        held_out: fraction of images whose questions go to ``sft_heldout`` (disjoint images).
        questions_per_image: questions per image, each of a different type (fewer if fewer apply, or, in a
            conversation, where one question would name another's answer).
        conversations: put a training image's questions in one multi-turn record (type ``"colour+count"``, in
            the order asked) instead of one record each, so that one pass through the vision tower trains on
            every answer. Held-out records always hold one question, for exact-match evaluation.
        focus_types: question types that also get a split of their own (``sft_word.json``, ``hf/sft_word``): one
            single-question record per training image the type applies to, for a stage that trains on that
            type alone.
        scene: ``"mixed"`` (distinct shapes and colours; questions look one object up by another attribute) or
            ``"uniform"`` (copies of one coloured shape; questions ask what is drawn). See the module docstring.
        overwrite: replace the outputs of an earlier run in ``output_dir`` instead of raising.
        validation: fraction of images, taken from the training images just before the held-out ones, whose
            questions go to ``sft_validation`` (one question per record, no captions, in no training split).

    Returns:
        The manifest (also written to ``manifest.json``): records, images and per-type counts per split.
    """
    _check_arguments(n, image_size, held_out, questions_per_image, focus_types, scene, validation)
    output_dir = Path(output_dir)
    _clear_earlier_outputs(output_dir, overwrite)
    (output_dir / "images").mkdir(parents=True, exist_ok=True)

    names = ["sft", "captions", "sft_heldout", *(["sft_validation"] if validation else [])]
    splits = _Splits([*names, *(f"sft_{kind}" for kind in focus_types)])
    metadata = []
    drawn = _draw(n, seed, image_size, held_out, questions_per_image, conversations, focus_types, scene, validation)
    for index, split, image, meta, questions, groups in drawn:
        name = f"images/{index:05d}.png"
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        png = buffer.getvalue()
        (output_dir / name).write_bytes(png)
        metadata.append({"image": name, "split": split, **meta})

        stem = f"{index:05d}"
        if split == "train":
            splits.add("captions", f"cap-{stem}", name, png, [("", _caption(meta["shapes"], meta["text"]))], "caption")
        for where, group in groups:
            kind = "+".join(group)
            splits.add(where, f"{kind}-{stem}", name, png, [questions[k] for k in group], kind)

    splits.write(output_dir)
    _write_json(output_dir / "metadata.json", metadata)
    settings = {"seed": seed, "image_size": image_size, "n_images": n, "questions_per_image": questions_per_image}
    settings.update(conversations=conversations, focus_types=list(focus_types), scene=scene)
    if validation:
        settings["validation"] = validation
    manifest = {**settings, "splits": splits.summary()}
    _write_json(output_dir / "manifest.json", manifest)
    logger.info(
        "Wrote %d images to %s: %s",
        n,
        output_dir,
        ", ".join(f"{k} {v['records']} records" for k, v in manifest["splits"].items()),
    )
    return manifest


def split_sizes(n: int, held_out: float, validation: float = 0.0) -> dict[str, int]:
    """Images per split: the last ``round(n * held_out)`` are held out (at least one when ``held_out > 0`` and
    ``n > 1``); the ``round(n * validation)`` before them are the validation split; the rest train."""
    n_held_out = round(n * held_out)
    if held_out > 0 and n_held_out == 0 and n > 1:
        n_held_out = 1
    n_validation = round(n * validation)
    return {"train": n - n_held_out - n_validation, "validation": n_validation, "held_out": n_held_out}


_TARGETS = {"train": "sft", "validation": "sft_validation", "held_out": "sft_heldout"}


def _draw(n, seed, image_size, held_out, questions_per_image, conversations, focus_types, scene, validation=0.0):
    """Every image in order: ``(index, split, image, meta, questions, groups)``, where ``groups`` lists the records
    the image goes to as ``(split name, question types)``. The one place the seed's random stream is drawn from:
    ``generate`` writes what this yields, :func:`held_out_answers` reads it without writing anything."""
    sizes = split_sizes(n, held_out, validation)
    rng = random.Random(seed)
    type_counts = {split: Counter() for split in sizes}
    for index in range(n):
        split = "train" if index < sizes["train"] else "validation" if index < n - sizes["held_out"] else "held_out"
        image, meta = draw_image(rng, image_size, scene)
        questions = _questions(meta, pick=rng.randrange(6), scene=scene)
        conversation = conversations and split == "train"
        kinds = _pick_types(rng, questions, type_counts[split], questions_per_image, conversation)
        rng.shuffle(kinds)
        target = _TARGETS[split]
        groups = [(target, kinds)] if conversation else [(target, [kind]) for kind in kinds]
        if split == "train":
            groups += [(f"sft_{kind}", [kind]) for kind in focus_types if kind in questions]
        yield index, split, image, meta, questions, groups


def held_out_answers(
    n: int = 1000,
    seed: int = 0,
    image_size: int = 128,
    held_out: float = 0.1,
    questions_per_image: int = 2,
    conversations: bool = False,
    focus_types: tuple[str, ...] = (),
    scene: str = "mixed",
) -> list[dict]:
    """The held-out split's rows as ``generate`` with the same arguments writes them (``type`` and ``answer``, in
    order), computed without writing a file: what the held-out questions are and how their answers are spread."""
    _check_arguments(n, image_size, held_out, questions_per_image, focus_types, scene)
    rows = []
    for _, split, _, _, questions, groups in _draw(
        n, seed, image_size, held_out, questions_per_image, conversations, focus_types, scene
    ):
        if split == "held_out":
            rows += [{"type": "+".join(group), "answer": questions[group[0]][1]} for _, group in groups]
    return rows


def _check_arguments(n, image_size, held_out, questions_per_image, focus_types, scene, validation=0.0) -> None:
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if image_size < 48:
        raise ValueError(f"image_size must be >= 48 pixels, got {image_size}")
    if not 0 <= held_out < 1:
        raise ValueError(f"held_out must be in [0, 1), got {held_out}")
    if not 0 <= validation < 1 or split_sizes(n, held_out, validation)["train"] < 1:
        raise ValueError(f"validation must be in [0, 1) and leave training images, got {validation}")
    if questions_per_image < 1:
        raise ValueError(f"questions_per_image must be >= 1, got {questions_per_image}")
    if scene not in SCENES:
        raise ValueError(f"scene must be one of {list(SCENES)}, got {scene!r}")
    unknown = [kind for kind in focus_types if kind not in QUESTION_TYPES]
    if unknown:
        raise ValueError(f"focus_types {unknown} are not question types; choose from {list(QUESTION_TYPES)}")


def _clear_earlier_outputs(output_dir: Path, overwrite: bool) -> None:
    existing = [name for name in _OUTPUTS if (output_dir / name).exists()]
    existing += sorted(path.name for path in output_dir.glob("sft_*.json") if path.name not in _OUTPUTS)
    if existing and not overwrite:
        raise FileExistsError(f"{output_dir} already holds {existing}; pass overwrite=True (--force) to replace")
    for name in existing:
        path = output_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


class _Splits:
    """The records of every split, kept in both formats: the authors' LLaVA JSON and a Hugging Face dataset."""

    def __init__(self, names: list[str]):
        self.llava = {name: [] for name in names}
        self.hf_rows = {name: [] for name in names}

    def add(self, split: str, record_id: str, image: str, png: bytes, turns: list[tuple[str, str]], kind: str):
        self.llava[split].append(_llava_record(record_id, image, turns, type=kind))
        self.hf_rows[split].append(_hf_row(record_id, png, image, turns, kind))

    def write(self, output_dir: Path) -> None:
        from datasets import Dataset

        # Imported here: the loaders pull in transformers, and the CLI reads this module's constants without it.
        from .data import features

        for split, records in self.llava.items():
            _write_json(output_dir / f"{split}.json", records)
        schema = features("type", "answer")
        for split, rows in self.hf_rows.items():
            Dataset.from_list(rows, features=schema).save_to_disk(str(output_dir / "hf" / split))

    def summary(self) -> dict:
        return {
            split: {
                "records": len(records),
                "images": len({r["image"] for r in records}),
                "types": dict(sorted(Counter(t for r in records for t in r["type"].split("+")).items())),
                "llava": f"{split}.json",
                "hf": f"hf/{split}",
            }
            for split, records in self.llava.items()
        }


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
