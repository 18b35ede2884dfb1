"""Prefix pruning on π0 / π0.5: keep-all identity, hand-built shorter prefix, lossless masked drop, ADP Φ."""

import math

import pytest
import torch

from vla_adp.model.pi0 import Pi0Inputs
from vla_adp.model.pi0.masks import positions
from vla_adp.model.pi0.pi0 import PrefixContext
from vla_adp.model.pi0.prune import TextImageSelector, drop_masked, text_image_scores

from tests.test_pi0_model import random_inputs, random_model


class Fixed:
    def __init__(self, layer: int, keep, renumber: bool = False):
        self.layer, self.keep, self.renumber = layer, keep, renumber

    def __call__(self, ctx: PrefixContext):
        return self.keep(ctx) if callable(self.keep) else self.keep.expand(ctx.hidden.shape[0], -1)


def full_inputs(model, seed=1) -> Pi0Inputs:
    """No masked cameras, no padding."""
    x = random_inputs(model, seed)
    return Pi0Inputs(x.images, torch.ones_like(x.image_masks), x.tokens, torch.ones_like(x.token_mask), x.state)


@pytest.mark.parametrize("family", ["pi0", "pi05"])
@pytest.mark.parametrize("layer", [0, 1])
def test_keep_all_is_bit_identical(family, layer):
    model = random_model(family)
    inputs = full_inputs(model)
    noise = torch.randn(2, model.args.chunk_size, model.args.max_action_dim)
    every = Fixed(layer, lambda ctx: torch.arange(ctx.hidden.shape[1])[None].expand(ctx.hidden.shape[0], -1))
    with torch.no_grad():
        base = model.sample_actions(inputs, noise=noise)
        for selector in (every, drop_masked(layer), TextImageSelector(1.0, layer=layer, renumber=True)):
            assert torch.equal(model.sample_actions(inputs, noise=noise, selector=selector), base)


@pytest.mark.parametrize("family", ["pi0", "pi05"])
def test_pruned_prefix_equals_the_hand_built_shorter_prefix(family):
    model = random_model(family)
    inputs = full_inputs(model)
    keep = torch.tensor([0, 2, 3, 6, *range(8, 8 + model.args.tokenizer_max_length)])[None]
    x_t, t = torch.randn(2, model.args.chunk_size, model.args.max_action_dim), torch.tensor([0.6, 0.1])
    with torch.no_grad():
        pruned = model.encode_prefix(inputs, Fixed(0, keep, renumber=True))
        embs, pad, ar = model.embed_prefix(inputs)
        idx = keep.expand(2, -1)
        short = model.encode_prefix_embeddings(torch.gather(embs, 1, idx[..., None].expand(-1, -1, embs.shape[-1])),
                                               torch.gather(pad, 1, idx), torch.gather(ar, 1, idx),
                                               model.layout(inputs.tokens.shape[1]))
        assert pruned.lengths == short.lengths == [keep.shape[1]] * model.args.vlm.depth
        for (k1, v1), (k2, v2) in zip(pruned.kv, short.kv):
            assert torch.equal(k1, k2) and torch.equal(v1, v2)
        assert torch.equal(model.denoise(pruned, inputs.state, x_t, t), model.denoise(short, inputs.state, x_t, t))


def test_original_positions_are_kept_unless_renumbered():
    model = random_model("pi05")
    inputs = full_inputs(model)
    keep = torch.tensor([[1, 5, *range(8, 20)]])
    seen = {}

    def spy(ctx):
        seen["pos"] = ctx.position_ids
        return keep.expand(2, -1)

    with torch.no_grad():
        a = model.encode_prefix(inputs, Fixed(0, spy, renumber=False))
        b = model.encode_prefix(inputs, Fixed(0, spy, renumber=True))
    assert a.next_position.tolist() == [20, 20] and b.next_position.tolist() == [14, 14]
    assert not torch.equal(a.kv[0][0], b.kv[0][0])  # RoPE saw other positions


@pytest.mark.parametrize("family", ["pi0", "pi05"])
def test_dropping_masked_tokens_is_lossless(family):
    """The empty camera and prompt padding: no real token reads them, so dropping them changes nothing."""
    model = random_model(family)
    inputs = random_inputs(model)  # row 0: 5 padded prompt tokens; row 1: second camera masked
    inputs.token_mask[1, 7:] = False  # same number of real tokens per row: 4 + 7 vs 8 + 7 …
    inputs.image_masks[0, 1] = False  # … both rows: one camera (4 tokens) + 7 prompt tokens
    noise = torch.randn(2, model.args.chunk_size, model.args.max_action_dim)
    with torch.no_grad():
        base = model.sample_actions(inputs, noise=noise)
        cache = model.encode_prefix(inputs, drop_masked())
        assert cache.lengths == [4 + 7] * model.args.vlm.depth
        torch.testing.assert_close(model.sample_actions(inputs, noise=noise, selector=drop_masked()), base,
                                   atol=1e-5, rtol=0)


def test_text_image_scores_by_hand():
    model = random_model("pi05")
    inputs = random_inputs(model)
    with torch.no_grad():
        embs, pad, _ = model.embed_prefix(inputs)
        layer = model.vlm.layers[0]
        ctx = PrefixContext(0, embs, pad, positions(pad), layer, model.layout(inputs.tokens.shape[1]))
        phi = text_image_scores(ctx, 0)
        n, _ = layer.input_layernorm(embs[0:1])
        text = n[0, 8:8 + 7]  # row 0: 7 real prompt tokens after 2 cameras × 4 patches
        q = layer.self_attn.q_proj(text).view(7, 2, 8)  # (T, H, hd): 2 heads share 1 kv head
        k = layer.self_attn.k_proj(n[0, :8]).view(8, 1, 8)
        ref = torch.einsum("thd,vd->thv", q, k[:, 0]).mean(dim=(0, 1)) / math.sqrt(8)
    torch.testing.assert_close(phi, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["top", "inverse", "random"])
def test_selector_budgets_and_modes(mode):
    model = random_model("pi05")
    inputs = full_inputs(model)
    inputs.image_masks[:, 1] = False  # one camera present: 4 image tokens
    selector = TextImageSelector(keep_ratio=0.5, mode=mode)
    seen = {}

    def spy(ctx):
        seen["keep"] = selector(ctx)
        seen["phi"] = text_image_scores(ctx, 0)
        return seen["keep"]

    with torch.no_grad():
        model.encode_prefix(inputs, Fixed(0, spy))
    keep, phi = seen["keep"][0], seen["phi"]
    images = keep[keep < 8]
    assert len(images) == 2 and (images < 4).all()  # 2 of the present camera's 4, none of the masked one
    assert keep[len(images):].tolist() == list(range(8, 8 + model.args.tokenizer_max_length))
    order = phi[:4].argsort(descending=mode == "top")[:2].sort().values
    if mode != "random":
        assert images.tolist() == order.tolist()


def test_selector_validates():
    with pytest.raises(ValueError, match="mode must be one of"):
        TextImageSelector(mode="fastv")
    with pytest.raises(ValueError, match=r"keep_ratio must be in \(0, 1\], got 0"):
        TextImageSelector(keep_ratio=0)


def test_attention_received_matches_transformers_eager_attention():
    """FastV's score: the attention of layer 0 from transformers' eager Gemma (output_attentions)."""
    from tests.test_pi0_model import hf_gemma
    from vla_adp.model.pi0.masks import attention_mask_2d, mask_bias

    model = random_model("pi05")
    inputs = random_inputs(model)
    hf = hf_gemma(model.vlm, model.args.vocab_size)
    with torch.no_grad():
        embs, pad, ar = model.embed_prefix(inputs)
        out = hf(inputs_embeds=embs, attention_mask=mask_bias(attention_mask_2d(pad, ar)),
                 position_ids=positions(pad), output_attentions=True)
        ctx = PrefixContext(0, embs, pad, positions(pad), model.vlm.layers[0], model.layout(inputs.tokens.shape[1]), ar)
        ours = ctx.attention_received(pad)
    ref = out.attentions[0].mean(dim=1)  # (B, S, S)
    w = pad.float()
    ref = (ref * w[..., None]).sum(1) / w.sum(1, keepdim=True)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("budget", ["global", "per_view"])
def test_fastv_keeps_the_most_attended_image_tokens(budget):
    from vla_adp.model.pi0.prune import AttentionSelector

    model = random_model("pi05")
    inputs = full_inputs(model)
    selector = AttentionSelector(keep_ratio=0.5, layer=1, rows="last", budget=budget)
    seen = {}

    def spy(ctx):
        scores = selector.scores
        seen["keep"] = selector(ctx)
        seen["scores"] = scores
        return seen["keep"]

    observe = Fixed(1, spy)
    observe.observe = selector.observe
    with torch.no_grad():
        model.encode_prefix(inputs, observe)
        keep, scores = seen["keep"][0], seen["scores"][0]
        images = keep[keep < 8]
        assert len(images) == 4
        if budget == "global":
            assert images.tolist() == scores[:8].topk(4).indices.sort().values.tolist()
        else:
            assert (images < 4).sum() == 2 and (images >= 4).sum() == 2
        noise = torch.randn(2, model.args.chunk_size, model.args.max_action_dim)
        base = model.sample_actions(inputs, noise=noise)
        assert torch.equal(model.sample_actions(inputs, noise=noise, selector=AttentionSelector(1.0, layer=1)), base)
    with pytest.raises(ValueError, match="layer must be an int >= 1"):
        AttentionSelector(layer=0)
