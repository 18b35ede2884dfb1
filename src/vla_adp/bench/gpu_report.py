"""Markdown of a GPU latency run (:mod:`vla_adp.bench.gpu_latency`; pure: JSON dict in, text out).

Tables: end to end per configuration and executor next to the roofline floor; per stage against its
floor; attention backends; ``torch.compile``; peak memory; then the targets of docs/latency.md on this run.
"""

from __future__ import annotations

from typing import Any

from vla_adp.bench.report import _table

FLOOR_TARGET = 1.3  # unpruned model stages within 1.3× of their roofline floor
SPEEDUP_TARGET = 1.8  # ADP ρ = 0.3 (pruned query) end to end
OVERHEAD_TARGET_PCT = 1.0  # gate + scoring + gather, % of the pruned query
STAGE_ORDER = ("transforms", "gate", "vision", "projector", "prune", "gather", "llm", "head")


def _ms(s: dict | None) -> str:
    return "–" if not s else f"{s['median']:.2f} ({s['p90']:.2f})"


def _base(rows: list[dict], executor: str) -> dict | None:
    return next((r for r in rows if r["config"] == "none" and r.get("executor") == executor and not r.get("error")),
                None)


def main_rows(result: dict[str, Any]) -> list[str]:
    """One row per configuration × executor: e2e, model stages, floor, speedups, overhead."""
    rows = result["main"]["rows"]
    out = []
    for r in rows:
        if r.get("error"):
            out.append([r["config"], r["executor"], f"unavailable: {r['error'][:80]}"] + ["–"] * 9)
            continue
        base = _base(rows, r["executor"])
        st, floor = r["stages"], r.get("floor_ms", {})
        e2e_key = "mean_ms" if r.get("gated") else None
        e2e = r["mean_ms"]["e2e"] if e2e_key else st["e2e"]["median"]
        b_e2e = base["stages"]["e2e"]["median"] if base else float("nan")
        over = st["overhead"]["median"]
        kept = r["kept_visual"]
        kept_s = f"{kept['median']:.0f}" if kept["min"] == kept["max"] else f"{kept['median']:.0f} [{kept['min']:.0f}–{kept['max']:.0f}]"
        gated = f" (γ = {r['pruned_share']:.2f}, mean)" if r.get("gated") else ""
        model = st["model"]["median"]
        out.append([r["config"] + gated, r["executor"], kept_s, str(r["seq_lens"][-1]),
                    f"{e2e:.2f}" if gated else _ms(st["e2e"]), _ms(st["model"]),
                    f"{floor.get('model', float('nan')):.3g}", f"{model / floor['model']:.3g}×" if floor else "–",
                    f"{b_e2e / e2e:.2f}" if base else "–",
                    f"{base['stages']['model']['median'] / model:.2f}" if base else "–",
                    f"{over:.3f} ({100 * over / st['e2e']['median']:.2f} %)", _ms(st["llm"])])
    header = ["config", "executor", "kept visual", "LLM seq len", "e2e ms med (p90)", "model ms med (p90)",
              "model floor ms", "model / floor", "e2e speedup", "model speedup", "overhead ms (% of query)",
              "LLM ms med (p90)"]
    return _table(header, out)


def stage_rows(result: dict[str, Any], executor: str) -> list[str]:
    """Median per stage with its floor (ms) for one executor."""
    out = []
    for r in result["main"]["rows"]:
        if r.get("error") or r["executor"] != executor:
            continue
        f = r.get("floor_ms", {})
        cells = []
        for k in STAGE_ORDER:
            m = r["stages"][k]["median"]
            cells.append(f"{m:.2f}" + (f" / {f[k]:.3g}" if k in f else ""))
        out.append([r["config"], *cells])
    return _table(["config", *(f"{k} (meas / floor)" if k not in ("transforms", "gate") else k
                               for k in STAGE_ORDER)], out)


def side_rows(section: dict[str, Any], first_call: bool = False) -> list[str]:
    if "rows" not in section:
        return [f"Skipped: {section.get('skipped', 'not run')}."]
    out = []
    for r in section["rows"]:
        if r.get("error"):
            out.append([r["config"], r["variant"], f"failed: {r['error'][:100]}", "–", "–"] + (["–"] if first_call else []))
            continue
        cells = [r["config"], r["variant"], _ms(r["stages"]["e2e"]), _ms(r["stages"]["llm"]), _ms(r["stages"]["vision"])]
        out.append(cells + ([f"{r['first_call_ms'] / 1e3:.1f}"] if first_call else []))
    header = ["config", "variant", "e2e ms med (p90)", "LLM ms", "vision ms"] + (["first call s"] if first_call else [])
    return _table(header, out)


def memory_rows(section: dict[str, Any]) -> list[str]:
    if "rows" not in section:
        return [f"Skipped: {section.get('skipped', 'not run')}."]
    out = [[r["config"], r["executor"], f"{r['allocated_before_mib']:.0f}", f"{r['peak_allocated_mib']:.0f}",
            f"{r['query_mib']:.0f}"] for r in section["rows"]]
    lines = _table(["config", "executor", "allocated before MiB", "peak MiB", "query adds MiB"], out)
    if "reserved_mib_end" in section:
        lines += ["", f"Reserved by the allocator after the probes (incl. the graphs' private pools): "
                      f"{section['reserved_mib_end']:.0f} MiB; most ever reserved {section['max_reserved_mib']:.0f} MiB."]
    return lines


def criteria(result: dict[str, Any]) -> list[str]:
    """Issue 18's targets, on the best executor of this run."""
    rows = [r for r in result.get("main", {}).get("rows", []) if not r.get("error")]
    out = []
    for ex in ("eager", "graphs"):
        base = _base(rows, ex)
        adp = next((r for r in rows if r["config"] == "adp@0.3" and r["executor"] == ex), None)
        if base is None or "floor_ms" not in base:
            continue
        ratio = base["stages"]["model"]["median"] / base["floor_ms"]["model"]
        out.append(f"- {ex}: unpruned model stages at {ratio:.2f}× their roofline floor "
                   f"(target ≤ {FLOOR_TARGET}×): {'met' if ratio <= FLOOR_TARGET else 'NOT met'}.")
        if adp is not None:
            sp = base["stages"]["e2e"]["median"] / adp["stages"]["e2e"]["median"]
            pct = 100 * adp["stages"]["overhead"]["median"] / adp["stages"]["e2e"]["median"]
            out.append(f"- {ex}: ADP ρ = 0.3 end-to-end speed-up {sp:.2f}× (target ≥ {SPEEDUP_TARGET}×): "
                       f"{'met' if sp >= SPEEDUP_TARGET else 'NOT met'}; pruning overhead {pct:.2f} % of the query "
                       f"(target ≤ {OVERHEAD_TARGET_PCT:g} %): {'met' if pct <= OVERHEAD_TARGET_PCT else 'NOT met'}.")
    return out or ["- no unpruned row: targets not evaluated."]


def report(result: dict[str, Any]) -> str:
    m, sh, roof = result["machine"], result["shape"], result["roofline"]
    gpu = roof["gpu"]
    lines = [f"## GPU latency protocol: `{m['command']}`", "",
             f"{m['date']} · {m.get('gpu', m['device'])} · torch {m['torch']}"
             + (f" · CUDA {m['cuda']}" if m.get("cuda") else "")
             + f" · {result['config']['model']} {result['config']['dtype']} · {sh['seq_len']} tokens "
               f"({sh['n_prompt']} prompt) · {result['config']['reps']} rounds after {result['config']['warmup']} "
               f"warm-up · batch 1 · wall {result['total_s']:.0f} s (build {result['build_s']:.0f} s; sections "
               + ", ".join(f"{k} {v:.0f} s" for k, v in result["sections"].items()) + ").",
             "",
             f"Roofline: {gpu['name']} ({gpu['bandwidth_gbs']:.0f} GB/s, {gpu['bf16_tflops']:.0f} TFLOP/s dense "
             f"bf16; {gpu['source']}). Unpruned floor of the model stages {roof['unpruned_floor_ms']:.2f} ms; "
             f"a decoder pruned before layer 0 is memory-bound below ρ ≈ {roof['memory_bound_keep']:.2f} — "
             "keeping fewer tokens than that saves no decoder time at the floor.", ""]
    if result["config"].get("dry_run"):
        lines += ["**Dry run** (tiny model on the CPU, graphs emulated by re-running): the numbers test the "
                  "script, not a GPU; the floors are those of the named GPU for these tiny shapes.", ""]
    if "rows" in result.get("main", {}):
        lines += ["**End to end** (e2e: host clock around `Policy.infer`; model: vision…head by CUDA events; "
                  "speedups are ratios of medians against the unpruned row of the same executor; the gated row "
                  "reports means over its episode)", "", *main_rows(result), ""]
        for ex in ("eager", "graphs"):
            lines += [f"**Per stage, {ex}: median ms / floor ms**", "", *stage_rows(result, ex), ""]
        stats = result["main"]["executor_stats"]["graphs"]
        lines += [f"Graphs in the measured rounds: {stats['replays']} replays, {stats['captures']} captures, "
                  f"{stats['uncaptured']} uncaptured calls.", ""]
        for key, err in result["main"].get("capture_failures", {}).items():
            lines += [f"- could not capture `{key}` (runs eagerly): {err}"]
    else:
        lines += [f"Main table skipped: {result.get('main', {}).get('skipped', 'not run yet')}", ""]
    lines += ["**Attention backends** (eager executor)", "", *side_rows(result.get("backends", {})), ""]
    for name, title in (("compile", "torch.compile"), ("compile_graphs", "torch.compile + CUDA graphs")):
        if name in result:
            lines += [f"**{title}** (first call: compiling and capturing)", "",
                      *side_rows(result[name], first_call=True), ""]
    memory = result.get("memory", {"skipped": "not run (CUDA memory is measured on a GPU only)"})
    lines += ["**Peak memory**", "", *memory_rows(memory), "",
              "**Targets**", "", *criteria(result), ""]
    return "\n".join(lines)


# -- `vla-adp bench --predict` ---------------------------------------------------------------------
_BOUND = {"memory": "m", "compute": "c", "mixed": "m+c"}


def prediction_report(gpus: list[str], shapes: list[str], keeps: list[float], n_prompt: int = 32,
                      derate: float = 1.0) -> str:
    """Roofline floors per stage of the unpruned query and of each shape's pruners (ADP cuts before
    layer 0, FastV before layer 2) at each keep ratio, for each GPU and query shape
    (:mod:`vla_adp.cost.roofline`)."""
    from vla_adp.cost import roofline as R
    from vla_adp.seam.budget import keep_count

    bad = [s for s in shapes if s not in R.SHAPES]
    if bad:
        raise ValueError(f"unknown query shape(s) {bad}; expected one of {sorted(R.SHAPES)}")
    lines = []
    for name in gpus:
        gpu = R.get_gpu(name)
        lines += [f"## {gpu.name}: {gpu.bandwidth_gbs:.0f} GB/s, {gpu.bf16_tflops:.1f} TFLOP/s dense bf16"
                  + (f" × {derate:g}" if derate != 1.0 else "") + f" (ridge {gpu.ridge:.0f} FLOP/byte)",
                  "", f"Source: {gpu.source}.", ""]
        for shape_name in shapes:
            shape = R.SHAPES[shape_name]
            args = shape.args()
            kw = {"n_prompt": n_prompt} if shape_name == "oft" else {}
            v = args.patches_per_image * args.n_images
            plans = [("unpruned", None, {})]
            for k in keeps:
                for pruner, layer, scorer in shape.cut_layers:
                    extra = {"prune_layer": layer, "scorer": scorer} if layer else {"scorer": scorer}
                    plans.append((f"{pruner}@{k:g}", keep_count(v, k, "round"), extra))
            rows, base = [], None
            for label, kept, extra in plans:
                stages = shape.stages(args, kept=kept, **kw, **extra)
                floor = R.total(stages, gpu, derate)
                base = floor if base is None else base
                cells = "; ".join(f"{s.name} {s.floor_ms(gpu, derate):.2f} ({_BOUND[s.bound(gpu, derate)]})"
                                  for s in stages)
                rows.append([label, "–" if kept is None else str(kept), f"{sum(s.flops for s in stages) / 1e12:.2f}",
                             f"{sum(s.bytes for s in stages) / 1e9:.2f}", cells, f"{floor:.2f}", f"{base / floor:.2f}"])
            lines += [f"### {shape.title}", "", *_table(
                ["config", "kept visual", "TFLOP", "GB moved", "floor ms per stage (m = memory-, c = compute-bound, "
                 "m+c = layers of both)", "query floor ms", "floor speedup"], rows), ""]
            if shape_name == "oft":
                lines += [f"The decoder pruned before layer 0 turns memory-bound below ρ ≈ "
                          f"{R.memory_bound_keep(args, gpu, n_prompt, derate):.2f}: below that, pruning saves "
                          "no decoder time at the floor (only the smaller attention and activations).", ""]
    return "\n".join(lines)
