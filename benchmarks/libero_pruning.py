"""Closed-loop pruning benchmark of the LIBERO reference policy (ADP paper Tables 1 and 4).

The same rows, runner and statistics as ``benchmarks/metaworld_pruning.py`` (whose helpers this script
reuses), on LIBERO-Object and LIBERO-Spatial with the official initial states: episode ``e`` of a task
starts from the suite's initial state ``e`` (the OpenVLA-OFT protocol: 10 settle steps, 280 / 220
policy steps), rendered as the policy was trained (the checkpoint's recorded renderer and camera
size). Every configuration runs the same episodes, so each is compared with the unpruned baseline
and with ADP episode by episode (exact McNemar).

Rows (ρ = 0.3 / 0.5 / 0.7 of the 128 visual tokens, original RoPE positions for every pruner):
baseline; ADP dynamic and static; inverse and random (ADP's gate and quotas); FastV (K = 1: the
smallest scoring layer that exists, cut before layer 1); VLA-Pruner (the OFT fork's convention,
``fastv_k = 0``, ``action_layer = 3``: 15 of 32 layers scaled to 6); SparseVLM (stages after layers
0, 1, 3: 2 / 6 / 15 of 32 scaled to 6; ρ the layer-averaged visual share); VLA-Cache (reuse from
layers 1 and 2, relevance from layer 3; 38 static / 25 relevant of 64 per camera; entropy or constant
schedule); LightVLA's selection without fine-tuning. Columns as in the Meta-World benchmark, one success column per suite.

    PYTHONPATH=src MUJOCO_GL=egl python benchmarks/libero_pruning.py --out runs/liberobench \
        --trials 10 --num-cpus 2
    # tables only, from the logs:   ... --report-only
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

import metaworld_pruning as mw  # the shared tables and statistics (same folder)
from vla_adp.eval.job import EvalJob
from vla_adp.eval.logs import read_logs
from vla_adp.report.runs import cost
from vla_adp.eval.stats import mcnemar_exact
from vla_adp.eval.sweep import normalise, plan, run_sweep

SUITES = ("libero_object", "libero_spatial")
POLICY = Path(__file__).resolve().parents[1] / "src" / "vla_adp" / "assets" / "libero_policy"
ORIGINAL = {"positions": "original"}
STATIC = {"gate": {"schedule": "static"}, **ORIGINAL}


def entries(keeps: tuple[float, ...] = (0.3, 0.5, 0.7)) -> list[mw.Entry]:
    out = [mw.Entry("baseline", {"pruner": None}, main=True)]
    out += [mw.Entry(f"ADP dyn {k}", {"pruner": "adp", "keep": k, **ORIGINAL}, main=k == 0.5) for k in keeps]
    out += [mw.Entry(f"ADP static {k}", {"pruner": "adp", "keep": k, **STATIC}) for k in keeps]
    out += [mw.Entry(f"inverse {k}", {"pruner": "inverse", "keep": k, **ORIGINAL}) for k in keeps]
    out += [mw.Entry(f"random {k}", {"pruner": "random", "keep": k, **ORIGINAL}) for k in keeps]
    out += [mw.Entry(f"FastV {k}", {"pruner": "fastv", "keep": k, "layer": 1}) for k in keeps]
    out += [mw.Entry(f"VLA-Pruner {k}", {"pruner": "vla_pruner", "keep": k, "fastv_k": 0, "action_layer": 3})
            for k in keeps]
    out += [mw.Entry(f"SparseVLM {k}", {"pruner": "sparsevlm", "keep": k, "layers": [0, 1, 3], **ORIGINAL})
            for k in keeps]
    cache = {"pruner": "vla_cache", "reuse_layers": [1, 2], "relevance_layer": 3}
    out += [mw.Entry("VLA-Cache", cache), mw.Entry("VLA-Cache (constant)", {**cache, "schedule": "constant"})]
    out += [mw.Entry("LightVLA (no fine-tuning)", {"pruner": "lightvla"})]
    return out


def template(entry: mw.Entry, args) -> EvalJob:
    n = args.trials_main if entry.main else args.trials
    return EvalJob(env="libero", suite=SUITES[0], checkpoint=str(Path(args.checkpoint).resolve()), log="",
                   episodes=(0, n), seed=7, dtype="fp32", verbose=False, max_steps=args.max_steps,
                   render=mw_render(args.checkpoint), tasks=tuple(args.tasks) if args.tasks else None)


def mw_render(checkpoint: str) -> str:
    from vla_adp.eval.job import checkpoint_hints

    return checkpoint_hints(checkpoint).get("render", "faithful")


def chunks_of(rows: list[mw.Entry], args) -> dict[str, list]:
    return {e.label: plan(template(e, args), [normalise(e.config)], list(args.suite), args.out,
                          chunk=args.chunk) for e in rows}


def run_all(rows: list[mw.Entry], args) -> None:
    todo = [c for cs in chunks_of(rows, args).values() for c in cs if c.todo]
    print(f"{len(todo)} chunks ({sum(c.todo for c in todo)} episodes) on {args.num_cpus} Ray CPUs", flush=True)
    t0 = time.perf_counter()
    failed = [r for r in run_sweep(todo, num_cpus=args.num_cpus, threads=1) if "failed" in r]
    print(f"sweep done in {(time.perf_counter() - t0) / 60:.1f} min; {len(failed)} chunks failed", flush=True)


def collect_rows(rows: list[mw.Entry], args) -> list[mw.Row]:
    """One :class:`metaworld_pruning.Row` per entry; its per-"task" columns are the suites."""
    log = read_logs([args.out])
    out = []
    for e, cs in chunks_of(rows, args).items():
        hashes = {c.config_hash for c in cs}
        eps = [x for x in log.episodes.values() if x.config_hash in hashes]
        per_suite = [mw.rate_dict(x.success for x in eps if x.suite == s) for s in args.suite]
        present = [r["rate"] for r in per_suite if r["n"]]
        overall = {**mw.rate_dict(x.success for x in eps), "mean_of_tasks": float(np.mean(present)) if present else None}
        queries = [q for key, qs in log.queries.items() if key[0] in hashes for q in qs]
        kept = [q.kept_visual / q.n_visual for q in queries if q.pruned]
        out.append(mw.Row(e, ",".join(sorted(hashes)), list(args.suite), per_suite, overall, cost(eps),
                          float(np.mean(kept)) if kept else None,
                          {(x.suite, x.task_id, x.episode): x.success for x in eps}))
    base = out[0]
    for row in out[1:]:
        keys = sorted(set(base.outcomes) & set(row.outcomes))
        if keys:
            t = mcnemar_exact([row.outcomes[k] for k in keys], [base.outcomes[k] for k in keys])
            diff = np.mean([row.outcomes[k] for k in keys]) - np.mean([base.outcomes[k] for k in keys])
            row.mcnemar = {"n": len(keys), "diff": float(diff), "config_only": t.a_only,
                           "baseline_only": t.b_only, "p": t.p_value}
    return out


def observations(checkpoint: str, size: int, per_suite: int = 2) -> list[dict]:
    """Real first observations (initial state 0) of the first ``per_suite`` tasks of each suite."""
    from vla_adp.envs.libero import make_env
    from vla_adp.eval.job import checkpoint_hints

    hints = checkpoint_hints(checkpoint)
    obs = []
    for suite in SUITES:
        for t in range(per_suite):
            env = make_env(suite, t, render=hints.get("render", "faithful"), image_size=size,
                           camera_size=int(hints.get("camera_size", 256)))
            obs.append(env.reset(0))
            env.close()
    return obs


def measure_latency(rows: list[mw.Entry], args) -> dict[str, dict[str, float]]:
    """As :func:`metaworld_pruning.measure_latency`: interleaved medians of ``Policy.infer``, one thread."""
    from vla_adp.policy import Policy
    from vla_adp.pruning.registry import build_pruner

    torch.set_num_threads(1)
    base = Policy.load(args.checkpoint, dtype=torch.float32)
    obs = observations(args.checkpoint, base.model.args.image_size)
    cases = {"unpruned": base}
    for e in rows[1:]:
        f = mw.forced(e)
        cases[e.label] = Policy(base.ckpt, pruner=build_pruner(f["name"], f["keep"], **f["fields"]))
    return mw.time_cases(cases, obs, args.latency_reps)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(POLICY), help="the LIBERO reference policy")
    p.add_argument("--out", default="runs/liberobench", help="sweep folder (one JSONL per config, suite, task)")
    p.add_argument("--suite", nargs="+", default=list(SUITES))
    p.add_argument("--tasks", type=int, nargs="+", default=None, help="task ids (default: all 10 per suite)")
    p.add_argument("--trials", type=int, default=10, help="episodes per task and config")
    p.add_argument("--trials-main", type=int, default=None, help="episodes per task of baseline and ADP dyn 0.5")
    p.add_argument("--chunk", type=int, default=5, help="episodes per Ray task")
    p.add_argument("--max-steps", type=int, default=None, help="policy steps per episode (default: the suite's; smoke tests)")
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--only", nargs="*", default=None, help="run only these labels (all rows still reported)")
    p.add_argument("--report-rows", nargs="+", default=None, metavar="LABEL",
                   help="tables (and latency) of the baseline and these labels only")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--latency-reps", type=int, default=30)
    p.add_argument("--json", default="benchmarks/results/libero_pruning.json")
    p.add_argument("--markdown", default=None)
    args = p.parse_args(argv)
    args.trials_main = args.trials_main or args.trials
    args.lightvla = args.checkpoint  # write_results records it; no LightVLA fine-tune of this policy
    return args


def main(argv=None) -> int:
    args = parse(argv)
    if not Path(args.checkpoint).is_dir():
        print(f"no LIBERO reference policy at {args.checkpoint}", file=sys.stderr)
        return 2
    if (bad := mw.check_labels(args, entries())) is not None:
        print(f"error: {bad}", file=sys.stderr)
        return 2
    mw.run_benchmark(args, entries(), sys.modules[__name__])
    return 0


if __name__ == "__main__":
    sys.exit(main())
