"""``vla-adp demo``: the embedded Meta-World reference policy with and without ADP, side by side.

The README's first command (``make demo``). Everything goes through the shared evaluation runner
(``run_job`` → ``Policy.infer``/``reset()`` → JSONL log), on held-out goals of the ``metaworld`` suite:

    run_job(unpruned) ──┐
    run_job(ADP ρ=0.5) ─┴─► OUT/demo.jsonl ─► table: SR (Wilson 95 %), FLOPs/query, speedup, γ, ms/query
                             ├─► OUT/videos/*.mp4          overlay video of ADP's first episode
                             └─► OUT/gate_timeline.png      gate timeline of the same episode

ADP runs as published (layer-0 text→vision score, 0.4/0.6 main/wrist split, action-aware gate) except
for the position ids after the cut: the kept tokens keep their original RoPE positions (``--positions
original``), as FastV, VLA-Pruner and LightVLA do; the reference ADP code renumbers them contiguously,
which this 4-layer policy, trained on fixed positions, does not survive (benchmarks/metaworld_pruning.md). The
latency column is the median of the per-query wall time the policy logged during the run
(``info["timing_ms"]["total"]``: transforms + model + pruner, one torch thread), not a controlled
benchmark (that is ``benchmarks/metaworld_pruning.py``). A rerun starts afresh: it replaces the
demo's own files in OUT.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from vla_adp.seam.keep import POSITION_MODES

DEFAULT_TASKS = ("button-press-topdown", "drawer-open", "window-close")
LOG_NAME, VIDEO_DIR, TIMELINE_NAME = "demo.jsonl", "videos", "gate_timeline.png"


def add_arguments(p) -> None:
    from vla_adp.commands.common import EMBEDDED_POLICY

    p.add_argument("--checkpoint", default=str(EMBEDDED_POLICY), help="policy folder (default: the embedded one)")
    p.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS), help="Meta-World tasks of the metaworld suite")
    p.add_argument("--episodes", type=int, default=4, help="episodes per task (held-out goals 0..N-1)")
    p.add_argument("--keep", type=float, default=0.5, help="ADP keep ratio ρ")
    p.add_argument("--positions", choices=POSITION_MODES, default="original",
                   help="RoPE positions after the cut: original (what the small policy tolerates) or contiguous "
                        "(the reference ADP code; costs this 4-layer policy most of its success, see "
                        "benchmarks/metaworld_pruning.md)")
    p.add_argument("--max-steps", type=int, default=None, help="policy steps per episode (default: the task's)")
    p.add_argument("--out", default="demo_out", help="output folder (log, video, timeline)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")


def task_ids(names: list[str]) -> tuple[int, ...]:
    from vla_adp.envs.metaworld import suite_tasks, task_name

    suite = suite_tasks("metaworld")
    ids = []
    for name in names:
        short = task_name(name)
        if short not in suite:
            raise ValueError(f"task {name!r} is not in the reference policy's suite; expected one of {suite}")
        ids.append(suite.index(short))
    return tuple(ids)


def jobs(args, out: Path):
    """(unpruned, ADP, ADP's first episode with its overlay video): three EvalJobs on one log."""
    from vla_adp.eval.job import EvalJob

    if args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
    base = EvalJob(env="metaworld", suite="metaworld", checkpoint=str(args.checkpoint), log=str(out / LOG_NAME),
                   tasks=task_ids(args.tasks), episodes=(0, args.episodes), max_steps=args.max_steps, verbose=False)
    adp = dataclasses.replace(base, pruner="adp", keep=args.keep, pruner_fields={"positions": args.positions})
    first = dataclasses.replace(adp, tasks=adp.tasks[:1], episodes=(0, 1), overlay_video_dir=str(out / VIDEO_DIR))
    return base, adp, first


def clear(out: Path) -> None:
    """Remove the files an earlier demo wrote (only those), so this run starts afresh."""
    for path in [out / LOG_NAME, out / TIMELINE_NAME, *(out / VIDEO_DIR).glob("*.mp4")]:
        path.unlink(missing_ok=True)


def row(label: str, episodes, queries) -> list[str]:
    import numpy as np

    from vla_adp.report.runs import cost, fmt_rate
    from vla_adp.eval.stats import success_rate

    c = cost(episodes)
    ms = float(np.median([q.timing_ms.get("total", np.nan) for q in queries])) if queries else float("nan")
    return [label, fmt_rate(success_rate(e.success for e in episodes)), f"{c['flops'] / 1e9:.3f}",
            f"{c['speedup']:.2f}x", f"{c['gamma']:.2f}", f"{ms:.1f}"]


def side_by_side(log, hashes: dict[str, str]) -> str:
    from vla_adp.report.runs import _table

    body = []
    for label, h in hashes.items():
        eps = [e for e in log.episodes.values() if e.config_hash == h]
        body.append(row(label, eps, [q for k, qs in log.queries.items() if k[0] == h for q in qs]))
    return _table(["method", "success % [Wilson 95%] n", "GFLOPs/query", "speedup", "gamma", "ms/query"], body)


def pictures(log, adp_hash: str, first, out: Path) -> tuple[Path | None, Path]:
    """The overlay video and the gate timeline of ADP's first episode."""
    from vla_adp.report.timeline import episode_timeline, plot_timeline

    key = (adp_hash, "metaworld", first.tasks[0], 0)
    ep = log.episodes[key]
    timeline = plot_timeline(episode_timeline(log.queries[key], ep), out / TIMELINE_NAME)
    return (Path(ep.overlay_video) if ep.overlay_video else None), timeline


def run(args) -> int:
    import torch

    from vla_adp.eval.job import run_config, run_job
    from vla_adp.eval.logs import config_hash, read_logs

    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    base, adp, first = jobs(args, out)
    out.mkdir(parents=True, exist_ok=True)
    clear(out)
    print(f"Meta-World reference policy {args.checkpoint}: tasks {', '.join(args.tasks)}, {args.episodes} episodes "
          f"each, unpruned and ADP (keep {args.keep}) ...", flush=True)
    for job in (first, adp, base):
        run_job(job)
    log = read_logs([out / LOG_NAME])
    hashes = {"unpruned": config_hash(run_config(base)), f"ADP rho={args.keep}": config_hash(run_config(adp))}
    print("\n" + side_by_side(log, hashes) + "\n")
    print("FLOPs: decoder + pruner scoring per query; speedup: the same queries unpruned / as run; gamma: share of "
          "queries pruned; ms/query: median logged wall time of Policy.infer")
    video, timeline = pictures(log, hashes[f"ADP rho={args.keep}"], first, out)
    print(f"log:            {out / LOG_NAME}  (vla-adp report {out / LOG_NAME} --by task)")
    print(f"overlay video:  {video or 'not written (see the log line above)'}")
    print(f"gate timeline:  {timeline}")
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0
