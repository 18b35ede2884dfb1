"""``vla-adp train --data DIR --out CKPT_DIR [--minutes 55] [--resume] [--init CKPT]``: behaviour cloning of the small OFT.

``--stage vl``: the vision-language stage on scene text (``vla-adp collect libero-vl``) instead:
:mod:`vla_adp.train.vl_stage`; its output is a checkpoint that ``vla-adp train --init`` starts from.
"""

from __future__ import annotations

from vla_adp.model.transforms import CROP_AREA
from vla_adp.train.config import PRECISIONS, ModelSize, TrainConfig


def add_arguments(p) -> None:
    from vla_adp.train.vl_stage import VLTrainConfig

    d, m, v = TrainConfig("", ""), ModelSize(), VLTrainConfig("", "")
    p.add_argument("--stage", choices=["action", "vl"], default="action",
                   help="action: behaviour cloning (default); vl: vision-language stage on `collect libero-vl` text")
    p.add_argument("--data", required=True, help="dataset folder from `vla-adp collect metaworld|libero|libero-vl`")
    p.add_argument("--init", default=None,
                   help="start from this checkpoint's weights and tokenizer (e.g. a `--stage vl` output)")
    p.add_argument("--out", required=True, help="checkpoint folder (published OFT layout; state in OUT/training/)")
    p.add_argument("--tasks", default=None, help="comma-separated subset of the dataset's tasks (default: all)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/training/state.pt")
    p.add_argument("--minutes", type=float, default=None,
                   help=f"wall-clock budget, resumes included (default {d.minutes}; vl {v.minutes})")
    p.add_argument("--steps", type=int, default=None,
                   help=f"cosine schedule length, the budget may end it first (default {d.steps}; vl {v.steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default {d.lr}; vl {v.lr})")
    p.add_argument("--warmup-steps", type=int, default=None,
                   help=f"(default {d.warmup_steps}; vl {v.warmup_steps})")
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
    p.add_argument("--crop", action="store_true",
                   help="random 90 %%-area crops (OFT's LIBERO augmentation); the checkpoint then center-crops at evaluation")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _pick(value, default):
    return default if value is None else value


def run(args) -> int:
    if args.stage == "vl":
        return run_vl(args)
    from vla_adp.train.trainer import Trainer

    d = TrainConfig("", "")
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip()) if args.tasks else None
    model = ModelSize(patch=args.patch, llm_dim=args.llm_dim, llm_layers=args.llm_layers, llm_ffn=args.llm_ffn,
                      llm_heads=args.llm_heads)
    cfg = TrainConfig(args.data, args.out, tasks, _pick(args.minutes, d.minutes), _pick(args.steps, d.steps),
                      args.batch_size, _pick(args.lr, d.lr), warmup_steps=_pick(args.warmup_steps, d.warmup_steps),
                      threads=None if args.threads == "auto" else int(args.threads), save_minutes=args.save_minutes,
                      seed=args.seed, model=model, precision=args.precision, init=args.init,
                      crop_area=CROP_AREA if args.crop else None)
    trainer = Trainer(cfg, resume=args.resume, progress=not args.no_progress)
    print(f"{len(trainer.demos)} frames, {len(trainer.demos.instructions)} demos, tasks {sorted(set(trainer.demos.tasks))}; "
          f"{sum(p.numel() for p in trainer.model.parameters()) / 1e6:.2f} M parameters")
    s = trainer.run()
    print(f"step {s['steps']}  loss {s['final_loss']:.4f}  {s['seconds'] / 60:.1f} min  {s['samples_per_s']:.1f} samples/s")
    print(f"checkpoint: {args.out} (Policy.load works on it); training state: {args.out}/training/state.pt")
    return 0


def run_vl(args) -> int:
    from vla_adp.train.vl_stage import VLTrainConfig, VLTrainer

    d = VLTrainConfig("", "")
    if args.tasks:
        raise ValueError("--tasks is for --stage action; the vision-language stage reads every frame of --data")
    model = ModelSize(patch=args.patch, llm_dim=args.llm_dim, llm_layers=args.llm_layers, llm_ffn=args.llm_ffn,
                      llm_heads=args.llm_heads)
    threads = 1 if args.threads == "auto" else int(args.threads)
    cfg = VLTrainConfig(args.data, args.out, args.init, _pick(args.minutes, d.minutes), _pick(args.steps, d.steps),
                        args.batch_size, _pick(args.lr, d.lr), warmup_steps=_pick(args.warmup_steps, d.warmup_steps),
                        threads=threads, save_minutes=args.save_minutes, seed=args.seed, model=model,
                        precision=args.precision)
    trainer = VLTrainer(cfg, resume=args.resume, progress=not args.no_progress)
    print(f"{len(trainer.frames)} frames, {len(trainer.train_idx)} training / {len(trainer.held_idx)} held-out "
          f"text pairs; start: {args.init or 'fresh weights'}")
    s = trainer.run()
    print(f"step {s['steps']}  loss {s['first_loss']:.3f} -> {s['final_loss']:.3f}  {s['seconds'] / 60:.1f} min")
    for form, acc in (s["held_out_accuracy"] or {}).items():
        print(f"  held-out {form:12s} exact {acc['exact']:.0%}  tokens {acc['token']:.0%}  "
              f"(majority answer: {acc['majority']:.0%}; n={acc['n']})")
    print(f"checkpoint: {args.out} (Policy.load works; `vla-adp train --init {args.out}` starts action training)")
    return 0
