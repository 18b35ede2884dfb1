"""Shared fixtures: tiny checkpoints in the published layout, built in the test run."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
# One thread: the tiny models' ops are microseconds long, and on a shared 2-core machine a second
# torch thread spins against other processes (4 queries of the 16-layer tiny model: 2.0-2.7 s with
# two threads, 0.4-0.5 s with one, load average 2.3).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    from vla_adp.model.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "openvla-7b-oft-finetuned-libero-spatial", seed=0)


@pytest.fixture(scope="session")
def tiny_policy(tiny_ckpt):
    from vla_adp.policy import Policy

    return Policy.load(tiny_ckpt, dtype=torch.float32)


def make_obs(seed: int = 0, size: int = 224, instruction: str = "pick up the black bowl and place it on the plate",
             state_dim: int = 8) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "full_image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        "wrist_image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        "state": rng.normal(size=state_dim),
        "instruction": instruction,
    }


@pytest.fixture
def obs():
    return make_obs()


@pytest.fixture(scope="session")
def tiny_openvla_ckpt(tmp_path_factory):
    """A tiny ``openvla/openvla-7b``-layout folder (LIBERO statistics), written by the command users run."""
    from vla_adp.cli import main

    folder = tmp_path_factory.mktemp("tiny-openvla") / "openvla-7b"
    assert main(["make-tiny-checkpoint", str(folder), "--family", "openvla", "--seed", "4"]) == 0
    return folder
