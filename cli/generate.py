"""``eagle generate``: answer a prompt about images with a model folder."""

from .common import existing_folder


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "generate",
        help="answer a prompt about an image with a local model folder",
        description="Load a model folder and answer a prompt about zero or more images (greedy by default).",
    )
    parser.add_argument("--model", required=True, help="model folder (from `eagle init`, conversion or training)")
    parser.add_argument("--image", action="append", help="image file; repeat for several images")
    parser.add_argument("--prompt", required=True, help="the question or instruction")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate (default 64)")
    parser.add_argument("--temperature", type=float, default=0.0, help="sample at this temperature (0 = greedy)")
    parser.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 or auto (the checkpoint's)")
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        help="refuse images with more pixels than this (default: the processor's, Pillow's own limit)",
    )
    parser.set_defaults(run=run)


def run(args) -> None:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import eagle_hub.modeling_eagle  # noqa: F401  (registers the Auto classes)

    folder = existing_folder(args.model, "--model")
    processor = AutoProcessor.from_pretrained(folder)
    if args.max_image_pixels is not None:
        processor.image_processor.max_image_pixels = args.max_image_pixels
    images = [processor.image_processor.load_image(path, where=f"--image {path}") for path in args.image or []]
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=args.dtype).eval()
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": args.prompt}]
    prompt = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    inputs = processor(images=images or None, text=[prompt], return_tensors="pt").to(model.device)
    sampling = {"do_sample": True, "temperature": args.temperature} if args.temperature > 0 else {"do_sample": False}
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, **sampling)
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    print(processor.post_process_image_text_to_text(new_tokens, skip_special_tokens=True)[0])
