"""One run of ``eagle bench``: every row in turn, then the bars."""

import contextlib
import platform
import time
from dataclasses import asdict

import torch
from transformers.utils import logging

from .bars import compute_bars
from .fast_path import measure_fast_path, summarize_fast_path
from .flops import count_flops, flop_rates, peak_tflops
from .fusions import measure_fusions
from .inference import measure_inference
from .models import build_models, make_inputs
from .no_sync import check_no_sync
from .serving import measure_serving_row
from .settings import DTYPES, PRESETS, Settings
from .training import measure_training

logger = logging.get_logger(__name__)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


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
