"""The ``vision_tower_no_sync`` bar's check: the vision tower never waits on the host nor copies to it."""

from collections import Counter

import torch

# torch (2.6 to 2.13 at least) has no public import path for TorchDispatchMode; its own FlopCounterMode subclasses
# this one. It is the only hook that sees every aten op with its arguments, which the no-sync check needs.
from torch.utils._python_dispatch import TorchDispatchMode

from .flops import expert_inputs
from .settings import PRESETS
from .timing import synchronize


class HostTensorsIntoDeviceOps(TorchDispatchMode):
    """Records the ops that take a CPU tensor (not a 0-d scalar) together with tensors on another device: on a GPU
    each is a blocking host-to-device copy, which the meta device lets through silently."""

    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = tensors_in((args, kwargs))
        if any(t.device.type == "cpu" and t.dim() > 0 for t in tensors) and any(
            t.device.type != "cpu" for t in tensors
        ):
            self.ops[str(func)] += 1
        return func(*args, **kwargs)


def tensors_in(value) -> list[torch.Tensor]:
    """The tensors in an aten op's arguments, which hold tensors, (nested) lists and tuples of them, dicts of
    keyword arguments and scalars."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [tensor for item in value for tensor in tensors_in(item)]
    return []


def check_no_sync(preset: str) -> dict:
    """Run the vision tower on the meta device: any host-device sync (``.item()``, ``bool(tensor)``, ``nonzero``,
    boolean-mask indexing) or copy to the CPU raises there, and a CPU tensor fed to a device op (a copy to the GPU)
    is recorded."""
    from eagle_hub.modeling_eagle.modeling_eagle import EagleVisionTower
    from eagle_hub.modeling_eagle.presets import eagle_config

    config = eagle_config(PRESETS[preset])
    with torch.device("meta"):
        tower = EagleVisionTower(config.vision_config).eval()
    host_tensors = HostTensorsIntoDeviceOps()
    try:
        with torch.no_grad(), host_tensors:
            tower(expert_inputs(config))
    except (RuntimeError, NotImplementedError) as error:
        return {"measured": f"a sync or CPU round trip: {' '.join(str(error).split())[:200]}", "pass": False}
    if host_tensors.ops:
        ops = ", ".join(f"{op} x{n}" for op, n in host_tensors.ops.items())
        return {"measured": f"CPU tensors copied to the device in {ops}", "pass": False}
    return {"measured": "none: the tower ran on the meta device", "pass": True}


def check_no_sync_on_cuda(tower, pixel_values, device: torch.device) -> dict | None:
    """On CUDA also run the real tower under ``torch.cuda.set_sync_debug_mode("error")``."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        tower(pixel_values)
        return {"measured": "none under torch.cuda.set_sync_debug_mode('error')", "pass": True}
    except RuntimeError as error:
        return {"measured": f"a sync: {' '.join(str(error).split())[:200]}", "pass": False}
    finally:
        torch.cuda.set_sync_debug_mode("default")
