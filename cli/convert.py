"""``eagle convert``: a released NVEagle checkpoint into a Hub-native folder."""

from pathlib import Path

from .common import UserError


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "convert",
        help="convert a released NVEagle checkpoint into a Hub-native folder",
        description="Convert an NVEagle checkpoint folder (config.json with model_type eagle_llama, safetensors or "
        ".bin weights, tokenizer) into a folder that AutoModel loads with trust_remote_code and pipeline runs. "
        "Streams tensor by tensor; writes to a temporary folder and moves it into place when complete.",
    )
    parser.add_argument("src", help="the NVEagle checkpoint folder (e.g. a local copy of NVEagle/Eagle-X5-7B)")
    parser.add_argument("dst", help="output folder (refused if it exists, unless --force)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="cast weights (default: keep)")
    parser.add_argument(
        "--chat-template",
        help="vicuna_v1, llama3, chatml or a Jinja template string (default: guessed from the tokenizer)",
    )
    parser.add_argument("--max-shard-size-gb", type=float, default=4.0, help="output shard size in GiB (default 4)")
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")
    parser.set_defaults(run=run)


def write_card(folder: Path, report) -> None:
    """The converted folder's model card (README.md), written into the staging folder before it is published."""
    from eagle_hub.hub_cards.model_card import converted_model_card

    card = converted_model_card(report.config, source=str(report.source), report=report.summary())
    card.save(folder / "README.md")


def run(args) -> None:
    from eagle_hub.modeling_eagle.convert_nveagle import ConversionError, convert

    def card(folder: Path, report) -> None:
        try:
            write_card(folder, report)
        except Exception as error:  # nothing is published: the converter's staging folder goes with the error
            raise UserError(
                f"converted {args.src}, but writing the model card failed, so nothing was written to {args.dst} "
                f"({type(error).__name__}: {error})"
            ) from error

    try:
        report = convert(
            args.src,
            args.dst,
            dtype=args.dtype,
            chat_template=args.chat_template,
            force=args.force,
            max_shard_size=int(args.max_shard_size_gb * 1024**3),
            card=card,
        )
    except (ConversionError, FileExistsError) as error:
        raise UserError(str(error)) from error
    print(f"converted {args.src} -> {args.dst}: {report.summary()}")
