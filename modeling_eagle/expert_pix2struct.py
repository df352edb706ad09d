"""Pix2Struct encoder expert, built from transformers' Pix2Struct vision modules.

The input is the processor's flattened patches ``(B, max_patches, 2 + 3*p*p)`` (row id, column id, pixels);
producing them in the processor keeps the CPU out of the forward pass. The output is taken after the final
RMS norm; the first ``side * side`` rows are the real patches of the square image, laid out row-major.
"""

import math

import torch
from torch import nn
from transformers import Pix2StructVisionConfig
from transformers.models.pix2struct.modeling_pix2struct import (
    Pix2StructLayerNorm,
    Pix2StructVisionEmbeddings,
    Pix2StructVisionEncoder,
)

from .vision_expert import VisionExpert


class Pix2StructExpert(VisionExpert):
    expert_type = "pix2struct"
    no_split_modules = ("Pix2StructVisionLayer",)
    # transformers' Pix2Struct has no flash path, and its flex path takes the block mask transformers builds, not
    # the padding mask this expert builds itself (a tensor mask crashed flex attention on a CPU).
    _supports_sdpa = True

    def __init__(self, spec: dict, attn_implementation: str = "sdpa"):
        super().__init__(spec, attn_implementation)
        self.config = Pix2StructVisionConfig(**spec["config"])
        self.max_patches = int(spec["max_patches"])
        # The processor hands square images, so the patch grid is isqrt(max_patches) on each side.
        self.side = math.isqrt(self.max_patches)
        self.embeddings = Pix2StructVisionEmbeddings(self.config)
        self.encoder = Pix2StructVisionEncoder(self.config)
        self.layernorm = Pix2StructLayerNorm(self.config.hidden_size, eps=self.config.layer_norm_eps)
        self.set_attn_implementation(attn_implementation)

    def block_modules(self) -> list[nn.Module]:
        return list(self.encoder.layer)

    def attention_modules(self) -> list[nn.Module]:
        return [layer.attention for layer in self.encoder.layer]

    @property
    def out_channels(self) -> int:
        return self.config.hidden_size

    def feature_map_size(self) -> tuple[int, int]:
        return self.side, self.side

    def key_padding_mask(self, pixel_values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``(B, 1, 1, max_patches)``: boolean (True = attend) for SDPA, additive for eager.

        Built with tensor ops only: transformers' ``create_bidirectional_mask`` asks ``mask.all()`` to drop a
        padding-free mask, a device-to-host sync on every forward (and a graph break under ``torch.compile``).
        Real patches carry a 1-based row id; padding rows are all zero.
        """
        real = (pixel_values[:, :, 0] > 0)[:, None, None, :]
        if self.config._attn_implementation == "sdpa":
            return real
        return torch.zeros(real.shape, dtype=dtype, device=real.device).masked_fill(~real, torch.finfo(dtype).min)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = pixel_values.to(self.embeddings.patch_projection.weight.dtype)
        hidden = self.embeddings(patches)
        mask = self.key_padding_mask(pixel_values, hidden.dtype)
        hidden = self.encoder(hidden, attention_mask=mask).last_hidden_state
        hidden = self.layernorm(hidden)[:, : self.side * self.side]
        return hidden.transpose(1, 2).reshape(hidden.shape[0], -1, self.side, self.side)
