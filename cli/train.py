"""``eagle train``: every stage of a recipe with TRL's SFTTrainer."""

from pathlib import Path

from .common import UserError


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "train",
        help="run a training recipe (pre-alignment, projector alignment, SFT) with TRL's SFTTrainer",
        description="Run every stage of a recipe YAML (see training/recipe.py for the schema; shipped recipes are "
        "in training/recipes/) on one model, one SFTTrainer per stage. Each stage ends with a Hub-ready folder "
        "OUTPUT/<stage name>; checkpoints go to OUTPUT/checkpoints/<stage name>. Paths inside the recipe are "
        "relative to the recipe file; paths given here, to the working directory. Works under `accelerate launch`.",
    )
    parser.add_argument("recipe", help="recipe YAML, e.g. training/recipes/tiny.yaml")
    parser.add_argument("--output", required=True, help="run folder (must be empty unless --resume)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    parser.add_argument(
        "--data-root", help="folder the recipe's relative data paths start from (overrides its data_root)"
    )
    parser.set_defaults(run=run)


def run(args) -> None:
    from eagle_hub.training.recipe import RecipeError, load_recipe
    from eagle_hub.training.runner import format_summary, run_recipe

    try:
        recipe = load_recipe(args.recipe)
        if args.data_root:
            recipe.data_root = str(Path(args.data_root).expanduser().resolve())
        summaries = run_recipe(recipe, args.output, resume=args.resume)
    except (RecipeError, FileExistsError, FileNotFoundError) as error:
        raise UserError(str(error)) from error
    print(format_summary(summaries))
    print(f"stage folders under {args.output}; summary.json has the full numbers")
