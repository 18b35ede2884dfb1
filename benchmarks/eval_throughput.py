"""Evaluation throughput: episodes per hour, serial vs N simulator processes with batched queries.

Every cell runs the same episodes (tasks × episodes per task) through the shared runners: ``N = 1``
is the serial runner (``run_suite``), ``N > 1`` the parallel one (``run_parallel``) with batched
forwards (``batch = N``, batch-invariant: bit-identical to serial at fp32 on a CPU,
:mod:`vla_adp.model.invariance`), with ``--plain`` also batched forwards with the batch-dependent
kernels (what batch invariance costs), and with ``--exact`` one query at a time (``batch = 1``). The policy is loaded once per pruner config and reused across cells. Each cell reports
wall time, episodes/hour, CPU seconds (this process + its simulator processes), and whether its
episodes equal the serial cell's (every logged end-effector position bit for bit; otherwise how
many episodes changed outcome).

Where the time goes:
* serial cell: the env is wrapped to time ``reset``, physics steps (``images=False``) and the extra
  cost of steps that render the cameras (``images=True`` minus a physics step); the policy's own
  stage timings (``timing_ms``: transforms = image pipeline, vision, LLM, pruner, head) come from
  the query logs;
* parallel cells: the main process's start-up (spawning simulators, first resets), time answering
  queries, and time waiting for simulators.

    PYTHONPATH=src MUJOCO_GL=egl python benchmarks/eval_throughput.py --env metaworld --suite metaworld \\
        --tasks 0 1 2 3 4 --episodes 2 --envs 1 2 4 --pruners none adp --exact \\
        --out runs/eval_throughput --markdown benchmarks/results/eval_throughput_metaworld.md

LIBERO (any checkpoint; the reference policy once it exists): ``--env libero --suite libero_spatial
--checkpoint DIR``. GPU machine: add ``--device cuda`` (bf16 unless ``--dtype``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla_adp.commands.common import EMBEDDED_POLICY
from vla_adp.eval.job import ENV_FACTORIES, EvalJob, build_pruner, env_module, load_policy, run_config, run_record
from vla_adp.eval.logs import LogWriter, config_hash
from vla_adp.eval.parallel import EnvSpec, run_parallel
from vla_adp.eval.runner import EpisodeSettings, run_suite

PRUNERS = {  # name -> EvalJob pruner fields, per env (Meta-World: the reference policy's main settings)
    "none": {},
    "adp": {"pruner": "adp", "keep": 0.5},
}
ENV_FIELDS = {"metaworld": {"adp": {"positions": "original"}}, "libero": {}}


class TimedEnv:
    """An env whose reset / physics / rendering time is added up (the serial cell's breakdown)."""

    def __init__(self, env, clock: dict[str, float]):
        self._env, self._clock = env, clock

    def __getattr__(self, name):
        return getattr(self._env, name)

    def reset(self, episode: int):
        t = time.perf_counter()
        out = self._env.reset(episode)
        self._clock["reset_s"] += time.perf_counter() - t
        return out

    def step(self, action, images: bool = True):
        t = time.perf_counter()
        out = self._env.step(action, images=images)
        key = "step_images_s" if images else "step_s"
        self._clock[key] += time.perf_counter() - t
        self._clock["n_" + key] += 1
        return out


def cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def read_log(path: Path) -> tuple[dict, dict]:
    queries, episodes = {}, {}
    for line in path.read_text().splitlines():
        d = json.loads(line)
        if d["kind"] == "query":
            queries[(d["task_id"], d["episode"], d["query"])] = d
        elif d["kind"] == "episode":
            episodes[(d["task_id"], d["episode"])] = d
    return queries, episodes


def run_cell(args, job: EvalJob, policy, n: int, batch: int, log: Path) -> dict[str, Any]:
    log.unlink(missing_ok=True)
    config = run_config(job)
    settings = EpisodeSettings(config_hash(config), job.seed, job.open_loop, verbose=False)
    tasks, episodes = list(job.tasks), list(range(*job.episodes))
    size = policy.model.args.image_size
    mod = env_module(job.env)
    clock = {k: 0.0 for k in ("make_s", "reset_s", "step_s", "step_images_s", "n_step_s", "n_step_images_s")}
    prof: dict[str, float] = {}
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    with LogWriter(str(log)) as writer:
        writer.write(run_record(job, config))
        if n == 1:
            def make(task_id):
                t = time.perf_counter()
                env = mod.make_env(job.suite, task_id, max_steps=job.max_steps, render=job.render, image_size=size)
                clock["make_s"] += time.perf_counter() - t
                return TimedEnv(env, clock)
            recs = run_suite(make, tasks, episodes, policy, settings, writer)
        else:
            spec = EnvSpec(ENV_FACTORIES[job.env], job.suite, job.max_steps, job.render, size)
            recs = run_parallel(spec, tasks, episodes, policy, settings, writer, envs=n, batch=batch, profile=prof)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    queries, _ = read_log(log)
    stages: dict[str, float] = {}
    for q in queries.values():
        for k, v in q["timing_ms"].items():
            stages[k] = stages.get(k, 0.0) + v / 1e3
    if n > 1:  # a batch's timings are copied to each of its queries: count each forward once
        stages = {k: v * prof["forwards"] / max(1, prof["queries"]) for k, v in stages.items()}
    return {"envs": n, "batch": batch, "episodes": len(recs), "successes": sum(r.success for r in recs),
            "errors": sum(r.error is not None for r in recs), "steps": sum(r.steps for r in recs),
            "queries": len(queries), "wall_s": wall, "cpu_s": cpu, "episodes_per_hour": 3600 * len(recs) / wall,
            # without start-up: spawning simulators and their first resets / the serial runner's env creation
            "steady_per_hour": 3600 * len(recs) / (wall - (prof["startup_s"] if n > 1 else clock["make_s"])),
            "env": clock if n == 1 else None, "policy_stages_s": stages, "parallel": prof or None, "log": str(log)}


def compare(cell: dict, serial: dict) -> None:
    """Bit-identical to the serial cell? Otherwise how many episodes ended differently."""
    q, e = read_log(Path(cell["log"]))
    qs, es = read_log(Path(serial["log"]))
    same = q.keys() == qs.keys() and all(q[k]["eef_pos"] == qs[k]["eef_pos"] for k in q)
    changed = sum((e[k]["success"], e[k]["steps"]) != (es[k]["success"], es[k]["steps"]) for k in es if k in e)
    cell["bit_identical"], cell["episodes_changed"] = same, changed


def breakdown(cell: dict) -> str:
    st = cell["policy_stages_s"]
    model = sum(v for k, v in st.items() if k not in ("total", "transforms", "gate"))
    if cell["envs"] == 1:
        c = cell["env"]
        physics = c["step_s"] + c["n_step_images_s"] * (c["step_s"] / max(1, c["n_step_s"]))
        render = c["step_images_s"] - c["n_step_images_s"] * (c["step_s"] / max(1, c["n_step_s"]))
        parts = {"env creation": c["make_s"], "reset": c["reset_s"], "physics": physics, "render+obs": render,
                 "image pipeline": st.get("transforms", 0.0), "model": model, "pruner gate": st.get("gate", 0.0)}
        parts["other"] = cell["wall_s"] - sum(parts.values())
    else:
        p = cell["parallel"]
        parts = {"start-up": p["startup_s"], "answering queries": p["policy_s"], "waiting for simulators": p["sim_wait_s"]}
        parts["other"] = cell["wall_s"] - sum(parts.values())
    return ", ".join(f"{k} {v:.1f} s ({100 * v / cell['wall_s']:.0f} %)" for k, v in parts.items())


def markdown(args, rows: list[dict], meta: dict) -> str:
    out = [f"Command: `{meta['command']}`", "",
           f"Machine: {meta['machine']}; torch {meta['torch']}, {args.threads} torch thread(s), device {args.device}, "
           f"{meta['date']}; load average before/after: {meta['load_before']} / {meta['load_after']}.", "",
           f"Episodes: tasks {args.tasks} × {args.episodes} per task of `{args.suite}`"
           f"{'' if args.max_steps is None else f', at most {args.max_steps} steps'}.", "",
           "| pruner | envs | batch | episodes | wall s | episodes/h | speed-up | episodes/h after start-up | CPU s | "
           "steps/s | queries | forwards | s per forward | same as serial |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        same = "serial" if r["envs"] == 1 else ("bit-identical" if r["bit_identical"] else
                                                 f"no ({r['episodes_changed']} episodes changed outcome/length)")
        batch = f"{r['batch']}" + ("" if r.get("batch_invariant", True) or r["batch"] == 1 else " plain")
        p = r["parallel"] or {}
        forwards = int(p.get("forwards", r["queries"]))
        per = (p["policy_s"] if p else r["policy_stages_s"].get("total", float("nan"))) / max(1, forwards)
        out.append(f"| {r['pruner']} | {r['envs']} | {batch} | {r['episodes']} | {r['wall_s']:.1f} | "
                   f"{r['episodes_per_hour']:.0f} | {r['speedup']:.2f}× | {r['steady_per_hour']:.0f} | {r['cpu_s']:.1f} | "
                   f"{r['steps'] / r['wall_s']:.0f} | {r['queries']} | {forwards} | {per:.3f} | {same} |")
    out += ["", "Where the wall time went:", ""]
    out += [f"* {r['pruner']}, envs {r['envs']}, batch {r['batch']}"
            f"{'' if r.get('batch_invariant', True) or r['batch'] == 1 else ' plain'}: {breakdown(r)}" for r in rows]
    return "\n".join(out) + "\n"


def load_avg() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", choices=sorted(ENV_FACTORIES), default="metaworld")
    p.add_argument("--suite", default="metaworld")
    p.add_argument("--checkpoint", default=str(EMBEDDED_POLICY))
    p.add_argument("--tasks", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--episodes", type=int, default=2, help="episodes per task")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--envs", type=int, nargs="+", default=[1, 2, 4], help="simulator counts (1 = serial)")
    p.add_argument("--exact", action="store_true", help="also run batch = 1 for every N > 1")
    p.add_argument("--plain", action="store_true",
                   help="also run batch = N without batch invariance (model.set_batch_invariant(False))")
    p.add_argument("--pruners", nargs="+", default=["none", "adp"], choices=sorted(PRUNERS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="fp32 / bf16 (default: bf16 on cuda, else fp32)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the policy process")
    p.add_argument("--render", default=None, help="faithful / fast (default: the env module's default)")
    p.add_argument("--out", default="runs/eval_throughput")
    p.add_argument("--markdown", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"command": " ".join(["python", *map(shlex.quote, sys.argv)]), "machine": f"{platform.node()}, "
            f"{os.cpu_count()} CPUs", "torch": torch.__version__, "load_before": load_avg(),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    if args.device.startswith("cuda") and torch.cuda.is_available():
        meta["machine"] += f", {torch.cuda.get_device_name()}"
    rows = []
    for name in args.pruners:
        fields = {**PRUNERS[name]}
        extra = ENV_FIELDS.get(args.env, {}).get(name, {})
        job = EvalJob(env=args.env, suite=args.suite, checkpoint=args.checkpoint, log="", tasks=tuple(args.tasks),
                      episodes=(0, args.episodes), max_steps=args.max_steps, pruner=fields.get("pruner"),
                      keep=fields.get("keep"), pruner_fields=extra, device=args.device, dtype=dtype, verbose=False,
                      **({"render": args.render} if args.render else {}))
        policy = load_policy(job, build_pruner(job))
        serial = None
        invariant = policy.model.batch_invariant
        for n in args.envs:
            plans = [(1, invariant)] if n == 1 else [(n, invariant), *([(n, False)] if args.plain else []),
                                                     *([(1, invariant)] if args.exact else [])]
            for batch, inv in plans:
                policy.model.set_batch_invariant(inv)
                tag = "" if inv or batch == 1 else "-plain"
                cell = run_cell(args, job, policy, n, batch, out / f"{name}-envs{n}-batch{batch}{tag}.jsonl")
                policy.model.set_batch_invariant(invariant)
                cell["pruner"], cell["batch_invariant"] = name, inv
                if n == 1:
                    serial = cell
                elif serial is not None:
                    compare(cell, serial)
                rows.append(cell)
                # after every cell, so that a run cut short by a time limit keeps what it measured
                (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=float))
                print(f"{name} envs {n} batch {batch}{tag}: {cell['episodes']} episodes in {cell['wall_s']:.1f} s "
                      f"({cell['episodes_per_hour']:.0f}/h, CPU {cell['cpu_s']:.1f} s) | {breakdown(cell)}", flush=True)
        base = serial["wall_s"] if serial else None
        for r in rows:
            if r["pruner"] == name:
                r["speedup"] = base / r["wall_s"] if base else float("nan")
    meta["load_after"] = load_avg()
    text = markdown(args, rows, meta)
    print(text)
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=float))
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
