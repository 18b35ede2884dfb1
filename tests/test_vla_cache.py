"""VLA-Cache: static patches, the relevance filter, the entropy schedule, and key/value reuse itself.

The reuse is checked two ways on a tiny 16-layer checkpoint: with identical consecutive queries the
reused keys/values are exactly what the layer would compute, so the actions equal the unpruned ones;
with a changed proprio state they are stale, and the actions equal an independent forward written out
here (layer by layer, the reused tokens' rows dropped, their recorded keys/values appended).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.conftest import make_obs
from vla_adp.model.llm import apply_rope
from vla_adp.seam.context import LayerContext, Query, QueryOutcome
from vla_adp.seam.layout import TokenLayout
from vla_adp.pruning.pruners import vla_cache as vc


@pytest.fixture(scope="module")
def deep_policy(tmp_path_factory):
    from vla_adp.model.tiny import make_tiny_checkpoint
    from vla_adp.policy import Policy

    folder = make_tiny_checkpoint(tmp_path_factory.mktemp("deep") / "openvla-7b-oft-finetuned-libero-spatial",
                                  seed=1, llm_layers=16)
    return Policy.load(folder, dtype=torch.float32)


def run_query(policy, pruner, obs, index):
    """One query of ``pruner`` through the model (normalised actions), as Policy.infer wires it."""
    images = policy.images(obs)
    inputs, layout = policy.inputs(obs, images)
    with torch.no_grad():
        hooks = pruner.begin(Query(index, layout, images=tuple(images)))
        out = policy.model(inputs, pruner, hooks)
    info = pruner.end(QueryOutcome(out.layout, out.actions[0].numpy(), out.keep_sets))
    return out, info


# -- pure parts --------------------------------------------------------------------------------------
def test_static_patches_on_a_hand_built_pair():
    prev = np.full((28, 28, 3), 100, np.uint8)  # four 14-px patches
    cur = prev.copy()
    cur[:14, 21:] = 0  # patch 1: half dark -> cos = sqrt(1/2)
    cur[14, 14, 0] = 0  # patch 3: one of 588 values zeroed -> cos = sqrt(587/588) = 0.99915
    cur[14:, :14] = 200  # patch 2: brighter, same direction -> cos = 1 (cosine ignores brightness)
    sim = vc.patch_similarity(prev, cur, 4)
    np.testing.assert_allclose(sim, [1.0, math.sqrt(0.5), 1.0, math.sqrt(587 / 588)], rtol=1e-6)
    assert set(vc.static_patches(prev, cur, 4, 0.996, 2)) == {0, 2}
    assert vc.static_patches(prev, cur, 4, 0.996, 3)[-1] == 3
    assert vc.static_patches(prev, cur, 4, 0.9999, 3) == vc.static_patches(prev, cur, 4, 0.9999, 2)  # 3 < τ
    with pytest.raises(ValueError, match="square"):
        vc.patches(np.zeros((28, 28, 3)), 5)


def test_reuse_schedule_and_counts_by_hand():
    # minmax([1, 3, 2, 0]) = [1/3, 1, 2/3, 0] -> r = [2/3, 0, 1/3, 1]; upward steps ×0.55
    r = vc.reuse_schedule(torch.tensor([1.0, 3.0, 2.0, 0.0]))
    step2 = 0.55 / 3
    torch.testing.assert_close(r, torch.tensor([2 / 3, 0.0, step2, step2 + (1 - step2) * 0.55]))
    assert vc.reuse_counts({2: 0.5, 6: 0.25, 9: 0.9}, 10) == {2: 5, 6: 5, 9: 9}  # never fewer than before
    assert vc.reuse_counts({2: 0.0}, 10) == {2: 1}  # max(1, ...) as the fork
    assert vc.reuse_counts({2: 0.5}, 0) == {}


def test_row_entropy_matches_numpy():
    probs = torch.rand(1, 3, 5, 7).softmax(-1)
    a = probs.numpy().mean(axis=1)[0]
    a = a / (a.sum(-1, keepdims=True) + 1e-10)
    want = float((-(a * np.log(a + 1e-10)).sum(-1)).mean())
    assert float(vc.row_entropy(probs)) == pytest.approx(want, rel=1e-5)


def test_relevant_tokens_are_never_reused_and_cameras_stay_in_order():
    frames = (np.full((28, 28, 3), 50, np.uint8), np.full((28, 28, 3), 90, np.uint8))
    pruner = vc.VLACachePruner(vc.VLACacheConfig(static_top_k=256, relevant_top_k=128))  # 4 static, 2 relevant
    relevance = torch.tensor([0.9, 0.1, 0.2, 0.8, 0.0, 0.5, 0.6, 0.1])
    pruner._memory = vc._Memory(frames, (4, 4), {}, relevance, None)
    layout = TokenLayout((4, 4), n_prompt=3, n_action=2)
    hooks = pruner.begin(Query(1, layout, images=frames))
    assert pruner._reusable.tolist() == [1, 2, 4, 7]  # camera 0 minus {0, 3}, camera 1 minus {5, 6}
    assert hooks == frozenset({0, 2, 6, 9, 11})  # constant proportions without an entropy: every reuse layer
    assert pruner._counts == {2: 4, 6: 4, 9: 4, 11: 4}


def test_config_errors_quote_the_bad_value():
    for fields, match in [({"keep_ratio": 0.0}, "keep_ratio"), ({"reuse_layers": (6, 2)}, "reuse_layers"),
                          ({"schedule": "linear"}, "'linear'"), ({"similarity": 2}, "similarity"),
                          ({"static_top_k": -1}, "static_top_k")]:
        with pytest.raises(ValueError, match=match):
            vc.VLACacheConfig(**fields)


# -- on the model ------------------------------------------------------------------------------------
def test_identical_queries_reuse_keys_values_and_give_the_unpruned_actions(deep_policy):
    obs = make_obs(seed=3)
    inputs, layout = deep_policy.inputs(obs)
    with torch.no_grad():
        plain = deep_policy.model(inputs).actions
    pruner = vc.VLACachePruner()
    first, info0 = run_query(deep_policy, pruner, obs, 0)
    assert not first.keep_sets and info0["vla_cache_reusable"] == 0  # nothing to compare with yet
    for i in (1, 2):
        out, info = run_query(deep_policy, pruner, obs, i)
        torch.testing.assert_close(out.actions, plain, atol=2e-6, rtol=1e-5)  # reused K/V == recomputed
        assert info["vla_cache_static"] == [150, 150]  # every patch static: the top 150 per camera
        reused = info["vla_cache_reused"]
        assert 0 < reused <= info["vla_cache_reusable"] < 300  # the relevance filter removes some of the 300
        assert out.seq_lens[:2] == [layout.length] * 2 and min(out.seq_lens) == layout.length - reused
        counts = info["vla_cache_reuse_layers"]
        assert list(counts.values()) == sorted(counts.values())
        d = deep_policy.model.args.llm.dim
        want = sum(2.0 * s * counts[str(max(k for k in map(int, counts) if k <= i_layer))] * d
                   for i_layer, s in enumerate(out.seq_lens) if i_layer >= min(map(int, counts)))
        assert info["reuse_attention_flops"] == pytest.approx(want)


def hand_reuse_forward(model, inputs, cached: dict[int, tuple[torch.Tensor, torch.Tensor]] | None,
                       reused_from: dict[int, list[int]]):
    """OpenVLA-OFT's decoder written out layer by layer: from each layer in ``reused_from`` on, the
    listed visual tokens (ids 0..V-1) leave the rows and their ``cached`` keys/values join the keys.
    Returns (normalised actions, {layer: (K, V) of all visual tokens as this query leaves them})."""
    llm = model.language_model
    emb = model.embed(inputs)
    x, pos, layout = emb.hidden, emb.position_ids, emb.layout
    n_vis = layout.n_visual
    rows_vis = list(range(n_vis))
    reused: list[int] = []
    record: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    first = min(reused_from) if reused_from else 2
    for i, layer in enumerate(llm.layers):
        if i in reused_from:
            reused = reused_from[i]
            keep_rows = [0] + [1 + j for j, t in enumerate(rows_vis) if t not in reused] + \
                list(range(1 + len(rows_vis), x.shape[1]))
            rows_vis = [t for t in rows_vis if t not in reused]
            x, pos = x[:, keep_rows], pos[:, keep_rows]
        attn = layer.self_attn
        h = layer.input_layernorm(x)
        b, s, _ = h.shape
        q = attn.q_proj(h).view(b, s, attn.n_heads, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(b, s, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(b, s, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
        cos, sin = llm.rope(pos, x.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if i >= first:
            full_k = cached[i][0].clone() if cached else torch.zeros(b, attn.n_kv_heads, n_vis, attn.head_dim)
            full_v = cached[i][1].clone() if cached else torch.zeros_like(full_k)
            full_k[:, :, rows_vis], full_v[:, :, rows_vis] = k[:, :, 1:1 + len(rows_vis)], v[:, :, 1:1 + len(rows_vis)]
            record[i] = (full_k, full_v)
        if reused:
            k = torch.cat([k, cached[i][0][:, :, reused]], dim=2)
            v = torch.cat([v, cached[i][1][:, :, reused]], dim=2)
        rep = attn.n_heads // attn.n_kv_heads
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        w = (q @ k.transpose(-1, -2) / math.sqrt(attn.head_dim)).softmax(-1)
        x = x + attn.o_proj((w @ v).transpose(1, 2).reshape(b, s, -1))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    x = llm.norm(x)
    final = layout.with_views((len([t for t in rows_vis if t < layout.views[0]]),
                               len([t for t in rows_vis if t >= layout.views[0]])))
    return model.action_head(x[:, final.action_hidden("upstream")]), record


def test_stale_keys_values_match_an_independent_reuse_forward(deep_policy):
    obs0 = make_obs(seed=3)
    obs1 = dict(obs0, state=make_obs(seed=9)["state"])  # same frames, the robot state moved
    pruner = vc.VLACachePruner()
    run_query(deep_policy, pruner, obs0, 0)
    out, info = run_query(deep_policy, pruner, obs1, 1)
    ids, counts = info["vla_cache_reusable_ids"], {int(k): v for k, v in info["vla_cache_reuse_layers"].items()}
    assert counts
    model = deep_policy.model
    with torch.no_grad():
        _, cache0 = hand_reuse_forward(model, deep_policy.inputs(obs0)[0], None, {})
        hand, _ = hand_reuse_forward(model, deep_policy.inputs(obs1)[0], cache0,
                                     {layer: ids[:n] for layer, n in counts.items()})
        plain = model(deep_policy.inputs(obs1)[0]).actions
    torch.testing.assert_close(out.actions, hand, atol=2e-6, rtol=1e-5)
    assert (out.actions - plain).abs().max() > 1e-4  # the reuse is not a no-op: stale keys/values count


def test_previous_frame_is_copied_not_aliased(deep_policy):
    """The reference compares the current frame with itself (``prev_img = replay_images[-1]`` after the
    append); here a frame buffer the caller overwrites in place must still differ from the copy kept."""
    obs = make_obs(seed=4)
    images = deep_policy.images(obs)
    inputs, layout = deep_policy.inputs(obs, images)
    pruner = vc.VLACachePruner(vc.VLACacheConfig(static_top_k=256, relevant_top_k=0))
    with torch.no_grad():
        pruner.begin(Query(0, layout, images=tuple(images)))
        out = deep_policy.model(inputs, pruner, frozenset({0}))
    pruner.end(QueryOutcome(out.layout, out.actions[0].numpy(), out.keep_sets))
    images[0][:14, :42] = 255 - images[0][:14, :42]  # the same buffer, three patches of camera 0 changed
    pruner.begin(Query(1, layout, images=tuple(images)))
    assert [int((pruner._reusable < 256).sum()), int((pruner._reusable >= 256).sum())] == [253, 256]
    assert not {0, 1, 2} & set(pruner._reusable.tolist())


def test_reset_forgets_the_previous_query_and_keep_ratio_bounds_the_static_set(deep_policy):
    obs = make_obs(seed=5)
    pruner = vc.VLACachePruner(vc.VLACacheConfig(keep_ratio=0.75))
    run_query(deep_policy, pruner, obs, 0)
    _, info = run_query(deep_policy, pruner, obs, 1)
    assert info["vla_cache_static"] == [64, 64]  # round((1 − 0.75)·256) per camera
    pruner.reset()
    out, info = run_query(deep_policy, pruner, obs, 0)
    assert not out.keep_sets and info["vla_cache_reused"] == 0


def test_missing_images_or_batched_path_fail_clearly(deep_policy):
    layout = TokenLayout((256, 256), n_prompt=5, n_action=56)
    pruner = vc.VLACachePruner()
    with pytest.raises(ValueError, match="needs 2 images"):
        pruner.begin(Query(0, layout))
    pruner.begin(Query(0, layout, images=(np.zeros((224, 224, 3), np.uint8),) * 2))
    llm = deep_policy.model.language_model
    ctx = LayerContext(0, torch.zeros(1, layout.length, llm.args.dim), torch.arange(layout.length)[None], layout,
                       torch.zeros(1, 512, llm.args.dim), llm)  # no taps: the batched multi-episode path
    with pytest.raises(ValueError, match="attention taps"):
        pruner.at_layer(ctx)


def test_policy_infer_passes_the_frames_and_counts_the_reuse(deep_policy):
    from vla_adp.policy import Policy, PolicyConfig
    from vla_adp.pruning.registry import build_pruner

    policy = Policy(deep_policy.ckpt, PolicyConfig(), build_pruner("vla_cache"))
    obs = make_obs(seed=6)
    infos = [policy.infer(obs)["info"] for _ in range(2)]
    assert not infos[0]["pruned"] and infos[1]["pruned"] and infos[1]["vla_cache_reused"] > 0
    assert infos[1]["flops"] == infos[1]["flops_llm"] + infos[1]["scoring_flops"]
    assert infos[1]["flops_llm"] < infos[0]["flops_llm"]
