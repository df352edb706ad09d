"""``cross_attention``: Mini-Gemini's patch-info mining (arXiv 2403.18814 §3.2). The first expert's tokens, on the
shared grid, are the queries; every other expert's map is brought to a ``window`` times finer grid, so each query
position owns the ``window x window`` patch of it that covers the same image region, and attends to those patches
only. The result is added to the query tokens and projected: an image takes the first expert's ``grid_size**2``
tokens, whatever detail the other experts add.
"""

import math

import torch
from torch import nn

from .fusion_interface import EagleMultiModalProjector, Fusion

MAX_GRID_SIZE = 128


class CrossAttentionFusion(Fusion):
    fusion_type = "cross_attention"
    summary = (
        "the first expert's {grid}x{grid} tokens attend, each within its own window, to the other experts' finer "
        "feature maps (Mini-Gemini's patch-info mining), and an MLP projector (`{projector_type}`) maps the result "
        "into the language model ({tokens} image tokens per image)."
    )
    # window: side of each query's patch on the other experts' finer grid; heads: attention heads.
    defaults = {"window": 2, "heads": 1}

    @classmethod
    def check_options(cls, options: dict, vision_config) -> dict:
        options = super().check_options(options, vision_config)
        cls._positive_int(options, "window", 8)
        cls._positive_int(options, "heads", 64)
        if len(vision_config.experts) < 2:
            raise ValueError(
                "fusion cross_attention needs at least two experts (the first one's tokens query the others); "
                "add an expert or choose fusion channel_concat"
            )
        if vision_config.grid_size * options["window"] > MAX_GRID_SIZE:
            raise ValueError(
                f"fusion.options.window {options['window']} puts the other experts on a "
                f"{vision_config.grid_size * options['window']}-wide grid (grid_size x window); keep it at most "
                f"{MAX_GRID_SIZE}"
            )
        return options

    @classmethod
    def expert_grid_sizes(cls, config) -> dict[str, int]:
        grid, window = config.vision_config.grid_size, config.fusion["options"]["window"]
        first, *others = config.vision_config.expert_names
        return {first: grid, **dict.fromkeys(others, grid * window)}

    @classmethod
    def num_image_tokens(cls, config) -> int:
        return config.vision_config.grid_size**2

    def __init__(self, config, expert_channels: dict[str, int]):
        super().__init__()
        options = config.fusion["options"]
        self.grid_size, self.window, self.heads = config.vision_config.grid_size, options["window"], options["heads"]
        self.query_name, *others = expert_channels
        width = expert_channels[self.query_name]
        if width % self.heads:
            raise ValueError(
                f"fusion.options.heads {self.heads} does not divide the first expert's {width} channels "
                f"({self.query_name}); choose a divisor"
            )
        self.query = nn.Linear(width, width)
        self.keys = nn.ModuleDict({name: nn.Linear(expert_channels[name], width) for name in others})
        self.values = nn.ModuleDict({name: nn.Linear(expert_channels[name], width) for name in others})
        self.projector = EagleMultiModalProjector(width, config.text_config.hidden_size, config.projector_type)

    @property
    def dtype(self) -> torch.dtype:
        return self.query.weight.dtype

    def windows(self, grid_map: torch.Tensor) -> torch.Tensor:
        """(B, (g*w)**2, C) -> (B, g**2, w**2, C): each query position's patch of the finer map."""
        batch, channels = grid_map.shape[0], grid_map.shape[-1]
        g, w = self.grid_size, self.window
        patches = grid_map.reshape(batch, g, w, g, w, channels).permute(0, 1, 3, 2, 4, 5)
        return patches.reshape(batch, g * g, w * w, channels)

    def forward(self, grid_maps: dict[str, torch.Tensor]) -> torch.Tensor:
        queries = grid_maps[self.query_name]
        batch, positions, width = queries.shape
        head_width = width // self.heads
        patches = {name: self.windows(grid_maps[name]) for name in self.keys}
        keys = torch.cat([self.keys[name](patch) for name, patch in patches.items()], dim=2)
        values = torch.cat([self.values[name](patch) for name, patch in patches.items()], dim=2)
        # (B, N, K, heads, d) keys and values against (B, N, heads, d) queries: attention within each window only.
        keys = keys.reshape(batch, positions, -1, self.heads, head_width)
        values = values.reshape(batch, positions, -1, self.heads, head_width)
        query = self.query(queries).reshape(batch, positions, self.heads, head_width)
        scores = torch.einsum("bnhd,bnkhd->bnhk", query, keys) / math.sqrt(head_width)
        mined = torch.einsum("bnhk,bnkhd->bnhd", scores.softmax(dim=-1), values).reshape(batch, positions, width)
        return self.projector(queries + mined)
