"""``eagle quickstart``: train a small Eagle-X5 end to end on this CPU and serve it, nothing downloaded."""

from eagle_hub.training.quickstart import Budget
from eagle_hub.training.synth import SCENES

from .common import UserError

BUDGET_HELP = {
    "n_images": "synthetic images",
    "prealign_steps": "steps per expert in stage 1",
    "align_steps": "steps of stage 2",
    "word_steps": "steps of stage 3a, written-word questions alone; 0 skips it",
    "sft_steps": "steps of stage 3, all question types",
}


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "quickstart",
        help="train a small Eagle-X5 end to end on this CPU and serve it (nothing downloaded)",
        description="Make synthetic visual questions, train eagle-x5-small through the three stages, measure "
        "held-out exact match per question type, write a Hub-ready folder (OUTPUT/model) with eval_results.json "
        "and a model card, then load it in a fresh process with trust_remote_code and answer through a pipeline. "
        "The recipe it ran is OUTPUT/recipe.yaml: `eagle train OUTPUT/recipe.yaml` reruns it from anywhere.",
    )
    parser.add_argument("--output", default="eagle-quickstart", help="folder to create (default eagle-quickstart)")
    parser.add_argument("--seed", type=int, default=0, help="seed for data and training (default 0)")
    parser.add_argument("--ablate", action="store_true", help="also train single-expert and no-pre-alignment variants")
    parser.add_argument(
        "--fusions",
        help="also train one variant per fusion strategy on the same data and budget and compare them: "
        "comma-separated names (channel_concat, sequence_append, cross_attention) or `all`",
    )
    parser.add_argument(
        "--scene",
        choices=SCENES,
        default="uniform",
        help="uniform (default): copies of one coloured shape, questions ask what is drawn; mixed: distinct shapes "
        "and colours, questions look one object up by another's attribute (harder; see docs/quickstart.md)",
    )
    defaults = Budget()
    for field, text in BUDGET_HELP.items():
        option = "--" + field.replace("_", "-")
        parser.add_argument(option, type=int, dest=field, help=f"{text} (default {getattr(defaults, field)})")
    parser.set_defaults(run=run)


def fusion_names(value: str | None) -> list[str]:
    from eagle_hub.modeling_eagle.modeling_eagle import FUSION_CLASSES

    if not value:
        return []
    names = list(FUSION_CLASSES) if value == "all" else [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in FUSION_CLASSES]
    if unknown or not names:
        choices = ", ".join(FUSION_CLASSES)
        raise UserError(f"--fusions {value}: unknown fusion(s) {unknown}; give `all` or names from {choices}")
    return names


def run(args) -> None:
    from eagle_hub.training.quickstart import format_report, quickstart

    chosen = {field: getattr(args, field) for field in BUDGET_HELP if getattr(args, field) is not None}
    fusions = fusion_names(args.fusions)
    report = quickstart(
        args.output, seed=args.seed, budget=Budget(**chosen), ablate=args.ablate, scene=args.scene, fusions=fusions
    )
    print(format_report(report))
