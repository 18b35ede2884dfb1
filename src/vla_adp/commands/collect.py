"""Scripted-expert demonstrations.

    vla-adp collect metaworld --tasks ... --demos N --out DIR
    vla-adp collect libero --suite libero_object,libero_spatial [--tasks 0,1] --demos N --out DIR
    vla-adp collect libero-vl --suite libero_object,libero_spatial --placements N --out DIR
        (scene frames with simulator-generated text for the vision-language stage: vla_adp.train.vl_data)
"""

from __future__ import annotations

import sys

DEFAULT_TASKS = "button-press-topdown,drawer-open,drawer-close,window-open,window-close,reach,door-open"
DEFAULT_LIBERO = "libero_object,libero_spatial"
LIBERO_IMAGE_SIZE = 128  # the LIBERO reference policy's input (and render) size


def add_arguments(p) -> None:
    p.add_argument("sim", choices=["metaworld", "libero", "libero-vl"],
                   help="simulator whose scripted experts to run; libero-vl: scene frames + simulator text")
    p.add_argument("--tasks", default=None,
                   help=f"Meta-World: comma-separated task names (default: {DEFAULT_TASKS}); "
                        "LIBERO: task ids within each suite (default: all pick-and-place tasks)")
    p.add_argument("--suite", default=DEFAULT_LIBERO, help=f"LIBERO suites (default: {DEFAULT_LIBERO})")
    p.add_argument("--render", choices=["fast", "faithful"], default="fast", help="LIBERO renderer")
    p.add_argument("--demos", type=int, default=50, help="successful demonstrations per task")
    p.add_argument("--out", required=True, help="output folder (data/... is git-ignored)")
    p.add_argument("--workers", type=int, default=1, help="rendering processes")
    p.add_argument("--seed", type=int, default=0, help="first training-split episode (= environment seed)")
    p.add_argument("--max-attempts", type=int, default=None, help="episodes tried per task (default 2·demos)")
    p.add_argument("--placements", type=int, default=50, help="libero-vl: fresh placements (frames) per task")
    p.add_argument("--patch", type=int, default=16,
                   help="libero-vl: the policy's ViT patch; text names cells of the (image-size / patch)² grid")
    p.add_argument("--image-size", type=int, default=None,
                   help=f"side of both views = the policy's input size (Meta-World 112, LIBERO {LIBERO_IMAGE_SIZE})")


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def libero_tasks(suites: str, ids: str | None) -> tuple[str, ...]:
    """``<suite>-<id>`` for the chosen ids, or every task whose goal the expert covers."""
    from vla_adp.envs.libero_expert import covered_tasks
    from vla_adp.train.demos import libero_task_key

    out = []
    for suite in _split(suites):
        chosen = [int(i) for i in _split(ids)] if ids else covered_tasks(suite)
        out += [libero_task_key(suite, i) for i in chosen]
    return tuple(out)


def run(args) -> int:
    from tqdm import tqdm

    from vla_adp.train.demos import CollectConfig, collect

    if args.sim == "libero-vl":
        return run_vl(args)
    if args.sim == "libero":
        tasks = libero_tasks(args.suite, args.tasks)
        size = args.image_size or LIBERO_IMAGE_SIZE
    else:
        tasks = tuple(_split(args.tasks or DEFAULT_TASKS))
        size = args.image_size or 112
    cfg = CollectConfig(tasks, args.demos, args.out, size, args.seed, args.max_attempts, args.workers,
                        sim=args.sim, render=args.render)
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


def run_vl(args) -> int:
    from tqdm import tqdm

    from vla_adp.train.vl_data import VLCollectConfig, collect_vl

    size = args.image_size or LIBERO_IMAGE_SIZE
    cfg = VLCollectConfig(libero_tasks(args.suite, args.tasks), args.placements, args.out, size,
                          grid=size // args.patch, first_placement=args.seed, render=args.render)
    bar = tqdm(total=len(cfg.tasks) * cfg.placements, desc="frames", unit="fr", file=sys.stderr)
    meta = collect_vl(cfg, lambda task, i, ok: (bar.update(1), bar.set_postfix_str(f"{task} {i}")))
    bar.close()
    print(f"wrote {cfg.out}: {sum(meta['frames'].values())} frames, {meta['written_this_run']} new in "
          f"{meta['wall_seconds']:.0f} s")
    return 0
