"""Local stand-ins of the paper's benchmarks, for tests and offline trials: lmms-eval task folders with the real
task's columns, prompt and scorer, and a few rows of images drawn here (nothing is downloaded).

    from eagle_hub.evaluation.standins import write_standins
    write_standins("standins")          # standins/<task>/{<task>.yaml, utils.py, data/test.parquet}
    # eagle eval MODEL --tasks eagle_standins --include-path standins --output out

| stand-in                      | scored like                         | kind                                   |
|-------------------------------|-------------------------------------|----------------------------------------|
| eagle_standin_textvqa         | textvqa_val (TextVQA, VizWiz, VQAv2) | short answer, VQA accuracy (EvalAI)   |
| eagle_standin_pope            | pope                                | yes/no                                 |
| eagle_standin_scienceqa_img   | scienceqa_img (SQA-I, MMBench)      | multiple choice, answer letter         |
| eagle_standin_seedbench       | seedbench (SEED-I)                  | multiple choice, two images a question |
| eagle_standin_seedbench_ppl   | seedbench_ppl                       | multiple choice by log-likelihood      |
| eagle_standin_docvqa          | docvqa_val (DocVQA, InfoVQA)        | document text, ANLS                    |
| eagle_standin_chartqa         | chartqa                             | chart values, relaxed accuracy         |

The YAML files and ``utils.py`` ship in the package (``standin_tasks/``); the data is written by
:func:`write_standins`, relative to each YAML (``data/test.parquet``), so the folder works from any working
directory.
"""

import random
import shutil
from pathlib import Path

from PIL import Image, ImageDraw

STANDIN_TASKS_DIR = Path(__file__).resolve().parent / "standin_tasks"
TAG = "eagle_standins"
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}
SHAPES = ("circle", "square", "triangle")
WORDS = ("stop", "open", "exit", "cafe", "bank", "park")


def standin_tasks() -> list[str]:
    """The stand-in task names (one YAML each)."""
    return sorted(path.stem for path in STANDIN_TASKS_DIR.glob("*/*.yaml"))


def _shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple, colour: tuple) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=colour)


def _scene(shape: str, colour: str, word: str | None = None, size=(96, 72)) -> Image.Image:
    """A shape on a light background, with a word beneath it when given."""
    image = Image.new("RGB", size, (245, 245, 240))
    draw = ImageDraw.Draw(image)
    _shape(draw, shape, (size[0] // 2 - 18, 6, size[0] // 2 + 18, 42), COLOURS[colour])
    if word:
        draw.text((size[0] // 2 - 12, 50), word, fill=(0, 0, 0))
    return image


def _document(lines: list[str], size=(120, 90)) -> Image.Image:
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for index, line in enumerate(lines):
        draw.text((6, 6 + 14 * index), line, fill=(20, 20, 20))
    return image


def _chart(values: list[int], size=(100, 80)) -> Image.Image:
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    width = size[0] // (len(values) + 1)
    for index, value in enumerate(values):
        x = width // 2 + index * width
        draw.rectangle((x, size[1] - 8 - value * 6, x + width - 4, size[1] - 8), fill=(60, 100, 200))
        draw.text((x, size[1] - 8), str(value), fill=(0, 0, 0))
    return image


def _textvqa(rng: random.Random, index: int) -> dict:
    word, other = rng.sample(WORDS, 2)
    image = _scene(rng.choice(SHAPES), rng.choice(list(COLOURS)), word)
    return {
        "image_id": f"standin{index:04d}",
        "question_id": 34602 + index,
        "question": "what word is written under the shape?",
        "question_tokens": ["what", "word", "is", "written", "under", "the", "shape"],
        "image": image,
        "image_width": image.width,
        "image_height": image.height,
        "answers": [word] * 8 + [other] * 2,  # ten annotators, as in TextVQA
        "image_classes": ["Sign"],
        "set_name": "val",
        "ocr_tokens": [word],
    }


def _pope(rng: random.Random, index: int) -> dict:
    shape, asked = rng.choice(SHAPES), rng.choice(SHAPES)
    return {
        "id": str(index),
        "question_id": str(index + 1),
        "question": f"Is there a {asked} in the image?",
        "answer": "yes" if shape == asked else "no",
        "image_source": f"standin{index:04d}",
        "image": _scene(shape, rng.choice(list(COLOURS))),
        "category": ("adversarial", "popular", "random")[index % 3],
    }


def _scienceqa(rng: random.Random, index: int) -> dict:
    colour = rng.choice(list(COLOURS))
    choices = rng.sample(list(COLOURS), 3)
    if colour not in choices:
        choices[rng.randrange(3)] = colour
    return {
        "image": _scene(rng.choice(SHAPES), colour),
        "question": "Which colour is the shape?",
        "choices": choices,
        "answer": choices.index(colour),
        "hint": "The picture shows one shape." if index % 2 else "",
        "task": "closed choice",
        "grade": "grade2",
        "subject": "natural science",
        "topic": "colours",
        "category": "Colours",
        "skill": "Identify colours",
        "lecture": "",
        "solution": "",
    }


def _seedbench(rng: random.Random, index: int) -> dict:
    first, second = rng.sample(SHAPES, 2)
    letters = "ABCD"
    choices = ["first", "second", "both", "neither"]
    answer = letters[0]  # the question asks which image holds the first image's shape
    return {
        "answer": answer,
        "choice_a": choices[0],
        "choice_b": choices[1],
        "choice_c": choices[2],
        "choice_d": choices[3],
        "data_id": f"standin{index:04d}",
        "data_type": "image",
        "question": f"Which image shows a {first}?",
        "question_id": str(100 + index),
        "question_type_id": 1,
        "image": [_scene(first, rng.choice(list(COLOURS))), _scene(second, rng.choice(list(COLOURS)))],
    }


def _docvqa(rng: random.Random, index: int) -> dict:
    number, total = rng.randint(10, 99), rng.randint(100, 999)
    return {
        "questionId": str(57340 + index),
        "question": "What is the total?",
        "question_types": ["form"],
        "image": _document([f"Invoice {number}", f"Total: {total}", "Paid"]),
        "docId": 1000 + index,
        "ucsf_document_id": f"standin{index:04d}",
        "ucsf_document_page_no": "1",
        "answers": [str(total), f"{total}.00"],
        "data_split": "val",
    }


def _chartqa(rng: random.Random, index: int) -> dict:
    values = [rng.randint(1, 9) for _ in range(4)]
    return {
        "type": "human_test" if index % 2 == 0 else "augmented_test",
        "question": "What is the value of the highest bar?",
        "answer": str(max(values)),
        "image": _chart(values),
    }


def _features(name: str):
    from datasets import Features, List, Value
    from datasets import Image as ImageFeature

    string, integer, image = Value("string"), Value("int64"), ImageFeature()
    columns = {
        "eagle_standin_textvqa": {
            "image_id": string,
            "question_id": integer,
            "question": string,
            "question_tokens": List(string),
            "image": image,
            "image_width": integer,
            "image_height": integer,
            "answers": List(string),
            "image_classes": List(string),
            "set_name": string,
            "ocr_tokens": List(string),
        },
        "eagle_standin_pope": {
            "id": string,
            "question_id": string,
            "question": string,
            "answer": string,
            "image_source": string,
            "image": image,
            "category": string,
        },
        "eagle_standin_scienceqa_img": {
            "image": image,
            "question": string,
            "choices": List(string),
            "answer": integer,
            **{key: string for key in ("hint", "task", "grade", "subject", "topic", "category", "skill")},
            "lecture": string,
            "solution": string,
        },
        "eagle_standin_seedbench": {
            **{key: string for key in ("answer", "choice_a", "choice_b", "choice_c", "choice_d", "data_id")},
            "data_type": string,
            "question": string,
            "question_id": string,
            "question_type_id": integer,
            "image": List(image),
        },
        "eagle_standin_docvqa": {
            "questionId": string,
            "question": string,
            "question_types": List(string),
            "image": image,
            "docId": integer,
            "ucsf_document_id": string,
            "ucsf_document_page_no": string,
            "answers": List(string),
            "data_split": string,
        },
        "eagle_standin_chartqa": {"type": string, "question": string, "answer": string, "image": image},
    }
    return Features(columns[name])


ROWS = {
    "eagle_standin_textvqa": _textvqa,
    "eagle_standin_pope": _pope,
    "eagle_standin_scienceqa_img": _scienceqa,
    "eagle_standin_seedbench": _seedbench,
    "eagle_standin_docvqa": _docvqa,
    "eagle_standin_chartqa": _chartqa,
}


def write_standins(folder, rows: int = 6, seed: int = 0) -> Path:
    """Copy the stand-in task folders into ``folder`` (replacing earlier copies) and write each one's
    ``data/test.parquet`` with ``rows`` rows; returns ``folder``, the path to give ``--include-path``."""
    from datasets import Dataset

    if rows < 1:
        raise ValueError(f"rows is {rows}: a stand-in needs at least one row")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, make_row in ROWS.items():
        target = folder / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(STANDIN_TASKS_DIR / name, target, ignore=shutil.ignore_patterns("__pycache__", "data"))
        rng = random.Random(f"{seed}-{name}")
        table = Dataset.from_list([make_row(rng, index) for index in range(rows)], features=_features(name))
        (target / "data").mkdir()
        table.to_parquet(str(target / "data" / "test.parquet"))
    return folder


__all__ = ["STANDIN_TASKS_DIR", "TAG", "standin_tasks", "write_standins"]
