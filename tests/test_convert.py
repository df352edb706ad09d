"""Converting the authors' released NVEagle checkpoints (``modeling_eagle.convert_nveagle``).

The key mapping is checked at the full released size on shapes only (every released vision key, a Vicuna-7B or
Llama-3-8B LLM, against the state dict of an Eagle built on the meta device); synthetic checkpoints of the same
structure (tests/nveagle_checkpoints.py) are converted end to end: tensors copied bit for bit, the image-token
row added, projector and image splice checked against references computed from the source tensors, legacy
``.bin`` input, corrupt input (head sizes the tensors contradict included) refused without leaving anything behind,
and a fresh-process pipeline. The converter returns its report and writes no card; ``eagle convert`` writes the card
inside the same atomic move.
"""

import ast
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import nveagle_checkpoints as nc
import pytest
import torch
from conftest import REFERENCE, make_image, require_reference
from safetensors.torch import load_file
from transformers import AutoProcessor

from eagle_hub.cli import main
from eagle_hub.hub_cards.fresh_process import run_without_package
from eagle_hub.modeling_eagle import convert_nveagle
from eagle_hub.modeling_eagle.convert_nveagle import ConversionError, convert
from eagle_hub.modeling_eagle.modeling_eagle import EagleForConditionalGeneration
from eagle_hub.processing.chat_templates import CHAT_TEMPLATES

RELEASED_KEYS = REFERENCE / "nveagle-x5-vision-keys.json"
ROOT = Path(__file__).resolve().parents[1]
CHAT_TEMPLATE_OF = {"vicuna": "vicuna_v1", "llama3": "llama3"}


# ----------------------------------------------------------------------------------------------------------------
# An independent statement of the mapping: source key -> converted key (None: dropped on purpose)


def _convnext_name(rest: str) -> str:
    """timm ConvNeXt names -> transformers ConvNext names."""
    for pattern, replacement in (
        (r"^stem\.0\.", "embeddings.patch_embeddings."),
        (r"^stem\.1\.", "embeddings.layernorm."),
        (r"^stages\.(\d+)\.downsample\.(\d)\.", r"encoder.stages.\1.downsampling_layer.\2."),
        (r"^stages\.(\d+)\.blocks\.(\d+)\.weight$", r"encoder.stages.\1.layers.\2.layer_scale_parameter"),
        (r"^stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.", r"encoder.stages.\1.layers.\2.dwconv."),
        (r"^stages\.(\d+)\.blocks\.(\d+)\.norm\.", r"encoder.stages.\1.layers.\2.layernorm."),
        (r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc1\.", r"encoder.stages.\1.layers.\2.pwconv1."),
        (r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc2\.", r"encoder.stages.\1.layers.\2.pwconv2."),
    ):
        if re.match(pattern, rest):
            return re.sub(pattern, replacement, rest)
    raise AssertionError(f"unexpected ConvNeXt key {rest}")


def converted_name(key: str, layout: str) -> str | None:
    match = re.match(r"^model\.vision_tower\.vision_towers\.(\d+)\.vision_tower\.(.+)$", key)
    if match:
        expert = nc.TOWER_TYPES[nc.TOWERS[layout][int(match.group(1))]]
        rest = match.group(2)
        if expert == "clip":
            if rest.startswith("vision_model.post_layernorm."):
                return None  # never applied by Eagle
            rest = rest.removeprefix("vision_model.")
        elif expert == "convnext":
            if rest.startswith("head."):
                return None  # classifier head, unused
            rest = _convnext_name(rest)
        elif expert == "eva02" and re.match(r"^blocks\.\d+\.attn\.rope\.", rest):
            return None  # per-block copies of rope_win / rope_glb
        return f"model.vision_tower.experts.{nc.CONVERTED_NAMES[expert]}.{rest}"
    if key.startswith("model.mm_projector."):
        return re.sub(r"^model\.mm_projector\.([02])\.", lambda m: PROJECTOR[m.group(1)], key)
    if key.startswith("model."):
        return "model.language_model." + key.removeprefix("model.")
    return key  # lm_head.weight


PROJECTOR = {"0": "model.multi_modal_projector.linear_1.", "2": "model.multi_modal_projector.linear_2."}
VOCAB_MATRICES = ("model.language_model.embed_tokens.weight", "lm_head.weight")


def expected_drops(keys, layout: str) -> set[str]:
    return {key for key in keys if converted_name(key, layout) is None}


def load_folder(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        part = load_file(path)
        assert not set(part) & set(tensors), f"{path.name} repeats tensors"
        tensors.update(part)
    return tensors


def reference_projector(source: dict, features: torch.Tensor) -> torch.Tensor:
    """The released mm_projector (Linear -> exact GELU -> Linear) from the source tensors, in float32."""
    w0, b0 = source["model.mm_projector.0.weight"].float(), source["model.mm_projector.0.bias"].float()
    w2, b2 = source["model.mm_projector.2.weight"].float(), source["model.mm_projector.2.bias"].float()
    return torch.nn.functional.linear(torch.nn.functional.gelu(torch.nn.functional.linear(features, w0, b0)), w2, b2)


def assert_relative(actual: torch.Tensor, expected: torch.Tensor, tolerance: float = 1e-5) -> None:
    """Max abs difference relative to the reference's max magnitude (the weights are small, so absolute
    tolerances would hide real differences)."""
    assert actual.shape == expected.shape
    error = float((actual - expected).abs().max() / expected.abs().max())
    assert error <= tolerance, f"relative error {error:.2e} > {tolerance:.0e}"


def nothing_left(parent: Path, keep=()) -> None:
    left = sorted(p.name for p in parent.iterdir() if p.name not in keep)
    assert left == [], f"left behind next to the output: {left}"


# ----------------------------------------------------------------------------------------------------------------
# Full released size, shapes only


def released_shapes(layout: str, llm: str) -> tuple[dict, dict]:
    """(source shapes, source config) of a full-size release: the released vision keys from the JSON (X4: the
    X5 keys without SAM, towers renumbered) plus the LLM and projector keys."""
    released = {key: tuple(shape) for key, shape in json.loads(RELEASED_KEYS.read_text()).items()}
    if layout == "x4":
        renumber = {0: 0, 1: 1, 3: 2, 4: 3}
        vision = {}
        for key, shape in released.items():
            index = int(key[len(nc.TOWER_PREFIX) :].split(".", 1)[0])
            if index in renumber:
                rest = key[len(nc.TOWER_PREFIX) + len(str(index)) :]
                vision[f"{nc.TOWER_PREFIX}{renumber[index]}{rest}"] = shape
        released = vision
    vocab = nc.FULL[llm]["vocab"]
    shapes = dict(released)
    shapes.update(
        {k: v for k, v in nc.checkpoint_keys(layout, llm, vocab, nc.FULL).items() if not k.startswith(nc.TOWER_PREFIX)}
    )
    token_ids = {"vocab_size": vocab, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    return shapes, nc.original_config(layout, llm, nc.FULL, token_ids)


def test_generator_reproduces_every_released_vision_key_and_shape():
    require_reference(RELEASED_KEYS.name)
    released = {key: tuple(shape) for key, shape in json.loads(RELEASED_KEYS.read_text()).items()}
    generated = nc.vision_keys("x5", nc.FULL)
    assert len(generated) == len(released) == 1791
    assert set(generated) == set(released), sorted(set(generated) ^ set(released))[:10]
    assert {k: v for k, v in generated.items() if released[k] != v} == {}
    assert nc.mm_hidden_size("x5", nc.FULL) == 7680


@pytest.mark.parametrize("layout, llm", [("x5", "vicuna"), ("x4", "llama3")])
def test_full_size_release_maps_onto_exactly_the_model_keys(layout, llm):
    require_reference(RELEASED_KEYS.name)
    shapes, source = released_shapes(layout, llm)
    config = convert_nveagle.build_config(Path("unused"), source, shapes)
    with torch.device("meta"):
        model = EagleForConditionalGeneration(config)
    expected = {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
    plan, report = convert_nveagle.plan_mapping(shapes, config, expected)

    dropped = {key for keys in report.dropped.values() for key in keys}
    assert report.source_tensors == len(shapes)
    assert set(plan) | dropped == set(shapes) and not set(plan) & dropped
    assert dropped == expected_drops(shapes, layout)
    assert sorted(len(keys) for keys in report.dropped.values()) == [2, 4, 48]  # post_layernorm, head, 24 x 2
    assert sorted(plan.values()) == sorted(expected), "every model tensor must come from exactly one source tensor"
    assert {key: target for key, target in plan.items() if target != converted_name(key, layout)} == {}

    # The architecture read from the shapes is the released one (EAGLE-X5.md §2).
    full, text = nc.FULL, nc.FULL[llm]
    assert model.model.vision_tower.hidden_size == source["mm_hidden_size"]
    assert config.image_token_id == text["vocab"] and config.text_config.vocab_size == text["vocab"] + 1
    assert (config.text_config.num_key_value_heads, config.text_config.intermediate_size) == (
        text["kv_heads"],
        text["mlp"],
    )
    specs = {spec["type"]: spec for spec in config.vision_config.experts}
    assert [spec["type"] for spec in config.vision_config.experts] == [nc.TOWER_TYPES[n] for n in nc.TOWERS[layout]]
    assert [spec["image_size"] for spec in config.vision_config.experts][:2] == [336, 1024]
    clip = specs["clip"]["config"]
    assert (clip["hidden_size"], clip["num_hidden_layers"], clip["num_attention_heads"]) == (1024, 24, 16)
    assert (clip["intermediate_size"], clip["patch_size"], clip["image_size"]) == (4096, 14, 336)
    convnext = specs["convnext"]["config"]
    assert convnext["hidden_sizes"] == list(full["convnext"]["dims"])
    assert convnext["depths"] == list(full["convnext"]["depths"])
    if layout == "x5":
        sam = specs["sam"]
        assert sam["pixel_unshuffle"] == 2 and sam["config"]["global_attn_indexes"] == [5, 11, 17, 23]
        assert (sam["config"]["window_size"], sam["config"]["output_channels"]) == (14, 256)
    eva = specs["eva02"]["config"]
    assert eva["num_hidden_layers"] == 24 and eva["window_size"] == 16 and eva["pretrain_image_size"] == 224
    assert eva["window_block_indexes"] == list(full["eva02"]["window_blocks"])
    pix2struct = specs["pix2struct"]
    assert pix2struct["max_patches"] == 2048
    assert (pix2struct["config"]["num_hidden_layers"], pix2struct["config"]["d_ff"]) == (18, 3968)


# ----------------------------------------------------------------------------------------------------------------
# Small synthetic checkpoints, converted once per module


COMBINATIONS = [("x5", "vicuna"), ("x4", "llama3"), ("x5", "llama3"), ("x4", "vicuna")]
OUTPUT_SHARD = 1_000_000  # bytes: small, so conversions also exercise the converter's output sharding and index


@pytest.fixture(scope="module")
def conversions(tmp_path_factory):
    """Converts each (layout, llm) once per module: the source folder, the output folder and the report."""
    done = {}

    def get(layout: str, llm: str) -> SimpleNamespace:
        if (layout, llm) not in done:
            if llm == "vicuna":  # the Vicuna-style tokenizer comes from the reference checkpoint
                require_reference("nveagle-reference-x5", "checkpoint", "tokenizer.model")
            root = tmp_path_factory.mktemp(f"{layout}-{llm}")
            src, dst = root / "src", root / "out" / "dst"
            nc.write_checkpoint(src, layout=layout, llm=llm, shards=3 if layout == "x4" else 2, seed=1)
            report = convert(src, dst, max_shard_size=OUTPUT_SHARD)
            done[layout, llm] = SimpleNamespace(src=src, dst=dst, report=report, layout=layout, llm=llm)
        return done[layout, llm]

    return get


@pytest.fixture(scope="module")
def x5_vicuna(conversions):
    return conversions("x5", "vicuna")


@pytest.fixture(scope="module")
def x4_llama3(conversions):
    return conversions("x4", "llama3")


@pytest.fixture(params=COMBINATIONS, ids=["-".join(c) for c in COMBINATIONS])
def converted(request, conversions):
    return conversions(*request.param)


def test_report_accounts_for_every_source_tensor(converted, tmp_path):
    source = load_folder(converted.src)
    report = converted.report
    dropped = {key for keys in report.dropped.values() for key in keys}
    assert report.source_tensors == len(source)
    assert report.converted + sum(len(keys) for keys in report.dropped.values()) == report.source_tensors
    assert dropped == expected_drops(source, converted.layout)
    eva_depth = nc.SMALL["eva02"]["depth"]
    assert sorted(len(keys) for keys in report.dropped.values()) == sorted([2, 4, 2 * eva_depth])
    assert str(report.converted) in report.summary()
    # What was converted, from where, into what: the caller writes the card from this.
    assert report.mapping == {key: converted_name(key, converted.layout) for key in source if key not in dropped}
    assert report.converted == len(report.mapping)
    assert report.source == converted.src
    report.config.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").read_text() == (converted.dst / "config.json").read_text()


def test_output_folder_is_hub_ready_with_the_right_chat_template_and_image_token(converted):
    dst = converted.dst
    source_config = json.loads((converted.src / "config.json").read_text())
    config = json.loads((dst / "config.json").read_text())
    vocab = source_config["vocab_size"]
    assert config["model_type"] == "eagle" and "auto_map" in config
    assert config["image_token_id"] == vocab and config["text_config"]["vocab_size"] == vocab + 1
    for name in ("modeling_eagle.py", "configuration_eagle.py", "processing_eagle.py"):
        assert (dst / name).is_file(), name
    assert not (dst / "README.md").exists(), "the converter writes no card; its caller (eagle convert) does"
    assert not list(dst.glob("*.bin")) and not list(dst.parent.glob(".*")), "no pickles, no staging leftovers"
    index = json.loads((dst / "model.safetensors.index.json").read_text())  # converted with small shards
    assert len(set(index["weight_map"].values())) > 1
    assert set(index["weight_map"]) == set(load_folder(dst))

    processor = AutoProcessor.from_pretrained(dst)
    assert processor.chat_template == CHAT_TEMPLATES[CHAT_TEMPLATE_OF[converted.llm]]
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == vocab
    assert len(processor.tokenizer) == vocab + 1
    if converted.llm == "llama3":
        assert processor.tokenizer.eos_token == "<|eot_id|>"


def test_tensors_are_copied_bit_for_bit_and_the_image_row_is_the_mean(converted):
    source, target = load_folder(converted.src), load_folder(converted.dst)
    mapping = {key: converted_name(key, converted.layout) for key in source}
    mapping = {key: name for key, name in mapping.items() if name is not None}
    assert set(target) == set(mapping.values())
    assert json.loads((converted.dst / "config.json").read_text())["dtype"] == "bfloat16"
    for key, name in mapping.items():
        assert target[name].dtype == source[key].dtype == torch.bfloat16, name
        if name in VOCAB_MATRICES:
            rows = source[key].shape[0]
            assert torch.equal(target[name][:rows], source[key]), name
            assert target[name].shape[0] == rows + 1
            mean = source[key].float().mean(0)
            torch.testing.assert_close(target[name][rows].float(), mean, rtol=2**-8, atol=1e-7)
        else:
            assert torch.equal(target[name], source[key]), f"{key} -> {name} changed"


def test_dtype_float32_is_the_exact_upcast(x4_llama3, tmp_path):
    report = convert(x4_llama3.src, tmp_path / "f32", dtype="float32")
    assert report.converted == x4_llama3.report.converted
    upcast, kept = load_folder(tmp_path / "f32"), load_folder(x4_llama3.dst)
    assert set(upcast) == set(kept)
    for name, tensor in upcast.items():
        assert tensor.dtype == torch.float32, name
        assert torch.equal(tensor, kept[name].float()), name
    assert json.loads((tmp_path / "f32" / "config.json").read_text())["dtype"] == "float32"


def _load_float32(folder: Path):
    return EagleForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()


def test_projector_equals_the_released_mlp(converted):
    model, source = _load_float32(converted.dst), load_folder(converted.src)
    mm_hidden = json.loads((converted.src / "config.json").read_text())["mm_hidden_size"]
    fused = torch.randn(1, 1024, mm_hidden, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model.model.multi_modal_projector(fused)
    assert_relative(ours, reference_projector(source, fused))


def test_image_tokens_receive_the_projected_tower_and_text_the_source_embeddings(converted):
    model, source = _load_float32(converted.dst), load_folder(converted.src)
    # Loading keeps every converted tensor (nothing re-initialised, the EVA rope tables included).
    state, files = model.state_dict(), load_folder(converted.dst)
    assert {name for name in files if not torch.equal(state[name], files[name].float())} == set()

    processor = AutoProcessor.from_pretrained(converted.dst)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    # The rendered template already holds the BOS token, so the tokenizer must not add a second one.
    inputs = processor(images=[make_image(64, 48)], text=[prompt], return_tensors="pt", add_special_tokens=False)

    captured = {}
    hooks = [
        model.model.language_model.register_forward_pre_hook(
            lambda module, args, kwargs: captured.update(embeds=kwargs["inputs_embeds"].detach().clone()),
            with_kwargs=True,
        ),
        model.model.vision_tower.register_forward_hook(
            lambda module, args, output: captured.update(tower=output.last_hidden_state.detach().clone())
        ),
    ]
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for hook in hooks:
            hook.remove()

    ids = inputs["input_ids"][0]
    vocab = json.loads((converted.src / "config.json").read_text())["vocab_size"]
    image = ids == vocab
    assert int(image.sum()) == 1024
    embeds = captured["embeds"][0]
    torch.testing.assert_close(
        embeds[~image], source["model.embed_tokens.weight"].float()[ids[~image]], rtol=0, atol=0
    )
    assert_relative(embeds[image], reference_projector(source, captured["tower"][0]))


PIPELINE_SCRIPT = r"""
import json
from PIL import Image
from transformers import pipeline

pipe = pipeline("image-text-to-text", model=sys.argv[1], trust_remote_code=True)
image = Image.new("RGB", (40, 32), (30, 90, 200))
chat = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What is it?"}]}]
out = pipe(text=chat, max_new_tokens=2)
print(json.dumps({"reply": out[0]["generated_text"][-1], "model_module": type(pipe.model).__module__}))
"""


def test_converted_folder_generates_through_a_pipeline_in_a_fresh_process(x4_llama3, tmp_path):
    run = run_without_package(PIPELINE_SCRIPT, x4_llama3.dst, timeout=600)  # the package cannot be imported there
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["reply"]["role"] == "assistant" and isinstance(result["reply"]["content"], str)
    assert "modeling_eagle" in result["model_module"]


# ----------------------------------------------------------------------------------------------------------------
# Legacy .bin input


def test_legacy_bin_converts_like_safetensors_and_loads_weights_only(x4_llama3, tmp_path, monkeypatch):
    nc.write_checkpoint(tmp_path / "src", layout="x4", llm="llama3", shards=3, seed=1, fmt="bin")
    assert (tmp_path / "src" / "pytorch_model.bin.index.json").is_file()
    calls, real_load = [], torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    report = convert(tmp_path / "src", tmp_path / "dst")
    assert calls and all(kwargs.get("weights_only") is True for kwargs in calls), calls
    assert report.summary() == x4_llama3.report.summary()
    ours, reference = load_folder(tmp_path / "dst"), load_folder(x4_llama3.dst)
    assert set(ours) == set(reference)
    assert [name for name in ours if not torch.equal(ours[name], reference[name])] == []
    assert json.loads((tmp_path / "dst" / "config.json").read_text()) == json.loads(
        (x4_llama3.dst / "config.json").read_text()
    )


UNPICKLED = []


def _record_unpickling(tag):
    UNPICKLED.append(tag)
    return torch.zeros(1)


class _SmuggledObject:
    def __reduce__(self):
        return _record_unpickling, ("arbitrary code ran",)


def test_legacy_bin_with_a_pickled_object_is_refused(tmp_path):
    src = tmp_path / "src"
    nc.write_checkpoint(src, layout="x4", llm="llama3", shards=2, fmt="bin")
    shard = src / "pytorch_model-00002-of-00002.bin"
    state = torch.load(shard, weights_only=True)
    state["model.norm.weight"] = _SmuggledObject()
    torch.save(state, shard)
    (tmp_path / "out").mkdir()
    with pytest.raises(ConversionError, match=r"pytorch_model-00002-of-00002\.bin: cannot read weights"):
        convert(src, tmp_path / "out" / "dst")
    assert UNPICKLED == []
    nothing_left(tmp_path / "out")


# ----------------------------------------------------------------------------------------------------------------
# Corrupt input: a ConversionError that says what is wrong, and nothing written


def _unlink(name):
    return lambda src: (src / name).unlink()


def _truncate(name):
    def truncate(src):
        data = (src / name).read_bytes()
        (src / name).write_bytes(data[: len(data) * 2 // 3])

    return truncate


def _remove_weights(src):
    for path in [*src.glob("*.safetensors"), *src.glob("*.json")]:
        if path.name != "config.json" and "tokenizer" not in path.name:
            path.unlink()


def _replace(key, shape):
    return lambda tensors: tensors.__setitem__(key, torch.zeros(shape, dtype=torch.bfloat16))


def _pop(key):
    return lambda tensors: tensors.pop(key)


# X4 towers: 0 clip, 1 convnext, 2 eva02 (det), 3 pix2struct. The Llama-3-style LLM has hidden 128.
# (X5 puts SAM at 2 and EVA at 3.)
EVA, PIX = f"{nc.TOWER_PREFIX}2.vision_tower.", f"{nc.TOWER_PREFIX}3.vision_tower."
CORRUPT = {
    "missing-shard": (
        {"shards": 3},
        _unlink("model-00002-of-00003.safetensors"),
        r"lists shard\(s\) that are not in .*model-00002-of-00003\.safetensors",
    ),
    "truncated-safetensors": (
        {},
        _truncate("model-00002-of-00002.safetensors"),
        r"model-00002-of-00002\.safetensors: cannot read weights",
    ),
    "truncated-bin": ({"fmt": "bin"}, _truncate("pytorch_model-00001-of-00002.bin"), r"cannot read weights"),
    "no-weights": ({}, _remove_weights, r"no \.safetensors or \.bin weight files"),
    "unknown-tower": (
        {"config_overrides": {"mm_vision_tower": "clip-448;convnext-1024;siglip-so400m;pix2struct-1024"}},
        None,
        r"unknown tower.*siglip-so400m",
    ),
    "towers-disagree-with-tensors": (
        {"config_overrides": {"mm_vision_tower": ";".join(nc.TOWERS["x5"])}},
        None,
        r"expert 2 \(sam-1024\) lacks tensor",
    ),
    "not-an-nveagle-config": (
        {"config_overrides": {"model_type": "llava_llama"}},
        None,
        r"model_type is 'llava_llama'",
    ),
    "wrong-shape-vision": (
        {"edit": _replace(f"{PIX}encoder.layer.1.mlp.wo.weight", (64, 96))},
        None,
        r"shape mismatch.*encoder\.layer\.1\.mlp\.wo\.weight \(64, 96\)",
    ),
    "wrong-shape-llm": (
        {"edit": _replace("model.layers.1.self_attn.o_proj.weight", (128, 64))},
        None,
        r"shape mismatch.*model\.layers\.1\.self_attn\.o_proj\.weight",
    ),
    "unexpected-tensor": (
        {"edit": _replace(f"{EVA}blocks.0.attn.k_bias", (64,))},
        None,
        r"not understood.*blocks\.0\.attn\.k_bias",
    ),
    "unexpected-tensor-outside-the-towers": (
        {"edit": _replace("model.image_newline", (128,))},
        None,
        r"not understood.*model\.image_newline",
    ),
    "missing-tensor": (
        {"edit": _pop(f"{EVA}blocks.1.attn.q_bias")},
        None,
        r"missing from the source.*experts\.eva02\.blocks\.1\.attn\.q_bias",
    ),
    "tokenizer-smaller-than-vocab": ({"vocab_size": "tokenizer+1"}, None, r"image token would get id"),
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupt_input_is_refused_and_leaves_nothing(case, tmp_path):
    write_kwargs, damage, message = CORRUPT[case]
    write_kwargs = dict(write_kwargs)
    if write_kwargs.get("vocab_size") == "tokenizer+1":
        write_kwargs["vocab_size"] = nc.write_tokenizer(tmp_path / "src", "llama3")["vocab_size"] + 1
    nc.write_checkpoint(tmp_path / "src", layout="x4", llm="llama3", **write_kwargs)
    if damage is not None:
        damage(tmp_path / "src")
    (tmp_path / "out").mkdir()
    with pytest.raises(ConversionError, match=re.compile(message, re.S)):
        convert(tmp_path / "src", tmp_path / "out" / "eagle")
    nothing_left(tmp_path / "out")


def test_missing_config_is_refused(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(ConversionError, match="no config.json"):
        convert(tmp_path / "src", tmp_path / "dst")
    assert not (tmp_path / "dst").exists()


# ----------------------------------------------------------------------------------------------------------------
# The output folder: never overwritten without force, never half-written


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_existing_output_is_refused_without_force_and_replaced_with_it(x4_llama3, tmp_path):
    dst = tmp_path / "out" / "eagle"
    dst.mkdir(parents=True)
    (dst / "keep.txt").write_text("a previous model")
    with pytest.raises((FileExistsError, ConversionError), match="exists"):
        convert(x4_llama3.src, dst)
    assert _snapshot(dst) == {"keep.txt": b"a previous model"}
    nothing_left(tmp_path / "out", keep={"eagle"})

    convert(x4_llama3.src, dst, force=True)
    assert not (dst / "keep.txt").exists()
    ours, reference = load_folder(dst), load_folder(x4_llama3.dst)
    assert set(ours) == set(reference) and all(torch.equal(ours[k], reference[k]) for k in ours)
    nothing_left(tmp_path / "out", keep={"eagle"})


@pytest.mark.parametrize("existing", [False, True], ids=["new-output", "replacing-with-force"])
def test_failure_while_writing_leaves_no_trace(x4_llama3, tmp_path, monkeypatch, existing):
    out, dst = tmp_path / "out", tmp_path / "out" / "eagle"
    out.mkdir()
    if existing:
        shutil.copytree(x4_llama3.dst, dst)
        before = _snapshot(dst)
    real_save, written = convert_nveagle.save_file, []

    def save_then_fail(tensors, filename, metadata=None):
        if written:
            Path(filename).write_bytes(b"partial")
            raise OSError(28, "No space left on device")
        written.append(filename)
        real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(convert_nveagle, "save_file", save_then_fail)
    with pytest.raises(OSError, match="No space left"):
        convert(x4_llama3.src, dst, force=existing, max_shard_size=300_000)
    assert written, "the failure must happen after a shard was written"
    if existing:
        assert _snapshot(dst) == before, "the previous output must survive a failed conversion"
        nothing_left(out, keep={"eagle"})
    else:
        nothing_left(out)


# ----------------------------------------------------------------------------------------------------------------
# Unsafe or ambiguous sources


def test_output_onto_the_source_is_refused_even_with_force(tmp_path):
    src = tmp_path / "src"
    nc.write_checkpoint(src, layout="x4", llm="llama3")
    before = _snapshot(src)
    try:
        with pytest.raises(ConversionError):
            convert(src, src, force=True)
    finally:
        assert _snapshot(src) == before, "the source checkpoint was overwritten"


def test_a_tensor_stored_twice_is_refused(tmp_path):
    src = tmp_path / "src"
    nc.write_checkpoint(src, layout="x4", llm="llama3", shards=2)
    first = load_file(src / "model-00001-of-00002.safetensors")
    second = load_file(src / "model-00002-of-00002.safetensors")
    key = next(iter(first))
    second[key] = torch.ones_like(first[key])
    convert_nveagle.save_file(second, str(src / "model-00002-of-00002.safetensors"))
    with pytest.raises(ConversionError, match=re.escape(key)):
        convert(src, tmp_path / "dst")


def test_unindexed_bin_checkpoint_ignores_training_args(tmp_path):
    src = tmp_path / "src"
    nc.write_checkpoint(src, layout="x4", llm="llama3", shards=1, fmt="bin")
    torch.save({"learning_rate": 2e-5}, src / "training_args.bin")
    report = convert(src, tmp_path / "dst")
    assert report.converted + sum(len(keys) for keys in report.dropped.values()) == report.source_tensors


# ----------------------------------------------------------------------------------------------------------------
# Head size: the converter builds heads of 64 and refuses tensors that record another size


def _with_head_size(expert: str, head_dim: int, **changes) -> dict:
    dims = {**nc.SMALL, expert: {**nc.SMALL[expert], "head_dim": head_dim, **changes}}
    return dims


SAM, EVA_X5 = f"{nc.TOWER_PREFIX}2.vision_tower.", f"{nc.TOWER_PREFIX}3.vision_tower."
HEAD_SIZE_CASES = {
    # A whole expert built with heads of 32 (hidden 64 = 2 x 32): every table says 32.
    "sam-heads-of-32": ("x5", _with_head_size("sam", 32), None, rf"expert 2 \(sam-1024\): {re.escape(SAM)}"
                        r"layers\.0\.attn\.rel_pos_h \(27, 32\) records attention head size 32, but this converter "
                        r"assumes 64"),
    "eva-heads-of-32": ("x4", _with_head_size("eva02", 32), None, rf"expert 2 \(det-1024\): {re.escape(EVA)}"
                        r"blocks\.0\.attn\.rope\.freqs_cos \(256, 32\) records attention head size 32"),
    # One table alone disagrees (the shared window table; its per-block copies still say 64).
    "eva-window-table": ("x4", nc.SMALL, _replace(f"{EVA}rope_win.freqs_sin", (256, 128)),
                         rf"{re.escape(EVA)}rope_win\.freqs_sin \(256, 128\) records attention head size 128"),
    "sam-one-layer": ("x5", nc.SMALL, _replace(f"{SAM}layers.1.attn.rel_pos_w", (127, 16)),
                      rf"{re.escape(SAM)}layers\.1\.attn\.rel_pos_w \(127, 16\) records attention head size 16"),
    # A hidden size that heads of 64 cannot split.
    "eva-hidden-96": ("x4", {**nc.SMALL, "eva02": {**nc.SMALL["eva02"], "hidden": 96}}, None,
                      rf"{re.escape(EVA)}patch_embed\.proj\.weight \(96, 3, 16, 16\) gives hidden size 96, not a "
                      r"multiple of the head size 64"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(HEAD_SIZE_CASES))
def test_a_head_size_the_tensors_contradict_is_refused_naming_the_tensor(case, tmp_path):
    layout, dims, edit, message = HEAD_SIZE_CASES[case]
    nc.write_checkpoint(tmp_path / "src", layout=layout, llm="llama3", dims=dims, edit=edit)
    (tmp_path / "out").mkdir()
    with pytest.raises(ConversionError, match=re.compile(message, re.S)):
        convert(tmp_path / "src", tmp_path / "out" / "eagle")
    nothing_left(tmp_path / "out")


def test_the_head_size_check_passes_every_released_table():
    """The check reads the released tables as head size 64 (the full X5 key list: SAM's 48 rel_pos tables,
    EVA's 4 shared and 48 per-block rope tables)."""
    require_reference(RELEASED_KEYS.name)
    released = {key: tuple(shape) for key, shape in json.loads(RELEASED_KEYS.read_text()).items()}
    checked = 0
    for index, expert in ((2, "sam"), (3, "eva02")):
        prefix = f"{nc.TOWER_PREFIX}{index}.vision_tower."
        local = {key[len(prefix) :]: shape for key, shape in released.items() if key.startswith(prefix)}
        convert_nveagle.check_head_size(expert, local, prefix, expert)
        checked += sum(bool(re.fullmatch(convert_nveagle.HEAD_SIZE_TENSORS[expert], key)) for key in local)
    assert checked == 48 + 4 + 48


# ----------------------------------------------------------------------------------------------------------------
# The report and the card: convert() returns what it did, `eagle convert` writes the card


def test_eagle_convert_writes_the_card_inside_the_atomic_move(x4_llama3, tmp_path, capsys):
    dst = tmp_path / "out" / "eagle"
    assert main(["convert", str(x4_llama3.src), str(dst)]) == 0
    printed = capsys.readouterr().out
    assert printed == f"converted {x4_llama3.src} -> {dst}: {x4_llama3.report.summary()}\n"
    card = (dst / "README.md").read_text()
    assert f"Converted from the NVEagle checkpoint `{x4_llama3.src}`" in card
    assert f"Conversion: {x4_llama3.report.summary()}." in card
    # The card is the one file the converter alone does not write; everything else is identical.
    convert(x4_llama3.src, tmp_path / "plain")
    with_card, plain = _snapshot(dst), _snapshot(tmp_path / "plain")
    assert with_card.pop("README.md") and with_card == plain
    nothing_left(tmp_path / "out", keep={"eagle"})


@pytest.mark.parametrize("existing", [False, True], ids=["new-output", "replacing-with-force"])
def test_a_card_that_cannot_be_written_publishes_nothing_and_says_so(
    x4_llama3, tmp_path, monkeypatch, capsys, existing
):
    from eagle_hub.cli import convert as convert_command

    out, dst = tmp_path / "out", tmp_path / "out" / "eagle"
    out.mkdir()
    if existing:
        shutil.copytree(x4_llama3.dst, dst)
        before = _snapshot(dst)

    def broken_card(folder, report):
        (folder / "README.md").write_text("half a card")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(convert_command, "write_card", broken_card)
    argv = ["convert", str(x4_llama3.src), str(dst), *(["--force"] if existing else [])]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "writing the model card failed, so nothing was written to" in error and "No space left" in error
    if existing:
        assert _snapshot(dst) == before, "the previous output must survive"
        nothing_left(out, keep={"eagle"})
    else:
        nothing_left(out)


def test_the_model_package_imports_nothing_from_the_cards_training_benchmarks_or_cli():
    forbidden = {"hub_cards", "training", "benchmarks", "cli"}
    found = []
    for path in sorted((ROOT / "modeling_eagle").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                # "from .. import hub_cards" / "from ..hub_cards import x" leave the package; so does eagle_hub.X.
                modules = [f"eagle_hub.{base}" if node.level > 1 else base]
                if node.level > 1 and not base:
                    modules = [f"eagle_hub.{alias.name}" for alias in node.names]
            else:
                continue
            for module in modules:
                parts = module.split(".")
                if parts[0] == "eagle_hub" and len(parts) > 1 and parts[1] in forbidden:
                    found.append(f"{path.name}:{node.lineno} imports {module}")
                elif parts[0] in forbidden and getattr(node, "level", 0) == 0:
                    found.append(f"{path.name}:{node.lineno} imports {module}")
    assert found == []
