"""Example: one LIBERO episode with ADP, recorded through the visualisation hooks.

Runs a checkpoint for a few queries of one LIBERO task with the OpenVLA-OFT protocol (10 wait steps,
180° rotation, resize to the model's input, a chunk of actions per query) and writes

* ``run.jsonl``: schema records (run, one query line per policy query, one episode line);
* ``episode.mp4``: the overlay video (:class:`vla_adp.viz.video.EpisodeRecorder`), both cameras;
* ``frames.npz``: the upright frames, so ``vla-adp viz overlay|video --frames`` can redraw them.

The tiny random checkpoint works here: its actions are noise, but the scene, the arm's motion, the
gate's decisions and where the kept patches land are real. It shows how a runner hooks the recorder
(see ``run``); the evaluation runner proper lives in :mod:`vla_adp.eval`.

    vla-adp make-tiny-checkpoint /tmp/tiny
    MUJOCO_GL=egl PYTHONPATH=src python examples/viz_libero.py --checkpoint /tmp/tiny --out /tmp/viz_demo
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections import deque
from pathlib import Path

import numpy as np
import torch

from vla_adp.eval.schema import EpisodeRecord, QueryRecord
from vla_adp.model import transforms as T
from vla_adp.policy import Policy, PolicyConfig
from vla_adp.pruning.registry import build_pruner
from vla_adp.eval.logs import write_records
from vla_adp.viz.overlay import pipeline_for
from vla_adp.viz.video import EpisodeRecorder

WAIT_STEPS = 10  # OFT: dummy actions while objects settle
CAMERAS = ("agentview_image", "robot0_eye_in_hand_image")


def make_env(suite_name: str, task_id: int):
    from libero.libero import benchmark, get_libero_path
    from libero.libero.envs import OffScreenRenderEnv

    suite = benchmark.get_benchmark_dict()[suite_name]()
    task = suite.get_task(task_id)
    bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
    env = OffScreenRenderEnv(bddl_file_name=bddl, camera_heights=256, camera_widths=256)
    env.seed(0)
    env.reset()
    obs = env.set_init_state(suite.get_task_init_states(task_id)[0])
    return env, obs, task.language


def upright(obs: dict) -> dict[str, np.ndarray]:
    """The cameras as OFT's videos show them (the renders are upside down)."""
    return {k: T.rotate_180(obs[k]) for k in CAMERAS}


def state_of(obs: dict) -> np.ndarray:
    """OFT's 8-d LIBERO state: end-effector position, axis-angle, gripper joints."""
    return np.concatenate([obs["robot0_eef_pos"], T.quat2axisangle(obs["robot0_eef_quat"]), obs["robot0_gripper_qpos"]])


def policy_obs(obs: dict, instruction: str, size: int) -> dict:
    frames = upright(obs)
    state = state_of(obs)
    return {"full_image": T.resize_for_policy(frames[CAMERAS[0]], size),
            "wrist_image": T.resize_for_policy(frames[CAMERAS[1]], size), "state": state, "instruction": instruction}


def query_record(info: dict, h: str, suite: str, task_id: int, task: str, step: int, state: np.ndarray) -> QueryRecord:
    extra = {k: info[k] for k in ("gate_upper", "gate_lower", "gate_mean", "gate_reason", "gate_streak") if k in info}
    return QueryRecord(h, suite, task_id, task, 0, info["query"], step, info["pruner"], info["pruned"],
                       info.get("gate_state"), info.get("displacement"), info["kept_visual"], info["n_visual"],
                       info["kept_per_view"], info["seq_len"], info["seq_len_pruned"], info["flops"],
                       info["timing_ms"], state[:3].tolist(), info["kept_indices"], extra)


def run(args) -> None:
    torch.set_num_threads(1)
    out = Path(args.out)
    pruner = build_pruner("adp", keep_ratio=args.keep, config_file=args.pruning_config)
    policy = Policy.load(args.checkpoint, PolicyConfig(), pruner, dtype=torch.float32)
    env, obs, task = make_env(args.suite, args.task_id)
    h = f"demo-adp-{args.keep:g}"
    log = out / "run.jsonl"
    log.unlink(missing_ok=True)
    write_records(log, [{"kind": "run", "config_hash": h, "method_hash": h,
                         "config": {"suite": args.suite, "method": {"pruner": {"name": "adp", "config": dataclasses.asdict(pruner.config)}}}}])
    pipe = pipeline_for(policy.model.args, policy.center_crop, raw_size=(256, 256))  # upright frames, resize, crop
    recorder = EpisodeRecorder(out / "episode.mp4", [pipe, pipe], frames_path=out / "frames.npz")
    for _ in range(WAIT_STEPS):
        obs, *_ = env.step([0, 0, 0, 0, 0, 0, -1])
    queue: deque = deque()
    records, success, step = [], False, 0
    try:
        for step in range(args.queries * policy.platform.chunk):
            o = policy_obs(obs, task, policy.model.args.image_size)
            if not queue:
                result = policy.infer(o)
                queue.extend(result["actions"])
                records.append(query_record(result["info"], h, args.suite, args.task_id, task, step, o["state"]))
                recorder.add(upright(obs), result["info"], step=step)  # new chunk: new mask and caption
            else:
                recorder.add(upright(obs), step=step)  # same chunk: the last query stays on screen
            obs, _, done, _ = env.step(T.libero_gripper(queue.popleft()).tolist())
            policy.record_step(state_of(obs))
            if done:
                success = True
                break
    finally:
        recorder.close()
        env.close()
    ep = EpisodeRecord(h, args.suite, args.task_id, task, 0, 7, success, step + 1, len(records),
                       sum(r.pruned for r in records), sum(r.flops for r in records), 0.0,
                       video=str(out / "episode.mp4"))
    write_records(log, [*records, ep])
    print(f"{len(records)} queries ({ep.pruned_queries} pruned), {recorder.n_frames} frames -> {log}, "
          f"{out / 'episode.mp4'}, {out / 'frames.npz'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--suite", default="libero_spatial")
    p.add_argument("--task-id", type=int, default=0)
    p.add_argument("--queries", type=int, default=12, help="policy queries (x chunk env steps)")
    p.add_argument("--keep", type=float, default=0.5)
    p.add_argument("--pruning-config", default=None, help="ADP JSON (reference field names accepted)")
    p.add_argument("--out", required=True)
    run(p.parse_args())


if __name__ == "__main__":
    main()
