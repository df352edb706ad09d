"""Convert the authors' released NVEagle checkpoints (LLaVA-fork format, ``model_type: eagle_llama``) into
Hub-native Eagle folders that ``AutoModel*.from_pretrained(..., trust_remote_code=True)`` and pipelines load.

The experts and their order come from ``mm_vision_tower``; each expert's widths and depths are read from the
tensors (head size 64, as in every released expert, and checked against the tensors that record it: EVA-02's rope
tables and SAM's relative-position tables), so scaled-down checkpoints of the same structure convert too.
Tensors are streamed source shard by source shard into output shards, so peak memory stays near one shard.
Every source tensor must be consumed: only the documented unused or duplicated ones are dropped (and
reported); anything else unknown, missing or of the wrong shape is an error that lists them.

``convert`` returns a ``ConversionReport`` (what was converted and dropped, the source, the config) and writes no
model card: its caller does (``eagle convert`` writes one with ``hub_cards``, inside the same atomic move).
"""

import json
import math
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers.utils import logging

from .configuration_eagle import EagleConfig
from .hub_folder import build_processor, staged_folder, write_folder_files
from .modeling_eagle import EagleForConditionalGeneration
from .presets import CLIP_MEAN, CLIP_STD, RELEASED_EXPERT_INPUTS

logger = logging.get_logger(__name__)

HEAD_DIM = 64  # every released expert's attention head size; checked against the tensors that record it
TOWER_PREFIX = "model.vision_tower.vision_towers."

# Released tower names -> expert type; what the released code feeds each type is presets.RELEASED_EXPERT_INPUTS.
TOWER_NAMES = {
    "clip-448": "clip",  # named 448, fed 336 by the released code
    "convnext-1024": "convnext",
    "sam-1024": "sam",
    "det-1024": "eva02",
    "pix2struct-1024": "pix2struct",
}


class ConversionError(ValueError):
    """The source checkpoint cannot be converted faithfully; the message says which files or tensors."""


@dataclass
class ConversionReport:
    """What ``convert`` did: ``converted`` tensors (``mapping``: source key -> converted key), ``dropped`` ones by
    reason, out of ``source_tensors``; the ``source`` folder and the ``config`` of the converted model."""

    converted: int = 0
    dropped: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    source_tensors: int = 0
    mapping: dict[str, str] = field(default_factory=dict)
    source: Path | None = None
    config: EagleConfig | None = None

    def summary(self) -> str:
        drops = ", ".join(f"{len(keys)} {why}" for why, keys in self.dropped.items())
        return f"{self.converted} tensors converted from {self.source_tensors}; dropped: {drops or 'none'}"


# ----------------------------------------------------------------------------------------------------------------
# Reading the source folder


def read_source_config(src: Path) -> dict:
    path = src / "config.json"
    if not path.is_file():
        raise ConversionError(f"{src}: no config.json; pass the folder of an NVEagle checkpoint")
    config = json.loads(path.read_text())
    if config.get("model_type") != "eagle_llama":
        raise ConversionError(
            f"{path}: model_type is {config.get('model_type')!r}, expected 'eagle_llama' (an NVEagle checkpoint)"
        )
    for key in ("mm_vision_tower", "hidden_size", "num_hidden_layers", "vocab_size"):
        if key not in config:
            raise ConversionError(f"{path}: missing field {key!r}")
    return config


def tower_names(config: dict) -> list[str]:
    names = [name.strip() for name in config["mm_vision_tower"].split(";") if name.strip()]
    unknown = [name for name in names if name not in TOWER_NAMES]
    if unknown:
        raise ConversionError(
            f"mm_vision_tower has unknown tower(s) {unknown}; this converter knows {', '.join(TOWER_NAMES)}"
        )
    return names


def weight_files(src: Path) -> list[Path]:
    """The checkpoint's weight files, checked against its index when there is one."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index_path = src / index_name
        if index_path.is_file():
            names = sorted(set(json.loads(index_path.read_text())["weight_map"].values()))
            missing = [name for name in names if not (src / name).is_file()]
            if missing:
                raise ConversionError(f"{index_path} lists shard(s) that are not in {src}: {missing}")
            return [src / name for name in names]
    # Only weight files: a folder may also hold training_args.bin, optimizer states, ...
    files = sorted(src.glob("model*.safetensors")) or sorted(src.glob("pytorch_model*.bin"))
    if not files:
        raise ConversionError(f"{src}: no .safetensors or .bin weight files")
    return files


def read_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    shapes, where, duplicated = {}, {}, []
    for path in files:
        for name, tensor_shape in _iterate(path, shapes_only=True):
            if name in shapes:
                duplicated.append(f"{name} ({where[name]} and {path.name})")
            shapes[name], where[name] = tensor_shape, path.name
    if duplicated:
        raise ConversionError(f"{len(duplicated)} tensor(s) stored in more than one file: {duplicated[:20]}")
    return shapes


def _iterate(path: Path, shapes_only: bool = False):
    """Yield (name, tensor) — or (name, shape) — one at a time from a safetensors or legacy .bin file."""
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as handle:
                for name in handle.keys():
                    if shapes_only:
                        yield name, tuple(handle.get_slice(name).get_shape())
                    else:
                        yield name, handle.get_tensor(name)
        else:
            # Untrusted pickles: tensors only, never arbitrary objects.
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            for name, tensor in state.items():
                yield name, (tuple(tensor.shape) if shapes_only else tensor)
    except ConversionError:
        raise
    except Exception as error:  # a truncated or corrupt file surfaces from deep inside the readers
        raise ConversionError(f"{path}: cannot read weights ({type(error).__name__}: {error})") from error


# ----------------------------------------------------------------------------------------------------------------
# Expert architectures read from tensor shapes


def _count(shapes: dict, pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for key in shapes if (m := regex.match(key))})


def _clip_spec(s: dict) -> dict:
    hidden, _, patch, _ = s["vision_model.embeddings.patch_embedding.weight"]
    positions = s["vision_model.embeddings.position_embedding.weight"][0]
    return {
        "hidden_size": hidden,
        "intermediate_size": s["vision_model.encoder.layers.0.mlp.fc1.weight"][0],
        "num_hidden_layers": _count(s, r"vision_model\.encoder\.layers\.(\d+)\."),
        "num_attention_heads": hidden // HEAD_DIM,
        "patch_size": patch,
        "image_size": math.isqrt(positions - 1) * patch,
        "hidden_act": "quick_gelu",
    }


def _convnext_spec(s: dict) -> dict:
    stages = _count(s, r"stages\.(\d+)\.")
    return {
        "hidden_sizes": [s[f"stages.{i}.blocks.0.conv_dw.weight"][0] for i in range(stages)],
        "depths": [_count(s, rf"stages\.{i}\.blocks\.(\d+)\.") for i in range(stages)],
        "patch_size": s["stem.0.weight"][-1],
        "num_stages": stages,
        "layer_norm_eps": 1e-5,
    }


def _sam_spec(s: dict) -> dict:
    hidden, _, patch, _ = s["patch_embed.projection.weight"]
    side = s["pos_embed"][1]
    layers = _count(s, r"layers\.(\d+)\.")
    rel_rows = [s[f"layers.{i}.attn.rel_pos_h"][0] for i in range(layers)]
    global_rows = 2 * side - 1
    windowed = [rows for rows in rel_rows if rows != global_rows]
    return {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": hidden // HEAD_DIM,
        "global_attn_indexes": [i for i, rows in enumerate(rel_rows) if rows == global_rows],
        "mlp_dim": s["layers.0.mlp.lin1.weight"][0],
        "output_channels": s["neck.conv1.weight"][0],
        "window_size": (windowed[0] + 1) // 2 if windowed else 14,
        "image_size": side * patch,
        "patch_size": patch,
    }


def _eva02_spec(s: dict) -> dict:
    hidden, _, patch, _ = s["patch_embed.proj.weight"]
    layers = _count(s, r"blocks\.(\d+)\.")
    window_tokens = s["rope_win.freqs_cos"][0]
    # Per-block rope copies tell which blocks attend in windows (their table has window**2 rows).
    copies = [s.get(f"blocks.{i}.attn.rope.freqs_cos") for i in range(layers)]
    windowed = [i for i, shape in enumerate(copies) if shape and shape[0] == window_tokens]
    return {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": hidden // HEAD_DIM,
        "patch_size": patch,
        "pretrain_image_size": math.isqrt(s["pos_embed"][1] - 1) * patch,
        "window_size": math.isqrt(window_tokens),
        "window_block_indexes": windowed if any(copies) else None,  # None: the authors' default pattern
        "mlp_ratio": s["blocks.0.mlp.w1.weight"][0] / hidden,
    }


def _pix2struct_spec(s: dict) -> dict:
    hidden, patch_width = s["embeddings.patch_projection.weight"]
    return {
        "hidden_size": hidden,
        "num_hidden_layers": _count(s, r"encoder\.layer\.(\d+)\."),
        "num_attention_heads": hidden // HEAD_DIM,
        "d_kv": HEAD_DIM,
        "d_ff": s["encoder.layer.0.mlp.wi_0.weight"][0],
        "patch_embed_hidden_size": patch_width,
        "seq_len": s["embeddings.row_embedder.weight"][0],
        "layer_norm_eps": 1e-6,
        "dense_act_fn": "gelu_new",
    }


# Tensors whose last dimension is the attention head size, by expert type (the other experts record it nowhere).
HEAD_SIZE_TENSORS = {
    "sam": r"layers\.\d+\.attn\.rel_pos_[hw]",  # decomposed relative positions: (2 * side - 1, head size)
    "eva02": r"(rope_win|rope_glb|blocks\.\d+\.attn\.rope)\.freqs_(cos|sin)",  # 2D rope: (tokens, head size)
}
HIDDEN_SIZE_TENSORS = {
    "clip": "vision_model.embeddings.patch_embedding.weight",
    "sam": "patch_embed.projection.weight",
    "eva02": "patch_embed.proj.weight",
    "pix2struct": "embeddings.patch_projection.weight",
}


def check_head_size(expert_type: str, shapes: dict, prefix: str, label: str) -> None:
    """Refuse an expert whose tensors disagree with the head size this converter builds (``HEAD_DIM``): its
    hidden size must be a multiple of it, and every tensor recording the head size must carry it."""
    if expert_type in HIDDEN_SIZE_TENSORS:
        key = HIDDEN_SIZE_TENSORS[expert_type]
        hidden = shapes[key][0]
        if hidden % HEAD_DIM:
            raise ConversionError(
                f"{label}: {prefix}{key} {tuple(shapes[key])} gives hidden size {hidden}, not a multiple of the "
                f"head size {HEAD_DIM} this converter assumes (every released expert's)"
            )
    pattern = HEAD_SIZE_TENSORS.get(expert_type)
    if pattern is None:
        return
    for key, shape in sorted(shapes.items()):
        if re.fullmatch(pattern, key) and shape[-1] != HEAD_DIM:
            raise ConversionError(
                f"{label}: {prefix}{key} {tuple(shape)} records attention head size {shape[-1]}, but this "
                f"converter assumes {HEAD_DIM} (every released expert's); the checkpoint is not a released layout"
            )


SPEC_READERS = {
    "clip": _clip_spec,
    "convnext": _convnext_spec,
    "sam": _sam_spec,
    "eva02": _eva02_spec,
    "pix2struct": _pix2struct_spec,
}


def expert_specs(names: list[str], shapes: dict) -> list[dict]:
    specs = []
    for index, tower in enumerate(names):
        expert_type = TOWER_NAMES[tower]
        prefix = f"{TOWER_PREFIX}{index}.vision_tower."
        local = {key[len(prefix) :]: shape for key, shape in shapes.items() if key.startswith(prefix)}
        if not local:
            raise ConversionError(f"no tensors under {prefix} for expert {index} ({tower})")
        try:
            check_head_size(expert_type, local, prefix, f"expert {index} ({tower})")
            arch = SPEC_READERS[expert_type](local)
        except KeyError as error:
            raise ConversionError(f"expert {index} ({tower}) lacks tensor {prefix}{error.args[0]}") from None
        spec = {"name": expert_type, "type": expert_type, **RELEASED_EXPERT_INPUTS[expert_type], "config": arch}
        if expert_type != "pix2struct":
            # The released code normalises the one shared image with CLIP's statistics for every expert but Pix2Struct.
            spec.update(image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
        specs.append(spec)
    return specs


def text_config(source: dict, vocab_size: int) -> dict:
    keys = (
        "hidden_size intermediate_size num_hidden_layers num_attention_heads num_key_value_heads hidden_act "
        "max_position_embeddings rms_norm_eps rope_theta rope_scaling attention_bias mlp_bias tie_word_embeddings "
        "bos_token_id eos_token_id pad_token_id initializer_range head_dim"
    ).split()
    config = {key: source[key] for key in keys if source.get(key) is not None}
    config.update(model_type="llama", vocab_size=vocab_size)
    return config


# ----------------------------------------------------------------------------------------------------------------
# Key mapping


def _convnext_key(rest: str) -> str:
    rest = re.sub(r"^stem\.0\.", "embeddings.patch_embeddings.", rest)
    rest = re.sub(r"^stem\.1\.", "embeddings.layernorm.", rest)
    rest = re.sub(r"^stages\.(\d+)\.downsample\.", r"encoder.stages.\1.downsampling_layer.", rest)
    match = re.match(r"^stages\.(\d+)\.blocks\.(\d+)\.(.*)$", rest)
    if match:
        stage, block, leaf = match.groups()
        leaf = {"weight": "layer_scale_parameter", "gamma": "layer_scale_parameter"}.get(leaf, leaf)
        leaf = re.sub(r"^conv_dw\.", "dwconv.", leaf)
        leaf = re.sub(r"^norm\.", "layernorm.", leaf)
        leaf = re.sub(r"^mlp\.fc1\.", "pwconv1.", leaf)
        leaf = re.sub(r"^mlp\.fc2\.", "pwconv2.", leaf)
        rest = f"encoder.stages.{stage}.layers.{block}.{leaf}"
    return rest


# (expert type -> [(regex of keys to drop, why)], key renaming)
DROPPED = {
    "clip": [(r"^vision_model\.post_layernorm\.", "CLIP post_layernorm (unused by Eagle)")],
    "convnext": [(r"^head\.", "ConvNeXt classifier head (unused)")],
    "eva02": [(r"^blocks\.\d+\.attn\.rope\.", "EVA per-block rope copies (duplicates of rope_win/rope_glb)")],
}
RENAME = {
    "clip": lambda rest: rest.removeprefix("vision_model."),
    "convnext": _convnext_key,
    "sam": lambda rest: rest,
    "eva02": lambda rest: rest,
    "pix2struct": lambda rest: rest,
}


def map_key(key: str, expert_types: list[str], expert_names: list[str]) -> tuple[str | None, str | None]:
    """(target key, None) for a converted tensor, (None, reason) for a dropped one, (None, None) if unknown."""
    if key.startswith(TOWER_PREFIX):
        match = re.match(rf"^{re.escape(TOWER_PREFIX)}(\d+)\.vision_tower\.(.*)$", key)
        if not match or int(match.group(1)) >= len(expert_types):
            return None, None
        index, rest = int(match.group(1)), match.group(2)
        expert_type = expert_types[index]
        for pattern, reason in DROPPED.get(expert_type, []):
            if re.match(pattern, rest):
                return None, reason
        return f"model.vision_tower.experts.{expert_names[index]}.{RENAME[expert_type](rest)}", None
    for source, target in (
        (r"^model\.mm_projector\.0\.", "model.multi_modal_projector.linear_1."),
        (r"^model\.mm_projector\.2\.", "model.multi_modal_projector.linear_2."),
        (r"^model\.mm_projector\.(weight|bias)$", r"model.multi_modal_projector.linear_1.\1"),
        (r"^model\.(embed_tokens|layers|norm)\.", r"model.language_model.\1."),
        (r"^lm_head\.", "lm_head."),
    ):
        if re.match(source, key):
            return re.sub(source, target, key), None
    return None, None


# ----------------------------------------------------------------------------------------------------------------
# The conversion


def build_config(src: Path, source: dict, shapes: dict) -> EagleConfig:
    names = tower_names(source)
    specs = expert_specs(names, shapes)
    projector = source.get("mm_projector_type", "mlp2x_gelu")
    if projector not in ("linear", "mlp2x_gelu"):
        raise ConversionError(f"mm_projector_type {projector!r} is not supported (linear or mlp2x_gelu)")
    vocab = source["vocab_size"]
    return EagleConfig(
        vision_config={"experts": specs, "grid_size": 32},
        text_config=text_config(source, vocab + 1),  # one new row for the image token
        image_token_id=vocab,
        projector_type=projector,
        tie_word_embeddings=bool(source.get("tie_word_embeddings", False)),
    )


def load_tokenizer(src: Path, source: dict):
    from transformers import AutoTokenizer

    kwargs = {}
    if (src / "tokenizer.model").is_file():
        # The original tokenised the text on each side of <image> separately, each with SentencePiece's dummy
        # prefix; legacy mode gives text after a special token that prefix, so the ids match the original's.
        kwargs["legacy"] = True
    try:
        tokenizer = AutoTokenizer.from_pretrained(src, **kwargs)
    except Exception as error:
        raise ConversionError(f"{src}: cannot load the tokenizer ({type(error).__name__}: {error})") from error
    tokenizer.init_kwargs.update(kwargs)  # saved with the tokenizer, so reloading keeps the same behaviour
    if len(tokenizer) != source["vocab_size"]:
        logger.warning("tokenizer has %d tokens, config vocab_size is %d", len(tokenizer), source["vocab_size"])
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    if tokenizer.convert_tokens_to_ids("<image>") != source["vocab_size"]:
        raise ConversionError(
            f"the image token would get id {tokenizer.convert_tokens_to_ids('<image>')}, not {source['vocab_size']}"
            " (the tokenizer and config vocab sizes disagree)"
        )
    tokenizer.model_max_length = source.get("tokenizer_model_max_length", tokenizer.model_max_length)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def guess_chat_template(tokenizer) -> str:
    vocab = tokenizer.get_vocab()
    if "<|eot_id|>" in vocab:
        return "llama3"
    if "<|im_start|>" in vocab:
        return "chatml"
    return "vicuna_v1"


def convert(
    src,
    dst,
    *,
    dtype: str | None = None,
    chat_template: str | None = None,
    force: bool = False,
    max_shard_size: int = 4 * 1024**3,
    card: Callable[[Path, ConversionReport], None] | None = None,
) -> ConversionReport:
    """Convert ``src`` (an NVEagle folder) into a Hub-native Eagle folder at ``dst``; returns what was done.

    No model card is written here. ``card(folder, report)``, when given, runs on the complete staging folder just
    before it is moved into place (``eagle convert`` writes the card there): what it writes is published with the
    rest, and if it raises, nothing is published and an existing ``dst`` is left as it was."""
    from tqdm.auto import tqdm

    src, dst = Path(src), Path(dst)
    if dst.resolve() == src.resolve() or dst.resolve() in src.resolve().parents:
        raise ConversionError(f"the output {dst} is (or contains) the source {src}; choose another output folder")
    if dst.exists() and not force:
        raise FileExistsError(f"{dst} already exists; choose another output or pass overwrite/--force")
    source = read_source_config(src)
    files = weight_files(src)
    shapes = read_shapes(files)
    config = build_config(src, source, shapes)
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in EagleForConditionalGeneration(config).state_dict().items()}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    plan, report = plan_mapping(shapes, config, expected)
    tokenizer = load_tokenizer(src, source)
    processor = build_processor(config, tokenizer, chat_template or guess_chat_template(tokenizer), mode="released")
    target_dtype = getattr(torch, dtype) if dtype else None

    source_dtype = None
    with staged_folder(dst, overwrite=force) as staging:
        writer = ShardWriter(staging, max_shard_size)
        with tqdm(total=len(plan), desc="converting tensors", unit="tensor") as progress:
            for path in files:
                for name, tensor in _iterate(path):
                    target = plan.get(name)
                    if target is None:
                        continue
                    if source_dtype is None and tensor.is_floating_point():
                        source_dtype = tensor.dtype
                    if target.endswith("embed_tokens.weight") or target == "lm_head.weight":
                        tensor = _add_image_row(tensor)
                    if target_dtype is not None and tensor.is_floating_point():
                        tensor = tensor.to(target_dtype)
                    writer.add(target, tensor)
                    report.converted += 1
                    progress.update()
        writer.close()
        config.dtype = str(target_dtype or source_dtype or torch.float32).removeprefix("torch.")
        write_folder_files(staging, processor, config)
        report.source, report.config = src, config
        if card is not None:
            card(staging, report)
    logger.info(report.summary())
    return report


def plan_mapping(shapes: dict, config: EagleConfig, expected: dict) -> tuple[dict, ConversionReport]:
    """Map every source key to a target key; fail listing every unknown, missing or mis-shaped tensor."""
    types = [spec["type"] for spec in config.vision_config.experts]
    names = [spec["name"] for spec in config.vision_config.experts]
    report = ConversionReport(source_tensors=len(shapes))
    plan, unknown, wrong = {}, [], []
    for key, shape in shapes.items():
        target, reason = map_key(key, types, names)
        if reason is not None:
            report.dropped[reason].append(key)
            continue
        if target is None or target not in expected:
            unknown.append(key)
            continue
        want = expected[target]
        if target.endswith("embed_tokens.weight") or target == "lm_head.weight":
            want = (want[0] - 1, *want[1:])
        if tuple(shape) != want:
            wrong.append(f"{key} {tuple(shape)} -> {target} expects {want}")
            continue
        plan[key] = target
    report.mapping = dict(plan)
    missing = sorted(set(expected) - set(plan.values()))
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} source tensor(s) not understood: {sorted(unknown)[:20]}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es): {wrong[:20]}")
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing from the source: {missing[:20]}")
    if problems:
        raise ConversionError("cannot convert faithfully:\n  " + "\n  ".join(problems))
    return plan, report


def _add_image_row(matrix: torch.Tensor) -> torch.Tensor:
    """Append the image token's row: the mean of the existing rows, a neutral start that training moves."""
    return torch.cat([matrix, matrix.float().mean(0, keepdim=True).to(matrix.dtype)])


class ShardWriter:
    """Accumulates tensors up to ``max_shard_size`` bytes per file and writes the safetensors index."""

    def __init__(self, folder: Path, max_shard_size: int):
        self.folder, self.max_shard_size = folder, max_shard_size
        self.pending, self.pending_bytes, self.shards, self.weight_map, self.total = {}, 0, [], {}, 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max_shard_size:
            self._flush()
        self.pending[name] = tensor.contiguous()
        self.pending_bytes += size
        self.total += size

    def _flush(self) -> None:
        name = f"model-{len(self.shards) + 1:05d}.safetensors"
        save_file(self.pending, str(self.folder / name), metadata={"format": "pt"})
        self.shards.append(name)
        self.weight_map.update(dict.fromkeys(self.pending, name))
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> None:
        if self.pending:
            self._flush()
        if len(self.shards) == 1:
            (self.folder / self.shards[0]).rename(self.folder / "model.safetensors")
            return
        count = len(self.shards)
        renamed = {}
        for i, old in enumerate(self.shards, 1):
            new = f"model-{i:05d}-of-{count:05d}.safetensors"
            (self.folder / old).rename(self.folder / new)
            renamed[old] = new
        index = {
            "metadata": {"total_size": self.total},
            "weight_map": {key: renamed[shard] for key, shard in sorted(self.weight_map.items())},
        }
        (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
