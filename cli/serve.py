"""``eagle serve``: an OpenAI-compatible server (chat completions with images, streaming) for a model folder."""

import socket
from pathlib import Path

from .common import UserError, existing_folder


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "serve",
        help="serve a model folder or Hub repo with an OpenAI-compatible API (transformers serve)",
        description="Serve a model at http://HOST:PORT/v1 with transformers' own OpenAI-compatible server "
        "(`transformers serve`): /v1/chat/completions with text and image_url parts, streaming, /v1/models. Clients "
        "name the model exactly as given here (or leave it out). Images are sent inline as data URLs; http(s) image "
        "URLs are refused, and files only under --image-dir. Needs the serve extra: pip install 'eagle-hub[serve]'.",
    )
    parser.add_argument("model", help="model folder, or a Hub repo id ORG/NAME")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port to serve on (default 8000)")
    parser.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 or auto (the checkpoint's)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--attn-implementation", help="eager, sdpa, flash_attention_2, ... (default: the model's)")
    parser.add_argument("--quantization", choices=["bnb-4bit", "bnb-8bit"], help="load quantized with bitsandbytes")
    parser.add_argument(
        "--continuous-batching",
        action="store_true",
        help="ask for continuous batching; transformers' server has it for text-only models alone, so Eagle falls "
        "back to one generation at a time (first come, first served), as without the flag",
    )
    parser.add_argument(
        "--image-dir",
        help="let image_url name image files under this folder (a path, or a file:// URL); by default only data "
        "URLs are read, so a client cannot make the server open its files",
    )
    parser.add_argument("--log-level", default="warning", help="transformers' log level (default warning)")
    parser.set_defaults(run=run)


def run(args) -> None:
    import importlib.util

    from eagle_hub.processing.locations import is_hub_id

    folder = Path(args.model).expanduser()
    if folder.exists():
        model = str(existing_folder(args.model, "MODEL"))
    elif is_hub_id(args.model):
        model = args.model
    else:
        raise UserError(f"{args.model}: no such folder (pass a model folder or a Hub repo id ORG/NAME)")
    if args.image_dir is not None and not Path(args.image_dir).is_dir():
        raise UserError(f"--image-dir {args.image_dir}: no such folder")
    if any(importlib.util.find_spec(name) is None for name in ("fastapi", "uvicorn", "openai")):
        raise UserError("serving needs transformers' serving extra: pip install 'eagle-hub[serve]'")
    try:  # before loading the model, which can take minutes
        family = socket.getaddrinfo(args.host, args.port, type=socket.SOCK_STREAM)[0][0]
        socket.create_server((args.host, args.port), family=family).close()  # with SO_REUSEADDR, as uvicorn
    except OSError as error:
        raise UserError(f"--host {args.host} --port {args.port}: cannot listen there ({error.strerror})") from None
    from eagle_hub.serving import serve

    try:
        serve(
            model,
            host=args.host,
            port=args.port,
            dtype=args.dtype,
            device=args.device,
            attn_implementation=args.attn_implementation,
            quantization=args.quantization,
            continuous_batching=args.continuous_batching,
            image_dir=args.image_dir,
            log_level=args.log_level,
        )
    except OSError as error:  # the model cannot be loaded: not on the Hub, offline and not cached, unreadable files
        raise UserError(f"{args.model}: {error}") from None
