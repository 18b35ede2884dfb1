"""The latency benchmark harness: it runs on the tiny model and its numbers are sane.

No timing assertions (speed targets live in benchmarks/RESULTS.md): only that every stage is timed,
pruned queries are shorter, the FLOPs prediction is the flops module's for the same lengths, the
statistics are right on constructed data, and bad input gives a clear error.
"""

import json

import numpy as np
import pytest
import torch

from vla_adp.cli import main
from vla_adp.bench import latency as L
from vla_adp.bench.cuda_graphs import _segments, graphed_decoder_ms
from vla_adp.bench.expected import expected_rows, gamma_by_config, read_query_records
from vla_adp.seam.flops import llm_flops
from vla_adp.eval.schema import QueryRecord
from vla_adp.seam.budget import keep_count


# -- pure helpers ------------------------------------------------------------------------------
def test_summary_matches_numpy_percentiles():
    x = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0]
    s = L.summarize(x)
    assert (s.n, s.min, s.max) == (6, 1.0, 10.0)
    assert s.median == pytest.approx(np.median(x))
    assert (s.p10, s.p90) == pytest.approx(tuple(np.percentile(x, [10, 90])))
    assert s.spread == pytest.approx((s.p90 - s.p10) / s.median)
    with pytest.raises(ValueError, match="empty"):
        L.summarize([])


def test_paired_ratios_and_expected_speedup():
    assert L.paired_ratios([4.0, 6.0], [2.0, 2.0]) == [2.0, 3.0]
    with pytest.raises(ValueError, match="equal rounds"):
        L.paired_ratios([1.0], [1.0, 2.0])
    assert L.expected_speedup(10.0, 5.0, 0.0) == 1.0
    assert L.expected_speedup(10.0, 5.0, 1.0) == 2.0
    assert L.expected_speedup(10.0, 5.0, 0.5) == pytest.approx(10.0 / 7.5)
    assert L.expected_speedup(10.0, 5.0, 0.5, t_gate=1.0) == pytest.approx(10.0 / 8.0)  # unpruned pay the gate
    with pytest.raises(ValueError, match="gamma"):
        L.expected_speedup(10.0, 5.0, 1.5)


def test_interleave_rotates_order_and_drops_warmup():
    calls = []
    tasks = {n: (lambda n=n: calls.append(n) or len(calls)) for n in "abc"}
    kept = L.interleave(tasks, reps=2, warmup=1)
    assert calls == list("abc" "bca" "cab")
    assert kept == {"a": [6, 8], "b": [4, 9], "c": [5, 7]}  # rounds bca, cab (warm-up abc dropped)


def test_segments_of_a_length_profile():
    assert _segments([603] * 3) == [(0, 3, 603)]
    assert _segments([603, 603, 245, 245]) == [(0, 2, 603), (2, 4, 245)]


def test_gpu_paths_refuse_a_cpu_model(tiny_runner):
    """The CUDA-graph and CUDA-event paths cannot run here (no GPU); they must refuse, not fall back."""
    with pytest.raises(ValueError, match="CUDA"):
        graphed_decoder_ms(tiny_runner.model.language_model, [603, 603])
    with pytest.raises(ValueError, match="clock"):
        L.make_timer(torch.device("cpu"), "cycles")


def test_pruner_spec_parsing():
    assert L.parse_spec("adp") == ("adp", {})
    assert L.parse_spec("adp:scoring=folded,layer=2") == ("adp", {"scoring": "folded", "layer": 2})
    with pytest.raises(ValueError, match="field=value"):
        L.parse_spec("adp:scoring")


# -- the harness on the tiny model -------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    rc = main(["bench", "--model", "tiny", "--dtype", "fp32", "--keep", "0.3", "0.7", "--pruners", "adp",
               "adp:scoring=folded", "fastv", "--reps", "2", "--warmup", "1", "--no-memory", "--json", str(out),
               "--markdown"])
    assert rc == 0
    return json.loads(out.read_text())


def test_every_stage_is_timed_and_positive(tiny_run):
    (run,) = tiny_run["runs"]
    assert run["seq_len"] == 603 and run["n_visual"] == 512  # the real LIBERO token counts
    for case in run["cases"]:
        assert case["error"] is None, case
        st = case["stages"]
        for stage in ("transforms", "vision", "projector", "llm", "head", "e2e"):
            assert st[stage]["n"] == 2 and st[stage]["median"] > 0, (case["label"], stage)
        assert st["e2e"]["median"] >= st["llm"]["median"] + st["vision"]["median"]
        if case["pruner"]:
            assert st["prune"]["median"] > 0 and st["gather"]["median"] > 0 and case["pruned_share"] == 1.0


def test_pruned_queries_are_shorter_and_predicted_speedup_is_the_flops_modules(tiny_run):
    from vla_adp.bench.models import model_args

    (run,) = tiny_run["runs"]
    cases = {c["label"]: c for c in run["cases"]}
    base = cases["none"]
    llm = model_args("tiny").llm
    for keep in (0.3, 0.7):
        k = keep_count(512, keep, "round")
        assert cases[f"adp@{keep:g}"]["seq_lens"] == [603 - 512 + k] * 2  # ADP cuts before layer 0
        assert cases[f"fastv:layer=1@{keep:g}"]["seq_lens"] == [603, 603 - 512 + k]  # FastV after layer 0 (K scaled)
    for label, case in cases.items():
        if label == "none":
            continue
        assert case["kept_visual"]["median"] < 512 and case["seq_lens"][-1] < 603
        predicted = llm_flops(llm, [603] * 2, "consistent") / llm_flops(llm, case["seq_lens"], "consistent")
        assert case["speedup"]["predicted_consistent"] == pytest.approx(predicted) and predicted > 1.0
        assert case["flops"]["paper"] < base["flops"]["paper"]
        measured = base["stages"]["llm"]["median"] / case["stages"]["llm"]["median"]
        assert case["speedup"]["llm"] == pytest.approx(measured)


def test_scoring_rows_and_criteria_are_reported(tiny_run, capsys):
    (run,) = tiny_run["runs"]
    assert set(run["scoring"]) == {"fused", "exact", "folded"}
    for s in run["scoring"].values():
        assert s["median"] > 0 and s["pct_of_unpruned_e2e"] < s["pct_of_unpruned_llm"]
    from vla_adp.bench.report import report

    text = report(tiny_run)
    assert "adp:scoring=folded@0.3" in text and "realises" in text and "Φ `fused`" in text


def test_loading_several_results_adds_a_between_runs_table(tiny_run, tmp_path, capsys):
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"r{i}.json")
        paths[-1].write_text(json.dumps(tiny_run))
    assert main(["bench", "--load", *map(str, paths)]) == 0
    out = capsys.readouterr().out
    assert "### Between runs" in out and out.count("adp@0.3 ") >= 2
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert main(["bench", "--load", str(tmp_path / "bad.json")]) == 2
    assert "no 'runs'" in capsys.readouterr().err


def test_memory_probe_measures_a_query_in_a_fresh_process():
    from vla_adp.bench.memory import cpu_query_memory

    spec = {"model": "tiny", "dtype": "fp32", "seed": 0, "n_prompt": 32, "threads": 1, "pruner": None,
            "keep": None, "queries": 1}
    mem = cpu_query_memory(spec)
    assert "error" not in mem, mem
    assert 0 < mem["query_mib"] <= mem["peak_rss_mib"]


def test_expected_speedup_from_logs(tiny_run, tmp_path):
    (run,) = tiny_run["runs"]
    log = tmp_path / "run.jsonl"
    recs = [QueryRecord("h1", "libero_spatial", 0, "t", 0, q, 8 * q, "adp", q % 2 == 0, q % 2, None,
                        154 if q % 2 == 0 else 512, 512, [], 603, 245, 0.0, {}) for q in range(4)]
    log.write_text("\n".join(json.dumps(r.to_dict()) for r in recs) + "\n" + json.dumps({"kind": "episode"}) + "\n")
    records = read_query_records(log)
    (g,) = gamma_by_config(records)
    assert g["gamma"] == 0.5 and g["keep"] == pytest.approx(154 / 512)
    (row,) = expected_rows(run, records)
    base = next(c for c in run["cases"] if c["label"] == "none")["stages"]
    case = next(c for c in run["cases"] if c["label"] == "adp@0.3")["stages"]
    assert row["bench_case"] == "adp@0.3"  # the plain pruner, not the adp:scoring=folded variant
    # Half the queries at the pruned latency, half unpruned but paying the gate.
    mean = 0.5 * case["e2e"]["median"] + 0.5 * (base["e2e"]["median"] + case["gate"]["median"])
    assert row["expected_e2e_speedup"] == pytest.approx(base["e2e"]["median"] / mean)
    log.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"run.jsonl:1"):
        read_query_records(log)


@pytest.mark.parametrize("argv, message", [
    (["--keep", "1.5"], "keep ratios"),
    (["--pruners", "nope"], "unknown pruner"),
    (["--model", "7b"], "GPU only"),
    (["--load", "/nonexistent/bench.json"], "not found"),
    (["--load", "a.json", "b.json", "--json", "c.json"], "one --load file"),
    (["--cuda-graphs"], "needs --device cuda"),
    (["--clock", "thread", "--threads", "2"], "needs --threads 1"),
])
def test_bad_input_is_a_clear_error(argv, message, capsys):
    rc = main(["bench", "--model", "tiny", "--reps", "1", "--warmup", "0", "--no-memory", "--scoring", *argv])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_unavailable_pruner_is_reported_not_raised(monkeypatch):
    from vla_adp.pruning import registry

    monkeypatch.setitem(registry.PRUNERS, "missing", "no_such_module")
    case = L.build_case("missing", 0.5)
    assert case.pruner is None and "ModuleNotFoundError" in case.error
    assert L.case_result(case, [], None).error == case.error


def test_layer_indices_scale_to_the_benchmark_depth_and_gated_pruners_always_prune():
    assert L.depth_fields("fastv", 8, {}) == {"layer": 1}
    assert L.depth_fields("vla_pruner", 8, {}) == {"fastv_k": 1, "action_layer": 4}  # 3 and 15 of 32
    assert L.depth_fields("vla_pruner", 8, {"fastv_k": 2}) == {"action_layer": 4}  # the user's value wins
    assert L.depth_fields("fastv", 32, {}) == {}
    assert L.keep_free("lightvla") and not L.keep_free("adp")
    cases = L.build_cases(["lightvla", "fastv"], [0.3, 0.5], n_layers=8)
    assert [c.label for c in cases] == ["none", "lightvla", "fastv:layer=1@0.3", "fastv:layer=1@0.5"]
    for name in ("adp", "random", "inverse"):
        assert L.build_case(name, 0.3).pruner.config.gate.schedule == "static"


@pytest.fixture(scope="module")
def tiny_runner():
    from vla_adp.bench.models import build_model, synthetic_images, synthetic_inputs

    torch.manual_seed(0)
    model = build_model("tiny", torch.float32)
    return L.QueryRunner(model, synthetic_inputs(model.args, n_prompt=5), synthetic_images(model.args, size=224))


def test_a_case_that_fails_at_run_time_is_reported_not_fatal(tiny_runner):
    cases = [L.build_case(None), L.build_case("fastv:layer=2", 0.5)]  # the tiny decoder has layers 0..1
    L.probe_cases(cases, tiny_runner)
    assert cases[0].error is None
    assert "layer" in cases[1].error and cases[1].label == "fastv:layer=2@0.5"


def test_query_runner_on_a_real_pruner_records_kept_tokens(tiny_runner):
    runner, model = tiny_runner, tiny_runner.model
    case = L.build_case("adp", 0.5)
    sample = runner.query(case.pruner)
    assert sample.pruned and sample.kept_visual == 256
    assert sample.seq_lens == [1 + 256 + 1 + 5 + 56 + 1] * model.args.llm.n_layers
    assert set(L.STAGES) <= set(sample.ms) and sample.ms["e2e"] > 0


def test_openvla_rows_time_the_prefill_and_the_decoding(tmp_path, capsys):
    """``--family openvla``: one image (256 visual tokens, 289 prefill tokens), the family's pruner variants,
    the decoding as its own stage; a method the family refuses is a row with the reason."""
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", "tiny", "--family", "openvla", "--dtype", "fp32", "--keep", "0.5", "--pruners",
                 "adp", "vla_pruner", "lightvla", "--reps", "1", "--warmup", "3", "--no-memory", "--json", str(out),
                 "--markdown"]) == 0
    (run,) = json.loads(out.read_text())["runs"]
    assert (run["family"], run["seq_len"], run["n_visual"], run["scoring"]) == ("openvla", 289, 256, {})
    rows = {c["pruner"]: c for c in run["cases"]}
    assert rows["adp"]["kept_visual"]["median"] == 128 and rows["adp"]["seq_lens"][-1] == 161
    assert rows["vla_pruner"]["label"] == "vla_pruner:layer=1,action_layer=1@0.5"  # the OpenVLA variant's fields
    assert rows["vla_pruner"]["pruned_share"] == 1.0  # the 3 warm-up rounds filled its history
    assert "does not run on OpenVLA" in rows["lightvla"]["error"]
    for c in (rows[None], rows["adp"]):
        assert c["stages"]["decode"]["median"] > 0 and c["stages"]["head"]["median"] == 0
    text = capsys.readouterr().out
    assert "### tiny · openvla · fp32 · cpu" in text
    assert "| decode |" in text and "| head |" not in text
