"""What ``eagle bench`` prints (text tables) and writes (``--json``)."""

import json

from .models import MODEL_NAMES
from .settings import STAGES


def cell(value, digits=2) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if isinstance(value, float) else str(value)


def table(title: str, header: list, rows: list[list]) -> list[str]:
    """A titled text table: the first column left-aligned, the others right-aligned, a rule under the header."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["", title]
    for index, row in enumerate([header, *rows]):
        first = str(row[0]).ljust(widths[0])
        rest = "  ".join(str(c).rjust(w) for c, w in zip(row[1:], widths[1:]))
        lines.append(f"  {first}  {rest}")
        if index == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return lines


def format_table(results: dict) -> str:
    """The results as text tables (what ``eagle bench`` prints)."""
    tokens = results["tokens"]
    lines = [
        f"eagle bench --preset {results['preset']} ({results['model_preset']}): {results['device_name']} "
        f"({results['device']}, {results['threads']} thread(s)), {results['settings']['dtype']}; torch "
        f"{results['torch']}, transformers {results['transformers']}; prompt {tokens['prompt_tokens']} tokens "
        f"({tokens['image_tokens']} image), LLaVA {tokens['llava_prompt_tokens']} "
        f"({tokens['llava_image_tokens']} image)"
    ]
    lines += vision_lines(results)
    if results.get("fast_path"):
        lines += fast_path_lines(results["fast_path"])
    lines += inference_lines(results)
    if results.get("fusions"):
        lines += fusion_lines(results["fusions"])
    lines += training_lines(results["training"])
    if results.get("serving"):
        lines += serving_lines(results["serving"])
    lines += bar_lines(results["bars"])
    lines.append(f"\n{results['wall_s']} s")
    return "\n".join(lines)


def fusion_lines(fusions: list[dict]) -> list[str]:
    rows = [
        [
            row["fusion"],
            row["tokens_per_image"],
            cell(row["tower_fusion_ms"], 3),
            cell(row["prefill_ms"], 3),
            cell(row["fusion_parameters_millions"], 3),
        ]
        for row in fusions
    ]
    header = ["fusion", "tokens/image", "tower+fusion ms", "prefill ms", "fusion params (M)"]
    return table("fusion strategies (one request, default options)", header, rows)


def vision_lines(results: dict) -> list[str]:
    vision, flops = results["vision"], results["flops"]
    rows = [
        [name, flops["experts"][name]["resolution"], cell(t, 3), cell(flops["experts"][name]["gflops"], 3)]
        for name, t in vision["experts_ms"].items()
    ]
    rows += [
        ["experts, summed", "", cell(vision["experts_sum_ms"], 3), cell(flops["tower_gflops"], 3)],
        ["tower (experts + grid + concat)", "", cell(vision["tower_ms"], 3), ""],
        ["projector", "", cell(vision["projector_ms"], 3), ""],
        ["LLaVA CLIP tower", "", cell(vision["llava_tower_ms"], 3), cell(flops["llava_clip_gflops"], 3)],
    ]
    lines = table("vision (one image)", ["", "px", "ms", "GFLOPs"], rows)
    released = flops.get("released_resolutions")
    if released:
        per_expert = ", ".join(
            f"{n} {e['gflops'] / 1e3:.2f} at {e['resolution']}" for n, e in released["experts"].items()
        )
        lines.append(f"  at the released resolutions: {released['tower_gflops'] / 1e3:.2f} TFLOPs ({per_expert})")
    lines.append(
        f"  achieved: tower {flops['tower_tflops_per_s'] * 1e3:,.1f} GFLOP/s, LLaVA CLIP tower "
        f"{flops['llava_clip_tflops_per_s'] * 1e3:,.1f} GFLOP/s (paired ratio "
        f"{cell(flops['tower_over_llava_clip_flops_per_s'], 3)})"
    )
    if flops["fraction_of_peak"] is not None:
        lines.append(
            f"  tower: {flops['tower_tflops_per_s']:.1f} TFLOP/s, {100 * flops['fraction_of_peak']:.1f}% of "
            f"the device's {flops['peak_tflops']:.0f} TFLOP/s dense peak"
        )
    channels = results.get("convnext_channels_last")
    if channels:
        lines.append(
            f"  ConvNeXt channels-last: {channels['channels_last_ms']:.3f} ms vs {channels['default_ms']:.3f} ms "
            f"(x{channels['speedup']:.2f})"
        )
    return lines


def fast_path_lines(fast_path: dict) -> list[str]:
    names = [name for name, entry in fast_path.items() if isinstance(entry, dict)]
    peak = fast_path.get("peak_tflops") is not None
    rows = []
    for name in names:
        entry = fast_path[name]
        row = [
            name,
            cell(entry["eager_ms"], 3),
            cell(entry["compiled_ms"], 3),
            cell(entry["speedup"], 2),
            cell(entry["compile_s"], 1),
            cell(entry["eager_tflops_per_s"] * 1e3, 1),
            cell(entry["compiled_tflops_per_s"] * 1e3, 1),
        ]
        if peak:
            row.append(f"{100 * entry['compiled_fraction_of_peak']:.1f}%")
        rows.append(row + [f"{entry['max_abs_diff']:.1e}"])
    header = ["", "eager ms", "compiled ms", "speedup", "compile s", "eager GFLOP/s", "compiled GFLOP/s"]
    header += ["of peak"] if peak else []
    mode = fast_path["mode"] or "default"
    title = f"vision fast path: enable_fast_path(backend={fast_path['backend']!r}, mode={mode}), one image"
    return table(title, [*header, "max |diff|"], rows)


def inference_lines(results: dict) -> list[str]:
    prefill, ttft, step = results["prefill"], results["time_to_first_token_ms"], results["decode_step"]
    over, speed, flops = results["ttft_over_prefill"], results["decode_tokens_per_s"], results["flops"]
    names = MODEL_NAMES
    lines = table(
        "inference (batch 1)",
        ["", "Eagle", "LLaVA", "LLM"],
        [
            ["prefill ms", *(cell(prefill[f"{name}_ms"], 3) for name in names)],
            ["time to first token ms", *(cell(ttft[name], 3) for name in names)],
            ["  over prefill (paired)", *(cell(over[name], 3) for name in names)],
            ["decode step ms", *(cell(step[name], 3) for name in names)],
            ["decode tokens/s", *(cell(speed[name], 1) for name in names)],
            ["LLM prefill GFLOPs (analytic)", "", "", cell(flops["llm_prefill_gflops"], 3)],
        ],
    )
    batching = results["batching"]
    lines.append(
        f"  batch {batching['batch']}: {cell(batching['batched_tokens_per_s'], 1)} tokens/s "
        f"(one request: {cell(batching['single_tokens_per_s'], 1)}); encoding {batching['batch']} images "
        f"{cell(batching['encode_batched_ms'], 3)} ms (one: {cell(batching['encode_single_ms'], 3)} ms)"
    )
    return lines


def training_lines(training: dict) -> list[str]:
    rows = []
    for stage in STAGES:
        row = [f"{stage} ({', '.join(training['stages'][stage])})"]
        for kind in MODEL_NAMES:
            entry = training[kind].get(stage)
            if entry is None:
                row.append("-")
            elif "error" in entry:
                row.append(entry["error"][:24])
            else:
                row.append(f"{cell(entry['step_ms'], 1)} ms / {cell(entry['peak_memory_mib'], 1)} MiB")
        rows.append(row)
    title = f"training step, batch {training['batch']} (step time / peak memory added)"
    return table(title, ["", "Eagle", "LLaVA", "LLM"], rows)


def serving_lines(serving: dict) -> list[str]:
    title = f"serving: eagle serve and the openai client, {serving['requests']} requests of one image each"
    header = ["", "model.generate", "server, 1 client", f"server, {serving['clients']} clients"]
    keys = ("direct_requests_per_s", "server_requests_per_s", "server_requests_per_s_clients")
    ttft = [serving["direct_time_to_first_token_ms"], serving["server_time_to_first_token_ms"], None]
    rows = [
        [f"requests/s ({serving['max_tokens']} tokens)", *(cell(serving[key], 2) for key in keys)],
        ["time to first token ms", *(cell(v, 1) for v in ttft)],
    ]
    return table(title, header, rows) + [
        f"  server / direct: {serving['server_over_direct']:.3f} (requests), "
        f"{serving['server_over_direct_ttft']:.3f} (time to first token); {serving['clients']} clients / 1: "
        f"{serving['clients_over_one']:.3f}; answers equal: {serving['answers_equal']}"
    ]


def bar_lines(bars: dict) -> list[str]:
    rows = []
    for name, entry in bars.items():
        measured = entry["measured"]
        shown = f"{measured:.3f}" if isinstance(measured, float) else cell(measured)
        limit = f"{entry['comparison']} {entry['limit']}" if "limit" in entry else ""
        verdict = {True: "pass", False: "FAIL", None: "n/a"}[entry["pass"]]
        rows.append([name, shown, limit, verdict])
    return table("bars", ["", "measured", "limit", ""], rows)


def write_json(results: dict, path) -> None:
    # Serialised before opening: results that cannot be serialised leave an earlier file untouched.
    text = json.dumps(results, indent=2) + "\n"
    with open(path, "w") as file:
        file.write(text)
