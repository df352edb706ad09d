"""Training recipes: Eagle's stages as data.

A recipe is a YAML file (schema below; ``training/recipes/`` ships ``eagle-x5-paper.yaml`` and ``tiny.yaml``):

```yaml
model: {preset: eagle-x5-tiny}          # or {path: ./a-folder}; optional dtype: float32|bfloat16, and for a
                                        # preset: chat_template, tokenizer_corpus, overrides, zero_query_init
seed: 0
data_root: ./data                       # optional; relative data paths start here (default: the recipe's folder)
eval: {format: hf, path: hf/sft_heldout}  # optional held-out split (same rules as a stage's data); `eagle train`
                                        # ignores it, `eagle search-experts` reports each trial's score on it
validation: {format: hf, path: hf/sft_validation}  # optional split carved from the training data, disjoint from
                                        # eval; `eagle search-experts` chooses on it, `eagle train` ignores it
stages:
  - name: stage1-prealign               # the stage's folder under the output directory
    kind: prealign                      # prealign (each expert alone, own projector) | align | sft
    train: [experts, projector]         # experts | <expert name> | projector | llm | lora
    data: {format: llava, path: sft.json, image_folder: .}     # or {format: hf, path: ./hf/sft}
    lr: {vision: 1.0e-4, projector: 1.0e-3, llm: 2.0e-5}       # per parameter group
    epochs: 1                           # or max_steps: N
    batch_size: 4                       # per device
    grad_accum: 1
    schedule: cosine                    # any transformers lr_scheduler_type
    warmup_ratio: 0.03
    weight_decay: 0.0
    max_length: null                    # never truncate through image tokens
    bf16: false
    gradient_checkpointing: false
    save_steps: 50                      # checkpoint interval for --resume
    shuffle: true                       # false: read the data in order
    lora: null                          # or {r: 8, alpha: 16, dropout: 0.0}
```

Every error names the field at fault.
"""

from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from eagle_hub.processing.locations import resolve_path

STAGE_KINDS = ("prealign", "align", "sft")
LR_GROUPS = ("vision", "projector", "llm")
DATA_FORMATS = ("llava", "hf")


class RecipeError(ValueError):
    """A recipe field is missing or wrong; the message names it."""


@dataclass
class DataSpec:
    format: str
    path: str
    image_folder: str | None = None
    split: str | None = None
    skip_bad: bool = False
    max_samples: int | None = None


@dataclass
class LoraSpec:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0


@dataclass
class Stage:
    name: str
    kind: str
    train: list[str]
    data: DataSpec
    lr: dict[str, float]
    epochs: float | None = None
    max_steps: int | None = None
    batch_size: int = 1
    grad_accum: int = 1
    schedule: str = "cosine"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_length: int | None = None
    bf16: bool = False
    gradient_checkpointing: bool = False
    save_steps: int = 50
    logging_steps: int = 5
    shuffle: bool = True
    lora: LoraSpec | None = None

    @property
    def lora_settings(self) -> LoraSpec | None:
        """The LoRA settings the stage trains with: its ``lora`` entry, or the defaults when ``train`` names
        ``lora`` without one; None for a stage without LoRA."""
        return self.lora if self.lora is not None else (LoraSpec() if "lora" in self.train else None)


@dataclass
class Recipe:
    model: dict
    stages: list[Stage]
    seed: int = 0
    data_root: str | None = None
    eval: DataSpec | None = None
    validation: DataSpec | None = None
    base_dir: Path = field(default_factory=Path.cwd)

    @property
    def data_dir(self) -> Path:
        """Where relative data paths start: ``data_root`` (relative to the recipe file) or the recipe's folder."""
        return resolve_path(self.data_root, self.base_dir) if self.data_root else self.base_dir

    def resolve(self, path: str, base: Path | None = None) -> Path:
        """A path of the recipe: relative to ``base`` (default: the recipe file's folder)."""
        return resolve_path(path, base if base is not None else self.base_dir)


def _fail(where: str, message: str):
    raise RecipeError(f"{where}: {message}")


def _number(value, where: str, minimum: float = 0.0, integer: bool = False):
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or value < minimum:
        kind = "an integer" if integer else "a number"
        _fail(where, f"expected {kind} >= {minimum}, got {value!r}")
    return value


def _known_keys(raw: dict, cls, where: str) -> None:
    allowed = {f.name for f in fields(cls)} - {"base_dir"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        _fail(where, f"unknown field(s) {unknown}; allowed: {sorted(allowed)}")


def _parse_data(raw, where: str) -> DataSpec:
    if not isinstance(raw, dict):
        _fail(where, f"expected a mapping with format and path, got {raw!r}")
    _known_keys(raw, DataSpec, where)
    if raw.get("format") not in DATA_FORMATS:
        _fail(f"{where}.format", f"expected one of {', '.join(DATA_FORMATS)}, got {raw.get('format')!r}")
    if not isinstance(raw.get("path"), str):
        _fail(f"{where}.path", f"expected a path, got {raw.get('path')!r}")
    if raw.get("max_samples") is not None:
        _number(raw["max_samples"], f"{where}.max_samples", 1, integer=True)
    return DataSpec(**raw)


def _parse_stage(raw, index: int, names: set) -> Stage:
    where = f"stages[{index}]"
    if not isinstance(raw, dict):
        _fail(where, f"expected a mapping, got {type(raw).__name__}")
    _known_keys(raw, Stage, where)
    for required in ("name", "kind", "train", "data", "lr"):
        if required not in raw:
            _fail(f"{where}.{required}", "missing")
    if not isinstance(raw["name"], str) or not raw["name"] or "/" in raw["name"]:
        _fail(f"{where}.name", f"expected a folder name, got {raw['name']!r}")
    if raw["name"] in names:
        _fail(f"{where}.name", f"{raw['name']!r} is used by an earlier stage")
    if raw["kind"] not in STAGE_KINDS:
        _fail(f"{where}.kind", f"expected one of {', '.join(STAGE_KINDS)}, got {raw['kind']!r}")
    train = raw["train"]
    if not isinstance(train, list) or not train or not all(isinstance(t, str) for t in train):
        _fail(f"{where}.train", f"expected a non-empty list of module names, got {train!r}")
    lr = raw["lr"]
    if not isinstance(lr, dict):
        _fail(f"{where}.lr", f"expected a mapping of {', '.join(LR_GROUPS)} to numbers, got {lr!r}")
    for group, value in lr.items():
        if group not in LR_GROUPS:
            _fail(f"{where}.lr.{group}", f"unknown group; use {', '.join(LR_GROUPS)}")
        _number(value, f"{where}.lr.{group}")
    if (raw.get("epochs") is None) == (raw.get("max_steps") is None):
        _fail(where, "give exactly one of epochs or max_steps")
    if raw.get("epochs") is not None:
        _number(raw["epochs"], f"{where}.epochs", 0.0)
    if raw.get("max_steps") is not None:
        _number(raw["max_steps"], f"{where}.max_steps", 1, integer=True)
    for key in ("batch_size", "grad_accum", "save_steps", "logging_steps"):
        if key in raw:
            _number(raw[key], f"{where}.{key}", 1, integer=True)
    for key in ("warmup_ratio", "weight_decay"):
        if key in raw:
            _number(raw[key], f"{where}.{key}")
    if raw.get("warmup_ratio", 0) >= 1:
        _fail(f"{where}.warmup_ratio", f"expected a fraction below 1, got {raw['warmup_ratio']!r}")
    if raw.get("max_length") is not None:
        _number(raw["max_length"], f"{where}.max_length", 1, integer=True)
    lora = raw.get("lora")
    if lora is not None:
        if not isinstance(lora, dict):
            _fail(f"{where}.lora", f"expected a mapping (r, alpha, dropout) or null, got {lora!r}")
        _known_keys(lora, LoraSpec, f"{where}.lora")
        lora = LoraSpec(**lora)
    values = {**raw, "data": _parse_data(raw["data"], f"{where}.data"), "lora": lora}
    return Stage(**values)


def check_trainable_names(recipe: Recipe, expert_names: list[str]) -> None:
    """``train`` entries must name modules the model has; run once the model is known."""
    allowed = {"experts", "projector", "llm", "lora", *expert_names}
    for index, stage in enumerate(recipe.stages):
        unknown = [name for name in stage.train if name not in allowed]
        if unknown:
            _fail(f"stages[{index}].train", f"unknown module(s) {unknown}; use {sorted(allowed)}")


def parse_recipe(raw, base_dir: Path) -> Recipe:
    if not isinstance(raw, dict):
        _fail("recipe", "expected a mapping with model and stages")
    _known_keys(raw, Recipe, "recipe")
    model = raw.get("model")
    if not isinstance(model, dict) or not (("preset" in model) ^ ("path" in model)):
        _fail("model", f"expected {{preset: NAME}} or {{path: FOLDER}}, got {model!r}")
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        _fail("stages", "expected a non-empty list of stages")
    seed = _number(raw.get("seed", 0), "seed", 0, integer=True)
    stages, names = [], set()
    for index, stage_raw in enumerate(stages_raw):
        stage = _parse_stage(stage_raw, index, names)
        names.add(stage.name)
        stages.append(stage)
    data_root = raw.get("data_root")
    if data_root is not None and not isinstance(data_root, str):
        _fail("data_root", f"expected a folder path, got {data_root!r}")
    held_out = None if raw.get("eval") is None else _parse_data(raw["eval"], "eval")
    validation = None if raw.get("validation") is None else _parse_data(raw["validation"], "validation")
    return Recipe(
        model=model,
        stages=stages,
        seed=seed,
        data_root=data_root,
        eval=held_out,
        validation=validation,
        base_dir=base_dir,
    )


def load_recipe(path) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise RecipeError(f"{path}: not valid YAML ({error})") from error
    return parse_recipe(raw, path.resolve().parent)
