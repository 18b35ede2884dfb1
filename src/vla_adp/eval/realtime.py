"""Real-time evaluation: the world keeps moving while the policy thinks.

Every closed-loop benchmark pauses the simulator during inference, so a faster policy can never
succeed more often. In real-time mode a query that takes ``latency`` seconds costs
``ceil(latency · control_hz)`` control steps of simulated time (a robot whose controller ticks at
``control_hz`` sends the next command at the first tick after the answer arrives). During those
steps the robot either

* ``continue``: executes the remaining actions of the previous chunk (those beyond ``open_loop``),
  then holds once they run out, or
* ``hold``: holds at once (zero motion, the gripper as last commanded),

and the new chunk starts after them, from its first action. With zero latency the episode is exactly
the paused-world episode. Steps spent thinking count against the episode's ``max_steps`` (its time
budget). With the default ``open_loop`` = whole chunk nothing remains to continue with, so both modes
hold; ``--open-loop 4`` on an 8-action chunk gives the asynchronous schedule (query after 4 actions,
execute the other 4 while the next chunk is computed).

Where the latency comes from (``source``):

* ``wall``: the measured wall time of the query on this machine (in a batched run, of the batch).
* ``fixed``: ``seconds`` for every query.
* ``model``: ``fixed_s + full_s · flops / flops_full``: the unpruned 7B's per-query latency on a named
  GPU (:data:`GPU_QUERY_S`, or ``full_s`` given) scaled by the query's FLOPs as run (decoder + the
  pruner's scoring) over the same query's unpruned decoder FLOPs, as logged by ``Policy.infer``. The
  scaling is an assumption: it takes latency proportional to decoder FLOPs, which holds while the
  query is compute-bound; ``fixed_s`` carries what pruning does not shorten (vision, host overhead).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

SOURCES = ("wall", "fixed", "model")
THINKING = ("continue", "hold")

# Published per-query latencies of the unpruned OpenVLA-OFT 7B (two cameras, one 8-action chunk).
# These are *other people's measurements on their machines*, not ours; the project has not measured
# the 7B on a GPU yet. Pass ``full_s`` to use your own number.
GPU_QUERY_S: dict[str, float] = {
    # ADP paper (seeds, Table 2, real robot): OFT baseline 76.9 ms on an RTX 4090.
    "rtx4090": 0.0769,
    # LightVLA paper (OFT, LIBERO): 34 ms per query unpruned on an H20.
    "h20": 0.034,
}


@dataclass(frozen=True)
class RealtimeConfig:
    """How simulated time advances during a query.

    Args:
        source: ``wall``, ``fixed`` or ``model`` (see the module docstring).
        seconds: the latency of every query (``fixed`` only).
        gpu: key of :data:`GPU_QUERY_S` (``model`` only, unless ``full_s`` is given).
        full_s: the unpruned per-query latency of the modelled GPU in seconds (``model``);
            ``None`` takes ``GPU_QUERY_S[gpu]``.
        fixed_s: latency added to every modelled query that pruning does not shorten (``model``).
        thinking: ``continue`` or ``hold`` (what the robot does while the policy thinks).
        control_hz: control rate; ``None`` takes the env's ``control_hz`` (LIBERO 20, Meta-World 80).
    """

    source: str = "wall"
    seconds: float | None = None
    gpu: str = "rtx4090"
    full_s: float | None = None
    fixed_s: float = 0.0
    thinking: str = "continue"
    control_hz: float | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"realtime source must be one of {SOURCES}, got {self.source!r}")
        if self.thinking not in THINKING:
            raise ValueError(f"thinking must be one of {THINKING}, got {self.thinking!r}")
        if self.source == "fixed" and not _non_negative(self.seconds):
            raise ValueError(f"a fixed latency needs seconds >= 0, got {self.seconds!r}")
        if self.source == "model":
            if self.full_s is None and self.gpu not in GPU_QUERY_S:
                raise ValueError(f"unknown GPU {self.gpu!r} for the latency model; expected one of "
                                 f"{sorted(GPU_QUERY_S)} or a full_s in seconds")
            if self.full_s is not None and not _non_negative(self.full_s):
                raise ValueError(f"full_s must be >= 0 seconds, got {self.full_s!r}")
        if not _non_negative(self.fixed_s):
            raise ValueError(f"fixed_s must be >= 0 seconds, got {self.fixed_s!r}")
        if self.control_hz is not None and not (_non_negative(self.control_hz) and self.control_hz > 0):
            raise ValueError(f"control_hz must be > 0, got {self.control_hz!r}")

    @property
    def query_s(self) -> float:
        """The modelled GPU's unpruned per-query latency."""
        return self.full_s if self.full_s is not None else GPU_QUERY_S[self.gpu]

    def identity(self) -> dict[str, Any]:
        """What changes results (part of the run's config hash); unused fields left out."""
        out = {"source": self.source, "thinking": self.thinking, "control_hz": self.control_hz}
        if self.source == "fixed":
            out["seconds"] = self.seconds
        if self.source == "model":
            out.update(query_s=self.query_s, fixed_s=self.fixed_s)
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _non_negative(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0


def parse_latency(spec: str) -> dict[str, Any]:
    """``wall`` | ``model`` | ``model:GPU`` | ``model:MS`` | a fixed latency: ``120ms`` / ``0.12`` (seconds)
    -> RealtimeConfig fields."""
    s = str(spec).strip().lower()
    if s == "wall":
        return {"source": "wall"}
    if s == "model" or s.startswith("model:"):
        arg = s.partition(":")[2]
        if not arg:
            return {"source": "model"}
        try:
            return {"source": "model", "full_s": _seconds(arg)}
        except ValueError:
            return {"source": "model", "gpu": arg}
    try:
        return {"source": "fixed", "seconds": _seconds(s)}
    except ValueError:
        raise ValueError(f"latency must be 'wall', 'model', 'model:GPU' (one of {sorted(GPU_QUERY_S)}), "
                         f"'model:MS' or a fixed time like '120ms' / '0.12', got {spec!r}") from None


def _seconds(s: str) -> float:
    value = float(s[:-2]) / 1e3 if s.endswith("ms") else float(s[:-1] if s.endswith("s") else s)
    if not _non_negative(value):
        raise ValueError(f"not a time >= 0: {s!r}")
    return value


def query_latency(cfg: RealtimeConfig, info: dict[str, Any], wall_s: float) -> float:
    """Seconds the query takes in simulated time."""
    if cfg.source == "wall":
        return float(wall_s)
    if cfg.source == "fixed":
        return float(cfg.seconds)
    full, flops = info.get("flops_full"), info.get("flops")
    if not full or flops is None:
        raise ValueError("the latency model needs the policy's 'flops' and 'flops_full' per query")
    return cfg.fixed_s + cfg.query_s * float(flops) / float(full)


def steps_elapsed(latency_s: float, control_hz: float) -> int:
    """Control ticks that pass before the answer can be used: ceil(latency · hz) (0 for 0 s)."""
    return max(0, math.ceil(latency_s * control_hz - 1e-9))


def hold_action(last: np.ndarray | None, action_dim: int, gripper_open: float) -> np.ndarray:
    """Zero motion, the gripper as last commanded (open before the first command).

    Actions here are in the policy's space (delta end-effector + a last gripper entry), as ``Env.step``
    takes them; every platform in this project moves by deltas, so zeros hold the pose.
    """
    out = np.zeros(action_dim, np.float64)
    out[-1] = gripper_open if last is None else float(np.asarray(last)[-1])
    return out


def thinking_actions(leftover: list[np.ndarray], k: int, mode: str, last: np.ndarray | None,
                     action_dim: int, gripper_open: float) -> list[np.ndarray]:
    """The ``k`` actions executed while the policy thinks (see the module docstring)."""
    out = list(leftover[:k]) if mode == "continue" else []
    while len(out) < k:
        out.append(hold_action(out[-1] if out else last, action_dim, gripper_open))
    return out
