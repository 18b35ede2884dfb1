"""Peer pruners behind one interface: a registry sweep plus each method's own invariants.

The sweep runs on a tiny 16-layer checkpoint built here, so that VLA-Pruner's layers (3, 4, 15)
exist. The ADP-based entries (adp, random, inverse) run with the static schedule so that every query
prunes and the budget is checked on each.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from tests.conftest import make_obs
from vla_adp.model.openvla_oft import OFTInputs
from vla_adp.policy import Policy, PolicyConfig
from vla_adp.seam.context import LayerContext, Query, QueryOutcome
from vla_adp.seam.keep import KeepSet
from vla_adp.seam.layout import TokenLayout
from vla_adp.pruning.pruners import fastv, lightvla, vla_pruner
from vla_adp.pruning.registry import PRUNERS, build_pruner
from vla_adp.pruning.select import view_counts
from vla_adp.seam.budget import keep_count

N_QUERIES = 4  # VLA-Pruner's 3-query warm-up plus one pruned query
ADP_BASED = ("adp", "random", "inverse")


@pytest.fixture(scope="module")
def deep_policy(tmp_path_factory):
    from vla_adp.model.tiny import make_tiny_checkpoint

    folder = make_tiny_checkpoint(tmp_path_factory.mktemp("deep") / "openvla-7b-oft-finetuned-libero-spatial",
                                  seed=1, llm_layers=16)
    return Policy.load(folder, dtype=torch.float32)


def build(name: str, keep: float, **fields):
    if name == "sparsevlm":
        fields.setdefault("layers", (2, 6, 12))  # its last cut (after layer 15 of 32) needs a layer 16
    if name in ADP_BASED:
        fields.setdefault("gate", {"schedule": "static"})  # prune every query, so the budget is checked
    if name == "lightvla":
        with pytest.warns(UserWarning, match="ignores keep_ratio"):
            return build_pruner(name, keep_ratio=keep, **fields)
    return build_pruner(name, keep_ratio=keep, **fields)


def run_episode(policy: Policy, n: int = N_QUERIES) -> list[dict]:
    policy.reset()
    outs = []
    for i in range(n):
        out = policy.infer(make_obs(seed=i))
        info = {k: v for k, v in out["info"].items() if k != "timing_ms"}
        outs.append({"actions": out["actions"], "info": info})
    return outs


def expected_kept(name: str, pruner, layout_views: tuple[int, ...]) -> int:
    """The budget each method documents, for ρ = pruner.config.keep_ratio."""
    cfg = pruner.config
    if name == "vla_pruner" or (name == "fastv" and cfg.budget == "per_view"):
        return sum(keep_count(n, cfg.keep_ratio) for n in layout_views)
    return keep_count(sum(layout_views), cfg.keep_ratio, getattr(cfg, "rounding", "round"))


# -- registry sweep --------------------------------------------------------------------------------
def test_every_method_is_registered():
    assert {"adp", "random", "inverse", "fastv", "vla_pruner", "lightvla", "vla_cache", "sparsevlm"} <= set(PRUNERS)


@pytest.fixture(scope="module")
def first_episodes(deep_policy):
    """Per method: a policy with its ρ = 0.25 pruner and that policy's first episode, run on demand
    once for the module (the budget test reads it, the reset test runs a second episode after it)."""
    cache: dict[str, tuple[Policy, list[dict]]] = {}

    def get(name: str) -> tuple[Policy, list[dict]]:
        if name not in cache:
            policy = Policy(deep_policy.ckpt, PolicyConfig(), build(name, keep=0.25))
            cache[name] = policy, run_episode(policy)
        return cache[name]

    return get


# VLA-Cache reuses only where consecutive frames match; these episodes' frames are random, so its
# budget is checked on repeated frames in tests/test_vla_cache.py.
@pytest.mark.parametrize("name", [n for n in PRUNERS if n != "vla_cache"])
def test_sweep_budget_respected_or_reported(first_episodes, name):
    policy, outs = first_episodes(name)
    pruner = policy.pruner
    pruned = [o["info"] for o in outs if o["info"]["pruned"]]
    assert pruned, f"{name} never pruned in {N_QUERIES} queries"
    assert all(np.isfinite(o["actions"]).all() for o in outs)
    for info in pruned:
        assert sum(len(ix) for ix in info["kept_indices"]) == info["kept_visual"]
        assert info["seq_len"] - info["seq_len_pruned"] == info["n_visual"] - info["kept_visual"]
        if name == "lightvla":  # data-dependent count: reported, not budgeted
            assert 1 <= info["kept_visual"] <= info["n_visual"]
            assert info["keep_ratio_achieved"] == pytest.approx(info["kept_visual"] / info["n_visual"])
        elif name == "sparsevlm":  # ρ is the layer-averaged visual share (selected tokens; recycled on top)
            n_other = info["seq_len"] - info["n_visual"]
            shares = [(s - n_other) / info["n_visual"] for s in info["seq_lens"]]
            recycled = sum(st["recycled"] for st in info["sparsevlm_stages"])
            assert 0.25 - 2 / 512 <= sum(shares) / len(shares) <= 0.25 + (recycled + 2) / 512
        else:
            assert info["kept_visual"] == expected_kept(name, pruner, (256, 256))
        assert info["flops"] == info["flops_llm"] + info["scoring_flops"]  # the scorer's cost is counted
        assert (info["scoring_flops"] > 0) == (name != "random")


@pytest.mark.parametrize("name", list(PRUNERS))
def test_sweep_reset_restores_first_episode(first_episodes, name):
    policy, first = first_episodes(name)
    second = run_episode(policy)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a["actions"], b["actions"])
        assert a["info"] == b["info"]


@pytest.fixture(scope="module")
def unpruned_episode(deep_policy):
    return run_episode(Policy(deep_policy.ckpt, PolicyConfig(), None))


@pytest.mark.parametrize("name", [n for n in PRUNERS if n != "lightvla"])
def test_sweep_keep_all_is_bit_identical_to_unpruned(deep_policy, unpruned_episode, name):
    kept = run_episode(Policy(deep_policy.ckpt, PolicyConfig(), build(name, keep=1.0)))
    for a, b in zip(unpruned_episode, kept):
        np.testing.assert_array_equal(a["actions"], b["actions"])
        assert not b["info"]["pruned"]


def test_lightvla_keep_ratio_has_no_effect(deep_policy):
    runs = [run_episode(Policy(deep_policy.ckpt, PolicyConfig(), build("lightvla", keep=k)), 2) for k in (1.0, 0.1)]
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a["actions"], b["actions"])
        assert a["info"]["kept_indices"] == b["info"]["kept_indices"]


# -- FastV -----------------------------------------------------------------------------------------
def hand_attention_row_scores(layer, llm_args, x: torch.Tensor, rows: list[int], visual: slice) -> torch.Tensor:
    """softmax(q·kᵀ/√d) with rotate-half RoPE written out from the layer's weights; mean over heads, rows."""
    w = layer.input_layernorm.weight
    normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + llm_args.rms_eps) * w  # (S, D)
    attn = layer.self_attn
    h, hd = attn.n_heads, attn.head_dim
    q = (normed @ attn.q_proj.weight.T).view(-1, h, hd)
    k = (normed @ attn.k_proj.weight.T).view(-1, h, hd)
    pos = torch.arange(x.shape[0], dtype=torch.float64)
    inv = llm_args.rope_theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = pos[:, None] * inv[None]  # (S, hd/2)
    cos, sin = ang.cos().float()[:, None], ang.sin().float()[:, None]

    def rope(t):
        a, b = t[..., : hd // 2], t[..., hd // 2 :]
        return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)

    q, k = rope(q), rope(k)
    out = torch.zeros(x.shape[0])
    for head in range(h):
        logits = q[rows, head] @ k[:, head].T / math.sqrt(hd)
        out += logits.softmax(-1).mean(0)
    return (out / h)[visual]


@pytest.fixture(scope="module")
def deep_inputs(deep_policy):
    return deep_policy.inputs(make_obs(seed=5))


@pytest.mark.parametrize("source", ["last", "prefill"])
@pytest.mark.parametrize("convention,k", [("fastv", 2), ("vla_pruner_oft", 3)])
def test_fastv_keeps_the_hand_computed_attention_top_k(deep_policy, deep_inputs, source, convention, k):
    model, (inputs, layout) = deep_policy.model, deep_inputs
    pruner = fastv.FastVPruner(fastv.FastVConfig(keep_ratio=0.3, layer=k, convention=convention, attention_source=source))
    score_layer = k - 1 if convention == "fastv" else k
    with torch.no_grad():
        out = model(inputs, pruner, pruner.begin(Query(0, layout)))
        emb = model.embed(inputs)
        x = model.language_model.run_layers(emb.hidden, emb.position_ids, 0, score_layer)[0]
        rows = [layout.stop] if source == "last" else list(range(layout.action.start))
        hand = hand_attention_row_scores(model.language_model.layers[score_layer], model.args.llm, x, rows,
                                         slice(1, 513))
    kept = out.keep_sets[0].visual_index[0]
    assert kept.numel() == keep_count(512, 0.3)
    dropped = torch.ones(512, dtype=torch.bool)
    dropped[kept] = False
    assert hand[kept].min() >= hand[dropped].max() - 1e-6  # the kept set is the hand ranking's top-k
    assert set(kept.tolist()) == set(hand.topk(kept.numel()).indices.tolist())
    cut = score_layer + 1
    assert out.seq_lens[:cut] == [layout.length] * cut  # layers up to the scoring layer see everything
    assert out.seq_lens[cut:] == [layout.length - 512 + kept.numel()] * (16 - cut)


def test_fastv_per_view_budget_and_config_errors(deep_policy, deep_inputs):
    model, (inputs, layout) = deep_policy.model, deep_inputs
    pruner = fastv.FastVPruner(fastv.FastVConfig(keep_ratio=0.3, budget="per_view"))
    with torch.no_grad():
        out = model(inputs, pruner, pruner.begin(Query(0, layout)))
    assert out.keep_sets[0].views == (keep_count(256, 0.3),) * 2
    cfg = fastv.FastVConfig.from_dict({"fastv_k": 3, "fastv_r": 0.75, "fastv_attention_source": "prefill"})
    assert (cfg.layer, cfg.keep_ratio, cfg.attention_source) == (3, 0.25, "prefill")
    with pytest.raises(ValueError, match="'middle'"):
        fastv.FastVConfig(attention_source="middle")
    with pytest.raises(ValueError, match="layer must be an int >= 1"):
        fastv.FastVConfig(layer=0)
    with pytest.raises(ValueError, match="unknown FastV config field 'fastv_q'"):
        fastv.FastVConfig.from_dict({"fastv_q": 1})


def test_fastv_batch_rows_are_cut_independently(deep_policy):
    model = deep_policy.model
    singles = [deep_policy.inputs(make_obs(seed=s)) for s in (6, 7)]
    batch = OFTInputs(torch.cat([i.pixels for i, _ in singles]), torch.cat([i.input_ids for i, _ in singles]),
                      torch.cat([i.proprio for i, _ in singles]))
    layout = singles[0][1]
    pruner = fastv.FastVPruner(fastv.FastVConfig(keep_ratio=0.25, budget="per_view"))
    with torch.no_grad():
        both = model(batch, pruner, pruner.begin(Query(0, layout)))
        each = [model(i, pruner, pruner.begin(Query(0, layout))) for i, _ in singles]
    for row, single in enumerate(each):
        assert torch.equal(both.keep_sets[0].visual_index[row], single.keep_sets[0].visual_index[0])
        torch.testing.assert_close(both.actions[row], single.actions[0], atol=1e-5, rtol=1e-5)


def test_global_budget_with_rows_split_differently_fails_clearly():
    visual = torch.tensor([[0, 1, 5], [0, 4, 5]])
    assert view_counts(visual[:1], (4, 4)) == (2, 1)
    with pytest.raises(ValueError, match="per_view budget"):
        view_counts(visual, (4, 4))


# -- VLA-Pruner ------------------------------------------------------------------------------------
def test_decay_weights_newest_first():
    w = vla_pruner.decay_weights(3, 0.8)  # oldest -> newest
    torch.testing.assert_close(w, torch.tensor([0.64, 0.8, 1.0]) / 2.44)
    hist = [torch.eye(3)[i][None] for i in range(3)]  # entry i marks token i; token 2 is the newest
    torch.testing.assert_close(vla_pruner.decayed_mean(hist, 0.8), (torch.tensor([0.64, 0.8, 1.0]) / 2.44)[None])


def angle_features(degrees, norms=None):
    rad = torch.tensor(degrees, dtype=torch.float64).deg2rad()
    f = torch.stack([rad.cos(), rad.sin()], dim=1).float()
    return f if norms is None else f * torch.tensor(norms)[:, None]


def test_diversity_filter_picks_the_analytic_tokens():
    # Unit vectors at 0°, 10°, 100°, 225° (norms differ: only the direction may matter).
    # Nearest-neighbour cosine distances: 1-cos10° twice, 1-cos90° = 1, 1-cos125° ≈ 1.574 → first 225°.
    # Distance to {225°}: 0° 1.707, 10° 1.819, 100° 1.574 → 10°. Then min to {225°, 10°}: 0° 0.015, 100° 1 → 100°.
    feats = angle_features([0, 10, 100, 225], norms=[5.0, 1.0, 0.5, 2.0])
    assert vla_pruner.max_min_diversity(feats, 2).tolist() == [3, 1]
    assert vla_pruner.max_min_diversity(feats, 3).tolist() == [3, 1, 2]
    assert vla_pruner.max_min_diversity(feats, 4).tolist() == [0, 1, 2, 3]  # nothing to drop


def test_union_then_diversity_ignores_relevance():
    feats = torch.cat([angle_features([0, 10, 100, 225]), angle_features([45, 50])])
    semantic = torch.tensor([9.0, 8.0, 0.0, 0.0, 1.0, 1.0])  # top-2 {0, 1}
    action = torch.tensor([0.0, 0.0, 5.0, 6.0, 1.0, 1.0])  # top-2 {2, 3}
    # Pool {0,1,2,3} -> the constructed example above: 225° then 10°; token 0 (best semantic) is dropped.
    assert vla_pruner.relevance_then_diversity(semantic, action, feats, 2).tolist() == [1, 3]
    same = vla_pruner.relevance_then_diversity(semantic, semantic, feats, 2)
    assert same.tolist() == [0, 1]  # the pool is already k: kept as it is


def vla_policy(deep_policy, **cfg):
    return Policy(deep_policy.ckpt, PolicyConfig(), vla_pruner.VLAPrunerPruner(vla_pruner.VLAPrunerConfig(**cfg)))


def test_vla_pruner_warm_up_and_reset(deep_policy):
    policy = vla_policy(deep_policy, keep_ratio=0.25)
    outs = run_episode(policy, 5)
    assert [o["info"]["pruned"] for o in outs] == [False, False, False, True, True]
    assert [o["info"]["vla_pruner_warmup"] for o in outs] == [True, True, True, False, False]
    assert outs[3]["info"]["kept_per_view"] == [64, 64]
    policy.reset()
    assert not policy.infer(make_obs(seed=0))["info"]["pruned"]


def test_vla_pruner_selection_uses_the_decayed_history_and_scatters_zeros(deep_policy):
    policy = vla_policy(deep_policy, keep_ratio=0.25)
    pruner = policy.pruner
    run_episode(policy, 3)
    history = [h.clone() for h in pruner._history]
    obs = make_obs(seed=3)
    inputs, layout = policy.inputs(obs)
    info = policy.infer(obs)["info"]
    model, llm = policy.model, policy.model.language_model
    with torch.no_grad():  # the expected keep, from the layer-3 context and the snapshot of the history
        emb = model.embed(inputs)
        x = llm.run_layers(emb.hidden, emb.position_ids, 0, 3)
        ctx = LayerContext(3, x, emb.position_ids, layout, emb.visual, llm)
        semantic = vla_pruner.layer_attention_scores(ctx, torch.arange(layout.action.start))
        action = vla_pruner.decayed_mean(history, 0.8)
        expected = vla_pruner.select_vla_pruner(semantic, action, emb.visual, layout.views, 0.25)
    per_camera = info["kept_indices"]  # local to each camera's 256-patch grid
    assert per_camera[0] + [i + 256 for i in per_camera[1]] == expected.visual_index[0].tolist()
    newest = pruner._history[-1][0]
    kept = torch.zeros(512, dtype=torch.bool)
    kept[expected.visual_index[0]] = True
    assert (newest[~kept] == 0).all() and (newest[kept] > 0).all()  # pruned tokens score 0 next time
    assert 0 < newest.sum().item() <= 1  # a share of the action slots' attention mass


def test_vla_pruner_action_score_comes_from_the_same_forward(deep_policy, monkeypatch):
    from vla_adp.model import llm as llm_mod
    from vla_adp.model.openvla_oft import OpenVLAOFT

    layer_ids = {id(layer): i for i, layer in enumerate(deep_policy.model.language_model.layers)}
    attn_ids = {id(layer.self_attn): i for i, layer in enumerate(deep_policy.model.language_model.layers)}
    calls = {"forward": 0, "layers": [], "probs": []}
    orig_fwd, orig_layer, orig_probs = OpenVLAOFT.forward, llm_mod.DecoderLayer.forward, llm_mod.Attention.probs

    def fwd(self, *a, **k):
        calls["forward"] += 1
        return orig_fwd(self, *a, **k)

    def layer_fwd(self, x, *a, **k):
        calls["layers"].append((layer_ids[id(self)], x.shape[1]))
        return orig_layer(self, x, *a, **k)

    def probs(self, x, cos, sin, rows):
        calls["probs"].append((attn_ids[id(self)], len(rows)))
        return orig_probs(self, x, cos, sin, rows)

    monkeypatch.setattr(OpenVLAOFT, "forward", fwd)
    monkeypatch.setattr(llm_mod.DecoderLayer, "forward", layer_fwd)
    monkeypatch.setattr(llm_mod.Attention, "probs", probs)
    policy = vla_policy(deep_policy, keep_ratio=0.25)
    policy.reset()
    for q in range(4):
        calls.update(forward=0, layers=[], probs=[])
        inputs, layout = policy.inputs(make_obs(seed=q))
        policy.infer(make_obs(seed=q))
        assert calls["forward"] == 1  # one model call per query
        assert [i for i, _ in calls["layers"]] == list(range(16))  # every layer once, no probe pass
        assert all(layer.self_attn.impl == "sdpa" for layer in deep_policy.model.language_model.layers)
        if q < 3:  # warm-up: only the action rows of layer 15
            assert calls["probs"] == [(15, 56)]
        else:
            assert calls["probs"] == [(3, layout.action.start), (15, 56)]
            lengths = dict(calls["layers"])
            assert lengths[3] == layout.length and lengths[4] == layout.length - 512 + 128


def test_vla_pruner_config_reference_names_and_errors():
    cfg = vla_pruner.VLAPrunerConfig.from_dict({"fastv_k": 3, "fastv_r": 0.875, "vla_pruner_layer": 15,
                                                "vla_pruner_av_hist_w": 3, "vla_pruner_av_decay": 0.8,
                                                "vla_pruner_mode": "semantic_action", "use_vla_pruner": True})
    assert cfg == vla_pruner.VLAPrunerConfig(keep_ratio=0.125)
    with pytest.raises(ValueError, match="vla_pruner_mode must be one of .* got 'other'"):
        vla_pruner.VLAPrunerConfig.from_dict({"vla_pruner_mode": "other"})
    with pytest.raises(ValueError, match="decay must be in"):
        vla_pruner.VLAPrunerConfig(decay=0.0)
    with pytest.warns(UserWarning, match="does not affect VLA-Pruner"):
        vla_pruner.VLAPrunerConfig.from_dict({"fastv_attention_source": "last"})


def test_vla_pruner_batch_rows_keep_their_own_history(deep_policy):
    model = deep_policy.model
    episodes = [[deep_policy.inputs(make_obs(seed=10 * e + q)) for q in range(4)] for e in range(2)]
    layout = episodes[0][0][1]

    def run(pruner, inputs_per_query):
        pruner.reset()
        keeps = []
        for q, inputs in enumerate(inputs_per_query):
            with torch.no_grad():
                out = model(inputs, pruner, pruner.begin(Query(q, layout)))
            pruner.end(QueryOutcome(out.layout, out.actions.numpy(), out.keep_sets))
            keeps.append(out.keep_sets)
        return keeps

    pruner = vla_pruner.VLAPrunerPruner(vla_pruner.VLAPrunerConfig(keep_ratio=0.25))
    batched = [OFTInputs(torch.cat([a.pixels, b.pixels]), torch.cat([a.input_ids, b.input_ids]),
                         torch.cat([a.proprio, b.proprio])) for (a, _), (b, _) in zip(*episodes)]
    together = run(pruner, batched)
    alone = [run(pruner, [i for i, _ in ep]) for ep in episodes]
    assert together[3] and not together[2]
    for row in range(2):
        assert torch.equal(together[3][0].visual_index[row], alone[row][3][0].visual_index[0])


# -- LightVLA --------------------------------------------------------------------------------------
def numpy_lightvla_scores(patches: np.ndarray, task: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """An independent float64 transcription of the reference's ``get_score``."""
    def rms(x):
        return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps)

    p, t = rms(patches), rms(task)
    d = p.shape[-1]
    logits = p @ t.T / np.sqrt(d)
    att = np.exp(logits - logits.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    q = rms(att @ t)
    return q @ p.T / np.sqrt(d)


def test_lightvla_scores_match_an_independent_transcription():
    g = torch.Generator().manual_seed(0)
    patches, task = torch.randn(1, 12, 16, generator=g, dtype=torch.float64), torch.randn(1, 5, 16, generator=g, dtype=torch.float64)
    ours = lightvla.lightvla_scores(patches, task)[0].numpy()
    np.testing.assert_allclose(ours, numpy_lightvla_scores(patches[0].numpy(), task[0].numpy()), rtol=1e-10, atol=1e-12)
    keep = lightvla.union_of_argmax(lightvla.lightvla_scores(patches, task))[0]
    assert keep.nonzero().flatten().tolist() == sorted(set(ours.argmax(-1).tolist()))


def constructed_context(patches: torch.Tensor, task_token: torch.Tensor) -> LayerContext:
    """BOS | 2 + 2 patches | prompt, slot, </s> all equal to one task vector (no proprio)."""
    layout = TokenLayout(views=(2, 2), n_prompt=1, n_action=1, n_proprio=0)
    hidden = torch.cat([torch.zeros(1, 1, 4), patches[None], task_token.expand(1, 3, 4)], dim=1)
    pos = torch.arange(layout.length)[None]
    return LayerContext(0, hidden, pos, layout, patches[None], decoder=None)


def test_lightvla_union_of_argmax_on_a_constructed_example():
    # Identical task tokens: every patch's query is rms(t) itself, so every query picks the patch
    # whose direction is closest to t — one token kept, whatever the patch norms.
    patches = torch.tensor([[1.0, 0, 0, 0], [0, 3.0, 0, 0], [0.2, 0.1, 1.0, 0], [0, 0, 0, 1.0]])
    t = torch.tensor([0.0, 0.0, 2.0, 0.1])
    pruner = lightvla.LightVLAPruner()
    keep = pruner.at_layer(constructed_context(patches, t))
    assert keep.visual_index.tolist() == [[2]] and keep.views == (0, 1)
    info = pruner.end(QueryOutcome(None, np.zeros((1, 1)), [keep]))
    assert info["keep_ratio_achieved"] == 0.25 and info["lightvla_distinct"] == 1


def test_lightvla_inference_batch_fails_clearly_training_batch_works(tiny_policy):
    singles = [tiny_policy.inputs(make_obs(seed=s)) for s in (1, 2)]
    batch = OFTInputs(torch.cat([i.pixels for i, _ in singles]), torch.cat([i.input_ids for i, _ in singles]),
                      torch.cat([i.proprio for i, _ in singles]))
    layout = singles[0][1]
    pruner = lightvla.LightVLAPruner()
    with torch.no_grad(), pytest.raises(ValueError, match="batch 1 .* got batch 2"):
        tiny_policy.model(batch, pruner, pruner.begin(Query(0, layout)))
    pruner.train(True)
    pruner.set_progress(10, 10)  # no noise: the training path picks the clean argmaxes
    with torch.no_grad():
        out = tiny_policy.model(batch, pruner, pruner.begin(Query(0, layout)))
    assert out.keep_sets[0].visual_index.shape == (2, 512) and out.layout.n_visual == 512
    with torch.no_grad():
        emb = tiny_policy.model.embed(batch)
        clean = lightvla.lightvla_scores(emb.hidden[:, layout.visual], emb.hidden[:, layout.visual.stop:])
    assert torch.equal(out.keep_sets[0].visual_index, clean.argmax(-1))


def test_lightvla_noise_schedule_decays_linearly():
    pruner = lightvla.LightVLAPruner().train()
    assert pruner.training and pruner.noise_scale == 1.0
    pruner.set_progress(25, 100)
    assert pruner.noise_scale == 0.75
    pruner.set_progress(150, 100)
    assert pruner.noise_scale == 0.0
    with pytest.raises(ValueError, match="max_steps=0"):
        pruner.set_progress(1, 0)
    assert not pruner.eval().training


def test_straight_through_forward_is_hard_backward_is_soft():
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(2, 6, 6, generator=g, requires_grad=True)
    patches = torch.randn(2, 6, 3, generator=g, requires_grad=True)
    idx, tokens = lightvla.straight_through_select(scores, patches)
    torch.testing.assert_close(tokens, patches.gather(1, idx[..., None].expand(-1, -1, 3)))
    assert torch.equal(idx, scores.argmax(-1))
    tokens.pow(2).sum().backward()
    assert scores.grad.abs().sum() > 0  # the softmax branch carries gradient to the scores
    assert patches.grad.abs().sum() > 0


def test_lightvla_training_passes_gradients_to_the_policy(tiny_policy):
    model = copy.deepcopy(tiny_policy.model).train()
    inputs, layout = tiny_policy.inputs(make_obs(seed=3))
    pruner = lightvla.LightVLAPruner().train()
    pruner.set_progress(0, 100)
    with torch.enable_grad():
        out = model(inputs, pruner, pruner.begin(Query(0, layout)))
        out.actions.square().mean().backward()
    for name in ("projector.fc1.weight", "language_model.layers.0.self_attn.q_proj.weight",
                 "proprio_projector.fc1.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    assert out.keep_sets[0].tokens is not None and out.keep_sets[0].tokens.requires_grad


def test_lightvla_training_in_a_padded_batch_matches_each_sample_alone(tiny_policy):
    batch, singles = padded_pair(tiny_policy)
    pruner = lightvla.LightVLAPruner().train()
    pruner.set_progress(1, 1)
    with torch.no_grad():
        both = tiny_policy.model(batch, pruner, pruner.begin(Query(0, singles[0][1])), action_slice="vla_adp")
        alone = [tiny_policy.model(x, pruner, pruner.begin(Query(0, lx)), action_slice="vla_adp") for x, lx in singles]
    for row, single in enumerate(alone):
        assert torch.equal(both.keep_sets[0].visual_index[row], single.keep_sets[0].visual_index[0])
        torch.testing.assert_close(both.hidden[row], single.hidden[0], atol=1e-5, rtol=1e-5)


class EveryOther:
    """A contiguous-position cut before layer 0 (ADP's position mode) keeping even visual tokens."""

    name = "every_other"

    def at_layer(self, ctx):
        visual = torch.arange(0, ctx.layout.n_visual, 2).expand(ctx.hidden.shape[0], -1)
        return KeepSet(visual, tuple(n // 2 for n in ctx.layout.views))


def padded_pair(policy):
    """Two samples with prompts of different lengths, alone and as one right-padded batch."""
    a, la = policy.inputs(make_obs(seed=1, instruction="open the drawer"))
    b, lb = policy.inputs(make_obs(seed=2, instruction="put both the alphabet soup and the tomato sauce in the basket"))
    n = max(a.input_ids.shape[1], b.input_ids.shape[1])
    ids = torch.cat([torch.nn.functional.pad(x.input_ids, (0, n - x.input_ids.shape[1])) for x in (a, b)])
    mask = torch.stack([torch.arange(n) < x.input_ids.shape[1] for x in (a, b)])
    batch = OFTInputs(torch.cat([a.pixels, b.pixels]), ids, torch.cat([a.proprio, b.proprio]), prompt_mask=mask)
    return batch, [(a, la), (b, lb)]


def test_contiguous_cut_of_a_padded_batch_matches_each_sample_alone(tiny_policy):
    batch, singles = padded_pair(tiny_policy)
    with torch.no_grad():
        both = tiny_policy.model(batch, EveryOther(), frozenset({0}), action_slice="vla_adp")
        alone = [tiny_policy.model(x, EveryOther(), frozenset({0}), action_slice="vla_adp") for x, _ in singles]
    for row, single in enumerate(alone):
        torch.testing.assert_close(both.hidden[row], single.hidden[0], atol=1e-5, rtol=1e-5)


def test_scoring_flops_match_a_flop_counter(tiny_policy):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from vla_adp.seam.flops import attention_rows_flops, lightvla_flops

    inputs, layout = tiny_policy.inputs(make_obs(seed=4))
    llm = tiny_policy.model.language_model
    with torch.no_grad():
        emb = tiny_policy.model.embed(inputs)
        ctx = LayerContext(1, llm.run_layers(emb.hidden, emb.position_ids, 0, 1), emb.position_ids, layout,
                           emb.visual, llm)
        for rows in (torch.tensor([layout.stop]), torch.arange(layout.action.start)):
            with FlopCounterMode(display=False) as counter:
                ctx.attention_probs(rows)
            assert counter.get_total_flops() == attention_rows_flops(llm.args, len(rows), layout.length)
        patches, task = emb.hidden[:, layout.visual], emb.hidden[:, layout.visual.stop:]
        for training in (False, True):
            with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
                scores = lightvla.lightvla_scores(patches, task)
                if training:
                    lightvla.straight_through_select(scores, patches)
            assert counter.get_total_flops() == lightvla_flops(512, task.shape[1], task.shape[2], training)


# -- CLI -------------------------------------------------------------------------------------------
def test_cli_pruners_lists_methods_and_parameters(capsys):
    from vla_adp.cli import main

    main(["pruners", "--json", "fastv", "vla_pruner", "lightvla"])
    table = json.loads(capsys.readouterr().out)
    assert table["fastv"]["parameters"]["layer"] == 2
    assert table["vla_pruner"]["parameters"] == {"keep_ratio": 0.5, "fastv_k": 3, "action_layer": 15, "history": 3,
                                                 "decay": 0.8, "attention_source": "prefill",
                                                 "mode": "semantic_action", "action_horizon": 0, "action_dim": 7}
    assert "keep_ratio" in table["lightvla"]["parameters"]
    assert main(["pruners", "nope"]) == 2
    assert "unknown pruner" in capsys.readouterr().err


@pytest.mark.parametrize("name,kept", [("fastv", "128/512"), ("vla_pruner", "128/512"), ("lightvla", "/512")])
def test_cli_predict_with_each_pruner(deep_policy, capsys, name, kept):
    from vla_adp.cli import main

    args = ["predict", "--checkpoint", str(deep_policy.ckpt.path), "--device", "cpu", "--dtype", "fp32",
            "--pruner", name, "--keep", "0.25"]
    if name == "lightvla":
        with pytest.warns(UserWarning):
            assert main(args) == 0
    else:
        assert main(args) == 0
    out = capsys.readouterr().out
    assert f"pruner {name}: pruned per query" in out and "visual kept " in out and kept in out
    if name == "vla_pruner":  # three warm-up queries, then pruning
        assert "pruned per query [0, 0, 0, 1, 1]" in out


# -- the forks' own flag names select the forks' behaviour --------------------------------------------
FORK_SCRIPT_FLAGS = {  # VLA-Pruner OFT fork's evaluation flag set (its scripts pass all of them)
    "use_vla_pruner": True, "use_fastv": False, "use_vla_cache": False, "fastv_k": 3, "fastv_r": 0.9275,
    "vla_pruner_layer": 15, "vla_pruner_mode": "semantic_action", "vla_pruner_av_hist_w": 3,
    "vla_pruner_av_decay": 0.8, "vla_pruner_action_horizon": 0,
}


def test_fastv_fork_flags_select_the_forks_convention_and_budget(deep_policy, deep_inputs):
    cfg = fastv.FastVConfig.from_dict({"fastv_k": 3, "fastv_r": 0.75})
    fork = fastv.FastVConfig(keep_ratio=0.25, layer=3, convention="vla_pruner_oft", attention_source="prefill",
                             budget="per_view")
    assert cfg == fork and (cfg.score_layer, cfg.cut_layer) == (3, 4)
    assert fastv.FastVConfig.from_dict({"use_fastv": True}) == dataclasses.replace(fork, keep_ratio=0.5)
    assert fastv.FastVConfig.from_dict({"fastv_attention_source": "last"}).attention_source == "last"
    assert fastv.FastVConfig.from_dict({"fastv_attention_source": "anything"}).attention_source == "prefill"
    assert fastv.FastVConfig.from_dict({"layer": 2, "keep_ratio": 0.5}) == fastv.FastVConfig()  # our names: FastV's own
    model, (inputs, layout) = deep_policy.model, deep_inputs
    pruner = build_pruner("fastv", fastv_k=3, fastv_r=0.75)
    with torch.no_grad():
        out = model(inputs, pruner, pruner.begin(Query(0, layout)))
        emb = model.embed(inputs)
        x = model.language_model.run_layers(emb.hidden, emb.position_ids, 0, 3)[0]
        hand = hand_attention_row_scores(model.language_model.layers[3], model.args.llm, x,
                                         list(range(layout.action.start)), slice(1, 513))
    k = keep_count(256, 0.25)
    want = sorted(hand[:256].topk(k).indices.tolist() + (hand[256:].topk(k).indices + 256).tolist())
    assert out.keep_sets[0].visual_index[0].tolist() == want and out.keep_sets[0].views == (k, k)
    with pytest.warns(UserWarning, match="do not change the fork's FastV"):
        fastv.FastVConfig.from_dict(FORK_SCRIPT_FLAGS)
    with pytest.raises(ValueError, match="use_vla_cache=true selects VLA-Cache"):
        fastv.FastVConfig.from_dict({**FORK_SCRIPT_FLAGS, "use_vla_cache": True})


def test_vla_pruner_fork_flag_set_loads_and_vla_cache_is_refused():
    cfg = vla_pruner.VLAPrunerConfig.from_dict(FORK_SCRIPT_FLAGS)
    assert cfg == vla_pruner.VLAPrunerConfig(keep_ratio=1.0 - 0.9275)
    with pytest.raises(ValueError, match="use_vla_cache=true selects VLA-Cache"):
        vla_pruner.VLAPrunerConfig.from_dict({**FORK_SCRIPT_FLAGS, "use_vla_cache": True})
    for name, mode in [("semantic", "semantic"), ("prefill", "semantic"), ("action", "action"),
                       ("prefill_action", "semantic_action"), ("vla_pruner", "semantic_action")]:
        assert vla_pruner.VLAPrunerConfig.from_dict({"vla_pruner_mode": name}).mode == mode
    assert vla_pruner.VLAPrunerConfig.from_dict({"vla_pruner_action_horizon": 2}).action_horizon == 2
    with pytest.warns(UserWarning, match="only affects the fork's VLA-Cache mode"):
        vla_pruner.VLAPrunerConfig.from_dict({"vla_pruner_semantic_weight": 0.5})


@pytest.mark.parametrize("mode", ["semantic", "action"])
def test_vla_pruner_single_score_modes_keep_that_scores_top_k(deep_policy, mode):
    policy = vla_policy(deep_policy, keep_ratio=0.25, mode=mode)
    pruner = policy.pruner
    run_episode(policy, 3)
    history = [h.clone() for h in pruner._history]
    obs = make_obs(seed=3)
    inputs, layout = policy.inputs(obs)
    info = policy.infer(obs)["info"]
    llm = policy.model.language_model
    with torch.no_grad():
        emb = policy.model.embed(inputs)
        x = llm.run_layers(emb.hidden, emb.position_ids, 0, 3)
        semantic = vla_pruner.layer_attention_scores(LayerContext(3, x, emb.position_ids, layout, emb.visual, llm),
                                                     torch.arange(layout.action.start))[0]
    score = semantic if mode == "semantic" else vla_pruner.decayed_mean(history, 0.8)[0]
    k = keep_count(256, 0.25)
    assert info["kept_indices"] == [sorted(score[:256].topk(k).indices.tolist()),
                                    sorted(score[256:].topk(k).indices.tolist())]


def test_vla_pruner_action_horizon_limits_the_action_rows(deep_policy):
    obs = make_obs(seed=0)
    inputs, layout = deep_policy.inputs(obs)
    policy = vla_policy(deep_policy, keep_ratio=0.25, action_horizon=2)
    policy.infer(obs)  # warm-up query: unpruned, records the layer-15 action score
    llm = policy.model.language_model
    with torch.no_grad():
        emb = policy.model.embed(inputs)
        x = llm.run_layers(emb.hidden, emb.position_ids, 0, 15)
        ctx = LayerContext(15, x, emb.position_ids, layout, emb.visual, llm)
        rows = torch.arange(layout.action.start, layout.action.start + 2 * 7)
        want = vla_pruner.attention_received(ctx.attention_probs(rows), layout)
        full = vla_pruner.attention_received(ctx.attention_probs(torch.arange(layout.action.start,
                                                                              layout.action.stop)), layout)
    torch.testing.assert_close(policy.pruner._history[-1], want)
    assert not torch.allclose(want, full)
