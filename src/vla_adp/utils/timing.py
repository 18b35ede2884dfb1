"""Wall-clock sections that accumulate per query; synchronises CUDA before every read."""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import torch


def sync(device: torch.device | str | None = None) -> None:
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize()


class Stopwatch:
    """``with sw("llm"): ...`` adds the section's seconds to ``sw.seconds["llm"]``."""

    def __init__(self, device: torch.device | str | None = "cpu"):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, name: str):
        sync(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            sync(self.device)
            self.seconds[name] += time.perf_counter() - t0

    def ms(self) -> dict[str, float]:
        return {k: 1e3 * v for k, v in self.seconds.items()}


class NullStopwatch:
    """Stands in when nobody asked for timings (no device syncs on the hot path)."""

    seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        yield

    def ms(self) -> dict[str, float]:
        return {}
