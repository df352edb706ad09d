"""The inference rows: vision, prefill and time to first token, decode steps, decode tokens/s and batching.

- Vision: each expert alone on its own input, the whole tower, the projector, and LLaVA's CLIP tower (their FLOPs
  and FLOP/s: ``flops``).
- Prefill and time to first token: ``generate(max_new_tokens=1)`` from the processor's output, timed whole as the
  time to first token (TTFT); inside the same call the prefill is timed from the start of the model's first
  forward (or of its vision tower, where generate encodes the images first, as for LLaVA) to the end of that
  forward: the tower, the projector, the LLM's forward on the whole prompt with the cache on, and the logits of the
  last position. TTFT adds generate's own work (input checks, cache and position setup, the greedy pick). The
  prefill is a part of the TTFT call, so it never exceeds it; ``ttft_over_prefill`` is the median over repeats of
  TTFT / prefill within the call. The prefill's parts alone are the experts, the projector and the bare LLM's
  prefill, run in the same rounds.
- Decode step: the model's forward on one new token with the KV cache, step after step from the prefilled
  prompt (Eagle's image is in its cache), interleaved with the bare LLM's step at the same cache length.
- Decode tokens/s: from ``generate`` with N new tokens (forced by ``min_new_tokens``) and with 1, run in the same
  round: (N - 1) x requests / the median over repeats of t(N) - t(1), for 1 and for 8 requests.
"""

import copy
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
from transformers.utils import logging

from .models import MODEL_NAMES, Inputs, Models, make_inputs
from .no_sync import check_no_sync_on_cuda
from .settings import PROMPT_PREFIX, PROMPT_SUFFIX, Settings
from .timing import InnerTimes, Times, median_ratio, ms, rounded, synchronize, time_interleaved

logger = logging.get_logger(__name__)


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
