"""Eagle's speed and memory, side by side with LLaVA and the bare LLM: ``eagle bench``.

    eagle bench --preset small --json bench.json      # eagle-x5-small on this machine's CPU, in under two minutes
    eagle bench --preset x5-7b --json bench-7b.json   # eagle-x5 (the released layout, random weights, bf16) on a GPU

Every figure comes from one run on one device, with the same inputs for every model:

- Eagle is built from its preset with random weights, directly on the device in the chosen dtype. The baselines
  share its language model (the same module, so the same weights and kernels): (a) transformers'
  ``LlavaForConditionalGeneration`` with a CLIP tower as wide and deep as Eagle's CLIP expert, at that expert's
  resolution, and (b) the bare LLM (``AutoModelForCausalLM`` on the same text config) fed a prompt of Eagle's
  total token count (image tokens + text).
- Inputs are the processor's output: ``EagleImageProcessor`` on a fixed image (Pix2Struct's patches included),
  and a prompt of 32 text tokens around the image tokens. Timing starts from there.
- Timing: warm-up, then the median of ``repeats`` runs; on GPU every timed region is bracketed by
  ``torch.cuda.synchronize``, and forward passes run under ``torch.inference_mode``. The runs a figure compares
  are interleaved (one of each per repeat, in a rotating order), and a paired ratio is the median over repeats of
  the ratio within the repeat, so a slow spell on a shared machine slows both sides of it.
- Vision: each expert alone on its own input, the whole tower, the projector, and LLaVA's CLIP tower. Analytic
  FLOPs per expert at its resolution, and of the CLIP tower, are counted by ``FlopCounterMode`` on the meta device
  (2 per multiply-add; no memory, so x5-7b is counted on a CPU too). Achieved FLOP/s: the analytic FLOPs over the
  median time; on GPU also the tower's over the device's dense bf16 peak.
- Prefill and time to first token: ``generate(max_new_tokens=1)`` from the processor's output, timed whole as the
  time to first token (TTFT); inside the same call the prefill is timed from the start of the model's first
  forward (or of its vision tower, where generate encodes the images first, as for LLaVA) to the end of that
  forward: the tower, the projector, the LLM's forward on the whole prompt with the cache on, and the logits of the
  last position. TTFT adds generate's own work (input checks, cache and position setup, the greedy pick). The
  prefill is a part of the TTFT call, so it never exceeds it; ``ttft_over_prefill`` is the median over repeats of
  TTFT / prefill within the call. The prefill's parts alone are the experts, the projector and the bare LLM's
  prefill, run in the same rounds.
- Fast path (``EagleVisionTower.enable_fast_path``, ``torch.compile`` of every expert): each expert and the tower,
  eager and compiled, on the same one-image input. ``compile_s`` is the first compiled call of an expert (compiling
  it, then running it once), timed on its own; the tower's is the sum of its experts' (the tower's first call with
  the fast path on compiles exactly these). Steady times: the median over interleaved repeats after warm-up, and
  ``speedup`` the paired eager / compiled ratio. Achieved TFLOP/s: the analytic FLOPs over each median (on GPU
  also over the device's dense bf16 peak). ``max_abs_diff``: the largest difference of the compiled output from
  the eager one. ``--fast-path-backend`` and ``--fast-path-mode`` go to ``torch.compile`` (``reduce-overhead``
  captures CUDA graphs on CUDA). ``python -m eagle_hub.benchmarks.cpu_tower`` measures the full-size X5 tower at
  the released resolutions on a CPU, with channels-last ConvNeXt and bf16 autocast too.
- Fusion strategies: one row per strategy of ``FUSION_CLASSES`` (default options), each an Eagle sharing the
  preset's experts and LLM with a fresh fusion module: image tokens per image, tower + fusion time
  (``get_image_features``) and the prefill (one forward over the prompt with that many image tokens), interleaved
  in the same rounds (at most 10 repeats). The cost side of a fusion ablation; its accuracy side is
  ``eagle quickstart --fusions all``.
- Decode step: the model's forward on one new token with the KV cache, step after step from the prefilled
  prompt (Eagle's image is in its cache), interleaved with the bare LLM's step at the same cache length.
- Decode tokens/s: from ``generate`` with N new tokens (forced by ``min_new_tokens``) and with 1, run in the same
  round: (N - 1) x requests / the median over repeats of t(N) - t(1), for 1 and for 8 requests.
- Training: a warm-up step, then the median of a few steps (forward, backward, AdamW step) on a batch of a few
  samples, per stage, with the stages' real freezing: stage 2 (``align``) trains the projector, stage 3 (``sft``)
  the experts, projector and LLM, as in ``training/recipes``, applied by the runner's ``set_trainable``.
  Peak memory is what the steps add to what the model and its inputs already hold (gradients, AdamW state,
  activations): on CUDA ``max_memory_allocated`` above the allocation before the first step; on CPU, where torch
  keeps no allocator statistics, each stage runs in a fresh process and the figure is its peak resident memory
  (``VmHWM``, reset before the first step) above its resident memory then.

Bars: each is computed from this run's figures and checked against its limit. "Paired" means the median over
repeats of the ratio within each repeat (both sides ran in the same round), which is not the ratio of the medians
that the tables print next to it.

- ``prefill_glue`` (<= 1.05), paired: Eagle's prefill / (the five experts + the projector + the bare LLM's prefill,
  each run alone).
- ``decode_step`` (<= 1.05), paired: Eagle's decode step / the bare LLM's step at the same cache length.
- ``tower_flop_rate`` (>= 0.9), paired: the tower's achieved FLOP/s over the LLaVA CLIP tower's, that is
  (tower FLOPs / CLIP tower FLOPs) x (CLIP tower time / tower time), the FLOPs analytic and the times paired.
- ``batched_decode`` (>= 2.5), paired: decode tokens/s of 8 requests batched over one request's, that is
  8 x (t1(N) - t1(1)) / (t8(N) - t8(1)) within a repeat (1 and 8 requests, N and 1 new tokens, all in one round);
  a repeat where either difference is not positive (noise larger than the decode) is left out.
- ``batched_encode`` (<= 1.0), paired: the tower on 8 images as one batch / 8 x the tower on one image.
- ``stage2_memory`` (<= 0.5), not a median: the peak memory a stage-2 step adds / a stage-3 step's, one peak each
  (memory does not vary from step to step as time does; each peak covers the warm-up and the timed steps).
- ``vision_tower_no_sync`` (pass/fail, no ratio): the tower runs on the meta device without raising and without
  feeding a CPU tensor to a device op; on CUDA it also runs under ``torch.cuda.set_sync_debug_mode("error")``.
- ``serving_overhead`` (<= 1.15, where the serve extra is installed), paired: the time of a round of requests
  through ``eagle serve`` (official openai client, one at a time) / the same prompts through ``model.generate``
  (``eagle_hub.serving.measure_serving`` says how the round is made).
"""

import contextlib
import copy
import json
import multiprocessing
import os
import platform
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial

import torch

# torch (2.6 to 2.13 at least) has no public import path for TorchDispatchMode; its own FlopCounterMode subclasses
# this one. It is the only hook that sees every aten op with its arguments, which the no-sync check needs.
from torch.utils._python_dispatch import TorchDispatchMode
from transformers.utils import logging

from eagle_hub.training import quiet_bitsandbytes_cpu_warning

logger = logging.get_logger(__name__)
# The training steps run in fresh processes (forkserver-preloaded with this module) that import bitsandbytes.
quiet_bitsandbytes_cpu_warning()

PRESETS = {"small": "eagle-x5-small", "x5-7b": "eagle-x5"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Dense bf16/fp16 tensor-core peaks in TFLOP/s, by a substring of torch.cuda.get_device_name(); longest match wins.
PEAK_TFLOPS = {
    "H200": 989.0,  # SXM
    "H200 NVL": 835.0,
    "H100": 989.0,  # SXM
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
}
# What each training stage trains, as the shipped recipes (training/recipes/*.yaml) say.
STAGES = {"stage2": ["projector"], "stage3": ["experts", "projector", "llm"]}
PROMPT_PREFIX, PROMPT_SUFFIX = 8, 24  # text tokens before and after the image tokens


@dataclass
class Settings:
    preset: str = "small"
    device: str = "cpu"
    dtype: str = "float32"
    repeats: int = 30
    warmup: int = 2
    decode_tokens: int = 32
    batch: int = 8
    train_batch: int = 4
    train_repeats: int = 4
    fast_path_backend: str = "inductor"
    fast_path_mode: str | None = None

    @classmethod
    def for_preset(
        cls,
        preset: str,
        device: str | None = None,
        dtype: str | None = None,
        repeats=None,
        quick=False,
        fast_path_backend: str | None = None,
        fast_path_mode: str | None = None,
    ):
        if preset not in PRESETS:
            raise ValueError(f"unknown bench preset {preset!r}; choose one of {', '.join(PRESETS)}")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            torch.device(device)
        except RuntimeError as error:
            raise ValueError(f"--device {device}: not a device (cpu, cuda or cuda:N)") from error
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine")
        dtype = dtype or ("bfloat16" if torch.device(device).type == "cuda" else "float32")
        if dtype not in DTYPES:
            raise ValueError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
        settings = cls(preset=preset, device=device, dtype=dtype, fast_path_mode=fast_path_mode)
        if fast_path_backend is not None:
            settings.fast_path_backend = fast_path_backend
        if preset == "x5-7b":
            settings.repeats, settings.decode_tokens, settings.train_batch, settings.train_repeats = 10, 64, 2, 3
        if quick:
            settings.repeats, settings.warmup, settings.train_repeats = 3, 1, 2
        if repeats is not None:
            if repeats < 1:
                raise ValueError(f"--repeats {repeats}: give at least 1")
            settings.repeats = repeats
        return settings


# --------------------------------------------------------------------------------------------------- models


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@dataclass
class Models:
    eagle: torch.nn.Module
    llava: torch.nn.Module
    llm: torch.nn.Module


def llava_config_for(config):
    """LLaVA with Eagle's LLM config and a CLIP tower as wide and deep as Eagle's CLIP expert, at its resolution."""
    from transformers import CLIPVisionConfig, LlavaConfig

    clip = next(spec for spec in config.vision_config.experts if spec["type"] == "clip")
    vision = CLIPVisionConfig(**{**clip["config"], "image_size": clip["image_size"]})
    tokens = (clip["image_size"] // vision.patch_size) ** 2
    return LlavaConfig(
        vision_config=vision,
        text_config=config.text_config,
        image_token_id=config.image_token_id,
        image_seq_length=tokens,
    )


def build_models(preset: str, device: torch.device, dtype: torch.dtype) -> Models:
    """Eagle with random weights built on ``device`` in ``dtype``; LLaVA and the bare LLM share its LLM."""
    from transformers import AutoModel, AutoModelForCausalLM, LlavaForConditionalGeneration
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    from eagle_hub.modeling_eagle.modeling_eagle import EagleForConditionalGeneration
    from eagle_hub.modeling_eagle.presets import eagle_config

    config = eagle_config(PRESETS[preset])
    torch.manual_seed(0)
    with torch.device(device), default_dtype(dtype):
        eagle = EagleForConditionalGeneration(config)
    llava_config = llava_config_for(config)
    with torch.device("meta"):
        llava = LlavaForConditionalGeneration(llava_config)
        llm = AutoModelForCausalLM.from_config(config.text_config)
    with torch.device(device), default_dtype(dtype):
        llava.model.vision_tower = AutoModel.from_config(llava_config.vision_config)
        llava.model.multi_modal_projector = LlavaMultiModalProjector(llava_config)
    llava.model.language_model = llm.model = eagle.model.language_model
    llava.lm_head = llm.lm_head = eagle.lm_head
    for model in (eagle, llava, llm):
        model.eval()
        model.requires_grad_(False)
        left = [name for name, tensor in model.state_dict().items() if tensor.is_meta]
        assert not left, f"left on the meta device: {left[:5]}"
    return Models(eagle, llava, llm)


@dataclass
class Inputs:
    eagle: dict
    llava: dict
    llm: dict
    image_tokens: int
    llava_image_tokens: int

    @property
    def prompt_tokens(self) -> int:
        return self.eagle["input_ids"].shape[1]


def prompt_ids(image_tokens: int, image_token_id: int, vocab_size: int, batch: int) -> torch.Tensor:
    """A fixed prompt: text tokens around ``image_tokens`` image placeholders."""
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(3, vocab_size, (PROMPT_PREFIX + PROMPT_SUFFIX,), generator=generator)
    text[text == image_token_id] = 3
    image = torch.full((image_tokens,), image_token_id)
    return torch.cat([text[:PROMPT_PREFIX], image, text[PROMPT_PREFIX:]]).repeat(batch, 1)


def make_inputs(models: Models, batch: int, device: torch.device, dtype: torch.dtype) -> Inputs:
    """The processor's output for ``batch`` requests (the same image and prompt each)."""
    import numpy as np
    from PIL import Image

    from eagle_hub.modeling_eagle import EagleImageProcessor

    config = models.eagle.config
    generator = np.random.default_rng(0)
    image = Image.fromarray(generator.integers(0, 256, (480, 640, 3), dtype=np.uint8))
    processor = EagleImageProcessor.from_vision_experts(config.vision_config.experts)
    pixel_values = processor(images=[image] * batch, return_tensors="pt")["pixel_values"]
    pixel_values = [p.to(device, dtype) for p in pixel_values]
    vocab = config.text_config.vocab_size
    ids = prompt_ids(config.image_seq_length, config.image_token_id, vocab, batch).to(device)
    llava_tokens = models.llava.config.image_seq_length
    llava_ids = prompt_ids(llava_tokens, config.image_token_id, vocab, batch).to(device)
    clip = next(i for i, spec in enumerate(config.vision_config.experts) if spec["type"] == "clip")
    text_ids = ids.masked_fill(ids == config.image_token_id, 3)
    return Inputs(
        eagle={"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixel_values},
        llava={
            "input_ids": llava_ids,
            "attention_mask": torch.ones_like(llava_ids),
            "pixel_values": pixel_values[clip],
        },
        llm={"input_ids": text_ids, "attention_mask": torch.ones_like(text_ids)},
        image_tokens=config.image_seq_length,
        llava_image_tokens=llava_tokens,
    )


# --------------------------------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Times(dict):
    """Seconds per repeat of each timed function (``name -> list``), the functions interleaved within a repeat."""

    def per_repeat(self, *names: str) -> list[float]:
        """These functions' summed time within each repeat."""
        return [sum(values) for values in zip(*(self[name] for name in names))]

    def median(self, *names: str) -> float:
        """The median over repeats of these functions' summed time within the repeat."""
        return statistics.median(self.per_repeat(*names))

    def paired_ratio(self, numerator: list[str], denominator: list[str]) -> float:
        """The median over repeats of sum(numerator) / sum(denominator) within the repeat: the two sides of a
        ratio ran back to back, so a slow spell on a shared machine slows both."""
        return median_ratio(self.per_repeat(*numerator), self.per_repeat(*denominator))

    def decode_seconds(self, name: str) -> list[float]:
        """Per repeat, ``generate`` with N new tokens minus with 1 (``name:n`` - ``name:1``): the N - 1 tokens after
        the first. Noise can make a repeat's difference zero or negative."""
        return [many - one for many, one in zip(self[f"{name}:n"], self[f"{name}:1"])]


def median_ratio(numerators: list[float], denominators: list[float]) -> float | None:
    """The median over repeats of numerator / denominator within the repeat. A repeat whose denominator is not
    positive (a time difference swamped by noise) is left out; None when none is left."""
    ratios = [n / d for n, d in zip(numerators, denominators, strict=True) if d > 0]
    return statistics.median(ratios) if ratios else None


class InnerTimes(dict):
    """Seconds of named regions inside a timed call (``name -> seconds``): a timed function returns one, and
    ``time_interleaved`` records each region next to the call's own time, in the same repeat."""


def time_interleaved(fns: dict[str, Callable], repeats: int, warmup: int, device: torch.device) -> Times:
    """Time every function ``repeats`` times after ``warmup`` rounds; within a round each runs once, in turn, the
    order rotating from round to round so that no function always follows the same one."""
    times = Times({name: [] for name in fns})
    names = list(fns)
    for index in range(warmup + repeats):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            fn = fns[name]
            synchronize(device)
            start = time.perf_counter()
            output = fn()
            synchronize(device)
            if index >= warmup:
                times[name].append(time.perf_counter() - start)
                if isinstance(output, InnerTimes):
                    for inner, seconds in output.items():
                        times.setdefault(inner, []).append(seconds)
    return times


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 4)


def rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


# --------------------------------------------------------------------------------------------------- FLOPs


def expert_inputs(config, batch: int = 1, device="meta", dtype=torch.float32) -> list[torch.Tensor]:
    """Empty inputs of the experts' shapes (Pix2Struct: flattened patches with their row/column ids)."""
    inputs = []
    for spec in config.vision_config.experts:
        if spec["type"] == "pix2struct":
            patch = spec["config"].get("patch_size", 16)
            inputs.append(torch.zeros(batch, spec["max_patches"], 2 + 3 * patch * patch, device=device, dtype=dtype))
        else:
            size = spec["image_size"]
            inputs.append(torch.zeros(batch, 3, size, size, device=device, dtype=dtype))
    return inputs


def count_flops(preset: str, prompt_tokens: int) -> dict:
    """FLOPs per expert at its resolution, the tower, LLaVA's CLIP tower and the LLM's prefill (one image)."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModel, AutoModelForCausalLM

    from eagle_hub.modeling_eagle.modeling_eagle import EagleVisionTower
    from eagle_hub.modeling_eagle.presets import eagle_config

    config = eagle_config(PRESETS[preset])
    with torch.device("meta"):
        tower = EagleVisionTower(config.vision_config)
        clip = AutoModel.from_config(llava_config_for(config).vision_config)
        llm = AutoModelForCausalLM.from_config(config.text_config)

    def flops(fn) -> int:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            fn()
        return counter.get_total_flops()

    clip_size = clip.config.image_size
    ids = torch.zeros(1, prompt_tokens, dtype=torch.long, device="meta")
    counts = {
        **tower_flops(tower, config, flops),
        "llava_clip_gflops": flops(partial(clip, torch.zeros(1, 3, clip_size, clip_size, device="meta"))) / 1e9,
        "llm_prefill_gflops": flops(partial(llm, input_ids=ids, use_cache=True, logits_to_keep=1)) / 1e9,
    }
    if preset == "x5-7b":
        counts["released_resolutions"] = released_resolution_flops(config, flops)
    return counts


def released_resolution_flops(config, flops) -> dict:
    """The tower's FLOPs at the resolutions the released checkpoints run (CLIP 336, the others 1024; the preset
    feeds every expert 448), counted the same way: what the paper's model costs per image."""
    from eagle_hub.modeling_eagle.modeling_eagle import EagleVisionTower
    from eagle_hub.modeling_eagle.presets import RELEASED_EXPERT_INPUTS

    config = copy.deepcopy(config)
    for spec in config.vision_config.experts:
        spec.update(RELEASED_EXPERT_INPUTS[spec["type"]])
    with torch.device("meta"):
        tower = EagleVisionTower(config.vision_config)
    return tower_flops(tower, config, flops)


def tower_flops(tower, config, flops) -> dict:
    """Each expert's FLOPs on one image at its configured resolution, and their sum."""
    pixels = expert_inputs(config)
    experts = {
        name: {"resolution": spec["image_size"], "gflops": flops(partial(expert, pixels[i])) / 1e9}
        for i, ((name, expert), spec) in enumerate(zip(tower.experts.items(), config.vision_config.experts))
    }
    return {"experts": experts, "tower_gflops": sum(entry["gflops"] for entry in experts.values())}


def flop_rates(flops: dict, vision: dict, peak: float | None) -> dict:
    """Achieved TFLOP/s of the tower and of LLaVA's CLIP tower (analytic FLOPs over the median time), the tower's
    over the CLIP tower's with the times paired, and the tower's fraction of the device's peak."""
    tower = flops["tower_gflops"] / vision["tower_ms"]  # GFLOP/ms = TFLOP/s
    clip = flops["llava_clip_gflops"] / vision["llava_tower_ms"]
    paired = vision["llava_tower_over_tower"]
    return {
        "tower_tflops_per_s": round(tower, 6),
        "llava_clip_tflops_per_s": round(clip, 6),
        "tower_over_llava_clip_flops_per_s": rounded(
            None if paired is None else flops["tower_gflops"] / flops["llava_clip_gflops"] * paired
        ),
        "peak_tflops": peak,
        "fraction_of_peak": None if peak is None else round(tower / peak, 4),
    }


def peak_tflops(device: torch.device, dtype: torch.dtype) -> float | None:
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return None
    name = torch.cuda.get_device_name(device)
    matches = [key for key in PEAK_TFLOPS if key in name]
    return PEAK_TFLOPS[max(matches, key=len)] if matches else None


# --------------------------------------------------------------------------------------------------- checks


class HostTensorsIntoDeviceOps(TorchDispatchMode):
    """Records the ops that take a CPU tensor (not a 0-d scalar) together with tensors on another device: on a GPU
    each is a blocking host-to-device copy, which the meta device lets through silently."""

    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = tensors_in((args, kwargs))
        if any(t.device.type == "cpu" and t.dim() > 0 for t in tensors) and any(
            t.device.type != "cpu" for t in tensors
        ):
            self.ops[str(func)] += 1
        return func(*args, **kwargs)


def tensors_in(value) -> list[torch.Tensor]:
    """The tensors in an aten op's arguments, which hold tensors, (nested) lists and tuples of them, dicts of
    keyword arguments and scalars."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [tensor for item in value for tensor in tensors_in(item)]
    return []


def check_no_sync(preset: str) -> dict:
    """Run the vision tower on the meta device: any host-device sync (``.item()``, ``bool(tensor)``, ``nonzero``,
    boolean-mask indexing) or copy to the CPU raises there, and a CPU tensor fed to a device op (a copy to the GPU)
    is recorded."""
    from eagle_hub.modeling_eagle.modeling_eagle import EagleVisionTower
    from eagle_hub.modeling_eagle.presets import eagle_config

    config = eagle_config(PRESETS[preset])
    with torch.device("meta"):
        tower = EagleVisionTower(config.vision_config).eval()
    host_tensors = HostTensorsIntoDeviceOps()
    try:
        with torch.no_grad(), host_tensors:
            tower(expert_inputs(config))
    except (RuntimeError, NotImplementedError) as error:
        return {"measured": f"a sync or CPU round trip: {' '.join(str(error).split())[:200]}", "pass": False}
    if host_tensors.ops:
        ops = ", ".join(f"{op} x{n}" for op, n in host_tensors.ops.items())
        return {"measured": f"CPU tensors copied to the device in {ops}", "pass": False}
    return {"measured": "none: the tower ran on the meta device", "pass": True}


def check_no_sync_on_cuda(tower, pixel_values, device: torch.device) -> dict | None:
    """On CUDA also run the real tower under ``torch.cuda.set_sync_debug_mode("error")``."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        tower(pixel_values)
        return {"measured": "none under torch.cuda.set_sync_debug_mode('error')", "pass": True}
    except RuntimeError as error:
        return {"measured": f"a sync: {' '.join(str(error).split())[:200]}", "pass": False}
    finally:
        torch.cuda.set_sync_debug_mode("default")


# --------------------------------------------------------------------------------------------------- inference


MODEL_NAMES = ("eagle", "llava", "llm")


def measure_inference(models: Models, settings: Settings, device: torch.device, dtype: torch.dtype) -> dict:
    """Every inference figure: vision, prefill and time to first token, ConvNeXt's memory format, decode steps,
    decode tokens/s for 1 and ``settings.batch`` requests, batched image encoding, and the CUDA sync check."""
    tower = models.eagle.model.vision_tower
    single = make_inputs(models, 1, device, dtype)
    batched = make_inputs(models, settings.batch, device, dtype)
    pixels = single.eagle["pixel_values"]
    results = {
        "tokens": {
            "image_tokens": single.image_tokens,
            "text_tokens": PROMPT_PREFIX + PROMPT_SUFFIX,
            "prompt_tokens": single.prompt_tokens,
            "llava_image_tokens": single.llava_image_tokens,
            "llava_prompt_tokens": single.llava["input_ids"].shape[1],
        }
    }
    with torch.inference_mode():
        logger.info("bench: vision, prefill and time to first token")
        results.update(summarize_prefill(time_prefill(models, single, settings, device)))
        logger.info("bench: ConvNeXt memory format")
        results["convnext_channels_last"] = measure_channels_last(tower, pixels, settings, device)
        logger.info("bench: decode steps")
        results["decode_step"] = summarize_decode_steps(time_decode_steps(models, single, settings, device))
        logger.info("bench: generate")
        generate_times = time_generate(models, single, batched, settings, device)
        results.update(summarize_generate(generate_times, settings.decode_tokens, settings.batch))
        logger.info("bench: batched image encoding")
        encode_times = time_interleaved(
            {"single": partial(tower, pixels), "batched": partial(tower, batched.eagle["pixel_values"])},
            settings.repeats,
            settings.warmup,
            device,
        )
        results["batching"].update(summarize_encode(encode_times, settings.batch))
        results["no_sync_cuda"] = check_no_sync_on_cuda(tower, pixels, device)
    return results


@contextlib.contextmanager
def fast_path_off(tower):
    """Run the tower eagerly for a while, keeping its fast path's compiled functions for afterwards."""
    saved = tower.fast_path
    tower.fast_path = None
    try:
        yield
    finally:
        tower.fast_path = saved


def eager_call(tower, fn: Callable) -> Callable:
    def run():
        with fast_path_off(tower):
            return fn()

    return run


def measure_fast_path(tower, pixels, settings: Settings, device: torch.device) -> dict:
    """Each expert and the tower eager and through ``enable_fast_path`` (see the module doc): the first compiled
    call per expert, the largest difference from eager, and interleaved steady-state times."""
    names = list(tower.experts)
    tower.enable_fast_path(mode=settings.fast_path_mode, backend=settings.fast_path_backend)
    first_call_s, max_abs_diff = {}, {}
    try:
        with torch.inference_mode():
            for index, name in enumerate(names):
                synchronize(device)
                start = time.perf_counter()
                compiled = tower.run_expert(name, pixels[index])
                synchronize(device)
                first_call_s[name] = time.perf_counter() - start
                with fast_path_off(tower):
                    eager = tower.run_expert(name, pixels[index])
                max_abs_diff[name] = (compiled.float() - eager.float()).abs().max().item()
            first_call_s["tower"] = sum(first_call_s.values())
            with fast_path_off(tower):
                eager = tower(pixels).last_hidden_state
            compiled = tower(pixels).last_hidden_state
            max_abs_diff["tower"] = (compiled.float() - eager.float()).abs().max().item()
            fns = {}
            for index, name in enumerate(names):
                run = partial(tower.run_expert, name, pixels[index])
                fns[f"eager:{name}"], fns[f"compiled:{name}"] = eager_call(tower, run), run
            fns["eager:tower"], fns["compiled:tower"] = (
                eager_call(tower, partial(tower, pixels)),
                partial(tower, pixels),
            )
            times = time_interleaved(fns, settings.repeats, settings.warmup, device)
    finally:
        tower.disable_fast_path()
    return {
        "backend": settings.fast_path_backend,
        "mode": settings.fast_path_mode,
        "times": times,
        "first_call_s": first_call_s,
        "max_abs_diff": max_abs_diff,
    }


def summarize_fast_path(measured: dict, flops: dict, peak: float | None) -> dict:
    """Per expert and for the tower: eager and compiled steady ms, the paired speedup, the first compiled call, the
    achieved TFLOP/s of each (and the fraction of the device's peak, on GPU), the largest output difference."""
    times, gflops = measured["times"], {name: entry["gflops"] for name, entry in flops["experts"].items()}
    gflops["tower"] = flops["tower_gflops"]
    rows = {}
    for name in [*flops["experts"], "tower"]:
        eager, compiled = times.median(f"eager:{name}"), times.median(f"compiled:{name}")
        rates = {kind: gflops[name] / (seconds * 1e3) for kind, seconds in (("eager", eager), ("compiled", compiled))}
        rows[name] = {
            "eager_ms": ms(eager),
            "compiled_ms": ms(compiled),
            "speedup": rounded(times.paired_ratio([f"eager:{name}"], [f"compiled:{name}"]), 3),
            "compile_s": round(measured["first_call_s"][name], 3),
            "gflops": round(gflops[name], 4),
            "eager_tflops_per_s": round(rates["eager"], 6),
            "compiled_tflops_per_s": round(rates["compiled"], 6),
            "eager_fraction_of_peak": None if peak is None else round(rates["eager"] / peak, 4),
            "compiled_fraction_of_peak": None if peak is None else round(rates["compiled"] / peak, 4),
            "max_abs_diff": measured["max_abs_diff"][name],
        }
    return {"backend": measured["backend"], "mode": measured["mode"], "peak_tflops": peak, **rows}


def generate_fn(model, inputs: dict, new_tokens: int) -> Callable:
    """Greedy ``generate`` of exactly ``new_tokens`` tokens (``min_new_tokens`` forces them)."""
    return partial(
        model.generate,
        **inputs,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=0,
    )


def first_token_fn(model, inputs: dict, name: str, device: torch.device) -> Callable[[], InnerTimes]:
    """``generate(max_new_tokens=1)``, timed whole as the time to first token, with the prefill inside it timed too
    (``prefill:NAME``): from the start of the model's first forward, or of its vision tower if that runs first (as
    transformers' generate encodes LLaVA's images before the forward), to the end of that forward. Both ends are
    synchronised on a GPU. The prefill is a part of the same call, so it can never exceed the time to first token."""
    vision_tower = getattr(getattr(model, "model", None), "vision_tower", None)
    generate = generate_fn(model, inputs, 1)

    def run() -> InnerTimes:
        marks = {}

        def mark(key):
            def hook(*_):
                if key not in marks:
                    synchronize(device)
                    marks[key] = time.perf_counter()

            return hook

        starts = [model] + ([vision_tower] if vision_tower is not None else [])
        handles = [module.register_forward_pre_hook(mark("start")) for module in starts]
        handles.append(model.register_forward_hook(mark("end")))
        try:
            generate()
        finally:
            for handle in handles:
                handle.remove()
        return InnerTimes({f"prefill:{name}": marks["end"] - marks["start"]})

    return run


def time_prefill(models: Models, inputs: Inputs, settings: Settings, device: torch.device) -> Times:
    """One set of rounds for every expert alone, the tower, the projector, LLaVA's CLIP tower, and per model the
    time to first token (``ttft:NAME``) with its prefill (``prefill:NAME``): the bars and the table's comparisons of
    these figures are all within a round."""
    tower, projector = models.eagle.model.vision_tower, models.eagle.model.multi_modal_projector
    pixels = inputs.eagle["pixel_values"]
    tower_output = tower(pixels).last_hidden_state
    fns = {f"expert:{name}": partial(expert, pixels[i]) for i, (name, expert) in enumerate(tower.experts.items())}
    fns["tower"] = partial(tower, pixels)
    fns["projector"] = partial(projector, tower_output)
    # As LLaVA's forward runs it: the hidden states, of which it takes the second to last.
    fns["llava_tower"] = partial(
        models.llava.model.vision_tower, inputs.llava["pixel_values"], output_hidden_states=True
    )
    for name in MODEL_NAMES:
        fns[f"ttft:{name}"] = first_token_fn(getattr(models, name), getattr(inputs, name), name, device)
    return time_interleaved(fns, settings.repeats, settings.warmup, device)


def summarize_prefill(times: Times) -> dict:
    """Vision, prefill and time-to-first-token figures from ``time_prefill``'s rounds."""
    experts = [name for name in times if name.startswith("expert:")]
    parts = [*experts, "projector", "prefill:llm"]
    return {
        "vision": {
            "experts_ms": {name.split(":", 1)[1]: ms(times.median(name)) for name in experts},
            "experts_sum_ms": ms(times.median(*experts)),
            "tower_ms": ms(times.median("tower")),
            "tower_over_experts": rounded(times.paired_ratio(["tower"], experts)),
            "projector_ms": ms(times.median("projector")),
            "llava_tower_ms": ms(times.median("llava_tower")),
            "llava_tower_over_tower": rounded(times.paired_ratio(["llava_tower"], ["tower"]), 6),
        },
        "prefill": {
            "eagle_ms": ms(times.median("prefill:eagle")),
            "parts_sum_ms": ms(times.median(*parts)),
            "eagle_over_parts": rounded(times.paired_ratio(["prefill:eagle"], parts)),
            "llm_ms": ms(times.median("prefill:llm")),
            "llava_ms": ms(times.median("prefill:llava")),
        },
        "time_to_first_token_ms": {name: ms(times.median(f"ttft:{name}")) for name in MODEL_NAMES},
        "ttft_over_prefill": {
            name: rounded(times.paired_ratio([f"ttft:{name}"], [f"prefill:{name}"])) for name in MODEL_NAMES
        },
    }


def time_generate(models: Models, single: Inputs, batched: Inputs, settings: Settings, device: torch.device) -> Times:
    """``generate`` of 1 and of N new tokens (``NAME:1``, ``NAME:n``) for each model on one request, and for Eagle on
    ``settings.batch`` requests (``eagle_batch``), all in the same rounds."""
    fns = {}
    for name, model, inputs in (
        ("eagle", models.eagle, single.eagle),
        ("llava", models.llava, single.llava),
        ("llm", models.llm, single.llm),
        ("eagle_batch", models.eagle, batched.eagle),
    ):
        fns[f"{name}:1"] = generate_fn(model, inputs, 1)
        fns[f"{name}:n"] = generate_fn(model, inputs, settings.decode_tokens)
    return time_interleaved(fns, settings.repeats, settings.warmup, device)


def decode_tokens_per_s(times: Times, name: str, new_tokens: int, batch: int = 1) -> float | None:
    """(N - 1) x requests over the median of the per-repeat t(N) - t(1); None when that median is not positive."""
    seconds = statistics.median(times.decode_seconds(name))
    return round(batch * (new_tokens - 1) / seconds, 2) if seconds > 0 else None


def summarize_generate(times: Times, new_tokens: int, batch: int) -> dict:
    """Decode tokens/s per model, and for Eagle batched; the bar's ratio paired within each repeat, over the repeats
    where both decodes took a positive time (elsewhere noise was larger than the decode, on one side or the other)."""
    pairs = [
        (single, batched)
        for single, batched in zip(times.decode_seconds("eagle"), times.decode_seconds("eagle_batch"))
        if single > 0 and batched > 0
    ]
    batched_over_single = median_ratio([batch * single for single, _ in pairs], [batched for _, batched in pairs])
    return {
        "decode_tokens_per_s": {name: decode_tokens_per_s(times, name, new_tokens) for name in MODEL_NAMES},
        "batching": {
            "batch": batch,
            "new_tokens": new_tokens,
            "single_tokens_per_s": decode_tokens_per_s(times, "eagle", new_tokens),
            "batched_tokens_per_s": decode_tokens_per_s(times, "eagle_batch", new_tokens, batch),
            "batched_over_single_tokens_per_s": rounded(batched_over_single),
        },
    }


def summarize_encode(times: Times, batch: int) -> dict:
    """One batch of ``batch`` images against ``batch`` single encodings (the single time x batch, paired)."""
    return {
        "encode_single_ms": ms(times.median("single")),
        "encode_batched_ms": ms(times.median("batched")),
        "encode_batched_over_singles": rounded(times.paired_ratio(["batched"], ["single"] * batch)),
    }


def measure_channels_last(tower, pixels, settings: Settings, device: torch.device) -> dict | None:
    """The ConvNeXt expert in its default memory format and in channels-last (weights and input), interleaved."""
    index = next((i for i, e in enumerate(tower.experts.values()) if hasattr(e, "set_channels_last")), None)
    if index is None:
        return None
    expert = list(tower.experts.values())[index]
    converted = copy.deepcopy(expert)
    converted.set_channels_last(True)
    times = time_interleaved(
        {"default": partial(expert, pixels[index]), "channels_last": partial(converted, pixels[index])},
        settings.repeats,
        settings.warmup,
        device,
    )
    return {
        "default_ms": ms(times.median("default")),
        "channels_last_ms": ms(times.median("channels_last")),
        "speedup": rounded(times.paired_ratio(["default"], ["channels_last"]), 3),
    }


def time_decode_steps(models: Models, inputs: Inputs, settings: Settings, device: torch.device) -> Times:
    """Prefill each model once, then time decode steps one token at a time, interleaved across models, so step i
    of every model sees a cache of the same length (LLaVA's differs by its image-token count)."""
    from eagle_hub.modeling_eagle.modeling_eagle import CACHE_NAME

    fns = {}
    token = torch.full((1, 1), 5, dtype=torch.long, device=device)
    for name in MODEL_NAMES:
        model = getattr(models, name)
        cache = getattr(model(**getattr(inputs, name), use_cache=True, logits_to_keep=1), CACHE_NAME)
        fns[name] = partial(model, input_ids=token, use_cache=True, logits_to_keep=1, **{CACHE_NAME: cache})
    return time_interleaved(fns, max(4 * settings.repeats, 16), settings.warmup, device)


def summarize_decode_steps(times: Times) -> dict:
    return {name: ms(times.median(name)) for name in MODEL_NAMES} | {
        "steps": len(times["eagle"]),
        "eagle_over_llm": rounded(times.paired_ratio(["eagle"], ["llm"])),
    }


# --------------------------------------------------------------------------------------------------- training


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


# --------------------------------------------------------------------------------------------------- bars


def bar(measured: float | None, limit: float, comparison: str, description: str, values: dict) -> dict:
    """A bar: its measured ratio against its limit; ``pass`` is None when the ratio could not be measured."""
    passed = None
    if measured is not None:
        passed = measured <= limit if comparison == "<=" else measured >= limit
    return {
        "description": description,
        "measured": rounded(measured),
        "limit": limit,
        "comparison": comparison,
        "pass": passed,
        "values": values,
    }


def ratio(numerator, denominator):
    return None if numerator is None or not denominator else numerator / denominator


def compute_bars(results: dict) -> dict:
    """The bars from a run's results (how each is computed: the module docstring, "Bars")."""
    prefill, step, batching, flops = results["prefill"], results["decode_step"], results["batching"], results["flops"]
    training = results["training"]["eagle"]
    stage2, stage3 = (training[stage].get("peak_memory_mib") for stage in ("stage2", "stage3"))
    no_sync = results["no_sync"]
    if results.get("no_sync_cuda") is not None:
        no_sync = {
            "measured": f"{no_sync['measured']}; {results['no_sync_cuda']['measured']}",
            "pass": no_sync["pass"] and results["no_sync_cuda"]["pass"],
        }
    batch = batching["batch"]
    bars = {
        "prefill_glue": bar(
            prefill["eagle_over_parts"],
            1.05,
            "<=",
            "Eagle's prefill over the sum of its parts each run alone (experts, projector, LLM prefill)",
            {"eagle_prefill_ms": prefill["eagle_ms"], "parts_sum_ms": prefill["parts_sum_ms"]},
        ),
        "decode_step": bar(
            step["eagle_over_llm"],
            1.05,
            "<=",
            "a decode step with the image in the cache over the bare LLM's step at the same length",
            {"eagle_step_ms": step["eagle"], "llm_step_ms": step["llm"]},
        ),
        "tower_flop_rate": bar(
            flops["tower_over_llava_clip_flops_per_s"],
            0.9,
            ">=",
            "the vision tower's achieved FLOP/s over the LLaVA CLIP tower's (analytic FLOPs, paired times)",
            {k: flops[k] for k in ("tower_tflops_per_s", "llava_clip_tflops_per_s")},
        ),
        "stage2_memory": bar(
            ratio(stage2, stage3),
            0.5,
            "<=",
            "peak memory of a stage-2 step (experts and LLM frozen) over a stage-3 step's",
            {"stage2_mib": stage2, "stage3_mib": stage3},
        ),
        "batched_decode": bar(
            batching["batched_over_single_tokens_per_s"],
            2.5,
            ">=",
            f"decode tokens/s of {batch} requests as one batch over one request's",
            {k: batching[k] for k in ("single_tokens_per_s", "batched_tokens_per_s")},
        ),
        "batched_encode": bar(
            batching["encode_batched_over_singles"],
            1.0,
            "<=",
            f"encoding {batch} images as one batch over {batch} single encodings",
            {k: batching[k] for k in ("encode_single_ms", "encode_batched_ms")},
        ),
        "vision_tower_no_sync": {
            "description": "no host-device synchronisation or CPU round trip inside the vision tower",
            "measured": no_sync["measured"],
            "pass": no_sync["pass"],
        },
    }
    serving = results.get("serving")
    if serving:  # measured where the serve extra is installed
        bars["serving_overhead"] = bar(
            serving["server_over_direct"],
            1.15,
            "<=",
            "requests through eagle serve (openai client, one at a time) over model.generate on the same prompts",
            {k: serving[k] for k in ("server_requests_per_s", "direct_requests_per_s")},
        )
    return bars


# --------------------------------------------------------------------------------------------------- the run


def measure_serving_row(settings: Settings) -> dict | None:
    """``eagle serve`` against ``model.generate`` on the same prompts (``eagle_hub.serving.measure_serving``); None
    without the serve extra."""
    import importlib.util

    if importlib.util.find_spec("openai") is None or importlib.util.find_spec("fastapi") is None:
        logger.warning("bench: no serving row (pip install 'eagle-hub[serve]')")
        return None
    from eagle_hub.serving import measure_serving

    return measure_serving(
        PRESETS[settings.preset],
        device=settings.device,
        dtype=settings.dtype,
        repeats=min(settings.repeats, 5),
        warmup=min(settings.warmup, 1),
        max_tokens=min(settings.decode_tokens, 16),
        clients=settings.batch,
        requests=settings.batch,
        threads=torch.get_num_threads(),
    )


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def fusion_models(eagle) -> dict[str, torch.nn.Module]:
    """An Eagle per fusion strategy sharing ``eagle``'s experts, LLM and head; only the fusion module is new (random
    weights), so a 7B preset adds the fusion modules' memory, not two more models'."""
    from eagle_hub.modeling_eagle.modeling_eagle import FUSION_CLASSES, EagleForConditionalGeneration

    parameter = next(eagle.parameters())
    models = {}
    for name, fusion_class in FUSION_CLASSES.items():
        config = copy.deepcopy(eagle.config)
        config.fusion = {"type": name, "options": fusion_class.check_options({}, config.vision_config)}
        with torch.device("meta"):
            model = EagleForConditionalGeneration(config)
        model.model.vision_tower = eagle.model.vision_tower
        model.model.language_model = eagle.model.language_model
        model.lm_head = eagle.lm_head
        torch.manual_seed(0)
        with torch.device(parameter.device), default_dtype(parameter.dtype):
            model.model.multi_modal_projector = fusion_class(config, eagle.model.vision_tower.expert_channels())
        models[name] = model.eval().requires_grad_(False)
    return models


def measure_fusions(models: Models, settings: Settings, device: torch.device, dtype: torch.dtype) -> list[dict]:
    """The cost side of each fusion strategy (one request, default options): tower + fusion time (what
    ``get_image_features`` runs), image tokens per image, and the prefill (one forward over the prompt with its
    image tokens), all in the same rounds. At most 10 repeats: the rows compare strategies, not the bars' figures."""
    pixels = make_inputs(models, 1, device, dtype).eagle["pixel_values"]
    fns, tokens, parameters = {}, {}, {}
    for name, model in fusion_models(models.eagle).items():
        config = model.config
        ids = prompt_ids(config.image_seq_length, config.image_token_id, config.text_config.vocab_size, 1).to(device)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels}
        fns[f"vision:{name}"] = partial(model.model.get_image_features, pixels)
        fns[f"prefill:{name}"] = partial(model, **inputs, use_cache=False)
        tokens[name] = config.image_seq_length
        parameters[name] = sum(p.numel() for p in model.model.multi_modal_projector.parameters())
    with torch.inference_mode():
        times = time_interleaved(fns, min(settings.repeats, 10), settings.warmup, device)
    return [
        {
            "fusion": name,
            "tokens_per_image": tokens[name],
            "tower_fusion_ms": ms(times.median(f"vision:{name}")),
            "prefill_ms": ms(times.median(f"prefill:{name}")),
            "fusion_parameters_millions": round(parameters[name] / 1e6, 3),
        }
        for name in tokens
    ]


def run_benchmark(settings: Settings) -> dict:
    """Every measurement of ``eagle bench``; returns the JSON-ready results with ``bars``."""
    import transformers

    started = time.perf_counter()
    device, dtype = torch.device(settings.device), DTYPES[settings.dtype]
    logger.info(f"bench: building {PRESETS[settings.preset]} on {device} in {settings.dtype}")
    models = build_models(settings.preset, device, dtype)
    results = {
        "preset": settings.preset,
        "model_preset": PRESETS[settings.preset],
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "settings": asdict(settings),
        "parameters_millions": {
            "experts": round(sum(p.numel() for p in models.eagle.model.vision_tower.parameters()) / 1e6, 3),
            "projector": round(sum(p.numel() for p in models.eagle.model.multi_modal_projector.parameters()) / 1e6, 3),
            "llm": round(sum(p.numel() for p in models.llm.parameters()) / 1e6, 3),
            "llava_clip": round(sum(p.numel() for p in models.llava.model.vision_tower.parameters()) / 1e6, 3),
        },
    }
    results.update(measure_inference(models, settings, device, dtype))
    results["flops"] = count_flops(settings.preset, results["tokens"]["prompt_tokens"])
    results["flops"].update(flop_rates(results["flops"], results["vision"], peak_tflops(device, dtype)))
    results["no_sync"] = check_no_sync(settings.preset)
    logger.info(f"bench: the vision fast path ({settings.fast_path_backend}; first calls compile)")
    pixels = make_inputs(models, 1, device, dtype).eagle["pixel_values"]
    measured = measure_fast_path(models.eagle.model.vision_tower, pixels, settings, device)
    results["fast_path"] = summarize_fast_path(measured, results["flops"], peak_tflops(device, dtype))
    logger.info("bench: fusion strategies")
    results["fusions"] = measure_fusions(models, settings, device, dtype)
    del models
    logger.info("bench: training steps")
    results["training"] = measure_training(settings)
    logger.info("bench: serving")
    results["serving"] = measure_serving_row(settings)
    results["bars"] = compute_bars(results)
    results["wall_s"] = round(time.perf_counter() - started, 1)
    return results


# --------------------------------------------------------------------------------------------------- report


def cell(value, digits=2) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if isinstance(value, float) else str(value)


def table(title: str, header: list, rows: list[list]) -> list[str]:
    """A titled text table: the first column left-aligned, the others right-aligned, a rule under the header."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["", title]
    for index, row in enumerate([header, *rows]):
        first = str(row[0]).ljust(widths[0])
        rest = "  ".join(str(c).rjust(w) for c, w in zip(row[1:], widths[1:]))
        lines.append(f"  {first}  {rest}")
        if index == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return lines


def format_table(results: dict) -> str:
    """The results as text tables (what ``eagle bench`` prints)."""
    tokens = results["tokens"]
    lines = [
        f"eagle bench --preset {results['preset']} ({results['model_preset']}): {results['device_name']} "
        f"({results['device']}, {results['threads']} thread(s)), {results['settings']['dtype']}; torch "
        f"{results['torch']}, transformers {results['transformers']}; prompt {tokens['prompt_tokens']} tokens "
        f"({tokens['image_tokens']} image), LLaVA {tokens['llava_prompt_tokens']} "
        f"({tokens['llava_image_tokens']} image)"
    ]
    lines += vision_lines(results)
    if results.get("fast_path"):
        lines += fast_path_lines(results["fast_path"])
    lines += inference_lines(results)
    if results.get("fusions"):
        lines += fusion_lines(results["fusions"])
    lines += training_lines(results["training"])
    if results.get("serving"):
        lines += serving_lines(results["serving"])
    lines += bar_lines(results["bars"])
    lines.append(f"\n{results['wall_s']} s")
    return "\n".join(lines)


def fusion_lines(fusions: list[dict]) -> list[str]:
    rows = [
        [
            row["fusion"],
            row["tokens_per_image"],
            cell(row["tower_fusion_ms"], 3),
            cell(row["prefill_ms"], 3),
            cell(row["fusion_parameters_millions"], 3),
        ]
        for row in fusions
    ]
    header = ["fusion", "tokens/image", "tower+fusion ms", "prefill ms", "fusion params (M)"]
    return table("fusion strategies (one request, default options)", header, rows)


def vision_lines(results: dict) -> list[str]:
    vision, flops = results["vision"], results["flops"]
    rows = [
        [name, flops["experts"][name]["resolution"], cell(t, 3), cell(flops["experts"][name]["gflops"], 3)]
        for name, t in vision["experts_ms"].items()
    ]
    rows += [
        ["experts, summed", "", cell(vision["experts_sum_ms"], 3), cell(flops["tower_gflops"], 3)],
        ["tower (experts + grid + concat)", "", cell(vision["tower_ms"], 3), ""],
        ["projector", "", cell(vision["projector_ms"], 3), ""],
        ["LLaVA CLIP tower", "", cell(vision["llava_tower_ms"], 3), cell(flops["llava_clip_gflops"], 3)],
    ]
    lines = table("vision (one image)", ["", "px", "ms", "GFLOPs"], rows)
    released = flops.get("released_resolutions")
    if released:
        per_expert = ", ".join(
            f"{n} {e['gflops'] / 1e3:.2f} at {e['resolution']}" for n, e in released["experts"].items()
        )
        lines.append(f"  at the released resolutions: {released['tower_gflops'] / 1e3:.2f} TFLOPs ({per_expert})")
    lines.append(
        f"  achieved: tower {flops['tower_tflops_per_s'] * 1e3:,.1f} GFLOP/s, LLaVA CLIP tower "
        f"{flops['llava_clip_tflops_per_s'] * 1e3:,.1f} GFLOP/s (paired ratio "
        f"{cell(flops['tower_over_llava_clip_flops_per_s'], 3)})"
    )
    if flops["fraction_of_peak"] is not None:
        lines.append(
            f"  tower: {flops['tower_tflops_per_s']:.1f} TFLOP/s, {100 * flops['fraction_of_peak']:.1f}% of "
            f"the device's {flops['peak_tflops']:.0f} TFLOP/s dense peak"
        )
    channels = results.get("convnext_channels_last")
    if channels:
        lines.append(
            f"  ConvNeXt channels-last: {channels['channels_last_ms']:.3f} ms vs {channels['default_ms']:.3f} ms "
            f"(x{channels['speedup']:.2f})"
        )
    return lines


def fast_path_lines(fast_path: dict) -> list[str]:
    names = [name for name, entry in fast_path.items() if isinstance(entry, dict)]
    peak = fast_path.get("peak_tflops") is not None
    rows = []
    for name in names:
        entry = fast_path[name]
        row = [
            name,
            cell(entry["eager_ms"], 3),
            cell(entry["compiled_ms"], 3),
            cell(entry["speedup"], 2),
            cell(entry["compile_s"], 1),
            cell(entry["eager_tflops_per_s"] * 1e3, 1),
            cell(entry["compiled_tflops_per_s"] * 1e3, 1),
        ]
        if peak:
            row.append(f"{100 * entry['compiled_fraction_of_peak']:.1f}%")
        rows.append(row + [f"{entry['max_abs_diff']:.1e}"])
    header = ["", "eager ms", "compiled ms", "speedup", "compile s", "eager GFLOP/s", "compiled GFLOP/s"]
    header += ["of peak"] if peak else []
    mode = fast_path["mode"] or "default"
    title = f"vision fast path: enable_fast_path(backend={fast_path['backend']!r}, mode={mode}), one image"
    return table(title, [*header, "max |diff|"], rows)


def inference_lines(results: dict) -> list[str]:
    prefill, ttft, step = results["prefill"], results["time_to_first_token_ms"], results["decode_step"]
    over, speed, flops = results["ttft_over_prefill"], results["decode_tokens_per_s"], results["flops"]
    names = MODEL_NAMES
    lines = table(
        "inference (batch 1)",
        ["", "Eagle", "LLaVA", "LLM"],
        [
            ["prefill ms", *(cell(prefill[f"{name}_ms"], 3) for name in names)],
            ["time to first token ms", *(cell(ttft[name], 3) for name in names)],
            ["  over prefill (paired)", *(cell(over[name], 3) for name in names)],
            ["decode step ms", *(cell(step[name], 3) for name in names)],
            ["decode tokens/s", *(cell(speed[name], 1) for name in names)],
            ["LLM prefill GFLOPs (analytic)", "", "", cell(flops["llm_prefill_gflops"], 3)],
        ],
    )
    batching = results["batching"]
    lines.append(
        f"  batch {batching['batch']}: {cell(batching['batched_tokens_per_s'], 1)} tokens/s "
        f"(one request: {cell(batching['single_tokens_per_s'], 1)}); encoding {batching['batch']} images "
        f"{cell(batching['encode_batched_ms'], 3)} ms (one: {cell(batching['encode_single_ms'], 3)} ms)"
    )
    return lines


def training_lines(training: dict) -> list[str]:
    rows = []
    for stage in STAGES:
        row = [f"{stage} ({', '.join(training['stages'][stage])})"]
        for kind in MODEL_NAMES:
            entry = training[kind].get(stage)
            if entry is None:
                row.append("-")
            elif "error" in entry:
                row.append(entry["error"][:24])
            else:
                row.append(f"{cell(entry['step_ms'], 1)} ms / {cell(entry['peak_memory_mib'], 1)} MiB")
        rows.append(row)
    title = f"training step, batch {training['batch']} (step time / peak memory added)"
    return table(title, ["", "Eagle", "LLaVA", "LLM"], rows)


def serving_lines(serving: dict) -> list[str]:
    title = f"serving: eagle serve and the openai client, {serving['requests']} requests of one image each"
    header = ["", "model.generate", "server, 1 client", f"server, {serving['clients']} clients"]
    keys = ("direct_requests_per_s", "server_requests_per_s", "server_requests_per_s_clients")
    ttft = [serving["direct_time_to_first_token_ms"], serving["server_time_to_first_token_ms"], None]
    rows = [
        [f"requests/s ({serving['max_tokens']} tokens)", *(cell(serving[key], 2) for key in keys)],
        ["time to first token ms", *(cell(v, 1) for v in ttft)],
    ]
    return table(title, header, rows) + [
        f"  server / direct: {serving['server_over_direct']:.3f} (requests), "
        f"{serving['server_over_direct_ttft']:.3f} (time to first token); {serving['clients']} clients / 1: "
        f"{serving['clients_over_one']:.3f}; answers equal: {serving['answers_equal']}"
    ]


def bar_lines(bars: dict) -> list[str]:
    rows = []
    for name, entry in bars.items():
        measured = entry["measured"]
        shown = f"{measured:.3f}" if isinstance(measured, float) else cell(measured)
        limit = f"{entry['comparison']} {entry['limit']}" if "limit" in entry else ""
        verdict = {True: "pass", False: "FAIL", None: "n/a"}[entry["pass"]]
        rows.append([name, shown, limit, verdict])
    return table("bars", ["", "measured", "limit", ""], rows)


def write_json(results: dict, path) -> None:
    # Serialised before opening: results that cannot be serialised leave an earlier file untouched.
    text = json.dumps(results, indent=2) + "\n"
    with open(path, "w") as file:
        file.write(text)
