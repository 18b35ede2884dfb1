"""Closed-loop success of the Meta-World reference policy on held-out goals, per task, with Wilson intervals.

Runs the shared evaluation runner (``vla_adp.eval.job.run_job``, JSONL logs, resumable) on the
``metaworld`` suite: episode ``e`` of a task starts from environment seed ``1_000_000 + e``, while
the training demonstrations used seeds below ``1_000_000``. Default checkpoint: the committed
reference policy. ``--selection top|inverse|random --keep 0.5`` prunes *every* query before decoder
layer 0 with ADP's text->vision score (static schedule, equal quota per camera) — the check that the
score ranks tokens sensibly, not the ADP method (whose gate decides when to prune).

    PYTHONPATH=src MUJOCO_GL=egl python benchmarks/metaworld_eval.py --trials 50 --log runs/metaworld/eval.jsonl
    PYTHONPATH=src MUJOCO_GL=egl python benchmarks/metaworld_eval.py --trials 10 --selection top \
        --log runs/metaworld/prune.jsonl
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from vla_adp.eval.job import EvalJob, run_config, run_job
from vla_adp.eval.logs import config_hash, read_logs
from vla_adp.eval.stats import success_rate

ASSET = Path(__file__).resolve().parents[1] / "src" / "vla_adp" / "assets" / "metaworld_policy"


def job_of(args) -> EvalJob:
    fields = {}
    if args.selection:
        fields = {"selection": args.selection, "layer": 0, "split": None, "gate": {"schedule": "static"}}
    return EvalJob(env="metaworld", suite=args.suite, checkpoint=args.checkpoint, log=args.log,
                   tasks=tuple(args.tasks) if args.tasks else None,
                   episodes=(args.first_trial, args.first_trial + args.trials),
                   pruner="adp" if args.selection else None, keep=args.keep if args.selection else None,
                   pruner_fields=fields, dtype=args.dtype, verbose=not args.quiet)


def table(job: EvalJob) -> list[str]:
    h = config_hash(run_config(job))
    eps = [e for e in read_logs([job.log]).episodes if e.config_hash == h and job.episodes[0] <= e.episode < job.episodes[1]]
    rows = [f"config {h}  log {job.log}  episodes {job.episodes[0]}..{job.episodes[1] - 1} "
            f"(env seeds {1_000_000 + job.episodes[0]}..{1_000_000 + job.episodes[1] - 1})",
            "| task | success | Wilson 95 % | mean steps |", "|---|---|---|---|"]
    rates = []
    for task in sorted({(e.task_id, e.task) for e in eps}):
        mine = [e for e in eps if (e.task_id, e.task) == task]
        r = success_rate(e.success for e in mine)
        rates.append(r.rate)
        steps = sum(e.steps for e in mine) / len(mine)
        rows.append(f"| {task[1]} | {r.k}/{r.n} = {100 * r.rate:.0f} % | [{100 * r.lo:.0f}, {100 * r.hi:.0f}] | {steps:.0f} |")
    total = success_rate(e.success for e in eps)
    rows.append(f"| **average over {len(rates)} tasks** | {100 * sum(rates) / max(1, len(rates)):.1f} % "
                f"({total.k}/{total.n}) | [{100 * total.lo:.0f}, {100 * total.hi:.0f}] | |")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(ASSET))
    p.add_argument("--suite", default="metaworld", help="metaworld (the reference policy's tasks) or metaworld_all")
    p.add_argument("--tasks", type=int, nargs="+", default=None, help="task ids (default: all of the suite)")
    p.add_argument("--trials", type=int, default=50)
    p.add_argument("--first-trial", type=int, default=0)
    p.add_argument("--log", required=True, help="JSONL log (appended; finished episodes are skipped)")
    p.add_argument("--selection", choices=["top", "inverse", "random"], default=None)
    p.add_argument("--keep", type=float, default=0.5)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    job = job_of(args)
    run_job(job)
    print("\n".join(table(job)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
