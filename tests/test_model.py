"""OpenVLA-OFT assembly: sequence layout, pruning seam invariants, full-size shapes."""

import numpy as np
import pytest
import torch

from vla_adp.model.config import openvla_7b_args
from vla_adp.model.openvla_oft import OpenVLAOFT
from vla_adp.seam.keep import KeepSet, keep_all


class FixedKeep:
    """A test pruner: keeps given visual indices at one layer."""

    name = "fixed"

    def __init__(self, layer, visual=None, positions="contiguous"):
        self.layer, self.visual, self.positions = layer, visual, positions

    def at_layer(self, ctx):
        if self.visual is None:
            return keep_all(ctx.layout, ctx.hidden.shape[0]).with_positions(self.positions)
        views = tuple(int(((self.visual >= s.start) & (self.visual < s.stop)).sum())
                      for s in (ctx.layout.view_of_visual(c) for c in range(len(ctx.layout.views))))
        return KeepSet(self.visual[None], views, positions=self.positions)


@pytest.fixture(scope="module")
def model_and_inputs(tiny_policy):
    from tests.conftest import make_obs

    inputs, layout = tiny_policy.inputs(make_obs())
    return tiny_policy.model, inputs, layout


def test_sequence_layout_matches_the_reference(model_and_inputs):
    model, inputs, layout = model_and_inputs
    emb = model.embed(inputs)
    n_ids = inputs.input_ids.shape[1]
    assert emb.hidden.shape[1] == 1 + 512 + 1 + (n_ids - 1) + 56 + 1 == layout.length
    assert emb.layout == layout
    tok = model.language_model.embed_tokens
    assert torch.equal(emb.hidden[0, 0], tok.weight[1])  # BOS
    assert torch.equal(emb.hidden[0, layout.prompt], tok(inputs.input_ids[0, 1:]))
    assert (emb.hidden[0, layout.action] == 0).all()  # zero action slots
    assert torch.equal(emb.hidden[0, layout.stop], tok.weight[2])  # </s> kept and attended to
    assert layout.action_hidden("upstream").start == layout.prompt.stop - 1  # the '▁' token
    assert layout.action_hidden("vla_adp").start == layout.action.start


@pytest.mark.parametrize("layer", [0, 1])
def test_keep_everything_is_bit_identical(model_and_inputs, layer):
    model, inputs, _ = model_and_inputs
    with torch.no_grad():
        plain = model(inputs)
        kept = model(inputs, FixedKeep(layer), frozenset({layer}))
    assert torch.equal(plain.actions, kept.actions)
    assert kept.keep_sets and kept.keep_sets[0].n_kept == 512


def test_pruned_forward_equals_hand_built_shorter_sequence(model_and_inputs):
    model, inputs, layout = model_and_inputs
    rng = np.random.default_rng(0)
    vis = torch.from_numpy(np.sort(rng.choice(512, 150, replace=False)))
    with torch.no_grad():
        out = model(inputs, FixedKeep(0, vis), frozenset({0}))
        emb = model.embed(inputs)
        h = emb.hidden
        short = torch.cat([h[:, :1], h[:, 1 + vis], h[:, layout.visual.stop:]], dim=1)
        llm = model.language_model
        hidden = llm(short)  # fresh contiguous positions, as ADP builds it
        new_layout = layout.with_views(out.layout.views)
        ref = model.action_head(hidden[:, new_layout.action_hidden("upstream")])
    assert out.layout.length == layout.length - (512 - 150)
    torch.testing.assert_close(out.actions, ref, atol=1e-6, rtol=0)


def test_original_positions_are_kept_in_original_mode(model_and_inputs):
    model, inputs, layout = model_and_inputs
    vis = torch.arange(0, 512, 2)
    captured = {}

    class Spy(FixedKeep):
        def at_layer(self, ctx):
            if ctx.index == 1:
                captured["pos"] = ctx.position_ids
                return None
            return super().at_layer(ctx)

    with torch.no_grad():
        model(inputs, Spy(0, vis, positions="original"), frozenset({0, 1}))
    pos = captured["pos"][0]
    assert pos[1].item() == 1 and pos[2].item() == 3 and pos[256].item() == 511 and pos[257].item() == 513


def test_discrete_decoding_path(model_and_inputs):
    model, inputs, _ = model_and_inputs
    with torch.no_grad():
        acts = model(inputs, decode="discrete").actions
    assert acts.shape == (1, 8, 7)
    assert acts.abs().max() < 1.0


def test_full_size_7b_builds_on_meta_with_spec_shapes():
    args = openvla_7b_args()
    with torch.device("meta"):
        model = OpenVLAOFT(args)
    sd = model.state_dict()
    expect = {
        "vision_backbone.featurizer.reg_token": (1, 4, 1024),
        "vision_backbone.featurizer.pos_embed": (1, 256, 1024),
        "vision_backbone.featurizer.blocks.23.attn.qkv.weight": (3072, 1024),
        "vision_backbone.featurizer.blocks.0.ls1.gamma": (1024,),
        "vision_backbone.fused_featurizer.pos_embed": (1, 256, 1152),
        "vision_backbone.fused_featurizer.blocks.26.mlp.fc1.weight": (4304, 1152),
        "vision_backbone.fused_featurizer.attn_pool.latent": (1, 1, 1152),
        "projector.fc1.weight": (8704, 2176),
        "projector.fc2.weight": (4096, 8704),
        "projector.fc3.weight": (4096, 4096),
        "language_model.embed_tokens.weight": (32064, 4096),
        "language_model.layers.31.mlp.down_proj.weight": (4096, 11008),
        "language_model.lm_head.weight": (32064, 4096),
        "proprio_projector.fc1.weight": (4096, 8),
        "action_head.model.layer_norm1.weight": (28672,),
        "action_head.model.fc1.weight": (4096, 28672),
        "action_head.model.mlp_resnet_blocks.1.ffn.1.weight": (4096, 4096),
        "action_head.model.fc2.weight": (7, 4096),
    }
    for k, shape in expect.items():
        assert tuple(sd[k].shape) == shape, k
    n = sum(p.numel() for p in model.parameters())
    assert 7.5e9 < n < 8.0e9
