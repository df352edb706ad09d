"""EVA-02 ViTDet backbone expert (Eagle's ``det-1024`` tower).

What it computes, top to bottom (as the authors' Eagle code does, see ``eagle/model/multimodal_encoder/
vision_models/eva_vit.py``):

1. 16x16 patch convolution -> channels-last grid ``(B, h, w, C)``.
2. Absolute position table from 224-px pretraining (``(1, 197, C)``, CLS row first): the CLS row is dropped and
   the 14x14 grid is resized bicubically (float32) to ``(h, w)`` on every forward, then added.
3. Pre-norm residual blocks. Blocks listed in ``window_block_indexes`` attend inside ``window_size`` windows (the
   grid is zero-padded to a multiple of the window first, as in ViTDet, and cropped back after); the others attend
   globally. Attention has separate q/k/v projections without bias plus learned ``q_bias``/``v_bias`` (no k bias),
   and 2D rotary embeddings on q and k: the first half of each head's channels rotates with the row, the second
   half with the column, adjacent channel pairs rotate together. The MLP is SwiGLU with a LayerNorm inside:
   ``w3(ffn_ln(silu(w1 x) * w2 x))``.
4. No final norm: the output is the last block's grid as ``(B, C, h, w)``.

The rotary tables ``rope_win`` (window) and ``rope_glb`` (global grid at the configured resolution) are persistent
buffers, as in the original: released checkpoints store them (rounded to the checkpoint dtype) and the original
loader uses those stored values, so loading them reproduces the released numbers exactly. The original also keeps
a copy under every block (``blocks.i.attn.rope.*``); this port keeps one shared pair, passed to the blocks.
"""

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import logging

from .vision_expert import VisionExpert, resize_position_grid

logger = logging.get_logger(__name__)

EVA02_DEFAULTS = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "patch_size": 16,
    "pretrain_image_size": 224,
    "window_size": 16,
    "window_block_indexes": None,  # None: every block i with i % 3 != 2 (the authors' hard-coded list)
    "mlp_ratio": 4 * 2 / 3,
    "layer_norm_eps": 1e-6,
    "rope_theta": 10000,
    "pt_hw_seq_len": 16,
}


# ----------------------------------------------------------------------------------------------------------------
# Rotary embedding
# ----------------------------------------------------------------------------------------------------------------


def rope_2d_tables(
    head_dim: int,
    rows: int,
    cols: int,
    pt_seq_len: int,
    theta: float = 10000,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The EVA-02 2D rotary tables ``(cos, sin)``, each ``(rows * cols, head_dim)`` in float32.

    ``d = head_dim // 2`` channels rotate with the row position, the next ``d`` with the column position. Each
    axis uses ``d // 2`` frequencies ``1 / theta ** (arange(0, d, 2) / d)`` at positions ``arange(n) / n *
    pt_seq_len``, every frequency repeated for the two channels of its rotated pair. Written with plain torch
    ops in the original's order of operations, so it gives its float32 values bit for bit and works on meta.
    """
    dim = head_dim // 2
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, device=device)[: dim // 2].float() / dim))

    def axis(n: int) -> torch.Tensor:
        positions = torch.arange(n, device=device) / n * pt_seq_len
        return (positions[:, None] * freqs[None, :]).repeat_interleave(2, dim=-1)  # (n, dim)

    freqs_rows, freqs_cols = axis(rows), axis(cols)
    grid = torch.cat(
        (freqs_rows[:, None, :].expand(rows, cols, dim), freqs_cols[None, :, :].expand(rows, cols, dim)), dim=-1
    ).reshape(rows * cols, 2 * dim)
    return grid.cos(), grid.sin()


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs by 90 degrees: ``(x1, x2) -> (-x2, x1)``."""
    x = x.unflatten(-1, (-1, 2))
    x1, x2 = x.unbind(dim=-1)
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x`` is ``(B, heads, N, head_dim)``; ``cos``/``sin`` are ``(N, head_dim)``."""
    return x * cos + rotate_pairs(x) * sin


class Eva02RotaryTable(nn.Module):
    """Holds one pair of rotary tables as persistent buffers (checkpoint keys ``freqs_cos``/``freqs_sin``)."""

    def __init__(self, head_dim: int, side: int, pt_seq_len: int, theta: float):
        super().__init__()
        self.head_dim = head_dim
        self.side = side
        self.pt_seq_len = pt_seq_len
        self.theta = theta
        cos, sin = rope_2d_tables(head_dim, side, side, pt_seq_len, theta)
        self.register_buffer("freqs_cos", cos, persistent=True)
        self.register_buffer("freqs_sin", sin, persistent=True)

    def formula(self, rows: int | None = None, cols: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Tables from the formula for a ``rows x cols`` grid (default: the stored one), on the buffers' device,
        computed in float32 and returned in the buffers' dtype."""
        rows = self.side if rows is None else rows
        cols = self.side if cols is None else cols
        cos, sin = rope_2d_tables(self.head_dim, rows, cols, self.pt_seq_len, self.theta, self.freqs_cos.device)
        return cos.to(self.freqs_cos.dtype), sin.to(self.freqs_sin.dtype)

    def tables(self, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored tables when the grid is the stored one, else the formula for this grid (shape check only)."""
        if rows == self.side and cols == self.side:
            return self.freqs_cos, self.freqs_sin
        return self.formula(rows, cols)


# ----------------------------------------------------------------------------------------------------------------
# Window partition (ViTDet)
# ----------------------------------------------------------------------------------------------------------------


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """``(B, H, W, C)`` -> ``(B * num_windows, window_size, window_size, C)``, zero-padding H and W up to a
    multiple of ``window_size`` first. Returns the windows and the padded size ``(Hp, Wp)``."""
    batch, height, width, channels = x.shape
    pad_h = (window_size - height % window_size) % window_size
    pad_w = (window_size - width % window_size) % window_size
    if pad_h > 0 or pad_w > 0:
        x = nn.functional.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    padded_h, padded_w = height + pad_h, width + pad_w
    x = x.reshape(batch, padded_h // window_size, window_size, padded_w // window_size, window_size, channels)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, channels)
    return windows, (padded_h, padded_w)


def window_unpartition(
    windows: torch.Tensor, window_size: int, padded_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`, cropping the padding: -> ``(B, H, W, C)``."""
    padded_h, padded_w = padded_hw
    height, width = hw
    batch = windows.shape[0] // ((padded_h // window_size) * (padded_w // window_size))
    x = windows.reshape(batch, padded_h // window_size, padded_w // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, padded_h, padded_w, -1)
    if padded_h > height or padded_w > width:
        x = x[:, :height, :width, :].contiguous()
    return x


# ----------------------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------------------


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention on ``(B, heads, N, D)``; returns ``(B, N, heads, D)`` and the weights.
    The query is scaled before the product, as the original does."""
    attn_weights = torch.matmul(query * scaling, key.transpose(-2, -1))
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class Eva02Attention(nn.Module):
    """Multi-head self-attention over a ``(B, H, W, C)`` grid with 2D rotary q/k and q/v biases."""

    def __init__(self, hidden_size: int, num_heads: int, attn_implementation: str = "sdpa"):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.num_key_value_groups = 1
        self.attention_dropout = 0.0
        self.attn_implementation = attn_implementation
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(hidden_size))
        self.v_bias = nn.Parameter(torch.zeros(hidden_size))
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]):
        batch, height, width, channels = hidden_states.shape
        hidden_states = hidden_states.reshape(batch, height * width, channels)
        heads_shape = (batch, height * width, self.num_heads, self.head_dim)

        query = (self.q_proj(hidden_states) + self.q_bias).view(heads_shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(heads_shape).transpose(1, 2)
        value = (self.v_proj(hidden_states) + self.v_bias).view(heads_shape).transpose(1, 2)

        cos, sin = position_embeddings
        query = apply_rope(query, cos, sin).type_as(value)
        key = apply_rope(key, cos, sin).type_as(value)

        attention_interface = eager_attention_forward
        if self.attn_implementation != "eager":
            attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.attn_implementation, eager_attention_forward
            )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            None,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
        )
        attn_output = attn_output.reshape(batch, height * width, channels)
        return self.proj(attn_output).view(batch, height, width, channels), attn_weights


class Eva02SwiGLU(nn.Module):
    """``w3(ffn_ln(silu(w1 x) * w2 x))``."""

    def __init__(self, hidden_size: int, intermediate_size: int, eps: float):
        super().__init__()
        self.w1 = nn.Linear(hidden_size, intermediate_size)
        self.w2 = nn.Linear(hidden_size, intermediate_size)
        self.ffn_ln = nn.LayerNorm(intermediate_size, eps=eps)
        self.w3 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden = nn.functional.silu(self.w1(hidden_states)) * self.w2(hidden_states)
        return self.w3(self.ffn_ln(hidden))


class Eva02Block(GradientCheckpointingLayer):
    """Pre-norm transformer block on a ``(B, H, W, C)`` grid; ``window_size`` 0 means global attention."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        intermediate_size: int,
        window_size: int,
        eps: float,
        attn_implementation: str = "sdpa",
    ):
        super().__init__()
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(hidden_size, eps=eps)
        self.attn = Eva02Attention(hidden_size, num_heads, attn_implementation)
        self.norm2 = nn.LayerNorm(hidden_size, eps=eps)
        self.mlp = Eva02SwiGLU(hidden_size, intermediate_size, eps)

    def forward(
        self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        shortcut = hidden_states
        hidden_states = self.norm1(hidden_states)
        if self.window_size > 0:
            height, width = hidden_states.shape[1], hidden_states.shape[2]
            hidden_states, padded_hw = window_partition(hidden_states, self.window_size)
        hidden_states, _ = self.attn(hidden_states, position_embeddings)
        if self.window_size > 0:
            hidden_states = window_unpartition(hidden_states, self.window_size, padded_hw, (height, width))
        hidden_states = shortcut + hidden_states
        return hidden_states + self.mlp(self.norm2(hidden_states))


class Eva02PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, hidden_size: int, in_channels: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.proj(pixel_values).permute(0, 2, 3, 1)  # (B, h, w, C)


# ----------------------------------------------------------------------------------------------------------------
# The expert
# ----------------------------------------------------------------------------------------------------------------


class Eva02Expert(VisionExpert):
    """EVA-02 ViTDet backbone: ``(B, 3, H, W)`` pixels -> ``(B, hidden_size, H / patch, W / patch)``."""

    expert_type = "eva02"
    no_split_modules = ("Eva02Block",)
    # Unmasked attention through transformers' attention interface: every kernel.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True

    def __init__(self, spec: dict, attn_implementation: str = "sdpa"):
        super().__init__(spec, attn_implementation)
        given = dict(spec.get("config") or {})
        unknown = sorted(set(given) - set(EVA02_DEFAULTS))
        if unknown:
            logger.warning(f"EVA-02 expert ignores unknown config keys {unknown}; known: {sorted(EVA02_DEFAULTS)}")
        config = {**EVA02_DEFAULTS, **{k: v for k, v in given.items() if k in EVA02_DEFAULTS}}

        self.hidden_size = int(config["hidden_size"])
        self.num_hidden_layers = int(config["num_hidden_layers"])
        self.num_attention_heads = int(config["num_attention_heads"])
        self.patch_size = int(config["patch_size"])
        self.pretrain_image_size = int(config["pretrain_image_size"])
        self.window_size = int(config["window_size"])
        self.layer_norm_eps = float(config["layer_norm_eps"])
        self.rope_theta = config["rope_theta"]
        self.pt_hw_seq_len = int(config["pt_hw_seq_len"])
        self.intermediate_size = int(self.hidden_size * config["mlp_ratio"])
        window_block_indexes = config["window_block_indexes"]
        if window_block_indexes is None:
            window_block_indexes = [i for i in range(self.num_hidden_layers) if i % 3 != 2]
        self.window_block_indexes = tuple(int(i) for i in window_block_indexes)
        self.attn_implementation = attn_implementation or "sdpa"

        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"EVA-02 hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}"
            )
        head_dim = self.hidden_size // self.num_attention_heads
        if head_dim % 4 != 0:
            raise ValueError(f"EVA-02 head dim {head_dim} must be a multiple of 4 (2D rotary on channel pairs)")
        if self.window_block_indexes and self.window_size <= 0:
            raise ValueError("EVA-02 window_block_indexes are set but window_size is not positive")

        self.grid_side = self.image_size // self.patch_size
        pretrain_side = self.pretrain_image_size // self.patch_size

        self.patch_embed = Eva02PatchEmbed(self.patch_size, self.hidden_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, pretrain_side * pretrain_side + 1, self.hidden_size))
        self.rope_win = Eva02RotaryTable(head_dim, self.window_size, self.pt_hw_seq_len, self.rope_theta)
        self.rope_glb = Eva02RotaryTable(head_dim, self.grid_side, self.pt_hw_seq_len, self.rope_theta)
        self.blocks = nn.ModuleList(
            Eva02Block(
                self.hidden_size,
                self.num_attention_heads,
                self.intermediate_size,
                window_size=self.window_size if i in self.window_block_indexes else 0,
                eps=self.layer_norm_eps,
                attn_implementation=self.attn_implementation,
            )
            for i in range(self.num_hidden_layers)
        )

    @property
    def out_channels(self) -> int:
        return self.hidden_size

    def feature_map_size(self) -> tuple[int, int]:
        return self.grid_side, self.grid_side

    def set_attn_implementation(self, attn_implementation: str) -> None:
        """Switch every block's attention kernel (``"eager"``, ``"sdpa"``, or any registered interface)."""
        self.attn_implementation = attn_implementation
        for block in self.blocks:
            block.attn.attn_implementation = attn_implementation

    def block_modules(self) -> list[nn.Module]:
        return list(self.blocks)

    def attention_modules(self) -> list[nn.Module]:
        return [block.attn for block in self.blocks]

    @classmethod
    def init_module(cls, module: nn.Module, std: float) -> None:
        if isinstance(module, Eva02Expert):
            init.normal_(module.pos_embed, std=std)
        elif isinstance(module, Eva02Attention):
            init.zeros_(module.q_bias)
            init.zeros_(module.v_bias)
        elif isinstance(module, Eva02RotaryTable):
            cos, sin = module.formula()
            init.copy_(module.freqs_cos, cos)
            init.copy_(module.freqs_sin, sin)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        projection = self.patch_embed.proj
        hidden_states = self.patch_embed(pixel_values.to(projection.weight.dtype))
        height, width = hidden_states.shape[1], hidden_states.shape[2]
        # .to(): under a device_map the table may sit on another device than the patch embedding.
        hidden_states = hidden_states + resize_position_grid(self.pos_embed[:, 1:], (height, width)).to(
            hidden_states.device
        )

        window_tables = (self.rope_win.freqs_cos, self.rope_win.freqs_sin)
        global_tables = self.rope_glb.tables(height, width)
        for block in self.blocks:
            hidden_states = block(hidden_states, window_tables if block.window_size > 0 else global_tables)
        return hidden_states.permute(0, 3, 1, 2)
