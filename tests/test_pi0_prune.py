"""Prefix pruning on π0 / π0.5 through the seam: keep-all identity, the hand-built shorter prefix, the
lossless drop of masked tokens, ADP's Φ by hand, FastV's attention vs transformers, and every registry
pruner's budget per camera."""

import dataclasses
import math

import pytest
import torch

from vla_adp.model.pi0 import Pi0Inputs, Prefix
from vla_adp.model.pi0.masks import attention_mask_2d, mask_bias, positions
from vla_adp.pruning.registry import build_pruner
from vla_adp.seam.budget import keep_count, view_quotas
from vla_adp.seam.context import LayerContext, Query
from vla_adp.seam.keep import KeepSet
from vla_adp.seam.query import run_query

from tests.test_pi0_model import ATOL, hf_gemma, random_inputs, random_model

STATIC = {"gate": {"schedule": "static", "limit_consecutive": False}}


class FixedKeep:
    """A seam pruner that keeps the given visual indices before layer ``layer`` (and records its contexts)."""

    name = "fixed"

    def __init__(self, layer: int, index, views, positions: str = "contiguous"):
        self.layer, self.index, self.views, self.positions = layer, index, views, positions
        self.seen: list[LayerContext] = []

    def reset(self):
        pass

    def begin(self, query):
        return frozenset({self.layer})

    def at_layer(self, ctx):
        self.seen.append(ctx)
        index = self.index(ctx) if callable(self.index) else self.index
        return KeepSet(index.expand(ctx.hidden.shape[0], -1), self.views, positions=self.positions)

    def end(self, outcome):
        return {}


def full_inputs(model, seed=1) -> Pi0Inputs:
    """No masked cameras, no padding."""
    x = random_inputs(model, seed)
    return Pi0Inputs(x.images, torch.ones_like(x.image_masks), x.tokens, torch.ones_like(x.token_mask), x.state)


def noise_for(model, b=2):
    return torch.randn(b, model.args.chunk_size, model.args.max_action_dim, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("family", ["pi0", "pi05"])
@pytest.mark.parametrize("layer", [0, 1])
def test_keep_all_is_bit_identical(family, layer):
    model = random_model(family)
    inputs = full_inputs(model)
    noise = noise_for(model)
    every = torch.arange(8)[None]
    with torch.no_grad():
        base = model(inputs, noise=noise).actions
        assert torch.equal(base, model.sample_actions(inputs, noise=noise))  # nothing masked: LeRobot's sequence
        for mode in ("contiguous", "original"):
            out = model(inputs, FixedKeep(layer, every, (4, 4), mode), frozenset({layer}), noise=noise)
            assert torch.equal(out.actions, base) and out.prefix_lens == [8 + 12] * 2
        for name in ("adp", "fastv", "random", "inverse"):  # keep ratio 1: no hooks, the same numbers
            pruner = build_pruner(name, keep_ratio=1.0, **({} if name == "fastv" else STATIC))
            assert torch.equal(run_query(model, inputs, pruner, Query(0), noise=noise).output.actions, base)


@pytest.mark.parametrize("family", ["pi0", "pi05"])
def test_pruned_prefix_equals_the_hand_built_shorter_prefix(family):
    model = random_model(family)
    inputs = full_inputs(model)
    keep = torch.tensor([[0, 2, 3, 6]])  # visual indices: 3 of camera 0, 1 of camera 1
    x_t, t = torch.randn(2, model.args.chunk_size, model.args.max_action_dim), torch.tensor([0.6, 0.1])
    with torch.no_grad():
        prefix = model.prefix(inputs)
        pruned = model.encode(prefix, FixedKeep(0, keep, (3, 1)), frozenset({0}))
        idx = torch.cat([keep, torch.arange(8, 20)[None]], dim=1).expand(2, -1)
        short = Prefix(prefix.hidden.gather(1, idx[..., None].expand(-1, -1, prefix.hidden.shape[-1])),
                       prefix.pad.gather(1, idx), prefix.layout.with_views((3, 1)))
        hand = model.encode(short)
        assert pruned.lengths == hand.lengths == [idx.shape[1]] * model.args.vlm.depth
        for (k1, v1), (k2, v2) in zip(pruned.kv, hand.kv):
            assert torch.equal(k1, k2) and torch.equal(v1, v2)
        assert torch.equal(model.denoise(pruned, inputs.state, x_t, t), model.denoise(hand, inputs.state, x_t, t))


def test_cut_at_a_later_layer_keeps_the_earlier_layers_whole():
    model = random_model("pi05")
    inputs = full_inputs(model)
    with torch.no_grad():
        full = model.encode(model.prefix(inputs))
        cut = model.encode(model.prefix(inputs), FixedKeep(1, torch.tensor([[1, 5]]), (1, 1)), frozenset({1}))
    assert cut.lengths == [20, 14] and cut.layouts[0].views == (4, 4) and cut.layouts[1].views == (1, 1)
    assert torch.equal(cut.kv[0][0], full.kv[0][0]) and torch.equal(cut.kv[0][1], full.kv[0][1])


def test_original_positions_are_kept_unless_renumbered():
    model = random_model("pi05")
    inputs = full_inputs(model)
    keep = torch.tensor([[1, 5]])
    with torch.no_grad():
        a = model.encode(model.prefix(inputs), FixedKeep(0, keep, (1, 1), "original"), frozenset({0}))
        b = model.encode(model.prefix(inputs), FixedKeep(0, keep, (1, 1), "contiguous"), frozenset({0}))
    assert a.next_position.tolist() == [20, 20] and b.next_position.tolist() == [14, 14]
    assert not torch.equal(a.kv[0][0], b.kv[0][0])  # RoPE saw other positions


@pytest.mark.parametrize("family", ["pi0", "pi05"])
def test_dropping_masked_tokens_is_lossless(family):
    """An empty camera slot and the prompt's right padding: no real token reads them, so the seam's
    prefix (without them) gives LeRobot's full sequence's actions."""
    model = random_model(family)
    inputs = random_inputs(model)
    inputs.image_masks[:, 1] = False  # camera 1 absent in every row
    inputs.token_mask[:, 9:] = False  # common padding after 9 tokens; row 0 has 7 real ones
    noise = noise_for(model)
    with torch.no_grad():
        out = model(inputs, noise=noise)
        assert out.prefix_lens == [4 + 9] * model.args.vlm.depth and out.cameras == (0,)
        assert model.layout(inputs).views == (4,) and model.layout(inputs).n_prompt == 9
        torch.testing.assert_close(out.actions, model.sample_actions(inputs, noise=noise), atol=ATOL, rtol=0)


def test_padding_reaches_the_pruner_as_the_key_mask():
    model = random_model("pi05")
    inputs = random_inputs(model)  # row 0: 7 real prompt tokens of 12
    spy = FixedKeep(0, torch.arange(8)[None], (4, 4))
    with torch.no_grad():
        model(inputs, spy, frozenset({0}))
    ctx = spy.seen[0]
    assert ctx.key_mask is not None and ctx.key_mask[0].tolist() == [True] * 15 + [False] * 5
    assert ctx.key_mask[1, 4:8].tolist() == [False] * 4  # row 1's missing camera
    assert ctx.layout.views == (4, 4) and ctx.shape.head_dim == 8 and ctx.shape.n_kv_heads == 1


@pytest.mark.parametrize("method", ["exact", "fused", "folded"])
def test_adp_scores_by_hand(method):
    """ADP's Φ (Eq. 7–9) through the seam accessors = q̄·k/√d by hand on Gemma's (1+w) norm, MQA heads,
    mean over the real prompt rows only."""
    model = random_model("pi05")
    inputs = random_inputs(model)
    pruner = build_pruner("adp", keep_ratio=0.5, scoring=method, **STATIC)
    spy = FixedKeep(0, torch.arange(8)[None], (4, 4))
    with torch.no_grad():
        model(inputs, spy, frozenset({0}))
        phi = pruner.scores(spy.seen[0])
        layer = model.vlm.layers[0]
        n, _ = layer.input_layernorm(spy.seen[0].hidden[0:1])
        text = n[0, 8:8 + 7]  # row 0: 7 real prompt tokens after 2 cameras × 4 patches
        q = layer.self_attn.q_proj(text).view(7, 2, 8)  # (T, H, hd): 2 heads share 1 kv head
        k = layer.self_attn.k_proj(n[0, :8]).view(8, 1, 8)
        ref = torch.einsum("thd,vd->thv", q, k[:, 0]).mean(dim=(0, 1)) / math.sqrt(8)
    torch.testing.assert_close(phi[0], ref, atol=1e-5, rtol=1e-5)


def test_attention_rows_match_transformers_eager_attention():
    """FastV's / VLA-Pruner's attention rows through the seam vs transformers' eager Gemma
    (output_attentions), with the prompt padding as the key mask."""
    model = random_model("pi05")
    inputs = random_inputs(model)
    hf = hf_gemma(model.vlm, model.args.vocab_size)
    spy = FixedKeep(0, torch.arange(8)[None], (4, 4))
    with torch.no_grad():
        model(inputs, spy, frozenset({0}))
        ctx = spy.seen[0]
        pad = ctx.key_mask
        out = hf(inputs_embeds=ctx.hidden, attention_mask=mask_bias(attention_mask_2d(pad, torch.zeros_like(pad))),
                 position_ids=positions(pad), output_attentions=True)
        rows = torch.tensor([3, 10])
        ours = ctx.attention_probs(rows)
    torch.testing.assert_close(ours, out.attentions[0][:, :, rows], atol=1e-6, rtol=0)
    assert (ours[0, ..., 15:] == 0).all()  # row 0's padding keys


def test_fastv_keeps_the_most_attended_image_tokens():
    model = random_model("pi05")
    x = full_inputs(model)  # batch 1: the global budget splits differently per row
    inputs = Pi0Inputs(x.images[:1], x.image_masks[:1], x.tokens[:1], x.token_mask[:1], x.state[:1])
    pruner = build_pruner("fastv", keep_ratio=0.5, layer=1)
    spy = FixedKeep(0, torch.arange(8)[None], (4, 4))
    with torch.no_grad():
        r = run_query(model, inputs, pruner, Query(0))
        model(inputs, spy, frozenset({0}))
        probs = model.vlm.attention_probs(0, spy.seen[0].hidden, spy.seen[0].position_ids, torch.tensor([19]))
    scores = probs[..., :8].mean(dim=(1, 2))  # attention of layer 0 from the last prompt token
    want = scores.topk(4, dim=1).indices.sort(dim=1).values
    keep = r.output.keep_sets[0]
    assert keep.positions == "original" and torch.equal(keep.visual_index, want)
    assert r.output.prefix_lens == [20, 16]


@pytest.mark.parametrize("name", ["adp", "random", "inverse", "fastv"])
@pytest.mark.parametrize("keep_ratio", [0.5, 0.25])
def test_registry_pruners_keep_their_budget_per_camera(name, keep_ratio):
    """π0.5 with LIBERO's cameras (2 present of 3 slots): each pruner keeps its budget of the present
    cameras' tokens, the empty slot never counts."""
    model = random_model("pi05")
    inputs = full_inputs(model)
    inputs = Pi0Inputs(torch.cat([inputs.images, inputs.images[:, :1]], 1), torch.tensor([[True, True, False]] * 2),
                       inputs.tokens, inputs.token_mask, inputs.state)
    model.args = dataclasses.replace(model.args, n_cameras=3)
    fields = {"budget": "per_view", "layer": 1} if name == "fastv" else {"split": None, **STATIC}
    with torch.no_grad():
        r = run_query(model, inputs, build_pruner(name, keep_ratio=keep_ratio, **fields), Query(0))
    k = keep_count(8, keep_ratio)
    want = tuple(keep_count(4, keep_ratio) for _ in range(2)) if name == "fastv" else view_quotas(k, (4, 4))
    assert r.query.layout.views == (4, 4) and r.output.cameras == (0, 1)
    assert r.output.keep_sets[0].views == want and r.output.layout.views == want
    idx = r.output.keep_sets[0].visual_index
    assert ((idx[:, : want[0]] < 4).all() and (idx[:, want[0]:] >= 4).all())
    assert r.output.prefix_lens[-1] == sum(want) + 12


@pytest.mark.parametrize("layer_mode", ["inline", "probe"])
def test_adp_at_a_later_layer(layer_mode):
    """ADP scoring at VLM layer 1: inline cuts before layer 1; probe (the reference's extra pass through
    GemmaDecoder.run_layers) scores there and cuts before layer 0 — same scores on a prefix without
    proprio token or padding."""
    model = random_model("pi05")
    x = full_inputs(model)
    inputs = Pi0Inputs(x.images[:1], x.image_masks[:1], x.tokens[:1], x.token_mask[:1], x.state[:1])
    pruner = build_pruner("adp", keep_ratio=0.5, layer=1, layer_mode=layer_mode, split=None, **STATIC)
    spy = FixedKeep(1, torch.arange(8)[None], (4, 4))
    with torch.no_grad():
        r = run_query(model, inputs, pruner, Query(0))
        model(inputs, spy, frozenset({1}))
        want = build_pruner("adp", keep_ratio=0.5, layer=1, split=None, **STATIC).scores(spy.seen[0])
    keep = r.output.keep_sets[0]
    assert keep.views == (2, 2) and r.output.prefix_lens == ([20, 16] if layer_mode == "inline" else [16, 16])
    top = torch.cat([want[:, :4].topk(2).indices.sort().values, want[:, 4:].topk(2).indices.sort().values + 4], 1)
    assert torch.equal(keep.visual_index, top)
