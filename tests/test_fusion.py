"""Fusion strategies chosen by config (issue 22): channel_concat (the released layout, unchanged), sequence_append and
cross_attention, each through the model, the processor's token count, saving, remote code with a pipeline, the three
training stages, `eagle init --fusion`, the model card, `eagle bench` and the quickstart's fusion ablation."""

import json
from pathlib import Path

import pytest
import torch
from conftest import chat, load_remotely, make_image, tiny_config, tiny_model
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from eagle_hub.cli import main
from eagle_hub.hub_cards.model_card import write_model_card
from eagle_hub.modeling_eagle import EagleConfig
from eagle_hub.modeling_eagle.hub_folder import build_processor, save_folder
from eagle_hub.modeling_eagle.modeling_eagle import FUSION_CLASSES
from eagle_hub.modeling_eagle.parts import learning_rate_group, part_of

HERE = Path(__file__).resolve().parent
FUSIONS = ["channel_concat", "sequence_append", "cross_attention"]
# eagle-x5-tiny: 5 experts on a 4x4 grid.
TOKENS = {"channel_concat": 16, "sequence_append": 5 * 16, "cross_attention": 16}


@pytest.fixture(scope="module", params=FUSIONS)
def fused(request, tokenizer):
    model = tiny_model(tokenizer, fusion=request.param)
    return request.param, model, build_processor(model.config, tokenizer)


def batch_inputs(processor):
    prompts = [
        processor.apply_chat_template(chat("What colour?"), add_generation_prompt=True),
        processor.apply_chat_template(chat("Which shape is drawn here, and where?"), add_generation_prompt=True),
    ]
    images = [make_image(), make_image(colour=(30, 30, 200), seed=1)]
    return processor(images=images, text=prompts, return_tensors="pt", padding=True)


def test_every_strategy_is_registered_and_described():
    assert list(FUSION_CLASSES) == FUSIONS
    for name, fusion_class in FUSION_CLASSES.items():
        assert fusion_class.fusion_type == name and fusion_class.summary


def test_forward_generate_and_token_counts_agree(fused):
    name, model, processor = fused
    tokens = TOKENS[name]
    assert model.config.image_seq_length == processor.num_image_tokens == tokens
    assert processor._get_num_multimodal_tokens(image_sizes=[(40, 48), (64, 64)]).num_image_tokens == [tokens] * 2
    inputs = batch_inputs(processor)
    assert (inputs["input_ids"] == model.config.image_token_id).sum(-1).tolist() == [tokens, tokens]
    with torch.no_grad():
        out = model(**inputs)
        features = model.get_image_features(inputs["pixel_values"])
    hidden = model.config.text_config.hidden_size
    assert [f.shape for f in features.pooler_output] == [(tokens, hidden)] * 2
    assert [f.shape for f in out.image_outputs.pooler_output] == [(tokens, hidden)] * 2
    assert torch.isfinite(out.logits).all()

    # The KV cache gives what recomputing the whole prompt gives, batched; beams run on the repeated images.
    cached = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    uncached = model.generate(**inputs, max_new_tokens=4, do_sample=False, use_cache=False)
    torch.testing.assert_close(cached, uncached, rtol=0, atol=0)
    beams = model.generate(**inputs, max_new_tokens=4, do_sample=False, num_beams=2)
    assert beams.shape == (2, inputs["input_ids"].shape[1] + 4)


def test_the_fusion_is_the_projector_part(fused):
    name, model, _ = fused
    names = [n for n, _ in model.named_parameters() if n.startswith("model.multi_modal_projector.")]
    assert names and {part_of(n) for n in names} == {"projector"}
    assert {learning_rate_group(n) for n in names} == {"projector"}


def test_save_and_load_round_trip_keeps_the_fusion_and_logits(fused, tmp_path):
    name, model, processor = fused
    folder = save_folder(tmp_path / name, processor, model=model)
    saved = json.loads((folder / "config.json").read_text())
    assert saved["fusion"]["type"] == name
    assert json.loads((folder / "processor_config.json").read_text())["num_image_tokens"] == TOKENS[name]
    for file in ("fusion_interface.py", "fusion_registry.py", *(f"fusion_{n}.py" for n in FUSIONS)):
        assert (folder / file).is_file(), file
    loaded = AutoModelForImageTextToText.from_pretrained(folder).eval()
    inputs = batch_inputs(processor)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)
    card = write_model_card(folder).read_text()
    assert f"Fusion: `{name}`" in card and f"Image tokens: {TOKENS[name]} per image" in card


@pytest.mark.parametrize("name", ["sequence_append", "cross_attention"])
def test_fresh_process_without_package_loads_through_remote_code_and_pipeline(name, tokenizer, tmp_path):
    model = tiny_model(tokenizer, fusion=name)
    processor = build_processor(model.config, tokenizer)
    folder = save_folder(tmp_path / name, processor, model=model)
    remote = load_remotely(folder, tmp_path)
    assert (remote["input_ids"] == model.config.image_token_id).sum() == TOKENS[name]
    inputs = {"input_ids": remote["input_ids"], "attention_mask": torch.ones_like(remote["input_ids"])}
    messages = chat("What colour?")

    image = Image.new("RGB", (48, 40), (20, 160, 40))
    inputs = processor(
        images=[image], text=[processor.apply_chat_template(messages, add_generation_prompt=True)], return_tensors="pt"
    )
    with torch.no_grad():
        torch.testing.assert_close(
            remote["AutoModelForImageTextToText.logits"], model(**inputs).logits, rtol=0, atol=0
        )
    assert "'role': 'assistant'" in remote["pipeline_chat"]
    assert remote["pipeline_batched"].count("'role': 'assistant'") == 2


def test_channel_concat_is_the_default_and_keeps_the_released_keys(tokenizer, tmp_path):
    default = tiny_config(tokenizer)
    assert default.fusion == {"type": "channel_concat", "options": {}}
    model = tiny_model(tokenizer)
    keys = [k for k in model.state_dict() if k.startswith("model.multi_modal_projector.")]
    assert keys == [f"model.multi_modal_projector.linear_{i}.{p}" for i in (1, 2) for p in ("weight", "bias")]
    # A config.json written before fusion strategies existed (no `fusion`) is channel_concat.
    raw = default.to_dict()
    raw.pop("fusion")
    assert EagleConfig.from_dict(raw).fusion["type"] == "channel_concat"


def test_the_config_checks_the_fusion_entry(tokenizer):
    with pytest.raises(ValueError, match=r"fusion.type is 'qformer'; choose one of channel_concat, sequence_append"):
        tiny_config(tokenizer, fusion="qformer")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['size'\] for cross_attention; use window, heads"):
        tiny_config(tokenizer, fusion={"type": "cross_attention", "options": {"size": 2}})
    with pytest.raises(ValueError, match=r"fusion.options.window is 0"):
        tiny_config(tokenizer, fusion={"type": "cross_attention", "options": {"window": 0}})
    with pytest.raises(ValueError, match="at least two experts"):
        tiny_config(tokenizer, experts=["clip"], fusion="cross_attention")
    config = tiny_config(tokenizer, fusion={"type": "sequence_append", "options": {"grid_size": 2}})
    assert config.image_seq_length == 5 * 4


def test_eagle_init_with_a_fusion_and_a_one_line_error_for_an_unknown_one(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["init", "--preset", "eagle-x5-tiny", "--output", "seq", "--fusion", "sequence_append"]) == 0
    config = json.loads((tmp_path / "seq" / "config.json").read_text())
    processor = json.loads((tmp_path / "seq" / "processor_config.json").read_text())
    assert config["fusion"]["type"] == "sequence_append" and processor["num_image_tokens"] == 80
    capsys.readouterr()
    assert main(["init", "--preset", "eagle-x5-tiny", "--output", "bad", "--fusion", "nope"]) == 2
    error = capsys.readouterr().err.strip()
    assert "unknown fusion 'nope'" in error and "sequence_append" in error and "\n" not in error
    assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------------------------------------- training


def changed(before: dict, after: dict, prefix: str) -> tuple[int, int]:
    keys = [k for k in after if k.startswith(prefix)]
    return sum(not torch.equal(before[k], after[k]) for k in keys), len(keys)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from eagle_hub.training.synth import generate

    folder = tmp_path_factory.mktemp("synthetic") / "data"
    generate(folder, n=16, seed=0, image_size=64)
    return folder


@pytest.mark.parametrize("name", ["sequence_append", "cross_attention"])
def test_three_stages_train_the_fusion_with_the_projector(name, synthetic, tmp_path):
    from eagle_hub.training.recipe import load_recipe
    from eagle_hub.training.runner import build_start, run_recipe

    recipe = load_recipe(HERE.parent / "training" / "recipes" / "tiny.yaml")
    recipe.data_root = str(synthetic)
    recipe.model["overrides"] = {"fusion": name}
    for stage in recipe.stages:
        stage.max_steps, stage.save_steps, stage.batch_size = 2, 2, 2
    output = tmp_path / "run"
    run_recipe(recipe, output)
    initial = build_start(recipe)[0].state_dict()
    stage1, stage2, stage3 = (
        load_file(output / s / "model.safetensors") for s in ("stage1-prealign", "stage2-align", "stage3-sft")
    )
    fusion, llm = "model.multi_modal_projector.", ("model.language_model.", "lm_head.")
    assert json.loads((output / "stage3-sft" / "config.json").read_text())["fusion"]["type"] == name

    # Stage 1: every expert with its own plain projector; the LLM bit for bit; the fusion module drawn afresh.
    for prefix in llm:
        assert changed(initial, stage1, prefix)[0] == 0, prefix
    for expert in ("clip", "convnext", "sam", "eva02", "pix2struct"):
        moved, total = changed(initial, stage1, f"model.vision_tower.experts.{expert}.")
        assert moved > total // 2, (expert, moved, total)
        single = load_file(output / "stage1-prealign" / "experts" / expert / "model.safetensors")
        assert sorted(k for k in single if k.startswith(fusion)) == [
            f"{fusion}linear_{i}.{p}" for i in (1, 2) for p in ("bias", "weight")
        ]
    moved, total = changed(initial, stage1, fusion)
    assert moved == total > 4

    # Stage 2: the whole fusion module trains, as the projector; nothing else moves.
    moved, total = changed(stage1, stage2, fusion)
    assert moved == total
    assert all(torch.equal(stage1[k], stage2[k]) for k in stage2 if not k.startswith(fusion))

    # Stage 3: everything.
    for prefix in (fusion, *llm, "model.vision_tower.experts."):
        moved, total = changed(stage2, stage3, prefix)
        assert moved > total // 2, (prefix, moved, total)


# ------------------------------------------------------------------------------------------ bench, quickstart


def test_bench_has_a_row_per_fusion_strategy():
    from eagle_hub.benchmarks import bench

    settings = bench.Settings.for_preset("small", device="cpu", repeats=1, quick=True)
    models = bench.build_models("small", torch.device("cpu"), torch.float32)
    rows = bench.measure_fusions(models, settings, torch.device("cpu"), torch.float32)
    assert [row["fusion"] for row in rows] == FUSIONS
    tokens = {row["fusion"]: row["tokens_per_image"] for row in rows}
    assert tokens == {"channel_concat": 64, "sequence_append": 5 * 64, "cross_attention": 64}
    assert all(row["tower_fusion_ms"] > 0 and row["prefill_ms"] > 0 for row in rows)
    printed = "\n".join(bench.fusion_lines(rows))
    assert "tower+fusion ms" in printed and all(name in printed for name in FUSIONS)


def test_quickstart_compares_fusions_on_the_same_data_and_budget(tmp_path):
    from eagle_hub.training.quickstart import Budget, format_report, quickstart

    with pytest.raises(ValueError, match=r"unknown fusion\(s\) \['nope'\] \(--fusions\)"):
        quickstart(tmp_path / "bad", fusions=["nope"])
    assert not (tmp_path / "bad").exists()
    budget = Budget(n_images=48, prealign_steps=1, align_steps=1, word_steps=1, sft_steps=2, batch_size=4)
    report = quickstart(tmp_path / "qs", budget=budget, fusions=["channel_concat", "sequence_append"])
    ablation = report["fusion_ablation"]
    assert list(ablation) == ["channel_concat", "sequence_append"]
    assert ablation["channel_concat"]["accuracy"] == report["accuracy"]
    assert ablation["channel_concat"]["image_tokens"] == 64 and ablation["sequence_append"]["image_tokens"] == 320
    assert set(ablation["sequence_append"]["accuracy"]) == set(report["accuracy"])
    recipe = (tmp_path / "qs" / "fusion-ablation" / "sequence_append.yaml").read_text()
    assert "fusion: sequence_append" in recipe
    # the trainers' time: some, and less than the quickstart's own run that holds it
    assert 0 < ablation["channel_concat"]["training_seconds"] < report["seconds"]
    assert ablation["sequence_append"]["training_seconds"] > 0
    assert "tokens/image" in format_report(report) and "train min" in format_report(report)


def test_training_seconds_counts_every_stage_and_each_pre_aligned_expert():
    from eagle_hub.training.quickstart import training_seconds

    summaries = {
        "stage1-prealign": {"clip": {"seconds": 1.5, "steps": 2}, "sam": {"seconds": 2.0, "steps": 2}},
        "stage2-align": {"seconds": 3.0, "losses": [1.0], "steps": 1},
        "stage3-sft": {"seconds": 0.25, "steps": 1},
    }
    assert training_seconds(summaries) == 6.75


def test_the_published_fusion_tables_are_the_recorded_run():
    """The README's and docs/fusion.md's fusion tables say what docs/fusion-quickstart.json (the measured
    `eagle quickstart --fusions all`) records: tokens per image, training minutes and each score to 0.1 point."""
    root = HERE.parent
    record = json.loads((root / "docs" / "fusion-quickstart.json").read_text())
    assert list(record["strategies"]) == list(FUSION_CLASSES)
    kinds = ["colour", "count", "position", "shape", "word"]
    expected = []
    for name, entry in record["strategies"].items():
        scores = [f"{entry['accuracy'][kind] * 100:.1f}%" for kind in kinds]
        average = sum(entry["accuracy"][kind] for kind in kinds) / len(kinds)
        minutes = f"{entry['training_seconds'] / 60:.1f}"
        expected.append([f"`{name}`", str(entry["image_tokens"]), minutes, *scores, f"{average * 100:.1f}%"])
    for page in ("README.md", "docs/fusion.md"):
        text = (root / page).read_text()
        section = text.split("| fusion | tokens/image |")[1].split("\n\n")[0]
        rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in section.splitlines()[2:]]
        assert rows == expected, page
        assert f"{record['wall_seconds'] / 60:.0f} min in all" in " ".join(text.split()), page


def test_cross_attention_mines_each_query_s_own_window_of_every_other_expert(tokenizer):
    """A change at one cell of another expert's finer map moves only the query token whose window holds that cell;
    every other expert is heard (the quickstart's unread words are not a windowing bug)."""
    fusion = tiny_model(tokenizer, fusion="cross_attention").model.multi_modal_projector
    grid, window = fusion.grid_size, fusion.window
    fine = grid * window
    generator = torch.Generator().manual_seed(0)
    maps = {fusion.query_name: torch.randn(1, grid * grid, fusion.query.in_features, generator=generator)}
    for name, layer in fusion.keys.items():
        maps[name] = torch.randn(1, fine * fine, layer.in_features, generator=generator)
    with torch.no_grad():
        base = fusion(maps)
        for name in fusion.keys:
            for row, col in [(0, 0), (fine - 1, 1), (3, fine - 2)]:
                changed = {**maps, name: maps[name].clone()}
                changed[name][0, row * fine + col] += 5.0
                moved = (fusion(changed) - base).abs().amax(-1)[0].nonzero().flatten().tolist()
                assert moved == [(row // window) * grid + col // window], (name, row, col, moved)
