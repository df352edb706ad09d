"""What a run of ``eagle bench`` measures with: the preset, device, dtype, repeats and batch sizes."""

from dataclasses import dataclass

import torch

PRESETS = {"small": "eagle-x5-small", "x5-7b": "eagle-x5"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# What each training stage trains, as the shipped recipes (training/recipes/*.yaml) say.
STAGES = {"stage2": ["projector"], "stage3": ["experts", "projector", "llm"]}
PROMPT_PREFIX, PROMPT_SUFFIX = 8, 24  # text tokens before and after the image tokens


@dataclass
class Settings:
    preset: str = "small"
    device: str = "cpu"
    dtype: str = "float32"
    repeats: int = 30
    warmup: int = 2
    decode_tokens: int = 32
    batch: int = 8
    train_batch: int = 4
    train_repeats: int = 4
    fast_path_backend: str = "inductor"
    fast_path_mode: str | None = None

    @classmethod
    def for_preset(
        cls,
        preset: str,
        device: str | None = None,
        dtype: str | None = None,
        repeats=None,
        quick=False,
        fast_path_backend: str | None = None,
        fast_path_mode: str | None = None,
    ):
        if preset not in PRESETS:
            raise ValueError(f"unknown bench preset {preset!r}; choose one of {', '.join(PRESETS)}")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            torch.device(device)
        except RuntimeError as error:
            raise ValueError(f"--device {device}: not a device (cpu, cuda or cuda:N)") from error
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine")
        dtype = dtype or ("bfloat16" if torch.device(device).type == "cuda" else "float32")
        if dtype not in DTYPES:
            raise ValueError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
        settings = cls(preset=preset, device=device, dtype=dtype, fast_path_mode=fast_path_mode)
        if fast_path_backend is not None:
            settings.fast_path_backend = fast_path_backend
        if preset == "x5-7b":
            settings.repeats, settings.decode_tokens, settings.train_batch, settings.train_repeats = 10, 64, 2, 3
        if quick:
            settings.repeats, settings.warmup, settings.train_repeats = 3, 1, 2
        if repeats is not None:
            if repeats < 1:
                raise ValueError(f"--repeats {repeats}: give at least 1")
            settings.repeats = repeats
        return settings
