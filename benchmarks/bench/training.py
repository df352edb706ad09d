"""The training rows.

- Training: a warm-up step, then the median of a few steps (forward, backward, AdamW step) on a batch of a few
  samples, per stage, with the stages' real freezing: stage 2 (``align``) trains the projector, stage 3 (``sft``)
  the experts, projector and LLM, as in ``training/recipes``, applied by the runner's ``set_trainable``.
  Peak memory is what the steps add to what the model and its inputs already hold (gradients, AdamW state,
  activations): on CUDA ``max_memory_allocated`` above the allocation before the first step; on CPU, where torch
  keeps no allocator statistics, each stage runs in a fresh process and the figure is its peak resident memory
  (``VmHWM``, reset before the first step) above its resident memory then.
"""

import multiprocessing
import os
import statistics
import time

import torch
from transformers.utils import logging

from eagle_hub.training import quiet_bitsandbytes_cpu_warning

from .models import Models, build_models, make_inputs
from .settings import DTYPES, STAGES, Settings
from .timing import ms, synchronize

logger = logging.get_logger(__name__)
# The training steps run in fresh processes (forkserver-preloaded with this module) that import bitsandbytes.
quiet_bitsandbytes_cpu_warning()


def freeze_for_stage(models: Models, kind: str, stage: str) -> torch.nn.Module:
    """Set what trains in ``stage`` for one model; return that model."""
    train = STAGES[stage]
    if kind == "eagle":
        from eagle_hub.training.trainable import set_trainable

        set_trainable(models.eagle, train)
        return models.eagle
    model = models.llava if kind == "llava" else models.llm
    model.requires_grad_(False)
    if kind == "llava":
        model.model.vision_tower.requires_grad_("experts" in train)
        model.model.multi_modal_projector.requires_grad_("projector" in train)
        model.model.language_model.requires_grad_("llm" in train)
        model.lm_head.requires_grad_("llm" in train)
    else:
        model.requires_grad_("llm" in train)
    return model


def training_batch(models: Models, kind: str, batch: int, device: torch.device, dtype: torch.dtype) -> dict:
    inputs = getattr(make_inputs(models, batch, device, dtype), kind)
    ids = inputs["input_ids"]
    return {**inputs, "labels": ids.masked_fill(ids == models.eagle.config.image_token_id, -100)}


def training_step(model, optimizer, batch) -> None:
    model(**batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def run_training(spec: dict) -> dict:
    """One stage's training steps for one model; the memory figure is what the steps add (see the module doc)."""
    device, dtype = torch.device(spec["device"]), DTYPES[spec["dtype"]]
    torch.set_num_threads(spec["threads"])
    models = build_models(spec["preset"], device, dtype)
    model = freeze_for_stage(models, spec["kind"], spec["stage"])
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    batch = training_batch(models, spec["kind"], spec["train_batch"], device, dtype)
    before = memory_before_step(device)
    times = []
    for index in range(1 + spec["train_repeats"]):
        synchronize(device)
        start = time.perf_counter()
        training_step(model, optimizer, batch)
        synchronize(device)
        if index:
            times.append(time.perf_counter() - start)
    return {
        "step_ms": ms(statistics.median(times)),
        "peak_memory_mib": None if before is None else round((memory_peak(device) - before) / 2**20, 2),
        "trainable_parameters": sum(p.numel() for p in trainable),
    }


def memory_before_step(device: torch.device) -> int | None:
    """Bytes held before the step, with the peak counter reset; None where the system cannot tell (no Linux /proc)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    try:
        # Writing 5 to clear_refs resets the kernel's peak resident set size (VmHWM) to the current one.
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")
        with open("/proc/self/statm") as file:
            return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        logger.warning("bench: no /proc/self (not Linux?): training memory is not measured on this CPU")
        return None


def memory_peak(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    with open("/proc/self/status") as file:
        line = next(line for line in file if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def measure_training(settings: Settings) -> dict:
    specs = [("eagle", "stage2"), ("eagle", "stage3"), ("llava", "stage2"), ("llava", "stage3"), ("llm", "stage3")]
    base = {
        "preset": settings.preset,
        "device": settings.device,
        "dtype": settings.dtype,
        "threads": torch.get_num_threads(),
        "train_batch": settings.train_batch,
        "train_repeats": settings.train_repeats,
    }
    jobs = [{**base, "kind": kind, "stage": stage} for kind, stage in specs]
    if torch.device(settings.device).type == "cuda":
        outcomes = [run_training_guarded(job) for job in jobs]
    else:
        # A fresh process per step, so that no earlier measurement's freed memory hides this one's peak; forked
        # from a server that has imported this module (and torch) but run nothing, so each starts in a second.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        with context.Pool(processes=1, maxtasksperchild=1) as pool:
            outcomes = pool.map(run_training_guarded, jobs, chunksize=1)
    results = {"batch": settings.train_batch, "stages": {name: list(train) for name, train in STAGES.items()}}
    for (kind, stage), outcome in zip(specs, outcomes):
        results.setdefault(kind, {})[stage] = outcome
    results["llm"]["stage2"] = None  # the bare LLM has no projector: nothing trains in stage 2
    return results


def run_training_guarded(spec: dict) -> dict:
    try:
        return run_training(spec)
    except torch.OutOfMemoryError as error:
        return {"error": f"out of memory: {' '.join(str(error).split())[:160]}"}
    finally:
        if spec["device"].startswith("cuda"):
            torch.cuda.empty_cache()
