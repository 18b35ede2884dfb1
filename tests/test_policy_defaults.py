"""One dtype rule for the library and the CLI; numpy instructions; num_trials_per_task in `vla-adp eval`."""

import argparse
import json

import numpy as np
import pytest
import torch

from tests.conftest import make_obs
from vla_adp.commands import eval as eval_cmd
from vla_adp.commands import predict as predict_cmd
from vla_adp.commands.common import dtype_of
from vla_adp.policy import Policy
from vla_adp.utils.machine import default_dtype


def parse(module, argv):
    p = argparse.ArgumentParser()
    module.add_arguments(p)
    return p.parse_args(argv)


def test_library_and_cli_load_the_same_dtype(tiny_ckpt):
    args = parse(predict_cmd, ["--checkpoint", str(tiny_ckpt), "--device", "cpu"])
    policy = Policy.load(tiny_ckpt)  # the README's library example: no dtype given
    assert dtype_of(args) == default_dtype("cpu") == torch.float32
    assert next(policy.model.parameters()).dtype == dtype_of(args)
    assert default_dtype("cuda") == default_dtype("cuda:1") == torch.bfloat16


def test_library_example_and_predict_give_the_same_actions(tiny_ckpt, tiny_policy):
    obs = make_obs(3)
    lib = Policy.load(tiny_ckpt).infer(obs)["actions"]
    args = parse(predict_cmd, ["--checkpoint", str(tiny_ckpt), "--device", "cpu"])
    from vla_adp.commands.common import load_policy

    cli = load_policy(args).infer(obs)["actions"]
    np.testing.assert_array_equal(lib, cli)


def test_infer_accepts_numpy_string_instructions(tiny_policy, tmp_path):
    obs = make_obs(4)
    want = tiny_policy.infer(dict(obs))["actions"]
    tiny_policy.reset()
    np.savez(tmp_path / "obs.npz", **obs)
    loaded = dict(np.load(tmp_path / "obs.npz"))  # instruction comes back as a 0-d '<U..' array
    assert isinstance(loaded["instruction"], np.ndarray) and loaded["instruction"].ndim == 0
    np.testing.assert_array_equal(tiny_policy.infer(loaded)["actions"], want)
    tiny_policy.reset()
    for value in (np.str_(obs["instruction"]), np.array(obs["instruction"].encode())):
        np.testing.assert_array_equal(tiny_policy.infer({**obs, "instruction": value})["actions"], want)
        tiny_policy.reset()
    with pytest.raises(ValueError, match="non-empty 'instruction' string, got ndarray"):
        tiny_policy.infer({**obs, "instruction": np.array(["a", "b"])})


def test_num_trials_per_task_sets_the_evaluation_trials(tiny_ckpt, tmp_path):
    cfg = tmp_path / "prune.json"
    cfg.write_text(json.dumps({"qk_keep_ratio": 0.5, "num_trials_per_task": 2, "overlay_pruned": True}))
    base = ["libero", "--checkpoint", str(tiny_ckpt), "--suite", "libero_spatial", "--pruning-config", str(cfg)]
    assert eval_cmd.job_settings(parse(eval_cmd, base))["episodes"] == (0, 2)
    assert eval_cmd.job_settings(parse(eval_cmd, base + ["--trials", "5"]))["episodes"] == (0, 5)  # --trials wins
    plain = ["libero", "--checkpoint", str(tiny_ckpt), "--suite", "libero_spatial"]
    assert eval_cmd.job_settings(parse(eval_cmd, plain))["episodes"] == (0, 50)
    cfg.write_text(json.dumps({"qk_keep_ratio": 0.5, "num_trials_per_task": "many"}))
    with pytest.raises(ValueError, match="num_trials_per_task must be an integer, got 'many'"):
        eval_cmd.job_settings(parse(eval_cmd, base))


def test_cli_eval_dtype_follows_the_same_rule(tiny_ckpt):
    args = parse(eval_cmd, ["libero", "--checkpoint", str(tiny_ckpt), "--suite", "libero_spatial", "--device", "cpu"])
    assert eval_cmd.job_settings(args)["dtype"] == "fp32"
