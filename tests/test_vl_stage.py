"""The vision-language stage: simulator scene text, its collector, training, and action training from it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vla_adp.envs.libero_scene_text import ObjectFact, location, region, relation, scene_names, scene_text
from vla_adp.model import transforms as T
from vla_adp.policy import Policy
from vla_adp.train.config import ModelSize, TrainConfig
from vla_adp.train.demos import write_shard
from vla_adp.train.vl_data import VL_EPISODE_BASE, write_frame
from vla_adp.train.vl_stage import IGNORE, VLTrainConfig, VLTrainer

SIZE = 56
TINY = ModelSize(patch=14, dino_width=64, siglip_width=72, tower_depth=2, tower_mlp_ratio=2,
                 llm_dim=32, llm_layers=2, llm_heads=4, llm_ffn=64)
SPATIAL_GOALS = [("akita_black_bowl_1", "pick up the black bowl between the plate and the ramekin and place it on the plate"),
                 ("akita_black_bowl_1", "pick up the black bowl next to the ramekin and place it on the plate")]


# -- scene text (pure) -------------------------------------------------------------------------
def test_names_follow_the_instructions_and_skip_ambiguous_objects():
    keys = ["akita_black_bowl_1", "akita_black_bowl_2", "plate_1", "glazed_rim_porcelain_ramekin_1"]
    names, instructions = scene_names(keys, SPATIAL_GOALS, "akita_black_bowl_1", SPATIAL_GOALS[0][1])
    assert names == {"akita_black_bowl_1": "the black bowl between the plate and the ramekin",
                     "plate_1": "the plate", "glazed_rim_porcelain_ramekin_1": "the ramekin"}
    assert "akita_black_bowl_2" not in names  # "the black bowl" is two objects here
    assert instructions == {"akita_black_bowl_1": SPATIAL_GOALS[0][1]}  # the other task's bowl is ambiguous
    goals = [("alphabet_soup_1", "pick up the alphabet soup and place it in the basket"),
             ("ketchup_1", "pick up the ketchup and place it in the basket")]
    names, instructions = scene_names(["alphabet_soup_1", "ketchup_1", "basket_1"], goals, "ketchup_1", goals[1][1])
    assert names["alphabet_soup_1"] == "the alphabet soup" and names["basket_1"] == "the basket"
    assert instructions == {"alphabet_soup_1": goals[0][1], "ketchup_1": goals[1][1]}


def test_locations_and_relations_use_the_upright_image():
    assert region(0.1, 0.1) == "back left" and region(0.5, 0.5) == "center" and region(0.9, 0.5) == "front center"
    soup = ObjectFact("alphabet_soup_1", "the alphabet soup", 40, 0.7, 0.2, "red", "pick up the alphabet soup and place it in the basket")
    basket = ObjectFact("basket_1", "the basket", 300, 0.3, 0.8, "brown")
    assert location(soup, 8) == "front left, row 5 column 1"
    assert relation(soup, basket) == "left of" and relation(basket, soup) == "right of"
    pairs = scene_text([soup, basket], 8)
    assert pairs[0] == ("instruction", soup.instruction, "front left, row 5 column 1")
    assert {p[0] for p in pairs} == {"instruction", "where", "what", "colour", "relation"}
    assert ("what", "what is at row 2 column 6", "the basket") in pairs
    assert scene_text([soup, basket], 8) == pairs  # deterministic


# -- the training stage on a tiny random model -------------------------------------------------
def _pairs(rng, k: int) -> list[tuple[str, str, str]]:
    words = ["the alphabet soup", "the ketchup", "the basket"]
    out = [("instruction", "pick up the ketchup and place it in the basket", f"front left, row {k} column 1")]
    out += [("where", f"where is {w}", f"center, row {(k + i) % 4} column 2") for i, w in enumerate(words)]
    return out


@pytest.fixture(scope="module")
def vl_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("vl") / "data"
    rng = np.random.default_rng(0)
    for i in range(6):
        arrays = {"full_image": rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8),
                  "wrist_image": rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8),
                  "state": rng.uniform(-1, 1, 8).astype(np.float32),
                  "text": json.dumps({"facts": [], "pairs": _pairs(rng, i % 4), "grid": 4})}
        write_frame(root / "libero_object-0" / f"placement_{i:06d}.npz", arrays,
                    "pick up the ketchup and place it in the basket", "libero_object-0", 200000 + i)
    (root / "meta.json").write_text(json.dumps({"sim": "libero", "kind": "scene_text", "config": {"image_size": SIZE}}))
    return root


def vl_config(data, out, **kw) -> VLTrainConfig:
    fields = dict(steps=30, batch_size=8, lr=3e-3, warmup_steps=1, log_every=5, model=TINY, holdout_every=5)
    return VLTrainConfig(str(data), str(out), **(fields | kw))


def test_vl_loss_goes_down_and_the_checkpoint_loads(vl_data, tmp_path):
    trainer = VLTrainer(vl_config(vl_data, tmp_path / "vl"), progress=False)
    assert len(trainer.held_idx) == 4 * 2  # placements 0 and 5 are held out
    inputs, target = trainer.batch(trainer.train_idx[:3])
    assert (target[:, :3] != IGNORE).all() and (target == 2).sum() == 3  # every answer ends with </s>
    s = trainer.run()
    assert s["final_loss"] < 0.6 * s["first_loss"], s
    assert set(s["held_out_accuracy"]) == {"instruction", "where"}
    assert trainer.majority_answers()["where"].startswith("center, row ")
    assert all(0 <= a["majority"] <= 1 for a in s["held_out_accuracy"].values())
    policy = Policy.load(tmp_path / "vl", dtype=torch.float32)  # published layout, a loadable policy
    out = policy.infer({"full_image": np.zeros((SIZE, SIZE, 3), np.uint8), "wrist_image": np.zeros((SIZE, SIZE, 3), np.uint8),
                        "state": np.zeros(8), "instruction": "pick up the ketchup and place it in the basket"})
    assert np.isfinite(out["actions"]).all()
    assert json.loads((tmp_path / "vl" / "config.json").read_text())["vla_adp"]["stages"] == ["vl"]


def test_vl_resume_continues_the_same_run(vl_data, tmp_path):
    whole = VLTrainer(vl_config(vl_data, tmp_path / "a", steps=6, log_every=1), progress=False)
    whole.run()
    first = VLTrainer(vl_config(vl_data, tmp_path / "b", steps=6, log_every=1, minutes=1e-9), progress=False)
    first.train_step(), first.train_step(), first.train_step()
    first.save_state()
    second = VLTrainer(vl_config(vl_data, tmp_path / "b", steps=6, log_every=1), resume=True, progress=False)
    assert second.state.step == 3
    while second.state.step < 6:
        second.train_step()
    for (k, a), b in zip(whole.model.state_dict().items(), second.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    with pytest.raises(FileNotFoundError, match="no vision-language training state"):
        VLTrainer(vl_config(vl_data, tmp_path / "none"), resume=True, progress=False)


def test_vl_config_rejects_bad_values(vl_data, tmp_path):
    with pytest.raises(ValueError, match="instruction_share must be in"):
        vl_config(vl_data, tmp_path, instruction_share=1.5)
    with pytest.raises(ValueError, match="no scene-text frames"):
        VLTrainer(vl_config(tmp_path, tmp_path / "x"), progress=False)


def test_action_training_starts_from_the_vl_checkpoint(vl_data, tmp_path):
    from vla_adp.train.trainer import Trainer

    VLTrainer(vl_config(vl_data, tmp_path / "vl", steps=2), progress=False).run()
    rng = np.random.default_rng(1)
    data = tmp_path / "demos"
    arrays = {"full_image": rng.integers(0, 256, (10, SIZE, SIZE, 3), dtype=np.uint8),
              "wrist_image": rng.integers(0, 256, (10, SIZE, SIZE, 3), dtype=np.uint8),
              "state": rng.uniform(-1, 1, (10, 8)).astype(np.float32),
              "actions": rng.uniform(-1, 1, (10, 7)).astype(np.float32)}
    write_shard(data / "libero_object-1" / "episode_000000.npz", arrays,
                "pick up the ketchup and place it in the basket", "libero_object-1", 0)
    (data / "meta.json").write_text(json.dumps({"sim": "libero", "config": {}}))
    trainer = Trainer(TrainConfig(str(data), str(tmp_path / "act"), steps=2, warmup_steps=0, model=TINY,
                                  init=str(tmp_path / "vl")), progress=False)
    start = Policy.load(tmp_path / "vl", dtype=torch.float32).model.state_dict()
    for k, v in trainer.model.state_dict().items():
        torch.testing.assert_close(v, start[k], msg=k, atol=0, rtol=0)
    assert trainer.tokenizer_file.read_bytes() == (tmp_path / "vl" / "tokenizer.model").read_bytes()
    trainer.run()
    Policy.load(tmp_path / "act", dtype=torch.float32)
    wide = ModelSize(**{**TINY.__dict__, "llm_dim": 64})
    with pytest.raises(ValueError, match="shapes differ"):
        Trainer(TrainConfig(str(data), str(tmp_path / "bad"), steps=2, warmup_steps=0, model=wide,
                            init=str(tmp_path / "vl")), progress=False)


def test_cli_vl_stage_then_action_training_from_it(vl_data, tmp_path, capsys):
    from vla_adp.cli import main

    tiny = ["--patch", "14", "--llm-dim", "32", "--llm-layers", "2", "--llm-heads", "4", "--llm-ffn", "64",
            "--batch-size", "4", "--warmup-steps", "0", "--no-progress"]
    assert main(["train", "--stage", "vl", "--data", str(vl_data), "--out", str(tmp_path / "vl"), "--steps", "2",
                 *tiny]) == 0
    out = capsys.readouterr().out
    assert "held-out instruction" in out and "start: fresh weights" in out
    data = tmp_path / "demos"
    rng = np.random.default_rng(2)
    arrays = {"full_image": rng.integers(0, 256, (6, SIZE, SIZE, 3), dtype=np.uint8),
              "wrist_image": rng.integers(0, 256, (6, SIZE, SIZE, 3), dtype=np.uint8),
              "state": rng.uniform(-1, 1, (6, 8)).astype(np.float32), "actions": rng.uniform(-1, 1, (6, 7)).astype(np.float32)}
    write_shard(data / "libero_object-1" / "episode_000000.npz", arrays, "pick up the ketchup", "libero_object-1", 0)
    (data / "meta.json").write_text(json.dumps({"sim": "libero", "config": {}}))
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "act"), "--init", str(tmp_path / "vl"),
                 "--steps", "2", *tiny]) == 0
    assert (tmp_path / "act" / "tokenizer.model").read_bytes() == (tmp_path / "vl" / "tokenizer.model").read_bytes()
    assert main(["train", "--stage", "vl", "--data", str(vl_data), "--out", str(tmp_path / "x"), "--tasks", "a"]) == 2
    assert "--tasks is for --stage action" in capsys.readouterr().err


# -- the collector on the real simulator -----------------------------------------------------
@pytest.mark.sim
@pytest.mark.slow
def test_collector_is_deterministic_resumes_and_never_uses_demo_seeds(tmp_path):
    pytest.importorskip("libero")
    from vla_adp.train.vl_data import VLCollectConfig, collect_vl, read_frame, shard_path

    cfg = VLCollectConfig(("libero_spatial-0",), 2, str(tmp_path / "a"))
    collect_vl(cfg)
    again = collect_vl(cfg)
    assert again["written_this_run"] == 0  # resumed: nothing redone
    collect_vl(VLCollectConfig(("libero_spatial-0",), 2, str(tmp_path / "b")))
    for i in range(2):
        a, b = shard_path(tmp_path / "a", "libero_spatial-0", i), shard_path(tmp_path / "b", "libero_spatial-0", i)
        assert a.read_bytes() == b.read_bytes()
        frame = read_frame(a)
        assert frame["seed"] == 100000 + VL_EPISODE_BASE + i  # demonstrations use 100000 + episode < 200000
        assert frame["pairs"][0][0] == "instruction" and frame["pairs"][0][1] == frame["instruction"]
    f0, f1 = (read_frame(shard_path(tmp_path / "a", "libero_spatial-0", i)) for i in range(2))
    assert not np.array_equal(f0["full_image"], f1["full_image"])  # placements differ
    # reload_model=False re-samples in the loaded model: the placement a rebuilt model draws, up to
    # float residue of the previous episode (a few pixels off by a few levels)
    from vla_adp.envs.libero import LiberoConfig, LiberoEnv

    env = LiberoEnv(LiberoConfig("libero_spatial", 0, camera_size=128, image_size=128, render="fast", init="sampled"))
    try:
        env.reset(VL_EPISODE_BASE + 1)  # robosuite's default hard reset
        diff = np.abs(T.rotate_180(env.raw["agentview_image"]).astype(int) - f1["full_image"])
        env.reset(VL_EPISODE_BASE + 0)
        assert np.array_equal(T.rotate_180(env.raw["agentview_image"]), f0["full_image"])  # first reset: exact
    finally:
        env.close()
    assert diff.max() <= 8 and (diff.max(-1) > 0).mean() < 0.01, (diff.max(), (diff.max(-1) > 0).sum())
