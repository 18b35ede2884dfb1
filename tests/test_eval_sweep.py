"""Sweeps: grid files, the (config, suite, task, chunk) plan, and a real local Ray sweep on LIBERO."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from vla_adp.cli import main
from vla_adp.eval.job import EvalJob
from vla_adp.eval.logs import read_logs
from vla_adp.eval.sweep import expand_grid, plan, read_grid


def test_grid_product_base_and_baseline_dedup():
    cfgs = expand_grid({"grid": {"pruner": [None, "adp"], "keep": [0.3, 0.5], "window": [3, 5]},
                        "configs": [{"pruner": "adp", "keep": 0.3, "window": 3}], "base": {"qk_layer": 0}})
    assert cfgs[0] == {"pruner": None, "keep": None, "pruning_config": None, "fields": {}}
    adp = cfgs[1:]
    assert len(adp) == 4  # the explicit config repeats a grid point; None collapses to one baseline
    assert {(c["keep"], c["fields"]["window"]) for c in adp} == {(0.3, 3), (0.3, 5), (0.5, 3), (0.5, 5)}
    assert all(c["fields"]["qk_layer"] == 0 and c["pruner"] == "adp" for c in adp)


@pytest.mark.parametrize("spec,match", [
    ({"grid": {"keep": 0.5}}, "non-empty list"),
    ({"grid": {"keep": []}}, "non-empty list"),
    ({"grids": {}}, "unknown grid file keys"),
    ({}, "defines no config"),
    ({"configs": [3]}, r"configs\[0\] must be a JSON object"),
    ([1, 2], "grid file must be a JSON object"),
])
def test_bad_grids(spec, match):
    with pytest.raises(ValueError, match=match):
        expand_grid(spec)


def test_read_grid_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="grid file not found"):
        read_grid(tmp_path / "nope.json")
    (tmp_path / "g.json").write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_grid(tmp_path / "g.json")


def test_plan_chunks_and_fails_early_on_a_bad_config(tiny_ckpt, tmp_path):
    template = EvalJob("libero", "libero_spatial", str(tiny_ckpt), "", tasks=(0, 3), episodes=(0, 5), max_steps=8)
    cfgs = expand_grid({"configs": [{"pruner": None}, {"pruner": "adp", "keep": 0.5}]})
    chunks = plan(template, cfgs, ["libero_spatial"], tmp_path, chunk=2)
    assert len(chunks) == 2 * 2 * 3  # configs x tasks x ceil(5 / 2)
    assert len({c.config_hash for c in chunks}) == 2 and all(c.todo == len(range(*c.job.episodes)) for c in chunks)
    names = sorted(c.job.log.split("/")[-1] for c in chunks if c.config_hash == chunks[0].config_hash)
    assert names == ["libero_spatial-task00-ep000-002.jsonl", "libero_spatial-task00-ep002-004.jsonl",
                     "libero_spatial-task00-ep004-005.jsonl", "libero_spatial-task03-ep000-002.jsonl",
                     "libero_spatial-task03-ep002-004.jsonl", "libero_spatial-task03-ep004-005.jsonl"]
    bad = expand_grid({"configs": [{"pruner": None}, {"pruner": "adp", "windw": 3}]})
    with pytest.raises(ValueError, match=r"config 1 .*unknown ADP config field 'windw'"):
        plan(template, bad, ["libero_spatial"], tmp_path)


def test_plan_with_another_chunk_size_never_reruns_a_logged_episode(tiny_ckpt, tmp_path):
    from vla_adp.eval.logs import LogWriter
    from vla_adp.eval.schema import EpisodeRecord

    template = EvalJob("libero", "libero_spatial", str(tiny_ckpt), "", tasks=(0,), episodes=(0, 8), max_steps=8)
    cfgs = expand_grid({"configs": [{"pruner": None}]})
    h = plan(template, cfgs, ["libero_spatial"], tmp_path, chunk=4)[0].config_hash
    for a, b in ((0, 1), (1, 2), (5, 6)):  # a first run with --chunk 1 finished episodes 0, 1 and 5
        with LogWriter(tmp_path / h / f"libero_spatial-task00-ep{a:03d}-{b:03d}.jsonl") as w:
            w.write(EpisodeRecord(h, "libero_spatial", 0, "task", a, 7, True, steps=8, queries=1, pruned_queries=0,
                                  flops_total=1.0, wall_s=1.0))
    chunks = plan(template, cfgs, ["libero_spatial"], tmp_path, chunk=4)
    spans = [(c.job.episodes, c.todo) for c in chunks]
    assert spans == [((2, 4), 2), ((4, 5), 1), ((6, 8), 2)]  # only what no log holds, each span its own file
    assert len({c.job.log for c in chunks}) == 3
    assert sum(c.todo for c in plan(template, cfgs, ["libero_spatial"], tmp_path, chunk=1)) == 5  # 8 - 3 logged


@pytest.mark.sim
@pytest.mark.slow
def test_local_ray_sweep_two_configs_two_episodes(tiny_ckpt, tmp_path, capsys):
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"configs": [{"pruner": None}, {"pruner": "adp", "keep": 0.5, "initial_state": 1}]}))
    out = tmp_path / "sweep"
    cmd = ["sweep", "--grid", str(grid), "--checkpoint", str(tiny_ckpt), "--suite", "libero_spatial", "--tasks", "0",
           "--trials", "2", "--chunk", "2", "--max-steps", "8", "--fast-render", "--out", str(out),
           "--num-cpus", "2", "--device", "cpu", "--overlay-video-dir", str(tmp_path / "videos")]
    assert main(cmd) == 0
    files = sorted(out.rglob("*.jsonl"))
    assert len(files) == 2  # one per Ray task: 2 configs x 1 task x 1 two-episode chunk (one LIBERO env each)
    logs = read_logs([out])
    assert Counter((e.config_hash, e.episode) for e in logs.episodes.values()) == Counter(
        {(h, ep): 1 for h in {r.config_hash for r in logs.runs} for ep in (0, 1)})
    assert len({r.method_hash for r in logs.runs}) == 2 and all(e.error is None for e in logs.episodes.values())
    assert sum(e.pruned_queries for e in logs.episodes.values()) == 2  # ADP prunes its first query of each episode
    videos = sorted((tmp_path / "videos").glob("*.mp4"))  # the workers got the overlay option too
    assert [Path(e.overlay_video) for e in sorted(logs.episodes.values(), key=lambda e: e.overlay_video)] == videos
    text = capsys.readouterr().out
    assert "pruner=none" in text and "pruner=adp" in text
    assert main(cmd + ["--dry-run"]) == 0  # resume: nothing left to run
    assert "2 chunks, 0 to run" in capsys.readouterr().out
