"""Model cards for Eagle folders (huggingface_hub ``ModelCard``): metadata the Hub indexes, and what the model is."""

from huggingface_hub import ModelCard, ModelCardData

EXPERT_SOURCES = {
    "clip": "openai/clip-vit-large-patch14-336",
    "convnext": "laion/CLIP-convnext_xxlarge-laion2B-s34B-b82K-augreg-soup",
    "sam": "facebook/sam-vit-large",
    "eva02": "Yuxin-CL/EVA02-L (ViTDet detection weights)",
    "pix2struct": "google/pix2struct-large",
}

TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{{ summary }}

| expert | type | input | to the {{ grid }}x{{ grid }} grid | channels |
|---|---|---|---|---|
{% for row in experts -%}
| {{ row.name }} | {{ row.type }} | {{ row.input }} | {{ row.step }} | {{ row.channels }} |
{% endfor %}
Language model: {{ llm }}. Projector: `{{ projector }}`.

## How to use

```python
from transformers import AutoModelForImageTextToText, AutoProcessor

model = AutoModelForImageTextToText.from_pretrained("{{ repo }}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{{ repo }}", trust_remote_code=True)
```

{{ provenance }}
"""


def _expert_rows(config) -> list[dict]:
    rows = []
    for spec in config.vision_config.experts:
        arch = spec["config"]
        channels = arch.get("hidden_size") or arch.get("hidden_sizes", [0])[-1]
        if spec["type"] == "sam":
            channels = arch.get("output_channels", 256)
        factor = spec.get("pixel_unshuffle", 1)
        step = f"pixel_unshuffle({factor}) + bilinear" if factor > 1 else "bilinear (align_corners)"
        size = f"{spec['max_patches']} patches" if spec["type"] == "pix2struct" else f"{spec['image_size']} px"
        rows.append(
            {"name": spec["name"], "type": spec["type"], "input": size, "step": step, "channels": channels * factor**2}
        )
    return rows


def converted_model_card(config, source: str, report: str, repo: str = "path/to/this/folder") -> ModelCard:
    """The card of a folder converted from an NVEagle checkpoint; names the source."""
    experts = [spec["type"] for spec in config.vision_config.experts]
    data = ModelCardData(
        pipeline_tag="image-text-to-text",
        library_name="transformers",
        license="cc-by-nc-4.0",
        tags=["eagle", "custom_code", "multimodal", "mixture-of-vision-experts", *experts],
        base_model=[source] if "/" in source and not source.startswith(("/", ".")) else None,
    )
    text = config.text_config
    return ModelCard.from_template(
        data,
        template_str=TEMPLATE,
        title=f"Eagle ({len(experts)} experts), converted",
        summary="A mixture-of-vision-experts multimodal LLM (Eagle, arXiv 2408.15998) in the Hub-native format.",
        experts=_expert_rows(config),
        grid=config.vision_config.grid_size,
        llm=f"Llama-family, hidden {text.hidden_size}, {text.num_hidden_layers} layers, vocab {text.vocab_size}",
        projector=config.projector_type,
        repo=repo,
        provenance=f"Converted from the NVEagle checkpoint `{source}` by `eagle convert` ({report}). "
        "The processor runs in its `released` mode, reproducing the original preprocessing.",
    )
