"""A vla-adp policy as a vla-eval model server, driven by vla-eval's own client (``Connection``).

vla-eval (PyPI) serves the model (``vla_eval.api.serve_background``, its websocket runner) and its
benchmark-side ``Connection`` talks to it on loopback, as ``vla-eval run`` does: HELLO, episode start,
one observation per environment step (LIBERO-shaped: 256² images, 8-D state), actions back one at a
time from each predicted chunk. The tiny policy prunes with ADP's path-length gate, so the recorded
path of each episode (including the steps served from the chunk buffer) reaches the actions.
"""

import anyio
import numpy as np
import pytest
import torch

from tests.conftest import make_obs
from vla_adp.model import transforms as T
from vla_adp.policy import Policy
from vla_adp.pruning.registry import build_pruner

pytest.importorskip("vla_eval", reason="vla-eval extra: pip install vla-eval")
from vla_eval.api import serve_background  # noqa: E402
from vla_eval.connection import Connection  # noqa: E402

from vla_adp.serve.vla_eval_server import VlaAdpModelServer  # noqa: E402


@pytest.fixture(scope="module")
def policy(tiny_ckpt):
    return Policy.load(tiny_ckpt, pruner=build_pruner("adp", keep_ratio=0.25, displacement="path"), dtype=torch.float32)


@pytest.fixture(scope="module")
def url(policy):
    with serve_background(VlaAdpModelServer(policy)) as handle:
        yield handle.url


def steps(seed, n):
    """A LIBERO-shaped episode as vla-eval's benchmark sends it (images at the camera's 256²)."""
    out = []
    for i in range(n):
        o = make_obs(seed * 100 + i, size=256)
        out.append({"images": {"agentview": o["full_image"], "wrist": o["wrist_image"]}, "states": o["state"],
                    "task_description": o["instruction"]})
    return out


def local_actions(policy, episode):
    """What the harness would execute with the local policy: chunks open loop, every state recorded."""
    s, chunk, out = policy.new_session(), [], []
    for i, o in enumerate(episode):
        if i:
            policy.record_step(o["states"], s)
        if not chunk:
            obs = {"full_image": o["images"]["agentview"], "wrist_image": o["images"]["wrist"], "state": o["states"],
                   "instruction": o["task_description"]}
            chunk = list(T.libero_gripper(policy.infer(obs, s)["actions"]).astype(np.float32))
        out.append(chunk.pop(0))
    return np.stack(out)


async def run_episode(url, episode):
    async with Connection(url, timeout=60) as conn:
        await conn.start_episode({"task": {"name": episode[0]["task_description"]}})
        actions = [(await conn.act(o))["actions"] for o in episode]
        await conn.end_episode({"success": False})
    return np.stack(actions), conn.server_info


def test_hello_declares_what_the_benchmark_must_send(url):
    async def hello():
        async with Connection(url) as conn:
            return conn.server_info

    info = anyio.run(hello)
    assert info["model_server"] == "VlaAdpModelServer"
    assert info["observation_params"] == {"send_wrist_image": True, "send_state": True, "env_seed": 0,
                                          "quat_no_antipodal": True}
    assert info["action_spec"]["gripper"]["format"] == "binary_close_positive"


def test_vla_eval_client_gets_the_local_actions(url, policy):
    episode = steps(1, 52)  # 7 queries of an 8-step chunk (3 windows of cold start), 45 steps from the buffer
    got, _ = anyio.run(run_episode, url, episode)
    np.testing.assert_array_equal(got, local_actions(policy, episode))
    unrecorded = local_actions_without_path(policy, episode)
    assert not np.array_equal(got, unrecorded)  # the recorded path changed what the gate did


def local_actions_without_path(policy, episode):
    s, out = policy.new_session(), []
    for i in range(0, len(episode), policy.platform.chunk):
        o = episode[i]
        obs = {"full_image": o["images"]["agentview"], "wrist_image": o["images"]["wrist"], "state": o["states"],
               "instruction": o["task_description"]}
        out.extend(T.libero_gripper(policy.infer(obs, s)["actions"]).astype(np.float32))
    return np.stack(out[: len(episode)])


def test_concurrent_episodes_are_isolated(url, policy):
    episodes = [steps(seed, 33) for seed in (2, 3, 4)]  # 5 queries each: the gate decides after the cold start
    want = [local_actions(policy, e) for e in episodes]
    got = [None] * len(episodes)

    async def main():
        async def one(i):
            got[i] = (await run_episode(url, episodes[i]))[0]

        async with anyio.create_task_group() as tg:
            for i in range(len(episodes)):
                tg.start_soon(one, i)

    anyio.run(main)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_bad_observations_get_an_error_and_the_episode_goes_on(url, policy):
    episode = steps(5, 2)
    bad = [
        ({**episode[0], "images": "cam.png"}, "'images' is str"),
        ({**episode[0], "states": np.zeros(3)}, "state has shape [3]"),
        ({**episode[0], "task_description": ""}, "instruction is str ''"),
        ({**episode[0], "images": {"agentview": np.zeros((8, 8, 3), np.uint8), "wrist": episode[0]["images"]["wrist"]}},
         "full_image is 8x8 pixels"),
        ({k: v for k, v in episode[0].items() if k != "states"}, "missing field(s) ['state']"),
    ]

    async def main():
        async with Connection(url, timeout=60) as conn:
            await conn.start_episode({})
            for obs, fragment in bad:
                with pytest.raises(RuntimeError, match="observation_failed") as e:
                    await conn.act(obs)
                assert fragment in str(e.value), e.value
            return [(await conn.act(o))["actions"] for o in episode]

    got = anyio.run(main)
    np.testing.assert_array_equal(np.stack(got), local_actions(policy, episode))
