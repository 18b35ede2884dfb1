"""``vla-adp demo``: a shipped reference policy with and without ADP, side by side.

The README's first command (``make demo``) runs the embedded Meta-World policy on held-out goals of
the ``metaworld`` suite; ``--sim libero`` runs the LIBERO reference policy
(``src/vla_adp/assets/libero_policy``, benchmarks/libero_training.md) on a few LIBERO-Object tasks
from the suite's official initial states, rendered as it was trained (the renderer and camera size
its ``config.json`` records, :func:`vla_adp.eval.job.checkpoint_hints`). Everything goes through the
shared evaluation runner (``run_job`` → ``Policy.infer``/``reset()`` → JSONL log):

    run_job(unpruned) ──┐
    run_job(ADP ρ=0.5) ─┴─► OUT/demo.jsonl ─► table: SR (Wilson 95 %), FLOPs/query, speedup, γ, ms/query
                             ├─► OUT/videos/*.mp4          overlay video of ADP's first episode
                             └─► OUT/gate_timeline.png      gate timeline of the same episode

ADP runs as published (layer-0 text→vision score, 0.4/0.6 main/wrist split, action-aware gate) except
for the position ids after the cut: the kept tokens keep their original RoPE positions (``--positions
original``), as FastV, VLA-Pruner and LightVLA do and as both pruning benchmarks run it; the
reference ADP code renumbers them contiguously, which the small policies, trained on fixed
positions, do not survive (benchmarks/metaworld_pruning.md). The latency column is the median of
the per-query wall time the policy logged during the run (``info["timing_ms"]["total"]``: transforms
+ model + pruner, one torch thread), not a controlled benchmark (that is
``benchmarks/metaworld_pruning.py`` / ``benchmarks/libero_pruning.py``). A rerun starts afresh: it
replaces the demo's own files in OUT.

The LIBERO demo's default tasks (0, 2, 8: alphabet soup, salad dressing, chocolate pudding) are the
ones where the unpruned policy succeeded in 3-4 of its 4 episodes in the LIBERO pruning benchmark's
logs (benchmarks/libero_pruning.md); the policy succeeds on ~37 % of all LIBERO-Object episodes. A
few chosen episodes show the pipeline working, not a success rate.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from vla_adp.seam.keep import POSITION_MODES

DEFAULT_TASKS = ("button-press-topdown", "drawer-open", "window-close")
LOG_NAME, VIDEO_DIR, TIMELINE_NAME = "demo.jsonl", "videos", "gate_timeline.png"


@dataclass(frozen=True)
class DemoSim:
    """What ``--sim`` chooses: the environment and suite, the shipped policy, the default tasks
    (Meta-World names, or LIBERO task ids) and episodes per task, and how the episodes start."""

    env: str
    suite: str
    policy: str  # attribute of vla_adp.commands.common naming the shipped checkpoint
    tasks: tuple[str, ...]
    episodes: int
    starts: str  # the printed description of episode i's initial state

    def __post_init__(self) -> None:
        if not self.tasks or self.episodes < 1:
            raise ValueError(f"a demo needs tasks and >= 1 episode, got {self.tasks!r}, {self.episodes!r}")


SIMS = {
    "metaworld": DemoSim("metaworld", "metaworld", "EMBEDDED_POLICY", DEFAULT_TASKS, 4, "held-out goals"),
    "libero": DemoSim("libero", "libero_object", "LIBERO_POLICY", ("0", "2", "8"), 2, "official initial states"),
}


def add_arguments(p) -> None:
    p.add_argument("--sim", choices=sorted(SIMS), default="metaworld",
                   help="metaworld (default): the embedded Meta-World policy on held-out goals. libero: the LIBERO "
                        "reference policy on LIBERO-Object tasks 0, 2, 8, official initial states 0-1: tasks where "
                        "the unpruned policy succeeded in 3-4 of 4 episodes of benchmarks/libero_pruning.md (it "
                        "succeeds on ~37 %% of all LIBERO-Object episodes): a few chosen episodes that show the "
                        "pipeline, not a benchmark; about 2 minutes on one CPU thread")
    p.add_argument("--checkpoint", default=None, help="policy folder (default: the shipped policy of --sim)")
    p.add_argument("--tasks", nargs="+", default=None,
                   help="Meta-World task names of the metaworld suite, or LIBERO-Object task ids 0-9 "
                        "(default: the sim's demo tasks)")
    p.add_argument("--episodes", type=int, default=None,
                   help="episodes per task: goals / initial states 0..N-1 (default: 4 Meta-World, 2 LIBERO)")
    p.add_argument("--keep", type=float, default=0.5, help="ADP keep ratio ρ")
    p.add_argument("--positions", choices=POSITION_MODES, default="original",
                   help="RoPE positions after the cut: original (what the small policies tolerate) or contiguous "
                        "(the reference ADP code; costs the 4-layer Meta-World policy most of its success, see "
                        "benchmarks/metaworld_pruning.md)")
    p.add_argument("--max-steps", type=int, default=None, help="policy steps per episode (default: the task's)")
    p.add_argument("--out", default="demo_out", help="output folder (log, video, timeline)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")


def task_ids(names: list[str], sim: DemoSim = SIMS["metaworld"]) -> tuple[int, ...]:
    """Task ids of the sim's suite: Meta-World task names, or LIBERO task ids (``"0"``..) or instructions."""
    from vla_adp.eval.job import env_module

    if sim.env == "metaworld":
        from vla_adp.envs.metaworld import task_name

        resolve = task_name
    else:
        resolve = str
    suite = env_module(sim.env).suite_tasks(sim.suite)
    ids = []
    for name in names:
        short = resolve(name)
        if short in suite:
            ids.append(suite.index(short))
        elif sim.env != "metaworld" and short.isdigit() and int(short) < len(suite):
            ids.append(int(short))
        else:
            expected = suite if sim.env == "metaworld" else f"a task id 0-{len(suite) - 1} or an instruction {suite}"
            raise ValueError(f"task {name!r} is not in the {sim.suite} suite; expected one of {expected}")
    return tuple(ids)


def checkpoint_of(args, sim: DemoSim) -> str:
    from vla_adp.commands import common

    return str(args.checkpoint or getattr(common, sim.policy))


def jobs(args, out: Path, sim: DemoSim = SIMS["metaworld"]):
    """(unpruned, ADP, ADP's first episode with its overlay video): three EvalJobs on one log."""
    from vla_adp.eval.job import EvalJob, checkpoint_hints

    episodes = sim.episodes if args.episodes is None else args.episodes
    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes}")
    checkpoint = checkpoint_of(args, sim)
    render = checkpoint_hints(checkpoint).get("render", "faithful")  # the pixels the policy was trained on
    base = EvalJob(env=sim.env, suite=sim.suite, checkpoint=checkpoint, log=str(out / LOG_NAME),
                   tasks=task_ids(args.tasks or list(sim.tasks), sim), episodes=(0, episodes),
                   max_steps=args.max_steps, render=render, verbose=False)
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


def episode_lines(log, hashes: dict[str, str]) -> list[str]:
    """One line per task: each configuration's outcome per episode (1 success, 0 failure) and steps."""
    tasks = sorted({(e.task_id, e.task) for e in log.episodes.values()})
    lines = []
    for task_id, task in tasks:
        cells = []
        for label, h in hashes.items():
            eps = sorted((e for e in log.episodes.values() if e.config_hash == h and e.task_id == task_id),
                         key=lambda e: e.episode)
            cells.append(f"{label}: " + " ".join(f"{int(e.success)}({e.steps})" for e in eps))
        lines.append(f"  task {task_id} {task}: " + "; ".join(cells))
    return lines


def pictures(log, adp_hash: str, first, out: Path) -> tuple[Path | None, Path]:
    """The overlay video and the gate timeline of ADP's first episode."""
    from vla_adp.report.timeline import episode_timeline, plot_timeline

    key = (adp_hash, first.suite, first.tasks[0], 0)
    ep = log.episodes[key]
    timeline = plot_timeline(episode_timeline(log.queries[key], ep), out / TIMELINE_NAME)
    return (Path(ep.overlay_video) if ep.overlay_video else None), timeline


def run(args) -> int:
    import torch

    from vla_adp.eval.job import run_config, run_job
    from vla_adp.eval.logs import config_hash, read_logs

    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    out, sim = Path(args.out), SIMS[args.sim]
    base, adp, first = jobs(args, out, sim)
    out.mkdir(parents=True, exist_ok=True)
    clear(out)
    n = base.episodes[1]
    if sim.env == "metaworld":
        print(f"Meta-World reference policy {base.checkpoint}: tasks {', '.join(args.tasks or sim.tasks)}, {n} "
              f"episodes each, unpruned and ADP (keep {args.keep}) ...", flush=True)
    else:
        print(f"LIBERO reference policy {base.checkpoint} ({base.render} renderer): {sim.suite} tasks "
              f"{', '.join(map(str, base.tasks))}, {sim.starts} 0..{n - 1}, unpruned and ADP (keep {args.keep}); "
              f"a few chosen episodes, not a benchmark (benchmarks/libero_pruning.md) ...", flush=True)
    for job in (first, adp, base):
        run_job(job)
    log = read_logs([out / LOG_NAME])
    hashes = {"unpruned": config_hash(run_config(base)), f"ADP rho={args.keep}": config_hash(run_config(adp))}
    print("\n" + side_by_side(log, hashes) + "\n")
    if sim.env != "metaworld":
        print("per episode, success(steps):\n" + "\n".join(episode_lines(log, hashes)) + "\n")
    print("FLOPs: decoder + pruner scoring per query; speedup: the same queries unpruned / as run; gamma: share of "
          "queries pruned; ms/query: median logged wall time of Policy.infer")
    video, timeline = pictures(log, hashes[f"ADP rho={args.keep}"], first, out)
    print(f"log:            {out / LOG_NAME}  (vla-adp report {out / LOG_NAME} --by task)")
    print(f"overlay video:  {video or 'not written (see the log line above)'}")
    print(f"gate timeline:  {timeline}")
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0
