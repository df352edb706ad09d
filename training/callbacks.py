"""Trainer callbacks that do a stage's work around TRL's training loop.

- ``StageSetupCallback``: sets what trains (before the optimizer is built) and keeps frozen experts in eval
  mode without an autograd graph.
- ``TrainableParametersCallback``: logs trainable / total parameters per module at the start of the stage.
- ``FrozenWeightsCallback``: fingerprints every frozen tensor at the start and checks, bit for bit, that none
  moved by the end.
- ``StageSummaryCallback``: collects loss, tokens/s and timings for the stage summary.
- ``SaveFolderCallback``: writes the trained model as a Hub-ready folder when training ends (a LoRA stage saves
  its adapter beside it and the merged model in it).
"""

import json
import time

import torch
from transformers import TrainerCallback
from transformers.utils import logging

logger = logging.get_logger(__name__)


def eagle_of(model):
    """The EagleForConditionalGeneration inside a (possibly PEFT-wrapped) model."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def module_of(name: str) -> str:
    """A readable module label for a parameter name: ``expert:clip``, ``projector``, ``llm`` or ``lora``."""
    if "lora_" in name:
        return "lora"
    if "vision_tower.experts." in name:
        return "expert:" + name.split("vision_tower.experts.")[1].split(".")[0]
    if "multi_modal_projector" in name:
        return "projector"
    return "llm"


class StageSetupCallback(TrainerCallback):
    """Applies the stage's ``train`` list: experts (all or by name), ``projector``, ``llm``.

    Under PEFT the adapter decides what of the LLM and projector trains; this callback then only sets experts.
    """

    def __init__(self, train: list[str]):
        self.train = set(train)

    def apply(self, model) -> None:
        eagle = eagle_of(model)
        peft = eagle is not model
        tower = eagle.model.vision_tower
        trainable_experts = set(tower.experts) if "experts" in self.train else self.train & set(tower.experts)
        tower.freeze_experts(set(tower.experts) - trainable_experts)
        if not peft:
            eagle.model.multi_modal_projector.requires_grad_("projector" in self.train)
            llm_trains = "llm" in self.train
            eagle.model.language_model.requires_grad_(llm_trains)
            eagle.lm_head.requires_grad_(llm_trains)

    def on_init_end(self, args, state, control, model=None, **kwargs):
        self.apply(model)


class TrainableParametersCallback(TrainerCallback):
    def __init__(self):
        self.table: dict[str, tuple[int, int]] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        counts: dict[str, list[int]] = {}
        for name, parameter in model.named_parameters():
            entry = counts.setdefault(module_of(name), [0, 0])
            entry[1] += parameter.numel()
            if parameter.requires_grad:
                entry[0] += parameter.numel()
        self.table = {module: tuple(entry) for module, entry in sorted(counts.items())}
        if state.is_world_process_zero:
            for module, (trainable, total) in self.table.items():
                logger.info("  %-20s trainable %12s / %12s", module, f"{trainable:,}", f"{total:,}")


def fingerprint(tensor: torch.Tensor, chunk: int = 1 << 24) -> tuple[int, int]:
    """An exact fingerprint of a tensor's bits: a plain and a position-weighted sum of its raw bytes, computed
    in chunks so a 7B LLM needs no copy of itself."""
    raw = tensor.detach().contiguous().view(-1).view(torch.uint8)
    total = weighted = 0
    for start in range(0, raw.numel(), chunk):
        part = raw[start : start + chunk].to(torch.int64)
        weights = torch.arange(start, start + part.numel(), device=raw.device, dtype=torch.int64) % 65521 + 1
        total += int(part.sum())
        weighted += int((part * weights).sum())
    return total, weighted


class FrozenWeightsCallback(TrainerCallback):
    """Checks at the end of the stage that no frozen tensor changed; raises if one did."""

    def __init__(self):
        self.before: dict[str, tuple[int, int]] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = {n: fingerprint(p) for n, p in model.named_parameters() if not p.requires_grad}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        params = dict(model.named_parameters())
        moved = [name for name, print_ in self.before.items() if fingerprint(params[name]) != print_]
        if moved:
            raise RuntimeError(f"frozen weights moved during the stage: {moved[:10]} ({len(moved)} in all)")
        logger.info("frozen weights unchanged: %d tensors checked bit for bit", len(self.before))


class StageSummaryCallback(TrainerCallback):
    def __init__(self):
        self.losses: list[float] = []
        self.tokens = 0
        self.started = 0.0
        self.seconds = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))
        if logs and "num_tokens" in logs:
            self.tokens = int(logs["num_tokens"])

    def on_train_end(self, args, state, control, **kwargs):
        self.seconds = time.perf_counter() - self.started

    def summary(self) -> dict:
        return {
            "losses": self.losses,
            "tokens": self.tokens,
            "tokens_per_second": self.tokens / self.seconds if self.seconds else None,
            "seconds": self.seconds,
        }


def save_stage_folder(folder, processor, model, training: dict | None = None, subfolders=None) -> None:
    """A stage's result as a Hub-ready folder: the model (cache back on), its ``training.json`` and model card."""
    from eagle_hub.hub_cards.model_card import TRAINING_FILE, write_model_card
    from eagle_hub.modeling_eagle.hub_folder import save_folder

    model.config.use_cache = model.config.text_config.use_cache = True  # TRL turns it off to train
    save_folder(
        folder,
        processor,
        model=model,
        overwrite=True,
        subfolders=subfolders,
        extra_files={TRAINING_FILE: json.dumps(training, indent=2)} if training else None,
        card=lambda staging: write_model_card(staging, training=training),
    )


class SaveFolderCallback(TrainerCallback):
    """At the end of training, writes the model as a Hub-ready folder with its model card (main process only).

    Under PEFT the adapter (LoRA and the projector copy) goes to ``adapter_folder`` and the folder holds the merged
    model. ``self.model`` is then the plain Eagle the next stage continues from, on every process.
    ``training`` is the card's training record; the stage's final loss is filled in from ``summary``.
    """

    def __init__(self, folder, processor, *, training=None, summary=None, adapter_folder=None):
        self.folder, self.processor, self.adapter_folder = folder, processor, adapter_folder
        self.training, self.summary = training, summary
        self.model = None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if hasattr(model, "merge_and_unload"):
            if state.is_world_process_zero:
                model.save_pretrained(self.adapter_folder)
            model = model.merge_and_unload()
        self.model = model = eagle_of(model)
        model.config.use_cache = model.config.text_config.use_cache = True  # on every process: it trains on
        if not state.is_world_process_zero:
            return
        training = json.loads(json.dumps(self.training)) if self.training else None
        if training and self.summary is not None and self.summary.losses:
            training["stages"][-1]["final_loss"] = self.summary.losses[-1]
        save_stage_folder(self.folder, self.processor, model, training)
