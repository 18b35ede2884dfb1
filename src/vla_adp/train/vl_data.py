"""Scene-text frames for the vision-language stage: LIBERO placements, both cameras, simulator text.

    vla-adp collect libero-vl --suite libero_object,libero_spatial --placements 50 --out data/libero_vl

    DIR/meta.json                        suites, tasks, placements, seeds, image size, patch grid, timing
    DIR/<task>/placement_<i>.npz         full_image, wrist_image (H, W, 3) uint8 as rendered (upright),
                                         state (8,), instruction, task, seed, text (JSON: facts, pairs)

Placement ``i`` of a task is :class:`~vla_adp.envs.libero.LiberoEnv` episode ``VL_EPISODE_BASE + i``
with ``init="sampled"``: the task's own placement samplers under seed
``SAMPLED_SEED_BASE + VL_EPISODE_BASE + i`` = 200000 + i — never one of the suites' evaluation initial
states, and never a placement of the demonstrations (seeds 100000 + episode, episode < 100000). The
frame is the observation after LIBERO's 10 settle steps, rendered by the demonstration collector's
code path (fast renderer, cameras at the policy's size, rotated upright; the loader applies the
evaluation's JPEG + resize pipeline), with the scene camera's geom segmentation giving each object's
pixels (:mod:`vla_adp.envs.libero_scene_text`). Resets re-sample placements in the loaded model
(``LiberoConfig.reload_model=False``, ~10× faster): the placement a rebuilt model draws for the seed,
up to float residue of the previous placement (~1e-12 m; a few pixels differ by a few levels).

Deterministic (the same command writes the same bytes) and resumable (a shard that exists is kept).
Because of that residue, the frames a resumed run writes after its first one may differ from an
uninterrupted run's in a few pixels; the text (object positions rounded to words and grid cells)
is the same unless a centroid sits on a cell border.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

VL_EPISODE_BASE = 100_000  # LiberoEnv episode of placement 0 (seed 200000 with SAMPLED_SEED_BASE 100000)


@dataclass(frozen=True)
class VLCollectConfig:
    """What a scene-text collection writes.

    Args:
        tasks: LIBERO tasks ``<suite>-<task_id>``.
        placements: frames (fresh placements) per task.
        out: output folder (``data/`` is git-ignored).
        image_size: camera and policy side (128 for the LIBERO reference policy).
        grid: patches per image side of the policy (``image_size / patch``: 8).
        first_placement: index of the first placement.
        render: ``fast`` or ``faithful``.
    """

    tasks: tuple[str, ...]
    placements: int
    out: str
    image_size: int = 128
    grid: int = 8
    first_placement: int = 0
    render: str = "fast"

    def __post_init__(self) -> None:
        from vla_adp.train.demos import libero_task_key, parse_libero_task

        if not self.tasks:
            raise ValueError("VLCollectConfig.tasks is empty; name at least one LIBERO task '<suite>-<id>'")
        object.__setattr__(self, "tasks", tuple(libero_task_key(*parse_libero_task(t)) for t in self.tasks))
        for name in ("placements", "image_size", "grid"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"VLCollectConfig.{name} must be a positive int, got {value!r}")
        if not isinstance(self.first_placement, int) or not 0 <= self.first_placement < VL_EPISODE_BASE:
            raise ValueError(f"VLCollectConfig.first_placement must be an int in [0, {VL_EPISODE_BASE}), "
                             f"got {self.first_placement!r}")
        if self.image_size % self.grid:
            raise ValueError(f"image_size {self.image_size!r} is not a multiple of grid {self.grid!r}")


def shard_path(out: str | Path, task: str, placement: int) -> Path:
    return Path(out) / task / f"placement_{placement:06d}.npz"


# -- one frame -------------------------------------------------------------------------------
def object_masks(sim_env, segmentation: np.ndarray) -> dict[str, np.ndarray]:
    """Simulator name -> bool mask (upright image) of every movable object and fixture."""
    from vla_adp.envs.libero_expert import _subtree
    from vla_adp.model import transforms as T

    model = sim_env.sim.model._model
    seg = T.rotate_180(segmentation[..., 0])
    out = {}
    for key, obj in {**sim_env.objects_dict, **getattr(sim_env, "fixtures_dict", {})}.items():
        bodies = _subtree(model, sim_env.sim.model.body_name2id(obj.root_body))
        geoms = [g for g in range(model.ngeom) if model.geom_bodyid[g] in bodies]
        out[key] = np.isin(seg, geoms)
    return out


def suite_goals(suite: str) -> list[tuple[str, str]]:
    """(goal object's simulator name, instruction) of every task of the suite (BDDL, no simulator)."""
    from vla_adp.envs.libero import suite_tasks
    from vla_adp.envs.libero_expert import task_goal

    out = []
    for t, instruction in enumerate(suite_tasks(suite)):
        goal, _ = task_goal(suite, t)
        out.append((goal[0][1] if goal and len(goal[0]) == 3 else "", instruction))
    return out


def frame(env, placement: int, goals: list[tuple[str, str]], grid: int) -> dict[str, Any]:
    """The arrays and text of one placement (``env``: a LiberoEnv with segmentation)."""
    from vla_adp.envs.libero_expert import goal_pair
    from vla_adp.envs.libero_scene_text import facts_json, object_facts, scene_names, scene_text
    from vla_adp.model import transforms as T

    obs = env.reset(VL_EPISODE_BASE + placement)
    raw, sim = env.raw, env.sim
    full = T.rotate_180(raw["agentview_image"])
    masks = object_masks(sim, raw["agentview_segmentation_element"])
    try:
        own_goal = goal_pair(sim)[1]
    except ValueError:
        own_goal = ""
    names, instructions = scene_names(sorted(masks), goals, own_goal, env.instruction)
    facts = object_facts(masks, full, names, instructions)
    text = {"facts": facts_json(facts), "pairs": scene_text(facts, grid), "grid": grid}
    return {"full_image": full, "wrist_image": T.rotate_180(raw["robot0_eye_in_hand_image"]),
            "state": obs["state"].astype(np.float32), "text": json.dumps(text)}


def write_frame(path: Path, arrays: dict[str, Any], instruction: str, task: str, seed: int) -> None:
    """Atomically (temporary name, then rename): a killed run never leaves half a shard."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez_compressed(tmp, full_image=arrays["full_image"], wrist_image=arrays["wrist_image"],
                        state=arrays["state"], text=np.asarray(arrays["text"]), instruction=np.asarray(instruction),
                        task=np.asarray(task), seed=np.asarray(seed, np.int64))
    os.replace(tmp, path)


def collect_vl(cfg: VLCollectConfig, progress=None) -> dict[str, Any]:
    """Write every missing placement of every task; returns (and writes) ``meta.json``.

    Args:
        progress: optional callable ``(task, placement, written)`` after every placement.
    """
    from vla_adp.envs.libero import SAMPLED_SEED_BASE, LiberoConfig, LiberoEnv
    from vla_adp.train.demos import parse_libero_task

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t0, written, goals = time.time(), 0, {}
    for task in cfg.tasks:
        suite, task_id = parse_libero_task(task)
        todo = [i for i in range(cfg.first_placement, cfg.first_placement + cfg.placements)
                if not shard_path(out, task, i).is_file()]
        if not todo:
            continue
        if suite not in goals:
            goals[suite] = suite_goals(suite)
        env = LiberoEnv(LiberoConfig(suite, task_id, camera_size=cfg.image_size, image_size=cfg.image_size,
                                     render=cfg.render, init="sampled", segmentation=True, reload_model=False))
        try:
            for i in todo:
                arrays = frame(env, i, goals[suite], cfg.grid)
                write_frame(shard_path(out, task, i), arrays, env.instruction, task,
                            SAMPLED_SEED_BASE + VL_EPISODE_BASE + i)
                written += 1
                if progress is not None:
                    progress(task, i, True)
        finally:
            env.close()
    meta = {"sim": "libero", "kind": "scene_text", "config": asdict(cfg),
            "placement_seed": "200000 + placement (LiberoEnv episode 100000 + placement, init='sampled')",
            "eval_initial_states": "never used (the suites' init files are read only by evaluation)",
            "images": "rendered", "written_this_run": written, "wall_seconds": round(time.time() - t0, 1),
            "frames": {t: len(list((out / t).glob("placement_*.npz"))) for t in cfg.tasks}}
    previous = out / "meta.json"
    if previous.is_file():  # an earlier run on other tasks: keep its counts
        try:
            meta["frames"] = {**json.loads(previous.read_text()).get("frames", {}), **meta["frames"]}
        except (ValueError, AttributeError):
            pass
    previous.write_text(json.dumps(meta, indent=2))
    return meta


# -- reading ---------------------------------------------------------------------------------
@dataclass
class VLFrames:
    """Every frame of a scene-text dataset.

    Args:
        full_image / wrist_image: (N, S, S, 3) uint8 through the evaluation's pipeline at size S.
        state: (N, 8) float32.
        pairs: per frame, its (form, prompt, answer) triples.
        tasks / seeds / instructions: per frame.
    """

    full_image: np.ndarray
    wrist_image: np.ndarray
    state: np.ndarray
    pairs: list[list[tuple[str, str, str]]]
    tasks: list[str]
    seeds: list[int]
    instructions: list[str]

    def __len__(self) -> int:
        return len(self.state)


def read_frame(path: str | Path) -> dict[str, Any]:
    try:
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
        text = json.loads(str(d["text"]))
        pairs = [tuple(map(str, p)) for p in text["pairs"]]
    except Exception as e:
        raise ValueError(f"{path}: not a readable scene-text frame ({type(e).__name__}: {e})") from None
    if any(len(p) != 3 for p in pairs):
        raise ValueError(f"{path}: text pairs must be (form, prompt, answer) triples")
    return {"full_image": d["full_image"], "wrist_image": d["wrist_image"], "state": d["state"], "pairs": pairs,
            "task": str(d["task"]), "seed": int(d["seed"]), "instruction": str(d["instruction"])}


def load_vl(data_dir: str | Path, image_size: int) -> VLFrames:
    """Read every frame, passing both views through :func:`~vla_adp.model.transforms.resize_for_policy`."""
    from vla_adp.model import transforms as T

    root = Path(data_dir)
    files = sorted(p for p in root.glob("*/placement_*.npz") if not p.name.endswith(".tmp.npz"))
    if not files:
        raise ValueError(f"{root}: no scene-text frames (<task>/placement_*.npz); write them with "
                         "`vla-adp collect libero-vl --out {root}`")
    rows = [read_frame(p) for p in files]
    return VLFrames(np.stack([T.resize_for_policy(r["full_image"], image_size) for r in rows]),
                    np.stack([T.resize_for_policy(r["wrist_image"], image_size) for r in rows]),
                    np.stack([r["state"] for r in rows]).astype(np.float32), [r["pairs"] for r in rows],
                    [r["task"] for r in rows], [r["seed"] for r in rows], [r["instruction"] for r in rows])
