"""Scripted-expert demonstrations of Meta-World v3, written as one ``.npz`` shard per episode.

    DIR/meta.json                      image size, camera, tasks, expert success and seeds per task
    DIR/<task>/episode_<seed>.npz      full_image, wrist_image (T, H, W, 3) uint8; state (T, 4),
                                       actions (T, 4) float32; instruction, task, seed

Episode ``i`` of a task is training-split episode ``i`` of :class:`~vla_adp.envs.metaworld.MetaWorldEnv`
(seed ``i``), so a dataset is a pure function of (tasks, demos, first episode, image size, camera):
the same command writes the same files, whatever the worker count. Only successful episodes are kept;
where the expert fails, the next unused episodes are tried (at most ``max_attempts`` in all). A
shard that already exists is kept, so an interrupted collection resumes without repeating work.
The frame at step ``t`` is what the policy would see before the expert's action ``t``; the last
action of a demo is the one that produced success.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vla_adp.envs.metaworld import SceneCamera, task_name

SHARD_KEYS = ("full_image", "wrist_image", "state", "actions")


@dataclass(frozen=True)
class CollectConfig:
    """What a collection writes.

    Args:
        tasks: Meta-World task names (``drawer-open``, ...).
        demos: successful demonstrations to keep per task.
        out: output folder (``data/`` is git-ignored).
        image_size: side of both views; the policy's input size.
        first_episode: training-split episode (= seed) of the first attempt.
        max_attempts: episodes tried per task at most (default ``2 · demos``).
        workers: processes rendering in parallel.
    """

    tasks: tuple[str, ...]
    demos: int
    out: str
    image_size: int = 112
    first_episode: int = 0
    max_attempts: int | None = None
    workers: int = 1
    camera: SceneCamera = SceneCamera()

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("CollectConfig.tasks is empty; name at least one Meta-World task")
        object.__setattr__(self, "tasks", tuple(task_name(t) for t in self.tasks))
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


def shard_path(out: str | Path, task: str, episode: int) -> Path:
    return Path(out) / task / f"episode_{episode:06d}.npz"


# -- one episode -------------------------------------------------------------------------------
def expert_episode(env, episode: int) -> tuple[dict[str, np.ndarray], bool]:
    """Run the scripted expert from ``episode``'s initial state until success or ``max_steps``."""
    obs = env.reset(episode)
    rows: dict[str, list] = {k: [] for k in SHARD_KEYS}
    for _ in range(env.max_steps):
        action = env.expert_action()
        for k in ("full_image", "wrist_image", "state"):
            rows[k].append(obs[k])
        rows["actions"].append(action)
        result = env.step(action)
        if result.success:
            return _stack(rows), True
        obs = result.obs
    return _stack(rows), False


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
    if len(set(lengths.values())) != 1 or demo["actions"].shape[1:] != (4,) or demo["state"].shape[1:] != (4,):
        raise ValueError(f"{path}: inconsistent shard shapes {({k: demo[k].shape for k in SHARD_KEYS})}")
    demo["instruction"], demo["task"], demo["seed"] = str(demo["instruction"]), str(demo["task"]), int(demo["seed"])
    return demo


# -- workers ---------------------------------------------------------------------------------
_ENVS: dict[str, Any] = {}


def _episode_job(job: tuple[str, int, int, SceneCamera, str]) -> tuple[str, int, bool, int]:
    """Worker: one (task, episode); returns (task, episode, success, steps). Envs are cached per task."""
    from vla_adp.envs.metaworld import MetaWorldEnv

    task, episode, size, camera, out = job
    path = shard_path(out, task, episode)
    if path.is_file():
        return task, episode, True, len(read_shard(path)["actions"])
    if task not in _ENVS:
        _ENVS[task] = MetaWorldEnv(task, image_size=size, split="train", camera=camera)
    env = _ENVS[task]
    arrays, ok = expert_episode(env, episode)
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
    tried = {t: {} for t in cfg.tasks}  # task -> {episode: (success, steps)}
    next_ep = {t: cfg.first_episode for t in cfg.tasks}
    while True:
        jobs = []
        for t in cfg.tasks:
            kept = sum(ok for ok, _ in tried[t].values())
            budget = cfg.first_episode + cfg.attempts - next_ep[t]
            n = min(cfg.demos - kept, budget)
            jobs += [(t, e, cfg.image_size, cfg.camera, str(out)) for e in range(next_ep[t], next_ep[t] + n)]
            next_ep[t] += max(n, 0)
        if not jobs:
            break
        for task, episode, ok, steps in _run_jobs(jobs, cfg.workers):
            tried[task][episode] = (ok, steps)
            if progress is not None:
                progress(task, episode, ok, steps)
    meta = summarize(cfg, tried, time.time() - t0)
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


def summarize(cfg: CollectConfig, tried: dict, seconds: float) -> dict[str, Any]:
    from vla_adp.envs.metaworld import SEED_BLOCK, TASKS

    tasks = {}
    for t, eps in tried.items():
        kept = sorted(e for e, (ok, _) in eps.items() if ok)
        lengths = [eps[e][1] for e in kept]
        tasks[t] = {"instruction": TASKS[t].instruction, "attempts": len(eps), "kept": len(kept),
                    "expert_success": len(kept) / max(1, len(eps)), "seeds": kept,
                    "failed_seeds": sorted(e for e, (ok, _) in eps.items() if not ok),
                    "steps_mean": float(np.mean(lengths)) if lengths else 0.0,
                    "steps_max": int(max(lengths, default=0)), "frames": int(sum(lengths))}
    cfg_dict = asdict(cfg)
    cfg_dict["camera"] = asdict(cfg.camera)
    return {"suite": "metaworld", "split": "train", "train_seed_range": [0, SEED_BLOCK],
            "eval_seed_range": [SEED_BLOCK, 2 * SEED_BLOCK], "config": cfg_dict,
            "wall_seconds": round(seconds, 1), "tasks": tasks}
