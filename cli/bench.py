"""``eagle bench``: speed and memory next to LLaVA and the bare LLM, with the performance bars."""

from pathlib import Path

from .common import UserError


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "bench",
        help="measure speed and memory next to LLaVA and the bare LLM, and check the performance bars",
        description="Build a preset with random weights and measure, in one run: per-expert and tower time with "
        "analytic FLOPs, prefill, time to first token, decode step and tokens/s (1 and 8 requests), and per "
        "training stage the step time and peak memory, each next to transformers' LLaVA with the same LLM and a "
        "CLIP tower of the same size, and the bare LLM on the same token count. Prints tables and the bars; "
        "--json writes every figure. `small` runs in under two minutes on a CPU; `x5-7b` is for GPUs.",
    )
    parser.add_argument(
        "--preset",
        choices=["small", "x5-7b", "x5-tower-cpu"],
        default="small",
        help="small: eagle-x5-small (default); x5-7b: eagle-x5, the released layout with a 7B LLM; x5-tower-cpu: "
        "the full-size X5 tower at the released resolutions on a CPU, eager, compiled, channels-last ConvNeXt and "
        "bf16 autocast (python -m eagle_hub.benchmarks.cpu_tower has its options; about an hour on 2 cores)",
    )
    parser.add_argument("--json", help="also write every figure and the bars to this JSON file")
    parser.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda if available, else cpu)")
    parser.add_argument(
        "--dtype", choices=["float32", "bfloat16", "float16"], help="default: bfloat16 on CUDA, float32 on CPU"
    )
    parser.add_argument("--repeats", type=int, help="timed runs per figure, after warm-up (default 30; x5-7b 10)")
    parser.add_argument(
        "--fast-path-backend",
        help="torch.compile backend for the vision fast path's rows (default inductor)",
    )
    parser.add_argument(
        "--fast-path-mode",
        help="torch.compile mode for the vision fast path's rows (default: none; reduce-overhead: CUDA graphs)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer repeats and training steps: a smoke test, not figures"
    )
    parser.set_defaults(run=run)


def run(args) -> None:
    from eagle_hub.benchmarks.bench import Settings, format_table, run_benchmark, write_json

    if args.json and not Path(args.json).resolve().parent.is_dir():
        raise UserError(f"--json {args.json}: its folder does not exist")
    if args.preset == "x5-tower-cpu":
        from eagle_hub.benchmarks import cpu_tower

        results = cpu_tower.run(repeats=args.repeats or 1, backend=args.fast_path_backend or "inductor")
        print(cpu_tower.format_table(results))
        if args.json:
            write_json(results, args.json)
            print(f"wrote {args.json}")
        return
    settings = Settings.for_preset(
        args.preset,
        device=args.device,
        dtype=args.dtype,
        repeats=args.repeats,
        quick=args.quick,
        fast_path_backend=args.fast_path_backend,
        fast_path_mode=args.fast_path_mode,
    )
    results = run_benchmark(settings)
    print(format_table(results))
    if args.json:
        write_json(results, args.json)
        print(f"wrote {args.json}")
