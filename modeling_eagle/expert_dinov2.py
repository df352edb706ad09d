"""DINOv2 ViT expert, built from transformers' DINOv2 modules (the candidate the paper's expert search tried).

The keys are ``Dinov2Model``'s (``embeddings.*``, ``encoder.layer.N.*``, ``layernorm.*``), so its weights load
as they are. The map is the final LayerNorm's patch tokens (DINOv2's ``x_norm_patchtokens``, what the model's
``last_hidden_state`` holds past the CLS token) as ``(B, C, h, w)``. The mask token, used only by DINOv2's masked
pretraining, is not part of the expert. The position table keeps its pretrained size (37x37 for the released
518-px models) and is resized bicubically in float32 at run time when the configured resolution differs, as for
the other ViTs; at the pretrained grid it is used unchanged.
"""

import torch
from torch import nn
from transformers import Dinov2Config
from transformers import initialization as init
from transformers.models.dinov2.modeling_dinov2 import Dinov2Embeddings, Dinov2Layer, Dinov2LayerScale

from .vision_expert import VisionExpert, resize_position_grid


class Dinov2ExpertEncoder(nn.Module):
    """The layers of ``Dinov2Encoder`` under its key names, as a plain module (transformers' is a PreTrainedModel)."""

    def __init__(self, config: Dinov2Config):
        super().__init__()
        self.layer = nn.ModuleList(Dinov2Layer(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            hidden_states = layer(hidden_states)
        return hidden_states


class Dinov2Expert(VisionExpert):
    expert_type = "dinov2"
    no_split_modules = ("Dinov2Layer",)
    # DINOv2's attention goes through transformers' attention interface, unmasked: every kernel.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True

    def __init__(self, spec: dict, attn_implementation: str = "sdpa"):
        super().__init__(spec, attn_implementation)
        self.config = Dinov2Config(**{**spec["config"], "use_mask_token": False})
        self.embeddings = Dinov2Embeddings(self.config)
        self.encoder = Dinov2ExpertEncoder(self.config)
        self.layernorm = nn.LayerNorm(self.config.hidden_size, eps=self.config.layer_norm_eps)
        for module in self.modules():
            if isinstance(module, Dinov2LayerScale):  # weights are initialised after construction, without the config
                module.layerscale_value = self.config.layerscale_value
        self.set_attn_implementation(attn_implementation)

    def block_modules(self) -> list[nn.Module]:
        return list(self.encoder.layer)

    def attention_modules(self) -> list[nn.Module]:
        return [layer.attention for layer in self.encoder.layer]

    @property
    def out_channels(self) -> int:
        return self.config.hidden_size

    def feature_map_size(self) -> tuple[int, int]:
        side = self.image_size // self.config.patch_size
        return side, side

    @classmethod
    def init_module(cls, module: nn.Module, std: float) -> None:
        if isinstance(module, Dinov2Embeddings):
            init.trunc_normal_(module.position_embeddings, mean=0.0, std=std)
            init.trunc_normal_(module.cls_token, mean=0.0, std=std)
        elif isinstance(module, Dinov2LayerScale):
            init.constant_(module.lambda1, module.layerscale_value)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        embeddings = self.embeddings
        patches = embeddings.patch_embeddings(pixel_values)  # (B, h*w, C), in the weights' dtype
        batch = patches.shape[0]
        rows, cols = pixel_values.shape[2] // self.config.patch_size, pixel_values.shape[3] // self.config.patch_size
        table = embeddings.position_embeddings
        # .to(): under a device_map the table may sit on another device than the patch embedding.
        grid = resize_position_grid(table[:, 1:], (rows, cols)).reshape(1, rows * cols, -1).to(patches.device)
        cls_token = (embeddings.cls_token + table[:, :1]).to(patches.device)
        hidden = torch.cat((cls_token.expand(batch, -1, -1), patches + grid), dim=1)
        hidden = self.layernorm(self.encoder(embeddings.dropout(hidden)))
        return hidden[:, 1:].transpose(1, 2).reshape(batch, -1, rows, cols)
