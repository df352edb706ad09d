"""`eagle eval` and `lmms-eval --model eagle` with the real lmms-eval (the `eval` extra), offline: tiny random folders,
the package's stand-ins of the paper's benchmarks (images drawn in the test), the quickstart's task, the model's
stops and requests, failures that exit non-zero, and the model card.

Without lmms-eval these tests are skipped; under CI (CI=true) that is a failure: .ci/run installs the extra.
"""

import contextlib
import importlib.util
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import IN_CI, make_image, tiny_config

if importlib.util.find_spec("lmms_eval") is None:
    if IN_CI:
        pytest.fail("lmms-eval is not installed (CI must have it: bash scripts/setup.sh --eval)", pytrace=False)
    pytest.skip("lmms-eval is not installed: bash scripts/setup.sh --eval", allow_module_level=True)

from huggingface_hub import ModelCard  # noqa: E402
from lmms_eval.api.instance import Instance  # noqa: E402
from transformers import GenerationConfig  # noqa: E402

from eagle_hub.cli import main  # noqa: E402
from eagle_hub.evaluation.lmms_model import EagleLmms, EagleLmmsChat  # noqa: E402
from eagle_hub.evaluation.standins import STANDIN_TASKS_DIR, standin_tasks, write_standins  # noqa: E402
from eagle_hub.hub_cards.model_card import write_model_card  # noqa: E402
from eagle_hub.modeling_eagle.hub_folder import build_processor, save_folder  # noqa: E402
from eagle_hub.modeling_eagle.modeling_eagle import EagleForConditionalGeneration  # noqa: E402
from eagle_hub.processing.local_tokenizer import build_tokenizer  # noqa: E402
from eagle_hub.training.quickstart import ANSWERS, evaluate  # noqa: E402
from eagle_hub.training.synth import generate  # noqa: E402

STANDIN_METRICS = {
    "eagle_standin_textvqa": {"exact_match"},
    "eagle_standin_pope": {"pope_accuracy", "pope_precision", "pope_recall", "pope_f1_score", "pope_yes_ratio"},
    "eagle_standin_scienceqa_img": {"exact_match"},
    "eagle_standin_seedbench": {"seed_image", "seed_all"},
    "eagle_standin_seedbench_ppl": {"acc"},
    "eagle_standin_docvqa": {"anls"},
    "eagle_standin_chartqa": {"relaxed_overall", "relaxed_human_split", "relaxed_augmented_split"},
}
END_OF_TURN = {"vicuna_v1": "</s>", "llama3": "<|eot_id|>", "chatml": "<|im_end|>"}
TEMPLATE_TOKENS = ["<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|im_start|>", "<|im_end|>"]


def write_folder(path: Path, tokenizer, chat_template="vicuna_v1", max_new_tokens=16, seed=0) -> Path:
    """A tiny random Eagle folder with ``tokenizer`` and ``chat_template``; ``max_new_tokens`` is the folder's
    default for tasks that set none (the model is random: it never ends a reply by itself)."""
    config = tiny_config(tokenizer)
    torch.manual_seed(seed)
    model = EagleForConditionalGeneration(config).eval()
    save_folder(path, build_processor(config, tokenizer, chat_template=chat_template), model=model)
    generation = GenerationConfig.from_pretrained(path)
    generation.max_new_tokens = max_new_tokens
    generation.save_pretrained(path)
    return path


def run_eval(*args) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["eval", *map(str, args)])
    return code, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    return write_standins(tmp_path_factory.mktemp("tasks") / "standins", rows=6)


@pytest.fixture(scope="module")
def quickstart_folder(tmp_path_factory):
    """A random folder laid out as `eagle quickstart` writes it (OUTPUT/model beside OUTPUT/data/hf/sft_heldout),
    with the quickstart's tokenizer and chat template, and a model card."""
    root = tmp_path_factory.mktemp("quickstart")
    tokenizer = build_tokenizer([f"ASSISTANT: {answer}" for answer in ANSWERS])
    folder = write_folder(root / "model", tokenizer, chat_template="vicuna_v1_no_system")
    write_model_card(folder)
    generate(root / "data", n=20, seed=0, image_size=64, questions_per_image=5, conversations=True)
    return folder


@pytest.fixture(scope="module")
def first_run(quickstart_folder, standins, tmp_path_factory):
    output = tmp_path_factory.mktemp("eval") / "out"
    code, stdout, stderr = run_eval(
        quickstart_folder,
        "--tasks",
        "eagle_standins",
        "--include-path",
        standins,
        "--limit",
        "4",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--compare-paper",
        "eagle-x5-7b",
        "--output",
        output,
    )
    return code, stdout, stderr, output


@pytest.fixture(scope="module")
def second_run(first_run, quickstart_folder, tmp_path_factory):
    """The quickstart task, every example, one at a time (as the package's evaluator compares below)."""
    output = tmp_path_factory.mktemp("eval") / "out"
    code, stdout, stderr = run_eval(quickstart_folder, "--tasks", "eagle_quickstart", "--output", output)
    return code, stdout, stderr, output


# ------------------------------------------------------------------------------------------------ eagle eval


def test_eagle_eval_scores_every_standin(first_run, quickstart_folder):
    code, stdout, stderr, output = first_run
    assert code == 0, stderr[-3000:]
    assert set(standin_tasks()) == set(STANDIN_METRICS)
    results = json.loads((output / "results.json").read_text())
    summary = json.loads((output / "eval_results.json").read_text())
    assert results["failed_tasks"] == {} and results["config"]["model"] == "eagle"
    for task, metrics in STANDIN_METRICS.items():
        assert results["n-samples"][task] == {"original": 6, "effective": 4}
        assert metrics <= set(summary[task]), (task, summary[task])
        assert all(0 <= value <= 1 for value in summary[task].values())
        samples = [json.loads(line) for line in (output / f"samples_{task}.jsonl").read_text().splitlines()]
        assert len(samples) == 4 and all(sample["input"] for sample in samples)
        assert task in stdout
    # SEED's rows carry two images: each request holds both (two blocks of image tokens in its prompt)
    seed = json.loads((output / "samples_eagle_standin_seedbench.jsonl").read_text().splitlines()[0])
    image_tokens = json.loads((quickstart_folder / "config.json").read_text())["vision_config"]["grid_size"] ** 2
    assert seed["token_counts"][0]["input_tokens"] > 2 * image_tokens
    # the multiple-choice variant is scored by log-likelihood: (log-probability, is_greedy) per choice
    ppl = json.loads((output / "samples_eagle_standin_seedbench_ppl.jsonl").read_text().splitlines()[0])
    assert len(ppl["resps"]) == 4 and all(float(r[0][0]) < 0 for r in ppl["resps"])
    # --compare-paper: the paper's figure beside each stand-in of one of its benchmarks
    assert "paper (eagle-x5-7b)" in stdout and "TextVQA" in stdout and "71.2" in stdout
    assert "eagle eval: [7/7]" in stderr  # one run per task


def test_results_go_into_the_card_and_survive_another_run(first_run, second_run, quickstart_folder):
    assert first_run[0] == 0 and second_run[0] == 0, second_run[2][-3000:]
    card = ModelCard.load(quickstart_folder / "README.md")
    results = card.data.eval_results
    tasks = {result.task_name for result in results}
    assert tasks == set(STANDIN_METRICS) | {"eagle_quickstart"}
    pope = next(r for r in results if r.task_name == "eagle_standin_pope" and r.metric_type == "pope_f1_score")
    assert pope.dataset_split == "test[:4]" and pope.verified is False and "lmms-eval" in pope.source_name
    quickstart = [r for r in results if r.task_name == "eagle_quickstart"]
    assert quickstart[0].dataset_split == "test" and {r.metric_type for r in quickstart} >= {"exact_match"}
    assert "| eagle_quickstart |" in card.text and "| eagle_standin_pope |" in card.text
    entries = json.loads((quickstart_folder / "eval_results.json").read_text())
    assert len(entries) == len(tasks)


def agrees_with_the_package_evaluator(folder: Path, output: Path, monkeypatch) -> dict:
    """eagle eval's eagle_quickstart samples in OUTPUT against the package's own evaluator on the quickstart's
    held-out split next to ``folder``, example by example (its answers captured as it decodes them); returns the
    evaluator's accuracy."""
    import transformers
    from datasets import load_from_disk

    samples = [json.loads(line) for line in (output / "samples_eagle_quickstart.jsonl").read_text().splitlines()]
    heldout = load_from_disk(str(folder.parent / "data" / "hf" / "sft_heldout"))
    assert len(samples) == len(heldout) >= 5
    answers = []
    real = transformers.AutoProcessor.from_pretrained

    def recording(*args, **kwargs):
        processor = real(*args, **kwargs)
        decode = processor.batch_decode
        processor.batch_decode = lambda *a, **k: answers.extend(decode(*a, **k)) or answers[-len(a[0]) :]
        return processor

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", recording)
    accuracy = evaluate(folder, heldout, batch_size=1)
    monkeypatch.undo()
    assert len(answers) == len(heldout)
    for sample, row, answer in zip(sorted(samples, key=lambda s: s["doc_id"]), heldout, answers):
        assert sample["doc"]["id"] == row["id"]
        assert sample["filtered_resps"][0] == answer.strip()
        assert sample["exact_match"] == float(answer.strip().lower() == row["answer"].strip().lower())
    summary = json.loads((output / "eval_results.json").read_text())["eagle_quickstart"]
    for kind, entry in accuracy.items():
        assert summary[f"exact_match_{kind}"] == pytest.approx(entry["accuracy"])
    return accuracy


def test_quickstart_task_agrees_with_the_package_evaluator_on_every_example(
    second_run, quickstart_folder, monkeypatch
):
    code, _, stderr, output = second_run
    assert code == 0, stderr[-3000:]
    agrees_with_the_package_evaluator(quickstart_folder, output, monkeypatch)


@pytest.mark.slow
def test_a_trained_quickstart_folder_scores_as_its_own_table(tmp_path, monkeypatch):
    """The real `eagle quickstart`, shortened (about two minutes on 2 cores): the harness's figures are its table's."""
    from eagle_hub.training.quickstart import Budget, quickstart

    budget = Budget(n_images=48, prealign_steps=1, align_steps=1, word_steps=1, sft_steps=2)
    report = quickstart(tmp_path / "qs", budget=budget)
    folder = tmp_path / "qs" / "model"
    code, _, stderr = run_eval(folder, "--tasks", "eagle_quickstart", "--output", tmp_path / "out")
    assert code == 0, stderr[-3000:]
    accuracy = agrees_with_the_package_evaluator(folder, tmp_path / "out", monkeypatch)
    assert accuracy == report["accuracy"]  # batch 1 here, 32 in the quickstart: the same answers
    card = ModelCard.load(folder / "README.md")
    names = {result.task_name for result in card.data.eval_results}
    assert names == {"Visual question answering", "eagle_quickstart"}  # the quickstart's own entry is kept


def test_lmms_eval_command_runs_model_eagle(quickstart_folder, standins, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(quickstart_folder, folder)
    command = shutil.which("lmms-eval", path=str(Path(sys.executable).parent)) or shutil.which("lmms-eval")
    tasks = ["eagle_standin_scienceqa_img", "eagle_standin_seedbench", "eagle_standin_docvqa"]
    result = subprocess.run(
        [command, "--model", "eagle", "--model_args", f"pretrained={folder}", "--tasks", ",".join(tasks)]
        + ["--include_path", str(standins), "--device", "cpu", "--batch_size", "2", "--limit", "4"]
        + ["--output_path", str(tmp_path / "out"), "--log_samples"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    files = list((tmp_path / "out").rglob("*_results.json"))
    assert len(files) == 1, result.stdout[-3000:] + result.stderr[-3000:]  # lmms-eval exits 0 after a crash
    results = json.loads(files[0].read_text())
    assert set(tasks) <= set(results["results"])
    assert "EagleLmmsChat (chat)" in results["config"]["model_backend"]  # --model eagle: the chat class
    assert "anls,none" in results["results"]["eagle_standin_docvqa"]
    assert "seed_image,none" in results["results"]["eagle_standin_seedbench"]


def test_unknown_task_and_broken_folders_exit_non_zero(quickstart_folder, standins, tmp_path):
    code, _, stderr = run_eval(
        quickstart_folder, "--tasks", "eagle_standin_pop", "--include-path", standins, "--output", tmp_path / "o"
    )
    assert code == 2 and "unknown task(s): eagle_standin_pop (did you mean eagle_standin_pope" in stderr
    assert len(stderr.strip().splitlines()) == 1

    no_config = tmp_path / "empty"
    no_config.mkdir()
    code, _, stderr = run_eval(no_config, "--tasks", "eagle_standin_pope", "--output", tmp_path / "o")
    assert code == 2 and "no config.json there" in stderr

    broken = tmp_path / "broken"
    shutil.copytree(quickstart_folder, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    code, _, stderr = run_eval(
        broken, "--tasks", "eagle_standin_pope", "--include-path", standins, "--output", tmp_path / "o"
    )
    assert code == 2 and f"could not load {broken.resolve()} as an Eagle model" in stderr


def test_a_task_that_crashes_fails_the_run_and_the_others_are_kept(quickstart_folder, standins, tmp_path):
    tasks = tmp_path / "tasks" / "eagle_crash"
    shutil.copytree(standins / "eagle_standin_pope", tasks)
    yaml = (tasks / "eagle_standin_pope.yaml").read_text().replace("task: eagle_standin_pope", "task: eagle_crash")
    (tasks / "eagle_standin_pope.yaml").unlink()
    (tasks / "eagle_crash.yaml").write_text(
        yaml.replace("!function utils.pope_process_results", "!function crash.process_results")
    )
    (tasks / "crash.py").write_text("def process_results(doc, results):\n    raise KeyError('no_such_column')\n")
    output = tmp_path / "out"
    code, stdout, stderr = run_eval(
        quickstart_folder, "--tasks", "eagle_crash,eagle_standin_scienceqa_img", "--include-path", tmp_path / "tasks",
        "--include-path", standins, "--limit", "2", "--no-card", "--output", output,
    )  # fmt: skip
    assert code == 2
    assert "1 of 2 task(s) failed: eagle_crash (KeyError: 'no_such_column')" in stderr  # the real error
    assert "eagle_standin_scienceqa_img" in stdout
    results = json.loads((output / "results.json").read_text())
    assert set(results["results"]) == {"eagle_standin_scienceqa_img"} and "eagle_crash" in results["failed_tasks"]


def test_dry_run_checks_tasks_without_a_model(standins, capsys):
    # the shipped stand-in YAML files without their data, then with it (write_standins)
    shipped = ["--include-path", str(STANDIN_TASKS_DIR)]
    assert main(["eval", "no-model", "--dry-run", "--tasks", "eagle_standins,eagle_quickstart", *shipped]) == 0
    out = capsys.readouterr().out
    assert "eagle_standin_seedbench_ppl  multiple_choice" in out and "eagle_quickstart" in out
    assert "local data not found: data/test.parquet" in out
    assert main(["eval", "no-model", "--dry-run", "--tasks", "eagle_standins", "--include-path", str(standins)]) == 0
    out = capsys.readouterr().out
    assert out.count("eagle_standin_") == 7 and "local data not found" not in out


# ------------------------------------------------------------------------------------------------ the model


class Script:
    """Forces the model's next tokens: ``tokens[i]`` at its i-th forward pass, then ``after`` for ever."""

    def __init__(self, model, tokens, after):
        self.tokens, self.after, self.calls = list(tokens), after, 0
        self.handle = model.lm_head.register_forward_hook(self.hook)

    def hook(self, module, inputs, output):
        token = self.tokens[self.calls] if self.calls < len(self.tokens) else self.after
        self.calls += 1
        forced = torch.full_like(output, -1e4)
        forced[..., token] = 1e4
        return forced


def request(arguments, kind="generate_until"):
    return Instance(
        request_type=kind, arguments=arguments, idx=0, metadata={"task": "t", "doc_id": 0, "repeats": 1, "split": "s"}
    )


def simple(text, gen_kwargs, visuals):
    return request((text, gen_kwargs, lambda doc: visuals, 0, "t", "s"))


@pytest.fixture(scope="module")
def template_folders(tmp_path_factory):
    """One folder per shipped chat template, with a tokenizer in which its end-of-turn is one token."""
    root = tmp_path_factory.mktemp("templates")
    folders = {}
    for template in END_OF_TURN:
        tokenizer = build_tokenizer()
        tokenizer.add_tokens(TEMPLATE_TOKENS, special_tokens=True)
        folders[template] = write_folder(root / template, tokenizer, chat_template=template, max_new_tokens=12)
    plain = build_tokenizer()  # chatml's <|im_end|> is several tokens of this one
    folders["chatml-plain"] = write_folder(root / "chatml-plain", plain, chat_template="chatml", max_new_tokens=12)
    return folders


def words(tokenizer, *texts):
    ids = [tokenizer.encode(text, add_special_tokens=False) for text in texts]
    assert all(len(i) == 1 for i in ids), ids
    return [i[0] for i in ids]


@pytest.mark.parametrize("template", sorted(END_OF_TURN))
def test_generation_stops_at_the_templates_end_of_turn(template_folders, template):
    lm = EagleLmms(pretrained=str(template_folders[template]), device="cpu")
    tokenizer = lm.tokenizer
    end = tokenizer.convert_tokens_to_ids(END_OF_TURN[template])
    assert lm.end_of_turn == END_OF_TURN[template] and end in lm._eos_ids
    red, blue, green = words(tokenizer, " red", " blue", " green")
    script = Script(lm.model, [red, blue, end], after=green)
    lm.task_dict = {"t": {"s": [{}]}}
    (result,) = lm.generate_until([simple("What colour?", {"until": ["\n\n"], "do_sample": False}, [make_image()])])
    assert result.text == tokenizer.decode([red, blue]).strip() == "red blue"
    assert script.calls == 3 and result.token_counts.output_tokens == 3  # stopped at the end of the turn


def test_an_end_of_turn_of_several_tokens_stops_as_a_string(template_folders):
    lm = EagleLmms(pretrained=str(template_folders["chatml-plain"]), device="cpu")
    pieces = lm.tokenizer.encode("<|im_end|>", add_special_tokens=False)
    assert len(pieces) > 1 and lm.end_of_turn == "<|im_end|>"
    red, green = words(lm.tokenizer, " red", " green")
    script = Script(lm.model, [red, *pieces], after=green)
    lm.task_dict = {"t": {"s": [{}]}}
    (result,) = lm.generate_until([simple("What colour?", {}, [make_image()])])
    assert result.text == "red" and script.calls == 1 + len(pieces)


def test_until_strings_max_new_tokens_and_the_folders_default(template_folders):
    lm = EagleLmms(pretrained=str(template_folders["vicuna_v1"]), device="cpu", batch_size=2)
    red, blue, green = words(lm.tokenizer, " red", " blue", " green")
    lm.task_dict = {"t": {"s": [{}]}}
    Script(lm.model, [red, blue], after=green)
    (until,) = lm.generate_until([simple("Q", {"until": [" blue"]}, [make_image()])])
    assert until.text == "red" and until.token_counts.output_tokens == 2  # generation stopped at the string
    script = Script(lm.model, [], after=green)
    task_limit, default = lm.generate_until(
        [simple("Q", {"max_new_tokens": 3}, [make_image()]), simple("Q", {}, [make_image()])]
    )
    assert task_limit.token_counts.output_tokens == 3  # the task's max_new_tokens, not a large default
    assert default.token_counts.output_tokens == 12  # the folder's generation_config when the task sets none
    assert script.calls == 3 + 12  # different settings: two batches


def test_chat_requests_with_several_images_and_simple_ones_agree(template_folders):
    folder = str(template_folders["vicuna_v1"])
    chat = EagleLmmsChat(pretrained=folder, device="cpu", batch_size=2)
    lm = EagleLmms(pretrained=folder, device="cpu", batch_size=2)
    images = [make_image(seed=1), make_image(width=64, seed=2)]
    docs = [{"images": images, "question": "Which is red?"}, {"images": images[:1], "question": "Colour?"}]
    for model in (chat, lm):
        model.task_dict = {"t": {"s": docs}}

    def messages(doc):
        parts = [{"type": "image", "url": image} for image in doc["images"]]
        return [{"role": "user", "content": [*parts, {"type": "text", "text": doc["question"]}]}]

    chat_requests = [
        Instance("generate_until", ("", messages, {"max_new_tokens": 4}, i, "t", "s"), 0, {"task": "t", "doc_id": i,
                 "repeats": 1, "split": "s"})
        for i in range(2)
    ]  # fmt: skip
    simple_requests = [
        Instance("generate_until", (doc["question"], {"max_new_tokens": 4}, lambda d: d["images"], i, "t", "s"), 0,
                 {"task": "t", "doc_id": i, "repeats": 1, "split": "s"})
        for i, doc in enumerate(docs)
    ]  # fmt: skip
    from_chat = chat.generate_until(chat_requests)
    from_simple = lm.generate_until(simple_requests)
    assert [r.text for r in from_chat] == [r.text for r in from_simple]
    per_image = lm.processor.num_image_tokens
    assert from_chat[0].token_counts.input_tokens - from_chat[1].token_counts.input_tokens >= per_image
    with pytest.raises(ValueError, match="eagle takes images and text only, but t sent a 'video' part"):
        chat._from_messages([{"role": "user", "content": [{"type": "video", "url": "clip.mp4"}]}], "t")
    with pytest.raises(NotImplementedError, match="--force_simple"):
        chat.loglikelihood([])


def test_loglikelihood_scores_the_reply_as_the_template_renders_it(template_folders):
    for template, reply in (("vicuna_v1", " red"), ("llama3", "red"), ("chatml", "red")):
        lm = EagleLmms(pretrained=str(template_folders[template]), device="cpu")
        conversation = lm._conversation("Colour?", 1)
        prompt = lm._prompt(conversation)
        assert lm._reply_text(conversation, prompt, " red") == reply, template
    lm = EagleLmms(pretrained=str(template_folders["vicuna_v1"]), device="cpu")
    (red,) = words(lm.tokenizer, " red")
    Script(lm.model, [], after=red)
    lm.task_dict = {"t": {"s": [{}]}}
    args = ("Colour?", " red", lambda doc: [make_image()], 0, "t", "s")
    (result,) = lm.loglikelihood([request(args, "loglikelihood")])
    logprob, greedy = result.text
    assert greedy is True and logprob == pytest.approx(0, abs=1e-3)
    (other,) = lm.loglikelihood([request(("Colour?", " blue", lambda doc: [make_image()], 0, "t", "s"))])
    assert other.text[1] is False and other.text[0] < -100


def test_multi_round_requests_follow_the_tasks_rounds(template_folders):
    lm = EagleLmms(pretrained=str(template_folders["vicuna_v1"]), device="cpu")
    lm.task_dict = {"t": {"s": [{}]}}
    red, green = words(lm.tokenizer, " red", " green")
    Script(lm.model, [], after=red)
    seen = []

    def doc_to_text(doc, previous_output=None, round_idx=None, previous_round_info=None):
        seen.append((round_idx, list(previous_output)))
        return [make_image()], f"round {round_idx}", round_idx == 2, previous_output, {"round": round_idx}

    args = ("round 0", {"max_new_tokens": 2}, lambda doc: [make_image()], doc_to_text, 0, "t", "s")
    (rounds,) = lm.generate_until_multi_round([request(args, "generate_until_multi_round")])
    assert rounds == ["red red", "red red"] and seen == [(1, ["red red"]), (2, ["red red", "red red"])]


def test_requests_with_more_images_than_the_context_keep_the_first(template_folders):
    lm = EagleLmms(pretrained=str(template_folders["vicuna_v1"]), device="cpu")
    lm.context_limit = 3 * lm.processor.num_image_tokens + 50  # room for three images and the text
    lm.task_dict = {"t": {"s": [{}]}}
    (result,) = lm.generate_until([simple("Q", {"max_new_tokens": 1}, [make_image(seed=i) for i in range(8)])])
    assert lm.dropped_images == 1
    assert 3 * lm.processor.num_image_tokens <= result.token_counts.input_tokens <= lm.context_limit
