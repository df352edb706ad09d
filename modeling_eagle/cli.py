"""The ``eagle`` command line.

    eagle init --preset eagle-x5-tiny --output ./eagle-tiny      # random, Hub-ready folder
    eagle generate --model ./eagle-tiny --image cat.png --prompt "What is in the picture?"
    eagle convert ./Eagle-X5-7B ./eagle-x5-7b-hf                 # a released NVEagle checkpoint, converted

A user error (a missing file, a bad preset, an existing output) prints one line saying what is wrong and what
to do, and exits with status 2; ``--debug`` shows the full traceback instead.
"""

import argparse
import sys
from pathlib import Path


class UserError(Exception):
    """An error the user can fix; shown as one line, exit status 2."""


def _cmd_init(args) -> None:
    from .hub_folder import init_folder
    from .presets import PRESETS

    if args.preset not in PRESETS:
        raise UserError(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    try:
        path = init_folder(
            args.preset, args.output, config_only=args.config_only, seed=args.seed, overwrite=args.force
        )
    except FileExistsError as error:
        raise UserError(str(error)) from error
    kind = "config-only folder" if args.config_only else "randomly initialised model"
    print(f"wrote {kind} for {args.preset} to {path}")


def _cmd_generate(args) -> None:
    import torch
    from PIL import Image, UnidentifiedImageError
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import modeling_eagle  # noqa: F401  (registers the Auto classes)
    import processing  # noqa: F401

    if not (Path(args.model) / "config.json").is_file():
        raise UserError(
            f"--model {args.model}: no config.json there; pass a folder written by `eagle init` or `save_pretrained`"
        )
    images = []
    for path in args.image or []:
        try:
            images.append(Image.open(path).convert("RGB"))
        except (FileNotFoundError, IsADirectoryError) as error:
            raise UserError(f"--image {path}: file not found") from error
        except (UnidentifiedImageError, OSError) as error:
            raise UserError(f"--image {path}: not a readable image ({error})") from error
    processor = AutoProcessor.from_pretrained(args.model)
    model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=args.dtype).eval()
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": args.prompt}]
    prompt = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    inputs = processor(images=images or None, text=[prompt], return_tensors="pt").to(model.device)
    sampling = {"do_sample": True, "temperature": args.temperature} if args.temperature > 0 else {"do_sample": False}
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, **sampling)
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    print(processor.post_process_image_text_to_text(new_tokens, skip_special_tokens=True)[0])


def _cmd_convert(args) -> None:
    from .convert_nveagle import ConversionError, convert

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


def _cmd_train(args) -> None:
    from training.recipe import RecipeError, load_recipe
    from training.runner import format_summary, run_recipe

    try:
        recipe = load_recipe(args.recipe)
        if args.data_root:
            recipe.data_root = str(Path(args.data_root).resolve())
        summaries = run_recipe(recipe, args.output, resume=args.resume)
    except (RecipeError, FileExistsError, FileNotFoundError) as error:
        raise UserError(str(error)) from error
    print(format_summary(summaries))
    print(f"stage folders under {args.output}; summary.json has the full numbers")


def _cmd_data_synth(args) -> None:
    from training.synth import generate

    manifest = generate(args.output, n=args.n, seed=args.seed)
    print(f"wrote synthetic data to {args.output}: {manifest}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eagle",
        description="Hub-native Eagle: a mixture-of-vision-experts multimodal LLM. Build, run and ship Eagle models.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    init = commands.add_parser(
        "init",
        help="write a randomly initialised, Hub-ready model folder for a preset",
        description="Write a randomly initialised, Hub-ready folder (weights, config with auto_map, processor, "
        "locally built tokenizer, chat template, remote code) for a named preset.",
    )
    init.add_argument("--preset", required=True, help="eagle-x5, eagle-x4, eagle-x5-tiny or eagle-x4-tiny")
    init.add_argument("--output", required=True, help="folder to create")
    init.add_argument("--config-only", action="store_true", help="write everything but the weights")
    init.add_argument("--seed", type=int, default=0, help="seed for the random initialisation (default 0)")
    init.add_argument("--force", action="store_true", help="replace an existing output folder")
    init.set_defaults(func=_cmd_init)

    generate = commands.add_parser(
        "generate",
        help="answer a prompt about an image with a local model folder",
        description="Load a model folder and answer a prompt about zero or more images (greedy by default).",
    )
    generate.add_argument("--model", required=True, help="model folder (from `eagle init`, conversion or training)")
    generate.add_argument("--image", action="append", help="image file; repeat for several images")
    generate.add_argument("--prompt", required=True, help="the question or instruction")
    generate.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate (default 64)")
    generate.add_argument("--temperature", type=float, default=0.0, help="sample at this temperature (0 = greedy)")
    generate.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 or auto (the checkpoint's)")
    generate.set_defaults(func=_cmd_generate)

    convert = commands.add_parser(
        "convert",
        help="convert a released NVEagle checkpoint into a Hub-native folder",
        description="Convert an NVEagle checkpoint folder (config.json with model_type eagle_llama, safetensors or "
        ".bin weights, tokenizer) into a folder that AutoModel loads with trust_remote_code and pipeline runs. "
        "Streams tensor by tensor; writes to a temporary folder and moves it into place when complete.",
    )
    convert.add_argument("src", help="the NVEagle checkpoint folder (e.g. a local copy of NVEagle/Eagle-X5-7B)")
    convert.add_argument("dst", help="output folder (refused if it exists, unless --force)")
    convert.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="cast weights (default: keep)")
    convert.add_argument(
        "--chat-template",
        help="vicuna_v1, llama3, chatml or a Jinja template string (default: guessed from the tokenizer)",
    )
    convert.add_argument("--max-shard-size-gb", type=float, default=4.0, help="output shard size in GiB (default 4)")
    convert.add_argument("--force", action="store_true", help="replace an existing output folder")
    convert.set_defaults(func=_cmd_convert)

    train = commands.add_parser(
        "train",
        help="run a training recipe (pre-alignment, projector alignment, SFT) with TRL's SFTTrainer",
        description="Run every stage of a recipe YAML (see training/recipe.py for the schema; shipped recipes are "
        "in training/recipes/) on one model, one SFTTrainer per stage. Each stage ends with a Hub-ready folder "
        "OUTPUT/<stage name>; checkpoints go to OUTPUT/checkpoints/<stage name>. Works under `accelerate launch`.",
    )
    train.add_argument("recipe", help="recipe YAML, e.g. training/recipes/tiny.yaml")
    train.add_argument("--output", required=True, help="run folder (must be empty unless --resume)")
    train.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    train.add_argument("--data-root", help="folder that relative data paths in the recipe start from")
    train.set_defaults(func=_cmd_train)

    data = commands.add_parser("data", help="dataset tools", description="Dataset tools.")
    data_commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    synth = data_commands.add_parser(
        "synth",
        help="generate a synthetic visual QA and caption dataset",
        description="Images of coloured shapes and written words with captions and question/answer pairs "
        "(colour, shape, count, position, word), in LLaVA JSON and HF datasets formats, with a held-out split.",
    )
    synth.add_argument("--output", required=True, help="folder to write")
    synth.add_argument("--n", type=int, default=512, help="number of images (default 512)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.set_defaults(func=_cmd_data_synth)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        args.func(args)
    except UserError as error:
        if args.debug:
            raise
        print(f"eagle {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
