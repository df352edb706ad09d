"""The fusion strategies' rows.

- Fusion strategies: one row per strategy of ``FUSION_CLASSES`` (default options), each an Eagle sharing the
  preset's experts and LLM with a fresh fusion module: image tokens per image, tower + fusion time
  (``get_image_features``) and the prefill (one forward over the prompt with that many image tokens), interleaved
  in the same rounds (at most 10 repeats). The cost side of a fusion ablation; its accuracy side is
  ``eagle quickstart --fusions all``.
"""

import copy
from functools import partial

import torch

from .models import Models, default_dtype, make_inputs, prompt_ids
from .settings import Settings
from .timing import ms, time_interleaved


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
