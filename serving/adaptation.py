"""What transformers' own OpenAI-compatible server (``transformers serve``, 5.20 .. 5.25) lacks to serve Eagle.

``eagle serve`` runs transformers' server unchanged (its FastAPI app, request parsing, chat templating, streaming and
generation) after ``install()``. There is no hook for custom models in that stack (no registry, no model-class
argument, no app-factory parameter), so ``install()`` replaces a few of its attributes, each by a wrapper around the
original or, for the loader, a subclass. This is the only module that touches transformers' serving internals, and it
imports nothing from this package: a process that has only transformers and the folder's remote code can use it too.

Two generations of that server are adapted (``check_stack()`` tells which one is installed):

in-process (5.20 .. 5.24)  the API process loads the model (``ModelManager._load_model``) and generates on a thread.
engine (5.25 ..)           the API process parses, templates and tokenizes; a *spawned* engine process loads the model
                           with a pickled ``ModelLoader`` and generates. An attribute patched in the API process is
                           not patched in the engine, so what the engine needs travels inside the loader: its class
                           is ours (``EagleModelLoader``, pickled by reference, so the engine imports this module).

What it works around (transformers/cli/serving/):

loading    ``_load_model`` loads ``getattr(transformers, config.architectures[0])``, so a class outside transformers'
           namespace (this package's, or a folder's remote code) fails even with --trust-remote-code.
           -> ``transformers.EagleForConditionalGeneration`` becomes a stand-in that loads through
           ``AutoModelForImageTextToText`` (remote code with --trust-remote-code, else the class this package
           registers). Engine: ``model_manager.ModelLoader`` is ``EagleModelLoader``, whose
           ``load_model_and_processor`` (the engine's first call) imports the modules given to
           ``install(register=...)`` (they register Eagle with the Auto classes) and provides the stand-in in the
           engine process, then loads as transformers does.
modality   ``get_model_modality`` looks the model's class *name* up in transformers' mapping tables and raises
           "Unknown modality" otherwise. -> ``eagle`` is added to MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES (read in
           the API process, in both generations).
images     ``BaseHandler.get_processor_inputs_from_messages`` passes image URLs to ``image_utils.load_image``, which
           fetches http(s) URLs on the event loop without a timeout, opens any file on the server and flattens every
           image with ``.convert("RGB")``. -> data URLs are opened here (header only) and the processor's
           ``EagleImageProcessor.load_image`` checks the pixel cap and decodes them, as in every other command;
           http(s) URLs are refused; files only under the folder given to ``install(image_dir=...)``.
errors     every exception becomes a plain-text 500 (which the openai client retries twice), malformed JSON FastAPI's
           422, and 5.25 answers 400 for any ValueError, wherever raised. -> OpenAI error bodies, and 400 only for
           checks of ours: a ``RequestError`` raised here, or a ValueError raised by Eagle's processor code (the
           image and prompt checks); anything else, a ValueError from inside transformers included, is the
           server's fault: 500 without a traceback, which is logged with the request id.
requests   transformers' parser indexes messages without checking them (a KeyError, 500) and silently drops parts of
           types it does not know; another model's name is a 400 in FastAPI's format. -> ``_validate_request`` also
           checks the messages' shape and part types (400) and the model name (404 model_not_found).
context    a prompt that leaves no room for an answer: 5.25's ``_check_prompt_length`` raises a ValueError, 5.20
           has no check. -> a 400 ``context_length_exceeded`` in both.
sampling   the folder's generation_config is greedy (do_sample=false), so temperature and top_p did nothing; 5.20 ..
           5.24 seed torch when the request arrives, on the event loop, not when its generation runs on the
           generation thread (a queued request lost its seed). -> temperature > 0 or top_p < 1 turn sampling on;
           temperature, top_p, max_tokens, stop and generation_config are checked (400) rather than failing inside
           ``generate``; in-process, the seed is applied in the model's ``generate`` (the engine does it itself).
stop       generation gets the processor as ``tokenizer=``, and stop strings need a tokenizer's vocabulary.
           -> fixed in the model: ``EagleForConditionalGeneration.generate`` unwraps it (remote code has it too).
5.20 only  ``/v1/models`` scans the Hub cache (a 500 without one; a local folder is never listed);
           ``max_completion_tokens`` is ignored; an echoed assistant message with ``"tool_calls": null`` crashes.

``check_stack()`` verifies that every attribute relied on is still there, with the signature used, and raises
otherwise: ``install()`` calls it, so a transformers release that moves them stops ``eagle serve`` at startup with
the list instead of serving without the fixes (tests/test_serve.py runs it too).
"""

from __future__ import annotations

import base64
import binascii
import functools
import importlib
import inspect
import io
import json
import logging
from pathlib import Path
from urllib.parse import unquote, urlparse

ARCHITECTURE, MODEL_TYPE = "EagleForConditionalGeneration", "eagle"
SEED = "_eagle_serve_seed"  # in-process: the request's seed, carried on its GenerationConfig to the generation thread
# The modules whose ValueErrors are checks of a request's input (a data URL decoded, a prompt's placeholders): as
# this package's modules or as a folder's remote code (transformers_modules.<folder>.processing_eagle).
INPUT_CHECKS = ("image_processing_eagle", "processing_eagle")
logger = logging.getLogger("uvicorn.error")  # the server's log
_settings = {"installed": False, "image_dir": None, "register": ()}


class RequestError(ValueError):
    """A refused request: an OpenAI error body with this status (400 unless given)."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


def install(image_dir=None, register=()) -> None:
    """Make transformers' serving stack load and serve Eagle folders (idempotent; process-wide). ``image_dir``: let
    ``image_url`` name image files under this folder (a path, or a file:// URL); by default only data URLs.
    ``register``: names of modules to import wherever the model loads (e.g. ``"eagle_hub.modeling_eagle"``, which
    registers Eagle with the Auto classes); without them, serve with ``trust_remote_code``."""
    engine = check_stack()
    _settings["image_dir"] = None if image_dir is None else Path(image_dir).resolve()
    _settings["register"] = tuple(register)
    for module in _settings["register"]:
        importlib.import_module(module)
    if _settings["installed"]:
        return
    from transformers.cli.serving import chat_completion, model_manager, server, utils
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.setdefault(MODEL_TYPE, ARCHITECTURE)
    server.build_server = _with_openai_errors(server.build_server)  # Serve imports it when it runs
    handler = utils.BaseHandler
    handler._validate_request = _validating(handler._validate_request)
    handler.get_processor_inputs_from_messages = staticmethod(
        _opening_images(handler.get_processor_inputs_from_messages)
    )
    chat = chat_completion.ChatCompletionHandler
    if engine:
        model_manager.ModelLoader = _engine_loader_class()  # Serve builds its loader from this name
        engine_client = model_manager.EngineClient
        engine_client._send_request = _sending_arrays(engine_client._send_request)
        chat._build_generation_kwargs = _sampling_kwargs(chat._build_generation_kwargs)
        handler._check_prompt_length = _context_checked(handler._check_prompt_length)
    else:
        _provide_stand_in()
        chat._build_generation_config = _sampling(chat._build_generation_config)
        if not hasattr(model_manager.ModelManager, "list_models"):  # 5.20
            model_manager.ModelManager.get_gen_models = _listing_served_model(
                model_manager.ModelManager.get_gen_models
            )
    _settings["installed"] = True


def check_stack() -> bool:
    """Raise RuntimeError naming each attribute of transformers' serving stack this module relies on that is missing
    or has changed shape. Returns whether the stack generates in an engine process (5.25 ..) rather than in the API
    process (5.20 .. 5.24)."""
    import transformers
    from transformers.utils import is_serve_available

    if not is_serve_available():
        raise ImportError("serving needs transformers' serving extra: pip install 'eagle-hub[serve]'")
    from transformers.cli.serve import Serve
    from transformers.cli.serving import chat_completion, model_manager, server, utils
    from transformers.models.auto import modeling_auto

    def takes(function, *names: str) -> bool:
        return callable(function) and list(inspect.signature(function).parameters)[: len(names)] == list(names)

    handler, chat = utils.BaseHandler, chat_completion.ChatCompletionHandler
    convert = vars(handler).get("get_processor_inputs_from_messages")
    expected = {
        "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES, a dict": isinstance(
            getattr(modeling_auto, "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES", None), dict
        ),
        "server.build_server(model_manager, chat_handler, ...)": takes(
            getattr(server, "build_server", None), "model_manager", "chat_handler"
        ),
        "BaseHandler._validate_request(self, body)": takes(
            getattr(handler, "_validate_request", None), "self", "body"
        ),
        "BaseHandler.get_processor_inputs_from_messages(messages, modality), a staticmethod": isinstance(
            convert, staticmethod
        )
        and takes(convert.__func__, "messages", "modality"),
        "Serve(force_model, ..., host, port, dtype, device, trust_remote_code)": takes(
            Serve.__init__, "self", "force_model"
        )
        and {"host", "port", "dtype", "device", "trust_remote_code"}
        <= set(inspect.signature(Serve.__init__).parameters),
    }
    loader = getattr(model_manager, "ModelLoader", None)
    engine = loader is not None and hasattr(model_manager, "EngineClient")
    if engine:
        expected |= {
            "ModelLoader._load_model(self, model_id, ...)": takes(
                getattr(loader, "_load_model", None), "self", "model_id"
            ),
            "ModelLoader.get_model_modality(config, processor), a staticmethod": isinstance(
                vars(loader).get("get_model_modality"), staticmethod
            ),
            "EngineClient.start_process, spawning the engine with the loader": callable(
                getattr(model_manager.EngineClient, "start_process", None)
            ),
            "EngineClient._send_request(self, method, args, streamer)": takes(
                getattr(model_manager.EngineClient, "_send_request", None), "self", "method", "args", "streamer"
            ),
            "ChatCompletionHandler._build_generation_kwargs(self, body, model_generation_config)": takes(
                getattr(chat, "_build_generation_kwargs", None), "self", "body", "model_generation_config"
            ),
            "BaseHandler._check_prompt_length(self, engine, inputs)": takes(
                getattr(handler, "_check_prompt_length", None), "self", "engine", "inputs"
            ),
        }
    else:
        manager = model_manager.ModelManager
        expected |= {
            "ModelManager._load_model": callable(getattr(manager, "_load_model", None)),
            "ModelManager.get_model_modality": callable(getattr(manager, "get_model_modality", None)),
            "ModelManager.list_models, or get_gen_models (5.20)": hasattr(manager, "list_models")
            or hasattr(manager, "get_gen_models"),
            "ChatCompletionHandler._build_generation_config(self, body, model_generation_config, use_cb)": takes(
                getattr(chat, "_build_generation_config", None), "self", "body", "model_generation_config", "use_cb"
            ),
        }
    changed = [what for what, present in expected.items() if not present]
    if changed:
        raise RuntimeError(
            f"transformers {transformers.__version__} changed the serving code that eagle_hub/serving/adaptation.py "
            f"adapts: {'; '.join(changed)}. Update the adaptation (or pin transformers to a tested release)."
        )
    return engine


# ------------------------------------------------------------------------------------------------------- loading
class _LoadThroughAutoClass:
    """``transformers.EagleForConditionalGeneration`` as transformers' loader sees it."""

    @staticmethod
    def from_pretrained(name, *args, **kwargs):
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_pretrained(name, *args, **kwargs)
        generate = model.generate
        context = getattr(model.config.get_text_config(), "max_position_embeddings", None)

        @functools.wraps(generate)
        def generate_checked(*args, generation_config=None, **kwargs):
            # Engine: the prompt's tensors crossed from the API process as numpy arrays (see _sending_arrays).
            kwargs = {key: _as_tensors(value, model.device) for key, value in kwargs.items()}
            # In-process (the engine seeds and checks before it calls generate): runs on the generation thread,
            # right before this request's generation (see _sampling).
            input_ids = kwargs.get("input_ids")
            if context is not None and input_ids is not None and input_ids.shape[-1] >= context:
                raise RequestError(
                    f"The prompt has {input_ids.shape[-1]} tokens, but the model takes at most {context}, prompt and "
                    "answer",
                    param="messages",
                    code="context_length_exceeded",
                )
            seed = getattr(generation_config, SEED, None)
            if seed is not None:
                import torch

                torch.manual_seed(seed)
            return generate(*args, generation_config=generation_config, **kwargs)

        model.generate = generate_checked
        return model


def _provide_stand_in() -> None:
    """Set the stand-in on ``transformers`` as the loader reads it. Importing parts of transformers can put a fresh
    module object in sys.modules, while a module imported before (the loader's) keeps the one it bound: both get it."""
    import transformers
    from transformers.cli.serving import model_manager

    for module in (transformers, model_manager.transformers):
        if ARCHITECTURE not in vars(module):  # a lazy module: an attribute set on it wins over its __getattr__
            setattr(module, ARCHITECTURE, _LoadThroughAutoClass)


def __getattr__(name):
    # PEP 562: the loader class exists only where transformers' engine-process server does, and pickle finds it here
    # by name when the engine process unpickles its loader.
    if name == "EagleModelLoader":
        return _engine_loader_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _engine_loader_class():
    from transformers.cli.serving.model_manager import ModelLoader

    class EagleModelLoader(ModelLoader):
        """transformers' ModelLoader, loading Eagle too; pickled into the engine process with ``register``."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.register = _settings["register"]  # an instance attribute: pickled with the loader

        def load_model_and_processor(self, model_id, *args, **kwargs):
            # What the engine process runs first: its processor and model load the same way as the API process's.
            for module in self.register:
                importlib.import_module(module)
            _provide_stand_in()
            return super().load_model_and_processor(model_id, *args, **kwargs)

    EagleModelLoader.__module__, EagleModelLoader.__qualname__ = __name__, "EagleModelLoader"
    return EagleModelLoader


def _sending_arrays(send):
    """torch pickles a tensor put on a multiprocessing queue into shared memory: a file made, its descriptor passed
    over a socket and fetched back by the engine, for each of a request's tensors (profiled, and measured side by
    side: 52 against 43 ms a one-token request of eagle-x5-small; docs/serving.md).
    The prompt's tensors (token ids, one pixel tensor per expert: a few MB at most) cross as numpy arrays instead,
    copied with the message; the model's ``generate`` in the engine turns them back (``_LoadThroughAutoClass``)."""

    @functools.wraps(send)
    async def _send_request(self, method, args, streamer=None):
        if method == "generate":
            inputs, *rest = args
            args = ({key: _as_arrays(value) for key, value in inputs.items()}, *rest)
        return await send(self, method, args, streamer)

    return _send_request


def _as_arrays(value):
    import torch

    if isinstance(value, (list, tuple)):
        return type(value)(_as_arrays(item) for item in value)
    if isinstance(value, torch.Tensor) and value.device.type == "cpu" and value.dtype != torch.bfloat16:
        return value.numpy()
    return value


def _as_tensors(value, device):
    import numpy as np
    import torch

    if isinstance(value, (list, tuple)):
        return type(value)(_as_tensors(item, device) for item in value)
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value).to(device)
    return value


# ------------------------------------------------------------------------------------------------------ requests
TEXT_PARTS, IMAGE_PARTS = ("text", "input_text", "output_text"), ("image_url", "input_image")


def _validating(validate):
    from transformers.cli.serving.chat_completion import ChatCompletionHandler

    @functools.wraps(validate)
    def _validate_request(self, body):
        validate(self, body)
        if isinstance(self, ChatCompletionHandler):
            check_messages(body.get("messages"))
        served, requested = self.model_manager.force_model, body.get("model")
        if served is not None and requested is not None and requested != served:
            raise RequestError(
                f"The model `{requested}` does not exist; this server serves `{served}`",
                status=404,
                param="model",
                code="model_not_found",
            )

    return _validate_request


def check_messages(messages) -> None:
    """Refuse (400) chat messages transformers' parser would crash on or silently drop parts of."""
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise RequestError("`messages` must be a non-empty list of message objects", param="messages")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message.get("role"), str):
            raise RequestError(f"{where}.role must be a string", param="messages")
        content = message.get("content")
        if content is None or isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise RequestError(f"{where}.content must be a string or a list of content parts", param="messages")
        for j, part in enumerate(content):
            part_where = f"{where}.content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if not isinstance(kind, str):
                raise RequestError(f"{part_where} must be an object with a string `type`", param="messages")
            if kind in TEXT_PARTS:
                if not isinstance(part.get("text"), str):
                    raise RequestError(f"{part_where}.text must be a string", param="messages")
            elif kind in IMAGE_PARTS:
                url = part.get("image_url")
                if not isinstance(url, str) and not (isinstance(url, dict) and isinstance(url.get("url"), str)):
                    raise RequestError(
                        f"{part_where}.image_url must be {{'url': '<data URL>'}} (or the URL string)", param="messages"
                    )
            elif kind in ("video_url", "input_audio", "audio_url"):
                raise RequestError(f"{part_where}: this model takes no {kind.split('_')[-1]} input", param="messages")
            else:
                raise RequestError(
                    f"{part_where} has type {kind!r}; this server takes {', '.join(TEXT_PARTS + IMAGE_PARTS)}",
                    param="messages",
                )
        tool_calls = message.get("tool_calls")
        if tool_calls is not None and not (
            isinstance(tool_calls, list)
            and all(isinstance(call, dict) and isinstance(call.get("function", call), dict) for call in tool_calls)
            and all("arguments" in call.get("function", call) for call in tool_calls)
        ):
            raise RequestError(f"{where}.tool_calls must be a list of function calls with arguments", param="messages")


def _opening_images(convert):
    @functools.wraps(convert)
    def get_processor_inputs_from_messages(messages, modality):
        # 5.20 tests `"tool_calls" in message`: a null field (an echoed assistant message) crashed it.
        messages = [{key: value for key, value in message.items() if value is not None} for message in messages]
        parsed = convert(messages, modality)  # after check_messages: whatever it raises is a server fault
        index = 0
        for message in parsed:
            for part in message["content"] if isinstance(message["content"], list) else []:
                if part["type"] == "image":
                    part["image"] = open_image_url(part.pop("url"), f"image {index}")
                    index += 1
        return parsed

    return get_processor_inputs_from_messages


def open_image_url(url, where: str):
    """The image an ``image_url`` names, opened but not decoded: the processor's ``load_image`` checks its size
    against the pixel cap, then decodes it."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(url, str) or not url:
        raise RequestError(f"{where}: image_url.url must be a non-empty string", param="messages")
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        if not header.endswith(";base64"):
            raise RequestError(f"{where}: a data URL must be data:image/<type>;base64,<data>", param="messages")
        try:
            source = io.BytesIO(base64.b64decode(payload, validate=True))
        except (binascii.Error, ValueError) as error:
            raise RequestError(f"{where}: the data URL is not valid base64 ({error})", param="messages") from None
    elif url.startswith(("http://", "https://")):
        raise RequestError(
            f"{where}: this server does not fetch image URLs ({url[:100]}); send the image inline as a data URL "
            "(data:image/png;base64,...)",
            param="messages",
        )
    else:
        source = _image_file(url, where)
    try:
        return Image.open(source)
    except Image.DecompressionBombError as error:
        raise RequestError(f"{where} is refused as a decompression bomb ({error})", param="messages") from None
    except (UnidentifiedImageError, OSError) as error:
        raise RequestError(
            f"{where} is not an image this server can read: an unknown format, an unsupported pixel mode, or not an "
            f"image at all ({type(error).__name__})",
            param="messages",
        ) from None


def _image_file(url: str, where: str) -> Path:
    root = _settings["image_dir"]
    if root is None:
        raise RequestError(
            f"{where}: this server reads no image files ({url[:100]}); send the image inline as a data URL "
            "(data:image/png;base64,...), or start the server with --image-dir to allow files under a folder",
            param="messages",
        )
    path = (root / (unquote(urlparse(url).path) if url.startswith("file:") else url)).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise RequestError(f"{where}: {url[:100]} is not a file under the image folder {root}", param="messages")
    return path


# ------------------------------------------------------------------------------------------------------ sampling
def _check_sampling(body) -> bool:
    """Refuse (400) sampling settings ``generate`` would fail on; returns whether the request asks to sample."""
    temperature, top_p = body.get("temperature"), body.get("top_p")
    try:
        if temperature is not None and not 0 <= float(temperature) <= 2:
            raise RequestError(f"temperature must be between 0 and 2, got {temperature}", param="temperature")
        if top_p is not None and not 0 < float(top_p) <= 1:
            raise RequestError(f"top_p must be in (0, 1], got {top_p}", param="top_p")
        for key in ("max_tokens", "max_completion_tokens"):
            if body.get(key) is not None and int(body[key]) < 1:
                raise RequestError(f"{key} must be at least 1, got {body[key]}", param=key)
        if body.get("seed") is not None:
            int(body["seed"])
    except (TypeError, ValueError) as error:
        if isinstance(error, RequestError):
            raise
        raise RequestError(f"a sampling parameter is not a number ({error})") from None
    stops = [body["stop"]] if isinstance(body.get("stop"), str) else body.get("stop") or []
    if not isinstance(stops, list) or not all(isinstance(stop, str) for stop in stops):
        raise RequestError("stop must be a string or a list of strings", param="stop")
    if body.get("generation_config") is not None:
        try:
            if not isinstance(json.loads(body["generation_config"]), dict):
                raise ValueError("not an object")
        except (TypeError, ValueError) as error:
            raise RequestError(
                f"generation_config must be a JSON object in a string ({error})", param="generation_config"
            ) from None
    sampled = (temperature is not None and float(temperature) > 0) or (top_p is not None and float(top_p) < 1)
    return sampled and body.get("generation_config") is None


def _sampling(build):
    """In-process (5.20 .. 5.24): ``_build_generation_config``."""

    @functools.wraps(build)
    def _build_generation_config(self, body, model_generation_config, use_cb=False):
        sampled = _check_sampling(body)
        # Without the seed: transformers would seed torch now, on the event loop, instead of before generating.
        config = build(self, {k: v for k, v in body.items() if k != "seed"}, model_generation_config, use_cb=use_cb)
        if sampled:
            config.do_sample = True
        if body.get("seed") is not None:
            setattr(config, SEED, int(body["seed"]))
        if body.get("max_completion_tokens") is not None:  # 5.20 ignores it
            config.max_new_tokens = int(body["max_completion_tokens"])
        return config

    return _build_generation_config


def _sampling_kwargs(build):
    """Engine (5.25 ..): ``_build_generation_kwargs``, whose seed the engine applies itself."""

    @functools.wraps(build)
    def _build_generation_kwargs(self, body, model_generation_config, *args, **kwargs):
        sampled = _check_sampling(body)
        generation_kwargs = build(self, body, model_generation_config, *args, **kwargs)
        if sampled:
            generation_kwargs["do_sample"] = True
        return generation_kwargs

    return _build_generation_kwargs


def _context_checked(check):
    @functools.wraps(check)
    def _check_prompt_length(self, engine, inputs):
        try:
            check(self, engine, inputs)
        except ValueError as error:  # transformers' own check: a client's fault, said as OpenAI says it
            raise RequestError(str(error), param="messages", code="context_length_exceeded") from None

    return _check_prompt_length


# -------------------------------------------------------------------------------------------------------- errors
def is_input_check(error: BaseException) -> bool:
    """Whether ``error`` is one of our checks refusing a request: a RequestError, or a ValueError raised by Eagle's
    processor code (the frame that raised it, the traceback's last, is in one of INPUT_CHECKS)."""
    if isinstance(error, RequestError):
        return True
    if not isinstance(error, ValueError) or error.__traceback__ is None:
        return False
    last = error.__traceback__
    while last.tb_next is not None:
        last = last.tb_next
    return last.tb_frame.f_globals.get("__name__", "").rsplit(".", 1)[-1] in INPUT_CHECKS


def _with_openai_errors(build_server):
    @functools.wraps(build_server)
    def build(*args, **kwargs):
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import JSONResponse
        from starlette.exceptions import HTTPException

        app = build_server(*args, **kwargs)

        def name(request) -> str:  # transformers' middleware sets the id (from the X-Request-ID header, or a uuid)
            request_id = getattr(request.state, "request_id", None) or request.headers.get("x-request-id")
            return f"request {request_id} ({request.method} {request.url.path})"

        def reply(request, status: int, message: str, param=None, code=None):
            message = message if len(message) <= 500 else message[:500] + "..."  # data URLs can be echoed in errors
            logger.warning(f"{name(request)}: {status} {message}")
            kind = "invalid_request_error" if status < 500 else "server_error"
            body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
            return JSONResponse(body, status_code=status)

        def server_fault(request, error):
            logger.error(f"{name(request)} failed", exc_info=error)
            return reply(request, 500, "internal server error; the server's log has the details")

        @app.exception_handler(ValueError)  # replaces 5.25's, which answers 400 for any ValueError
        async def value_error(request, error):
            if not is_input_check(error):
                return server_fault(request, error)
            status = getattr(error, "status", 400)
            return reply(request, status, str(error), getattr(error, "param", None), getattr(error, "code", None))

        @app.exception_handler(HTTPException)
        async def http_error(request, error):
            return reply(request, error.status_code, str(error.detail))

        @app.exception_handler(RequestValidationError)
        async def not_a_json_object(request, error):
            return reply(request, 400, "the request body must be a JSON object (OpenAI chat-completions format)")

        @app.middleware("http")  # outermost: anything else is a 500 in the same format, the traceback only logged
        async def other_errors(request, call_next):
            try:
                return await call_next(request)
            except Exception as error:
                return server_fault(request, error)

        return app

    return build


# ----------------------------------------------------------------------------------------------------- 5.20 only
def _listing_served_model(scan_cache):
    def get_gen_models(self, cache_dir=None):
        from huggingface_hub import CacheNotFound

        try:
            models = list(scan_cache(cache_dir))
        except CacheNotFound:
            models = []
        served = (
            [self.force_model] if self.force_model else [name.removesuffix("@main") for name in self.loaded_models]
        )
        listed = {model["id"] for model in models}
        extra = [{"id": name, "object": "model", "created": 0, "owned_by": "local"} for name in served]
        return models + [model for model in extra if model["id"] not in listed]

    return get_gen_models
