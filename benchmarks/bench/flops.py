"""Analytic FLOPs and the FLOP/s achieved with them.

FLOPs per expert at its resolution, of the whole tower, of LLaVA's CLIP tower and of the LLM's prefill are counted
by ``FlopCounterMode`` on the meta device (2 per multiply-add; no memory, so x5-7b is counted on a CPU too).
Achieved FLOP/s: the analytic FLOPs over the median time; on GPU also the tower's over the device's dense bf16 peak.
"""

import copy
from functools import partial

import torch

from .models import llava_config_for
from .settings import PRESETS
from .timing import rounded

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
