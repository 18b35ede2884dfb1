"""``vla-adp report LOGS... [--by task] [--compare A B]``: tables from run logs alone."""

from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("logs", nargs="+", help="JSONL logs or folders of them (a sweep folder)")
    p.add_argument("--by", choices=["suite", "task"], default="suite", help="one row per method, or per task")
    p.add_argument("--compare", nargs=2, metavar=("HASH_A", "HASH_B"), default=None,
                   help="paired test of two method or config hashes (any unique prefix)")
    p.add_argument("--bootstrap", type=int, default=10_000, help="bootstrap resamples for --compare")
    p.add_argument("--legend", action="store_true", help="print every method's full config")


def run(args) -> int:
    from vla_adp.report import runs as report
    from vla_adp.eval.logs import read_logs

    logs = read_logs(args.logs)
    rows = report.methods(logs)
    if not rows:
        raise ValueError(f"no finished episodes in {' '.join(args.logs)}")
    print(report.task_table(rows) if args.by == "task" else report.suite_table(rows))
    n = len(logs.episodes)
    print(f"\n{n} episodes, {len(rows)} methods; SR in % with Wilson 95% intervals; FLOPs = decoder FLOPs per "
          "query as run; speedup = unpruned / as-run FLOPs; gamma = share of pruned queries")
    if logs.dropped_queries:
        print(f"({logs.dropped_queries} query lines of interrupted episodes ignored)")
    if logs.duplicate_episodes:
        print(f"({logs.duplicate_episodes} repeated episode lines ignored: each episode counts once)")
    if args.legend:
        print("\n" + report.legend(rows))
    if args.compare:
        print("\n" + report.compare(rows, *args.compare, n_boot=args.bootstrap))
    return 0
