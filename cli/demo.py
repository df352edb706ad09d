"""``eagle demo``: the Gradio Space app on a local folder or a Hub repo id."""

from pathlib import Path

from .common import UserError


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "demo",
        help="run the Gradio demo (the Space app) on a model folder, locally",
        description="Serve hub_cards/space/app.py for a local model folder or a Hub repo id: upload an image, ask "
        "a question, watch the answer stream. Needs the demo extra: pip install 'eagle-hub[demo]'.",
    )
    parser.add_argument("model", help="model folder, or a Hub repo id ORG/NAME")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="default answer length (default 128)")
    parser.set_defaults(run=run)


def run(args) -> None:
    import importlib.util

    import eagle_hub.hub_cards
    from eagle_hub.processing.locations import is_hub_id

    folder = Path(args.model).expanduser()
    if not folder.exists() and not is_hub_id(args.model):
        raise UserError(f"{args.model}: no such folder (pass a model folder or a Hub repo id ORG/NAME)")
    if importlib.util.find_spec("gradio") is None:
        raise UserError("the demo needs gradio: pip install 'eagle-hub[demo]'")
    # The app is the Space's own file, run as the Space runs it (it imports nothing from this package).
    app_path = Path(eagle_hub.hub_cards.__file__).parent / "space" / "app.py"
    spec = importlib.util.spec_from_file_location("eagle_space_app", app_path)
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    argv = ["--model", str(folder.resolve()) if folder.exists() else args.model, "--host", args.host]
    argv += ["--port", str(args.port), "--max-new-tokens", str(args.max_new_tokens)]
    app.main(argv)
