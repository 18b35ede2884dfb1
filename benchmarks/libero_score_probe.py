"""Does ADP's layer-0 text→vision score see the instruction on the LIBERO reference policy?
(the Meta-World version is ``benchmarks/metaworld_score_probe.py``.)

For the first observation of official initial states of every task of LIBERO-Object and
LIBERO-Spatial, the policy with each pruner forced to prune (static schedule, original positions)
reports the kept patches of the scene camera, and the simulator's segmentation says which patches
show the task's target object (the first argument of its BDDL goal: the named grocery, or the named
bowl). Per ratio ρ the script reports:

* **target kept**: share of the target object's patches that stay (a patch is the target's when at
  least ``--min-share`` of its pixels are), for ADP, inverse and uniformly random sets of the same
  size (averaged over ``--draws`` draws);
* **target kept under another instruction**: the same share for ADP when the image comes with each
  other task's instruction of the suite (grounding: naming the object should keep more of it);
* **instruction sensitivity**: Jaccard overlap of ADP's kept set for the same image under its own
  instruction and under each other task's instruction of the suite (1.0 = the text does not matter).

``--checkpoint`` takes several policies; they are probed on the same frames (one table row per
policy, suite, scoring layer and ρ). ``--layer`` scores at other decoder layers than 0 (ADP's
``qk_layer``: Φ from layer ℓ's input, the cut there; the kept set is the same one the probe pass
of the reference would cut at layer 0, up to the proprio token it leaves out).

    PYTHONPATH=src MUJOCO_GL=egl python benchmarks/libero_score_probe.py --episodes 3 --keep 0.3 0.5
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

from vla_adp.commands.common import LIBERO_POLICY
from vla_adp.envs.libero import WAIT_ACTION, observation, suite_tasks
from vla_adp.envs.libero_expert import _subtree, goal_pair
from vla_adp.eval.job import checkpoint_hints
from vla_adp.model import transforms as T
from vla_adp.policy import Policy
from vla_adp.pruning.registry import build_pruner

FORCED = {"gate": {"schedule": "static", "limit_consecutive": False}, "positions": "original"}
SUITES = ("libero_object", "libero_spatial")


def scene(suite: str, task_id: int, camera: int, render: str):
    """An OffScreenRenderEnv of the task with geom-id segmentation of every camera."""
    from vla_adp.envs.libero import _libero, make_render_fast

    benchmark, get_libero_path, OffScreenRenderEnv = _libero()
    s = benchmark.get_benchmark_dict()[suite]()
    task = s.get_task(task_id)
    env = OffScreenRenderEnv(bddl_file_name=os.path.join(get_libero_path("bddl_files"), task.problem_folder,
                                                         task.bddl_file),
                             camera_heights=camera, camera_widths=camera, camera_segmentations="element")
    return env, s.get_task_init_states(task_id), task.language, make_render_fast if render == "fast" else None


def first_frame(env, state, fast) -> dict:
    env.seed(0)
    env.reset()
    if fast:
        fast(env)
    raw = env.set_init_state(state)
    for _ in range(10):
        raw, _, _, _ = env.step(list(WAIT_ACTION))
    return raw


def target_mask(raw: dict, sim_env) -> np.ndarray:
    """Scene-camera pixels (upright image) that show the goal's object."""
    _, obj, _ = goal_pair(sim_env)
    model = sim_env.sim.model._model
    root = sim_env.sim.model.body_name2id(sim_env.objects_dict[obj].root_body)
    geoms = [g for g in range(model.ngeom) if model.geom_bodyid[g] in _subtree(model, root)]
    return T.rotate_180(np.isin(raw["agentview_segmentation_element"][..., 0], geoms))


def target_patches(mask: np.ndarray, side: int, min_share: float, crop: bool) -> set[int]:
    """Patches (row-major) where the object covers ``min_share`` of the pixels the policy sees:
    of the center crop where the checkpoint center-crops (``Policy.center_crop``)."""
    share = mask.astype(np.float32)
    if crop:
        share = T.crop_and_resize(share[..., None], T.center_crop_box(), share.shape[0])[..., 0]
    h = share.shape[0] // side
    share = share[: side * h, : side * h].reshape(side, h, side, h).mean(axis=(1, 3))
    return {int(i) for i in np.flatnonzero(share.reshape(-1) >= min_share)}


def kept_scene(policy: Policy, obs: dict, instruction: str) -> set[int]:
    policy.reset()
    return set(policy.infer({**obs, "instruction": instruction})["info"]["kept_indices"][0])


def frames_of(suite: str, episodes: int, camera: int, render: str, size: int):
    """(observation, target pixel mask, task id) for the first frame of each official state."""
    frames = []
    for t in range(len(suite_tasks(suite))):
        env, states, language, fast = scene(suite, t, camera, render)
        try:
            for e in range(episodes):
                raw = first_frame(env, states[e], fast)
                frames.append((observation(raw, language, size), target_mask(raw, env.env), t))
        finally:
            env.close()
    return frames


def probe_row(base: Policy, layer: int, keep: float, frames: list, instructions: list[str], n: int,
              rng: np.random.Generator, draws: int, min_share: float) -> str:
    """One table row's cells after checkpoint, suite, layer and ρ (see the module docstring)."""
    side = int(round(n ** 0.5))
    frames = [(obs, target_patches(mask, side, min_share, base.center_crop), t)
              for obs, mask, t in frames]
    adp = Policy(base.ckpt, pruner=build_pruner("adp", keep, layer=layer, **FORCED))
    inv = Policy(base.ckpt, pruner=build_pruner("inverse", keep, layer=layer, **FORCED))
    share = {"adp": [], "other": [], "inverse": [], "random": []}
    jac = []
    for obs, target, t in frames:
        own = kept_scene(adp, obs, instructions[t])
        k = len(own)
        others = [kept_scene(adp, obs, other) for u, other in enumerate(instructions) if u != t]
        if target:
            share["adp"].append(len(own & target) / len(target))
            share["other"].append(np.mean([len(o & target) / len(target) for o in others]))
            share["inverse"].append(len(kept_scene(inv, obs, instructions[t]) & target) / len(target))
            share["random"].append(np.mean([len(set(rng.choice(n, k, replace=False)) & target) / len(target)
                                            for _ in range(draws)]))
        jac += [len(own & o) / len(own | o) for o in others]
    sizes = [len(x[1]) for x in frames]
    pct = {key: f"{100 * np.mean(v):.0f} %" for key, v in share.items()}
    return (f"{len(frames)} | {np.mean(sizes):.1f} | {pct['adp']} | {pct['other']} | {pct['inverse']} | "
            f"{pct['random']} | {np.mean(jac):.2f} |")


def probe(args) -> list[str]:
    hints = checkpoint_hints(args.checkpoint[0])
    camera, render = int(hints.get("camera_size", 256)), hints.get("render", "faithful")
    policies = {c: Policy.load(c, dtype=torch.float32) for c in args.checkpoint}
    shapes = {(p.model.args.image_size, p.model.args.patches_per_image) for p in policies.values()}
    if len(shapes) != 1:
        raise ValueError(f"--checkpoint: the policies disagree on image size / patches: {sorted(shapes)}")
    (size, n), = shapes
    lines = ["| checkpoint | suite | layer | ρ | images | target patches / image | target kept: ADP | "
             "ADP, another task's instruction | inverse | random | Jaccard ADP own vs other instruction |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for suite in args.suite:
        instructions = suite_tasks(suite)
        frames = frames_of(suite, args.episodes, camera, render, size)
        for name, base in policies.items():
            for layer in args.layer:
                rng = np.random.default_rng(0)
                for keep in args.keep:
                    lines.append(f"| {name} | {suite} | {layer} | {keep} | "
                                 + probe_row(base, layer, keep, frames, instructions, n, rng, args.draws,
                                               args.min_share))
                    print(lines[-1], flush=True)
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", nargs="+", default=[str(LIBERO_POLICY)],
                   help="one or more policies with the same image geometry, probed on the same frames")
    p.add_argument("--suite", nargs="+", default=list(SUITES))
    p.add_argument("--episodes", type=int, default=3, help="official initial states per task")
    p.add_argument("--keep", type=float, nargs="+", default=[0.3, 0.5])
    p.add_argument("--layer", type=int, nargs="+", default=[0], help="scoring layers ℓ (ADP's qk_layer)")
    p.add_argument("--draws", type=int, default=50, help="random sets per image")
    p.add_argument("--min-share", type=float, default=0.15, help="pixel share that makes a patch the target's")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print("\n".join(probe(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
