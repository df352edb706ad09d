"""Named Eagle configurations.

``eagle-x5`` / ``eagle-x4`` are the architectures of the released NVEagle checkpoints at the design card's default of
448 pixels per expert, with a Vicuna-7B-sized LLM; their tables live in ``configuration_eagle`` (remote code), where
``EagleConfig()`` takes the same ``eagle-x5`` as its default. The ``-tiny`` presets keep every structural feature
(position-table interpolation, windowed and global attention, pixel_unshuffle, bilinear steps) at widths
that run in milliseconds on a CPU; the tests use them.
"""

import copy

from .configuration_eagle import (
    CLIP_MEAN,
    CLIP_STD,
    DEFAULT_GRID_SIZE,
    DEFAULT_IMAGE_SIZE,
    EAGLE_X5_EXPERTS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RELEASED_EXPERTS,
    VICUNA_7B,
    EagleConfig,
)

# The released experts, and candidates of the paper's expert search that the released models do not use.
FULL_EXPERTS = {
    **RELEASED_EXPERTS,
    # Not in the released X5/X4: DINOv2 ViT-L/14 (facebook/dinov2-large), a candidate of the paper's expert search.
    # Pretrained at 518 px (a 37x37 position table); at the presets' 448 px its map is 32x32.
    "dinov2": {
        "type": "dinov2",
        "image_mean": IMAGENET_MEAN,
        "image_std": IMAGENET_STD,
        "config": {
            "hidden_size": 1024,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "mlp_ratio": 4,
            "patch_size": 14,
            "image_size": 518,
            "layerscale_value": 1.0,
            "layer_norm_eps": 1e-6,
        },
    },
}

TINY_EXPERTS = {
    "clip": {
        "type": "clip",
        "image_size": 56,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        # Pretrained at 42 px (3x3 patches): the 56 px input exercises position interpolation.
        "config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "patch_size": 14,
            "image_size": 42,
        },
    },
    "convnext": {
        "type": "convnext",
        "image_size": 64,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "config": {"hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "layer_norm_eps": 1e-5},
    },
    "sam": {
        "type": "sam",
        "image_size": 64,
        "pixel_unshuffle": 2,
        "image_mean": IMAGENET_MEAN,
        "image_std": IMAGENET_STD,
        "config": {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "global_attn_indexes": [1],
            "mlp_dim": 64,
            "output_channels": 8,
            "window_size": 2,
            "image_size": 64,
            "patch_size": 16,
        },
    },
    "eva02": {
        "type": "eva02",
        "image_size": 64,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "config": {
            "hidden_size": 32,
            "num_hidden_layers": 3,
            "num_attention_heads": 2,
            "patch_size": 16,
            "pretrain_image_size": 32,
            "window_size": 2,
        },
    },
    "pix2struct": {
        "type": "pix2struct",
        "image_size": 64,
        "max_patches": 16,
        "config": {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "d_kv": 16,
            "d_ff": 64,
            "patch_embed_hidden_size": 768,
            "seq_len": 64,
            "layer_norm_eps": 1e-6,
            "dense_act_fn": "gelu_new",
        },
    },
    "dinov2": {
        "type": "dinov2",
        "image_size": 56,
        "image_mean": IMAGENET_MEAN,
        "image_std": IMAGENET_STD,
        # Pretrained at 42 px (3x3 patches): the 56 px input exercises position interpolation.
        "config": {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "image_size": 42,
        },
    },
}

# All five expert types at widths and resolutions a 2-core CPU trains in minutes (the quickstart's model):
# 64 px inputs, 8x8 patch grids, a 8x8 shared grid (64 image tokens).
SMALL_EXPERTS = {
    "clip": {
        "type": "clip",
        "image_size": 64,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "config": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "patch_size": 8,
            "image_size": 64,
        },
    },
    "convnext": {
        "type": "convnext",
        "image_size": 64,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        # Layer scale 1 instead of the pretrained-model default 1e-6: trained from scratch in minutes, blocks that
        # start as near-identities barely learn.
        "config": {
            "hidden_sizes": [16, 32, 48, 64],
            "depths": [1, 1, 1, 1],
            "patch_size": 2,
            "layer_norm_eps": 1e-5,
            "layer_scale_init_value": 1.0,
        },
    },
    "sam": {
        "type": "sam",
        "image_size": 64,
        "pixel_unshuffle": 2,
        "image_mean": IMAGENET_MEAN,
        "image_std": IMAGENET_STD,
        "config": {
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "global_attn_indexes": [1],
            "mlp_dim": 128,
            "output_channels": 16,
            "window_size": 4,
            "image_size": 64,
            "patch_size": 4,
        },
    },
    "eva02": {
        "type": "eva02",
        "image_size": 64,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "config": {
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "patch_size": 8,
            "pretrain_image_size": 64,
            "window_size": 4,
        },
    },
    "pix2struct": {
        "type": "pix2struct",
        "image_size": 64,
        "max_patches": 64,
        "config": {
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "d_kv": 32,
            "d_ff": 128,
            "patch_size": 8,
            "patch_embed_hidden_size": 192,
            "seq_len": 64,
            "layer_norm_eps": 1e-6,
            "dense_act_fn": "gelu_new",
        },
    },
    # Not in eagle-x5-small's five: the sixth candidate of `eagle search-experts --quickstart`, at CLIP's widths.
    "dinov2": {
        "type": "dinov2",
        "image_size": 64,
        "image_mean": IMAGENET_MEAN,
        "image_std": IMAGENET_STD,
        "config": {
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 8,
            "image_size": 64,
        },
    },
}

SMALL_LLAMA = {
    "model_type": "llama",
    # 0.02 suits 4096-wide models; at 128 wide a ~1/sqrt(width) init trains the quickstart's from-scratch LLM
    # (and projector) much faster.
    "initializer_range": 0.1,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-5,
}

TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
}

# What the released NVEagle code feeds each expert type: the resolution, with the input fields that go with it
# (SAM's 2x pixel_unshuffle onto the shared grid, Pix2Struct's patch budget). The released CLIP tower is named
# clip-448 but is fed 336 px. The converter writes these; ``eagle bench`` counts the tower's FLOPs at them.
RELEASED_EXPERT_INPUTS = {
    "clip": {"image_size": 336},
    "convnext": {"image_size": 1024},
    "sam": {"image_size": 1024, "pixel_unshuffle": 2},
    "eva02": {"image_size": 1024},
    "pix2struct": {"image_size": 1024, "max_patches": 2048},
}

X5 = EAGLE_X5_EXPERTS
X4 = ("clip", "convnext", "eva02", "pix2struct")

PRESETS = {
    "eagle-x5": {
        "experts": X5,
        "table": FULL_EXPERTS,
        "text": VICUNA_7B,
        "grid_size": DEFAULT_GRID_SIZE,
        "image_size": DEFAULT_IMAGE_SIZE,
    },
    "eagle-x4": {
        "experts": X4,
        "table": FULL_EXPERTS,
        "text": VICUNA_7B,
        "grid_size": DEFAULT_GRID_SIZE,
        "image_size": DEFAULT_IMAGE_SIZE,
    },
    "eagle-x5-small": {
        "experts": X5,
        "table": SMALL_EXPERTS,
        "text": SMALL_LLAMA,
        "grid_size": 8,
        "vision_initializer_range": 0.125,  # ~1/sqrt(width) for the 64-wide experts, as for the LLM above
    },
    "eagle-x5-tiny": {"experts": X5, "table": TINY_EXPERTS, "text": TINY_LLAMA, "grid_size": 4},
    "eagle-x4-tiny": {"experts": X4, "table": TINY_EXPERTS, "text": TINY_LLAMA, "grid_size": 4},
}


def expert_specs(preset: str, experts=None, image_size: int | None = None) -> list[dict]:
    """The expert entries of a preset, optionally a subset/reordering by name and at another resolution."""
    recipe = _preset(preset)
    names = tuple(experts) if experts is not None else recipe["experts"]
    unknown = [name for name in names if name not in recipe["table"]]
    if unknown:
        raise ValueError(f"unknown expert(s) {unknown}; choose from {', '.join(recipe['table'])}")
    size = image_size or recipe.get("image_size")
    specs = []
    for name in names:
        spec = copy.deepcopy(recipe["table"][name])
        spec["name"] = name
        if size is not None:
            spec["image_size"] = size
            spec.pop("max_patches", None)
        specs.append(spec)
    return specs


def eagle_config(
    preset: str, *, vocab_size: int | None = None, image_token_id: int | None = None, experts=None, **overrides
) -> EagleConfig:
    """Build an ``EagleConfig`` from a preset name. ``experts`` picks a subset/order of the preset's experts."""
    recipe = _preset(preset)
    text = dict(recipe["text"])
    if vocab_size is not None:
        text["vocab_size"] = vocab_size
    text.setdefault("vocab_size", 1024)
    vision = {"experts": expert_specs(preset, experts), "grid_size": overrides.pop("grid_size", recipe["grid_size"])}
    if "vision_initializer_range" in recipe:
        vision["initializer_range"] = recipe["vision_initializer_range"]
    token = image_token_id if image_token_id is not None else text["vocab_size"] - 1
    return EagleConfig(vision_config=vision, text_config=text, image_token_id=token, **overrides)


def _preset(preset: str) -> dict:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[preset]
