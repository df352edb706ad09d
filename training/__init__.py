"""Training Eagle: recipes, the stage runner on TRL's SFTTrainer, data loaders, synthetic data and the quickstart."""

import logging


def quiet_bitsandbytes_cpu_warning() -> None:
    """bitsandbytes on a CPU warns at import (through peft and trl) that its optional Hub-fetched kernels are
    missing; its built-in fallback works, and the line would bury a command's own output."""
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
