"""Configuration of Eagle: a mixture of vision experts feeding a Llama-family language model.

The vision side is an ordered list of experts. Each expert entry is plain data (so it serialises to
``config.json`` as is) and says which architecture it is, what resolution it sees, how its feature map
reaches the shared grid and the architecture's own sub-config. The tower concatenates the experts'
channels in list order, so the order is part of the checkpoint.
"""

import copy

from transformers import AutoConfig, PretrainedConfig

from .fusion_registry import DEFAULT_FUSION, FUSION_CLASSES

EXPERT_TYPES = ("clip", "convnext", "sam", "eva02", "pix2struct", "dinov2")
# Experts fed flattened patches (made by the processor) instead of an image tensor.
PATCH_EXPERT_TYPES = ("pix2struct",)
PROJECTOR_TYPES = ("linear", "mlp2x_gelu")

# Bounds that keep a typo (grid 100000, resolution 10**6) from allocating terabytes at construction.
MAX_GRID_SIZE = 128
MAX_IMAGE_SIZE = 4096
MAX_PATCHES = 16384
# Any size in an expert's or the LLM's architecture above this is a typo, not a model.
MAX_ARCH_VALUE = 1 << 20
TEXT_LIMITS = {"vocab_size": 1 << 22, "hidden_size": 1 << 16, "intermediate_size": 1 << 18, "num_hidden_layers": 1024}

# OpenAI CLIP's normalisation, which most experts were trained with, and ImageNet's (SAM).
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# The experts of the released NVEagle checkpoints: each one's architecture and normalisation. `EagleConfig()` and the
# `eagle-x5`/`eagle-x4` presets build their towers from this table.
RELEASED_EXPERTS = {
    "clip": {
        "type": "clip",
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "config": {
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "patch_size": 14,
            "image_size": 336,
            "hidden_act": "quick_gelu",
        },
    },
    "convnext": {
        "type": "convnext",
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "config": {"hidden_sizes": [384, 768, 1536, 3072], "depths": [3, 4, 30, 3], "layer_norm_eps": 1e-5},
    },
    "sam": {
        "type": "sam",
        "pixel_unshuffle": 2,
        "image_mean": IMAGENET_MEAN,
        "image_std": IMAGENET_STD,
        "config": {
            "hidden_size": 1024,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "global_attn_indexes": [5, 11, 17, 23],
            "mlp_dim": 4096,
            "output_channels": 256,
            "window_size": 14,
            "image_size": 1024,
            "patch_size": 16,
        },
    },
    "eva02": {
        "type": "eva02",
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "config": {
            "hidden_size": 1024,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "patch_size": 16,
            "pretrain_image_size": 224,
            "window_size": 16,
        },
    },
    "pix2struct": {
        "type": "pix2struct",
        "config": {
            "hidden_size": 1536,
            "num_hidden_layers": 18,
            "num_attention_heads": 24,
            "d_kv": 64,
            "d_ff": 3968,
            "patch_embed_hidden_size": 768,
            "seq_len": 4096,
            "layer_norm_eps": 1e-6,
            "dense_act_fn": "gelu_new",
        },
    },
}
EAGLE_X5_EXPERTS = ("clip", "convnext", "sam", "eva02", "pix2struct")
# The design card's default: every expert sees 448 px, fused on a 32 x 32 grid (1024 image tokens).
DEFAULT_IMAGE_SIZE = 448
DEFAULT_GRID_SIZE = 32
# Eagle-X5-7B's language model: Vicuna-7B, whose 32000-token vocabulary gains one row for the image token (id 32000).
VICUNA_7B = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "vocab_size": 32001,
}
DEFAULT_IMAGE_TOKEN_ID = 32000


def released_expert_specs(names=EAGLE_X5_EXPERTS, image_size: int = DEFAULT_IMAGE_SIZE) -> list[dict]:
    """Expert entries for ``names`` from ``RELEASED_EXPERTS``, each fed ``image_size`` pixels (Pix2Struct's patch
    budget then follows from the size)."""
    return [{**copy.deepcopy(RELEASED_EXPERTS[name]), "name": name, "image_size": image_size} for name in names]


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def check_fusion(fusion, vision_config) -> dict:
    """The ``fusion`` entry as ``{"type": name, "options": {...}}`` with the strategy's defaults filled in; ``None``
    (what configs written before fusion strategies existed hold) is ``channel_concat``, and a bare name is that
    strategy with its default options."""
    if fusion is None:
        fusion = DEFAULT_FUSION
    if isinstance(fusion, str):
        fusion = {"type": fusion}
    _check(isinstance(fusion, dict), f"fusion must be a strategy name or a dict, got {type(fusion).__name__}")
    unknown = sorted(set(fusion) - {"type", "options"})
    _check(not unknown, f"fusion has unknown key(s) {unknown}; it takes type and options")
    name = fusion.get("type")
    _check(name in FUSION_CLASSES, f"fusion.type is {name!r}; choose one of {', '.join(FUSION_CLASSES)}")
    options = FUSION_CLASSES[name].check_options(copy.deepcopy(fusion.get("options") or {}), vision_config)
    return {"type": name, "options": options}


def as_three_floats(value, where: str) -> list[float]:
    ok = isinstance(value, (list, tuple)) and len(value) == 3
    _check(
        ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value),
        f"{where} must be a list of 3 floats, got {value!r}",
    )
    return [float(v) for v in value]


def check_expert_input(spec: dict, where: str, patch_size: int = 16) -> dict:
    """The input side of one expert entry, which the config and the image processor both read: ``type``, ``name``,
    ``image_size``, ``image_mean``/``image_std`` (optional for patch experts, which standardise each image
    themselves) and, for patch experts, ``max_patches`` on a ``patch_size`` grid. Returns a copy with the defaults
    filled in; errors name the entry and the field."""
    _check(isinstance(spec, dict), f"{where} must be a dict, got {type(spec).__name__}")
    spec = copy.deepcopy(spec)
    expert_type = spec.get("type")
    _check(expert_type in EXPERT_TYPES, f"{where}.type is {expert_type!r}; choose one of {', '.join(EXPERT_TYPES)}")
    spec["name"] = spec.get("name") or expert_type
    _check(isinstance(spec["name"], str) and spec["name"].isidentifier(), f"{where}.name must be an identifier")
    size = spec.get("image_size")
    _check(
        isinstance(size, int) and not isinstance(size, bool) and 1 <= size <= MAX_IMAGE_SIZE,
        f"{where}.image_size is {size!r}; it must be an int between 1 and {MAX_IMAGE_SIZE}",
    )
    if expert_type in PATCH_EXPERT_TYPES:
        max_patches = spec.get("max_patches")
        spec["max_patches"] = max((size // patch_size) ** 2, 1) if max_patches is None else max_patches
        _check(
            isinstance(spec["max_patches"], int) and 1 <= spec["max_patches"] <= MAX_PATCHES,
            f"{where}.max_patches is {spec['max_patches']!r}; it must be an int between 1 and {MAX_PATCHES}",
        )
        for key in ("image_mean", "image_std"):
            spec[key] = None if spec.get(key) is None else as_three_floats(spec[key], f"{where}.{key}")
    else:
        for key in ("image_mean", "image_std"):
            spec[key] = as_three_floats(spec.get(key), f"{where}.{key}")
        _check(
            all(s != 0 for s in spec["image_std"]), f"{where}.image_std must not contain 0, got {spec['image_std']}"
        )
    return spec


def validate_expert_spec(spec: dict, index: int) -> dict:
    """Fill defaults into one expert entry and check it; errors name the entry and the field."""
    where = f"vision_config.experts[{index}]"
    architecture = spec.get("config", {}) if isinstance(spec, dict) else {}
    _check(isinstance(architecture, dict), f"{where}.config must be a dict of the architecture's settings")
    spec = check_expert_input(spec, where, patch_size=architecture.get("patch_size", 16))
    factor = spec.setdefault("pixel_unshuffle", 1)
    _check(isinstance(factor, int) and 1 <= factor <= 8, f"{where}.pixel_unshuffle must be an int in 1..8")
    spec.setdefault("config", {})
    for key, value in spec["config"].items():
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            _check(
                not isinstance(item, (int, float)) or isinstance(item, bool) or abs(item) <= MAX_ARCH_VALUE,
                f"{where}.config.{key} is {value!r}; values above {MAX_ARCH_VALUE} would allocate absurd sizes",
            )
    return spec


class EagleVisionConfig(PretrainedConfig):
    r"""The mixture of vision experts.

    Args:
        experts (`list[dict]`, *optional*, defaults to Eagle-X5's five experts at 448 pixels):
            Ordered expert entries: `type` (one of `clip`, `convnext`, `sam`, `eva02`, `pix2struct`,
            `dinov2`), `name`
            (unique; the module name in the tower), `image_size` (input side the expert sees),
            `pixel_unshuffle` (space-to-depth factor applied to its map before the bilinear step; 1 = none),
            `image_mean`/`image_std` (its normalisation; Pix2Struct standardises per image instead and takes
            `max_patches`), and `config` (the architecture's own settings).
        grid_size (`int`, *optional*, defaults to 32):
            Side of the shared grid; each image becomes `grid_size**2` tokens.
    """

    model_type = "eagle_vision"
    base_config_key = "vision_config"

    def __init__(self, experts=None, grid_size=DEFAULT_GRID_SIZE, initializer_range=0.02, **kwargs):
        self.experts = released_expert_specs() if experts is None else list(experts)
        self.grid_size = grid_size
        self.initializer_range = initializer_range
        super().__init__(**kwargs)
        self.check()

    def check(self) -> None:
        _check(len(self.experts) > 0, "vision_config.experts is empty; an Eagle needs at least one vision expert")
        _check(
            isinstance(self.grid_size, int) and 1 <= self.grid_size <= MAX_GRID_SIZE,
            f"vision_config.grid_size is {self.grid_size!r}; it must be an int between 1 and {MAX_GRID_SIZE}",
        )
        self.experts = [validate_expert_spec(spec, i) for i, spec in enumerate(self.experts)]
        names = [spec["name"] for spec in self.experts]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        _check(not duplicated, f"vision_config.experts has duplicated names {duplicated}; give each a unique name")

    @property
    def expert_names(self) -> list[str]:
        return [spec["name"] for spec in self.experts]


class EagleConfig(PretrainedConfig):
    r"""Eagle: `vision_config` (the experts), a projector and a causal LM built from `text_config`. With no arguments
    it is Eagle-X5-7B (the `eagle-x5` preset): the five released experts at 448 pixels on a 32 x 32 grid, with
    Vicuna-7B.

    Args:
        vision_config (`EagleVisionConfig` or `dict`, *optional*): the mixture of vision experts.
        text_config (`PretrainedConfig` or `dict`, *optional*): any Llama-family causal LM config (`model_type` picks
            it); defaults to Vicuna-7B with the image token's row.
        image_token_id (`int`, *optional*, defaults to 32000): id of the image placeholder token in the vocabulary.
        projector_type (`str`, *optional*, defaults to `"mlp2x_gelu"`):
            `mlp2x_gelu` (Linear, GELU, Linear) or `linear`.
        fusion (`dict` or `str`, *optional*, defaults to `channel_concat`):
            How the experts' maps become image tokens: `{"type": name, "options": {...}}` (or just the name).
            `channel_concat` (the released layout: channels concatenated on the shared grid, one projector),
            `sequence_append` (each expert's tokens through its own projector, one expert after another; option
            `grid_size`) or `cross_attention` (Mini-Gemini's patch-info mining: the first expert's tokens attend to
            the others' matching windows; options `window`, `heads`).
    """

    model_type = "eagle"
    sub_configs = {"vision_config": EagleVisionConfig, "text_config": AutoConfig}
    attribute_map = {"image_token_index": "image_token_id"}

    def __init__(
        self,
        vision_config=None,
        text_config=None,
        image_token_id=DEFAULT_IMAGE_TOKEN_ID,
        projector_type="mlp2x_gelu",
        fusion=None,
        tie_word_embeddings=False,
        **kwargs,
    ):
        if vision_config is None:
            vision_config = EagleVisionConfig()
        elif isinstance(vision_config, dict):
            vision_config = EagleVisionConfig(**vision_config)
        if text_config is None:
            text_config = VICUNA_7B
        if isinstance(text_config, dict):
            text_config = dict(text_config)
            text_config = AutoConfig.for_model(text_config.pop("model_type", "llama"), **text_config)
        _check(
            projector_type in PROJECTOR_TYPES,
            f"projector_type is {projector_type!r}; choose one of {', '.join(PROJECTOR_TYPES)}",
        )
        self.vision_config = vision_config
        self.text_config = text_config
        self.image_token_id = image_token_id
        self.projector_type = projector_type
        self.fusion = check_fusion(fusion, vision_config)
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
        for key, limit in TEXT_LIMITS.items():
            value = getattr(text_config, key, None)
            _check(
                value is None or value <= limit,
                f"text_config.{key} is {value!r}; values above {limit} would allocate absurd sizes",
            )
        vocab_size = getattr(text_config, "vocab_size", None)
        _check(
            isinstance(image_token_id, int) and (vocab_size is None or 0 <= image_token_id < vocab_size),
            f"image_token_id {image_token_id!r} is outside the text model's vocabulary (vocab_size {vocab_size}); "
            "add the image token to the tokenizer and resize the embeddings first",
        )

    @property
    def image_seq_length(self) -> int:
        """Tokens one image occupies in the prompt: the fusion strategy's count."""
        return FUSION_CLASSES[self.fusion["type"]].num_image_tokens(self)
