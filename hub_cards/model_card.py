"""Model cards for Eagle folders (huggingface_hub ``ModelCard``): the metadata the Hub indexes, what the model is,
how to use it (snippets the tests run), how it was trained and evaluated, and its limitations.

    from eagle_hub.hub_cards.model_card import model_card_for_folder, write_model_card
    card = model_card_for_folder("eagle-x5-tiny", repo_id="me/eagle-x5-tiny")   # a huggingface_hub.ModelCard
    write_model_card("eagle-x5-tiny", repo_id="me/eagle-x5-tiny")                # saves <folder>/README.md

Everything is read from the folder: ``config.json`` (experts, resolutions, grid, LLM), parameter counts from the
safetensors headers (no tensor is loaded), and two optional files:

``training.json`` (written by whoever trained the folder; ``eagle_hub.training.runner.training_record`` builds it
from a recipe)::

    {"base_model": ["lmsys/vicuna-7b-v1.5"],          # optional, Hub model ids -> card metadata
     "datasets": ["liuhaotian/LLaVA-Pretrain"],        # optional, Hub dataset ids -> card metadata
     "license": "apache-2.0",                          # optional
     "stages": [{"name": "stage1-prealign", "kind": "prealign", "train": ["experts", "projector"],
                 "data": "sft.json (llava)", "datasets": ["..."], "max_steps": 6, "epochs": null,
                 "batch_size": 4, "lr": {"vision": 0.001}, "final_loss": 2.31}]}

``eval_results.json`` (one object, or a list of them for several datasets)::

    {"task": {"type": "visual-question-answering", "name": "Visual question answering"},   # or just the type
     "dataset": {"name": "Synthetic shapes", "type": "synthetic-shapes", "split": "test", "config": null},
     "metrics": [{"name": "Accuracy", "type": "accuracy", "value": 0.97}],
     "source": {"name": "eagle eval", "url": "https://..."},                                 # optional
     "verified": false}                                                   # optional; false: self-reported

Evaluation results become ``EvalResult`` objects, hence the card's ``model-index``. ``eagle eval`` adds its entries
with :func:`record_eval_results`: a rerun replaces the entries of the tasks it ran and keeps the others.
"""

import json
import math
import re
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from eagle_hub.modeling_eagle.parts import part_of
from eagle_hub.processing.locations import is_hub_id

# Where the released Eagle's experts started from (named in the cards of converted checkpoints).
EXPERT_SOURCES = {
    "clip": "openai/clip-vit-large-patch14-336",
    "convnext": "laion/CLIP-convnext_xxlarge-laion2B-s34B-b82K-augreg-soup",
    "sam": "facebook/sam-vit-large",
    "eva02": "Yuxin-CL/EVA02-L (ViTDet detection weights)",
    "pix2struct": "google/pix2struct-large",
}
EXPERT_NAMES = {
    "clip": "CLIP ViT",
    "convnext": "ConvNeXt (CLIP-trained)",
    "sam": "SAM ViT encoder",
    "eva02": "EVA-02 ViTDet",
    "pix2struct": "Pix2Struct encoder",
}
TRAINING_FILE = "training.json"
EVAL_FILE = "eval_results.json"
PLACEHOLDER_REPO = "your-org/your-eagle-model"
BASE_TAGS = ["eagle", "custom_code", "multimodal", "vision-language", "mixture-of-vision-experts"]

# The card body: a Jinja template, rendered by huggingface_hub as its own card templates are.
TEMPLATE = Path(__file__).with_name("model_card.md")


class CardError(ValueError):
    """A folder, ``training.json`` or ``eval_results.json`` the card cannot describe; the message names the field."""


# --------------------------------------------------------------------------------------------- reading the folder


def _read_json(path: Path, what: str) -> dict | list:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as error:
        raise CardError(f"{path}: not found ({what})") from error
    except json.JSONDecodeError as error:
        raise CardError(f"{path}: not valid JSON ({error})") from error


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a folder: the index's shards, or ``model.safetensors``; [] when none."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index, "the safetensors index").get("weight_map", {})
        return [folder / name for name in sorted(set(weight_map.values()))]
    single = folder / "model.safetensors"
    return [single] if single.is_file() else []


def parameter_counts(folder) -> dict:
    """Parameters per part, read from the safetensors headers (no tensor is loaded; persistent buffers such as
    EVA-02's rope tables are not parameters and not counted): ``{"experts": {name: n},
    "projector": n, "llm": n, "other": n, "total": n, "source": "safetensors" | "config"}``.

    A folder without weights (``eagle init --config-only``) is counted on the meta device from its config."""
    from safetensors import safe_open

    folder = Path(folder)
    counts: dict[str, int] = {}
    files = _weight_files(folder)
    config = _load_config(folder)
    if not files:
        return _shape_counts(_counts_from_config(config), "config")
    buffers = set(dict(_meta_model(config).named_buffers()))  # persistent buffers (e.g. EVA-02 rope tables)
    for path in files:
        if not path.is_file():
            raise CardError(f"{path}: listed in the safetensors index but missing")
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                if key not in buffers:
                    counts[part_of(key)] = counts.get(part_of(key), 0) + math.prod(handle.get_slice(key).get_shape())
    return _shape_counts(counts, "safetensors")


def _meta_model(config):
    """The model built on the meta device: names and shapes only, no memory."""
    import torch

    from eagle_hub.modeling_eagle.modeling_eagle import EagleForConditionalGeneration

    with torch.device("meta"):
        return EagleForConditionalGeneration(config)


def _counts_from_config(config) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name, parameter in _meta_model(config).named_parameters():
        counts[part_of(name)] = counts.get(part_of(name), 0) + parameter.numel()
    return counts


def _shape_counts(counts: dict[str, int], source: str) -> dict:
    experts = {key.split(":", 1)[1]: n for key, n in counts.items() if key.startswith("expert:")}
    shaped = {
        "experts": experts,
        "projector": counts.get("projector", 0),
        "llm": counts.get("llm", 0),
        "other": counts.get("other", 0),
        "source": source,
    }
    shaped["total"] = sum(experts.values()) + shaped["projector"] + shaped["llm"] + shaped["other"]
    return shaped


def _load_config(folder: Path):
    """The folder's ``EagleConfig`` (this package's class; the folder's own code is not executed)."""
    from eagle_hub.modeling_eagle.configuration_eagle import EagleConfig

    raw = _read_json(folder / "config.json", "the model config")
    if raw.get("model_type") != "eagle":
        raise CardError(f"{folder / 'config.json'}: model_type is {raw.get('model_type')!r}, not 'eagle'")
    try:
        return EagleConfig.from_pretrained(folder)
    except Exception as error:  # a config the class rejects: say which folder
        raise CardError(f"{folder / 'config.json'}: not a valid Eagle config ({error})") from error


def format_count(n: int) -> str:
    """1234567 -> '1.23 M'."""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)


# -------------------------------------------------------------------------------------- training and evaluation


def load_training(training, folder: Path | None = None) -> dict | None:
    """``training`` as a dict (a dict, a path to a JSON file, or None to read ``<folder>/training.json``)."""
    if training is None and folder is not None and (folder / TRAINING_FILE).is_file():
        training = folder / TRAINING_FILE
    if training is None:
        return None
    if isinstance(training, (str, Path)):
        training = _read_json(Path(training), "the training record")
    if not isinstance(training, dict) or not isinstance(training.get("stages", []), list):
        raise CardError(f"{TRAINING_FILE}: expected an object with a 'stages' list")
    for i, stage in enumerate(training.get("stages", [])):
        if not isinstance(stage, dict) or "name" not in stage:
            raise CardError(f"{TRAINING_FILE}: stages[{i}] needs a 'name'")
    return training


def load_eval_results(eval_results, folder: Path | None = None) -> list[EvalResult]:
    """``eval_results.json`` (or a dict / list of dicts / list of ``EvalResult``) as ``EvalResult`` objects."""
    if eval_results is None and folder is not None and (folder / EVAL_FILE).is_file():
        eval_results = folder / EVAL_FILE
    if eval_results is None:
        return []
    if isinstance(eval_results, (str, Path)):
        eval_results = _read_json(Path(eval_results), "the evaluation results")
    entries = eval_results if isinstance(eval_results, list) else [eval_results]
    results = []
    for i, entry in enumerate(entries):
        if isinstance(entry, EvalResult):
            results.append(entry)
            continue
        where = f"{EVAL_FILE}[{i}]" if isinstance(eval_results, list) else EVAL_FILE
        results += _eval_entry(entry, where)
    return results


def _eval_entry(entry, where: str) -> list[EvalResult]:
    if not isinstance(entry, dict):
        raise CardError(f"{where}: expected an object with 'task', 'dataset' and 'metrics'")
    task = entry.get("task") or "visual-question-answering"
    task = {"type": task} if isinstance(task, str) else task
    dataset = entry.get("dataset")
    if not isinstance(dataset, dict) or not dataset.get("name") or not dataset.get("type"):
        raise CardError(f"{where}: 'dataset' needs a 'name' and a 'type' (a dataset id)")
    metrics = entry.get("metrics")
    if not isinstance(metrics, list) or not metrics:
        raise CardError(f"{where}: 'metrics' must be a non-empty list")
    source = entry.get("source") or {}
    results = []
    for j, metric in enumerate(metrics):
        if not isinstance(metric, dict) or "type" not in metric or "value" not in metric:
            raise CardError(f"{where}: metrics[{j}] needs a 'type' and a 'value'")
        results.append(
            EvalResult(
                task_type=task.get("type"),
                task_name=task.get("name"),
                dataset_type=dataset["type"],
                dataset_name=dataset["name"],
                dataset_config=dataset.get("config"),
                dataset_split=metric.get("split", dataset.get("split")),
                dataset_revision=dataset.get("revision"),
                metric_type=metric["type"],
                metric_name=metric.get("name"),
                metric_value=metric["value"],
                source_name=source.get("name"),
                source_url=source.get("url"),
                verified=entry.get("verified"),
            )
        )
    return results


def _entry_key(entry) -> tuple:
    """What makes two ``eval_results.json`` entries the same evaluation: the task (its name, else its type) and the
    dataset (id and config). The split is not part of it: a full run replaces a partial one (``test[:4]``)."""
    if not isinstance(entry, dict):
        return (id(entry),)
    task = entry.get("task") or {}
    task = {"type": task} if isinstance(task, str) else task
    dataset = entry.get("dataset") or {}
    return (task.get("name") or task.get("type"), dataset.get("type"), dataset.get("config"))


def merge_eval_results(existing, new: list[dict]) -> list[dict]:
    """``existing`` entries (a dict, a list of them, or None) updated with ``new`` ones: a new entry takes the place
    of the existing entries for the same task and dataset; the others are kept, in order; the rest are appended."""
    existing = [] if existing is None else existing if isinstance(existing, list) else [existing]
    incoming = {_entry_key(entry): entry for entry in new}
    merged, placed = [], set()
    for entry in existing:
        key = _entry_key(entry)
        if key in incoming:
            if key not in placed:
                merged.append(incoming[key])
                placed.add(key)
            continue
        merged.append(entry)
    return merged + [entry for key, entry in incoming.items() if key not in placed]


def _with_eval_section(text: str, section: str) -> str:
    """The card's text with the body of its ``## Evaluation`` section replaced (or the section appended)."""
    pattern = re.compile(r"^## Evaluation[ \t]*\n.*?(?=^## |\Z)", re.S | re.M)
    block = f"## Evaluation\n\n{section}\n\n"
    if pattern.search(text):
        return pattern.sub(lambda _: block, text, count=1)
    return text.rstrip() + "\n\n" + block


def record_eval_results(folder, entries: list[dict]) -> Path:
    """Merge ``entries`` into ``<folder>/eval_results.json`` (:func:`merge_eval_results`); when the folder has a card
    (``README.md``), rewrite its ``model-index`` and its evaluation table from the merged results. A folder without
    a card gets them in the one generated from the folder (``eagle push``). Returns the ``eval_results.json`` path."""
    folder = Path(folder)
    path = folder / EVAL_FILE
    merged = merge_eval_results(_read_json(path, "the evaluation results") if path.is_file() else None, entries)
    results = load_eval_results(merged)  # refuses an entry the card could not show
    path.write_text(json.dumps(merged, indent=2) + "\n")
    readme = folder / "README.md"
    if readme.is_file():
        card = ModelCard.load(readme)
        data = card.data
        data.model_name = data.model_name or folder.resolve().name  # the model-index needs one
        data.eval_results = results
        text = _with_eval_section(card.text, _eval_section(results))
        ModelCard(f"---\n{data.to_yaml()}\n---\n\n{text.lstrip()}").save(readme)
    return path


# ------------------------------------------------------------------------------------------------------ the card


def _expert_rows(config, counts: dict | None = None) -> list[dict]:
    rows = []
    grid = config.vision_config.grid_size
    for spec in config.vision_config.experts:
        arch = spec["config"]
        channels = arch.get("hidden_size") or arch.get("hidden_sizes", [0])[-1]
        if spec["type"] == "sam":
            channels = arch.get("output_channels", 256)
        factor = spec.get("pixel_unshuffle", 1)
        step = f"pixel_unshuffle({factor}) + bilinear" if factor > 1 else "bilinear (align_corners)"
        size = f"{spec['image_size']} px"
        if spec["type"] == "pix2struct":
            size = f"{spec['image_size']} px, {spec['max_patches']} patches"
        params = (counts or {}).get("experts", {}).get(spec["name"])
        rows.append(
            {
                "name": spec["name"],
                "type": spec["type"],
                "architecture": EXPERT_NAMES.get(spec["type"], spec["type"]),
                "input": size,
                "resolution": spec["image_size"],
                "step": step,
                "grid": f"{grid}x{grid}",
                "channels": channels * factor**2,
                "params": format_count(params) if params is not None else "-",
            }
        )
    return rows


def _llm_line(text) -> str:
    heads = f"{text.num_attention_heads} heads"
    if getattr(text, "num_key_value_heads", None) not in (None, text.num_attention_heads):
        heads += f" ({text.num_key_value_heads} key/value)"
    return (
        f"{text.model_type} (Llama-family decoder): hidden size {text.hidden_size}, {text.num_hidden_layers} layers, "
        f"{heads}, vocabulary {text.vocab_size}, context {text.max_position_embeddings} tokens"
    )


def _md_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _training_section(training: dict | None, source: str | None) -> str:
    if training is None:
        if source:
            return (
                f"The weights are those of `{source}`, converted without further training; see the source model's "
                "card for its training stages and data (Eagle: pre-alignment of each expert with a frozen LLM, "
                "projector alignment, then supervised fine-tuning)."
            )
        return (
            "This folder carries no training record (`training.json`). A folder written by `eagle init` has "
            "**random weights**: its answers are noise until it is trained (`eagle train`)."
        )
    rows = []
    for stage in training.get("stages", []):
        steps = stage.get("max_steps") or (f"{stage['epochs']} epochs" if stage.get("epochs") else "-")
        lrs = ", ".join(f"{k} {v:g}" for k, v in (stage.get("lr") or {}).items()) or "-"
        loss = stage.get("final_loss")
        rows.append(
            [
                stage["name"],
                stage.get("kind", "-"),
                ", ".join(stage.get("train") or []) or "-",
                stage.get("data", "-"),
                steps,
                stage.get("batch_size", "-"),
                lrs,
                f"{loss:.4f}" if isinstance(loss, (int, float)) else "-",
            ]
        )
    parts = [
        "Eagle trains in stages: `prealign` trains each expert alone with its own projector against the frozen LLM, "
        "`align` trains the fused projector, `sft` fine-tunes what it lists.",
        "",
        _md_table(["stage", "kind", "trains", "data", "steps", "batch", "learning rates", "final loss"], rows),
    ]
    datasets = _datasets(training)
    if datasets:
        parts += ["", "Datasets: " + ", ".join(f"[{d}](https://huggingface.co/datasets/{d})" for d in datasets) + "."]
    return "\n".join(parts)


def _datasets(training: dict | None) -> list[str]:
    if not training:
        return []
    found = list(training.get("datasets") or [])
    for stage in training.get("stages", []):
        found += [d for d in stage.get("datasets") or [] if d not in found]
    return [d for d in found if is_hub_id(d)]


def _eval_section(results: list[EvalResult]) -> str:
    if not results:
        return "No evaluation results ship with this folder (`eval_results.json`)."
    rows = [
        [
            r.task_name or r.task_type,
            r.dataset_name,
            r.dataset_split or "-",
            r.metric_name or r.metric_type,
            r.metric_value,
        ]
        for r in results
    ]
    return "\n".join(
        [
            "Also in the card metadata (`model-index`), so the Hub shows them on the model page.",
            "",
            _md_table(["task", "dataset", "split", "metric", "value"], rows),
        ]
    )


def _title(repo_id: str | None, folder_name: str, source: str | None) -> str:
    if repo_id:
        return repo_id.split("/")[-1]
    if source:
        return f"{Path(source).name}-hf"
    return folder_name


def build_card(
    config,
    counts: dict,
    *,
    repo_id: str | None = None,
    folder_name: str = "eagle",
    source: str | None = None,
    training: dict | None = None,
    eval_results: list[EvalResult] | None = None,
    license: str | None = None,
    base_model=None,
    notes: str | None = None,
    processor_mode: str | None = None,
) -> ModelCard:
    """The card from an ``EagleConfig``, parameter counts (:func:`parameter_counts`) and what is known."""
    experts = list(config.vision_config.experts)
    types = list(dict.fromkeys(spec["type"] for spec in experts))
    training = training or None
    eval_results = eval_results or []
    title = _title(repo_id, folder_name, source)
    if base_model is None:
        base_model = list((training or {}).get("base_model") or [])
        if source and is_hub_id(source):
            base_model = [source, *base_model]
    base_model = [base_model] if isinstance(base_model, str) else list(base_model or [])
    base_model = [b for b in dict.fromkeys(base_model) if is_hub_id(b)] or None
    license = license or (training or {}).get("license") or ("cc-by-nc-4.0" if source else "apache-2.0")
    data = ModelCardData(
        model_name=title if eval_results else None,
        pipeline_tag="image-text-to-text",
        library_name="transformers",
        license=license,
        language=["en"],
        tags=[*BASE_TAGS, *types],
        base_model=base_model,
        datasets=_datasets(training) or None,
        eval_results=eval_results or None,
    )
    from eagle_hub.modeling_eagle.fusion_registry import FUSION_CLASSES

    rows = _expert_rows(config, counts)
    parts_table = _md_table(
        ["part", "parameters"],
        [[f"expert `{r['name']}`", r["params"]] for r in rows if r["name"] in counts["experts"]]
        + [["projector", format_count(counts["projector"])], ["language model", format_count(counts["llm"])]]
        + ([["other", format_count(counts["other"])]] if counts["other"] else [])
        + [["**total**", f"**{format_count(counts['total'])}** ({counts['total']:,})"]],
    )
    grid = config.vision_config.grid_size
    experts_table = _md_table(
        ["expert", "architecture", "input", f"to the {grid}x{grid} grid", "channels", "parameters"],
        [[r["name"], r["architecture"], r["input"], r["step"], r["channels"], r["params"]] for r in rows],
    )
    provenance = []
    if source:
        provenance.append(f"Converted from the NVEagle checkpoint `{source}` by `eagle convert`.")
        starts = [f"{t} from `{EXPERT_SOURCES[t]}`" for t in types if t in EXPERT_SOURCES]
        if starts:
            provenance.append("The authors initialised the experts " + ", ".join(starts) + ".")
    if notes:
        provenance.append(notes)
    return ModelCard.from_template(
        data,
        template_path=str(TEMPLATE),
        title=title,
        experts=[spec["name"] for spec in experts],
        grid=grid,
        channels=sum(row["channels"] for row in rows),
        projector_type=config.projector_type,
        fusion=config.fusion["type"],
        fusion_options=_fusion_options(config.fusion),
        fusion_sentence=FUSION_CLASSES[config.fusion["type"]].summary.format(
            grid=grid,
            channels=sum(row["channels"] for row in rows),
            tokens=config.image_seq_length,
            projector_type=config.projector_type,
        ),
        image_tokens=config.image_seq_length,
        released_processor=processor_mode == "released",
        provenance=" ".join(provenance),
        experts_table=experts_table,
        llm=_llm_line(config.text_config),
        projector_parameters=format_count(counts["projector"]),
        dtype=str(getattr(config, "dtype", None) or "float32").removeprefix("torch."),
        counted="read from the safetensors files" if counts["source"] == "safetensors" else "counted from the config",
        parts_table=parts_table,
        repo=repo_id or PLACEHOLDER_REPO,
        training_section=_training_section(training, source),
        eval_section=_eval_section(eval_results),
    )


def _fusion_options(fusion: dict) -> str:
    options = {key: value for key, value in fusion["options"].items() if value is not None}
    return " (" + ", ".join(f"{key} {value}" for key, value in options.items()) + ")" if options else ""


def _processor_mode(folder: Path) -> str | None:
    path = folder / "processor_config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("image_processor", {}).get("mode")
    except (json.JSONDecodeError, AttributeError):
        return None


def model_card_for_folder(
    folder,
    *,
    source: str | None = None,
    training=None,
    eval_results=None,
    repo_id: str | None = None,
    license: str | None = None,
    base_model=None,
    notes: str | None = None,
) -> ModelCard:
    """The ``ModelCard`` of an Eagle folder. ``training`` / ``eval_results``: a dict (list), a JSON path, or None to
    read ``training.json`` / ``eval_results.json`` from the folder when present. ``source``: the checkpoint a
    converted folder came from. ``repo_id`` goes into the usage snippets (a placeholder when None)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CardError(f"{folder}: not a folder")
    config = _load_config(folder)
    return build_card(
        config,
        parameter_counts(folder),
        repo_id=repo_id,
        folder_name=folder.resolve().name,
        source=source,
        training=load_training(training, folder),
        eval_results=load_eval_results(eval_results, folder),
        license=license,
        base_model=base_model,
        notes=notes,
        processor_mode=_processor_mode(folder),
    )


def write_model_card(folder, **kwargs) -> Path:
    """Write ``<folder>/README.md`` from :func:`model_card_for_folder` (same keyword arguments); returns its path.
    A dict ``training`` is also saved as ``<folder>/training.json`` so later cards keep it."""
    folder = Path(folder)
    card = model_card_for_folder(folder, **kwargs)
    if isinstance(kwargs.get("training"), dict):
        (folder / TRAINING_FILE).write_text(json.dumps(kwargs["training"], indent=2, default=str) + "\n")
    path = folder / "README.md"
    card.save(path)
    return path


def card_snippets(card) -> list[str]:
    """The ```python blocks of a card (``ModelCard`` or its text), in order."""
    return re.findall(r"```python\n(.*?)```", str(card), flags=re.S)


def converted_model_card(config, source: str, report: str, repo: str = "path/to/this/folder") -> ModelCard:
    """The card of a folder converted from an NVEagle checkpoint; names the source. Parameters are counted from the
    config (``model_card_for_folder`` reads them from the written weights instead)."""
    repo_id = repo if is_hub_id(repo) else None
    card = build_card(
        config,
        _shape_counts(_counts_from_config(config), "config"),
        repo_id=repo_id,
        folder_name=Path(str(source)).name or "eagle",
        source=str(source),
        notes=f"Conversion: {report}.",
        processor_mode="released",
    )
    if repo_id is None and repo != PLACEHOLDER_REPO:
        card.text = card.text.replace(PLACEHOLDER_REPO, repo)
    return card
