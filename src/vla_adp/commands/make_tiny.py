"""``vla-adp make-tiny-checkpoint DIR``."""

from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("folder", help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--platform", default="libero")
    p.add_argument("--dataset", default="libero_spatial_no_noops", help="key in dataset_statistics.json")
    p.add_argument("--llm-layers", type=int, default=2)


def run(args) -> int:
    from vla_adp.model.tiny import make_tiny_checkpoint

    out = make_tiny_checkpoint(args.folder, seed=args.seed, platform=args.platform, dataset=args.dataset,
                               llm_layers=args.llm_layers)
    print(f"wrote tiny checkpoint to {out}")
    for f in sorted(out.iterdir()):
        print(f"  {f.name:45s} {f.stat().st_size / 1024:8.1f} KiB")
    return 0
