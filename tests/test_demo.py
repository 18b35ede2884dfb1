"""``vla-adp demo`` end to end at a reduced size: the embedded reference policy in the real Meta-World
simulator, unpruned and with ADP, through the shared runner; real JSONL log, mp4 and PNG files."""

from __future__ import annotations

import pytest

pytest.importorskip("metaworld")

from vla_adp.cli import main  # noqa: E402
from vla_adp.eval.logs import read_logs  # noqa: E402

pytestmark = pytest.mark.sim


def test_demo_writes_table_video_and_timeline(tmp_path, capsys):
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
    assert main(["demo", "--tasks", "door-open", "--out", str(tmp_path)]) == 2
    assert "door-open" in capsys.readouterr().err
    assert main(["demo", "--tasks", "drawer-opn", "--out", str(tmp_path)]) == 2
