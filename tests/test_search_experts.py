"""`eagle search-experts`: the recipe's eval and validation entries, choosing on validation and reporting on
held-out, a two-candidate one-round search at a tiny budget (trials as processes, the JSON, the table, the plot),
and resuming without retraining finished trials."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from eagle_hub.cli import main
from eagle_hub.training.quickstart import Budget, quickstart_recipe
from eagle_hub.training.recipe import RecipeError, load_recipe, parse_recipe
from eagle_hub.training.search_experts import (
    SEARCH_BUDGET,
    SEARCH_VALIDATION,
    TrialRunner,
    choose,
    format_table,
    held_out_rows,
    margins,
    quickstart_search,
    search_experts,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "training" / "recipes" / "tiny.yaml"
BUDGET = Budget(n_images=48, prealign_steps=1, align_steps=1, word_steps=0, sft_steps=2)
BUDGET_FLAGS = ["--n-images", "48", "--prealign-steps", "1", "--align-steps", "1", "--word-steps", "0"]
BUDGET_FLAGS += ["--sft-steps", "2"]
SEARCH = {"candidates": "clip,dinov2,sam", "start": "clip", "rounds": 1, "jobs": 2}


# ------------------------------------------------------------------------------------------------ the recipe


def test_a_recipe_names_its_held_out_split_and_the_quickstart_writes_one(tmp_path):
    raw = yaml.safe_load(TINY.read_text())
    recipe = parse_recipe({**raw, "data_root": "data", "eval": {"format": "hf", "path": "hf/sft_heldout"}}, tmp_path)
    assert recipe.eval.format == "hf" and recipe.eval.path == "hf/sft_heldout"
    assert recipe.resolve(recipe.eval.path, recipe.data_dir) == tmp_path / "data" / "hf" / "sft_heldout"
    assert load_recipe(TINY).eval.path == "sft_heldout.json"  # the shipped tiny recipe is searchable
    assert parse_recipe({key: value for key, value in raw.items() if key != "eval"}, tmp_path).eval is None
    with pytest.raises(RecipeError, match=r"eval.format: expected one of llava, hf, got 'csv'"):
        parse_recipe({**raw, "eval": {"format": "csv", "path": "x"}}, tmp_path)
    with pytest.raises(RecipeError, match=r"eval: unknown field\(s\) \['shuffle'\]"):
        parse_recipe({**raw, "eval": {"format": "hf", "path": "x", "shuffle": True}}, tmp_path)
    written = quickstart_recipe("data", 0, Budget())
    assert written["eval"] == {"format": "hf", "path": "hf/sft_heldout"}


def test_held_out_rows_take_the_answer_from_the_first_assistant_turn_when_the_data_has_no_answer(tmp_path):
    from eagle_hub.training.data import load_data
    from eagle_hub.training.synth import generate

    generate(tmp_path, n=20, seed=0, questions_per_image=2)
    recipe = load_recipe(TINY)
    recipe.data_root = str(tmp_path)
    dataset = load_data(vars(recipe.eval), recipe.data_dir)  # llava JSON: a type column, no answer column
    assert "answer" not in dataset.column_names
    rows = held_out_rows(dataset)
    assert len(rows) == 4 and all(row["type"] in ("colour", "count", "position", "shape", "word") for row in rows)
    for row in rows:
        assert row["answer"] == row["messages"][1]["content"][0]["text"] and row["answer"]
    no_type = held_out_rows(dataset.remove_columns("type"))
    assert {row["type"] for row in no_type} == {"all"}


def test_the_search_refuses_recipes_it_cannot_run_and_names_why(tmp_path):
    raw = yaml.safe_load(TINY.read_text())
    cases = [
        ({key: value for key, value in raw.items() if key != "eval"}, RecipeError, "eval: missing"),
        ({**raw, "model": {"path": "./folder"}}, RecipeError, r"model: the search builds each expert set"),
        ({**raw, "model": {"preset": "eagle-x4-tiny"}}, ValueError, r"eagle-x4-tiny has no expert\(s\) \['x'\]"),
    ]
    for index, (recipe, error, message) in enumerate(cases):
        path = tmp_path / f"recipe{index}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        with pytest.raises(error, match=message):
            search_experts(path, tmp_path / "out", candidates="sam,x" if index == 2 else "sam")
    # TINY has an eval split but no validation split: the search would have nothing to choose on but what it reports.
    with pytest.raises(RecipeError, match=r"validation: missing; add the split the search chooses on"):
        search_experts(TINY, tmp_path / "out", candidates="sam")
    same = tmp_path / "same.yaml"
    same.write_text(yaml.safe_dump({**raw, "validation": raw["eval"]}))
    with pytest.raises(RecipeError, match=r"validation: is the eval split"):
        search_experts(same, tmp_path / "out", candidates="sam")
    with pytest.raises(ValueError, match=r"rounds \(--rounds\) is 0"):
        search_experts(TINY, tmp_path / "out", rounds=0)
    with pytest.raises(ValueError, match=r"candidates names \['sam'\] more than once"):
        search_experts(TINY, tmp_path / "out", candidates="sam,sam")
    assert not (tmp_path / "out").exists()  # refused before anything is written or trained


# ------------------------------------------------------------------------------------------------ the search


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """Start from CLIP, try DINOv2 and SAM in one round: three trials (two at a time), 1-2 steps per stage."""
    output = tmp_path_factory.mktemp("search") / "search"
    logged = []
    started = time.perf_counter()
    record = quickstart_search(output, seed=0, budget=BUDGET, log=logged.append, **SEARCH)
    return output, record, logged, time.perf_counter() - started


def test_a_two_candidate_one_round_search_writes_every_trial_the_table_and_the_plot(searched):
    output, record, logged, _ = searched
    assert record == json.loads((output / "search.json").read_text())
    trials = record["trials"]
    assert [(t["round"], t["experts"], t["added"]) for t in trials] == [
        (0, ["clip"], None),
        (1, ["clip", "dinov2"], "dinov2"),
        (1, ["clip", "sam"], "sam"),
    ]
    for trial in trials:
        for split in ("", "validation_"):  # held-out (reported) and validation (chosen on)
            assert set(trial[f"{split}scores"]) == {"colour", "count", "position", "shape", "word"}
            assert all(0 <= value <= 1 for value in trial[f"{split}scores"].values())
            scores = trial[f"{split}scores"]
            assert trial[f"{split}average"] == pytest.approx(sum(scores.values()) / len(scores))
        assert sum(trial["questions"].values()) and sum(trial["validation_questions"].values())
        assert trial["wall_seconds"] > 0 and trial["tokens_per_image"] == 64  # the small preset's 8x8 grid
        parameters = trial["parameters"]
        assert set(parameters["experts"]) == set(trial["experts"])
        assert parameters["vision"] == sum(parameters["experts"].values()) < parameters["total"]
        result = json.loads((output / "trials" / "+".join(trial["experts"]) / "result.json").read_text())
        assert result["average"] == trial["average"]
    assert trials[1]["parameters"]["experts"]["clip"] == trials[0]["parameters"]["experts"]["clip"]
    assert trials[1]["parameters"]["experts"]["dinov2"] > 0  # the sixth candidate trained at the small widths

    # The start is chosen; in round 1 the best trial on validation is kept only if it beat the start there; one
    # round at most.
    assert trials[0]["chosen"]
    best = max(trials[1:], key=lambda t: t["validation_average"])
    kept = best["validation_average"] > trials[0]["validation_average"]
    assert [t["chosen"] for t in trials[1:]] == [t is best and kept for t in trials[1:]]
    assert record["path"] == [["clip"]] + ([best["experts"]] if kept else [])
    if kept:
        assert record["stopped"] == "--rounds 1 reached"
    else:
        assert "no candidate raised the validation average" in record["stopped"]
    assert record["settings"]["candidates"] == ["clip", "dinov2", "sam"] and record["settings"]["jobs"] == 2
    assert record["settings"]["chosen_on"] == "validation"

    table = (output / "search.md").read_text()
    assert table == format_table(record)
    lines = table.splitlines()
    assert lines[0] == (
        "| Round | Experts | colour | count | position | shape | word | Validation average | Held-out average | "
        "Params (M) | Tokens / image | Wall (min) |"
    )
    assert lines[2].startswith("| 0 | **CLIP** |") and lines[3].startswith("| 1 | ")
    assert "CLIP + DINOv2" in lines[3] and "CLIP + SAM" in lines[4]
    assert lines[-3].startswith("Chosen path: CLIP")
    assert record["trials_wall_seconds"] == pytest.approx(sum(t["wall_seconds"] for t in trials))
    assert lines[-2] == f"3 trials, {record['trials_wall_seconds'] / 60:.1f} min of trial wall time in all."
    assert lines[-1] == margins(trials[0]) and "; validation: colour " in lines[-1]
    png = (output / "search.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    assert any("round 1: CLIP + one of DINOv2, SAM" in line for line in logged)
    assert (output / "recipe.yaml").is_file() and (output / "data" / "hf" / "sft_heldout").is_dir()


def test_a_rerun_resumes_reading_finished_trials_and_retrains_none(searched):
    """The search is killed after two trials finished and the third had trained but not yet written its result:
    the rerun (the CLI, as a user types it) reads the two results, gives the third its result from its completed
    stage folders without training a step, and ends with the same table."""
    output, record, _, _ = searched
    trials = output / "trials"
    killed = trials / "clip+sam"
    (killed / "result.json").unlink()
    (output / "search.json").unlink()
    kept = {name: (trials / name / "result.json").stat().st_mtime_ns for name in ("clip", "clip+dinov2")}
    weights = killed / "run" / "stage3-sft" / "model.safetensors"
    trained_at = weights.stat().st_mtime_ns

    arguments = ["search-experts", "--quickstart", "--output", str(output), *BUDGET_FLAGS]
    arguments += ["--candidates", SEARCH["candidates"], "--rounds", "1", "--jobs", "2"]
    assert main(arguments) == 0

    for name, mtime in kept.items():
        assert (trials / name / "result.json").stat().st_mtime_ns == mtime, name
        assert (trials / name / "trial.log").read_text().count("== trial ") == 1, name
    assert (killed / "trial.log").read_text().count("== trial ") == 2
    assert weights.stat().st_mtime_ns == trained_at  # every stage was complete: loaded, not retrained
    rerun = json.loads((output / "search.json").read_text())
    assert [t["experts"] for t in rerun["trials"]] == [t["experts"] for t in record["trials"]]
    assert [t["scores"] for t in rerun["trials"]] == [t["scores"] for t in record["trials"]]
    assert rerun["path"] == record["path"]


def test_a_rerun_with_another_budget_is_refused(searched):
    output, *_ = searched
    with pytest.raises(FileExistsError, match="another seed or budget"):
        quickstart_search(output, seed=0, budget=Budget(n_images=48, sft_steps=3, word_steps=0), **SEARCH)
    recipe = output / "recipe.yaml"
    with pytest.raises(FileExistsError, match="trained with another recipe or data root"):
        search_experts(recipe, output, data_root=output, **SEARCH)  # a different data root: other results


@pytest.mark.slow
def test_a_search_killed_mid_trial_resumes_without_retraining_the_finished_one(tmp_path):
    """SIGKILL the whole search (its process group) once the first trial has written its result, while the next
    trains; the rerun keeps that result and finishes the rest."""
    output = tmp_path / "search"
    command = [sys.executable, "-m", "eagle_hub.cli", "search-experts", "--quickstart", "--output", str(output)]
    command += [*BUDGET_FLAGS, "--candidates", "clip,sam", "--rounds", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL)
    first = output / "trials" / "clip" / "result.json"
    deadline = time.time() + 600
    while not first.is_file() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert first.is_file(), "the first trial never finished"
    time.sleep(3)  # into the second trial's training
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished_at = first.stat().st_mtime_ns
    assert not (output / "trials" / "clip+sam" / "result.json").is_file()

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert first.stat().st_mtime_ns == finished_at
    assert "CLIP                                     finished earlier" in rerun.stdout
    assert (output / "trials" / "clip" / "trial.log").read_text().count("== trial ") == 1
    record = json.loads((output / "search.json").read_text())
    assert [t["experts"] for t in record["trials"]] == [["clip"], ["clip", "sam"]]


@pytest.mark.slow
def test_trials_run_under_accelerate_launch(tmp_path):
    """--launcher: each trial trains in two processes (DDP over gloo on the CPU); the main one scores and writes."""
    config = ROOT / "training" / "accelerate" / "cpu-2proc.yaml"
    launcher = f"{sys.executable} -m accelerate.commands.launch --config_file {config}"
    record = quickstart_search(tmp_path / "search", budget=BUDGET, candidates="clip", start="clip", launcher=launcher)
    assert [t["experts"] for t in record["trials"]] == [["clip"]]
    log = (tmp_path / "search" / "trials" / "clip" / "trial.log").read_text()
    assert "[rank1]" in log and "[rank0]" in log


def test_the_published_search_tables_are_the_recorded_search():
    """docs/search-experts.md's table is format_table of the recorded search.json, and the README's summary (each
    round's best set and the other trials' averages, to 0.1 point) says what that record says."""
    import re

    from eagle_hub.training.search_experts import label

    record = json.loads((ROOT / "docs" / "search-experts-quickstart.json").read_text())
    table = format_table(record).split("\n\nChosen path")[0]
    assert table in (ROOT / "docs" / "search-experts.md").read_text()

    readme = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| (\d) \| (.*?) \|(.*?)\|$", readme.split("`eagle search-experts` reruns")[1], flags=re.M)
    assert [int(row[0]) for row in rows] == sorted({trial["round"] for trial in record["trials"]})
    for round_number, best, others in rows:
        trials = [trial for trial in record["trials"] if trial["round"] == int(round_number)]
        chosen = [trial for trial in trials if trial["chosen"]]
        if chosen:
            assert best.endswith(f"({chosen[0]['average']:.1%})"), best
        shown = dict(re.findall(r"\+ (\S+) (\d+\.\d)", others))
        rest = {label(t["experts"][-1:]): f"{t['average'] * 100:.1f}" for t in trials if not t["chosen"]}
        assert shown == rest, (round_number, shown, rest)
    minutes = record["trials_wall_seconds"] / 60
    assert f"{len(record['trials'])} trials, {minutes:.1f} min of trial time" in " ".join(readme.split())


def test_the_docs_say_the_recorded_search_chose_on_held_out_and_state_its_margins():
    """The record predates validation splits (its trials have none, its path is the held-out winners'): the docs
    label it so. The questions per type and the points one question is (100/n), as the README and
    docs/search-experts.md state them, are the record's; the split sizes they state are the search's."""
    from eagle_hub.training.synth import split_sizes

    record = json.loads((ROOT / "docs" / "search-experts-quickstart.json").read_text())
    assert all("validation_average" not in trial for trial in record["trials"])
    for round_number in {trial["round"] for trial in record["trials"]} - {0}:
        trials = [trial for trial in record["trials"] if trial["round"] == round_number]
        best = max(trials, key=lambda trial: trial["average"])
        assert [trial for trial in trials if trial["chosen"]] in ([], [best])  # kept (if any): the held-out winner
    questions = {tuple(sorted(trial["questions"].items())) for trial in record["trials"]}
    assert len(questions) == 1
    n = dict(questions.pop())
    docs = " ".join((ROOT / "docs" / "search-experts.md").read_text().split())
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "measured once, under the old protocol" in docs and "it chose on the held-out split" in docs
    assert "measured once under the old protocol, which chose *and* reported on the held-out split" in readme
    per_type = ", ".join(f"{kind} {count} ({100 / count:.1f})" for kind, count in sorted(n.items()))
    assert f"Held-out questions per type (points one question is): {per_type}." in docs
    assert f"the held-out word type has {n['word']} questions: one question is {100 / n['word']:.1f} points" in docs
    others = {count for kind, count in n.items() if kind not in ("word", "position")}
    assert len(others) == 1
    assert (
        f"Its held-out word type has {n['word']} questions ({100 / n['word']:.1f} points each), position "
        f"{n['position']} ({100 / n['position']:.1f}), the others {min(others)} ({100 / min(others):.1f})"
    ) in readme
    sizes = split_sizes(SEARCH_BUDGET.n_images, 0.1, SEARCH_VALIDATION)
    assert (
        f"carves {sizes['validation']} of its {SEARCH_BUDGET.n_images} images for validation and holds out "
        f"{sizes['held_out']} others" in readme
    )
    assert (
        f"of its {SEARCH_BUDGET.n_images} images, {sizes['train']} train, {sizes['validation']} are the validation "
        f"split (`hf/sft_validation`, one question at a time) and {sizes['held_out']} are held out" in docs
    )


# ------------------------------------------------------------------------------------ choosing on validation


def stub_trial(experts, validation: float, held_out: float) -> dict:
    """A trial's result with every type at the given validation and held-out score."""
    kinds = ("colour", "count", "position", "shape", "word")
    return {
        "experts": list(experts),
        "scores": dict.fromkeys(kinds, held_out),
        "questions": dict.fromkeys(kinds, 20),
        "average": held_out,
        "validation_scores": dict.fromkeys(kinds, validation),
        "validation_questions": dict.fromkeys(kinds, 25),
        "validation_average": validation,
        "wall_seconds": 1.0,
        "train_seconds": 1.0,
        "parameters": {"total": 10**6, "vision": 10**5, "experts": dict.fromkeys(experts, 1)},
        "tokens_per_image": 64,
    }


def test_the_choice_reads_validation_scores_only():
    current = stub_trial(["clip"], validation=0.50, held_out=0.50)
    on_validation = stub_trial(["clip", "sam"], validation=0.70, held_out=0.55)
    on_held_out = stub_trial(["clip", "eva02"], validation=0.60, held_out=0.90)
    best, gain = choose(current, [on_held_out, on_validation])
    assert best is on_validation and gain == pytest.approx(20.0)


def test_a_search_chooses_the_validation_winner_where_the_held_out_winner_differs(tmp_path, monkeypatch):
    """Every trial stubbed (nothing trained): in round 1 EVA-02 wins on held-out and SAM on validation; in round 2
    ConvNeXt would raise held-out but lowers validation. The search keeps SAM and stops in round 2."""
    scores = {  # set -> (validation, held-out)
        ("clip",): (0.50, 0.50),
        ("clip", "sam"): (0.70, 0.55),
        ("clip", "eva02"): (0.60, 0.90),
        ("clip", "convnext"): (0.40, 0.40),
        ("clip", "sam", "eva02"): (0.65, 0.60),
        ("clip", "sam", "convnext"): (0.69, 0.99),
    }
    monkeypatch.setattr(TrialRunner, "run", lambda self, sets: {s: stub_trial(s, *scores[s]) for s in sets})
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(quickstart_recipe("data", 0, BUDGET, validation=True)))
    record = search_experts(recipe, tmp_path / "out", candidates="sam,eva02,convnext", log=lambda line: None)
    assert record["path"] == [["clip"], ["clip", "sam"]]
    assert [t["experts"] for t in record["trials"] if t["chosen"]] == [["clip"], ["clip", "sam"]]
    assert record["stopped"].startswith("round 2: no candidate raised the validation average")
    table = format_table(record)
    assert "| 1 | **CLIP + SAM** | 55.0% | 55.0% | 55.0% | 55.0% | 55.0% | **70.0%** | 55.0% |" in table
    assert "held-out questions (points each): colour 20 (5.0)" in table and "validation: colour 25 (4.0)" in table


def test_the_validation_split_is_carved_from_training_disjoint_from_held_out_and_fixed_by_the_seed(tmp_path):
    from eagle_hub.training.quickstart import make_data

    def images(folder, split):
        return {record["image"] for record in json.loads((folder / f"{split}.json").read_text())}

    n = 60
    make_data(tmp_path / "a", n, seed=0, validation=SEARCH_VALIDATION)
    make_data(tmp_path / "b", n, seed=0, validation=SEARCH_VALIDATION)
    a = tmp_path / "a"
    validation, held_out = images(a, "sft_validation"), images(a, "sft_heldout")
    training = images(a, "sft") | images(a, "captions") | images(a, "sft_word")
    assert len(validation) == len(held_out) == 6 and len(images(a, "sft")) == n - 12
    assert not validation & held_out and not validation & training and not held_out & training
    assert (a / "sft_validation.json").read_bytes() == (tmp_path / "b" / "sft_validation.json").read_bytes()
    records = json.loads((a / "sft_validation.json").read_text())
    assert all(len(record["conversations"]) == 2 for record in records)  # one question each, as held-out
    manifest = json.loads((a / "manifest.json").read_text())
    assert manifest["validation"] == SEARCH_VALIDATION and manifest["splits"]["sft_validation"]["images"] == 6
    # The quickstart's search: 200 validation images carved from 1800 training ones, beside 200 held out.
    from eagle_hub.training.synth import split_sizes

    assert split_sizes(SEARCH_BUDGET.n_images, 0.1, SEARCH_VALIDATION) == {
        "train": 1600,
        "validation": 200,
        "held_out": 200,
    }
    with pytest.raises(ValueError, match="validation must be in"):
        make_data(tmp_path / "c", n, seed=0, validation=0.95)
