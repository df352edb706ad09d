"""The models and inputs of a run.

- Eagle is built from its preset with random weights, directly on the device in the chosen dtype. The baselines
  share its language model (the same module, so the same weights and kernels): (a) transformers'
  ``LlavaForConditionalGeneration`` with a CLIP tower as wide and deep as Eagle's CLIP expert, at that expert's
  resolution, and (b) the bare LLM (``AutoModelForCausalLM`` on the same text config) fed a prompt of Eagle's
  total token count (image tokens + text).
- Inputs are the processor's output: ``EagleImageProcessor`` on a fixed image (Pix2Struct's patches included),
  and a prompt of 32 text tokens around the image tokens. Timing starts from there.
"""

import contextlib
from dataclasses import dataclass

import torch

from .settings import PRESETS, PROMPT_PREFIX, PROMPT_SUFFIX

# The three models every table compares, in its column order.
MODEL_NAMES = ("eagle", "llava", "llm")


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
