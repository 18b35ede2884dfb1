"""The training-state file both trainers share: round trip, and one clear error line for bad files."""

from __future__ import annotations

import pickle
import random
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vla_adp.train.run_state import RunState, lr_at, progress, read_state, restore_state, save_state

KEYS = ("model", "opt", "run", "config", "rng")


def tiny_run(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2), np.random.default_rng(seed)


def step(model, opt, rng) -> None:
    x = torch.from_numpy(rng.normal(size=(4, 3)).astype(np.float32)) + torch.randn(4, 3) + random.random()
    opt.zero_grad()
    model(x).square().mean().backward()
    opt.step()


def test_a_restored_run_continues_bit_identically(tmp_path):
    model, opt, rng = tiny_run(0)
    step(model, opt, rng)
    path = tmp_path / "state.pt"
    save_state(path, model, opt, RunState(step=1, seconds=2.5, samples=4, losses=[0.5]), {"seed": 0}, rng)
    assert not path.with_suffix(".tmp").exists()
    step(model, opt, rng)
    other, other_opt, other_rng = tiny_run(1)
    state = restore_state(read_state(path, "training state", KEYS), other, other_opt, other_rng)
    assert state == RunState(step=1, seconds=2.5, samples=4, losses=[0.5])
    step(other, other_opt, other_rng)
    for a, b in zip(model.parameters(), other.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("detail", [True, False])
def test_a_bad_file_gives_one_error_line_and_no_warning(tmp_path, detail):
    path = tmp_path / "state.pt"
    with pytest.raises(FileNotFoundError, match=r"--resume: no training state at .*state\.pt"):
        read_state(path, "training state", KEYS, detail)
    path.write_bytes(pickle.dumps([1, 2], protocol=4))  # torch warns "Detected pickle protocol 4" on this one
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError) as e:
            read_state(path, "training state", KEYS, detail)
    assert "\n" not in str(e.value)
    reason = "(UnpicklingError: Weights only load failed." if detail else "(UnpicklingError)"
    assert str(e.value).startswith(f"--resume: {path} cannot be read safely {reason}")
    torch.save({"model": {}}, path)
    expected = " (expected a dict with model, opt, run, config and rng)" if detail else ""
    with pytest.raises(ValueError) as e:
        read_state(path, "training state", KEYS, detail)
    assert str(e.value) == f"--resume: {path} is not a training state{expected}"


def test_schedule_warms_up_then_follows_the_further_budget():
    cfg = SimpleNamespace(lr=1.0, warmup_steps=4, min_lr_ratio=0.1, steps=100, minutes=1.0)
    assert lr_at(0.0, cfg, 0) == 0.25 and lr_at(0.0, cfg, 3) == 1.0
    assert lr_at(0.5, cfg, 10) == pytest.approx(0.55) and lr_at(2.0, cfg, 10) == pytest.approx(0.1)
    assert progress(RunState(step=10, seconds=30.0), cfg) == 0.5
    assert progress(RunState(step=80, seconds=30.0), cfg) == 0.8
