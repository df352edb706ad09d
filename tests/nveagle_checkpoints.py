"""Synthetic checkpoints in the authors' released NVEagle format (LLaVA fork, ``model_type: eagle_llama``).

Key names and shapes are enumerated from architecture dims (head size 64 everywhere, as in every released
expert; SAM's and EVA's can be changed with ``head_dim`` to make checkpoints the converter must refuse), so
the same code yields the full released key set (checked against ``nveagle-x5-vision-keys.json``)
and tiny checkpoints of identical structure that convert and run on a CPU in seconds.
"""

import functools
import json
import math
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

HEAD_DIM = 64
from conftest import REFERENCE, require_reference  # noqa: E402

REFERENCE_CHECKPOINT = REFERENCE / "nveagle-reference-x5" / "checkpoint"
TOWER_PREFIX = "model.vision_tower.vision_towers."

TOWERS = {
    "x5": ["clip-448", "convnext-1024", "sam-1024", "det-1024", "pix2struct-1024"],
    "x4": ["clip-448", "convnext-1024", "det-1024", "pix2struct-1024"],
}
TOWER_TYPES = {
    "clip-448": "clip",
    "convnext-1024": "convnext",
    "sam-1024": "sam",
    "det-1024": "eva02",
    "pix2struct-1024": "pix2struct",
}
# The experts' names in a converted folder (model.vision_tower.experts.<name>.*).
CONVERTED_NAMES = {"clip": "clip", "convnext": "convnext", "sam": "sam", "eva02": "eva02", "pix2struct": "pix2struct"}

# The released Eagle-X5 experts (EAGLE-X5.md §2) and the Vicuna-7B / Llama-3-8B language models.
FULL = {
    "clip": {"hidden": 1024, "layers": 24, "mlp": 4096, "patch": 14, "image_size": 336},
    "convnext": {"dims": (384, 768, 1536, 3072), "depths": (3, 4, 30, 3)},
    "sam": {
        "hidden": 1024,
        "layers": 24,
        "global_layers": (5, 11, 17, 23),
        "window": 14,
        "patch": 16,
        "image_size": 1024,
        "neck_channels": 256,
        "mlp": 4096,
    },
    "eva02": {
        "hidden": 1024,
        "depth": 24,
        "window_blocks": tuple(i for i in range(24) if i % 3 != 2),
        "patch": 16,
        "image_size": 1024,
    },
    "pix2struct": {"hidden": 1536, "layers": 18, "d_ff": 3968},
    "vicuna": {"hidden": 4096, "layers": 32, "heads": 32, "kv_heads": 32, "mlp": 11008, "vocab": 32000},
    "llama3": {"hidden": 4096, "layers": 32, "heads": 32, "kv_heads": 8, "mlp": 14336, "vocab": 128256},
}

# Same structure, tiny widths: the released resolutions (336 / 1024) are implied by the tower names, so only
# widths and depths shrink. The LLM vocabulary comes from the tokenizer written beside the weights.
SMALL = {
    "clip": {"hidden": 64, "layers": 2, "mlp": 128, "patch": 14, "image_size": 336},
    "convnext": {"dims": (8, 16, 16, 32), "depths": (1, 1, 2, 1)},
    "sam": {
        "hidden": 64,
        "layers": 2,
        "global_layers": (1,),
        "window": 14,
        "patch": 16,
        "image_size": 1024,
        "neck_channels": 16,
        "mlp": 128,
    },
    "eva02": {"hidden": 64, "depth": 3, "window_blocks": (0, 1), "patch": 16, "image_size": 1024},
    "pix2struct": {"hidden": 64, "layers": 2, "d_ff": 128},
    "vicuna": {"hidden": 64, "layers": 2, "heads": 1, "kv_heads": 1, "mlp": 128},
    "llama3": {"hidden": 128, "layers": 2, "heads": 2, "kv_heads": 1, "mlp": 192},
}

Shapes = dict[str, tuple[int, ...]]


# ----------------------------------------------------------------------------------------------------------------
# Key enumeration (the experts' native names, as the released state dicts spell them)


def _linear(prefix: str, out_features: int, in_features: int, bias: bool = True) -> Shapes:
    shapes = {f"{prefix}.weight": (out_features, in_features)}
    if bias:
        shapes[f"{prefix}.bias"] = (out_features,)
    return shapes


def _norm(prefix: str, width: int, bias: bool = True) -> Shapes:
    return {f"{prefix}.weight": (width,), **({f"{prefix}.bias": (width,)} if bias else {})}


def clip_keys(hidden: int, layers: int, mlp: int, patch: int, image_size: int) -> Shapes:
    """transformers' CLIPVisionModel (the tower wraps it, hence ``vision_model.``)."""
    side = image_size // patch
    shapes = {
        "vision_model.embeddings.class_embedding": (hidden,),
        "vision_model.embeddings.patch_embedding.weight": (hidden, 3, patch, patch),
        "vision_model.embeddings.position_embedding.weight": (side * side + 1, hidden),
        **_norm("vision_model.pre_layrnorm", hidden),
    }
    for i in range(layers):
        layer = f"vision_model.encoder.layers.{i}"
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            shapes.update(_linear(f"{layer}.self_attn.{proj}", hidden, hidden))
        shapes.update(_norm(f"{layer}.layer_norm1", hidden))
        shapes.update(_linear(f"{layer}.mlp.fc1", mlp, hidden))
        shapes.update(_linear(f"{layer}.mlp.fc2", hidden, mlp))
        shapes.update(_norm(f"{layer}.layer_norm2", hidden))
    shapes.update(_norm("vision_model.post_layernorm", hidden))
    return shapes


def convnext_keys(dims, depths) -> Shapes:
    """timm's ConvNeXt (open_clip's CLIP-ConvNeXt-XXL trunk), 1000-class head included."""
    shapes = {"stem.0.weight": (dims[0], 3, 4, 4), "stem.0.bias": (dims[0],), **_norm("stem.1", dims[0])}
    for stage, (dim, depth) in enumerate(zip(dims, depths)):
        if stage > 0:
            previous = dims[stage - 1]
            shapes.update(_norm(f"stages.{stage}.downsample.0", previous))
            shapes[f"stages.{stage}.downsample.1.weight"] = (dim, previous, 2, 2)
            shapes[f"stages.{stage}.downsample.1.bias"] = (dim,)
        for block in range(depth):
            prefix = f"stages.{stage}.blocks.{block}"
            shapes[f"{prefix}.weight"] = (dim,)  # layer scale (gamma)
            shapes[f"{prefix}.conv_dw.weight"] = (dim, 1, 7, 7)
            shapes[f"{prefix}.conv_dw.bias"] = (dim,)
            shapes.update(_norm(f"{prefix}.norm", dim))
            shapes.update(_linear(f"{prefix}.mlp.fc1", 4 * dim, dim))
            shapes.update(_linear(f"{prefix}.mlp.fc2", dim, 4 * dim))
    shapes.update(_norm("head.norm", dims[-1]))
    shapes.update(_linear("head.fc", 1000, dims[-1]))
    return shapes


def sam_keys(
    hidden: int,
    layers: int,
    global_layers,
    window: int,
    patch: int,
    image_size: int,
    neck_channels: int,
    mlp: int,
    head_dim: int = HEAD_DIM,
) -> Shapes:
    """transformers' SamVisionEncoder with Eagle's short neck (no conv2 / layer_norm2)."""
    side = image_size // patch
    shapes = {
        "pos_embed": (1, side, side, hidden),
        "patch_embed.projection.weight": (hidden, 3, patch, patch),
        "patch_embed.projection.bias": (hidden,),
    }
    for i in range(layers):
        rows = 2 * side - 1 if i in global_layers else 2 * window - 1
        layer = f"layers.{i}"
        shapes.update(_norm(f"{layer}.layer_norm1", hidden))
        shapes[f"{layer}.attn.rel_pos_h"] = (rows, head_dim)
        shapes[f"{layer}.attn.rel_pos_w"] = (rows, head_dim)
        shapes.update(_linear(f"{layer}.attn.qkv", 3 * hidden, hidden))
        shapes.update(_linear(f"{layer}.attn.proj", hidden, hidden))
        shapes.update(_norm(f"{layer}.layer_norm2", hidden))
        shapes.update(_linear(f"{layer}.mlp.lin1", mlp, hidden))
        shapes.update(_linear(f"{layer}.mlp.lin2", hidden, mlp))
    shapes["neck.conv1.weight"] = (neck_channels, hidden, 1, 1)
    shapes.update(_norm("neck.layer_norm1", neck_channels))
    return shapes


def eva02_keys(
    hidden: int,
    depth: int,
    window_blocks,
    patch: int,
    image_size: int,
    pretrain: int = 224,
    window: int = 16,
    head_dim: int = HEAD_DIM,
) -> Shapes:
    """The EVA-02 ViTDet backbone of Eagle's ``det-1024`` tower, per-block rope copies included."""
    side = image_size // patch
    mlp = int(hidden * 4 * 2 / 3)
    window_table, global_table = (window * window, head_dim), (side * side, head_dim)
    shapes = {
        "pos_embed": (1, (pretrain // patch) ** 2 + 1, hidden),
        "patch_embed.proj.weight": (hidden, 3, patch, patch),
        "patch_embed.proj.bias": (hidden,),
        "rope_win.freqs_cos": window_table,
        "rope_win.freqs_sin": window_table,
        "rope_glb.freqs_cos": global_table,
        "rope_glb.freqs_sin": global_table,
    }
    for i in range(depth):
        block = f"blocks.{i}"
        table = window_table if i in window_blocks else global_table
        shapes.update(_norm(f"{block}.norm1", hidden))
        shapes[f"{block}.attn.q_bias"] = (hidden,)
        shapes[f"{block}.attn.v_bias"] = (hidden,)
        for proj in ("q_proj", "k_proj", "v_proj"):
            shapes.update(_linear(f"{block}.attn.{proj}", hidden, hidden, bias=False))
        shapes[f"{block}.attn.rope.freqs_cos"] = table
        shapes[f"{block}.attn.rope.freqs_sin"] = table
        shapes.update(_linear(f"{block}.attn.proj", hidden, hidden))
        shapes.update(_norm(f"{block}.norm2", hidden))
        shapes.update(_linear(f"{block}.mlp.w1", mlp, hidden))
        shapes.update(_linear(f"{block}.mlp.w2", mlp, hidden))
        shapes.update(_norm(f"{block}.mlp.ffn_ln", mlp))
        shapes.update(_linear(f"{block}.mlp.w3", hidden, mlp))
    return shapes


def pix2struct_keys(hidden: int, layers: int, d_ff: int, seq_len: int = 4096) -> Shapes:
    """transformers' Pix2StructVisionModel (16x16 patches: 768 pixel values per row, no biases but the patch's)."""
    shapes = {
        "embeddings.patch_projection.weight": (hidden, 3 * 16 * 16),
        "embeddings.patch_projection.bias": (hidden,),
        "embeddings.row_embedder.weight": (seq_len, hidden),
        "embeddings.column_embedder.weight": (seq_len, hidden),
    }
    for i in range(layers):
        layer = f"encoder.layer.{i}"
        for proj in ("query", "key", "value", "output"):
            shapes[f"{layer}.attention.{proj}.weight"] = (hidden, hidden)
        shapes[f"{layer}.mlp.wi_0.weight"] = (d_ff, hidden)
        shapes[f"{layer}.mlp.wi_1.weight"] = (d_ff, hidden)
        shapes[f"{layer}.mlp.wo.weight"] = (hidden, d_ff)
        shapes[f"{layer}.pre_mlp_layer_norm.weight"] = (hidden,)
        shapes[f"{layer}.pre_attention_layer_norm.weight"] = (hidden,)
    shapes["layernorm.weight"] = (hidden,)
    return shapes


def llm_keys(hidden: int, layers: int, heads: int, kv_heads: int, mlp: int, vocab: int, mm_hidden: int) -> Shapes:
    """The Llama decoder, the mlp2x_gelu projector (``mm_projector.{0,2}``) and the untied lm_head."""
    head_dim = hidden // heads
    shapes = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        layer = f"model.layers.{i}"
        shapes[f"{layer}.self_attn.q_proj.weight"] = (heads * head_dim, hidden)
        shapes[f"{layer}.self_attn.k_proj.weight"] = (kv_heads * head_dim, hidden)
        shapes[f"{layer}.self_attn.v_proj.weight"] = (kv_heads * head_dim, hidden)
        shapes[f"{layer}.self_attn.o_proj.weight"] = (hidden, heads * head_dim)
        shapes[f"{layer}.mlp.gate_proj.weight"] = (mlp, hidden)
        shapes[f"{layer}.mlp.up_proj.weight"] = (mlp, hidden)
        shapes[f"{layer}.mlp.down_proj.weight"] = (hidden, mlp)
        shapes[f"{layer}.input_layernorm.weight"] = (hidden,)
        shapes[f"{layer}.post_attention_layernorm.weight"] = (hidden,)
    shapes["model.norm.weight"] = (hidden,)
    shapes.update(_linear("model.mm_projector.0", hidden, mm_hidden))
    shapes.update(_linear("model.mm_projector.2", hidden, hidden))
    shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


EXPERT_KEYS = {
    "clip": clip_keys,
    "convnext": convnext_keys,
    "sam": sam_keys,
    "eva02": eva02_keys,
    "pix2struct": pix2struct_keys,
}


def expert_channels(expert_type: str, dims: dict) -> int:
    """Channels the expert contributes to the fused map (SAM: its neck, times 4 after pixel_unshuffle(2))."""
    d = dims[expert_type]
    return {
        "clip": lambda: d["hidden"],
        "convnext": lambda: d["dims"][-1],
        "sam": lambda: 4 * d["neck_channels"],
        "eva02": lambda: d["hidden"],
        "pix2struct": lambda: d["hidden"],
    }[expert_type]()


def mm_hidden_size(layout: str, dims: dict = SMALL) -> int:
    return sum(expert_channels(TOWER_TYPES[name], dims) for name in TOWERS[layout])


def vision_keys(layout: str, dims: dict = SMALL) -> Shapes:
    """Every vision-tower key of the layout, under the released prefixes, in module order."""
    shapes = {}
    for index, name in enumerate(TOWERS[layout]):
        expert_type = TOWER_TYPES[name]
        for key, shape in EXPERT_KEYS[expert_type](**dims[expert_type]).items():
            shapes[f"{TOWER_PREFIX}{index}.vision_tower.{key}"] = shape
    return shapes


def checkpoint_keys(layout: str, llm: str, vocab: int, dims: dict = SMALL) -> Shapes:
    """All keys of a checkpoint in the released state-dict order: LLM, vision towers, projector, lm_head."""
    text = {k: v for k, v in dims[llm].items() if k != "vocab"}
    language = llm_keys(**text, vocab=vocab, mm_hidden=mm_hidden_size(layout, dims))
    head = ("model.mm_projector.", "lm_head.")
    shapes = {k: v for k, v in language.items() if not k.startswith(head)}
    shapes.update(vision_keys(layout, dims))
    shapes.update({k: v for k, v in language.items() if k.startswith(head)})
    return shapes


# ----------------------------------------------------------------------------------------------------------------
# Tensors


def is_norm_scale(key: str) -> bool:
    leaf = key.rsplit(".", 2)
    if len(leaf) < 3 or leaf[-1] != "weight":
        return False
    module = leaf[-2]
    return (
        "norm" in module
        or module in ("pre_layrnorm", "ffn_ln", "layernorm")
        or key.endswith(("stem.1.weight", "downsample.0.weight"))
    )


def is_layer_scale(key: str) -> bool:
    parts = key.split(".")
    return len(parts) >= 4 and parts[-4] == "stages" and parts[-2] == "blocks"


def eva_rope_table(side: int, head_dim: int = HEAD_DIM) -> tuple[torch.Tensor, torch.Tensor]:
    """2D rotary tables ``(side*side, head_dim)`` in the EVA-02 layout (rows then columns, pairwise-repeated)."""
    half = head_dim // 2
    freqs = 1.0 / 10000 ** (torch.arange(0, half, 2).float() / half)
    axis = (torch.arange(side) / side * 16)[:, None] * freqs[None, :]
    axis = axis.repeat_interleave(2, dim=-1)  # (side, half)
    grid = torch.cat((axis[:, None].expand(side, side, half), axis[None, :].expand(side, side, half)), dim=-1)
    grid = grid.reshape(side * side, head_dim)
    return grid.cos(), grid.sin()


def random_tensors(shapes: Shapes, dtype=torch.bfloat16, seed: int = 0) -> dict[str, torch.Tensor]:
    """Norm scales ~N(1, 0.1), ConvNeXt layer scales ~N(0.5, 0.1), everything else ~N(0, 0.02); EVA rope tables
    are real cos/sin tables and every per-block copy equals (but does not share memory with) its shared table."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, shape in shapes.items():
        if ".rope." in key:
            continue  # the per-block copies, filled below from the shared tables
        if key.endswith(("rope_win.freqs_cos", "rope_win.freqs_sin", "rope_glb.freqs_cos", "rope_glb.freqs_sin")):
            cos, sin = eva_rope_table(math.isqrt(shape[0]), shape[1])
            tensor = cos if key.endswith("cos") else sin
        else:
            tensor = torch.randn(shape, generator=generator)
            if is_norm_scale(key):
                tensor = 1 + 0.1 * tensor
            elif is_layer_scale(key):
                tensor = 0.5 + 0.1 * tensor
            else:
                tensor = 0.02 * tensor
        tensors[key] = tensor.to(dtype)
    for key, shape in shapes.items():
        if ".rope." in key:  # blocks.i.attn.rope.freqs_{cos,sin}: a copy of the window or the global table
            expert, leaf = key.split(".blocks.", 1)[0], key.rsplit(".", 1)[-1]
            window, full = f"{expert}.rope_win.{leaf}", f"{expert}.rope_glb.{leaf}"
            tensors[key] = tensors[window if tuple(shape) == tuple(shapes[window]) else full].clone()
    return {key: tensors[key] for key in shapes}  # keep the state-dict order


# ----------------------------------------------------------------------------------------------------------------
# Tokenizers

LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
_LLAMA3_CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "system user assistant What is in the image? Describe the picture. How many shapes are there?",
    "The image shows a red circle, a blue square and a green triangle on a white background.",
]


@functools.lru_cache(maxsize=1)
def _llama3_backend():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(_LLAMA3_CORPUS, trainer=trainer)
    tokenizer.add_special_tokens(LLAMA3_SPECIAL)  # appended after the BPE vocabulary, as in Llama 3
    bos = tokenizer.token_to_id("<|begin_of_text|>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A",
        pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)],
    )
    return tokenizer.to_str()


def write_tokenizer(folder: Path, llm: str) -> dict:
    """Write the tokenizer files; returns ``{"vocab_size", "bos_token_id", "eos_token_id", "pad_token_id"}``."""
    folder.mkdir(parents=True, exist_ok=True)
    if llm == "vicuna":  # the released SentencePiece tokenizer, from the reference checkpoint
        for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copyfile(require_reference("nveagle-reference-x5", "checkpoint", name), folder / name)
        return {"vocab_size": 1000, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    if llm != "llama3":
        raise ValueError(f"llm must be 'vicuna' or 'llama3', got {llm!r}")
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_llama3_backend()),
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        model_max_length=8192,
    )
    tokenizer.save_pretrained(folder)
    return {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": None,
    }


# ----------------------------------------------------------------------------------------------------------------
# Configs and checkpoints


def original_config(layout: str, llm: str, dims: dict, token_ids: dict, vocab_size: int | None = None) -> dict:
    """config.json as the authors' save path writes it (the field set of the released configs)."""
    text = dims[llm]
    vocab = vocab_size if vocab_size is not None else token_ids["vocab_size"]
    llama3 = llm == "llama3"
    config = {
        "architectures": ["EagleLlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": token_ids["bos_token_id"],
        "eos_token_id": token_ids["eos_token_id"],
        "freeze_mm_mlp_adapter": False,
        "hidden_act": "silu",
        "hidden_size": text["hidden"],
        "image_aspect_ratio": "pad",
        "initializer_range": 0.02,
        "intermediate_size": text["mlp"],
        "max_position_embeddings": 8192 if llama3 else 4096,
        "mlp_bias": False,
        "mm_hidden_size": mm_hidden_size(layout, dims),
        "mm_patch_merge_type": "flat",
        "mm_projector_lr": None,
        "mm_projector_type": "mlp2x_gelu",
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False,
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2,
        "mm_vision_tower": ";".join(TOWERS[layout]),
        "model_type": "eagle_llama",
        "num_attention_heads": text["heads"],
        "num_hidden_layers": text["layers"],
        "num_key_value_heads": text["kv_heads"],
        "pad_token_id": token_ids["pad_token_id"],
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 500000.0 if llama3 else 10000.0,
        "tie_word_embeddings": False,
        "tokenizer_model_max_length": 2048,
        "tokenizer_padding_side": "right",
        "torch_dtype": "bfloat16",
        "transformers_version": "4.44.2",
        "tune_mm_mlp_adapter": False,
        "use_cache": True,
        "use_mm_proj": True,
        "vocab_size": vocab,
    }
    if config["pad_token_id"] is None:
        del config["pad_token_id"]
    return config


def _shard(keys: list[str], tensors: dict, shards: int) -> list[list[str]]:
    """Split ``keys`` (in order) into ``shards`` contiguous groups of about equal bytes."""
    sizes = [tensors[key].numel() * tensors[key].element_size() for key in keys]
    total, groups, current, done = sum(sizes), [[] for _ in range(shards)], 0, 0
    for key, size in zip(keys, sizes):
        while current < shards - 1 and done >= total * (current + 1) / shards and groups[current]:
            current += 1
        groups[current].append(key)
        done += size
    return [group for group in groups if group]


def write_checkpoint(
    folder,
    layout: str = "x5",
    llm: str = "vicuna",
    dims: dict = SMALL,
    shards: int = 2,
    dtype=torch.bfloat16,
    fmt: str = "safetensors",
    seed: int = 0,
    *,
    edit=None,
    config_overrides: dict | None = None,
    vocab_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """Write an NVEagle checkpoint folder; returns the tensors written (after ``edit``).

    ``edit(tensors)`` may change the state dict in place before it is written (to make corrupt checkpoints);
    ``config_overrides`` update config.json; ``vocab_size`` overrides the LLM rows and config (default: the
    tokenizer's length, as in a consistent release).
    """
    if layout not in TOWERS:
        raise ValueError(f"layout must be one of {list(TOWERS)}, got {layout!r}")
    if fmt not in ("safetensors", "bin"):
        raise ValueError(f"fmt must be 'safetensors' or 'bin', got {fmt!r}")
    folder = Path(folder)
    token_ids = write_tokenizer(folder, llm)
    vocab = vocab_size if vocab_size is not None else token_ids["vocab_size"]
    tensors = random_tensors(checkpoint_keys(layout, llm, vocab, dims), dtype=dtype, seed=seed)
    if edit is not None:
        edit(tensors)

    groups = _shard(list(tensors), tensors, shards)
    stem, suffix = ("model", "safetensors") if fmt == "safetensors" else ("pytorch_model", "bin")
    weight_map = {}
    for i, group in enumerate(groups, 1):
        name = f"{stem}.{suffix}" if len(groups) == 1 else f"{stem}-{i:05d}-of-{len(groups):05d}.{suffix}"
        part = {key: tensors[key].contiguous() for key in group}
        if fmt == "safetensors":
            save_file(part, str(folder / name), metadata={"format": "pt"})
        else:
            torch.save(part, folder / name)
        weight_map.update(dict.fromkeys(group, name))
    if len(groups) > 1:
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
            "weight_map": dict(sorted(weight_map.items())),
        }
        (folder / f"{stem}.{suffix}.index.json").write_text(json.dumps(index, indent=2) + "\n")

    config = original_config(layout, llm, dims, token_ids, vocab)
    config.update(config_overrides or {})
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {
        k: token_ids[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if token_ids[k] is not None
    }
    generation.update(do_sample=True, temperature=0.9, top_p=0.6, max_length=config["max_position_embeddings"])
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return tensors
