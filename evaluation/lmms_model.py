"""lmms-eval's ``eagle`` model: any Eagle folder (converted, trained, quickstart) or Hub id, loaded through
``AutoModelForImageTextToText`` with ``trust_remote_code``, on CPU or GPU.

    lmms-eval --model eagle --model_args pretrained=eagle-quickstart/model --tasks pope --device cpu --batch_size 8

Model arguments (``--model_args k=v,...``; ``device`` and ``batch_size`` are lmms-eval's own options):

    pretrained          the folder or Hub id (required)
    revision            a Hub revision
    dtype               auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16 or float16
    trust_remote_code   default True (the folder's own model code)
    max_new_tokens      for tasks that set none (default: the folder's generation_config, else 256)
    system_prompt       a system turn to use instead of the template's default (text, or a file holding it)

Prompts go through the folder's own chat template: one ``{"type": "image"}`` block per visual, then the task's text
(a text that already holds one ``<image>`` per visual keeps them where they are). Generation is batched and greedy
unless the task asks for sampling (``temperature > 0``), and stops at the template's end-of-turn (vicuna ``</s>``,
llama3 ``<|eot_id|>``, chatml ``<|im_end|>``), at the task's ``until`` strings, or at the task's ``max_new_tokens``.

Two classes, both registered as ``eagle`` (:mod:`.lmms_plugin`): :class:`EagleLmms` (lmms-eval's "simple"
requests: context text plus ``doc_to_visual``; every output type, ``loglikelihood`` included) and
:class:`EagleLmmsChat` ("chat" requests: messages whose image parts hold the PIL image under ``url``; the
generation output types only, as lmms-eval's chat tasks are).
"""

from __future__ import annotations

import gc
import json
import math
import re
from pathlib import Path

import torch
from lmms_eval.api.instance import GenerationResult, TokenCounts
from lmms_eval.api.model import lmms
from PIL import Image
from tqdm import tqdm

IMAGE_TOKEN = "<image>"
DEFAULT_MAX_NEW_TOKENS = 256
MAX_ROUNDS = 100  # a multi-round task that never says it is done is a bug, not an endless evaluation
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_PROBE = "EAGLEEVALPROBE"


def resolve_device(device) -> torch.device:
    """``None``/``auto``: CUDA when there is one, else the CPU (no ``device_map``: nothing asks for CUDA on a CPU)."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device}: this torch ({torch.__version__}) sees no CUDA device; use cpu")
    return device


def resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    if dtype in (None, "", "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"dtype={dtype!r}: expected auto, float32, bfloat16 or float16")
    return value


def as_batch_size(value) -> int:
    """lmms-eval's CLI passes a string ("4", "auto", "auto:8"); there is no automatic search here: "auto" is 1."""
    if isinstance(value, str) and value.strip().startswith("auto"):
        return 1
    size = int(value)
    if size < 1:
        raise ValueError(f"batch_size={value!r}: expected a positive integer")
    return size


def end_of_turn(processor) -> str | None:
    """What the chat template closes an assistant turn with (vicuna ``</s>``, llama3 ``<|eot_id|>``, chatml
    ``<|im_end|>``): the text it renders after a reply, without whitespace; None when it renders nothing."""
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": _PROBE}]},
    ]
    rendered = processor.apply_chat_template(messages, tokenize=False)
    if _PROBE not in rendered:
        return None
    return rendered.rsplit(_PROBE, 1)[1].strip() or None


def truncate_at(text: str, stops) -> str:
    """``text`` up to the first of the ``stops`` strings (lmms-eval's ``until``)."""
    for stop in stops:
        if stop:
            text = text.split(stop, 1)[0]
    return text


def _batches(items: list, group_key, length, size: int):
    """Indices of ``items`` in batches of at most ``size`` that share ``group_key`` (the generation settings), longest
    first within a group (less padding); the caller puts the answers back in request order."""
    groups: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(group_key(item), []).append(index)
    for indices in groups.values():
        indices.sort(key=lambda index: -length(items[index]))
        for start in range(0, len(indices), size):
            yield indices[start : start + size]


def _settings_key(gen_kwargs) -> str:
    return json.dumps(gen_kwargs or {}, sort_keys=True, default=str)


def load_visuals(image_processor, visuals, where: str) -> list[Image.Image]:
    """A task's visuals (PIL images or image file paths) as the RGB images the processor is given, decoded by the
    processor's own ``load_image`` as ``eagle generate`` and ``eagle serve`` decode them: EXIF orientation, the
    pixel cap, transparency over white, and a truncated file refused although lmms-eval turns Pillow's
    ``LOAD_TRUNCATED_IMAGES`` on. Errors name the task and the file."""
    images = []
    for index, visual in enumerate(visuals or []):
        if visual is None:
            continue
        label = f"{where}: image {index}"
        if isinstance(visual, (str, Path)) and str(visual).lower().endswith(IMAGE_SUFFIXES):
            images.append(image_processor.load_image(visual, where=label))
        elif isinstance(visual, Image.Image):
            images.append(image_processor.load_image(visual, where=label))
        else:
            raise ValueError(
                f"eagle takes images and text only, but {where} gave a {type(visual).__name__} "
                f"({str(visual)[:80]!r}); video and audio tasks are not supported"
            )
    return images


class EagleLmms(lmms):
    """lmms-eval's simple requests: ``(context, gen_kwargs, doc_to_visual, doc_id, task, split)``."""

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        device=None,
        batch_size=1,
        max_batch_size=None,
        dtype="auto",
        revision: str | None = None,
        trust_remote_code: bool = True,
        max_new_tokens: int | None = None,
        system_prompt: str | None = None,
        **unknown,
    ) -> None:
        super().__init__()
        if unknown:
            raise ValueError(
                f"eagle: unknown model argument(s) {', '.join(sorted(unknown))}; it takes pretrained, revision, "
                "dtype, trust_remote_code, max_new_tokens and system_prompt"
            )
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self._device = resolve_device(device)
        self.batch_size_per_gpu = as_batch_size(batch_size)
        local = Path(str(pretrained)).expanduser()
        where = str(local) if local.exists() else str(pretrained)
        try:
            self.processor = AutoProcessor.from_pretrained(
                where, revision=revision, trust_remote_code=trust_remote_code
            )
            model = AutoModelForImageTextToText.from_pretrained(
                where,
                revision=revision,
                trust_remote_code=trust_remote_code,
                dtype=resolve_dtype(dtype, self._device),
            )
        except Exception as error:  # any loading failure: name the folder and keep the cause
            cause = f"{type(error).__name__}: {error}"
            raise ValueError(f"could not load {pretrained} as an Eagle model ({cause})") from error
        if getattr(model.config, "model_type", None) != "eagle":
            raise ValueError(f"{pretrained} is a {model.config.model_type!r} model, not an Eagle model")
        self._model = model.to(self._device).eval()
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"  # batched generation continues each row from its last real token
        self.system_prompt = self._resolve_system_prompt(system_prompt) if system_prompt else None
        generation = self._model.generation_config
        self.max_new_tokens = int(max_new_tokens or generation.max_new_tokens or DEFAULT_MAX_NEW_TOKENS)

        # Stop at the template's end-of-turn: as a token id when it is one token of this tokenizer (it then also
        # disappears from the decoded text as a special token), as a stop string otherwise.
        self.end_of_turn = end_of_turn(self.processor)
        eos = generation.eos_token_id
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        if self.tokenizer.eos_token_id is not None:
            eos_ids.append(self.tokenizer.eos_token_id)
        self._end_of_turn_is_token = False
        if self.end_of_turn:
            ids = self.tokenizer.encode(self.end_of_turn, add_special_tokens=False)
            if len(ids) == 1:
                eos_ids.append(ids[0])
                self._end_of_turn_is_token = True
        self._eos_ids = list(dict.fromkeys(eos_ids))
        pad = self.tokenizer.pad_token_id
        self._pad_id = pad if pad is not None else self._eos_ids[0]
        self._prompt_ids: dict[tuple[str, int], torch.Tensor] = {}
        limit = getattr(self.tokenizer, "model_max_length", None)
        if not limit or limit >= 10**8:
            limit = getattr(self._model.config.get_text_config(), "max_position_embeddings", None)
        self.context_limit = limit
        self.dropped_images = 0  # requests that had more images than the context holds

    # ---------------------------------------------------------------------------------- what lmms-eval reads
    @property
    def model(self):
        return self._model

    @property
    def device(self):
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    def clean(self):
        # lmms-eval calls clean() at the end of every evaluate(); its default deletes every nn.Module attribute,
        # and `eagle eval` serves several evaluate() calls with one loaded model.
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -------------------------------------------------------------------------------------------- prompts
    def _doc(self, task: str, split: str, doc_id: int):
        return self.task_dict[task][split][doc_id]

    def _images(self, visuals, where: str) -> list[Image.Image]:
        return load_visuals(self.processor.image_processor, visuals, where)

    def _conversation(self, text: str, n_images: int) -> list[dict]:
        """One user turn: an image block per image, then the text; a text holding exactly one ``<image>`` per image
        keeps them in place, other ``<image>`` marks are dropped (the image blocks stand for them)."""
        if n_images and text.count(IMAGE_TOKEN) == n_images:
            content = [{"type": "text", "text": text}]
        else:
            content = [{"type": "image"} for _ in range(n_images)]
            content.append({"type": "text", "text": re.sub(re.escape(IMAGE_TOKEN) + r"\n?", "", text)})
        return self._with_system([{"role": "user", "content": content}])

    def _with_system(self, conversation: list[dict]) -> list[dict]:
        if self.system_prompt:
            conversation = self._apply_system_prompt(conversation, self.system_prompt)
        return conversation

    def _prompt(self, conversation: list[dict]) -> str:
        return self.processor.apply_chat_template(conversation, add_generation_prompt=True)

    def _images_that_fit(self, prompt: str, n_images: int) -> int:
        """How many of a request's images fit the context with its text: all of them, except for requests such as
        SEED-Bench's 8-frame videos or MMMU's many-image questions, which keep their first images (counted in
        ``dropped_images``) rather than fail the task."""
        if not n_images or not self.context_limit:
            return n_images
        per_image = self.processor.num_image_tokens
        length = len(self.tokenizer(prompt)["input_ids"]) + n_images * (per_image - 1)
        if length <= self.context_limit:
            return n_images
        self.dropped_images += 1
        return max(0, n_images - math.ceil((length - self.context_limit) / per_image))

    def _fitted_turn(self, text: str, images: list) -> tuple[str, list]:
        """The prompt of one user turn and its images, left out from the last ones if they do not fit."""
        prompt = self._prompt(self._conversation(text, len(images)))
        keep = self._images_that_fit(prompt, len(images))
        if keep < len(images):
            images = images[:keep]
            prompt = self._prompt(self._conversation(text, keep))
        return prompt, images

    def _encode(self, prompts: list[str], images: list[Image.Image]) -> dict:
        encoded = self.processor(images=images or None, text=prompts, padding=True, return_tensors="pt")
        inputs = {}
        for name in self.processor.model_input_names:
            if name not in encoded:
                continue
            value = encoded[name]
            if isinstance(value, (list, tuple)):  # pixel_values: one tensor per vision expert
                inputs[name] = [tensor.to(self._device, self._model.dtype) for tensor in value]
            elif torch.is_floating_point(value):
                inputs[name] = value.to(self._device, self._model.dtype)
            else:
                inputs[name] = value.to(self._device)
        return inputs

    # ----------------------------------------------------------------------------------------- generation
    def _settings(self, gen_kwargs) -> tuple[dict, list[str]]:
        """lmms-eval's ``generation_kwargs`` as ``generate`` arguments, and the stop strings. Keys for other models
        (``image_aspect_ratio``, ...) are ignored."""
        gen_kwargs = dict(gen_kwargs or {})
        until = gen_kwargs.get("until") or []
        stops = [until] if isinstance(until, str) else [stop for stop in until if stop]
        if self.end_of_turn and not self._end_of_turn_is_token:
            stops.append(self.end_of_turn)
        temperature = float(gen_kwargs.get("temperature") or 0)
        do_sample = temperature > 0 or (bool(gen_kwargs.get("do_sample")) and "temperature" not in gen_kwargs)
        settings = {
            "max_new_tokens": int(gen_kwargs.get("max_new_tokens") or self.max_new_tokens),
            "do_sample": do_sample,
            "num_beams": int(gen_kwargs.get("num_beams") or 1),
        }
        if do_sample:
            settings["temperature"] = temperature or 1.0
            if gen_kwargs.get("top_p") is not None:
                settings["top_p"] = float(gen_kwargs["top_p"])
        return settings, stops

    def _generated_length(self, row: list[int]) -> int:
        """Tokens generated up to and including the first end token; without one, up to the padding."""
        for index, token in enumerate(row):
            if token in self._eos_ids:
                return index + 1
        while row and row[-1] == self._pad_id:
            row = row[:-1]
        return len(row)

    def _generate(self, prompts: list[str], images: list[Image.Image], gen_kwargs) -> list[GenerationResult]:
        settings, stops = self._settings(gen_kwargs)
        inputs = self._encode(prompts, images)
        if stops:  # stop generating there, not only cut the text afterwards
            settings.update(stop_strings=stops, tokenizer=self.tokenizer)
        with torch.inference_mode():
            output = self._model.generate(**inputs, eos_token_id=self._eos_ids, pad_token_id=self._pad_id, **settings)
        new_tokens = output[:, inputs["input_ids"].shape[1] :].tolist()
        prompt_lengths = inputs["attention_mask"].sum(dim=1).tolist()
        results = []
        for row, prompt_length in zip(new_tokens, prompt_lengths):
            length = self._generated_length(row)
            text = self.tokenizer.decode(row[:length], skip_special_tokens=True)
            counts = TokenCounts(input_tokens=int(prompt_length), output_tokens=length)
            results.append(GenerationResult(text=truncate_at(text, stops).strip(), token_counts=counts))
        return results

    def _bar(self, total: int, what: str):
        return tqdm(total=total, desc=f"eagle {what}", unit="request", disable=self.rank != 0)

    def _generate_all(self, items: list, settings_of, length_of, turn_of) -> list[GenerationResult]:
        """Generate for every request, batched among requests with the same settings (``settings_of(args)``), by
        ``length_of(args)``; ``turn_of(args)`` gives a request's prompt and images. Results in request order."""
        results: list[GenerationResult | None] = [None] * len(items)
        bar = self._bar(len(items), "generate")
        for batch in _batches(items, lambda a: _settings_key(settings_of(a)), length_of, self.batch_size):
            prompts, images = [], []
            for index in batch:
                prompt, visuals = turn_of(items[index])
                prompts.append(prompt)
                images += visuals
            for index, result in zip(batch, self._generate(prompts, images, settings_of(items[batch[0]]))):
                results[index] = result
            bar.update(len(batch))
        bar.close()
        return results

    def generate_until(self, requests) -> list[GenerationResult]:
        def turn(args):
            context, _, doc_to_visual, doc_id, task, split = args
            doc = self._doc(task, split, doc_id)
            visuals = self._images(doc_to_visual(doc) if doc_to_visual else [], f"{task} doc {doc_id}")
            return self._fitted_turn(context, visuals)

        items = [request.args for request in requests]
        return self._generate_all(items, lambda a: a[1], lambda a: len(a[0]), turn)

    def generate_until_multi_round(self, requests) -> list[list[str]]:
        """Simple multi-round requests ``(context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split)``:
        each round is one user turn built from what the task's ``doc_to_text(doc, round_idx=..., previous_output=...,
        previous_round_info=...)`` returns ``(visuals, text, terminal, previous_output, round_info)``; the answer is
        the list of the rounds' outputs."""
        outputs = []
        for request in tqdm(requests, desc="eagle multi-round", unit="request", disable=self.rank != 0):
            context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = request.args
            doc = self._doc(task, split, doc_id)
            images = self._images(doc_to_visual(doc) if doc_to_visual else [], f"{task} doc {doc_id}")
            text, rounds, info = context, [], None
            for round_idx in range(1, MAX_ROUNDS + 1):
                prompt, images = self._fitted_turn(text, images)
                rounds.append(self._generate([prompt], images, gen_kwargs)[0].text)
                visuals, text, terminal, previous, info = doc_to_text(
                    doc, previous_output=list(rounds), round_idx=round_idx, previous_round_info=info
                )
                rounds = list(previous) if previous is not None else rounds
                if terminal:
                    break
                images = self._images(visuals, f"{task} doc {doc_id} round {round_idx + 1}")
            else:
                raise ValueError(f"{task} doc {doc_id}: no terminal round after {MAX_ROUNDS} rounds")
            outputs.append(rounds)
        return outputs

    # --------------------------------------------------------------------------------------- loglikelihood
    def _reply_text(self, conversation: list[dict], prompt: str, continuation: str) -> str:
        """The continuation as the template renders a reply after ``prompt`` (vicuna: " B", llama3/chatml: "B"),
        without the end-of-turn, so that it is scored as the model saw replies in training."""
        reply = [{"role": "assistant", "content": [{"type": "text", "text": continuation.lstrip()}]}]
        full = self.processor.apply_chat_template(conversation + reply, tokenize=False)
        if not full.startswith(prompt):  # a template that renders replies elsewhere: score the text as given
            return continuation
        text = full[len(prompt) :]
        if self.end_of_turn and self.end_of_turn in text:
            text = text[: text.rfind(self.end_of_turn)]
        return text

    def _score(self, prompt: str, reply: str, images: list[Image.Image]) -> tuple[float, bool]:
        """Sum of the log-probabilities of the reply's tokens after the prompt, and whether greedy decoding picks
        every one of them."""
        key = (prompt, len(images))
        if key not in self._prompt_ids:  # a multiple-choice question's requests come together and share it
            self._prompt_ids = {key: self._encode([prompt], images)["input_ids"][0]}
        prompt_ids = self._prompt_ids[key]
        inputs = self._encode([prompt + reply], images)
        ids = inputs["input_ids"][0]
        start = len(prompt_ids)
        if not torch.equal(ids[:start], prompt_ids):  # the reply merged with the prompt's last token
            start = int((ids[: len(prompt_ids)] == prompt_ids).long().cumprod(0).sum())
        targets = ids[start:]
        if len(targets) == 0:
            return 0.0, True
        with torch.inference_mode():
            logits = self._model(**inputs).logits[0, start - 1 : -1].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        total = logprobs.gather(-1, targets[:, None]).sum().item()
        return float(total), bool((logprobs.argmax(-1) == targets).all())

    def loglikelihood(self, requests) -> list[GenerationResult]:
        """``(context, continuation, doc_to_visual, doc_id, task, split)``: one request per choice for
        ``multiple_choice`` tasks (continuation = delimiter + choice), or the task's ``doc_to_target`` for
        ``loglikelihood`` tasks. Returns ``(log-probability, is_greedy)`` per request."""
        results = []
        for request in tqdm(requests, desc="eagle loglikelihood", unit="request", disable=self.rank != 0):
            context, continuation, doc_to_visual, doc_id, task, split = request.args
            doc = self._doc(task, split, doc_id)
            if callable(continuation):
                continuation = continuation(doc)
            images = self._images(doc_to_visual(doc) if doc_to_visual else [], f"{task} doc {doc_id}")
            _, images = self._fitted_turn(context, images)
            conversation = self._conversation(context, len(images))
            prompt = self._prompt(conversation)
            score = self._score(prompt, self._reply_text(conversation, prompt, str(continuation)), images)
            # lmms-eval 0.7.3 turns a bare (float, bool) answer into its string (api/instance.py,
            # unwrap_generation_output), which multiple_choice scoring cannot unpack; a GenerationResult's text is
            # passed through as it is.
            results.append(GenerationResult(text=score))
        return results


class EagleLmmsChat(EagleLmms):
    """lmms-eval's chat requests: ``(context, doc_to_messages, gen_kwargs, doc_id, task, split)``, where
    ``doc_to_messages(doc)`` gives ``[{"role": ..., "content": [{"type": "image", "url": PIL image},
    {"type": "text", "text": ...}]}]``."""

    is_simple = False

    def _from_messages(self, messages, where: str) -> tuple[list[dict], list[Image.Image]]:
        """The chat template's conversation (image blocks without their payload) and the images, in order."""
        conversation, visuals = [], []
        for message in messages:
            content = message.get("content")
            blocks = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])
            rendered = []
            for block in blocks:
                kind = block.get("type")
                if kind == "text":
                    rendered.append({"type": "text", "text": block.get("text") or ""})
                elif kind == "image":
                    visuals.append(block.get("url", block.get("image")))
                    rendered.append({"type": "image"})
                else:
                    raise ValueError(
                        f"eagle takes images and text only, but {where} sent a {kind!r} part; "
                        "video and audio tasks are not supported"
                    )
            conversation.append({"role": message["role"], "content": rendered})
        images = self._images(visuals, where)
        conversation = self._with_system(conversation)
        keep = self._images_that_fit(self._prompt(conversation), len(images))
        for _ in range(len(images) - keep):  # leave out the last image blocks
            message = next(m for m in reversed(conversation) if any(b["type"] == "image" for b in m["content"]))
            last = max(i for i, block in enumerate(message["content"]) if block["type"] == "image")
            del message["content"][last]
        return conversation, images[:keep]

    def generate_until(self, requests) -> list[GenerationResult]:
        def turn(args):
            _, doc_to_messages, _, doc_id, task, split = args
            doc = self._doc(task, split, doc_id)
            conversation, visuals = self._from_messages(doc_to_messages(doc), f"{task} doc {doc_id}")
            return self._prompt(conversation), visuals

        items = [request.args for request in requests]
        return self._generate_all(items, lambda a: a[2], lambda a: len(a[0] or ""), turn)

    def generate_until_multi_round(self, requests) -> list[list[str]]:
        """Each round's messages come from the task: ``doc_to_messages(doc)`` first, then ``doc_to_messages(doc,
        round_idx=..., previous_output=..., previous_round_info=...)`` returning ``(messages, terminal,
        previous_output, round_info)``."""
        outputs = []
        for request in tqdm(requests, desc="eagle multi-round", unit="request", disable=self.rank != 0):
            _, doc_to_messages, gen_kwargs, doc_id, task, split = request.args
            doc = self._doc(task, split, doc_id)
            messages, rounds, info = doc_to_messages(doc), [], None
            for round_idx in range(1, MAX_ROUNDS + 1):
                conversation, images = self._from_messages(messages, f"{task} doc {doc_id}")
                rounds.append(self._generate([self._prompt(conversation)], images, gen_kwargs)[0].text)
                payload = doc_to_messages(
                    doc, round_idx=round_idx, previous_output=list(rounds), previous_round_info=info
                )
                if not (isinstance(payload, tuple) and len(payload) == 4):
                    break
                messages, terminal, _, info = payload
                if terminal:
                    break
            else:
                raise ValueError(f"{task} doc {doc_id}: no terminal round after {MAX_ROUNDS} rounds")
            outputs.append(rounds)
        return outputs

    def loglikelihood(self, requests):
        raise NotImplementedError(
            "lmms-eval sends loglikelihood requests (multiple_choice tasks) to simple models only: run with "
            "--force_simple (eagle eval does)"
        )


__all__ = ["EagleLmms", "EagleLmmsChat", "end_of_turn", "load_visuals", "truncate_at"]
