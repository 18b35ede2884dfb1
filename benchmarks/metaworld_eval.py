"""Closed-loop success of a Meta-World policy on held-out goals (eval split), with Wilson intervals.

Default checkpoint: the committed reference policy (``src/vla_adp/assets/metaworld_policy``). Episode
``e`` of a task runs from environment seed ``1_000_000 + e``; training demonstrations use seeds below
``1_000_000``. ``--selection top|inverse|random --keep 0.5`` prunes every query at layer 0 with ADP's
text->vision score (static schedule), for the "does the score rank tokens sensibly" check.

    PYTHONPATH=src MUJOCO_GL=egl python benchmarks/metaworld_eval.py --episodes 50 \
        --log runs/metaworld/unpruned.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from vla_adp.envs.metaworld import episode_seed
from vla_adp.policy import Policy
from vla_adp.train.evaluate import evaluate

ASSET = Path(__file__).resolve().parents[1] / "src" / "vla_adp" / "assets" / "metaworld_policy"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def build_pruner(selection: str | None, keep: float):
    if selection is None:
        return None, None
    from vla_adp.pruning.registry import build_pruner as build

    settings = {"selection": selection, "layer": 0, "gate": {"schedule": "static"}}
    return build("adp", keep=keep, **settings), {**settings, "keep": keep}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(ASSET))
    p.add_argument("--tasks", default=None, help="comma-separated (default: the tasks the checkpoint was trained on)")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--first-episode", type=int, default=0)
    p.add_argument("--log", required=True, help="JSONL log (appended; finished episodes are skipped)")
    p.add_argument("--selection", choices=["top", "inverse", "random"], default=None)
    p.add_argument("--keep", type=float, default=0.5)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    pruner, prune_cfg = build_pruner(args.selection, args.keep)
    policy = Policy.load(args.checkpoint, pruner=pruner, dtype=DTYPES[args.dtype])
    tasks = args.tasks.split(",") if args.tasks else trained_tasks(Path(args.checkpoint))
    episodes = range(args.first_episode, args.first_episode + args.episodes)
    config = {"checkpoint": str(Path(args.checkpoint).resolve().name), "weights": weights_digest(Path(args.checkpoint)),
              "dtype": args.dtype, "pruner": prune_cfg}

    def progress(rec):
        print(f"{rec.task:22s} ep {rec.episode:3d} seed {rec.seed} {'ok  ' if rec.success else 'FAIL'} "
              f"{rec.steps:3d} steps {rec.wall_s:5.1f} s", file=sys.stderr, flush=True)

    summary = evaluate(policy, tasks, episodes, args.log, config, progress=progress)
    print(json.dumps({"config": config, "seeds": [episode_seed("eval", episodes.start),
                                                   episode_seed("eval", episodes.stop - 1)], **summary}, indent=2))
    return 0


def trained_tasks(folder: Path) -> list[str]:
    summary = folder / "training_summary.json"
    if not summary.is_file():
        raise FileNotFoundError(f"{summary} missing: pass --tasks")
    return json.loads(summary.read_text())["tasks"]


def weights_digest(folder: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for f in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*checkpoint.pt")):
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


if __name__ == "__main__":
    sys.exit(main())
