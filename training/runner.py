"""One runner for every recipe: builds the model, then runs each stage with TRL's SFTTrainer on the same model.

Stage kinds:
- ``prealign``: each expert alone, with its own fresh projector, against the frozen LLM (the LLM and the
  expert's modules are shared with the full model, so training moves the full model's expert in place). Each
  pre-aligned expert is saved as a single-expert Eagle under ``<stage>/experts/<name>``. The fused projector
  of the next stage then starts fresh.
- ``align`` / ``sft``: the full model, training what the stage's ``train`` list says.

Every stage ends with a Hub-ready folder ``<output>/<stage name>`` (written atomically, so its presence marks
the stage complete). ``resume=True`` skips complete stages, loading their folder, and continues the current
stage from its last complete checkpoint in ``<output>/checkpoints/<stage name>``.

``<output>/summary.json`` has, per stage (per expert for ``prealign``), the logged losses, tokens/s, trainable
parameters, steps, and how the stage ran: ``world_size`` (processes that trained together), ``distributed_type``
(accelerate's) and ``samples_by_rank`` (the dataset indices each process trained on in this invocation, in order;
a resumed stage lists only those after its checkpoint).
"""

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from transformers import AutoModelForImageTextToText, AutoProcessor
from transformers.utils import logging
from trl import SFTConfig

from eagle_hub.hub_cards.model_card import TRAINING_FILE, write_model_card
from eagle_hub.modeling_eagle.hub_folder import build_processor, save_folder
from eagle_hub.modeling_eagle.modeling_eagle import FUSION_CLASSES, EagleForConditionalGeneration
from eagle_hub.processing.locations import is_hub_id

from .callbacks import FrozenWeightsCallback, StageSummaryCallback, TrainableParametersCallback
from .collator import SAMPLE_INDEX, make_collator
from .engine import check_before_start, check_engine
from .recipe import Recipe, Stage, check_trainable_names, load_recipe
from .trainable import eagle_of, set_trainable
from .trainer import EagleSFTTrainer

logger = logging.get_logger(__name__)


def build_start(recipe: Recipe):
    """The model and processor a recipe starts from: a preset (random, local tokenizer) or a folder."""
    spec = recipe.model
    dtype = getattr(torch, spec.get("dtype", "float32"))
    if "path" in spec:
        path = recipe.resolve(spec["path"])
        return (
            AutoModelForImageTextToText.from_pretrained(path, dtype=dtype),
            AutoProcessor.from_pretrained(path),
        )
    from eagle_hub.modeling_eagle.hub_folder import vocab_size_for
    from eagle_hub.modeling_eagle.presets import eagle_config
    from eagle_hub.processing.local_tokenizer import build_tokenizer

    tokenizer = build_tokenizer(spec.get("tokenizer_corpus"))
    config = eagle_config(
        spec["preset"],
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vocab_size=vocab_size_for(spec["preset"], len(tokenizer)),
        **spec.get("overrides", {}),
    )
    torch.manual_seed(recipe.seed)
    model = EagleForConditionalGeneration(config)
    if spec.get("zero_query_init"):
        # An LLM trained from scratch: with zero queries every head starts as a uniform average over the context,
        # so the experts' first gradients are pooled rather than scattered by random attention (docs/quickstart.md
        # has what it gained).
        for layer in model.model.language_model.layers:
            torch.nn.init.zeros_(layer.self_attn.q_proj.weight)
    template = {"chat_template": spec["chat_template"]} if "chat_template" in spec else {}
    return model.to(dtype), build_processor(config, tokenizer, **template)


def stage_arguments(stage: Stage, output_dir: Path, seed: int) -> SFTConfig:
    use_cpu = not torch.cuda.is_available()
    return SFTConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=stage.batch_size,
        gradient_accumulation_steps=stage.grad_accum,
        learning_rate=max(stage.lr.values()) if stage.lr else 1e-4,
        lr_scheduler_type=stage.schedule,
        # transformers 5 has one warm-up setting, warmup_steps, and reads a value below 1 as a fraction of the total
        # steps: the recipe's warmup_ratio, which the recipe checks is below 1.
        warmup_steps=stage.warmup_ratio,
        weight_decay=stage.weight_decay,
        num_train_epochs=stage.epochs if stage.epochs is not None else 1,
        max_steps=stage.max_steps if stage.max_steps is not None else -1,
        seed=seed,
        data_seed=seed,
        bf16=stage.bf16,
        gradient_checkpointing=stage.gradient_checkpointing,
        max_length=stage.max_length,
        assistant_only_loss=True,
        save_strategy="steps",
        save_steps=stage.save_steps,
        save_total_limit=2,
        logging_steps=stage.logging_steps,
        report_to="none",
        # The loss divides by the supervised tokens of every process (EagleSFTTrainer has why); the default, set
        # here so that a change of default cannot make a multi-process step differ from a single-process one.
        average_tokens_across_devices=True,
        use_cpu=use_cpu,
        dataloader_pin_memory=not use_cpu,
        remove_unused_columns=False,
        train_sampling_strategy="random" if stage.shuffle else "sequential",
        disable_tqdm=False,
    )


def checkpoint_is_complete(path: Path) -> bool:
    """The Trainer writes weights, optimizer, scheduler, RNG state, and trainer_state.json last; a process killed
    mid-save leaves that file missing or cut short."""
    try:
        json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    has_weights = any(path.glob("*.safetensors"))
    return has_weights and (path / "optimizer.pt").is_file() and (path / "scheduler.pt").is_file()


def last_checkpoint(folder: Path) -> str | None:
    """The newest complete checkpoint in ``folder`` (incomplete ones, from a kill mid-save, are skipped)."""
    if not folder.is_dir():
        return None
    done = [p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit() and checkpoint_is_complete(p)]
    return str(max(done, key=lambda p: int(p.name.split("-")[-1]))) if done else None


def build_trainer(
    model, processor, stage: Stage, dataset, checkpoints: Path, seed: int, callbacks=()
) -> EagleSFTTrainer:
    """The stage's SFTTrainer: per-group learning rates, LoRA when the stage asks for it, what trains set."""
    peft_config, lora = None, stage.lora_settings
    if lora is not None:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            task_type="CAUSAL_LM",
            target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
            modules_to_save=["multi_modal_projector"] if "projector" in stage.train else None,
        )
    if isinstance(dataset, datasets.Dataset) and SAMPLE_INDEX not in dataset.column_names:
        # Each row's position rides along to the trainer, which records what every process trained on.
        dataset = dataset.add_column(SAMPLE_INDEX, list(range(len(dataset))))
    trainer = EagleSFTTrainer(
        model=model,
        args=stage_arguments(stage, checkpoints, seed),
        train_dataset=dataset,
        processing_class=processor,
        data_collator=make_collator(processor, stage.max_length),
        callbacks=list(callbacks),
        peft_config=peft_config,
        group_lr=stage.lr,
    )
    # The accelerator the trainer built is what will run: refuse here, before any step, if it is not what was asked.
    check_engine(trainer.accelerator.distributed_type, trainer.accelerator.num_processes)
    # After construction: PEFT wraps the model inside it (freezing everything but the adapter); the optimizer is
    # built from what trains when training starts.
    set_trainable(trainer.model, stage.train)
    return trainer


def train_stage(
    model, processor, stage: Stage, dataset, checkpoints: Path, recipe: Recipe, resume: bool, adapter_folder=None
) -> tuple[EagleForConditionalGeneration, dict]:
    """Train ``model`` for one stage; returns the trained Eagle (a LoRA stage's adapter merged in, and saved to
    ``adapter_folder`` first) and the stage's summary."""
    summary, parameters = StageSummaryCallback(), TrainableParametersCallback()
    callbacks = [parameters, FrozenWeightsCallback(), summary]
    trainer = build_trainer(model, processor, stage, dataset, checkpoints, recipe.seed, callbacks)
    trainer.train(resume_from_checkpoint=last_checkpoint(checkpoints) if resume else None)
    trained = trainer.model
    if hasattr(trained, "merge_and_unload"):
        if is_main_process() and adapter_folder is not None:
            trained.save_pretrained(adapter_folder)
        trained = trained.merge_and_unload()
    trainer.accelerator.wait_for_everyone()
    # One list per process, in rank order: what shows the processes split the data rather than each training alone.
    samples_by_rank = gather_object([trainer.trained_samples])
    trained = eagle_of(trained)
    trained.config.use_cache = trained.config.text_config.use_cache = True  # TRL turns it off to train
    result = {
        **summary.summary(),
        "trainable_parameters": {part: counts[0] for part, counts in parameters.table.items()},
        "steps": trainer.state.global_step,
        "world_size": trainer.accelerator.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type.value),
        "samples_by_rank": samples_by_rank,
    }
    return trained, result


def save_stage_folder(folder, processor, model, training: dict | None = None, subfolders=None) -> None:
    """A stage's result as a Hub-ready folder (main process only): the model, its ``training.json`` and card."""
    if not is_main_process():
        return
    save_folder(
        folder,
        processor,
        model=model,
        overwrite=True,
        subfolders=subfolders,
        extra_files={TRAINING_FILE: json.dumps(training, indent=2)} if training else None,
        card=lambda staging: write_model_card(staging, training=training),
    )


def training_record(recipe: Recipe, summaries: dict | None = None, upto: str | None = None) -> dict:
    """The ``training.json`` record (what the model card shows) of a run: the recipe's stages up to and including
    ``upto``, with each trained stage's final loss from the runner's ``summaries``. ``hf`` data that is not a local
    path is a Hub dataset id (as the loader reads it) and goes to the card's metadata."""
    summaries = summaries or {}
    stages, datasets = [], []
    for stage in recipe.stages:
        data = stage.data
        local = recipe.resolve(data.path, recipe.data_dir).exists()
        hub_data = [data.path] if data.format == "hf" and is_hub_id(data.path) and not local else []
        datasets += [d for d in hub_data if d not in datasets]
        entry = {
            "name": stage.name,
            "kind": stage.kind,
            "train": list(stage.train),
            "data": f"{data.path} ({data.format})",
            "datasets": hub_data,
            "max_steps": stage.max_steps,
            "epochs": stage.epochs,
            "batch_size": stage.batch_size * stage.grad_accum,
            "lr": dict(stage.lr),
            "lora": None if stage.lora_settings is None else dict(vars(stage.lora_settings)),
        }
        losses = (summaries.get(stage.name) or {}).get("losses")
        if losses:
            entry["final_loss"] = float(losses[-1])
        stages.append(entry)
        if stage.name == upto:
            break
    record = {"stages": stages, "datasets": datasets}
    if is_hub_id(recipe.model.get("path")):
        record["base_model"] = [recipe.model["path"]]
    return record


def single_expert_model(model: EagleForConditionalGeneration, name: str, seed: int) -> EagleForConditionalGeneration:
    """A one-expert Eagle sharing ``name``'s expert, the LLM and the head with ``model``; its projector is new.

    Whatever ``model``'s fusion, the expert pre-aligns through a plain projector (``channel_concat`` of one expert):
    the strategies differ in how experts meet, and pre-alignment sees one expert at a time."""
    config = copy.deepcopy(model.config)
    config.vision_config.experts = [s for s in config.vision_config.experts if s["name"] == name]
    config.fusion = {"type": "channel_concat", "options": {}}
    with torch.device("meta"):
        single = EagleForConditionalGeneration(config)
    single.model.vision_tower.experts[name] = model.model.vision_tower.experts[name]
    single.model.language_model = model.model.language_model
    single.lm_head = model.lm_head
    tower = single.model.vision_tower
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        single.model.multi_modal_projector = FUSION_CLASSES["channel_concat"](config, tower.expert_channels()).to(
            model.dtype
        )
    return single


def is_main_process() -> bool:
    """Only the main process writes folders under ``accelerate launch``; the others keep training in step."""
    return PartialState().is_main_process


@dataclass
class Run:
    """A recipe run in progress: what every stage kind reads, and the model it trains in turn."""

    recipe: Recipe
    output: Path
    resume: bool
    dataset: Callable
    model: EagleForConditionalGeneration
    processor: object


def train_listed(run: Run, stage: Stage) -> tuple[EagleForConditionalGeneration, dict, dict | None]:
    """``align`` and ``sft``: the full model, training what the stage's ``train`` list names."""
    checkpoints = run.output / "checkpoints" / stage.name
    adapter = run.output / f"{stage.name}-adapter"
    model, summary = train_stage(
        run.model, run.processor, stage, run.dataset(stage), checkpoints, run.recipe, run.resume, adapter
    )
    return model, summary, None


def prealign(run: Run, stage: Stage) -> tuple[EagleForConditionalGeneration, dict, dict | None]:
    """Each expert alone with its own fresh projector against the frozen LLM; the pre-aligned experts go into the
    stage folder's ``experts/``, and the fused projector starts fresh for the next stage."""
    model, recipe, summaries = run.model, run.recipe, {}
    # Each pre-aligned expert is saved as soon as it is done (resume skips it); the stage folder copies them in.
    experts_dir = run.output / "checkpoints" / stage.name / "experts"
    for index, name in enumerate(model.model.vision_tower.experts):
        expert_dir = experts_dir / name
        # New weights come from fixed seeds, so a resumed run draws exactly what an uninterrupted one drew.
        single = single_expert_model(model, name, seed=recipe.seed + 1 + index)
        single_processor = build_processor(single.config, copy.deepcopy(run.processor.tokenizer))
        single_processor.chat_template = run.processor.chat_template
        if run.resume and (expert_dir / "config.json").is_file():
            done = AutoModelForImageTextToText.from_pretrained(expert_dir, dtype=model.dtype)
            model.model.vision_tower.experts[name].load_state_dict(done.model.vision_tower.experts[name].state_dict())
            logger.info("stage %s: expert %s already pre-aligned, loaded", stage.name, name)
            continue
        logger.info("stage %s: pre-aligning expert %s", stage.name, name)
        expert_stage = copy.copy(stage)
        expert_stage.train = [name, "projector"]
        checkpoints = experts_dir.parent / name
        single, summaries[name] = train_stage(
            single, single_processor, expert_stage, run.dataset(stage), checkpoints, recipe, run.resume
        )
        save_stage_folder(expert_dir, single_processor, single)
    # The fused projector (the fusion strategy's module) of the next stage starts fresh, as in the paper's recipe:
    # the per-expert projectors of pre-alignment are discarded.
    with torch.random.fork_rng():
        torch.manual_seed(recipe.seed)
        model.model.multi_modal_projector.reset_parameters()
    return model, summaries, {"experts": experts_dir}


# What each stage kind of a recipe runs (recipe.STAGE_KINDS names them); a new kind is a function here.
STAGE_RUNNERS = {"prealign": prealign, "align": train_listed, "sft": train_listed}


def format_summary(summaries: dict) -> str:
    """One line per trained unit: loss first -> last, tokens/s, trainable parameters by module."""
    lines = [f"{'stage':<28} {'loss':>17} {'tokens/s':>9}  trainable parameters"]

    def line(label, summary):
        losses = summary.get("losses") or [float("nan")]
        trainable = ", ".join(f"{m} {n:,}" for m, n in summary.get("trainable_parameters", {}).items() if n)
        speed = summary.get("tokens_per_second") or 0.0
        lines.append(f"{label:<28} {losses[0]:>7.3f} -> {losses[-1]:<7.3f} {speed:>9.0f}  {trainable}")

    for stage, summary in summaries.items():
        if "losses" in summary:
            line(stage, summary)
        else:  # pre-alignment: one run per expert
            for expert, expert_summary in summary.items():
                line(f"{stage}/{expert}", expert_summary)
    return "\n".join(lines)


def run_recipe(recipe, output_dir, resume: bool = False, dataset_loader=None) -> dict:
    """Run every stage of ``recipe`` (a path or a Recipe) into ``output_dir``; returns the per-stage summary."""
    recipe = load_recipe(recipe) if not isinstance(recipe, Recipe) else recipe
    check_before_start(cuda_available=torch.cuda.is_available())
    output = Path(output_dir)
    if output.exists() and any(output.iterdir()) and not resume:
        raise FileExistsError(f"{output} is not empty; pass --resume to continue a run, or choose another output")
    output.mkdir(parents=True, exist_ok=True)
    if dataset_loader is None:
        from .data import load_data

        def dataset_loader(stage):
            return load_data(stage.data.__dict__, recipe.data_dir)

    cache = {}

    def dataset_for(stage):
        key = json.dumps(stage.data.__dict__, sort_keys=True)
        if key not in cache:
            cache[key] = dataset_loader(stage)
        return cache[key]

    model, processor = build_start(recipe)
    check_trainable_names(recipe, list(model.model.vision_tower.experts))
    run = Run(recipe, output, resume, dataset_for, model, processor)
    summaries = {}
    for stage in recipe.stages:
        stage_dir = output / stage.name
        if resume and (stage_dir / "config.json").is_file():
            logger.info("stage %s is complete; loading %s", stage.name, stage_dir)
            run.model = AutoModelForImageTextToText.from_pretrained(stage_dir, dtype=run.model.dtype)
            run.processor = AutoProcessor.from_pretrained(stage_dir)
            continue
        logger.info("stage %s (%s): training %s", stage.name, stage.kind, ", ".join(stage.train))
        run.model, summaries[stage.name], subfolders = STAGE_RUNNERS[stage.kind](run, stage)
        training = training_record(recipe, summaries, upto=stage.name)
        save_stage_folder(stage_dir, run.processor, run.model, training, subfolders=subfolders)
        if is_main_process():
            (output / "summary.json").write_text(json.dumps(summaries, indent=2, default=str))
    return summaries
