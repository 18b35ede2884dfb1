"""Record the end-effector path that drives ADP's gate in the GPU latency benchmark.

The scripted Meta-World expert runs one episode of a task (no cameras rendered after reset); the hand
position after every step is written as a JSON trace. ``benchmarks/gpu/latency.py`` replays it through
``Policy.infer``: every ``chunk`` steps one query whose state carries the position at that step, with the
steps in between reported by ``Policy.record_step`` — the same inputs the action-aware gate sees in a
closed-loop run, so the share of pruned queries (γ) is the gate's own, not an assumption.

    MUJOCO_GL=egl python benchmarks/gpu/record_gate_trace.py --task drawer-open --episode 0 \
        --out benchmarks/gpu/gate_trace.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np


def record(task: str, episode: int) -> dict:
    from vla_adp.envs.metaworld import MetaWorldEnv

    env = MetaWorldEnv(task, image_size=32, split="train")
    obs = env.reset(episode)
    positions = [obs["state"][:3].tolist()]
    success = False
    for _ in range(env.max_steps):
        result = env.step(env.expert_action(), images=False)
        positions.append(result.obs["state"][:3].tolist())
        if result.success:
            success = True
            break
    env.close()
    return {"task": env.task, "episode": episode, "seed": env.seed, "expert_success": success,
            "steps": len(positions) - 1, "positions": np.round(positions, 6).tolist()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="drawer-open")
    p.add_argument("--episode", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).with_name("gate_trace.json")))
    args = p.parse_args()
    trace = record(args.task, args.episode)
    trace["command"] = "python benchmarks/gpu/record_gate_trace.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    Path(args.out).write_text(json.dumps(trace) + "\n")
    print(f"wrote {args.out}: {trace['task']} episode {args.episode}, {trace['steps']} steps, "
          f"expert success {trace['expert_success']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
