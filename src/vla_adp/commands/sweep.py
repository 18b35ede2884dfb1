"""``vla-adp sweep --grid GRID.json --checkpoint DIR --suite SUITE... --out DIR [--address ADDR]``.

Runs every (config, suite, task, episode chunk) as one Ray task (local Ray by default, a cluster
with ``--address``), each logging to its own file under ``--out``; rerunning resumes; the table at
the end is ``vla-adp report OUT``. One checkpoint per sweep: with per-suite checkpoints run one
sweep per suite into the same ``--out``.
"""

from __future__ import annotations

from vla_adp.commands.common import add_checkpoint_args, add_family_arg


def add_arguments(p) -> None:
    from vla_adp.commands.eval import add_protocol_arg, add_recording_args, add_speed_args
    from vla_adp.eval.job import ENV_FACTORIES

    p.add_argument("--grid", required=True, help="grid JSON (see vla_adp.eval.sweep)")
    p.add_argument("--env", choices=sorted(ENV_FACTORIES), default="libero")
    add_checkpoint_args(p)
    add_family_arg(p)
    p.add_argument("--suite", nargs="+", required=True, help="suites to run every config on")
    p.add_argument("--out", required=True, help="sweep folder (one JSONL file per Ray task)")
    p.add_argument("--tasks", type=int, nargs="+", default=None, help="task ids (default: every task)")
    p.add_argument("--trials", type=int, default=50, help="episodes per task")
    p.add_argument("--first-trial", type=int, default=0)
    p.add_argument("--chunk", type=int, default=10, help="episodes per Ray task")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--open-loop", type=int, default=None)
    p.add_argument("--fast-render", action="store_true", help="smoke tests only: pixels differ from training")
    add_protocol_arg(p)
    add_recording_args(p)
    add_speed_args(p)
    p.add_argument("--address", default=None, help="Ray cluster address (default: start Ray locally)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance")
    p.add_argument("--gpus-per-task", type=float, default=None,
                   help="GPUs per Ray task (default: 1 with --device cuda, else 0; 0.5 packs two per GPU)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (and Ray CPUs) per task")
    p.add_argument("--dry-run", action="store_true", help="print the plan and stop")


def template_job(args):
    from vla_adp.commands.eval import job_settings
    from vla_adp.eval.job import EvalJob

    return EvalJob(env=args.env, suite=args.suite[0], log="", **job_settings(args))


def run(args) -> int:
    from vla_adp.report import runs as report
    from vla_adp.eval.logs import read_logs
    from vla_adp.eval.sweep import plan, read_grid, run_sweep

    configs = read_grid(args.grid)
    chunks = plan(template_job(args), configs, args.suite, args.out, args.chunk)
    todo = [c for c in chunks if c.todo]
    print(f"{len(configs)} configs x {len(args.suite)} suites -> {len(chunks)} chunks, {len(todo)} to run "
          f"({sum(c.todo for c in todo)} episodes) into {args.out}", flush=True)
    if args.dry_run:
        for c in todo:
            print(f"  {c.job.log}  ({c.todo} episodes)")
        return 0
    gpus = args.gpus_per_task if args.gpus_per_task is not None else float(str(args.device).startswith("cuda"))
    results = run_sweep(chunks, args.address, args.num_cpus, gpus, args.threads)
    failed = [r for r in results if "failed" in r]
    logs = read_logs([args.out])
    if logs.episodes:
        print("\n" + report.suite_table(report.methods(logs)))
    if failed:
        print(f"{len(failed)} chunks failed; rerun the same command to retry them")
        return 1
    return 0
