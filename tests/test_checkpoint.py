"""Checkpoint folders in the published layout: foreign writer, round trip, and every broken kind."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import timm
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from tests.conftest import make_obs
from vla_adp.model.checkpoint import CheckpointError, load_checkpoint
from vla_adp.model.tiny import train_tokenizer
from vla_adp.policy import Policy, PolicyConfig


# -- a folder written the way the published one was: timm + transformers + the converter's names ----
def write_foreign_checkpoint(folder: Path) -> tuple[Path, LlamaForCausalLM]:
    """Independent of vla_adp's writer: timm towers, an HF Llama, hand-made head state dicts."""
    torch.manual_seed(1)
    folder.mkdir(parents=True)
    tok = train_tokenizer(folder / "tokenizer.model", vocab_size=300)
    vocab = spm.SentencePieceProcessor(model_file=str(tok)).get_piece_size()
    dino = timm.create_model("vit_large_patch14_reg4_dinov2.lvd142m", pretrained=False, num_classes=0,
                             img_size=112, embed_dim=128, depth=3, num_heads=2, mlp_ratio=2.0)
    siglip = timm.create_model("vit_so400m_patch14_siglip_224", pretrained=False, num_classes=0,
                               img_size=112, embed_dim=144, depth=3, num_heads=2, mlp_ratio=2.0)
    d = 96
    llm_cfg = LlamaConfig(hidden_size=d, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=4, vocab_size=vocab + 64 - vocab % 64, rms_norm_eps=1e-6)
    llm = LlamaForCausalLM(llm_cfg).eval()
    state = {}
    for name, v in dino.state_dict().items():
        state["vision_backbone.featurizer." + name.replace(".gamma", ".scale_factor")] = v
    for name, v in siglip.state_dict().items():
        state["vision_backbone.fused_featurizer." + name] = v
    vis = 128 + 144
    for i, (a, b) in enumerate([(vis, 4 * vis), (4 * vis, d), (d, d)], 1):
        state[f"projector.fc{i}.weight"] = torch.randn(b, a) / a**0.5
        state[f"projector.fc{i}.bias"] = torch.randn(b) * 0.02
    for name, v in llm.state_dict().items():
        state["language_model." + name] = v
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in state.items()}
    keys = sorted(state)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    for shard, ks in shards.items():
        save_file({k: state[k] for k in ks}, str(folder / shard), metadata={"format": "pt"})
    wm = {k: s for s, ks in shards.items() for k in ks}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    head = {"model.layer_norm1.weight": torch.ones(7 * d), "model.layer_norm1.bias": torch.zeros(7 * d),
            "model.fc1.weight": torch.randn(64, 7 * d) * 0.05, "model.fc1.bias": torch.zeros(64),
            "model.layer_norm2.weight": torch.ones(64), "model.layer_norm2.bias": torch.zeros(64),
            "model.fc2.weight": torch.randn(7, 64) * 0.1, "model.fc2.bias": torch.zeros(7)}
    for b in range(2):
        head.update({f"model.mlp_resnet_blocks.{b}.ffn.0.weight": torch.ones(64),
                     f"model.mlp_resnet_blocks.{b}.ffn.0.bias": torch.zeros(64),
                     f"model.mlp_resnet_blocks.{b}.ffn.1.weight": torch.randn(64, 64) * 0.1,
                     f"model.mlp_resnet_blocks.{b}.ffn.1.bias": torch.zeros(64)})
    torch.save({"module." + k: v.to(torch.bfloat16) for k, v in head.items()}, folder / "action_head--150000_checkpoint.pt")
    proprio = {"fc1.weight": torch.randn(d, 8) * 0.3, "fc1.bias": torch.zeros(d),
               "fc2.weight": torch.randn(d, d) * 0.1, "fc2.bias": torch.zeros(d)}
    torch.save({"module." + k: v.to(torch.bfloat16) for k, v in proprio.items()}, folder / "proprio_projector--150000_checkpoint.pt")
    config = {"model_type": "openvla", "architectures": ["OpenVLAForActionPrediction"],
              "vision_backbone_id": "dinosiglip-vit-so-224px", "use_fused_vision_backbone": True,
              "timm_model_ids": ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"],
              "timm_override_act_layers": [None, None], "image_sizes": [112, 112], "pad_token_id": vocab,
              "pad_to_multiple_of": 64, "n_action_bins": 256, "text_config": llm_cfg.to_dict()}
    (folder / "config.json").write_text(json.dumps(config))
    q01 = [-0.745, -0.662, -0.9375, -0.107, -0.207, -0.184, 0.0]
    q99 = [0.9375, 0.876, 0.932, 0.104, 0.177, 0.146, 1.0]
    stats = {"libero_spatial_no_noops": {
        "action": {"q01": q01, "q99": q99, "mask": [True] * 6 + [False]},
        "proprio": {"q01": [-0.5] * 8, "q99": [0.5] * 8}}}
    (folder / "dataset_statistics.json").write_text(json.dumps(stats))
    return folder, llm


def test_foreign_checkpoint_loads_and_predicts(tmp_path):
    folder, hf_llm = write_foreign_checkpoint(tmp_path / "foreign")
    ckpt = load_checkpoint(folder, dtype=torch.float32)
    a = ckpt.args
    assert [t.image_size for t in a.towers] == [112, 112] and [t.heads for t in a.towers] == [2, 2]
    assert a.towers[0].reg_tokens == 4 and a.towers[0].layer_scale and not a.towers[1].layer_scale
    assert a.patches_per_image == 64 and a.projector_hidden == (4 * 272, 96)
    policy = Policy(ckpt, PolicyConfig(unnorm_key="libero_spatial"))
    out = policy.infer(make_obs(size=128))
    assert out["actions"].shape == (8, 7) and np.isfinite(out["actions"]).all()
    # The loaded decoder is the HF Llama (bidirectional) on the same (bf16-stored) weights.
    hf = hf_llm.model.to(torch.bfloat16).float()
    hf.config.is_causal = False
    for layer in hf.layers:
        layer.self_attn.is_causal = False
    x = torch.randn(1, 30, 96)
    with torch.no_grad():
        ref = hf(inputs_embeds=x, attention_mask=torch.ones(1, 30, dtype=torch.long)).last_hidden_state
        got = ckpt.model.language_model(x)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_round_trip_of_our_writer_is_exact(tiny_ckpt, tmp_path):
    from vla_adp.model.checkpoint import save_checkpoint

    ckpt = load_checkpoint(tiny_ckpt, dtype=torch.bfloat16)
    out = save_checkpoint(ckpt.model, tmp_path / "again", ckpt.norm_stats, ckpt.tokenizer_file, platform=ckpt.platform)
    again = load_checkpoint(out, dtype=torch.bfloat16)
    for (k, v), (k2, v2) in zip(ckpt.model.state_dict().items(), again.model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    # Saving again into the same folder at a later step replaces the side files (the loader wants one).
    save_checkpoint(ckpt.model, out, ckpt.norm_stats, ckpt.tokenizer_file, step=7, platform=ckpt.platform)
    assert sorted(f.name for f in out.glob("*--*_checkpoint.pt")) == [
        "action_head--7_checkpoint.pt", "proprio_projector--7_checkpoint.pt"]
    load_checkpoint(out, dtype=torch.bfloat16)


# -- broken folders ------------------------------------------------------------------------------
def _first_shard(folder: Path) -> Path:
    return sorted(folder.glob("model-*.safetensors"))[0]


def _rewrite_shard(folder: Path, edit) -> None:
    shard = _first_shard(folder)
    state = load_file(str(shard))
    edit(state)
    save_file(state, str(shard))
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != shard.name}
    index["weight_map"].update({k: shard.name for k in state})
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def _shape_mismatch(state):
    key = next(k for k in sorted(state) if k.endswith(".weight"))
    state[key] = torch.zeros(3)


BROKEN = {
    "no config": (lambda f: (f / "config.json").unlink(), r"missing file config\.json"),
    "bad json": (lambda f: (f / "config.json").write_text("{oops"), r"config\.json: not valid JSON"),
    "no index": (lambda f: (f / "model.safetensors.index.json").unlink(), r"missing model\.safetensors\.index\.json"),
    "missing shard": (lambda f: _first_shard(f).unlink(), r"names shard 'model-00001-of-0000\d\.safetensors', which is missing"),
    "truncated shard": (lambda f: _first_shard(f).write_bytes(b"\x00" * 10), r"not a readable safetensors file"),
    "missing key": (lambda f: _rewrite_shard(f, lambda s: s.pop(sorted(s)[0])), r"safetensors'\]: missing key '.+' \(1 missing"),
    "unexpected key": (lambda f: _rewrite_shard(f, lambda s: s.update({"projector.extra": torch.zeros(2)})), r"unexpected key 'projector\.extra'"),
    "shape mismatch": (lambda f: _rewrite_shard(f, _shape_mismatch), r"has shape \(3,\), expected \("),
    "no action head": (lambda f: next(f.glob("action_head*")).unlink(), r"missing 'action_head--<step>_checkpoint\.pt'"),
    "two action heads": (lambda f: shutil.copy(next(f.glob("action_head*")), f / "action_head--9_checkpoint.pt"), r"expected one 'action_head"),
    "corrupt head": (lambda f: next(f.glob("action_head*")).write_bytes(b"not a pickle"), r"action_head--0_checkpoint\.pt: cannot read the state dict"),
    "head shape": (lambda f: torch.save({"module.model.fc2.weight": torch.zeros(7, 3)}, next(f.glob("action_head*"))), r"action_head--0_checkpoint\.pt"),
    "no tokenizer": (lambda f: (f / "tokenizer.model").unlink(), r"missing file tokenizer\.model"),
    "no stats": (lambda f: (f / "dataset_statistics.json").unlink(), r"missing file dataset_statistics\.json"),
    "film": (lambda f: (f / "vision_backbone--5_checkpoint.pt").write_bytes(b""), r"FiLM \(OFT\+\) checkpoints are not supported"),
    "wrong layer count": (lambda f: _edit_json(f / "config.json", lambda c: c["text_config"].update(num_hidden_layers=3)), r"says 3 decoder layers, the weight shards .* hold 2"),
    "no timm ids": (lambda f: _edit_json(f / "config.json", lambda c: c.pop("timm_model_ids")), r"'timm_model_ids' is None, expected a list"),
}


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_folder_gives_a_clear_error(tiny_ckpt, tmp_path, case):
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, folder)
    breaker, message = BROKEN[case]
    breaker(folder)
    with pytest.raises((CheckpointError, FileNotFoundError), match=message):
        load_checkpoint(folder, dtype=torch.float32)


def test_missing_folder_and_unknown_unnorm_key(tiny_ckpt, tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint folder not found"):
        load_checkpoint(tmp_path / "nope")
    ckpt = load_checkpoint(tiny_ckpt, dtype=torch.float32)
    with pytest.raises(CheckpointError, match=r"unnorm_key 'libero_goal' .* not in dataset_statistics\.json"):
        Policy(ckpt, PolicyConfig(unnorm_key="libero_goal"))
    assert Policy(ckpt, PolicyConfig(unnorm_key="libero_spatial")).unnorm_key == "libero_spatial_no_noops"
    with pytest.warns(UserWarning, match="reference ADP rule"):
        assert Policy(ckpt, PolicyConfig(unnorm_key="spatial", lenient_unnorm_key=True)).unnorm_key == "libero_spatial_no_noops"


def test_platform_mismatch_is_named(tiny_ckpt):
    with pytest.raises(CheckpointError, match=r"platform 'aloha' expects action_dim 14 and proprio_dim 14, the side modules have 7 and 8"):
        load_checkpoint(tiny_ckpt, platform="aloha")
