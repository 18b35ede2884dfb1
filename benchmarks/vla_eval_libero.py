"""The same LIBERO episodes through vla-eval's harness and through ``vla-adp eval libero``.

vla-eval's LIBERO benchmark (``vla_eval.benchmarks.libero.benchmark:LIBEROBenchmark``) runs here in
process (``vla_eval.api.run(..., docker=False)``, robosuite on the CPU through EGL), against our
policy served as a vla-eval model server (:mod:`vla_adp.serve.vla_eval_server`) on loopback. The
same policy runs the same episodes through ``vla-adp eval libero`` (a subprocess, the real CLI).
Compared: per episode, the 8-D state the policy saw at each query (vla-eval: the observation that
triggered a model call, recorded by the server; ours: ``eef_pos`` of every query record, the state's
first three entries), success, steps, queries and the gate's decisions.

Usage::

    MUJOCO_GL=egl python benchmarks/vla_eval_libero.py [--checkpoint DIR] [--episodes 2] [--max-steps 64]

Without ``--checkpoint`` it writes the tiny random checkpoint (``vla-adp make-tiny-checkpoint``): its
actions are meaningless (success is 0 % in both), which is fine for checking that two harnesses run
the *same* episodes; the published 7B checkpoints cannot be used on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="checkpoint folder (default: a tiny random one)")
    p.add_argument("--suite", default="libero_spatial")
    p.add_argument("--task", type=int, default=0)
    p.add_argument("--episodes", type=int, default=2)
    p.add_argument("--max-steps", type=int, default=64)
    p.add_argument("--pruner", default="adp")
    p.add_argument("--keep", type=float, default=0.5)
    p.add_argument("--out", default=None, help="folder for both harnesses' outputs (default: a temporary one)")
    return p.parse_args()


def run_ours(args, ckpt: Path, out: Path) -> dict[int, dict]:
    log = out / "vla_adp.jsonl"
    cmd = [sys.executable, "-m", "vla_adp", "eval", "libero", "--checkpoint", str(ckpt), "--suite", args.suite,
           "--tasks", str(args.task), "--trials", str(args.episodes), "--max-steps", str(args.max_steps),
           "--pruner", args.pruner, "--keep", str(args.keep), "--dtype", "fp32", "--device", "cpu",
           "--threads", "1", "--log", str(log), "--quiet"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)  # resumes: episodes already in the log are not run again
    print(f"vla-adp eval libero: {time.perf_counter() - t0:.1f} s")
    episodes: dict[int, dict] = {}
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("kind") not in ("query", "episode"):
            continue
        ep = episodes.setdefault(rec["episode"], {"queries": []})
        if rec["kind"] == "query":
            ep["queries"].append({"step": rec["step"], "eef_pos": rec["eef_pos"], "gate_state": rec["gate_state"]})
        else:
            ep.update(success=rec["success"], steps=rec["steps"], error=rec["error"])
    return episodes


def run_vla_eval(args, ckpt: Path, out: Path) -> tuple[dict[int, dict], list]:
    import torch
    from vla_eval.api import run, serve_background

    from vla_adp.commands.common import center_crop_of
    from vla_adp.policy import Policy, PolicyConfig
    from vla_adp.pruning.registry import build_pruner
    from vla_adp.serve.vla_eval_server import VlaAdpModelServer

    torch.set_num_threads(1)

    class Logged(VlaAdpModelServer):
        """Records what each query saw: the state and the gate decision, per episode."""

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.log: list[list[dict]] = []

        async def on_episode_start(self, config, ctx):
            self.log.append([])
            await super().on_episode_start(config, ctx)

        def predict(self, obs, ctx):
            out = super().predict(obs, ctx)
            self.log[-1].append({"step": ctx.step, "state": np.asarray(obs["states"]).tolist(),
                                 "gate_state": self.last_info.get("gate_state")})
            return out

    cfg = PolicyConfig(center_crop=center_crop_of(argparse.Namespace(no_center_crop=False, checkpoint=ckpt)))
    policy = Policy.load(ckpt, cfg, build_pruner(args.pruner, keep_ratio=args.keep), dtype=torch.float32)
    server = Logged(policy)
    config = {"benchmarks": [{
        "benchmark": "vla_eval.benchmarks.libero.benchmark:LIBEROBenchmark", "mode": "sync",
        "episodes_per_task": args.episodes, "max_tasks": args.task + 1, "max_steps": args.max_steps,
        "tasks": None, "params": {"suite": args.suite, "seed": 7, "num_steps_wait": 10,
                                  **server.get_observation_params()},
    }]}
    t0 = time.perf_counter()
    with serve_background(server) as handle:
        results = run(config, server_url=handle.url, output_dir=out / "vla_eval", docker=False)
    print(f"vla-eval run (in process): {time.perf_counter() - t0:.1f} s")
    return {i: {"queries": q} for i, q in enumerate(server.log)}, results


def main() -> int:
    args = parse()
    out = Path(args.out or tempfile.mkdtemp(prefix="vla_eval_libero_"))
    out.mkdir(parents=True, exist_ok=True)
    ckpt = Path(args.checkpoint) if args.checkpoint else None
    if ckpt is None:
        from vla_adp.model.tiny import make_tiny_checkpoint

        ckpt = make_tiny_checkpoint(out / "openvla-7b-oft-finetuned-libero-spatial", seed=0)
    if args.task != 0:
        raise SystemExit("--task other than 0: vla-eval's max_tasks takes the first tasks; extend the config")
    ours = run_ours(args, ckpt, out)
    theirs, results = run_vla_eval(args, ckpt, out)
    report = {"ours": ours, "vla_eval": theirs, "vla_eval_results": results}
    (out / "comparison.json").write_text(json.dumps(report, indent=1, default=str))
    for ep in sorted(ours):
        a, b = ours[ep]["queries"], theirs.get(ep, {"queries": []})["queries"]
        pos_a = np.array([q["eef_pos"] for q in a])
        pos_b = np.array([q["state"][:3] for q in b])
        same_len = len(a) == len(b)
        diff = float(np.abs(pos_a - pos_b).max()) if same_len and len(a) else float("nan")
        gates = [q["gate_state"] for q in a], [q["gate_state"] for q in b]
        print(f"episode {ep}: queries {len(a)} vs {len(b)}, max |eef_pos difference| at the queries {diff:.3g}, "
              f"gate states equal: {gates[0] == gates[1]}, success {ours[ep].get('success')}")
    print(f"outputs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
