"""``vla-adp eval ENV --checkpoint DIR --suite SUITE [--trials 50] ...``: closed-loop evaluation.

The documented full run (OpenVLA-OFT protocol, one suite, GPU)::

    vla-adp eval libero --checkpoint DIR --suite libero_spatial --trials 50

``--envs N`` steps N simulators in parallel processes and answers their queries in batched forwards
(:mod:`vla_adp.eval.parallel`); ``--realtime [LATENCY]`` lets the world move while the policy thinks
(:mod:`vla_adp.eval.realtime`).

Rerunning the same command resumes from its log: finished episodes are skipped. One run writes a
log at a time (a second run on the same log refuses, naming the first); runs that split the work
by hand on one log take ``--worker NAME`` each: every worker appends to its own
``<log stem>.worker-NAME.jsonl`` and skips episodes any of them (or the shared log) finished.
"""

from __future__ import annotations

from pathlib import Path

from vla_adp.commands.common import add_checkpoint_args, add_family_arg, add_pruner_args, policy_settings


def add_arguments(p) -> None:
    from vla_adp.eval.job import ENV_FACTORIES

    p.add_argument("env", choices=sorted(ENV_FACTORIES), help="benchmark")
    add_checkpoint_args(p)
    add_family_arg(p)
    add_pruner_args(p)
    p.add_argument("--suite", required=True, help="e.g. libero_spatial, libero_object, libero_goal, libero_10")
    p.add_argument("--tasks", type=int, nargs="+", default=None, help="task ids (default: every task)")
    p.add_argument("--trials", "--episodes", type=int, default=None, dest="trials",
                   help="episodes per task (initial states first..first+trials-1); default: the pruning config's "
                        "num_trials_per_task if it has one (as the reference reads it), else 50")
    p.add_argument("--first-trial", type=int, default=0, help="first initial state (to split a run by hand)")
    p.add_argument("--max-steps", type=int, default=None, help="policy steps per episode (default: the suite's)")
    add_protocol_arg(p)
    p.add_argument("--seed", type=int, default=7, help="torch/numpy/python seed, set before every episode")
    p.add_argument("--open-loop", type=int, default=None, help="actions executed per query (default: whole chunk)")
    p.add_argument("--fast-render", action="store_true",
                   help="no multisampling/shadows/reflections: ~3x faster on a CPU, pixels differ from the published "
                        "checkpoints' training (default: the renderer the checkpoint records, else faithful)")
    p.add_argument("--log", default=None, help="JSONL log (default: runs/ENV-SUITE-CONFIGHASH.jsonl); resumes from it")
    p.add_argument("--worker", default=None, metavar="NAME",
                   help="write a per-worker log LOG_STEM.worker-NAME.jsonl beside the log instead, skipping episodes "
                        "the log and the other workers' logs already hold (several evaluations of one config at once)")
    add_recording_args(p)
    add_speed_args(p)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--instruction-shift", type=int, default=0, metavar="K",
                   help="control: task t runs with the instruction of task (t+K) mod n of its suite, in its own "
                        "scenes and judged by its own goal (does the policy read its instruction?); default 0")
    p.add_argument("--quiet", action="store_true", help="no per-episode lines")


def add_protocol_arg(p) -> None:
    """The env adapter's protocol (``eval`` and ``sweep``; :func:`vla_adp.eval.job.env_protocol`)."""
    p.add_argument("--protocol", default=None,
                   help="evaluation protocol of the family's env adapter: --family pi0 / pi05 on LIBERO: lerobot "
                        "(LeRobot's lerobot-eval, the default) or openpi (openpi's examples/libero); OpenVLA-OFT's "
                        "families have one protocol and refuse the option")


def add_recording_args(p) -> None:
    """What ``eval`` and ``sweep`` record besides the log (none of it changes the config hash)."""
    p.add_argument("--video-dir", default=None,
                   help="write one mp4 per episode here: the upright agentview at 30 fps, as OpenVLA-OFT saves it")
    p.add_argument("--overlay-video-dir", default=None,
                   help="write one overlay mp4 per episode here: every camera the policy saw with the pruned "
                        "patches masked, gate state, displacement and kept tokens per frame (10 fps)")
    p.add_argument("--log-indices", action="store_true", help="log the kept visual-token indices of every query")


def add_speed_args(p) -> None:
    """Parallel simulators and real-time mode (``eval`` and ``sweep``)."""
    p.add_argument("--envs", type=int, default=1,
                   help="simulator processes; one policy answers their queries in batched forwards (default 1: serial)")
    p.add_argument("--batch", type=int, default=None,
                   help="most queries per forward with --envs (default: --envs); 1 = one query per forward (batched forwards "
                        "are bit-identical to the serial runner too at fp32 on a CPU)")
    p.add_argument("--realtime", nargs="?", const="wall", default=None, metavar="LATENCY",
                   help="the world moves while the policy thinks; LATENCY: wall (measured, the default), a fixed "
                        "time (120ms, 0.12), model (the unpruned 7B on --latency-gpu scaled by the query's FLOPs), "
                        "model:GPU or model:MS (the unpruned per-query latency)")
    p.add_argument("--latency-gpu", default=None, help="GPU of the latency model (rtx4090, h20; published numbers)")
    p.add_argument("--latency-fixed", default=None,
                   help="latency-model time pruning does not shorten, added to every query (e.g. 10ms)")
    p.add_argument("--thinking", choices=("continue", "hold"), default="continue",
                   help="while the policy thinks the robot executes the previous chunk's remaining actions, then "
                        "holds (continue), or holds at once (hold)")
    p.add_argument("--control-hz", type=float, default=None, help="control rate (default: the env's: LIBERO 20, Meta-World 80)")


def realtime_of(args) -> dict | None:
    """RealtimeConfig fields from the command line; None without --realtime."""
    from vla_adp.eval.realtime import RealtimeConfig, _seconds, parse_latency

    if args.realtime is None:
        for flag in ("latency_gpu", "latency_fixed", "control_hz"):
            if getattr(args, flag) is not None:
                raise ValueError(f"--{flag.replace('_', '-')} needs --realtime")
        return None
    fields = parse_latency(args.realtime)
    if args.latency_gpu is not None:
        if fields["source"] != "model" or "full_s" in fields:
            raise ValueError(f"--latency-gpu needs --realtime model, got --realtime {args.realtime}")
        fields["gpu"] = args.latency_gpu
    if args.latency_fixed is not None:
        try:
            fields["fixed_s"] = _seconds(str(args.latency_fixed).strip().lower())
        except ValueError:
            raise ValueError(f"--latency-fixed must be a time like 10ms or 0.01, got {args.latency_fixed!r}") from None
    fields.update(thinking=args.thinking, control_hz=args.control_hz)
    RealtimeConfig(**fields)  # fails here, naming the bad value
    return fields


def _folder(path: str | None) -> str | None:
    # absolute: Ray workers do not run in the driver's working directory
    return None if path is None else str(Path(path).resolve())


def render_of(args) -> str:
    """``--fast-render``, else what the checkpoint was trained on (the LIBERO reference policy: fast),
    else faithful (the published checkpoints)."""
    from vla_adp.eval.job import checkpoint_hints

    if getattr(args, "fast_render", False):
        return "fast"
    return checkpoint_hints(args.checkpoint).get("render", "faithful")


def trials_of(args) -> int:
    """``--trials``; else ``num_trials_per_task`` of the pruning config (the reference ADP eval reads it
    from its JSON: ``int(value)``); else 50 (OpenVLA-OFT's protocol)."""
    if args.trials is not None:
        return args.trials
    path = getattr(args, "pruning_config", None)
    if path:
        from vla_adp.pruning.registry import read_config_file

        value = read_config_file(path).get("num_trials_per_task")
        if value is not None:
            try:
                return int(value)
            except (TypeError, ValueError):
                raise ValueError(f"{path}: num_trials_per_task must be an integer, got {value!r}") from None
    return 50


def job_settings(args) -> dict:
    """EvalJob fields shared by ``eval`` and ``sweep`` (checkpoint, episodes, protocol, loading, recording)."""
    import torch

    from vla_adp.utils.machine import default_dtype

    trials = trials_of(args)
    if trials < 1 or args.first_trial < 0:
        raise ValueError(f"--trials (or num_trials_per_task) must be >= 1 and --first-trial >= 0, "
                         f"got {trials} and {args.first_trial}")
    return dict(checkpoint=args.checkpoint, family=args.family, tasks=tuple(args.tasks) if args.tasks else None,
                episodes=(args.first_trial, args.first_trial + trials), seed=args.seed,
                max_steps=args.max_steps, render=render_of(args), open_loop=args.open_loop,
                policy=policy_settings(args), protocol=args.protocol,
                platform=args.platform, device=args.device,
                dtype=args.dtype or {torch.bfloat16: "bf16", torch.float32: "fp32"}[default_dtype(args.device)],
                log_indices=args.log_indices, video_dir=_folder(args.video_dir),
                overlay_video_dir=_folder(args.overlay_video_dir), realtime=realtime_of(args),
                envs=args.envs, batch=args.batch)


def job_from_args(args, log: str = ""):
    from vla_adp.eval.job import EvalJob

    return EvalJob(env=args.env, suite=args.suite, log=log, pruner=args.pruner, keep=args.keep,
                   pruning_config=args.pruning_config, verbose=not args.quiet,
                   instruction_shift=args.instruction_shift, **job_settings(args))


def run(args) -> int:
    import dataclasses

    import torch

    from vla_adp.eval.job import run_config, run_job, task_ids
    from vla_adp.eval.logs import config_hash, read_logs, sibling_logs, worker_log
    from vla_adp.eval.stats import success_rate

    if args.threads:
        torch.set_num_threads(args.threads)
    job = job_from_args(args)
    task_ids(job)  # a bad suite or task id fails here, before anything is written
    h = config_hash(run_config(job))
    base = Path(args.log or Path("runs") / f"{args.env}-{args.suite}-{h}.jsonl")
    if args.worker is not None:
        log = worker_log(base, args.worker)
        others = tuple(str(p) for p in sibling_logs(base) if p != log)
        job = dataclasses.replace(job, log=str(log), resume_logs=others)
    else:
        job = dataclasses.replace(job, log=str(base))
    print(f"config {h}  log {job.log}", flush=True)
    run_job(job)
    logs = sibling_logs(base) if args.worker is not None else [Path(job.log)]
    eps = [e for e in read_logs([p for p in logs if p.is_file()]).episodes.values() if e.config_hash == h]
    r = success_rate(e.success for e in eps)
    errors = sum(e.error is not None for e in eps)
    print(f"{args.suite}: {r.k}/{r.n} successes ({100 * r.rate:.1f}%, Wilson 95% [{100 * r.lo:.1f}, "
          f"{100 * r.hi:.1f}]), {errors} errors, in {' + '.join(str(p) for p in logs)}")
    print(f"table: vla-adp report {' '.join(str(p) for p in logs)}")
    return 0
