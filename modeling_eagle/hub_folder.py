"""Writing Hub-ready Eagle folders: weights, config with ``auto_map``, processor, tokenizer, chat template and the
remote-code files, so that ``AutoModel*.from_pretrained(folder, trust_remote_code=True)`` works anywhere.

Every write goes to a temporary sibling folder that is moved into place only when complete, so an interrupted
save never leaves a half-written model where a good one was.
"""

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import GenerationConfig
from transformers.dynamic_module_utils import custom_object_save
from transformers.utils import logging

from eagle_hub.processing.chat_templates import CHAT_TEMPLATES
from eagle_hub.processing.local_tokenizer import build_tokenizer

from . import AUTO_MAP
from .configuration_eagle import EagleConfig
from .image_processing_eagle import EagleImageProcessor
from .modeling_eagle import EagleForConditionalGeneration
from .processing_eagle import EagleProcessor

logger = logging.get_logger(__name__)


def build_processor(config: EagleConfig, tokenizer, chat_template: str = "vicuna_v1", mode: str = "per_expert"):
    """An ``EagleProcessor`` matching ``config``: one image-processor entry per expert, and the fusion strategy's
    token count per image (``config.image_seq_length``)."""
    template = CHAT_TEMPLATES.get(chat_template, chat_template)
    image_processor = EagleImageProcessor.from_vision_experts(config.vision_config.experts, mode=mode)
    # Left padding for batched generation (saved with the tokenizer); TRL's collator asks for right padding itself.
    tokenizer.padding_side = tokenizer.init_kwargs["padding_side"] = "left"
    return EagleProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=template,
        num_image_tokens=config.image_seq_length,
    )


def generation_config_for(tokenizer) -> GenerationConfig:
    """Greedy by default, as the authors evaluated; their demo sampled with temperature 0.2, top_p 0.5."""
    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=256,
    )


@contextmanager
def staged_folder(output_dir, overwrite: bool = False):
    """Yield a temporary sibling of ``output_dir`` to write into; move it into place only if the block succeeds."""
    output_dir = Path(output_dir)
    _recover(output_dir)
    if output_dir.exists() and not overwrite:
        raise FileExistsError(f"{output_dir} already exists; choose another output or pass overwrite/--force")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.staging-", dir=output_dir.parent))
    try:
        yield staging
        if output_dir.exists():
            backup = output_dir.with_name(f".{output_dir.name}.old-{os.getpid()}")
            os.replace(output_dir, backup)
            os.replace(staging, output_dir)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _recover(output_dir: Path) -> None:
    """Undo what a process killed inside ``staged_folder`` left: a previous output moved aside but not replaced
    comes back, and half-written staging folders go."""
    if not output_dir.parent.is_dir():
        return
    backups = sorted(output_dir.parent.glob(f".{output_dir.name}.old-*"))
    if backups and not output_dir.exists():
        os.replace(backups[-1], output_dir)
    for leftover in [*output_dir.parent.glob(f".{output_dir.name}.staging-*"), *backups]:
        shutil.rmtree(leftover, ignore_errors=True)


def write_processor_files(folder: Path, processor) -> None:
    processor.save_pretrained(folder)
    # v5 nests the image processor in processor_config.json; a separate file keeps v4-era readers working.
    processor.image_processor.save_pretrained(folder)


def write_folder_files(folder: Path, processor, config: EagleConfig) -> None:
    """Everything but the weights: config (with ``auto_map``), remote code, generation config and processor."""
    config.auto_map = dict(AUTO_MAP)
    with torch.device("meta"):
        code_owner = EagleForConditionalGeneration(config)
    custom_object_save(code_owner, folder)
    config.save_pretrained(folder)
    generation_config_for(processor.tokenizer).save_pretrained(folder)
    write_processor_files(folder, processor)


def save_folder(
    output_dir,
    processor,
    *,
    model=None,
    config: EagleConfig | None = None,
    overwrite: bool = False,
    subfolders: dict[str, Path] | None = None,
    extra_files: dict[str, str] | None = None,
    card=None,
):
    """Write a Hub-ready folder atomically. Without ``model``, everything but the weights is written.
    ``subfolders`` (name -> existing folder) and ``extra_files`` (name -> text) go in too, and ``card(folder)``
    writes the model card last, all inside the same atomic move."""
    with staged_folder(output_dir, overwrite) as staging:
        if model is None:
            write_folder_files(staging, processor, config)
        else:  # save_pretrained writes the config, generation config, weights and remote code
            model.config.auto_map = dict(AUTO_MAP)
            model.generation_config = generation_config_for(processor.tokenizer)
            model.save_pretrained(staging)
            write_processor_files(staging, processor)
        for name, folder in (subfolders or {}).items():
            shutil.copytree(folder, staging / name)
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
        if card is not None:
            card(staging)
    return Path(output_dir)


def init_folder(
    preset: str,
    output_dir,
    *,
    config_only: bool = False,
    seed: int = 0,
    overwrite: bool = False,
    fusion: str | dict | None = None,
):
    """A randomly initialised, Hub-ready folder for a preset, with a tokenizer built on this machine; ``fusion`` (a
    strategy name or ``{"type", "options"}``) replaces the default ``channel_concat``."""
    from .presets import eagle_config

    tokenizer = build_tokenizer()
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    config = eagle_config(
        preset,
        image_token_id=image_token_id,
        vocab_size=vocab_size_for(preset, len(tokenizer)),
        **({"fusion": fusion} if fusion is not None else {}),
    )
    processor = build_processor(config, tokenizer)
    model = None
    if not config_only:
        torch.manual_seed(seed)
        model = EagleForConditionalGeneration(config)
        logger.info("initialised %s: %.1fM parameters", preset, model.num_parameters() / 1e6)
    return save_folder(output_dir, processor, model=model, config=config, overwrite=overwrite)


def vocab_size_for(preset: str, tokenizer_size: int) -> int | None:
    from .presets import PRESETS

    preset_vocab = PRESETS[preset]["text"].get("vocab_size")
    # Full-size presets keep the LLM's real vocabulary (rows past the local tokenizer stay unused).
    return max(preset_vocab, tokenizer_size) if preset_vocab else tokenizer_size
