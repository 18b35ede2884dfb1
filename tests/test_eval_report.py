"""The paper-style report from logs alone: rows, Wilson intervals, FLOPs, speedup, gamma, paired test."""

from __future__ import annotations

import pytest

from vla_adp.cli import main
from vla_adp.report import runs as report
from vla_adp.eval.logs import LogWriter, config_hash, read_logs
from vla_adp.eval.schema import EpisodeRecord, RunRecord
from vla_adp.eval.stats import mcnemar_exact, wilson


def write_run(w: LogWriter, suite: str, method: dict, outcomes: list[bool], pruned: int, flops: float,
              full: float = 10.0, ckpt: str = "ck") -> str:
    config = {"suite": suite, "checkpoint": ckpt, "method": method}
    h = config_hash(config)
    w.write(RunRecord(h, config_hash(method), config, {}, {}, "t"))
    for i, ok in enumerate(outcomes):
        w.write(EpisodeRecord(h, suite, i % 2, f"task {i % 2}", i // 2, 7, ok, steps=50, queries=4,
                              pruned_queries=pruned, flops_total=4 * flops, wall_s=1.0, flops_full_total=4 * full))
    return h


@pytest.fixture
def logfile(tmp_path):
    base = {"pruner": None, "seed": 7}
    adp = {"pruner": {"name": "adp", "config": {"keep_ratio": 0.5}}, "seed": 7}
    path = tmp_path / "logs.jsonl"
    with LogWriter(path) as w:
        # baseline: 10/10 spatial, 8/10 goal; ADP: 9/10 spatial with a per-suite checkpoint, 6/10 goal
        write_run(w, "libero_spatial", base, [True] * 10, pruned=0, flops=10.0)
        write_run(w, "libero_goal", base, [True] * 8 + [False] * 2, pruned=0, flops=10.0, ckpt="ck-goal")
        write_run(w, "libero_spatial", adp, [True] * 9 + [False], pruned=2, flops=7.5)
        write_run(w, "libero_goal", adp, [True] * 6 + [False] * 4, pruned=2, flops=7.5, ckpt="ck-goal")
    return path


def test_rows_group_suites_by_method(logfile):
    rows = report.methods(read_logs([logfile]))
    assert len(rows) == 2 and all(len(m.config_hashes) == 2 for m in rows)
    adp = next(m for m in rows if m.config.get("pruner"))
    assert adp.rate("libero_spatial").k == 9 and adp.rate("libero_goal").k == 6
    c = adp.cost()
    assert c["flops"] == 7.5 and c["speedup"] == pytest.approx(10 / 7.5) and c["gamma"] == 0.5


def test_suite_table_text(logfile):
    text = report.suite_table(report.methods(read_logs([logfile])))
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["method", "hash", "Spatial", "Goal"]
    adp = next(l for l in lines if l.startswith("pruner=adp"))
    lo, hi = wilson(9, 10)
    assert f"90.0 [{100 * lo:4.1f},{100 * hi:5.1f}] n=10" in adp
    assert " 75.0 " in adp  # average of the suite rates (90 + 60) / 2
    assert "1.33x" in adp and "0.50" in adp and " 7.5 " in adp
    base = next(l for l in lines if l.startswith("pruner=none"))
    assert "100.0" in base and " 90.0 " in base and "1.00x" in base


def test_task_table_and_compare(logfile):
    rows = report.methods(read_logs([logfile]))
    text = report.task_table(rows)
    assert len(text.splitlines()) == 2 + 2 * 2 * 2  # header, rule, 2 methods x 2 suites x 2 tasks
    base, adp = sorted(rows, key=lambda m: bool(m.config.get("pruner")))
    out = report.compare(rows, base.method_hash[:6], adp.method_hash[:6], n_boot=500)
    a = [True] * 10 + [True] * 8 + [False] * 2
    b = [True] * 9 + [False] + [True] * 6 + [False] * 4
    p = mcnemar_exact(a, b).p_value
    assert "on 20 episodes" in out and "A-only successes 3, B-only 0" in out and f"p = {p:.4g}" in out
    assert "+15.0 points" in out
    with pytest.raises(ValueError, match="no method/config hash starts with 'zzz'"):
        report.compare(rows, "zzz", adp.method_hash)


def test_report_command(logfile, capsys):
    assert main(["report", str(logfile), "--legend"]) == 0
    out = capsys.readouterr().out
    assert "pruner=adp" in out and "pruner=none" in out and "40 episodes, 2 methods" in out
    assert main(["report", str(logfile.parent / "missing.jsonl")]) == 2
    assert "log not found" in capsys.readouterr().err
