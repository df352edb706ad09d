"""Eagle's speed and memory, side by side with LLaVA and the bare LLM: ``eagle bench``.

    eagle bench --preset small --json bench.json      # eagle-x5-small on this machine's CPU, in under two minutes
    eagle bench --preset x5-7b --json bench-7b.json   # eagle-x5 (the released layout, random weights, bf16) on a GPU

Every figure comes from one run on one device, with the same inputs for every model. How each is taken is in the
docstring of the module that takes it:

- ``settings``: what a run measures with: the presets, dtype, repeats and batch sizes (``Settings``).
- ``models``: Eagle and its two baselines, built on the device, and the inputs every model gets.
- ``timing``: interleaved rounds, medians and paired ratios.
- ``flops``: the analytic FLOPs, counted on the meta device, and the achieved FLOP/s.
- ``no_sync``: the check that the vision tower never synchronises with the host.
- ``inference``: the vision, prefill, time-to-first-token, decode and batching rows.
- ``fast_path``: the vision fast path's rows (every expert and the tower, eager and compiled).
- ``fusions``: a row per fusion strategy.
- ``training``: a step per training stage, its time and the peak memory it adds.
- ``serving``: ``eagle serve`` against ``model.generate``.
- ``bars``: the pass/fail limits, each computed from this run's figures.
- ``run``: one whole run (``run_benchmark``); ``report``: the printed tables and the JSON file.
"""

from .bars import bar, compute_bars, ratio
from .fast_path import eager_call, fast_path_off, measure_fast_path, summarize_fast_path
from .flops import PEAK_TFLOPS, count_flops, expert_inputs, flop_rates, peak_tflops, tower_flops
from .fusions import fusion_models, measure_fusions
from .inference import (
    decode_tokens_per_s,
    measure_inference,
    summarize_decode_steps,
    summarize_encode,
    summarize_generate,
    summarize_prefill,
)
from .models import MODEL_NAMES, Inputs, Models, build_models, make_inputs, prompt_ids
from .no_sync import check_no_sync, check_no_sync_on_cuda
from .report import cell, fast_path_lines, format_table, fusion_lines, table, write_json
from .run import device_name, run_benchmark
from .serving import measure_serving_row
from .settings import DTYPES, PRESETS, STAGES, Settings
from .timing import InnerTimes, Times, median_ratio, ms, rounded, time_interleaved
from .training import measure_training

# What code outside the package imports from it (cli/bench.py, benchmarks/cpu_tower.py, the tests).
__all__ = [
    "DTYPES",
    "MODEL_NAMES",
    "PEAK_TFLOPS",
    "PRESETS",
    "STAGES",
    "InnerTimes",
    "Inputs",
    "Models",
    "Settings",
    "Times",
    "bar",
    "build_models",
    "cell",
    "check_no_sync",
    "check_no_sync_on_cuda",
    "compute_bars",
    "count_flops",
    "decode_tokens_per_s",
    "device_name",
    "eager_call",
    "expert_inputs",
    "fast_path_lines",
    "fast_path_off",
    "flop_rates",
    "format_table",
    "fusion_lines",
    "fusion_models",
    "make_inputs",
    "measure_fast_path",
    "measure_fusions",
    "measure_inference",
    "measure_serving_row",
    "measure_training",
    "median_ratio",
    "ms",
    "peak_tflops",
    "prompt_ids",
    "ratio",
    "rounded",
    "run_benchmark",
    "summarize_decode_steps",
    "summarize_encode",
    "summarize_fast_path",
    "summarize_generate",
    "summarize_prefill",
    "table",
    "time_interleaved",
    "tower_flops",
    "write_json",
]
