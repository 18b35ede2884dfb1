"""``vla-adp make-tiny-checkpoint DIR`` (OpenVLA-OFT's layout; ``--family openvla``: ``openvla/openvla-7b``'s;
``--family pi05|pi0``: LeRobot's)."""

from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("folder", help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--platform", default="libero")
    p.add_argument("--dataset", default="libero_spatial_no_noops", help="key in dataset_statistics.json")
    p.add_argument("--llm-layers", type=int, default=2)
    p.add_argument("--family", choices=("oft", "openvla", "pi0", "pi05"), default="oft",
                   help="oft (default); openvla: autoregressive OpenVLA in openvla/openvla-7b's layout; "
                        "pi0 / pi05: a tiny flow-matching policy in LeRobot's hub layout")


def run(args) -> int:
    if args.family == "openvla":
        from vla_adp.model.openvla.tiny import make_tiny_openvla_checkpoint

        out = make_tiny_openvla_checkpoint(args.folder, seed=args.seed, dataset=args.dataset, llm_layers=args.llm_layers)
    elif args.family != "oft":
        from vla_adp.model.pi0.tiny import make_tiny_pi0_checkpoint

        out = make_tiny_pi0_checkpoint(args.folder, args.family, seed=args.seed)
    else:
        from vla_adp.model.tiny import make_tiny_checkpoint

        out = make_tiny_checkpoint(args.folder, seed=args.seed, platform=args.platform, dataset=args.dataset,
                                   llm_layers=args.llm_layers)
    print(f"wrote tiny checkpoint to {out}")
    for f in sorted(out.iterdir()):
        print(f"  {f.name:45s} {f.stat().st_size / 1024:8.1f} KiB")
    return 0
