"""The vision tower's fast path (``EagleVisionTower.enable_fast_path``): every expert compiled with ``torch.compile``
and run whenever nothing needs the eager forward.

The default-suite tests compile with the ``eager`` backend, which runs dynamo's capture (so ``fullgraph=True``
still fails on any graph break) without paying for inductor's code generation, about 100 s for the tiny tower on
a cold cache on 2 cores; the inductor run is marked slow. `eagle bench` measures what the fast path gains."""

import copy
import json

import pytest
import torch
from conftest import require_module, tiny_model
from test_performance import prompt_inputs, real_expert_inputs
from transformers import AutoModelForImageTextToText

from eagle_hub.benchmarks import bench
from eagle_hub.modeling_eagle.modeling_eagle import EagleForConditionalGeneration

EXPERT_NAMES = ["clip", "convnext", "sam", "eva02", "pix2struct"]


def count_compiled_calls(tower, monkeypatch) -> list[str]:
    """The names of the experts that ran compiled, call after call."""
    calls = []
    compiled_forward = tower.compiled_forward

    def recording(vision_expert, pixels):
        compiled = compiled_forward(vision_expert, pixels)
        if compiled is not None:
            calls.append(next(name for name, e in tower.experts.items() if e is vision_expert))
        return compiled

    monkeypatch.setattr(tower, "compiled_forward", recording)
    return calls


def test_fast_path_gives_the_plain_greedy_tokens(tokenizer, processor, monkeypatch):
    model = tiny_model(tokenizer)
    tower = model.model.vision_tower
    assert tower.fast_path is None  # off by default
    inputs = prompt_inputs(processor, ("Short?", "A longer question here?"), (1, 2))
    with torch.inference_mode():
        expected = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        tower.enable_fast_path(backend="eager")
        calls = count_compiled_calls(tower, monkeypatch)
        generated = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    torch.testing.assert_close(generated, expected)
    assert calls == EXPERT_NAMES  # the prefill encoded the images once, every expert compiled
    assert set(tower._compiled_forwards) == {type(e) for e in tower.experts.values()}


def test_every_expert_compiles_as_one_graph_and_a_graph_break_fails(tokenizer):
    """``fullgraph=True`` (the default) raises on a graph break: every expert captures whole, and an expert with a
    break in it makes the fast path fail loudly, not run slower."""
    model = tiny_model(tokenizer)
    tower = model.model.vision_tower
    inputs = real_expert_inputs(model.config, padding_patches=3)
    with torch.no_grad():
        expected = tower(inputs, return_expert_features=True)
        tower.enable_fast_path(backend="eager")
        torch._dynamo.reset()
        compiled = tower(inputs, return_expert_features=True)
    torch.testing.assert_close(compiled.last_hidden_state, expected.last_hidden_state)
    torch.testing.assert_close(compiled.expert_features, expected.expert_features)
    counters = torch._dynamo.utils.counters
    assert counters["stats"]["unique_graphs"] >= len(EXPERT_NAMES)
    assert not counters["graph_break"], dict(counters["graph_break"])

    class BrokenClip(type(tower.experts["clip"])):
        def forward(self, pixel_values):
            torch._dynamo.graph_break()
            return super().forward(pixel_values)

    tower.experts["clip"].__class__ = BrokenClip
    with pytest.raises(torch._dynamo.exc.Unsupported), torch.no_grad():
        tower(inputs)


def test_training_runs_eager_and_gradients_flow(tokenizer, monkeypatch):
    """Nothing is captured while the tower trains, nor while gradients are needed: the eager forward runs and the
    experts' weights get gradients. In eval under no_grad (or with the experts frozen) the compiled one runs."""
    model = tiny_model(tokenizer)
    tower = model.model.vision_tower
    inputs = real_expert_inputs(model.config)
    tower.enable_fast_path(backend="eager")
    calls = count_compiled_calls(tower, monkeypatch)

    tower.train()
    tower(inputs).last_hidden_state.sum().backward()
    assert calls == [] and tower._compiled_forwards == {}
    assert all(p.grad is not None for p in tower.experts.parameters() if p.requires_grad)

    tower.eval()  # eval mode, but gradients are enabled and the weights want them: still eager
    tower.zero_grad()
    tower(inputs).last_hidden_state.sum().backward()
    assert calls == [] and tower._compiled_forwards == {}
    assert all(p.grad is not None for p in tower.experts.parameters())

    tower.freeze_experts(["sam"])  # a frozen expert builds no graph: it may run compiled, the others not
    tower(inputs).last_hidden_state.sum().backward()
    assert calls == ["sam"]
    with torch.no_grad():
        tower(inputs)
    assert calls == ["sam", *EXPERT_NAMES]

    tower.freeze_experts([])
    tower.train()  # training mode, even without gradients
    with torch.no_grad():
        tower(inputs)
    assert calls == ["sam", *EXPERT_NAMES]


def test_hidden_states_and_attentions_run_eager(tokenizer, monkeypatch):
    model = tiny_model(tokenizer, attn_implementation="eager")
    tower = model.model.vision_tower
    inputs = real_expert_inputs(model.config)
    tower.enable_fast_path(backend="eager")
    calls = count_compiled_calls(tower, monkeypatch)
    with torch.no_grad():
        out = tower(inputs, output_hidden_states=True, output_attentions=True)
    assert calls == []
    assert all(len(out.hidden_states[name]) > 1 for name in EXPERT_NAMES)
    assert out.attentions["clip"][0] is not None


def test_state_dict_saving_loading_and_deep_copies_are_unchanged(tokenizer, tmp_path):
    model = tiny_model(tokenizer)
    tower = model.model.vision_tower
    keys = list(model.state_dict())
    inputs = real_expert_inputs(model.config)
    tower.enable_fast_path(backend="eager")
    with torch.no_grad():
        expected = tower(inputs).last_hidden_state
    assert list(model.state_dict()) == keys
    model.save_pretrained(tmp_path)
    assert "fast_path" not in (tmp_path / "config.json").read_text()
    reloaded = EagleForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert list(reloaded.state_dict()) == keys and reloaded.model.vision_tower.fast_path is None
    torch.testing.assert_close(reloaded.state_dict(), model.state_dict())
    # A deep copy keeps the switch but runs its own weights through the shared compiled functions.
    copied = copy.deepcopy(tower)
    assert copied.fast_path == tower.fast_path
    with torch.no_grad():
        for parameter in copied.experts["clip"].parameters():
            parameter.mul_(0.5)
        torch.testing.assert_close(tower(inputs).last_hidden_state, expected)
        assert not torch.allclose(copied(inputs).last_hidden_state, expected)


def test_disabling_restores_eager_and_to_recompiles(tokenizer, monkeypatch):
    model = tiny_model(tokenizer)
    tower = model.model.vision_tower
    inputs = real_expert_inputs(model.config)
    calls = count_compiled_calls(tower, monkeypatch)
    with torch.no_grad():
        expected = tower(inputs).last_hidden_state
        tower.enable_fast_path(backend="eager")
        tower(inputs)
        assert calls == EXPERT_NAMES
        # .to() another dtype: the compiled functions' guards see it and they recompile; same features
        tower.to(torch.float64)
        out = tower([x.double() for x in inputs]).last_hidden_state
        assert out.dtype == torch.float64 and calls == EXPERT_NAMES * 2
        torch.testing.assert_close(out.float(), expected)
        tower.to(torch.float32)
        tower.disable_fast_path()
        assert tower.fast_path is None and tower._compiled_forwards == {}
        torch.testing.assert_close(tower(inputs).last_hidden_state, expected)
    assert calls == EXPERT_NAMES * 2


def test_device_map_offloaded_experts_run_eager_with_the_same_tokens(saved_folder, model, processor, tmp_path):
    """Under a device_map that offloads, accelerate's hooks move weights block by block: those experts run eager,
    the others compiled, and the answer does not change."""
    inputs = prompt_inputs(processor)
    expected = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    placed = AutoModelForImageTextToText.from_pretrained(
        saved_folder, device_map="auto", max_memory={"cpu": size // 2}, offload_folder=str(tmp_path / "offload")
    )
    tower = placed.model.vision_tower
    hooked = {name for name, e in tower.experts.items() if any(hasattr(m, "_hf_hook") for m in e.modules())}
    assert hooked  # accelerate hooked at least one expert
    tower.enable_fast_path(backend="eager")
    pixels = inputs["pixel_values"]
    with torch.inference_mode():
        eager = {name for i, (name, e) in enumerate(tower.experts.items()) if not tower.compiled_forward(e, pixels[i])}
        generated = placed.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert eager == hooked
    torch.testing.assert_close(generated, expected)


def test_bench_fast_path_rows_carry_every_figure():
    """`eagle bench --preset small`'s fast-path rows, on the small preset's real models (eager backend, one
    repeat: the structure, not the figures), then the table and the JSON they go into."""
    settings = bench.Settings.for_preset("small", device="cpu", repeats=1, quick=True, fast_path_backend="eager")
    settings.warmup = 0
    device = torch.device("cpu")
    models = bench.build_models("small", device, torch.float32)
    pixels = bench.make_inputs(models, 1, device, torch.float32).eagle["pixel_values"]
    tower = models.eagle.model.vision_tower
    measured = bench.measure_fast_path(tower, pixels, settings, device)
    assert tower.fast_path is None  # the bench leaves the model as it found it
    flops = bench.count_flops("small", prompt_tokens=96)
    rows = bench.summarize_fast_path(measured, flops, peak=None)
    assert rows["backend"] == "eager" and rows["mode"] is None and rows["peak_tflops"] is None
    for name in [*EXPERT_NAMES, "tower"]:
        entry = rows[name]
        for key in ("eager_ms", "compiled_ms", "speedup", "compile_s", "eager_tflops_per_s", "compiled_tflops_per_s"):
            assert entry[key] > 0, (name, key)
        assert entry["eager_fraction_of_peak"] is None and entry["compiled_fraction_of_peak"] is None
        assert entry["max_abs_diff"] < 1e-4, (name, entry["max_abs_diff"])
    assert rows["tower"]["compile_s"] == pytest.approx(sum(rows[name]["compile_s"] for name in EXPERT_NAMES), 1e-2)
    printed = "\n".join(bench.fast_path_lines(rows))
    assert "vision fast path" in printed and all(name in printed for name in [*EXPERT_NAMES, "tower"])
    bench.write_json({"fast_path": rows}, "/dev/null")  # serialisable


@pytest.mark.slow  # inductor's code generation: about 100 s for the tiny tower on a cold cache on 2 cores
def test_inductor_fast_path_gives_the_plain_greedy_tokens(tokenizer, processor, monkeypatch):
    model = tiny_model(tokenizer)
    tower = model.model.vision_tower
    inputs = prompt_inputs(processor)
    with torch.inference_mode():
        expected = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        features = tower(inputs["pixel_values"]).last_hidden_state
        tower.enable_fast_path()  # inductor, fullgraph
        calls = count_compiled_calls(tower, monkeypatch)
        generated = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        torch.testing.assert_close(tower(inputs["pixel_values"]).last_hidden_state, features, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(generated, expected)
    assert calls == EXPERT_NAMES * 2


def test_cpu_tower_measurement_smoke_run(tmp_path):
    """``python -m eagle_hub.benchmarks.cpu_tower`` on the tiny experts at the released resolutions (eager backend,
    one repeat, a few variants): every figure is there, eager's tokens match themselves, and the JSON is written."""
    from eagle_hub.benchmarks import cpu_tower

    path = tmp_path / "cpu-tower.json"
    argv = ["--preset", "eagle-x5-tiny", "--backend", "eager", "--variants", "eager,compiled,bf16_autocast"]
    assert cpu_tower.main([*argv, "--new-tokens", "2", "--json", str(path)]) == 0
    results = json.loads(path.read_text())
    assert results["resolutions"] == {"clip": 336, "convnext": 1024, "sam": 1024, "eva02": 1024, "pix2struct": 1024}
    assert set(results["cpu_bf16"]) == {"onednn_bf16", "avx512_bf16", "amx_bf16"}
    variants = results["variants"]
    assert list(variants) == ["eager", "compiled", "bf16_autocast"]
    assert variants["eager"]["tokens_match"] and variants["eager"]["tower"]["max_abs_diff"] == 0
    for name, rows in variants.items():
        if "skipped" in rows:  # bf16 on a CPU without it
            assert name == "bf16_autocast" and not results["cpu_bf16"]["onednn_bf16"]
            continue
        for expert in [*EXPERT_NAMES, "tower"]:
            assert rows[expert]["steady_s"] > 0 and rows[expert]["tflops_per_s"] > 0, (name, expert)
            assert rows[expert]["speedup_over_eager"] > 0
        assert len(rows["tokens"]) == 2
    assert variants["compiled"]["tower"]["max_abs_diff"] < 1e-4 and variants["compiled"]["tokens_match"]
    assert results["fastest_matching"] in variants


def test_quantized_llm_with_the_fast_path_gives_the_same_tokens(saved_folder, processor, monkeypatch):
    """An 8-bit LLM (bitsandbytes, on a CPU) with the experts kept in full precision: the fast path compiles the
    experts as ever and the greedy tokens do not change."""
    require_module("bitsandbytes")
    from transformers import BitsAndBytesConfig

    from eagle_hub.modeling_eagle.modeling_eagle import QUANTIZATION_SKIP_MODULES

    config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=QUANTIZATION_SKIP_MODULES)
    quantized = AutoModelForImageTextToText.from_pretrained(saved_folder, quantization_config=config, device_map="cpu")
    tower = quantized.model.vision_tower
    inputs = prompt_inputs(processor)
    with torch.inference_mode():
        expected = quantized.generate(**inputs, max_new_tokens=5, do_sample=False)
        tower.enable_fast_path(backend="eager")
        calls = count_compiled_calls(tower, monkeypatch)
        generated = quantized.generate(**inputs, max_new_tokens=5, do_sample=False)
    torch.testing.assert_close(generated, expected)
    assert calls == EXPERT_NAMES
