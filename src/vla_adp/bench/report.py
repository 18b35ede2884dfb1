"""Markdown tables of a ``vla-adp bench`` result (pure: JSON dict in, text out).

Tables per run (one model × dtype × device): the side-by-side comparison of every pruner at matched
keep ratios (FLOPs-predicted vs measured LLM speedup, overhead, end to end, memory), per-stage
medians (p90), the stand-alone layer-0 scorer, and the issue-7 criteria; then the expected
per-episode speedups when closed-loop logs were given.
"""

from __future__ import annotations

from typing import Any

STAGE_COLUMNS = ("transforms", "gate", "vision", "projector", "prune", "gather", "llm", "head", "decode", "e2e")
ACTION_STAGES = ("head", "decode")  # OFT's action head, OpenVLA's token decoding: a run shows the one it has
REALISE_TARGET = 0.95  # target (docs/latency.md): measured LLM speedup ≥ 95 % of the FLOPs-predicted one
SCORING_TARGET_PCT = 1.0  # target (docs/latency.md): layer-0 scoring ≤ 1 % of an unpruned forward


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _ms(summary: dict | None) -> str:
    return "–" if not summary else f"{summary['median']:.1f} ({summary['p90']:.1f})"


def _f(x: float | None, fmt: str = ".2f") -> str:
    return "–" if x is None else format(x, fmt)


def _kept(case: dict) -> str:
    kv = case.get("kept_visual")
    if not kv:
        return "–"
    if kv["min"] == kv["max"]:
        return f"{kv['median']:.0f}"
    return f"{kv['median']:.0f} [{kv['min']:.0f}–{kv['max']:.0f}]"  # data-dependent (LightVLA)


def side_by_side(run: dict[str, Any]) -> list[str]:
    """Every configuration of one run: FLOPs, predicted vs measured speedups, overhead, e2e, memory."""
    header = ["config", "kept visual", "seq len", "LLM GFLOPs (paper)", "pred. LLM speedup (consistent / paper)",
              "LLM ms med (p90)", "meas. LLM speedup [paired p10–p90]", "realised", "overhead ms (% unpruned e2e)",
              "e2e ms med (p90)", "e2e speedup", "query peak MiB"]
    rows = []
    for c in run["cases"]:
        if c.get("error"):
            rows.append([c["label"], f"unavailable: {c['error']}"] + ["–"] * (len(header) - 2))
            continue
        s = c.get("speedup") or {}
        pruned = "" if c["pruned_share"] in (0.0, 1.0) or c["label"] == "none" else f" (pruned {c['pruned_share']:.0%})"
        meas = f"{s['llm']:.2f} [{s['llm_paired_p10']:.2f}–{s['llm_paired_p90']:.2f}]" if s else "1.00"
        pred = f"{s['predicted_consistent']:.2f} / {s['predicted_paper']:.2f}" if s else "1.00"
        over = f"{c['stages']['overhead']['median']:.2f} ({s['overhead_pct_of_unpruned_e2e']:.2f} %)" if s else "–"
        mem = c.get("memory") or {}
        rows.append([c["label"] + pruned, _kept(c), str(c["seq_lens"][-1]) if c["seq_lens"] else "–",
                     f"{c['flops']['paper'] / 1e9:.1f}", pred, _ms(c["stages"]["llm"]), meas,
                     f"{s['realised']:.1%}" if s else "–", over, _ms(c["stages"]["e2e"]),
                     _f(s.get("e2e")) if s else "1.00", _memory(mem)])
    return _table(header, rows)


def _memory(mem: dict) -> str:
    if "error" in mem:
        return f"probe failed: {mem['error'][:80]}"
    return _f(mem.get("query_mib"), ".0f")


def run_label(run: dict[str, Any]) -> str:
    """``model dtype device``, the family after the model when it is not OFT."""
    family = "" if run.get("family", "oft") == "oft" else f" {run['family']}"
    return f"{run['model']}{family} {run['dtype']} {run['device']}"


def stage_table(run: dict[str, Any]) -> list[str]:
    """Median (p90) ms of every stage of every configuration."""
    ok = [c for c in run["cases"] if not c.get("error")]
    columns = [k for k in STAGE_COLUMNS if k not in ACTION_STAGES
               or any((c["stages"].get(k) or {}).get("median", 0.0) > 0 for c in ok)]
    rows = [[c["label"], *(_ms(c["stages"].get(k)) for k in columns)] for c in ok]
    header = [{"prune": "prune (score+select)"}.get(k, k) for k in columns]
    return _table(["config", *header], rows)


def scoring_table(run: dict[str, Any]) -> list[str]:
    """The layer-0 text→vision score Φ alone, against the unpruned query and its LLM."""
    rows = [[m, _ms(s), f"{s['pct_of_unpruned_e2e']:.2f} %", f"{s['pct_of_unpruned_llm']:.2f} %",
             f"{s['flops'] / 1e9:.3f} ({s['flops_pct_of_unpruned_llm']:.2f} %)"]
            for m, s in run.get("scoring", {}).items()]
    return _table(["Φ method", "ms med (p90)", "% of unpruned e2e", "% of unpruned LLM",
                   "GFLOPs (% of unpruned LLM FLOPs)"], rows) if rows else []


def criteria(run: dict[str, Any]) -> list[str]:
    """Issue 7's done-criteria on this run (ADP at keep 0.3; Φ fused at layer 0)."""
    out = []
    for c in run["cases"]:
        if c["pruner"] == "adp" and c["keep"] == 0.3 and not c.get("error"):
            r = c["speedup"]["realised"]
            out.append(f"- `{c['label']}` realises {r:.1%} of its FLOPs-predicted LLM speedup "
                       f"(target ≥ {REALISE_TARGET:.0%}): {'met' if r >= REALISE_TARGET else 'NOT met'}.")
    for method, s in run.get("scoring", {}).items():
        pct = s["pct_of_unpruned_e2e"]
        out.append(f"- layer-0 Φ `{method}` costs {pct:.2f} % of an unpruned query "
                   f"(target ≤ {SCORING_TARGET_PCT:g} %): {'met' if pct <= SCORING_TARGET_PCT else 'NOT met'}.")
    return out


def graphs_table(run: dict[str, Any]) -> list[str]:
    rows = [[label, _ms(s)] for label, s in run.get("graphs", {}).items()]
    return _table(["config", "decoder as CUDA graph, ms med (p90)"], rows) if rows else []


def run_section(run: dict[str, Any]) -> list[str]:
    base = next(c for c in run["cases"] if c["label"] == "none")
    noise = base["stages"]["e2e"]
    family = "" if run.get("family", "oft") == "oft" else f" · {run['family']}"
    lines = [f"### {run['model']}{family} · {run['dtype']} · {run['device']} · {run['threads']} thread(s) · "
             f"{run.get('clock', 'wall')} clock · "
             f"{run['seq_len']} tokens ({run['n_visual']} visual) · {run['reps']} rounds after {run['warmup']} warm-up",
             "", f"Model: {run['shape']}. Unpruned e2e spread (p90−p10)/median = {_spread(noise):.1%}.", ""]
    for title, table in (("Side by side", side_by_side(run)), ("Per stage, ms median (p90)", stage_table(run)),
                         ("Layer-0 scoring alone", scoring_table(run)), ("CUDA graphs", graphs_table(run))):
        if table:
            lines += [f"**{title}**", "", *table, ""]
    met = criteria(run)
    return lines + (["**Criteria**", "", *met, ""] if met else [])


def _spread(s: dict) -> float:
    return (s["p90"] - s["p10"]) / s["median"] if s["median"] else float("nan")


def expected_table(rows: list[dict[str, Any]]) -> list[str]:
    body = [[str(r["config_hash"]), str(r["pruner"]), str(r["queries"]), f"{r['gamma']:.2f}", _f(r["keep"]),
             str(r["bench_case"]), _f(r.get("expected_llm_speedup")), _f(r.get("expected_e2e_speedup"))]
            for r in rows]
    return _table(["config", "pruner", "queries", "γ (pruned share)", "keep", "bench row",
                   "expected LLM(+overhead) speedup", "expected e2e speedup"], body)


def between_runs(results: list[dict[str, Any]], names: list[str]) -> list[str]:
    """One row per pruned configuration per run: how much realised speedups and Φ shares move between runs."""
    rows = []
    for name, result in zip(names, results):
        for run in result["runs"]:
            phi = "; ".join(f"{m} {s['pct_of_unpruned_e2e']:.2f} %" for m, s in run.get("scoring", {}).items())
            for c in run["cases"]:
                s = c.get("speedup")
                if s:
                    rows.append([name, f"{run_label(run).rsplit(' ', 1)[0]} {run.get('clock', 'wall')}",
                                 result["machine"]["load_before"].split()[0], c["label"], f"{s['llm']:.2f}",
                                 f"{s['predicted_consistent']:.2f}", f"{s['realised']:.1%}", phi or "–"])
    return _table(["result", "run", "load", "config", "meas. LLM speedup", "pred. (consistent)", "realised",
                   "Φ % of unpruned e2e"], rows)


def report(result: dict[str, Any]) -> str:
    """The whole markdown report of a bench result."""
    m = result["machine"]
    lines = [f"## `{result['command']}`", "",
             f"Date {result['date']} · {m['cpu']} · {m['cores']} cores · torch {m['torch']} · "
             f"load average {m['load_before']} before, {m['load_after']} after.", ""]
    for run in result["runs"]:
        lines += run_section(run)
    for exp in result.get("expected", []):
        lines += [f"### Expected per-episode speedup: {exp['log']} on {exp['run']}", "", *expected_table(exp["rows"]), ""]
    return "\n".join(lines)
