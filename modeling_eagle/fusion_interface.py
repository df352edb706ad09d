"""The one interface every Eagle fusion strategy implements: how the experts' maps become the LLM's image tokens.

The tower brings each expert's feature map to the grid its strategy asks for (``expert_grid_sizes``) and hands the
strategy a dict of ``(B, side**2, C_e)`` maps keyed by expert name, in config order. The strategy returns the
``(B, num_image_tokens, text hidden size)`` embeddings the LLM receives in the image placeholders' places, and says
(from the config alone, without weights) how many tokens one image takes, which the processor's ``<image>``
expansion reads.

The module sits at ``EagleModel.multi_modal_projector`` whatever the strategy, so every parameter a strategy owns
is classified, trained, frozen and kept out of quantization as the projector.
"""

import torch
from torch import nn
from transformers.activations import ACT2FN


class EagleMultiModalProjector(nn.Module):
    """``mlp2x_gelu``: Linear -> GELU (exact) -> Linear, as the released checkpoints; ``linear``: one Linear."""

    def __init__(self, in_features: int, out_features: int, projector_type: str = "mlp2x_gelu"):
        super().__init__()
        self.projector_type = projector_type
        self.linear_1 = nn.Linear(in_features, out_features)
        if projector_type == "mlp2x_gelu":
            self.act = ACT2FN["gelu"]
            self.linear_2 = nn.Linear(out_features, out_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = self.linear_1(features)
        if self.projector_type == "mlp2x_gelu":
            hidden = self.linear_2(self.act(hidden))
        return hidden


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


class Fusion(nn.Module):
    """Base class: subclasses set ``fusion_type`` and ``defaults`` (their options and default values) and implement
    ``__init__(config, expert_channels)``, ``forward`` and ``num_image_tokens``.

    ``config`` is the ``EagleConfig``; its ``fusion`` entry is ``{"type": fusion_type, "options": {...}}`` with the
    options already checked and defaulted by ``check_options``.
    """

    fusion_type: str = ""
    # What the model card says the strategy does, formatted with grid, channels, tokens and projector_type.
    summary: str = ""
    # Option name -> default value; ``None`` means "derived from the rest of the config".
    defaults: dict = {}

    @classmethod
    def check_options(cls, options: dict, vision_config) -> dict:
        """A copy of ``options`` with the defaults filled in; errors name the option and what to do."""
        _check(isinstance(options, dict), f"fusion.options must be a dict, got {type(options).__name__}")
        unknown = sorted(set(options) - set(cls.defaults))
        allowed = ", ".join(cls.defaults) or "none"
        _check(not unknown, f"fusion.options has unknown option(s) {unknown} for {cls.fusion_type}; use {allowed}")
        return {**cls.defaults, **options}

    @staticmethod
    def _positive_int(options: dict, key: str, upper: int) -> None:
        value = options[key]
        _check(
            isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= upper,
            f"fusion.options.{key} is {value!r}; it must be an int between 1 and {upper}",
        )

    @classmethod
    def expert_grid_sizes(cls, config) -> dict[str, int]:
        """The side of the grid each expert's map is brought to before fusion: the shared grid, unless the
        strategy needs another."""
        vision = config.vision_config
        return dict.fromkeys(vision.expert_names, vision.grid_size)

    @classmethod
    def num_image_tokens(cls, config) -> int:
        """Tokens one image occupies in the prompt (the processor expands each ``<image>`` to this many)."""
        raise NotImplementedError

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def reset_parameters(self) -> None:
        """Draw fresh weights (what pre-alignment does to the fused module before stage 2), with each layer's own
        reset, in module order."""
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def forward(self, grid_maps: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError
