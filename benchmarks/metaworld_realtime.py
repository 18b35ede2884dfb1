"""Real-time evaluation of the Meta-World reference policy: success when latency costs time.

Each cell runs the five ``metaworld`` tasks (held-out goals, episodes 0..E-1 per task) through
``run_job`` with ``--realtime``: the world keeps moving while the policy thinks, for the latency of
a named GPU's unpruned OpenVLA-OFT 7B query scaled by this query's FLOPs as run over unpruned
(``vla_adp.eval.realtime``; the GPU numbers are published ones, not ours). Meta-World ticks at
80 Hz (12.5 ms per step), so 34 ms (H20) costs 3 steps per unpruned query and 76.9 ms (RTX 4090)
7. With the whole 8-action chunk executed open-loop nothing is left to continue with, so the robot
holds while it thinks; steps spent holding count against the task's step limit.

Rows: unpruned, ADP dyn 0.5, FastV 0.5 and VLA-Pruner 0.5, with the settings of
``benchmarks/metaworld_pruning.py`` (original RoPE positions for ADP, FastV K = 1, VLA-Pruner
semantic layer 0 / action layer 2). The FLOPs ratio is this 4-layer policy's, applied to the 7B's
latency: an assumption (a 7B pruned at the paper's layers would save a similar share only if its
token counts and layer split scaled alike).

    PYTHONPATH=src MUJOCO_GL=egl python benchmarks/metaworld_realtime.py --episodes 8 \\
        --out runs/mw_realtime --markdown benchmarks/results/metaworld_realtime.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from vla_adp.commands.common import EMBEDDED_POLICY
from vla_adp.eval.job import EvalJob, run_config, run_job
from vla_adp.eval.logs import config_hash, read_logs
from vla_adp.eval.realtime import GPU_QUERY_S
from vla_adp.eval.stats import success_rate

CONFIGS = {
    "unpruned": {},
    "ADP dyn 0.5": {"pruner": "adp", "keep": 0.5, "pruner_fields": {"positions": "original"}},
    "FastV 0.5": {"pruner": "fastv", "keep": 0.5, "pruner_fields": {"layer": 1}},
    "VLA-Pruner 0.5": {"pruner": "vla_pruner", "keep": 0.5, "pruner_fields": {"fastv_k": 0, "action_layer": 2}},
}
LATENCIES = {  # column -> EvalJob.realtime
    "paused": None,
    "H20 (34 ms)": {"source": "model", "gpu": "h20", "thinking": "continue"},
    "RTX 4090 (76.9 ms)": {"source": "model", "gpu": "rtx4090", "thinking": "continue"},
}


def job(label: str, latency: str, args) -> EvalJob:
    c = CONFIGS[label]
    slug = f"{label}-{latency}".replace(" ", "_").replace("(", "").replace(")", "").replace(".", "")
    return EvalJob(env="metaworld", suite="metaworld", checkpoint=str(EMBEDDED_POLICY), log=str(Path(args.out) / f"{slug}.jsonl"),
                   episodes=(0, args.episodes), tasks=tuple(args.tasks) if args.tasks else None, pruner=c.get("pruner"), keep=c.get("keep"),
                   pruner_fields=c.get("pruner_fields", {}), verbose=False, realtime=LATENCIES[latency],
                   envs=args.envs, batch=1)


def summary(j: EvalJob) -> dict:
    h = config_hash(run_config(j))
    logs = read_logs([j.log] if Path(j.log).exists() else [])
    eps = [e for e in logs.episodes.values() if e.config_hash == h]
    qs = [q for key, recs in logs.queries.items() if key[0] == h for q in recs]
    lat = [q.extra.get("latency_s", 0.0) for q in qs]
    steps = [q.extra.get("latency_steps", 0) for q in qs]
    pruned = [q.pruned for q in qs]
    if not eps:
        return {"n": 0, "k": 0, "rate": float("nan"), "lo": float("nan"), "hi": float("nan"), "latency_ms": 0.0,
                "latency_steps": 0.0, "gamma": 0.0, "steps": 0.0, "per_task": {}}
    r = success_rate(e.success for e in eps)
    return {"n": r.n, "k": r.k, "rate": r.rate, "lo": r.lo, "hi": r.hi, "latency_ms": 1e3 * float(np.mean(lat)) if lat else 0.0,
            "latency_steps": float(np.mean(steps)) if steps else 0.0, "gamma": float(np.mean(pruned)) if pruned else 0.0,
            "steps": float(np.mean([e.steps for e in eps])) if eps else 0.0,
            "per_task": {t: 100 * np.mean([e.success for e in eps if e.task_id == t]) for t in sorted({e.task_id for e in eps})}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=8, help="episodes per task (episodes 0..E-1)")
    p.add_argument("--envs", type=int, default=1, help="simulator processes (1: the serial runner)")
    p.add_argument("--tasks", type=int, nargs="+", default=None, help="task ids (default: all five)")
    p.add_argument("--out", default="runs/mw_realtime")
    p.add_argument("--markdown", default=None)
    p.add_argument("--configs", nargs="+", default=None, choices=sorted(CONFIGS),
                   help="run only these rows (to split the work over processes; the report reads every row's logs)")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    t0, started = time.perf_counter(), dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cells = {}
    for label in CONFIGS:
        for latency in LATENCIES:
            j = job(label, latency, args)
            if not args.report_only and (args.configs is None or label in args.configs):
                t = time.perf_counter()
                run_job(j)
                print(f"{label} / {latency}: {time.perf_counter() - t:.0f} s", flush=True)
            cells[(label, latency)] = summary(j)
    wall = time.perf_counter() - t0
    lines = [f"Command: `{' '.join(['python', *map(shlex.quote, sys.argv)])}`", "",
             f"Run {started}, {wall / 60:.1f} min wall on {os.cpu_count()} CPUs ({args.envs} simulator processes, "
             "queries answered one at a time: the serial runner's episodes). "
             f"Episodes per cell: {args.episodes} per task × {len(args.tasks) if args.tasks else 5} tasks. GPU per-query latencies (unpruned 7B, "
             f"published, not measured here): {', '.join(f'{k} {1e3 * v:.1f} ms' for k, v in GPU_QUERY_S.items())}.", "",
             "Success % [Wilson 95 %] (mean steps per episode; mean latency per query in ms / control steps; γ = share of queries pruned):", "",
             "| config | " + " | ".join(LATENCIES) + " |", "|---|" + "---|" * len(LATENCIES)]
    for label in CONFIGS:
        row = []
        for latency in LATENCIES:
            c = cells[(label, latency)]
            cell = f"**{100 * c['rate']:.0f}** [{100 * c['lo']:.0f}, {100 * c['hi']:.0f}] ({c['steps']:.0f} steps"
            cell += f"; {c['latency_ms']:.1f} ms / {c['latency_steps']:.2f} steps" if LATENCIES[latency] else ""
            row.append(cell + f"; γ {c['gamma']:.2f})")
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    lines += ["", "Per task (success %, tasks 0..4 = button-press-topdown, drawer-open, drawer-close, window-open, window-close):", "",
              "| config | latency | " + " | ".join(f"task {t}" for t in range(5)) + " |", "|---|---|" + "---|" * 5]
    for (label, latency), c in cells.items():
        lines.append(f"| {label} | {latency} | " + " | ".join(f"{c['per_task'].get(t, float('nan')):.0f}" for t in range(5)) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    (Path(args.out) / "results.json").write_text(json.dumps({f"{k[0]} / {k[1]}": v for k, v in cells.items()}, indent=1,
                                                             default=float))
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
