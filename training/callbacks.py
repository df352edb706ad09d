"""Trainer callbacks that watch a stage: they observe and check, the runner does the work.

- ``TrainableParametersCallback``: trainable / total parameters per part of the model, logged at the start.
- ``FrozenWeightsCallback``: fingerprints every frozen parameter and buffer at the start and checks, bit for bit,
  that none moved by the end.
- ``StageSummaryCallback``: loss, tokens/s and timings for the stage summary.
"""

import logging
import time

import torch
from transformers import TrainerCallback

from eagle_hub.modeling_eagle.parts import part_of

logger = logging.getLogger(__name__)


class TrainableParametersCallback(TrainerCallback):
    def __init__(self):
        self.table: dict[str, tuple[int, int]] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        counts: dict[str, list[int]] = {}
        for name, parameter in model.named_parameters():
            entry = counts.setdefault(part_of(name), [0, 0])
            entry[1] += parameter.numel()
            if parameter.requires_grad:
                entry[0] += parameter.numel()
        self.table = {part: tuple(entry) for part, entry in sorted(counts.items())}
        if state.is_world_process_zero:
            for part, (trainable, total) in self.table.items():
                logger.info("  %-20s trainable %12s / %12s", part, f"{trainable:,}", f"{total:,}")


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


def frozen_tensors(model) -> dict[str, torch.Tensor]:
    """Every tensor the stage must not change: parameters that do not train, and the buffers (running statistics,
    rope and position tables) of every module none of whose own parameters trains."""
    frozen = {f"parameter {n}": p for n, p in model.named_parameters() if not p.requires_grad}
    for prefix, module in model.named_modules():
        if not any(p.requires_grad for p in module.parameters(recurse=False)):
            frozen.update({f"buffer {prefix}.{n}": b for n, b in module.named_buffers(recurse=False)})
    return frozen


class FrozenWeightsCallback(TrainerCallback):
    """Checks at the end of the stage that no frozen parameter or buffer changed; raises if one did."""

    def __init__(self):
        self.before: dict[str, tuple[int, int]] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = {name: fingerprint(tensor) for name, tensor in frozen_tensors(model).items()}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        after = frozen_tensors(model)
        moved = [name for name, before in self.before.items() if fingerprint(after[name]) != before]
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
