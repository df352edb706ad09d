"""What `eagle eval` relies on without lmms-eval: the card's eval results (merged, self-reported, in README.md's
model-index), the paper's figures and the comparison table, and the processor taking empty videos/audios."""

import json
import shutil
import sys

import pytest
from conftest import make_image
from huggingface_hub import ModelCard

from eagle_hub.cli.eval import format_comparison
from eagle_hub.evaluation.benchmarks import BENCHMARKS, PAPER, STANDINS, benchmark_for, compare, paper_models
from eagle_hub.hub_cards.model_card import (
    CardError,
    merge_eval_results,
    model_card_for_folder,
    record_eval_results,
    write_model_card,
)
from eagle_hub.hub_cards.push import push_folder


def entry(task: str, value: float, split: str = "test", dataset: str | None = None) -> dict:
    return {
        "task": {"type": "visual-question-answering", "name": task},
        "dataset": {"name": task.upper(), "type": dataset or f"org/{task}", "split": split},
        "metrics": [{"type": "exact_match", "name": "exact_match", "value": value}],
        "source": {"name": "lmms-eval 0.7.3 (eagle eval)", "url": "https://github.com/EvolvingLMMs-Lab/lmms-eval"},
        "verified": False,
    }


def test_merge_replaces_the_tasks_run_and_keeps_the_others():
    quickstart_own = {  # what `eagle quickstart` writes: one object, no task name
        "task": {"type": "visual-question-answering", "name": "Visual question answering"},
        "dataset": {"name": "synthetic", "type": "synthetic"},
        "metrics": [{"type": "exact_match", "value": 0.9}],
    }
    first = merge_eval_results(quickstart_own, [entry("pope", 0.5, "test[:4]"), entry("gqa", 0.3)])
    assert [e["task"]["name"] for e in first] == ["Visual question answering", "pope", "gqa"]
    second = merge_eval_results(first, [entry("pope", 0.8), entry("textvqa_val", 0.6)])
    assert [e["task"]["name"] for e in second] == ["Visual question answering", "pope", "gqa", "textvqa_val"]
    pope = second[1]
    assert pope["metrics"][0]["value"] == 0.8 and pope["dataset"]["split"] == "test"  # the full run replaced it
    assert merge_eval_results(None, []) == []


def test_record_eval_results_updates_the_card_the_hub_way(saved_folder, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(saved_folder, folder)
    write_model_card(folder, repo_id="me/eagle-tiny")
    before = ModelCard.load(folder / "README.md")
    assert not before.data.eval_results

    record_eval_results(folder, [entry("pope", 0.5), entry("gqa", 0.25)])
    card = ModelCard.load(folder / "README.md")
    results = {(r.task_name, r.metric_type): r for r in card.data.eval_results}
    assert set(results) == {("pope", "exact_match"), ("gqa", "exact_match")}
    pope = results["pope", "exact_match"]
    assert (pope.dataset_type, pope.dataset_split, pope.metric_value) == ("org/pope", "test", 0.5)
    assert pope.verified is False and pope.source_name.startswith("lmms-eval")  # self-reported
    assert "model-index" in card.content and "| pope | POPE | test | exact_match | 0.5 |" in card.text
    assert card.text.count("## Evaluation") == 1 and "## Limitations" in card.text  # the rest is untouched
    assert card.data.pipeline_tag == "image-text-to-text"  # the other metadata is kept

    # A second run with another task keeps the first ones; a rerun of a task replaces its entry.
    record_eval_results(folder, [entry("textvqa_val", 0.7), entry("pope", 0.75)])
    card = ModelCard.load(folder / "README.md")
    values = {r.task_name: r.metric_value for r in card.data.eval_results}
    assert values == {"pope": 0.75, "gqa": 0.25, "textvqa_val": 0.7}
    assert len(json.loads((folder / "eval_results.json").read_text())) == 3
    assert "| pope | POPE | test | exact_match | 0.75 |" in card.text and "0.5 |" not in card.text
    # `eagle push` uploads that card and eval_results.json
    pushed = push_folder(folder, "me/eagle-tiny", dry_run=True, load=False)
    names = {name for name, _ in pushed.files}
    assert {"README.md", "eval_results.json"} <= names and not pushed.card_generated

    # A folder without README.md gets them in the card generated from it (what `eagle push` uploads).
    bare = tmp_path / "bare"
    shutil.copytree(saved_folder, bare)
    record_eval_results(bare, [entry("pope", 0.5)])
    assert not (bare / "README.md").exists()
    generated = model_card_for_folder(bare)
    assert [r.task_name for r in generated.data.eval_results] == ["pope"]


def test_record_eval_results_refuses_an_entry_the_card_cannot_show(saved_folder, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(saved_folder, folder)
    with pytest.raises(CardError, match="'metrics' must be a non-empty list"):
        record_eval_results(folder, [{**entry("pope", 0.5), "metrics": []}])
    assert not (folder / "eval_results.json").exists()


def test_the_paper_figures_and_the_comparison():
    assert len(BENCHMARKS) == 15 and paper_models() == ["eagle-x5-13b", "eagle-x5-7b"]
    for figures in PAPER.values():
        assert set(figures) == {b.name for b in BENCHMARKS}
    assert PAPER["eagle-x5-7b"]["TextVQA"] == 71.2 and PAPER["eagle-x5-7b"]["MME"] == 1528
    assert benchmark_for("textvqa_val").name == "TextVQA" and benchmark_for("eagle_standin_pope").name == "POPE"
    assert all(benchmark_for(task) for task in STANDINS) and benchmark_for("eagle_quickstart") is None
    summary = {
        "textvqa_val": {"exact_match": 0.7085},
        "ocrbench": {"ocrbench_accuracy": 0.531},
        "mme": {"mme_perception_score": 1500.0, "mme_cognition_score": 300.0},
        "eagle_quickstart": {"exact_match": 1.0},
    }
    rows = {row["benchmark"]: row for row in compare(summary, "eagle-x5-7b")}
    assert set(rows) == {"TextVQA", "OCRBench", "MME"}
    assert rows["TextVQA"]["measured"] == pytest.approx(70.85) and rows["TextVQA"]["difference"] == pytest.approx(
        -0.35
    )
    assert rows["OCRBench"]["measured"] == pytest.approx(531) and rows["MME"]["difference"] == pytest.approx(-28)
    text = format_comparison(compare(summary, "eagle-x5-7b"), "eagle-x5-7b")
    lines = text.splitlines()
    assert lines[0].split() == ["benchmark", "task", "metric", "measured", "paper", "(eagle-x5-7b)", "difference"]
    cells = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert cells["TextVQA"] == ["textvqa_val", "exact_match", "70.9", "71.2", "-0.3"]
    assert cells["MME"] == ["mme", "mme_perception_score", "1500.0", "1528", "-28.0"]
    with pytest.raises(ValueError, match="eagle-x5-13b, eagle-x5-7b"):
        compare(summary, "eagle-x4-8b")


def test_processor_takes_empty_videos_and_audios_and_refuses_others(processor):
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}], add_generation_prompt=True
    )
    plain = processor(images=[make_image()], text=[prompt], return_tensors="pt")
    # what lmms-eval's generic model sends for an image task
    harness = processor(images=[make_image()], text=[prompt], videos=[], audios=[], return_tensors="pt")
    assert harness["input_ids"].tolist() == plain["input_ids"].tolist()
    assert processor(text=["no image"], images=[], videos=[[]], audio=None)["input_ids"]
    with pytest.raises(ValueError, match="Eagle takes images and text only, but videos= was given"):
        processor(images=[make_image()], text=[prompt], videos=[[make_image(), make_image()]])
    with pytest.raises(ValueError, match="audios= was given"):
        processor(text=["hi"], audios=[[0.0, 0.1]])


def test_eagle_eval_without_lmms_eval_says_how_to_install_it(saved_folder, tmp_path, monkeypatch, capsys):
    from eagle_hub.cli import main
    from eagle_hub.evaluation import runner

    monkeypatch.setitem(sys.modules, "lmms_eval", None)  # as if it were not installed
    runner.lmms_eval_ready.cache_clear()
    try:
        code = main(["eval", str(saved_folder), "--tasks", "pope", "--output", str(tmp_path / "out")])
    finally:
        runner.lmms_eval_ready.cache_clear()
    assert code == 2
    assert "lmms-eval is not installed" in capsys.readouterr().err and "scripts/setup.sh --eval" in runner.SETUP_HINT
    assert not (tmp_path / "out").exists()
