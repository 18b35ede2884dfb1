"""Expected per-episode speedup: benchmark latencies × the share of pruned queries in closed loop.

A gated pruner (ADP) prunes only a share γ of the queries of an episode (paper §4.3: γ ≈ 0.44 on
LIBERO). Its expected latency per query — and, over T queries, per episode — is

    E[t] = γ·t_pruned + (1 − γ)·(t_full + t_gate)          speedup = t_full / E[t]

the latency twin of the paper's expected FLOPs (Eq. 24). γ and the keep ratio come from the query
records of closed-loop logs (:class:`~vla_adp.eval.schema.QueryRecord`); t_pruned, t_full and
t_gate from a ``vla-adp bench`` run of the same pruner at the nearest keep ratio.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from vla_adp.bench.latency import BASELINE, expected_speedup

KEEP_TOLERANCE = 0.05  # a logged keep ratio matches a benchmarked one within this


def read_query_records(path: str | Path) -> list[dict[str, Any]]:
    """The ``query`` lines of a JSONL run log; a broken line is an error naming its number."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"run log not found: {p}")
    out = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}:{n}: not a JSON line ({e})") from None
        if isinstance(rec, dict) and rec.get("kind", "query") == "query":
            _check_record(rec, f"{p}:{n}")
            out.append(rec)
    return out


def _check_record(rec: dict, where: str) -> None:
    missing = [k for k in ("pruned", "kept_visual", "n_visual") if k not in rec]
    if missing:
        raise ValueError(f"{where}: query record lacks {missing} (expected vla_adp.eval.schema.QueryRecord fields)")


def gamma_by_config(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (config_hash, pruner): queries, γ = share pruned, and the keep ratio of the pruned ones."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for rec in records:
        groups[(rec.get("config_hash", "?"), rec.get("pruner"))].append(rec)
    rows = []
    for (config, pruner), recs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        pruned = [r for r in recs if r["pruned"]]
        keep = float(np.median([r["kept_visual"] / r["n_visual"] for r in pruned])) if pruned else None
        rows.append({"config_hash": config, "pruner": pruner, "queries": len(recs),
                     "gamma": len(pruned) / len(recs), "keep": keep})
    return rows


def _match(cases: list[dict[str, Any]], pruner: str | None, keep: float | None) -> dict[str, Any] | None:
    found = [c for c in cases if c["pruner"] == pruner and c.get("error") is None and c["keep"] is not None
             and keep is not None and abs(c["keep"] - keep) <= KEEP_TOLERANCE]
    # The nearest keep ratio; among equals the plain pruner before variants such as adp:scoring=folded.
    return min(found, key=lambda c: (abs(c["keep"] - keep), c["label"].split("@")[0] != pruner)) if found else None


def expected_rows(run: dict[str, Any], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Expected per-query (= per-episode) speedups of each logged configuration on one benchmark run.

    Args:
        run: one entry of a ``vla-adp bench --json`` file's ``runs``.
        records: query records of closed-loop logs.
    """
    cases = run["cases"]
    base = next(c for c in cases if c["label"] == BASELINE)
    rows = []
    for g in gamma_by_config(records):
        case = _match(cases, g["pruner"], g["keep"])
        row = {**g, "bench_case": case["label"] if case else None}
        if case is not None or g["gamma"] == 0.0:
            row.update(_speedups(base, case or base, g["gamma"]))
        rows.append(row)
    return rows


def _speedups(base: dict, case: dict, gamma: float) -> dict[str, float]:
    med = lambda c, k: c["stages"][k]["median"]  # noqa: E731
    gate = med(case, "gate") if case is not base else 0.0
    llm_pruned = med(case, "llm") + med(case, "overhead")
    return {"expected_e2e_speedup": expected_speedup(med(base, "e2e"), med(case, "e2e"), gamma, gate),
            "expected_llm_speedup": expected_speedup(med(base, "llm"), llm_pruned, gamma, gate)}
