"""VLA-Pruner on π0.5: the action expert's attention tap (vs a hand computation), warm-up, the selection
by hand, per-camera budgets, reset between episodes, the family's pruner factory."""

import dataclasses

import pytest
import torch

from vla_adp.model.llm import apply_rope, rope_cos_sin
from vla_adp.model.pi0 import Pi0Inputs
from vla_adp.model.pi0.gemma import mixed_layer
from vla_adp.model.pi0.masks import attention_mask_2d, mask_bias, positions
from vla_adp.pruning.pi0 import build_pi0_pruner
from vla_adp.pruning.pruners.vla_pruner_pi0 import VLAPrunerPi0, VLAPrunerPi0Config
from vla_adp.seam.context import Query
from vla_adp.seam.query import run_query

from tests.test_pi0_model import random_inputs, random_model


class Capture:
    """An ExpertObserver that keeps every context it is shown."""

    def __init__(self, layers):
        self.layers, self.seen = frozenset(layers), []

    def expert_layers(self):
        return self.layers

    def at_expert(self, ctx):
        self.seen.append(ctx)


def batch1(model) -> Pi0Inputs:
    x = random_inputs(model)
    return Pi0Inputs(x.images[1:], torch.ones_like(x.image_masks[1:]), x.tokens[1:], x.token_mask[1:], x.state[1:])


def noise_for(model, seed=0):
    return torch.randn(1, model.args.chunk_size, model.args.max_action_dim, generator=torch.Generator().manual_seed(seed))


def hand_expert_attention(model, inputs, noise):
    """Step 0 (t = 1, x = ε) at expert layer 1: layer 0 through the mixture, layer 1's softmax by hand."""
    cache = model.encode(model.prefix(inputs))
    t = torch.ones(1)
    h, pad, ar, cond = model.embed_suffix(inputs.state, noise, t)
    pos = positions(pad, cache.next_position)
    allowed = torch.cat([cache.pads[0][:, None].expand(-1, h.shape[1], -1), attention_mask_2d(pad, ar)], dim=2)
    (_, h), _ = mixed_layer([model.vlm.layers[0], model.expert.layers[0]], [None, h], [None, cond], mask_bias(allowed),
                            pos, 1e4, past=cache.kv[0])
    layer = model.expert.layers[1]
    n, _ = layer.input_layernorm(h, cond)
    q, k, _ = layer.self_attn.qkv(n)
    cos, sin = rope_cos_sin(pos, 8, 1e4, q.dtype)
    keys = torch.cat([cache.kv[1][0], apply_rope(k, cos, sin)], dim=2).expand(-1, 2, -1, -1)  # 1 kv head, 2 q heads
    probs = (apply_rope(q, cos, sin) @ keys.transpose(-1, -2) / 8 ** 0.5).softmax(-1)  # every key visible here
    return probs[:, :, -model.args.chunk_size:, : cache.lengths[1]]  # the action rows (π0: after its state token)


@pytest.mark.parametrize("family", ["pi0", "pi05"])
def test_expert_attention_tap_equals_a_hand_computation_and_changes_nothing(family):
    model = random_model(family)
    inputs, noise = batch1(model), noise_for(model)
    capture = Capture({1})
    with torch.no_grad():
        observed = model(inputs, capture, noise=noise).actions
        assert torch.equal(observed, model(inputs, noise=noise).actions)  # read-only
        want = hand_expert_attention(model, inputs, noise)
    assert len(capture.seen) == model.args.num_steps and [c.step for c in capture.seen] == list(range(10))
    first = capture.seen[0]
    assert first.index == 1 and first.probs.shape == (1, 2, model.args.chunk_size, 20) and first.layout.n_visual == 8
    torch.testing.assert_close(first.probs, want, atol=1e-6, rtol=0)


def small(**fields) -> VLAPrunerPi0:
    return VLAPrunerPi0(VLAPrunerPi0Config(**{"keep_ratio": 0.5, "layer": 1, "action_layer": 1, "history": 2, **fields}))


def run(model, inputs, pruner, q, noise):
    with torch.no_grad():
        return run_query(model, inputs, pruner, Query(q), noise=noise)


def test_warmup_fills_the_history_with_the_expert_attention_and_prunes_nothing():
    model = random_model("pi05")
    inputs, noise = batch1(model), noise_for(model)
    pruner = small()
    capture = Capture({1})
    with torch.no_grad():
        base = model(inputs, capture, noise=noise).actions
    for q in range(2):
        r = run(model, inputs, pruner, q, noise)
        assert not r.output.keep_sets and torch.equal(r.output.actions, base)
        assert r.report["vla_pruner_warmup"] and r.report["vla_pruner_history"] == q + 1
        assert r.report["action_rows"] == 10 and r.report["scoring_flops"] == 0.0
    a_t = torch.stack([c.probs[..., :8].mean(dim=(1, 2)) for c in capture.seen]).mean(0)  # steps, heads, rows
    torch.testing.assert_close(pruner._history[-1], a_t, atol=1e-7, rtol=0)


@pytest.mark.parametrize("mode", ["semantic", "action", "semantic_action"])
def test_selection_by_hand_budget_and_reset(mode):
    model = random_model("pi05")
    inputs, noise = batch1(model), noise_for(model)
    pruner = small(mode=mode)
    for q in range(2):
        run(model, inputs, pruner, q, noise)
    history = list(pruner._history)
    r = run(model, inputs, pruner, 2, noise)
    keep = r.output.keep_sets[0]
    with torch.no_grad():
        prefix = model.prefix(inputs)
        probs = model.vlm.attention_probs(0, prefix.hidden, positions(prefix.pad), torch.arange(20))
    semantic = probs[..., :8].mean(dim=(1, 2))[0]  # attention of layer 0 (K − 1) from every prefix row
    action = ((0.8 * history[0] + history[1]) / 1.8)[0]  # newest weight 1, the older 0.8
    picks = []
    for cam in (slice(0, 4), slice(4, 8)):
        top_s, top_a = set((semantic[cam].topk(2).indices + cam.start).tolist()), set((action[cam].topk(2).indices + cam.start).tolist())
        chosen = set(keep.visual_index[0, (cam.start // 4) * 2:(cam.start // 4) * 2 + 2].tolist())
        want = {"semantic": top_s, "action": top_a}.get(mode)
        assert chosen == want if want is not None else chosen <= top_s | top_a
        if mode == "semantic_action" and len(top_s | top_a) == 2:
            assert chosen == top_s | top_a
        picks.append(chosen)
    assert keep.views == (2, 2) and keep.positions == "original" and r.output.prefix_lens == [20, 16]
    assert r.report["scoring_flops"] > 0 or mode == "action"
    # the action layer (1) is after the cut (before 1): pruned tokens score 0 in the new history entry
    pruned = sorted(set(range(8)) - picks[0] - picks[1])
    assert (pruner._history[-1][0, pruned] == 0).all() and (pruner._history[-1][0, sorted(picks[0] | picks[1])] > 0).all()
    pruner.reset()  # a new episode warms up again
    r = run(model, inputs, pruner, 0, noise)
    assert not r.output.keep_sets and r.report["vla_pruner_warmup"] and r.report["vla_pruner_history"] == 1


def test_pi0_pruner_factory():
    assert isinstance(build_pi0_pruner("vla-pruner", keep_ratio=0.25, fastv_k=2), VLAPrunerPi0)
    assert build_pi0_pruner("vla_pruner", keep_ratio=0.25).config == dataclasses.replace(VLAPrunerPi0Config(),
                                                                                          keep_ratio=0.25)
    assert build_pi0_pruner("adp", keep_ratio=0.5).name == "adp"
    for name in ("lightvla", "vla_cache"):
        with pytest.raises(ValueError, match=f"pruner '{name}' does not run on π0"):
            build_pi0_pruner(name)
    with pytest.raises(ValueError, match="unknown VLA-Pruner \\(π0\\) config field 'fastv_q'"):
        build_pi0_pruner("vla_pruner", fastv_q=3)
    with pytest.raises(ValueError, match=r"VLAPrunerPi0Config.layer must be an int >= 1 \(layer K-1 is scored\), got 0"):
        VLAPrunerPi0Config(layer=0)
    # the forks' names from config files: fastv_k is FastV's K (our layer), vla_pruner_layer the action layer
    assert VLAPrunerPi0Config.from_dict({"fastv_k": 2, "vla_pruner_layer": 4, "vla_pruner_av_decay": 0.5}) == \
        VLAPrunerPi0Config(layer=2, action_layer=4, decay=0.5)
    with pytest.raises(ValueError, match="VLAPrunerPi0Config.action_layer must be an int >= 0"):
        VLAPrunerPi0Config(action_layer=-1)


def test_sparsevlm_runs_on_the_pi0_prefix():
    """SparseVLM (text raters = the prompt) cuts the π0 prefix as OFT's; the tiny VLM has 2 layers."""
    from vla_adp.pruning.registry import build_pruner

    model = random_model("pi05")
    inputs, noise = batch1(model), noise_for(model)
    r = run(model, inputs, build_pruner("sparsevlm", keep_ratio=0.8, layers=(0,)), 0, noise)
    kept = r.output.layout.n_visual
    assert r.output.keep_sets and kept < 8 and r.output.prefix_lens == [20, 12 + kept]
