"""CLIP ViT expert, built from transformers' CLIP vision modules.

As in the released Eagle: the CLS token is dropped *before* ``pre_layrnorm``, every encoder layer runs,
and ``post_layernorm`` is not part of the model. The position table keeps its pretrained size and is
interpolated bicubically at run time when the configured resolution differs.
"""

import torch
from torch import nn
from transformers import CLIPVisionConfig
from transformers import initialization as init
from transformers.models.clip.modeling_clip import CLIPEncoder, CLIPVisionEmbeddings

from .vision_expert import VisionExpert


class ClipExpert(VisionExpert):
    expert_type = "clip"
    no_split_modules = ("CLIPEncoderLayer",)
    # CLIP's attention goes through transformers' attention interface: every kernel.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True

    def __init__(self, spec: dict, attn_implementation: str = "sdpa"):
        super().__init__(spec, attn_implementation)
        self.config = CLIPVisionConfig(**spec["config"])
        self.embeddings = CLIPVisionEmbeddings(self.config)
        self.pre_layrnorm = nn.LayerNorm(self.config.hidden_size, eps=self.config.layer_norm_eps)
        self.encoder = CLIPEncoder(self.config)
        self.set_attn_implementation(attn_implementation)

    def block_modules(self) -> list[nn.Module]:
        return list(self.encoder.layers)

    def attention_modules(self) -> list[nn.Module]:
        return [layer.self_attn for layer in self.encoder.layers]

    @property
    def out_channels(self) -> int:
        return self.config.hidden_size

    def feature_map_size(self) -> tuple[int, int]:
        side = self.image_size // self.config.patch_size
        return side, side

    @classmethod
    def init_module(cls, module: nn.Module, std: float) -> None:
        if isinstance(module, CLIPVisionEmbeddings):
            init.normal_(module.class_embedding, std=module.embed_dim**-0.5)
            init.copy_(module.position_ids, torch.arange(module.num_positions).expand((1, -1)))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = pixel_values.shape
        embeddings = self.embeddings(pixel_values, interpolate_pos_encoding=True)
        hidden = self.pre_layrnorm(embeddings[:, 1:])
        hidden = self.encoder(inputs_embeds=hidden).last_hidden_state
        rows, cols = height // self.config.patch_size, width // self.config.patch_size
        return hidden.transpose(1, 2).reshape(batch, -1, rows, cols)
