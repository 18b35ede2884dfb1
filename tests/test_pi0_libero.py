"""π0.5 on LIBERO for real: the protocol's observations and one short episode with a tiny checkpoint,
unpruned and with ADP (gate + text→image selection). The tiny random model cannot solve the task;
this checks the protocol and the plumbing through the evaluation runner."""

from __future__ import annotations

import numpy as np
import pytest

from vla_adp.envs.libero_pi0 import PROTOCOLS, Pi0LiberoEnv, get_protocol
from vla_adp.eval.runner import EpisodeSettings, run_episode
from vla_adp.model.pi0.policy import Pi0Policy
from vla_adp.model.pi0.prune import TextImageSelector
from vla_adp.model.pi0.tiny import make_tiny_pi0_checkpoint
from vla_adp.pruning.config import GateConfig
from vla_adp.pruning.gate import ActionAwareGate

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


@pytest.mark.parametrize("adp", [False, True])
def test_episode_runs(env, ckpt, adp):
    gate = ActionAwareGate(GateConfig()) if adp else None
    selector = TextImageSelector(keep_ratio=0.5) if adp else None
    protocol = env.protocol
    policy = Pi0Policy.load(ckpt, selector=selector, gate=gate, name="adp" if adp else None,
                            replan_steps=protocol.replan_steps, discrete_state=protocol.discrete_state_input)
    queries = []
    rec = run_episode(env, policy, 0, EpisodeSettings("pi05-test", verbose=False), queries.append)
    assert rec.error is None, rec.error
    assert rec.steps == 10 and rec.queries == 2 and len(queries) == 2  # 5 actions per chunk
    if adp:  # query 0 is a cold-start (full vision) query; a static schedule would prune both
        assert queries[0].gate_state == 0 and not queries[0].pruned
    full = queries[0].flops_full
    assert all(q.flops <= full for q in queries) and queries[0].n_visual == 2 * 4
    # the empty third camera never counts as visual input
    assert queries[0].kept_per_view[2] == 0
