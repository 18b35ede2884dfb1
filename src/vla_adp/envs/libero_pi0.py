"""LIBERO with π0 / π0.5's evaluation protocol, as LeRobot and openpi run it (config data + one env).

Both protocols (LeRobot ``envs/libero.py`` + ``processor/env_processor.py::LiberoProcessorStep``
with ``docs/source/libero.mdx``'s π0.5 command; openpi ``examples/libero/main.py``):

* the suite's initial state ``i`` after ``reset()``, 10 wait steps of ``[0]*6 + [-1]``, the same
  per-suite step limits as OpenVLA-OFT (spatial 220 … libero_10 520);
* both cameras (agentview, eye-in-hand) rotated 180°; the policy resizes them with padding to 224
  (no JPEG round trip, no centre crop — unlike OpenVLA-OFT);
* state = eef_pos (3) + axis-angle(eef_quat) (3) + gripper_qpos (2), 8-D;
* the action goes to ``env.step`` unchanged: LIBERO's own gripper convention (−1 open, +1 close)
  is what the π0 LIBERO data use, so there is no OFT-style gripper flip;
* a chunk of 50 is predicted and the first ``replan_steps`` are executed.

They differ in: the prompt (openpi's ``pi05_libero`` config sets ``action_horizon=10,
discrete_state_input=False``: π0's prompt ``"{task}\n"`` and no state at all; LeRobot's
``pi05_libero_finetuned`` writes the discretised state into the prompt and predicts 50), render size (LeRobot 360², openpi 256²), replanning (LeRobot 10, openpi 5 actions
per chunk), the env seed (openpi ``env.seed(7)`` for every episode; ``lerobot-eval`` seeds rollout
``i`` with ``1000 + i``, its default ``--seed``) and the resize (openpi
resizes uint8 with PIL in the client; LeRobot in float torch inside the policy — we do the latter).

As an env adapter of the π0 / π0.5 families (:mod:`vla_adp.eval.job`; ``vla-adp eval libero --family
pi05 --protocol openpi``): :func:`make_env`, :func:`policy_options` (the protocol's replanning and
state-in-prompt for ``Pi0Policy.load``) and the suites' task lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vla_adp.envs.base import StepResult
from vla_adp.envs.libero import (WAIT_ACTION, LiberoConfig, LiberoEnv, make_render_fast, suite_instructions,
                                  suite_tasks)
from vla_adp.model import transforms as T


@dataclass(frozen=True)
class Pi0LiberoProtocol:
    """One way of running π0 / π0.5 on LIBERO.

    Args:
        name: "lerobot" or "openpi".
        camera_size: rendered image side.
        replan_steps: actions executed per predicted chunk.
        env_seed: ``env.seed`` at every reset (plus the episode index if ``seed_per_episode``).
        seed_per_episode: add the episode index to ``env_seed``.
        discrete_state_input: π0.5 prompt with the discretised state (``Pi0Policy(discrete_state=…)``).
        image_size: the model's input side (the policy resizes with padding).
        wait_steps: settle steps before the policy starts.
    """

    name: str
    camera_size: int
    replan_steps: int
    env_seed: int
    seed_per_episode: bool = False
    discrete_state_input: bool = True
    image_size: int = 224
    wait_steps: int = 10

    def __post_init__(self) -> None:
        for f in ("camera_size", "replan_steps", "image_size"):
            if not isinstance(getattr(self, f), int) or getattr(self, f) < 1:
                raise ValueError(f"{f} must be a positive int, got {getattr(self, f)!r}")


PROTOCOLS = {
    "lerobot": Pi0LiberoProtocol("lerobot", camera_size=360, replan_steps=10, env_seed=1000, seed_per_episode=True),
    "openpi": Pi0LiberoProtocol("openpi", camera_size=256, replan_steps=5, env_seed=7, discrete_state_input=False),
}
DEFAULT_PROTOCOL = "lerobot"
POLICY_RESIZES = True  # Pi0Policy resizes with padding to its own input side
CAMERAS = {"observation.images.image": "agentview_image", "observation.images.image2": "robot0_eye_in_hand_image"}


def get_protocol(name: str) -> Pi0LiberoProtocol:
    if name not in PROTOCOLS:
        raise ValueError(f"unknown π0 LIBERO protocol {name!r}; expected one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]


def observation(raw: dict[str, Any], instruction: str, images: bool = True) -> dict[str, Any]:
    """LeRobot's LIBERO observation: rotated uint8 HWC images, the 8-D state, the task."""
    state = np.concatenate([raw["robot0_eef_pos"], T.quat2axisangle(raw["robot0_eef_quat"]),
                            raw["robot0_gripper_qpos"]]).astype(np.float64)
    obs = {key: (np.ascontiguousarray(T.rotate_180(raw[cam])) if images else None) for key, cam in CAMERAS.items()}
    return {**obs, "observation.state": state, "state": state, "task": instruction}


class Pi0LiberoEnv(LiberoEnv):
    """One LIBERO task under a :class:`Pi0LiberoProtocol` (the simulator set-up is LiberoEnv's)."""

    def __init__(self, suite: str, task_id: int, protocol: Pi0LiberoProtocol, max_steps: int | None = None,
                 render: str = "faithful"):
        super().__init__(LiberoConfig(suite, task_id, max_steps=max_steps, camera_size=protocol.camera_size,
                                      image_size=protocol.image_size, wait_steps=protocol.wait_steps, render=render))
        self.protocol = protocol

    def reset(self, episode: int) -> dict[str, Any]:
        if not 0 <= episode < self.n_episodes:
            raise ValueError(f"{self.suite} task {self.task_id} has initial states 0..{self.n_episodes - 1}, "
                             f"got episode {episode}")
        self._env.seed(self.protocol.env_seed + (episode if self.protocol.seed_per_episode else 0))
        self._env.reset()
        if self.config.render == "fast":
            make_render_fast(self._env)
        raw = self._env.set_init_state(self.init_states[episode])
        for _ in range(self.protocol.wait_steps):
            raw, _, _, _ = self._env.step(list(WAIT_ACTION))
        self._raw = raw
        return observation(raw, self.instruction)

    def step(self, action: np.ndarray, images: bool = True) -> StepResult:
        """One un-normalised action, sent as is (LIBERO's gripper convention)."""
        action = np.asarray(action, np.float64)
        if action.shape != (7,):
            raise ValueError(f"LIBERO actions have shape (7,), got {action.shape}")
        raw, reward, done, _ = self._env.step(action.tolist())
        self._raw = raw
        return StepResult(observation(raw, self.instruction, images), bool(done), {"reward": float(reward)})


def policy_options(protocol: str) -> dict[str, Any]:
    """What the protocol asks of :meth:`vla_adp.pi0_policy.Pi0Policy.load`. The state-in-prompt is
    π0.5's: where the protocol keeps it, the checkpoint type's default applies (``None``: π0.5 writes
    the state into the prompt, π0 feeds its continuous state token as LeRobot's π0 does)."""
    p = get_protocol(protocol)
    return {"replan_steps": p.replan_steps, "discrete_state": None if p.discrete_state_input else False}


def make_env(suite: str, task_id: int, max_steps: int | None = None, render: str = "faithful",
             protocol: str = DEFAULT_PROTOCOL, image_size: int | None = None) -> Pi0LiberoEnv:
    """One task under a named protocol (``image_size`` is unused: the policy resizes the cameras itself)."""
    return Pi0LiberoEnv(suite, task_id, get_protocol(protocol), max_steps=max_steps, render=render)


__all__ = ["PROTOCOLS", "DEFAULT_PROTOCOL", "Pi0LiberoEnv", "Pi0LiberoProtocol", "get_protocol", "make_env",
           "observation", "policy_options", "suite_instructions", "suite_tasks"]
