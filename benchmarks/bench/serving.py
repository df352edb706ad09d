"""The serving row: ``eagle serve`` against ``model.generate`` (``eagle_hub.serving.measure_serving``)."""

import torch
from transformers.utils import logging

from .settings import PRESETS, Settings

logger = logging.get_logger(__name__)


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
