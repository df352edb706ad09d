"""EagleConfig: presets, validation with errors that name the field, serialisation."""

import pytest
from transformers import AutoConfig

from eagle_hub.modeling_eagle.configuration_eagle import EagleConfig, EagleVisionConfig
from eagle_hub.modeling_eagle.presets import PRESETS, eagle_config, expert_specs


def test_presets_have_the_documented_experts_and_grid():
    x5 = eagle_config("eagle-x5")
    assert x5.vision_config.expert_names == ["clip", "convnext", "sam", "eva02", "pix2struct"]
    assert eagle_config("eagle-x4").vision_config.expert_names == ["clip", "convnext", "eva02", "pix2struct"]
    assert x5.vision_config.grid_size == 32 and x5.image_seq_length == 1024
    assert x5.text_config.hidden_size == 4096 and x5.text_config.num_hidden_layers == 32
    assert x5.projector_type == "mlp2x_gelu"
    assert [s["pixel_unshuffle"] for s in x5.vision_config.experts] == [1, 1, 2, 1, 1]
    assert x5.vision_config.experts[-1]["max_patches"] == 28 * 28  # 448 px in 16 px patches
    assert set(PRESETS) >= {"eagle-x5", "eagle-x4", "eagle-x5-tiny", "eagle-x4-tiny"}


def test_default_config_is_the_eagle_x5_preset():
    """`EagleConfig()` builds from defaults, as transformers' configs do: Eagle-X5-7B with the image token appended."""
    default = EagleConfig()
    assert default.to_dict() == eagle_config("eagle-x5").to_dict()
    assert default.image_token_id == 32000 and default.text_config.vocab_size == 32001
    assert EagleVisionConfig().experts == default.vision_config.experts


def test_round_trip_through_dict_and_auto_config(tmp_path):
    config = eagle_config("eagle-x5-tiny", vocab_size=300, image_token_id=7, experts=["sam", "clip"])
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, EagleConfig) and isinstance(loaded.vision_config, EagleVisionConfig)
    assert loaded.vision_config.experts == config.vision_config.experts
    assert loaded.image_token_id == 7 and loaded.image_token_index == 7
    assert loaded.text_config.vocab_size == 300


@pytest.mark.parametrize(
    "change, message",
    [
        ({"grid_size": 100000}, "grid_size is 100000"),
        ({"experts": []}, "experts is empty"),
        ({"experts": [{"type": "vit", "image_size": 64}]}, r"experts\[0\].type is 'vit'"),
        (
            {"experts": [{"type": "clip", "image_size": 10**6, "image_mean": [0] * 3, "image_std": [1] * 3}]},
            r"experts\[0\].image_size is 1000000",
        ),
        ({"experts": [{"type": "clip", "image_size": 64}]}, r"experts\[0\].image_mean must be a list of 3"),
        ({"experts": [{"type": "pix2struct", "image_size": 64, "max_patches": 10**9}]}, "max_patches"),
    ],
)
def test_bad_vision_configs_name_the_field(change, message):
    specs = expert_specs("eagle-x5-tiny", ["clip"])
    kwargs = {"experts": specs, **change}
    with pytest.raises(ValueError, match=message):
        EagleVisionConfig(**kwargs)


def test_duplicated_expert_names_and_bad_projector_and_token_are_refused():
    specs = expert_specs("eagle-x5-tiny", ["clip", "clip"])
    with pytest.raises(ValueError, match="duplicated names"):
        EagleVisionConfig(experts=specs)
    vision = {"experts": expert_specs("eagle-x5-tiny", ["clip"])}
    with pytest.raises(ValueError, match="projector_type"):
        EagleConfig(vision_config=vision, projector_type="qformer")
    with pytest.raises(ValueError, match="outside the text model's vocabulary"):
        EagleConfig(vision_config=vision, text_config={"model_type": "llama", "vocab_size": 10}, image_token_id=50)
    with pytest.raises(ValueError, match="unknown preset"):
        eagle_config("eagle-x9")
