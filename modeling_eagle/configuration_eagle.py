"""Configuration of Eagle: a mixture of vision experts feeding a Llama-family language model.

The vision side is an ordered list of experts. Each expert entry is plain data (so it serialises to
``config.json`` as is) and says which architecture it is, what resolution it sees, how its feature map
reaches the shared grid and the architecture's own sub-config. The tower concatenates the experts'
channels in list order, so the order is part of the checkpoint.
"""

import copy

from transformers import AutoConfig, PretrainedConfig

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


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


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
        experts (`list[dict]`):
            Ordered expert entries: `type` (one of `clip`, `convnext`, `sam`, `eva02`, `pix2struct`, `dinov2`), `name`
            (unique; the module name in the tower), `image_size` (input side the expert sees),
            `pixel_unshuffle` (space-to-depth factor applied to its map before the bilinear step; 1 = none),
            `image_mean`/`image_std` (its normalisation; Pix2Struct standardises per image instead and takes
            `max_patches`), and `config` (the architecture's own settings).
        grid_size (`int`, *optional*, defaults to 32):
            Side of the shared grid; each image becomes `grid_size**2` tokens.
    """

    model_type = "eagle_vision"
    base_config_key = "vision_config"

    def __init__(self, experts=None, grid_size=32, initializer_range=0.02, **kwargs):
        self.experts = list(experts or [])
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
    r"""Eagle: `vision_config` (the experts), a projector and a causal LM built from `text_config`.

    Args:
        vision_config (`EagleVisionConfig` or `dict`): the mixture of vision experts.
        text_config (`PretrainedConfig` or `dict`): any Llama-family causal LM config (`model_type` picks it).
        image_token_id (`int`): id of the image placeholder token in the vocabulary.
        projector_type (`str`, *optional*, defaults to `"mlp2x_gelu"`):
            `mlp2x_gelu` (Linear, GELU, Linear) or `linear`.
    """

    model_type = "eagle"
    sub_configs = {"vision_config": EagleVisionConfig, "text_config": AutoConfig}
    attribute_map = {"image_token_index": "image_token_id"}

    def __init__(
        self,
        vision_config=None,
        text_config=None,
        image_token_id=32000,
        projector_type="mlp2x_gelu",
        tie_word_embeddings=False,
        **kwargs,
    ):
        if vision_config is None:
            raise ValueError(
                "EagleConfig needs a vision_config; start from a preset, e.g. "
                "`modeling_eagle.presets.eagle_config('eagle-x5')`"
            )
        if isinstance(vision_config, dict):
            vision_config = EagleVisionConfig(**vision_config)
        if text_config is None:
            text_config = {"model_type": "llama"}
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
        """Tokens one image occupies in the prompt."""
        return self.vision_config.grid_size**2
