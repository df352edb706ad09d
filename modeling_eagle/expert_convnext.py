"""ConvNeXt expert, built from transformers' ConvNeXt modules; the map is the last stage's output.

transformers' ``ConvNextLayerNorm`` hard-codes eps 1e-6, while the CLIP-ConvNeXt-XXL that Eagle uses was
trained with 1e-5, so every LayerNorm takes ``layer_norm_eps`` from the config after construction. No
final norm and no classifier head, as in the released model.
"""

import torch
from torch import nn
from transformers import ConvNextConfig
from transformers import initialization as init
from transformers.models.convnext.modeling_convnext import ConvNextEmbeddings, ConvNextEncoder, ConvNextLayer

from .vision_expert import VisionExpert


class ConvNextExpertEncoder(ConvNextEncoder):
    """transformers' ConvNeXt encoder, which is a `PreTrainedModel` of its own: transformers sets the attention kernel
    of every such submodel when the model's is set. ConvNeXt has no attention and runs the same under any kernel,
    which these flags say (transformers' ConvNeXt leaves them off, and would refuse the model-wide switch)."""

    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True


class ConvNextExpert(VisionExpert):
    expert_type = "convnext"
    no_split_modules = ("ConvNextLayer",)
    gradient_checkpointing = False
    # No attention: every kernel.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True

    def __init__(self, spec: dict, attn_implementation: str = "sdpa"):
        super().__init__(spec, attn_implementation)
        kwargs = {"layer_norm_eps": 1e-5, **spec["config"]}
        self.config = ConvNextConfig(**kwargs)
        # The encoder's config follows the tower's kernel, as every submodel's does in transformers.
        self.set_attn_implementation(attn_implementation)
        self.embeddings = ConvNextEmbeddings(self.config)
        self.encoder = ConvNextExpertEncoder(self.config)
        for module in self.modules():
            if isinstance(module, nn.LayerNorm):
                module.eps = self.config.layer_norm_eps
            if isinstance(module, ConvNextLayer):  # weights are initialised after construction, without the config
                module.layer_scale_init_value = self.config.layer_scale_init_value
        self.channels_last = False

    def block_modules(self) -> list[nn.Module]:
        return [layer for stage in self.encoder.stages for layer in stage.layers]

    @property
    def out_channels(self) -> int:
        return self.config.hidden_sizes[-1]

    def feature_map_size(self) -> tuple[int, int]:
        stride = self.config.patch_size * 2 ** (self.config.num_stages - 1)
        side = self.image_size // stride
        return side, side

    @classmethod
    def init_module(cls, module: nn.Module, std: float) -> None:
        if isinstance(module, ConvNextLayer) and module.layer_scale_parameter is not None:
            init.constant_(module.layer_scale_parameter, module.layer_scale_init_value)

    def set_channels_last(self, enabled: bool = True) -> None:
        """Keep the convolution weights, the input and so every activation in channels-last (NHWC) layout.

        Each block's LayerNorm and MLP work on channels-last data (the block permutes to NHWC), so the permutes
        become free and the depthwise convolutions run their NHWC kernels; the only 4D parameters are the
        convolution weights.
        """
        self.channels_last = enabled
        self.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = self.embeddings.patch_embeddings.weight.dtype
        memory_format = torch.channels_last if self.channels_last else torch.preserve_format
        hidden = self.embeddings(pixel_values.to(dtype=dtype, memory_format=memory_format))
        for stage in self.encoder.stages:
            for layer in stage.downsampling_layer:
                hidden = layer(hidden)
            for layer in stage.layers:
                # transformers' ConvNextLayer is a plain module, so checkpointing is applied here per block.
                if self.gradient_checkpointing and self.training:
                    hidden = self._gradient_checkpointing_func(layer.__call__, hidden)
                else:
                    hidden = layer(hidden)
        return hidden
