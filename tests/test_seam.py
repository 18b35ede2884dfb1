"""The seam between a model family and the pruners: layout, keep sets, LayerContext accessors, run_query."""

import dataclasses

import numpy as np
import pytest
import torch

from vla_adp.pruning.registry import build_pruner
from vla_adp.seam.context import LayerContext, Query, QueryOutcome
from vla_adp.seam.decoder import Decoder, DecoderShape
from vla_adp.seam.flops import llm_flops
from vla_adp.seam.keep import KeepSet, apply_keep_set, keep_all, sequence_index
from vla_adp.seam.layout import TokenLayout
from vla_adp.seam.query import run_query

from .conftest import make_obs

STATIC = {"gate": {"schedule": "static", "limit_consecutive": False}}


# -- layout and keep sets (pure) -------------------------------------------------------------------
def test_a_prefix_without_bos_stop_or_slots_is_described_by_the_same_layout():
    """π0-style prefix: three camera slots (the third absent), then the prompt; nothing else."""
    layout = TokenLayout(views=(4, 4, 0), n_prompt=5, n_action=0, n_proprio=0, n_bos=0, n_stop=0)
    assert layout.length == 13 and layout.visual == slice(0, 8) and layout.prompt == slice(8, 13)
    assert layout.view(1) == slice(4, 8) and layout.view(2) == slice(8, 8) and layout.last == 12
    assert layout.text_positions().tolist() == list(range(8, 13))  # no BOS, no </s>
    with pytest.raises(ValueError, match="no stop token"):
        layout.stop
    keep_set = KeepSet(torch.tensor([[1, 6]]), (1, 1, 0))
    assert sequence_index(layout, keep_set).tolist() == [[1, 6, 8, 9, 10, 11, 12]]


def test_oft_layout_keeps_bos_first_and_the_stop_token_last():
    layout = TokenLayout(views=(3, 2), n_prompt=4, n_action=3)
    assert (layout.bos, layout.visual, layout.proprio, layout.prompt, layout.action) == (
        slice(0, 1), slice(1, 6), slice(6, 7), slice(7, 11), slice(11, 14))
    assert layout.stop == layout.last == 14 and layout.text_positions().tolist() == [0, 7, 8, 9, 10, 14]
    keep_set = KeepSet(torch.tensor([[0, 4]]), (1, 1))
    assert sequence_index(layout, keep_set).tolist() == [[0, 1, 5, *range(6, 15)]]


@pytest.mark.parametrize("positions", ["contiguous", "original"])
def test_the_keep_set_says_how_the_shorter_sequence_is_numbered(positions):
    layout = TokenLayout(views=(2, 2), n_prompt=1, n_action=1, n_proprio=0)
    assert layout.length == 8  # BOS, 4 visual, prompt, slot, </s>
    hidden = torch.arange(8, dtype=torch.float32).view(1, 8, 1)
    pos = torch.arange(8)[None] + 10
    keep_set = KeepSet(torch.tensor([[1, 3]]), (1, 1), positions=positions)
    x, new_pos, new_layout = apply_keep_set(hidden, pos, layout, keep_set)
    assert x.flatten().tolist() == [0, 2, 4, 5, 6, 7] and new_layout.views == (1, 1)
    assert new_pos.tolist() == ([[0, 1, 2, 3, 4, 5]] if positions == "contiguous" else [[10, 12, 14, 15, 16, 17]])


def test_bad_keep_sets_are_refused_with_the_value():
    with pytest.raises(ValueError, match="positions must be one of"):
        KeepSet(torch.tensor([[0]]), (1,), positions="shuffled")
    with pytest.raises(ValueError, match="does not sum"):
        KeepSet(torch.tensor([[0, 1]]), (1,))
    with pytest.raises(ValueError, match="must be a positive int"):
        DecoderShape(0, 8, 16, 2, 2, 4)
    keep_set = keep_all(TokenLayout(views=(2,), n_prompt=1, n_action=1))
    assert keep_set.with_positions("contiguous") is keep_set and keep_set.n_kept == 2


# -- the decoder's accessors -----------------------------------------------------------------------
def test_layer_context_accessors_are_the_llama_layers_own_modules(tiny_policy):
    model = tiny_policy.model
    llm = model.language_model
    inputs, layout = tiny_policy.inputs(make_obs(seed=3))
    assert isinstance(llm, Decoder) and model.layout(inputs) == layout
    emb = model.embed(inputs)
    ctx = LayerContext(1, llm.run_layers(emb.hidden, emb.position_ids, 0, 1), emb.position_ids, layout, emb.visual, llm)
    layer = llm.layers[1]
    proj = ctx.projections()
    assert proj.q is layer.self_attn.q_proj and proj.k is layer.self_attn.k_proj
    assert (proj.n_heads, proj.n_kv_heads, proj.head_dim) == (llm.args.n_heads, llm.args.n_kv_heads, llm.args.head_dim)
    assert torch.equal(ctx.normed(), layer.input_layernorm(ctx.hidden))
    weight, eps = ctx.norm_scale()
    assert weight is layer.input_layernorm.weight and eps == layer.input_layernorm.eps
    rows = torch.tensor([layout.last])
    cos, sin = llm.rope(ctx.position_ids, ctx.hidden.dtype)
    assert torch.equal(ctx.attention_probs(rows), layer.self_attn.probs(ctx.normed(), cos, sin, rows))
    assert ctx.shape == llm.args.shape and llm_flops(ctx.shape, [10] * ctx.shape.n_layers) == llm_flops(
        llm.args, [10] * ctx.shape.n_layers)


def test_run_to_runs_the_earlier_layers_on_another_sequence(tiny_policy):
    llm = tiny_policy.model.language_model
    inputs, layout = tiny_policy.inputs(make_obs(seed=4))
    emb = tiny_policy.model.embed(inputs)
    ctx = LayerContext(0, emb.hidden, emb.position_ids, layout, emb.visual, llm)
    x, pos = emb.hidden[:, 1:], emb.position_ids[:, 1:]
    probe = ctx.run_to(2, x, pos, layout)
    assert probe.index == 2 and torch.equal(probe.hidden, llm.run_layers(x, pos, 0, 2))


# -- run_query ---------------------------------------------------------------------------------------
def test_run_query_is_begin_forward_end_and_fills_the_layout(tiny_policy):
    model = tiny_policy.model
    inputs, layout = tiny_policy.inputs(make_obs(seed=5))
    by_hand, seam = build_pruner("adp", keep_ratio=0.5, **STATIC), build_pruner("adp", keep_ratio=0.5, **STATIC)
    with torch.inference_mode():
        hooks = by_hand.begin(Query(0, layout))
        out = model(inputs, by_hand, hooks)
        report = by_hand.end(QueryOutcome(out.layout, out.actions[0].float().numpy(), out.keep_sets))
        r = run_query(model, inputs, seam, Query(0))
    assert r.query.layout == layout and r.report == report
    assert torch.equal(r.output.actions, out.actions) and np.array_equal(r.actions, out.actions[0].float().numpy())
    assert torch.equal(r.output.keep_sets[0].visual_index, out.keep_sets[0].visual_index)
    assert r.output.keep_sets[0].positions == "contiguous" and r.output.seq_lens == out.seq_lens
    with torch.inference_mode():
        unpruned = run_query(model, inputs, None, Query(0))
    assert unpruned.report == {} and not unpruned.output.keep_sets


def test_pruners_put_their_position_mode_on_the_keep_set(tiny_policy):
    inputs, _ = tiny_policy.inputs(make_obs(seed=6))
    modes = {}
    for name, fields in (("adp", STATIC), ("fastv", {"layer": 1}), ("lightvla", {})):
        with torch.inference_mode():
            r = run_query(tiny_policy.model, inputs, build_pruner(name, keep_ratio=None if name == "lightvla" else 0.5,
                                                                  **fields), Query(0))
        modes[name] = r.output.keep_sets[0].positions
    assert modes == {"adp": "contiguous", "fastv": "original", "lightvla": "original"}
    adp_original = build_pruner("adp", keep_ratio=0.5, positions="original", **STATIC)
    with torch.inference_mode():
        assert run_query(tiny_policy.model, inputs, adp_original, Query(0)).output.keep_sets[0].positions == "original"


def test_query_layout_is_optional_for_families_that_fill_it(tiny_policy):
    q = Query(3)
    assert q.layout is None and dataclasses.replace(q, layout=tiny_policy.model.args.token_layout(4)).layout.n_prompt == 4


def test_pi0_builds_its_prefix_layout_and_decoder_shape_for_the_seam():
    """π0.5's prefix as a TokenLayout (present cameras, then the prompt; no BOS, proprio, slots or </s>)
    and Gemma's decoder shape (head_dim independent of the width); ADP on it: tests/test_pi0_prune.py."""
    from tests.test_pi0_model import random_inputs, random_model

    model = random_model("pi05")
    inputs = random_inputs(model)
    layout = model.layout(inputs)
    assert layout == TokenLayout(views=(4, 4), n_prompt=12, n_action=0, n_proprio=0, n_bos=0, n_stop=0)
    assert isinstance(model.vlm, Decoder)
    assert model.vlm.shape == DecoderShape(n_layers=2, dim=32, ffn_dim=48, n_heads=2, n_kv_heads=1, head_dim=8)
