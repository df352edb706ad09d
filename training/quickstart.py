"""``eagle quickstart``: train a small Eagle-X5 end to end on this CPU, nothing downloaded.

Synthetic visual questions (``training.synth``), the three stages with the same runner as any recipe, held-out
exact-match accuracy per question type, a Hub-ready folder with ``eval_results.json`` and a model card, then a
fresh process that loads the folder with ``trust_remote_code`` (the package blocked) and answers through
``pipeline("image-text-to-text")``. ``ablate=True`` also trains single-expert and no-pre-alignment variants on the
same data and budget; ``fusions`` trains one variant per named fusion strategy (the quickstart itself is
``channel_concat``) on the same data and budget.
"""

import json
import logging
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

from .recipe import load_recipe
from .synth import COLOURS, SHAPES, WORDS, generate, held_out_answers

logger = logging.getLogger(__name__)


@dataclass
class Budget:
    """Data and steps; the default is the README's run (under 15 minutes on 2 CPU cores)."""

    n_images: int = 8000
    prealign_steps: int = 20
    align_steps: int = 30
    word_steps: int = 500
    sft_steps: int = 2300
    batch_size: int = 16
    vision_lr: float = 1e-3
    projector_lr: float = 1e-3
    llm_lr: float = 5e-4

    def __post_init__(self):
        least = {
            "n_images": 1,
            "prealign_steps": 1,
            "align_steps": 1,
            "word_steps": 0,
            "sft_steps": 1,
            "batch_size": 1,
        }
        for field, minimum in least.items():
            value = getattr(self, field)
            if not isinstance(value, int) or value < minimum:
                what = " (stage 3 must train on every question type)" if field == "sft_steps" else ""
                raise ValueError(
                    f"{field} (--{field.replace('_', '-')}) is {value}{what}: it must be an integer >= {minimum}"
                )


# Every answer the data can ask for, as the chat template renders it: each becomes one token (" garden", not
# " g" + "arden"), so an answer is one prediction and exact match measures seeing, not spelling.
ANSWERS = (*WORDS, *COLOURS, *SHAPES, "1", "2", "3", "left", "right")


def quickstart_recipe(
    data_root: str,
    seed: int,
    budget: Budget,
    experts=None,
    prealign: bool = True,
    fusion: str | None = None,
    validation: bool = False,
) -> dict:
    """The quickstart's recipe; ``data_root`` is relative to the folder the recipe file is written to. ``fusion``
    names a fusion strategy other than the default ``channel_concat``. ``validation`` names the data's validation
    split (``make_data(..., validation=...)``), which ``eagle search-experts`` chooses on."""
    corpus = [f"ASSISTANT: {answer}" for answer in ANSWERS]
    model = {
        "preset": "eagle-x5-small",
        "tokenizer_corpus": corpus,
        "chat_template": "vicuna_v1_no_system",
        "zero_query_init": True,
    }
    overrides = {"experts": list(experts)} if experts else {}
    if fusion:
        overrides["fusion"] = fusion
    if overrides:
        model["overrides"] = overrides
    common = {
        "batch_size": budget.batch_size,
        "schedule": "cosine",
        "warmup_ratio": 0.05,
        "save_steps": 10**6,
        "logging_steps": 10,
    }
    stages = []
    if prealign:
        stages.append(
            {
                "name": "stage1-prealign",
                "kind": "prealign",
                "train": ["experts", "projector"],
                "data": {"format": "hf", "path": "hf/sft"},
                "lr": {"vision": budget.vision_lr, "projector": budget.projector_lr},
                "max_steps": budget.prealign_steps,
                **common,
            }
        )
    stages.append(
        {
            "name": "stage2-align",
            "kind": "align",
            "train": ["projector"],
            "data": {"format": "hf", "path": "hf/captions"},
            "lr": {"projector": budget.projector_lr},
            "max_steps": budget.align_steps,
            **common,
        }
    )
    # Stage 3 starts with the written-word questions alone (3a): mixed with the other types from the first step, this
    # small LLM does not learn to read in the budget; alone it does, and the mixed stage keeps it (docs/quickstart.md).
    stage3 = {"kind": "sft", "train": ["experts", "projector", "llm"], **common}
    stage3["lr"] = {"vision": budget.vision_lr, "projector": budget.projector_lr, "llm": budget.llm_lr}
    if budget.word_steps:
        words = {"format": "hf", "path": "hf/sft_word"}
        stages.append({"name": "stage3a-sft-words", "data": words, "max_steps": budget.word_steps, **stage3})
    mixed = {"format": "hf", "path": "hf/sft"}
    stages.append({"name": "stage3-sft", "data": mixed, "max_steps": budget.sft_steps, **stage3})
    held_out = {"format": "hf", "path": "hf/sft_heldout"}  # what `evaluate` scores; `eagle train` ignores it
    recipe = {"model": model, "seed": seed, "data_root": data_root, "eval": held_out, "stages": stages}
    if validation:
        recipe["validation"] = {"format": "hf", "path": "hf/sft_validation"}
    return recipe


# How the quickstart draws its data, besides the number of images, the seed and the scene.
DATA = {"image_size": 128, "questions_per_image": 5, "conversations": True, "focus_types": ("word",)}


def make_data(
    folder: Path, n_images: int, seed: int, scene: str = "uniform", overwrite: bool = False, validation: float = 0.0
) -> dict:
    """The quickstart's synthetic data in ``folder`` (``hf/sft``, ``hf/sft_word``, ``hf/captions``,
    ``hf/sft_heldout``, with ``validation`` also ``hf/sft_validation``); returns ``training.synth``'s manifest."""
    return generate(folder, n=n_images, seed=seed, scene=scene, overwrite=overwrite, validation=validation, **DATA)


def held_out_summary(n_images: int = Budget.n_images, seed: int = 0, scene: str = "uniform") -> dict:
    """Per question type of the quickstart's held-out split: the number of questions, the most frequent answer and
    the blind baseline (:func:`blind_baseline`), from the generator alone (nothing trained or written)."""
    rows = held_out_answers(n=n_images, seed=seed, scene=scene, **DATA)
    baseline = blind_baseline(rows)
    summary = {}
    for kind in sorted(baseline):
        answers = Counter(row["answer"] for row in rows if row["type"] == kind)
        ((answer, count),) = answers.most_common(1)
        total = sum(answers.values())
        summary[kind] = {
            "questions": total,
            "most_frequent": answer,
            "its_count": count,
            "blind_baseline": baseline[kind],
        }
    return summary


def evaluate(folder: Path, heldout, batch_size: int = 32) -> dict:
    """Held-out exact-match accuracy per question type (greedy answers, case and spaces ignored)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from .data import load_images

    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    right, total = Counter(), Counter()
    rows = list(heldout)
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        texts = [processor.apply_chat_template(r["messages"][:1], add_generation_prompt=True) for r in batch]
        # Decoded as the training collator decodes them (rows from load_data hold undecoded images).
        images = [load_images(processor.image_processor, r["images"], f"held-out row {r.get('id')!r}") for r in batch]
        inputs = processor(images=images, text=texts, return_tensors="pt", padding=True)
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        answers = processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        for row, answer in zip(batch, answers):
            total[row["type"]] += 1
            right[row["type"]] += answer.strip().lower() == row["answer"].strip().lower()
    return {kind: {"accuracy": right[kind] / total[kind], "n": total[kind]} for kind in sorted(total)}


def blind_baseline(heldout) -> dict:
    """Per question type, the accuracy of always giving the type's most frequent held-out answer: the best a model
    that ignores the image can score, the floor the learnt accuracy should be read against."""
    answers = {}
    for row in heldout:
        answers.setdefault(row["type"], Counter())[row["answer"]] += 1
    return {kind: max(counts.values()) / sum(counts.values()) for kind, counts in sorted(answers.items())}


def eval_results_file(accuracy: dict, n_images: int, scene: str) -> dict:
    """The folder's eval_results.json: what the model card's model-index is built from."""
    metrics = [
        {"name": f"exact match ({kind})", "type": "exact_match", "value": round(entry["accuracy"], 4)}
        for kind, entry in accuracy.items()
    ]
    return {
        "task": {"type": "visual-question-answering", "name": "Visual question answering"},
        "dataset": {
            "name": f"eagle synthetic shapes ({scene} scenes, {n_images} images, held-out split)",
            "type": "synthetic",
        },
        "metrics": metrics,
    }


FRESH_PROCESS = r"""
import json
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline
folder, samples = sys.argv[1], json.loads(sys.argv[2])
model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
pipe = pipeline("image-text-to-text", model=model, processor=processor)
chats = [[{"role": "user", "content": [{"type": "image", "image": processor.image_processor.load_image(s["image"])},
          {"type": "text", "text": s["question"]}]}] for s in samples]
for sample, result in zip(samples, pipe(text=chats, max_new_tokens=8, batch_size=len(chats))):
    print(json.dumps({**sample, "answer": result[0]["generated_text"][-1]["content"].strip()}))
"""


def answer_in_fresh_process(folder: Path, samples: list[dict]) -> list[dict]:
    """Load ``folder`` in a new Python process that cannot import this package, and answer through a pipeline."""
    from eagle_hub.hub_cards.fresh_process import run_without_package

    # The fresh process runs in a scratch folder: it gets absolute paths, the caller keeps its own.
    absolute = [{**sample, "image": str(Path(sample["image"]).resolve())} for sample in samples]
    result = run_without_package(FRESH_PROCESS, Path(folder).resolve(), json.dumps(absolute), timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"the fresh process could not load {folder}:\n{result.stderr[-3000:]}")
    answers = [json.loads(line)["answer"] for line in result.stdout.splitlines() if line.startswith("{")]
    return [{**sample, "answer": answer} for sample, answer in zip(samples, answers)]


def write_recipe(path: Path, recipe: dict) -> Path:
    """Write ``recipe`` as YAML: ``eagle train PATH`` reruns it from any working directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def train_variant(recipe_path: Path, output: Path) -> Path:
    from .runner import run_recipe  # TRL and the trainer stack: not needed for the CLI to read Budget's defaults

    run_recipe(load_recipe(recipe_path), output)
    return output / "stage3-sft"


def quickstart(
    output="eagle-quickstart",
    seed: int = 0,
    budget: Budget | None = None,
    ablate: bool = False,
    scene: str = "uniform",
    fusions=(),
) -> dict:
    """Run the whole quickstart into ``output``; returns accuracies, timings and the sample answers. ``scene`` is
    ``training.synth``'s: ``"uniform"`` (the default) or the harder ``"mixed"``. ``fusions`` (strategy names) adds
    ``report["fusion_ablation"]``: per strategy, held-out accuracy and image tokens per image."""
    from datasets import load_from_disk

    from eagle_hub.hub_cards.model_card import write_model_card

    budget = budget or Budget()
    fusions = list(dict.fromkeys(fusions))
    check_fusions(fusions)
    output = Path(output)
    if output.exists() and any(output.iterdir()):
        raise FileExistsError(f"{output} is not empty; choose another --output or remove it")
    started = time.perf_counter()
    data = output / "data"
    make_data(data, budget.n_images, seed, scene)
    heldout = load_from_disk(str(data / "hf" / "sft_heldout"))

    recipe = write_recipe(output / "recipe.yaml", quickstart_recipe("data", seed, budget))
    trained = train_variant(recipe, output / "run")
    accuracy = evaluate(trained, heldout)
    model_dir = output / "model"
    shutil.copytree(trained, model_dir)
    (model_dir / "eval_results.json").write_text(
        json.dumps(eval_results_file(accuracy, budget.n_images, scene), indent=2)
    )
    stages = json.loads((output / "run" / "summary.json").read_text())
    data_name = f"synthetic shapes ({scene} scenes)"
    training = {"stages": [{"name": name, "data": data_name} for name in stages], "budget": budget.__dict__}
    (model_dir / "training.json").write_text(json.dumps(training, indent=2))
    write_model_card(model_dir)
    train_seconds = time.perf_counter() - started

    samples = []
    for row in list(heldout)[:5]:
        image_path = model_dir / f"sample-{len(samples)}.png"
        row["images"][0].save(image_path)
        question = next(b["text"] for b in row["messages"][0]["content"] if b["type"] == "text")
        samples.append({"image": str(image_path), "question": question, "expected": row["answer"]})
    answers = answer_in_fresh_process(model_dir, samples)

    report = {
        "accuracy": accuracy,
        "scene": scene,
        "blind_baseline": blind_baseline(heldout),
        "seconds": train_seconds,
        "answers": answers,
        "folder": str(model_dir),
    }
    if ablate:
        variants = {f"only {name}": {"experts": [name]} for name in ("clip", "convnext", "sam", "eva02", "pix2struct")}
        variants["all experts, no pre-alignment"] = {"prealign": False}
        report["ablation"] = {"all experts (quickstart)": accuracy}
        for label, change in variants.items():
            run = output / "ablation" / label.replace(" ", "-").replace(",", "")
            recipe = write_recipe(run.with_suffix(".yaml"), quickstart_recipe("../data", seed, budget, **change))
            folder = train_variant(recipe, run)
            report["ablation"][label] = evaluate(folder, heldout)
    if fusions:
        report["fusion_ablation"] = fusion_ablation(output, heldout, seed, budget, fusions, accuracy)
    (output / "quickstart.json").write_text(json.dumps(report, indent=2))
    return report


def check_fusions(fusions) -> None:
    """Refuse unknown strategy names before any data is made."""
    from eagle_hub.modeling_eagle.modeling_eagle import FUSION_CLASSES

    unknown = [name for name in fusions if name not in FUSION_CLASSES]
    if unknown:
        raise ValueError(f"unknown fusion(s) {unknown} (--fusions); choose from {', '.join(FUSION_CLASSES)}")


def fusion_ablation(output: Path, heldout, seed: int, budget: Budget, fusions, quickstart_accuracy: dict) -> dict:
    """One run of the quickstart's recipe per fusion strategy, on the same data, budget and seed; the quickstart's
    own run is the ``channel_concat`` one."""
    results = {}
    for name in fusions:
        if name == "channel_concat":
            accuracy, folder, run = quickstart_accuracy, output / "model", output / "run"
        else:
            run = output / "fusion-ablation" / name
            recipe = write_recipe(run.with_suffix(".yaml"), quickstart_recipe("../data", seed, budget, fusion=name))
            folder = train_variant(recipe, run)
            accuracy = evaluate(folder, heldout)
        tokens = json.loads((folder / "processor_config.json").read_text()).get("num_image_tokens")
        seconds = training_seconds(json.loads((run / "summary.json").read_text()))
        results[name] = {"accuracy": accuracy, "image_tokens": tokens, "training_seconds": seconds}
    return results


def training_seconds(summaries: dict) -> float:
    """The trainers' time over every stage of a run's ``summary.json`` (pre-alignment's per-expert runs included):
    the cost a strategy adds in training, without data making, loading and evaluation, which are the same for all."""
    total = 0.0
    for summary in summaries.values():
        total += summary["seconds"] if "seconds" in summary else sum(s["seconds"] for s in summary.values())
    return total


def format_report(report: dict) -> str:
    kinds = sorted(report["accuracy"])
    lines = [f"scenes:               {report['scene']}"]
    lines.append("held-out exact match: " + ", ".join(f"{k} {report['accuracy'][k]['accuracy']:.1%}" for k in kinds))
    lines.append("blind baseline:       " + ", ".join(f"{k} {report['blind_baseline'][k]:.1%}" for k in kinds))
    lines.append(f"time: {report['seconds'] / 60:.1f} min; folder: {report['folder']}")
    for answer in report["answers"]:
        question, expected = answer["question"], answer["expected"]
        lines.append(f"{answer['image']}: {question!r} -> {answer['answer']!r} (expected {expected!r})")
    if "ablation" in report:
        lines.append(f"{'variant':<34}" + "".join(f"{k:>10}" for k in kinds))
        for label, accuracy in report["ablation"].items():
            lines.append(f"{label:<34}" + "".join(f"{accuracy[k]['accuracy']:>10.1%}" for k in kinds))
    if "fusion_ablation" in report:
        lines.append(f"{'fusion':<22}{'tokens/image':>12}{'train min':>10}" + "".join(f"{k:>10}" for k in kinds))
        for name, entry in report["fusion_ablation"].items():
            scores = "".join(f"{entry['accuracy'][k]['accuracy']:>10.1%}" for k in kinds)
            minutes = entry["training_seconds"] / 60
            lines.append(f"{name:<22}{entry['image_tokens'] or '-':>12}{minutes:>10.1f}" + scores)
    return "\n".join(lines)
