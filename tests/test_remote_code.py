"""The saved folder is Hub-ready: remote code loads it in a fresh process without this package installed."""

import ast
import json
from pathlib import Path

import torch
from conftest import load_remotely

import eagle_hub.modeling_eagle as modeling_eagle
from eagle_hub.hub_cards.fresh_process import run_without_package

DECLARED = {"torch", "transformers", "safetensors", "huggingface_hub", "numpy", "PIL", "tokenizers"}
# threading: the image loader's lock around Pillow's process-wide truncated-image setting (no I/O of its own).
STDLIB_ALLOWED = {"math", "copy", "contextlib", "dataclasses", "typing", "collections", "functools", "itertools"}
STDLIB_ALLOWED.add("threading")
FORBIDDEN_CALLS = {"eval", "exec", "open", "compile", "__import__"}
FORBIDDEN_MODULES = {"subprocess", "socket", "urllib", "requests", "httpx", "os", "shutil", "pathlib", "pickle"}


def test_saved_folder_has_auto_map_and_remote_code(saved_folder):
    config = json.loads((saved_folder / "config.json").read_text())
    assert config["auto_map"] == modeling_eagle.AUTO_MAP
    processor_config = json.loads((saved_folder / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_eagle.EagleProcessor"
    for name in ("configuration_eagle.py", "modeling_eagle.py", "vision_expert.py", "processing_eagle.py"):
        assert (saved_folder / name).is_file(), name
    for expert in ("clip", "convnext", "sam", "eva02", "pix2struct"):
        assert (saved_folder / f"expert_{expert}.py").is_file()
    template = (saved_folder / "chat_template.jinja").read_text()
    assert "generation" in template and "endgeneration" in template
    assert not list(saved_folder.glob("*.bin")), "weights must be safetensors only"


def test_fresh_process_without_package_loads_every_auto_class_with_identical_logits(
    saved_folder, model, processor, tmp_path
):
    remote = load_remotely(saved_folder, tmp_path)
    assert remote["config_class"] == "EagleConfig" and remote["processor_class"] == "EagleProcessor"
    assert remote["AutoModel.class"] == "EagleModel"
    assert remote["AutoModelForImageTextToText.class"] == "EagleForConditionalGeneration"
    assert remote["AutoModelForCausalLM.class"] == "EagleForConditionalGeneration"

    from PIL import Image

    image = Image.new("RGB", (48, 40), (20, 160, 40))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}]
    inputs = processor(
        images=[image], text=[processor.apply_chat_template(messages, add_generation_prompt=True)], return_tensors="pt"
    )
    torch.testing.assert_close(inputs["input_ids"], remote["input_ids"])
    with torch.no_grad():
        logits = model(**inputs).logits
        hidden = model.model(**inputs).last_hidden_state
    for auto in ("AutoModelForImageTextToText", "AutoModelForCausalLM"):
        torch.testing.assert_close(remote[f"{auto}.logits"], logits, rtol=0, atol=0)
    torch.testing.assert_close(remote["AutoModel.hidden"], hidden, rtol=0, atol=0)
    torch.testing.assert_close(remote["generated"], model.generate(**inputs, max_new_tokens=5, do_sample=False))

    assert "'role': 'assistant'" in remote["pipeline_chat"]
    assert remote["pipeline_raw"][0]["generated_text"].startswith("<image>\nDescribe.")
    assert remote["pipeline_batched"].count("'role': 'assistant'") == 2


def remote_code_files() -> list[Path]:
    """Every file a Hub repo carries: the modules reachable by relative imports from the saved classes."""
    roots = [Path(modeling_eagle.modeling_eagle.__file__), Path(modeling_eagle.configuration_eagle.__file__)]
    roots += [Path(modeling_eagle.processing_eagle.__file__), Path(modeling_eagle.image_processing_eagle.__file__)]
    seen, queue = set(), list(roots)
    while queue:
        path = queue.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                queue.append(path.parent / f"{node.module}.py")
    return sorted(seen)


def test_remote_code_files_import_only_declared_packages_and_do_no_io():
    files = remote_code_files()
    assert len(files) >= 10
    for path in files:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level > 1 or (node.level == 1 and node.module is None):
                    raise AssertionError(f"{path.name}: only `from .module import X` is allowed")
                if node.level == 1:
                    assert (path.parent / f"{node.module}.py").is_file(), (
                        f"{path.name}: .{node.module} is not a sibling"
                    )
                    continue
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in FORBIDDEN_CALLS, f"{path.name} calls {node.func.id}"
                continue
            elif isinstance(node, ast.Attribute) and node.attr in {"system", "popen", "urlopen", "load"}:
                assert not (isinstance(node.value, ast.Name) and node.value.id in {"os", "torch", "pickle"}), (
                    f"{path.name} uses {node.value.id}.{node.attr}"
                )
                continue
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                assert top not in FORBIDDEN_MODULES, f"{path.name} imports {module}"
                assert top in DECLARED or top in STDLIB_ALLOWED, (
                    f"{path.name} imports {module}, not a declared package"
                )


ASSISTED_AND_ATTENTION_SCRIPT = r"""
import json, sys
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

folder = sys.argv[1]
model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(images=[Image.new("RGB", (48, 40), (20, 160, 40))], text=[prompt], return_tensors="pt")
tower_runs = []
model.model.vision_tower.register_forward_hook(lambda *args: tower_runs.append(1))

def kernels():
    # EVA-02 keeps its kernel as an attribute; the experts built from transformers' modules, in their config.
    return {
        name: getattr(expert, "attn_implementation", None) or expert.config._attn_implementation
        for name, expert in model.model.vision_tower.experts.items()
    }

greedy = model.generate(**inputs, max_new_tokens=6, do_sample=False)
tower_runs.clear()
assisted = model.generate(**inputs, max_new_tokens=6, do_sample=False, assistant_model=model)
result = {"equal": torch.equal(greedy, assisted), "assisted_tower_runs": len(tower_runs), "before": kernels()}
with torch.no_grad():
    sdpa = model(**inputs).logits
    model.set_attn_implementation("eager")
    result["after"] = kernels()
    eager = model(**inputs).logits
result["max_difference"] = float((eager - sdpa).abs().max())
print(json.dumps(result))
"""


def test_remote_code_assisted_decoding_equals_greedy_and_attention_switches_at_run_time(saved_folder):
    """In a process without this package: an Eagle assistant (which sees the images on its own first step) gives the
    greedy tokens, and `set_attn_implementation` moves every expert to the new kernel with the same logits."""
    run = run_without_package(ASSISTED_AND_ATTENTION_SCRIPT, saved_folder, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["equal"], result
    assert result["assisted_tower_runs"] == 2, result  # the model's prefill and the assistant's own
    assert set(result["before"].values()) == {"sdpa"}, result
    assert set(result["after"].values()) == {"eager"}, result
    assert result["max_difference"] < 1e-4, result
