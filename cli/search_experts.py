"""``eagle search-experts``: the paper's round-robin search for the expert set, on a recipe's data and budget."""

import sys
from pathlib import Path

from eagle_hub.training.search_experts import CANDIDATES, SEARCH_BUDGET

from .common import UserError
from .quickstart import BUDGET_HELP


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "search-experts",
        help="round-robin search for the expert set (the paper's experiment): train and score one set per trial",
        description="Start from --start; each round, train the recipe's stages once per remaining candidate added "
        "to the current set, score each on the recipe's validation split (exact match per question type, "
        "averaged; a split carved from the training data), keep the best; stop when no candidate raises that "
        "average by more than --threshold points, or after --rounds. Each trial's score on the recipe's eval "
        "(held-out) split is reported, never chosen on. Trials are separate processes (--jobs at a time); each "
        "writes OUTPUT/trials/<set>/result.json when it ends, and rerunning the same command resumes without "
        "retraining finished trials. "
        "Writes OUTPUT/search.json (every trial), search.md (the table) and search.png (the plot). The recipe's "
        "model must be a preset whose table has every candidate. Paths inside the recipe are relative to the "
        "recipe file; paths given here, to the working directory.",
    )
    parser.add_argument(
        "recipe", nargs="?", help="recipe YAML with validation and eval entries (not with --quickstart)"
    )
    parser.add_argument(
        "--quickstart",
        action="store_true",
        help="search on the quickstart's synthetic data and recipe (eagle-x5-small widths) at a budget 2 CPU cores "
        "finish within an hour; data and recipe go to OUTPUT",
    )
    parser.add_argument("--output", default="expert-search", help="search folder (default expert-search)")
    parser.add_argument(
        "--candidates",
        default=",".join(CANDIDATES),
        help=f"comma-separated expert names to try (default {','.join(CANDIDATES)})",
    )
    parser.add_argument("--start", default="clip", help="comma-separated starting set (default clip)")
    parser.add_argument("--rounds", type=int, help="stop after this many rounds (default: until nothing helps)")
    parser.add_argument("--jobs", type=int, default=1, help="trials trained at the same time (default 1)")
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.0,
        help="points of average accuracy a candidate must add to be kept (default 0: any gain)",
    )
    parser.add_argument(
        "--data-root", help="folder the recipe's relative data paths start from (overrides its data_root)"
    )
    parser.add_argument(
        "--launcher",
        help="command that runs each trial's Python module instead of this Python, e.g. "
        "'accelerate launch --config_file training/accelerate/fsdp.yaml'",
    )
    parser.add_argument("--seed", type=int, default=0, help="with --quickstart: seed of data and training (default 0)")
    for field, text in BUDGET_HELP.items():
        option = "--" + field.replace("_", "-")
        default = getattr(SEARCH_BUDGET, field)
        parser.add_argument(option, type=int, dest=field, help=f"with --quickstart: {text} (default {default})")
    parser.set_defaults(run=run)


def run(args) -> None:
    from dataclasses import replace

    from eagle_hub.training.recipe import RecipeError
    from eagle_hub.training.search_experts import TrialFailed, quickstart_search, search_experts

    search = {
        "candidates": args.candidates,
        "start": args.start,
        "rounds": args.rounds,
        "jobs": args.jobs,
        "threshold": args.threshold,
        "launcher": args.launcher,
    }
    chosen = {field: getattr(args, field) for field in BUDGET_HELP if getattr(args, field) is not None}
    try:
        if args.quickstart:
            if args.recipe or args.data_root:
                raise UserError("--quickstart makes its own recipe and data; give no RECIPE or --data-root with it")
            result = quickstart_search(args.output, seed=args.seed, budget=replace(SEARCH_BUDGET, **chosen), **search)
        else:
            if not args.recipe:
                raise UserError("give a RECIPE (a recipe YAML with validation and eval entries), or --quickstart")
            if chosen:
                raise UserError(f"--{next(iter(chosen)).replace('_', '-')} sets the --quickstart budget only")
            result = search_experts(args.recipe, args.output, data_root=args.data_root, **search)
    except (RecipeError, FileExistsError, FileNotFoundError, ModuleNotFoundError) as error:
        raise UserError(str(error)) from error
    except TrialFailed as error:
        print(error.log_tail, file=sys.stderr)
        raise UserError(f"{error.summary}; the end of its log is above, all of it in {error.log_path}") from error
    print((Path(args.output) / "search.md").read_text())
    print(f"every trial: {args.output}/search.json; plot: {args.output}/search.png; stopped: {result['stopped']}")
