"""Eagle: a mixture of vision experts, fused on one grid, projected into a causal LM.

Layout mirrors transformers' LLaVA: ``EagleModel`` (vision tower + projector + language model, returns hidden
states) and ``EagleForConditionalGeneration`` (adds ``lm_head`` and generation). Per-expert pixels travel as a
single ``pixel_values`` kwarg holding a list with one tensor per expert, so ``generate``, pipelines and
trainers move, cast and drop them like any other image input.
"""

from contextlib import contextmanager
from dataclasses import dataclass
from functools import wraps
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel, modeling_outputs
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, can_return_tuple, logging, torch_compilable_check
from transformers.utils.deprecation import deprecate_kwarg

from .configuration_eagle import EagleConfig, EagleVisionConfig
from .expert_clip import ClipExpert
from .expert_convnext import ConvNextExpert
from .expert_dinov2 import Dinov2Expert
from .expert_eva02 import Eva02Expert
from .expert_pix2struct import Pix2StructExpert
from .expert_sam import SamExpert
from .fusion_interface import EagleMultiModalProjector, Fusion
from .fusion_registry import FUSION_CLASSES
from .vision_expert import VisionExpert

logger = logging.get_logger(__name__)

# transformers 5.24 renamed the KV cache from `past_key_values` to `cache` (kwarg and output field). Eagle speaks
# whichever the installed version speaks, so one checkpoint's remote code runs on both sides of the rename.
CACHE_NAME = "cache" if hasattr(modeling_outputs, "MultimodalBaseModelOutputWithPast") else "past_key_values"


def accepts_past_key_values(forward):
    """Eagle's forwards take the KV cache as `cache`. Since the rename, `past_key_values` still works with the
    FutureWarning transformers' own models give; before it, `past_key_values` is the name generation and trainers
    use, so it is taken silently."""
    if CACHE_NAME == "cache":
        return deprecate_kwarg("past_key_values", version="5.40.0", new_name="cache")(forward)

    @wraps(forward)
    def forward_with_past_key_values(*args, past_key_values=None, **kwargs):
        if past_key_values is not None:
            kwargs.setdefault("cache", past_key_values)
        return forward(*args, **kwargs)

    return forward_with_past_key_values


def _output_class(name: str, fields: tuple[str, ...], doc: str) -> type[ModelOutput]:
    namespace = {"__annotations__": dict.fromkeys(fields, Any), "__doc__": doc, "__module__": __name__}
    namespace.update(dict.fromkeys(fields))
    return dataclass(type(name, (ModelOutput,), namespace))


EagleModelOutputWithPast = _output_class(
    "EagleModelOutputWithPast",
    ("last_hidden_state", CACHE_NAME, "hidden_states", "attentions", "image_outputs"),
    "Language-model hidden states, the KV cache, and the image encoder's outputs (`image_outputs`).",
)
EagleCausalLMOutputWithPast = _output_class(
    "EagleCausalLMOutputWithPast",
    ("loss", "logits", CACHE_NAME, "hidden_states", "attentions", "image_outputs"),
    "Loss, logits, the KV cache, and the image encoder's outputs (`image_outputs`).",
)


# Modules to keep out of 8-bit/4-bit quantization (``BitsAndBytesConfig(llm_int8_skip_modules=...)``): the experts
# and the projector stay in the load dtype and only the LLM's layers are quantized. transformers matches these
# from the start of a module's full name, so they carry the ``model.`` prefix.
QUANTIZATION_SKIP_MODULES = ["model.vision_tower", "model.multi_modal_projector", "lm_head"]

EXPERT_CLASSES: dict[str, type[VisionExpert]] = {
    cls.expert_type: cls
    for cls in (ClipExpert, ConvNextExpert, SamExpert, Eva02Expert, Pix2StructExpert, Dinov2Expert)
}


def merge_expert_inputs(pixel_values):
    """Accept a list of per-sample expert lists (what a batching pipeline's collator yields) as well as the
    usual per-expert list, and return the per-expert list with samples concatenated in order."""
    if isinstance(pixel_values, (list, tuple)) and pixel_values and isinstance(pixel_values[0], (list, tuple)):
        return [torch.cat(per_expert) for per_expert in zip(*pixel_values)]
    return pixel_values


@dataclass
class EagleVisionTowerOutput(ModelOutput):
    """What the mixture computes; every per-expert field is a dict keyed by expert name, in config order.

    - ``last_hidden_state``: (B, grid**2, sum of expert channels), experts concatenated in config order; ``None``
      when ``grid_sizes`` put the experts on grids of different sides (as the ``cross_attention`` fusion does).
    - ``expert_features``: with ``return_expert_features``, each expert's (B, side**2, C_e) map on its grid.
    - ``hidden_states``: with ``output_hidden_states``, each expert's tuple of hidden states: its first block's input,
      then every block's output (``num_hidden_layers + 1`` for the transformer experts, one per ConvNeXt block
      plus one), each in the expert's own layout ((B, N, C) for CLIP and Pix2Struct, (B, H, W, C) for SAM and
      EVA-02, (B, C, H, W) for ConvNeXt).
    - ``attentions``: with ``output_attentions``, each expert's tuple of attention maps, one per attention layer
      (``None`` entries unless the attention runs eager; an empty tuple for ConvNeXt, which has no attention).
    """

    last_hidden_state: torch.FloatTensor | None = None
    expert_features: dict[str, torch.FloatTensor] | None = None
    hidden_states: dict[str, tuple[torch.FloatTensor, ...]] | None = None
    attentions: dict[str, tuple[torch.FloatTensor | None, ...]] | None = None


@dataclass
class EagleImageFeaturesOutput(BaseModelOutputWithPooling):
    """``get_image_features``' output: the tower's outputs (see ``EagleVisionTowerOutput``, including the per-expert
    ``hidden_states`` and ``attentions`` dicts) and ``pooler_output``, a list with one (``config.image_seq_length``,
    text hidden size) tensor per image, made by the fusion strategy: what the language model receives in the image
    tokens' places."""

    expert_features: dict[str, torch.FloatTensor] | None = None


@contextmanager
def recorded_outputs(expert: VisionExpert, hidden_states: bool, attentions: bool):
    """Collect an expert's hidden states and attention maps while it runs, through forward hooks on its blocks and
    attention modules, so each expert's forward stays a plain pixels-to-feature-map function."""
    record = {"hidden_states": [], "attentions": []}

    def first_input(module, args, kwargs):
        record["hidden_states"].append(args[0] if args else kwargs["hidden_states"])

    def block_output(module, args, output):
        record["hidden_states"].append(output[0] if isinstance(output, tuple) else output)

    def attention_weights(module, args, output):
        record["attentions"].append(output[1])

    handles = []
    if hidden_states:
        blocks = expert.block_modules()
        handles.append(blocks[0].register_forward_pre_hook(first_input, with_kwargs=True))
        handles += [block.register_forward_hook(block_output) for block in blocks]
    if attentions:
        handles += [module.register_forward_hook(attention_weights) for module in expert.attention_modules()]
    try:
        yield record
    finally:
        for handle in handles:
            handle.remove()


class EaglePreTrainedModel(PreTrainedModel):
    config: EagleConfig
    config_class = EagleConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # The whole forward, image path included, traces without a graph break (`torch.compile(fullgraph=True)`).
    _can_compile_fullgraph = True
    _no_split_modules = sorted({name for cls in EXPERT_CLASSES.values() for name in cls.no_split_modules})
    _skip_keys_device_placement = ["cache", "past_key_values"]

    def _init_weights(self, module):
        super()._init_weights(module)
        std = getattr(self.config, "initializer_range", 0.02)
        for vision_expert_class in EXPERT_CLASSES.values():
            vision_expert_class.init_module(module, std)

    def set_attn_implementation(self, attn_implementation, *args, **kwargs):
        super().set_attn_implementation(attn_implementation, *args, **kwargs)
        # transformers has set the vision config's kernel; the experts take theirs from their own configs.
        for module in self.modules():
            if isinstance(module, EagleVisionTower):
                module.dispatch_attn_implementation()


class EagleVisionTower(EaglePreTrainedModel):
    """Runs every configured expert on its own input and fuses the maps on the shared grid.

    Each map goes through its expert's ``pixel_unshuffle`` step, then bilinear resampling (align_corners, in
    float32) to ``grid_size x grid_size`` when its size differs; channels are concatenated in config order.
    """

    config: EagleVisionConfig
    config_class = EagleVisionConfig
    base_model_prefix = "vision_tower"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    # SAM's attention does not go through transformers' attention interface.
    _supports_attention_backend = False

    def __init__(self, config: EagleVisionConfig):
        super().__init__(config)
        attn = config._attn_implementation
        self.experts = nn.ModuleDict(
            {spec["name"]: EXPERT_CLASSES[spec["type"]](spec, attn_implementation=attn) for spec in config.experts}
        )
        self.grid_size = config.grid_size
        self.frozen_experts: set[str] = set()
        # The fast path's settings and compiled forwards (plain attributes, not modules: state_dict keys, saving
        # and loading never see them); None while it is off.
        self.fast_path: dict | None = None
        self._compiled_forwards: dict[type, Any] = {}
        self.post_init()

    # The capability flags transformers reads before it gives the tower an attention kernel: a kernel is supported
    # when every configured expert has it (SAM and Pix2Struct have SDPA but neither flash nor flex attention).
    def _experts_support(self, flag: str) -> bool:
        return all(getattr(EXPERT_CLASSES[spec["type"]], flag) for spec in self.config.experts)

    @property
    def _supports_sdpa(self) -> bool:
        return self._experts_support("_supports_sdpa")

    @property
    def _supports_flash_attn(self) -> bool:
        return self._experts_support("_supports_flash_attn")

    @property
    def _supports_flex_attn(self) -> bool:
        return self._experts_support("_supports_flex_attn")

    def dispatch_attn_implementation(self) -> None:
        """Give every expert the vision config's attention kernel (after `set_attn_implementation`)."""
        for vision_expert in self.experts.values():
            vision_expert.set_attn_implementation(self.config._attn_implementation)

    def freeze_experts(self, names) -> None:
        """Freeze these experts (all others become trainable): no gradients, eval mode even while the model
        trains, and their forward builds no autograd graph."""
        self.frozen_experts = set(names)
        for name, vision_expert in self.experts.items():
            vision_expert.requires_grad_(name not in self.frozen_experts)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        for name in self.frozen_experts:
            self.experts[name].eval()
        return self

    def set_channels_last(self, enabled: bool = True) -> None:
        """Run the convolutional experts (ConvNeXt) in channels-last memory format, or back in the default one.

        Off by default: it changes the weights' strides, which not every sharding or weight-handling tool expects;
        ``eagle bench`` measures what it gains on your device.
        """
        for vision_expert in self.experts.values():
            if hasattr(vision_expert, "set_channels_last"):
                vision_expert.set_channels_last(enabled)

    def enable_fast_path(
        self,
        mode: str | None = None,
        dynamic: bool | None = False,
        fullgraph: bool = True,
        backend: str = "inductor",
        options: dict | None = None,
    ) -> None:
        """Compile every expert's forward with ``torch.compile`` and run it whenever nothing needs the eager path.

        Eagle's experts see fixed input shapes (every image is resized to each expert's resolution; nothing is
        tiled), so each expert compiles once per batch size (``dynamic=False``, the default) and is then reused.
        ``mode``, ``dynamic``, ``fullgraph``, ``backend`` and ``options`` go to ``torch.compile`` as they are:
        ``mode="reduce-overhead"`` (or ``"max-autotune"``) adds CUDA graphs on CUDA; on a CPU leave ``mode=None``
        (no graph capture there). ``fullgraph=True`` makes a graph break an error instead of a silent slowdown.

        Off by default because it costs time once: the first call at each batch size (and after ``.to()`` to
        another device or dtype, which recompiles) compiles the experts, seconds for a tiny model and minutes
        for the full-size one on a CPU (docs/performance.md has the figures). Turn it on after loading (and after
        ``device_map`` dispatch); ``disable_fast_path()`` turns it off.

        The eager forward still runs, unchanged, whenever the tower is in training mode, whenever gradients are
        enabled and an expert's weights or its input need them, when hidden states or attention maps are asked
        for (they are recorded by module hooks), and for an expert that accelerate has hooked (``device_map``
        offloading it or splitting it between devices). Nothing is captured while the tower trains. The compiled
        functions are the experts' classes' ``forward`` taking the expert as an argument, kept in a plain
        attribute: ``state_dict`` keys, ``save_pretrained`` and ``from_pretrained`` are unchanged, and a deep copy of
        the tower runs its own weights.
        """
        self.fast_path = {
            "mode": mode,
            "dynamic": dynamic,
            "fullgraph": fullgraph,
            "backend": backend,
            "options": options,
        }
        self._compiled_forwards = {}

    def disable_fast_path(self) -> None:
        """Back to the eager forward everywhere (drops the compiled functions)."""
        self.fast_path = None
        self._compiled_forwards = {}

    def compiled_forward(self, vision_expert: VisionExpert, pixels: torch.Tensor):
        """The compiled forward this expert runs now, or None where the eager one must run (``enable_fast_path``
        says when). One compiled function per expert class: its ``forward`` with the expert as an argument, so
        experts of one class share compiled graphs where their shapes and settings agree."""
        if self.fast_path is None or self.training:
            return None
        if torch.is_grad_enabled() and (
            pixels.requires_grad or any(p.requires_grad for p in vision_expert.parameters())
        ):
            return None
        if any(hasattr(module, "_hf_hook") for module in vision_expert.modules()):
            return None
        cls = type(vision_expert)
        if cls not in self._compiled_forwards:
            settings = {key: value for key, value in self.fast_path.items() if key != "options" or value}
            self._compiled_forwards[cls] = torch.compile(cls.forward, **settings)
        return self._compiled_forwards[cls]

    def run_expert(self, name: str, pixels: torch.Tensor, use_fast_path: bool = True) -> torch.Tensor:
        """One expert's (B, C, h, w) feature map: compiled where the fast path is on and allowed, else eager."""
        vision_expert = self.experts[name]
        compiled = self.compiled_forward(vision_expert, pixels) if use_fast_path else None
        if compiled is not None:
            return compiled(vision_expert, pixels)
        return vision_expert(pixels)

    def expert_channels(self) -> dict[str, int]:
        """Channels each expert contributes on the grid (after its pixel_unshuffle)."""
        return {
            name: module.out_channels * module.spec["pixel_unshuffle"] ** 2 for name, module in self.experts.items()
        }

    @property
    def hidden_size(self) -> int:
        return sum(self.expert_channels().values())

    def to_grid(self, feature_map: torch.Tensor, pixel_unshuffle: int, grid_size: int | None = None) -> torch.Tensor:
        """(B, C, h, w) -> (B, side**2, C * pixel_unshuffle**2), on the shared grid unless ``grid_size`` says."""
        side = grid_size or self.grid_size
        if pixel_unshuffle > 1:
            feature_map = nn.functional.pixel_unshuffle(feature_map, pixel_unshuffle)
        if tuple(feature_map.shape[-2:]) != (side, side):
            feature_map = nn.functional.interpolate(
                feature_map.float(), size=(side, side), mode="bilinear", align_corners=True
            ).to(feature_map.dtype)
        return feature_map.flatten(2).transpose(1, 2)

    def check_pixel_values(self, pixel_values) -> None:
        names = list(self.experts)
        if not isinstance(pixel_values, (list, tuple)) or len(pixel_values) != len(names):
            got = f"a list of {len(pixel_values)}" if isinstance(pixel_values, (list, tuple)) else "a tensor"
            raise ValueError(
                f"pixel_values must be a list with one tensor per vision expert ({', '.join(names)}), got {got}; "
                "make the inputs with this model's EagleProcessor / EagleImageProcessor"
            )
        # One check per expert, not a set of shapes: traced image counts are symbolic and cannot be hashed, and each
        # check tells torch.compile/export that the counts are equal.
        counts = [pixels.shape[0] for pixels in pixel_values]
        for count in counts[1:]:
            torch_compilable_check(
                count == counts[0],
                lambda: f"pixel_values hold different image counts per expert: {dict(zip(names, counts))}",
            )

    @can_return_tuple
    def forward(
        self,
        pixel_values: list[torch.Tensor],
        return_expert_features: bool = False,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        grid_sizes: dict[str, int] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> EagleVisionTowerOutput:
        """``grid_sizes`` (expert name -> side) brings those experts' maps to other grids than the shared one: what a
        fusion strategy asks for (``Fusion.expert_grid_sizes``)."""
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        pixel_values = merge_expert_inputs(pixel_values)
        self.check_pixel_values(pixel_values)
        on_grid, hidden_states, attentions = {}, {}, {}
        device = None
        for (name, vision_expert), pixels in zip(self.experts.items(), pixel_values):
            # A frozen expert builds no graph. no_grad, not inference_mode: sharded training (FSDP, ZeRO-3) gathers
            # and frees weights inside the experts' forward hooks, and tensors made in inference mode could not be
            # updated outside it. Under the caller's inference_mode (as `eagle generate` runs) everything runs in it.
            with (
                torch.set_grad_enabled(torch.is_grad_enabled() and name not in self.frozen_experts),
                recorded_outputs(vision_expert, output_hidden_states, output_attentions) as record,
            ):
                feature_map = self.run_expert(
                    name, pixels, use_fast_path=not (output_hidden_states or output_attentions)
                )
                grid = self.to_grid(feature_map, vision_expert.spec["pixel_unshuffle"], (grid_sizes or {}).get(name))
            # Under a device_map the experts may sit on different devices; the fused map lives with the first.
            device = device or grid.device
            on_grid[name] = grid.to(device)
            hidden_states[name] = tuple(record["hidden_states"])
            attentions[name] = tuple(record["attentions"])
        # Which grids match is known from the config: shapes traced by torch.export are symbolic and cannot be hashed.
        sides = {(grid_sizes or {}).get(name) or self.grid_size for name in on_grid}
        fused = torch.cat(list(on_grid.values()), dim=-1) if len(sides) == 1 else None
        return EagleVisionTowerOutput(
            last_hidden_state=fused,
            expert_features=on_grid if return_expert_features else None,
            hidden_states=hidden_states if output_hidden_states else None,
            attentions=attentions if output_attentions else None,
        )


class EagleModel(EaglePreTrainedModel):
    def __init__(self, config: EagleConfig):
        super().__init__(config)
        self.vision_tower = EagleVisionTower(config.vision_config)
        # The fusion strategy's module, under the released projector's name whatever the strategy: channel_concat
        # keeps the released checkpoints' keys, and every strategy's weights count, train and save as the projector.
        fusion_class = FUSION_CLASSES[config.fusion["type"]]
        self.multi_modal_projector = fusion_class(config, self.vision_tower.expert_channels())
        self.expert_grid_sizes = fusion_class.expert_grid_sizes(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: list[torch.Tensor],
        return_expert_features: bool = False,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> EagleImageFeaturesOutput:
        """Tower + fusion. ``pooler_output`` is a list with one (``config.image_seq_length``, hidden) tensor per image;
        the mixture's per-expert hidden states and attention maps come as dicts keyed by expert name
        (``EagleVisionTowerOutput``). ``output_hidden_states``/``output_attentions`` default to the vision config's."""
        tower = self.vision_tower(
            pixel_values,
            return_expert_features=True,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            grid_sizes=self.expert_grid_sizes,
            return_dict=True,
        )
        fusion = self.multi_modal_projector
        projected = fusion({name: grid.to(fusion.dtype) for name, grid in tower.expert_features.items()})
        return EagleImageFeaturesOutput(
            last_hidden_state=tower.last_hidden_state,
            pooler_output=list(projected),
            hidden_states=tower.hidden_states,
            attentions=tower.attentions,
            expert_features=tower.expert_features if return_expert_features else None,
        )

    def image_token_mask(self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """(batch, sequence) mask of the image placeholders, found by id or, for a prompt given as embeddings, by
        the image token's embedding."""
        if input_ids is not None:
            return input_ids == self.config.image_token_id
        image_embedding = self.get_input_embeddings()(
            torch.tensor(self.config.image_token_id, dtype=torch.long, device=inputs_embeds.device)
        )
        return (inputs_embeds == image_embedding).all(-1)

    def get_placeholder_mask(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor, image_features: torch.Tensor
    ) -> torch.Tensor:
        mask = self.image_token_mask(input_ids, inputs_embeds)
        n_image_tokens = mask.sum()
        # The message is the one TRL recognises to suggest raising max_length (HF-STACK 1.4). A tensor check, not
        # `if`: it reads no value back from the device and compiles without a graph break.
        torch_compilable_check(
            n_image_tokens * inputs_embeds.shape[-1] == image_features.numel(),
            lambda: (
                f"Image features and image tokens do not match, tokens: {int(n_image_tokens)}, "
                f"features: {image_features.shape[0] * image_features.shape[1]} "
                f"({self.config.image_seq_length} tokens per image); each image needs exactly one expanded image "
                "placeholder in the prompt: build inputs with the EagleProcessor, and do not truncate prompts "
                "through image tokens"
            ),
        )
        return mask.unsqueeze(-1).expand_as(inputs_embeds).to(inputs_embeds.device)

    @staticmethod
    def is_prefill(cache: Cache | None) -> bool:
        """Whether nothing is cached yet. A static cache reports its length as a tensor once written to: reading
        it would sync with the device (and break a compiled decode step), and only a continuation has one."""
        length = cache.get_seq_length() if cache is not None else 0
        return not isinstance(length, torch.Tensor) and length == 0

    @can_return_tuple
    @accepts_past_key_values
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: list[torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> EagleModelOutputWithPast:
        """Without ``pixel_values``, image placeholder tokens are embedded as ordinary tokens, as in LLaVA: a prompt
        reaches the model without its images whenever generation has already encoded them (the steps after the
        prefill, an assistant model's drafts), and checking every step would read the prompt back from the device.
        Inputs from users are checked by the EagleProcessor, which refuses placeholders without images."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds")
        if (input_ids if input_ids is not None else inputs_embeds).shape[1] == 0:
            raise ValueError("The prompt is empty (no tokens); give some text, or an image with its <image> token")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        image_outputs = None
        if pixel_values is not None:
            image_outputs = self.get_image_features(
                pixel_values,
                output_hidden_states=kwargs.get("output_hidden_states"),
                output_attentions=kwargs.get("output_attentions"),
                return_dict=True,
            )
            image_features = torch.stack(image_outputs.pooler_output).to(inputs_embeds.device, inputs_embeds.dtype)
            mask = self.get_placeholder_mask(input_ids, inputs_embeds, image_features)
            inputs_embeds = inputs_embeds.masked_scatter(mask, image_features)

        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            return_dict=True,
            **{CACHE_NAME: cache},
            **kwargs,
        )
        return EagleModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            **{CACHE_NAME: getattr(outputs, CACHE_NAME)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=image_outputs,
        )


class EagleForConditionalGeneration(EaglePreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: EagleConfig):
        super().__init__(config)
        self.model = EagleModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    @property
    def vision_tower(self) -> EagleVisionTower:
        return self.model.vision_tower

    @property
    def multi_modal_projector(self) -> Fusion:
        return self.model.multi_modal_projector

    @property
    def language_model(self) -> nn.Module:
        return self.model.language_model

    def get_image_features(
        self, pixel_values: list[torch.Tensor], **kwargs: Unpack[TransformersKwargs]
    ) -> EagleImageFeaturesOutput:
        return self.model.get_image_features(pixel_values, **kwargs)

    @can_return_tuple
    @accepts_past_key_values
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: list[torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Unpack[TransformersKwargs],
    ) -> EagleCausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        # An int keeps the last N positions (0 = all); a tensor lists the positions to keep.
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        hidden_states = hidden_states[:, keep]
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return EagleCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **{CACHE_NAME: getattr(outputs, CACHE_NAME)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=outputs.image_outputs,
        )

    def prepare_inputs_for_generation(
        self, input_ids, cache=None, inputs_embeds=None, pixel_values=None, past_key_values=None, **kwargs
    ):
        # Both names of the cache are parameters: generate validates its kwargs against this signature, and
        # transformers before 5.24 passes `past_key_values`.
        cache = cache if cache is not None else past_key_values
        model_inputs = super().prepare_inputs_for_generation(
            input_ids, inputs_embeds=inputs_embeds, pixel_values=pixel_values, **{CACHE_NAME: cache}, **kwargs
        )
        # generate passes the images on its first step only, and not even then to an assistant model: an Eagle
        # drafting for another model would never see them. Its cache is empty exactly when the prompt, images
        # included, has not been encoded yet.
        if pixel_values is not None and "pixel_values" not in model_inputs and EagleModel.is_prefill(cache):
            model_inputs["pixel_values"] = pixel_values
        return model_inputs

    def generate(self, *args, **kwargs):
        # transformers serve passes its processor as `tokenizer`; stop strings need the tokenizer's vocabulary.
        if kwargs.get("tokenizer") is not None:
            kwargs["tokenizer"] = getattr(kwargs["tokenizer"], "tokenizer", kwargs["tokenizer"])
        return super().generate(*args, **kwargs)

    def _expand_inputs_for_generation(self, expand_size=1, is_encoder_decoder=False, input_ids=None, **model_kwargs):
        # The generic version repeats only top-level tensors; the per-expert list needs the same treatment.
        pixel_values = merge_expert_inputs(model_kwargs.pop("pixel_values", None))
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size=expand_size, is_encoder_decoder=is_encoder_decoder, input_ids=input_ids, **model_kwargs
        )
        if pixel_values is not None and expand_size > 1:
            # A prompt given as embeddings comes with an empty input_ids: its placeholders are found by embedding.
            prompt_ids = input_ids if input_ids is not None and input_ids.shape[1] > 0 else None
            is_image = self.model.image_token_mask(prompt_ids, model_kwargs.get("inputs_embeds"))
            pixel_values = self._repeat_images_per_sequence(pixel_values, is_image, expand_size)
        if pixel_values is not None:
            model_kwargs["pixel_values"] = pixel_values
        return input_ids, model_kwargs

    def _repeat_images_per_sequence(self, pixel_values, is_image: torch.Tensor, expand_size: int):
        """Repeat each prompt's images ``expand_size`` times, keeping prompts' images contiguous. ``is_image`` marks
        the image placeholders of the already expanded prompts."""
        counts = (is_image.sum(-1) // self.config.image_seq_length)[::expand_size].tolist()
        out = []
        for pixels in pixel_values:
            chunks = torch.split(pixels, counts)
            out.append(torch.cat([chunk.repeat(expand_size, *([1] * (chunk.dim() - 1))) for chunk in chunks]))
        return out


__all__ = [
    "FUSION_CLASSES",
    "QUANTIZATION_SKIP_MODULES",
    "EagleMultiModalProjector",
    "EagleForConditionalGeneration",
    "EagleImageFeaturesOutput",
    "EagleModel",
    "EaglePreTrainedModel",
    "EagleVisionTower",
    "EagleVisionTowerOutput",
]
