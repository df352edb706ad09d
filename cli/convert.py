"""``eagle convert``: a released NVEagle checkpoint into a Hub-native folder."""

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


def run(args) -> None:
    from eagle_hub.modeling_eagle.convert_nveagle import ConversionError, convert

    try:
        report = convert(
            args.src,
            args.dst,
            dtype=args.dtype,
            chat_template=args.chat_template,
            force=args.force,
            max_shard_size=int(args.max_shard_size_gb * 1024**3),
        )
    except (ConversionError, FileExistsError) as error:
        raise UserError(str(error)) from error
    print(f"converted {args.src} -> {args.dst}: {report.summary()}")
