"""Paper-style tables from run logs alone (ADP paper Table 1: SR per suite, average, FLOPs, speedup).

Rows are *methods* (``method_hash``: the run config without suite, checkpoint and step limits), so
one row can gather a method's runs on four suites with four per-suite checkpoints. Per row:

* SR per suite with its Wilson 95 % interval and episode count; ``Average`` is the mean of the
  suite success rates (as the paper averages suites);
* mean decoder FLOPs per query (Σ flops / Σ queries, as the policy ran them);
* expected speedup = FLOPs of the same queries unpruned / FLOPs as run (paper Eq. 24, with γ and
  the per-query costs measured instead of assumed);
* γ = share of queries that ran pruned (paper §4.3: ~0.44 on LIBERO);
* errors = episodes that ended in an exception (counted as failures).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from vla_adp.eval.logs import RunLog
from vla_adp.eval.schema import EpisodeRecord
from vla_adp.eval.stats import Rate, mcnemar_exact, pair_outcomes, paired_bootstrap, success_rate

SUITE_ORDER = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
SHORT = {"libero_spatial": "Spatial", "libero_object": "Object", "libero_goal": "Goal", "libero_10": "Long",
         "libero_90": "LIBERO-90"}


@dataclass
class Method:
    """One report row: every episode logged under configs that share a method hash."""

    method_hash: str
    config: dict[str, Any] = field(default_factory=dict)
    config_hashes: set[str] = field(default_factory=set)
    episodes: list[EpisodeRecord] = field(default_factory=list)

    def suites(self) -> list[str]:
        return sorted({e.suite for e in self.episodes}, key=_suite_key)

    def rate(self, suite: str | None = None, task_id: int | None = None) -> Rate:
        return success_rate(e.success for e in self._select(suite, task_id))

    def _select(self, suite, task_id) -> list[EpisodeRecord]:
        return [e for e in self.episodes
                if (suite is None or e.suite == suite) and (task_id is None or e.task_id == task_id)]

    def cost(self, suite: str | None = None, task_id: int | None = None) -> dict[str, float]:
        """:func:`cost` of the selected episodes."""
        return cost(self._select(suite, task_id))

    def outcomes(self) -> dict[tuple, bool]:
        return {(e.suite, e.task_id, e.episode): e.success for e in self.episodes}


def cost(episodes: list[EpisodeRecord]) -> dict[str, float]:
    """Mean FLOPs per query as run (``flops``) and unpruned (``flops_full``, nan unless every episode
    logged it), expected speedup = their ratio, γ = pruned share of queries, and errors; nan without
    queries. The report's columns and the trade-off plot's points both come from here."""
    queries = sum(e.queries for e in episodes)
    flops = sum(e.flops_total for e in episodes)
    has_full = all(e.flops_full_total is not None for e in episodes)
    full = sum(e.flops_full_total for e in episodes) if has_full else float("nan")
    nan = float("nan")
    return {"flops": flops / queries if queries else nan,
            "flops_full": full / queries if queries else nan,
            "speedup": full / flops if flops else nan,
            "gamma": sum(e.pruned_queries for e in episodes) / queries if queries else nan,
            "errors": sum(e.error is not None for e in episodes)}


def _suite_key(suite: str) -> tuple[int, str]:
    return (SUITE_ORDER.index(suite) if suite in SUITE_ORDER else len(SUITE_ORDER), suite)


def methods(logs: RunLog) -> list[Method]:
    """Group episodes into report rows (a config without a run line is its own method)."""
    rows: dict[str, Method] = {}
    for ep in logs.episodes.values():
        run = logs.run(ep.config_hash)
        mh = logs.method_of(ep.config_hash)
        row = rows.setdefault(mh, Method(mh, (run.config.get("method") or {}) if run else {}))
        row.config_hashes.add(ep.config_hash)
        row.episodes.append(ep)
    return sorted(rows.values(), key=lambda m: (-len(m.episodes), m.method_hash))


# -- labels --------------------------------------------------------------------------------
def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def labels(rows: list[Method]) -> dict[str, str]:
    """Per method, the settings that differ between the rows (``pruner`` always shown)."""
    flat = {m.method_hash: _flatten(m.config) for m in rows}
    keys = sorted({k for f in flat.values() for k in f})
    varying = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat.values()}) > 1]
    out = {}
    for m in rows:
        f = flat[m.method_hash]
        parts = [f"pruner={f.get('pruner.name') or 'none'}"]
        parts += [f"{k.removeprefix('pruner.config.')}={f.get(k)}" for k in varying if k != "pruner.name"
                  and k in f]
        out[m.method_hash] = " ".join(parts)
    return out


# -- formatting ----------------------------------------------------------------------------
def fmt_rate(r: Rate) -> str:
    if r.n == 0:
        return "-"
    return f"{100 * r.rate:5.1f} [{100 * r.lo:4.1f},{100 * r.hi:5.1f}] n={r.n}"


def fmt_flops(x: float) -> str:
    if x != x:
        return "-"
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.3g}"


def _num(x: float, spec: str) -> str:
    return "-" if x != x else format(x, spec)


def _table(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, body)])


def suite_table(rows: list[Method]) -> str:
    """SR per suite (Wilson 95 %), average, FLOPs per query, expected speedup, γ, errors."""
    suites = sorted({s for m in rows for s in m.suites()}, key=_suite_key)
    header = ["method", "hash", *[SHORT.get(s, s) for s in suites], "Average", "FLOPs/query", "speedup",
              "gamma", "errors"]
    names = labels(rows)
    body = []
    for m in rows:
        rates = [m.rate(s) for s in suites]
        present = [r.rate for r in rates if r.n]
        c = m.cost()
        body.append([names[m.method_hash], m.method_hash[:8], *map(fmt_rate, rates),
                     f"{100 * sum(present) / len(present):5.1f}" if present else "-", fmt_flops(c["flops"]),
                     _num(c["speedup"], ".2f") + ("x" if c["speedup"] == c["speedup"] else ""),
                     _num(c["gamma"], ".2f"), str(c["errors"])])
    return _table(header, body)


def task_table(rows: list[Method]) -> str:
    """One line per (method, suite, task)."""
    names = labels(rows)
    header = ["method", "hash", "suite", "task", "SR [95% CI] n", "FLOPs/query", "gamma", "errors", "instruction"]
    body = []
    for m in rows:
        tasks = sorted({(e.suite, e.task_id, e.task) for e in m.episodes}, key=lambda t: (_suite_key(t[0]), t[1]))
        for suite, tid, task in tasks:
            c = m.cost(suite, tid)
            body.append([names[m.method_hash], m.method_hash[:8], suite, str(tid), fmt_rate(m.rate(suite, tid)),
                         fmt_flops(c["flops"]), _num(c["gamma"], ".2f"), str(c["errors"]),
                         task.replace("_", " ")[:60]])
    return _table(header, body)


# -- paired comparison ---------------------------------------------------------------------
def find(rows: list[Method], prefix: str) -> tuple[str, dict[tuple, bool]]:
    """Outcomes of a method hash or a config hash, given by any unique prefix."""
    index: dict[str, dict[tuple, bool]] = {}
    for m in rows:
        index[m.method_hash] = m.outcomes()
        for e in m.episodes:
            if e.config_hash != m.method_hash:
                index.setdefault(e.config_hash, {})[(e.suite, e.task_id, e.episode)] = e.success
    hits = [h for h in index if h.startswith(prefix)]
    if len(hits) != 1:
        what = "no" if not hits else "more than one"
        raise ValueError(f"{what} method/config hash starts with {prefix!r}; known: {', '.join(sorted(index))}")
    return hits[0], index[hits[0]]


def compare(rows: list[Method], a: str, b: str, n_boot: int = 10_000, seed: int = 0) -> str:
    """Exact McNemar and a paired bootstrap on the episodes both configs ran (same initial states)."""
    ha, oa = find(rows, a)
    hb, ob = find(rows, b)
    keys, xa, xb = pair_outcomes(oa, ob)
    if not keys:
        raise ValueError(f"{ha} and {hb} have no (suite, task, episode) in common to compare")
    test = mcnemar_exact(xa, xb)
    diff = paired_bootstrap(xa, xb, n_boot=n_boot, seed=seed)
    ra, rb = success_rate(xa), success_rate(xb)
    return "\n".join([
        f"paired comparison on {len(keys)} episodes run by both (same suite, task, initial state)",
        f"  A {ha[:8]}: {fmt_rate(ra)}",
        f"  B {hb[:8]}: {fmt_rate(rb)}",
        f"  SR(A) - SR(B) = {100 * diff.diff:+.1f} points, paired bootstrap 95% CI "
        f"[{100 * diff.lo:+.1f}, {100 * diff.hi:+.1f}] ({n_boot} resamples)",
        f"  exact McNemar: A-only successes {test.a_only}, B-only {test.b_only}, two-sided p = {test.p_value:.4g}",
    ])


def legend(rows: list[Method]) -> str:
    return "\n".join(f"  {m.method_hash[:8]}  configs {', '.join(sorted(c[:8] for c in m.config_hashes))}  "
                     f"{json.dumps(m.config, sort_keys=True)}" for m in rows)
