"""Pruning OpenVLA (autoregressive): pruners act in the prefill, the KV cache holds what each layer ran on,
and the decode steps attend only to that. Tiny random model in the ``openvla/openvla-7b`` layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.test_openvla_parity import reference_llm
from vla_adp.model.openvla.checkpoint import load_openvla_checkpoint
from vla_adp.model.openvla.openvla import OpenVLAInputs
from vla_adp.openvla_policy import OpenVLAPolicy
from vla_adp.model.openvla.tiny import make_tiny_openvla_checkpoint
from vla_adp.model.tokenizer import PromptTokenizer
from vla_adp.policy import PolicyConfig
from vla_adp.seam.keep import keep_all
from vla_adp.pruning.registry import build_pruner

ATOL = 1e-5
STATIC = {"gate": {"schedule": "static"}}  # ADP-based pruners prune every query


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_tiny_openvla_checkpoint(tmp_path_factory.mktemp("ovla") / "openvla-7b", seed=3, llm_layers=4)


@pytest.fixture(scope="module")
def ckpt(folder):
    return load_openvla_checkpoint(folder, dtype=torch.float32)


def obs(seed: int = 0, instruction: str = "open the drawer") -> dict:
    rng = np.random.default_rng(seed)
    return {"full_image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8), "state": rng.normal(size=8),
            "instruction": instruction}


def inputs(ckpt, seed: int = 0, instruction: str = "open the drawer") -> OpenVLAInputs:
    ids = torch.tensor([PromptTokenizer(ckpt.tokenizer_file).prompt_ids(instruction)])
    return OpenVLAInputs(torch.randn(1, 6, 224, 224, generator=torch.Generator().manual_seed(seed)), ids)


class KeepAllAt:
    """A pruner that cuts nothing: keep-all at one layer, with the given position mode."""

    name = "keep_all"

    def __init__(self, layer: int, positions: str):
        self.layer, self.positions = layer, positions

    def reset(self): ...

    def begin(self, query):
        return frozenset({self.layer})

    def at_layer(self, ctx):
        return keep_all(ctx.layout, ctx.hidden.shape[0])

    def end(self, outcome):
        return {}


@pytest.mark.parametrize("layer,positions", [(0, "contiguous"), (2, "contiguous"), (2, "original")])
def test_keep_all_cut_is_bit_identical(ckpt, layer, positions):
    x = inputs(ckpt)
    with torch.no_grad():
        ref = ckpt.model(x)
        got = ckpt.model(x, KeepAllAt(layer, positions), frozenset({layer}))
    assert torch.equal(got.tokens, ref.tokens) and torch.equal(got.logits, ref.logits)
    assert got.cache_lens == ref.cache_lens == [ref.layout.length] * 4


def test_adp_keep_one_gives_bit_identical_actions(ckpt):
    base = OpenVLAPolicy(ckpt)
    adp = OpenVLAPolicy(ckpt, pruner=build_pruner("adp", keep_ratio=1.0, **STATIC))
    for seed in range(3):
        a, b = base.infer(obs(seed)), adp.infer(obs(seed))
        np.testing.assert_array_equal(a["actions"], b["actions"])
        assert a["info"]["action_tokens"] == b["info"]["action_tokens"]
        assert b["info"]["gate_state"] == 1 and b["info"]["kept_visual"] == 256


def test_adp_prefill_cut_equals_transformers_on_the_pruned_sequence(ckpt, folder):
    """ADP at layer 0 (contiguous positions) = generating from [BOS | kept patches | prompt] unpruned:
    the reference is transformers' generate on that shorter sequence, so the cache held only kept keys."""
    pruner = build_pruner("adp", keep_ratio=0.25, **STATIC)
    x = inputs(ckpt, seed=1, instruction="push the red button down")
    layout = ckpt.model.layout(x)
    from vla_adp.seam.context import Query

    hooks = pruner.begin(Query(0, layout))
    with torch.no_grad():
        out = ckpt.model(x, pruner, hooks)
        hf = reference_llm(folder)
        patches = ckpt.model.projector(ckpt.model.vision_backbone(x.pixels))
        kept = patches[:, out.keep_sets[0].visual_index[0]]
        tok = hf.get_input_embeddings()(x.input_ids)
        ref = hf.generate(inputs_embeds=torch.cat([tok[:, :1], kept, tok[:, 1:]], dim=1), max_new_tokens=7,
                          do_sample=False, output_logits=True, return_dict_in_generate=True,
                          pad_token_id=ckpt.args.n_real_vocab, eos_token_id=None)
        unpruned = ckpt.model(x)
    k = 64  # round(0.25 · 256)
    assert out.keep_sets[0].n_kept == k and out.cache_lens == [1 + k + layout.n_prompt] * 4
    assert torch.equal(out.tokens, ref.sequences[:, -7:])
    torch.testing.assert_close(out.logits, torch.stack(ref.logits, dim=1), atol=ATOL, rtol=0)
    assert not torch.equal(out.logits, unpruned.logits)


def test_fastv_caches_full_keys_before_the_cut_and_kept_keys_after(ckpt):
    pruner = build_pruner("fastv", keep_ratio=0.5, layer=2)
    x = inputs(ckpt)
    layout = ckpt.model.layout(x)
    from vla_adp.seam.context import Query

    with torch.no_grad():
        out = ckpt.model(x, pruner, pruner.begin(Query(0, layout)))
    short = layout.length - 128
    assert out.cache_lens == [layout.length, layout.length, short, short]
    assert out.seq_lens == [layout.length, layout.length, short, short]
    assert out.layout.n_visual == 128 and out.tokens.shape == (1, 7)


def test_causal_attention_probs_hide_future_keys(ckpt):
    """Scorers (FastV, ADP's probes) see the causal weights: row r puts no mass on keys after r."""
    llm = ckpt.model.language_model
    x = torch.randn(1, 12, ckpt.args.llm.dim)
    cos, sin = llm.rope(torch.arange(12)[None], x.dtype)
    rows = torch.tensor([0, 5, 11])
    with torch.no_grad():
        p = llm.layers[1].self_attn.probs(x, cos, sin, rows)  # (1, H, 3, 12)
    assert p[0, :, 0, 1:].abs().max() == 0 and p[0, :, 1, 6:].abs().max() == 0
    assert (p[0, :, 2] > 0).all()
    torch.testing.assert_close(p.sum(-1), torch.ones_like(p.sum(-1)))


@pytest.mark.parametrize("name", ["random", "inverse", "fastv", "adp"])
def test_pruners_run_through_the_policy(ckpt, name):
    fields = STATIC if name != "fastv" else {}
    policy = OpenVLAPolicy(ckpt, pruner=build_pruner(name, keep_ratio=0.5, **fields))
    base = OpenVLAPolicy(ckpt)
    out, ref = policy.infer(obs(2)), base.infer(obs(2))
    info = out["info"]
    assert out["actions"].shape == (1, 7) and np.isfinite(out["actions"]).all()
    assert info["kept_visual"] == 128 and info["pruned"]
    assert info["flops"] < ref["info"]["flops"] and 0 < info["flops_decode"] < ref["info"]["flops_decode"]
    assert len(info["kept_indices"][0]) == 128


def test_inverse_keeps_the_tokens_adp_drops(ckpt):
    adp = OpenVLAPolicy(ckpt, pruner=build_pruner("adp", keep_ratio=0.5, **STATIC))
    inv = OpenVLAPolicy(ckpt, pruner=build_pruner("inverse", keep_ratio=0.5, **STATIC))
    top = set(adp.infer(obs(4))["info"]["kept_indices"][0])
    low = set(inv.infer(obs(4))["info"]["kept_indices"][0])
    assert top.isdisjoint(low) and len(top | low) == 256


def test_policy_actions_follow_upstream_unnormalisation(ckpt):
    policy = OpenVLAPolicy(ckpt, PolicyConfig(center_crop=False))
    out = policy.infer(obs(5))
    stats = policy.stats["action"]
    tokens = np.array(out["info"]["action_tokens"])
    bins = np.linspace(-1, 1, 256)
    centers = (bins[:-1] + bins[1:]) / 2
    norm = centers[np.clip(policy.model.args.n_real_vocab - tokens - 1, 0, 254)]
    lo, hi, mask = np.array(stats["q01"]), np.array(stats["q99"]), np.array(stats["mask"])
    np.testing.assert_array_equal(out["actions"][0], np.where(mask, 0.5 * (norm + 1) * (hi - lo) + lo, norm))
    assert not mask[-1] and out["actions"][0, -1] == norm[-1]  # the gripper passes through


def test_closed_loop_episode_with_adp_one_action_per_query(ckpt):
    """The evaluation runner drives OpenVLA as any policy: one query per step (chunk 1), the gate fed."""
    from tests.eval_helpers import ToyEnv
    from vla_adp.eval.runner import EpisodeSettings, run_episode

    policy = OpenVLAPolicy(ckpt, pruner=build_pruner("adp", keep_ratio=0.5))
    queries = []
    rec = run_episode(ToyEnv(success_at=6), policy, 0, EpisodeSettings("h"), queries.append)
    assert (rec.success, rec.steps, rec.queries, rec.error) == (True, 6, 6, None)
    assert [q.step for q in queries] == list(range(6))
    assert any(q.pruned for q in queries) and all(q.kept_visual in (128, 256) for q in queries)
    assert rec.flops_total < rec.flops_full_total


def test_policy_refuses_the_executor_and_sizes_the_platform_from_the_statistics(ckpt):
    policy = OpenVLAPolicy(ckpt)
    assert (policy.platform.chunk, policy.platform.action_dim) == (1, 7)
    policy.set_executor(None)
    with pytest.raises(ValueError, match="runs eagerly"):
        policy.set_executor(object())
