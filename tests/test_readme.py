"""The README's Python examples run as written (in a scratch folder); its table of transformers' common tests is
the record of their run (docs/transformers-common-tests.json)."""

import json
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    assert (tmp_path / "eagle-x5-tiny" / "model.safetensors").is_file()
    printed = capsys.readouterr().out
    assert printed.count("generated_text") == 3  # two batched chat answers and one raw answer


# ------------------------------------------------------------------------- transformers' common tests on Eagle

# Every skip reason in docs/transformers-common-tests.json falls in one group of the README's list, which states the
# group's count as "<label> (<count>)": label -> test of the reason.
SKIP_GROUPS = {
    "a GPU or other accelerator": lambda r: r.startswith("test requires") and re.search(r"accelerator|CUDA|MPS", r),
    "Flash Attention 2/3/4": lambda r: r.startswith("test requires Flash Attention"),
    "ExecuTorch": lambda r: r == "test requires ExecuTorch",
    "ONNXScript": lambda r: r == "test requires ONNXScript",
    "DeepSpeed": lambda r: r == "test requires deepspeed",
    "Torchcodec": lambda r: r == "test requires Torchcodec",
    "librosa": lambda r: r == "test requires librosa",
    "optimum-quanto": lambda r: r == "test requires optimum-quanto",
    "grouped MoE matmuls": lambda r: "does not support grouped_mm" in r,
    "router logits and sparse experts": lambda r: "router_logits" in r or "no sparse experts" in r,
    "partial and axial RoPE": lambda r: "partial rope" in r or "axial RoPE" in r,
    "MTP, encoder-decoder loss, recurrent layers, sliding windows, resizing position embeddings, SDPA dispatch of "
    "non-composite models, continuing generation from `inputs_embeds`": lambda r: (
        r
        in (
            "No MTP keys registered",
            "Model is not an encoder-decoder",
            "EagleForConditionalGeneration declares no recurrent layer types",
            "Model does not support sliding window mask",
            "Model does not have position embeddings",
            "EagleModel does not support SDPA",
            "EagleForConditionalGeneration doesn't support caching",
        )
    ),
    "every video, audio and feature-extractor processor test": lambda r: re.search(
        r"^(video_processor|audio_processor|feature_extractor) attribute not present|^Processor (has no (audio|video) "
        r"processor|doesn't accept videos)",
        r,
    ),
    "tools in the chat template": lambda r: r == "Chat template does not support tools",
    "compare or save two backends or want a torchvision one": lambda r: (
        "less than 2 backends" in r
        or "torchvision backend is not available" in r
        or "asks in-tree models added after 2025-09 for a torchvision one" in r
    ),
    "4-channel arrays": lambda r: r.startswith("As LLaVA's: 4-channel images"),
    "`preprocess` argument validation": lambda r: r == "No validation found for `preprocess` method",
}


def common_tests_record() -> dict:
    return json.loads((README.parent / "docs" / "transformers-common-tests.json").read_text())


def test_the_common_tests_record_is_whole_and_every_skip_has_its_reason():
    """The record (tests/common_tests_record.py writes it from a run and checks every later run against it): its
    per-mixin counts are its tests', every skip carries a reason, and it covers the three files."""
    record = common_tests_record()
    counts = {}
    for entry in record["tests"].values():
        mixin = counts.setdefault(entry["mixin"], {"passed": 0, "skipped": 0, "slow": 0})
        mixin[entry["outcome"]] += 1
        mixin["slow"] += entry["slow"]
        assert (entry["outcome"] == "skipped") == bool(entry["reason"]), entry
    assert counts == record["mixins"]
    files = {nodeid.split("::")[0] for nodeid in record["tests"]}
    assert files == {f"tests/test_transformers_{name}.py" for name in ("modeling", "processing", "image_processing")}


def test_the_readme_common_tests_table_and_skip_list_are_the_record():
    """The README's passed/skipped table per mixin, the `@slow` count, and the count of every group of its skip list
    are the record's; every recorded skip falls in exactly one group."""
    record = common_tests_record()
    text = README.read_text()
    section = text.split("transformers' own common tests run on Eagle", 1)[1]
    rows = re.findall(r"^\| `(\w+)`[^|]*\| (\d+) \| (\d+) \|$", section, flags=re.M)
    table = {mixin: {"passed": int(passed), "skipped": int(skipped)} for mixin, passed, skipped in rows}
    recorded = {
        mixin: {key: counts[key] for key in ("passed", "skipped")} for mixin, counts in record["mixins"].items()
    }
    assert table == recorded
    slow = sum(counts["slow"] for counts in record["mixins"].values())
    prose = " ".join(section.split())
    assert f"transformers marks {slow} of these tests `@slow`" in prose
    assert f"transformers {record['versions']['transformers']}'s mixins" in prose

    groups = dict.fromkeys(SKIP_GROUPS, 0)
    for nodeid, entry in record["tests"].items():
        if entry["outcome"] == "skipped":
            matched = [label for label, test in SKIP_GROUPS.items() if test(entry["reason"])]
            assert len(matched) == 1, (nodeid, entry["reason"], matched)
            groups[matched[0]] += 1
    assert sum(groups.values()) == sum(counts["skipped"] for counts in record["mixins"].values())
    for label, count in groups.items():
        assert f"{label} ({count})" in prose, (label, count)


def test_the_cpu_tower_table_is_its_record():
    """docs/performance.md's CPU tower table: every steady time is docs/cpu-tower-x5.json's, at the table's
    precision, and the greedy-token column and the run's facts (one repeat, 19 min) are the record's."""
    root = Path(__file__).resolve().parents[1]
    record = json.loads((root / "docs" / "cpu-tower-x5.json").read_text())
    text = (root / "docs" / "performance.md").read_text()
    rows = {
        "eager (fp32)": "eager",
        "compiled (inductor, fp32)": "compiled",
        "ConvNeXt channels-last (fp32)": "channels_last",
        "bf16 autocast": "bf16_autocast",
    }
    experts = ["clip", "convnext", "sam", "eva02", "pix2struct", "tower"]
    for label, variant in rows.items():
        line = next(line for line in text.splitlines() if line.startswith(f"| {label} |"))
        cells = [cell.strip() for cell in line.strip("|").split("|")][1:]
        steady = [f"{record['variants'][variant][expert]['steady_s']:.2f}" for expert in experts]
        assert cells[: len(experts)] == steady, label
        assert (cells[-1] == "yes") == record["variants"][variant]["tokens_match"], label
    assert record["repeats"] == 1 and '`"repeats": 1` in the record' in " ".join(text.split())
    assert f"seed {record['seed']}, {round(record['wall_s'] / 60)} min" in " ".join(text.split())
