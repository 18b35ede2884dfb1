"""Parallel evaluation (vla_adp.eval.parallel) and the batched forward with per-row pruners.

The batched forward is batch-invariant at fp32 on a CPU (vla_adp.model.invariance): every row equals
its batch-1 forward bit for bit, checked on the Meta-World and LIBERO reference policies with ADP
cutting rows to different kept lengths. The episode checks run the Meta-World reference policy in
real simulator processes, with and without ADP's dynamic gate (per-episode state), and compare every
logged query of batched episodes with the serial runner's, bit for bit.
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
from vla_adp.model.batched import forward_rows, stack_inputs
from vla_adp.policy import Policy, PolicyConfig
from vla_adp.pruning.config import ADPConfig, GateConfig
from vla_adp.pruning.pruners.adp import ADPPruner
from vla_adp.seam.keep import KeepSet

ASSETS = Path(__file__).resolve().parents[1] / "src" / "vla_adp" / "assets"
ASSET = ASSETS / "metaworld_policy"


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
        np.testing.assert_array_equal(g["actions"], w["actions"])  # batch-invariant (PolicyConfig default on a CPU)
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


@pytest.mark.parametrize("asset,threads", [("metaworld_policy", 1), ("libero_policy", 1), ("metaworld_policy", 2)])
def test_batched_forward_is_bit_identical_to_row_by_row(asset, threads):
    """forward_rows with the model batch-invariant vs each row's own batch-1 forward, rtol = atol = 0:
    unpruned, and ADP at keep 0.5 / 0.25 / 0.5 (rows split into groups of different kept lengths)
    at layer 0 and after layer 1; prompt lengths of both parities (Meta-World's S·ffn % 32 then
    changes: the MLP's SiLU takes its scalar tail at batch 1 for odd S)."""
    policy = Policy.load(ASSETS / asset, dtype=torch.float32)
    model = policy.model
    assert model.batch_invariant  # the Policy's default on a CPU
    size, dim = model.args.image_size, policy.platform.proprio_dim
    keeps = (0.5, 0.25, 0.5)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    instructions = ["put the object where it belongs", "put the red object where it belongs"]
    try:
        for instruction in instructions[:1] if threads > 1 else instructions:
            obs = [dict(make_obs(i, size=size, state_dim=dim), instruction=instruction) for i in range(len(keeps))]
            inputs = [policy.inputs(o)[0] for o in obs]
            for layer in (None, 0, 1):
                def pruner(r):
                    return None if layer is None else ADPPruner(ADPConfig(
                        keep_ratio=keeps[r], layer=layer, positions="original" if layer else "contiguous",
                        gate=GateConfig(schedule="static")))
                hooks = frozenset() if layer is None else frozenset({layer})
                with torch.inference_mode():
                    model.set_batch_invariant(False)  # the reference: the plain batch-1 forward
                    wants = [model(inputs[r], pruner(r), hooks) for r in range(len(keeps))]
                    model.set_batch_invariant(True)
                    rows = forward_rows(model, stack_inputs(inputs), [pruner(r) for r in range(len(keeps))], hooks)
                    for got, want in zip(rows, wants):
                        assert got.layout == want.layout and got.seq_lens == want.seq_lens
                        torch.testing.assert_close(got.hidden, want.hidden, rtol=0, atol=0)
                        torch.testing.assert_close(got.actions, want.actions, rtol=0, atol=0)
    finally:
        torch.set_num_threads(before)


def test_batch_invariance_is_a_policy_setting(tiny_policy):
    ckpt = tiny_policy.ckpt
    assert Policy(ckpt, PolicyConfig(batch_invariant=False)).model.batch_invariant is False
    assert Policy(ckpt, PolicyConfig(batch_invariant=True)).model.batch_invariant is True
    assert all(layer.mlp.batch_invariant for layer in ckpt.model.language_model.layers)
    with pytest.raises(ValueError, match="batch_invariant must be True, False or None, got 'yes'"):
        PolicyConfig(batch_invariant="yes")


def _job(tmp_path, name, episodes=(0, 3), adp=True, **kw):
    pruning = dict(pruner="adp", keep=0.5, pruner_fields={"positions": "original"}) if adp else {}
    return EvalJob(env="metaworld", suite="metaworld", checkpoint=str(ASSET), log=str(tmp_path / name), tasks=(4,),
                   episodes=episodes, max_steps=32, verbose=False, log_indices=True, **pruning, **kw)


def _batches(path: Path) -> list[int]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [d["extra"]["batch"] for d in lines if d["kind"] == "query"]


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
def test_parallel_episodes_equal_the_serial_runner(tmp_path):
    """ADP's dynamic gate: batched forwards (batch 2) and one query at a time (batch 1) both give
    every episode bit for bit: every query's eef position, gate state, kept indices, and outcome."""
    pytest.importorskip("metaworld")
    os.environ.setdefault("MUJOCO_GL", "egl")
    run_job(_job(tmp_path, "serial.jsonl"))
    run_job(_job(tmp_path, "one.jsonl", envs=2, batch=1))
    run_job(_job(tmp_path, "batched.jsonl", envs=2))
    serial = _read(tmp_path / "serial.jsonl")
    assert len(serial[1]) == 3 and any(q["pruned"] for q in serial[0].values())  # the gate switched
    assert any(not q["pruned"] for q in serial[0].values())
    assert _read(tmp_path / "one.jsonl") == serial
    assert max(_batches(tmp_path / "batched.jsonl")) == 2  # queries of two episodes shared forwards
    assert _read(tmp_path / "batched.jsonl") == serial


@pytest.mark.slow
def test_batched_unpruned_episodes_equal_the_serial_runner(tmp_path):
    pytest.importorskip("metaworld")
    os.environ.setdefault("MUJOCO_GL", "egl")
    run_job(_job(tmp_path, "serial.jsonl", episodes=(0, 2), adp=False))
    run_job(_job(tmp_path, "batched.jsonl", episodes=(0, 2), adp=False, envs=2))
    assert set(_batches(tmp_path / "batched.jsonl")) == {2}
    assert _read(tmp_path / "batched.jsonl") == _read(tmp_path / "serial.jsonl")


@pytest.mark.slow
def test_batched_realtime_episodes_equal_serial_and_resume(tmp_path):
    pytest.importorskip("metaworld")
    os.environ.setdefault("MUJOCO_GL", "egl")
    rt = {"source": "fixed", "seconds": 0.02, "thinking": "continue"}  # 2 steps at 80 Hz
    run_job(_job(tmp_path, "serial.jsonl", realtime=rt, open_loop=4))
    first = run_job(_job(tmp_path, "batched.jsonl", episodes=(0, 2), envs=2, realtime=rt, open_loop=4))
    assert sorted(r.episode for r in first) == [0, 1]
    (last,) = run_job(_job(tmp_path, "batched.jsonl", envs=2, realtime=rt, open_loop=4))  # resumes: episode 2 only
    assert last.episode == 2
    (queries, episodes), serial = _read(tmp_path / "batched.jsonl"), _read(tmp_path / "serial.jsonl")
    assert (queries, episodes) == serial  # bit-identical, latency steps included
    assert all(q["extra"]["latency_steps"] == 2 for q in queries.values())
    assert max(_batches(tmp_path / "batched.jsonl")) == 2  # two episodes shared forwards
