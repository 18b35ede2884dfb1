"""The shipped LIBERO reference policy (``src/vla_adp/assets/libero_policy``): it loads in the
published layout, records how its pixels were made, answers a query on a real LIBERO observation,
and a short episode runs through ``vla-adp eval``'s job with and without ADP (success is not
expected in 12 steps; ``benchmarks/libero_training.md`` has the policy's closed-loop numbers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vla_adp.commands.common import LIBERO_POLICY
from vla_adp.eval.job import EvalJob, checkpoint_hints, run_job
from vla_adp.eval.logs import read_log
from vla_adp.policy import Policy

pytestmark = [pytest.mark.sim, pytest.mark.slow]


def test_policy_records_its_pixels_and_answers_a_libero_query():
    from vla_adp.envs.libero import make_env

    hints = checkpoint_hints(LIBERO_POLICY)
    assert hints == {"render": "fast", "camera_size": 128}
    policy = Policy.load(LIBERO_POLICY, dtype=torch.float32)
    assert policy.platform.name == "libero" and policy.model.args.image_size == 128
    env = make_env("libero_object", 0, render=hints["render"], image_size=128, camera_size=128)
    try:
        obs = env.reset(0)
    finally:
        env.close()
    out = policy.infer(obs)
    actions = np.asarray(out["actions"])
    assert actions.shape == (8, 7) and np.isfinite(actions).all()


@pytest.mark.parametrize("pruner", [None, "adp"])
def test_short_episode_with_and_without_adp(tmp_path, pruner):
    job = EvalJob(env="libero", suite="libero_spatial", checkpoint=str(LIBERO_POLICY), log=str(tmp_path / "log.jsonl"),
                  tasks=(0,), episodes=(0, 1), max_steps=12, pruner=pruner, keep=0.5 if pruner else None,
                  pruner_fields={"positions": "original"} if pruner else {}, render="fast", verbose=False)
    episodes = run_job(job)
    assert len(episodes) == 1 and episodes[0].error is None and episodes[0].steps == 12
    log = read_log(job.log)
    queries = [q for qs in log.queries.values() for q in qs]
    assert len(queries) == 2  # 12 steps, chunks of 8
    assert all(q.n_visual == 128 for q in queries)
    if pruner:
        assert all(q.kept_visual in (64, 128) for q in queries)
