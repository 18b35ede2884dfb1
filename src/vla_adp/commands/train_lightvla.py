"""``vla-adp train-lightvla --checkpoint DIR --data DIR --out DIR [--minutes 18]``: LightVLA fine-tuning.

Starts from a trained policy (default: the embedded Meta-World reference policy) and fine-tunes every
weight through LightVLA's differentiable token selection (:mod:`vla_adp.train.lightvla`); the result
is a checkpoint in the published layout for ``--pruner lightvla``.
"""

from __future__ import annotations

from vla_adp.train.lightvla import LightVLATrainConfig


def add_arguments(p) -> None:
    from vla_adp.commands.common import EMBEDDED_POLICY

    d = LightVLATrainConfig("", "", "", tasks=())
    p.add_argument("--checkpoint", default=str(EMBEDDED_POLICY), help="policy to start from (default: the embedded one)")
    p.add_argument("--data", required=True, help="dataset folder from `vla-adp collect metaworld`")
    p.add_argument("--out", required=True, help="output checkpoint folder (published layout)")
    p.add_argument("--tasks", default=None, help="comma-separated tasks (default: the reference policy's six training tasks, suite metaworld_train)")
    p.add_argument("--minutes", type=float, default=d.minutes, help="wall-clock budget of the training loop")
    p.add_argument("--steps", type=int, default=d.steps, help="schedule length (the budget may end it first)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from vla_adp.train.lightvla import LightVLATrainer

    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip()) if args.tasks else None
    cfg = LightVLATrainConfig(args.checkpoint, args.data, args.out, tasks, args.minutes, args.steps, args.batch_size,
                              args.lr, warmup_steps=args.warmup_steps, threads=args.threads, seed=args.seed)
    trainer = LightVLATrainer(cfg, progress=not args.no_progress)
    print(f"{len(trainer.demos)} frames of {sorted(set(trainer.demos.tasks))}; start {args.checkpoint}", flush=True)
    s = trainer.run()
    print(f"step {s['steps']}  loss {s['first_loss']:.4f} -> {s['final_loss']:.4f}  kept {s['final_kept_distinct']:.3f} "
          f"of the visual tokens  {s['seconds'] / 60:.1f} min")
    print(f"checkpoint: {args.out} (vla-adp eval ... --checkpoint {args.out} --pruner lightvla)")
    return 0
