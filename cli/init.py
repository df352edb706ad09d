"""``eagle init``: a randomly initialised, Hub-ready folder for a preset."""

from .common import UserError


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "init",
        help="write a randomly initialised, Hub-ready model folder for a preset",
        description="Write a randomly initialised, Hub-ready folder (weights, config with auto_map, processor, "
        "locally built tokenizer, chat template, remote code) for a named preset.",
    )
    parser.add_argument(
        "--preset", required=True, help="eagle-x5, eagle-x4, eagle-x5-small, eagle-x5-tiny or eagle-x4-tiny"
    )
    parser.add_argument("--output", required=True, help="folder to create (relative to the working directory)")
    parser.add_argument("--config-only", action="store_true", help="write everything but the weights")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random initialisation (default 0)")
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")
    parser.add_argument(
        "--fusion",
        help="how the experts' maps become image tokens: channel_concat (default; the released layout), "
        "sequence_append or cross_attention",
    )
    parser.set_defaults(run=run)


def run(args) -> None:
    from eagle_hub.modeling_eagle.hub_folder import init_folder
    from eagle_hub.modeling_eagle.modeling_eagle import FUSION_CLASSES
    from eagle_hub.modeling_eagle.presets import PRESETS

    if args.preset not in PRESETS:
        raise UserError(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    if args.fusion is not None and args.fusion not in FUSION_CLASSES:
        raise UserError(f"unknown fusion {args.fusion!r}; choose one of {', '.join(FUSION_CLASSES)}")
    try:
        path = init_folder(
            args.preset,
            args.output,
            config_only=args.config_only,
            seed=args.seed,
            overwrite=args.force,
            fusion=args.fusion,
        )
    except FileExistsError as error:
        raise UserError(str(error)) from error
    kind = "config-only folder" if args.config_only else "randomly initialised model"
    fusion = f" with {args.fusion} fusion" if args.fusion else ""
    print(f"wrote {kind} for {args.preset}{fusion} to {path}")
