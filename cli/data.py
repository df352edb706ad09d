"""``eagle data synth``: the synthetic visual questions the quickstart and the tests train on."""

from eagle_hub.training.synth import QUESTION_TYPES, SCENES


def add_parser(commands) -> None:
    data = commands.add_parser("data", help="dataset tools", description="Dataset tools.")
    data_commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    parser = data_commands.add_parser(
        "synth",
        help="generate a synthetic visual QA and caption dataset",
        description="Images of coloured shapes and written words with captions and question/answer pairs "
        "(colour, shape, count, position, word), in LLaVA JSON and HF datasets formats, with a held-out split.",
    )
    parser.add_argument("--output", required=True, help="folder to write")
    parser.add_argument("--n", type=int, default=512, help="number of images (default 512)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--questions-per-image", type=int, default=2, help="questions per image, of different types (default 2)"
    )
    parser.add_argument(
        "--conversations",
        action="store_true",
        help="one multi-turn record per training image holding all its questions, not one record per question",
    )
    parser.add_argument(
        "--focus-types",
        nargs="+",
        default=[],
        choices=QUESTION_TYPES,
        metavar="TYPE",
        help="question types that also get a single-question split of their own (sft_TYPE.json, hf/sft_TYPE), "
        "for a stage that trains on one type alone, as the quickstart does for word",
    )
    parser.add_argument(
        "--scene",
        choices=SCENES,
        default="mixed",
        help="mixed (default): distinct shapes and colours, questions look one object up by another's attribute; "
        "uniform: copies of one coloured shape, questions ask what is drawn",
    )
    parser.add_argument(
        "--validation",
        type=float,
        default=0.0,
        help="fraction of images carved from the training images as a validation split (sft_validation.json, "
        "hf/sft_validation), disjoint from the held-out one, for choices such as eagle search-experts' (default 0)",
    )
    parser.set_defaults(run=run)


def run(args) -> None:
    from eagle_hub.training.synth import generate

    manifest = generate(
        args.output,
        n=args.n,
        seed=args.seed,
        questions_per_image=args.questions_per_image,
        conversations=args.conversations,
        focus_types=tuple(args.focus_types),
        scene=args.scene,
        validation=args.validation,
    )
    print(f"wrote synthetic data to {args.output}: {manifest}")
