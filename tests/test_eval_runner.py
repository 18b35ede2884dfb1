"""The episode -> task -> suite runner on a toy Env: bookkeeping, open loop, errors, pruner state, video."""

from __future__ import annotations

import imageio.v2 as imageio
import pytest

from tests.eval_helpers import HalfPruner, ToyEnv
from vla_adp.eval.logs import LogWriter, read_log
from vla_adp.eval.runner import EpisodeSettings, run_episode, run_suite, run_task
from vla_adp.policy import Policy


@pytest.fixture
def half_policy(tiny_policy):
    return Policy(tiny_policy.ckpt, tiny_policy.config, HalfPruner())


def test_episode_counts_steps_queries_and_stops_on_success(tiny_policy):
    queries = []
    rec = run_episode(ToyEnv(success_at=11), tiny_policy, 3, EpisodeSettings("h"), queries.append)
    assert (rec.success, rec.steps, rec.queries, rec.error) == (True, 11, 2, None)  # 8 open-loop + 3
    assert [q.step for q in queries] == [0, 8] and [q.query for q in queries] == [0, 1]
    assert rec.pruned_queries == 0 and rec.flops_total == rec.flops_full_total == sum(q.flops for q in queries)
    rec = run_episode(ToyEnv(success_at=11), tiny_policy, 3, EpisodeSettings("h", open_loop=2), queries.append)
    assert rec.queries == 6 and [q.step for q in queries[2:]] == [0, 2, 4, 6, 8, 10]
    rec = run_episode(ToyEnv(max_steps=13), tiny_policy, 0, EpisodeSettings("h"))
    assert (rec.success, rec.steps, rec.queries) == (False, 13, 2)


def test_pruner_sees_every_step_and_resets_per_episode(half_policy):
    pruner = half_policy.pruner
    queries = []
    for ep in range(2):
        run_episode(ToyEnv(max_steps=20), half_policy, ep, EpisodeSettings("h", log_indices=True), queries.append)
    assert pruner.resets >= 2
    assert pruner.paths == [0, 8, 8] * 2  # record_step after every executed step, cleared per query
    q = queries[0]
    assert q.pruned and q.pruner == "half" and q.gate_state == 1 and q.displacement == 0.25
    assert q.kept_visual == q.n_visual // 2 and q.kept_per_view == [q.n_visual // 4] * 2
    assert q.extra["half_marker"] == [1, 2]  # pruner keys the schema does not know are kept
    assert q.flops < q.flops_full and q.seq_len_pruned < q.seq_len
    assert [len(v) for v in q.kept_indices] == q.kept_per_view
    assert [q.query for q in queries] == [0, 1, 2] * 2 and queries[3].eef_pos == [0.0, 0.0, 1.0]


def test_exception_is_logged_with_traceback_and_counted(tiny_policy, tmp_path, capsys):
    env = ToyEnv(max_steps=20, raise_at=5)
    with LogWriter(tmp_path / "log.jsonl") as w:
        recs = run_task(env, tiny_policy, range(2), EpisodeSettings("h"), w)
    assert [r.episode for r in recs] == [0, 1] and env.resets == [0, 1]  # the task goes on
    for r in recs:
        assert not r.success and r.steps == 4
        assert "Traceback" in r.error and "RuntimeError: toy env exploded at step 5" in r.error
    assert "toy env exploded" in capsys.readouterr().out
    logs = read_log(tmp_path / "log.jsonl")
    assert [e.error for e in logs.episodes.values()] == [r.error for r in recs]


def test_suite_skips_done_episodes_and_closes_envs(tiny_policy, tmp_path):
    envs = {}

    def make(task_id):
        envs[task_id] = ToyEnv(task_id, max_steps=3)
        return envs[task_id]

    done = {("toy", 0, 0), ("toy", 0, 1), ("toy", 1, 1)}
    recs = run_suite(make, [0, 1], range(2), tiny_policy, EpisodeSettings("h"), done=done, suite="toy")
    assert [(r.task_id, r.episode) for r in recs] == [(1, 0)]
    assert list(envs) == [1] and envs[1].closed  # task 0 was complete: its env never made


def test_video_of_each_episode(tiny_policy, tmp_path):
    rec = run_episode(ToyEnv(max_steps=12), tiny_policy, 4, EpisodeSettings("cafe", video_dir=str(tmp_path)))
    assert rec.video and rec.video.endswith(".mp4") and "episode=4" in rec.video and "cafe" in rec.video
    frames = imageio.mimread(rec.video)
    assert len(frames) == 12 and frames[0].shape == (64, 64, 3)
    assert abs(int(frames[5].mean()) - 5) <= 2  # frame t is the env's frame before step t


def test_episodes_beyond_the_initial_states_fail_before_running(tiny_policy):
    env = ToyEnv()
    env.n_episodes = 3
    with pytest.raises(ValueError, match=r"has episodes 0..2, asked for 1..3"):
        run_task(env, tiny_policy, range(1, 4), EpisodeSettings("h"))
    assert env.resets == []


def test_bad_settings():
    with pytest.raises(ValueError, match="open_loop"):
        EpisodeSettings("h", open_loop=0)


def patch_colour(frame, box, margin=3):
    """Mean RGB strictly inside a patch box of a decoded (lossy) video frame."""
    t, l, b, r = box
    return frame[int(t) + margin:int(b) - margin, int(l) + margin:int(r) - margin].reshape(-1, 3).mean(0)


def test_overlay_video_masks_what_the_pruner_dropped_without_logging_indices(half_policy, tmp_path):
    from vla_adp.viz.overlay import patch_boxes, pipeline_for

    queries = []
    settings = EpisodeSettings("cafe", overlay_video_dir=str(tmp_path / "ov"))  # log_indices stays off
    rec = run_episode(ToyEnv(max_steps=10), half_policy, 2, settings, queries.append)
    assert rec.error is None and rec.video is None and all(q.kept_indices is None for q in queries)
    assert rec.overlay_video.endswith(".mp4") and "episode=2--success=False--cafe" in rec.overlay_video
    assert not list((tmp_path / "ov").glob("*.partial.mp4"))
    reader = imageio.get_reader(rec.overlay_video)
    assert reader.get_meta_data()["fps"] == 10
    frames = [f for f in reader]
    assert len(frames) == 10 and frames[0].shape == (224 + 48, 2 * 224 + 4 + 12, 3)  # two cameras + caption
    boxes = patch_boxes(pipeline_for(half_policy.model.args, half_policy.center_crop).for_frame(frames[0][:224, :224]))
    for f in (frames[0], frames[9]):  # HalfPruner keeps tokens 0..127 of each camera: the top half of its grid
        for cam, x0 in ((0, 0), (1, 228)):
            for j in (5, 100, 130, 250):
                t, l, b, r = boxes[j]
                rgb = patch_colour(f, (t, l + x0, b, r + x0))
                blue_tint = rgb[2] - rgb[0]  # noise frames: ~0 when kept, ~+120 under the blue mask
                assert (blue_tint < 30) if j < 128 else (blue_tint > 70), (cam, j, rgb)


class ResizingEnv(ToyEnv):
    """Its camera images change size after step 3: the overlay video cannot go on."""

    def _obs(self) -> dict:
        obs = super()._obs()
        if self.t > 3:
            obs["full_image"] = obs["full_image"][:200, :200]
        return obs


def test_a_failing_video_never_costs_the_episode(tiny_policy, tmp_path, capsys):
    settings = EpisodeSettings("h", overlay_video_dir=str(tmp_path), video_dir=str(tmp_path / "plain"))
    rec = run_episode(ResizingEnv(max_steps=8), tiny_policy, 0, settings)
    assert rec.error is None and rec.steps == 8 and rec.overlay_video is None
    assert "overlay video stopped" in capsys.readouterr().out
    (partial,) = tmp_path.glob("*.partial.mp4")  # the frames before the failure are kept
    assert len(imageio.mimread(partial)) == 4
    assert len(imageio.mimread(rec.video)) == 8  # the plain video is independent of it
