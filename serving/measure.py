"""The serving row of ``eagle bench``: the server against ``model.generate`` on the same prompts, in one run.

- A preset's random-weight folder (as ``eagle init`` writes it) is served by ``eagle serve`` in a subprocess on the
  same device and dtype, and loaded in this process for the direct calls.
- The prompts: ``requests`` chats of one question and one image each (different images and questions). The client
  is the official openai one, images go as PNG data URLs (encoded beforehand); the direct path starts from the same
  messages with the PIL images: the processor's chat template, ``generate``, decoding.
- A round sends every prompt once: one after the other (one client), or spread over ``clients`` threads (the same
  prompts, concurrently). Greedy, ``max_tokens`` new tokens; time to first token is a round of one-token requests,
  end to end. Rounds of each kind are interleaved, the order rotating from repeat to repeat, and every ratio is the
  median over repeats of the ratio within a repeat, so a slow spell on a shared machine slows both sides of it.
- Before timing, every served answer is checked against the direct one (``answers_equal``).
"""

import base64
import io
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .server import eagle_serve_command, free_port, running_server

QUESTIONS = [
    "What is in the picture?",
    "Describe the image in one sentence.",
    "What colour is the square?",
    "Is there any text in this image?",
    "How many objects can you see?",
    "Where is the bright area?",
    "What would you call this scene?",
    "Is the picture noisy?",
]


def measure_serving(
    preset: str = "eagle-x5-small",
    *,
    folder=None,
    device: str = "cpu",
    dtype: str = "float32",
    requests: int = 8,
    clients: int = 8,
    max_tokens: int = 16,
    repeats: int = 5,
    warmup: int = 1,
    threads: int | None = None,
) -> dict:
    """Requests per second and time to first token through ``eagle serve`` and by calling ``model.generate``
    directly, and the server's throughput with ``clients`` clients against one. ``folder``: serve this folder
    instead of a fresh random-weight ``preset``. ``threads``: torch's CPU threads, here and in the server (default:
    this process's)."""
    import torch

    threads = threads or torch.get_num_threads()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="eagle-serve-bench-") as scratch:
            if folder is None:
                from eagle_hub.modeling_eagle.hub_folder import init_folder

                folder = init_folder(preset, Path(scratch) / preset)
            settings = (device, dtype, requests, clients, max_tokens, repeats, warmup, threads)
            return _measure(Path(folder), Path(scratch), *settings)
    finally:
        torch.set_num_threads(before)


def _measure(folder, scratch, device, dtype, requests, clients, max_tokens, repeats, warmup, threads) -> dict:
    import numpy as np
    import torch
    from openai import OpenAI
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import eagle_hub.modeling_eagle  # noqa: F401  (registers the Auto classes)

    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=getattr(torch, dtype)).to(device).eval()
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)) for _ in range(requests)]
    questions = [QUESTIONS[index % len(QUESTIONS)] for index in range(requests)]
    urls = [data_url(image) for image in images]

    def direct(index: int, tokens: int) -> str:
        content = [{"type": "image", "image": images[index]}, {"type": "text", "text": questions[index]}]
        inputs = processor.apply_chat_template(
            [{"role": "user", "content": content}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        ).to(device)
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=tokens, do_sample=False)
        return processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    port = free_port()
    command = eagle_serve_command(folder, port, "--device", device, "--dtype", dtype)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}  # the same number of threads as the direct calls
    with running_server(command, port, scratch / "server.log", env=env) as base_url:
        client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)

        def served(index: int, tokens: int) -> str:
            content = [{"type": "image_url", "image_url": {"url": urls[index]}}]
            content.append({"type": "text", "text": questions[index]})
            response = client.chat.completions.create(
                model=str(folder),
                messages=[{"role": "user", "content": content}],
                max_tokens=tokens,
                temperature=0,
            )
            return response.choices[0].message.content

        answers_equal = all(served(i, max_tokens) == direct(i, max_tokens) for i in range(requests))
        with ThreadPoolExecutor(clients) as pool:
            rounds = {
                "direct": lambda: [direct(i, max_tokens) for i in range(requests)],
                "server": lambda: [served(i, max_tokens) for i in range(requests)],
                "server_clients": lambda: list(pool.map(lambda i: served(i, max_tokens), range(requests))),
                "direct_ttft": lambda: [direct(i, 1) for i in range(requests)],
                "server_ttft": lambda: [served(i, 1) for i in range(requests)],
            }
            times = _interleaved(rounds, repeats, warmup)

    def paired(numerator: str, denominator: str) -> float:
        return round(statistics.median(a / b for a, b in zip(times[numerator], times[denominator])), 4)

    def per_s(name: str) -> float:
        return round(requests / statistics.median(times[name]), 3)

    def ms_each(name: str) -> float:
        return round(1e3 * statistics.median(times[name]) / requests, 2)

    return {
        "folder": str(folder),
        "device": device,
        "dtype": dtype,
        "threads": threads,
        "requests": requests,
        "clients": clients,
        "max_tokens": max_tokens,
        "repeats": repeats,
        "answers_equal": answers_equal,
        "direct_requests_per_s": per_s("direct"),
        "server_requests_per_s": per_s("server"),
        "server_requests_per_s_clients": per_s("server_clients"),
        "direct_time_to_first_token_ms": ms_each("direct_ttft"),
        "server_time_to_first_token_ms": ms_each("server_ttft"),
        # the server's overhead: its time over the direct calls' (1.0 = none)
        "server_over_direct": paired("server", "direct"),
        "server_over_direct_ttft": paired("server_ttft", "direct_ttft"),
        # throughput with `clients` clients over one client's
        "clients_over_one": paired("server", "server_clients"),
    }


def _interleaved(rounds: dict, repeats: int, warmup: int) -> dict:
    times = {name: [] for name in rounds}
    names = list(rounds)
    for index in range(warmup + repeats):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            rounds[name]()
            if index >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def data_url(image) -> str:
    """A PNG data URL, as a client sends an image inline."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
