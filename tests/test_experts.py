"""Each vision expert: shapes at several resolutions, grid steps, agreement with the transformers modules it
reuses, and the full-size parameter counts of EAGLE-X5.md §7 (built on the meta device)."""

import pytest
import torch
from conftest import pix2struct_patches
from transformers import ConvNextConfig, ConvNextModel, Pix2StructVisionConfig, Pix2StructVisionModel, SamVisionConfig
from transformers.models.clip.modeling_clip import CLIPVisionConfig, CLIPVisionModel
from transformers.models.sam.modeling_sam import SamVisionEncoder

from eagle_hub.modeling_eagle.configuration_eagle import EagleVisionConfig
from eagle_hub.modeling_eagle.modeling_eagle import EXPERT_CLASSES, EagleForConditionalGeneration, EagleVisionTower
from eagle_hub.modeling_eagle.presets import TINY_EXPERTS, eagle_config, expert_specs

torch.manual_seed(0)


def expert_input(spec: dict, batch: int = 2) -> torch.Tensor:
    if spec["type"] == "pix2struct":
        return pix2struct_patches(batch, spec["max_patches"])
    return torch.randn(batch, 3, spec["image_size"], spec["image_size"])


def build(name: str, image_size: int, **changes):
    spec = expert_specs("eagle-x5-tiny", [name], image_size=image_size)[0]
    spec.update(changes)
    spec = EagleVisionConfig(experts=[spec]).experts[0]
    return EXPERT_CLASSES[spec["type"]](spec).eval(), spec


@pytest.mark.parametrize("name", list(TINY_EXPERTS))
@pytest.mark.parametrize("image_size", [64, 96, 128])
def test_expert_output_shape_matches_feature_map_size(name, image_size):
    if name == "clip":
        image_size = image_size // 16 * 14  # CLIP's patch is 14
    expert, spec = build(name, image_size)
    with torch.no_grad():
        out = expert(expert_input(spec))
    assert out.shape == (2, expert.out_channels, *expert.feature_map_size())
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("grid_size", [2, 4, 7])
def test_tower_brings_every_expert_to_the_grid_at_several_resolutions(grid_size):
    for image_size in (64, 128):
        specs = expert_specs("eagle-x5-tiny", image_size=image_size)
        for spec in specs:
            if spec["type"] == "clip":
                spec["image_size"] = image_size // 16 * 14
        tower = EagleVisionTower(EagleVisionConfig(experts=specs, grid_size=grid_size)).eval()
        inputs = [expert_input(spec) for spec in tower.config.experts]
        with torch.no_grad():
            out = tower(inputs, return_expert_features=True)
        assert out.last_hidden_state.shape == (2, grid_size**2, tower.hidden_size)
        for name, channels in tower.expert_channels().items():
            assert out.expert_features[name].shape == (2, grid_size**2, channels)


def test_pixel_unshuffle_channel_order_and_bilinear_step():
    tower = EagleVisionTower(EagleVisionConfig(experts=expert_specs("eagle-x5-tiny", ["sam"]), grid_size=2))
    feature_map = torch.randn(1, 3, 4, 4)
    grid = tower.to_grid(feature_map, pixel_unshuffle=2)  # 4x4 -> unshuffle -> 2x2, no resize needed
    for c in range(3):
        for i in range(2):
            for j in range(2):
                # channel c*4 + 2*i + j holds input channel c at sub-position (i, j); token y*2+x is cell (y, x)
                expected = feature_map[0, c, i::2, j::2].reshape(-1)
                torch.testing.assert_close(grid[0, :, c * 4 + 2 * i + j], expected)
    up = EagleVisionTower(EagleVisionConfig(experts=expert_specs("eagle-x5-tiny", ["sam"]), grid_size=3))
    line = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2).expand(1, 1, 2, 2)
    out = up.to_grid(line, pixel_unshuffle=1).view(3, 3)
    # align_corners=True: the corners are kept exactly and the middle column is the midpoint
    torch.testing.assert_close(out[0], torch.tensor([0.0, 0.5, 1.0]))


def _copy_into(target: torch.nn.Module, source_state: dict, skip=()) -> None:
    state = {k: v for k, v in source_state.items() if not any(k.startswith(s) for s in skip)}
    missing, unexpected = target.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert all("position_ids" in k for k in missing), missing


def test_clip_expert_agrees_with_clip_vision_model():
    expert, spec = build("clip", 42)  # the pretrained size: no interpolation
    reference = CLIPVisionModel(CLIPVisionConfig(**spec["config"])).eval()
    _copy_into(expert, reference.state_dict(), skip=("post_layernorm",))
    pixels = torch.randn(2, 3, 42, 42)
    with torch.no_grad():
        hidden = reference(pixels, output_hidden_states=True).hidden_states
        ours = expert(pixels)
        # CLIP drops CLS *before* pre_layrnorm; the per-token path is otherwise the model's own.
        embeddings = reference.embeddings(pixels)[:, 1:]
        manual = reference.pre_layrnorm(embeddings)
        for layer in reference.encoder.layers:
            manual = layer(manual, None)
    assert ours.shape == (2, 32, 3, 3)
    torch.testing.assert_close(ours.flatten(2).transpose(1, 2), manual)
    # and the CLS token really is gone: the model's own last layer (with CLS) differs
    assert not torch.allclose(hidden[-1][:, 1:], manual)


def test_convnext_expert_agrees_with_convnext_model_last_stage():
    expert, spec = build("convnext", 64)
    reference = ConvNextModel(ConvNextConfig(**spec["config"])).eval()
    for module in reference.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.eps = 1e-5
    _copy_into(expert, reference.state_dict(), skip=("layernorm.",))
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(pixels, output_hidden_states=True).hidden_states[-1]
        torch.testing.assert_close(expert(pixels), expected)
    assert all(m.eps == 1e-5 for m in expert.modules() if isinstance(m, torch.nn.LayerNorm))


def test_sam_expert_agrees_with_sam_vision_encoder_through_the_short_neck():
    expert, spec = build("sam", 64)
    reference = SamVisionEncoder(SamVisionConfig(**spec["config"])).eval()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.normal_(0, 0.1)
    _copy_into(expert, reference.state_dict(), skip=("neck.conv2", "neck.layer_norm2"))
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        hidden = reference.patch_embed(pixels) + reference.pos_embed
        for layer in reference.layers:
            hidden = layer(hidden)
        expected = reference.neck.layer_norm1(reference.neck.conv1(hidden.permute(0, 3, 1, 2)))
        torch.testing.assert_close(expert(pixels), expected, rtol=1e-5, atol=1e-5)


def test_pix2struct_expert_agrees_with_pix2struct_vision_model():
    expert, spec = build("pix2struct", 64)
    reference = Pix2StructVisionModel(Pix2StructVisionConfig(**spec["config"])).eval()
    _copy_into(expert, reference.state_dict())
    patches = pix2struct_patches(2, 20)  # 16 real (4x4) + 4 padding rows
    expert.max_patches, expert.side = 20, 4
    with torch.no_grad():
        expected = reference(flattened_patches=patches).last_hidden_state[:, :16]
        ours = expert(patches)
    torch.testing.assert_close(ours.flatten(2).transpose(1, 2), expected, rtol=1e-5, atol=1e-5)


def test_position_tables_keep_their_pretrained_size_at_any_resolution():
    for image_size in (56, 112):
        expert, _ = build("clip", image_size)
        assert expert.embeddings.position_embedding.weight.shape[0] == 10  # 3x3 + CLS, from the 42 px config
    for image_size in (64, 128):
        sam, _ = build("sam", image_size)
        assert sam.pos_embed.shape == (1, 4, 4, 32)
        eva, _ = build("eva02", image_size)
        assert eva.pos_embed.shape == (1, 5, 32)


# EAGLE-X5.md §7 and the README, in millions to 0.01 M: what the model uses (without CLIP's post_layernorm,
# ConvNeXt's classifier head and EVA's rotary tables, which are buffers).
EXPECTED_MILLIONS = {"clip": 303.51, "convnext": 843.39, "sam": 307.69, "eva02": 303.39, "pix2struct": 512.81}
EXPECTED_TOWER_MILLIONS = {"eagle-x5": 2270.79, "eagle-x4": 1963.10}


@pytest.mark.parametrize("preset", ["eagle-x5", "eagle-x4"])
def test_full_size_presets_match_the_released_parameter_counts(preset):
    config = eagle_config(preset)
    with torch.device("meta"):
        model = EagleForConditionalGeneration(config)
    tower = model.model.vision_tower
    names = list(tower.experts)
    assert names == (
        ["clip", "convnext", "sam", "eva02", "pix2struct"]
        if preset == "eagle-x5"
        else ["clip", "convnext", "eva02", "pix2struct"]
    )
    counts = {name: sum(p.numel() for p in expert.parameters()) for name, expert in tower.experts.items()}
    assert {name: round(n / 1e6, 2) for name, n in counts.items()} == {name: EXPECTED_MILLIONS[name] for name in names}
    assert sum(p.numel() for p in tower.parameters()) == sum(counts.values())  # nothing else in the tower
    assert round(sum(counts.values()) / 1e6, 2) == EXPECTED_TOWER_MILLIONS[preset]
    assert tower.hidden_size == (7680 if preset == "eagle-x5" else 6656)
    projector = sum(p.numel() for p in model.model.multi_modal_projector.parameters())
    # Linear(hidden_size, 4096) + Linear(4096, 4096), with biases: 48.2 M for X5 (EAGLE-X5.md §7).
    assert projector == tower.hidden_size * 4096 + 4096 + 4096 * 4096 + 4096
    if preset == "eagle-x5":
        assert round(projector / 1e6, 1) == 48.2
    assert config.image_seq_length == 1024
    assert all(spec["image_size"] == 448 for spec in config.vision_config.experts)


@pytest.mark.parametrize(("configured", "expected"), [(None, 1e-6), (1.0, 1.0)])
def test_convnext_layer_scale_starts_at_the_configured_value(configured, expected):
    spec = expert_specs("eagle-x5-tiny", ["convnext"])[0]
    if configured is not None:
        spec["config"]["layer_scale_init_value"] = configured
    tower = EagleVisionTower(EagleVisionConfig(experts=[spec], grid_size=4))  # weights from _init_weights
    scales = [p for name, p in tower.named_parameters() if name.endswith("layer_scale_parameter")]
    assert scales and all(torch.equal(p, torch.full_like(p, expected)) for p in scales)
