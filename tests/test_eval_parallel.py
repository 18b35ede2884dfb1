"""Parallel evaluation (vla_adp.eval.parallel) and the batched forward with per-row pruners.

The episode checks run the Meta-World reference policy in real simulator processes, with ADP's
dynamic gate (per-episode state) and a few short episodes. ``batch=1`` must reproduce the serial
runner bit for bit; a batched forward may differ from batch-1 in the last bits (CPU kernels), so
there the check is closeness and reproducibility of the logged trajectory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.eval_helpers import HalfPruner
from tests.conftest import make_obs
from vla_adp.eval.job import EvalJob, run_job
from vla_adp.seam.keep import KeepSet
from vla_adp.policy import Policy

ASSET = Path(__file__).resolve().parents[1] / "src" / "vla_adp" / "assets" / "metaworld_policy"


class CountPruner(HalfPruner):
    """Keeps ``k`` visual tokens of the first camera at layer 0 (k differs per session: rows split)."""

    name = "count"

    def __init__(self, k: int = 4):
        super().__init__()
        self.k = k

    def at_layer(self, ctx) -> KeepSet:
        return KeepSet(torch.arange(self.k)[None], (self.k,) + (0,) * (len(ctx.layout.views) - 1))


def test_batched_rows_match_their_serial_answers_and_split_by_kept_count(tiny_policy):
    ckpt, cfg = tiny_policy.ckpt, tiny_policy.config
    policy = Policy(ckpt, cfg, CountPruner())
    ks = [4, 4, 7, 4, 7]
    obs = [make_obs(i) for i in range(len(ks))]
    serial, batched = [], []
    for k in ks:
        for out in (serial, batched):
            s = policy.new_session()
            s.pruner.k = k
            out.append(s)
    want = [policy.infer(o, s) for o, s in zip(obs, serial)]
    got = policy.infer_batch(obs, batched)
    for w, g, k in zip(want, got, ks):
        np.testing.assert_allclose(g["actions"], w["actions"], rtol=1e-5, atol=1e-6)
        assert g["info"]["kept_visual"] == k and g["info"]["seq_len_pruned"] == w["info"]["seq_len_pruned"]
        assert g["info"]["flops"] == w["info"]["flops"] and g["info"]["batch"] == len(ks)
    # one row alone goes through the same batched code and is bit-identical to infer()
    (one,) = policy.infer_batch([obs[2]], [batched[2]])
    again = policy.infer(obs[2], serial[2])
    np.testing.assert_array_equal(one["actions"], again["actions"])
    # a bad observation fails alone
    bad = dict(obs[0], instruction="")
    res = policy.infer_batch([bad, obs[1]], [policy.new_session(), policy.new_session()])
    assert isinstance(res[0], ValueError) and "instruction" in str(res[0]) and res[1]["actions"].shape[0] == 8


def _job(tmp_path, name, episodes=(0, 3), **kw):
    return EvalJob(env="metaworld", suite="metaworld", checkpoint=str(ASSET), log=str(tmp_path / name), tasks=(4,),
                   episodes=episodes, max_steps=32, pruner="adp", keep=0.5, pruner_fields={"positions": "original"},
                   verbose=False, log_indices=True, **kw)


def _read(path: Path):
    queries, episodes = {}, {}
    for line in path.read_text().splitlines():
        d = json.loads(line)
        if d["kind"] == "query":
            d.pop("timing_ms")
            d["extra"].pop("batch", None)
            queries[(d["episode"], d["query"])] = d
        elif d["kind"] == "episode":
            d.pop("wall_s")
            episodes[d["episode"]] = d
    return queries, episodes


@pytest.mark.slow
def test_parallel_episodes_equal_the_serial_runner_and_resume(tmp_path):
    pytest.importorskip("metaworld")
    os.environ.setdefault("MUJOCO_GL", "egl")
    run_job(_job(tmp_path, "serial.jsonl"))
    run_job(_job(tmp_path, "one.jsonl", envs=2, batch=1))
    serial = _read(tmp_path / "serial.jsonl")
    assert len(serial[1]) == 3 and any(q["pruned"] for q in serial[0].values())  # the gate switched
    assert _read(tmp_path / "one.jsonl") == serial  # bit-identical: every eef position, gate, kept index


@pytest.mark.slow
def test_batched_realtime_episodes_stay_close_to_serial_and_resume(tmp_path):
    pytest.importorskip("metaworld")
    os.environ.setdefault("MUJOCO_GL", "egl")
    rt = {"source": "fixed", "seconds": 0.02, "thinking": "continue"}  # 2 steps at 80 Hz
    run_job(_job(tmp_path, "serial.jsonl", realtime=rt, open_loop=4))
    first = run_job(_job(tmp_path, "batched.jsonl", episodes=(0, 2), envs=2, realtime=rt, open_loop=4))
    assert sorted(r.episode for r in first) == [0, 1]
    (last,) = run_job(_job(tmp_path, "batched.jsonl", envs=2, realtime=rt, open_loop=4))  # resumes: episode 2 only
    assert last.episode == 2
    (queries, episodes), serial = _read(tmp_path / "batched.jsonl"), _read(tmp_path / "serial.jsonl")
    assert queries.keys() == serial[0].keys() and episodes.keys() == serial[1].keys()
    for key, q in queries.items():
        np.testing.assert_allclose(q["eef_pos"], serial[0][key]["eef_pos"], atol=1e-4)
        assert (q["step"], q["extra"]["latency_steps"]) == (serial[0][key]["step"], 2)
    lines = [json.loads(line) for line in (tmp_path / "batched.jsonl").read_text().splitlines()]
    assert max(d["extra"]["batch"] for d in lines if d["kind"] == "query") == 2  # two episodes shared forwards
