"""The `eagle` command line: init, generate, help, and one-line errors with exit status 2."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_image

from eagle_hub.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "eagle_hub.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def test_help_explains_every_command():
    out = run_cli("--help")
    assert out.returncode == 0
    for command in ("init", "generate"):
        assert command in out.stdout
    init_help = run_cli("init", "--help").stdout
    assert "--preset" in init_help and "--config-only" in init_help


def test_init_then_generate(tmp_path, capsys):
    folder = tmp_path / "tiny"
    assert main(["init", "--preset", "eagle-x4-tiny", "--output", str(folder)]) == 0
    assert (folder / "model.safetensors").is_file()
    assert json.loads((folder / "config.json").read_text())["vision_config"]["grid_size"] == 4
    image = tmp_path / "red.png"
    make_image().save(image)
    capsys.readouterr()
    code = main(
        ["generate", "--model", str(folder), "--image", str(image), "--prompt", "Colour?", "--max-new-tokens", "3"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    # The same answer computed here from the folder, greedy, 3 tokens.
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[Image.open(image).convert("RGB")], text=[prompt], return_tensors="pt")
    new = model.generate(**inputs, max_new_tokens=3, do_sample=False)[:, inputs["input_ids"].shape[1] :]
    assert printed == processor.post_process_image_text_to_text(new, skip_special_tokens=True)[0] + "\n"


def test_init_config_only_writes_everything_but_weights(tmp_path):
    folder = tmp_path / "x5"
    assert main(["init", "--preset", "eagle-x5", "--output", str(folder), "--config-only"]) == 0
    names = {p.name for p in folder.iterdir()}
    assert "model.safetensors" not in names and not any(n.endswith(".bin") for n in names)
    assert {
        "config.json",
        "processor_config.json",
        "tokenizer.json",
        "modeling_eagle.py",
        "chat_template.jinja",
    } <= names
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageTextToText"] == "modeling_eagle.EagleForConditionalGeneration"
    assert config["text_config"]["hidden_size"] == 4096


@pytest.mark.parametrize(
    "args, message",
    [
        (["init", "--preset", "nope", "--output", "x"], "unknown preset 'nope'"),
        (["generate", "--model", "/does/not/exist", "--prompt", "hi"], "no config.json there"),
    ],
)
def test_user_errors_are_one_line_with_status_2(args, message, tmp_path):
    out = run_cli(*args, cwd=tmp_path)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_data_synth_and_train_from_the_command_line(tmp_path, capsys):
    import yaml

    data = tmp_path / "data"
    synth = ["data", "synth", "--output", str(data), "--n", "16", "--seed", "1", "--focus-types", "word"]
    assert main([*synth, "--scene", "uniform"]) == 0
    assert (
        (data / "sft.json").is_file() and (data / "hf" / "captions").is_dir() and (data / "hf" / "sft_word").is_dir()
    )
    assert json.loads((data / "manifest.json").read_text())["scene"] == "uniform"
    recipe = yaml.safe_load((ROOT / "training" / "recipes" / "tiny.yaml").read_text())
    recipe["stages"] = recipe["stages"][1:2]  # projector alignment only, to keep it short
    recipe["stages"][0]["max_steps"] = 2
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    capsys.readouterr()
    assert main(["train", str(path), "--output", str(tmp_path / "run"), "--data-root", str(data)]) == 0
    printed = capsys.readouterr().out
    assert "stage2-align" in printed and "projector 14,464" in printed and "tokens/s" in printed
    assert (tmp_path / "run" / "stage2-align" / "model.safetensors").is_file()
    out = run_cli("train", str(path), "--output", str(tmp_path / "run"), "--data-root", str(data))
    assert out.returncode == 2 and "not empty" in out.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {preset: eagle-x5-tiny}\nstages: [{name: s, kind: magic}]\n")
    out = run_cli("train", str(bad), "--output", str(tmp_path / "other"))
    assert out.returncode == 2 and "stages[0]" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_existing_output_and_bad_image_are_user_errors(tmp_path, saved_folder):
    (tmp_path / "taken").mkdir()
    out = run_cli("init", "--preset", "eagle-x4-tiny", "--output", str(tmp_path / "taken"))
    assert out.returncode == 2 and "already exists" in out.stderr
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    out = run_cli("generate", "--model", str(saved_folder), "--image", str(bad), "--prompt", "hi")
    assert out.returncode == 2 and "not a readable image" in out.stderr
    debug = run_cli("--debug", "generate", "--model", str(saved_folder), "--image", str(bad), "--prompt", "hi")
    assert debug.returncode != 0 and "Traceback" in debug.stderr
