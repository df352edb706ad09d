"""What transformers' own OpenAI-compatible server (``transformers serve``, 5.20 .. 5.24) lacks to serve Eagle.

``eagle serve`` runs transformers' server unchanged (its FastAPI app, request parsing, chat templating, streaming and
generation thread) after ``install()``. There is no hook for custom models in that stack (no registry, no model-class
argument, no app-factory parameter), so ``install()`` replaces a few of its attributes, each by a wrapper around the
original. This is the only module that touches transformers' serving internals, and it imports nothing from this
package: a process that has only transformers and the folder's remote code can use it too.

What it works around (transformers/cli/serving/, paths as in 5.24):

loading    ``ModelManager._load_model`` loads ``getattr(transformers, config.architectures[0])``, so a class outside
           transformers' namespace (this package's, or a folder's remote code) fails even with --trust-remote-code.
           -> ``transformers.EagleForConditionalGeneration`` becomes a stand-in that loads through
           ``AutoModelForImageTextToText`` (remote code with --trust-remote-code, else the class this package
           registers).
modality   ``ModelManager.get_model_modality`` looks the model's class *name* up in transformers' mapping tables and
           raises "Unknown modality" otherwise. -> ``eagle`` is added to MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.
images     ``BaseHandler.get_processor_inputs_from_messages`` passes image URLs to ``image_utils.load_image``, which
           fetches http(s) URLs on the event loop without a timeout, opens any file on the server and flattens every
           image with ``.convert("RGB")``. -> data URLs are opened here (header only) and the processor's
           ``EagleImageProcessor.load_image`` checks the pixel cap and decodes them, as in every other command;
           http(s) URLs are refused; files only under the folder given to ``install(image_dir=...)``.
errors     every exception becomes a plain-text 500 (which the openai client retries twice) and malformed JSON
           FastAPI's 422. -> OpenAI error bodies: bad input (a ValueError from the checks here, the processor or the
           generation config) 400, anything else 500 without a traceback; each logged with its request id.
requests   a missing ``messages`` is a KeyError (500); another model's name a 400 in FastAPI's format.
           -> ``BaseHandler._validate_request`` also checks those (400, and 404 model_not_found).
sampling   ``ChatCompletionHandler._build_generation_config`` starts from the folder's generation_config
           (do_sample=false), so temperature and top_p did nothing; and it seeds torch when the request arrives, on
           the event loop, not when its generation runs on the generation thread (a queued request lost its seed).
           -> temperature > 0 or top_p < 1 turn sampling on; the seed is applied in the model's ``generate``;
           temperature, top_p, max_tokens and stop are checked (400) rather than failing inside ``generate``.
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
import inspect
import io
import logging
from pathlib import Path
from urllib.parse import unquote, urlparse

ARCHITECTURE, MODEL_TYPE = "EagleForConditionalGeneration", "eagle"
SEED = "_eagle_serve_seed"  # the request's seed, carried on its GenerationConfig to the generation thread
logger = logging.getLogger("uvicorn.error")  # the server's log
_settings = {"installed": False, "image_dir": None}


class RequestError(ValueError):
    """A refused request: an OpenAI error body with this status (400 unless given)."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


def install(image_dir=None) -> None:
    """Make transformers' serving stack load and serve Eagle folders (idempotent; process-wide). ``image_dir``: let
    ``image_url`` name image files under this folder (a path, or a file:// URL); by default only data URLs."""
    check_stack()
    _settings["image_dir"] = None if image_dir is None else Path(image_dir).resolve()
    if _settings["installed"]:
        return
    import transformers
    from transformers.cli.serving import chat_completion, model_manager, server, utils
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.setdefault(MODEL_TYPE, ARCHITECTURE)
    if ARCHITECTURE not in vars(transformers):  # a lazy module: an attribute set on it wins over its __getattr__
        setattr(transformers, ARCHITECTURE, _LoadThroughAutoClass)
    server.build_server = _with_openai_errors(server.build_server)  # Serve imports it when it runs
    handler = utils.BaseHandler
    handler._validate_request = _validating(handler._validate_request)
    handler.get_processor_inputs_from_messages = staticmethod(
        _opening_images(handler.get_processor_inputs_from_messages)
    )
    chat = chat_completion.ChatCompletionHandler
    chat._build_generation_config = _sampling(chat._build_generation_config)
    if not hasattr(model_manager.ModelManager, "list_models"):  # 5.20
        model_manager.ModelManager.get_gen_models = _listing_served_model(model_manager.ModelManager.get_gen_models)
    _settings["installed"] = True


def check_stack() -> None:
    """Raise RuntimeError naming each attribute of transformers' serving stack this module relies on that is missing
    or has changed shape."""
    import transformers
    from transformers.utils import is_serve_available

    if not is_serve_available():
        raise ImportError("serving needs transformers' serving extra: pip install 'eagle-hub[serve]'")
    from transformers.cli.serve import Serve
    from transformers.cli.serving import chat_completion, model_manager, server, utils
    from transformers.models.auto import modeling_auto

    def takes(function, *names: str) -> bool:
        return callable(function) and list(inspect.signature(function).parameters)[: len(names)] == list(names)

    manager, handler = model_manager.ModelManager, utils.BaseHandler
    chat = chat_completion.ChatCompletionHandler
    convert = vars(handler).get("get_processor_inputs_from_messages")
    expected = {
        "ModelManager._load_model": callable(getattr(manager, "_load_model", None)),
        "ModelManager.get_model_modality": callable(getattr(manager, "get_model_modality", None)),
        "ModelManager.list_models, or get_gen_models (5.20)": hasattr(manager, "list_models")
        or hasattr(manager, "get_gen_models"),
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
        "ChatCompletionHandler._build_generation_config(self, body, model_generation_config, use_cb)": takes(
            getattr(chat, "_build_generation_config", None), "self", "body", "model_generation_config", "use_cb"
        ),
        "Serve(force_model, host, port, dtype, device, ...)": takes(Serve.__init__, "self", "force_model")
        and {"host", "port", "dtype", "device"} <= set(inspect.signature(Serve.__init__).parameters),
    }
    changed = [what for what, present in expected.items() if not present]
    if changed:
        raise RuntimeError(
            f"transformers {transformers.__version__} changed the serving code that eagle_hub/serving/adaptation.py "
            f"adapts: {'; '.join(changed)}. Update the adaptation (or pin transformers to a tested release)."
        )


# ------------------------------------------------------------------------------------------------------- loading
class _LoadThroughAutoClass:
    """``transformers.EagleForConditionalGeneration`` as the model manager sees it."""

    @staticmethod
    def from_pretrained(name, *args, **kwargs):
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_pretrained(name, *args, **kwargs)
        generate = model.generate

        @functools.wraps(generate)
        def generate_with_seed(*args, generation_config=None, **kwargs):
            # Runs on the generation thread, right before this request's generation (see _sampling).
            seed = getattr(generation_config, SEED, None)
            if seed is not None:
                import torch

                torch.manual_seed(seed)
            return generate(*args, generation_config=generation_config, **kwargs)

        model.generate = generate_with_seed
        return model


# ------------------------------------------------------------------------------------------------------ requests
def _validating(validate):
    from transformers.cli.serving.chat_completion import ChatCompletionHandler

    @functools.wraps(validate)
    def _validate_request(self, body):
        validate(self, body)
        if isinstance(self, ChatCompletionHandler):
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
                raise RequestError("`messages` must be a non-empty list of message objects", param="messages")
        served, requested = self.model_manager.force_model, body.get("model")
        if served is not None and requested is not None and requested != served:
            raise RequestError(
                f"The model `{requested}` does not exist; this server serves `{served}`",
                status=404,
                param="model",
                code="model_not_found",
            )

    return _validate_request


def _opening_images(convert):
    @functools.wraps(convert)
    def get_processor_inputs_from_messages(messages, modality):
        # 5.20 tests `"tool_calls" in message`: a null field (an echoed assistant message) crashed it.
        messages = [{key: value for key, value in message.items() if value is not None} for message in messages]
        try:
            parsed = convert(messages, modality)
        except (KeyError, TypeError, AttributeError) as error:
            raise RequestError(
                f"malformed message content ({type(error).__name__}: {error})", param="messages"
            ) from None
        index = 0
        for message in parsed:
            for part in message["content"] if isinstance(message["content"], list) else []:
                if part["type"] == "image":
                    part["image"] = open_image_url(part.pop("url"), f"image {index}")
                    index += 1
                elif part["type"] in ("video", "audio"):
                    raise RequestError(f"this model takes no {part['type']} input", param="messages")
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
def _sampling(build):
    @functools.wraps(build)
    def _build_generation_config(self, body, model_generation_config, use_cb=False):
        temperature, top_p = body.get("temperature"), body.get("top_p")
        if temperature is not None and not 0 <= float(temperature) <= 2:
            raise RequestError(f"temperature must be between 0 and 2, got {temperature}", param="temperature")
        if top_p is not None and not 0 < float(top_p) <= 1:
            raise RequestError(f"top_p must be in (0, 1], got {top_p}", param="top_p")
        stops = [body["stop"]] if isinstance(body.get("stop"), str) else body.get("stop") or []
        if not isinstance(stops, list) or not all(isinstance(stop, str) for stop in stops):
            raise RequestError("stop must be a string or a list of strings", param="stop")
        for key in ("max_tokens", "max_completion_tokens"):
            if body.get(key) is not None and int(body[key]) < 1:
                raise RequestError(f"{key} must be at least 1, got {body[key]}", param=key)
        # Without the seed: transformers would seed torch now, on the event loop, instead of before generating.
        config = build(self, {k: v for k, v in body.items() if k != "seed"}, model_generation_config, use_cb=use_cb)
        sampled = (temperature is not None and float(temperature) > 0) or (top_p is not None and float(top_p) < 1)
        if sampled and body.get("generation_config") is None:
            config.do_sample = True
        if body.get("seed") is not None:
            setattr(config, SEED, int(body["seed"]))
        if body.get("max_completion_tokens") is not None:  # 5.20 ignores it
            config.max_new_tokens = int(body["max_completion_tokens"])
        return config

    return _build_generation_config


# -------------------------------------------------------------------------------------------------------- errors
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

        @app.exception_handler(ValueError)  # the request's fault, as in vLLM: bad images, prompts, parameters
        async def bad_input(request, error):
            status = getattr(error, "status", 400)
            return reply(request, status, str(error), getattr(error, "param", None), getattr(error, "code", None))

        @app.exception_handler(HTTPException)
        async def http_error(request, error):
            return reply(request, error.status_code, str(error.detail))

        @app.exception_handler(RequestValidationError)
        async def not_a_json_object(request, error):
            return reply(request, 400, "the request body must be a JSON object (OpenAI chat-completions format)")

        @app.middleware("http")  # outermost: anything else is a 500 in the same format, the traceback only logged
        async def server_error(request, call_next):
            try:
                return await call_next(request)
            except Exception:
                logger.exception(f"{name(request)} failed")
                return reply(request, 500, "internal server error; the server's log has the details")

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
