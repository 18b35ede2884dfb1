"""Pick the faster torch thread count while training on a shared CPU.

On a machine whose cores other processes also use, two OpenMP threads can run several times slower
than one: every parallel region ends at a barrier, and a thread that lost its core stalls the other
(measured here: 77 vs 42 samples/s on an idle machine, 7 vs 16 under load). The tuner re-measures
each candidate for a few steps every ``every`` steps and uses the fastest until the next probe.
"""

from __future__ import annotations

import torch


class ThreadTuner:
    """Probe each thread count for ``probe`` steps every ``every`` steps; run the fastest in between.

    Args:
        choices: thread counts to try (e.g. ``(1, 2)``); one choice fixes it.
        every: steps between probes.
        probe: steps timed per choice (the first of them is discarded as warm-up).
    """

    def __init__(self, choices: tuple[int, ...], every: int = 200, probe: int = 6):
        if not choices or any(not isinstance(c, int) or c < 1 for c in choices):
            raise ValueError(f"thread choices must be positive ints, got {choices!r}")
        if probe < 2 or every < probe * len(choices):
            raise ValueError(f"need probe >= 2 and every >= probe·len(choices), got probe={probe}, every={every}")
        self.choices, self.every, self.probe = tuple(choices), every, probe
        self.best = self.choices[0]
        self._times: dict[int, list[float]] = {}

    def threads_for(self, step: int) -> int:
        """Thread count for ``step`` (and set it)."""
        phase = step % self.every
        n = self.choices[phase // self.probe] if phase < self.probe * len(self.choices) else self.best
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        return n

    def record(self, step: int, seconds: float) -> None:
        phase = step % self.every
        if len(self.choices) == 1 or phase >= self.probe * len(self.choices):
            return
        if phase == 0:
            self._times = {}
        if phase % self.probe:  # skip each choice's first step (thread-pool warm-up)
            self._times.setdefault(self.choices[phase // self.probe], []).append(seconds)
        if phase == self.probe * len(self.choices) - 1:
            self.best = min(self._times, key=lambda c: sorted(self._times[c])[len(self._times[c]) // 2])
