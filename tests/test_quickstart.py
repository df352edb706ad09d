"""A shortened `eagle quickstart`: data, three stages, evaluation, a Hub-ready folder with eval results and card,
and answers from a fresh process that loads the folder through remote code and a pipeline."""

import json

import torch
from huggingface_hub import ModelCard
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from training.quickstart import Budget, format_report, quickstart
from training.synth import COLOURS, SHAPES, WORDS


def test_shortened_quickstart_end_to_end(tmp_path):
    budget = Budget(n_images=120, prealign_steps=2, align_steps=2, sft_steps=20, batch_size=8)
    report = quickstart(tmp_path / "qs", seed=0, budget=budget)
    folder = tmp_path / "qs" / "model"
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    assert set(report["accuracy"]) == {"colour", "count", "position", "shape", "word"}
    assert all(0.0 <= entry["accuracy"] <= 1.0 and entry["n"] > 0 for entry in report["accuracy"].values())

    results = json.loads((folder / "eval_results.json").read_text())
    assert {m["name"] for m in results["metrics"]} == {f"exact match ({k})" for k in report["accuracy"]}
    card = ModelCard.load(folder / "README.md")
    assert card.data.pipeline_tag == "image-text-to-text" and "custom_code" in card.data.tags
    assert len(card.data.eval_results) == 5

    # The fresh process (remote code, pipeline) answers exactly what the model answers greedily here.
    answers = report["answers"]
    assert len(answers) == 5
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    for answer in answers:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": answer["question"]}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(images=[Image.open(answer["image"]).convert("RGB")], text=[prompt], return_tensors="pt")
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        here = processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        assert answer["answer"] == here
        assert answer["expected"] in {*map(str, WORDS), *map(str, COLOURS), *SHAPES, "left", "right"} or (
            answer["expected"].isdigit()
        )
    text = format_report(report)
    assert "held-out exact match" in text and "expected" in text
