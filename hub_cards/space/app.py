"""Eagle on Hugging Face Spaces: ask a question about an image and watch the answer stream.

The model is a Hub repo id or a local folder, from ``--model`` or the ``EAGLE_MODEL`` variable (set it in the
Space's settings). It loads with ``trust_remote_code=True`` (the model code ships in its repo); where the
``eagle-hub`` package is installed its classes are used instead. If the model cannot be loaded the page says why.

    python app.py --model ./eagle-x5-tiny --port 7860      # or: eagle demo ./eagle-x5-tiny

This file is self-contained (a Space runs it alone, with requirements.txt beside it).
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import argparse  # noqa: E402
import atexit  # noqa: E402
import html  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

DEFAULT_QUESTION = "Describe the image."
EXAMPLE_QUESTIONS = ["What colour is the circle?", "How many shapes are there?", "What word is written here?"]
TITLE = "Eagle: a mixture of vision experts"


def load_model(source: str):
    """``(model, processor)`` for a repo id or folder; greedy generation on the GPU if there is one."""
    try:  # the package's own classes, if installed; otherwise the repo's remote code
        import eagle_hub.modeling_eagle  # noqa: F401
    except ImportError:
        pass
    from transformers import AutoModelForImageTextToText, AutoProcessor

    local = Path(source).expanduser()
    if not local.exists() and (source.startswith(("/", ".", "~")) or source.count("/") > 1):
        raise FileNotFoundError(f"no model folder at {source}")
    source = str(local) if local.exists() else source
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    processor = AutoProcessor.from_pretrained(source, trust_remote_code=True)
    model = AutoModelForImageTextToText.from_pretrained(source, trust_remote_code=True, dtype=dtype)
    return model.to(device).eval(), processor


def expert_rows(config) -> list[tuple[str, str, str]]:
    """(name, type, resolution) of each vision expert, from the model config."""
    rows = []
    for spec in config.vision_config.experts:
        resolution = f"{spec['image_size']} px"
        if spec.get("max_patches"):
            resolution += f", {spec['max_patches']} patches"
        rows.append((spec["name"], spec["type"], resolution))
    return rows


def experts_html(config) -> str:
    grid = config.vision_config.grid_size
    cells = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{html.escape(kind)}</td><td>{html.escape(res)}</td></tr>"
        for name, kind, res in expert_rows(config)
    )
    return (
        f"<h3>Vision experts</h3><p>Each expert sees the image at its own resolution; features meet on a "
        f"{grid}x{grid} grid ({grid * grid} image tokens).</p>"
        f"<table><thead><tr><th>expert</th><th>type</th><th>resolution</th></tr></thead><tbody>{cells}</tbody></table>"
    )


def make_examples(folder) -> list[str]:
    """Draw the example images (no binary files in the repo): shapes, colours and a word."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    circle = Image.new("RGB", (320, 240), "white")
    ImageDraw.Draw(circle).ellipse((100, 60, 220, 180), fill=(220, 30, 30))
    shapes = Image.new("RGB", (320, 240), (240, 240, 230))
    draw = ImageDraw.Draw(shapes)
    draw.rectangle((30, 60, 110, 140), fill=(30, 80, 220))
    draw.polygon([(160, 160), (200, 80), (240, 160)], fill=(40, 170, 60))
    draw.ellipse((250, 40, 300, 90), fill=(240, 200, 20))
    word = Image.new("RGB", (320, 240), (250, 250, 250))
    ImageDraw.Draw(word).text((40, 90), "EAGLE", fill=(10, 10, 10), font_size=56)
    paths = []
    for name, image in (("circle.png", circle), ("shapes.png", shapes), ("word.png", word)):
        image.save(folder / name)
        paths.append(str(folder / name))
    return paths


class EagleDemo:
    """The loaded model (or why it failed to load) and the streaming answer function."""

    def __init__(self, source: str | None, max_new_tokens: int = 128):
        self.source = source
        self.max_new_tokens = max_new_tokens
        self.model = self.processor = self.error = None
        if not source:
            self.error = "no model configured: pass --model or set the EAGLE_MODEL variable to a repo id or folder"
            return
        try:
            self.model, self.processor = load_model(source)
        except Exception as error:  # shown on the page instead of crashing the app
            self.error = f"{type(error).__name__}: {error}"

    def inputs(self, image_path: str, question: str):
        """The model inputs for an uploaded file, opened by the processor's own loader (size cap, EXIF, modes)."""
        question = (question or "").strip() or DEFAULT_QUESTION
        image = self.processor.image_processor.load_image(image_path, where="the uploaded image")
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = self.processor(images=[image], text=[prompt], return_tensors="pt")
        return inputs.to(self.model.device)

    def answer(self, image, question, max_new_tokens=None):
        """Yield the answer as it grows (greedy decoding, streamed token by token)."""
        from transformers import TextIteratorStreamer

        if self.error:
            yield f"The model could not be loaded: {self.error}"
            return
        if image is None:
            yield "Upload an image first."
            return
        try:
            inputs = self.inputs(image, question)
        except ValueError as error:  # an unreadable, corrupt or oversized image: say so on the page
            yield f"That image cannot be used: {error}"
            return
        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = dict(
            **inputs,
            streamer=streamer,
            max_new_tokens=int(max_new_tokens or self.max_new_tokens),
            do_sample=False,
        )
        failure = []

        def generate():
            try:
                with torch.inference_mode():
                    self.model.generate(**kwargs)
            except Exception as error:  # reported below; the streamer must still end
                failure.append(error)
                streamer.end()

        thread = threading.Thread(target=generate, daemon=True)
        thread.start()
        text = ""
        for chunk in streamer:
            text += chunk
            yield text
        thread.join()
        if failure:
            yield f"{text}\n[generation failed: {type(failure[0]).__name__}: {failure[0]}]"
        elif not text:
            yield ""


def build_demo(demo: EagleDemo, examples: list[str] | None = None):
    import gradio as gr

    with gr.Blocks(title="Eagle demo", analytics_enabled=False) as blocks:
        gr.Markdown(f"# {TITLE}\nAsk about an image. Model: `{demo.source or 'none'}`")
        if demo.error:
            gr.HTML(
                "<h3>The model could not be loaded</h3>"
                f"<p><code>{html.escape(str(demo.source))}</code></p><pre>{html.escape(demo.error)}</pre>",
                elem_id="load-error",
            )
            return blocks
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="filepath", label="Image", sources=["upload", "clipboard"], elem_id="image")
                question = gr.Textbox(label="Question", placeholder=DEFAULT_QUESTION, lines=2, elem_id="question")
                max_new_tokens = gr.Slider(1, 1024, value=demo.max_new_tokens, step=1, label="Max new tokens")
                submit = gr.Button("Ask", variant="primary", elem_id="submit")
            with gr.Column():
                answer = gr.Textbox(label="Answer", lines=8, interactive=False, elem_id="answer")
                gr.HTML(experts_html(demo.model.config), elem_id="experts")
        if examples:
            gr.Examples(
                examples=[[path, q] for path, q in zip(examples, EXAMPLE_QUESTIONS)],
                inputs=[image, question],
                cache_examples=False,
                elem_id="examples",
            )
        submit.click(demo.answer, [image, question, max_new_tokens], answer)
        question.submit(demo.answer, [image, question, max_new_tokens], answer)
    return blocks


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Eagle demo (Gradio): ask about an image, the answer streams.")
    parser.add_argument("--model", default=os.environ.get("EAGLE_MODEL"), help="repo id or folder (or EAGLE_MODEL)")
    parser.add_argument("--host", default=None, help="address to bind (default: GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: GRADIO_SERVER_PORT or 7860)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="default answer length")
    args = parser.parse_args(argv)
    examples_dir = tempfile.mkdtemp(prefix="eagle-examples-")
    atexit.register(shutil.rmtree, examples_dir, ignore_errors=True)
    demo = EagleDemo(args.model, max_new_tokens=args.max_new_tokens)
    blocks = build_demo(demo, make_examples(examples_dir))
    blocks.queue(default_concurrency_limit=1).launch(
        server_name=args.host,
        server_port=args.port,
        share=False,
        ssr_mode=False,
        allowed_paths=[examples_dir],
        footer_links=[],
    )


if __name__ == "__main__":
    main()
