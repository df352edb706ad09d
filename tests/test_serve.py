"""``eagle serve``: transformers' OpenAI-compatible server on a tiny Eagle folder, driven by the official openai
client. One server for the module (a subprocess on a free 127.0.0.1 port, always stopped); answers are compared
with greedy ``generate`` in this process on the same messages."""

import base64
import io
import os
import socket
import struct
import sys
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import openai
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

import eagle_hub.modeling_eagle.image_processing_eagle
import eagle_hub.serving.adaptation
from eagle_hub.cli import main
from eagle_hub.hub_cards.fresh_process import PRELUDE
from eagle_hub.serving import check_stack, eagle_serve_command, free_port, measure_serving, running_server
from eagle_hub.serving.adaptation import is_input_check

TOKENS = 12


# --------------------------------------------------------------------------------------------------- images
def encode(image: Image.Image, kind: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=kind)
    return buffer.getvalue()


def data_url(data: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64," + base64.b64encode(data).decode()


def noisy(seed: int, size=(80, 60)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def png_header_only(width: int, height: int, bit_depth: int = 8, colour_type: int = 2) -> bytes:
    """A PNG whose header claims any size or pixel format, with almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 8)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


# --------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def server(saved_folder, tmp_path_factory):
    scratch = tmp_path_factory.mktemp("serve")
    image_dir = scratch / "images"
    image_dir.mkdir()
    noisy(7).save(image_dir / "seven.png")
    port = free_port()
    options = ("--dtype", "float32", "--device", "cpu", "--image-dir", str(image_dir))
    log = scratch / "server.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # a shared 2-core machine: one thread is faster and steadier
    with running_server(eagle_serve_command(saved_folder, port, *options), port, log, env=env) as base_url:
        yield SimpleNamespace(url=base_url, model=str(saved_folder), log=log, image_dir=image_dir)


@pytest.fixture(scope="module")
def client(server):
    # max_retries=0: a refused request must be refused once, not retried
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def reference(saved_folder):
    """Greedy generation in this process, from the same folder and the same messages (PIL images)."""
    processor = AutoProcessor.from_pretrained(saved_folder)
    model = AutoModelForImageTextToText.from_pretrained(saved_folder, dtype=torch.float32).eval()

    def greedy(messages, max_tokens=TOKENS) -> str:
        inputs = processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        output = model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False)
        return processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    return greedy


def turn(role: str, *parts, kind: str = "PNG"):
    """One message in both forms: the OpenAI one (images as data URLs) and the processor's (the decoded images)."""
    openai_parts, processor_parts = [], []
    for part in parts:
        if isinstance(part, str):
            openai_parts.append({"type": "text", "text": part})
            processor_parts.append({"type": "text", "text": part})
        else:
            data = encode(part, kind)
            openai_parts.append({"type": "image_url", "image_url": {"url": data_url(data, kind.lower())}})
            processor_parts.append({"type": "image", "image": Image.open(io.BytesIO(data))})
    return {"role": role, "content": openai_parts}, {"role": role, "content": processor_parts}


def conversation(*turns):
    return [t[0] for t in turns], [t[1] for t in turns]


def answer(client, server, messages, **options) -> str:
    response = client.chat.completions.create(model=server.model, messages=messages, **options)
    return response.choices[0].message.content


# --------------------------------------------------------------------------------------------------- requests
def test_models_lists_the_served_folder(client, server):
    assert [model.id for model in client.models.list()] == [server.model]


def test_text_only_is_greedy_generation(client, server, reference):
    sent, expected = conversation(turn("user", "Say something about cats."))
    response = client.chat.completions.create(model=server.model, messages=sent, max_tokens=TOKENS, temperature=0)
    assert response.choices[0].message.content == reference(expected)
    assert response.usage.completion_tokens <= TOKENS


@pytest.mark.parametrize("kind", ["PNG", "JPEG"])
def test_one_image_is_greedy_generation(client, server, reference, kind):
    sent, expected = conversation(turn("user", noisy(1), "What is in the picture?", kind=kind))
    assert answer(client, server, sent, max_tokens=TOKENS, temperature=0) == reference(expected)


def test_two_turns_are_greedy_generation(client, server, reference):
    sent, expected = conversation(
        turn("user", noisy(2), "What is in the picture?"),
        turn("assistant", "A noisy square."),
        turn("user", "And what colour is it?"),
    )
    assert answer(client, server, sent, max_tokens=TOKENS) == reference(expected)


def test_streaming_sends_the_same_answer_as_events(client, server):
    sent, _ = conversation(turn("user", noisy(3), "Describe it."))
    whole = answer(client, server, sent, max_tokens=TOKENS)
    stream = client.chat.completions.create(
        model=server.model, messages=sent, max_tokens=TOKENS, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    # transformers' streamer never flushes an incomplete UTF-8 tail, which the one-shot decode shows as U+FFFD
    assert text == whole or (whole.startswith(text) and set(whole[len(text) :]) == {"\ufffd"})
    assert len(chunks) > 3
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].usage.completion_tokens == TOKENS


def test_sampling_parameters(client, server):
    sent, _ = conversation(turn("user", noisy(4), "Tell me a story."))

    def sample(seed, **options):
        return answer(client, server, sent, max_tokens=TOKENS, temperature=1.0, seed=seed, **options)

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)  # temperature turns sampling on (the folder's generation_config is greedy)
    assert sample(3, top_p=0.9) == sample(3, top_p=0.9)
    response = client.chat.completions.create(model=server.model, messages=sent, max_tokens=3)
    assert response.usage.completion_tokens == 3 and response.choices[0].finish_reason == "length"


@pytest.mark.parametrize("stream", [False, True])
def test_stop_ends_the_answer_at_the_stop_string(client, server, stream):
    sent, _ = conversation(turn("user", noisy(5), "What is it?"))
    whole = answer(client, server, sent, max_tokens=TOKENS)
    run = max(whole.split("\ufffd"), key=len)  # U+FFFD stands for partial bytes, which a stop string cannot match
    assert len(run) >= 4, whole
    stop = run[1:4]
    if stream:
        chunks = list(
            client.chat.completions.create(
                model=server.model, messages=sent, stop=[stop], max_tokens=TOKENS, stream=True
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    else:
        response = client.chat.completions.create(model=server.model, messages=sent, stop=stop, max_tokens=TOKENS)
        text, finish = response.choices[0].message.content, [response.choices[0].finish_reason]
    # transformers keeps the stop string in the answer (OpenAI drops it)
    assert text == whole[: whole.index(stop) + len(stop)] and finish == ["stop"]


def test_image_files_only_under_the_image_dir(client, server):
    path = server.image_dir / "seven.png"
    by_file = [{"type": "image_url", "image_url": {"url": str(path)}}, {"type": "text", "text": "What?"}]
    by_url = [{"type": "image_url", "image_url": {"url": path.as_uri()}}, {"type": "text", "text": "What?"}]
    inline = [
        {"type": "image_url", "image_url": {"url": data_url(path.read_bytes())}},
        {"type": "text", "text": "What?"},
    ]
    expected = answer(client, server, [{"role": "user", "content": inline}], max_tokens=TOKENS)
    assert answer(client, server, [{"role": "user", "content": by_file}], max_tokens=TOKENS) == expected
    assert answer(client, server, [{"role": "user", "content": by_url}], max_tokens=TOKENS) == expected
    outside = [{"type": "image_url", "image_url": {"url": str(server.image_dir / ".." / "server.log")}}]
    with pytest.raises(openai.BadRequestError, match="not a file under the image folder"):
        answer(client, server, [{"role": "user", "content": outside}])


def test_without_image_dir_no_file_is_read():
    # the default of `eagle serve` (this process never ran install(), so no image folder is set)
    for url in ("/etc/hostname", "file:///etc/hostname", "relative.png"):
        with pytest.raises(ValueError, match="reads no image files"):
            eagle_hub.serving.adaptation.open_image_url(url, "image 0")


# --------------------------------------------------------------------------------------------------- bad input
def image_request(url: str) -> list[dict]:
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is it?"}]
    return [{"role": "user", "content": content}]


BAD_REQUESTS = {
    # name: (request options, status, a phrase of the error message)
    "corrupt base64": ({"messages": image_request("data:image/png;base64,iVBORw0K$$$")}, 400, "not valid base64"),
    "not an image": ({"messages": image_request(data_url(b"GIF? no, just text"))}, 400, "not an image"),
    "truncated image": (
        {"messages": image_request(data_url(encode(noisy(8))[:900]))},
        400,
        "corrupt or truncated",
    ),
    "unsupported mode": ({"messages": image_request(data_url(png_header_only(4, 4, 4, 2)))}, 400, "pixel mode"),
    "over the pixel cap": (
        {"messages": image_request(data_url(png_header_only(10_000, 10_000)))},
        400,
        "max_image_pixels",
    ),
    "decompression bomb": (
        {"messages": image_request(data_url(png_header_only(20_000, 20_000)))},
        400,
        "decompression bomb",
    ),
    # each image_url part gets its own <image> from the chat template: a literal one in the text is the only way
    # to make images and placeholders disagree
    "images and placeholders differ": (
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "Compare <image> and"}, "IMAGE"]}]},
        400,
        "placeholder",
    ),
    "prompt over the context length": ({"messages": [{"role": "user", "content": "word " * 3000}]}, 400, "at most"),
    "unknown model": ({"model": "someone/else"}, 404, "does not exist"),
    "http image URL (offline)": ({"messages": image_request("http://example.com/cat.png")}, 400, "does not fetch"),
    "file outside --image-dir": ({"messages": image_request("/etc/hostname")}, 400, "not a file under the image"),
    "no messages": ({"messages": []}, 400, "non-empty list"),
    "temperature out of range": ({"temperature": 7}, 400, "temperature"),
    "max_tokens 0": ({"max_tokens": 0}, 400, "max_tokens"),
    "stop not a string": ({"stop": 5}, 400, "stop must be"),
    "a part of unknown type": ({"messages": [{"role": "user", "content": [{"type": "file"}]}]}, 400, "has type"),
    "a part without its text": ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, 400, "text must"),
    "audio": ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, 400, "no audio input"),
    "generation_config not JSON": ({"extra_body": {"generation_config": "{max"}}, 400, "generation_config must"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_is_refused_and_the_server_goes_on(client, server, case):
    options, status, phrase = BAD_REQUESTS[case]
    request = {"model": server.model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}
    request.update(options)
    for message in request["messages"]:  # "IMAGE" stands for a real image part
        if isinstance(message["content"], list):
            message["content"] = [
                {"type": "image_url", "image_url": {"url": data_url(encode(noisy(9)))}} if part == "IMAGE" else part
                for part in message["content"]
            ]
    request_id = f"bad-{case.replace(' ', '-')}"
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(**request, extra_headers={"X-Request-ID": request_id})
    error = caught.value
    assert error.status_code == status
    assert error.body["type"] == "invalid_request_error" and phrase in error.body["message"]
    assert "Traceback" not in error.response.text
    assert f"request {request_id} " in server.log.read_text()  # the log names the request
    assert answer(client, server, [{"role": "user", "content": "Still there?"}], max_tokens=2)


def test_a_failure_inside_transformers_is_a_server_error_and_the_server_goes_on(client, server):
    """A setting no check of ours refuses fails inside transformers' generation with a ValueError: the server's fault
    (500), in OpenAI's format, without a traceback, logged with its request id."""
    request_id = "inside-transformers"
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(
            model=server.model,
            messages=[{"role": "user", "content": "Hello"}],
            extra_body={"generation_config": '{"max_new_tokens": -5}'},
            extra_headers={"X-Request-ID": request_id},
        )
    assert caught.value.status_code == 500 and caught.value.body["type"] == "server_error"
    assert "Traceback" not in caught.value.response.text
    assert f"request {request_id} " in server.log.read_text()
    assert answer(client, server, [{"role": "user", "content": "Still there?"}], max_tokens=2)


def test_malformed_json_is_refused_and_the_server_goes_on(client, server):
    # the openai client cannot send broken JSON: this one request is raw HTTP
    response = httpx.post(
        f"{server.url}/chat/completions",
        content=b'{"model": "x", "messages": [',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert answer(client, server, [{"role": "user", "content": "Still there?"}], max_tokens=2)


# --------------------------------------------------------------------------------------------------- concurrency
def test_concurrent_clients_each_get_their_own_greedy_answer(client, server, reference):
    conversations = [
        conversation(turn("user", noisy(10), "What is in the picture?")),
        conversation(turn("user", "Write a short poem.")),
        conversation(turn("user", noisy(11), "Describe it."), turn("assistant", "Noise."), turn("user", "More?")),
        conversation(turn("user", noisy(12), noisy(13), "Which is brighter?")),
    ]
    expected = [reference(processor_messages) for _, processor_messages in conversations]

    def ask(index: int) -> str:  # one client per thread, as separate programs would
        own = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)
        return answer(own, server, conversations[index][0], max_tokens=TOKENS, temperature=0)

    with ThreadPoolExecutor(len(conversations)) as pool:
        assert list(pool.map(ask, range(len(conversations)))) == expected


# --------------------------------------------------------------------------------------------------- the stack
BARE_SERVER = r"""
import sys
# The adaptation file alone, importable by name: transformers 5.25 spawns its engine process with a pickled loader
# whose class lives in it (the engine gets this sys.path).
sys.path.insert(0, sys.argv[1])
import eagle_serving_adaptation as adaptation
folder, port = sys.argv[2:4]
adaptation.install()
from transformers.cli.serve import Serve
Serve(force_model=folder, trust_remote_code=True, continuous_batching=True, host="127.0.0.1", port=int(port),
      dtype="float32", device="cpu", log_level="info")
"""
FALLBACK_WITHOUT_BATCHING = (
    "does not support continuous batching",  # 5.20 .. 5.24
    "Only LLMs support continuous batching. Falling back to sequential generation.",  # 5.25
)


def test_served_without_the_package_from_the_folders_remote_code(saved_folder, reference, tmp_path):
    """transformers, the folder and the adaptation file alone (this package cannot be imported), with
    --continuous-batching: the stack has it for text-only models alone, so Eagle falls back to sequential
    generation, with the same answers."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "eagle_serving_adaptation.py").write_bytes(Path(eagle_hub.serving.adaptation.__file__).read_bytes())
    port = free_port()
    command = [sys.executable, "-c", PRELUDE + BARE_SERVER, code, saved_folder, port]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    with running_server([str(part) for part in command], port, tmp_path / "server.log", env=env) as url:
        bare = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)
        sent, expected = conversation(turn("user", noisy(14), "What is in the picture?"))
        response = bare.chat.completions.create(model=str(saved_folder), messages=sent, max_tokens=TOKENS)
        assert response.choices[0].message.content == reference(expected)
    log = (tmp_path / "server.log").read_text()
    assert any(phrase in log for phrase in FALLBACK_WITHOUT_BATCHING), log[-3000:]
    assert (tmp_path / "modules" / "transformers_modules").is_dir()  # the folder's code was loaded as remote code


def test_transformers_serving_still_needs_the_adaptation(saved_folder):
    """Fails when transformers changes what serving/adaptation.py relies on or works around: then update it."""
    engine = check_stack()  # every attribute it wraps is still there, with the same signature
    import transformers
    from transformers import AutoConfig
    from transformers.cli.serving import model_manager
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    assert "eagle" not in CONFIG_MAPPING_NAMES, "transformers has its own `eagle` model type now"
    assert "EagleForConditionalGeneration" not in vars(transformers), "install() ran in the test process"
    config = AutoConfig.from_pretrained(saved_folder)
    if engine:  # 5.25 ..: the loader the engine process gets
        loader = model_manager.ModelLoader(device="cpu", dtype="float32")
        assert type(loader).__module__.startswith("transformers."), "install() ran in the test process"
        with pytest.raises(AttributeError, match="EagleForConditionalGeneration"):  # else: it loads Eagle by itself
            loader._load_model(str(saved_folder))
        assert model_manager.ModelLoader.get_model_modality(config) is None  # else: it recognises Eagle by itself
    else:
        manager = model_manager.ModelManager(device="cpu", dtype="float32")
        with pytest.raises(AttributeError, match="EagleForConditionalGeneration"):
            manager._load_model(manager.process_model_name(str(saved_folder)))
        model = AutoModelForImageTextToText.from_pretrained(saved_folder)
        with pytest.raises(ValueError, match="Unknown modality"):
            model_manager.ModelManager.get_model_modality(model)


def test_the_engine_loader_pickles_by_reference_with_its_registrations():
    """transformers 5.25 spawns the engine with a pickled loader: the class must come back from this module by
    name, carrying the modules that register Eagle."""
    import pickle

    if not check_stack():
        pytest.skip("transformers before 5.25 loads the model in the API process")
    loader_class = eagle_hub.serving.adaptation.EagleModelLoader
    assert loader_class.__module__ == "eagle_hub.serving.adaptation"
    eagle_hub.serving.adaptation._settings["register"] = ("eagle_hub.modeling_eagle",)
    try:
        loader = loader_class(device="cpu", dtype="float32")
    finally:
        eagle_hub.serving.adaptation._settings["register"] = ()
    copy = pickle.loads(pickle.dumps(loader))
    assert type(copy) is loader_class and copy.register == ("eagle_hub.modeling_eagle",)
    assert copy.dtype == torch.float32 and copy.device == "cpu"


def test_only_our_checks_are_a_clients_fault():
    from transformers.cli.serving import utils

    def raised(function, *args):
        try:
            function(*args)
        except Exception as error:  # noqa: BLE001
            return error
        raise AssertionError("nothing raised")

    processor_error = raised(
        eagle_hub.modeling_eagle.image_processing_eagle.EagleImageProcessor().load_image, "no/such.png"
    )
    assert isinstance(processor_error, ValueError) and is_input_check(processor_error)
    assert is_input_check(raised(eagle_hub.serving.adaptation.check_messages, []))
    # transformers' parser, given what check_messages would refuse: a KeyError, and no client's fault
    parser_error = raised(utils.BaseHandler.get_processor_inputs_from_messages, [{"content": "x"}], None)
    assert not is_input_check(parser_error)
    assert not is_input_check(raised(int, "not a number"))  # a ValueError raised outside Eagle's checks


def test_check_stack_names_what_changed(monkeypatch):
    from transformers.cli.serving.utils import BaseHandler

    monkeypatch.delattr(BaseHandler, "get_processor_inputs_from_messages")
    with pytest.raises(RuntimeError, match=r"BaseHandler.get_processor_inputs_from_messages\(messages, modality\)"):
        check_stack()


def test_generate_takes_the_processor_as_tokenizer(model, processor):
    # transformers serve passes the processor as `tokenizer`; stop strings need the tokenizer's vocabulary
    prompt = processor.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    inputs = processor(text=[prompt], return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=3, do_sample=False, stop_strings=["zz"], tokenizer=processor)
    assert output.shape[1] == inputs["input_ids"].shape[1] + 3


@pytest.mark.slow
def test_measure_serving_reports_the_bench_row(saved_folder):
    row = measure_serving(folder=saved_folder, requests=2, clients=2, max_tokens=4, repeats=1, warmup=0)
    assert row["answers_equal"] is True
    for key in ("server_over_direct", "server_over_direct_ttft", "clients_over_one", "server_requests_per_s"):
        assert row[key] > 0


def test_cli_refuses_a_missing_folder_or_a_busy_port(capsys, saved_folder):
    assert main(["serve", "no/such/folder/here"]) == 2
    assert "no such folder" in capsys.readouterr().err
    with tempfile.TemporaryDirectory() as empty:
        assert main(["serve", empty]) == 2
        assert "no config.json" in capsys.readouterr().err
    with socket.create_server(("127.0.0.1", 0)) as busy:
        assert main(["serve", str(saved_folder), "--port", str(busy.getsockname()[1])]) == 2
        assert "cannot listen there" in capsys.readouterr().err
