"""``vla-adp collect metaworld --tasks ... --demos N --out DIR``: scripted-expert demonstrations."""

from __future__ import annotations

import sys

DEFAULT_TASKS = "button-press-topdown,drawer-open,drawer-close,window-open,window-close,reach,door-open"


def add_arguments(p) -> None:
    p.add_argument("suite", choices=["metaworld"], help="benchmark whose scripted experts to run")
    p.add_argument("--tasks", default=DEFAULT_TASKS, help=f"comma-separated task names (default: {DEFAULT_TASKS})")
    p.add_argument("--demos", type=int, default=50, help="successful demonstrations per task")
    p.add_argument("--out", required=True, help="output folder (data/... is git-ignored)")
    p.add_argument("--workers", type=int, default=1, help="rendering processes")
    p.add_argument("--seed", type=int, default=0, help="first training-split episode (= environment seed)")
    p.add_argument("--max-attempts", type=int, default=None, help="episodes tried per task (default 2·demos)")
    p.add_argument("--image-size", type=int, default=112, help="side of both views = the policy's input size")


def run(args) -> int:
    from tqdm import tqdm

    from vla_adp.train.demos import CollectConfig, collect

    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    cfg = CollectConfig(tasks, args.demos, args.out, args.image_size, args.seed, args.max_attempts, args.workers)
    bar = tqdm(total=len(cfg.tasks) * cfg.demos, desc="demos", unit="ep", file=sys.stderr)

    def progress(task, episode, ok, steps):
        bar.update(int(ok))
        bar.set_postfix_str(f"{task} ep {episode} {'ok' if ok else 'FAILED'} ({steps} steps)")

    meta = collect(cfg, progress)
    bar.close()
    print(f"wrote {cfg.out} in {meta['wall_seconds']:.0f} s")
    for t, m in meta["tasks"].items():
        print(f"  {t:22s} expert success {m['kept']}/{m['attempts']} = {m['expert_success']:.0%}  "
              f"steps mean {m['steps_mean']:.0f} max {m['steps_max']}  frames {m['frames']}")
    short = [t for t, m in meta["tasks"].items() if m["kept"] < cfg.demos]
    if short:
        print(f"warning: fewer than {cfg.demos} successful demos for {short}", file=sys.stderr)
    return 0
