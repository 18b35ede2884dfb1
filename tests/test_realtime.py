"""Real-time mode: simulated time advances by each query's latency (vla_adp.eval.realtime).

A scripted policy (chunk j's action i is the number 100·j + i + 1 in every dimension, whatever the
observation) makes the executed sequence readable; the zero-latency check runs the Meta-World
reference policy in the real simulator.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.eval_helpers import ToyEnv
from vla_adp.constants import Platform
from vla_adp.eval.realtime import (GPU_QUERY_S, RealtimeConfig, hold_action, parse_latency, query_latency,
                                   steps_elapsed)
from vla_adp.eval.runner import EpisodeSettings, run_episode, run_task

ASSET = Path(__file__).resolve().parents[1] / "src" / "vla_adp" / "assets" / "metaworld_policy"
HZ = 10.0


class RecordingEnv(ToyEnv):
    control_hz = HZ
    gripper_open = -1.0

    def __init__(self, **kw):
        super().__init__(**kw)
        self.actions: list[list[float]] = []

    def step(self, action):
        self.actions.append(np.asarray(action, np.float64).tolist())
        return super().step(action)


class ScriptedPolicy:
    platform = Platform("toy", chunk=8, action_dim=3, proprio_dim=8)

    def __init__(self, flops: float = 1.0, flops_full: float = 1.0):
        self.n, self.flops, self.flops_full = 0, flops, flops_full

    def reset(self) -> None:
        self.n = 0

    def record_step(self, state) -> None:
        pass

    def infer(self, obs) -> dict:
        chunk = np.array([[100.0 * self.n + i + 1] * 3 for i in range(8)])
        info = {"query": self.n, "pruner": None, "pruned": False, "kept_visual": 4, "n_visual": 4,
                "kept_per_view": [4], "seq_len": 10, "seq_len_pruned": 10, "flops": self.flops,
                "flops_full": self.flops_full, "timing_ms": {"total": 0.0}}
        self.n += 1
        return {"actions": chunk, "info": info}


def run(realtime=None, open_loop=None, max_steps=30, flops=1.0):
    env, queries = RecordingEnv(max_steps=max_steps), []
    settings = EpisodeSettings("h", open_loop=open_loop, verbose=False, realtime=realtime)
    rec = run_episode(env, ScriptedPolicy(flops=flops), 0, settings, queries.append)
    assert rec.error is None, rec.error
    return [a[0] for a in env.actions], [a[-1] for a in env.actions], queries, rec


def hold_mode(k_steps: int, thinking: str = "hold") -> RealtimeConfig:
    return RealtimeConfig("fixed", seconds=k_steps / HZ, thinking=thinking)


def test_zero_latency_is_the_paused_world():
    paused, _, q0, rec0 = run()
    for thinking in ("hold", "continue"):
        now, _, q, rec = run(hold_mode(0, thinking))
        assert now == paused and rec.steps == rec0.steps and [x.step for x in q] == [x.step for x in q0]
        assert all(x.extra["latency_steps"] == 0 and x.extra["latency_s"] == 0.0 for x in q)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_fixed_latency_of_k_steps_shifts_every_chunk_by_k(k):
    paused, _, _, _ = run(max_steps=60)
    held, grip, queries, rec = run(hold_mode(k), max_steps=60)
    per = 8 + k  # k holds, then the chunk
    for j in range(len(held) // per):
        block, grips = held[j * per:(j + 1) * per], grip[j * per:(j + 1) * per]
        assert block[:k] == [0.0] * k  # holding: no motion...
        assert grips[:k] == [-1.0 if j == 0 else paused[8 * j - 1]] * k  # ...the gripper as last commanded
        assert block[k:] == paused[8 * j:8 * (j + 1)]  # the chunk, shifted by k
    assert [q.step for q in queries] == [per * j for j in range(len(queries))]
    assert all(q.extra["latency_steps"] == k and q.extra["latency_source"] == "fixed" for q in queries)
    assert rec.steps == 60 and len(held) == 60  # holding spends the episode's time budget


def test_continue_executes_the_rest_of_the_previous_chunk_while_thinking():
    acts, _, queries, _ = run(hold_mode(2, "continue"), open_loop=4, max_steps=20)
    # first query: nothing to continue with (holds); then each chunk's actions 5, 6 run while the next is computed
    assert acts == [0, 0, 1, 2, 3, 4, 5, 6, 101, 102, 103, 104, 105, 106, 201, 202, 203, 204, 205, 206]
    assert [q.step for q in queries] == [0, 6, 12, 18]
    acts, _, _, _ = run(hold_mode(6, "continue"), open_loop=4, max_steps=20)  # more thinking than leftovers
    assert acts == [0] * 6 + [1, 2, 3, 4] + [5, 6, 7, 8, 0, 0] + [101, 102, 103, 104]


def test_latency_model_scales_the_gpu_query_by_flops_and_logs_it():
    cfg = RealtimeConfig("model", gpu="rtx4090", fixed_s=0.01)
    assert query_latency(cfg, {"flops": 1.0, "flops_full": 2.0}, wall_s=9.9) == pytest.approx(0.01 + GPU_QUERY_S["rtx4090"] / 2)
    # 1 s unpruned, at half the FLOPs: 0.5 s -> 5 steps at 10 Hz
    _, _, queries, _ = run(RealtimeConfig("model", full_s=1.0, thinking="hold"), max_steps=26, flops=0.5)
    assert [q.extra["latency_steps"] for q in queries] == [5, 5] and queries[0].extra["latency_s"] == 0.5
    assert query_latency(RealtimeConfig("wall"), {}, wall_s=0.25) == 0.25
    with pytest.raises(ValueError, match="flops"):
        query_latency(cfg, {"flops": 1.0}, 0.0)


def test_steps_and_hold_arithmetic():
    assert [steps_elapsed(s, 20.0) for s in (0.0, 0.001, 0.05, 0.0501, 0.0769)] == [0, 1, 1, 2, 2]
    assert steps_elapsed(0.0769, 80.0) == 7
    np.testing.assert_array_equal(hold_action(None, 4, -1.0), [0, 0, 0, -1])
    np.testing.assert_array_equal(hold_action(np.array([0.3, 0.1, 0.2, 0.8]), 4, -1.0), [0, 0, 0, 0.8])


def test_latency_specs_and_bad_values_are_named():
    assert parse_latency("wall") == {"source": "wall"}
    assert parse_latency("120ms") == {"source": "fixed", "seconds": pytest.approx(0.12)}
    assert parse_latency("0.05") == {"source": "fixed", "seconds": 0.05}
    assert parse_latency("model:h20") == {"source": "model", "gpu": "h20"}
    assert parse_latency("model:80ms") == {"source": "model", "full_s": pytest.approx(0.08)}
    for bad in ("soon", "-3ms"):
        with pytest.raises(ValueError, match=f"got '{bad}'"):
            parse_latency(bad)
    with pytest.raises(ValueError, match="unknown GPU 'tpu'"):
        RealtimeConfig("model", gpu="tpu")
    with pytest.raises(ValueError, match="thinking must be"):
        RealtimeConfig(thinking="dance")
    with pytest.raises(ValueError, match="needs seconds"):
        RealtimeConfig("fixed")
    with pytest.raises(ValueError, match="needs the env's 'control_hz'"):
        run_task(ToyEnv(), ScriptedPolicy(), [0], EpisodeSettings("h", verbose=False, realtime=hold_mode(1)))


def test_command_line_realtime_options():
    from vla_adp.commands.eval import add_speed_args, realtime_of

    p = argparse.ArgumentParser()
    add_speed_args(p)
    assert realtime_of(p.parse_args([])) is None
    got = realtime_of(p.parse_args(["--realtime", "model", "--latency-gpu", "h20", "--latency-fixed", "5ms",
                                    "--thinking", "hold"]))
    assert got == {"source": "model", "gpu": "h20", "fixed_s": pytest.approx(0.005), "thinking": "hold",
                   "control_hz": None}
    assert realtime_of(p.parse_args(["--realtime"]))["source"] == "wall"
    with pytest.raises(ValueError, match="--latency-gpu needs --realtime"):
        realtime_of(p.parse_args(["--latency-gpu", "h20"]))
    with pytest.raises(ValueError, match="--latency-gpu needs --realtime model"):
        realtime_of(p.parse_args(["--realtime", "50ms", "--latency-gpu", "h20"]))


@pytest.mark.slow
def test_zero_latency_equals_todays_runner_on_the_metaworld_policy(tmp_path):
    pytest.importorskip("metaworld")
    os.environ.setdefault("MUJOCO_GL", "egl")
    from vla_adp.eval.job import EvalJob, run_config, run_job

    def job(name, realtime):
        return EvalJob(env="metaworld", suite="metaworld", checkpoint=str(ASSET), log=str(tmp_path / name),
                       tasks=(1,), episodes=(0, 1), max_steps=48, pruner="adp", keep=0.5,
                       pruner_fields={"positions": "original"}, verbose=False, log_indices=True, realtime=realtime)

    paused, zero = job("paused.jsonl", None), job("zero.jsonl", {"source": "fixed", "seconds": 0.0})
    assert "realtime" not in run_config(paused)["method"]  # paused-world runs keep their config hashes
    assert run_config(zero)["method"]["realtime"]["source"] == "fixed"
    (a,), (b,) = run_job(paused), run_job(zero)
    assert (a.success, a.steps, a.queries, a.pruned_queries, a.flops_total) == \
        (b.success, b.steps, b.queries, b.pruned_queries, b.flops_total)

    def queries(name):
        out = []
        for line in (tmp_path / name).read_text().splitlines():
            d = json.loads(line)
            if d["kind"] == "query":
                d.pop("timing_ms"), d.pop("config_hash")
                for key in ("latency_s", "latency_steps", "latency_source"):
                    d["extra"].pop(key, None)
                out.append(d)
        return out

    qa, qb = queries("paused.jsonl"), queries("zero.jsonl")
    assert len(qa) == a.queries and qa == qb  # every query: same step, eef position, gate, kept tokens
