"""Small real components for the evaluation tests: a toy Env and a toy pruner.

``ToyEnv`` follows the Env protocol with its own deterministic point-mass dynamics (it is not a
stand-in for LIBERO, which the simulator tests run for real); it can succeed or raise at a given
step to exercise the runner's bookkeeping. ``HalfPruner`` keeps the first half of every camera's
tokens before layer 0 and records what the runner fed it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vla_adp.envs.base import StepResult
from vla_adp.seam.keep import KeepSet


class ToyEnv:
    suite = "toy"
    task = "toy_task"
    instruction = "pick up the black bowl and place it on the plate"

    def __init__(self, task_id: int = 0, max_steps: int = 20, success_at: int | None = None,
                 raise_at: int | None = None):
        self.task_id, self.max_steps = task_id, max_steps
        self.success_at, self.raise_at = success_at, raise_at
        self.resets: list[int] = []
        self.closed = False

    def _obs(self) -> dict:
        rng = np.random.default_rng(self.t)
        return {"full_image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
                "wrist_image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
                "state": np.concatenate([self.pos, np.zeros(5)]), "instruction": self.instruction}

    def reset(self, episode: int) -> dict:
        self.resets.append(episode)
        self.t, self.pos = 0, np.array([0.0, 0.0, float(episode)])
        return self._obs()

    def step(self, action, images: bool = True) -> StepResult:  # the Env protocol (images always made)
        self.t += 1
        if self.raise_at is not None and self.t == self.raise_at:
            raise RuntimeError(f"toy env exploded at step {self.t}")
        self.pos = self.pos + 0.01 * np.asarray(action, np.float64)[:3]
        return StepResult(self._obs(), self.success_at is not None and self.t >= self.success_at)

    def frame(self) -> np.ndarray:
        return np.full((64, 64, 3), self.t % 256, np.uint8)

    def close(self) -> None:
        self.closed = True


def suite_tasks(suite: str) -> list[str]:
    """This module doubles as an env module (``ENV_FACTORIES["toy"] = "tests.eval_helpers"``)."""
    return ["toy_task", "toy_task_2"]


def make_env(suite: str, task_id: int, max_steps: int | None = None, render: str = "faithful",
             image_size: int = 224) -> ToyEnv:
    return ToyEnv(task_id, max_steps or 9, success_at=5)


@dataclass(frozen=True)
class HalfConfig:
    keep_ratio: float = 0.5


class HalfPruner:
    """Keeps the first half of each camera's visual tokens at layer 0, every query."""

    name = "half"

    def __init__(self, config: HalfConfig = HalfConfig()):
        self.config = config
        self.resets = 0
        self.paths: list[int] = []  # number of recorded post-step positions seen per query

    def reset(self) -> None:
        self.resets += 1

    def begin(self, query) -> frozenset[int]:
        self.paths.append(len(query.eef_path))
        return frozenset({0})

    def at_layer(self, ctx) -> KeepSet:
        idx, views, start = [], [], 0
        for v in ctx.layout.views:
            k = max(1, int(v * self.config.keep_ratio))
            idx.append(torch.arange(start, start + k))
            views.append(k)
            start += v
        return KeepSet(torch.cat(idx)[None].to(ctx.hidden.device), tuple(views))

    def end(self, outcome) -> dict:
        return {"gate_state": 1, "displacement": 0.25, "half_marker": [1, 2]}
