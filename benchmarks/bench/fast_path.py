"""The vision fast path's rows.

- Fast path (``EagleVisionTower.enable_fast_path``, ``torch.compile`` of every expert): each expert and the tower,
  eager and compiled, on the same one-image input. ``compile_s`` is the first compiled call of an expert (compiling
  it, then running it once), timed on its own; the tower's is the sum of its experts' (the tower's first call with
  the fast path on compiles exactly these). Steady times: the median over interleaved repeats after warm-up, and
  ``speedup`` the paired eager / compiled ratio. Achieved TFLOP/s: the analytic FLOPs over each median (on GPU
  also over the device's dense bf16 peak). ``max_abs_diff``: the largest difference of the compiled output from
  the eager one. ``--fast-path-backend`` and ``--fast-path-mode`` go to ``torch.compile`` (``reduce-overhead``
  captures CUDA graphs on CUDA). ``python -m eagle_hub.benchmarks.cpu_tower`` measures the full-size X5 tower at
  the released resolutions on a CPU, with channels-last ConvNeXt and bf16 autocast too.
"""

import contextlib
import time
from collections.abc import Callable
from functools import partial

import torch

from .settings import Settings
from .timing import ms, rounded, synchronize, time_interleaved


@contextlib.contextmanager
def fast_path_off(tower):
    """Run the tower eagerly for a while, keeping its fast path's compiled functions for afterwards."""
    saved = tower.fast_path
    tower.fast_path = None
    try:
        yield
    finally:
        tower.fast_path = saved


def eager_call(tower, fn: Callable) -> Callable:
    def run():
        with fast_path_off(tower):
            return fn()

    return run


def measure_fast_path(tower, pixels, settings: Settings, device: torch.device) -> dict:
    """Each expert and the tower eager and through ``enable_fast_path`` (see the module doc): the first compiled
    call per expert, the largest difference from eager, and interleaved steady-state times."""
    names = list(tower.experts)
    tower.enable_fast_path(mode=settings.fast_path_mode, backend=settings.fast_path_backend)
    first_call_s, max_abs_diff = {}, {}
    try:
        with torch.inference_mode():
            for index, name in enumerate(names):
                synchronize(device)
                start = time.perf_counter()
                compiled = tower.run_expert(name, pixels[index])
                synchronize(device)
                first_call_s[name] = time.perf_counter() - start
                with fast_path_off(tower):
                    eager = tower.run_expert(name, pixels[index])
                max_abs_diff[name] = (compiled.float() - eager.float()).abs().max().item()
            first_call_s["tower"] = sum(first_call_s.values())
            with fast_path_off(tower):
                eager = tower(pixels).last_hidden_state
            compiled = tower(pixels).last_hidden_state
            max_abs_diff["tower"] = (compiled.float() - eager.float()).abs().max().item()
            fns = {}
            for index, name in enumerate(names):
                run = partial(tower.run_expert, name, pixels[index])
                fns[f"eager:{name}"], fns[f"compiled:{name}"] = eager_call(tower, run), run
            fns["eager:tower"], fns["compiled:tower"] = (
                eager_call(tower, partial(tower, pixels)),
                partial(tower, pixels),
            )
            times = time_interleaved(fns, settings.repeats, settings.warmup, device)
    finally:
        tower.disable_fast_path()
    return {
        "backend": settings.fast_path_backend,
        "mode": settings.fast_path_mode,
        "times": times,
        "first_call_s": first_call_s,
        "max_abs_diff": max_abs_diff,
    }


def summarize_fast_path(measured: dict, flops: dict, peak: float | None) -> dict:
    """Per expert and for the tower: eager and compiled steady ms, the paired speedup, the first compiled call, the
    achieved TFLOP/s of each (and the fraction of the device's peak, on GPU), the largest output difference."""
    times, gflops = measured["times"], {name: entry["gflops"] for name, entry in flops["experts"].items()}
    gflops["tower"] = flops["tower_gflops"]
    rows = {}
    for name in [*flops["experts"], "tower"]:
        eager, compiled = times.median(f"eager:{name}"), times.median(f"compiled:{name}")
        rates = {kind: gflops[name] / (seconds * 1e3) for kind, seconds in (("eager", eager), ("compiled", compiled))}
        rows[name] = {
            "eager_ms": ms(eager),
            "compiled_ms": ms(compiled),
            "speedup": rounded(times.paired_ratio([f"eager:{name}"], [f"compiled:{name}"]), 3),
            "compile_s": round(measured["first_call_s"][name], 3),
            "gflops": round(gflops[name], 4),
            "eager_tflops_per_s": round(rates["eager"], 6),
            "compiled_tflops_per_s": round(rates["compiled"], 6),
            "eager_fraction_of_peak": None if peak is None else round(rates["eager"] / peak, 4),
            "compiled_fraction_of_peak": None if peak is None else round(rates["compiled"] / peak, 4),
            "max_abs_diff": measured["max_abs_diff"][name],
        }
    return {"backend": measured["backend"], "mode": measured["mode"], "peak_tflops": peak, **rows}
