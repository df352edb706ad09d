"""Fidelity against the authors' own numbers: convert nveagle-reference-x5 and reproduce every reference tensor
from the image file through the processor's released mode."""

import json

import pytest
import torch
from conftest import require_reference
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from eagle_hub.modeling_eagle.convert_nveagle import convert


@pytest.fixture(scope="module")
def case():
    return require_reference("nveagle-reference-x5")


@pytest.fixture(scope="module")
def converted(case, tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference") / "eagle-x5-reference"
    report = convert(case / "checkpoint", folder)
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    meta = json.loads((case / "reference" / "reference.json").read_text())
    inputs = processor(
        images=[Image.open(case / "reference" / "image.png")], text=[meta["prompt"]], return_tensors="pt"
    )
    return {
        "report": report,
        "model": model,
        "inputs": inputs,
        "meta": meta,
        "ref": load_file(case / "reference" / "reference.safetensors"),
    }


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.float() - expected).abs().max() / expected.abs().max())


def test_every_source_tensor_is_accounted_for(converted):
    report = converted["report"]
    dropped = {why: len(keys) for why, keys in report.dropped.items()}
    assert report.source_tensors == 284
    assert report.converted + sum(dropped.values()) == report.source_tensors
    assert dropped == {
        "CLIP post_layernorm (unused by Eagle)": 2,
        "ConvNeXt classifier head (unused)": 4,
        "EVA per-block rope copies (duplicates of rope_win/rope_glb)": 6,
    }


def test_prompt_tokenises_to_the_original_ids(converted):
    ids, image_id = converted["inputs"]["input_ids"][0].tolist(), converted["model"].config.image_token_id
    collapsed = []
    for token in ids:
        if token != image_id:
            collapsed.append(token)
        elif not collapsed or collapsed[-1] != -200:
            collapsed.append(-200)
    assert collapsed == converted["meta"]["input_ids"]
    assert ids.count(image_id) == 1024


def test_released_preprocessing_reproduces_the_reference_inputs(converted):
    pixel_values, ref = converted["inputs"]["pixel_values"], converted["ref"]
    assert relative_error(pixel_values[0], ref["clip_input"]) <= 1e-4
    for i in (1, 2, 3):
        assert relative_error(pixel_values[i], ref["pixel_1024"]) <= 1e-4
    assert relative_error(pixel_values[4], ref["pix2struct_flattened_patches"]) <= 1e-4


def test_every_expert_the_tower_and_the_projector_match(converted):
    model, ref = converted["model"], converted["ref"]
    with torch.no_grad():
        tower = model.model.vision_tower(converted["inputs"]["pixel_values"], return_expert_features=True)
        projected = model.model.multi_modal_projector(tower.last_hidden_state)
    names = ["clip", "convnext", "sam", "det", "pix2struct"]
    for (ours, features), name, index in zip(tower.expert_features.items(), names, range(5)):
        assert relative_error(features, ref[f"grid_{index}_{name}"]) <= 1e-4, ours
    assert relative_error(tower.last_hidden_state, ref["tower_output"]) <= 1e-4
    assert relative_error(projected, ref["projector_output"]) <= 1e-4


def test_logits_and_greedy_continuation_match(converted):
    model, ref, inputs = converted["model"], converted["ref"], converted["inputs"]
    vocab = ref["logits"].shape[-1]
    with torch.no_grad():
        logits = model(**inputs).logits
    assert relative_error(logits[..., :vocab], ref["logits"]) <= 1e-3
    generated = model.generate(
        **inputs, max_new_tokens=8, do_sample=False, output_logits=True, return_dict_in_generate=True
    )
    assert generated.sequences[0, -8:].tolist() == ref["generated_ids"][0].tolist()
    step_logits = torch.stack(generated.logits, dim=1)[..., :vocab]
    assert relative_error(step_logits, ref["generate_step_logits"]) <= 1e-3


@pytest.mark.parametrize("ci", [True, False], ids=["CI=true", "local"])
def test_a_missing_reference_fails_under_ci_and_skips_locally(ci, tmp_path, monkeypatch):
    import conftest

    monkeypatch.setattr(conftest, "REFERENCE", tmp_path / "shared" / "reference")
    monkeypatch.setattr(conftest, "IN_CI", ci)
    outcome = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(outcome, match=r"reference data is missing: .*nveagle-reference-x5"):
        conftest.require_reference("nveagle-reference-x5")
    (tmp_path / "shared" / "reference" / "nveagle-reference-x5").mkdir(parents=True)
    assert (
        conftest.require_reference("nveagle-reference-x5")
        == tmp_path / "shared" / "reference" / "nveagle-reference-x5"
    )
