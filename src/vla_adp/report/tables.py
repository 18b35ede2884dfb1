"""Tables from logs: per-task comparisons (paper Tables 10–13) and the inversion table (Table 4).

* Per task: one row per task of a suite — instruction, its length in characters (the paper's
  "Length" column), success of config A and config B, and the gap A − B — plus their average.
* Inversion: per suite (rows) and keep ratio (column groups), success of ``top`` selection
  ("Direct") and ``inverse`` selection (the least relevant tokens kept) and the gap; the "Avg" row
  averages the suites, as the paper does.

Cells show the rate in percent; every cell also carries its episode count in the CSV output.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass

from vla_adp.eval.logs import RunLog
from vla_adp.eval.stats import Rate, success_rate
from vla_adp.report.summary import methods, success_rates, traits


NO_EPISODES = success_rate([])  # a task one of the two methods never ran: rate nan


@dataclass(frozen=True)
class TaskRow:
    suite: str
    task_id: int
    task: str
    a: Rate
    b: Rate

    @property
    def gap(self) -> float:
        return self.a.rate - self.b.rate


def _pct(x: float, signed: bool = False) -> str:
    if math.isnan(x):
        return "—"
    return f"{100 * x:+.1f}%" if signed and x else f"{100 * x:.1f}%"


def task_rows(log: RunLog, a: str, b: str, suite: str | None = None) -> list[TaskRow]:
    """Per-task rows for methods ``a`` and ``b`` (ids), over tasks either of them ran."""
    ms = methods(log)
    members = ms.get(a, {a}) | ms.get(b, {b})
    names = {(e.suite, e.task_id): e.task for k, e in log.episodes.items() if k[0] in members}
    ra = success_rates(log, a, by=("suite", "task_id"))
    rb = success_rates(log, b, by=("suite", "task_id"))
    rows = []
    for key in sorted(names):
        if suite is not None and key[0] != suite:
            continue
        rows.append(TaskRow(key[0], key[1], names[key], ra.get(key, NO_EPISODES), rb.get(key, NO_EPISODES)))
    if not rows:
        raise ValueError(f"no episodes of configs {a[:10]} / {b[:10]}" + (f" in suite {suite!r}" if suite else ""))
    return rows


def task_table_markdown(rows: list[TaskRow], a_name: str, b_name: str) -> str:
    lines = [f"| Task | Length | {a_name} | {b_name} | Gap |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.task} | {len(r.task)} | {_pct(r.a.rate)} | {_pct(r.b.rate)} | {_pct(r.gap, True)} |")
    ma = _mean([r.a.rate for r in rows])
    mb = _mean([r.b.rate for r in rows])
    lines.append(f"| **Average** |  | {_pct(ma)} | {_pct(mb)} | {_pct(ma - mb, True)} |")
    return "\n".join(lines) + "\n"


def task_table_csv(rows: list[TaskRow], a_name: str, b_name: str) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["suite", "task_id", "task", "length", f"{a_name}_success", f"{a_name}_n",
                f"{b_name}_success", f"{b_name}_n", "gap"])
    for r in rows:
        w.writerow([r.suite, r.task_id, r.task, len(r.task), r.a.rate, r.a.n, r.b.rate, r.b.n, r.gap])
    return buf.getvalue()


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else math.nan


# -- inversion (Table 4) ----------------------------------------------------------------------
@dataclass(frozen=True)
class InversionCell:
    direct: Rate
    inverse: Rate

    @property
    def gap(self) -> float:
        return self.direct.rate - self.inverse.rate


def inversion_cells(log: RunLog) -> dict[tuple[str, float], InversionCell]:
    """(suite, keep ratio) -> direct/inverse success, from methods whose selection is known."""
    by_mode: dict[tuple[str, float, str], Rate] = {}
    for h in sorted(methods(log)):
        t = traits(log, h)
        if t.pruner is None:
            continue
        if t.selection not in ("top", "inverse") or t.keep_ratio is None:
            continue
        for suite, rate in success_rates(log, h, by="suite").items():
            by_mode[(suite, t.keep_ratio, t.selection)] = rate
    cells = {}
    for (suite, ratio, mode) in by_mode:
        if mode == "top" and (suite, ratio, "inverse") in by_mode:
            cells[(suite, ratio)] = InversionCell(by_mode[(suite, ratio, "top")], by_mode[(suite, ratio, "inverse")])
    if not cells:
        raise ValueError("no suite and keep ratio have both a 'top' and an 'inverse' method with known selection "
                         "(the run record's config needs 'selection' and a keep ratio)")
    return cells


def inversion_markdown(cells: dict[tuple[str, float], InversionCell]) -> str:
    suites = sorted({s for s, _ in cells})
    ratios = sorted({r for _, r in cells})
    head = "| Task | " + " | ".join(f"Direct {r:.0%} | Inverse {r:.0%} | Gap {r:.0%}" for r in ratios) + " |"
    lines = [head, "|---|" + "---:|" * (3 * len(ratios))]
    for s in suites:
        lines.append(f"| {s} | " + " | ".join(_cell(cells.get((s, r))) for r in ratios) + " |")
    avg = []
    for r in ratios:
        d = _mean([cells[(s, r)].direct.rate for s in suites if (s, r) in cells])
        i = _mean([cells[(s, r)].inverse.rate for s in suites if (s, r) in cells])
        avg.append(f"{_pct(d)} | {_pct(i)} | {_pct(d - i)}")
    lines.append("| **Avg** | " + " | ".join(avg) + " |")
    return "\n".join(lines) + "\n"


def _cell(c: InversionCell | None) -> str:
    if c is None:
        return "— | — | —"
    return f"{_pct(c.direct.rate)} | {_pct(c.inverse.rate)} | {_pct(c.gap)}"


def inversion_csv(cells: dict[tuple[str, float], InversionCell]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["suite", "keep_ratio", "direct", "direct_n", "inverse", "inverse_n", "gap"])
    for (s, r), c in sorted(cells.items()):
        w.writerow([s, r, c.direct.rate, c.direct.n, c.inverse.rate, c.inverse.n, c.gap])
    return buf.getvalue()
