"""``eagle eval``: evaluate a model folder or Hub id on lmms-eval tasks (the paper's benchmarks, the quickstart's
held-out split, local task folders) through lmms-eval's Python API, and record the results in the model card."""

from eagle_hub.evaluation.benchmarks import paper_models  # figures only: imports neither torch nor lmms-eval

from .common import UserError


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "eval",
        help="evaluate a model on lmms-eval tasks (the community harness: the paper's benchmarks and more)",
        description="Run lmms-eval tasks on an Eagle folder or Hub id, one task at a time with the model loaded once. "
        "Writes OUTPUT/results.json (lmms-eval's format), OUTPUT/samples_<task>.jsonl and OUTPUT/eval_results.json "
        "(task -> metric -> value), prints a table, and adds the results to a local folder's model card "
        "(eval_results.json and README.md's model-index; a rerun replaces the tasks it ran). Exits non-zero when a "
        "task fails. Needs lmms-eval: bash scripts/setup.sh --eval.",
    )
    parser.add_argument("model", help="the model folder (from eagle init/convert/train/quickstart) or a Hub id")
    parser.add_argument(
        "--tasks",
        required=True,
        help="comma-separated lmms-eval tasks, groups or tags, e.g. pope,textvqa_val or eagle_quickstart",
    )
    parser.add_argument("--output", help="folder for the results (required unless --dry-run)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N examples of each task (a trial run)")
    parser.add_argument("--batch-size", type=int, default=1, help="requests generated together (default 1)")
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), help="where the model runs (default: cuda when there is one, else cpu)"
    )
    parser.add_argument("--dtype", default="auto", help="auto (bfloat16 on cuda, float32 on cpu), float32, bfloat16")
    parser.add_argument(
        "--include-path",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder of extra lmms-eval task YAML files (repeatable); this package's tasks are always included",
    )
    parser.add_argument(
        "--gen-kwargs",
        metavar="K=V,...",
        help="override every task's generation settings, e.g. max_new_tokens=16 (lmms-eval's --gen_kwargs)",
    )
    parser.add_argument(
        "--compare-paper",
        choices=paper_models(),
        help="show the published figure of this released model beside each of the paper's benchmarks",
    )
    parser.add_argument(
        "--chat",
        action="store_true",
        help="send lmms-eval's chat requests (messages) instead of its simple ones; generation tasks only",
    )
    parser.add_argument("--no-card", action="store_true", help="leave the model folder's card as it is")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check the tasks (names, YAML and functions, dataset, local data, what they need) and stop: "
        "no model is loaded and nothing is downloaded",
    )
    parser.set_defaults(run=run)


def _table(headers: list[str], rows: list[list], numbers: int = 0) -> str:
    """A plain-text table; the last ``numbers`` columns are right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    first_number = len(headers) - numbers

    def line(row):
        cells = [
            str(c).rjust(w) if i >= first_number else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths))
        ]
        return "  ".join(cells).rstrip()

    lines = [line(row) for row in [headers, *rows]]
    return "\n".join([lines[0], "  ".join("-" * width for width in widths), *lines[1:]])


def format_summary(summary: dict) -> str:
    rows = [[task, metric, f"{value:.4f}"] for task, metrics in summary.items() for metric, value in metrics.items()]
    return _table(["task", "metric", "value"], rows, numbers=1) if rows else "no results"


def format_comparison(rows: list[dict], model: str) -> str:
    if not rows:
        return f"none of the tasks run measures one of the paper's benchmarks ({model}: nothing to compare)"
    table = [
        [row["benchmark"], row["task"], row["metric"], f"{row['measured']:.1f}", f"{row['paper']:g}"]
        + [f"{row['difference']:+.1f}"]
        for row in rows
    ]
    headers = ["benchmark", "task", "metric", "measured", f"paper ({model})", "difference"]
    return _table(headers, table, numbers=3)


def _dry_run(args) -> None:
    from eagle_hub.evaluation import runner

    rows = runner.check(args.tasks.split(","), args.include_path)
    table = [
        [
            row["task"],
            row["output_type"] or "-",
            f"{row['dataset']}{':' + row['config'] if row['config'] else ''}",
            row["split"] or "-",
            ",".join(row["metrics"][:3]) + (",..." if len(row["metrics"]) > 3 else "") or "-",
            "yes" if row["token"] else "no",
            "; ".join(row["problems"]) or "ok",
        ]
        for row in rows
    ]
    headers = ["task", "output", "dataset", "split", "metrics", "token", "status"]
    print(_table(headers, table))
    if any(row["token"] for row in rows):
        print("token: the YAML loads its data with token=True; eagle eval drops it when no Hugging Face token is set")


def run(args) -> None:
    if args.dry_run:
        _dry_run(args)
        return
    if not args.output:
        raise UserError("--output is required: the folder for results.json and eval_results.json")
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: expected a positive integer")
    from eagle_hub.evaluation import runner
    from eagle_hub.evaluation.benchmarks import compare

    report = runner.evaluate(
        args.model,
        args.tasks.split(","),
        args.output,
        limit=args.limit,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        include_paths=args.include_path,
        gen_kwargs=args.gen_kwargs,
        chat=args.chat,
        update_card=not args.no_card,
    )
    print(format_summary(report.summary))
    if args.compare_paper:
        print()
        print(format_comparison(compare(report.summary, args.compare_paper), args.compare_paper))
    for note in report.notes:
        print(f"note: {note}")
    print(f"wrote {report.results_file} and {report.summary_file}")
    if report.card is not None:
        print(f"recorded the results in {report.card} and the model card")
    failures = report.failures
    if failures:
        listed = "; ".join(f"{task} ({message})" for task, message in failures.items())
        first = next(run.exception for run in report.runs if run.error)
        raise UserError(f"{len(failures)} of {len(report.runs)} task(s) failed: {listed}") from first
