"""SAM ViT image-encoder expert with Eagle's short neck.

Layers come from transformers' SAM vision encoder (windowed and global attention with decomposed relative
positions). The neck keeps only the 1x1 conv and the first channels-first LayerNorm, computed in float32 as
the original does; the tower then applies ``pixel_unshuffle`` per the expert's config. The absolute position
table keeps its pretrained 64x64 size and is resized bicubically when the resolution differs.
"""

import torch
from torch import nn
from transformers import SamVisionConfig
from transformers import initialization as init
from transformers.models.sam.modeling_sam import (
    SamPatchEmbeddings,
    SamVisionAttention,
    SamVisionLayer,
    SamVisionSdpaAttention,
)

from .vision_expert import VisionExpert, resize_position_grid


class SamShortNeck(nn.Module):
    def __init__(self, hidden_size: int, output_channels: int, eps: float = 1e-6):
        super().__init__()
        self.conv1 = nn.Conv2d(hidden_size, output_channels, kernel_size=1, bias=False)
        self.layer_norm1 = nn.LayerNorm(output_channels, eps=eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.conv1(hidden_states.permute(0, 3, 1, 2))
        normed = nn.functional.layer_norm(
            hidden_states.permute(0, 2, 3, 1).float(),
            self.layer_norm1.normalized_shape,
            self.layer_norm1.weight.float(),
            self.layer_norm1.bias.float(),
            self.layer_norm1.eps,
        )
        return normed.to(hidden_states.dtype).permute(0, 3, 1, 2)


class _RelativePositionsOnDevice:
    """transformers' SAM attention with its relative-position lookup built on the table's device: upstream indexes
    the table with a CPU tensor, a blocking host-to-device copy in every layer (seen on an H200 under
    ``torch.cuda.set_sync_debug_mode("error")``)."""

    def get_rel_pos(self, q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
        max_rel_dist = int(2 * max(q_size, k_size) - 1)
        resized = nn.functional.interpolate(
            rel_pos.reshape(1, rel_pos.shape[0], -1).transpose(1, 2), size=max_rel_dist, mode="linear"
        )
        resized = resized.reshape(-1, max_rel_dist).permute(1, 0)
        q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
        k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
        relative_coords = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
        return resized[relative_coords.long()]


class SamExpertAttention(_RelativePositionsOnDevice, SamVisionSdpaAttention):
    """transformers' SAM attention, eager or SDPA as the expert's config says at each call, so that the kernel can be
    switched on a built model (transformers picks one of two classes at construction)."""

    def __init__(self, config: SamVisionConfig, window_size: int):
        super().__init__(config, window_size)
        self.config = config

    def forward(self, hidden_states: torch.Tensor, output_attentions=None, **kwargs):
        if self.config._attn_implementation == "sdpa":
            return SamVisionSdpaAttention.forward(self, hidden_states)
        return SamVisionAttention.forward(self, hidden_states)


def _sam_layer(config: SamVisionConfig, window_size: int) -> SamVisionLayer:
    layer = SamVisionLayer(config, window_size=window_size)
    layer.attn = SamExpertAttention(config, window_size)
    return layer


class SamExpert(VisionExpert):
    expert_type = "sam"
    no_split_modules = ("SamVisionLayer",)
    # Relative-position biases rule out flash and flex kernels (as in transformers' SAM); SDPA with a bias is the
    # fast path.
    _supports_sdpa = True

    def __init__(self, spec: dict, attn_implementation: str = "sdpa"):
        super().__init__(spec, attn_implementation)
        self.config = SamVisionConfig(**spec["config"])
        self.set_attn_implementation(attn_implementation)
        config = self.config
        self.patch_embed = SamPatchEmbeddings(config)
        side = config.image_size // config.patch_size
        self.pos_embed = nn.Parameter(torch.zeros(1, side, side, config.hidden_size))
        self.layers = nn.ModuleList(
            _sam_layer(config, window_size=0 if i in config.global_attn_indexes else config.window_size)
            for i in range(config.num_hidden_layers)
        )
        self.neck = SamShortNeck(config.hidden_size, config.output_channels)

    def block_modules(self) -> list[nn.Module]:
        return list(self.layers)

    def attention_modules(self) -> list[nn.Module]:
        return [layer.attn for layer in self.layers]

    @property
    def out_channels(self) -> int:
        return self.config.output_channels

    def feature_map_size(self) -> tuple[int, int]:
        side = self.image_size // self.config.patch_size
        return side, side

    @classmethod
    def init_module(cls, module: nn.Module, std: float) -> None:
        if isinstance(module, SamExpert):
            init.zeros_(module.pos_embed)
        elif isinstance(module, SamVisionAttention) and module.use_rel_pos:
            init.zeros_(module.rel_pos_h)
            init.zeros_(module.rel_pos_w)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        projection = self.patch_embed.projection
        hidden = projection(pixel_values.to(projection.weight.dtype)).permute(0, 2, 3, 1)
        # .to(): under a device_map the table may sit on another device than the patch embedding.
        hidden = hidden + resize_position_grid(self.pos_embed, tuple(hidden.shape[1:3])).to(hidden.device)
        for layer in self.layers:
            hidden = layer(hidden)
        return self.neck(hidden)
