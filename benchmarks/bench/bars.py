"""The bars: ``eagle bench``'s pass/fail limits, apart from the measuring.

Bars: each is computed from this run's figures and checked against its limit. "Paired" means the median over
repeats of the ratio within each repeat (both sides ran in the same round), which is not the ratio of the medians
that the tables print next to it.

- ``prefill_glue`` (<= 1.05), paired: Eagle's prefill / (the five experts + the projector + the bare LLM's prefill,
  each run alone).
- ``decode_step`` (<= 1.05), paired: Eagle's decode step / the bare LLM's step at the same cache length.
- ``tower_flop_rate`` (>= 0.9), paired: the tower's achieved FLOP/s over the LLaVA CLIP tower's, that is
  (tower FLOPs / CLIP tower FLOPs) x (CLIP tower time / tower time), the FLOPs analytic and the times paired.
- ``batched_decode`` (>= 2.5), paired: decode tokens/s of 8 requests batched over one request's, that is
  8 x (t1(N) - t1(1)) / (t8(N) - t8(1)) within a repeat (1 and 8 requests, N and 1 new tokens, all in one round);
  a repeat where either difference is not positive (noise larger than the decode) is left out.
- ``batched_encode`` (<= 1.0), paired: the tower on 8 images as one batch / 8 x the tower on one image.
- ``stage2_memory`` (<= 0.5), not a median: the peak memory a stage-2 step adds / a stage-3 step's, one peak each
  (memory does not vary from step to step as time does; each peak covers the warm-up and the timed steps).
- ``vision_tower_no_sync`` (pass/fail, no ratio): the tower runs on the meta device without raising and without
  feeding a CPU tensor to a device op; on CUDA it also runs under ``torch.cuda.set_sync_debug_mode("error")``.
- ``serving_overhead`` (<= 1.15, where the serve extra is installed), paired: the time of a round of requests
  through ``eagle serve`` (official openai client, one at a time) / the same prompts through ``model.generate``
  (``eagle_hub.serving.measure_serving`` says how the round is made).
"""

from .timing import rounded


def bar(measured: float | None, limit: float, comparison: str, description: str, values: dict) -> dict:
    """A bar: its measured ratio against its limit; ``pass`` is None when the ratio could not be measured."""
    passed = None
    if measured is not None:
        passed = measured <= limit if comparison == "<=" else measured >= limit
    return {
        "description": description,
        "measured": rounded(measured),
        "limit": limit,
        "comparison": comparison,
        "pass": passed,
        "values": values,
    }


def ratio(numerator, denominator):
    return None if numerator is None or not denominator else numerator / denominator


def compute_bars(results: dict) -> dict:
    """The bars from a run's results (how each is computed: the module docstring)."""
    prefill, step, batching, flops = results["prefill"], results["decode_step"], results["batching"], results["flops"]
    training = results["training"]["eagle"]
    stage2, stage3 = (training[stage].get("peak_memory_mib") for stage in ("stage2", "stage3"))
    no_sync = results["no_sync"]
    if results.get("no_sync_cuda") is not None:
        no_sync = {
            "measured": f"{no_sync['measured']}; {results['no_sync_cuda']['measured']}",
            "pass": no_sync["pass"] and results["no_sync_cuda"]["pass"],
        }
    batch = batching["batch"]
    bars = {
        "prefill_glue": bar(
            prefill["eagle_over_parts"],
            1.05,
            "<=",
            "Eagle's prefill over the sum of its parts each run alone (experts, projector, LLM prefill)",
            {"eagle_prefill_ms": prefill["eagle_ms"], "parts_sum_ms": prefill["parts_sum_ms"]},
        ),
        "decode_step": bar(
            step["eagle_over_llm"],
            1.05,
            "<=",
            "a decode step with the image in the cache over the bare LLM's step at the same length",
            {"eagle_step_ms": step["eagle"], "llm_step_ms": step["llm"]},
        ),
        "tower_flop_rate": bar(
            flops["tower_over_llava_clip_flops_per_s"],
            0.9,
            ">=",
            "the vision tower's achieved FLOP/s over the LLaVA CLIP tower's (analytic FLOPs, paired times)",
            {k: flops[k] for k in ("tower_tflops_per_s", "llava_clip_tflops_per_s")},
        ),
        "stage2_memory": bar(
            ratio(stage2, stage3),
            0.5,
            "<=",
            "peak memory of a stage-2 step (experts and LLM frozen) over a stage-3 step's",
            {"stage2_mib": stage2, "stage3_mib": stage3},
        ),
        "batched_decode": bar(
            batching["batched_over_single_tokens_per_s"],
            2.5,
            ">=",
            f"decode tokens/s of {batch} requests as one batch over one request's",
            {k: batching[k] for k in ("single_tokens_per_s", "batched_tokens_per_s")},
        ),
        "batched_encode": bar(
            batching["encode_batched_over_singles"],
            1.0,
            "<=",
            f"encoding {batch} images as one batch over {batch} single encodings",
            {k: batching[k] for k in ("encode_single_ms", "encode_batched_ms")},
        ),
        "vision_tower_no_sync": {
            "description": "no host-device synchronisation or CPU round trip inside the vision tower",
            "measured": no_sync["measured"],
            "pass": no_sync["pass"],
        },
    }
    serving = results.get("serving")
    if serving:  # measured where the serve extra is installed
        bars["serving_overhead"] = bar(
            serving["server_over_direct"],
            1.15,
            "<=",
            "requests through eagle serve (openai client, one at a time) over model.generate on the same prompts",
            {k: serving[k] for k in ("server_requests_per_s", "direct_requests_per_s")},
        )
    return bars
