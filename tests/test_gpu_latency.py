"""The GPU latency protocol on the CPU: the executor hook on the real Policy.infer path, and
the benchmark script's dry run, so that neither rots between GPU runs.

CUDA graphs cannot be captured here: :class:`RerunCapture` stands in for the capture (the graph
bookkeeping — keys per kept length, static buffers, copies, buckets — is the code under test);
``CudaGraphCapture`` and the CUDA-event clock are only import-checked.
"""

import json

import numpy as np
import pytest
import torch

from vla_adp.bench import gpu_latency as G
from vla_adp.model.executor import CudaGraphCapture, Executor, RerunCapture, pad_sequence
from vla_adp.policy import Policy, Session
from vla_adp.pruning.registry import build_pruner

STATIC = {"gate": {"schedule": "static", "limit_consecutive": False}}


@pytest.fixture(scope="module")
def policy(tiny_ckpt):
    return Policy.load(tiny_ckpt, dtype=torch.float32)


def _obs(policy, seed=0):
    rng = np.random.default_rng(seed)
    size = policy.model.args.image_size
    return {"full_image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            "wrist_image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            "state": np.zeros(8), "instruction": "open the drawer"}


def _actions(policy, pruner, executor, obs):
    policy.set_executor(executor)
    try:
        return policy.infer(obs, Session(pruner))
    finally:
        policy.set_executor(None)


@pytest.mark.parametrize("spec, fields", [(None, {}), ("adp", STATIC), ("fastv", {"layer": 1}), ("lightvla", {})])
def test_graph_executor_matches_eager_on_policy_infer(policy, spec, fields):
    obs = _obs(policy)
    make = (lambda: None) if spec is None else (lambda: build_pruner(spec, keep_ratio=None if spec == "lightvla" else 0.3, **fields))
    eager = _actions(policy, make(), Executor(), obs)
    ex = Executor(graphs=True, capture=RerunCapture())
    first = _actions(policy, make(), ex, obs)
    captures = ex.stats["captures"]
    again = _actions(policy, make(), ex, obs)  # same shapes: replayed, nothing new captured
    assert captures >= 4 and ex.stats["captures"] == captures and ex.stats["replays"] == captures
    for out in (first, again):
        np.testing.assert_allclose(out["actions"], eager["actions"], rtol=1e-5, atol=1e-6)
        assert out["info"]["seq_lens"] == eager["info"]["seq_lens"]


def test_each_kept_length_gets_its_own_graph_and_buckets_share_one(policy):
    obs = _obs(policy)
    exact, bucketed = Executor(graphs=True, capture=RerunCapture()), Executor(graphs=True, bucket=128, capture=RerunCapture())
    outs = {}
    for keep in (0.3, 0.31):  # 154 and 159 kept: two decoder lengths
        eager = _actions(policy, build_pruner("adp", keep_ratio=keep, **STATIC), Executor(), obs)
        for ex in (exact, bucketed):
            out = _actions(policy, build_pruner("adp", keep_ratio=keep, **STATIC), ex, obs)
            np.testing.assert_allclose(out["actions"], eager["actions"], rtol=1e-4, atol=1e-5)
            outs[keep] = out
    llm_keys = lambda ex: {k for k in ex._graphs if k[0][0] == "llm"}  # noqa: E731
    assert len(llm_keys(exact)) == 2 and len(llm_keys(bucketed)) == 1  # 245 and 250 tokens both pad to 256


def test_executor_limits_and_refusals(policy):
    obs = _obs(policy)
    ex = Executor(graphs=True, max_graphs=0, capture=RerunCapture())
    _actions(policy, None, ex, obs)
    assert ex.stats["captures"] == 0 and ex.stats["uncaptured"] >= 4
    with pytest.raises(ValueError, match="CUDA graphs need the model on a CUDA device"):
        _actions(policy, None, Executor(graphs=True), obs)
    with pytest.raises(ValueError, match="bucket"):
        Executor(bucket=0)
    assert (Executor().name, Executor(graphs=True).name, Executor(compile=True, graphs=True).name) == \
        ("eager", "graphs", "compile+graphs")
    assert callable(CudaGraphCapture(warmup=1))  # the CUDA-only capture: constructed, not run here


def test_a_block_that_cannot_be_captured_runs_eagerly_and_says_why(policy):
    obs = _obs(policy)

    def capture(fn, static):
        if fn is policy.model.vision_backbone:
            raise RuntimeError("operation not permitted when stream is capturing")
        return RerunCapture()(fn, static)

    ex = Executor(graphs=True, capture=capture)
    out = _actions(policy, None, ex, obs)
    np.testing.assert_allclose(out["actions"], _actions(policy, None, Executor(), obs)["actions"], rtol=1e-5, atol=1e-6)
    (key, err), = ex.failures.items()
    assert key[0] == "vision" and "stream is capturing" in err
    _actions(policy, None, ex, obs)  # not tried again
    assert ex.stats["uncaptured"] == 2 and len(ex.failures) == 1


def test_padding_hides_the_pads():
    x, pos = torch.randn(1, 5, 8), torch.arange(5)[None]
    px, ppos, mask = pad_sequence(x, pos, None, 8)
    assert px.shape == (1, 8, 8) and mask.tolist() == [[True] * 5 + [False] * 3]
    assert torch.equal(px[:, :5], x) and ppos[0, 5:].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="cannot pad"):
        pad_sequence(x, pos, None, 4)


def test_gate_trace_stream_drives_the_action_aware_gate(policy):
    trace = json.loads(open(G.TRACE).read())
    assert trace["expert_success"] and trace["steps"] >= 64
    stream = G.Stream([_obs(policy)["full_image"]] * 2, "open the drawer", 8, trace["positions"])
    session = Session(build_pruner("adp", keep_ratio=0.3))  # the default, dynamic gate
    pruned = [policy.infer(stream.next(policy, session), session)["info"]["pruned"] for _ in range(14)]
    assert stream.episodes == 1  # the 93-step trace gives 12 queries, then the episode starts over
    assert not any(pruned[:3]) and 0 < sum(pruned) < len(pruned)  # cold start, then the gate decides


def test_dry_run_of_the_gpu_script(tmp_path):
    """``python -m vla_adp.bench.gpu_latency --dry-run``: every section on tiny shapes, JSON + markdown."""
    assert G.main(["--dry-run", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "latency.json").read_text())
    rows = result["main"]["rows"]
    labels = {r["config"] for r in rows}
    assert {"none", "adp@0.3", "adp@0.3 gate-trace", "random@0.3", "inverse@0.3", "lightvla"} <= labels
    assert any(lab.startswith("fastv") for lab in labels) and any(lab.startswith("vla_pruner") for lab in labels)
    for r in rows:
        assert r["error"] is None, r
        assert r["stages"]["e2e"]["n"] == 2 and r["stages"]["e2e"]["median"] > 0
        assert r["floor_ms"]["model"] > 0 and r["floor_ms"]["llm"] > 0
        if r["config"] == "adp@0.3":
            assert r["pruned_share"] == 1.0 and r["seq_lens"] == [603 - 512 + 154] * 2
    assert {r["executor"] for r in rows} == {"eager", "graphs"}
    assert result["main"]["executor_stats"]["graphs"]["replays"] > 0
    assert {r["variant"] for r in result["backends"]["rows"]} == {"sdpa", "math", "eager"}
    assert all(r["error"] is None for r in result["backends"]["rows"])
    assert [r["variant"] for r in result["compile"]["rows"]] == ["compile", "compile"]
    assert result["shape"]["seq_len"] == 603 and result["total_s"] > 0
    md = (tmp_path / "latency.md").read_text()
    assert "**End to end**" in md and "**Targets**" in md and "memory-bound below ρ" in md
    assert G.main(["--dry-run", "--out", str(tmp_path), "--gpu", "v100"]) == 2
