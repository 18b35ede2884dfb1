"""``vla-adp demo`` end to end at a reduced size: the embedded reference policy in the real Meta-World
simulator and (``--sim libero``) the LIBERO reference policy in the real LIBERO simulator, unpruned and
with ADP, through the shared runner; real JSONL log, mp4 and PNG files."""

from __future__ import annotations

import pytest

from vla_adp.cli import main
from vla_adp.eval.logs import read_logs

pytestmark = pytest.mark.sim


def test_demo_writes_table_video_and_timeline(tmp_path, capsys):
    pytest.importorskip("metaworld")
    out = tmp_path / "demo"
    assert main(["demo", "--tasks", "drawer-close", "--episodes", "1", "--max-steps", "40", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "unpruned" in text and "ADP rho=0.5" in text and "GFLOPs/query" in text
    log = read_logs([out / "demo.jsonl"])
    assert len(log.episodes) == 2 and {e.task for e in log.episodes.values()} == {"drawer-close"}
    assert all(0 < e.steps <= 40 for e in log.episodes.values())
    videos = list((out / "videos").glob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 1000 and str(videos[0]) in text
    assert (out / "gate_timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A rerun starts afresh instead of finding every episode done.
    assert main(["demo", "--tasks", "drawer-close", "--episodes", "1", "--max-steps", "8", "--out", str(out)]) == 0
    assert all(e.steps <= 8 for e in read_logs([out / "demo.jsonl"]).episodes.values())


def test_demo_names_a_task_outside_the_suite(tmp_path, capsys):
    pytest.importorskip("metaworld")
    assert main(["demo", "--tasks", "door-open", "--out", str(tmp_path)]) == 2
    assert "door-open" in capsys.readouterr().err
    assert main(["demo", "--tasks", "drawer-opn", "--out", str(tmp_path)]) == 2


@pytest.mark.slow
def test_libero_demo_writes_table_log_and_video(tmp_path, capsys):
    pytest.importorskip("libero")
    out = tmp_path / "demo"
    assert main(["demo", "--sim", "libero", "--tasks", "8", "--episodes", "1", "--max-steps", "8",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "LIBERO reference policy" in text and "fast renderer" in text and "not a benchmark" in text
    assert "unpruned" in text and "ADP rho=0.5" in text and "GFLOPs/query" in text
    log = read_logs([out / "demo.jsonl"])
    assert len(log.episodes) == 2
    assert {(e.suite, e.task_id, e.episode, e.steps) for e in log.episodes.values()} == {("libero_object", 8, 0, 8)}
    assert {r.config["method"]["render"] for r in log.runs} == {"fast"}  # as the policy was trained
    assert all(q.n_visual == 128 for qs in log.queries.values() for q in qs)
    videos = list((out / "videos").glob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 1000 and str(videos[0]) in text
    assert (out / "gate_timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_libero_demo_names_a_task_outside_the_suite(tmp_path, capsys):
    pytest.importorskip("libero")
    assert main(["demo", "--sim", "libero", "--tasks", "10", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "'10'" in err and "libero_object" in err and "task id 0-9" in err
    assert main(["demo", "--sim", "libero", "--tasks", "drawer-open", "--out", str(tmp_path)]) == 2
    assert not (tmp_path / "demo.jsonl").exists()
