"""``sequence_append``: each expert's grid tokens through its own projector, appended one expert after another (as
the paper's "sequence append" baseline). An image takes the sum of the experts' token counts, so this costs the LLM
``len(experts)`` times channel_concat's prefill at the same grid; ``grid_size`` trades detail for that cost."""

import torch
from torch import nn

from .fusion_interface import EagleMultiModalProjector, Fusion

MAX_GRID_SIZE = 128


class SequenceAppendFusion(Fusion):
    fusion_type = "sequence_append"
    summary = (
        "each expert's feature map is brought to its token grid, projected by the expert's own MLP projector "
        "(`{projector_type}`) and appended to the previous expert's tokens ({tokens} image tokens per image)."
    )
    # grid_size: each expert's token grid side (None: the vision config's shared grid).
    defaults = {"grid_size": None}

    @classmethod
    def check_options(cls, options: dict, vision_config) -> dict:
        options = super().check_options(options, vision_config)
        if options["grid_size"] is not None:
            cls._positive_int(options, "grid_size", MAX_GRID_SIZE)
        return options

    @classmethod
    def token_grid(cls, config) -> int:
        return config.fusion["options"].get("grid_size") or config.vision_config.grid_size

    @classmethod
    def expert_grid_sizes(cls, config) -> dict[str, int]:
        return dict.fromkeys(config.vision_config.expert_names, cls.token_grid(config))

    @classmethod
    def num_image_tokens(cls, config) -> int:
        return len(config.vision_config.experts) * cls.token_grid(config) ** 2

    def __init__(self, config, expert_channels: dict[str, int]):
        super().__init__()
        hidden = config.text_config.hidden_size
        self.projectors = nn.ModuleDict(
            {
                name: EagleMultiModalProjector(channels, hidden, config.projector_type)
                for name, channels in expert_channels.items()
            }
        )

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.projectors.values())).linear_1.weight.dtype

    def forward(self, grid_maps: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([projector(grid_maps[name]) for name, projector in self.projectors.items()], dim=1)
