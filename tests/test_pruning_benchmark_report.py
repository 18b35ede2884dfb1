"""The closed-loop pruning benchmarks' row selection (``--only``, ``--report-rows``): a sub-table of the
baseline and some rows from a log folder that holds only those rows, made from real Meta-World
episodes through the benchmark's own plan; unknown labels are refused with the known ones listed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def benches():
    sys.path.insert(0, str(BENCH))
    try:
        import libero_pruning
        import metaworld_pruning

        yield {"metaworld_pruning": metaworld_pruning, "libero_pruning": libero_pruning}
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def mw(benches):
    return benches["metaworld_pruning"]


def test_report_rows_keep_the_baseline_first_and_the_benchmark_order(mw):
    rows = mw.entries()
    picked = mw.report_rows(rows, ["VLA-Cache", "SparseVLM 0.5"])
    assert [e.label for e in picked] == ["baseline", "SparseVLM 0.5", "VLA-Cache"]
    assert [e.label for e in mw.report_rows(rows, ["baseline", "FastV 0.5"])] == ["baseline", "FastV 0.5"]
    assert mw.report_rows(rows, None) == rows and mw.pick(rows, None, "--only") == rows


@pytest.mark.parametrize("bench", ["metaworld_pruning", "libero_pruning"])
@pytest.mark.parametrize("flag", ["--only", "--report-rows"])
def test_an_unknown_label_is_refused_with_the_known_ones(benches, bench, flag, tmp_path, capsys):
    argv = ["--out", str(tmp_path), "--report-only", "--latency-reps", "0", "--json", str(tmp_path / "r.json"),
            flag, "VLA-Cache", "SparseVLM 0.4"]
    assert benches[bench].main(argv) == 2
    err = capsys.readouterr().err
    assert flag in err and "'SparseVLM 0.4'" in err and "'SparseVLM 0.5'" in err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.sim
def test_a_sub_table_from_a_partial_log_folder(mw, tmp_path):
    pytest.importorskip("metaworld")
    from vla_adp.eval.job import run_job

    common = ["--out", str(tmp_path / "runs"), "--trials", "1", "--trials-main", "1"]
    args = mw.parse(common)
    picked = mw.report_rows(mw.entries(), ["VLA-Cache"])
    for chunks in mw.chunks_of(picked, args).values():  # only task 0 of each row: a partial folder
        run_job(next(c.job for c in chunks if c.job.tasks == (0,)))
    out_json, out_md = tmp_path / "sub.json", tmp_path / "sub.md"
    assert mw.main([*common, "--report-only", "--report-rows", "VLA-Cache", "--latency-reps", "0",
                    "--json", str(out_json), "--markdown", str(out_md)]) == 0
    rows = json.loads(out_json.read_text())["rows"]
    assert [r["label"] for r in rows] == ["baseline", "VLA-Cache"]
    assert [r["overall"]["n"] for r in rows] == [1, 1] and [r["per_task"][0]["n"] for r in rows] == [1, 1]
    assert rows[1]["mcnemar"]["n"] == 1 and rows[0]["mcnemar"] is None
    table = [line for line in out_md.read_text().splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in table] == ["| config", "| baseline", "| VLA-Cache"]
    assert "## Paired gaps" not in out_md.read_text()  # no pair of the full table is among these rows
