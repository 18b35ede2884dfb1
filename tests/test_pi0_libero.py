"""π0.5 on LIBERO for real: the protocol's observations and one short episode with a tiny checkpoint,
unpruned and with the registry's ADP pruner (gate + text→image selection; also on every query). The
tiny random model cannot solve the task; this checks the protocol and the plumbing through the
evaluation runner (query records: kept / visual counts, FLOPs)."""

from __future__ import annotations

import numpy as np
import pytest

from vla_adp.envs.libero_pi0 import PROTOCOLS, Pi0LiberoEnv, get_protocol
from vla_adp.eval.runner import EpisodeSettings, run_episode
from vla_adp.model.pi0.tiny import make_tiny_pi0_checkpoint
from vla_adp.pi0_policy import Pi0Policy
from vla_adp.pruning.registry import build_pruner

pytestmark = [pytest.mark.sim, pytest.mark.slow]


@pytest.fixture(scope="module")
def env():
    # openpi's protocol: 256² renders (cheaper than LeRobot's 360²), 5 actions per chunk
    e = Pi0LiberoEnv("libero_spatial", 0, get_protocol("openpi"), max_steps=10, render="fast")
    yield e
    e.close()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_pi0_checkpoint(tmp_path_factory.mktemp("pi05") / "pi05_libero", "pi05", n_action_steps=10,
                                    chunk_size=12)


def test_protocol_observation(env):
    obs = env.reset(0)
    img = obs["observation.images.image"]
    assert img.shape == (256, 256, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img, env._raw["agentview_image"][::-1, ::-1])  # rotated 180°
    assert obs["observation.state"].shape == (8,) and obs["task"] == env.instruction
    assert PROTOCOLS["openpi"].replan_steps == 5 and PROTOCOLS["lerobot"].replan_steps == 10
    assert PROTOCOLS["lerobot"].camera_size == 360 and not PROTOCOLS["openpi"].discrete_state_input
    with pytest.raises(ValueError, match="unknown π0 LIBERO protocol 'pi'"):
        get_protocol("pi")


@pytest.mark.parametrize("schedule", [None, "dynamic", "static"])
def test_episode_runs(env, ckpt, schedule):
    pruner = None if schedule is None else build_pruner("adp", keep_ratio=0.5, gate={"schedule": schedule})
    protocol = env.protocol
    policy = Pi0Policy.load(ckpt, pruner=pruner, replan_steps=protocol.replan_steps,
                            discrete_state=protocol.discrete_state_input)
    queries = []
    rec = run_episode(env, policy, 0, EpisodeSettings("pi05-test", verbose=False), queries.append)
    assert rec.error is None, rec.error
    assert rec.steps == 10 and rec.queries == 2 and len(queries) == 2  # 5 actions per chunk
    q0 = queries[0]
    # the empty third camera is not part of the prefix: 2 cameras x 4 tokens
    assert q0.n_visual == 8 and q0.extra["cameras"] == ["observation.images.image", "observation.images.image2"]
    assert all(q.flops_full == q0.flops_full and q.flops <= q.flops_full for q in queries)
    if schedule == "dynamic":  # queries 0..2 are cold-start (full vision) queries
        assert [q.gate_state for q in queries] == [0, 0] and not any(q.pruned for q in queries)
    if schedule == "static":  # ADP on every query: 0.4 / 0.6 of round(0.5 * 8) = 4 tokens
        assert all(q.pruned and q.kept_visual == 4 and q.kept_per_view == [2, 2] for q in queries)
        assert all(q.flops < q.flops_full and q.seq_len_pruned == q.seq_len - 4 for q in queries)
        assert rec.pruned_queries == 2 and rec.flops_total < rec.flops_full_total
    else:
        assert all(q.kept_visual == 8 and q.flops == q.flops_full for q in queries)
