"""Scripted-expert demonstrations (Meta-World v3, LIBERO), written as one ``.npz`` shard per episode.

    DIR/meta.json                      simulator, image size, tasks, expert success and seeds per task
    DIR/<task>/episode_<seed>.npz      full_image, wrist_image (T, H, W, 3) uint8; state (T, S),
                                       actions (T, A) float32; instruction, task, seed

Meta-World: episode ``i`` of a task is training-split episode ``i`` of
:class:`~vla_adp.envs.metaworld.MetaWorldEnv` (seed ``i``). LIBERO: a task is named
``<suite>-<task_id>`` and episode ``i`` starts from a fresh placement sampled under seed
``SAMPLED_SEED_BASE + i`` (:class:`~vla_adp.envs.libero.LiberoConfig` ``init="sampled"``), never from
one of the suite's evaluation initial states. Frames go through the evaluation's own observation
pipeline at the policy's size. A dataset is a pure function of (simulator, tasks, demos, first
episode, image size, camera/renderer): the same command writes the same files, whatever the worker count. Only successful episodes are kept;
where the expert fails, the next unused episodes are tried (at most ``max_attempts`` in all). A
shard that already exists is kept, so an interrupted collection resumes without repeating work.
The frame at step ``t`` is what the policy would see before the expert's action ``t``; the last
action of a demo is the one that produced success.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vla_adp.envs.metaworld import SceneCamera, task_name

SIMS = ("metaworld", "libero")
ATTEMPTS_FILE = "attempts.jsonl"  # one line per episode tried: task, episode, success, steps
SHARD_KEYS = ("full_image", "wrist_image", "state", "actions")


@dataclass(frozen=True)
class CollectConfig:
    """What a collection writes.

    Args:
        tasks: Meta-World task names (``drawer-open``, ...) or LIBERO tasks ``<suite>-<task_id>``
            (``libero_object-3``).
        demos: successful demonstrations to keep per task.
        out: output folder (``data/`` is git-ignored).
        image_size: side of both views; the policy's input size (LIBERO renders at this size too).
        first_episode: training-split episode (= seed) of the first attempt.
        max_attempts: episodes tried per task at most (default ``2 · demos``).
        workers: processes rendering in parallel.
        camera: Meta-World's scene view.
        sim: ``metaworld`` or ``libero``.
        render: LIBERO renderer (``fast`` or ``faithful``, see :mod:`vla_adp.envs.libero`).
    """

    tasks: tuple[str, ...]
    demos: int
    out: str
    image_size: int = 112
    first_episode: int = 0
    max_attempts: int | None = None
    workers: int = 1
    camera: SceneCamera = SceneCamera()
    sim: str = "metaworld"
    render: str = "fast"

    def __post_init__(self) -> None:
        if self.sim not in SIMS:
            raise ValueError(f"CollectConfig.sim must be one of {SIMS}, got {self.sim!r}")
        if not self.tasks:
            raise ValueError(f"CollectConfig.tasks is empty; name at least one {self.sim} task")
        canon = task_name if self.sim == "metaworld" else lambda t: libero_task_key(*parse_libero_task(t))
        object.__setattr__(self, "tasks", tuple(canon(t) for t in self.tasks))
        if not isinstance(self.demos, int) or self.demos < 1:
            raise ValueError(f"CollectConfig.demos must be a positive int, got {self.demos!r}")
        if self.max_attempts is not None and self.max_attempts < self.demos:
            raise ValueError(f"max_attempts {self.max_attempts!r} is smaller than demos {self.demos!r}")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"CollectConfig.workers must be a positive int, got {self.workers!r}")
        if not isinstance(self.first_episode, int) or self.first_episode < 0:
            raise ValueError(f"CollectConfig.first_episode must be an int >= 0, got {self.first_episode!r}")

    @property
    def attempts(self) -> int:
        return self.max_attempts or 2 * self.demos


def libero_task_key(suite: str, task_id: int) -> str:
    return f"{suite}-{task_id}"


def parse_libero_task(key: str) -> tuple[str, int]:
    """``libero_object-3`` -> (``libero_object``, 3)."""
    from vla_adp.envs.libero import SUITES

    suite, _, tid = str(key).rpartition("-")
    if suite not in SUITES or not tid.isdigit():
        raise ValueError(f"LIBERO task {key!r} is not '<suite>-<task_id>' with a suite of {SUITES}")
    return suite, int(tid)


def shard_path(out: str | Path, task: str, episode: int) -> Path:
    return Path(out) / task / f"episode_{episode:06d}.npz"


# -- one episode -------------------------------------------------------------------------------
def expert_episode(env, episode: int, rendered: bool = False) -> tuple[dict[str, np.ndarray], bool]:
    """Run the scripted expert from ``episode``'s initial state until success or ``max_steps``.

    ``rendered``: record the cameras as rendered (LIBERO: rotated 180°, before the JPEG + resize
    pipeline, which :func:`vla_adp.train.dataset.load_demos` applies when loading) instead of the
    observation's images."""
    obs = env.reset(episode)
    rows: dict[str, list] = {k: [] for k in SHARD_KEYS}
    for _ in range(env.max_steps):
        action = env.expert_action()
        for k, v in (rendered_views(env.raw) if rendered else {k: obs[k] for k in ("full_image", "wrist_image")}).items():
            rows[k].append(v)
        rows["state"].append(obs["state"])
        rows["actions"].append(action)
        result = env.step(action)  # every step renders: every step is a frame
        if result.success:
            return _stack(rows), True
        obs = result.obs
    return _stack(rows), False


def rendered_views(raw: dict) -> dict[str, np.ndarray]:
    """LIBERO's two cameras as rendered, rotated upright as the evaluation does first."""
    from vla_adp.model import transforms as T

    return {"full_image": T.rotate_180(raw["agentview_image"]), "wrist_image": T.rotate_180(raw["robot0_eye_in_hand_image"])}


def _stack(rows: dict[str, list]) -> dict[str, np.ndarray]:
    out = {k: np.stack(v) for k, v in rows.items()}
    out["state"] = out["state"].astype(np.float32)
    out["actions"] = out["actions"].astype(np.float32)
    return out


def write_shard(path: Path, arrays: dict[str, np.ndarray], instruction: str, task: str, seed: int) -> None:
    """Write atomically (temporary name, then rename): a killed run never leaves half a shard."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez_compressed(tmp, **arrays, instruction=np.asarray(instruction), task=np.asarray(task),
                        seed=np.asarray(seed, np.int64))
    os.replace(tmp, path)


def read_shard(path: str | Path) -> dict[str, Any]:
    """One demo: arrays plus ``instruction``/``task`` (str) and ``seed`` (int); checks shapes."""
    try:
        with np.load(path, allow_pickle=False) as z:
            demo = {k: z[k] for k in z.files}
    except Exception as e:
        raise ValueError(f"{path}: not a readable demonstration shard ({type(e).__name__}: {e})") from None
    missing = [k for k in (*SHARD_KEYS, "instruction", "task", "seed") if k not in demo]
    if missing:
        raise ValueError(f"{path}: demonstration shard lacks {missing}")
    lengths = {k: len(demo[k]) for k in SHARD_KEYS}
    if len(set(lengths.values())) != 1 or demo["actions"].ndim != 2 or demo["state"].ndim != 2:
        raise ValueError(f"{path}: inconsistent shard shapes {({k: demo[k].shape for k in SHARD_KEYS})}")
    demo["instruction"], demo["task"], demo["seed"] = str(demo["instruction"]), str(demo["task"]), int(demo["seed"])
    return demo


# -- workers ---------------------------------------------------------------------------------
_ENVS: dict[str, Any] = {}


def demo_env(cfg: CollectConfig, task: str):
    """The training-split environment of ``task`` (expert included) at the policy's image size."""
    if cfg.sim == "metaworld":
        from vla_adp.envs.metaworld import MetaWorldEnv

        return MetaWorldEnv(task, image_size=cfg.image_size, split="train", camera=cfg.camera)
    from vla_adp.envs.libero import LiberoConfig, LiberoEnv

    suite, task_id = parse_libero_task(task)
    return LiberoEnv(LiberoConfig(suite, task_id, camera_size=cfg.image_size, image_size=cfg.image_size,
                                  render=cfg.render, init="sampled"))


def _episode_job(job: tuple[CollectConfig, str, int]) -> tuple[str, int, bool, int]:
    """Worker: one (task, episode); returns (task, episode, success, steps). Envs are cached per task."""
    cfg, task, episode = job
    path = shard_path(cfg.out, task, episode)
    if path.is_file():
        return task, episode, True, len(read_shard(path)["actions"])
    if task not in _ENVS:
        for old in _ENVS.values():  # one simulator per worker: LIBERO scenes hold ~1 GB each
            old.close()
        _ENVS.clear()
        _ENVS[task] = demo_env(cfg, task)
    env = _ENVS[task]
    try:
        arrays, ok = expert_episode(env, episode, rendered=cfg.sim == "libero")
    except ValueError as e:  # a goal the expert cannot read: a failed attempt, named in the log
        print(f"{task} episode {episode}: {e}", file=sys.stderr)
        return task, episode, False, 0
    if ok:
        write_shard(path, arrays, env.instruction, task, episode)
    return task, episode, ok, len(arrays["actions"])


def _run_jobs(jobs: list, workers: int):
    if workers == 1:
        yield from map(_episode_job, jobs)
        return
    with mp.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap_unordered(_episode_job, jobs)


def collect(cfg: CollectConfig, progress=None) -> dict[str, Any]:
    """Collect ``cfg.demos`` successful demos per task; returns (and writes) ``meta.json``.

    Args:
        progress: optional callable ``(task, episode, success, steps)`` after every episode.
    """
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    known = read_attempts(out)  # failures of earlier runs are not tried again
    tried = {t: {} for t in cfg.tasks}  # task -> {episode: (success, steps)}
    next_ep = {t: cfg.first_episode for t in cfg.tasks}
    while True:
        jobs = []
        for t in cfg.tasks:
            kept = sum(ok for ok, _ in tried[t].values())
            budget = cfg.first_episode + cfg.attempts - next_ep[t]
            n = min(cfg.demos - kept, budget)
            jobs += [(cfg, t, e) for e in range(next_ep[t], next_ep[t] + n)]
            next_ep[t] += max(n, 0)
        if not jobs:
            break
        failed_before = [j for j in jobs if known.get((j[1], j[2]), (True, 0))[0] is False]
        for _, task, episode in failed_before:
            tried[task][episode] = known[(task, episode)]
        todo = [j for j in jobs if j not in failed_before]
        with open(out / ATTEMPTS_FILE, "a") as log:
            for task, episode, ok, steps in _run_jobs(todo, cfg.workers):
                tried[task][episode] = (ok, steps)
                if (task, episode) not in known:
                    log.write(json.dumps({"task": task, "episode": episode, "success": ok, "steps": steps}) + "\n")
                    log.flush()
                if progress is not None:
                    progress(task, episode, ok, steps)
    meta = summarize(cfg, tried, time.time() - t0)
    previous = out / "meta.json"
    if previous.is_file():  # another collection into the same folder (other tasks): keep its tasks
        try:
            before = json.loads(previous.read_text())
            if before.get("sim", "metaworld") == meta["sim"]:
                meta["tasks"] = {**before.get("tasks", {}), **meta["tasks"]}
        except (ValueError, AttributeError):
            pass
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


def read_attempts(out: Path) -> dict[tuple[str, int], tuple[bool, int]]:
    """Episodes tried by earlier runs on ``out`` (a torn last line from a killed run is skipped)."""
    path = Path(out) / ATTEMPTS_FILE
    known: dict[tuple[str, int], tuple[bool, int]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
                known[(str(row["task"]), int(row["episode"]))] = (bool(row["success"]), int(row["steps"]))
            except (ValueError, KeyError, TypeError):
                continue
    return known


def instruction_of(cfg: CollectConfig, task: str) -> str:
    if cfg.sim == "metaworld":
        from vla_adp.envs.metaworld import TASKS

        return TASKS[task].instruction
    from vla_adp.envs.libero import suite_tasks

    suite, task_id = parse_libero_task(task)
    return suite_tasks(suite)[task_id]


def summarize(cfg: CollectConfig, tried: dict, seconds: float) -> dict[str, Any]:
    tasks = {}
    for t, eps in tried.items():
        kept = sorted(e for e, (ok, _) in eps.items() if ok)
        lengths = [eps[e][1] for e in kept]
        tasks[t] = {"instruction": instruction_of(cfg, t), "attempts": len(eps), "kept": len(kept),
                    "expert_success": len(kept) / max(1, len(eps)), "seeds": kept,
                    "failed_seeds": sorted(e for e, (ok, _) in eps.items() if not ok),
                    "steps_mean": float(np.mean(lengths)) if lengths else 0.0,
                    "steps_max": int(max(lengths, default=0)), "frames": int(sum(lengths))}
    cfg_dict = asdict(cfg)
    if cfg.sim == "metaworld":
        cfg_dict["camera"] = asdict(cfg.camera)
    else:
        cfg_dict.pop("camera")
    if cfg.sim == "metaworld":
        from vla_adp.envs.metaworld import SEED_BLOCK

        seeds = {"train_seed_range": [0, SEED_BLOCK], "eval_seed_range": [SEED_BLOCK, 2 * SEED_BLOCK]}
    else:
        from vla_adp.envs.libero import SAMPLED_SEED_BASE

        seeds = {"placement_seed": f"{SAMPLED_SEED_BASE} + episode (env.seed before env.reset)",
                 "eval_initial_states": "never used (the suites' init files are read only by evaluation)",
                 "images": "rendered"}  # rotated only: load_demos applies the JPEG + resize pipeline
    return {"suite": cfg.sim, "sim": cfg.sim, "split": "train", **seeds, "config": cfg_dict,
            "wall_seconds": round(seconds, 1), "tasks": tasks}
