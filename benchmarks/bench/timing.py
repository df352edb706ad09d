"""Timing every figure the same way.

- Timing: warm-up, then the median of ``repeats`` runs; on GPU every timed region is bracketed by
  ``torch.cuda.synchronize``, and forward passes run under ``torch.inference_mode``. The runs a figure compares
  are interleaved (one of each per repeat, in a rotating order), and a paired ratio is the median over repeats of
  the ratio within the repeat, so a slow spell on a shared machine slows both sides of it.
"""

import statistics
import time
from collections.abc import Callable

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Times(dict):
    """Seconds per repeat of each timed function (``name -> list``), the functions interleaved within a repeat."""

    def per_repeat(self, *names: str) -> list[float]:
        """These functions' summed time within each repeat."""
        return [sum(values) for values in zip(*(self[name] for name in names))]

    def median(self, *names: str) -> float:
        """The median over repeats of these functions' summed time within the repeat."""
        return statistics.median(self.per_repeat(*names))

    def paired_ratio(self, numerator: list[str], denominator: list[str]) -> float:
        """The median over repeats of sum(numerator) / sum(denominator) within the repeat: the two sides of a
        ratio ran back to back, so a slow spell on a shared machine slows both."""
        return median_ratio(self.per_repeat(*numerator), self.per_repeat(*denominator))

    def decode_seconds(self, name: str) -> list[float]:
        """Per repeat, ``generate`` with N new tokens minus with 1 (``name:n`` - ``name:1``): the N - 1 tokens after
        the first. Noise can make a repeat's difference zero or negative."""
        return [many - one for many, one in zip(self[f"{name}:n"], self[f"{name}:1"])]


def median_ratio(numerators: list[float], denominators: list[float]) -> float | None:
    """The median over repeats of numerator / denominator within the repeat. A repeat whose denominator is not
    positive (a time difference swamped by noise) is left out; None when none is left."""
    ratios = [n / d for n, d in zip(numerators, denominators, strict=True) if d > 0]
    return statistics.median(ratios) if ratios else None


class InnerTimes(dict):
    """Seconds of named regions inside a timed call (``name -> seconds``): a timed function returns one, and
    ``time_interleaved`` records each region next to the call's own time, in the same repeat."""


def time_interleaved(fns: dict[str, Callable], repeats: int, warmup: int, device: torch.device) -> Times:
    """Time every function ``repeats`` times after ``warmup`` rounds; within a round each runs once, in turn, the
    order rotating from round to round so that no function always follows the same one."""
    times = Times({name: [] for name in fns})
    names = list(fns)
    for index in range(warmup + repeats):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            fn = fns[name]
            synchronize(device)
            start = time.perf_counter()
            output = fn()
            synchronize(device)
            if index >= warmup:
                times[name].append(time.perf_counter() - start)
                if isinstance(output, InnerTimes):
                    for inner, seconds in output.items():
                        times.setdefault(inner, []).append(seconds)
    return times


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 4)


def rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)
