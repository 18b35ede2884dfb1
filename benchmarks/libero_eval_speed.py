"""LIBERO closed-loop speed on this machine, and what the full protocol costs.

Measures (one torch thread, ``MUJOCO_GL=egl``): env creation, ``reset`` (hard reset + initial state
+ 10 wait steps), env steps/s with faithful and fast rendering (each step renders both 256² cameras
and builds the policy's 224² observation), physics-only steps/s (no cameras), and closed-loop
steps/s through the runner with the tiny checkpoint. Then the cost of the full protocol
(4 suites × 10 tasks × 50 trials) from those numbers: see benchmarks/libero_eval_speed.md.

    MUJOCO_GL=egl PYTHONPATH=src python benchmarks/libero_eval_speed.py [--steps 48] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np
import torch

from vla_adp.envs.libero import SUITE_MAX_STEPS, LiberoConfig, LiberoEnv, _libero
from vla_adp.eval.runner import EpisodeSettings, run_episode

PROTOCOL_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10")
TASKS, TRIALS, WAIT = 10, 50, 10


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def env_rates(render: str, steps: int) -> dict[str, float]:
    env, create_s = timed(LiberoEnv, LiberoConfig("libero_spatial", 0, render=render))
    resets = [timed(env.reset, ep)[1] for ep in (0, 1, 2)]
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(steps):
        env.step(np.concatenate([rng.uniform(-0.3, 0.3, 6), [1.0]]))
    rate = steps / (time.perf_counter() - t0)
    env.close()
    return {"create_s": create_s, "reset_s": float(np.median(resets)), "steps_per_s": rate}


def observation_s(repeats: int = 20) -> float:
    """Seconds to build the policy's observation (2 × rotate + JPEG + Lanczos 256 -> 224) on this CPU."""
    from vla_adp.envs.libero import observation

    rng = np.random.default_rng(0)
    raw = {"agentview_image": rng.integers(0, 256, (256, 256, 3), dtype=np.uint8),
           "robot0_eye_in_hand_image": rng.integers(0, 256, (256, 256, 3), dtype=np.uint8),
           "robot0_eef_pos": np.zeros(3), "robot0_eef_quat": np.array([0, 0, 0, 1.0]),
           "robot0_gripper_qpos": np.zeros(2)}
    t0 = time.perf_counter()
    for _ in range(repeats):
        observation(raw, "pick up the bowl")
    return (time.perf_counter() - t0) / repeats


def physics_rate(steps: int) -> float:
    """OffScreenRenderEnv without camera observations: MuJoCo + the OSC controller only."""
    benchmark, get_libero_path, OffScreenRenderEnv = _libero()
    task = benchmark.get_benchmark_dict()["libero_spatial"]().get_task(0)
    bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
    env = OffScreenRenderEnv(bddl_file_name=bddl, use_camera_obs=False)
    env.seed(0)
    env.reset()
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(steps):
        env.step(np.concatenate([rng.uniform(-0.3, 0.3, 6), [-1.0]]).tolist())
    rate = steps / (time.perf_counter() - t0)
    env.close()
    return rate


def closed_loop_rate(render: str, steps: int, policy) -> dict[str, float]:
    env = LiberoEnv(LiberoConfig("libero_spatial", 0, max_steps=steps, render=render))
    rec = run_episode(env, policy, 0, EpisodeSettings("bench", verbose=False))
    env.close()
    assert rec.error is None, rec.error
    return {"episode_s": rec.wall_s, "steps": rec.steps, "queries": rec.queries}


def protocol_cost(step_s: float, reset_s: float, query_s: float, create_s: float) -> dict[str, float]:
    """Hours for 4 suites × 10 tasks × 50 trials with every episode running to its step limit."""
    episodes = len(PROTOCOL_SUITES) * TASKS * TRIALS
    policy_steps = TASKS * TRIALS * sum(SUITE_MAX_STEPS[s] for s in PROTOCOL_SUITES)
    queries = TASKS * TRIALS * sum(-(-SUITE_MAX_STEPS[s] // 8) for s in PROTOCOL_SUITES)
    sim = (policy_steps + episodes * WAIT) * step_s + episodes * reset_s + len(PROTOCOL_SUITES) * TASKS * create_s
    return {"episodes": episodes, "policy_steps": policy_steps, "queries": queries,
            "sim_h": sim / 3600, "policy_h": queries * query_s / 3600, "total_h": (sim + queries * query_s) / 3600}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=48)
    p.add_argument("--json", default=None)
    p.add_argument("--query-s-cpu", type=float, default=19.0,
                   help="7B OFT query on this CPU (~19 s for the 7B LLM alone on the project's 2-core machine)")
    p.add_argument("--query-s-gpu", type=float, default=0.077,
                   help="7B OFT query on a GPU (ADP paper Table 2: 76.9 ms on an RTX 4090)")
    p.add_argument("--render-s-gpu", type=float, default=0.002,
                   help="assumed: both 256² cameras rendered through EGL on a GPU, per step")
    args = p.parse_args()
    torch.set_num_threads(1)
    from vla_adp.model.tiny import make_tiny_checkpoint
    from vla_adp.policy import Policy

    policy = Policy.load(make_tiny_checkpoint(tempfile.mkdtemp() + "/tiny-libero-spatial"), dtype=torch.float32)
    out = {"machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                       "loadavg_before": os.getloadavg()}}
    for render in ("faithful", "fast"):
        out[render] = env_rates(render, args.steps)
        out[render]["closed_loop"] = closed_loop_rate(render, args.steps, policy)
    out["physics_steps_per_s"] = physics_rate(args.steps * 4)
    out["observation_s"] = observation_s()
    out["machine"]["loadavg_after"] = os.getloadavg()
    f = out["faithful"]
    out["protocol_cpu_sim_only"] = protocol_cost(1 / f["steps_per_s"], f["reset_s"], 0.0, f["create_s"])
    out["protocol_cpu_7b"] = protocol_cost(1 / f["steps_per_s"], f["reset_s"], args.query_s_cpu, f["create_s"])
    gpu_step = 1 / out["physics_steps_per_s"] + out["observation_s"] + args.render_s_gpu
    out["protocol_gpu_estimate"] = protocol_cost(gpu_step, out["fast"]["reset_s"], args.query_s_gpu, f["create_s"])
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
