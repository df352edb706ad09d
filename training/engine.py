"""Which distributed engine a run asked for and which one it gets: a run whose accelerate config asks for FSDP or
DeepSpeed ZeRO but that would train as plain DDP or as a lone process refuses, in one line, instead of training
unsharded with the settings silently dropped.

``accelerate launch --config_file CONFIG`` hands its choice to the processes it starts as environment variables
(``ACCELERATE_USE_FSDP``, ``ACCELERATE_USE_DEEPSPEED``, ``ACCELERATE_DEEPSPEED_ZERO_STAGE``; torchrun adds
``WORLD_SIZE``). accelerate then shards only on accelerator devices: with ``cpu=True``, which the runner passes when
there is no CUDA device, its state is ``MULTI_CPU`` and it wraps the model in DistributedDataParallel whatever the
config said.
"""

import os
from collections.abc import Mapping

# The engines accelerate can be asked for, as its DistributedType values, and the shipped config that asks for each.
SHIPPED_CONFIGS = {
    "FSDP": "training/accelerate/fsdp.yaml",
    "DEEPSPEED-2": "training/accelerate/deepspeed-zero2.yaml",
    "DEEPSPEED-3": "training/accelerate/deepspeed-zero3.yaml",
}
NAMES = {"FSDP": "FSDP", "DEEPSPEED-2": "DeepSpeed ZeRO-2", "DEEPSPEED-3": "DeepSpeed ZeRO-3"}
ON_CPU = (
    "on CPU launch with training/accelerate/cpu-2proc.yaml (DDP over gloo), or shard with transformers' "
    "DistributedConfig(fsdp_size=N) under torchrun (docs/training.md)"
)


class EngineError(ValueError):
    """The accelerate config asks for an engine this run would not use."""


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "false").lower() == "true"


def requested_engine(env: Mapping[str, str] = os.environ) -> str | None:
    """``FSDP``, ``DEEPSPEED-<zero stage>`` or None (plain DDP or one process), from what accelerate launch set."""
    if _flag(env, "ACCELERATE_USE_DEEPSPEED"):
        return f"DEEPSPEED-{env.get('ACCELERATE_DEEPSPEED_ZERO_STAGE', '?')}"
    if _flag(env, "ACCELERATE_USE_FSDP"):
        return "FSDP"
    return None


def _asked(engine: str) -> str:
    config = SHIPPED_CONFIGS.get(engine)
    return f"{NAMES.get(engine, engine)} (as {config} sets)" if config else NAMES.get(engine, engine)


def check_before_start(cuda_available: bool, env: Mapping[str, str] = os.environ) -> None:
    """Refuse before anything loads when the config asks for a sharding engine and there is no CUDA device: the runner
    then trains with ``use_cpu=True``, under which accelerate only runs DDP."""
    engine = requested_engine(env)
    if engine is not None and not cuda_available:
        raise EngineError(
            f"the accelerate config asks for {_asked(engine)}, but with no CUDA device this run would train as plain "
            f"DDP with every parameter on every process: accelerate shards only on GPUs; {ON_CPU}"
        )


def check_engine(distributed_type: str, num_processes: int, env: Mapping[str, str] = os.environ) -> None:
    """Refuse when the trainer's accelerator (``distributed_type``, ``num_processes``) is not what the launch asked
    for: a sharding engine that became DDP or a single process, or several launched processes each training alone."""
    distributed_type = str(getattr(distributed_type, "value", distributed_type))
    engine = requested_engine(env)
    got = f"{distributed_type} with {num_processes} process{'es' if num_processes != 1 else ''}"
    if engine is not None and distributed_type != engine.split("-")[0]:
        raise EngineError(
            f"the accelerate config asks for {_asked(engine)}, but the trainer would run {got}, unsharded: "
            f"accelerate's FSDP and DeepSpeed need CUDA GPUs (DeepSpeed also the deepspeed package); {ON_CPU}"
        )
    launched = int(env.get("WORLD_SIZE", "1"))
    if num_processes != launched:
        raise EngineError(
            f"{launched} processes were launched, but the trainer would run {got}: each would train alone on the "
            "whole data; launch with an accelerate config (training/accelerate/cpu-2proc.yaml on CPU)"
        )
