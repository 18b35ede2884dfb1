"""The ``openvla/openvla-7b`` folder layout: writer, strict loader, and every breakage named clearly;
the action vocabulary and un-normalisation against hand-computed values."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from vla_adp.model.checkpoint import CheckpointError, load_checkpoint
from vla_adp.model.config import LlamaArgs
from vla_adp.model.openvla.actions import actions_to_tokens, tokens_to_actions, unnormalize_actions
from vla_adp.model.openvla.checkpoint import load_openvla_checkpoint
from vla_adp.model.openvla.flops import decode_flops
from vla_adp.model.openvla.tiny import make_tiny_openvla_checkpoint


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_tiny_openvla_checkpoint(tmp_path_factory.mktemp("ovla") / "openvla-7b", seed=1)


def test_layout_is_openvla_7b(folder):
    names = sorted(p.name for p in folder.iterdir() if not p.name.startswith("model-"))
    assert names == ["config.json", "model.safetensors.index.json", "preprocessor_config.json",
                     "special_tokens_map.json", "tokenizer.model", "tokenizer_config.json"]
    assert len(list(folder.glob("model-0000*-of-0000*.safetensors"))) >= 2
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "openvla" and cfg["architectures"] == ["OpenVLAForActionPrediction"]
    assert cfg["n_action_bins"] == 256 and cfg["pad_to_multiple_of"] == 64
    assert "num_images_in_input" not in cfg and list(cfg["norm_stats"]) == ["libero_spatial_no_noops"]
    keys = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    assert "language_model.lm_head.weight" in keys and "language_model.model.layers.0.self_attn.q_proj.weight" in keys
    assert "vision_backbone.featurizer.blocks.0.ls1.scale_factor" in keys and "projector.fc3.weight" in keys
    assert not any(k.startswith(("action_head", "proprio_projector")) for k in keys)


def test_round_trip_is_exact_in_bf16(folder):
    ckpt = load_openvla_checkpoint(folder, dtype=torch.float32)
    stored = {}
    for shard in folder.glob("model-*.safetensors"):
        stored.update(load_file(str(shard)))
    state = ckpt.model.state_dict()
    assert len(state) == len(stored)
    assert torch.equal(state["language_model.layers.1.mlp.up_proj.weight"],
                       stored["language_model.model.layers.1.mlp.up_proj.weight"].float())
    assert torch.equal(state["vision_backbone.featurizer.blocks.0.ls1.gamma"],
                       stored["vision_backbone.featurizer.blocks.0.ls1.scale_factor"].float())
    assert ckpt.args.n_real_vocab == 400 and ckpt.platform.chunk == 1 and ckpt.platform.action_dim == 7


def test_statistics_file_replaces_config_norm_stats(tmp_path, folder):
    broken = tmp_path / "ckpt"
    shutil.copytree(folder, broken)
    stats = {"bridge_orig": {"action": {"q01": [-1.0] * 7, "q99": [2.0] * 7}}}
    (broken / "dataset_statistics.json").write_text(json.dumps(stats))
    assert load_openvla_checkpoint(broken).norm_stats == stats  # upstream get_vla's override


def edit_json(name, edit):
    def breaker(folder: Path):
        data = json.loads((folder / name).read_text())
        edit(data)
        (folder / name).write_text(json.dumps(data))
    return breaker


def edit_shard(edit):
    def breaker(folder: Path):
        shard = sorted(folder.glob("model-*.safetensors"))[0]
        state = load_file(str(shard))
        edit(state)
        save_file(state, str(shard))
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != shard.name}
        index["weight_map"].update({k: shard.name for k in state})
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return breaker


def stats_edit(edit):
    return edit_json("config.json", lambda c: edit(c["norm_stats"]["libero_spatial_no_noops"]["action"]))


def drop_key(key):
    return lambda state: state.pop(key)


BREAKAGES = {
    "no config": (lambda f: (f / "config.json").unlink(), r"missing file config.json"),
    "other model type": (edit_json("config.json", lambda c: c.update(model_type="llava")),
                         r"config.json: model_type is 'llava', expected 'openvla'"),
    "other architecture": (edit_json("config.json", lambda c: c.update(architectures=["LlamaForCausalLM"])),
                           r"architectures is \['LlamaForCausalLM'\], expected \['OpenVLAForActionPrediction'\]"),
    "oft side module": (lambda f: torch.save({}, f / "action_head--10_checkpoint.pt"),
                        r"OpenVLA-OFT side modules \['action_head--10_checkpoint.pt'\]; load it with"),
    "no statistics": (edit_json("config.json", lambda c: c.pop("norm_stats")),
                      r"no dataset_statistics.json and no 'norm_stats' in config.json"),
    "statistics not an object": (edit_json("config.json", lambda c: c.update(norm_stats=[1])),
                                 r"'norm_stats' is a JSON array, expected an object"),
    "q99 too short": (stats_edit(lambda a: a.update(q99=a["q99"][:6])),
                      r"dataset 'libero_spatial_no_noops': action.q01 has 7 values but action.q99 6"),
    "q01 not numbers": (stats_edit(lambda a: a.update(q01=["x"] * 7)),
                        r"action.q01 is 7 values with a non-number"),
    "bad mask": (stats_edit(lambda a: a.update(mask=[1] * 7)), r"action.mask is \[1, 1, .*expected 7 booleans"),
    "no action entry": (edit_json("config.json", lambda c: c["norm_stats"]["libero_spatial_no_noops"].pop("action")),
                        r"expected an object with an 'action' object"),
    "vocabulary vs tokenizer": (edit_json("config.json", lambda c: c.update(pad_to_multiple_of=32)),
                                r"tokenizer.model: 400 pieces, expected text_config.vocab_size 464 - "
                                r"pad_to_multiple_of 32 = 432"),
    "missing weight": (edit_shard(drop_key("vision_backbone.featurizer.blocks.0.attn.proj.bias")),
                       r"missing key 'vision_backbone.featurizer.blocks.0.attn.proj.bias'"),
    "unexpected weight": (edit_shard(lambda s: s.update({"action_head.model.fc1.weight": torch.zeros(2, 2)})),
                          r"unexpected key 'action_head.model.fc1.weight'"),
    "wrong shape": (edit_shard(lambda s: s.update({"vision_backbone.featurizer.blocks.0.attn.proj.bias": torch.zeros(3)})),
                    r"key 'vision_backbone.featurizer.blocks.0.attn.proj.bias' has shape \(3,\), expected \(64,\)"),
    "layer count": (edit_json("config.json", lambda c: c["text_config"].update(num_hidden_layers=3)),
                    r"config.json says 3 decoder layers, .* hold 2"),
    "corrupt tokenizer": (lambda f: (f / "tokenizer.model").write_bytes(b"not a model"),
                          r"tokenizer.model: not a readable SentencePiece model"),
}


@pytest.mark.parametrize("case", sorted(BREAKAGES))
def test_broken_folders_name_the_problem(tmp_path, folder, case):
    breaker, message = BREAKAGES[case]
    broken = tmp_path / "ckpt"
    shutil.copytree(folder, broken)
    breaker(broken)
    with pytest.raises(CheckpointError, match=message):
        load_openvla_checkpoint(broken)


def test_oft_loader_does_not_take_an_openvla_folder(folder):
    with pytest.raises(CheckpointError, match="missing file dataset_statistics.json|action_head"):
        load_checkpoint(folder)


# -- action vocabulary -----------------------------------------------------------------------
def test_token_to_action_hand_computed():
    """Llama-2: 32000 real ids, bins = the last 256; bin b has centre -1 + (2b + 1)/255."""
    ids = np.array([31999, 31872, 31745, 31744, 5, 32010])
    expected = np.array([-1 + 1 / 255, 0.0, 1 - 1 / 255, 1 - 1 / 255, 1 - 1 / 255, -1 + 1 / 255])
    np.testing.assert_allclose(tokens_to_actions(ids, 32000), expected, atol=1e-15, rtol=0)
    assert tokens_to_actions(np.array([31872]), 32000)[0] == 0.0


def test_tokenize_then_detokenize_stays_in_the_bin():
    a = np.linspace(-1.2, 1.2, 1001)
    ids = actions_to_tokens(a, 32000)
    assert ids.min() >= 32000 - 256 and ids.max() <= 31999
    back = tokens_to_actions(ids, 32000)
    assert np.abs(back - np.clip(a, -1, 1)).max() <= 1 / 255 + 1e-12


def test_unnormalise_as_upstream_without_epsilon():
    stats = {"q01": [-1.0, 0.0, 2.0], "q99": [1.0, 4.0, 3.0], "mask": [True, True, False]}
    out = unnormalize_actions(np.array([0.25, -0.5, 0.7]), stats)
    np.testing.assert_array_equal(out, [0.25, 1.0, 0.7])  # exact: no + 1e-8 in the range
    np.testing.assert_array_equal(unnormalize_actions(np.array([0.0]), {"q01": [1.0], "q99": [3.0]}), [2.0])


def test_decode_flops_hand_computed():
    args = LlamaArgs(dim=4, n_layers=2, n_heads=1, n_kv_heads=1, ffn_dim=6, vocab_size=8)
    # steps t = 1, 2; per layer 2·(c + t)·4 + 8·16 + 6·4·6 = 8(c + t) + 272
    assert decode_flops(args, [10, 5], 3) == (8 * 11 + 272) + (8 * 6 + 272) + (8 * 12 + 272) + (8 * 7 + 272)
    assert decode_flops(args, [10, 5], 1) == 0
    with pytest.raises(ValueError, match="one cache length per layer"):
        decode_flops(args, [10], 3)


def test_make_tiny_cli_writes_a_loadable_openvla_folder(tmp_path, capsys):
    from vla_adp.cli import main

    assert main(["make-tiny-checkpoint", str(tmp_path / "t"), "--family", "openvla", "--llm-layers", "3"]) == 0
    assert "config.json" in capsys.readouterr().out
    ckpt = load_openvla_checkpoint(tmp_path / "t", dtype=torch.float32)
    assert ckpt.args.llm.n_layers == 3 and ckpt.model.args.n_images == 1


def test_decode_and_prefill_flops_equal_a_flop_counter_on_the_eager_decoder():
    """The consistent convention counts every matmul the cached decoder runs (lm_head left out)."""
    from torch.utils.flop_counter import FlopCounterMode

    from vla_adp.seam.flops import llm_flops
    from vla_adp.model.openvla.decoder import CausalLlama, KVCache

    args = LlamaArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=4, ffn_dim=172, vocab_size=32)
    llm = CausalLlama(args).eval()
    llm.set_attention("eager")
    cache, length, n_tokens = KVCache(2), 37, 7

    def count(fn) -> int:
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            fn()
        return counter.get_total_flops()

    prefill = count(lambda: llm.run_layers(torch.randn(1, length, 64), torch.arange(length)[None], 0, 2, cache=cache))
    decode = sum(count(lambda: llm.run_layers(torch.randn(1, 1, 64), torch.tensor([[length + t - 1]]), 0, 2,
                                               cache=cache)) for t in range(1, n_tokens))
    assert prefill == llm_flops(args, [length] * 2, "consistent")
    assert decode == decode_flops(args, [length] * 2, n_tokens, "consistent") and cache.lengths() == [43, 43]


def test_cli_predict_runs_openvla_with_vla_pruners_openvla_variant(tmp_path, capsys):
    from vla_adp.cli import main

    folder = make_tiny_openvla_checkpoint(tmp_path / "t", seed=2, llm_layers=3)
    cfg = tmp_path / "vla_pruner.json"
    cfg.write_text(json.dumps({"fastv_r": 0.5, "fastv_k": 1, "action_layer": 2}))
    argv = ["predict", "--family", "openvla", "--checkpoint", str(folder), "--device", "cpu", "--pruner", "vla_pruner",
            "--pruning-config", str(cfg), "--repeat", "4", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert np.array(out["actions"]).shape == (1, 7)
    info = out["info"]
    assert info["pruner"] == "vla_pruner_openvla" and info["pruned"] and info["kept_visual"] == 128
    assert info["cache_lens"] == [info["seq_len"], info["seq_len_pruned"], info["seq_len_pruned"]]
    assert main(["predict", "--family", "openvla", "--checkpoint", str(folder), "--platform", "libero"]) == 2
    assert "--platform 'libero' does not apply to --family openvla" in capsys.readouterr().err
