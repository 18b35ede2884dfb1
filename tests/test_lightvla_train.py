"""LightVLA fine-tuning (vla_adp.train.lightvla): gradients through the selection, weights change, the
result is a loadable checkpoint; and the committed fine-tune of the reference policy predicts.

The tiny policy and its demonstrations are made in the test run: a small OFT in the published layout
(Meta-World platform, 56 px) and two demonstration shards written with the collector's own writer
(random frames: the test is about the training mechanics, not about what the policy learns).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vla_adp.commands.common import LIGHTVLA_POLICY
from vla_adp.constants import get_platform
from vla_adp.model.checkpoint import save_checkpoint
from vla_adp.model.openvla_oft import OpenVLAOFT
from vla_adp.model.tiny import train_tokenizer
from vla_adp.policy import Policy
from vla_adp.pruning.pruners import lightvla as lightvla_module
from vla_adp.pruning.registry import build_pruner
from vla_adp.train.config import ModelSize
from vla_adp.train.dataset import load_demos, norm_stats
from vla_adp.train.demos import write_shard
from vla_adp.train.lightvla import LightVLATrainConfig, LightVLATrainer, lightvla_loss

SIZE = 56
TINY = ModelSize(patch=14, dino_width=64, siglip_width=72, tower_depth=2, tower_mlp_ratio=2,
                 llm_dim=32, llm_layers=2, llm_heads=4, llm_ffn=64)
TASKS = {"reach": "reach the red goal", "drawer-close": "close the drawer"}


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """(checkpoint folder, dataset folder) of a tiny Meta-World policy."""
    root = tmp_path_factory.mktemp("lightvla")
    rng = np.random.default_rng(0)
    for i, (task, instruction) in enumerate(TASKS.items()):
        n = 12
        arrays = {"full_image": rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8),
                  "wrist_image": rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8),
                  "state": rng.uniform(0, 1, (n, 4)).astype(np.float32),
                  "actions": rng.uniform(-1, 1, (n, 4)).astype(np.float32)}
        write_shard(root / "data" / task / f"episode_{i:06d}.npz", arrays, instruction, task, i)
    tok = train_tokenizer(root / "tokenizer.model", extra_text=tuple(TASKS.values()))
    platform = get_platform("metaworld")
    torch.manual_seed(0)
    import sentencepiece as spm

    vocab = spm.SentencePieceProcessor(model_file=str(tok)).get_piece_size()
    model = OpenVLAOFT(TINY.args(vocab, platform, SIZE))
    stats = norm_stats(load_demos(root / "data"))
    ckpt = save_checkpoint(model, root / "start", stats, tok, platform=platform, center_crop=False,
                           dtype=torch.float32)
    return ckpt, root / "data"


def config(tiny_setup, out, **kw) -> LightVLATrainConfig:
    ckpt, data = tiny_setup
    fields = dict(tasks=tuple(TASKS), steps=4, batch_size=4, warmup_steps=1, log_every=2, minutes=5.0)
    return LightVLATrainConfig(str(ckpt), str(data), str(out), **(fields | kw))


def test_gradient_flows_through_the_selection_scores(tiny_setup, tmp_path, monkeypatch):
    trainer = LightVLATrainer(config(tiny_setup, tmp_path / "out"), progress=False)
    seen = []

    def spy(*args, **kw):  # the real scorer; keeps its output to read the gradient that reached it
        scores = real(*args, **kw)
        scores.retain_grad()
        seen.append(scores)
        return scores

    real = lightvla_module.lightvla_scores
    monkeypatch.setattr(lightvla_module, "lightvla_scores", spy)
    inputs, target = trainer.batches(np.arange(4))
    loss, info = lightvla_loss(trainer.model, trainer.pruner, inputs, target)
    loss.backward()
    assert info["lightvla_training"] and seen and seen[0].shape[0] == 4
    assert seen[0].grad is not None and seen[0].grad.abs().sum() > 0  # the straight-through softmax path
    assert trainer.model.projector.fc1.weight.grad.abs().sum() > 0


def test_fine_tuning_changes_the_weights_and_saves_a_loadable_policy(tiny_setup, tmp_path):
    out = tmp_path / "out"
    trainer = LightVLATrainer(config(tiny_setup, out), progress=False)
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    summary = trainer.run()
    after = trainer.model.state_dict()
    for name in ("projector.fc1.weight", "language_model.layers.0.self_attn.q_proj.weight"):
        assert not torch.equal(before[name], after[name]), name
    assert summary["steps"] == 4 and np.isfinite(summary["final_loss"])
    assert trainer.pruner.noise_scale == pytest.approx(0.25)  # the last step ran at progress 3/4
    assert len((out / "training" / "lightvla_log.jsonl").read_text().splitlines()) == 2
    policy = Policy.load(out, dtype=torch.float32, pruner=build_pruner("lightvla"))
    obs = {"full_image": np.zeros((SIZE, SIZE, 3), np.uint8), "wrist_image": np.zeros((SIZE, SIZE, 3), np.uint8),
           "state": np.full(4, 0.5), "instruction": "reach the red goal"}
    result = policy.infer(obs)
    assert result["actions"].shape == (8, 4) and np.isfinite(result["actions"]).all()
    assert 0 < result["info"]["keep_ratio_achieved"] <= 1


def test_bad_settings_are_named(tiny_setup, tmp_path):
    with pytest.raises(ValueError, match="warmup_steps"):
        config(tiny_setup, tmp_path, warmup_steps=4)
    with pytest.raises(ValueError, match="batch_size"):
        config(tiny_setup, tmp_path, batch_size=0)


def test_committed_lightvla_policy_loads_and_predicts():
    from vla_adp.envs.metaworld import make_env

    policy = Policy.load(LIGHTVLA_POLICY, dtype=torch.float32, pruner=build_pruner("lightvla"))
    env = make_env("metaworld", 2, image_size=policy.model.args.image_size)
    try:
        obs = env.reset(0)
    finally:
        env.close()
    info = policy.infer(obs)["info"]
    out = policy.infer(obs)
    assert out["actions"].shape == (8, 4) and np.isfinite(out["actions"]).all()
    assert info["pruned"] and 0 < info["keep_ratio_achieved"] < 1
    assert info["kept_visual"] == round(info["keep_ratio_achieved"] * info["n_visual"])
