"""``vla-adp analyze layers --checkpoint DIR [--obs FILE] --out DIR``: layer-wise text→vision importance.

Writes Φ per layer (line plots and per-camera patch maps), participation ratio and entropy per layer
(paper Eq. 26, Fig. 7), vision self-similarity matrices (Fig. 6a), ``layers.json`` with the numbers
and ``similarity.npz`` with the matrices.
"""

from __future__ import annotations

from vla_adp.commands.common import add_checkpoint_args, load_policy


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="analyze_command", metavar="WHAT", required=True)
    lay = sub.add_parser("layers", help="Φ, participation ratio, entropy and self-similarity per decoder layer")
    add_checkpoint_args(lay)
    lay.add_argument("--obs", default=None, help=".npz/.json observation (default: a synthetic one)")
    lay.add_argument("--instruction", default=None, help="override the observation's instruction")
    lay.add_argument("--similarity-layers", default=None,
                     help="comma-separated layers for self-similarity (default: first, middle, last)")
    lay.add_argument("--out", required=True, help="output folder")


def _layers(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--similarity-layers must be comma-separated integers, got {text!r}") from None


def run(args) -> int:
    from vla_adp.commands.predict import read_obs
    from vla_adp.viz.analysis import analyze_layers, write_analysis

    policy = load_policy(args)
    obs = read_obs(args.obs, policy)
    if args.instruction:
        obs["instruction"] = args.instruction
    a = analyze_layers(policy, obs, _layers(args.similarity_layers))
    instruction = obs.get("instruction", obs.get("task_description"))
    files = write_analysis(a, args.out, {"checkpoint": str(args.checkpoint), "instruction": instruction})
    print(f"{'layer':>5s} {'PR':>9s} {'entropy':>8s}   (of {a.phi.shape[1]} visual tokens; uniform: PR = V)")
    for i, (pr, h) in enumerate(zip(a.pr, a.entropy)):
        print(f"{i:5d} {pr:9.2f} {h:8.4f}")
    for name, path in files.items():
        print(f"wrote {path}")
    return 0
