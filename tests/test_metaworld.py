"""Meta-World reference policy: real simulator adapter, demonstrations, behaviour cloning, checkpoint.

Everything runs for real (MuJoCo with EGL, Meta-World's scripted experts, timm towers, safetensors
files) at 56 px so the file stays within about a minute.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("metaworld")

from vla_adp.envs.base import Env  # noqa: E402
from vla_adp.envs.metaworld import SEED_BLOCK, MetaWorldEnv, episode_seed, make_env, suite_tasks  # noqa: E402
from vla_adp.policy import Policy  # noqa: E402
from vla_adp.train.config import ModelSize, TrainConfig  # noqa: E402
from vla_adp.train.dataset import Demos, chunk_index, load_demos, norm_stats  # noqa: E402
from vla_adp.train.demos import CollectConfig, collect, expert_episode, read_shard  # noqa: E402
from vla_adp.train.trainer import Trainer  # noqa: E402

pytestmark = pytest.mark.sim
SIZE = 56  # patch 14 -> 16 tokens per view
ASSET = Path(__file__).resolve().parents[1] / "src" / "vla_adp" / "assets" / "metaworld_policy"
TINY = ModelSize(patch=14, dino_width=64, siglip_width=72, tower_depth=2, tower_mlp_ratio=2,
                 llm_dim=32, llm_layers=2, llm_heads=4, llm_ffn=64)


def brown_share(img: np.ndarray, rows: slice) -> float:
    """Share of wood-coloured pixels (the table and floor) in ``rows``."""
    f = img[rows].astype(int)
    return float(((f[..., 0] > f[..., 1] + 15) & (f[..., 1] > f[..., 2] + 5) & (f[..., 0] < 200)).mean())


@pytest.fixture(scope="module")
def env():
    e = MetaWorldEnv("drawer-close", image_size=SIZE, split="train")
    yield e
    e.close()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("mw") / "demos"
    meta = collect(CollectConfig(("drawer-close", "reach"), demos=2, out=str(out), image_size=SIZE))
    return out, meta


# -- env adapter -------------------------------------------------------------------------------
def test_env_observation_shapes_and_protocol(env):
    assert isinstance(env, Env)
    obs = env.reset(0)
    for key in ("full_image", "wrist_image"):
        assert obs[key].shape == (SIZE, SIZE, 3) and obs[key].dtype == np.uint8
    assert obs["state"].shape == (4,) and 0.0 <= obs["state"][3] <= 1.0
    assert obs["instruction"] == "close the drawer"
    result = env.step(np.array([0.0, 0.0, 0.0, -1.0]))
    assert isinstance(result.success, bool) and "success" in result.info
    assert env.frame().shape == (SIZE, 2 * SIZE, 3)
    with pytest.raises(ValueError, match="4 finite numbers"):
        env.step(np.array([0.0, np.nan, 0.0, 0.0]))


def test_views_are_the_right_way_up(env):
    obs = env.reset(0)
    top, bottom = slice(0, SIZE // 4), slice(-SIZE // 4, None)
    assert brown_share(obs["full_image"], bottom) > brown_share(obs["full_image"], top) + 0.5
    # Meta-World's corner cameras are rolled 180°: raw they show the table on top, fixed at the bottom.
    fixed = env.renderer.render(env.env.data, "corner")
    env.renderer.renderer.update_scene(env.env.data, camera="corner")
    raw = env.renderer.renderer.render()
    assert brown_share(fixed, bottom) > brown_share(fixed, top)
    assert brown_share(raw, top) > brown_share(raw, bottom)


def test_reset_is_deterministic_per_seed_and_eval_goals_are_held_out():
    train = MetaWorldEnv("reach", image_size=SIZE, split="train")
    held = MetaWorldEnv("reach", image_size=SIZE, split="eval")
    try:
        a, goal_a = train.reset(3), train.goal
        train.step(np.array([1.0, 0.0, 0.0, 0.0]))
        b = train.reset(3)
        np.testing.assert_array_equal(a["full_image"], b["full_image"])
        np.testing.assert_array_equal(a["wrist_image"], b["wrist_image"])
        np.testing.assert_array_equal(goal_a, train.goal)
        train.reset(4)
        assert not np.allclose(goal_a, train.goal)
        held.reset(3)
        assert held.seed == SEED_BLOCK + 3 and not np.allclose(goal_a, held.goal)
    finally:
        train.close()
        held.close()
    assert max(episode_seed("train", e) for e in (0, SEED_BLOCK - 1)) < min(episode_seed("eval", e) for e in (0, 5))
    with pytest.raises(ValueError, match="split"):
        episode_seed("test", 0)


def test_unknown_task_names_the_choices():
    with pytest.raises(ValueError, match="drawer-open"):
        MetaWorldEnv("drawer-opn")


def test_runner_factory():
    assert len(suite_tasks("metaworld")) == 5 and suite_tasks("metaworld_train")[-1] == "reach"
    assert len(suite_tasks("metaworld_all")) >= 10
    env = make_env("metaworld", 1, max_steps=7, image_size=SIZE)
    try:
        assert (env.task, env.suite, env.split, env.max_steps) == (suite_tasks("metaworld")[1], "metaworld", "eval", 7)
    finally:
        env.close()
    with pytest.raises(ValueError, match="tasks 0..4"):
        make_env("metaworld", 5)
    with pytest.raises(ValueError, match="metaworld_all"):
        suite_tasks("metaworld10")


def test_expert_succeeds(env):
    arrays, ok = expert_episode(env, 1)
    assert ok and len(arrays["actions"]) < env.max_steps
    assert np.abs(arrays["actions"]).max() <= 1.0


# -- demonstrations --------------------------------------------------------------------------
def test_collect_writes_successful_deterministic_shards(dataset, tmp_path):
    out, meta = dataset
    assert {t: m["kept"] for t, m in meta["tasks"].items()} == {"drawer-close": 2, "reach": 2}
    assert meta["tasks"]["reach"]["expert_success"] == 1.0 and meta["tasks"]["reach"]["seeds"] == [0, 1]
    again = collect(CollectConfig(("reach",), demos=1, out=str(tmp_path), image_size=SIZE))
    assert again["tasks"]["reach"]["seeds"] == [0]
    a, b = read_shard(out / "reach" / "episode_000000.npz"), read_shard(tmp_path / "reach" / "episode_000000.npz")
    for k in ("full_image", "wrist_image", "state", "actions"):
        np.testing.assert_array_equal(a[k], b[k])
    assert json.loads((out / "meta.json").read_text())["eval_seed_range"][0] == SEED_BLOCK


def test_bad_shard_is_named(tmp_path):
    bad = tmp_path / "reach" / "episode_000000.npz"
    bad.parent.mkdir()
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="episode_000000.npz"):
        load_demos(tmp_path)


def test_missing_task_is_named(dataset):
    with pytest.raises(ValueError, match="window-open"):
        load_demos(dataset[0], ("reach", "window-open"))


def test_chunk_targets_repeat_the_last_action():
    demos = Demos(np.zeros((5, 1, 1, 3), np.uint8), np.zeros((5, 1, 1, 3), np.uint8), np.zeros((5, 4), np.float32),
                  np.arange(20, dtype=np.float32).reshape(5, 4), np.array([0, 0, 0, 1, 1]), np.array([3, 5]),
                  ["a", "b"], ["reach", "reach"], [0, 1])
    np.testing.assert_array_equal(chunk_index(demos, np.array([1, 3]), 4), [[1, 2, 2, 2], [3, 4, 4, 4]])


# -- batches = Policy inputs -----------------------------------------------------------------
def test_padded_batch_equals_each_sample_alone(dataset, tmp_path):
    out, _ = dataset
    trainer = Trainer(TrainConfig(str(out), str(tmp_path / "ck"), steps=2, warmup_steps=0, model=TINY), progress=False)
    demos, model = trainer.demos, trainer.model.eval()
    first = [int(np.flatnonzero(np.asarray(demos.tasks)[demos.episode] == t)[0]) for t in ("drawer-close", "reach")]
    inputs, _ = trainer.batches(np.array(first))
    assert not inputs.prompt_mask.all(), "the two instructions should tokenize to different lengths"
    with torch.no_grad():
        batched = model(inputs).actions
        for row, i in enumerate(first):
            alone, _ = trainer.batches(np.array([i]))
            alone.prompt_mask = None
            torch.testing.assert_close(batched[row], model(alone).actions[0], rtol=1e-4, atol=1e-5)


def test_norm_stats_leave_the_gripper_unnormalised(dataset):
    stats = norm_stats(load_demos(dataset[0]))["metaworld"]
    assert stats["action"]["mask"] == [True, True, True, False]
    assert len(stats["proprio"]["q01"]) == 4 and stats["num_trajectories"] == 4


# -- training, resume, checkpoint ------------------------------------------------------------
def test_training_lowers_the_loss_and_the_checkpoint_loads_as_a_policy(dataset, tmp_path):
    out, _ = dataset
    cfg = TrainConfig(str(out), str(tmp_path / "ck"), steps=40, warmup_steps=2, lr=3e-3, log_every=5, model=TINY)
    trainer = Trainer(cfg, progress=False)
    summary = trainer.run()
    losses = trainer.state.losses
    assert summary["steps"] == 40 and losses[-1] < 0.7 * losses[0]
    policy = Policy.load(cfg.out)  # no flags: platform, crop and statistics come from the folder
    assert policy.platform.name == "metaworld" and policy.center_crop is False
    # The same frame through Policy.inputs and through the training batch gives the same actions.
    policy32 = Policy.load(cfg.out, dtype=torch.float32)
    i = 7
    obs = {"full_image": trainer.demos.full_image[i], "wrist_image": trainer.demos.wrist_image[i],
           "state": trainer.demos.state[i], "instruction": trainer.demos.instructions[trainer.demos.episode[i]]}
    inputs, _ = trainer.batches(np.array([i]))
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.copy_(p.to(torch.bfloat16).float())  # the checkpoint stores bf16
        norm = trainer.model.eval()(inputs).actions[0].numpy()
    from vla_adp.model.transforms import unnormalize_actions

    expected = unnormalize_actions(norm, trainer.stats["metaworld"]["action"])
    np.testing.assert_allclose(policy32.infer(obs)["actions"], expected, rtol=1e-4, atol=1e-5)
    assert policy.infer(obs)["actions"].shape == (8, 4)


def test_bf16_autocast_trains_fp32_weights_and_bad_precision_is_named(dataset, tmp_path):
    with pytest.raises(ValueError, match=r"precision must be one of \('fp32', 'bf16'\), got 'fp16'"):
        TrainConfig(str(dataset[0]), str(tmp_path / "x"), precision="fp16")
    cfg = TrainConfig(str(dataset[0]), str(tmp_path / "ck"), steps=40, warmup_steps=2, lr=3e-3, log_every=5,
                      model=TINY, precision="bf16")
    trainer = Trainer(cfg, progress=False)
    trainer.run()
    losses = trainer.state.losses
    assert losses[-1] < 0.7 * losses[0]
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}  # autocast: weights stay fp32


def test_crop_training_records_center_crop_and_resume_keeps_the_setting(dataset, tmp_path):
    with pytest.raises(ValueError, match=r"crop_area must be in \(0, 1\) or None, got 1.0"):
        TrainConfig(str(dataset[0]), str(tmp_path / "x"), crop_area=1.0)
    cfg = TrainConfig(str(dataset[0]), str(tmp_path / "ck"), steps=2, warmup_steps=0, model=TINY, crop_area=0.9)
    plain = Trainer(dataclasses.replace(cfg, crop_area=None, out=str(tmp_path / "plain")), progress=False)
    cropped = Trainer(cfg, progress=False)
    # the crop changes what the model sees: same weights, same batch indices, other pixels, other loss
    assert plain.train_step() != cropped.train_step()
    cropped.run()
    assert Policy.load(cfg.out).center_crop is True  # evaluation feeds the center of what training saw
    with pytest.raises(ValueError, match=r"trained with crop_area 0.9, not None \(add or drop --crop"):
        Trainer(dataclasses.replace(cfg, crop_area=None), resume=True, progress=False)


def test_shared_runner_evaluates_a_trained_checkpoint(dataset, tmp_path):
    from vla_adp.eval.job import EvalJob, run_job
    from vla_adp.eval.logs import read_logs

    cfg = TrainConfig(str(dataset[0]), str(tmp_path / "ck"), steps=2, warmup_steps=0, model=TINY)
    Trainer(cfg, progress=False).run()
    log = tmp_path / "eval.jsonl"
    job = EvalJob(env="metaworld", suite="metaworld", checkpoint=cfg.out, log=str(log), tasks=(2,), episodes=(0, 1),
                  max_steps=9, pruner="adp", keep=0.5, pruner_fields={"gate": {"schedule": "static"}}, verbose=False)
    (rec,) = run_job(job)
    assert (rec.suite, rec.task, rec.steps, rec.queries, rec.pruned_queries) == ("metaworld", "drawer-close", 9, 2, 2)
    assert len(read_logs([log]).episodes) == 1 and run_job(job) == []  # resumes: nothing left to run


def test_instruction_shift_hands_the_policy_another_tasks_instruction(tmp_path, monkeypatch):
    from vla_adp.envs.metaworld import TASKS
    from vla_adp.eval.job import EvalJob, run_config, run_job
    from vla_adp.policy import Policy

    seen = []
    infer = Policy.infer
    monkeypatch.setattr(Policy, "infer", lambda self, obs, *a, **k: seen.append(obs["instruction"]) or infer(self, obs, *a, **k))
    job = EvalJob(env="metaworld", suite="metaworld", checkpoint=str(ASSET), log=str(tmp_path / "l.jsonl"),
                  tasks=(2,), episodes=(0, 1), max_steps=9, verbose=False, instruction_shift=-1)
    (rec,) = run_job(job)
    names = suite_tasks("metaworld")
    assert rec.task == names[2] and len(seen) == rec.queries == 2
    assert set(seen) == {TASKS[names[1]].instruction} != {TASKS[names[2]].instruction}  # task 2's scene, task 1's words
    plain = dataclasses.replace(job, instruction_shift=0)
    assert run_config(plain)["method"] != run_config(job)["method"]  # a different run, never resumed as one
    assert "instruction_shift" not in run_config(plain)["method"]  # older logs keep their hashes
    with pytest.raises(ValueError, match="serial runner only"):
        dataclasses.replace(job, envs=2)


def test_resume_continues_exactly(dataset, tmp_path):
    out, _ = dataset

    def trainer(folder, resume=False):
        cfg = TrainConfig(str(out), str(folder), steps=20, warmup_steps=2, batch_size=4, model=TINY)
        return Trainer(cfg, resume=resume, progress=False)

    straight = trainer(tmp_path / "a")
    for _ in range(4):
        straight.train_step()
    first = trainer(tmp_path / "b")
    for _ in range(2):
        first.train_step()
    first.save_state()
    second = trainer(tmp_path / "b", resume=True)
    assert second.state.step == 2
    for _ in range(2):
        second.train_step()
    for (name, p), q in zip(straight.model.named_parameters(), second.model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)


def test_resume_without_state_says_where_it_looked(dataset, tmp_path):
    cfg = TrainConfig(str(dataset[0]), str(tmp_path / "none"), model=TINY)
    with pytest.raises(FileNotFoundError, match="state.pt"):
        Trainer(cfg, resume=True, progress=False)


class RunsCode:
    """Unpickling this creates a marker file: a pickle that runs code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_resume_refuses_a_pickle_that_runs_code(dataset, tmp_path):
    import pickle

    from vla_adp.train.trainer import STATE_FILE

    cfg = TrainConfig(str(dataset[0]), str(tmp_path / "evil"), model=TINY)
    marker = tmp_path / "code-ran"
    (tmp_path / "evil" / STATE_FILE).parent.mkdir(parents=True)
    (tmp_path / "evil" / STATE_FILE).write_bytes(pickle.dumps({"model": RunsCode(marker)}))
    with pytest.raises(ValueError, match=r"state\.pt cannot be read safely \(UnpicklingError"):
        Trainer(cfg, resume=True, progress=False)
    assert not marker.exists()


def test_thread_tuner_keeps_the_faster_count():
    from vla_adp.train.threads import ThreadTuner

    tuner, before = ThreadTuner((1, 2), every=10, probe=3), torch.get_num_threads()
    try:
        for step in range(10):
            n = tuner.threads_for(step)
            tuner.record(step, {1: 0.5, 2: 2.0}[n])  # two threads stall on a busy machine
            assert torch.get_num_threads() == n
        assert tuner.best == 1 and tuner.threads_for(7) == 1
        for step in range(10, 16):
            tuner.record(step, {1: 0.5, 2: 0.2}[tuner.threads_for(step)])
        assert tuner.best == 2 and tuner.threads_for(18) == 2
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="positive ints"):
        ThreadTuner((0, 2))


# -- the committed reference policy ----------------------------------------------------------
def test_committed_policy_loads_and_predicts():
    size = sum(f.stat().st_size for f in ASSET.rglob("*") if f.is_file())
    assert size <= 20 * 2**20
    policy = Policy.load(ASSET, dtype=torch.float32)
    assert policy.platform.name == "metaworld" and policy.model.args.patches_per_image * 2 >= 128
    env = MetaWorldEnv("drawer-open", image_size=policy.model.args.image_size)
    try:
        out = policy.infer(env.reset(0))
    finally:
        env.close()
    assert out["actions"].shape == (8, 4) and np.isfinite(out["actions"]).all()


def test_images_only_where_read_change_nothing():
    """The runner asks for camera images only on query steps; the closed loop is the same as with
    an env that renders every step (a wrapper without the ``images`` hint, as older envs are)."""
    from vla_adp.eval.runner import EpisodeSettings, run_episode, takes_images_hint
    from vla_adp.pruning.registry import build_pruner

    class EveryStep:  # hides the hint: renders on every step
        def __init__(self, env):
            self.env = env

        def __getattr__(self, name):
            return getattr(self.env, name)

        def step(self, action):
            return self.env.step(action)

    policy = Policy.load(ASSET, dtype=torch.float32, pruner=build_pruner("adp", 0.5, positions="original"))
    env = MetaWorldEnv("drawer-close", image_size=policy.model.args.image_size, max_steps=40)
    try:
        assert takes_images_hint(env) and not takes_images_hint(EveryStep(env))
        runs = []
        for e in (env, EveryStep(env)):
            queries = []
            rec = run_episode(e, policy, 3, EpisodeSettings("x"), on_query=queries.append)
            runs.append((rec, [(q.step, q.pruned, q.eef_pos) for q in queries]))
        (a, qa), (b, qb) = runs
        assert a.error is None and b.error is None and a.queries >= 3
        assert (a.steps, a.success, a.pruned_queries) == (b.steps, b.success, b.pruned_queries) and qa == qb
        obs = env.step(np.zeros(4), images=False).obs
        assert obs["full_image"] is None and obs["state"].shape == (4,)
        size = policy.model.args.image_size
        assert env.frame().shape == (size, 2 * size, 3)  # rendered on demand after an image-less step
    finally:
        env.close()
