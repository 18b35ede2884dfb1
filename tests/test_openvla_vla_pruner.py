"""VLA-Pruner's OpenVLA variant: action scores from the rows that produce the action tokens (the last
prefill row and the cached decode rows at the action layer), checked against transformers' eager
attentions from ``generate``; warm-up, cut, reset and the fork's flags."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tests.test_openvla_parity import reference_llm
from tests.test_openvla_pruning import obs
from vla_adp.model.openvla.checkpoint import load_openvla_checkpoint
from vla_adp.openvla_policy import OpenVLAPolicy
from vla_adp.pruning.openvla import build_openvla_pruner
from vla_adp.model.openvla.tiny import make_tiny_openvla_checkpoint
from vla_adp.seam.context import LayerContext
from vla_adp.seam.layout import TokenLayout
from vla_adp.pruning.pruners.fastv import FastVPruner
from vla_adp.pruning.pruners.vla_pruner_openvla import VLAPrunerOpenVLA

ATOL = 1e-5
SETTINGS = {"layer": 2, "action_layer": 3}  # the tiny decoder has 4 layers: score layer 1, cut before 2


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_tiny_openvla_checkpoint(tmp_path_factory.mktemp("ovla") / "openvla-7b", seed=3, llm_layers=4)


@pytest.fixture(scope="module")
def ckpt(folder):
    return load_openvla_checkpoint(folder, dtype=torch.float32)


@pytest.fixture(scope="module")
def eager_reference(folder):
    hf = reference_llm(folder)
    eager = LlamaForCausalLM(LlamaConfig(**{**hf.config.to_dict(), "attn_implementation": "eager"})).eval()
    eager.load_state_dict(hf.state_dict())
    return eager


def reference_attentions(policy, hf, observation):
    """transformers' eager attentions of generate: step 0 the prefill (L×L), then one row per decode step."""
    inputs, _ = policy.inputs(observation)
    with torch.no_grad():
        patches = policy.model.projector(policy.model.vision_backbone(inputs.pixels))
        tok = hf.get_input_embeddings()(inputs.input_ids)
        out = hf.generate(inputs_embeds=torch.cat([tok[:, :1], patches, tok[:, 1:]], dim=1), max_new_tokens=7,
                          do_sample=False, output_attentions=True, return_dict_in_generate=True,
                          pad_token_id=policy.model.args.n_real_vocab, eos_token_id=None)
    return out.attentions, out.sequences[:, -7:]


def test_action_score_is_the_action_rows_attention_of_transformers(ckpt, eager_reference):
    policy = OpenVLAPolicy(ckpt, pruner=build_openvla_pruner("vla_pruner", keep_ratio=0.5,
                                                                                          **SETTINGS))
    observation = obs(7)
    out = policy.infer(observation)  # warm-up query: unpruned, observed
    attentions, tokens = reference_attentions(policy, eager_reference, observation)
    assert out["info"]["action_tokens"] == tokens[0].tolist() and out["info"]["vla_pruner_warmup"]
    layer, v = SETTINGS["action_layer"], slice(1, 257)
    rows = [attentions[0][layer][:, :, -1, v]] + [attentions[t][layer][:, :, 0, v] for t in range(1, 7)]
    expected = torch.stack(rows, dim=2).mean(dim=(1, 2))  # heads and the 7 action-producing rows
    assert out["info"]["action_rows"] == 7
    torch.testing.assert_close(policy.pruner._history[-1], expected, atol=ATOL, rtol=0)


def test_warm_up_then_prune_with_fastv_and_history_candidates(ckpt, eager_reference):
    pruner = build_openvla_pruner("vla_pruner", keep_ratio=0.25, **SETTINGS)
    policy = OpenVLAPolicy(ckpt, pruner=pruner)
    base = OpenVLAPolicy(ckpt)
    for i in range(3):
        a, b = policy.infer(obs(i)), base.infer(obs(i))
        np.testing.assert_array_equal(a["actions"], b["actions"])
        assert a["info"]["vla_pruner_warmup"] and not a["info"]["pruned"]
    guide = (pruner._history[0] * 0.64 + pruner._history[1] * 0.8 + pruner._history[2]).clone()
    out = policy.infer(obs(3))
    info = out["info"]
    assert info["pruned"] and info["kept_visual"] == 64 and not info["vla_pruner_warmup"]
    assert info["cache_lens"][:2] == [info["seq_len"]] * 2 and info["cache_lens"][2:] == [info["seq_len_pruned"]] * 2
    # Candidates: Top-64 of FastV's last-row attention at layer K-1 = 1 (transformers' eager weights)
    # ∪ Top-64 of the decayed history; the kept set lies in that pool.
    attentions, _ = reference_attentions(policy, eager_reference, obs(3))
    semantic = attentions[0][1][0, :, -1, 1:257].mean(0)
    pool = set(semantic.topk(64).indices.tolist()) | set(guide[0].topk(64).indices.tolist())
    kept = set(info["kept_indices"][0])
    assert kept <= pool and len(kept) == 64
    # the cut patches get no action score at this query (only the semantic side can bring them back)
    dropped = sorted(set(range(256)) - kept)
    assert pruner._history[-1][0, dropped].abs().max() == 0 and pruner._history[-1][0, sorted(kept)].min() > 0


def test_reset_restores_the_episode(ckpt):
    policy = OpenVLAPolicy(ckpt, pruner=build_openvla_pruner("vla_pruner", keep_ratio=0.25, **SETTINGS))
    first = [policy.infer(obs(i))["info"]["action_tokens"] for i in range(4)]
    policy.reset()
    assert [policy.infer(obs(i))["info"]["action_tokens"] for i in range(4)] == first


def test_keep_one_is_unpruned_and_unobserved(ckpt):
    policy = OpenVLAPolicy(ckpt, pruner=build_openvla_pruner("vla_pruner", keep_ratio=1.0,
                                                                                          **SETTINGS))
    base = OpenVLAPolicy(ckpt)
    for i in range(4):
        np.testing.assert_array_equal(policy.infer(obs(i))["actions"], base.infer(obs(i))["actions"])
    assert len(policy.pruner._history) == 0


def test_builder_maps_names_and_fork_flags():
    p = build_openvla_pruner("vla_pruner", fastv_r=0.75, use_prefil_attention=True, av_hist_w=2)
    assert isinstance(p, VLAPrunerOpenVLA)
    assert (p.config.keep_ratio, p.config.attention_source, p.config.history, p.config.layer) == (0.25, "prefill", 2, 3)
    assert isinstance(build_openvla_pruner("fastv", keep_ratio=0.5), FastVPruner)
    with pytest.raises(ValueError, match="LightVLA trains its selection"):
        build_openvla_pruner("lightvla")
    with pytest.raises(ValueError, match="use the fastv pruner"):
        build_openvla_pruner("vla_pruner", use_temporal=False)
    with pytest.raises(ValueError, match="unknown VLA-Pruner \\(OpenVLA\\) config field 'fastv_q'"):
        build_openvla_pruner("vla_pruner", fastv_q=1)


def test_refused_on_the_oft_sequence():
    pruner = VLAPrunerOpenVLA()
    pruner.begin(type("Q", (), {})())
    ctx = LayerContext(15, torch.zeros(1, 10, 8), torch.zeros(1, 10), TokenLayout((4,), 2, 2, 0),
                       torch.zeros(1, 4, 8), None)
    with pytest.raises(ValueError, match="use the vla_pruner pruner there"):
        pruner.at_layer(ctx)


def test_oft_variant_is_refused_by_the_openvla_policy(ckpt):
    from vla_adp.pruning.registry import build_pruner

    with pytest.raises(ValueError, match="build_openvla_pruner"):
        OpenVLAPolicy(ckpt, pruner=build_pruner("vla_pruner", keep_ratio=0.5))
