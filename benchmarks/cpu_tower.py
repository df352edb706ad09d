"""The full-size X5 vision tower on a CPU at the released resolutions: what a CPU user's options gain.

    python -m eagle_hub.benchmarks.cpu_tower --json cpu-tower.json     # or: eagle bench --preset x5-tower-cpu
    python -m eagle_hub.benchmarks.cpu_tower --variants eager,compiled --repeats 1 --json cpu-tower.json

One run, one process, one model: ``eagle-x5``'s five experts at full size with the resolutions the released
checkpoints run (``presets.RELEASED_EXPERT_INPUTS``: CLIP 336 px, the others 1024 px), random weights (seed 0), float32
weights, one image (the bench's fixed 640x480 random image through ``EagleImageProcessor``), torch's thread count as
set (``--threads``). Each variant is applied to the same model in turn and undone after:

- ``eager``: the plain forward (the reference for every difference below).
- ``compiled``: ``enable_fast_path()`` (inductor, ``fullgraph=True``, no graph capture on a CPU).
- ``channels_last``: ``set_channels_last()`` (ConvNeXt's convolutions in NHWC), eager.
- ``compiled_channels_last``: both.
- ``bf16_autocast``: the tower under ``torch.autocast("cpu", dtype=torch.bfloat16)``, eager; only where the CPU has
  bf16 instructions (oneDNN says so: ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``; the cpuinfo flags
  ``avx512_bf16`` / ``amx_bf16`` are recorded too), else recorded as skipped.
- ``compiled_bf16_autocast``: both.

Per variant: the first call of the tower (for a compiled variant this compiles what its guards do not find
compiled already: a later compiled variant may recompile only some experts), then ``--repeats`` steady calls.
Each expert is timed inside the tower's forward (around ``EagleVisionTower.run_expert``), the tower whole.
Reported per expert and for the tower: the first call's seconds, the median steady seconds, the achieved TFLOP/s
(analytic FLOPs counted on the meta device, 2 per multiply-add), the speedup over eager's steady time, the largest
absolute difference of the expert's map on the grid (and of the fused tower output) from eager's, also relative to
eager's largest magnitude. Greedy tokens: each variant's tower output goes through the projector and a small LLM
(``eagle-x5-small``'s, random weights, the projector at the X5 tower's width) for ``--new-tokens`` greedy tokens
after a fixed prompt; ``tokens_match`` says whether they are eager's. ``fastest_matching`` names the variant with
the lowest tower steady time among those whose tokens match.

The eager tower was timed at about 110 s per call on this project's 2-core AMD EPYC, so the whole run, every variant
with one repeat (two tower calls each, plus inductor compiling the full-size experts), should be expected to take
the better part of an hour there; ``--variants`` runs fewer.
"""

import argparse
import contextlib
import copy
import json
import statistics
import time

import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)

VARIANTS = (
    "eager",
    "compiled",
    "channels_last",
    "compiled_channels_last",
    "bf16_autocast",
    "compiled_bf16_autocast",
)


def cpu_bf16() -> dict:
    flags = set()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    return {
        "onednn_bf16": bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
    }


def released_config(preset: str = "eagle-x5", text_preset: str = "eagle-x5-small"):
    """``preset``'s experts at the released resolutions, with ``text_preset``'s (small) LLM."""
    from eagle_hub.modeling_eagle.configuration_eagle import EagleConfig
    from eagle_hub.modeling_eagle.presets import RELEASED_EXPERT_INPUTS, eagle_config

    vision = copy.deepcopy(eagle_config(preset).vision_config.to_dict())
    for spec in vision["experts"]:
        spec.update(RELEASED_EXPERT_INPUTS[spec["type"]])
    text = eagle_config(text_preset).text_config
    return EagleConfig(vision_config=vision, text_config=text.to_dict(), image_token_id=text.vocab_size - 1)


def expert_gflops(config) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from eagle_hub.modeling_eagle.modeling_eagle import EagleVisionTower

    from .bench.flops import tower_flops

    def flops(fn) -> int:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            fn()
        return counter.get_total_flops()

    with torch.device("meta"):
        tower = EagleVisionTower(config.vision_config)
    counted = tower_flops(tower, config, flops)
    return {name: entry["gflops"] for name, entry in counted["experts"].items()} | {"tower": counted["tower_gflops"]}


@contextlib.contextmanager
def variant_applied(tower, variant: str):
    """The variant's settings on the tower for the duration (the fast path is enabled once, outside)."""
    from .bench.fast_path import fast_path_off

    with contextlib.ExitStack() as stack:
        if "compiled" not in variant:
            stack.enter_context(fast_path_off(tower))
        if "channels_last" in variant:
            tower.set_channels_last(True)
            stack.callback(tower.set_channels_last, False)
        if "bf16_autocast" in variant:
            stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
        yield


def timed_tower_call(tower, pixels) -> tuple[float, dict, object]:
    """The tower's forward, whole and per expert (around ``run_expert``): seconds, per-expert seconds, output."""
    run_expert, per_expert = tower.run_expert, {}

    def timed(name, *args, **kwargs):
        start = time.perf_counter()
        try:
            return run_expert(name, *args, **kwargs)
        finally:
            per_expert[name] = time.perf_counter() - start

    tower.run_expert = timed
    try:
        start = time.perf_counter()
        output = tower(pixels, return_expert_features=True)
        return time.perf_counter() - start, per_expert, output
    finally:
        del tower.run_expert


def greedy_tokens(model, fused: torch.Tensor, ids: torch.Tensor, new_tokens: int) -> list[int]:
    """What the model generates with these tower features in its image tokens' places."""
    embeds = model.get_input_embeddings()(ids)
    projector = model.model.multi_modal_projector
    projected = projector(fused.to(projector.linear_1.weight.dtype)).to(embeds.dtype)
    mask = (ids == model.config.image_token_id).unsqueeze(-1).expand_as(embeds)
    embeds = embeds.masked_scatter(mask, projected)
    output = model.generate(
        inputs_embeds=embeds,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=0,
    )
    return output[0, -new_tokens:].tolist()


def build(preset: str, text_preset: str):
    import numpy as np
    from PIL import Image

    from eagle_hub.modeling_eagle import EagleImageProcessor
    from eagle_hub.modeling_eagle.modeling_eagle import EagleForConditionalGeneration

    from .bench.models import prompt_ids

    config = released_config(preset, text_preset)
    torch.manual_seed(0)
    model = EagleForConditionalGeneration(config).eval()
    model.requires_grad_(False)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))
    processor = EagleImageProcessor.from_vision_experts(config.vision_config.experts)
    pixels = processor(images=[image], return_tensors="pt")["pixel_values"]
    ids = prompt_ids(config.image_seq_length, config.image_token_id, config.text_config.vocab_size, 1)
    return model, pixels, ids


def run(
    variants=VARIANTS,
    repeats: int = 1,
    new_tokens: int = 16,
    preset: str = "eagle-x5",
    text_preset: str = "eagle-x5-small",
    backend: str = "inductor",
) -> dict:
    """Every variant's figures (see the module doc); ``preset`` ``eagle-x5-tiny`` makes a quick smoke run."""
    import transformers

    from .bench.run import device_name

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or "eager" not in variants:
        raise ValueError(f"variants {list(variants)}: give eager and any of {', '.join(VARIANTS)}")
    started = time.perf_counter()
    bf16 = cpu_bf16()
    model, pixels, ids = build(preset, text_preset)
    tower = model.model.vision_tower
    gflops = expert_gflops(model.config)
    results = {
        "preset": preset,
        "text_preset": text_preset,
        "resolutions": {spec["name"]: spec["image_size"] for spec in model.config.vision_config.experts},
        "device_name": device_name(torch.device("cpu")),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "dtype": "float32",
        "seed": 0,
        "repeats": repeats,
        "backend": backend,
        "cpu_bf16": bf16,
        "gflops": {name: round(value, 3) for name, value in gflops.items()},
        "variants": {},
    }
    reference = None
    # eager first: every other variant is compared with it
    order = ["eager", *(v for v in VARIANTS if v in variants and v != "eager")]
    tower.enable_fast_path(backend=backend)
    with torch.inference_mode():
        for variant in order:
            if "bf16" in variant and not bf16["onednn_bf16"]:
                results["variants"][variant] = {"skipped": "this CPU has no bf16 instructions (oneDNN)"}
                continue
            logger.warning(f"cpu_tower: {variant}")
            with variant_applied(tower, variant):
                first_s, first_experts, _ = timed_tower_call(tower, pixels)
                calls = [timed_tower_call(tower, pixels) for _ in range(repeats)]
            output = calls[-1][2]
            if reference is None:
                reference = output
            tokens = greedy_tokens(model, output.last_hidden_state, ids, new_tokens)
            if variant == "eager":
                eager_tokens = tokens
            results["variants"][variant] = summarize(
                variant, first_s, first_experts, calls, output, reference, gflops, results["variants"].get("eager")
            ) | {"tokens": tokens, "tokens_match": tokens == eager_tokens}
            logger.warning(f"cpu_tower: {variant}: tower {results['variants'][variant]['tower']}")
    tower.disable_fast_path()
    measured = {name: v for name, v in results["variants"].items() if "skipped" not in v}
    matching = [name for name, v in measured.items() if v["tokens_match"]]
    results["fastest_matching"] = min(matching, key=lambda name: measured[name]["tower"]["steady_s"])
    results["wall_s"] = round(time.perf_counter() - started, 1)
    return results


def summarize(variant, first_s, first_experts, calls, output, reference, gflops, eager) -> dict:
    names = list(first_experts)
    steady = {name: statistics.median(call[1][name] for call in calls) for name in names}
    steady["tower"] = statistics.median(call[0] for call in calls)
    first = dict(first_experts, tower=first_s)
    diffs = {name: output.expert_features[name] - reference.expert_features[name] for name in names}
    diffs["tower"] = output.last_hidden_state - reference.last_hidden_state
    scales = {name: reference.expert_features[name].abs().max().item() for name in names}
    scales["tower"] = reference.last_hidden_state.abs().max().item()
    rows = {}
    for name in [*names, "tower"]:
        largest = diffs[name].float().abs().max().item()
        rows[name] = {
            "first_call_s": round(first[name], 3),
            "steady_s": round(steady[name], 3),
            "tflops_per_s": round(gflops[name] / steady[name] / 1e3, 5),
            "speedup_over_eager": 1.0 if eager is None else round(eager[name]["steady_s"] / steady[name], 3),
            "max_abs_diff": largest,
            "max_rel_diff": largest / scales[name] if scales[name] else None,
        }
    return rows


def format_table(results: dict) -> str:
    from .bench.report import cell, table

    lines = [
        f"full-size {results['preset']} tower at the released resolutions {results['resolutions']}: "
        f"{results['device_name']}, {results['threads']} thread(s), float32 weights, one image; torch "
        f"{results['torch']}; bf16 on this CPU: {results['cpu_bf16']}"
    ]
    measured = {name: v for name, v in results["variants"].items() if "skipped" not in v}
    names = [*next(iter(measured.values()))]
    names = [n for n in names if n not in ("tokens", "tokens_match")]
    for variant, rows in results["variants"].items():
        if "skipped" in rows:
            lines.append(f"\n{variant}: skipped ({rows['skipped']})")
            continue
        body = [
            [
                name,
                cell(rows[name]["first_call_s"], 1),
                cell(rows[name]["steady_s"], 2),
                cell(rows[name]["speedup_over_eager"], 2),
                cell(rows[name]["tflops_per_s"] * 1e3, 1),
                f"{rows[name]['max_abs_diff']:.1e}",
            ]
            for name in names
        ]
        title = f"{variant} (greedy tokens match eager's: {rows['tokens_match']})"
        lines += table(title, ["", "first s", "steady s", "speedup", "GFLOP/s", "max |diff|"], body)
    lines.append(f"\nfastest with eager's greedy tokens: {results['fastest_matching']}; {results['wall_s']} s")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eagle_hub.benchmarks.cpu_tower", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--repeats", type=int, default=1, help="steady calls per variant after the first (default 1)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--preset", default="eagle-x5", help="experts' preset (eagle-x5-tiny: a quick smoke run)")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend of the compiled variants")
    parser.add_argument("--json", help="write every figure to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = run(
        tuple(v for v in args.variants.split(",") if v),
        repeats=args.repeats,
        new_tokens=args.new_tokens,
        preset=args.preset,
        backend=args.backend,
    )
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as file:
            file.write(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
