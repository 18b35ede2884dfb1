"""The Env protocol every closed-loop benchmark implements (LIBERO, Meta-World, ...).

An Env is one *task*: ``reset(episode)`` puts it in that episode's deterministic initial state (LIBERO:
initial state ``episode`` of the suite file; Meta-World: a seeded goal) and returns the first
observation the policy sees, after any wait steps. ``step(action)`` takes one *un-normalised* action
as the policy returned it; platform post-processing (LIBERO's gripper flip) happens inside the Env.
Observations use the policy's keys: ``full_image``, ``wrist_image`` (uint8 H×W×3, already in the
orientation and size the policy was trained on), ``state`` (raw proprio) and ``instruction``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass
class StepResult:
    obs: dict[str, Any]
    success: bool
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Env(Protocol):
    suite: str  # e.g. "libero_spatial", "metaworld"
    task_id: int
    task: str  # task name
    instruction: str
    max_steps: int  # policy steps per episode (wait steps excluded)
    # Optional, read by real-time mode only (vla_adp.eval.realtime): the control rate in Hz and the
    # last action entry (policy space) that opens the gripper, for holding before the first command.
    # control_hz: float
    # gripper_open: float

    def reset(self, episode: int) -> dict[str, Any]: ...

    def step(self, action: np.ndarray, images: bool = True) -> StepResult:
        """Apply one action. ``images=False``: the caller will not read this step's camera images
        (the runner looks only when it queries the policy next), so the env may leave
        ``full_image``/``wrist_image`` as ``None``; state, success and info are always there, and
        the simulation is the same either way."""
        ...

    def frame(self) -> np.ndarray:
        """The frame to record for videos (LIBERO: flipped 256² agentview)."""
        ...

    def close(self) -> None: ...
