"""Model cards: valid Hub metadata (YAML round trip, ModelCardData validation, model-index from eval results),
parameter counts read from the folder, training stages, and usage snippets that run against the local folder."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import make_image
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from eagle_hub.hub_cards.model_card import (
    CardError,
    card_snippets,
    converted_model_card,
    model_card_for_folder,
    parameter_counts,
    write_model_card,
)

ROOT = Path(__file__).resolve().parents[1]
REPO_ID = "eagle-org/eagle-x5-tiny"
EVAL = {
    "task": {"type": "visual-question-answering", "name": "Visual question answering"},
    "dataset": {"name": "Synthetic shapes", "type": "synthetic-shapes", "split": "test"},
    "metrics": [
        {"name": "Accuracy", "type": "accuracy", "value": 0.97},
        {"name": "Exact match", "type": "exact_match", "value": 0.91},
    ],
}
TRAINING = {
    "base_model": ["lmsys/vicuna-7b-v1.5"],
    "datasets": ["liuhaotian/LLaVA-Pretrain"],
    "stages": [
        {"name": "stage2-align", "kind": "align", "train": ["projector"], "data": "captions (hf)", "max_steps": 8},
        {
            "name": "stage3-sft",
            "kind": "sft",
            "train": ["experts", "projector", "llm"],
            "data": "sft.json (llava)",
            "datasets": ["liuhaotian/LLaVA-Instruct-150K"],
            "max_steps": 8,
            "batch_size": 4,
            "lr": {"projector": 0.002, "llm": 0.002},
            "final_loss": 1.2345,
        },
    ],
}


@pytest.fixture
def folder(saved_folder, tmp_path):
    """A private copy of the tiny saved folder (tests write cards and JSON files into it)."""
    return Path(shutil.copytree(saved_folder, tmp_path / "eagle-x5-tiny"))


def metadata(card) -> dict:
    return yaml.safe_load(str(card).split("---")[1])


def test_card_metadata_is_valid_and_round_trips(folder):
    card = model_card_for_folder(folder, repo_id=REPO_ID)
    meta = metadata(card)
    assert meta["pipeline_tag"] == "image-text-to-text"
    assert meta["library_name"] == "transformers"
    assert meta["license"]
    experts = json.loads((folder / "config.json").read_text())["vision_config"]["experts"]
    assert {"custom_code", "eagle", *(spec["type"] for spec in experts)} <= set(meta["tags"])
    # The YAML parses back into the same ModelCardData, and validates without ignoring errors.
    assert ModelCard(str(card)).data.to_dict() == card.data.to_dict()
    ModelCardData(ignore_metadata_errors=False, **meta)
    # Saved and loaded from disk, as the Hub and `eagle push` read it.
    path = write_model_card(folder, repo_id=REPO_ID)
    assert ModelCard.load(path).data.to_dict() == card.data.to_dict()
    text = str(card)
    for spec in experts:
        assert f"| {spec['name']} |" in text
    assert "## Limitations" in text and "random weights" in text


def test_parameter_counts_come_from_the_folder(folder, model):
    counts = parameter_counts(folder)
    assert counts["source"] == "safetensors"
    tower = model.model.vision_tower
    for name, expert in tower.experts.items():
        assert counts["experts"][name] == sum(p.numel() for p in expert.parameters())
    assert counts["projector"] == sum(p.numel() for p in model.model.multi_modal_projector.parameters())
    llm = sum(p.numel() for p in model.model.language_model.parameters()) + model.lm_head.weight.numel()
    assert counts["llm"] == llm
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    card = str(model_card_for_folder(folder))
    assert f"({counts['total']:,})" in card
    # Without weights (a config-only folder) the counts come from the config, and agree.
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    assert {k: v for k, v in parameter_counts(folder).items() if k != "source"} == {
        k: v for k, v in counts.items() if k != "source"
    }


def test_eval_results_become_the_model_index(folder):
    (folder / "eval_results.json").write_text(json.dumps(EVAL))
    path = write_model_card(folder, repo_id=REPO_ID)
    meta = metadata(path.read_text())
    (entry,) = meta["model-index"]
    assert entry["name"] == "eagle-x5-tiny"
    (result,) = entry["results"]
    assert result["task"]["type"] == "visual-question-answering"
    assert result["dataset"] == {"name": "Synthetic shapes", "type": "synthetic-shapes", "split": "test"}
    assert [(m["type"], m["value"]) for m in result["metrics"]] == [("accuracy", 0.97), ("exact_match", 0.91)]
    loaded = ModelCard.load(path).data.eval_results
    assert all(isinstance(r, EvalResult) for r in loaded)
    assert [(r.metric_type, r.metric_value, r.dataset_split) for r in loaded] == [
        ("accuracy", 0.97, "test"),
        ("exact_match", 0.91, "test"),
    ]
    assert "| Visual question answering | Synthetic shapes | test | Accuracy | 0.97 |" in path.read_text()


@pytest.mark.parametrize(
    "broken, field",
    [
        ({"metrics": [{"type": "accuracy", "value": 1}]}, "'dataset'"),
        ({"dataset": {"name": "x", "type": "y"}, "metrics": []}, "'metrics'"),
        ({"dataset": {"name": "x", "type": "y"}, "metrics": [{"name": "acc"}]}, "metrics[0]"),
    ],
)
def test_a_bad_eval_file_names_the_field(folder, broken, field):
    (folder / "eval_results.json").write_text(json.dumps(broken))
    with pytest.raises(CardError, match=field.replace("[", r"\[").replace("]", r"\]")):
        model_card_for_folder(folder)


def test_training_record_fills_stages_datasets_and_base_model(folder):
    write_model_card(folder, repo_id=REPO_ID, training=TRAINING)
    assert json.loads((folder / "training.json").read_text()) == TRAINING  # kept for later cards
    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model == ["lmsys/vicuna-7b-v1.5"]
    assert card.data.datasets == ["liuhaotian/LLaVA-Pretrain", "liuhaotian/LLaVA-Instruct-150K"]
    assert (
        "| stage3-sft | sft | experts, projector, llm | sft.json (llava) | 8 | 4 | projector 0.002, llm 0.002 |"
        in (card.text)
    )
    assert "1.2345" in card.text and "random weights" not in card.text


def test_converted_card_keeps_its_signature(model):
    card = converted_model_card(model.config, source="NVEagle/Eagle-X5-7B", report="235 tensors converted")
    assert card.data.base_model == ["NVEagle/Eagle-X5-7B"]
    assert card.data.license == "cc-by-nc-4.0" and "custom_code" in card.data.tags
    assert "Converted from the NVEagle checkpoint `NVEagle/Eagle-X5-7B`" in card.text
    assert '"path/to/this/folder"' in card.text  # the default repo placeholder of the converter
    local = converted_model_card(model.config, source="/data/Eagle-X5-7B", report="ok")
    assert local.data.base_model is None


SNIPPET_RUNNER = r"""
import importlib.abc, sys

class Block(importlib.abc.MetaPathFinder):  # a Hub user: this package is not installed
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {"eagle_hub", "modeling_eagle", "processing", "training", "hub_cards"}:
            raise ImportError(name)

sys.meta_path.insert(0, Block())
sys.path = [p for p in sys.path if p not in ("", ".")]
for i, path in enumerate(sys.argv[1:]):
    print(f"=== snippet {i}", flush=True)
    exec(compile(open(path).read(), path, "exec"), {"__name__": "__main__"})
    print(flush=True)
"""


def test_card_snippets_run_against_the_local_folder(folder, tmp_path, model, processor):
    card = model_card_for_folder(folder, repo_id=REPO_ID)
    snippets = card_snippets(card)
    assert len(snippets) == 2 and "AutoModelForImageTextToText" in snippets[0] and "pipeline(" in snippets[1]
    work = tmp_path / "work"
    work.mkdir()
    image = make_image(64, 48)
    image.save(work / "example.jpg", quality=95)
    paths = []
    for i, snippet in enumerate(snippets):
        assert REPO_ID in snippet
        paths.append(work / f"snippet_{i}.py")
        paths[-1].write_text(snippet.replace(REPO_ID, str(folder)))
    run = subprocess.run(
        [sys.executable, "-c", SNIPPET_RUNNER, *map(str, paths)],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    first, second = run.stdout.split("=== snippet 1\n")
    # Each snippet prints what this process computes greedily (the folder's generation config is greedy) for the same
    # image and question: the AutoModel snippet through the processor, the pipeline through the chat template.
    import torch
    from PIL import Image

    image = Image.open(work / "example.jpg").convert("RGB")

    def greedy_answer(question: str, **processor_kwargs) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(images=[image], text=[prompt], return_tensors="pt", **processor_kwargs)
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=64, do_sample=False)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return processor.post_process_image_text_to_text(new_tokens, skip_special_tokens=True)[0]

    expected = greedy_answer("What is in this image?")
    assert expected.strip(), "an empty answer would make the comparison vacuous"
    assert first == f"=== snippet 0\n{expected}\n\n"  # print(answer[0]), then the runner's print()
    # The pipeline renders the chat itself, so the text already carries the BOS token.
    expected = greedy_answer("Describe it.", add_special_tokens=False)
    assert expected.strip()
    assert second == f"{expected}\n\n"
