"""SparseVLM: text raters, rater-attention scores, stage counts, DPC-kNN recycling, on hand cases and
against independent transcriptions (numpy loops; the attention written out in tests/test_pruners.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.conftest import make_obs
from tests.test_pruners import hand_attention_row_scores
from vla_adp.model.openvla_oft import OFTInputs
from vla_adp.seam.context import Query, QueryOutcome
from vla_adp.pruning.pruners import sparsevlm as sv


@pytest.fixture(scope="module")
def deep_policy(tmp_path_factory):
    from vla_adp.model.tiny import make_tiny_checkpoint
    from vla_adp.policy import Policy

    folder = make_tiny_checkpoint(tmp_path_factory.mktemp("deep") / "openvla-7b-oft-finetuned-libero-spatial",
                                  seed=1, llm_layers=16)
    return Policy.load(folder, dtype=torch.float32)


# -- pure parts --------------------------------------------------------------------------------------
def test_raters_by_hand():
    visual = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 2.0]])
    # row 0: softmax([2, 0, 0]); row 1: softmax([0, 0, 2]); relevance = column means
    e2 = math.e**2
    r = np.array([(e2 / (e2 + 2) + 1 / (e2 + 2)) / 2, (1 / (e2 + 2)) * 1.0, (1 / (e2 + 2) + e2 / (e2 + 2)) / 2])
    assert sv.select_raters(visual, text).tolist() == (r > r.mean()).tolist() == [True, False, True]


def test_rank_count_by_hand():
    p = torch.tensor([[0.2, 0.1, 0.3, 0.4, 0.0], [0.4, 0.2, 0.6, 0.8, 0.0], [0.1, 0.1, 0.1, 0.1, 0.6]])  # rank 2
    assert sv.rank_count(p, 1.5, 0.0) == 3 and sv.rank_count(p, 13.5, 0.0) == 4  # at most V - 1
    assert sv.rank_count(torch.eye(3), 2.0, 0.0) is None  # rank = V: nothing to delete


def test_schedule_factor_gives_the_layer_average_and_refuses_the_impossible():
    g = sv.schedule_factor([3, 7, 16], 32, 192 / 576)
    assert (3 + 4 * g + 9 * g**2 + 16 * g**3) / 32 == pytest.approx(192 / 576, abs=1e-9)
    assert 0.5 < g < 0.6  # the release's 300/200/110 of 576 are 0.52/0.35/0.19
    with pytest.raises(ValueError, match="cannot be 0.05"):
        sv.schedule_factor([3, 7, 16], 32, 0.05)


def test_recycle_counts():
    assert sv.recycle_count(0) == (0, 0)
    assert sv.recycle_count(100) == (31, 4)  # ⌊0.3·100⌋+1, ⌊31/10⌋+1
    assert sv.recycle_count(2) == (1, 1)


def numpy_dpc(x: np.ndarray, k: int) -> tuple[list[int], list[int]]:
    """Density peaks with kNN density, one token at a time (independent of the vectorised version)."""
    n, c = x.shape
    d = np.array([[np.linalg.norm(x[i] - x[j]) / math.sqrt(c) for j in range(n)] for i in range(n)])
    dens = [math.exp(-np.mean(np.sort(d[i])[:k] ** 2)) for i in range(n)]
    delta = []
    for i in range(n):
        higher = [d[i, j] for j in range(n) if dens[j] > dens[i] or (dens[j] == dens[i] and j < i)]
        delta.append(min(higher) if higher else d.max())
    score = np.array(dens) * np.array(delta)
    centres = list(np.argsort(-score, kind="stable")[:k])
    assign = [int(np.argmin([d[c_, i] for c_ in centres])) for i in range(n)]
    for j, c_ in enumerate(centres):
        assign[c_] = j
    return [int(c_) for c_ in centres], assign


def test_density_peak_clusters_match_a_loop_transcription_and_a_hand_case():
    x = torch.randn(23, 6, generator=torch.Generator().manual_seed(0))
    centres, assign = sv.density_peak_clusters(x, 3)
    want_c, want_a = numpy_dpc(x.double().numpy(), 3)
    assert sorted(centres.tolist()) == sorted(want_c)
    assert [want_c[a] for a in want_a] == [centres[a].item() for a in assign]  # same partition
    two = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [5.0, 5.0], [5.1, 5.0]])
    c2, a2 = sv.density_peak_clusters(two, 2)
    groups = {tuple(sorted((a2 == j).nonzero().flatten().tolist())) for j in range(2)}
    assert groups == {(0, 1, 2), (3, 4)}
    torch.testing.assert_close(sv.merge_clusters(two, a2, 2)[a2[3]], torch.tensor([5.05, 5.0]))


def test_config_errors_quote_the_bad_value():
    for fields, match in [({"keep_ratio": 1.5}, "keep_ratio"), ({"layers": (6, 2)}, "layers"),
                          ({"count": "entropy"}, "'entropy'"), ({"positions": "shifted"}, "shifted"),
                          ({"rank_scale": 0}, "rank_scale")]:
        with pytest.raises(ValueError, match=match):
            sv.SparseVLMConfig(**fields)


# -- on the model ------------------------------------------------------------------------------------
def forward(policy, pruner, obs):
    inputs, layout = policy.inputs(obs)
    with torch.no_grad():
        out = policy.model(inputs, pruner, pruner.begin(Query(0, layout)))
    return inputs, layout, out


def finish(pruner, out) -> dict:
    return pruner.end(QueryOutcome(out.layout, out.actions[0].numpy(), out.keep_sets))


def test_first_stage_keeps_the_hand_rater_top_k_and_recycles_cluster_means(deep_policy):
    obs = make_obs(seed=5)
    pruner = sv.SparseVLMPruner(sv.SparseVLMConfig(keep_ratio=0.4, layers=(2, 6, 12)))
    inputs, layout, out = forward(deep_policy, pruner, obs)
    model, llm = deep_policy.model, deep_policy.model.language_model
    with torch.no_grad():
        emb = model.embed(inputs)
        e = emb.hidden[0].numpy()
        vis, text = e[layout.visual], e[layout.prompt]
        logits = vis @ text.T
        soft = np.exp(logits - logits.max(1, keepdims=True))
        rel = (soft / soft.sum(1, keepdims=True)).mean(0)
        raters = [layout.prompt.start + i for i in np.flatnonzero(rel > rel.mean())]
        x2 = llm.run_layers(emb.hidden, emb.position_ids, 0, 2)[0]
        hand = hand_attention_row_scores(llm.layers[2], model.args.llm, x2, raters, layout.visual)
        x3 = llm.run_layers(emb.hidden, emb.position_ids, 0, 3)[0, layout.visual]
    g = sv.schedule_factor([3, 7, 13], 16, 0.4)
    k = round(g * 512)
    keep = out.keep_sets[0]
    kept = set(hand.topk(k).indices.tolist())
    deleted = [i for i in range(512) if i not in kept]
    m, n_clusters = sv.recycle_count(len(deleted))
    assert keep.n_kept == k + n_clusters and sum(keep.views) == keep.n_kept
    got = keep.visual_index[0].tolist()
    assert kept <= set(got)
    # recycled tokens: DPC-kNN means over the m most relevant deleted tokens (numpy transcription)
    cand = sorted(deleted, key=lambda i: -float(hand[i]))[:m]
    centres, assign = numpy_dpc(x3[cand].double().numpy(), n_clusters)
    means = {cand[c]: x3[[cand[i] for i in range(m) if assign[i] == j]].mean(0) for j, c in enumerate(centres)}
    recycled = [(pos, i) for pos, i in enumerate(got) if i not in kept]
    assert {i for _, i in recycled} == set(means)
    for pos, i in recycled:
        torch.testing.assert_close(keep.tokens[0, pos], means[i], atol=1e-5, rtol=1e-5)
    for pos, i in enumerate(got):
        if i in kept:
            torch.testing.assert_close(keep.tokens[0, pos], x3[i])


def test_stage_counts_follow_the_schedule_and_rank_mode(deep_policy):
    obs = make_obs(seed=6)
    pruner = sv.SparseVLMPruner(sv.SparseVLMConfig(keep_ratio=0.3, layers=(2, 6, 12)))
    _, layout, out = forward(deep_policy, pruner, obs)
    info = finish(pruner, out)
    g = sv.schedule_factor([3, 7, 13], 16, 0.3)
    visual_in, after = 512, []
    for s, stage in enumerate(info["sparsevlm_stages"]):
        assert stage["visual_in"] == visual_in and stage["kept"] == min(round(g ** (s + 1) * 512), visual_in - 1)
        assert stage["recycled"] == sv.recycle_count(visual_in - stage["kept"])[1]
        visual_in = stage["kept"] + stage["recycled"]
        after.append(layout.length - 512 + visual_in)
    assert out.seq_lens == [layout.length] * 3 + [after[0]] * 4 + [after[1]] * 6 + [after[2]] * 3
    rank = sv.SparseVLMPruner(sv.SparseVLMConfig(layers=(2, 6, 12), count="rank", rank_scale=2.0))
    info = finish(rank, forward(deep_policy, rank, obs)[2])
    n_raters = info["sparsevlm_raters"][0]
    assert info["sparsevlm_stages"][0]["kept"] == 2 * n_raters  # random weights: P has full row rank
    assert info["keep_ratio"] is None and 0 < info["keep_ratio_achieved"] < 1


def test_adjacent_stages_and_original_positions_run(deep_policy):
    obs = make_obs(seed=7)
    pruner = sv.SparseVLMPruner(sv.SparseVLMConfig(keep_ratio=0.5, layers=(1, 2, 3), positions="original"))
    _, layout, out = forward(deep_policy, pruner, obs)
    info = finish(pruner, out)
    assert [st["layer"] for st in info["sparsevlm_stages"]] == [1, 2, 3] and len(out.keep_sets) == 3
    assert out.seq_lens[1] == layout.length and out.seq_lens[2] < out.seq_lens[1]
    with pytest.raises(ValueError, match="has layers 0..15"):
        forward(deep_policy, sv.SparseVLMPruner(sv.SparseVLMConfig(layers=(2, 6, 15))), obs)


def test_batch_rows_match_each_row_alone(deep_policy):
    singles = [deep_policy.inputs(make_obs(seed=8)) for _ in range(2)]
    batch = OFTInputs(torch.cat([i.pixels for i, _ in singles]), torch.cat([i.input_ids for i, _ in singles]),
                      torch.cat([i.proprio for i, _ in singles]))
    pruner = sv.SparseVLMPruner(sv.SparseVLMConfig(keep_ratio=0.4, layers=(2, 6, 12)))
    layout = singles[0][1]
    with torch.no_grad():
        both = deep_policy.model(batch, pruner, pruner.begin(Query(0, layout)))
        one = deep_policy.model(singles[0][0], pruner, pruner.begin(Query(0, layout)))
    assert torch.equal(both.keep_sets[0].visual_index[1], one.keep_sets[0].visual_index[0])
    torch.testing.assert_close(both.actions[1], one.actions[0], atol=1e-5, rtol=1e-5)


def test_policy_reports_original_indices_after_several_cuts(deep_policy):
    from vla_adp.policy import Policy, PolicyConfig
    from vla_adp.pruning.registry import build_pruner

    policy = Policy(deep_policy.ckpt, PolicyConfig(), build_pruner("sparsevlm", keep_ratio=0.3, layers=[2, 6, 12]))
    info = policy.infer(make_obs(seed=9))["info"]
    assert [len(ix) for ix in info["kept_indices"]] == info["kept_per_view"]
    assert all(0 <= i < 256 for ix in info["kept_indices"] for i in ix)  # camera-local, composed over 3 cuts
    assert info["flops"] == info["flops_llm"] + info["scoring_flops"] and info["scoring_flops"] > 0


def test_bench_scales_layer_tuples_to_a_shallower_decoder():
    from vla_adp.bench import latency as L

    assert L.depth_fields("sparsevlm", 8, {}) == {"layers": (0, 2, 4)}  # 2, 6, 15 of 32
    assert L.depth_fields("vla_cache", 8, {}) == {"reuse_layers": (1, 2, 3), "relevance_layer": 4}
    assert L.depth_fields("sparsevlm", 8, {"layers": [1, 3]}) == {}
    assert L.keep_free("vla_cache") and not L.keep_free("sparsevlm")


@pytest.mark.parametrize("bench,asset", [("metaworld_pruning", "metaworld_policy"), ("libero_pruning", "libero_policy")])
def test_closed_loop_benchmark_rows_run_on_their_policy(bench, asset):
    """The SparseVLM and VLA-Cache rows of the two closed-loop benchmarks fit their policy's depth."""
    import importlib
    import sys
    from pathlib import Path

    from vla_adp.policy import Policy, PolicyConfig
    from vla_adp.pruning.registry import build_pruner

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "benchmarks"))
    try:
        rows = [e for e in importlib.import_module(bench).entries()
                if e.config["pruner"] in ("sparsevlm", "vla_cache")]
    finally:
        sys.path.remove(str(root / "benchmarks"))
    assert {e.config["pruner"] for e in rows} == {"sparsevlm", "vla_cache"}
    base = Policy.load(root / "src" / "vla_adp" / "assets" / asset, dtype=torch.float32)
    obs = make_obs(seed=1, size=base.model.args.image_size, state_dim=base.platform.proprio_dim)
    for e in rows:
        cfg = dict(e.config)
        name, keep = cfg.pop("pruner"), cfg.pop("keep", None)
        policy = Policy(base.ckpt, PolicyConfig(), build_pruner(name, keep_ratio=keep, **cfg))
        info = [policy.infer(obs)["info"] for _ in range(2)][1]  # VLA-Cache reuses from the 2nd query
        assert info["pruned"] and info["seq_lens"][-1] < info["seq_len"], e.label
