"""Meta-World v3 as an :class:`~vla_adp.envs.base.Env`: seeded goals, two fast-rendered cameras.

One env is one task (``drawer-open``, ``reach``, ...). ``reset(episode)`` seeds Meta-World's own
goal sampler (``seeded_rand_vec``: rejection sampling stays deterministic, unlike a frozen goal
vector, which loops forever where a task re-draws a goal too close to its object) with
:func:`episode_seed`: training demonstrations and evaluation episodes come from disjoint seed ranges,
so every evaluation goal is held out.

Observations, in the keys the policy reads:

* ``full_image``: a free scene camera framing the workspace from the side (Meta-World's ``corner``
  cameras are rolled 180° and cover the table at a few pixels per object; named cameras can still
  be chosen, and the rolled ones are turned the right way up);
* ``wrist_image``: ``gripperPOV``;
* ``state``: hand xyz + gripper opening in [0, 1] (the first four entries of Meta-World's state);
* ``instruction``: one hand-written sentence per task.

Both views are rendered at exactly the model's input size with :class:`FastRenderer` (no shadows,
reflections or multisampling), for demonstrations and evaluation alike, so the policy never
resizes. The scripted expert (``metaworld.policies``) reads the full 39-D state including the goal,
which :meth:`MetaWorldEnv.expert_action` keeps away from the policy.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from vla_adp.envs.base import StepResult
from vla_adp.envs.closing import track
from vla_adp.model.transforms import rotate_180

SPLITS = ("train", "eval")
SEED_BLOCK = 1_000_000  # train seeds: [0, 1e6); eval seeds: [1e6, 2e6)
WRIST_CAMERA = "gripperPOV"
ROLLED_CAMERAS = frozenset({"corner", "corner2", "corner3", "corner4"})  # xyaxes with y pointing down


# A 0.02 m goal sphere covers ~5 px of the 112 px scene view; at 0.04 m (~10 px) the point goals of
# reach / push / pick-place are visible from every seeded position.
GOAL_MARKER = 0.04


@dataclass(frozen=True)
class TaskSpec:
    """One Meta-World task as the policy sees it.

    Args:
        instruction: the language instruction (lower case, no final period).
        max_steps: policy steps per evaluation episode (about 2× the expert's longest demo).
        goal_marker: radius (m) to draw the ``goal`` site with, where the goal is a free point in
            space the policy must see; ``None`` keeps Meta-World's 0.02 m. Sites never collide, so
            this changes pixels only.
    """

    instruction: str
    max_steps: int
    goal_marker: float | None = None


TASKS: dict[str, TaskSpec] = {  # expert steps to success over 50 seeds, max: see benchmarks/metaworld_training.md
    "reach": TaskSpec("reach the red goal", 150, GOAL_MARKER),  # expert <= 73
    "push": TaskSpec("push the puck to the green goal", 150, GOAL_MARKER),  # <= 74
    "pick-place": TaskSpec("pick up the puck and place it at the blue goal", 150, GOAL_MARKER),  # <= 62
    "drawer-open": TaskSpec("open the drawer", 200),  # <= 93
    "drawer-close": TaskSpec("close the drawer", 160),  # <= 79
    "button-press-topdown": TaskSpec("push the red button down", 150),  # <= 75
    "window-open": TaskSpec("open the window", 200),  # <= 96
    "window-close": TaskSpec("close the window", 180),  # <= 88
    "door-open": TaskSpec("open the door", 240),  # <= 114
    "door-close": TaskSpec("close the door", 160),  # <= 76
}


# Suites of the evaluation runner: task ids index these tuples. "metaworld" is the task set the
# committed reference policy (src/vla_adp/assets/metaworld_policy) solves (>= 62 % each, 92 % mean);
# "metaworld_train" adds reach, which it was trained on but reaches only ~20 % of the time
# (benchmarks/metaworld_training.md); "metaworld_all" is every task above.
REFERENCE_TASKS = ("button-press-topdown", "drawer-open", "drawer-close", "window-open", "window-close")
TRAIN_TASKS = (*REFERENCE_TASKS, "reach")
SUITES: dict[str, tuple[str, ...]] = {"metaworld": REFERENCE_TASKS, "metaworld_train": TRAIN_TASKS,
                                      "metaworld_all": tuple(TASKS)}


@dataclass(frozen=True)
class SceneCamera:
    """A free MuJoCo camera (``mjvCamera``) aimed at the workspace.

    Args:
        lookat: world point at the image centre (between the objects and the goals, above the table).
        azimuth / elevation: degrees; azimuth 140 looks from the robot's right-hand side.
        distance: metres from ``lookat``; 1.1 keeps every task's objects and goals in frame.
    """

    lookat: tuple[float, float, float] = (0.0, 0.75, 0.15)
    azimuth: float = 140.0
    elevation: float = -35.0
    distance: float = 1.1

    def __post_init__(self) -> None:
        if not self.distance > 0:
            raise ValueError(f"SceneCamera.distance must be > 0, got {self.distance!r}")
        if not -90 <= self.elevation <= 90:
            raise ValueError(f"SceneCamera.elevation must be in [-90, 90] degrees, got {self.elevation!r}")


def task_name(name: str) -> str:
    """``drawer-open`` or ``drawer-open-v3`` -> ``drawer-open``; unknown names raise."""
    short = name[:-3] if name.endswith("-v3") else name
    if short not in TASKS:
        raise ValueError(f"unknown Meta-World task {name!r}; expected one of {sorted(TASKS)}")
    return short


def episode_seed(split: str, episode: int) -> int:
    """The environment seed of ``episode`` in ``split``; the two splits never share a seed."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not isinstance(episode, (int, np.integer)) or not 0 <= episode < SEED_BLOCK:
        raise ValueError(f"episode must be an int in [0, {SEED_BLOCK}), got {episode!r}")
    return SPLITS.index(split) * SEED_BLOCK + int(episode)


class FastRenderer:
    """``mujoco.Renderer`` with shadows, reflections and multisampling off, one size for all views."""

    def __init__(self, model, size: int):
        import mujoco

        self._mujoco = mujoco
        model.vis.quality.offsamples = 0  # read when the GL context is made: set before Renderer()
        self.renderer = mujoco.Renderer(model, size, size)
        flags = self.renderer.scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0

    def render(self, data, camera: str | SceneCamera) -> np.ndarray:
        """One uint8 (size, size, 3) image, the right way up."""
        cam = self._free_camera(camera) if isinstance(camera, SceneCamera) else camera
        self.renderer.update_scene(data, camera=cam)
        img = self.renderer.render()
        return rotate_180(img) if camera in ROLLED_CAMERAS else img.copy()

    def _free_camera(self, spec: SceneCamera):
        cam = self._mujoco.MjvCamera()
        cam.type = self._mujoco.mjtCamera.mjCAMERA_FREE
        cam.lookat[:] = spec.lookat
        cam.azimuth, cam.elevation, cam.distance = spec.azimuth, spec.elevation, spec.distance
        return cam

    def close(self) -> None:
        self.renderer.close()


class MetaWorldEnv:
    """One Meta-World v3 task behind the Env protocol.

    Args:
        task: task name, with or without ``-v3`` (see :data:`TASKS`).
        image_size: side of both rendered views; use the policy's input size.
        split: ``eval`` (held-out goals) or ``train`` (demonstration goals).
        max_steps: policy steps per episode; default the task's :class:`TaskSpec`.
        camera: the scene view: a :class:`SceneCamera` or a named camera of the Meta-World model.
        task_id: index of the task in its suite (logs only).
        suite: suite name written to the logs (see :data:`SUITES`).
    """

    gripper_open = -1.0  # real-time mode's hold action before the first command (-1 opens)

    def __init__(self, task: str, image_size: int = 112, split: str = "eval", max_steps: int | None = None,
                 camera: str | SceneCamera = SceneCamera(), task_id: int = 0, suite: str = "metaworld"):
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        if not isinstance(image_size, int) or image_size < 16:
            raise ValueError(f"image_size must be an int >= 16, got {image_size!r}")
        episode_seed(split, 0)  # validates the split
        self.task = task_name(task)
        self.spec = TASKS[self.task]
        self.instruction = self.spec.instruction
        self.max_steps = int(max_steps or self.spec.max_steps)
        self.task_id, self.split, self.image_size, self.camera = task_id, split, image_size, camera
        self.suite = suite
        self.env = ALL_V3_ENVIRONMENTS[f"{self.task}-v3"]()
        self._configure(self.env)
        self.renderer = FastRenderer(self.env.model, image_size)
        self._raw: np.ndarray | None = None
        self._obs: dict[str, Any] | None = None
        self.seed: int | None = None
        self._closed = False
        track(self)  # closed at exit if nobody did (no EGL tracebacks then; see envs/closing.py)

    def _configure(self, env) -> None:
        if isinstance(self.camera, str) and self.camera not in [env.model.camera(i).name for i in range(env.model.ncam)]:
            raise ValueError(f"camera {self.camera!r} is not a camera of the Meta-World model")
        # The expert needs the goal in its 39-D state; the cached observation space would clip it to 0.
        env._partially_observable = False
        env.__dict__.pop("sawyer_observation_space", None)
        env._freeze_rand_vec, env.seeded_rand_vec, env._set_task_called = False, True, True
        env.max_path_length = max(env.max_path_length, self.max_steps + 1)
        if self.spec.goal_marker is not None:
            env.model.site_size[env.model.site("goal").id, 0] = self.spec.goal_marker

    @property
    def control_hz(self) -> float:
        """Control rate: one step = ``frame_skip`` physics steps (5 × 2.5 ms = 80 Hz in v3)."""
        return 1.0 / float(self.env.dt)

    # -- Env protocol ------------------------------------------------------------------------
    def reset(self, episode: int) -> dict[str, Any]:
        """The deterministic initial observation of ``episode`` (goal drawn from its seed)."""
        self.seed = episode_seed(self.split, episode)
        self.env.seed(self.seed)
        raw, _ = self.env.reset()
        return self._observe(raw)

    def step(self, action: np.ndarray, images: bool = True) -> StepResult:
        """Apply one un-normalised action (dx, dy, dz, gripper), each clipped to [-1, 1].

        ``images=False`` renders no camera (rendering is most of a step here; sites and
        cameras never touch the physics, so the episode is the same)."""
        if self._raw is None:
            raise RuntimeError("call reset(episode) before step()")
        a = np.asarray(action, np.float64)
        if a.shape != (4,) or not np.all(np.isfinite(a)):
            raise ValueError(f"Meta-World action must be 4 finite numbers (dx, dy, dz, gripper), got {action!r}")
        raw, reward, _, truncated, info = self.env.step(np.clip(a, -1.0, 1.0).astype(np.float32))
        obs = self._observe(raw, images)
        info = {**info, "reward": float(reward), "truncated": bool(truncated)}
        return StepResult(obs, bool(info["success"]), info)

    def frame(self) -> np.ndarray:
        """Scene and wrist view side by side, as the policy saw them last."""
        if self._obs is None:
            raise RuntimeError("call reset(episode) before frame()")
        if self._obs["full_image"] is None:  # the last step ran without images
            self._observe(self._raw)
        return np.concatenate([self._obs["full_image"], self._obs["wrist_image"]], axis=1)

    def close(self) -> None:
        """Free the GL context of our renderer, then the simulator's own; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        self.renderer.close()
        self.env.close()

    # -- demonstrations ----------------------------------------------------------------------
    def expert_action(self) -> np.ndarray:
        """The scripted expert's action for the current state, clipped as the env applies it."""
        if self._raw is None:
            raise RuntimeError("call reset(episode) before expert_action()")
        if not hasattr(self, "_expert"):
            from metaworld.policies import ENV_POLICY_MAP

            self._expert = ENV_POLICY_MAP[f"{self.task}-v3"]()
        with warnings.catch_warnings():  # "Constant(s) may be too high": the env clips, and so do we
            warnings.simplefilter("ignore")
            return np.clip(np.asarray(self._expert.get_action(self._raw), np.float64), -1.0, 1.0)

    @property
    def goal(self) -> np.ndarray:
        """The episode's sampled goal/object vector (distinct per seed)."""
        return np.asarray(self.env._last_rand_vec, np.float64).copy()

    def _observe(self, raw: np.ndarray, images: bool = True) -> dict[str, Any]:
        self._raw = np.asarray(raw, np.float64)
        data = self.env.data
        self._obs = {
            "full_image": self.renderer.render(data, self.camera) if images else None,
            "wrist_image": self.renderer.render(data, WRIST_CAMERA) if images else None,
            "state": self._raw[:4].copy(),
            "instruction": self.instruction,
        }
        return self._obs


# -- the factory interface of the evaluation runner (vla_adp.eval.job.ENV_FACTORIES) ---------------
def suite_tasks(suite: str) -> list[str]:
    """Task names of ``suite``, in task-id order."""
    if suite not in SUITES:
        raise ValueError(f"unknown Meta-World suite {suite!r}; expected one of {sorted(SUITES)}")
    return list(SUITES[suite])


def suite_instructions(suite: str) -> list[str]:
    """Instructions of ``suite``'s tasks, in task-id order."""
    return [TASKS[name].instruction for name in suite_tasks(suite)]


def make_env(suite: str, task_id: int, max_steps: int | None = None, render: str = "fast",
             image_size: int = 112) -> MetaWorldEnv:
    """Task ``task_id`` of ``suite`` on held-out goals (episode e: seed 1_000_000 + e).

    ``render``: Meta-World has one renderer here, :class:`FastRenderer`, with which the reference
    policy was trained; ``faithful`` and ``fast`` both name it.
    """
    tasks = suite_tasks(suite)
    if render not in ("faithful", "fast"):
        raise ValueError(f"render must be 'faithful' or 'fast', got {render!r}")
    if not isinstance(task_id, int) or not 0 <= task_id < len(tasks):
        raise ValueError(f"{suite} has tasks 0..{len(tasks) - 1}, got {task_id!r}")
    return MetaWorldEnv(tasks[task_id], image_size=image_size, split="eval", max_steps=max_steps,
                        task_id=task_id, suite=suite)
