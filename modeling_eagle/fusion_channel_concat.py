"""``channel_concat``: Eagle's own fusion and the released checkpoints' layout. Every expert's map on the shared grid,
concatenated on channels in config order, through one MLP; an image takes ``grid_size**2`` tokens."""

import torch

from .fusion_interface import EagleMultiModalProjector, Fusion


class ChannelConcatFusion(Fusion, EagleMultiModalProjector):
    """The projector itself (``linear_1``, ``linear_2``), so the state-dict keys stay those of the released
    checkpoints: ``model.multi_modal_projector.linear_1.weight``, ..."""

    fusion_type = "channel_concat"
    summary = (
        "their feature maps are brought to one {grid}x{grid} grid and concatenated on channels "
        "({channels} channels, {tokens} image tokens per image), and an MLP projector (`{projector_type}`) maps them "
        "into the language model."
    )

    def __init__(self, config, expert_channels: dict[str, int]):
        EagleMultiModalProjector.__init__(
            self, sum(expert_channels.values()), config.text_config.hidden_size, config.projector_type
        )

    @classmethod
    def num_image_tokens(cls, config) -> int:
        return config.vision_config.grid_size**2

    def forward(self, grid_maps: dict[str, torch.Tensor] | torch.Tensor) -> torch.Tensor:
        # The released projector took the already concatenated map; it still does, for code written against it.
        fused = grid_maps if isinstance(grid_maps, torch.Tensor) else torch.cat(list(grid_maps.values()), dim=-1)
        return EagleMultiModalProjector.forward(self, fused)
