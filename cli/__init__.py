"""The ``eagle`` command line.

    eagle init --preset eagle-x5-tiny --output ./eagle-tiny      # random, Hub-ready folder
    eagle generate --model ./eagle-tiny --image cat.png --prompt "What is in the picture?"
    eagle convert ./Eagle-X5-7B ./eagle-x5-7b-hf                 # a released NVEagle checkpoint, converted
    eagle push ./eagle-tiny --repo-id me/eagle-tiny --dry-run    # validate, list what would be uploaded
    eagle demo ./eagle-tiny --port 7860                          # the Gradio Space app, locally
    eagle bench --preset small --json bench.json                 # speed and memory next to LLaVA and the LLM

A user error (a missing file, a bad preset, an existing output) prints one line saying what is wrong and what
to do, and exits with status 2; ``--debug`` shows the full traceback instead.
"""

import argparse
import logging
import sys
from pathlib import Path


class UserError(Exception):
    """An error the user can fix; shown as one line, exit status 2."""


def _cmd_init(args) -> None:
    from eagle_hub.modeling_eagle.hub_folder import init_folder
    from eagle_hub.modeling_eagle.presets import PRESETS

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

    import eagle_hub.modeling_eagle  # noqa: F401  (registers the Auto classes)

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


def _cmd_train(args) -> None:
    from eagle_hub.training.recipe import RecipeError, load_recipe
    from eagle_hub.training.runner import format_summary, run_recipe

    try:
        recipe = load_recipe(args.recipe)
        if args.data_root:
            recipe.data_root = str(Path(args.data_root).resolve())
        summaries = run_recipe(recipe, args.output, resume=args.resume)
    except (RecipeError, FileExistsError, FileNotFoundError) as error:
        raise UserError(str(error)) from error
    print(format_summary(summaries))
    print(f"stage folders under {args.output}; summary.json has the full numbers")


def _cmd_quickstart(args) -> None:
    from eagle_hub.training.quickstart import Budget, format_report, quickstart

    budget = Budget()
    for field in ("n_images", "prealign_steps", "align_steps", "word_steps", "sft_steps"):
        if getattr(args, field) is not None:
            setattr(budget, field, getattr(args, field))
    report = quickstart(args.output, seed=args.seed, budget=budget, ablate=args.ablate, scene=args.scene)
    print(format_report(report))


def _cmd_data_synth(args) -> None:
    from eagle_hub.training.synth import generate

    manifest = generate(
        args.output,
        n=args.n,
        seed=args.seed,
        questions_per_image=args.questions_per_image,
        conversations=args.conversations,
        focus_types=tuple(args.focus_types),
        scene=args.scene,
    )
    print(f"wrote synthetic data to {args.output}: {manifest}")


def _cmd_push(args) -> None:
    from eagle_hub.hub_cards.push import PushError, push_folder

    try:
        result = push_folder(
            args.folder,
            args.repo_id,
            private=args.private,
            revision=args.revision,
            create_pr=args.create_pr,
            dry_run=args.dry_run,
            load=not args.skip_load_check,
            commit_message=args.commit_message,
        )
    except PushError as error:
        raise UserError(str(error)) from error
    for check in result.checks:
        print(f"ok: {check}")
    target = "a pull request on main" if args.create_pr else f"branch {args.revision or 'main'}"
    if result.dry_run:
        print(
            f"dry run: would upload {len(result.files)} files ({result.total_bytes:,} bytes) "
            f"to {args.repo_id}, {target}:"
        )
        for name, size in result.files:
            note = " (generated from the folder)" if name == "README.md" and result.card_generated else ""
            print(f"  {name}  {size:,} bytes{note}")
        if not result.token_found:
            print("note: no Hugging Face token found; before pushing, run `hf auth login` or set HF_TOKEN")
        return
    if result.card_generated:
        print(f"wrote the model card {Path(args.folder) / 'README.md'}")
    print(f"uploaded {len(result.files)} files ({result.total_bytes:,} bytes) to {args.repo_id}, {target}")
    print(result.pr_url or result.commit_url or f"https://huggingface.co/{args.repo_id}")


def _cmd_demo(args) -> None:
    import importlib.util
    import re

    folder = Path(args.model)
    if not folder.exists() and (
        args.model.startswith((".", "/", "~")) or not re.match(r"^[\w.-]+/[\w.-]+$", args.model)
    ):
        raise UserError(f"{args.model}: no such folder (pass a model folder or a Hub repo id ORG/NAME)")
    if importlib.util.find_spec("gradio") is None:
        raise UserError("the demo needs gradio: pip install 'eagle-hub[demo]'")
    app_path = Path(__file__).resolve().parents[1] / "hub_cards" / "space" / "app.py"
    if not app_path.is_file():
        raise UserError(f"the Space app is missing ({app_path}); run from a checkout or an editable install")
    spec = importlib.util.spec_from_file_location("eagle_space_app", app_path)
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    argv = ["--model", str(folder.resolve()) if folder.exists() else args.model, "--host", args.host]
    argv += ["--port", str(args.port), "--max-new-tokens", str(args.max_new_tokens)]
    app.main(argv)


def _cmd_bench(args) -> None:
    from eagle_hub.benchmarks.bench import Settings, format_table, run_benchmark, write_json

    if args.json and not Path(args.json).resolve().parent.is_dir():
        raise UserError(f"--json {args.json}: its folder does not exist")
    settings = Settings.for_preset(
        args.preset, device=args.device, dtype=args.dtype, repeats=args.repeats, quick=args.quick
    )
    results = run_benchmark(settings)
    print(format_table(results))
    if args.json:
        write_json(results, args.json)
        print(f"wrote {args.json}")


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

    quick = commands.add_parser(
        "quickstart",
        help="train a small Eagle-X5 end to end on this CPU and serve it (nothing downloaded)",
        description="Make synthetic visual questions, train eagle-x5-small through the three stages, measure "
        "held-out exact match per question type, write a Hub-ready folder (OUTPUT/model) with eval_results.json "
        "and a model card, then load it in a fresh process with trust_remote_code and answer through a pipeline.",
    )
    quick.add_argument("--output", default="eagle-quickstart", help="folder to create (default eagle-quickstart)")
    quick.add_argument("--seed", type=int, default=0, help="seed for data and training (default 0)")
    quick.add_argument("--ablate", action="store_true", help="also train single-expert and no-pre-alignment variants")
    from eagle_hub.training.quickstart import Budget
    from eagle_hub.training.synth import QUESTION_TYPES, SCENES

    quick.add_argument(
        "--scene",
        choices=SCENES,
        default="uniform",
        help="uniform (default): copies of one coloured shape, questions ask what is drawn; mixed: distinct shapes "
        "and colours, questions look one object up by another's attribute (harder; see the README)",
    )

    budget = Budget()
    quick.add_argument("--n-images", type=int, help=f"synthetic images (default {budget.n_images})")
    quick.add_argument(
        "--prealign-steps", type=int, help=f"steps per expert in stage 1 (default {budget.prealign_steps})"
    )
    quick.add_argument("--align-steps", type=int, help=f"steps of stage 2 (default {budget.align_steps})")
    quick.add_argument(
        "--word-steps",
        type=int,
        help=f"steps of stage 3a, written-word questions alone; 0 skips it (default {budget.word_steps})",
    )
    quick.add_argument(
        "--sft-steps", type=int, help=f"steps of stage 3, all question types (default {budget.sft_steps})"
    )
    quick.set_defaults(func=_cmd_quickstart)

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
    synth.add_argument(
        "--questions-per-image", type=int, default=2, help="questions per image, of different types (default 2)"
    )
    synth.add_argument(
        "--conversations",
        action="store_true",
        help="one multi-turn record per training image holding all its questions, not one record per question",
    )
    synth.add_argument(
        "--focus-types",
        nargs="+",
        default=[],
        choices=QUESTION_TYPES,
        metavar="TYPE",
        help="question types that also get a single-question split of their own (sft_TYPE.json, hf/sft_TYPE), "
        "for a stage that trains on one type alone, as the quickstart does for word",
    )
    synth.add_argument(
        "--scene",
        choices=SCENES,
        default="mixed",
        help="mixed (default): distinct shapes and colours, questions look one object up by another's attribute; "
        "uniform: copies of one coloured shape, questions ask what is drawn",
    )
    synth.set_defaults(func=_cmd_data_synth)

    push = commands.add_parser(
        "push",
        help="validate a model folder, then upload it to the Hugging Face Hub",
        description="Check that a folder is Hub-ready (config with auto_map and its code files, processor, "
        "tokenizer, chat template, safetensors weights, model card metadata), load it in a fresh process with "
        "trust_remote_code and run one forward pass, then create the repo if needed and upload the folder. "
        "A folder without README.md gets a generated model card. Needs a token: `hf auth login` or HF_TOKEN.",
    )
    push.add_argument("folder", help="the model folder (from `eagle init`, `eagle convert` or `eagle train`)")
    push.add_argument("--repo-id", required=True, help="the Hub repo, ORG/NAME")
    push.add_argument("--private", action="store_true", help="create the repo as private (if it does not exist)")
    push.add_argument("--revision", help="branch to upload to (created if missing; default main)")
    push.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing to main")
    push.add_argument("--commit-message", help="the commit message (default names the folder)")
    push.add_argument("--dry-run", action="store_true", help="validate and list what would be uploaded; send nothing")
    push.add_argument(
        "--skip-load-check",
        action="store_true",
        help="skip the fresh-process load and forward pass (for models too large for this machine)",
    )
    push.set_defaults(func=_cmd_push)

    demo = commands.add_parser(
        "demo",
        help="run the Gradio demo (the Space app) on a model folder, locally",
        description="Serve hub_cards/space/app.py for a local model folder or a Hub repo id: upload an image, ask "
        "a question, watch the answer stream. Needs the demo extra: pip install 'eagle-hub[demo]'.",
    )
    demo.add_argument("model", help="model folder, or a Hub repo id ORG/NAME")
    demo.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    demo.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    demo.add_argument("--max-new-tokens", type=int, default=128, help="default answer length (default 128)")
    demo.set_defaults(func=_cmd_demo)

    bench = commands.add_parser(
        "bench",
        help="measure speed and memory next to LLaVA and the bare LLM, and check the performance bars",
        description="Build a preset with random weights and measure, in one run: per-expert and tower time with "
        "analytic FLOPs, prefill, time to first token, decode step and tokens/s (1 and 8 requests), and per "
        "training stage the step time and peak memory, each next to transformers' LLaVA with the same LLM and a "
        "CLIP tower of the same size, and the bare LLM on the same token count. Prints tables and the bars; "
        "--json writes every figure. `small` runs in under two minutes on a CPU; `x5-7b` is for GPUs.",
    )
    bench.add_argument(
        "--preset",
        choices=["small", "x5-7b"],
        default="small",
        help="small: eagle-x5-small (default); x5-7b: eagle-x5, the released layout with a 7B LLM",
    )
    bench.add_argument("--json", help="also write every figure and the bars to this JSON file")
    bench.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda if available, else cpu)")
    bench.add_argument(
        "--dtype", choices=["float32", "bfloat16", "float16"], help="default: bfloat16 on CUDA, float32 on CPU"
    )
    bench.add_argument("--repeats", type=int, help="timed runs per figure, after warm-up (default 30; x5-7b 10)")
    bench.add_argument("--quick", action="store_true", help="fewer repeats and tokens: a smoke test, not figures")
    bench.set_defaults(func=_cmd_bench)
    return parser


def quiet_bitsandbytes_cpu_warning() -> None:
    """bitsandbytes on a CPU warns at import (through peft/trl, in every command) that its optional Hub-fetched
    kernels are missing; its built-in fallback works, and the line would bury the command's own output."""
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    quiet_bitsandbytes_cpu_warning()
    try:
        args.func(args)
    except (UserError, ValueError, FileNotFoundError, FileExistsError, PermissionError) as error:
        # Bad input (files, configs, recipes, images, prompts) is reported in one line; the library's own errors
        # are ValueErrors that name the input. Anything else is a bug and keeps its traceback.
        if args.debug:
            raise
        message = " ".join(str(error).split())
        print(f"eagle {args.command}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
