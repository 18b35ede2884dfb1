"""``vla-adp train --data DIR --out CKPT_DIR [--minutes 55] [--resume]``: behaviour cloning of the small OFT."""

from __future__ import annotations

from vla_adp.train.config import PRECISIONS, ModelSize, TrainConfig


def add_arguments(p) -> None:
    d, m = TrainConfig("", ""), ModelSize()
    p.add_argument("--data", required=True, help="dataset folder from `vla-adp collect metaworld|libero`")
    p.add_argument("--out", required=True, help="checkpoint folder (published OFT layout; state in OUT/training/)")
    p.add_argument("--tasks", default=None, help="comma-separated subset of the dataset's tasks (default: all)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/training/state.pt")
    p.add_argument("--minutes", type=float, default=d.minutes, help="wall-clock budget, resumes included")
    p.add_argument("--steps", type=int, default=d.steps, help="cosine schedule length (the budget may end it first)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--threads", default="auto",
                   help="torch CPU threads, or 'auto': the faster of 1 and 2, re-measured every 200 steps")
    p.add_argument("--save-minutes", type=float, default=d.save_minutes)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--llm-dim", type=int, default=m.llm_dim)
    p.add_argument("--llm-layers", type=int, default=m.llm_layers)
    p.add_argument("--llm-ffn", type=int, default=m.llm_ffn)
    p.add_argument("--llm-heads", type=int, default=m.llm_heads)
    p.add_argument("--patch", type=int, default=m.patch)
    p.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help="bf16: forward under CPU autocast (about 2x faster where the CPU has AVX512-BF16/AMX)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from vla_adp.train.trainer import Trainer

    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip()) if args.tasks else None
    model = ModelSize(patch=args.patch, llm_dim=args.llm_dim, llm_layers=args.llm_layers, llm_ffn=args.llm_ffn,
                      llm_heads=args.llm_heads)
    cfg = TrainConfig(args.data, args.out, tasks, args.minutes, args.steps, args.batch_size, args.lr,
                      warmup_steps=args.warmup_steps, threads=None if args.threads == "auto" else int(args.threads), save_minutes=args.save_minutes,
                      seed=args.seed, model=model, precision=args.precision)
    trainer = Trainer(cfg, resume=args.resume, progress=not args.no_progress)
    print(f"{len(trainer.demos)} frames, {len(trainer.demos.instructions)} demos, tasks {sorted(set(trainer.demos.tasks))}; "
          f"{sum(p.numel() for p in trainer.model.parameters()) / 1e6:.2f} M parameters")
    s = trainer.run()
    print(f"step {s['steps']}  loss {s['final_loss']:.4f}  {s['seconds'] / 60:.1f} min  {s['samples_per_s']:.1f} samples/s")
    print(f"checkpoint: {args.out} (Policy.load works on it); training state: {args.out}/training/state.pt")
    return 0
