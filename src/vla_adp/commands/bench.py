"""``vla-adp bench``: one honest clock for every pruner (docs/latency.md).

Per model × dtype, every configuration — unpruned, and each pruner at each keep ratio — runs
interleaved on the same random-weight model and the same synthetic query of the real LIBERO shape;
see :mod:`vla_adp.bench.latency` for the protocol and :mod:`vla_adp.bench.models` for the models.

    vla-adp bench --model tiny scaled --pruners all adp:scoring=folded --reps 20 --markdown
    vla-adp bench --load bench.json --logs runs/libero_adp.jsonl       # expected per-episode speedup
    vla-adp bench --predict --gpu h100-sxm h200 a100 rtx4090           # roofline floors, no measurement
    vla-adp bench --family pi05 --model scaled --pruners adp fastv vla_pruner --keep 0.5 0.25   # π0.5 rows
    python -m vla_adp.bench.gpu_latency --out DIR                        # the GPU protocol (docs/latency.md)
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from vla_adp.bench import latency as L
from vla_adp.bench.models import MODELS, PROMPT_TOKENS, build_model, synthetic_images, synthetic_inputs
from vla_adp.bench.report import between_runs, report
from vla_adp.families import DEFAULT_FAMILY, FAMILIES, PI0_FAMILIES
from vla_adp.seam.flops import SCORING_METHODS
from vla_adp.utils.files import read_json
from vla_adp.utils.machine import DTYPES


def add_arguments(p) -> None:
    p.add_argument("--model", nargs="+", choices=MODELS, default=["scaled"],
                   help="tiny (test shapes), scaled (7B ÷ 4 in width and depth; CPU), 7b (GPU only)")
    p.add_argument("--family", nargs="+", choices=sorted(FAMILIES), default=[DEFAULT_FAMILY],
                   help="model families to time (default oft); openvla: one image, the prefill pruned, 7 action "
                        "tokens decoded after it (layer-0 Φ, CUDA graphs: oft only); pi05: π0.5 rows on a CPU-scaled "
                        "π0.5 (vla_adp.bench.pi0; models tiny, scaled), alone in its call")
    p.add_argument("--dtype", nargs="+", choices=("fp32", "bf16"), default=None,
                   help="default: fp32 and bf16 on the CPU, bf16 on a GPU")
    p.add_argument("--keep", nargs="+", type=float, default=[0.3, 0.5, 0.7], help="keep ratios (matched across pruners)")
    p.add_argument("--pruners", nargs="+", default=None,
                   help="pruner specs, name or name:field=value,...; 'all' = every registered pruner (default)")
    p.add_argument("--reps", type=int, default=20, help="measured rounds (each runs every configuration once)")
    p.add_argument("--warmup", type=int, default=3, help="rounds run first and dropped (VLA-Pruner needs history)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (CPU protocol: 1)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--clock", choices=tuple(L.CLOCKS), default="wall",
                   help="wall (latency; default) or thread (CPU time of the one torch thread: steadier on a shared CPU)")
    p.add_argument("--prompt-tokens", type=int, default=PROMPT_TOKENS, help="prompt length incl. '▁' (32: 603 tokens)")
    p.add_argument("--scoring", nargs="*", choices=SCORING_METHODS, default=list(SCORING_METHODS),
                   help="stand-alone layer-0 Φ methods to time")
    p.add_argument("--no-memory", action="store_true", help="skip the per-configuration peak-memory probes")
    p.add_argument("--cuda-graphs", action="store_true", help="also time each decoder shape as a CUDA graph (GPU)")
    p.add_argument("--json", default=None, help="write the full result (incl. raw per-round samples) here")
    p.add_argument("--markdown", action="store_true", help="print the full markdown report (default: side-by-side only)")
    p.add_argument("--load", nargs="+", default=None,
                   help="read --json result(s) instead of measuring; several: also a between-runs table")
    p.add_argument("--logs", nargs="+", default=None, help="closed-loop JSONL logs: expected per-episode speedups")
    p.add_argument("--predict", action="store_true",
                   help="print roofline floors per stage (bytes and FLOPs vs a GPU's datasheet peaks) and stop")
    p.add_argument("--gpu", nargs="+", default=["h100-sxm"], help="--predict: GPUs (h100-sxm, h100-pcie, h200, a100, rtx4090)")
    p.add_argument("--shape", nargs="+", default=["oft", "openvla"], help="--predict: query shapes (oft, openvla)")
    p.add_argument("--derate", type=float, default=1.0,
                   help="--predict: share of the FLOP peak kernels reach (1 = datasheet; ~0.8 is what GEMMs measure)")


def _check(args) -> None:
    if args.reps < 1 or args.warmup < 0 or args.threads < 1:
        raise ValueError(f"need --reps >= 1, --warmup >= 0, --threads >= 1; got {args.reps}, {args.warmup}, {args.threads}")
    if args.cuda_graphs and not args.device.startswith("cuda"):
        raise ValueError("--cuda-graphs replays decoder shapes on a GPU; it needs --device cuda")
    if args.cuda_graphs and args.family != [DEFAULT_FAMILY]:
        raise ValueError(f"--cuda-graphs replays OpenVLA-OFT's decoder only; got --family {' '.join(args.family)}")
    if args.clock == "thread" and args.threads != 1:
        raise ValueError(f"--clock thread counts one thread's CPU time; it needs --threads 1, got {args.threads}")
    bad = [k for k in args.keep if not 0.0 < k <= 1.0]
    if bad:
        raise ValueError(f"keep ratios must be in (0, 1], got {bad}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device} asked for, but torch sees no CUDA device")
    from vla_adp.pruning.registry import PRUNERS

    unknown = [s for s in args.pruners or [] if s != "all" and L.parse_spec(s)[0] not in PRUNERS]
    if unknown:
        raise ValueError(f"unknown pruner(s) {unknown}; registered: {sorted(PRUNERS)}")


def pruner_specs(args) -> list[str]:
    """The specs to measure, ``all`` expanded to every registered pruner (duplicates dropped)."""
    from vla_adp.pruning.registry import PRUNERS

    specs = [x for s in args.pruners or ["all"] for x in (PRUNERS if s == "all" else [s])]
    return list(dict.fromkeys(specs))


def measure_run(model_name: str, dtype: str, args, log=print, family: str = DEFAULT_FAMILY) -> dict[str, Any]:
    """Every configuration of one model × dtype × family, interleaved; summaries, speedups, memory.

    Layer-0 Φ alone is timed on OFT runs only (the same scorer on the same decoder layer).
    """
    device = torch.device(args.device)
    model = build_model(model_name, DTYPES[dtype], str(device), family=family)
    inputs = synthetic_inputs(model.args, str(device), args.prompt_tokens)
    runner = L.QueryRunner(model, inputs, synthetic_images(model.args), args.clock)
    cases = L.build_cases(pruner_specs(args), args.keep, model.args.llm.n_layers, family)
    L.probe_cases(cases, runner)
    scoring = args.scoring if family == DEFAULT_FAMILY else []
    tasks = {c.label: (lambda c=c: runner.query(c.pruner)) for c in cases if not c.error}
    tasks |= {f"phi:{m}": (lambda m=m: runner.scoring(m)) for m in scoring}
    log(f"[bench] {model_name} {family} {dtype} {device}: {len(tasks)} tasks × ({args.warmup} + {args.reps}) rounds")
    samples = L.interleave(tasks, args.reps, args.warmup, lambda r, n: log(f"[bench]   round {r}/{n}"))
    results = [L.case_result(c, samples.get(c.label, []), model.args.llm.shape) for c in cases]
    run = _run_header(model_name, dtype, device, model, runner, args) | {"family": family}
    run["cases"] = _with_speedups(results)
    run["scoring"] = _scoring(samples, results[0], scoring, model.args.llm, runner.layout)
    if not args.no_memory:
        _add_memory(run, model_name, dtype, cases, runner, args, log)
    if args.cuda_graphs:
        from vla_adp.bench.cuda_graphs import graphed_decoder_ms

        run["graphs"] = {c["label"]: asdict(graphed_decoder_ms(model.language_model, c["seq_lens"]))
                         for c in run["cases"] if not c.get("error")}
    return run


def _run_header(model_name, dtype, device, model, runner, args) -> dict[str, Any]:
    a, llm = model.args, model.args.llm
    shape = (f"decoder D={llm.dim} M={llm.ffn_dim} ({llm.ffn_dim / llm.dim:.2f}·D) {llm.n_layers} layers × "
             f"{llm.n_heads} heads of {llm.head_dim}; towers " +
             ", ".join(f"{_family(t.timm_id)} {t.width}×{t.depth}" for t in a.towers))
    return {"model": model_name, "dtype": dtype, "device": str(device), "threads": torch.get_num_threads(), "clock": args.clock,
            "reps": args.reps, "warmup": args.warmup, "seq_len": runner.layout.length,
            "n_visual": runner.layout.n_visual, "shape": shape}


def _family(timm_id: str) -> str:
    return next((f for f in ("dinov2", "siglip") if f in timm_id), timm_id)


def _with_speedups(results: list[L.CaseResult]) -> list[dict[str, Any]]:
    base = results[0]
    out = []
    for r in results:
        d = asdict(r)
        d["speedup"] = L.speedups(base, r) if r is not base and not r.error else None
        out.append(d)
    return out


def _scoring(samples: dict, base: L.CaseResult, methods, llm_args, layout) -> dict[str, Any]:
    """Φ alone per method: measured share of the unpruned query and LLM, next to its FLOPs share."""
    from vla_adp.seam.flops import scoring_flops

    out = {}
    for m in methods:
        s = asdict(L.summarize([x["phi"] for x in samples[f"phi:{m}"]]))
        s["pct_of_unpruned_e2e"] = 100 * s["median"] / base.stages["e2e"].median
        s["pct_of_unpruned_llm"] = 100 * s["median"] / base.stages["llm"].median
        s["flops"] = scoring_flops(llm_args, len(layout.text_positions()), layout.n_visual, m)
        s["flops_pct_of_unpruned_llm"] = 100 * s["flops"] / base.flops["consistent"]
        out[m] = s
    return out


def _add_memory(run, model_name, dtype, cases, runner, args, log) -> None:
    from vla_adp.bench.memory import cpu_query_memory, cuda_query_memory

    for case, row in zip(cases, run["cases"]):
        if case.error:
            continue
        if run["device"].startswith("cuda"):
            row["memory"] = cuda_query_memory(lambda: runner.query(case.pruner))
            continue
        log(f"[bench]   memory probe {case.label}")
        spec = {"model": model_name, "family": run["family"], "dtype": dtype, "seed": 0,
                "n_prompt": args.prompt_tokens,
                "threads": args.threads, "pruner": case.spec,
                "keep": case.keep, "queries": args.warmup + 1}
        row["memory"] = cpu_query_memory(spec)


def machine(load_before) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                   if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if torch.cuda.is_available():
        cpu += f" + {torch.cuda.get_device_name()}"
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "load_before": load_before, "load_after": _load()}


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(args) -> int:
    if args.predict:
        from vla_adp.bench.gpu_report import prediction_report

        if not 0.0 < args.derate <= 1.0:
            raise ValueError(f"--derate must be in (0, 1], got {args.derate!r}")
        bad = [k for k in args.keep if not 0.0 < k <= 1.0]
        if bad:
            raise ValueError(f"keep ratios must be in (0, 1], got {bad}")
        print(prediction_report(args.gpu, args.shape, args.keep, args.prompt_tokens, args.derate))
        return 0
    if set(args.family) & set(PI0_FAMILIES):  # timed by vla_adp.bench.pi0's harness
        return _run_pi0(args)
    if args.load and args.json and len(args.load) > 1:
        raise ValueError("--json writes one result; give it one --load file, not several")
    results = [_read(p) for p in args.load] if args.load else [_measure(args)]
    for result in results:
        if args.logs:
            result["expected"] = _expected(result, args.logs)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(result, indent=1))
        print(report(result) if args.markdown else _short(result))
    if len(results) > 1:
        print("\n".join(["### Between runs", "", *between_runs(results, args.load)]))
    return 0


def _run_pi0(args) -> int:
    """π0.5 rows (:mod:`vla_adp.bench.pi0`): every model × dtype, each pruner spec at each keep ratio."""
    from vla_adp.bench.pi0 import PI0_MODELS, measure_pi0, pi0_table

    if args.family != ["pi05"]:
        others = [f for f in args.family if f != "pi05"]
        raise ValueError(f"--family pi05 is timed by its own harness (vla_adp.bench.pi0), alone in a call: "
                         f"drop {others} (π0 rows are not benchmarked; its FLOPs: vla-adp flops --family pi0)"
                         if "pi05" in args.family else
                         f"--family {' '.join(args.family)}: bench times π0.5 only among the flow-matching "
                         "families (--family pi05); π0's FLOPs: vla-adp flops --family pi0")
    if args.load or args.logs or args.predict or args.cuda_graphs:
        raise ValueError("--family pi05 measures only: --load, --logs, --predict and --cuda-graphs are OpenVLA-OFT's")
    bad = [m for m in args.model if m not in PI0_MODELS]
    if bad:
        raise ValueError(f"--family pi05 runs the models {PI0_MODELS}, got {bad} (the published shape's FLOPs: "
                         "vla-adp flops --family pi05)")
    if args.reps < 1 or args.warmup < 0 or args.threads < 1 or not all(0.0 < k <= 1.0 for k in args.keep):
        raise ValueError(f"need --reps >= 1, --warmup >= 0, --threads >= 1, keep ratios in (0, 1]; got {args.reps}, "
                         f"{args.warmup}, {args.threads}, {args.keep}")
    torch.set_num_threads(args.threads)
    load_before = _load()
    specs = [s for s in (args.pruners or ["adp", "fastv", "vla_pruner", "random"]) if s != "all"]
    dtypes = args.dtype or (["bf16"] if args.device.startswith("cuda") else ["fp32"])
    prompt = None if args.prompt_tokens == PROMPT_TOKENS else args.prompt_tokens  # None: the π0.5 default
    runs = [measure_pi0(m, DTYPES[d], specs, args.keep, args.reps, args.warmup, prompt, args.clock, args.device, _log)
            for m in args.model for d in dtypes]
    result = {"command": "vla-adp bench " + " ".join(shlex.quote(a) for a in sys.argv[2:]),
              "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
              "machine": machine(load_before), "runs": runs}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    print("\n\n".join(pi0_table(r) for r in runs))
    return 0


def _read(path: str) -> dict[str, Any]:
    result = read_json(path, "bench result", expect=None)
    if not isinstance(result, dict) or "runs" not in result:
        raise ValueError(f"{path}: not a vla-adp bench JSON result (no 'runs')")
    return result


def _measure(args) -> dict[str, Any]:
    _check(args)
    torch.set_num_threads(args.threads)
    load_before = _load()
    dtypes = args.dtype or (["bf16"] if args.device.startswith("cuda") else ["fp32", "bf16"])
    runs = [measure_run(m, d, args, _log, f) for f in args.family for m in args.model for d in dtypes]
    return {"command": "vla-adp bench " + " ".join(shlex.quote(a) for a in sys.argv[2:]),
            "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": machine(load_before), "runs": runs}


def _expected(result: dict, logs: list[str]) -> list[dict[str, Any]]:
    from vla_adp.bench.expected import expected_rows, read_query_records
    from vla_adp.bench.report import run_label

    out = []
    for log in logs:
        records = read_query_records(log)
        for run in result["runs"]:
            label = run_label(run)
            out.append({"log": log, "run": label, "rows": expected_rows(run, records)})
    return out


def _short(result: dict) -> str:
    from vla_adp.bench.report import criteria, expected_table, run_label, side_by_side

    lines = []
    for run in result["runs"]:
        lines += [f"{run_label(run)}: {run['seq_len']} tokens", *side_by_side(run),
                  *criteria(run), ""]
    for exp in result.get("expected", []):
        lines += [f"expected per-episode speedup: {exp['log']} on {exp['run']}", *expected_table(exp["rows"]), ""]
    return "\n".join(lines)
