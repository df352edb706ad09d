"""The DINOv2 expert (a candidate of the paper's expert search): shapes at several resolutions, agreement with
transformers' Dinov2Model at and away from the pretrained grid, the position table, the tower, initialisation,
gradients, a save/load round trip, the image processor's input, and the full-size parameter count on meta."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, Dinov2Config, Dinov2Model

from eagle_hub.modeling_eagle.configuration_eagle import EXPERT_TYPES, EagleVisionConfig
from eagle_hub.modeling_eagle.expert_dinov2 import Dinov2Expert
from eagle_hub.modeling_eagle.image_processing_eagle import EagleImageProcessor
from eagle_hub.modeling_eagle.modeling_eagle import EXPERT_CLASSES, EagleForConditionalGeneration, EagleVisionTower
from eagle_hub.modeling_eagle.presets import IMAGENET_MEAN, IMAGENET_STD, eagle_config, expert_specs


def build(image_size: int | None = None, preset: str = "eagle-x5-tiny", seed: int = 0) -> tuple[Dinov2Expert, dict]:
    spec = EagleVisionConfig(experts=expert_specs(preset, ["dinov2"], image_size=image_size)).experts[0]
    torch.manual_seed(seed)
    return EXPERT_CLASSES["dinov2"](spec).eval(), spec


def reference_with_our_weights(expert: Dinov2Expert) -> Dinov2Model:
    """transformers' Dinov2Model with the expert's (randomised) weights: the keys are the model's own."""
    with torch.no_grad():
        for parameter in expert.parameters():
            parameter.normal_(0, 0.2)
    reference = Dinov2Model(Dinov2Config(**expert.spec["config"])).eval()
    missing, unexpected = reference.load_state_dict(expert.state_dict(), strict=False)
    assert missing == ["embeddings.mask_token"] and not unexpected  # the mask token is pretraining-only
    return reference


def test_dinov2_is_an_expert_type_with_its_class():
    assert "dinov2" in EXPERT_TYPES and EXPERT_CLASSES["dinov2"] is Dinov2Expert
    assert Dinov2Expert.no_split_modules == ("Dinov2Layer",)


@pytest.mark.parametrize("image_size", [42, 56, 64, 98, 128])
def test_output_shape_matches_feature_map_size(image_size):
    expert, spec = build(image_size)
    with torch.no_grad():
        out = expert(torch.randn(2, 3, image_size, image_size))
    assert out.shape == (2, 32, *expert.feature_map_size()) == (2, 32, image_size // 14, image_size // 14)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("image_size", [42, 56, 98])
def test_agrees_with_dinov2_model_patch_tokens_at_and_away_from_the_pretrained_grid(image_size):
    """42 px is the tiny preset's pretrained 3x3 grid (table used as is); 56 and 98 px interpolate it, as
    Dinov2Model's interpolate_pos_encoding does (bicubic in float32)."""
    expert, _ = build(image_size)
    reference = reference_with_our_weights(expert)
    pixels = torch.randn(2, 3, image_size, image_size)
    with torch.no_grad():
        expected = reference(pixels).last_hidden_state[:, 1:]  # after the final LayerNorm, CLS dropped
        ours = expert(pixels)
    torch.testing.assert_close(ours.flatten(2).transpose(1, 2), expected, rtol=1e-5, atol=1e-5)


def test_position_table_keeps_its_pretrained_size_and_is_exact_at_it():
    for image_size in (56, 112):
        expert, _ = build(image_size)
        assert expert.embeddings.position_embeddings.shape == (1, 10, 32)  # 3x3 + CLS, from the 42 px config
    expert, _ = build(42)
    reference = reference_with_our_weights(expert)
    pixels = torch.randn(1, 3, 42, 42)
    with torch.no_grad():
        torch.testing.assert_close(
            expert(pixels).flatten(2).transpose(1, 2), reference(pixels).last_hidden_state[:, 1:], rtol=0, atol=0
        )


def test_tower_brings_dinov2_to_the_grid_beside_another_expert():
    specs = expert_specs("eagle-x5-tiny", ["clip", "dinov2"])
    tower = EagleVisionTower(EagleVisionConfig(experts=specs, grid_size=3)).eval()
    inputs = [torch.randn(2, 3, s["image_size"], s["image_size"]) for s in tower.config.experts]
    with torch.no_grad():
        out = tower(inputs, return_expert_features=True)
    assert tower.expert_channels() == {"clip": 32, "dinov2": 32}
    assert out.last_hidden_state.shape == (2, 9, 64)
    assert out.expert_features["dinov2"].shape == (2, 9, 32)


def test_initialisation_sets_layer_scales_and_draws_position_and_cls_tables():
    spec = expert_specs("eagle-x5-tiny", ["dinov2"])[0]
    spec["config"]["layerscale_value"] = 0.5
    tower = EagleVisionTower(EagleVisionConfig(experts=[spec], grid_size=4))  # weights from _init_weights
    expert = tower.experts["dinov2"]
    scales = [p for name, p in expert.named_parameters() if name.endswith("lambda1")]
    assert len(scales) == 4 and all(torch.equal(p, torch.full_like(p, 0.5)) for p in scales)
    for table in (expert.embeddings.position_embeddings, expert.embeddings.cls_token):
        assert 0 < table.std() < 0.1  # truncated normal at the initializer range (0.02), not zeros or randn
    assert not hasattr(expert.embeddings, "mask_token") or expert.embeddings.mask_token is None


def test_backward_reaches_every_dinov2_parameter_in_an_eagle(tokenizer):
    config = eagle_config(
        "eagle-x5-tiny",
        experts=["clip", "dinov2"],
        vocab_size=len(tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(0)
    model = EagleForConditionalGeneration(config).train()
    tokens = torch.tensor([[1, *([config.image_token_id] * 16), 5, 6, 7]])
    pixel_values = [torch.randn(1, 3, s["image_size"], s["image_size"]) for s in config.vision_config.experts]
    labels = tokens.masked_fill(tokens == config.image_token_id, -100)
    loss = model(input_ids=tokens, pixel_values=pixel_values, labels=labels).loss
    loss.backward()
    for name, parameter in model.model.vision_tower.experts["dinov2"].named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    pixels = torch.randn(2, 3, 56, 56)
    for checkpointing in (False, True):
        tower = EagleVisionTower(EagleVisionConfig(experts=expert_specs("eagle-x5-tiny", ["dinov2"]), grid_size=4))
        tower.experts["dinov2"].load_state_dict(build(seed=1)[0].state_dict())
        tower.train()
        if checkpointing:
            tower.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            layers = tower.experts["dinov2"].encoder.layer
            assert all(layer.gradient_checkpointing for layer in layers)
        tower([pixels]).last_hidden_state.square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in tower.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


def test_save_and_load_round_trip_keeps_weights_and_ships_the_expert_code(tmp_path, tokenizer):
    config = eagle_config(
        "eagle-x5-tiny",
        experts=["dinov2"],
        vocab_size=len(tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(0)
    model = EagleForConditionalGeneration(config).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "expert_dinov2.py").is_file()
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0, msg=key)


def test_image_processor_gives_dinov2_its_own_size_and_imagenet_normalisation():
    spec = expert_specs("eagle-x5-tiny", ["dinov2"])[0]
    entry = {key: spec[key] for key in ("name", "type", "image_size", "image_mean", "image_std")}
    processor = EagleImageProcessor(experts=[entry], resize_mode="resize")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8))
    got = processor(image, return_tensors="pt")["pixel_values"][0]
    assert got.shape == (1, 3, 56, 56)
    resized = np.asarray(image.resize((56, 56), Image.BICUBIC)).astype(np.float64) / 255.0
    want = ((resized - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).transpose(2, 0, 1)
    np.testing.assert_allclose(got[0].numpy(), want, atol=1e-5)


# facebook/dinov2-large (DINOv2 ViT-L/14, also torch.hub's dinov2_vitl14) has 304,368,640 parameters: 343 tensors,
# a 37x37 + CLS position table. The expert leaves out the 1,024-value mask token used only by masked pretraining.
RELEASED_DINOV2_LARGE = 304_368_640
DINOV2_LARGE_CONFIG = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "mlp_ratio": 4,
    "patch_size": 14,
    "image_size": 518,
    "layerscale_value": 1.0,
    "layer_norm_eps": 1e-6,
    "hidden_act": "gelu",
    "qkv_bias": True,
    "use_swiglu_ffn": False,
}


def test_full_size_dinov2_matches_the_released_vit_l14_parameter_count():
    config = eagle_config("eagle-x5", experts=["clip", "dinov2"])
    with torch.device("meta"):
        model = EagleForConditionalGeneration(config)
        released = Dinov2Model(Dinov2Config(**DINOV2_LARGE_CONFIG))
    expert = model.model.vision_tower.experts["dinov2"]
    count = sum(p.numel() for p in expert.parameters())
    assert sum(p.numel() for p in released.parameters()) == RELEASED_DINOV2_LARGE
    assert count == RELEASED_DINOV2_LARGE - 1024  # all but the mask token
    assert abs(count / 1e6 - 304.37) < 0.01
    assert set(expert.state_dict()) == set(released.state_dict()) - {"embeddings.mask_token"}
    assert expert.embeddings.position_embeddings.shape == (1, 37 * 37 + 1, 1024)
    # At the presets' 448 px the 14 px patches give a 32x32 map: the shared grid, no resampling.
    assert expert.feature_map_size() == (32, 32) and config.vision_config.grid_size == 32
    assert model.model.vision_tower.expert_channels()["dinov2"] == 1024
