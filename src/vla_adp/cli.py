"""``vla-adp`` command line: one module per subcommand under :mod:`vla_adp.commands`.

Each command module defines ``add_arguments(parser)`` and ``run(args) -> int``; modules are imported
only when their command runs, so ``vla-adp --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module under vla_adp.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "predict": ("predict", "predict one action chunk from a checkpoint folder and print timings"),
    "make-tiny-checkpoint": ("make_tiny", "write a tiny random checkpoint in the published OFT layout"),
    "collect": ("collect", "collect scripted-expert demonstrations (Meta-World, LIBERO) into a dataset folder"),
    "train": ("train", "behaviour-clone the small OpenVLA-OFT on collected demonstrations"),
    "train-lightvla": ("train_lightvla", "fine-tune a policy through LightVLA's differentiable token selection"),
    "demo": ("demo", "a shipped policy with and without ADP: Meta-World (the README's first command) or --sim libero"),
    "eval": ("eval", "closed-loop evaluation (LIBERO: the OpenVLA-OFT protocol), resumable JSONL logs"),
    "report": ("report", "success rates with Wilson intervals, FLOPs, speedup and paired tests from logs"),
    "sweep": ("sweep", "evaluate a grid of pruning configs on Ray (local or a cluster)"),
    "serve": ("serve", "serve a policy to robots (OpenVLA-OFT deploy.py over HTTP, or openpi's websocket protocol) "
                       "with per-session pruning state"),
    "flops": ("flops", "print the paper's FLOPs trade-off tables (Tables 5-9) from the analytic model"),
    "viz": ("viz", "pictures from logs: overlay, video, timeline, tradeoff, tables"),
    "analyze": ("analyze", "layer-wise text->vision importance, participation ratio, entropy, self-similarity"),
    "pruners": ("pruners", "list the registered pruning methods and their parameters"),
    "bench": ("bench", "per-stage latency, speedup vs FLOPs and peak memory of every pruner on one clock"),
}


def build_parser() -> argparse.ArgumentParser:
    from vla_adp import __version__

    parser = argparse.ArgumentParser(prog="vla-adp", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"vla-adp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
        if name in sys.argv[1:2]:  # only import the module whose arguments are needed
            importlib.import_module(f"vla_adp.commands.{module}").add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    saved = sys.argv
    sys.argv = [saved[0], *argv]
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    finally:
        sys.argv = saved
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    module = importlib.import_module(f"vla_adp.commands.{args._module}")
    try:
        if getattr(args, "checkpoint", None) is not None:
            from vla_adp.commands.common import resolve_checkpoint_arg

            resolve_checkpoint_arg(args)  # a Hub repo id -> its cached snapshot folder, once for every command
        return int(module.run(args) or 0)
    except (ValueError, FileNotFoundError) as e:  # bad input: a message, not a traceback
        print(f"vla-adp {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
