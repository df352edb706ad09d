"""Fidelity against the authors' own numbers: convert nveagle-reference-x5 and reproduce every reference tensor
from the image file through the processor's released mode.

Every comparison is the max abs difference relative to the reference tensor's max abs value (the weights are
small and random, so an absolute bound would mean something different for every tensor). Measured on this case
(CPU, float32, torch 2.13 at 1 and 2 threads and at the AVX512, AVX2 and default kernels), worst over those runs:

    tensor                                   relative     absolute
    clip_input                               1.1e-7       2.4e-7
    pixel_1024 (ConvNeXt, SAM, EVA inputs)   0            0
    pix2struct_flattened_patches             1.6e-8       7.2e-7
    raw_clip                                 2.5e-7       1.2e-6
    raw_sam_neck                             6.0e-7       2.4e-6
    raw_det                                  6.4e-7       3.1e-6
    raw_pix2struct_last_hidden_state[:2025]  4.8e-7       1.9e-6
    grid_0_clip                              2.7e-7       1.2e-6
    grid_1_convnext                          7.1e-7       1.4e-6
    grid_2_sam                               6.0e-7       2.4e-6
    grid_3_det                               5.4e-7       2.4e-6
    grid_4_pix2struct                        4.6e-7       1.4e-6
    tower_output                             5.6e-7       2.4e-6
    projector_output                         5.7e-7       2.5e-7
    llm_inputs_embeds                        5.7e-7       2.5e-7
    logits                                   6.6e-7       9.5e-7
    generate_step_logits                     5.1e-7       5.7e-7

The tolerances below are those figures with a small margin. The ``alt_fp32rope.*`` tensors (EVA's rope tables
recomputed in fp32 instead of loaded from the bf16 checkpoint) lie 2.0e-5 (logits) to 6.8e-5 (raw_det) of scale
from the reference, ten times the tolerance or more, so a converter that recomputes the tables fails here.
"""

import json

import pytest
import torch
from conftest import require_reference
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from eagle_hub.modeling_eagle.convert_nveagle import convert

# Max |ours - reference| / max |reference|:
INPUT_TOLERANCE = 2.5e-7  # preprocessed pixels and patches (measured <= 1.1e-7: one float32 rounding)
TOLERANCE = 2e-6  # every model tensor: raw experts, grids, tower, projector, embeddings, logits (measured <= 7.1e-7)
# Wrong-converter check: ours must be this many times farther from alt_fp32rope.* than from the reference
# (measured 33x for logits, 46x projector, 88x grid_3_det, 116x raw_det).
SEPARATION = 10
# The alternative tensors the separation is checked on: the ones the rope rounding moves by more than TOLERANCE.
# (alt_fp32rope.generate_step_logits differs from the reference by only 1.5e-6 of scale: the last positions barely
# see the image, so it cannot tell the two converters apart and is not used.)
ALTERNATIVES = ("raw_det", "grid_3_det", "projector_output", "logits")
EXPERT_NAMES = ["clip", "convnext", "sam", "det", "pix2struct"]


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


def forward_everything(model, inputs) -> dict[str, torch.Tensor]:
    """Every tensor the reference holds, computed by the converted model, under the reference's names."""
    pixel_values = inputs["pixel_values"]
    experts = model.model.vision_tower.experts
    vocab = model.config.image_token_id  # the source vocabulary; the image token's row is appended after it
    out = {}
    with torch.no_grad():
        raw = {name: expert(pixels) for (name, expert), pixels in zip(experts.items(), pixel_values)}
        out["raw_clip"] = raw["clip"].flatten(2).transpose(1, 2)  # (1, 576, C) tokens
        out["raw_sam_neck"] = raw["sam"].permute(0, 2, 3, 1)  # (1, 64, 64, C), channels last as the original
        out["raw_det"] = raw["eva02"]
        # The original keeps the first 2025 of the 2048 rows (the real patches); so does the expert.
        out["raw_pix2struct_last_hidden_state"] = raw["pix2struct"].flatten(2).transpose(1, 2)
        tower = model.model.vision_tower(pixel_values, return_expert_features=True)
        assert list(tower.expert_features) == list(experts)
        for index, (name, features) in enumerate(zip(EXPERT_NAMES, tower.expert_features.values())):
            out[f"grid_{index}_{name}"] = features
        out["tower_output"] = tower.last_hidden_state
        out["projector_output"] = model.model.multi_modal_projector(tower.last_hidden_state)

        captured = {}
        hook = model.model.language_model.register_forward_pre_hook(
            lambda module, args, kwargs: captured.update(embeds=kwargs["inputs_embeds"].detach().clone()),
            with_kwargs=True,
        )
        try:
            out["logits"] = model(**inputs).logits[..., :vocab]
        finally:
            hook.remove()
        out["llm_inputs_embeds"] = captured["embeds"]
    return out


@pytest.fixture(scope="module")
def ours(converted):
    return forward_everything(converted["model"], converted["inputs"])


def errors(actual: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    """(max abs difference relative to the reference's max abs, the max abs difference)."""
    actual = actual.float()
    if expected.shape[1] == 2048 and actual.shape[1] == 2025:
        expected = expected[:, :2025]  # Pix2Struct's padding rows are not part of Eagle's output
    assert actual.shape == expected.shape
    absolute = float((actual - expected).abs().max())
    return absolute / float(expected.abs().max()), absolute


def assert_matches(name: str, actual: torch.Tensor, expected: torch.Tensor, tolerance: float) -> None:
    relative, absolute = errors(actual, expected)
    print(f"{name}: {relative:.2e} of scale ({absolute:.2e} absolute), tolerance {tolerance:.1e}")
    assert relative <= tolerance, f"{name}: {relative:.2e} of scale ({absolute:.2e} absolute) > {tolerance:.1e}"


def test_every_source_tensor_is_accounted_for(converted, case):
    report = converted["report"]
    dropped = {why: len(keys) for why, keys in report.dropped.items()}
    assert report.source_tensors == 284
    assert report.converted + sum(dropped.values()) == report.source_tensors
    assert dropped == {
        "CLIP post_layernorm (unused by Eagle)": 2,
        "ConvNeXt classifier head (unused)": 4,
        "EVA per-block rope copies (duplicates of rope_win/rope_glb)": 6,
    }
    assert report.source == case / "checkpoint"
    assert report.config.image_token_id == 1000


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
    assert_matches("clip_input", pixel_values[0], ref["clip_input"], INPUT_TOLERANCE)
    for i, name in zip((1, 2, 3), ("convnext", "sam", "det")):
        assert_matches(f"pixel_1024 ({name})", pixel_values[i], ref["pixel_1024"], INPUT_TOLERANCE)
    assert_matches(
        "pix2struct_flattened_patches", pixel_values[4], ref["pix2struct_flattened_patches"], INPUT_TOLERANCE
    )


@pytest.mark.parametrize("name", ["raw_clip", "raw_sam_neck", "raw_det", "raw_pix2struct_last_hidden_state"])
def test_every_expert_output_matches_before_the_grid(ours, converted, name):
    assert_matches(name, ours[name], converted["ref"][name], TOLERANCE)


@pytest.mark.parametrize(
    "name", [f"grid_{i}_{name}" for i, name in enumerate(EXPERT_NAMES)] + ["tower_output", "projector_output"]
)
def test_every_expert_on_the_grid_the_tower_and_the_projector_match(ours, converted, name):
    assert_matches(name, ours[name], converted["ref"][name], TOLERANCE)


@pytest.mark.parametrize("name", ["llm_inputs_embeds", "logits"])
def test_llm_inputs_and_logits_match(ours, converted, name):
    assert_matches(name, ours[name], converted["ref"][name], TOLERANCE)


def test_greedy_continuation_and_its_step_logits_match(converted):
    model, ref, inputs = converted["model"], converted["ref"], converted["inputs"]
    generated = model.generate(
        **inputs, max_new_tokens=8, do_sample=False, output_logits=True, return_dict_in_generate=True
    )
    assert generated.sequences[0, -8:].tolist() == ref["generated_ids"][0].tolist()
    step_logits = torch.stack(generated.logits, dim=1)[..., : ref["logits"].shape[-1]]
    assert_matches("generate_step_logits", step_logits, ref["generate_step_logits"], TOLERANCE)


@pytest.mark.parametrize("name", ALTERNATIVES)
def test_output_is_clearly_farther_from_the_fp32_rope_alternative(ours, converted, name):
    """The reference ships alt_fp32rope.* for this: what a converter that recomputes EVA's rope tables in fp32
    (instead of loading the bf16-rounded ones) computes. Ours must be the loaded-tables model, by a clear margin."""
    ref, alternative = converted["ref"][name], converted["ref"][f"alt_fp32rope.{name}"]
    to_reference, _ = errors(ours[name], ref)
    to_alternative, absolute = errors(ours[name], alternative)
    print(f"{name}: {to_reference:.2e} of scale from the reference, {to_alternative:.2e} ({absolute:.2e}) from alt")
    # The alternative itself would fail the fidelity tolerance by a wide margin...
    assert errors(alternative, ref)[0] > 5 * TOLERANCE
    # ... and ours is much closer to the reference than to it.
    assert to_alternative > 5 * TOLERANCE
    assert to_alternative >= SEPARATION * to_reference, (to_reference, to_alternative)


def test_recomputing_the_rope_tables_would_be_caught(converted, ours):
    """Simulate the wrong converter: the same model with EVA's rope tables recomputed in fp32 reproduces
    alt_fp32rope.* (within TOLERANCE) and fails the reference by far more than TOLERANCE."""
    model, ref = converted["model"], converted["ref"]
    eva = model.model.vision_tower.experts["eva02"]
    tables = [eva.rope_win, eva.rope_glb]
    stored = [(table.freqs_cos.clone(), table.freqs_sin.clone()) for table in tables]
    try:
        for table in tables:
            cos, sin = table.formula()  # what a converter that drops the stored tables gets: fp32, exact
            assert 0 < (cos - table.freqs_cos).abs().max() < 4e-3  # the stored tables are these, rounded to bf16
            table.freqs_cos.copy_(cos)
            table.freqs_sin.copy_(sin)
        wrong = forward_everything(model, converted["inputs"])
    finally:
        for table, (cos, sin) in zip(tables, stored):
            table.freqs_cos.copy_(cos)
            table.freqs_sin.copy_(sin)
    for name in ALTERNATIVES:
        assert_matches(
            f"recomputed tables vs alt_fp32rope.{name}", wrong[name], ref[f"alt_fp32rope.{name}"], TOLERANCE
        )
        assert errors(wrong[name], ref[name])[0] > 5 * TOLERANCE, name
    with torch.no_grad():
        assert torch.equal(eva(converted["inputs"]["pixel_values"][3]), ours["raw_det"])  # tables restored


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
