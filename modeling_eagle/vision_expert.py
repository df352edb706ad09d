"""The one interface every Eagle vision expert implements.

An expert takes its own pixel input (a ``(B, 3, H, W)`` image at its configured resolution, or for
Pix2Struct the ``(B, max_patches, 2 + 3 * p * p)`` flattened patches made by the processor) and returns a
``(B, C, h, w)`` feature map. Bringing that map to the shared grid is the tower's job, not the expert's.
"""

import math

import torch
from torch import nn


class VisionExpert(nn.Module):
    """Base class: subclasses set ``expert_type`` and implement ``forward`` and ``feature_map_size``.

    ``spec`` is one entry of ``EagleVisionConfig.experts``: ``{"name", "type", "image_size",
    "pixel_unshuffle", "image_mean", "image_std", "config": {...architecture kwargs...}}``.
    """

    expert_type: str = ""
    # Module class names that must never be split across devices (``device_map``) or that take
    # gradient checkpointing; collected by the tower.
    no_split_modules: tuple[str, ...] = ()
    # The attention kernels the expert can run, under transformers' names for its capability flags: the tower
    # reports a kernel as supported when every configured expert has it. An expert without attention has them all.
    _supports_sdpa: bool = False
    _supports_flash_attn: bool = False
    _supports_flex_attn: bool = False

    def __init__(self, spec: dict, attn_implementation: str = "sdpa"):
        super().__init__()
        self.spec = spec
        self.image_size = int(spec["image_size"])

    def set_attn_implementation(self, attn_implementation: str) -> None:
        """Run attention with this kernel from now on (``"eager"``, ``"sdpa"``, or one the flags above allow).
        The tower calls it whenever the vision config's implementation changes. Experts built from transformers'
        modules keep their transformers config in ``self.config``, whose kernel those modules read on every call."""
        config = getattr(self, "config", None)
        if config is not None:
            config._attn_implementation = attn_implementation

    def block_modules(self) -> list[nn.Module]:
        """The expert's blocks in order. Its hidden states (``output_hidden_states``) are the first block's input and
        every block's output, as the modules compute them (each architecture's own layout)."""
        raise NotImplementedError

    def attention_modules(self) -> list[nn.Module]:
        """The attention modules, each returning ``(output, attention weights)`` (the weights only under eager
        attention), for ``output_attentions``; none for an expert without attention."""
        return []

    @property
    def out_channels(self) -> int:
        raise NotImplementedError

    def feature_map_size(self) -> tuple[int, int]:
        """(h, w) of the map ``forward`` returns at the configured input, computed without running it."""
        raise NotImplementedError

    @classmethod
    def init_module(cls, module: nn.Module, std: float) -> None:
        """Initialise the tensors of ``module`` (this expert or one of its submodules) that the generic
        ``_init_weights`` does not know: position and rotary tables, layer scales, ... ``from_pretrained`` calls
        it only for modules whose own tensors were not all loaded, so it must dispatch on the module's type and
        touch only that module's own tensors, through ``transformers.initialization``."""

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def resize_position_grid(table: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubically resize a square ``(1, S, S, C)`` (or ``(1, S*S, C)``) position table to ``(1, h, w, C)``.

    Computed in float32 as the reference implementations do, returned in the table's dtype. A table
    that already has the right size is returned unchanged, so released resolutions stay bit-exact.
    """
    if table.dim() == 3:
        side = math.isqrt(table.shape[1])
        table = table.reshape(1, side, side, table.shape[-1])
    if tuple(table.shape[1:3]) == tuple(size):
        return table
    grid = table.permute(0, 3, 1, 2).float()
    grid = nn.functional.interpolate(grid, size=size, mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).to(table.dtype)
