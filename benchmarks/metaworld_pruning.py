"""Closed-loop pruning benchmark of the Meta-World reference policy (ADP paper Tables 1 and 4).

Every configuration runs through the shared evaluation runner (``vla_adp.eval.sweep.plan`` /
``run_sweep`` → ``run_job`` → ``Policy.infer``/``reset()``, JSONL logs, resumable) on the five tasks
of the ``metaworld`` suite, episode ``e`` from environment seed ``1_000_000 + e`` (goals held out
from the demonstrations), torch/numpy seed 7 before every episode. Every configuration of a task
runs the same initial states, so each is compared with the unpruned baseline episode by episode
(exact McNemar on the episodes both ran).

Configurations (matched keep ratios ρ = 0.3 / 0.5 / 0.7 of the 128 visual tokens):

* ``baseline``: no pruning.
* ``ADP dyn ρ``: ADP as published (text→vision score at layer 0, 0.4/0.6 main/wrist split, the
  action-aware gate with adjacent extrema over 3 windows, at most 3 consecutive pruned windows),
  except that the kept tokens keep their original RoPE positions, as every peer below does.
* ``ADP dyn 0.5 (contiguous)``: the reference ADP code's contiguous renumbering after the cut (the
  library default, right for the 7B); this 4-layer policy, trained on fixed positions, loses most of
  its success to the shift of every text and action-slot position.
* ``ADP static ρ``: the same selection on every query ("ADP w/o D").
* ``inverse ρ`` / ``random ρ``: ADP's gate and quotas, least relevant / uniformly drawn tokens
  (paper Table 4 and §5.3); ``inverse static 0.5``: inversion on every query.
* ``FastV ρ``: K = 1 (attention of decoder layer 0, the </s> row, global top-k, cut before layer
  1). The 7B's K = 2 of 32 layers scales to 0.25 here; K = 1 is the smallest K whose scoring layer
  exists, and leaves 3 of the 4 layers pruned.
* ``VLA-Pruner ρ``: the OFT fork's convention with ``fastv_k = 0`` (semantic attention of layer 0,
  cut before layer 1) and ``action_layer = 2`` (15 of 32 scaled to 4 layers: 1.9 → 2, a layer after
  the cut, as in the fork); window 3, γ = 0.8, first three queries unpruned.
* ``SparseVLM ρ``: text raters, stages after layers 0, 1, 2 (2 / 6 / 15 of 32 scaled to 4 layers), ρ
  the layer-averaged visual share (the release's budget convention), deleted tokens recycled,
  original positions.
* ``VLA-Cache`` / ``VLA-Cache (constant)``: unchanged, task-irrelevant tokens reuse the previous
  query's keys/values from layer 1 (2 of 32 scaled), relevance from layer 2 (15 of 32); the
  reference's 150 static / 100 relevant of 256 per camera scaled to 38 / 25 of 64; the entropy
  schedule of the reference or every reusable token from layer 1 on. ρ does not apply (ρ̂ reports
  the computed share of the last layer).
* ``LightVLA (fine-tuned)``: the policy fine-tuned through LightVLA's selection
  (``src/vla_adp/assets/metaworld_lightvla``, see ``benchmarks/metaworld_lightvla.md``); its kept
  count is data-dependent, so the table reports the achieved ratio. ``LightVLA (no fine-tuning)``
  runs the same selector on the reference policy.

Columns: success per task and average with Wilson 95 % intervals; FLOPs per query as run (decoder +
the pruner's scoring, from the logs) and the speedup over the same queries unpruned; γ = share of
queries that pruned; ρ̂ = kept share of the visual tokens in pruned queries; CPU latency per query
(see :func:`measure_latency`); McNemar against the baseline.

    PYTHONPATH=src MUJOCO_GL=egl python benchmarks/metaworld_pruning.py --out runs/mwbench \
        --trials 25 --trials-main 50 --num-cpus 2
    # tables only, from the logs:   ... --report-only
    # a sub-table of some rows (and the baseline), e.g. from a folder that holds only those:
    #   ... --report-only --report-rows "SparseVLM 0.5" "VLA-Cache" --json J --markdown M
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla_adp.commands.common import EMBEDDED_POLICY, LIGHTVLA_POLICY
from vla_adp.eval.job import EvalJob
from vla_adp.eval.logs import RunLog, read_logs
from vla_adp.report.runs import cost
from vla_adp.eval.stats import mcnemar_exact, success_rate
from vla_adp.eval.sweep import normalise, plan, run_sweep

SUITE = "metaworld"
ORIGINAL = {"positions": "original"}
STATIC = {"gate": {"schedule": "static"}, **ORIGINAL}
FASTV = {"layer": 1}
VLA_PRUNER = {"fastv_k": 0, "action_layer": 2}
SPARSEVLM = {"layers": [0, 1, 2], **ORIGINAL}
VLA_CACHE = {"reuse_layers": [1], "relevance_layer": 2}


@dataclass(frozen=True)
class Entry:
    """One row: a label, the checkpoint it runs, whether it gets the main episode count, and its sweep config."""

    label: str
    config: dict[str, Any]
    checkpoint: str = "reference"  # "reference" or "lightvla"
    main: bool = False  # run --trials-main episodes per task (baseline and ADP at 0.5)


def entries(keeps: tuple[float, ...] = (0.3, 0.5, 0.7)) -> list[Entry]:
    """Every configuration of the benchmark, baseline first."""
    out = [Entry("baseline", {"pruner": None}, main=True)]
    out += [Entry(f"ADP dyn {k}", {"pruner": "adp", "keep": k, **ORIGINAL}, main=k == 0.5) for k in keeps]
    out += [Entry("ADP dyn 0.5 (contiguous)", {"pruner": "adp", "keep": 0.5, "positions": "contiguous"})]
    out += [Entry(f"ADP static {k}", {"pruner": "adp", "keep": k, **STATIC}) for k in keeps]
    out += [Entry(f"inverse {k}", {"pruner": "inverse", "keep": k, **ORIGINAL}) for k in (0.5, 0.3)]
    out += [Entry("inverse static 0.5", {"pruner": "inverse", "keep": 0.5, **STATIC})]
    out += [Entry(f"random {k}", {"pruner": "random", "keep": k, **ORIGINAL}) for k in (0.5, 0.3)]
    out += [Entry(f"FastV {k}", {"pruner": "fastv", "keep": k, **FASTV}) for k in keeps]
    out += [Entry(f"VLA-Pruner {k}", {"pruner": "vla_pruner", "keep": k, **VLA_PRUNER}) for k in keeps]
    out += [Entry(f"SparseVLM {k}", {"pruner": "sparsevlm", "keep": k, **SPARSEVLM}) for k in keeps]
    out += [Entry("VLA-Cache", {"pruner": "vla_cache", **VLA_CACHE}),
            Entry("VLA-Cache (constant)", {"pruner": "vla_cache", **VLA_CACHE, "schedule": "constant"})]
    out += [Entry("LightVLA (fine-tuned)", {"pruner": "lightvla"}, checkpoint="lightvla"),
            Entry("LightVLA (no fine-tuning)", {"pruner": "lightvla"})]
    return out


# -- running -------------------------------------------------------------------------------
def checkpoint_of(entry: Entry, args) -> str:
    return str(Path(args.lightvla if entry.checkpoint == "lightvla" else args.checkpoint).resolve())


def template(entry: Entry, args) -> EvalJob:
    n = args.trials_main if entry.main else args.trials
    return EvalJob(env="metaworld", suite=SUITE, checkpoint=checkpoint_of(entry, args), log="", episodes=(0, n),
                   seed=7, dtype="fp32", verbose=False)


def chunks_of(rows: list[Entry], args) -> dict[str, list]:
    """label -> its sweep chunks (one per task; each logs to its own file under ``args.out``)."""
    out = {}
    for e in rows:
        job = template(e, args)
        out[e.label] = plan(job, [normalise(e.config)], [SUITE], args.out, chunk=job.episodes[1])
    return out


def run_all(rows: list[Entry], args) -> None:
    chunks = [c for cs in chunks_of(rows, args).values() for c in cs]
    todo = [c for c in chunks if c.todo]
    print(f"{len(todo)} chunks ({sum(c.todo for c in todo)} episodes) to run on {args.num_cpus} Ray CPUs", flush=True)
    t0 = time.perf_counter()
    failed = [r for r in run_sweep(chunks, num_cpus=args.num_cpus, threads=1) if "failed" in r]
    print(f"sweep done in {(time.perf_counter() - t0) / 60:.1f} min; {len(failed)} chunks failed", flush=True)


def available(rows: list[Entry], args) -> list[Entry]:
    """The entries whose checkpoint exists (the LightVLA fine-tune may not have been made yet)."""
    keep = [e for e in rows if Path(checkpoint_of(e, args)).is_dir()]
    for e in rows:
        if e not in keep:
            print(f"skipping {e.label!r}: no checkpoint at {checkpoint_of(e, args)}", file=sys.stderr)
    return keep


# -- results -------------------------------------------------------------------------------
@dataclass
class Row:
    """Everything the tables need about one configuration, from the logs (latency added later)."""

    label: str
    config_hash: str
    tasks: list[str]
    per_task: list[dict[str, Any]]
    overall: dict[str, Any]
    cost: dict[str, float]
    keep_achieved: float | None
    outcomes: dict[tuple, bool] = field(default_factory=dict)
    latency: dict[str, float] = field(default_factory=dict)
    mcnemar: dict[str, Any] | None = None


def rate_dict(successes) -> dict[str, Any]:
    r = success_rate(successes)
    return {"k": r.k, "n": r.n, "rate": r.rate, "lo": r.lo, "hi": r.hi}


def collect_row(entry: Entry, config_hash: str, log: RunLog, tasks: list[str]) -> Row:
    eps = [e for e in log.episodes.values() if e.config_hash == config_hash]
    per_task = [rate_dict(e.success for e in eps if e.task_id == t) for t in range(len(tasks))]
    present = [r["rate"] for r in per_task if r["n"]]
    overall = {**rate_dict(e.success for e in eps), "mean_of_tasks": float(np.mean(present)) if present else None}
    queries = [q for key, qs in log.queries.items() if key[0] == config_hash for q in qs]
    kept = [q.kept_visual / q.n_visual for q in queries if q.pruned]
    return Row(entry.label, config_hash, tasks, per_task, overall, cost(eps), float(np.mean(kept)) if kept else None,
               {(e.task_id, e.episode): e.success for e in eps})


def collect_rows(rows: list[Entry], args) -> list[Row]:
    from vla_adp.envs.metaworld import suite_tasks

    log, tasks = read_logs([args.out]), suite_tasks(SUITE)
    hashes = {label: cs[0].config_hash for label, cs in chunks_of(rows, args).items()}
    out = [collect_row(e, hashes[e.label], log, tasks) for e in rows]
    base = out[0]
    for row in out[1:]:
        keys = sorted(set(base.outcomes) & set(row.outcomes))
        if keys:
            t = mcnemar_exact([row.outcomes[k] for k in keys], [base.outcomes[k] for k in keys])
            diff = np.mean([row.outcomes[k] for k in keys]) - np.mean([base.outcomes[k] for k in keys])
            row.mcnemar = {"n": len(keys), "diff": float(diff), "config_only": t.a_only, "baseline_only": t.b_only,
                           "p": t.p_value}
    return out


# -- latency ---------------------------------------------------------------------------------
def observations(size: int) -> list[dict]:
    """One real first observation per task of the suite (held-out episode 0)."""
    from vla_adp.envs.metaworld import make_env, suite_tasks

    obs = []
    for t in range(len(suite_tasks(SUITE))):
        env = make_env(SUITE, t, image_size=size)
        obs.append(env.reset(0))
        env.close()
    return obs


def forced(entry: Entry) -> dict[str, Any]:
    """The entry's pruner settings with every query pruned (gated pruners: static, no limiter)."""
    cfg = normalise(entry.config)
    fields = dict(cfg["fields"])
    if cfg["pruner"] in ("adp", "inverse", "random"):
        fields["gate"] = {"schedule": "static", "limit_consecutive": False}
    return {"name": cfg["pruner"], "keep": cfg["keep"], "fields": fields}


def measure_latency(rows: list[Entry], args) -> dict[str, dict[str, float]]:
    """Per-query CPU latency of ``Policy.infer`` on the real policies, one torch thread.

    Every distinct pruned shape (the entry's pruner forced to prune every query) and the unpruned
    query run interleaved (round r: every configuration once, order rotated by r; first rounds
    dropped; each round cycles through one real first observation of each task), and give medians.
    A gated configuration's latency per query *as run* is then γ·t_pruned + (1 − γ)·t_unpruned with γ
    from its closed-loop log (:func:`vla_adp.bench.latency.expected_latency`); the gate's own cost is
    inside t_pruned and ignored in unpruned queries (< 0.1 ms).
    """
    from vla_adp.policy import Policy
    from vla_adp.pruning.registry import build_pruner

    torch.set_num_threads(1)
    models = {k: Policy.load(p, dtype=torch.float32) for k, p in
              (("reference", args.checkpoint), ("lightvla", args.lightvla))}
    obs = observations(models["reference"].model.args.image_size)
    cases: dict[str, Policy] = {"unpruned": models["reference"]}
    for e in rows[1:]:
        f = forced(e)
        cases[e.label] = Policy(models[e.checkpoint].ckpt, pruner=build_pruner(f["name"], f["keep"], **f["fields"]))
    return time_cases(cases, obs, args.latency_reps)


def time_cases(cases: dict, obs: list[dict], reps: int) -> dict[str, dict[str, float]]:
    """Interleaved ``Policy.infer`` timings (ms) of every case, each cycling through ``obs``."""
    from vla_adp.bench.latency import interleave, summarize

    counter = {k: 0 for k in cases}

    def query(name: str) -> float:
        t0 = time.perf_counter()
        cases[name].infer(obs[counter[name] % len(obs)])
        counter[name] += 1
        return 1e3 * (time.perf_counter() - t0)

    samples = interleave({k: (lambda k=k: query(k)) for k in cases}, reps, warmup=4)
    return {k: dataclasses.asdict(summarize(v)) for k, v in samples.items()}


def attach_latency(table: list[Row], lat: dict[str, dict[str, float]]) -> None:
    from vla_adp.bench.latency import expected_latency

    full = lat["unpruned"]["median"]
    for row in table:
        if row.label == "baseline":
            row.latency = {"pruned_ms": None, "per_query_ms": full, "speedup": 1.0}
            continue
        pruned = lat[row.label]["median"]
        gamma = row.cost["gamma"] if row.cost["gamma"] == row.cost["gamma"] else 1.0
        per_query = expected_latency(full, pruned, gamma)
        row.latency = {"pruned_ms": pruned, "per_query_ms": per_query, "speedup": full / per_query}


# -- tables ----------------------------------------------------------------------------------
def pct(r: dict[str, Any]) -> str:
    return "–" if not r["n"] else f"{100 * r['rate']:.0f} [{100 * r['lo']:.0f}, {100 * r['hi']:.0f}]"


def main_table(table: list[Row]) -> list[str]:
    tasks = table[0].tasks
    head = ["config", *tasks, "average (n)", "GFLOPs/query", "speedup", "γ", "ρ̂", "CPU ms/query (pruned)",
            "Δ vs baseline (McNemar p)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        o, c, lat = r.overall, r.cost, r.latency
        avg = f"**{100 * o['rate']:.1f}** [{100 * o['lo']:.0f}, {100 * o['hi']:.0f}] ({o['n']})" if o["n"] else "–"
        ms = "–" if not lat else (f"{lat['per_query_ms']:.1f}" + (f" ({lat['pruned_ms']:.1f})" if lat["pruned_ms"] else ""))
        mc = "–" if not r.mcnemar else (f"{100 * r.mcnemar['diff']:+.1f} ({r.mcnemar['config_only']}/"
                                         f"{r.mcnemar['baseline_only']}, p={r.mcnemar['p']:.2g})")
        cells = [r.label, *map(pct, r.per_task), avg, f"{c['flops'] / 1e9:.3f}", f"{c['speedup']:.2f}×",
                 f"{c['gamma']:.2f}", "–" if r.keep_achieved is None else f"{r.keep_achieved:.2f}", ms, mc]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def gap_lines(table: list[Row]) -> list[str]:
    """Direct vs inverse (paper Table 4) and dynamic vs static ADP at the same ρ, paired on episodes."""
    by = {r.label: r for r in table}
    pairs = [(f"ADP dyn {k}", f"inverse {k}") for k in (0.5, 0.3)] + [("ADP static 0.5", "inverse static 0.5")]
    pairs += [(f"ADP dyn {k}", f"ADP static {k}") for k in (0.3, 0.5, 0.7)]
    pairs += [(f"ADP dyn {k}", f"random {k}") for k in (0.5, 0.3)]
    pairs += [("ADP dyn 0.5", "ADP dyn 0.5 (contiguous)"), ("ADP dyn 0.5", "FastV 0.5"), ("ADP dyn 0.5", "VLA-Pruner 0.5")]
    lines = ["| A | B | episodes | SR A | SR B | A − B (points) | A-only / B-only | exact McNemar p |", "|---|---|---|---|---|---|---|---|"]
    for a, b in pairs:
        if a not in by or b not in by:
            continue
        keys = sorted(set(by[a].outcomes) & set(by[b].outcomes))
        if not keys:
            continue
        xa, xb = [by[a].outcomes[k] for k in keys], [by[b].outcomes[k] for k in keys]
        t = mcnemar_exact(xa, xb)
        lines.append(f"| {a} | {b} | {len(keys)} | {100 * np.mean(xa):.1f} | {100 * np.mean(xb):.1f} | "
                     f"{100 * (np.mean(xa) - np.mean(xb)):+.1f} | {t.a_only} / {t.b_only} | {t.p_value:.3g} |")
    return lines


def write_results(table: list[Row], lat: dict | None, args, wall: dict[str, float]) -> None:
    summary = {"command": command_line(), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
               "checkpoint": str(args.checkpoint), "lightvla_checkpoint": str(args.lightvla),
               "trials": args.trials, "trials_main": args.trials_main, "wall_minutes": wall,
               "latency_raw": lat, "rows": [dataclasses.asdict(r) | {"outcomes": None} for r in table]}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(summary, indent=1, default=str))
    gaps = gap_lines(table)
    paired = ["## Paired gaps", "", *gaps, ""] if len(gaps) > 2 else []  # none when no pair's rows are present
    text = "\n".join(["## Main table", "", *main_table(table), "", *paired])
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)


def command_line() -> str:
    return "PYTHONPATH=src MUJOCO_GL=egl python " + " ".join(shlex.quote(a) for a in sys.argv)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(EMBEDDED_POLICY), help="reference policy (default: the embedded one)")
    p.add_argument("--lightvla", default=str(LIGHTVLA_POLICY), help="LightVLA fine-tune of the reference policy")
    p.add_argument("--out", default="runs/mwbench", help="sweep folder (one JSONL per config and task; resumes)")
    p.add_argument("--trials", type=int, default=25, help="episodes per task and config")
    p.add_argument("--trials-main", type=int, default=50, help="episodes per task of the baseline and ADP dyn 0.5")
    p.add_argument("--num-cpus", type=int, default=2, help="Ray workers (one torch thread each)")
    p.add_argument("--only", nargs="*", default=None, help="run only these labels (all rows still reported)")
    p.add_argument("--report-rows", nargs="+", default=None, metavar="LABEL",
                   help="tables (and latency) of the baseline and these labels only: a sub-table from a log folder "
                        "that holds only some rows")
    p.add_argument("--report-only", action="store_true", help="no new episodes: tables from the logs")
    p.add_argument("--latency-reps", type=int, default=30, help="interleaved latency rounds (0: skip latency)")
    p.add_argument("--json", default="benchmarks/results/metaworld_pruning.json")
    p.add_argument("--markdown", default=None, help="also write the tables here")
    return p.parse_args(argv)


def pick(rows: list[Entry], labels: list[str] | None, flag: str) -> list[Entry]:
    """The entries named by ``labels`` (``None``: all), in the benchmark's order; an unknown label is an
    error that lists the known ones (a typo must not silently drop a row)."""
    if labels is None:
        return rows
    known = [e.label for e in rows]
    unknown = [x for x in labels if x not in known]
    if unknown:
        raise ValueError(f"{flag}: unknown row label(s) {unknown}; expected labels among {known}")
    return [e for e in rows if e.label in labels]


def report_rows(rows: list[Entry], labels: list[str] | None) -> list[Entry]:
    """The rows of the tables: all, or (``--report-rows``) the baseline and the named ones, so a
    sub-table (its own McNemar against the same run's baseline, latency of those rows only) can be
    made from a log folder that holds only some rows."""
    if labels is None:
        return rows
    return [rows[0], *pick(rows[1:], [x for x in labels if x != rows[0].label], "--report-rows")]


def check_labels(args, rows: list[Entry]) -> str | None:
    """The message for an unknown ``--only`` / ``--report-rows`` label, or ``None`` when all are known."""
    try:
        pick(rows, args.only, "--only")
        report_rows(rows, getattr(args, "report_rows", None))
    except ValueError as e:
        return str(e)
    return None


def run_benchmark(args, rows: list[Entry], bench) -> None:
    """Sweep (unless ``--report-only``), tables from the logs, latency, results: the steps every
    closed-loop pruning benchmark shares; ``bench`` supplies ``run_all``, ``collect_rows`` and
    ``measure_latency`` for its simulator (this module for Meta-World, ``libero_pruning`` for LIBERO)."""
    wall = {}
    todo = pick(rows, args.only, "--only")
    rows = report_rows(rows, getattr(args, "report_rows", None))
    if not args.report_only:
        t0 = time.perf_counter()
        bench.run_all(todo, args)
        wall["sweep"] = round((time.perf_counter() - t0) / 60, 1)
    table = bench.collect_rows(rows, args)
    lat = None
    if args.latency_reps:
        t0 = time.perf_counter()
        lat = bench.measure_latency(rows, args)
        attach_latency(table, lat)
        wall["latency"] = round((time.perf_counter() - t0) / 60, 1)
    write_results(table, lat, args, wall)


def main(argv=None) -> int:
    args = parse(argv)
    rows = available(entries(), args)
    if (bad := check_labels(args, rows)) is not None:
        print(f"error: {bad}", file=sys.stderr)
        return 2
    run_benchmark(args, rows, sys.modules[__name__])
    return 0


if __name__ == "__main__":
    sys.exit(main())
